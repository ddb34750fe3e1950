"""The public Python API, for notebooks and scripts.

    from imood_cli import api
    scores = api.ood_scores("ada_energy", logits, class_counts)          # higher = more OOD
    result = api.evaluate(id_scores, {"svhn": svhn_scores})               # same keys as `imood eval --json`
    out = api.score_model(model, id_loader, {"svhn": svhn_loader}, ["react", "ada_react", "vim"],
                          class_counts=counts, fit_loader=train_loader)   # any nn.Module, every detector
    out.evaluation["ada_react"]["ood"]["mean"]["auroc"]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imood_cli.core.ada import AdaScore
from imood_cli.core.contract import ModelOutputs, ModelView
from imood_cli.core.method import Objective, Score
from imood_cli.core.prior import log_beta, log_prior
from imood_cli.engine.metrics.evaluate import evaluate as _evaluate
from imood_cli.engine.metrics.groups import shot_groups
from imood_cli.engine.metrics.ranking import detection_metrics
from imood_cli.errors import ImoodError
from imood_cli.models.adapter import WHOLE, Adapter, Capabilities, LastLinear, Split, adapter_for
from imood_cli.models.staged import StagedModel, eval_mode
from imood_cli.registry import parse_spec, registry

__all__ = ["ood_scores", "evaluate", "detection_metrics", "shot_groups", "log_prior", "log_beta", "score", "training",
           "list_methods", "ModelOutputs", "ModelView", "score_model", "ModelScores", "model_view", "staged",
           "Split", "Adapter", "adapter_for", "load_run", "RunModel", "read_scores"]


def ood_metrics(id_scores, ood_scores) -> dict:
    """The name of `detection_metrics` in imood 0.2 (it clashed with the detectors' entry-point group); kept for
    scripts until 0.4."""
    import warnings

    warnings.warn("api.ood_metrics is now api.detection_metrics", DeprecationWarning, stacklevel=2)
    return detection_metrics(id_scores, ood_scores)


def score(name: str, ada_scale: float | None = None, **options) -> Score:
    """A method's score from the registry (built-in or plugin; `ada_<name>` its ImOOD form); options are its
    scoring options."""
    return registry().score(name, ada_scale=ada_scale, **options)


def training(name: str, **options) -> tuple[Score, Objective | None]:
    """A method's score and training objective (None for a post-hoc method), as `imood train --ood-metric`
    builds them; options are its training and scoring options."""
    return registry().training(name, **options)


def list_methods() -> list[str]:
    """Every usable method name, ada_ forms and plugins included."""
    return registry().names("method")


@dataclass
class RunModel:
    """A trained run's model as a plain classifier: `model(images)` returns the logits (eval mode), with the
    split model-aware detectors read, ready for `score_model(run.model, ..., split=run.split,
    class_counts=run.class_counts)`. Images go in as `imood score` feeds them (an imported model's
    preprocessing is in `meta["preprocess"]`)."""

    model: nn.Module
    class_counts: list[int]
    meta: dict[str, Any]
    path: Path
    split: Split | None = None


def load_run(run: str | Path, device: str | torch.device = "cpu") -> RunModel:
    """The model of an imood run folder (or a model.safetensors file): imood trained it or imported it. Weights
    are read with safetensors and checked like `imood score` checks them."""
    from imood_cli.engine.scoring.loading import load_model

    loaded = load_model(Path(run), device)
    inner = loaded.model.eval()
    meta, counts = dict(loaded.meta), list(loaded.class_counts)
    if inner.classifier is None:  # an imported classifier whole: its own adapter splits it
        return RunModel(inner.backbone, counts, meta, loaded.path)
    k = inner.arch.num_classes
    head = nn.Linear(inner.classifier.in_features, k).to(inner.classifier.weight.device)
    with torch.no_grad():  # the K class outputs (a model trained with extra outputs has more rows)
        head.weight.copy_(inner.classifier.weight[:k])
        head.bias.copy_(inner.classifier.bias[:k])
    split = Split(feature_map=lambda x: inner.adapter.forward_features(inner.backbone, x),
                  pool=lambda m: inner.adapter.forward_pool(inner.backbone, m), head=head,
                  family=f"imood model ({inner.arch.backbone})")
    return RunModel(LogitsOnly(inner).eval(), counts, meta, loaded.path, split)


class LogitsOnly(nn.Module):
    """An imood model whose forward returns the logits alone (it returns every output by itself)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.inner(images)
        return out.logits if isinstance(out, ModelOutputs) else out


def read_scores(path: str | Path) -> Any:
    """A score file (`RUN/scores/<detector>.safetensors`) as a ScoreSet: `metric`, `id_score`, `id_label`,
    `id_pred`, `ood_score` {set: scores}, `ood_pred`, `meta` (numpy arrays; see the file formats)."""
    from imood_cli.engine.runs.scorefile import ScoreSet

    return ScoreSet.load(Path(path))


def detector(name: str, ada_scale: float | None = None, **options) -> Score:
    """imood 0.2's name of `score` (a detector was one class for scoring and training); kept until 0.4."""
    import warnings

    warnings.warn("api.detector is now api.score (api.training for a method's training objective)",
                  DeprecationWarning, stacklevel=2)
    return score(name, ada_scale=ada_scale, **options)


def list_detectors() -> list[str]:
    """imood 0.2's name of `list_methods`; kept until 0.4."""
    import warnings

    warnings.warn("api.list_detectors is now api.list_methods", DeprecationWarning, stacklevel=2)
    return list_methods()


def ood_scores(detector_name: str, logits, class_counts: Sequence[int], *, extra_logit=None, features=None,
               logit_adjust: float = 1.0, ada_scale: float | None = None, fit_features=None,
               fit_labels=None, fit_logits=None, **options) -> torch.Tensor:
    """OOD scores (higher = more OOD) of one detector from raw model outputs.

    extra_logit: bin_disc's ID-vs-OOD logit [N]; features: penultimate features [N, d] (maha, gradnorm).
    A detector that needs a fit takes the ID training set's fit_features / fit_labels, and fit_logits where
    its fit reads the logits (klm). Detectors that need the model itself (feature maps, classifier weights,
    input gradients) are scored with `imood score` or `engine.score`.
    """
    logits = torch.as_tensor(logits)
    if logits.ndim != 2:
        raise ImoodError(f"logits must be [N, K], got shape {tuple(logits.shape)}")
    if logits.shape[1] != len(class_counts):
        raise ImoodError(f"logits have {logits.shape[1]} classes but class_counts has {len(class_counts)}")
    m = registry().score(detector_name, ada_scale=ada_scale if detector_name.startswith("ada_") else None, **options)
    missing = set(m.needs) - {"features", "fit"}
    if missing:
        raise ImoodError(f"{detector_name} needs {', '.join(sorted(missing))} of the model: score it with imood score")
    extra = None if extra_logit is None else torch.as_tensor(extra_logit).reshape(len(logits), -1)
    feats = None if features is None else torch.as_tensor(features).float()
    if m.needs_fit:
        if fit_features is None or fit_labels is None:
            raise ImoodError(f"{detector_name} must be fitted: pass fit_features and fit_labels (ID training features)")
        fit_f = torch.as_tensor(fit_features).float()
        # Without fit_logits the fit sees NaN logits: a fit that reads them gives NaN scores, refused below
        fit_z = (torch.full((len(fit_f), logits.shape[1]), float("nan")) if fit_logits is None
                 else torch.as_tensor(fit_logits).float())
        m.fit(ModelView(logits=fit_z, features=fit_f, labels=torch.as_tensor(fit_labels).long()))
    view = ModelView(logits=logits.float(), extra=extra, features=feats)
    scores = m.ood_score(view, log_prior(class_counts, logit_adjust).float())
    if not torch.isfinite(scores).all():
        hint = "; its fit reads the training logits: pass fit_logits" if m.needs_fit and fit_logits is None else ""
        raise ImoodError(f"{detector_name} gave NaN or infinite scores{hint}")
    return scores


def evaluate(id_scores, ood_scores_by_set: dict, *, id_labels=None, id_preds=None, class_counts=None,
             ood_preds_by_set=None, bootstrap: int = 0, seed: int = 0) -> dict:
    """Metrics with the keys of `imood eval --json` (OOD positive, scores higher for more OOD)."""
    def as_np(x):
        if x is None:
            return None
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    return _evaluate(as_np(id_scores), {k: as_np(v) for k, v in ood_scores_by_set.items()},
                     id_labels=as_np(id_labels), id_preds=as_np(id_preds), class_counts=class_counts,
                     ood_preds_by_set={k: as_np(v) for k, v in (ood_preds_by_set or {}).items()},
                     bootstrap=bootstrap, seed=seed)


# ---- any nn.Module
DEFAULT_DETECTORS = ("msp", "energy", "ada_msp", "ada_energy")
ALL_STAGES = frozenset({"features", "classifier", "feature_map", "input_grad"})


def staged(model: nn.Module, split: Adapter | None = None) -> StagedModel:
    """`model` seen in stages (feature map -> pooled features -> classifier) through its family's adapter
    (timm's interface, torchvision's families, its last linear layer), or through `split`: an `api.Split` of
    callables, or an `Adapter` of your own."""
    if isinstance(model, StagedModel):
        return model
    if not isinstance(model, nn.Module):
        raise ImoodError(f"score an nn.Module, not a {type(model).__name__}")
    return StagedModel(model, split)


def model_view(model: nn.Module, images: torch.Tensor, needs: Iterable[str] = ALL_STAGES, *,
               split: Adapter | None = None, labels: torch.Tensor | None = None) -> ModelView:
    """The view imood's engine hands a detector for one batch of `images` (already preprocessed, as the model
    takes them): one forward pass, and the parts of `needs` the model has. For testing a detector on a real
    model; `Detector.fit` takes a view with `labels`."""
    from imood_cli.engine.runtime import Runtime
    from imood_cli.engine.scoring.infer import ModelAccess

    s = staged(model, split)
    needs = set(needs)
    with torch.no_grad():
        out = s(images, feature_map="feature_map" in needs).float()
    device = images.device
    return ModelAccess(s, Runtime(device)).view(out, needs, images=images, labels=labels)


@dataclass
class ModelScores:
    """What `score_model` returns: scores per detector (detached, on the CPU, higher = more OOD), predictions,
    and each detector's `imood eval --json` document.

    id_scores:   {label: [N]} on the ID set;  ood_scores: {label: {set: [M]}}.
    id_labels:   [N] the ID loader's labels (None if it gave none); id_preds / ood_preds: argmax of the logits.
    evaluation:  {label: document} as `api.evaluate` returns it (OOD metrics per set and mean, ID accuracy and
                 the shot groups of class_counts).
    skipped:     {label: why} for detectors the model cannot run (with skip_unavailable=True).
    failed:      {label: why} for detectors whose fit or scores failed (with keep_going=True).
    capabilities: which stages (feature_map, features, classifier) the model gave detectors.
    """

    id_scores: dict[str, torch.Tensor]
    ood_scores: dict[str, dict[str, torch.Tensor]]
    id_labels: torch.Tensor | None
    id_preds: torch.Tensor
    ood_preds: dict[str, torch.Tensor]
    evaluation: dict[str, dict]
    class_counts: list[int]
    capabilities: Capabilities
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    options: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Score files (`<folder>/<detector>.safetensors`) that `imood eval` and `imood report` read."""
        from imood_cli.engine.runs.scorefile import ScoreSet, as_array
        from imood_cli.engine.scoring.score import write_scores

        meta = {"class_counts": self.class_counts, "num_classes": len(self.class_counts), "dataset": "api",
                "id_set": "id", "checkpoint": "api.score_model", "moved_to_id": {}, "missing_ood_sets": []}
        # numpy, as ScoreSet keeps them (the conversion its constructor applies to anything else)
        id_labels = None if self.id_labels is None else as_array(self.id_labels, "id.label")
        id_preds = as_array(self.id_preds, "id.pred")
        ood_preds = {k: as_array(v, f"ood.{k}.pred") for k, v in self.ood_preds.items()}
        sets = {label: ScoreSet(label, as_array(self.id_scores[label], "id.score"), id_labels, id_preds,
                                {k: as_array(v, f"ood.{k}.score") for k, v in self.ood_scores[label].items()},
                                ood_preds, {**meta, "detector_options": self.options.get(label, {})})
                for label in self.id_scores}
        return write_scores(sets, Path(folder))


def _expand(detectors: str | Sequence[str]) -> list[str]:
    """Specs as `-m` takes them; `all` is every registered detector without extra outputs, with its ada_ form."""
    items = [detectors] if isinstance(detectors, str) else list(detectors)
    specs: list[str] = []
    reg = registry()
    for item in items:
        for spec in (p.strip() for p in str(item).split(",") if p.strip()):
            if spec != "all":
                specs.append(spec)
                continue
            for name in reg.names("method"):
                if name.startswith("ada_") or reg.alias_of(name):
                    continue
                s = reg.score(name)
                if s.extra_outputs:
                    continue
                specs.append(name)
                if s.ada_scale is not None:
                    specs.append(f"ada_{name}")
    return list(dict.fromkeys(specs))


def _split_item(item: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, (list, tuple)) and item and isinstance(item[0], torch.Tensor):
        y = item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None
        return item[0], y
    raise ImoodError(f"a loader must give image tensors or (images, labels, ...) tuples, not {type(item).__name__}")


def _batches(items: Iterable, device: torch.device, labels: list[torch.Tensor] | None = None
             ) -> Iterator[tuple[int, torch.Tensor]]:
    start = 0
    for item in items:
        x, y = _split_item(item)
        if labels is not None and y is not None:
            labels.append(torch.as_tensor(y).long().cpu())
        x = x.to(device)
        yield start, x if x.is_floating_point() else x.float()
        start += x.shape[0]


def _device_of(model: nn.Module) -> torch.device:
    p = next(itertools.chain(model.parameters(), model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


def score_model(model: nn.Module, id_loader: Iterable, ood_loaders: Mapping[str, Iterable],
                detectors: str | Sequence[str] = DEFAULT_DETECTORS, *, class_counts: Sequence[int],
                fit_loader: Iterable | None = None, logit_adjust: float = 1.0, ada_scale: float | str | None = None,
                split: Adapter | None = None, device: str | torch.device | None = None,
                skip_unavailable: bool = False, keep_going: bool = False) -> ModelScores:
    """Fit, score and evaluate detectors on any classifier (`nn.Module` whose forward returns the logits).

    Loaders give image batches as the model takes them (your transforms, normalization included): tensors, or
    (images, labels, ...) tuples (DataLoaders, lists); each is iterated once (the ID loader's first batch twice:
    it also probes the model). `id_loader`'s labels give the accuracy and shot-group parts of the evaluation.
    `fit_loader` is the ID training set, with labels, for detectors that need a fit (maha, knn, vim, react, dice,
    rmd, klm, fdbd) and for ada_scale="auto". `detectors`: names with options as `imood score -m` takes them
    ("react:p=95", "ada_vim", "all"). The model is split by its family's adapter or by `split`; a detector it
    cannot run (no spatial feature map, no linear classifier) is an error, or left out and named in `skipped`
    with skip_unavailable=True ("all" always leaves them out). A detector whose fit or scores fail (an exception,
    a NaN) is one error naming it; with keep_going=True, as in `imood score`, it is dropped and named in `failed`
    with why, and the others are scored (none left is the error). The model runs in eval mode; its modes are
    restored.
    """
    from imood_cli.engine.runtime import Runtime
    from imood_cli.engine.scoring.fits import Failures, auto_scales, drop_failed, fit_on
    from imood_cli.engine.scoring.infer import ModelAccess, run_batches
    from imood_cli.engine.scoring.score import BatchScorer, check_all_finite, drop_unavailable

    s = staged(model, split)
    dev = torch.device(device) if device is not None else _device_of(s.module)
    rt = Runtime(dev)
    counts = [int(c) for c in class_counts]
    if not counts or min(counts) < 1:
        raise ImoodError("class_counts needs a count >= 1 for every class")
    if not ood_loaders:
        raise ImoodError("give at least one OOD loader: {name: loader}")
    if "mean" in ood_loaders:
        raise ImoodError("an OOD set may not be named 'mean': that key holds the average over the sets")
    wanted = _expand(detectors)
    skip = skip_unavailable or any(d == "all" for d in ([detectors] if isinstance(detectors, str) else detectors))
    auto = ada_scale == "auto"
    if ada_scale is not None and not auto and (isinstance(ada_scale, bool) or not isinstance(ada_scale, (int, float))
                                               or not 0 <= ada_scale < float("inf")):
        raise ImoodError(f"ada_scale takes a number >= 0, 'auto' or None, got {ada_scale!r}")
    with eval_mode(s.module):
        it = iter(id_loader)
        try:
            first = next(it)
        except StopIteration:
            raise ImoodError("the ID loader is empty") from None
        x0 = _split_item(first)[0].to(dev)
        x0 = x0 if x0.is_floating_point() else x0.float()
        notes: list[str] = []
        problem = s.check(x0[:2])
        if problem and isinstance(s.adapter, LastLinear):
            notes.append(f"{type(s.module).__name__}: {problem}; scored from its logits only")
            s = StagedModel(s.module, WHOLE)
        elif problem:
            raise ImoodError(f"the split of {type(s.module).__name__} ({s.adapter.family}) does not reproduce its "
                             f"logits: {problem}")
        caps = s.capabilities(x0[:1])
        with torch.no_grad():
            k = int(s(x0[:1]).logits.shape[1])
        if k != len(counts):
            raise ImoodError(f"the model has {k} outputs but class_counts has {len(counts)} classes")
        reg = registry()
        fixed_scale = None if isinstance(ada_scale, str) else ada_scale  # "auto": fitted below
        ds: dict[str, Score] = {}
        for spec in wanted:
            name, options = parse_spec(spec)
            d = reg.score(name, ada_scale=fixed_scale if name.startswith("ada_") else None, **options)
            if d.extra_outputs:
                raise ImoodError(f"{name} reads {d.extra_outputs} extra output(s) of a model trained for it; a "
                                 "classifier's logits have none")
            ds[name + "".join(f":{k_}={v}" for k_, v in options.items())] = d
        skipped = drop_unavailable(ds, caps, type(s.module).__name__, skip)
        if not ds:
            raise ImoodError(f"none of the detectors can run on {type(s.module).__name__}: {caps.why(set(ALL_STAGES))}")
        access = ModelAccess(s, rt)
        failed: Failures | None = {} if keep_going else None
        order = list(ds)
        need_fit = {label: d for label, d in ds.items() if d.needs_fit}
        ada = {label: d for label, d in ds.items() if isinstance(d, AdaScore)} if auto else {}
        if (need_fit or ada) and fit_loader is None:
            which = ", ".join(need_fit) or "ada_scale='auto'"
            raise ImoodError(f"{which} must be fitted on the ID training set: pass fit_loader (images, labels)")
        lp = log_prior(counts, logit_adjust).float().to(dev)
        if need_fit:
            assert fit_loader is not None  # refused above
            labels: list[torch.Tensor] = []
            feats = run_batches(s, _batches(fit_loader, dev, labels), rt, True)
            assert feats is not None  # run_batches returns the outputs when no `each` takes them
            if not labels or sum(len(y) for y in labels) != len(feats.logits):
                raise ImoodError("fit_loader must give (images, labels) for every batch")
            y = torch.cat(labels).to(dev)
            if int(y.min()) < 0 or int(y.max()) >= k:
                raise ImoodError(f"fit_loader's labels must be class indices in 0..{k - 1}")
            fit_on(need_fit, access.view(feats, {"classifier"}, labels=y), "fit_loader", failed)
            drop_failed(ds, failed)
        if ada:
            assert fit_loader is not None  # refused above
            labels = []
            ada = {label: d for label, d in ada.items() if label in ds}
            if ada:
                auto_scales(ada, s, _batches(fit_loader, dev, labels), labels, k, rt, lp, failed=failed)
                drop_failed(ds, failed)

        def score_set(items: Iterable, labels: list[torch.Tensor] | None = None
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            scorer = BatchScorer(ds, access, lp, failed)
            run_batches(s, _batches(items, dev, labels), rt, scorer.keep_features, None, each=scorer,
                        feature_map=scorer.feature_map)
            if not scorer.all_finite:
                raise ImoodError("the model's outputs are NaN or infinite")
            drop_failed(ds, failed)  # a detector that failed on this set is not scored on the next ones
            return scorer.result()

        id_labels_parts: list[torch.Tensor] = []
        id_scores, id_preds = score_set(itertools.chain([first], it), id_labels_parts)
        ood_scores: dict[str, dict[str, torch.Tensor]] = {label: {} for label in ds}
        ood_preds = {}
        for name, loader in ood_loaders.items():
            sc, pr = score_set(loader)
            if len(pr) == 0:
                raise ImoodError(f"OOD loader {name!r} is empty")
            for label in ds:
                ood_scores[label][name] = sc[label]
            ood_preds[name] = pr
        id_scores = {label: id_scores[label] for label in ds}  # without those that failed on an OOD set
        ood_scores = {label: ood_scores[label] for label in ds}
        check_all_finite(id_scores, ood_scores, "the ID set", failed)
        drop_failed(ds, failed)
    id_labels = torch.cat(id_labels_parts) if id_labels_parts else None
    if id_labels is not None and len(id_labels) != len(id_preds):
        id_labels = None  # some batches came without labels: no accuracy rather than a wrong one
    evaluation = {label: evaluate(id_scores[label], ood_scores[label], id_labels=id_labels,
                                  id_preds=id_preds if id_labels is not None else None,
                                  class_counts=counts if id_labels is not None else None,
                                  ood_preds_by_set=ood_preds if id_labels is not None else None)
                  for label in ds}
    used_options = {label: d.options() for label, d in ds.items()}
    why_failed = {label: failed[label].reason for label in order if label in failed} if failed else {}
    return ModelScores(id_scores, ood_scores, id_labels, id_preds, ood_preds, evaluation, counts, caps, skipped,
                       notes, used_options, why_failed)
