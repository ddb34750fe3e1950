"""The ImOOD form `ada_<name>` of any method whose score declares `ada_scale` (Liu et al., "Rethinking
Out-of-Distribution Detection on Imbalanced Data Distribution", NeurIPS 2024): the one place where it is derived.

Post hoc:  ood(x) = -(g(x) + c · log β̂(x)),  β̂(x) = (1/K) Σ_k p_k(x) / π̃_k.
Training:  the λ-head estimate β(x) = (1/K) Σ_k λ_k(x) q_k(x) / π̃_k, a constraint that trains λ,
           and a BCE on g - log δ, which equals BCE on σ(g)/β before the δ clamps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imood_cli.core.contract import LossContext, ModelView
from imood_cli.core.lazy import F, torch
from imood_cli.core.method import Objective, Score
from imood_cli.core.prior import log_beta
from imood_cli.errors import ImoodError

if TYPE_CHECKING:
    from torch import Tensor

ADA_PREFIX = "ada_"
# The prior-aware correction, and the two controls that isolate it (an ada_ run differs from its vanilla
# detector in the loss family AND the correction): "none" keeps the loss family without the correction
# (training: δ ≡ 1, a plain BCE on the same g; post hoc: c = 0), "flat-prior" keeps the correction with the
# uniform prior in place of π̃ (training: inside β only, L_in keeps its τ; post hoc: log β̂ ≡ 0).
CORRECTIONS = ("full", "none", "flat-prior")
LABEL_SMOOTHING = 0.2
DELTA_MIN, DELTA_MAX = 0.1, 10.0
EXP_CAP = 30.0  # e^g for g > 30 only pushes δ to a clamp; the cap avoids 0 · inf


def imood_training_loss(g: Tensor, view: ModelView, ctx: LossContext, correction: str = "full"
                        ) -> tuple[Tensor, Tensor]:
    """(constraint, BCE) of the ImOOD regularizer for ID-vs-OOD logits g over all rows.

    correction: "full" (Liu et al. 2024, eq. of the δ-corrected BCE), "none" (δ ≡ 1) or "flat-prior" (π̃
    uniform inside β); see CORRECTIONS."""
    if view.lambdas is None:
        raise ImoodError("ImOOD training needs the λ head's outputs; the model produced none")
    k = view.num_classes
    is_id = ctx.is_id
    probs = torch.softmax(view.logits.float(), dim=1).detach()
    labels = F.pad(ctx.labels, (0, probs.shape[0] - ctx.labels.shape[0]))  # OOD rows: any class, unused
    # A comparison, not F.one_hot: one_hot checks its input's range on the host, a sync per step.
    onehot = (labels[:, None] == torch.arange(k, device=labels.device)).float()
    smoothed = onehot * (1 - LABEL_SMOOTHING) + LABEL_SMOOTHING / k
    q = torch.where(is_id[:, None], smoothed, probs)
    if correction == "flat-prior":
        prior = torch.full((k,), 1.0 / k, device=q.device)
    else:
        prior = ctx.log_prior.to(q.device, torch.float32).exp()
    beta = (view.lambdas.float() * q / prior).mean(dim=1)
    g = g.float()
    constraint = F.relu(torch.log(beta) + F.logsigmoid(g.detach())).mean()
    with torch.no_grad():
        b, e = beta.detach(), g.detach().clamp(max=EXP_CAP).exp()
        delta = (b + (b - 1) * e).clamp(DELTA_MIN, DELTA_MAX)
        delta = torch.where(is_id, delta.clamp(min=1.0), delta.clamp(max=1.0))
    if correction == "none":
        return constraint, F.binary_cross_entropy_with_logits(g, is_id.float())
    bce = F.binary_cross_entropy_with_logits(g - torch.log(delta), is_id.float())
    return constraint, bce


class AdaScore(Score):
    """`ada_<base>` for scoring: the base score with ImOOD's prior-aware correction (Liu et al., NeurIPS 2024):
    ood(x) = -(g(x) + c·log β̂(x)), or one of its controls (CORRECTIONS)."""

    ada_scale = None  # no ada_ada_

    def __init__(self, base: Score, scale: float | None = None, correction: str = "full") -> None:
        if base.ada_scale is None and scale is None:
            raise ImoodError(f"{type(base).__name__} declares no ada_scale, so it has no ada_ form")
        if correction not in CORRECTIONS:
            raise ImoodError(f"the ImOOD correction is one of {', '.join(CORRECTIONS)}, not {correction!r}")
        self.base = base
        self.override = None if scale is None else float(scale)
        self.correction = correction

    # what the engine reads of a score is the base's
    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(self.base.needs)

    @property
    def extra_outputs(self) -> int:  # type: ignore[override]
        return self.base.extra_outputs

    @property
    def idness_is_logit(self) -> bool:  # type: ignore[override]
        return self.base.idness_is_logit

    @property
    def scale(self) -> float:
        """c: --ada-scale if given, else the base score's (which a fit may have set from the ID data)."""
        if self.override is not None:
            return self.override
        c = self.base.ada_scale
        assert c is not None, "AdaScore.__init__ takes no base without ada_scale unless a scale is given"
        return float(c)

    def options(self) -> dict[str, Any]:
        return self.base.options()

    def idness(self, view: ModelView) -> Tensor:
        return self.base.idness(view)

    def ood_score(self, view: ModelView, log_prior: Tensor) -> Tensor:
        if self.correction != "full":  # c = 0, or a flat prior whose log β̂ is log Σ_k p_k = 0: the vanilla score
            return self.base.ood_score(view, log_prior)
        g = self.base.idness(view).float()
        return -(g + self.scale * log_beta(view.logits, log_prior))

    def fit(self, view: ModelView) -> None:
        self.base.fit(view)

    def fit_state(self) -> dict[str, Tensor]:
        return self.base.fit_state()

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        self.base.load_fit_state(state)

    def train_update(self, view: ModelView, ctx: LossContext) -> None:
        self.base.train_update(view, ctx)

    def __repr__(self) -> str:
        extra = f", correction={self.correction!r}" if self.correction != "full" else ""
        return f"AdaScore({self.base!r}, scale={self.scale}{extra})"


