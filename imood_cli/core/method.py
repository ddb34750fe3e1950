"""Methods: a post-hoc `Score`, and an optional training `Objective` that trains the ID-ness the score reads.

A long-tailed OOD paper contributes one or both: a score (how to tell OOD apart after training: MSP, energy,
ViM, ...) and a training objective (how to train for it: outlier exposure, the energy loss, COCL, ...). A
`Method` joins them under one name, the paper's, with the paper itself as data:

    class Energy(Method):
        score = EnergyScore                 # g(x) = logsumexp z, vanilla OOD score -g
        objective = EnergyObjective         # the energy-bounded loss on the same g
        paper = Paper("Energy-based Out-of-distribution Detection", "Liu et al.", "NeurIPS", 2020, "...")

The trainer hands the score's ID-ness to the objective, `objective.loss(view, ctx, g=score.idness(view))`, so
a method trains the g it scores with, by construction; `ada_<name>` (the ImOOD form, `core.ada`) wraps the
score and the objective through these narrow interfaces. A method whose training only changes the model, not
the score (outlier exposure scores with MSP), names the other method's score class: it scores as that method,
and `-m all` lists the score once.

Options are two namespaces: a score's hyperparameters are set with `imood score -m name:key=value`, an
objective's with `imood train --ood-metric name:key=value` (which also takes the score's: they shape the g
that is trained); a training option given to `imood score` is an error naming its phase.

State is two things: `Score.fit_state` is the post-hoc fit (Mahalanobis' class means, cached per model in
RUN/fits/), `Objective.state` what a training run must keep in its checkpoints to resume exactly (energy's
margins, BalEnergy's running prior, the statistics an `ada_` objective tracks).

The 0.2 form, one `Detector` class carrying both, still works: `Method.from_detector` wraps it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from imood_cli.core.contract import NEEDS, Configurable, Detector, LossContext, ModelView, OptionError

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class Paper:
    """Where a method comes from: shown by `imood plugins list`, in the docs' method table and in reports."""

    title: str
    authors: str  # "Liu et al."
    venue: str  # "NeurIPS", "ICLR", "arXiv"
    year: int
    url: str = ""

    def cite(self) -> str:
        return f'{self.authors}, "{self.title}", {self.venue} {self.year}'


