"""Binary discriminator (Bitterwolf et al., 2022): an extra (K+1)-th logit trained ID vs OOD."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imood_cli.engine.outputs import ModelOutputs
from imood_cli.errors import ImoodError
from imood_cli.metrics.base import LossContext, OODMetric


class BinDisc(OODMetric):
    extra_outputs = 1
    ada_scale = 1.0
    idness_is_logit = True
    has_loss = True

    def idness(self, out: ModelOutputs) -> torch.Tensor:
        if out.extra is None or out.extra.shape[1] < 1:
            raise ImoodError("bin_disc needs a model with an extra ID-vs-OOD output; this checkpoint has none")
        return out.extra[:, 0].float()

    def ood_score(self, out: ModelOutputs, log_prior: torch.Tensor) -> torch.Tensor:
        return 1.0 - torch.sigmoid(self.idness(out))

    def loss(self, out: ModelOutputs, ctx: LossContext) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.idness(out), ctx.is_id.float())
