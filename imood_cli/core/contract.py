"""The plugin contract: what a detector or an aux loss receives, declares and returns.

Plugin authors import these names from `imood_cli.plugin_api`, which re-exports them; this module is
the ground floor the engine, the built-in detectors and losses, and third-party plugins all stand on.

Conventions everywhere: K ID classes; a batch has N rows; tensors handed to a detector are float32
(whatever autocast ran the model in); an OOD score is higher for more OOD, an ID-ness g(x) higher for
more ID.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from imood_cli.core.lazy import torch
from imood_cli.errors import ImoodError

if TYPE_CHECKING:
    from torch import Tensor

# What a detector may declare in `needs` (logits are always supplied).
NEEDS = {
    "features": "penultimate features f [N, d] (pooled backbone output)",
    "feature_map": "the backbone's last feature map before pooling [N, C, H, W] and ModelView.logits_from_feature_map "
                   "(a model without a spatial map, a vision transformer, cannot run such a detector)",
    "classifier": "the classifier's weight [K, d] and bias [K] (class outputs only) "
                  "and ModelView.logits_from_features",
    "input_grad": "the input images [N, C, H, W] as the model sees them and ModelView.logits_from_images, "
                  "run with gradients enabled (scoring: an extra forward and backward pass per batch; training: "
                  "the augmented batch, for losses that forward modified images, e.g. CutMix)",
    "fit": "a fit on the ID training set before scoring: Detector.fit(view) with view.labels, cached per model",
}


@dataclass
class ModelOutputs:
    """One forward pass of the model over a batch of N images.

    logits:      [N, K] float, the class logits z (never the extra outputs).
    extra:       [N, E] float, extra classifier outputs (bin_disc's ID-vs-OOD logit is column 0), or None.
    features:    [N, d] float, penultimate features f (the pooled backbone output), or None.
    feature_map: the backbone output before pooling, [N, C, H, W], or None when not asked for (or when the model
                 has no spatial map: a vision transformer's tokens are not handed to detectors as one).
    projections: [N, p] float, L2-normalised projections for contrastive aux losses (training), or None.
    lambdas:     [N, K] float, λ(x) of the ImOOD λ head (training with an ada_ loss), or None.
    """

    logits: Tensor
    extra: Tensor | None = None
    features: Tensor | None = None
    projections: Tensor | None = None
    lambdas: Tensor | None = None
    feature_map: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    def float(self) -> ModelOutputs:
        """The same outputs with floating tensors in float32 (after bf16 autocast)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return type(self)(**{k: v.float() if _is_tensor(v) and v.is_floating_point() else v
                             for k, v in values.items()})

    @classmethod
    def cat(cls, parts: list[ModelOutputs]) -> ModelOutputs:
        """Row-wise concatenation of outputs of consecutive batches (fields absent in the first are absent)."""
        out = {}
        for f in fields(parts[0]):
            values = [getattr(p, f.name) for p in parts]
            if _is_tensor(values[0]):
                out[f.name] = torch.cat(values)
            else:
                out[f.name] = values[0]
        return cls(**out)


def _is_tensor(value: Any) -> bool:
    return value is not None and type(value).__module__.startswith("torch") and hasattr(value, "shape")


def _unavailable(what: str, need: str) -> Callable[..., Tensor]:
    def fail(*_: Any) -> Tensor:
        raise RuntimeError(f"{what} is only available to a detector that declares {need!r} in `needs`")

    return fail


@dataclass
class ModelView(ModelOutputs):
    """What a detector sees: one batch's outputs, and the parts of the model it declared in `needs`.

    Besides the fields of ModelOutputs (float32):
    labels:  [N] long, the class of each row; set only in the view handed to `Detector.fit` (the ID
             training set), None when scoring.
    images:  [N, C, H, W] float, the inputs as the model sees them (after normalization); "input_grad" only.
    weight:  [K, d] float, the classifier's weight for the K classes; "classifier" only.
    bias:    [K] float, the classifier's bias; "classifier" only.

    And the model's later stages as functions (float32 in and out, run under the engine's autocast):
    logits_from_feature_map(m) -> [N, K]   pooling + classifier on a (modified) feature map; "feature_map".
    logits_from_features(f)   -> [N, K]    the classifier on (modified) penultimate features; "classifier".
    logits_from_images(x)     -> [N, K]    the whole model, gradients flowing back to x; "input_grad".
    """

    labels: Tensor | None = None
    images: Tensor | None = None
    weight: Tensor | None = None
    bias: Tensor | None = None
    _head_from_map: Callable[[Tensor], Tensor] | None = None
    _head_from_features: Callable[[Tensor], Tensor] | None = None
    _forward: Callable[[Tensor], Tensor] | None = None

    def logits_from_feature_map(self, feature_map: Tensor) -> Tensor:
        return (self._head_from_map or _unavailable("logits_from_feature_map", "feature_map"))(feature_map)

    def logits_from_features(self, features: Tensor) -> Tensor:
        return (self._head_from_features or _unavailable("logits_from_features", "classifier"))(features)

    def logits_from_images(self, images: Tensor) -> Tensor:
        return (self._forward or _unavailable("logits_from_images", "input_grad"))(images)

    @classmethod
    def of(cls, outputs: ModelOutputs, *, labels: Tensor | None = None, images: Tensor | None = None,
           weight: Tensor | None = None, bias: Tensor | None = None,
           logits_from_feature_map: Callable[[Tensor], Tensor] | None = None,
           logits_from_features: Callable[[Tensor], Tensor] | None = None,
           logits_from_images: Callable[[Tensor], Tensor] | None = None, **private: Any) -> ModelView:
        """A view of one batch's `outputs` and of the model parts a detector may read.

        The public way to build a view of any model (the engine builds its views with it, and a test of a
        detector can too): the tensors as documented on the class, and the model's later stages as callables,
        float32 in and out: `logits_from_feature_map(m)` pools and classifies a (modified) feature map,
        `logits_from_features(f)` classifies (modified) pooled features (usually `classifier(f)`),
        `logits_from_images(x)` runs the whole model with gradients flowing back to x. A part left out raises
        a clear error when a detector asks for it.

            view = ModelView.of(ModelOutputs(logits, features=f, feature_map=m), weight=fc.weight, bias=fc.bias,
                                logits_from_features=fc, logits_from_feature_map=lambda m: fc(m.mean((2, 3))))
        """
        given = {"_head_from_map": logits_from_feature_map, "_head_from_features": logits_from_features,
                 "_forward": logits_from_images}
        for key, value in private.items():  # the field names of imood 0.2, still accepted
            if key not in given:
                raise TypeError(f"ModelView.of() got an unexpected keyword argument {key!r}")
            if given[key] is None:
                given[key] = value
        return cls(**{f.name: getattr(outputs, f.name) for f in fields(ModelOutputs)}, labels=labels, images=images,
                   weight=weight, bias=bias, _head_from_map=given["_head_from_map"],
                   _head_from_features=given["_head_from_features"], _forward=given["_forward"])


@dataclass
class LossContext:
    """What a training loss may need beside the model's outputs.

    Rows are [ID views (num_id rows) ; auxiliary OOD]; `labels` covers the ID rows only.
    is_id:        [N] bool, True for ID rows.
    labels:       [num_id] long, class of each ID row.
    log_prior:    [K] float, log π̃ (τ-adjusted, docs/concepts.md).
    class_counts: [K] long, training images per class (the raw prior π = counts / counts.sum()).
    aux_linear:   the model's Linear(1, 1) head mapping a scalar statistic to an ID-vs-OOD logit.
    generator:    a torch.Generator for random draws inside a loss: seeded per epoch and restored on
                  resume, so a resumed run draws the same numbers.
    num_id:       ID rows come first: rows [:num_id] are ID (slicing by it needs no host sync).
    parameters:   the objective's own trainable tensors (Objective.training_parameters), by name.
    average:      averages a tensor over the training processes (torchrun DDP; the identity in one process):
                  a statistic every process must agree on (energy's margins) goes through it, never through
                  torch.distributed directly.
    """

    is_id: Tensor
    labels: Tensor
    log_prior: Tensor
    aux_linear: Callable[[Tensor], Tensor] | None = None
    num_id: int | None = None
    class_counts: Tensor | None = None
    generator: Any = None
    parameters: dict[str, Tensor] | None = None
    average: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if self.num_id is None:
            self.num_id = int(self.labels.shape[0])


@dataclass
class AuxBatch:
    """The projections of one training batch, rows [ID view 1 (N) ; ID view 2 (N) ; auxiliary OOD (M)].

    projections:  [2N + M, p] float, L2-normalised.
    labels:       [2N + M] long, class of each row, -1 for OOD rows.
    is_id:        [2N + M] bool.
    pair:         [2N + M] long, row index of the other view of the same image, -1 for OOD rows.
    class_counts: [K] long, training images per class.
    """

    projections: Tensor
    labels: Tensor
    is_id: Tensor
    pair: Tensor
    class_counts: Tensor

    @property
    def num_classes(self) -> int:
        return self.class_counts.numel()


class OptionError(ImoodError, ValueError):
    """A hyperparameter that a method or aux loss does not have, or a value it cannot take: one `imood: error:`
    line (exit code 2) naming the method once, however the message was prefixed."""


def named_option_error(name: str, exc: OptionError, owner: type | None = None) -> OptionError:
    """`exc` with one prefix, `name: `: a plugin's own `OptionError("clipact: percentile ...")` and imood's
    `"CLIPAct: option ..."` both lose the prefix they carry (0.2 printed "clipact: clipact: percentile ...")."""
    text = str(exc)
    for prefix in {name, name.removeprefix("ada_"), *((owner.__name__,) if owner is not None else ())}:
        text = text.removeprefix(f"{prefix}: ")
    return OptionError(f"{name}: {text}")


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def coerce_option(owner: str, key: str, default: Any, value: Any) -> Any:
    """`value` (as typed on the command line, or a Python value) as the type of `default`."""
    kind = type(default)
    bad = OptionError(f"{owner}: option {key} must be {kind.__name__}, got {value!r}")
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            if text.lower() not in _TRUE | _FALSE:
                raise bad
            return text.lower() in _TRUE
        try:
            value = int(text) if kind is int else float(text)
        except ValueError:
            raise bad from None
    if kind is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise bad
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if not isinstance(value, kind):
        raise bad
    return value


class Configurable:
    """Hyperparameters as typed class attributes with the papers' defaults.

    A subclass lists them in `hyperparameters`; their type is that of the default. Values arrive as
    keyword arguments (strings from `-m name:key=value` are converted), then `check()` validates them.
    `default_notes` says in words what a default is where the class value only gives the option its type
    (energy's margins are the benchmark's): the docs' method table and `imood plugins` show it.
    """

    hyperparameters: ClassVar[tuple[str, ...]] = ()
    default_notes: ClassVar[dict[str, str]] = {}

    def __init__(self, **options: Any) -> None:
        owner = type(self).__name__
        for key, value in options.items():
            if key not in self.hyperparameters:
                known = ", ".join(self.hyperparameters) or "none"
                raise OptionError(f"{owner}: no option {key!r} (options: {known})")
            setattr(self, key, coerce_option(owner, key, getattr(type(self), key), value))
        self.check()

    def check(self) -> None:
        """Raise OptionError for a hyperparameter value out of range."""

    def options(self) -> dict[str, Any]:
        """The current hyperparameter values (recorded in score files)."""
        return {k: getattr(self, k) for k in self.hyperparameters}


class Detector(Configurable):
    """An OOD detector: an ID-ness statistic g(x), higher = more ID, one value per row.

    Declarations (class attributes; the engine reads nothing else):
    needs:           subset of NEEDS: what the engine must supply besides the logits.
    train_needs:     what the training loss needs, when it differs from `needs` (None: the same).
    extra_outputs:   extra classifier outputs the model must have (bin_disc: 1), read as view.extra.
    ada_scale:       c of the ImOOD correction ood = -(g + c·log β̂) (docs/concepts.md), or None for no `ada_` form.
                     A detector that declares it gets `ada_<name>` for scoring and ImOOD training. A detector
                     whose g is a distance may set `self.ada_scale` in `fit` from the ID data (e.g.
                     0.1·std of g on the training set) and must restore it in `load_fit_state`.
    idness_is_logit: g is already an ID-vs-OOD logit (bin_disc): ImOOD training uses it without aux_linear.
    ada_keeps_loss:  the `ada_` training loss adds this detector's own loss (oe).
    heads:           model heads its training loss uses besides the classifier ("lambda_head", "aux_linear").
    hyperparameters: names of typed class attributes settable as `-m name:key=value` (see Configurable).

    Methods: `idness(view)` is required. `ood_score` defaults to -idness. `loss(view, ctx)` makes the
    detector trainable as `--ood_metric name` (else it is post hoc only). `fit`, `fit_state` and
    `load_fit_state` go with "fit" in `needs`; `train_update` sees each training batch first.
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    train_needs: ClassVar[frozenset[str] | None] = None
    extra_outputs: ClassVar[int] = 0
    ada_scale: float | None = None  # not a ClassVar: a fit may set it on the instance
    idness_is_logit: ClassVar[bool] = False
    ada_keeps_loss: ClassVar[bool] = False
    heads: ClassVar[frozenset[str]] = frozenset()

    def idness(self, view: ModelView) -> Tensor:
        """g(x) [N], higher = more ID."""
        raise NotImplementedError

    def ood_score(self, view: ModelView, log_prior: Tensor) -> Tensor:
        """The vanilla OOD score [N], higher = more OOD (log_prior, log π̃ [K], is for prior-aware scores)."""
        return -self.idness(view)

    def loss(self, view: ModelView, ctx: LossContext) -> Tensor:
        """The OOD training loss (a scalar) over a batch [ID views ; auxiliary OOD]."""
        raise NotImplementedError(f"{type(self).__name__} has no training loss")

    @property
    def has_loss(self) -> bool:
        return type(self).loss is not Detector.loss

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
        """Called each training step before `loss`, for statistics that track the batch (maha)."""

    def training_parameters(self, feature_dim: int, num_classes: int) -> dict[str, Tensor]:
        """Trainable tensors the training loss owns besides the model (e.g. COCL's prototypes), created once
        per run (under the run's seed). The engine optimizes them with the model and keeps them in checkpoints
        (never in the model file: scoring does not use them) and hands them back, on the training device, to
        `loss` as `ctx.parameters[name]`."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


class AuxLoss(Configurable):
    """An auxiliary training loss on the projection head: `__call__(batch: AuxBatch) -> scalar Tensor`.

    needs_projections: False when the loss ignores the projections (the head is then not trained).
    Options are set as `--aux-ood-loss name:key=value`; imood's `--k` and `--T` reach hyperparameters of
    the same name only when the user gives them (else the class defaults hold).
    """

    needs_projections: ClassVar[bool] = True

    def __call__(self, batch: AuxBatch) -> Tensor:
        raise NotImplementedError


def class_probs(view: ModelOutputs) -> Tensor:
    """softmax(z) [N, K] in float32."""
    return torch.softmax(view.logits.float(), dim=1)


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'react:p=95:mode=b' -> ('react', {'p': '95', 'mode': 'b'}): a detector name with its options."""
    name, *parts = spec.strip().split(":")
    options = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ImoodError(f"detector options go as name:key=value, got {spec!r}")
        options[key.strip()] = value.strip()
    return name.strip(), options


PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
# Words the command line gives a meaning of its own: `-m all`, `imood data prepare folder`.
RESERVED_NAMES = {"method": ("all",), "aux_loss": ("all",), "dataset": ("all", "folder")}


def plugin_name_problem(kind: str, name: str) -> str | None:
    """Why an entry point's name cannot be used, or None. Names are spelled as `-m` spells them: lower-case
    letters, digits, `_` and `-`, starting with a letter (so no two differ only in case, which would collide
    on a case-insensitive filesystem, and none carries the `,` `:` `=` of option lists); not a reserved word."""
    if not PLUGIN_NAME.fullmatch(name):
        return (f"the name {name!r} is not lower-case letters, digits, '_' and '-' starting with a letter (at most "
                "64 characters), as the command line spells names")
    if name in RESERVED_NAMES.get(kind, ()):
        return f"the name {name!r} is reserved by the command line"
    return None


def check_class(kind: str, cls: Any) -> None:
    """The contract a class must meet to be registered (checked on the class: nothing is instantiated)."""
    if kind == "method":
        from imood_cli.core.method import check_method_class

        return check_method_class(cls)
    if not isinstance(cls, type):
        raise TypeError(f"the entry point must name a class, not {type(cls).__name__}")
    if kind == "aux_loss" and not issubclass(cls, AuxLoss):
        raise TypeError(f"{cls.__name__} must subclass imood_cli.plugin_api.AuxLoss")
    if kind == "dataset" and not all(callable(getattr(cls, m, None)) for m in ("load", "status", "prepare")):
        raise TypeError(f"{cls.__name__} must define load, status and prepare")
