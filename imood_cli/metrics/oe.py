"""Outlier exposure (Hendrycks et al., 2019): cross-entropy to the uniform distribution on
auxiliary OOD data during training, MSP at test time."""

from __future__ import annotations

import torch

from imood_cli.engine.outputs import ModelOutputs
from imood_cli.metrics.base import LossContext
from imood_cli.metrics.msp import MSP


def oe_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of logsumexp z - mean_k z_k (cross-entropy to uniform)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    z = logits.float()
    return (torch.logsumexp(z, dim=1) - z.mean(dim=1)).mean()


class OE(MSP):
    has_loss = True
    ada_keeps_loss = True

    def loss(self, out: ModelOutputs, ctx: LossContext) -> torch.Tensor:
        return oe_loss(out.logits[ctx.num_id:])
