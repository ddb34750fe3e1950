"""GradNorm (Huang et al., 2021) in closed form.

The gradient of KL(u || softmax(W f + b)) with respect to W is (p - u) fᵀ, so its L1 norm is
‖p - u‖₁ · ‖f‖₁: no backward pass, batched, and valid under no_grad for any backbone.
"""

from __future__ import annotations

import torch

from imood_cli.engine.outputs import ModelOutputs
from imood_cli.errors import ImoodError
from imood_cli.metrics.base import OODMetric, class_probs


class GradNorm(OODMetric):
    needs_features = True
    ada_scale = 10.0

    def idness(self, out: ModelOutputs) -> torch.Tensor:
        if out.features is None:
            raise ImoodError("gradnorm needs penultimate features; the outputs carry none")
        p = class_probs(out)
        u = 1.0 / out.num_classes
        return (p - u).abs().sum(dim=1) * out.features.float().abs().sum(dim=1)
