"""The ImOOD training loop (SPEC §3): one forward pass over [2N ID views ; M auxiliary OOD],
L = L_in + Lambda · L_ood + Lambda2 · L_aux, checkpoints every epoch, exact resume, torchrun DDP.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from imood_cli import __version__
from imood_cli.core.atomic import atomic_write_text
from imood_cli.core.contract import AuxBatch, LossContext, ModelView
from imood_cli.core.prior import log_prior
from imood_cli.data.augment import AugmentSpec, draw
from imood_cli.data.augment import apply as augment_apply
from imood_cli.data.base import Benchmark, ImageSet
from imood_cli.data.batches import Batch, InMemoryEpoch, epoch_seed
from imood_cli.engine.benchmark import load_benchmark
from imood_cli.engine.checkpoint import CheckpointDir, save_tensors
from imood_cli.engine.config import TrainConfig
from imood_cli.engine.model import Architecture, ImOODModel, canonical_model_name
from imood_cli.engine.runtime import Runtime
from imood_cli.errors import ImoodError, TrainingDiverged
from imood_cli.losses.la_ce import logit_adjusted_ce
from imood_cli.registry import registry

LOSS_PARTS = ("loss", "l_in", "l_ood", "l_aux")


class Interrupted(ImoodError):
    exit_code = 130


class TrainObserver:
    """Progress hooks; the CLI draws a progress bar, a notebook may print or ignore them."""

    def start(self, cfg: TrainConfig, bench: Benchmark, start_epoch: int, steps_per_epoch: int) -> None: ...

    def epoch_start(self, epoch: int, steps: int, start_step: int) -> None: ...

    def step(self, epoch: int, step: int, images: int) -> None: ...

    def log(self, record: dict[str, Any]) -> None: ...

    def epoch_end(self, record: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    last: dict[str, Any] = field(default_factory=dict)


def augment_spec(cfg: TrainConfig, bench: Benchmark) -> AugmentSpec:
    spec = bench.augment
    over = {
        "crop_padding": cfg.crop_padding, "flip": cfg.flip, "jitter_p": cfg.jitter_p, "grayscale_p": cfg.grayscale_p,
        "jitter": tuple(cfg.color_jitter) if cfg.color_jitter is not None else None,
    }
    return AugmentSpec(**{**spec.to_dict(), **{k: v for k, v in over.items() if v is not None}})


def architecture(cfg: TrainConfig, bench: Benchmark, extra_outputs: int) -> Architecture:
    return Architecture(cfg.model, bench.num_classes, extra_outputs, bench.channels, cfg.cifar_stem)


def model_metadata(cfg: TrainConfig, arch: Architecture, class_counts: list[int], epochs_done: int) -> dict[str, Any]:
    return {
        "format": "imood-model", "imood_version": __version__, "architecture": arch.to_dict(),
        "class_counts": class_counts, "metric": cfg.ood_metric, "aux_loss": cfg.aux_ood_loss,
        "dataset": cfg.dataset, "logit_adjust": cfg.logit_adjust, "epochs": epochs_done, "config": cfg.to_dict(),
    }


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if cfg.schedule == "multisteps":
            epoch = step // steps_per_epoch
            return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        return 1.0

    return factor


def _optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **fused)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def used_heads(detector, aux, cfg: TrainConfig) -> dict[str, bool]:
    """Heads that receive gradients; the rest are frozen so DDP needs no unused-parameter search."""
    ood = cfg.Lambda > 0 and detector.has_loss
    return {
        "projection": aux.needs_projections and cfg.Lambda2 > 0,
        "lambda_head": ood and "lambda_head" in detector.heads,
        "aux_linear": ood and "aux_linear" in detector.heads,
    }


class _StopFlag:
    """First Ctrl-C: stop at the next step boundary after saving; second: the usual KeyboardInterrupt."""

    def __init__(self) -> None:
        self.set = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class Trainer:
    def __init__(self, cfg: TrainConfig, rt: Runtime, observer: TrainObserver | None = None,
                 bench: Benchmark | None = None) -> None:
        self.cfg, self.rt = cfg, rt
        self.obs = observer or TrainObserver()
        reg = registry()
        self.metric = reg.detector(cfg.ood_metric)
        self.aux = reg.aux_loss(cfg.aux_ood_loss, k=cfg.pascl_k, T=cfg.temperature)
        self.bench = bench or load_benchmark(cfg.dataset, cfg.data_root, imbalance_ratio=cfg.imbalance_ratio,
                                             num_ood_samples=cfg.num_ood_samples)
        b = self.bench
        if b.aux_ood is None or len(b.aux_ood) == 0:
            if cfg.Lambda > 0 and self.metric.has_loss:
                raise ImoodError(f"{cfg.dataset} has no auxiliary OOD training data, which {cfg.ood_metric} needs "
                                 "(or pass --Lambda 0)")
        self.spec = augment_spec(cfg, b)
        cfg.model = canonical_model_name(cfg.model)
        self.arch = architecture(cfg, b, self.metric.extra_outputs)
        self.class_counts = list(b.class_counts)
        self.log_prior = log_prior(self.class_counts, cfg.logit_adjust).float().to(rt.device)
        self.counts_t = torch.tensor(self.class_counts, device=rt.device)

        torch.manual_seed(cfg.seed)
        self.core = ImOODModel(self.arch, pretrained=cfg.pretrained)
        if cfg.init_from:
            init_weights(self.core, Path(cfg.init_from), cfg.ood_metric)
        self.core = self.core.to(rt.device)
        if rt.channels_last:
            self.core = self.core.to(memory_format=torch.channels_last)
        self.heads = used_heads(self.metric, self.aux, cfg)
        for head, used in self.heads.items():
            getattr(self.core, head).requires_grad_(used)
        params = [p for p in self.core.parameters() if p.requires_grad]
        self.opt = _optimizer(cfg, params, rt.device)
        has_aux = b.aux_ood is not None and len(b.aux_ood) > 0
        self.in_memory = b.train.in_memory
        if self.in_memory:  # uint8 tensors held on the training device
            self.train_set = ImageSet(b.train.name, b.train.labels.to(rt.device), b.train.images.to(rt.device))
            self.aux_set = (ImageSet(b.aux_ood.name, b.aux_ood.labels, b.aux_ood.images.to(rt.device))
                            if has_aux else None)
        else:  # image files decoded by DataLoader workers (ImageNet-LT)
            self.train_set, self.aux_set = b.train, (b.aux_ood if has_aux else None)
        first = self._epoch(0)
        self.steps_per_epoch = len(first)
        _close(first)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg, self.steps_per_epoch))
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
        self.ckpt = CheckpointDir(cfg.run_dir / "checkpoint")

    # ---- data
    def _epoch(self, epoch: int):
        cfg, rt = self.cfg, self.rt
        ood_bs = cfg.batch_size if cfg.ood_batch_size is None else cfg.ood_batch_size
        if self.in_memory:
            return InMemoryEpoch(self.train_set, self.aux_set, cfg.batch_size, ood_bs, cfg.seed, epoch,
                                 rt.rank, rt.world_size)
        from imood_cli.data.files import FileEpoch

        return FileEpoch(self.train_set, self.aux_set, cfg.batch_size, ood_bs, cfg.seed, epoch, rt.rank,
                         rt.world_size, workers=cfg.workers, pin_memory=rt.device.type == "cuda")

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator(device=self.rt.device).manual_seed(epoch_seed(self.cfg.seed, epoch, 2 + self.rt.rank))

    # ---- one step
    def loss_parts(self, view1, view2, labels, ood, gen) -> torch.Tensor:
        """Augment on the device, then the loss: [total, L_in, L_ood, L_aux] as one tensor."""
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
        with self.rt.autocast():
            out = self.model(x, projections=self.heads["projection"], lambdas=self.heads["lambda_head"])
        out = out.float()
        labels2 = torch.cat([labels, labels])
        is_id = torch.arange(2 * n + m, device=x.device) < 2 * n
        l_in = logit_adjusted_ce(out.logits[: 2 * n], labels2, self.log_prior)
        zero = l_in.new_zeros(())
        l_ood = l_aux = zero
        ctx = LossContext(is_id=is_id, labels=labels2, log_prior=self.log_prior, aux_linear=self.core.aux_linear,
                          num_id=2 * n, class_counts=self.counts_t)
        view = ModelView.of(out)
        self.metric.train_update(view, ctx)
        if cfg.Lambda > 0 and self.metric.has_loss:
            l_ood = self.metric.loss(view, ctx)
        if self.heads["projection"]:
            rows = torch.arange(2 * n + m, device=x.device)
            pair = torch.where(rows < n, rows + n, torch.where(rows < 2 * n, rows - n, -1))
            full_labels = torch.cat([labels2, labels2.new_full((m,), -1)])
            l_aux = self.aux(AuxBatch(out.projections, full_labels, is_id, pair, self.counts_t))
        loss = l_in + cfg.Lambda * l_ood + cfg.Lambda2 * l_aux
        return torch.stack([loss, l_in, l_ood, l_aux])

    def optimize(self, parts: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        parts[0].backward()
        self.opt.step()
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
            "rng": rng, "metric": self.metric.fit_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        try:
            self.core.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ImoodError(f"checkpoint does not fit this model: {str(exc).splitlines()[0]}") from None
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self._resume_generator = state.get("generator")
        running = state.get("running")
        self._resume_running = ({k: v.to(self.rt.device) if isinstance(v, torch.Tensor) else v
                                 for k, v in running.items()} if running else None)
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.rt.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.rt.device)
        if state.get("metric"):
            self.metric.load_fit_state({k: v.to(self.rt.device) for k, v in state["metric"].items()})

    def save_checkpoint(self) -> Path | None:
        if not self.rt.is_main:
            return None
        meta = {"format": "imood-checkpoint", "config": self.cfg.to_dict(), "architecture": self.arch.to_dict(),
                "class_counts": self.class_counts}
        return self.ckpt.save(self.epoch, self.state(), meta, step=self.step_in_epoch)

    def save_model(self) -> Path:
        path = self.cfg.run_dir / "model.safetensors"
        if self.rt.is_main:
            save_tensors(path, self.core.state_dict(), model_metadata(self.cfg, self.arch, self.class_counts, self.epoch))
        return path

    def _log_record(self, sums: torch.Tensor, count: torch.Tensor, images: int, seconds: float, kind: str) -> dict:
        if self.rt.distributed:
            packed = torch.cat([sums, count.view(1).float()])
            dist.all_reduce(packed)
            sums, count = packed[:-1], packed[-1]
        values = (sums / count.clamp(min=1)).tolist()
        record = {"kind": kind, "epoch": self.epoch + 1, "step": self.global_step,
                  **{k: round(v, 6) for k, v in zip(LOSS_PARTS, values)},
                  "lr": self.opt.param_groups[0]["lr"], "images_per_s": round(images * self.rt.world_size / max(seconds, 1e-9), 1)}
        if not all(math.isfinite(v) for v in values):
            last = self.ckpt.last_path()
            parts = ", ".join(f"{k}={v:.4g}" for k, v in zip(LOSS_PARTS, values))
            keep = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise TrainingDiverged(f"loss is not finite at epoch {self.epoch + 1}, step {self.global_step} ({parts}); {keep}")
        if self.rt.is_main:
            with open(self.cfg.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        return record

    # ---- the loop
    def _fresh_running(self) -> dict[str, Any]:
        zeros = torch.zeros(len(LOSS_PARTS), device=self.rt.device)
        one = torch.zeros((), device=self.rt.device)
        return {"sums": zeros, "count": one, "images": 0, "ep_sums": zeros.clone(), "ep_count": one.clone(),
                "ep_images": 0}

    def run(self) -> TrainResult:
        cfg, rt = self.cfg, self.rt
        self.obs.start(cfg, self.bench, self.epoch, self.steps_per_epoch)
        last: dict[str, Any] = {}
        self.core.train()
        with _StopFlag() as stop:
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
                    d = self.train_step(b, self._gen)
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
                        r["sums"].zero_(), r["count"].zero_()
                        r["images"], t0 = 0, time.perf_counter()
                    if stop.set and self.step_in_epoch < len(batches):
                        _close(batches)
                        path = self.save_checkpoint()
                        raise Interrupted(f"interrupted at epoch {self.epoch + 1}, step {self.step_in_epoch}; "
                                          f"saved {path}; continue with: imood train --resume {cfg.run_dir}")
                _close(batches)
                last = self._log_record(r["ep_sums"], r["ep_count"], r["ep_images"], time.perf_counter() - ep_t0,
                                        "epoch")
                self.epoch += 1
                self.step_in_epoch = 0
                self.save_checkpoint()
                self.obs.epoch_end(last)
                if stop.set and self.epoch < cfg.epochs:
                    raise Interrupted(f"interrupted after epoch {self.epoch}; continue with: imood train --resume {cfg.run_dir}")
            self.save_model()  # still under the stop flag: a Ctrl-C now waits for the model file
        rt.barrier()
        return TrainResult(cfg.run_dir, self.epoch, last)


def init_weights(model: ImOODModel, target: Path, metric_name: str) -> None:
    """Start from an imood model's weights; any architecture difference is an error before training."""
    from imood_cli.engine.checkpoint import load_tensors
    from imood_cli.engine.score import check_model_metadata, check_state_dict, resolve_model_path

    path = resolve_model_path(target)
    tensors, meta = load_tensors(path, "model file")
    theirs, ours = check_model_metadata(meta, path), model.arch
    if theirs.extra_outputs < ours.extra_outputs:
        raise ImoodError(f"{metric_name} needs {ours.extra_outputs} extra classifier output(s), but {path} has "
                         f"{theirs.extra_outputs}: start from scratch, or train a metric without one")
    for name in ("backbone", "num_classes", "in_chans", "cifar_stem", "extra_outputs"):
        if getattr(theirs, name) != getattr(ours, name):
            raise ImoodError(f"{path} has {name} = {getattr(theirs, name)!r}, this run needs "
                             f"{getattr(ours, name)!r}")
    check_state_dict(model, tensors, path)
    model.load_state_dict(tensors)


