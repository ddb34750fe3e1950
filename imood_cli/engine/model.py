"""A timm backbone plus the ImOOD heads (SPEC §3).

backbone → feature f → classifier (K classes + extra outputs), aux_linear (scalar statistic → logit),
projection (MLP d → d → 128, L2-normalised), lambda_head (λ(x) = exp(·) ≥ 1e-4, zero-init bias).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imood_cli.core.contract import ModelOutputs
from imood_cli.engine import micro
from imood_cli.errors import ImoodError, unknown_name

PROJECTION_DIM = 128
LAMBDA_MIN = 1e-4


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild a model; stored in every checkpoint's metadata."""

    backbone: str
    num_classes: int
    extra_outputs: int = 0
    in_chans: int = 3
    cifar_stem: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Architecture:
        known = {k: d[k] for k in ("backbone", "num_classes", "extra_outputs", "in_chans", "cifar_stem") if k in d}
        return cls(**known)


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


def create_backbone(name: str, in_chans: int, cifar_stem: bool, pretrained: bool = False) -> nn.Module:
    """The timm model of this name without its classifier (or imood's own micro ResNet, built without timm)."""
    if name == micro.NAME:
        if pretrained:
            raise ImoodError(f"{micro.NAME} has no pretrained weights")
        backbone = micro.MicroResNet(in_chans)
        if cifar_stem:
            apply_cifar_stem(backbone, in_chans)
        return backbone
    import timm

    if not timm.is_model(name):
        raise unknown_name("timm model", name, [*timm.list_models(), micro.NAME])
    try:
        backbone = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans)
    except ImoodError:
        raise
    except Exception as exc:
        if pretrained:
            raise ImoodError(
                f"cannot load pretrained weights for {name} ({type(exc).__name__}); they come from the "
                "Hugging Face hub: go online once, or drop --pretrained"
            ) from None
        raise
    if cifar_stem:
        apply_cifar_stem(backbone, in_chans)
    return backbone


class ImOODModel(nn.Module):
    def __init__(self, arch: Architecture, pretrained: bool = False) -> None:
        super().__init__()
        self.arch = arch
        self.backbone = create_backbone(arch.backbone, arch.in_chans, arch.cifar_stem, pretrained)
        d = self.backbone.num_features
        self.feature_dim = d
        self.classifier = nn.Linear(d, arch.num_classes + arch.extra_outputs)
        self.aux_linear = nn.Linear(1, 1)
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, PROJECTION_DIM))
        self.lambda_head = nn.Linear(d, arch.num_classes)
        nn.init.zeros_(self.lambda_head.bias)

    def forward(self, x: torch.Tensor, projections: bool = False, lambdas: bool = False,
                feature_map: bool = False) -> ModelOutputs:
        # timm's forward is forward_head(forward_features(x)); with num_classes=0 its head is pooling only.
        m = self.backbone.forward_features(x)
        f = self.backbone.forward_head(m, pre_logits=True)
        out = self.classifier(f)
        k = self.arch.num_classes
        return ModelOutputs(
            logits=out[:, :k],
            extra=out[:, k:] if self.arch.extra_outputs else None,
            features=f,
            projections=F.normalize(self.projection(f).float(), dim=1) if projections else None,
            lambdas=torch.exp(self.lambda_head(f).float()).clamp(min=LAMBDA_MIN) if lambdas else None,
            feature_map=m if feature_map else None,
        )

    def logits_from_feature_map(self, m: torch.Tensor) -> torch.Tensor:
        """Pooling and the classifier's class outputs on a (modified) feature map."""
        return self.logits_from_features(self.backbone.forward_head(m, pre_logits=True))

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """The classifier's class outputs on (modified) penultimate features."""
        return self.classifier(f)[:, : self.arch.num_classes]

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's weight [K, d] and bias [K] for the K classes (not the extra outputs)."""
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

