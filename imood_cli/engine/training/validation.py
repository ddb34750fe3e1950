"""Validation while training (`--eval-every N`): a split held out of the training images, scored every N epochs
with the score of the run's method through the scoring engine's own pass (`scoring.score.BatchScorer` over
`scoring.infer.infer`), its metrics those of `imood eval` (`metrics.ranking`, `metrics.groups`); and the
optional TensorBoard writer of the loss records and these metrics.

The held-out split is drawn from the seed alone with a generator of its own: the same run (and its resume)
holds out the same images, and no random stream of the training is touched. A validation pass restores the
global RNG state it found and leaves the model's mode as it was, so a run with it reaches the weights it
reaches when it is interrupted and resumed.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from imood_cli.core.contract import ModelView
from imood_cli.core.method import Score
from imood_cli.data.base import Benchmark, ImageSet
from imood_cli.data.pipeline.augment import AugmentSpec
from imood_cli.data.pipeline.batches import epoch_seed
from imood_cli.engine.metrics.groups import id_accuracy
from imood_cli.engine.metrics.ranking import detection_metrics
from imood_cli.engine.runtime import Runtime
from imood_cli.engine.scoring.fits import fit_on
from imood_cli.engine.scoring.infer import ModelAccess, infer
from imood_cli.engine.scoring.score import BatchScorer
from imood_cli.errors import ImoodError
from imood_cli.models.staged import StagedClassifier

SPLIT_SALT = 1_009  # the held-out split's stream (the samplers use salts 0, 1 and 2 + rank)
VAL_SET, VAL_OOD_SET = "val", "val-aux"
# metrics.jsonl keys of a validation record, besides kind, epoch, step and the per-set "ood" table
RECORD_KEYS = ("acc", "acc_many", "acc_medium", "acc_few", "auroc", "fpr95")


@dataclass
class HeldOut:
    """The validation split: ID images (from the training set) and auxiliary OOD images, removed from training."""

    id: ImageSet
    ood: ImageSet | None
    digest: str  # sha256 of the held-out indices: a resume checks it holds out the same images

    def sets(self) -> dict[str, ImageSet]:
        return {VAL_OOD_SET: self.ood} if self.ood is not None and len(self.ood) else {}


def held_out_count(n: int, fraction: float) -> int:
    """Images of a group of n held out: ceil(fraction · n), at least one of two or more, and never all of them."""
    return min(n - 1, math.ceil(fraction * n)) if n >= 2 else 0


def hold_out(bench: Benchmark, fraction: float, seed: int) -> tuple[Benchmark, HeldOut]:
    """The benchmark with the validation split removed from its training images (and auxiliary OOD images), and
    the split. Per class, a random ceil(fraction · n) of its n training images (none of a class of one; every
    class keeps one); of the auxiliary images, the same fraction. The rest keep their order. `bench` is not
    modified."""
    g = torch.Generator().manual_seed(epoch_seed(seed, 0, SPLIT_SALT))
    labels = bench.train.labels.cpu()
    val_parts = []
    for c in range(bench.num_classes):
        members = torch.nonzero(labels == c).flatten()
        k = held_out_count(len(members), fraction)
        if k:
            val_parts.append(members[torch.randperm(len(members), generator=g)[:k]])
    val_idx = torch.sort(torch.cat(val_parts)).values if val_parts else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_idx] = False
    train_idx = torch.nonzero(keep).flatten()
    held = torch.bincount(labels[val_idx], minlength=bench.num_classes).tolist()
    counts = [int(n) - h for n, h in zip(bench.class_counts, held)]
    if any(n < 0 for n in counts):
        raise ImoodError(f"{bench.name}: its class counts do not match its training images; cannot hold out a "
                         "validation split")
    aux, aux_val, aux_val_idx = bench.aux_ood, None, torch.zeros(0, dtype=torch.long)
    if aux is not None and len(aux):
        k = held_out_count(len(aux), fraction)
        perm = torch.randperm(len(aux), generator=g)
        aux_val_idx = torch.sort(perm[:k]).values
        aux_keep = torch.sort(perm[k:]).values
        aux_val = aux.subset(aux_val_idx, name=VAL_OOD_SET)
        aux = aux.subset(aux_keep, name=aux.name)
    digest = hashlib.sha256()
    for part in (val_idx, aux_val_idx, torch.tensor([len(labels), len(bench.aux_ood or ())])):
        digest.update(part.to(torch.int64).numpy().tobytes() + b"|")
    split = HeldOut(bench.train.subset(val_idx, name=VAL_SET), aux_val, digest.hexdigest())
    return replace(bench, train=bench.train.subset(train_idx, name=bench.train.name), class_counts=counts,
                   aux_ood=aux), split


@dataclass
class EvalSet:
    """What one validation pass scores and how its record is labelled: "val" (held out) or "test"."""

    kind: str
    id: ImageSet
    ood: dict[str, ImageSet]


class Validator:
    """Scores the EvalSets with one score of the run's method and turns them into metrics.jsonl records."""

    def __init__(self, sets: list[EvalSet], score: Score, label: str, class_counts: list[int],
                 log_prior: torch.Tensor, rt: Runtime, batch_size: int, spec: AugmentSpec, workers: int = 0,
                 fit_set: ImageSet | None = None) -> None:
        self.sets, self.score, self.label = sets, score, label
        self.class_counts, self.lp, self.rt = class_counts, log_prior, rt
        self.batch_size, self.spec, self.workers = batch_size, spec, workers
        # A score fitted on the training images (Mahalanobis, say) that does not track its fit while training:
        # fitted on the model of each pass, as `imood score` fits it on the trained model.
        self.fit_set = fit_set if score.needs_fit and not score.tracks_in_training else None

    def run(self, model: StagedClassifier, epoch: int, step: int) -> list[dict[str, Any]]:
        """One record per EvalSet. The model's mode and the global RNG state are as they were afterwards."""
        was_training = model.training
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.rt.device) if self.rt.device.type == "cuda" else None
        try:
            model.eval()
            score = self._fitted(model)
            return [self._record(model, score, s, epoch, step) for s in self.sets]
        finally:
            model.train(was_training)
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.rt.device)

    def _fitted(self, model: StagedClassifier) -> Score:
        if self.fit_set is None:
            return self.score
        score = copy.deepcopy(self.score)
        feats = infer(model, self.fit_set, self.rt, self.batch_size, self.spec, True, workers=self.workers)
        view: ModelView = ModelAccess(model, self.rt).view(feats, {"classifier"},
                                                           labels=self.fit_set.labels.to(self.rt.device))
        fit_on({self.label: score}, view, self.fit_set.name)
        return score

    def _scores(self, model: StagedClassifier, score: Score, images: ImageSet) -> tuple[np.ndarray, np.ndarray]:
        scorer = BatchScorer({self.label: score}, ModelAccess(model, self.rt), self.lp)
        infer(model, images, self.rt, self.batch_size, self.spec, scorer.keep_features, workers=self.workers,
              each=scorer, feature_map=scorer.feature_map)
        if not scorer.all_finite:
            raise ImoodError(f"the model's outputs on {images.name} are NaN or infinite")
        scores, preds = scorer.result()
        return scores[self.label].numpy(), preds.numpy()

    def _record(self, model: StagedClassifier, score: Score, s: EvalSet, epoch: int, step: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        id_scores, id_preds = self._scores(model, score, s.id)
        id_labels = s.id.labels.cpu().numpy()
        ood_scores = {}
        for name, images in s.ood.items():
            sc, pr = self._scores(model, score, images)
            labels = images.labels.cpu().numpy()
            is_ood = labels < 0
            if not is_ood.all():  # SCOOD: the images of ID classes in an OOD test set are scored as ID
                id_scores = np.concatenate([id_scores, sc[~is_ood]])
                id_labels = np.concatenate([id_labels, labels[~is_ood]])
                id_preds = np.concatenate([id_preds, pr[~is_ood]])
            if is_ood.any():
                ood_scores[name] = sc[is_ood]
        ood: dict[str, dict[str, float]] = {}
        for name, sc in ood_scores.items():
            m = detection_metrics(id_scores, sc)
            ood[name] = {"auroc": m["auroc"], "fpr95": m["fpr95"]}
        acc = id_accuracy(id_labels, id_preds, self.class_counts)
        record: dict[str, Any] = {
            "kind": s.kind, "epoch": epoch, "step": step, "detector": self.label,
            "acc": acc["acc"], "acc_many": acc["many"], "acc_medium": acc["medium"], "acc_few": acc["few"],
            "auroc": float(np.mean([m["auroc"] for m in ood.values()])) if ood else None,
            "fpr95": float(np.mean([m["fpr95"] for m in ood.values()])) if ood else None,
            "ood": ood, "id_images": int(len(id_labels)),
            "ood_images": int(sum(len(sc) for sc in ood_scores.values())),
        }
        record["seconds"] = round(time.perf_counter() - t0, 3)
        return record


def progress_text(record: dict[str, Any]) -> str:
    """'val: acc 0.912 (many 0.95, medium 0.90, few 0.80), AUROC 0.953, FPR95 0.213' for the progress line."""
    show = lambda v: "n/a" if v is None else f"{v:.3f}"
    groups = ", ".join(f"{g} {show(record.get(f'acc_{g}'))}" for g in ("many", "medium", "few"))
    text = f"{record['kind']}: acc {show(record['acc'])} ({groups})"
    if record.get("auroc") is not None:
        text += f", AUROC {show(record['auroc'])}, FPR95 {show(record['fpr95'])}"
    return text


# ---------------------------------------------------------------- TensorBoard

TENSORBOARD_HINT = "pip install tensorboard (or pip install 'imood[tensorboard]')"


def summary_writer_class() -> Any:
    """torch's SummaryWriter, or an ImoodError saying how to install the tensorboard package it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImoodError(f"--tensorboard needs the tensorboard package, which is not installed: {TENSORBOARD_HINT}"
                         ) from None
    return SummaryWriter


class Board:
    """The TensorBoard events of a run: each metrics.jsonl record as scalars at its step."""

    PARTS = ("loss", "l_in", "l_ood", "l_aux", "train_acc")

    def __init__(self, log_dir: str) -> None:
        self.writer = summary_writer_class()(log_dir=str(log_dir))

    def write(self, record: dict[str, Any]) -> None:
        kind, step = record["kind"], record["step"]
        if kind in ("log", "epoch"):
            prefix = "train" if kind == "log" else "epoch"
            for key in self.PARTS:
                if key in record:
                    self.writer.add_scalar(f"{prefix}/{key}", record[key], step)
            if kind == "log":
                self.writer.add_scalar("train/lr", record["lr"], step)
        else:
            for key in RECORD_KEYS:
                if record.get(key) is not None:
                    self.writer.add_scalar(f"{kind}/{key}", record[key], step)
            for name, m in record.get("ood", {}).items():
                if len(record["ood"]) > 1:
                    for key, value in m.items():
                        self.writer.add_scalar(f"{kind}/{name}/{key}", value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
