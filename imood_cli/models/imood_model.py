"""imood's model: a backbone seen through its family's adapter, a linear classifier, and the ImOOD heads.

backbone -> feature f -> classifier (K classes + extra outputs), aux_linear (scalar statistic -> logit),
projection (MLP d -> d -> 128, L2-normalised), lambda_head (λ(x) = exp(·) >= 1e-4, zero-init bias).

The backbone is a timm model without its classifier, imood's micro ResNet, or (imported) a torchvision model
with an nn.Identity where its final linear layer was; that layer's weights become `classifier`. An imported
model imood cannot split (`split = "none"`) keeps its own head and has no ImOOD heads: it is scored from its
logits (and whatever stages its adapter knows), never trained further.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imood_cli.core.contract import ModelOutputs
from imood_cli.errors import ImoodError, unknown_name
from imood_cli.models import micro
from imood_cli.models.adapter import (
    LAST_LINEAR,
    TIMM,
    WHOLE,
    Adapter,
    LastLinear,
    adapter_for,
    set_submodule,
    submodule,
)
from imood_cli.models.staged import StagedClassifier

PROJECTION_DIM = 128
LAMBDA_MIN = 1e-4
SOURCES = ("timm", "torchvision")
SPLITS = ("classifier", "none")
# Fields added in 0.3, written only when they differ from these defaults (older model files lack them).
NEW_FIELDS = {"source": "timm", "img_size": None, "split": "classifier"}


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild a model; stored in every checkpoint's metadata.

    source:   the library the backbone comes from (imood's micro ResNet goes by its name under "timm").
    img_size: the input size the model is built for, for models that have one (vision transformers).
    split:    "classifier" (backbone + imood's linear classifier) or "none" (the imported model's own head).
    """

    backbone: str
    num_classes: int
    extra_outputs: int = 0
    in_chans: int = 3
    cifar_stem: bool = False
    source: str = "timm"
    img_size: int | None = None
    split: str = "classifier"

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if k not in NEW_FIELDS or v != NEW_FIELDS[k]}

    @classmethod
    def from_dict(cls, d: dict) -> Architecture:
        known = {k: d[k] for k in ("backbone", "num_classes", "extra_outputs", "in_chans", "cifar_stem", *NEW_FIELDS)
                 if k in d}
        return cls(**known)


def check_new_fields(a: Any, where: str) -> dict[str, Any]:
    """The 0.3 architecture fields of a model file's metadata, checked (their defaults where absent)."""
    def bad(what: str) -> ImoodError:
        return ImoodError(f"{where} has malformed metadata: architecture.{what}")

    a = a if isinstance(a, dict) else {}
    out = {k: a.get(k, v) for k, v in NEW_FIELDS.items()}
    if out["source"] not in SOURCES:
        raise bad(f"source must be one of {', '.join(SOURCES)}, got {out['source']!r}")
    size = out["img_size"]
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 4096):
        raise bad(f"img_size must be null or a whole number in 1..4096, got {size!r}")
    if out["split"] not in SPLITS:
        raise bad(f"split must be one of {', '.join(SPLITS)}, got {out['split']!r}")
    return out


