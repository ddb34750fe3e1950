"""Run a model over the ID and OOD test sets and turn its outputs into ScoreSets (docs/concepts.md).

Each detector declares what it needs (`Detector.needs`); one forward pass per batch serves every
detector, keeping the feature map only when one needs it; head re-runs (ReAct, ASH, DICE, ...) use that
pass's features or map. Detectors that need input gradients (ODIN) get their own pass with gradients on.
Detectors that need a fit are fitted on the ID training set once per model and cached in RUN/fits/.
Every score is checked before any file is written. With a `failed` dict (`imood score`), a detector whose fit
or scores fail is recorded there and dropped, its later batches skipped, while the others are scored.

Any model goes through here as a `models.staged.StagedClassifier`: imood's own (`ImOODModel`, trained or
imported) and, through `api.score_model`, any nn.Module seen through its family's adapter. A model that lacks
a stage a detector needs (a vision transformer has no spatial feature map; a model imood cannot split has no
classifier to re-run) gets one note naming the detectors it cannot run; the rest score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imood_cli.core.ada import AdaScore
from imood_cli.core.contract import ModelOutputs, ModelView
from imood_cli.core.method import implementation_name
from imood_cli.core.prior import log_prior
from imood_cli.data.base import Benchmark, ImageSet
from imood_cli.engine import runtime
from imood_cli.engine.runs.layout import detector_label, score_file_stem
from imood_cli.engine.runs.scorefile import ScoreSet
from imood_cli.engine.runtime import Runtime
from imood_cli.engine.scoring.fits import (
    AUTO_RULE,
    Failure,
    Failures,
    all_failed,
    drop_failed,
    fit_auto_scales,
    fit_detectors,
    guarded,
)
from imood_cli.engine.scoring.infer import ModelAccess, ScoreObserver, infer
from imood_cli.engine.scoring.loading import LoadedModel, model_input
from imood_cli.engine.scoring.request import ScoreRequest
from imood_cli.errors import ImoodError
from imood_cli.models.adapter import STAGES, Capabilities
from imood_cli.models.imood_model import Architecture, forward_macs
from imood_cli.registry import parse_spec, registry


def build_detectors(specs: list[str], ada_scale: float | None, arch: Architecture) -> dict[str, Any]:
    """{label: score instance} for the requested specs (`-m name:options`: scoring options only)."""
    reg = registry()
    detectors = {}
    for spec in specs:
        name, options = parse_spec(spec)
        d = reg.score(name, ada_scale=ada_scale if name.startswith("ada_") else None, **options)
        if d.extra_outputs > arch.extra_outputs:
            raise ImoodError(f"{name} needs {d.extra_outputs} extra classifier output(s), but this checkpoint has "
                             f"{arch.extra_outputs}: train it with an --ood_metric that has one (e.g. bin_disc)")
        detectors[detector_label(spec)] = d
    return detectors


def unavailable_detectors(caps: Capabilities) -> list[str]:
    """Every registered detector (as `name` or `name:layer=map`) that needs a stage this model lacks."""
    if not caps.lacks(set(STAGES)):
        return []
    reg = registry()
    out = []
    for name in reg.names("method"):
        if name.startswith("ada_") or reg.alias_of(name):
            continue
        variants = [{}]
        if "layer" in reg.get("method", name).method.options_of():
            variants.append({"layer": "map"})  # ash and scale shape the feature map with layer=map
        for options in variants:
            try:
                d = reg.score(name, **options)
            except ImoodError:
                continue
            if caps.lacks(d.needs):
                out.append(name + "".join(f":{k}={v}" for k, v in options.items()))
    return out


def unavailable_note(model_name: str, caps: Capabilities) -> str | None:
    """One line: what the model lacks, why, and which detectors cannot run on it."""
    names = unavailable_detectors(caps)
    if not names:
        return None
    return (f"{model_name} ({caps.family}): {caps.why(set(STAGES))}; unavailable: {', '.join(names)} "
            "(and their ada_ forms); every other detector scores")


def drop_unavailable(detectors: dict[str, Any], caps: Capabilities, model_name: str,
                     skip: bool) -> dict[str, str]:
    """Remove from `detectors` those the model cannot run ({label: why}); without `skip`, the first is an error."""
    dropped = {}
    for label, d in list(detectors.items()):
        lacks = caps.lacks(d.needs)
        if not lacks:
            continue
        why = caps.why(d.needs)
        if not skip:
            raise ImoodError(f"{label} needs the model's {' and '.join(s.replace('_', ' ') for s in lacks)}, and "
                             f"{model_name} ({caps.family}) has none: {why}")
        dropped[label] = why
        del detectors[label]
    return dropped


def _run_detector(label: str, d: Any, view: ModelView, lp: torch.Tensor, n: int,
                  failed: Failures | None = None) -> torch.Tensor | None:
    """One detector's scores for a batch; whatever goes wrong inside it is reported under its name (with
    `failed`: recorded there, and None returned)."""
    return guarded(label, d, "score", "failed", lambda: _check_scores(label, d, d.ood_score(view, lp), n), failed)


class BatchScorer:
    """Every detector's scores batch after batch, from the one forward pass the caller ran; detectors that need
    input gradients run with gradients on. Results stay on the device until `result`.

    A detector's failure is one error naming it; with `failed`, it is recorded there and the detector dropped
    (its later batches skipped, `result` without it) while the others go on; none left is the error."""

    def __init__(self, detectors: dict[str, Any], access: ModelAccess, lp: torch.Tensor,
                 failed: Failures | None = None) -> None:
        self.detectors, self.access, self.lp, self.failed = detectors, access, lp, failed
        self.needs = set().union(*(d.needs for d in detectors.values())) if detectors else set()
        self.plain = {k: d for k, d in detectors.items() if "input_grad" not in d.needs}
        self.grads = {k: d for k, d in detectors.items() if "input_grad" in d.needs}
        self.scores: dict[str, list[torch.Tensor]] = {label: [] for label in detectors}
        self.preds: list[torch.Tensor] = []
        self.finite: list[torch.Tensor] = []

    @property
    def keep_features(self) -> bool:
        return "features" in self.needs or "classifier" in self.needs

    @property
    def feature_map(self) -> bool:
        return "feature_map" in self.needs

    def __call__(self, out: ModelOutputs, x: torch.Tensor, start: int) -> None:
        view = self.access.view(out, self.needs, images=x)
        n = out.logits.shape[0]
        self.finite.append(torch.isfinite(out.logits).all())
        for label, d in list(self.plain.items()):
            self._keep(label, _run_detector(label, d, view, self.lp, n, self.failed))
        if self.grads:
            with torch.enable_grad():
                for label, d in list(self.grads.items()):
                    scores = _run_detector(label, d, view, self.lp, n, self.failed)
                    self._keep(label, None if scores is None else scores.detach())
        self.preds.append(out.logits.argmax(dim=1))

    def _keep(self, label: str, scores: torch.Tensor | None) -> None:
        if scores is not None:
            self.scores[label].append(scores)
            return
        for held in (self.plain, self.grads, self.scores):  # failed: dropped for the rest of the pass
            held.pop(label, None)
        if not self.scores and self.failed:
            raise all_failed(self.failed)  # nothing left to score: no need to finish the pass

    @property
    def all_finite(self) -> bool:
        return not self.finite or bool(torch.stack(self.finite).all())

    def result(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        cat = lambda xs: torch.cat(xs).cpu() if xs else torch.zeros(0)
        return {k: cat(v) for k, v in self.scores.items()}, cat(self.preds).long()


def _check_scores(label: str, d: Any, scores: Any, n: int) -> torch.Tensor:
    """A detector's output for a batch of n rows, or one clear error naming the detector."""
    if not isinstance(scores, torch.Tensor):
        raise ImoodError(f"detector {label} ({implementation_name(d)}) returned {type(scores).__name__}, "
                         "not a tensor")
    if scores.shape != (n,):
        raise ImoodError(f"detector {label} ({implementation_name(d)}) returned shape {tuple(scores.shape)} for a "
                         f"batch of {n} images; it must return one score per image, shape ({n},)")
    if scores.is_complex() or not (scores.is_floating_point() or scores.dtype in (torch.int32, torch.int64)):
        raise ImoodError(f"detector {label} ({implementation_name(d)}) returned {scores.dtype} scores, "
                         "not real numbers")
    return scores.float()


