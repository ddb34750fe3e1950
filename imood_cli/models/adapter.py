"""Adapters: where a family of classifiers keeps its last feature map, its pooled features and its classifier.

A classifier runs x -> feature map m (the last stage before pooling) -> pooled features f -> logits W f + b.
Detectors that reshape activations (ReAct, ASH, SCALE, DICE), read the classifier (ViM, fDBD) or the features
(Mahalanobis, KNN) need these stages one by one. timm exposes them as `forward_features`,
`forward_head(pre_logits=True)` and `get_classifier`; torchvision does not, so each of its families has an
adapter (`torchvision_family`). Any other module is split at its last linear layer when that layer makes the
logits (`LastLinear`), and is otherwise scored from its logits alone (`Whole`). A user may pass the split as
callables (`Split`). Adding a family is one adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# The parts of a model a detector may need besides the logits (contract.NEEDS names them the same way).
STAGES = ("feature_map", "features", "classifier")


@dataclass
class Stages:
    """One pass of a whole classifier: its logits, and the stages the adapter knows (None otherwise)."""

    logits: torch.Tensor
    features: torch.Tensor | None = None
    feature_map: torch.Tensor | None = None


def submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class Adapter:
    """How to run one family of classifiers stage by stage.

    `forward_features(model, x)` gives the last feature map before pooling and `forward_pool(model, m)` the
    classifier's input f; both work on the model with or without its classifier (imood's own model keeps the
    backbone with an nn.Identity in the classifier's place). `classifier(model)` is the final nn.Linear of the
    whole model (None if there is none); `run` gives every stage of the whole model in one pass.
    `spatial_map`: False when the family has no [N, C, H, W] map before pooling that detectors could shape.
    """

    family = "custom"
    spatial_map = True

    def classifier_name(self, model: nn.Module) -> str | None:
        """Dotted name of the final linear layer in the whole model (its state dict's prefix)."""
        return None

    def classifier(self, model: nn.Module) -> nn.Linear | None:
        name = self.classifier_name(model)
        layer = submodule(model, name) if name else None
        return layer if isinstance(layer, nn.Linear) else None

    def forward_features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_pool(self, model: nn.Module, m: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, model: nn.Module, m: torch.Tensor) -> torch.Tensor:
        """Logits of the whole model from a (modified) feature map."""
        head = self.classifier(model)
        if head is None:
            raise NotImplementedError(f"{self.family}: no head on the feature map")
        return head(self.forward_pool(model, m))

    def run(self, model: nn.Module, x: torch.Tensor) -> Stages:
        m = self.forward_features(model, x)
        f = self.forward_pool(model, m)
        head = self.classifier(model)
        return Stages(head(f) if head is not None else self.forward_head(model, m), f, m)

    def missing(self, model: nn.Module, stage: str) -> str:
        """Why this model lacks `stage` (a phrase for the one-line note naming the unavailable detectors)."""
        if stage == "classifier":
            return f"its head is not one linear layer on the pooled features ({self.family})"
        if stage == "feature_map":
            return f"it has no spatial feature map before pooling ({self.family})"
        return f"imood does not know where its pooled features are ({self.family})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.family!r})"


class TimmAdapter(Adapter):
    """timm's own interface (and imood's micro ResNet, which has it): forward_features, forward_head."""

    family = "timm"

    def classifier_name(self, model: nn.Module) -> str | None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        name = cfg.get("classifier") if isinstance(cfg, dict) else None
        if isinstance(name, str) and isinstance(submodule(model, name), nn.Linear):
            return name
        get = getattr(model, "get_classifier", None)
        head = get() if callable(get) else None
        if isinstance(head, nn.Linear):
            return next((n for n, mod in model.named_modules() if mod is head), None)
        return None

    def forward_features(self, model, x):
        return model.forward_features(x)

    def forward_pool(self, model, m):
        return model.forward_head(m, pre_logits=True)

    def forward_head(self, model, m):
        return model.forward_head(m)

    def missing(self, model, stage):
        if stage == "classifier":
            cfg = getattr(model, "pretrained_cfg", None) or {}
            heads = cfg.get("classifier") if isinstance(cfg, dict) else None
            if isinstance(heads, (tuple, list)):
                return f"its logits average {len(heads)} heads ({', '.join(heads)}), not one linear layer"
        return super().missing(model, stage)


class LastLinear(Adapter):
    """A module whose last linear layer makes the logits: f is that layer's input; no feature map is known."""

    family = "split at its last linear layer"
    spatial_map = False

    def classifier_name(self, model):
        return last_linear(model)

    def forward_features(self, model, x):
        return x  # the stage before pooling is unknown: detectors that need it are unavailable

    def forward_pool(self, model, x):
        return model(x)  # the model without its classifier ends at f

    def run(self, model, x):
        head = self.classifier(model)
        seen: list[torch.Tensor] = []
        hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            logits = model(x)
        finally:
            hook.remove()
        return Stages(logits, seen[-1] if seen else None, None)

    def missing(self, model, stage):
        if stage == "feature_map":
            return (f"imood has no adapter for {type(model).__name__} and does not know where it pools (its last "
                    "linear layer is taken as the classifier)")
        return super().missing(model, stage)


class Whole(Adapter):
    """A module imood cannot split: its logits only."""

    family = "logits only"
    spatial_map = False

    def run(self, model, x):
        return Stages(model(x))

    def missing(self, model, stage):
        return f"imood cannot split {type(model).__name__} (no adapter, and no final linear layer making its logits)"


@dataclass
class Split(Adapter):
    """A split given as callables, for a module no adapter knows.

    feature_map(x) -> the last map before pooling [N, C, H, W], with pool(m) -> features [N, d]; or
    features(x) -> [N, d] directly (no map then). classifier: the nn.Linear making the logits from the
    features (its weight and bias are what ViM, DICE, ... read); without one the logits come from the model.
    """

    feature_map: Callable[[torch.Tensor], torch.Tensor] | None = None
    pool: Callable[[torch.Tensor], torch.Tensor] | None = None
    head: nn.Linear | None = None
    features: Callable[[torch.Tensor], torch.Tensor] | None = None
    family: str = "split given by the caller"
    spatial_map: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        if (self.feature_map is None) != (self.pool is None):
            raise ValueError("Split: feature_map and pool go together (the map, and how it becomes features)")
        if self.feature_map is not None and self.features is not None:
            raise ValueError("Split: give feature_map + pool, or features, not both")
        if self.head is not None and not isinstance(self.head, nn.Linear):
            raise ValueError(f"Split: head must be an nn.Linear, got {type(self.head).__name__}")
        if self.head is not None and self.feature_map is None and self.features is None:
            raise ValueError("Split: a head needs the features it reads (feature_map + pool, or features)")
        self.spatial_map = self.feature_map is not None

    def classifier(self, model):
        return self.head

    def forward_features(self, model, x):
        return self.feature_map(x) if self.feature_map is not None else x

    def forward_pool(self, model, m):
        if self.pool is not None:
            return self.pool(m)
        if self.features is None:
            raise NotImplementedError("Split: no features given")
        return self.features(m)

    def forward_head(self, model, m):
        if self.head is None:
            raise NotImplementedError("Split: no head given")
        return self.head(self.forward_pool(model, m))

    def run(self, model, x):
        if self.feature_map is None and self.features is None:
            return Stages(model(x))
        m = self.forward_features(model, x)
        f = self.forward_pool(model, m)
        logits = self.head(f) if self.head is not None else model(x)
        return Stages(logits, f, m if self.feature_map is not None else None)

    def missing(self, model, stage):
        return f"the split given does not include {stage.replace('_', ' ')}"


TIMM = TimmAdapter()
LAST_LINEAR = LastLinear()
WHOLE = Whole()


def last_linear(model: nn.Module) -> str | None:
    """Name of the last nn.Linear registered in the module (its classifier, for most classifiers)."""
    name = None
    for n, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            name = n
    return name


def has_timm_interface(model: Any) -> bool:
    return callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of a module's family: torchvision's by class, timm's interface, its last linear layer, or
    none (logits only). Nothing is imported for a module that is not torchvision's."""
    if type(model).__module__.startswith("torchvision."):
        from imood_cli.models.torchvision_family import torchvision_adapter

        found = torchvision_adapter(model)
        if found is not None:
            return found
    if has_timm_interface(model):
        return TIMM
    if last_linear(model) is not None:
        return LAST_LINEAR
    return WHOLE


@dataclass(frozen=True)
class Capabilities:
    """Which stages a model hands to detectors, and for each one it lacks, why."""

    family: str
    provides: frozenset[str]
    missing: dict[str, str]

    def lacks(self, needs) -> list[str]:
        return [s for s in STAGES if s in needs and s not in self.provides]

    def why(self, needs) -> str:
        """'no feature map: <why>; no features or classifier: <why>' for the stages of `needs` this model lacks
        (stages missing for the same reason named together)."""
        by_reason: dict[str, list[str]] = {}
        for s in self.lacks(needs):
            by_reason.setdefault(self.missing.get(s, "unknown"), []).append(s.replace("_", " "))
        def listed(names: list[str]) -> str:
            return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"

        return "; ".join(f"no {listed(stages)}: {why}" for why, stages in by_reason.items())
