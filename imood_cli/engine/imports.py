"""Imported models as imood run folders: `<out>/config.json` + `<out>/model.safetensors`, the format `imood train`
writes, so that `score`, `eval` and `report` use them unchanged.

Two importers share this: the reference code's checkpoints (`imood import-ckpt`, models.reference) and any
timm or torchvision classifier with its weights (`imood import-model`, models.importer). The benchmark gives
the number of classes and the class prior; the model file records where its weights came from
(`imported_from`) and, for `import-model`, how its inputs are made (`preprocess`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imood_cli.engine.runs.checkpoint import save_tensors, sha256_file
from imood_cli.engine.runs.layout import is_run_folder
from imood_cli.engine.runs.lock import RunLock
from imood_cli.engine.runs.owned import clear_run
from imood_cli.engine.training.config import TrainConfig, resolve_config
from imood_cli.errors import ImoodError
from imood_cli.fs.atomic import atomic_write_text
from imood_cli.models.adapter import Capabilities
from imood_cli.models.imood_model import Architecture, ImOODModel
from imood_cli.models.preprocess import Preprocess
from imood_cli.models.reference import convert, read_reference_file


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


@dataclass
class ModelImportResult:
    out: Path
    model_path: Path
    arch: Architecture
    class_counts: list[int]
    preprocess: Preprocess
    family: str
    classifier: str | None
    weights: str
    source_sha256: str | None
    container: str
    stripped_prefix: str
    capabilities: Capabilities
    unavailable: list[str]
    notes: list[str] = field(default_factory=list)


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


def check_out(out: Path, force: bool) -> Path:
    """The resolved --out folder, refused when it holds anything but an imood run that --force may replace."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise ImoodError(f"--out {out} is a file; give a folder for the imported run")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ImoodError(f"{out} already exists and is not empty; pick another --out "
                             "(or --force to replace an imood run there)")
        if not is_run_folder(out):
            raise ImoodError(f"{out} is not an imood run folder (no imood config.json): --force only replaces imood's "
                             "own files in a run folder imood made; pick another --out")
    return out


def write_run(out: Path, cfg: TrainConfig, state: dict[str, torch.Tensor], meta: dict[str, Any], force: bool) -> Path:
    """config.json, then model.safetensors: the model file's presence means the import completed."""
    if force and out.is_dir() and any(out.iterdir()):  # (RunLock creates the folder and its lock file)
        with RunLock(out):  # not while it trains
            clear_run(out)  # its scores, fits and checkpoints belonged to the model being replaced
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", cfg.to_json())
    path = out / "model.safetensors"
    save_tensors(path, state, meta)
    return path


def _class_counts(cfg: TrainConfig, given: list[int] | None, check_name: bool = False):
    """(class counts, the benchmark or None): counts given on the command line need no data on disk."""
    from imood_cli.engine.benchmarks import check_benchmark, load_benchmark

    if given is not None:
        if check_name:
            check_benchmark(cfg.dataset, cfg.data_root)
        return [int(c) for c in given], None
    bench = load_benchmark(cfg.dataset, cfg.data_root, imbalance_ratio=cfg.imbalance_ratio, num_ood_samples=0)
    return list(bench.class_counts), bench


