"""Open-Sampling (Wei et al., "Open-Sampling: Exploring Out-of-Distribution Data for Re-balancing Long-tailed
Datasets", ICML 2022; official code github.com/hongxin001/open-sampling, `alg/ood_noise.py`).

Each step, every auxiliary image gets a fresh random ID label ("open-set noisy label") drawn from the
complementary distribution of the training prior π (from the class counts, not τ-adjusted):

    r = (max π + min π) − π  (alpha ≤ 0, the default),  or  r = alpha − π  (alpha > 0)
    t ~ Categorical(r / Σr),   L_ood = Σ_i w_{t_i}·CE(z_i, t_i) / Σ_i w_{t_i},   w = K·r / Σr

(torch's class-weighted mean). The official loss is CE(z_id, y) + λ_o·L_ood with λ_o = 1 (README):
`--Lambda 1 --logit_adjust 0`. Labels are drawn with the run's seeded generator, so a resumed run draws the
same ones. The official repository evaluates accuracy only; imood scores it with MSP (the long-tailed OOD
papers that list Open-Sampling do not name their score), g and c as for `msp`.

Differences: two views per ID image (the engine's CE averages over both); the official backbone is a
ResNet-32 with SGD lr 0.1, 200 epochs and an auxiliary batch of 512 from all of 80M TinyImages; imood uses
the benchmark's recipe and auxiliary set unless told otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imood_cli.methods.msp import MSP
from imood_cli.plugin_api import F, ImoodError, LossContext, Method, ModelView, Objective, Paper, torch

if TYPE_CHECKING:
    from torch import Tensor


def rebalance_rate(class_counts: Tensor, alpha: float) -> Tensor:
    """r [K]: (max π + min π) − π for alpha ≤ 0, else alpha − π (unnormalised, as in the official code)."""
    pi = class_counts.double() / class_counts.sum()
    r = (pi.max() + pi.min() - pi) if alpha <= 0 else (alpha - pi)
    return r.float()


def sample_open_labels(rate: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """`count` labels drawn from Categorical(rate / Σ rate)."""
    if count == 0:
        return torch.zeros(0, dtype=torch.long, device=rate.device)
    return torch.multinomial(rate / rate.sum(), count, replacement=True, generator=generator)


def open_sampling_loss(logits_ood: Tensor, targets: Tensor, rate: Tensor) -> Tensor:
    """Class-weighted CE of the auxiliary rows towards their drawn labels, w = K·r/Σr."""
    if logits_ood.shape[0] == 0:
        return logits_ood.sum() * 0.0
    weight = rate / rate.sum() * rate.numel()
    return F.cross_entropy(logits_ood.float(), targets, weight=weight.float())


class OpenSamplingObjective(Objective):
    """Class-weighted CE of the auxiliary rows towards open-set noisy labels drawn from the complementary prior."""

    alpha = -1.0
    hyperparameters = ("alpha",)

    def rate(self, ctx: LossContext) -> Tensor:
        if ctx.class_counts is None:
            raise ImoodError("opensampling needs the training class counts")
        r = rebalance_rate(ctx.class_counts, self.alpha)
        if self.alpha > 0 and bool((r <= 0).any()):  # one host sync, only when alpha is set
            raise ImoodError(f"opensampling: alpha={self.alpha} must exceed the largest class share "
                             f"{float(ctx.class_counts.max() / ctx.class_counts.sum()):.4f}, or be <= 0")
        return r

    def loss(self, view: ModelView, ctx: LossContext, g: Tensor | None = None,
             targets: Tensor | None = None) -> Tensor:
        """`targets` [M] overrides the drawn labels (for checks against the official formula)."""
        ood = view.logits[ctx.num_id:]
        r = self.rate(ctx)
        if targets is None:
            targets = sample_open_labels(r, ood.shape[0], ctx.generator)
        return open_sampling_loss(ood, targets, r)


class OpenSampling(Method):
    """Open-Sampling: trained with OpenSamplingObjective, scored with MSP."""

    score = MSP
    objective = OpenSamplingObjective
    paper = Paper("Open-Sampling: Exploring Out-of-Distribution data for Re-balancing Long-tailed datasets",
                  "Wei et al.", "ICML", 2022, "https://arxiv.org/abs/2206.08802")
