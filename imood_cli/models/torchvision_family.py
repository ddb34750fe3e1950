"""torchvision classifiers by name: their stages (one adapter per family), building them, their weights from
the local torch hub cache only, their recipe.

torchvision has no forward_features / forward_head, so each family's adapter writes out the part of its
`forward` before pooling and the part between pooling and the final linear layer (dropout included, so that
the classifier applied to `forward_pool` is exactly the model's logits in any mode). Families without an
adapter are split at their last linear layer when it makes the logits (adapter.LastLinear).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from imood_cli.errors import ImoodError, unknown_name
from imood_cli.models.adapter import Adapter
from imood_cli.models.preprocess import Recipe


class TorchvisionAdapter(Adapter):
    def __init__(self, family: str, features: Callable, pool: Callable, classifier: str,
                 spatial_map: bool = True) -> None:
        self.family = f"torchvision {family}"
        self._features, self._pool, self._classifier = features, pool, classifier
        self.spatial_map = spatial_map

    def classifier_name(self, model):
        return self._classifier

    def forward_features(self, model, x):
        return self._features(model, x)

    def forward_pool(self, model, m):
        return self._pool(model, m)

    def missing(self, model, stage):
        if stage == "feature_map" and not self.spatial_map:
            return f"its last stage is tokens [N, L, D], not a spatial map ({self.family})"
        return super().missing(model, stage)


def _resnet_features(m, x):
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def _regnet_features(m, x):
    return m.trunk_output(m.stem(x))


def _avgpool(m, x):
    return torch.flatten(m.avgpool(x), 1)


def _features(m, x):
    return m.features(x)


def _densenet_features(m, x):
    return F.relu(m.features(x))  # torchvision applies this ReLU in forward, before pooling


def _adaptive_pool(m, x):
    return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)


def _then(pool: Callable, upto: int) -> Callable:
    """Pooling, then the classifier Sequential's layers before its final linear layer (index `upto`)."""
    def run(m, x):
        x = pool(m, x)
        for layer in list(m.classifier)[:upto]:
            x = layer(x)
        return x
    return run


def _convnext_pool(m, x):
    x = m.avgpool(x)
    return m.classifier[1](m.classifier[0](x))  # LayerNorm2d, Flatten


def _vit_features(m, x):
    x = m._process_input(x)
    cls = m.class_token.expand(x.shape[0], -1, -1)
    return m.encoder(torch.cat([cls, x], dim=1))


def _vit_pool(m, x):
    x = x[:, 0]
    for name, layer in m.heads.named_children():
        if name != "head":  # the optional pre_logits + activation
            x = layer(x)
    return x


# By class name (torchvision's own classes, checked by module before this table is read).
ADAPTERS: dict[str, TorchvisionAdapter] = {
    "ResNet": TorchvisionAdapter("ResNet", _resnet_features, _avgpool, "fc"),
    "RegNet": TorchvisionAdapter("RegNet", _regnet_features, _avgpool, "fc"),
    "MobileNetV2": TorchvisionAdapter("MobileNetV2", _features, _then(_adaptive_pool, 1), "classifier.1"),
    "MobileNetV3": TorchvisionAdapter("MobileNetV3", _features, _then(_avgpool, 3), "classifier.3"),
    "EfficientNet": TorchvisionAdapter("EfficientNet", _features, _then(_avgpool, 1), "classifier.1"),
    "ConvNeXt": TorchvisionAdapter("ConvNeXt", _features, _convnext_pool, "classifier.2"),
    "DenseNet": TorchvisionAdapter("DenseNet", _densenet_features, _adaptive_pool, "classifier"),
    "VisionTransformer": TorchvisionAdapter("VisionTransformer", _vit_features, _vit_pool, "heads.head",
                                            spatial_map=False),
}


def torchvision_adapter(model: nn.Module) -> Adapter | None:
    return ADAPTERS.get(type(model).__name__) if type(model).__module__.startswith("torchvision.") else None


# ---- building by name
def names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def check_name(name: str) -> None:
    known = names()
    if name not in known:
        raise unknown_name("torchvision classifier", name, known)


def _size_options(name: str, image_size: int | None) -> dict:
    # Only the vision transformers are built for one input size (their position embedding).
    return {"image_size": image_size} if image_size and name.startswith("vit_") else {}


def fixed_size(name: str) -> bool:
    return name.startswith("vit_")


def create(name: str, num_classes: int, image_size: int | None = None) -> nn.Module:
    """The torchvision classifier `name` with `num_classes` outputs and random weights."""
    import torchvision

    check_name(name)
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                            **_size_options(name, image_size))
    except (ValueError, TypeError, AssertionError, RuntimeError) as exc:
        raise ImoodError(f"cannot build torchvision {name} for {num_classes} classes at {image_size} px: "
                         f"{' '.join(str(exc).split())[:160]}") from None


def default_weights(name: str):
    import torchvision

    check_name(name)
    return torchvision.models.get_model_weights(name).DEFAULT


def cached_weights_file(name: str) -> Path:
    """The torch hub cache file of `name`'s DEFAULT weights, or one clear error: imood never downloads them."""
    weights = default_weights(name)
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    path = hub / Path(urlparse(weights.url).path).name
    if not path.is_file():
        raise ImoodError(f"no pretrained weights for torchvision {name} in the local cache ({path} is absent); imood "
                         "does not download them: fetch them once online (python -c \"import torchvision; "
                         f"torchvision.models.get_model('{name}', weights='DEFAULT')\"), or pass --weights FILE")
    return path


# torchvision's DenseNet weights predate its module names: 'norm.1' for 'norm1' (its own loader renames them).
_DENSENET_OLD = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                           r"running_var))$")


def rename_legacy(name: str, sd: dict) -> dict:
    if not name.startswith("densenet"):
        return sd
    out = {}
    for k, v in sd.items():
        m = _DENSENET_OLD.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def pretrained_classes(name: str) -> int:
    return len(default_weights(name).meta.get("categories") or [])


def recipe(name: str) -> Recipe:
    """Mean, std and sizes of the DEFAULT weights' transforms (all of torchvision's classifiers: ImageNet's)."""
    weights = default_weights(name)
    t = weights.transforms()
    crop = t.crop_size[0] if isinstance(t.crop_size, (list, tuple)) else t.crop_size
    return Recipe(tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std), int(crop),
                  f"torchvision {weights} transforms")