class AdaObjective(Objective):
    """`ada_<base>` for training: ImOOD's regularizer on the base score's g (a learned β(x) from the λ head, its
    constraint, and the δ-corrected BCE on the ID-vs-OOD logit g maps to), plus the base method's own
    objective where the method keeps it (outlier exposure, COCL, ...). The statistics the score tracks while
    training (Mahalanobis' class means) are part of its checkpoint state."""

    def __init__(self, score: Score, base: Objective | None = None, keep_base: bool = False,
                 correction: str = "full") -> None:
        if correction not in CORRECTIONS:
            raise ImoodError(f"the ImOOD correction is one of {', '.join(CORRECTIONS)}, not {correction!r}")
        self.score, self.base, self.keep_base, self.correction = score, base, keep_base and base is not None, correction

    @property
    def _kept(self) -> Objective | None:
        """The base objective when its loss is added to ImOOD's (keep_base), else None."""
        return self.base if self.keep_base else None

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        kept = self._kept
        return frozenset(kept.needs) if kept is not None else frozenset()

    @property
    def extra_outputs(self) -> int:  # type: ignore[override]
        return max(self.score.extra_outputs, self.base.extra_outputs if self.base is not None else 0)

    @property
    def heads(self) -> frozenset[str]:  # type: ignore[override]
        own = {"lambda_head"} | (set() if self.score.idness_is_logit else {"aux_linear"})
        kept = self._kept
        return frozenset(own | (set(kept.heads) if kept is not None else set()))

    def options(self) -> dict[str, Any]:
        return {**self.score.options(), **(self.base.options() if self.base is not None else {})}

    def train_logit(self, g: Tensor, ctx: LossContext) -> Tensor:
        """The ID-vs-OOD logit of g: g itself when it is a logit, else aux_linear(g)."""
        if self.score.idness_is_logit:
            return g
        if ctx.aux_linear is None:
            raise ImoodError("ImOOD training needs the aux_linear head")
        return ctx.aux_linear(g.float()[:, None])[:, 0]

    def loss(self, view: ModelView, ctx: LossContext, g: Tensor | None = None) -> Tensor:
        if g is None:
            g = self.score.idness(view)
        constraint, bce = imood_training_loss(self.train_logit(g, ctx), view, ctx, self.correction)
        total = constraint + bce
        kept = self._kept
        if kept is not None:
            total = total + kept.loss(view, ctx, g)
        return total

    def train_update(self, view: ModelView, ctx: LossContext) -> None:
        if self.base is not None:
            self.base.train_update(view, ctx)

    def training_parameters(self, feature_dim: int, num_classes: int) -> dict[str, Tensor]:
        kept = self._kept
        return kept.training_parameters(feature_dim, num_classes) if kept is not None else {}

    def state(self) -> dict[str, Tensor]:
        return {**self.score.fit_state(), **(self.base.state() if self.base is not None else {})}

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.score.load_fit_state(state)
        if self.base is not None:
            self.base.load_state(state)

    def __repr__(self) -> str:
        extra = f", correction={self.correction!r}" if self.correction != "full" else ""
        return f"AdaObjective({self.score!r}, base={self.base!r}, keep_base={self.keep_base}{extra})"
