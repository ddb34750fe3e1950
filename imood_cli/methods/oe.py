"""Outlier exposure (Hendrycks et al., "Deep Anomaly Detection with Outlier Exposure", ICLR 2019):
cross-entropy to the uniform distribution on auxiliary OOD data during training, MSP at test time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imood_cli.methods.msp import MSP
from imood_cli.plugin_api import LossContext, Method, ModelView, Objective, Paper, torch

if TYPE_CHECKING:
    from torch import Tensor


def oe_loss(logits: Tensor) -> Tensor:
    """Mean over rows of logsumexp z - mean_k z_k (cross-entropy to uniform)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    z = logits.float()
    return (torch.logsumexp(z, dim=1) - z.mean(dim=1)).mean()


class OEObjective(Objective):
    """Cross-entropy to the uniform distribution on the auxiliary rows."""

    def loss(self, view: ModelView, ctx: LossContext, g: Tensor | None = None) -> Tensor:
        return oe_loss(view.logits[ctx.num_id:])


class OE(Method):
    """Outlier exposure: trained with OEObjective, scored with MSP (so it scores exactly as `msp`)."""

    score = MSP
    objective = OEObjective
    paper = Paper("Deep Anomaly Detection with Outlier Exposure", "Hendrycks et al.", "ICLR", 2019,
                  "https://arxiv.org/abs/1812.04606")
