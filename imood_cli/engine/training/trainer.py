"""The ImOOD training loop (docs/concepts.md, "ImOOD training"): one forward pass over [2N ID views ; M auxiliary OOD],
L = L_in + Lambda · L_ood + Lambda2 · L_aux, checkpoints every epoch, exact resume, torchrun DDP.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from imood_cli.core.contract import AuxBatch, LossContext, ModelView
from imood_cli.core.interrupts import Interrupts
from imood_cli.core.prior import log_prior
from imood_cli.data.base import Benchmark, ImageSet
from imood_cli.data.pipeline.augment import apply as augment_apply
from imood_cli.data.pipeline.augment import draw
from imood_cli.data.pipeline.batches import Batch, InMemoryEpoch, epoch_seed
from imood_cli.engine import runtime
from imood_cli.engine.runs.checkpoint import CheckpointDir, non_finite_weight, save_tensors
from imood_cli.engine.runs.layout import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DERIVED_DIRS,
    LOCK_FILE,
    METRICS_FILE,
    MODEL_FILE,
    is_run_folder,
)
from imood_cli.engine.runs.owned import own_files
from imood_cli.engine.runtime import Runtime
from imood_cli.engine.training.config import TrainConfig, spec_name
from imood_cli.engine.training.guard import TrainingGuard
from imood_cli.engine.training.setup import (
    architecture,
    augment_spec,
    build_aux_loss,
    build_method,
    conv_output_bytes,
    freeze_for,
    init_weights,
    keep_aux_linear_increasing,
    load_test_sets,
    load_training_data,
    lr_factor,
    make_optimizer,
    model_metadata,
    orient_aux_linear,
    used_heads,
)
from imood_cli.engine.training.validation import (
    Board,
    EvalSet,
    HeldOut,
    Validator,
    hold_out,
    summary_writer_class,
)
from imood_cli.errors import ImoodError, TrainingDiverged
from imood_cli.fs.atomic import atomic_write_text
from imood_cli.losses.la_ce import logit_adjusted_ce
from imood_cli.models.imood_model import ImOODModel, canonical_model_name, forward_macs
from imood_cli.registry import aux_label, parse_spec, registry

LOSS_PARTS = ("loss", "l_in", "l_ood", "l_aux", "train_acc")  # train_acc: top-1 of the class logits, ID rows


class Interrupted(ImoodError):
    exit_code = 130


class TrainObserver:
    """Progress hooks; the CLI draws a progress bar, a notebook may print or ignore them."""

    def start(self, cfg: TrainConfig, bench: Benchmark, start_epoch: int, steps_per_epoch: int) -> None: ...

    def epoch_start(self, epoch: int, steps: int, start_step: int) -> None: ...

    def step(self, epoch: int, step: int, images: int) -> None: ...

    def log(self, record: dict[str, Any]) -> None: ...

    def evaluated(self, record: dict[str, Any]) -> None:
        """A validation record of --eval-every (kind "val" or "test"), before the epoch_end of its epoch."""

    def epoch_end(self, record: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    last: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    evaluated: list[dict[str, Any]] = field(default_factory=list)  # the last --eval-every records


def _scalar(value: Any, what: str) -> torch.Tensor:
    """A loss from a detector or aux loss must be one number (checked on the host: no device sync)."""
    if not isinstance(value, torch.Tensor) or value.ndim != 0 or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ImoodError(f"{what} returned {shape}, not a scalar float tensor")
    return value.float()


class Trainer:
    def __init__(self, cfg: TrainConfig, rt: Runtime, observer: TrainObserver | None = None,
                 bench: Benchmark | None = None) -> None:
        self.cfg, self.rt = cfg, rt
        self.obs = observer or TrainObserver()
        if cfg.tensorboard:
            summary_writer_class()  # a missing package is an error before any work
        if cfg.eval_on != "val" and not cfg.eval_every:
            raise ImoodError(f"--eval-on {cfg.eval_on} says what --eval-every scores: give --eval-every N too")
        self._made = _outermost_missing(cfg.run_dir)  # the folder this command makes for a new run (None: it exists)
        self.score, self.objective = build_method(cfg)
        self.aux, self.start_warnings = build_aux_loss(cfg)
        cfg.aux_loss_options = self.aux.options()  # what the loss received: config.json records it
        self.aux_label = aux_label(registry().get("aux_loss", spec_name(cfg.aux_ood_loss)))
        for warning in self.start_warnings:
            self.obs.message(f"warning: {warning}")
        needs_aux = cfg.Lambda > 0 and self.objective is not None
        given = bench
        self.bench = bench or load_training_data(cfg, needs_aux)
        self.held_out: HeldOut | None = None
        if cfg.holds_out:  # the validation split leaves the training images (and the auxiliary ones)
            self.bench, self.held_out = hold_out(self.bench, cfg.val_fraction, cfg.seed)
            if not len(self.held_out.id):
                raise ImoodError(f"--val-fraction {cfg.val_fraction:g} holds out no ID image: {cfg.dataset}'s "
                                 "classes have one training image each")
        b = self.bench
        if needs_aux and (b.aux_ood is None or len(b.aux_ood) == 0):
            raise ImoodError(f"{cfg.dataset} has no auxiliary OOD training data, which {cfg.ood_metric} needs: "
                             "pass --aux-ood-dir DIR, or --Lambda 0 for no OOD loss")
        if needs_aux and cfg.ood_batch_size == 0:
            raise ImoodError(f"--ood-batch-size 0 leaves {cfg.ood_metric}'s OOD loss without auxiliary images: "
                             "give it a size, or --Lambda 0")
        self.spec = augment_spec(cfg, b)
        cfg.model = canonical_model_name(cfg.model)
        extra = max(self.score.extra_outputs, self.objective.extra_outputs if self.objective is not None else 0)
        self.arch = architecture(cfg, b, extra)
        self.class_counts = list(b.class_counts)
        self.log_prior = log_prior(self.class_counts, cfg.logit_adjust).float().to(rt.device)
        self.counts_t = torch.tensor(self.class_counts, device=rt.device)
        self.validator = self._validator(given) if cfg.eval_every else None
        self.board: Board | None = None

        torch.manual_seed(cfg.seed)
        self.core = ImOODModel(self.arch, pretrained=cfg.pretrained)
        if cfg.init_from:
            init_weights(self.core, Path(cfg.init_from), cfg.ood_metric)
        if not cfg.init_from or float(self.core.aux_linear.weight.detach()) <= 0:
            orient_aux_linear(self.core.aux_linear)
        own = self.objective.training_parameters(self.core.feature_dim, b.num_classes) if self.objective else {}
        if own:  # a submodule, so DDP reduces their gradients and checkpoints hold them (the model file does not)
            self.core.ood_params = torch.nn.ParameterDict({k: torch.nn.Parameter(v.float()) for k, v in own.items()})
        if rt.device.type == "cpu":  # fwd + bwd ≈ 3 forwards, over 2 views per ID image and the OOD rows
            ood_bs = cfg.batch_size if cfg.ood_batch_size is None else cfg.ood_batch_size
            macs = 3 * forward_macs(self.core, b.channels, b.image_size) * (2 * cfg.batch_size + ood_bs)
            runtime.set_threads(runtime.choose_threads(cfg.threads, macs, rt.device))
        self.core = self.core.to(rt.device)
        if rt.channels_last:
            self.core = self.core.to(memory_format=torch.channels_last)
        self.heads = used_heads(self.objective, self.aux, cfg)
        for head, used in self.heads.items():
            getattr(self.core, head).requires_grad_(used)
        freeze_for(self.core, cfg.train_only)
        params = [p for p in self.core.parameters() if p.requires_grad]
        self.opt = make_optimizer(cfg, params, rt.device)
        has_aux = needs_aux and b.aux_ood is not None and len(b.aux_ood) > 0
        self.in_memory = b.train.in_memory
        if self.in_memory:  # uint8 tensors held on the training device
            self.train_set = ImageSet(b.train.name, b.train.labels.to(rt.device), b.train.images.to(rt.device))
            self.aux_set = (ImageSet(b.aux_ood.name, b.aux_ood.labels, b.aux_ood.images.to(rt.device))
                            if has_aux else None)
        else:  # image files decoded by DataLoader workers (ImageNet-LT)
            self.train_set, self.aux_set = b.train, (b.aux_ood if has_aux else None)
        self._check_memory()
        first = self._epoch(0)
        self.steps_per_epoch = len(first)
        _close(first)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(cfg, self.steps_per_epoch))
        self.model = self.core
        if rt.distributed:
            ids = [rt.device.index] if rt.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.core, device_ids=ids)
        self._apply = augment_apply
        if cfg.compile:
            self.model = torch.compile(self.model)
            self._apply = torch.compile(augment_apply)  # fuses the elementwise chain into a few kernels
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0
        self.global_step = 0
        self.ckpt = CheckpointDir(cfg.run_dir / CHECKPOINT_DIR)
        self.saved: Path | None = None  # the newest checkpoint this process wrote
        self.resumed_from: Path | None = None
        self.pending_config = False  # config.json to rewrite at the first save (resume with changed options)

    def _validator(self, given: Benchmark | None) -> Validator:
        """What --eval-every scores: the held-out split, the benchmark's test sets, or both."""
        cfg, b = self.cfg, self.bench
        sets = []
        if self.held_out is not None:
            sets.append(EvalSet("val", self.held_out.id, self.held_out.sets()))
        if "test" in cfg.eval_on:
            tests = given if given is not None and given.ood_tests else load_test_sets(cfg)
            if not tests.ood_tests:
                raise ImoodError(f"--eval-on {cfg.eval_on}: {cfg.dataset} has no OOD test set on disk")
            sets.append(EvalSet("test", tests.test, dict(tests.ood_tests)))
        name = parse_spec(cfg.ood_metric)[0]
        label = registry().get("method", name).derived_from or name  # an ada_ run is scored with its base score
        return Validator(sets, self.score, label, self.class_counts, self.log_prior, self.rt, cfg.test_batch_size,
                         b.augment, cfg.workers, fit_set=b.train)

    def validates_after(self, epoch: int) -> bool:
        every = self.cfg.eval_every
        return bool(every) and (epoch % every == 0 or epoch == self.cfg.epochs)

    def validate(self) -> list[dict[str, Any]]:
        """Score the validation sets with the weights of now (rank 0; the others wait) and log the records."""
        records: list[dict[str, Any]] = []
        if self.rt.is_main and self.validator is not None:
            records = self.validator.run(self.core, self.epoch, self.global_step)
            with open(self.cfg.run_dir / METRICS_FILE, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records))
            for r in records:
                if self.board is not None:
                    self.board.write(r)
        self.rt.barrier()
        return records

    # ---- data
    def _check_memory(self) -> None:
        """The effective batch sizes of an epoch (as EpochOrder computes them) against the memory available."""
        cfg, rt, b = self.cfg, self.rt, self.bench
        n = len(self.train_set)
        bs = min(cfg.batch_size, max(n // rt.world_size, 1)) if n < cfg.batch_size * rt.world_size else cfg.batch_size
        ood = (cfg.batch_size if cfg.ood_batch_size is None else cfg.ood_batch_size) if self.aux_set is not None else 0
        steps = max(1, n // (bs * rt.world_size))
        per_row = conv_output_bytes(self.core, b.channels, b.image_size, 2 if rt.amp else 4)
        runtime.check_step_memory(2 * bs, ood, b.channels * b.image_size ** 2, steps * rt.world_size, rt.device,
                                  activation_bytes=per_row)

    def _epoch(self, epoch: int):
        cfg, rt = self.cfg, self.rt
        ood_bs = cfg.batch_size if cfg.ood_batch_size is None else cfg.ood_batch_size
        if self.in_memory:
            return InMemoryEpoch(self.train_set, self.aux_set, cfg.batch_size, ood_bs, cfg.seed, epoch,
                                 rt.rank, rt.world_size)
        from imood_cli.data.pipeline.files import FileEpoch

        return FileEpoch(self.train_set, self.aux_set, cfg.batch_size, ood_bs, cfg.seed, epoch, rt.rank,
                         rt.world_size, workers=cfg.workers, pin_memory=rt.device.type == "cuda")

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator(device=self.rt.device).manual_seed(epoch_seed(self.cfg.seed, epoch, 2 + self.rt.rank))

    # ---- one step
    def loss_parts(self, view1, view2, labels, ood, gen) -> torch.Tensor:
        """Augment on the device, then [total, L_in, L_ood, L_aux, training-batch ID accuracy] as one tensor."""
        # One call for all rows: the augmentation's cost is its op count, not the batch size.
        images = torch.cat([view1, view2, ood])
        x = self._apply(images, self.spec, draw(self.spec, images.shape[0], images.device, gen))
        return self.loss_on(x, labels, ood.shape[0])

    def loss_on(self, x: torch.Tensor, labels: torch.Tensor, m: int) -> torch.Tensor:
        """The loss of an already augmented batch [view 1 ; view 2 ; OOD] (N, N and m rows)."""
        cfg = self.cfg
        n = labels.shape[0]
        if self.rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        needs = self.score.needs | (self.objective.needs if self.objective is not None else frozenset())
        with self.rt.autocast():
            out = self.model(x, projections=self.heads["projection"], lambdas=self.heads["lambda_head"],
                             feature_map="feature_map" in needs)
        out = out.float()
        labels2 = torch.cat([labels, labels])
        is_id = torch.arange(2 * n + m, device=x.device) < 2 * n
        l_in = logit_adjusted_ce(out.logits[: 2 * n], labels2, self.log_prior)
        zero = l_in.new_zeros(())
        l_ood = l_aux = zero
        ctx = LossContext(is_id=is_id, labels=labels2, log_prior=self.log_prior, aux_linear=self.core.aux_linear,
                          num_id=2 * n, class_counts=self.counts_t, generator=getattr(self, "_gen", None),
                          parameters=dict(self.core.ood_params) if hasattr(self.core, "ood_params") else None,
                          average=self._average if self.rt.distributed else None)
        view = self._view(out, x, needs)
        self.score.train_update(view, ctx)
        if self.objective is not None:
            self.objective.train_update(view, ctx)
            if cfg.Lambda > 0:  # the objective trains the g its method's score reads
                g = self.score.idness(view)
                l_ood = _scalar(self.objective.loss(view, ctx, g), f"the training loss of {cfg.ood_metric}")
        if self.heads["projection"]:
            rows = torch.arange(2 * n + m, device=x.device)
            pair = torch.where(rows < n, rows + n, torch.where(rows < 2 * n, rows - n, -1))
            full_labels = torch.cat([labels2, labels2.new_full((m,), -1)])
            l_aux = _scalar(self.aux(AuxBatch(out.projections, full_labels, is_id, pair, self.counts_t)),
                            f"the {self.aux_label}")
        loss = l_in + cfg.Lambda * l_ood + cfg.Lambda2 * l_aux
        with torch.no_grad():  # stays on the device: summed with the losses, read once per log record
            acc = (out.logits[: 2 * n].argmax(dim=1) == labels2).float().mean()
        return torch.stack([loss, l_in, l_ood, l_aux, acc])

    def _average(self, t: torch.Tensor) -> torch.Tensor:
        """LossContext.average: the mean of a tensor over the training processes."""
        t = t.clone()
        dist.all_reduce(t)
        return t / self.rt.world_size

    def _view(self, out, x: torch.Tensor, needs) -> ModelView:
        """The training view: outputs, and the model parts the score and objective declared (gradients flow)."""
        more: dict[str, Any] = {}
        if "classifier" in needs:
            w, b = self.core.class_weights()
            more.update(weight=w, bias=b, logits_from_features=lambda f: self.core.logits_from_features(f).float())
        if "feature_map" in needs:
            more["logits_from_feature_map"] = lambda m: self.core.logits_from_feature_map(m).float()
        if "input_grad" in needs:
            def forward(images):
                with self.rt.autocast():
                    return self.model(images).logits.float()

            more.update(images=x, logits_from_images=forward)
        return ModelView.of(out, **more)

    def optimize(self, parts: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        parts[0].backward()
        self.opt.step()
        if self.heads["aux_linear"]:
            keep_aux_linear_increasing(self.core.aux_linear)
        self.sched.step()

    def train_step(self, b: Batch, gen: torch.Generator) -> torch.Tensor:
        if not self.in_memory:  # file batches arrive on the host (pinned on CUDA)
            dev = self.rt.device
            b = Batch(*(t.to(dev, non_blocking=True) for t in (b.view1, b.view2, b.labels, b.ood)))
        parts = self.loss_parts(b.view1, b.view2, b.labels, b.ood, gen)
        self.optimize(parts)
        return parts.detach()

    # ---- state
    def state(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.rt.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.rt.device)
        return {
            "model": self.core.state_dict(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "generator": self._gen.get_state() if self.step_in_epoch else None,
            "running": self.running if self.step_in_epoch else None,
            "rng": rng, "metric": self.objective.state() if self.objective is not None else {},
            **({"validation": self.held_out.digest} if self.held_out is not None else {}),
        }

    def load_state(self, state: dict[str, Any], path: Path | None = None) -> None:
        where = path or "the checkpoint"
        counters = [state.get(k) for k in ("epoch", "step_in_epoch", "global_step")]
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counters):
            raise ImoodError(f"{where} is inconsistent: its epoch and step counters are not whole numbers")
        if counters[0] > self.cfg.epochs or counters[1] >= max(self.steps_per_epoch, 1) and counters[1]:
            raise ImoodError(f"{where} is at epoch {counters[0]}, step {counters[1]}: beyond this run's "
                             f"{self.cfg.epochs} epochs of {self.steps_per_epoch} steps")
        try:
            self.core.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            rng = state["rng"]["torch"]
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ImoodError(f"{where} does not fit this run ({type(exc).__name__}: {first})") from None
        split = state.get("validation")
        if self.held_out is not None and split is not None and split != self.held_out.digest:
            raise ImoodError(f"{where} was trained with another validation split held out than this run holds out "
                             "now (its training data changed)")
        self.epoch, self.step_in_epoch, self.global_step = counters
        self._resume_generator = state.get("generator")
        running = state.get("running")
        self._resume_running = ({k: _widen(v.to(self.rt.device)) if isinstance(v, torch.Tensor) else v
                                 for k, v in running.items()} if running else None)
        torch.set_rng_state(rng)
        if "cuda" in state["rng"] and self.rt.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.rt.device)
        if state.get("metric") and self.objective is not None:
            self.objective.load_state({k: v.to(self.rt.device) for k, v in state["metric"].items()})

    def _kept(self) -> str:
        """Where the run stands after a failure, for its message: the checkpoint a resume would continue from."""
        if self.saved is not None:
            return f"the last good checkpoint is {self.saved}; the run folder is unchanged since"
        if self.resumed_from is not None:
            return (f"no checkpoint was written since the one this run resumed from, {self.resumed_from}, whose "
                    "training diverges: resuming repeats it; start a new run with other settings")
        return "no checkpoint was written yet"

    def _check_weights(self) -> None:
        """Weights that turned NaN at the last step of an epoch are not saved as a checkpoint to resume from."""
        bad = non_finite_weight(self.core.state_dict())
        first = self._first_non_finite(collective=False) if bad and hasattr(self, "_bad_seen") else None
        if first is not None:  # a loss went non-finite since the last record (an interrupt saves mid-epoch)
            raise TrainingDiverged(self._divergence(None, first))
        if bad:
            when = (f"epoch {self.epoch + 1}, step {self.global_step}" if self.step_in_epoch
                    else f"the end of epoch {self.epoch} (step {self.global_step})")
            raise TrainingDiverged(f"the weights became non-finite ({bad}) at {when}; {self._kept()}")

    def save_checkpoint(self) -> Path | None:
        self._check_weights()
        if not self.rt.is_main:
            return None
        self._commit_config()
        meta = {"format": "imood-checkpoint", "config": self.cfg.to_dict(), "architecture": self.arch.to_dict(),
                "class_counts": self.class_counts}
        self.saved = self.ckpt.save(self.epoch, self.state(), meta, step=self.step_in_epoch)
        return self.saved

    def _commit_config(self) -> None:
        """config.json takes options changed on --resume (more epochs, say) only once the resumed training has
        got as far as its first checkpoint: a resume that fails leaves the run as it was."""
        if self.pending_config:
            atomic_write_text(self.cfg.run_dir / CONFIG_FILE, self.cfg.to_json(), step="config")
            self.pending_config = False

    def save_model(self) -> Path:
        path = self.cfg.run_dir / MODEL_FILE
        self._check_weights()
        if self.rt.is_main:
            self._commit_config()
            weights = {k: v for k, v in self.core.state_dict().items() if not k.startswith("ood_params.")}
            save_tensors(path, weights, model_metadata(self.cfg, self.arch, self.class_counts, self.epoch),
                         step="model")
        return path

    def _log_record(self, sums: torch.Tensor, count: torch.Tensor, images: int, seconds: float, kind: str) -> dict:
        if self.rt.distributed:
            packed = torch.cat([sums, count.view(1).float()])
            dist.all_reduce(packed)
            sums, count = packed[:-1], packed[-1]
        values = (sums / count.clamp(min=1)).tolist()
        record = {"kind": kind, "epoch": self.epoch + 1, "step": self.global_step,
                  **{k: round(v, 6) for k, v in zip(LOSS_PARTS, values)},
                  "lr": self.opt.param_groups[0]["lr"],
                  "images_per_s": round(images * self.rt.world_size / max(seconds, 1e-9), 1)}
        if not all(math.isfinite(v) for v in values):
            first = self._first_non_finite(collective=True)
            raise TrainingDiverged(self._divergence(values, first or ({}, self.global_step)))
        if self.rt.is_main:
            with open(self.cfg.run_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.board is not None:
                self.board.write(record)
        return record

    # ---- non-finite losses: which term went first
    def _watch_reset(self) -> None:
        dev = self.rt.device
        self._first_bad = torch.zeros(len(LOSS_PARTS), device=dev)
        self._bad_seen = torch.zeros((), dtype=torch.bool, device=dev)
        self._good_steps = torch.zeros((), dtype=torch.long, device=dev)
        self._watch_from = self.global_step

    def _watch(self, parts: torch.Tensor) -> None:
        """Keep the loss parts of the first step at which one of them was not finite (on the device: no sync):
        by the next log record every part is NaN, the weights too, and the record no longer says which loss
        it was."""
        self._first_bad = torch.where(self._bad_seen, self._first_bad, parts)
        self._bad_seen = self._bad_seen | ~torch.isfinite(parts).all()
        self._good_steps += (~self._bad_seen).long()

    def _first_non_finite(self, collective: bool) -> tuple[dict[str, str], int] | None:
        """({part: "nan" | "inf" | "-inf"}, global step) of the first step with a non-finite part, over every
        process when `collective` (all of them are here together), or None when there was none."""
        first = self._first_bad
        codes = torch.where(torch.isnan(first), 1, torch.where(first == math.inf, 2,
                                                               torch.where(first == -math.inf, 3, 0)))
        codes = codes * self._bad_seen.long()
        good = self._good_steps.clone()
        if collective and self.rt.distributed:
            earliest = good.clone()
            dist.all_reduce(earliest, op=dist.ReduceOp.MIN)
            codes = codes * (good == earliest).long()
            dist.all_reduce(codes, op=dist.ReduceOp.MAX)
            good = earliest
        words = {1: "nan", 2: "inf", 3: "-inf"}
        found = {k: words[c] for k, c in zip(LOSS_PARTS, codes.tolist()) if c}
        return (found, self._watch_from + int(good) + 1) if found else None

    def _divergence(self, values: list[float] | None, first: tuple[dict[str, str], int], then: str = "") -> str:
        """The message of a loss that is not finite. When the OOD loss or the aux loss went non-finite first (the
        classification loss still finite at that step) it names that loss; otherwise it gives the parts of the
        record (`values`), or those of the first non-finite step. `then`: what failed afterwards, if anything."""
        kept = f"{then}; {self._kept()}"
        bad, step = first
        terms = {"l_ood": f"the training loss of {self.cfg.ood_metric}", "l_aux": f"the {self.aux_label}"}
        culprits = [k for k in terms if k in bad]
        if culprits and "l_in" not in bad:
            said = " and ".join(f"{terms[k]} returned {bad[k]}" for k in culprits)
            opts = self.aux.options() if "l_aux" in culprits else {}
            shown = f" (its options: {', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else ""
            return f"{said} at epoch {self.epoch + 1}, step {step}{shown}{kept}"
        if values is None:
            parts = ", ".join(f"{k}={v}" for k, v in bad.items())
            return f"loss is not finite at epoch {self.epoch + 1}, step {step} ({parts}){kept}"
        parts = ", ".join(f"{k}={v:.4g}" for k, v in zip(LOSS_PARTS, values))
        return f"loss is not finite at epoch {self.epoch + 1}, step {self.global_step} ({parts}){kept}"

    # ---- a start that fails leaves nothing half-made
    def _undo_start(self, exc: BaseException) -> None:
        """After a failure before this command's first checkpoint: a run folder this command made goes (imood's
        own files in it, then the folders once empty); a run that existed keeps its metrics.jsonl as it was."""
        if not self.rt.is_main or self.saved is not None:
            return
        run = self.cfg.run_dir
        if self._made is not None:
            if run.is_dir() and is_run_folder(run) and _remove_new_run(run, self._made) and isinstance(exc, ImoodError):
                exc.args = (f"{exc}; {run} is removed (this command had made it)",)
            return
        metrics = run / METRICS_FILE
        size = self._metrics_size
        try:
            if size is None:
                metrics.unlink(missing_ok=True)
            elif metrics.is_file() and metrics.stat().st_size > size:
                os.truncate(metrics, size)
        except OSError:
            pass

    # ---- the loop
    def _fresh_running(self) -> dict[str, Any]:
        zeros = torch.zeros(len(LOSS_PARTS), device=self.rt.device)
        one = torch.zeros((), device=self.rt.device)
        return {"sums": zeros, "count": one, "images": 0, "ep_sums": zeros.clone(), "ep_count": one.clone(),
                "ep_images": 0}

    def run(self) -> TrainResult:
        metrics = self.cfg.run_dir / METRICS_FILE
        self._metrics_size = metrics.stat().st_size if metrics.is_file() else None
        try:
            return self._run()
        except Exception as exc:
            self._undo_start(exc)
            raise

    def _run(self) -> TrainResult:
        cfg, rt = self.cfg, self.rt
        self.obs.start(cfg, self.bench, self.epoch, self.steps_per_epoch)
        guard = TrainingGuard.for_run(cfg, self.objective, self.class_counts, cfg.epochs * self.steps_per_epoch)
        if self.held_out is not None and self.epoch == 0 and not self.step_in_epoch:
            ood = self.held_out.ood
            self.obs.message(f"validation: {len(self.held_out.id):,} ID images"
                             + (f" and {len(ood):,} auxiliary OOD images" if ood is not None and len(ood) else "")
                             + f" held out of training (--val-fraction {cfg.val_fraction:g})")
        self.core.train()
        if cfg.tensorboard and rt.is_main:
            self.board = Board(cfg.tensorboard)
        self._last: dict[str, Any] = {}
        self._watch_reset()
        try:
            evaluated = self._loop(guard)
        finally:
            if self.board is not None:
                self.board.close()
                self.board = None
        rt.barrier()
        return TrainResult(cfg.run_dir, self.epoch, self._last, warnings=[*self.start_warnings, *guard.warnings],
                           evaluated=evaluated)

    def _loop(self, guard: TrainingGuard) -> list[dict[str, Any]]:
        cfg, rt = self.cfg, self.rt
        evaluated: list[dict[str, Any]] = []
        with Interrupts(graceful=True) as stop:
            while self.epoch < cfg.epochs:
                batches = self._epoch(self.epoch)
                self._gen = self._generator(self.epoch)
                start_step = self.step_in_epoch
                if start_step and getattr(self, "_resume_generator", None) is not None:
                    self._gen.set_state(self._resume_generator.to(self._gen.get_state().device))
                self._resume_generator = None
                # Loss sums since the last record and since the epoch began: part of a mid-epoch
                # checkpoint, so the records after a resume equal those of an uninterrupted run.
                run = getattr(self, "_resume_running", None) if start_step else None
                self.running = run or self._fresh_running()
                self._resume_running = None
                self.obs.epoch_start(self.epoch + 1, len(batches), start_step)
                r = self.running
                t0 = ep_t0 = time.perf_counter()
                for step in range(start_step, len(batches)):
                    b = batches.batch(step)
                    try:
                        d = self.train_step(b, self._gen)
                    except Exception as exc:  # a loss that went NaN may make a later step fail: name that loss
                        first = None if isinstance(exc, ImoodError) else self._first_non_finite(collective=False)
                        if first is None:
                            raise
                        line = (str(exc).splitlines() or [""])[0]
                        then = f", then step {self.global_step + 1} failed ({type(exc).__name__}: {line})"
                        raise TrainingDiverged(self._divergence(None, first, then)) from exc
                    self._watch(d)
                    self.global_step += 1
                    self.step_in_epoch = step + 1
                    r["sums"] += d
                    r["ep_sums"] += d
                    r["count"] += 1
                    r["ep_count"] += 1
                    n_img = 2 * b.labels.shape[0] + b.ood.shape[0]
                    r["images"] += n_img
                    r["ep_images"] += n_img
                    self.obs.step(self.epoch + 1, step + 1, n_img * rt.world_size)
                    if self.global_step % cfg.log_every == 0:
                        rec = self._log_record(r["sums"], r["count"], r["images"], time.perf_counter() - t0, "log")
                        self.obs.log(rec)
                        warning = guard.observe(rec)
                        if warning and rt.is_main:
                            self.obs.message(f"warning: {warning}")
                        r["sums"].zero_(), r["count"].zero_()
                        r["images"], t0 = 0, time.perf_counter()
                    if stop.stopping and self.step_in_epoch < len(batches):
                        _close(batches)
                        path = self.save_checkpoint()
                        raise Interrupted(f"interrupted at epoch {self.epoch + 1}, step {self.step_in_epoch}; "
                                          f"saved {path}; continue with: imood train --resume {cfg.run_dir}")
                _close(batches)
                self._last = self._log_record(r["ep_sums"], r["ep_count"], r["ep_images"],
                                              time.perf_counter() - ep_t0, "epoch")
                self.epoch += 1
                self.step_in_epoch = 0
                if self.validates_after(self.epoch):  # before the checkpoint: a resume never skips a pass
                    evaluated = self.validate()
                    hook = getattr(self.obs, "evaluated", None)  # an observer written before 0.3 has none
                    for rec in evaluated if hook is not None else ():
                        hook(rec)
                self.save_checkpoint()
                self.obs.epoch_end(self._last)
                if stop.stopping and self.epoch < cfg.epochs:
                    raise Interrupted(f"interrupted after epoch {self.epoch}; continue with: "
                                      f"imood train --resume {cfg.run_dir}")
            self.save_model()  # still under the stop flag: a Ctrl-C now waits for the model file
        return evaluated


def _widen(sums: torch.Tensor) -> torch.Tensor:
    """Running loss sums of a checkpoint written before the record had all of LOSS_PARTS (0.1 kept 4)."""
    if sums.ndim == 1 and 0 < sums.numel() < len(LOSS_PARTS):
        return torch.cat([sums, sums.new_zeros(len(LOSS_PARTS) - sums.numel())])
    return sums


def _outermost_missing(folder: Path) -> Path | None:
    """The outermost of `folder` and its parents that does not exist (None: `folder` exists)."""
    path, top = Path(os.path.abspath(folder)), None
    while not os.path.lexists(path) and path != path.parent:
        top, path = path, path.parent
    return top


def _remove_new_run(run: Path, made: Path) -> bool:
    """Remove imood's files from a run folder this command made, then the folders up to `made` once empty
    (anything else in them stays, and so do they). Whether the run folder is gone."""
    for f in own_files(run):
        f.unlink(missing_ok=True)
    for name in (CONFIG_FILE, LOCK_FILE):
        (run / name).unlink(missing_ok=True)
    for sub in (CHECKPOINT_DIR, *DERIVED_DIRS):
        try:
            (run / sub).rmdir()
        except OSError:
            pass
    path, made = Path(os.path.abspath(run)), Path(os.path.abspath(made))
    if path != made and made not in path.parents:
        return False
    while True:
        try:
            path.rmdir()
        except OSError:
            return path != Path(os.path.abspath(run))
        if path == made:
            return True
        path = path.parent


def _close(batches) -> None:
    close = getattr(batches, "close", None)  # file epochs own DataLoader workers
    if close is not None:
        close()


