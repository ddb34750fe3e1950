"""Detectors fitted on the ID training set (Mahalanobis, KNN, ViM, ...), once per model and cached in RUN/fits/,
and `--ada-scale auto`, the c fitted per detector on the same set."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from imood_cli.core.ada import AdaScore
from imood_cli.core.contract import ModelOutputs, ModelView
from imood_cli.core.method import implementation_name
from imood_cli.core.prior import log_beta
from imood_cli.data.base import Benchmark
from imood_cli.engine.runs.checkpoint import load_tensors, save_tensors
from imood_cli.engine.runs.layout import score_file_stem
from imood_cli.engine.runtime import Runtime
from imood_cli.engine.scoring.infer import ModelAccess, ScoreObserver, eval_batches, infer, run_batches
from imood_cli.engine.scoring.loading import LoadedModel
from imood_cli.engine.scoring.request import ScoreRequest
from imood_cli.errors import ImoodError
from imood_cli.models.staged import StagedClassifier


def fit_key(label: str) -> str:
    return score_file_stem(label.removeprefix("ada_"))


def fit_on(detectors: dict[str, Any], view: ModelView, where: str) -> None:
    """Fit each detector on one view of the ID training set; a detector's own failure is reported by name."""
    for label, d in detectors.items():
        try:
            d.fit(view)
        except (ImoodError, KeyboardInterrupt):
            raise
        except Exception as exc:  # e.g. linalg on odd features
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ImoodError(f"detector {label} ({implementation_name(d)}) failed to fit on {where}: "
                             f"{type(exc).__name__}: {first}") from exc


def fit_detectors(detectors: dict[str, Any], loaded: LoadedModel, bench: Benchmark, rt: Runtime,
                  req: ScoreRequest, cache_dir: Path | None, observer: ScoreObserver | None) -> list[str]:
    """Fit every detector that needs it on the ID training set (one pass for all), through the fit cache.
    Returns notes for the user (a cache that could not be written)."""
    need = {label: d for label, d in detectors.items() if d.needs_fit}
    notes: list[str] = []
    if not need:
        return notes
    fit_view = None
    for label, d in need.items():
        cache = cache_dir / f"{fit_key(label)}-{loaded.sha256[:16]}.safetensors" if cache_dir else None
        if cache is not None and cache.is_file():
            try:
                state, meta = load_tensors(cache, "fit cache")
                if meta.get("checkpoint_sha256") == loaded.sha256 and meta.get("options") == d.options():
                    d.load_fit_state({k: v.to(rt.device) for k, v in state.items()})
                    continue
            except (ImoodError, KeyError, RuntimeError, ValueError):
                pass  # a damaged or foreign cache is refitted
        if fit_view is None:
            if observer:
                observer.start_set(f"fit on {bench.train.name}", len(bench.train))
            feats = infer(loaded.model, bench.train, rt, req.batch_size, bench.augment, True, observer, req.workers,
                          prep=loaded.preprocess)
            if observer:
                observer.end_set("fit")
            fit_view = ModelAccess(loaded.model, rt).view(feats, {"classifier"},
                                                          labels=bench.train.labels.to(rt.device))
        fit_on({label: d}, fit_view, bench.train.name)
        if cache is not None:
            try:
                save_tensors(cache, d.fit_state(), {"detector": label, "options": d.options(),
                                                    "checkpoint_sha256": loaded.sha256})
            except (ImoodError, OSError) as exc:
                notes.append(f"the {label} fit is not cached ({exc}); it is refitted next time")
    return notes


AUTO_RULE = ("auto: the c that makes the per-class mean ID score uncorrelated with log π̃ over the ID training "
             "set, c = -cov_k(mean g, log π̃) / cov_k(mean log β̂, log π̃), at least 0 (imood's heuristic)")


def fit_auto_scales(detectors: dict[str, AdaScore], loaded: LoadedModel, bench: Benchmark, rt: Runtime,
                    req: ScoreRequest, lp: torch.Tensor, observer: ScoreObserver | None) -> None:
    """--ada-scale auto: for each ada_ detector, the c that removes the correlation between a class's mean ID
    score and its log prior on the training set: the bias the correction exists to remove."""
    if not detectors:
        return
    if observer:
        observer.start_set(f"--ada-scale auto on {bench.train.name}", len(bench.train))
    batches = eval_batches(bench.train, req.batch_size, bench.augment, rt.device, req.workers, loaded.preprocess)
    auto_scales(detectors, loaded.model, batches, bench.train.labels.to(rt.device), bench.num_classes, rt, lp,
                observer)
    if observer:
        observer.end_set("auto")


def auto_scales(detectors: dict[str, AdaScore], model: StagedClassifier, batches: Iterable[tuple[int, torch.Tensor]],
                labels: torch.Tensor | list[torch.Tensor], k: int, rt: Runtime, lp: torch.Tensor,
                observer: ScoreObserver | None = None) -> None:
    """Set `override` (the c) of each ada_ detector from the ID training batches and their labels (a tensor, or
    a list the batches fill as they are read)."""
    access = ModelAccess(model, rt)
    needs = set().union(*(d.needs for d in detectors.values()))
    g = {key: [] for key in detectors}
    lb = []

    def each(out: ModelOutputs, x: torch.Tensor, start: int) -> None:
        view = access.view(out, needs, images=x)
        lb.append(log_beta(out.logits, lp))
        for label, d in detectors.items():
            with torch.enable_grad() if "input_grad" in d.needs else nullcontext():
                g[label].append(d.base.idness(view).detach().float())

    run_batches(model, batches, rt, True, observer, each=each, feature_map="feature_map" in needs)
    if isinstance(labels, list):
        labels = torch.cat(labels).to(rt.device)
    present = torch.bincount(labels, minlength=k).double()

    def class_means(values: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros(k, dtype=torch.float64, device=values.device).index_add_(0, labels, values.double())
        return sums / present

    def cov(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - a.mean()) * (b - b.mean())).mean())

    prior = lp.double()
    beta_means = class_means(torch.cat(lb))
    for label, d in detectors.items():
        denom = cov(beta_means, prior)
        c = -cov(class_means(torch.cat(g[label])), prior) / denom if abs(denom) > 1e-12 else 0.0
        d.override = max(c, 0.0)
