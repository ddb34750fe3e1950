"""Import checkpoints of the reference code (PASCL-based ImOOD, `.pth` state dicts) as imood runs.

The reference CIFAR ResNet names its layers `conv1`, `bn1`, `layerN.B.{conv1,bn1,conv2,bn2}`,
`layerN.B.shortcut.{0,1}` (1×1 conv + BN of a downsampling block) and `linear` (K class outputs,
K+1 when trained with bin_disc), plus the optional heads `aux_linear`, `projection.{0,2}` and
`lambda_linear`. timm's ResNet has the same layers under `downsample.{0,1}`; the heads map onto
`classifier`, `aux_linear`, `projection`, `lambda_head`.

Files are read with `torch.load(weights_only=True)` only: a pickle that names any callable other
than torch's tensor rebuilders is refused before anything in it runs.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imood_cli.engine.checkpoint import save_tensors, sha256_file
from imood_cli.engine.config import resolve_config
from imood_cli.engine.model import Architecture, ImOODModel
from imood_cli.engine.run import RunLock, clear_run, is_run_folder
from imood_cli.errors import ImoodError
from imood_cli.fs.atomic import atomic_write_text
from imood_cli.fs.safe import read_capped, weights_cap

# Where a checkpoint dict may keep its state dict (the reference and common trainers).
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net", "network")
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


@dataclass
class ImportResult:
    out: Path
    model_path: Path
    arch: Architecture
    class_counts: list[int]
    source_sha256: str
    container: str
    stripped_prefix: str
    epoch: int | None
    heads_loaded: list[str]
    heads_missing: list[str] = field(default_factory=list)


# ---- reading the file
def read_reference_file(path: Path) -> Any:
    """`torch.load(path, weights_only=True)` with every failure turned into one clear ImoodError.

    The bytes are read first (a regular file within the machine's memory: never a FIFO or a device) and
    torch.load reads them from memory, so nothing but this one read touches the path."""
    path = Path(path)
    data = read_capped(path, "checkpoint", weights_cap())
    if _looks_like_safetensors(data):
        raise ImoodError(f"{path} is a safetensors file, not a reference .pth checkpoint; an imood model file needs "
                         "no import (imood score it directly)")
    if is_torchscript(data):
        raise ImoodError(f"{path} is a TorchScript archive (torch.jit.save), not a state dict; imood imports weights "
                         "only: in the code that made it, torch.save(model.state_dict(), path)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says what matters
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"it asks to run or build {found.group(1)}" if found else "it is not a pickle of plain tensors"
        raise ImoodError(
            f"refused {path}: not a plain weights file ({what}); imood loads .pth files with weights_only=True "
            "and never unpickles arbitrary objects. If you trust the file, re-save its state dict with "
            "torch.save(model.state_dict(), path)"
        ) from None
    except Exception as exc:  # truncated zip, EOF, struct errors: all mean a damaged file
        detail = " ".join(str(exc).split(". ")[0].split())[:120] or type(exc).__name__
        raise ImoodError(f"{path} is corrupt or truncated: not a readable PyTorch checkpoint ({detail})") from None


def is_torchscript(data: bytes) -> bool:
    """A zip written by torch.jit.save: its archive holds compiled code (`code/`, `constants.pkl`)."""
    if not data.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return False
    return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in names)


def _looks_like_safetensors(data: bytes) -> bool:
    head = data[:9]
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and any(
        isinstance(v, torch.Tensor) for v in obj.values())


def find_state_dict(obj: Any, path: Path) -> tuple[dict[str, Any], str, int | None]:
    """The state dict in a loaded file: the file itself, or under 'state_dict' / 'model' / ...

    Returns (state dict, the key it sat under or "", the epoch the file names, if any).
    """
    if not isinstance(obj, dict):
        raise ImoodError(f"{path} holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    epoch = obj.get("epoch") if isinstance(obj.get("epoch"), int) and not isinstance(obj.get("epoch"), bool) else None
    for key in CONTAINER_KEYS:
        if _is_state_dict(obj.get(key)):
            return obj[key], key, epoch
    if _is_state_dict(obj):
        return obj, "", None
    keys = ", ".join(repr(k) for k in list(obj)[:6])
    odd = next((k for k in obj if not isinstance(k, str)), None)
    if odd is not None and any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ImoodError(f"{path} maps {type(odd).__name__} keys such as {odd!r} to tensors: a state dict maps "
                         "parameter names (text) to tensors")
    raise ImoodError(f"{path} holds no state dict (top-level keys: {keys}; looked for the tensors themselves or "
                     f"under {', '.join(CONTAINER_KEYS)})")


def strip_prefixes(sd: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Drop `module.` (DDP) and `_orig_mod.` (torch.compile) when every key carries them."""
    stripped = ""
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                stripped += p
                changed = True
    return sd, stripped


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


# ---- writing a run folder
def parse_class_counts(text: str | list[int] | None) -> list[int] | None:
    if text is None:
        return None
    items = text if isinstance(text, list) else [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    try:
        counts = [int(p) for p in items]
    except ValueError:
        raise ImoodError(f"--class-counts takes whole numbers separated by commas, got {text!r}") from None
    if not counts or any(c < 1 for c in counts):
        raise ImoodError("--class-counts needs at least one class and a count >= 1 for every class")
    return counts


def import_reference(file: Path, out: Path, dataset: str, data_root: str | Path | None = None,
                     imbalance_ratio: float | None = None, class_counts: list[int] | None = None,
                     ood_metric: str | None = None, logit_adjust: float | None = None,
                     force: bool = False) -> ImportResult:
    """Turn a reference `.pth` into `<out>/model.safetensors` + `<out>/config.json` (a run folder)."""
    from imood_cli.engine.train import model_metadata
    from imood_cli.registry import registry

    file, out = Path(file), Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise ImoodError(f"--out {out} is a file; give a folder for the imported run")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ImoodError(f"{out} already exists and is not empty; pick another --out "
                             "(or --force to replace an imood run there)")
        if not is_run_folder(out):
            raise ImoodError(f"{out} is not an imood run folder (no imood config.json): --force only replaces imood's "
                             "own files in a run folder imood made; pick another --out")
    if not dataset:
        raise ImoodError("give the dataset the checkpoint was trained on (--ds cifar10 | cifar100 | ...)")
    cli = dict(dataset=dataset, data_root=None if data_root is None else str(data_root),
               imbalance_ratio=imbalance_ratio, ood_metric=ood_metric, logit_adjust=logit_adjust,
               save_root=str(out.parent), name=out.name)
    cfg = resolve_config(cli)
    obj = read_reference_file(file)
    if class_counts is None:
        from imood_cli.engine.benchmark import load_benchmark

        bench = load_benchmark(cfg.dataset, cfg.data_root, imbalance_ratio=cfg.imbalance_ratio, num_ood_samples=0)
        class_counts = list(bench.class_counts)
    class_counts = [int(c) for c in class_counts]
    ref = convert(obj, len(class_counts), file)
    if ood_metric is None:
        # The reference adds the extra output only for bin_disc; otherwise its default loss is oe.
        cfg.ood_metric = "bin_disc" if ref.arch.extra_outputs else "oe"
    metric = registry().detector(cfg.ood_metric)
    if metric.extra_outputs != ref.arch.extra_outputs:
        raise ImoodError(f"--ood_metric {cfg.ood_metric} trains {metric.extra_outputs} extra classifier output(s), but "
                         f"{file}'s linear layer has {ref.arch.extra_outputs} beyond the {len(class_counts)} classes")
    cfg.model, cfg.cifar_stem = ref.arch.backbone, ref.arch.cifar_stem
    model = ImOODModel(ref.arch)
    model.load_state_dict(ref.tensors)
    sha = sha256_file(file)
    meta = model_metadata(cfg, ref.arch, class_counts, ref.epoch)
    meta["imported_from"] = {
        "file": file.name, "sha256": sha, "layout": "reference (PASCL/ImOOD CIFAR ResNet)",
        "container": ref.container, "stripped_prefix": ref.stripped_prefix, "fresh_heads": ref.heads_missing,
        "metric_given": ood_metric is not None,
    }
    if force:
        with RunLock(out):  # not while it trains
            clear_run(out)  # its scores, fits and checkpoints belonged to the model being replaced
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", cfg.to_json())
    model_path = out / "model.safetensors"
    save_tensors(model_path, model.state_dict(), meta)  # last: its presence means the import completed
    return ImportResult(out, model_path, ref.arch, class_counts, sha, ref.container, ref.stripped_prefix, ref.epoch,
                        ref.heads_loaded, ref.heads_missing)
