"""Maximum softmax probability (Hendrycks & Gimpel, 2017)."""

from __future__ import annotations

import torch

from imood_cli.engine.outputs import ModelOutputs
from imood_cli.metrics.base import OODMetric, class_probs


class MSP(OODMetric):
    ada_scale = 0.1

    def idness(self, out: ModelOutputs) -> torch.Tensor:
        # Centred at 1/K so that g = 0 means "no class preferred"; the vanilla score is -max p.
        return class_probs(out).amax(dim=1) - 1.0 / out.num_classes

    def ood_score(self, out: ModelOutputs, log_prior: torch.Tensor) -> torch.Tensor:
        return -class_probs(out).amax(dim=1)
