"""A classifier imood did not train, by library and name, with its weights, as an ImOODModel.

The whole model is built by its library with K outputs (random weights), loaded with the given weights
(a state dict of the whole model, checked name by name: missing and unexpected keys, shapes, the classifier's
output size against the benchmark's K), or with the library's pretrained weights from the local cache. Its
family's adapter then says where its classifier is: that layer's weights become imood's `classifier`, the rest
the backbone. A model whose head is not one linear layer on pooled features is kept whole (`split = "none"`).
The split is checked on a random batch: the imported model's logits must be the original's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imood_cli.errors import ImoodError
from imood_cli.models.adapter import LastLinear, adapter_for
from imood_cli.models.imood_model import Architecture, ImOODModel, apply_cifar_stem
from imood_cli.models.preprocess import Preprocess, Recipe, per_channel
from imood_cli.models.staged import StagedModel
from imood_cli.models.weights import examples, find_state_dict, read_weights, strip_prefixes

SOURCES = ("timm", "torchvision")
# Prefixes that wrappers add to every key: DDP, Lightning-style `model.` attributes, torch.compile.
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
HEADS = ("aux_linear", "projection", "lambda_head")


@dataclass
class ImportedModel:
    model: ImOODModel
    arch: Architecture
    preprocess: Preprocess
    family: str
    classifier: str | None  # the classifier's name in the source model ("fc", "head.fc", ...), None: kept whole
    weights: str  # "random", "pretrained (<file>)" or the weights file
    container: str = ""
    stripped_prefix: str = ""
    epoch: int | None = None
    notes: list[str] = field(default_factory=list)


def _build_whole(source: str, name: str, num_classes: int, in_chans: int, img_size: int | None,
                 pretrained: bool) -> nn.Module:
    if source == "timm":
        from imood_cli.models import timm_family

        return timm_family.create(name, num_classes, in_chans, img_size, pretrained=pretrained, download=False)
    from imood_cli.models import torchvision_family

    model = torchvision_family.create(name, num_classes, img_size)
    if pretrained:
        path = torchvision_family.cached_weights_file(name)
        state, _, _ = find_state_dict(read_weights(path, "cached pretrained weights"), path)
        load_checked(model, torchvision_family.rename_legacy(name, state), path, f"torchvision {name}", num_classes,
                     adapter_for(model).classifier_name(model))
    return model


def check_names(source: str, name: str) -> None:
    if source not in SOURCES:
        raise ImoodError(f"unknown model source {source!r} (known: {', '.join(SOURCES)})")
    if source == "timm":
        from imood_cli.models import timm_family

        timm_family.check_name(name)
    else:
        from imood_cli.models import torchvision_family

        torchvision_family.check_name(name)


def fixed_size(source: str, name: str) -> bool:
    if source == "timm":
        from imood_cli.models import timm_family

        return timm_family.fixed_size(name)
    from imood_cli.models import torchvision_family

    return torchvision_family.fixed_size(name)


def recipe(source: str, name: str, in_chans: int) -> Recipe:
    if source == "timm":
        from imood_cli.models import timm_family

        return timm_family.recipe(name, in_chans)
    from imood_cli.models import torchvision_family

    r = torchvision_family.recipe(name)
    return Recipe(per_channel(r.mean, in_chans), per_channel(r.std, in_chans), r.input_size, r.source)


def pretrained_classes(source: str, name: str) -> int | None:
    if source == "timm":
        from imood_cli.models import timm_family

        return timm_family.pretrained_classes(name)
    from imood_cli.models import torchvision_family

    return torchvision_family.pretrained_classes(name)


def _hint(key: str, model: nn.Module) -> str:
    first = next((k for k, v in model.state_dict().items() if v.ndim == 4), None)
    if first == key:
        return " (weights for another number of input channels? --in-chans)"
    if "pos_embed" in key or "pos_embedding" in key:
        return " (weights for another input size? --image-size)"
    return ""


def load_checked(model: nn.Module, sd: dict[str, Any], path: Path, what: str, num_classes: int,
                 classifier: str | tuple[str, ...] | None) -> None:
    """Load a whole model's state dict into `model` after naming everything that does not fit."""
    want = model.state_dict()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    for head in heads:
        got, have = sd.get(f"{head}.weight"), want.get(f"{head}.weight")
        if isinstance(got, torch.Tensor) and have is not None and got.ndim == 2 and got.shape[0] != num_classes:
            raise ImoodError(f"{path}: the classifier {head} has {got.shape[0]} outputs but the benchmark has "
                             f"{num_classes} classes (weights of another task, or the wrong --ds / --class-counts?)")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ImoodError(f"{path}: state dict entry {bad[0]!r} is a {type(sd[bad[0]]).__name__}, not a tensor")
    missing = [k for k in want if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in want]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({examples(unexpected)})")
        raise ImoodError(f"{path} does not fit {what}: {'; '.join(parts)} (another architecture?)")
    for k, v in sd.items():
        t = want[k]
        if tuple(v.shape) != tuple(t.shape):
            raise ImoodError(f"{path}: {k} has shape {tuple(v.shape)}, {what} expects {tuple(t.shape)}"
                             f"{_hint(k, model)}")
        if v.dtype != t.dtype and not (v.is_floating_point() and t.is_floating_point()):
            raise ImoodError(f"{path}: {k} is {v.dtype}, expected {t.dtype}; not a weights file of {what}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ImoodError(f"{path}: {k} holds NaN or infinite values; the weights are broken")
    full = dict(want)
    for k, v in sd.items():
        full[k] = v.to(want[k].dtype)
    model.load_state_dict(full)


def import_classifier(source: str, name: str, num_classes: int, *, image_size: int, in_chans: int = 3,
                      weights: Path | None = None, pretrained: bool = False, cifar_stem: bool = False,
                      mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> ImportedModel:
    """The classifier as an ImOODModel (eval mode) with its preprocessing record."""
    check_names(source, name)
    if weights is not None and pretrained:
        raise ImoodError("give --weights FILE or --pretrained, not both")
    if in_chans not in (1, 3):
        raise ImoodError(f"--in-chans must be 1 or 3, got {in_chans}")
    if source == "torchvision" and in_chans != 3:
        raise ImoodError("torchvision's classifiers take 3 channels (grey images are repeated to three)")
    if cifar_stem and pretrained:
        raise ImoodError("--cifar-stem replaces the first convolution: it cannot go with --pretrained")
    if pretrained:
        k = pretrained_classes(source, name)
        if k and k != num_classes:
            raise ImoodError(f"the pretrained {source} {name} classifies {k} classes but the benchmark has "
                             f"{num_classes}: fine-tune it for these classes first, then import those weights with "
                             "--weights FILE")
    img_size = image_size if fixed_size(source, name) else None
    what = f"{source} {name}" + (f" at {img_size} px" if img_size else "")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights and fresh heads are the same on every import
        whole = _build_whole(source, name, num_classes, in_chans, img_size, pretrained)
        if cifar_stem:
            apply_cifar_stem(whole, in_chans)
    adapter = adapter_for(whole)
    key = _classifier_key(source, whole, adapter)
    container, prefix, epoch = "", "", None
    if weights is not None:
        weights = Path(weights)
        sd, container, epoch = find_state_dict(read_weights(weights), weights)
        own = frozenset(k.split(".", 1)[0] + "." for k in whole.state_dict())
        sd, prefix = strip_prefixes(sd, WRAPPER_PREFIXES, keep=own)
        load_checked(whole, sd, weights, what, num_classes, key)
    whole.eval()
    probe = _probe_input(in_chans, image_size)
    staged = StagedModel(whole, adapter)
    problem = staged.check(probe)
    notes = []
    split = "classifier" if isinstance(key, str) and staged.has_classifier else "none"
    if problem and isinstance(adapter, LastLinear):
        notes.append(f"{type(whole).__name__}: {problem}; imood scores it from its logits")
        split = "none"
    elif problem:
        raise ImoodError(f"imood's split of {what} changes its outputs ({problem}); please report this")
    arch = Architecture(name, num_classes, 0, in_chans, cifar_stem, source=source, img_size=img_size, split=split)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ImOODModel(arch)
    _move_weights(whole, model, key if split == "classifier" else None, what)
    model.eval()
    with torch.no_grad():
        got, expected = model(probe).logits, whole(probe)
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise ImoodError(f"imood's model of {what} does not reproduce its logits; please report this")
    r = recipe(source, name, in_chans)
    prep = Preprocess(mean if mean is not None else r.mean, std if std is not None else r.std, image_size, in_chans,
                      "--mean/--std" if mean is not None or std is not None else r.source)
    if weights is not None:
        origin = str(weights)
    else:
        origin = "pretrained (local cache)" if pretrained else "random (no --weights, no --pretrained)"
    return ImportedModel(model, arch, prep, adapter.family, key if split == "classifier" else None, origin,
                         container, prefix, epoch, notes)


def _classifier_key(source: str, whole: nn.Module, adapter) -> str | tuple[str, ...] | None:
    if source == "timm":
        from imood_cli.models import timm_family

        return timm_family.classifier_key(whole)
    return adapter.classifier_name(whole)


def _probe_input(in_chans: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, in_chans, size, size, generator=g)


def _move_weights(whole: nn.Module, model: ImOODModel, key: str | None, what: str) -> None:
    """The whole model's tensors into imood's: the classifier's under `classifier.`, the rest under `backbone.`."""
    target = model.state_dict()
    moved: dict[str, torch.Tensor] = {}
    for k, v in whole.state_dict().items():
        if key is not None and k.startswith(key + "."):
            moved["classifier." + k[len(key) + 1:]] = v
        else:
            moved["backbone." + k] = v
    ours = [k for k in target if not k.startswith(tuple(h + "." for h in HEADS))]
    missing = [k for k in ours if k not in moved]
    extra = [k for k in moved if k not in target]
    if missing or extra:
        raise ImoodError(f"imood cannot split {what}: {examples(missing)} not found, {examples(extra)} left over; "
                         "please report this")
    model.load_state_dict({**target, **moved})
