"""A model file as a model to score: its metadata and weights checked, the architecture it declares built,
and its inputs made the way its recipe says."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imood_cli.data.base import Benchmark
from imood_cli.engine.runs.checkpoint import load_tensors, non_finite_weight
from imood_cli.engine.runs.digest import sha256_file
from imood_cli.engine.runs.layout import model_path
from imood_cli.engine.runs.metadata import check_model_metadata
from imood_cli.errors import ImoodError
from imood_cli.models.imood_model import Architecture, ImOODModel, check_new_fields
from imood_cli.models.preprocess import Preprocess


@dataclass
class LoadedModel:
    model: ImOODModel
    meta: dict[str, Any]
    path: Path
    sha256: str

    @property
    def class_counts(self) -> list[int]:
        return self.meta["class_counts"]

    @property
    def preprocess(self) -> Preprocess | None:
        """How an imported model's inputs are made (None: the benchmark's own test transform)."""
        record = self.meta.get("preprocess")
        return None if record is None else Preprocess.from_dict(record, f"{self.path}: preprocess")


def load_model(target: Path, device: torch.device | str = "cpu") -> LoadedModel:
    path = model_path(target)
    tensors, meta = load_tensors(path, "model file")
    if "skeleton" in meta:  # a training checkpoint: its model weights are under s.0.
        raise ImoodError(f"{path} is a training checkpoint; score the run folder or its model.safetensors")
    arch = architecture_of(meta, path)
    model = ImOODModel(arch)
    check_state_dict(model, tensors, path)
    bad = non_finite_weight(tensors)
    if bad:  # every score would be NaN, and fits (vim's eigendecomposition) would fail on them
        raise ImoodError(f"{path}: the weight {bad} holds NaN or infinite values; the model is broken (a diverged "
                         "training?): score an intact model")
    model.load_state_dict(tensors)
    model.to(device).eval()
    return LoadedModel(model, meta, path, sha256_file(path))


def architecture_of(meta: dict[str, Any], path: Path) -> Architecture:
    """The architecture a model file declares, after checking every field scoring relies on (runs.metadata's
    checks, then those of the fields imported models add)."""
    fields_ = check_model_metadata(meta, path)
    extras = check_new_fields(meta["architecture"], str(path))
    if meta.get("preprocess") is not None:
        prep = Preprocess.from_dict(meta["preprocess"], f"{path} has malformed metadata: preprocess")
        if prep.in_chans != fields_["in_chans"]:
            raise ImoodError(f"{path} has malformed metadata: preprocess.in_chans {prep.in_chans} but the "
                             f"architecture takes {fields_['in_chans']} channels")
    return Architecture.from_dict({**fields_, **extras})


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Name what does not fit: another architecture, a missing head, a wrong class count."""
    want = model.state_dict()
    arch = getattr(model, "arch", None)
    name = arch.backbone if arch is not None else type(model).__name__
    missing = [k for k in want if k not in tensors]
    extra = [k for k in tensors if k not in want]
    if any(k.startswith("backbone.") for k in missing + extra):
        example = next(k for k in missing + extra if k.startswith("backbone."))
        raise ImoodError(f"{path}: the weights do not fit the architecture {name} it declares "
                         f"({len(missing)} missing, {len(extra)} unexpected tensors, e.g. {example})")
    if missing:
        heads = sorted({k.split(".")[0] for k in missing})
        raise ImoodError(f"{path} is missing the {', '.join(heads)} head ({len(missing)} tensors, e.g. {missing[0]})")
    if extra:
        raise ImoodError(f"{path} holds weights the architecture {name} does not have (e.g. {extra[0]})")
    for k, t in want.items():
        if tuple(tensors[k].shape) != tuple(t.shape):
            what = "number of classes" if k.startswith(("classifier", "lambda_head")) else "architecture"
            raise ImoodError(f"{path}: {k} has shape {tuple(tensors[k].shape)}, expected {tuple(t.shape)} "
                             f"(wrong {what})")
        if tensors[k].dtype != t.dtype:
            raise ImoodError(f"{path}: {k} is {tensors[k].dtype}, expected {t.dtype}")


def model_input(loaded: LoadedModel, bench: Benchmark) -> tuple[int, int]:
    """(channels, size) of the images the model sees for this benchmark."""
    prep = loaded.preprocess
    return (prep.in_chans, prep.image_size) if prep is not None else (bench.channels, bench.image_size)


def model_config(loaded: LoadedModel) -> dict[str, Any]:
    return loaded.meta.get("config") or {}