def import_reference(file: Path, out: Path, dataset: str, data_root: str | Path | None = None,
                     imbalance_ratio: float | None = None, class_counts: list[int] | None = None,
                     ood_metric: str | None = None, logit_adjust: float | None = None,
                     force: bool = False) -> ImportResult:
    """Turn a reference `.pth` into `<out>/model.safetensors` + `<out>/config.json` (a run folder)."""
    from imood_cli.engine.training.setup import model_metadata
    from imood_cli.registry import parse_spec, registry

    file = Path(file)
    out = check_out(out, force)
    if not dataset:
        raise ImoodError("give the dataset the checkpoint was trained on (--ds cifar10 | cifar100 | ...)")
    cli = dict(dataset=dataset, data_root=None if data_root is None else str(data_root),
               imbalance_ratio=imbalance_ratio, ood_metric=ood_metric, logit_adjust=logit_adjust,
               save_root=str(out.parent), name=out.name)
    cfg = resolve_config(cli)
    obj = read_reference_file(file)
    class_counts, _ = _class_counts(cfg, class_counts)
    ref = convert(obj, len(class_counts), file)
    if ood_metric is None:
        # The reference adds the extra output only for bin_disc; otherwise its default loss is oe.
        cfg.ood_metric = "bin_disc" if ref.arch.extra_outputs else "oe"
    name, options = parse_spec(cfg.ood_metric)
    score, objective = registry().training(name, **options)
    extra = max(score.extra_outputs, objective.extra_outputs if objective is not None else 0)
    if extra != ref.arch.extra_outputs:
        raise ImoodError(f"--ood_metric {cfg.ood_metric} trains {extra} extra classifier output(s), but "
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
    model_path = write_run(out, cfg, model.state_dict(), meta, force)
    return ImportResult(out, model_path, ref.arch, class_counts, sha, ref.container, ref.stripped_prefix, ref.epoch,
                        ref.heads_loaded, ref.heads_missing)


def import_model(source: str, name: str, out: Path, dataset: str, *, weights: Path | None = None,
                 pretrained: bool = False, data_root: str | Path | None = None, imbalance_ratio: float | None = None,
                 class_counts: list[int] | None = None, image_size: int | None = None, in_chans: int = 3,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 cifar_stem: bool = False, force: bool = False) -> ModelImportResult:
    """A timm or torchvision classifier (random, pretrained from the local cache, or with a weights file) as the
    run folder `out` for the benchmark `dataset`."""
    from imood_cli.engine.scoring.score import unavailable_detectors
    from imood_cli.engine.training.setup import model_metadata
    from imood_cli.models.importer import check_names, import_classifier, recipe

    out = check_out(out, force)
    if not dataset:
        raise ImoodError("give the benchmark the model classifies (--ds NAME): it sets the classes and their counts")
    if image_size is not None and not 8 <= image_size <= 4096:
        raise ImoodError(f"--image-size must be a whole number in 8..4096, got {image_size}")
    check_names(source, name)
    cli = dict(dataset=dataset, data_root=None if data_root is None else str(data_root),
               imbalance_ratio=imbalance_ratio, ood_metric="msp", aux_ood_loss="none", logit_adjust=0.0,
               save_root=str(out.parent), name=out.name)
    cfg = resolve_config(cli)
    counts, bench = _class_counts(cfg, class_counts, check_name=True)
    if image_size is None:
        image_size = bench.image_size if bench is not None else recipe(source, name, in_chans).input_size
    imported = import_classifier(source, name, len(counts), image_size=image_size, in_chans=in_chans,
                                 weights=weights, pretrained=pretrained, cifar_stem=cifar_stem, mean=mean, std=std)
    arch = imported.arch
    caps = imported.model.capabilities(torch.zeros(1, arch.in_chans, image_size, image_size))
    cfg.model, cfg.cifar_stem, cfg.pretrained = name, cifar_stem, pretrained
    sha = sha256_file(Path(weights)) if weights is not None else None
    meta = model_metadata(cfg, arch, counts, imported.epoch)
    meta["imported_from"] = {
        "source": source, "name": name, "weights": Path(weights).name if weights is not None else imported.weights,
        "sha256": sha, "layout": imported.family, "classifier": imported.classifier,
        "container": imported.container, "stripped_prefix": imported.stripped_prefix,
        "fresh_heads": ["aux_linear", "projection", "lambda_head"] if arch.split == "classifier" else [],
    }
    meta["preprocess"] = imported.preprocess.to_dict()
    model_path = write_run(out, cfg, imported.model.state_dict(), meta, force)
    return ModelImportResult(out, model_path, arch, counts, imported.preprocess, imported.family, imported.classifier,
                             imported.weights, sha, imported.container, imported.stripped_prefix, caps,
                             unavailable_detectors(caps), imported.notes)
