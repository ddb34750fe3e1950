"""Energy score (Liu et al., 2020), with the energy-bounded training loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imood_cli.engine.outputs import ModelOutputs
from imood_cli.metrics.base import LossContext, OODMetric


def _masked_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean() if x.numel() else x.sum() * 0.0


class Energy(OODMetric):
    ada_scale = 1.0
    has_loss = True
    m_out = -5.0
    weight = 0.2

    def idness(self, out: ModelOutputs) -> torch.Tensor:
        return torch.logsumexp(out.logits.float(), dim=1)

    def loss(self, out: ModelOutputs, ctx: LossContext) -> torch.Tensor:
        # The margins of the energy paper's CIFAR recipe: -23 for 10 classes, -27 otherwise.
        m_in = -23.0 if out.num_classes == 10 else -27.0
        e = -self.idness(out)
        l_in = _masked_mean(F.relu(e[: ctx.num_id] - m_in) ** 2)
        l_out = _masked_mean(F.relu(self.m_out - e[ctx.num_id:]) ** 2)
        return self.weight * (l_in + l_out)
