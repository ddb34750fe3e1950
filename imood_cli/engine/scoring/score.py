"""Run a model over the ID and OOD test sets and turn its outputs into ScoreSets (SPEC §2).

Each detector declares what it needs (`Detector.needs`); one forward pass per batch serves every
detector, keeping the feature map only when one needs it; head re-runs (ReAct, ASH, DICE, ...) use that
pass's features or map. Detectors that need input gradients (ODIN) get their own pass with gradients on.
Detectors that need a fit are fitted on the ID training set once per model and cached in RUN/fits/.
Every score is checked before any file is written.

Any model goes through here as a `models.staged.StagedClassifier`: imood's own (`ImOODModel`, trained or
imported) and, through `api.score_model`, any nn.Module seen through its family's adapter. A model that lacks
a stage a detector needs (a vision transformer has no spatial feature map; a model imood cannot split has no
classifier to re-run) gets one note naming the detectors it cannot run; the rest score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from imood_cli.core.ada import Ada
from imood_cli.core.contract import ModelOutputs, ModelView
from imood_cli.core.prior import log_beta, log_prior
from imood_cli.data.augment import AugmentSpec, to_float
from imood_cli.data.base import Benchmark, ImageSet
from imood_cli.engine import runtime
from imood_cli.engine.runs.checkpoint import load_tensors, non_finite_weight, save_tensors
from imood_cli.engine.runs.digest import sha256_file
from imood_cli.engine.runs.layout import detector_label, model_path, score_file_stem
from imood_cli.engine.runs.metadata import check_model_metadata
from imood_cli.engine.runs.scorefile import ScoreSet
from imood_cli.engine.runtime import Runtime
from imood_cli.errors import ImoodError
from imood_cli.models.adapter import STAGES, Capabilities
from imood_cli.models.imood_model import Architecture, ImOODModel, check_new_fields, forward_macs
from imood_cli.models.preprocess import Preprocess
from imood_cli.models.staged import StagedClassifier
from imood_cli.registry import parse_spec, registry


class ScoreObserver:
    def start_set(self, name: str, size: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def end_set(self, name: str) -> None: ...


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


def eval_batches(images: ImageSet, batch_size: int, spec: AugmentSpec, device: torch.device,
                 workers: int = 0, prep: Preprocess | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Test-time batches (start index, float images on the device), no augmentation; an imported model's
    preprocessing (`prep`) replaces the benchmark's normalization."""
    if prep is not None:
        spec = replace(spec, mean=None, std=None)
    convert = (lambda b: prep.apply(to_float(b, spec))) if prep is not None else (lambda b: to_float(b, spec))
    if images.in_memory:
        for i in range(0, len(images), batch_size):
            yield i, convert(images.images[i:i + batch_size].to(device, non_blocking=True))
    else:
        start = 0
        for batch in images.files.batches(batch_size, workers=workers):
            yield start, convert(batch.to(device, non_blocking=True))
            start += batch.shape[0]


def model_input(loaded: LoadedModel, bench: Benchmark) -> tuple[int, int]:
    """(channels, size) of the images the model sees for this benchmark."""
    prep = loaded.preprocess
    return (prep.in_chans, prep.image_size) if prep is not None else (bench.channels, bench.image_size)