def _close(batches) -> None:
    close = getattr(batches, "close", None)  # file epochs own DataLoader workers
    if close is not None:
        close()


def prepare_run_dir(cfg: TrainConfig, rt: Runtime, force: bool = False) -> None:
    run = cfg.run_dir
    if rt.is_main:
        if run.exists() and any(run.iterdir()) and not force:
            raise ImoodError(f"run folder {run} already exists; continue it with --resume {run}, "
                             "or pick another --name (or --force to start over)")
        run.mkdir(parents=True, exist_ok=True)
        for stale in ("metrics.jsonl", "model.safetensors"):
            (run / stale).unlink(missing_ok=True)
        if (run / "checkpoint").exists():
            for f in (run / "checkpoint").iterdir():
                f.unlink()
        atomic_write_text(run / "config.json", cfg.to_json())
    rt.barrier()


def read_run_config(run: Path) -> TrainConfig:
    path = Path(run) / "config.json"
    if not path.exists():
        raise ImoodError(f"no config.json in {run}: not an imood run folder")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError:
        raise ImoodError(f"{path} is corrupt") from None


def train(cfg: TrainConfig, rt: Runtime, observer: TrainObserver | None = None, force: bool = False,
          bench: Benchmark | None = None) -> TrainResult:
    """Train a new run in cfg.run_dir."""
    trainer = Trainer(cfg, rt, observer, bench)
    prepare_run_dir(cfg, rt, force)
    return trainer.run()


