"""Detectors fitted on the ID training set (Mahalanobis, KNN, ViM, ...), once per model and cached in RUN/fits/,
and `--ada-scale auto`, the c fitted per detector on the same set.

A cached fit is reused only when it was made for the same model (its sha256), the same options and the same
code: the method's distribution and version and a hash of its score class's source and module file, so that
an edited plugin in an editable install (same version) refits. `--refit` ignores and replaces every cache.

A detector's own failure (in `fit`, in its scores) is one `ImoodError` naming it; where the caller passes a
`failed` dict ({label: Failure}) it is recorded there instead and the detector dropped while the others go on.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from imood_cli.core.ada import AdaScore
from imood_cli.core.contract import ModelOutputs, ModelView
from imood_cli.core.method import DetectorScore, implementation_name
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
from imood_cli.registry import parse_spec, registry

T = TypeVar("T")


def fit_key(label: str) -> str:
    return score_file_stem(label.removeprefix("ada_"))


# ---------------------------------------------------------------- a detector's failure, by name


@dataclass
class Failure:
    """A detector that failed while the others went on: where (fit, score, --ada-scale auto), the error it
    raises on its own (today's one line) and the cause the summary names."""

    phase: str
    error: ImoodError
    reason: str  # "fit: OptionError: dim must be ..."


Failures = dict[str, Failure]


def _reason(label: str, d: Any, phase: str, exc: BaseException) -> str:
    """`phase: Type: first line` of the detector's exception, without the names its message starts with (an
    ImoodError's type is left out: its message is the whole story)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    name = parse_spec(label)[0]
    for prefix in (f"detector {label} ({implementation_name(d)}) ", f"{label}: ", f"{name}: ",
                   f"{name.removeprefix('ada_')}: ", f"{implementation_name(d)}: "):
        text = text.removeprefix(prefix)
    kind = "" if type(exc) is ImoodError else f"{type(exc).__name__}: "
    return f"{phase}: {kind}{text}".rstrip(": ")


def guarded(label: str, d: Any, phase: str, what: str, fn: Callable[[], T], failed: Failures | None) -> T | None:
    """fn(), the detector's own code; whatever goes wrong inside it is one ImoodError naming the detector
    ("detector knn (KNN) {what}: LinAlgError: ..."; a plugin's ImoodError as it is): raised, or with `failed`,
    recorded there under `label` (then None is returned)."""
    try:
        return fn()
    except KeyboardInterrupt:
        raise
    except ImoodError as exc:
        if failed is None:
            raise
        failed[label] = Failure(phase, exc, _reason(label, d, phase, exc))
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        error = ImoodError(f"detector {label} ({implementation_name(d)}) {what}: {type(exc).__name__}: {first}")
        if failed is None:
            raise error from exc
        error.__cause__ = exc
        failed[label] = Failure(phase, error, _reason(label, d, phase, exc))
    return None


def failure_summary(failed: Failures, total: int, written: bool) -> str:
    """One line naming every failed detector and why: `2 of 9 detectors failed: vim (fit: ...), knn (...); the
    others are written`."""
    listed = ", ".join(f"{label} ({f.reason})" for label, f in failed.items())
    tail = "the others are written" if written else "nothing was written"
    return f"{len(failed)} of {total} detector{'s' if total != 1 else ''} failed: {listed}; {tail}"


def all_failed(failed: Failures) -> ImoodError:
    """The error when no detector is left: a lone detector's own, else the summary."""
    if len(failed) == 1:
        return next(iter(failed.values())).error
    return ImoodError(failure_summary(failed, len(failed), written=False))


def drop_failed(detectors: dict[str, Any], failed: Failures | None) -> None:
    """Remove the failed detectors; none left is the error `all_failed` gives."""
    if not failed:
        return
    for label in failed:
        detectors.pop(label, None)
    if not detectors:
        raise all_failed(failed)


# ---------------------------------------------------------------- what a cached fit is keyed on


def implementation(d: Any) -> type:
    """The class whose code fits: an ada_ form's base, a 0.2 detector's own class."""
    while True:
        if isinstance(d, AdaScore):
            d = d.base
        elif isinstance(d, DetectorScore) and d.__dict__.get("detector") is not None:
            d = d.__dict__["detector"]
        else:
            return type(d)


def source_digest(cls: type) -> str | None:
    """sha256 of the source of `cls` and of the classes it derives from outside imood's contract, and of their
    module files (the file alone where `inspect.getsource` fails); None when neither can be read."""
    h, found, files = hashlib.sha256(), False, set()
    for c in cls.__mro__:
        if c is object or c.__module__.startswith("imood_cli.core."):
            continue  # the contract's own bases (Score, Detector, Configurable)
        h.update(f"\0class {c.__module__}.{c.__qualname__}\0".encode())
        try:
            h.update(inspect.getsource(c).encode())
            found = True
        except (OSError, TypeError):
            pass
        file = getattr(sys.modules.get(c.__module__), "__file__", None)
        if file and file not in files:
            files.add(file)
            try:
                h.update(Path(file).read_bytes())
                found = True
            except OSError:
                pass
    return h.hexdigest() if found else None


def fit_code(label: str, d: Any) -> dict[str, Any]:
    """What a fit depends on besides the model and the options: the method's distribution and version, and a
    hash of its source (None where it cannot be read: then the distribution and version alone)."""
    try:
        p = registry().get("method", parse_spec(label)[0])
        dist, version = p.distribution, p.version
    except ImoodError:
        dist = version = None
    cls = implementation(d)
    return {"distribution": dist, "version": version, "class": f"{cls.__module__}:{cls.__qualname__}",
            "source_sha256": source_digest(cls)}


# ---------------------------------------------------------------- fitting


def fit_on(detectors: dict[str, Any], view: ModelView, where: str, failed: Failures | None = None) -> None:
    """Fit each detector on one view of the ID training set; a detector's own failure is reported by name
    (with `failed`: recorded there, and the others still fit)."""
    for label, d in detectors.items():
        guarded(label, d, "fit", f"failed to fit on {where}", lambda d=d: d.fit(view), failed)


def fit_detectors(detectors: dict[str, Any], loaded: LoadedModel, bench: Benchmark, rt: Runtime,
                  req: ScoreRequest, cache_dir: Path | None, observer: ScoreObserver | None,
                  failed: Failures | None = None) -> list[str]:
    """Fit every detector that needs it on the ID training set (one pass for all), through the fit cache
    (`req.refit`: ignored and replaced; a fit made by this call is still shared by a detector and its ada_
    form). A detector whose fit fails is raised, or with `failed`, recorded there.
    Returns notes for the user (a cache that could not be written)."""
    need = {label: d for label, d in detectors.items() if d.needs_fit}
    notes: list[str] = []
    if not need:
        return notes
    fit_view = None
    written: set[Path] = set()
    for label, d in need.items():
        cache = cache_dir / f"{fit_key(label)}-{loaded.sha256[:16]}.safetensors" if cache_dir else None
        code = fit_code(label, d) if cache is not None else None
        if cache is not None and cache.is_file() and (not req.refit or cache in written):
            try:
                state, meta = load_tensors(cache, "fit cache")
                if (meta.get("checkpoint_sha256") == loaded.sha256 and meta.get("options") == d.options()
                        and meta.get("code") == code):
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
        fit_on({label: d}, fit_view, bench.train.name, failed)
        if failed is not None and label in failed:
            continue
        if cache is not None:
            state = guarded(label, d, "fit", "failed to give its fit_state", d.fit_state, failed)
            if state is None:
                continue
            try:
                save_tensors(cache, state, {"detector": label, "options": d.options(),
                                            "checkpoint_sha256": loaded.sha256, "code": code})
                written.add(cache)
            except (ImoodError, OSError) as exc:
                notes.append(f"the {label} fit is not cached ({exc}); it is refitted next time")
    return notes


AUTO_RULE = ("auto: the c that makes the per-class mean ID score uncorrelated with log π̃ over the ID training "
             "set, c = -cov_k(mean g, log π̃) / cov_k(mean log β̂, log π̃), at least 0 (imood's heuristic)")


def fit_auto_scales(detectors: dict[str, AdaScore], loaded: LoadedModel, bench: Benchmark, rt: Runtime,
                    req: ScoreRequest, lp: torch.Tensor, observer: ScoreObserver | None,
                    failed: Failures | None = None) -> None:
    """--ada-scale auto: for each ada_ detector, the c that removes the correlation between a class's mean ID
    score and its log prior on the training set: the bias the correction exists to remove."""
    if not detectors:
        return
    if observer:
        observer.start_set(f"--ada-scale auto on {bench.train.name}", len(bench.train))
    batches = eval_batches(bench.train, req.batch_size, bench.augment, rt.device, req.workers, loaded.preprocess)
    auto_scales(detectors, loaded.model, batches, bench.train.labels.to(rt.device), bench.num_classes, rt, lp,
                observer, failed)
    if observer:
        observer.end_set("auto")


def auto_scales(detectors: dict[str, AdaScore], model: StagedClassifier, batches: Iterable[tuple[int, torch.Tensor]],
                labels: torch.Tensor | list[torch.Tensor], k: int, rt: Runtime, lp: torch.Tensor,
                observer: ScoreObserver | None = None, failed: Failures | None = None) -> None:
    """Set `override` (the c) of each ada_ detector from the ID training batches and their labels (a tensor, or
    a list the batches fill as they are read). A detector whose g fails is one error naming it, or with
    `failed`, recorded there and skipped in the later batches."""
    access = ModelAccess(model, rt)
    needs = set().union(*(d.needs for d in detectors.values()))
    live = dict(detectors)
    g: dict[str, list[torch.Tensor]] = {key: [] for key in detectors}
    lb = []

    def each(out: ModelOutputs, x: torch.Tensor, start: int) -> None:
        view = access.view(out, needs, images=x)
        lb.append(log_beta(out.logits, lp))
        for label, d in list(live.items()):
            with torch.enable_grad() if "input_grad" in d.needs else nullcontext():
                values = guarded(label, d, "--ada-scale auto", "failed (--ada-scale auto)",
                                 lambda d=d: d.base.idness(view).detach().float(), failed)
            if values is None:
                del live[label]
            else:
                g[label].append(values)

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
    for label, d in live.items():
        denom = cov(beta_means, prior)
        c = -cov(class_means(torch.cat(g[label])), prior) / denom if abs(denom) > 1e-12 else 0.0
        d.override = max(c, 0.0)
