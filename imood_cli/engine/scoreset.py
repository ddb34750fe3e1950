"""The score file: the contract between `imood score` and `imood eval` (README "File formats").

safetensors with `id.score`, `id.label`, `id.pred`, `ood.<set>.score` (and `ood.<set>.pred`), and
JSON metadata with `class_counts`, `metric`, `score_direction` = "higher_is_ood", the dataset names
and the checkpoint the scores came from. Scores from any tool can be evaluated this way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imood_cli.engine.checkpoint import load_tensors, save_tensors
from imood_cli.engine.evaluate import check_class_counts
from imood_cli.errors import ImoodError

DIRECTION = "higher_is_ood"


@dataclass
class ScoreSet:
    metric: str
    id_score: torch.Tensor
    id_label: torch.Tensor
    id_pred: torch.Tensor
    ood_score: dict[str, torch.Tensor]
    ood_pred: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def class_counts(self) -> list[int] | None:
        return self.meta.get("class_counts")

    def save(self, path: Path) -> None:
        tensors = {"id.score": self.id_score}
        for key, value in (("id.label", self.id_label), ("id.pred", self.id_pred)):
            if value is not None:  # scores from another tool may come without labels
                tensors[key] = value
        for name, s in self.ood_score.items():
            tensors[f"ood.{name}.score"] = s
            if name in self.ood_pred:
                tensors[f"ood.{name}.pred"] = self.ood_pred[name]
        meta = {**self.meta, "metric": self.metric, "score_direction": DIRECTION, "ood_sets": list(self.ood_score)}
        save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: Path) -> ScoreSet:
        tensors, meta = load_tensors(path, "score file")
        where = f"score file {path}"
        if not isinstance(meta, dict):
            raise ImoodError(f"{where}: its 'imood' metadata must be a JSON object, got {type(meta).__name__}")
        if meta.get("score_direction", DIRECTION) != DIRECTION:
            raise ImoodError(f"{where}: score_direction must be {DIRECTION!r}, got {meta['score_direction']!r}")
        listed = meta.get("ood_sets", [])
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            raise ImoodError(f"{where}: metadata 'ood_sets' must be a list of set names")
        if "id.score" not in tensors:
            raise ImoodError(f"{where} has no 'id.score' tensor")
        for k, t in tensors.items():  # before any length is read
            if t.ndim != 1:
                raise ImoodError(f"{where}: {k} must be one-dimensional, got shape {tuple(t.shape)}")
        ood_names = sorted({k.split(".", 1)[1].rsplit(".", 1)[0] for k in tensors if k.startswith("ood.")})
        order = [n for n in listed if n in ood_names] + [n for n in ood_names if n not in listed]
        missing = [n for n in listed if n not in ood_names]
        if missing:
            raise ImoodError(f"{where}: OOD set {missing[0]!r} is listed in the metadata but has no scores")
        if not order:
            raise ImoodError(f"{where} has no OOD set (no 'ood.<set>.score' tensor)")
        id_score = _scores(tensors["id.score"], "id.score", where)
        n = id_score.shape[0]
        labels = {}
        for key in ("id.label", "id.pred"):
            if key in tensors:
                labels[key] = _indices(tensors[key], key, where)
                if labels[key].shape[0] != n:
                    raise ImoodError(f"{where}: {key} has {labels[key].shape[0]} entries but id.score has {n}")
        ood_score, ood_pred = {}, {}
        for name in order:
            if f"ood.{name}.score" not in tensors:
                raise ImoodError(f"{where}: OOD set {name!r} has no 'ood.{name}.score' tensor")
            ood_score[name] = _scores(tensors[f"ood.{name}.score"], f"ood.{name}.score", where)
            if f"ood.{name}.pred" in tensors:
                ood_pred[name] = _indices(tensors[f"ood.{name}.pred"], f"ood.{name}.pred", where)
                if ood_pred[name].shape[0] != ood_score[name].shape[0]:
                    raise ImoodError(f"{where}: ood.{name}.pred and ood.{name}.score differ in length")
        if meta.get("class_counts") is not None:
            try:
                meta = {**meta, "class_counts": check_class_counts(meta["class_counts"])}
            except ImoodError as exc:
                raise ImoodError(f"{where}: {exc}") from None
        metric = meta.get("metric")
        metric = metric if isinstance(metric, str) and metric else Path(path).stem
        return cls(metric, id_score, labels.get("id.label"), labels.get("id.pred"), ood_score, ood_pred, meta)


def _scores(t: torch.Tensor, key: str, where: str) -> torch.Tensor:
    """Scores as float32/float64 (numpy has no bfloat16 or float8; booleans and integers become float64)."""
    if t.is_complex():
        raise ImoodError(f"{where}: {key} must hold real numbers, got {t.dtype}")
    return t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float64)


def _indices(t: torch.Tensor, key: str, where: str) -> torch.Tensor:
    """Labels and predictions as int64; whole numbers only."""
    if t.is_complex():
        raise ImoodError(f"{where}: {key} must hold class indices, got {t.dtype}")
    if t.is_floating_point():
        f = t.to(torch.float64)
        if not (torch.isfinite(f).all() and torch.equal(f, f.round())) or (f.numel() and f.abs().max() > 2.0**62):
            raise ImoodError(f"{where}: {key} must hold class indices (whole numbers)")
        return f.to(torch.int64)
    return t.to(torch.int64)
