"""The ImOOD form of any metric that declares `ada_scale` (SPEC §2-3).

Post hoc:  ood(x) = -(g(x) + c · log β̂(x)),  β̂(x) = (1/K) Σ_k p_k(x) / π̃_k.
Training:  the λ-head estimate β(x) = (1/K) Σ_k λ_k(x) q_k(x) / π̃_k, a constraint that trains λ,
           and a BCE on g - log δ, which equals BCE on σ(g)/β before the δ clamps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imood_cli.engine.outputs import ModelOutputs
from imood_cli.engine.prior import log_beta
from imood_cli.errors import ImoodError
from imood_cli.metrics.base import LossContext, OODMetric

LABEL_SMOOTHING = 0.2
DELTA_MIN, DELTA_MAX = 0.1, 10.0
EXP_CAP = 30.0  # e^g for g > 30 only pushes δ to a clamp; the cap avoids 0 · inf


def imood_training_loss(g: torch.Tensor, out: ModelOutputs, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(constraint, BCE) of the ImOOD regularizer for ID-vs-OOD logits g over all rows."""
    if out.lambdas is None:
        raise ImoodError("ImOOD training needs the λ head's outputs; the model produced none")
    k = out.num_classes
    is_id = ctx.is_id
    probs = torch.softmax(out.logits.float(), dim=1).detach()
    labels = F.pad(ctx.labels, (0, probs.shape[0] - ctx.labels.shape[0]))  # OOD rows: any class, unused
    # A comparison, not F.one_hot: one_hot checks its input's range on the host, a sync per step.
    onehot = (labels[:, None] == torch.arange(k, device=labels.device)).float()
    smoothed = onehot * (1 - LABEL_SMOOTHING) + LABEL_SMOOTHING / k
    q = torch.where(is_id[:, None], smoothed, probs)
    prior = ctx.log_prior.to(q.device, torch.float32).exp()
    beta = (out.lambdas.float() * q / prior).mean(dim=1)
    g = g.float()
    constraint = F.relu(torch.log(beta) + F.logsigmoid(g.detach())).mean()
    with torch.no_grad():
        b, e = beta.detach(), g.detach().clamp(max=EXP_CAP).exp()
        delta = (b + (b - 1) * e).clamp(DELTA_MIN, DELTA_MAX)
        delta = torch.where(is_id, delta.clamp(min=1.0), delta.clamp(max=1.0))
    bce = F.binary_cross_entropy_with_logits(g - torch.log(delta), is_id.float())
    return constraint, bce


class Ada(OODMetric):
    """`ada_<base>`: the base metric with ImOOD's prior-aware correction."""

    def __init__(self, base: OODMetric, scale: float | None = None) -> None:
        if base.ada_scale is None and scale is None:
            raise ImoodError(f"{base.name} declares no ada_scale, so it has no ada_ form")
        self.base = base
        self.name = f"ada_{base.name}"
        self.scale = float(base.ada_scale if scale is None else scale)
        self.ada_scale = None  # no ada_ada_
        for attr in ("extra_outputs", "needs_features", "needs_fit", "idness_is_logit"):
            setattr(self, attr, getattr(base, attr))
        self.has_loss = True

    def idness(self, out: ModelOutputs) -> torch.Tensor:
        return self.base.idness(out)

    def ood_score(self, out: ModelOutputs, log_prior: torch.Tensor) -> torch.Tensor:
        g = self.base.idness(out).float()
        return -(g + self.scale * log_beta(out.logits, log_prior))

    def train_logit(self, out: ModelOutputs, ctx: LossContext) -> torch.Tensor:
        g = self.base.idness(out)
        if self.base.idness_is_logit:
            return g
        if ctx.aux_linear is None:
            raise ImoodError(f"{self.name} training needs the aux_linear head")
        return ctx.aux_linear(g.float()[:, None])[:, 0]

    def loss(self, out: ModelOutputs, ctx: LossContext) -> torch.Tensor:
        constraint, bce = imood_training_loss(self.train_logit(out, ctx), out, ctx)
        total = constraint + bce
        if self.base.ada_keeps_loss:
            total = total + self.base.loss(out, ctx)
        return total

    def fit(self, features, labels, num_classes) -> None:
        self.base.fit(features, labels, num_classes)

    def fit_state(self):
        return self.base.fit_state()

    def load_fit_state(self, state) -> None:
        self.base.load_fit_state(state)

    def train_update(self, out, ctx) -> None:
        self.base.train_update(out, ctx)
