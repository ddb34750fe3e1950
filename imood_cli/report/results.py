"""Gather score files and their evaluations for eval and report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imood_cli.engine.evaluate import evaluate
from imood_cli.engine.scoreset import ScoreSet
from imood_cli.errors import ImoodError


def _np(t: torch.Tensor) -> np.ndarray:
    """A tensor of any dtype as numpy (numpy has no bfloat16 or float8: those become float64)."""
    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float64)
    return t.numpy()


def evaluate_scoreset(ss: ScoreSet, bootstrap: int = 0, seed: int = 0) -> dict:
    has_id = ss.id_label is not None and ss.id_pred is not None and ss.class_counts is not None
    result = evaluate(
        _np(ss.id_score), {k: _np(v) for k, v in ss.ood_score.items()},
        id_labels=_np(ss.id_label) if has_id else None, id_preds=_np(ss.id_pred) if has_id else None,
        class_counts=ss.class_counts if has_id else None,
        ood_preds_by_set={k: _np(v) for k, v in ss.ood_pred.items()}, bootstrap=bootstrap, seed=seed,
    )
    result["metric"] = ss.metric
    for key in ("dataset", "checkpoint", "logit_adjust", "ada_scale", "moved_to_id", "trained_with"):
        if key in ss.meta:
            result[key] = ss.meta[key]
    return result


def score_files(paths: list[Path], metrics: list[str] | None = None) -> list[Path]:
    """Score files named directly, or found in a run folder's scores/ or a scores folder."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            found.append(p)
            continue
        if not p.exists():
            raise ImoodError(f"score file or run folder not found: {p}")
        folder = p / "scores" if (p / "scores").is_dir() else p
        files = sorted(folder.glob("*.safetensors"))
        if metrics:
            files = [f for f in files if f.stem in metrics]
        if not files:
            hint = f" for {', '.join(metrics)}" if metrics else ""
            raise ImoodError(f"no score files{hint} in {folder}: run imood score {p} first")
        found.extend(files)
    return found


@dataclass
class Entry:
    """One (run, metric) of a report."""

    run: str
    metric: str
    scores: ScoreSet
    result: dict

    @property
    def label(self) -> str:
        return f"{self.run} · {self.metric}" if self.run else self.metric


def collect(runs: list[Path], metrics: list[str] | None = None, bootstrap: int = 0) -> list[Entry]:
    entries = []
    multi = len(runs) > 1
    for run in runs:
        run = Path(run)
        for f in score_files([run], metrics):
            ss = ScoreSet.load(f)
            name = run.name if multi else ""
            entries.append(Entry(name, ss.metric, ss, evaluate_scoreset(ss, bootstrap)))
    if metrics:
        order = {m: i for i, m in enumerate(metrics)}
        entries.sort(key=lambda e: (e.run, order.get(e.metric, len(order))))
    else:  # each base detector, then its ada_ form
        entries.sort(key=lambda e: (e.run, e.metric.removeprefix("ada_"), e.metric.startswith("ada_")))
    return entries


def base_of(entry: Entry, entries: list[Entry]) -> Entry | None:
    """For an ada_<m> entry, the <m> entry of the same run (to show the gain of the correction)."""
    if not entry.metric.startswith("ada_"):
        return None
    base = entry.metric[4:]
    for e in entries:
        if e.run == entry.run and e.metric == base:
            return e
    return None