def apply_cifar_stem(backbone: nn.Module, in_chans: int) -> None:
    """3×3 stride-1 first convolution and no max-pool, for 32×32 (and smaller) images."""
    conv = getattr(backbone, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(backbone, "maxpool"):
        raise ImoodError(
            f"--cifar-stem needs a ResNet-style backbone with a single conv1 and a maxpool; "
            f"{type(backbone).__name__} has another stem (use --no-cifar-stem)"
        )
    backbone.conv1 = nn.Conv2d(in_chans, conv.out_channels, 3, stride=1, padding=1, bias=False)
    backbone.maxpool = nn.Identity()


def canonical_model_name(name: str) -> str:
    """timm's spelling of a model name: the reference code's `--md ResNet50` is timm's `resnet50`."""
    if name.lower() == micro.NAME:
        return micro.NAME
    import timm

    if timm.is_model(name) or not timm.is_model(name.lower()):
        return name
    return name.lower()


@dataclass
class Backbone:
    """A built backbone: the module, its adapter, the width of its pooled features, and the name its classifier
    had in the whole source model's state dict (None when the classifier stays inside or never existed)."""

    module: nn.Module
    adapter: Adapter
    feature_dim: int | None
    classifier_key: str | None


def build_backbone(arch: Architecture, pretrained: bool = False) -> Backbone:
    """The backbone of `arch`: timm's model without its classifier (or imood's own micro ResNet, built without
    timm), or torchvision's with an nn.Identity in its final linear layer's place; whole when split is "none"."""
    name = arch.backbone
    if arch.source == "timm" and name == micro.NAME:
        if pretrained:
            raise ImoodError(f"{micro.NAME} has no pretrained weights")
        module = micro.MicroResNet(arch.in_chans)
        if arch.cifar_stem:
            apply_cifar_stem(module, arch.in_chans)
        return Backbone(module, TIMM, module.num_features, None)
    if arch.source == "timm":
        return _timm_backbone(arch, pretrained)
    if arch.source == "torchvision":
        return _torchvision_backbone(arch, pretrained)
    raise ImoodError(f"unknown model source {arch.source!r} (known: {', '.join(SOURCES)})")


def _timm_backbone(arch: Architecture, pretrained: bool) -> Backbone:
    import timm

    from imood_cli.models import timm_family

    if not timm.is_model(arch.backbone):
        raise unknown_name("timm model", arch.backbone, [*timm.list_models(), micro.NAME])
    whole = arch.split == "none"
    module = timm_family.create(arch.backbone, arch.num_classes if whole else 0, arch.in_chans, arch.img_size,
                                pretrained=pretrained, download=True)
    if arch.cifar_stem:
        apply_cifar_stem(module, arch.in_chans)
    key = timm_family.classifier_key(module)
    return Backbone(module, TIMM, timm_family.feature_dim(module), None if whole or not isinstance(key, str) else key)


def _torchvision_backbone(arch: Architecture, pretrained: bool) -> Backbone:
    from imood_cli.models import torchvision_family

    if pretrained:
        raise ImoodError("torchvision weights are read by imood import-model --pretrained, not at build time")
    if arch.in_chans != 3:
        raise ImoodError(f"torchvision's classifiers take 3 channels, the architecture says {arch.in_chans}")
    module = torchvision_family.create(arch.backbone, arch.num_classes, arch.img_size)
    adapter = adapter_for(module)
    if arch.split == "none":
        # a last linear layer that does not make the logits is no split: logits only
        return Backbone(module, WHOLE if isinstance(adapter, LastLinear) else adapter, None, None)
    key = adapter.classifier_name(module)
    head = submodule(module, key) if key else None
    if not isinstance(head, nn.Linear):
        raise ImoodError(f"torchvision {arch.backbone} has no final linear layer to split off (split 'classifier')")
    set_submodule(module, key, nn.Identity())
    if arch.cifar_stem:
        apply_cifar_stem(module, arch.in_chans)
    return Backbone(module, adapter if adapter is not WHOLE else LAST_LINEAR, head.in_features, key)


class ImOODModel(StagedClassifier):
    def __init__(self, arch: Architecture, pretrained: bool = False) -> None:
        super().__init__()
        self.arch = arch
        built = build_backbone(arch, pretrained)
        self.backbone = built.module
        self.adapter = built.adapter
        self.source_classifier = built.classifier_key
        d = built.feature_dim
        self.feature_dim = d
        if arch.split == "none":
            self.classifier = None
            return
        self.classifier = nn.Linear(d, arch.num_classes + arch.extra_outputs)
        self.aux_linear = nn.Linear(1, 1)
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, PROJECTION_DIM))
        self.lambda_head = nn.Linear(d, arch.num_classes)
        nn.init.zeros_(self.lambda_head.bias)

    @property
    def num_classes(self) -> int:
        return self.arch.num_classes

    @property
    def has_classifier(self) -> bool:
        return self.classifier is not None

    def _source_module(self) -> nn.Module:
        return self.backbone

    def forward(self, x: torch.Tensor, projections: bool = False, lambdas: bool = False,
                feature_map: bool = False) -> ModelOutputs:
        keep_map = feature_map and self.adapter.spatial_map
        if self.classifier is None:
            s = self.adapter.run(self.backbone, x)
            return ModelOutputs(logits=s.logits, features=s.features, feature_map=s.feature_map if keep_map else None)
        # timm's forward is forward_head(forward_features(x)); with num_classes=0 its head is pooling only.
        m = self.adapter.forward_features(self.backbone, x)
        f = self.adapter.forward_pool(self.backbone, m)
        out = self.classifier(f)
        k = self.arch.num_classes
        return ModelOutputs(
            logits=out[:, :k],
            extra=out[:, k:] if self.arch.extra_outputs else None,
            features=f,
            projections=F.normalize(self.projection(f).float(), dim=1) if projections else None,
            lambdas=torch.exp(self.lambda_head(f).float()).clamp(min=LAMBDA_MIN) if lambdas else None,
            feature_map=m if keep_map else None,
        )

    def logits_from_feature_map(self, m: torch.Tensor) -> torch.Tensor:
        """Pooling and the classifier's class outputs on a (modified) feature map."""
        if self.classifier is None:
            return self.adapter.forward_head(self.backbone, m)
        return self.logits_from_features(self.adapter.forward_pool(self.backbone, m))

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """The classifier's class outputs on (modified) penultimate features."""
        if self.classifier is None:
            raise ImoodError(f"{self.arch.backbone} has no linear classifier imood can re-run")
        return self.classifier(f)[:, : self.arch.num_classes]

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's weight [K, d] and bias [K] for the K classes (not the extra outputs)."""
        if self.classifier is None:
            raise ImoodError(f"{self.arch.backbone} has no linear classifier")
        k = self.arch.num_classes
        return self.classifier.weight[:k], self.classifier.bias[:k]


@torch.no_grad()
def forward_macs(model: nn.Module, in_chans: int, size: int) -> float:
    """Multiply-accumulates of one image's forward pass through the convolutions and linear layers."""
    total = 0.0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, in_chans, size, size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total
