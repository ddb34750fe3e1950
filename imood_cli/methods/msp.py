"""Maximum softmax probability (Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples in Neural Networks", ICLR 2017).

g(x) = max_k p_k(x) − 1/K; vanilla OOD score −max_k p_k(x). c = 0.1: g lives in [0, 1 − 1/K], a
probability scale (docs/concepts.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imood_cli.plugin_api import ModelView, Paper, Score, class_probs

if TYPE_CHECKING:
    from torch import Tensor


class MSP(Score):
    paper = Paper("A Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural Networks",
                  "Hendrycks & Gimpel", "ICLR", 2017, "https://arxiv.org/abs/1610.02136")
    ada_scale = 0.1

    def idness(self, view: ModelView) -> Tensor:
        # Centred at 1/K so that g = 0 means "no class preferred"; the vanilla score is -max p.
        return class_probs(view).amax(dim=1) - 1.0 / view.num_classes

    def ood_score(self, view: ModelView, log_prior: Tensor) -> Tensor:
        return -class_probs(view).amax(dim=1)
