"""Run a model over the ID and OOD test sets and turn its outputs into ScoreSets (SPEC §2).

One forward pass serves every requested detector. Detectors that need fitting (maha) are fitted
on the ID training features once per checkpoint and cached in the run folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imood_cli.core.ada import Ada
from imood_cli.core.contract import ModelOutputs, ModelView
from imood_cli.core.prior import log_prior
from imood_cli.data.augment import AugmentSpec, to_float
from imood_cli.data.base import Benchmark, ImageSet
from imood_cli.engine.checkpoint import load_tensors, save_tensors, sha256_file
from imood_cli.engine.evaluate import check_class_counts
from imood_cli.engine.model import Architecture, ImOODModel
from imood_cli.engine.runtime import Runtime
from imood_cli.engine.scoreset import ScoreSet
from imood_cli.errors import ImoodError
from imood_cli.registry import registry


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


def resolve_model_path(target: Path) -> Path:
    """A run folder (its model.safetensors), or the path of a model file."""
    target = Path(target)
    if target.is_dir():
        path = target / "model.safetensors"
        if not path.exists():
            ckpt = target / "checkpoint"
            hint = " (training has not finished: continue it with imood train --resume)" if ckpt.exists() else ""
            raise ImoodError(f"no model.safetensors in {target}{hint}")
        return path
    if not target.exists():
        raise ImoodError(f"run folder or model file not found: {target}")
    return target


def load_model(target: Path, device: torch.device | str = "cpu") -> LoadedModel:
    path = resolve_model_path(target)
    tensors, meta = load_tensors(path, "model file")
    if "skeleton" in meta:  # a training checkpoint: its model weights are under s.0.
        raise ImoodError(f"{path} is a training checkpoint; score the run folder or its model.safetensors")
    arch = check_model_metadata(meta, path)
    model = ImOODModel(arch)
    check_state_dict(model, tensors, path)
    model.load_state_dict(tensors)
    model.to(device).eval()
    return LoadedModel(model, meta, path, sha256_file(path))


def check_model_metadata(meta: dict[str, Any], path: Path) -> Architecture:
    """The architecture a model file declares, after checking every field scoring relies on."""
    if "architecture" not in meta or "class_counts" not in meta:
        raise ImoodError(f"{path} is not an imood model file (no architecture or class counts in its metadata)")
    a = meta["architecture"]

    def bad(what: str) -> ImoodError:
        return ImoodError(f"{path} has malformed metadata: {what}")

    if not isinstance(a, dict):
        raise bad("architecture is not a JSON object")
    whole = lambda v, low: isinstance(v, int) and not isinstance(v, bool) and v >= low
    if not isinstance(a.get("backbone"), str):
        raise bad("architecture.backbone is not a model name")
    if not whole(a.get("num_classes"), 1):
        raise bad(f"architecture.num_classes must be a whole number >= 1, got {a.get('num_classes')!r}")
    if not whole(a.get("extra_outputs", 0), 0) or not whole(a.get("in_chans", 3), 1):
        raise bad("architecture.extra_outputs / in_chans must be whole numbers")
    if not isinstance(a.get("cifar_stem", False), bool):
        raise bad("architecture.cifar_stem must be true or false")
    counts = check_class_counts(meta["class_counts"])
    if len(counts) != a["num_classes"] or min(counts) < 1:
        raise bad(f"{len(counts)} class counts for {a['num_classes']} classes: wrong number of classes, or a class "
                  "without training images")
    meta["class_counts"] = counts
    if not isinstance(meta.get("config", {}), dict):
        meta["config"] = {}
    return Architecture.from_dict(a)


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


def eval_batches(images: ImageSet, batch_size: int, spec: AugmentSpec, device: torch.device,
                 workers: int = 0) -> Iterator[torch.Tensor]:
    """Test-time batches as float tensors on the device (no augmentation)."""
    if images.in_memory:
        for i in range(0, len(images), batch_size):
            yield to_float(images.images[i:i + batch_size].to(device, non_blocking=True), spec)
    else:
        for batch in images.files.batches(batch_size, workers=workers):
            yield to_float(batch.to(device, non_blocking=True), spec)


@torch.no_grad()
def infer(model: ImOODModel, images: ImageSet, rt: Runtime, batch_size: int, spec: AugmentSpec,
          keep_features: bool, observer: ScoreObserver | None = None, workers: int = 0,
          each: Any = None) -> ModelOutputs | None:
    """Outputs over a set (features only if asked). With `each`, call it per batch and keep nothing."""
    parts = []
    for x in eval_batches(images, batch_size, spec, rt.device, workers):
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            out = model(x)
        out = out.float()
        if not keep_features:
            out.features = None
        if each is not None:
            each(out)
        else:
            parts.append(out)
        if observer:
            observer.advance(x.shape[0])
    if each is not None:
        return None
    if not parts:
        return ModelOutputs(torch.zeros(0, model.arch.num_classes))
    return ModelOutputs.cat(parts)


@dataclass
class ScoreRequest:
    metrics: list[str]
    logit_adjust: float = 1.0
    ada_scale: float | None = None
    batch_size: int = 512
    workers: int = 0
    extra_ood: dict[str, ImageSet] = field(default_factory=dict)


def build_metrics(names: list[str], ada_scale: float | None, arch: Architecture) -> dict:
    """{name: detector instance} for the requested names."""
    reg = registry()
    metrics = {}
    for name in names:
        m = reg.detector(name, ada_scale=ada_scale if name.startswith("ada_") else None)
        if m.extra_outputs > arch.extra_outputs:
            raise ImoodError(f"{name} needs {m.extra_outputs} extra classifier output(s), but this checkpoint has "
                             f"{arch.extra_outputs}: train it with an --ood_metric that has one (e.g. bin_disc)")
        metrics[name] = m
    return metrics


def fit_metrics(metrics, loaded: LoadedModel, bench: Benchmark, rt: Runtime, spec: AugmentSpec, req: ScoreRequest,
                cache_dir: Path | None, observer: ScoreObserver | None) -> None:
    need = {name: m for name, m in metrics.items() if m.needs_fit}
    if not need:
        return
    feats = None
    for name, m in need.items():
        base_name = name.removeprefix("ada_")
        cache = cache_dir / f"{base_name}-{loaded.sha256[:16]}.safetensors" if cache_dir else None
        if cache is not None and cache.exists():
            try:
                state, meta = load_tensors(cache, "fit cache")
                if meta.get("checkpoint_sha256") == loaded.sha256:
                    m.load_fit_state(state)
                    continue
            except ImoodError:
                pass  # a damaged cache is refitted
        if feats is None:
            if observer:
                observer.start_set(f"fit on {bench.train.name}", len(bench.train))
            feats = infer(loaded.model, bench.train, rt, req.batch_size, spec, True, observer, req.workers)
            if observer:
                observer.end_set("fit")
        m.fit(ModelView.of(feats, labels=bench.train.labels.to(rt.device)))
        if cache is not None:
            save_tensors(cache, m.fit_state(), {"metric": base_name, "checkpoint_sha256": loaded.sha256})


def score(loaded: LoadedModel, bench: Benchmark, req: ScoreRequest, rt: Runtime,
          observer: ScoreObserver | None = None, cache_dir: Path | None = None) -> dict[str, ScoreSet]:
    """ScoreSets for every requested metric over the benchmark's ID test set and OOD test sets."""
    model, arch = loaded.model, loaded.model.arch
    if bench.num_classes != arch.num_classes:
        raise ImoodError(f"the checkpoint has {arch.num_classes} classes but {bench.name} has {bench.num_classes}")
    metrics = build_metrics(req.metrics, req.ada_scale, arch)
    spec = bench.augment
    fit_metrics(metrics, loaded, bench, rt, spec, req, cache_dir, observer)
    counts = loaded.class_counts
    lp = log_prior(counts, req.logit_adjust).float().to(rt.device)
    keep_features = any("features" in m.needs for m in metrics.values())

    def run(s: ImageSet):
        full = s
        if rt.distributed:  # each process scores one contiguous shard; rank 0 gathers them in order
            bounds = torch.linspace(0, len(s), rt.world_size + 1).long().tolist()
            s = s.subset(torch.arange(bounds[rt.rank], bounds[rt.rank + 1]), name=s.name)
        scores = {name: [] for name in metrics}
        preds = []

        def each(out: ModelOutputs) -> None:  # results stay on the device: one copy per set, at the end
            view = ModelView.of(out)
            for name, m in metrics.items():
                scores[name].append(m.ood_score(view, lp).float())
            preds.append(out.logits.argmax(dim=1))

        if observer:
            observer.start_set(full.name, len(s))
        infer(model, s, rt, req.batch_size, spec, keep_features, observer, req.workers, each=each)
        if observer:
            observer.end_set(full.name)
        cat = lambda xs: torch.cat(xs).cpu() if xs else torch.zeros(0)
        result = {k: cat(v) for k, v in scores.items()}, cat(preds).long()
        return gather_shards(result, rt) if rt.distributed else result

    id_scores, id_pred = run(bench.test)
    id_label = bench.test.labels.clone()
    ood_sets = {**bench.ood_tests, **req.extra_ood}
    ood_scores, ood_preds, moved = {name: {} for name in metrics}, {}, {}
    for name, s in ood_sets.items():
        if len(s) == 0:
            raise ImoodError(f"OOD set {name!r} is empty")
        sc, pr = run(s)
        is_ood = s.labels < 0
        n_id = int((~is_ood).sum())
        if n_id:  # SCOOD: images of ID classes move into the ID set
            moved[name] = n_id
            for name in metrics:
                id_scores[name] = torch.cat([id_scores[name], sc[name][~is_ood]])
            id_label = torch.cat([id_label, s.labels[~is_ood]])
            id_pred = torch.cat([id_pred, pr[~is_ood]])
        if not is_ood.any():
            raise ImoodError(f"OOD set {name!r} holds no OOD image (every image belongs to an ID class)")
        for m_name in metrics:
            ood_scores[m_name][name] = sc[m_name][is_ood]
        ood_preds[name] = pr[is_ood]
    meta = {
        "class_counts": counts, "dataset": bench.name, "id_set": bench.test.name,
        "checkpoint": str(loaded.path), "checkpoint_sha256": loaded.sha256, "logit_adjust": req.logit_adjust,
        "moved_to_id": moved, "num_classes": bench.num_classes, "trained_with": loaded.meta.get("metric"),
    }
    out = {}
    for name, m in metrics.items():
        extra = {"ada_scale": m.scale} if isinstance(m, Ada) else {}
        out[name] = ScoreSet(name, id_scores[name], id_label, id_pred, ood_scores[name], dict(ood_preds),
                             {**meta, **extra, "detector_options": m.options()})
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
    for name, ss in scoresets.items():
        paths[name] = folder / f"{name}.safetensors"
        ss.save(paths[name])
    return paths


def model_config(loaded: LoadedModel) -> dict[str, Any]:
    cfg = loaded.meta.get("config")
    return cfg if isinstance(cfg, dict) else json.loads(cfg or "{}")