class ModelAccess:
    """The parts of a model a view hands to detectors, run under the runtime's autocast, float32 out."""

    def __init__(self, model: StagedClassifier, rt: Runtime) -> None:
        self.model, self.rt = model, rt

    def _run(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        with self.rt.autocast():
            return fn(x).float()

    def head_from_map(self, m: torch.Tensor) -> torch.Tensor:
        if self.rt.channels_last and m.ndim == 4:
            m = m.contiguous(memory_format=torch.channels_last)
        return self._run(self.model.logits_from_feature_map, m)

    def head_from_features(self, f: torch.Tensor) -> torch.Tensor:
        return self._run(self.model.logits_from_features, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._run(lambda t: self.model(t).logits, x)

    def view(self, out: ModelOutputs, needs: set[str], images: torch.Tensor | None = None,
             labels: torch.Tensor | None = None) -> ModelView:
        more: dict[str, Any] = {"labels": labels}
        if "classifier" in needs and getattr(self.model, "has_classifier", True):  # duck-typed models have one
            w, b = self.model.class_weights()
            more.update(weight=w.detach().float(), bias=b.detach().float(),
                        logits_from_features=self.head_from_features)
        if "feature_map" in needs and out.feature_map is not None:
            more["logits_from_feature_map"] = self.head_from_map
        if "input_grad" in needs and images is not None:
            more.update(images=images, logits_from_images=self.forward)
        return ModelView.of(out, **more)


def infer(model: StagedClassifier, images: ImageSet, rt: Runtime, batch_size: int, spec: AugmentSpec,
          keep_features: bool, observer: ScoreObserver | None = None, workers: int = 0,
          each: Any = None, feature_map: bool = False, prep: Preprocess | None = None) -> ModelOutputs | None:
    """Outputs over a set (features only if asked). With `each(out, x, start)`, call it per batch and keep
    nothing."""
    return run_batches(model, eval_batches(images, batch_size, spec, rt.device, workers, prep), rt, keep_features,
                       observer, each, feature_map)


@torch.no_grad()
def run_batches(model: StagedClassifier, batches: Iterable[tuple[int, torch.Tensor]], rt: Runtime,
                keep_features: bool, observer: ScoreObserver | None = None, each: Any = None,
                feature_map: bool = False) -> ModelOutputs | None:
    """`infer` over any (start, images on the device) batches."""
    parts = []
    for start, x in batches:
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            out = model(x, feature_map=feature_map)
        out = out.float()
        if not keep_features:
            out.features = None
        if each is not None:
            each(out, x, start)
        else:
            out.feature_map = None
            parts.append(out)
        if observer:
            observer.advance(x.shape[0])
    if each is not None:
        return None
    if not parts:
        return ModelOutputs(torch.zeros(0, model.num_classes, device=rt.device))
    return ModelOutputs.cat(parts)


@dataclass
class ScoreRequest:
    detectors: list[str]  # "name" or "name:key=value:..." specs
    logit_adjust: float = 1.0
    ada_scale: float | str | None = None  # a number, "auto" (fitted on the ID training set) or None
    batch_size: int = 512
    workers: int = 0
    extra_ood: dict[str, ImageSet] = field(default_factory=dict)
    threads: int = 0  # CPU threads; 0: from the model's size (one thread for tiny models)
    skip_unavailable: bool = False  # drop detectors the model cannot run (-m all), with a note; else an error


def build_detectors(specs: list[str], ada_scale: float | None, arch: Architecture) -> dict[str, Any]:
    """{label: detector instance} for the requested specs."""
    reg = registry()
    detectors = {}
    for spec in specs:
        name, options = parse_spec(spec)
        d = reg.detector(name, ada_scale=ada_scale if name.startswith("ada_") else None, **options)
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
    for name in reg.names("detector"):
        if name.startswith("ada_"):
            continue
        variants = [{}]
        if "layer" in getattr(reg.get("detector", name).cls, "hyperparameters", ()):
            variants.append({"layer": "map"})  # ash and scale shape the feature map with layer=map
        for options in variants:
            try:
                d = reg.detector(name, **options)
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


def _fit_key(label: str) -> str:
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
            raise ImoodError(f"detector {label} ({type(d).__name__}) failed to fit on {where}: "
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
        cache = cache_dir / f"{_fit_key(label)}-{loaded.sha256[:16]}.safetensors" if cache_dir else None
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


def _run_detector(label: str, d: Any, view: ModelView, lp: torch.Tensor, n: int) -> torch.Tensor:
    """One detector's scores for a batch; whatever goes wrong inside it is reported under its name."""
    try:
        scores = d.ood_score(view, lp)
    except (ImoodError, KeyboardInterrupt):
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ImoodError(f"detector {label} ({type(d).__name__}) failed: {type(exc).__name__}: {first}") from exc
    return _check_scores(label, d, scores, n)


class BatchScorer:
    """Every detector's scores batch after batch, from the one forward pass the caller ran; detectors that need
    input gradients run with gradients on. Results stay on the device until `result`."""

    def __init__(self, detectors: dict[str, Any], access: ModelAccess, lp: torch.Tensor) -> None:
        self.detectors, self.access, self.lp = detectors, access, lp
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
        for label, d in self.plain.items():
            self.scores[label].append(_run_detector(label, d, view, self.lp, n))
        if self.grads:
            with torch.enable_grad():
                for label, d in self.grads.items():
                    self.scores[label].append(_run_detector(label, d, view, self.lp, n).detach())
        self.preds.append(out.logits.argmax(dim=1))

    @property
    def all_finite(self) -> bool:
        return not self.finite or bool(torch.stack(self.finite).all())

    def result(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        cat = lambda xs: torch.cat(xs).cpu() if xs else torch.zeros(0)
        return {k: cat(v) for k, v in self.scores.items()}, cat(self.preds).long()


AUTO_RULE = ("auto: the c that makes the per-class mean ID score uncorrelated with log π̃ over the ID training "
             "set, c = -cov_k(mean g, log π̃) / cov_k(mean log β̂, log π̃), at least 0 (imood's heuristic)")


def fit_auto_scales(detectors: dict[str, Ada], loaded: LoadedModel, bench: Benchmark, rt: Runtime,
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


def auto_scales(detectors: dict[str, Ada], model: StagedClassifier, batches: Iterable[tuple[int, torch.Tensor]],
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


def _check_scores(label: str, d: Any, scores: Any, n: int) -> torch.Tensor:
    """A detector's output for a batch of n rows, or one clear error naming the detector."""
    if not isinstance(scores, torch.Tensor):
        raise ImoodError(f"detector {label} ({type(d).__name__}) returned {type(scores).__name__}, not a tensor")
    if scores.shape != (n,):
        raise ImoodError(f"detector {label} ({type(d).__name__}) returned shape {tuple(scores.shape)} for a batch "
                         f"of {n} images; it must return one score per image, shape ({n},)")
    if scores.is_complex() or not (scores.is_floating_point() or scores.dtype in (torch.int32, torch.int64)):
        raise ImoodError(f"detector {label} ({type(d).__name__}) returned {scores.dtype} scores, not real numbers")
    return scores.float()


def check_all_finite(scores: dict[str, torch.Tensor], ood: dict[str, dict[str, torch.Tensor]], where: str) -> None:
    """Every number checked before anything is written or returned."""
    for label in scores:
        for place, values in ((where, scores[label]), *ood[label].items()):
            bad = int((~torch.isfinite(values)).sum())
            if bad:
                raise ImoodError(f"detector {label} gave {bad} NaN or infinite score(s) on {place} while the model's "
                                 "outputs are finite: the detector (or its fit) is at fault; nothing was written")


def score(loaded: LoadedModel, bench: Benchmark, req: ScoreRequest, rt: Runtime,
          observer: ScoreObserver | None = None, cache_dir: Path | None = None,
          notes: list[str] | None = None) -> dict[str, ScoreSet]:
    """ScoreSets for every requested detector over the benchmark's ID test set and OOD test sets; what the
    user should know (a fit that could not be cached, detectors the model cannot run) is appended to `notes`."""
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
    notes.extend(fit_detectors(detectors, loaded, bench, rt, req, cache_dir, observer))
    counts = loaded.class_counts
    lp = log_prior(counts, req.logit_adjust).float().to(rt.device)
    if auto:
        fit_auto_scales({k: d for k, d in detectors.items() if isinstance(d, Ada)}, loaded, bench, rt, req, lp,
                        observer)
    access = ModelAccess(model, rt)
    spec, prep = bench.augment, loaded.preprocess

    def run(s: ImageSet):
        full = s
        if rt.distributed:  # each process scores one contiguous shard; rank 0 gathers them in order
            bounds = torch.linspace(0, len(s), rt.world_size + 1).long().tolist()
            s = s.subset(torch.arange(bounds[rt.rank], bounds[rt.rank + 1]), name=s.name)
        scorer = BatchScorer(detectors, access, lp)
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
        return gather_shards(result, rt) if rt.distributed else result

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
    check_all_finite(id_scores, ood_scores, "the ID test set")
    meta = {
        "class_counts": counts, "dataset": bench.name, "id_set": bench.test.name,
        "checkpoint": str(loaded.path), "checkpoint_sha256": loaded.sha256, "logit_adjust": req.logit_adjust,
        "moved_to_id": moved, "num_classes": bench.num_classes, "trained_with": loaded.meta.get("metric"),
        "missing_ood_sets": sorted(getattr(bench, "missing", {}) or {}),
    }
    out = {}
    for label, d in detectors.items():
        extra = {}
        if isinstance(d, Ada):
            extra = {"ada_scale": d.scale, **({"ada_scale_rule": AUTO_RULE} if auto else {})}
        out[label] = ScoreSet(label, id_scores[label], id_label, id_pred, ood_scores[label], dict(ood_preds),
                              {**meta, **extra, "detector_options": d.options()})
    return out


def gather_shards(result, rt: Runtime):
    """Concatenate every rank's (scores, preds) in rank order, on every rank."""
    import torch.distributed as dist

    parts = [None] * rt.world_size
    dist.all_gather_object(parts, result)
    scores = {k: torch.cat([p[0][k] for p in parts]) for k in result[0]}
    return scores, torch.cat([p[1] for p in parts])


def write_scores(scoresets: dict[str, ScoreSet], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for label, ss in scoresets.items():
        paths[label] = folder / f"{score_file_stem(label)}.safetensors"
        ss.save(paths[label])
    return paths


def model_config(loaded: LoadedModel) -> dict[str, Any]:
    return loaded.meta.get("config") or {}

