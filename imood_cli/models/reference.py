"""Checkpoints of the reference code (PASCL-based ImOOD, `.pth` state dicts) as imood models.

The reference CIFAR ResNet names its layers `conv1`, `bn1`, `layerN.B.{conv1,bn1,conv2,bn2}`,
`layerN.B.shortcut.{0,1}` (1×1 conv + BN of a downsampling block) and `linear` (K class outputs,
K+1 when trained with bin_disc), plus the optional heads `aux_linear`, `projection.{0,2}` and
`lambda_linear`. timm's ResNet has the same layers under `downsample.{0,1}`; the heads map onto
`classifier`, `aux_linear`, `projection`, `lambda_head`.

Files are read with `torch.load(weights_only=True)` only (`models.weights`): a pickle that names any
callable other than torch's tensor rebuilders is refused before anything in it runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imood_cli.errors import ImoodError
from imood_cli.models.imood_model import Architecture, ImOODModel
from imood_cli.models.weights import find_state_dict, load_pickle, looks_like_safetensors, read_bytes
from imood_cli.models.weights import strip_prefixes as _strip

# Prefixes that wrappers add to every key: DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Reference head → our head. `linear` (and a torchvision-style `fc`) is the classifier.
HEADS = {"linear": "classifier", "fc": "classifier", "aux_linear": "aux_linear", "projection": "projection",
         "lambda_linear": "lambda_head"}
OPTIONAL_HEADS = ("aux_linear", "projection", "lambda_head")
# Blocks per stage → timm name.
BASIC_RESNETS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}
BOTTLENECK_RESNETS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


@dataclass
class ReferenceWeights:
    """What was found in a reference checkpoint, already renamed to our model's keys."""

    arch: Architecture
    tensors: dict[str, torch.Tensor]  # our names
    container: str  # "" when the file is the state dict itself, else the key it sat under
    stripped_prefix: str
    epoch: int | None
    heads_loaded: list[str]
    heads_missing: list[str]


def read_reference_file(path: Path) -> Any:
    """`torch.load(path, weights_only=True)` with every failure turned into one clear ImoodError.

    The bytes are read first (a regular file within the machine's memory: never a FIFO or a device) and
    torch.load reads them from memory, so nothing but this one read touches the path."""
    path = Path(path)
    data = read_bytes(path, "checkpoint")
    if looks_like_safetensors(data):
        raise ImoodError(f"{path} is a safetensors file, not a reference .pth checkpoint; an imood model file needs "
                         "no import (imood score it directly)")
    return load_pickle(data, path)


def strip_prefixes(sd: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Drop `module.` (DDP) and `_orig_mod.` (torch.compile) when every key carries them."""
    return _strip(sd, WRAPPER_PREFIXES)


# ---- mapping names and inferring the architecture
def _our_name(key: str) -> str | None:
    """Our model's key for a reference key, or None if the key is not part of the reference layout."""
    head, _, rest = key.partition(".")
    if head in HEADS:
        return f"{HEADS[head]}.{rest}"
    if head in ("conv1", "bn1"):
        return f"backbone.{key}"
    m = _BLOCK_KEY.match(key)
    if m:
        rest = m.group(3)
        if rest.startswith("shortcut."):
            rest = "downsample." + rest[len("shortcut."):]
        return f"backbone.layer{m.group(1)}.{m.group(2)}.{rest}"
    return None


def infer_architecture(sd: dict[str, torch.Tensor], num_classes: int, path: Path) -> Architecture:
    conv1 = sd.get("conv1.weight")
    if not isinstance(conv1, torch.Tensor) or conv1.ndim != 4:
        raise ImoodError(f"{path} does not look like the reference code's ResNet (no 4-d conv1.weight)")
    blocks = [0, 0, 0, 0]
    for k in sd:
        m = _BLOCK_KEY.match(k)
        if m:
            stage = int(m.group(1)) - 1
            blocks[stage] = max(blocks[stage], int(m.group(2)) + 1)
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in sd)
    table = BOTTLENECK_RESNETS if bottleneck else BASIC_RESNETS
    name = table.get(tuple(blocks))
    if name is None:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise ImoodError(f"{path}: a {kind} ResNet with {tuple(blocks)} blocks per stage is not a layout this importer "
                         f"knows ({', '.join(f'{v} {b}' for b, v in table.items())})")
    kernel = conv1.shape[-1]
    if kernel not in (3, 7):
        raise ImoodError(f"{path}: conv1 has a {kernel}×{kernel} kernel; expected 3×3 (CIFAR stem) or 7×7")
    linear = sd.get("linear.weight", sd.get("fc.weight"))
    if not isinstance(linear, torch.Tensor) or linear.ndim != 2:
        raise ImoodError(f"{path} has no classifier (linear.weight)")
    rows = linear.shape[0]
    if rows == num_classes:
        extra = 0
    elif rows == num_classes + 1:
        extra = 1  # bin_disc's ID-vs-OOD logit, the last output
    else:
        raise ImoodError(f"{path}: linear.weight has {rows} outputs, but {num_classes} classes need {num_classes} "
                         f"(or {num_classes + 1} with bin_disc's extra output): wrong number of classes?")
    return Architecture(name, num_classes, extra, int(conv1.shape[1]), cifar_stem=kernel == 3)