def resume(run: Path, rt: Runtime, observer: TrainObserver | None = None, epochs: int | None = None,
           bench: Benchmark | None = None) -> TrainResult:
    """Continue a run from its newest intact checkpoint (or from scratch if it never saved one)."""
    run = Path(run)
    cfg = read_run_config(run)
    cfg.save_root, cfg.name = str(run.parent), run.name
    if epochs is not None:
        cfg.epochs = epochs
    if CheckpointDir(run / "checkpoint").entries():
        cfg.init_from = None  # the checkpoint holds the weights; the starting model may be gone by now
    trainer = Trainer(cfg, rt, observer, bench)
    if rt.is_main:
        remove_partial_files(run)
    rt.barrier()
    found = trainer.ckpt.latest_good()
    if found is not None:
        state, _, path = found
        trainer.load_state(state)
        if rt.is_main:
            _truncate_metrics(run / "metrics.jsonl", trainer.global_step)
            atomic_write_text(run / "config.json", cfg.to_json())
        trainer.obs.message(f"resuming from {path} (epoch {trainer.epoch}, step {trainer.step_in_epoch})")
    elif rt.is_main:
        (run / "metrics.jsonl").unlink(missing_ok=True)
    return trainer.run()


def remove_partial_files(run: Path) -> None:
    """Temporary files of writes cut short by a kill: never read, safe to delete (one writer per run)."""
    for folder in (run, run / "checkpoint", run / "scores", run / "fits", run / "eval"):
        if folder.is_dir():
            for f in folder.glob(".*.tmp"):
                f.unlink(missing_ok=True)


def _truncate_metrics(path: Path, global_step: int) -> None:
    """Drop records written after the checkpoint, so the resumed run does not log them twice."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= global_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError):
            break  # a torn last line from a kill
    atomic_write_text(path, "".join(l + "\n" for l in keep))