def check_all_finite(scores: dict[str, torch.Tensor], ood: dict[str, dict[str, torch.Tensor]], where: str,
                     failed: Failures | None = None) -> None:
    """Every number checked before anything is written or returned (with `failed`: a detector with a NaN is
    recorded there and removed from `scores` and `ood`)."""
    for label in list(scores):
        for place, values in ((where, scores[label]), *ood[label].items()):
            bad = int((~torch.isfinite(values)).sum())
            if bad:
                error = ImoodError(f"detector {label} gave {bad} NaN or infinite score(s) on {place} while the "
                                   "model's outputs are finite: the detector (or its fit) is at fault; nothing was "
                                   "written")
                if failed is None:
                    raise error
                failed[label] = Failure("score", error, f"score: {bad} NaN or infinite score(s) on {place}, the "
                                                          "model's outputs finite")
                del scores[label], ood[label]
                break


def score(loaded: LoadedModel, bench: Benchmark, req: ScoreRequest, rt: Runtime,
          observer: ScoreObserver | None = None, cache_dir: Path | None = None,
          notes: list[str] | None = None, failed: Failures | None = None) -> dict[str, ScoreSet]:
    """ScoreSets for every requested detector over the benchmark's ID test set and OOD test sets; what the
    user should know (a fit that could not be cached, detectors the model cannot run) is appended to `notes`.

    A detector's failure (fit, scores, NaN) is one error naming it; with `failed`, it is recorded there
    ({label: Failure}, in the order of the request) and the others are scored; none left is the error (a lone
    detector's own, as without `failed`)."""
    model, arch = loaded.model, loaded.model.arch
    if bench.num_classes != arch.num_classes:
        raise ImoodError(f"the checkpoint has {arch.num_classes} classes but {bench.name} has {bench.num_classes}")
    notes = notes if notes is not None else []
    auto = req.ada_scale == "auto"
    detectors = build_detectors(req.detectors, None if auto else req.ada_scale, arch)
    chans, size = model_input(loaded, bench)
    caps = model.capabilities(torch.zeros(1, chans, size, size, device=rt.device))
    note = unavailable_note(arch.backbone, caps)
    if note:
        notes.append(note)
    drop_unavailable(detectors, caps, arch.backbone, req.skip_unavailable)
    if not detectors:
        raise ImoodError(f"none of the requested detectors can run on {arch.backbone}: {caps.why(set(STAGES))}")
    if rt.device.type == "cpu":
        macs = forward_macs(model, chans, size) * req.batch_size
        runtime.set_threads(runtime.choose_threads(req.threads, macs, rt.device))
    order = list(detectors)
    notes.extend(fit_detectors(detectors, loaded, bench, rt, req, cache_dir, observer, failed))
    drop_failed(detectors, failed)
    counts = loaded.class_counts
    lp = log_prior(counts, req.logit_adjust).float().to(rt.device)
    if auto:
        fit_auto_scales({k: d for k, d in detectors.items() if isinstance(d, AdaScore)}, loaded, bench, rt, req, lp,
                        observer, failed)
        drop_failed(detectors, failed)
    access = ModelAccess(model, rt)
    spec, prep = bench.augment, loaded.preprocess

    def run(s: ImageSet):
        full = s
        if rt.distributed:  # each process scores one contiguous shard; rank 0 gathers them in order
            bounds = torch.linspace(0, len(s), rt.world_size + 1).long().tolist()
            s = s.subset(torch.arange(bounds[rt.rank], bounds[rt.rank + 1]), name=s.name)
        scorer = BatchScorer(detectors, access, lp, failed)
        if observer:
            observer.start_set(full.name, len(s))
        infer(model, s, rt, req.batch_size, spec, scorer.keep_features, observer, req.workers, each=scorer,
              feature_map=scorer.feature_map, prep=prep)
        if observer:
            observer.end_set(full.name)
        if not scorer.all_finite:
            raise ImoodError(f"the model's outputs on {full.name} are NaN or infinite: the weights in {loaded.path} "
                             "are damaged or diverged; nothing was written")
        result = scorer.result()
        if rt.distributed:
            result = gather_shards(result, rt, failed)
        drop_failed(detectors, failed)  # a detector that failed on this set is not scored on the next ones
        return result

    id_scores, id_pred = run(bench.test)
    id_label = bench.test.labels.clone()
    ood_sets = {**bench.ood_tests, **req.extra_ood}
    if not ood_sets:
        raise ImoodError(f"no OOD test set to score: {bench.name}'s are missing and no --ood-dir was given")
    ood_scores: dict[str, dict[str, torch.Tensor]] = {label: {} for label in detectors}
    ood_preds, moved = {}, {}
    for name, s in ood_sets.items():
        if len(s) == 0:
            raise ImoodError(f"OOD set {name!r} is empty")
        sc, pr = run(s)
        is_ood = s.labels < 0
        n_id = int((~is_ood).sum())
        if n_id:  # SCOOD: images of ID classes move into the ID set
            moved[name] = n_id
            for label in detectors:
                id_scores[label] = torch.cat([id_scores[label], sc[label][~is_ood]])
            id_label = torch.cat([id_label, s.labels[~is_ood]])
            id_pred = torch.cat([id_pred, pr[~is_ood]])
        if not is_ood.any():
            raise ImoodError(f"OOD set {name!r} holds no OOD image (every image belongs to an ID class)")
        for label in detectors:
            ood_scores[label][name] = sc[label][is_ood]
        ood_preds[name] = pr[is_ood]
    id_scores = {label: id_scores[label] for label in detectors}  # without those that failed on a later set
    ood_scores = {label: ood_scores[label] for label in detectors}
    check_all_finite(id_scores, ood_scores, "the ID test set", failed)
    drop_failed(detectors, failed)
    if failed:
        ordered = {label: failed[label] for label in order if label in failed}
        ordered.update(failed)
        failed.clear()
        failed.update(ordered)
    meta = {
        "class_counts": counts, "dataset": bench.name, "id_set": bench.test.name,
        "checkpoint": str(loaded.path), "checkpoint_sha256": loaded.sha256, "logit_adjust": req.logit_adjust,
        "moved_to_id": moved, "num_classes": bench.num_classes, "trained_with": loaded.meta.get("metric"),
        "missing_ood_sets": sorted(getattr(bench, "missing", {}) or {}),
    }
    names = bench.class_names
    if names and len(names) == len(counts) and all(isinstance(n, str) and n.isprintable() for n in names):
        meta["class_names"] = list(names)  # per-class axes of `imood report` show names, not ids
    out = {}
    for label, d in detectors.items():
        extra = {}
        if isinstance(d, AdaScore):
            extra = {"ada_scale": d.scale, **({"ada_scale_rule": AUTO_RULE} if auto else {})}
        out[label] = ScoreSet(label, id_scores[label], id_label, id_pred, ood_scores[label], dict(ood_preds),
                              {**meta, **extra, "detector_options": d.options()})
    return out


def gather_shards(result, rt: Runtime, failed: Failures | None = None):
    """Concatenate every rank's (scores, preds) in rank order, on every rank; a detector that failed on any
    rank's shard is recorded in `failed` on every rank and left out."""
    import torch.distributed as dist

    mine = {label: (f.phase, str(f.error), f.reason) for label, f in (failed or {}).items()}
    parts: list[Any] = [None] * rt.world_size
    dist.all_gather_object(parts, (result, mine))
    if failed is not None:
        for _, theirs in parts:
            for label, (phase, message, reason) in theirs.items():
                failed.setdefault(label, Failure(phase, ImoodError(message), reason))
    scores = {k: torch.cat([p[0][0][k] for p in parts]) for k in result[0]
              if all(k in p[0][0] for p in parts) and k not in (failed or {})}
    return scores, torch.cat([p[0][1] for p in parts])


def write_scores(scoresets: dict[str, ScoreSet], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for label, ss in scoresets.items():
        paths[label] = folder / f"{score_file_stem(label)}.safetensors"
        ss.save(paths[label])
    return paths