def convert(obj: Any, num_classes: int, path: Path) -> ReferenceWeights:
    """Rename and check a loaded reference checkpoint against the model it implies."""
    sd, container, epoch = find_state_dict(obj, path)
    sd, stripped = strip_prefixes(sd)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ImoodError(f"{path}: state dict entry {bad[0]!r} is a {type(sd[bad[0]]).__name__}, not a tensor")
    arch = infer_architecture(sd, num_classes, path)
    renamed: dict[str, torch.Tensor] = {}
    unknown = []
    for k, v in sd.items():
        ours = _our_name(k)
        if ours is None:
            unknown.append(k)
        else:
            renamed[ours] = v
    if any(k.startswith("linear.") for k in sd) and any(k.startswith("fc.") for k in sd):
        raise ImoodError(f"{path} has both linear and fc classifiers: not the reference layout")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the fresh heads are the same on every import
        target = ImOODModel(arch).state_dict()
    unknown += [k for k, ours in ((k, _our_name(k)) for k in sd) if ours is not None and ours not in target]
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise ImoodError(f"{path} has weights the reference {arch.backbone} does not have: "
                         f"{', '.join(unknown[:3])}{more} (another architecture?)")
    for k, v in renamed.items():
        if tuple(v.shape) != tuple(target[k].shape):
            ref = next(r for r in sd if _our_name(r) == k)
            what = "number of classes" if k.startswith(("classifier.", "lambda_head.")) else "architecture"
            raise ImoodError(f"{path}: {ref} has shape {tuple(v.shape)}, expected {tuple(target[k].shape)} for "
                             f"{arch.backbone} with {num_classes} classes (wrong {what}?)")
        want = target[k].dtype
        if v.dtype != want and not (v.is_floating_point() and want.is_floating_point):
            # a bool, integer or complex tensor where a float is expected (or the reverse) is not a cast
            # imood makes silently: it would hide a broken or foreign file
            ref = next(r for r in sd if _our_name(r) == k)
            raise ImoodError(f"{path}: {ref} is {v.dtype}, expected {want}; not a weights file of this model")
        if v.is_floating_point() and not torch.isfinite(v).all():
            ref = next(r for r in sd if _our_name(r) == k)
            raise ImoodError(f"{path}: {ref} holds NaN or infinite values; the checkpoint is broken")
    missing = [k for k in target if k not in renamed and not k.endswith("num_batches_tracked")]
    required = [k for k in missing if not k.startswith(tuple(h + "." for h in OPTIONAL_HEADS))]
    if required:
        ref = required[0].removeprefix("backbone.").replace("downsample.", "shortcut.")
        ref = ref.replace("classifier.", "linear.")
        raise ImoodError(f"{path} is missing {len(required)} required tensor(s) of {arch.backbone}, e.g. {ref}")
    loaded, fresh = [], []
    for head in OPTIONAL_HEADS:
        have = [k for k in target if k.startswith(head + ".") and k in renamed]
        want = [k for k in target if k.startswith(head + ".")]
        if not have:
            fresh.append(head)
        elif len(have) != len(want):
            gone = next(k for k in want if k not in renamed)
            gone = gone.replace("lambda_head", "lambda_linear")
            raise ImoodError(f"{path}: the {head} head is incomplete (no {gone})")
        else:
            loaded.append(head)
    full = dict(target)
    for k, v in renamed.items():
        full[k] = v.to(target[k].dtype)
    return ReferenceWeights(arch, full, container, stripped, epoch, ["classifier"] + loaded, fresh)


def load_reference(path: Path, num_classes: int) -> tuple[ImOODModel, ReferenceWeights]:
    """An ImOODModel holding the reference checkpoint's weights (eval mode)."""
    ref = convert(read_reference_file(path), num_classes, Path(path))
    model = ImOODModel(ref.arch)
    model.load_state_dict(ref.tensors)
    return model.eval(), ref
