"""Outlier exposure with confidence control (Papadopoulos et al., "Outlier Exposure with Confidence Control for
Out-of-Distribution Detection", Neurocomputing 2021; official code github.com/nazim1021/OOD-detection-using-OECC,
`CIFAR/OECC_tune_cifar.ipynb`).

    L = CE(z_id, y) + λ1·Σ_ID (max_k p_k − A_tr)² + λ2·Σ_aux Σ_k |p_k − 1/K|

Both terms are sums over the batch, not means. `loss` returns the two sums (with `--Lambda 1`). imood's ID
rows are two views of each image, so the ID sum is halved: each image counts once, as in the official
single-view batch (128 ID + 256 auxiliary: `-b 128 --ood-batch-size 256` gives the official scale).

A_tr is the training accuracy of the CE baseline being fine-tuned: 0.9486 is the official value for balanced
CIFAR-10 (CIFAR-100: 0.7573). It must be re-measured for a long-tailed baseline (`oecc:a_tr=...`): there is no
official long-tailed configuration. λ1 = 0.07, λ2 = 0.05 (SVHN: λ2 = 0.03). The official recipe fine-tunes a
pretrained model for 15 epochs at lr 1e-3 (`--ckpt-path`). Score: MSP, g and c as for `msp`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imood_cli.methods.msp import MSP
from imood_cli.plugin_api import LossContext, Method, ModelView, Objective, OptionError, Paper, torch

if TYPE_CHECKING:
    from torch import Tensor

VIEWS_PER_IMAGE = 2  # the engine's ID rows: two augmented views of each image (docs/concepts.md, "ImOOD training")


def confidence_gap_sum(logits_id: Tensor, a_tr: float) -> Tensor:
    """Σ over rows of (max_k p_k − A_tr)²."""
    return ((torch.softmax(logits_id, dim=1).amax(dim=1) - a_tr) ** 2).sum()


def uniform_gap_sum(logits_ood: Tensor) -> Tensor:
    """Σ over rows and classes of |p_k − 1/K|."""
    k = logits_ood.shape[1]
    return (torch.softmax(logits_ood, dim=1) - 1.0 / k).abs().sum()


class OECCObjective(Objective):
    """OECC's two confidence-control terms (the CE is the engine's)."""

    lambda1 = 0.07
    lambda2 = 0.05
    a_tr = 0.9486
    hyperparameters = ("lambda1", "lambda2", "a_tr")

    def check(self) -> None:
        if not 0 <= self.a_tr <= 1:
            raise OptionError(f"a_tr (a training accuracy) must be in [0, 1], got {self.a_tr}")
        for key in ("lambda1", "lambda2"):
            if getattr(self, key) < 0:
                raise OptionError(f"{key} must be >= 0, got {getattr(self, key)}")

    def loss(self, view: ModelView, ctx: LossContext, g: Tensor | None = None) -> Tensor:
        z = view.logits.float()
        n = ctx.num_id
        return (self.lambda1 * confidence_gap_sum(z[:n], self.a_tr) / VIEWS_PER_IMAGE
                + self.lambda2 * uniform_gap_sum(z[n:]))


class OECC(Method):
    """Outlier exposure with confidence control: trained with OECCObjective, scored with MSP."""

    score = MSP
    objective = OECCObjective
    paper = Paper("Outlier Exposure with Confidence Control for Out-of-Distribution Detection", "Papadopoulos et al.",
                  "Neurocomputing", 2021, "https://arxiv.org/abs/1906.03509")
