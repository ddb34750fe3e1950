"""GradNorm (Huang et al., "On the Importance of Gradients for Detecting Distributional Shifts in the
Wild", NeurIPS 2021), in closed form.

The gradient of KL(u || softmax(W f + b)) with respect to W is (p - u) fᵀ, so its L1 norm is
g(x) = ‖p - u‖₁ · ‖f‖₁: no backward pass, batched, and valid under no_grad for any backbone.
c = 10: g is a product of a probability-scale and a feature-norm factor (docs/concepts.md, "The scale c of ada_").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imood_cli.plugin_api import ModelView, Paper, Score, class_probs

if TYPE_CHECKING:
    from torch import Tensor


class GradNorm(Score):
    paper = Paper("On the Importance of Gradients for Detecting Distributional Shifts in the Wild", "Huang et al.",
                  "NeurIPS", 2021, "https://arxiv.org/abs/2110.00218")
    needs = frozenset({"features"})
    ada_scale = 10.0

    def idness(self, view: ModelView) -> Tensor:
        assert view.features is not None  # "features" in needs
        p = class_probs(view)
        u = 1.0 / view.num_classes
        return (p - u).abs().sum(dim=1) * view.features.float().abs().sum(dim=1)