class Score(Configurable):
    """A post-hoc OOD score: an ID-ness statistic g(x) [N], higher = more ID, from a model's outputs.

    Declarations (class attributes, or properties where they depend on the options):
    needs:           subset of contract.NEEDS: what the engine supplies besides the logits.
    extra_outputs:   extra classifier outputs the score reads (bin_disc: 1): only a model trained for them has them.
    ada_scale:       c of the ImOOD correction ood = -(g + c·log β̂), or None for no `ada_` form. A distance-like
                     g may set `self.ada_scale` in `fit` from the ID data and restore it in `load_fit_state`.
    idness_is_logit: g is already an ID-vs-OOD logit (bin_disc): ImOOD training uses it as is.
    hyperparameters: scoring options, `imood score -m name:key=value` (see Configurable).

    `idness(view)` is required; `ood_score` defaults to -idness. With "fit" in `needs`, `fit(view)` sees the
    ID training set (view.labels set) once per model and `fit_state` / `load_fit_state` cache it. `train_update`
    sees each training batch when an `ada_` objective trains this score's g, for statistics that follow the
    model as it trains (Mahalanobis' class means); what it keeps goes in the objective's checkpoint state.
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    extra_outputs: ClassVar[int] = 0
    ada_scale: float | None = None  # not a ClassVar: a fit may set it on the instance
    idness_is_logit: ClassVar[bool] = False

    def idness(self, view: ModelView) -> Tensor:
        """g(x) [N], higher = more ID."""
        raise NotImplementedError

    def ood_score(self, view: ModelView, log_prior: Tensor) -> Tensor:
        """The vanilla OOD score [N], higher = more OOD (log_prior, log π̃ [K], is for prior-aware scores)."""
        return -self.idness(view)

    @property
    def needs_fit(self) -> bool:
        return "fit" in self.needs

    def fit(self, view: ModelView) -> None:
        """Fit on the ID training set: view.features / logits / labels / weight over every training image."""

    def fit_state(self) -> dict[str, Tensor]:
        """The fitted statistics as named tensors (cached next to the model as safetensors)."""
        return {}

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        """Restore what `fit_state` returned."""

    def train_update(self, view: ModelView, ctx: LossContext) -> None:
        """Called each training step before the loss, when an `ada_` objective trains this g."""

    @property
    def tracks_in_training(self) -> bool:
        """Whether `train_update` keeps its fitted statistics current while a model trains (else a score that
        needs a fit cannot be the g of a training run)."""
        return type(self).train_update is not Score.train_update

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


class Objective(Configurable):
    """A training objective: the OOD loss of a method, over a batch [ID views ; auxiliary OOD].

    Declarations (class attributes, or properties where they depend on the options):
    needs:           what the loss needs beyond its score's `needs` (COCL: "features"; EAT: "input_grad").
    extra_outputs:   extra classifier outputs the model must have for it (bin_disc: 1, EAT: its abstentions).
    heads:           model heads the loss trains besides the classifier ("lambda_head", "aux_linear").
    hyperparameters: training options, `imood train --ood-metric name:key=value`.

    `loss(view, ctx, g)` is required: g [N] is the method's score's ID-ness of every row (the trainer computes
    it with the same view), so the objective trains exactly what the score will read. `train_update` sees each
    batch first; `training_parameters` creates tensors the loss owns (COCL's prototypes); `state` /
    `load_state` is what a checkpoint must keep for an exact resume.
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    extra_outputs: ClassVar[int] = 0
    heads: ClassVar[frozenset[str]] = frozenset()

    def loss(self, view: ModelView, ctx: LossContext, g: Tensor | None = None) -> Tensor:
        """The OOD training loss, a scalar."""
        raise NotImplementedError

    def train_update(self, view: ModelView, ctx: LossContext) -> None:
        """Called each training step before `loss`."""

    def training_parameters(self, feature_dim: int, num_classes: int) -> dict[str, Tensor]:
        """Trainable tensors the loss owns besides the model (e.g. COCL's prototypes), created once per run
        (under the run's seed). The engine optimizes them with the model, keeps them in checkpoints (never in
        the model file: scoring does not use them) and hands them back to `loss` as `ctx.parameters[name]`."""
        return {}

    def state(self) -> dict[str, Tensor]:
        """What a checkpoint keeps of this objective (margins chosen at the first batch, running estimates)."""
        return {}

    def load_state(self, state: dict[str, Tensor]) -> None:
        """Restore what `state` returned."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


class Method:
    """A named method: its score, its training objective (None: post hoc only) and its paper.

    ada_keeps_objective: the `ada_` training loss adds this method's own objective to ImOOD's (outlier
    exposure keeps its loss; the energy loss and bin_disc's BCE are what ImOOD's BCE replaces).
    Subclass it and name the subclass in an entry point of the `imood.ood_metrics` group; a `Score` subclass
    alone (a post-hoc method) may be named directly, and so may a 0.2 `Detector`.
    """

    score: ClassVar[type[Score]]
    objective: ClassVar[type[Objective] | None] = None
    paper: ClassVar[Paper | None] = None
    ada_keeps_objective: ClassVar[bool] = True

    @classmethod
    def build_score(cls, name: str, options: dict[str, Any]) -> Score:
        """The score, for `imood score -m name:options`: a training option is an error naming its phase."""
        score_keys = set(cls.score.hyperparameters)
        objective_keys = set(cls.objective.hyperparameters) if cls.objective is not None else set()
        for key in options:
            if key not in score_keys and key in objective_keys:
                raise OptionError(f"{key} is a training option (imood train --ood-metric {name}:{key}=...), "
                                  "not a scoring option")
        return cls.score(**options)

    @classmethod
    def build_training(cls, name: str, options: dict[str, Any]) -> tuple[Score, Objective | None]:
        """The score whose g is trained and the objective, for `imood train --ood-metric name:options`; each
        option goes to the one that declares it (the score's shape the trained g)."""
        score_keys = set(cls.score.hyperparameters)
        objective_keys = set(cls.objective.hyperparameters) if cls.objective is not None else set()
        unknown = [k for k in options if k not in score_keys | objective_keys]
        if unknown:
            known = ", ".join(sorted(score_keys | objective_keys)) or "none"
            raise OptionError(f"{name}: no option {unknown[0]!r} (options: {known})")
        score = cls.score(**{k: v for k, v in options.items() if k in score_keys})
        if cls.objective is None:
            return score, None
        return score, cls.objective(**{k: v for k, v in options.items() if k in objective_keys and k not in score_keys})

    @classmethod
    def ada_scale(cls) -> float | None:
        """The c of its score's ImOOD correction (None: no `ada_` form)."""
        return cls.score.ada_scale

    @classmethod
    def trainable(cls) -> bool:
        """Whether `--ood-metric name` trains an OOD loss (else the run trains the classifier alone)."""
        return cls.objective is not None

    @classmethod
    def options_of(cls) -> dict[str, Any]:
        """Every option with its default, scoring ones first."""
        out = {k: getattr(cls.score, k) for k in cls.score.hyperparameters}
        if cls.objective is not None:
            out.update({k: getattr(cls.objective, k) for k in cls.objective.hyperparameters})
        return out

    @classmethod
    def for_score(cls, score: type[Score], name: str | None = None) -> type[Method]:
        """A post-hoc method of a `Score` class named directly by an entry point."""
        doc = (score.__doc__ or "").strip() or f"{score.__name__} (post hoc)"
        return type(score.__name__, (Method,), {"score": score, "objective": None, "__doc__": doc,
                                                "paper": getattr(score, "paper", None), "__module__": score.__module__})

    @classmethod
    def from_detector(cls, detector: type[Detector]) -> type[Method]:
        """A method of a 0.2 `Detector` subclass: one instance is both its score and its objective, and takes
        every option in both phases (as in 0.2)."""
        return type(detector.__name__, (DetectorMethod,), {"detector": detector, "__doc__": detector.__doc__,
                                                           "paper": getattr(detector, "paper", None),
                                                           "ada_keeps_objective": detector.ada_keeps_loss,
                                                           "__module__": detector.__module__})


# ---------------------------------------------------------------- the 0.2 form


class DetectorScore(Score):
    """A 0.2 `Detector` instance seen as a score."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector

    def __getattr__(self, name: str) -> Any:  # the 0.2 instance's own attributes (its options, its fit)
        if name == "detector":
            raise AttributeError(name)
        return getattr(self.detector, name)

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(self.detector.needs)

    @property
    def extra_outputs(self) -> int:  # type: ignore[override]
        return self.detector.extra_outputs

    @property
    def ada_scale(self) -> float | None:  # type: ignore[override]
        return self.detector.ada_scale

    @property
    def idness_is_logit(self) -> bool:  # type: ignore[override]
        return self.detector.idness_is_logit

    def options(self) -> dict[str, Any]:
        return self.detector.options()

    def idness(self, view: ModelView) -> Tensor:
        return self.detector.idness(view)

    def ood_score(self, view: ModelView, log_prior: Tensor) -> Tensor:
        return self.detector.ood_score(view, log_prior)

    def fit(self, view: ModelView) -> None:
        self.detector.fit(view)

    def fit_state(self) -> dict[str, Tensor]:
        return self.detector.fit_state()

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        self.detector.load_fit_state(state)

    def train_update(self, view: ModelView, ctx: LossContext) -> None:
        self.detector.train_update(view, ctx)

    @property
    def tracks_in_training(self) -> bool:
        return type(self.detector).train_update is not Detector.train_update

    def __repr__(self) -> str:
        return repr(self.detector)


class DetectorObjective(Objective):
    """A 0.2 `Detector` instance seen as a training objective (its `loss` ignores the g handed to it; the
    instance computes its own, the same one). Its state is its `fit_state`, as 0.2 checkpoints kept it."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector

    def __getattr__(self, name: str) -> Any:
        if name == "detector":
            raise AttributeError(name)
        return getattr(self.detector, name)

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(self.detector.train_needs if self.detector.train_needs is not None else ())

    @property
    def extra_outputs(self) -> int:  # type: ignore[override]
        return self.detector.extra_outputs

    @property
    def heads(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(self.detector.heads)

    def options(self) -> dict[str, Any]:
        return self.detector.options()

    def loss(self, view: ModelView, ctx: LossContext, g: Tensor | None = None) -> Tensor:
        return self.detector.loss(view, ctx)

    def train_update(self, view: ModelView, ctx: LossContext) -> None:
        pass  # the score's train_update (the same instance) already saw the batch

    def training_parameters(self, feature_dim: int, num_classes: int) -> dict[str, Tensor]:
        return self.detector.training_parameters(feature_dim, num_classes)

    def state(self) -> dict[str, Tensor]:
        return self.detector.fit_state()

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.detector.load_fit_state(state)

    def __repr__(self) -> str:
        return repr(self.detector)


class DetectorMethod(Method):
    """The method of a 0.2 `Detector` (see Method.from_detector)."""

    detector: ClassVar[type[Detector]]

    @classmethod
    def build_score(cls, name: str, options: dict[str, Any]) -> Score:
        return DetectorScore(cls.detector(**options))

    @classmethod
    def build_training(cls, name: str, options: dict[str, Any]) -> tuple[Score, Objective | None]:
        inst = cls.detector(**options)
        return DetectorScore(inst), DetectorObjective(inst) if inst.has_loss else None

    @classmethod
    def ada_scale(cls) -> float | None:
        return cls.detector.ada_scale

    @classmethod
    def trainable(cls) -> bool:
        return cls.detector.loss is not Detector.loss

    @classmethod
    def options_of(cls) -> dict[str, Any]:
        return {k: getattr(cls.detector, k) for k in cls.detector.hyperparameters}


# ---------------------------------------------------------------- what an entry point names


def implementation_name(score: Score) -> str:
    """The class a user wrote, for messages: a 0.2 detector's own, not its wrapper's."""
    inner = score.__dict__.get("detector")
    return type(inner if isinstance(score, DetectorScore) and inner is not None else score).__name__


@functools.cache
def as_method(cls: type) -> type[Method]:
    """The method of a class an entry point names (cached: one method class per named class)."""
    if issubclass(cls, Method):
        return cls
    if issubclass(cls, Score):
        return Method.for_score(cls)
    if issubclass(cls, Detector):
        return Method.from_detector(cls)
    raise TypeError(f"{cls.__name__} must subclass imood_cli.plugin_api.Method, Score or Detector")


def check_method_class(cls: Any) -> None:
    """The contract a class of the `imood.ood_metrics` group must meet (checked on the class: nothing is
    instantiated; declarations that are properties are checked when an instance is made)."""
    if not isinstance(cls, type):
        raise TypeError(f"the entry point must name a class, not {type(cls).__name__}")
    if issubclass(cls, Detector):
        return check_declarations(cls, "loss" if cls.loss is not Detector.loss else None, cls.train_needs)
    if issubclass(cls, Score):
        return check_declarations(cls, None, None)
    if not issubclass(cls, Method):
        raise TypeError(f"{cls.__name__} must subclass imood_cli.plugin_api.Method, Score or Detector")
    score = getattr(cls, "score", None)
    if not (isinstance(score, type) and issubclass(score, Score)):
        raise TypeError(f"{cls.__name__}.score must be a Score subclass")
    check_declarations(score, None, None)
    objective = cls.objective
    if objective is not None:
        if not (isinstance(objective, type) and issubclass(objective, Objective)):
            raise TypeError(f"{cls.__name__}.objective must be an Objective subclass or None")
        if objective.loss is Objective.loss:
            raise TypeError(f"{objective.__name__} must define loss(view, ctx, g) -> scalar Tensor")
        needs = objective.__dict__.get("needs", frozenset())
        if isinstance(needs, (frozenset, set)) and set(needs) - set(NEEDS):
            raise TypeError(f"unknown needs {sorted(set(needs) - set(NEEDS))} (known: {', '.join(NEEDS)})")
    if cls.paper is not None and not isinstance(cls.paper, Paper):
        raise TypeError(f"{cls.__name__}.paper must be a Paper")


def check_declarations(cls: type[Score] | type[Detector], _loss: str | None, train_needs: Any) -> None:
    if cls.idness is Score.idness or cls.idness is Detector.idness:
        raise TypeError(f"{cls.__name__} must define idness(view) -> Tensor[N]")
    c = cls.ada_scale
    if not isinstance(c, property) and c is not None and (
            isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c < float("inf")):
        raise TypeError(f"ada_scale must be a finite number >= 0 or None, got {c!r}")
    extra = cls.extra_outputs
    if not isinstance(extra, property) and (not isinstance(extra, int) or isinstance(extra, bool) or extra < 0):
        raise TypeError(f"extra_outputs must be a whole number >= 0, got {extra!r}")
    needs = set()
    for value in (cls.needs, train_needs):
        if isinstance(value, (frozenset, set, tuple, list)):
            needs |= set(value)
    if needs - set(NEEDS):
        raise TypeError(f"unknown needs {sorted(needs - set(NEEDS))} (known: {', '.join(NEEDS)})")
