"""One pass of a model over a set of images: test-time batches, the stages each detector needs, and the
parts of the model a view hands to detectors (head re-runs, input gradients), under the runtime's autocast."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import torch

from imood_cli.core.contract import ModelOutputs, ModelView
from imood_cli.data.base import ImageSet
from imood_cli.data.pipeline.augment import AugmentSpec, to_float
from imood_cli.engine.runtime import Runtime
from imood_cli.models.preprocess import Preprocess
from imood_cli.models.staged import StagedClassifier


class ScoreObserver:
    def start_set(self, name: str, size: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def end_set(self, name: str) -> None: ...


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
