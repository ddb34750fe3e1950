"""A run's life: started in a fresh folder (or over imood's own files with --force), resumed after an
interruption or a kill from its newest checkpoint that verifies, one writer at a time."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from imood_cli.data.base import Benchmark
from imood_cli.engine import runtime
from imood_cli.engine.runs.checkpoint import CheckpointDir, ResumePoint
from imood_cli.engine.runs.layout import CHECKPOINT_DIR, CONFIG_FILE, LOCK_FILE, METRICS_FILE, MODEL_FILE
from imood_cli.engine.runs.lock import RunLock
from imood_cli.engine.runs.owned import clear_run
from imood_cli.engine.runtime import Runtime
from imood_cli.engine.training.config import TrainConfig, convert, load_run_config, options, show
from imood_cli.engine.training.trainer import Trainer, TrainObserver, TrainResult
from imood_cli.errors import ImoodError
from imood_cli.fs.atomic import atomic_write_text, is_temp_file


def prepare_run_dir(cfg: TrainConfig, rt: Runtime, force: bool = False) -> list[str]:
    """A fresh run folder: refused if the folder holds anything, unless --force, which removes imood's own
    files there (only in a folder imood trained in). Returns notes for the user."""
    run, notes = cfg.run_dir, []
    if rt.is_main:
        if run.exists() and not run.is_dir():
            raise ImoodError(f"{run} is a file, not a run folder")
        busy = run.is_dir() and any(p.name != LOCK_FILE for p in run.iterdir())
        if busy and not force:
            raise ImoodError(f"run folder {run} already exists; continue it with --resume {run}, "
                             "or pick another --name (or --force to start over)")
        if busy:
            removed = clear_run(run)
            if removed:
                notes.append(f"--force removed {len(removed)} file(s) imood had written in {run}")
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / CONFIG_FILE, cfg.to_json())
    rt.barrier()
    return notes


def train(cfg: TrainConfig, rt: Runtime, observer: TrainObserver | None = None, force: bool = False,
          bench: Benchmark | None = None) -> TrainResult:
    """Train a new run in cfg.run_dir (one process at a time per run folder)."""
    trainer = Trainer(cfg, rt, observer, bench)
    with writer_lock(cfg.run_dir, rt):
        notes = prepare_run_dir(cfg, rt, force)
        for note in notes:
            trainer.obs.message(note)
        return trainer.run()


def writer_lock(run: Path, rt: Runtime):
    """The run's lock, held by the process that writes (rank 0)."""
    if not rt.is_main:
        return contextlib.nullcontext()
    Path(run).mkdir(parents=True, exist_ok=True)
    return RunLock(run)


def resume_config(run: Path, overrides: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """The run's stored, re-validated config with the options given on the command line applied, if they
    may change on resume (the rest must equal the stored values). Returns it and what changed, in words."""
    cfg = load_run_config(Path(run) / CONFIG_FILE)
    cfg.save_root, cfg.name = str(Path(run).parent), Path(run).name
    known, notes = options(), []
    for key, value in overrides.items():
        value = convert(key, value, "")
        stored = getattr(cfg, key)
        if value == stored:
            continue
        flag = known[key][0].flags[0].split("/")[0]
        if not known[key][0].resumable:
            raise ImoodError(f"{flag} cannot change on --resume (this run was started with {show(stored)}): "
                             "drop the flag, or start a new run")
        if key == "epochs":
            done = _epochs_done(Path(run))
            if value < max(done, 1):
                raise ImoodError(f"--epochs {value}: {run} has already trained {done} epochs")
            notes.append(f"--epochs {value} extends the run from {stored} epochs; the {cfg.schedule} schedule is "
                         f"recomputed over {value} epochs from the current step, so the learning rate continues "
                         "on the longer curve (it jumps at this step)")
        elif key == "device":
            notes.append(f"resuming on --device {value}; the run was started on {stored}: weights will not match "
                         "an uninterrupted run bit for bit")
        setattr(cfg, key, value)
    return cfg, notes


def _epochs_done(run: Path) -> int:
    return CheckpointDir(run / CHECKPOINT_DIR).newest_epoch()


def resume(run: Path, observer: TrainObserver | None = None, overrides: dict[str, Any] | None = None,
           bench: Benchmark | None = None, rt: Runtime | None = None) -> TrainResult:
    """Continue a run from its newest intact checkpoint, with the settings it was started with.

    A kill can land anywhere in a checkpoint save (file, index, rotation) or before the first one: the resume
    continues from the newest checkpoint file that verifies, says which one and what it passed over, and
    rebuilds the index from the files when it was missing or unreadable."""

    run = Path(run)
    if not run.is_dir():
        raise ImoodError(f"run folder not found: {run}")
    cfg, notes = resume_config(run, overrides or {})
    rt = rt or runtime.setup(cfg.device, cfg.amp, cfg.channels_last)
    ckpt = CheckpointDir(run / CHECKPOINT_DIR)
    with writer_lock(run, rt):
        if ckpt.files():
            cfg.init_from = None  # the checkpoint holds the weights; the starting model may be gone by now
        elif (run / MODEL_FILE).exists():
            raise ImoodError(f"{run} holds a {MODEL_FILE} but no checkpoint to continue from: the run is complete, or "
                             f"was imported; train a new run (--ckpt-path {run} starts from its weights)")
        trainer = Trainer(cfg, rt, observer, bench)
        for note in notes:
            trainer.obs.message(note)
        if rt.is_main:
            remove_partial_files(run)
        rt.barrier()
        point = _load_newest(ckpt, trainer)
        trainer.pending_config = True  # written at the first checkpoint, once the resumed training runs
        if point is not None:
            for skipped in point.skipped:
                trainer.obs.message(f"warning: skipped checkpoint {skipped}")
            if point.index_note:
                trainer.obs.message(f"note: {point.index_note}; it is written anew from the checkpoint files")
            if rt.is_main:
                point.tidy(ckpt)
                _truncate_metrics(run / METRICS_FILE, trainer.global_step)
            if trainer.epoch >= cfg.epochs and not trainer.step_in_epoch and _model_intact(run / MODEL_FILE):
                trainer.obs.message(f"{run} is complete ({trainer.epoch} epochs) and its {MODEL_FILE} is intact: "
                                    "nothing to do (--epochs N extends it)")
                return TrainResult(run, trainer.epoch, warnings=notes)
            trainer.obs.message(f"resuming from {point.path} (epoch {trainer.epoch}, step {trainer.step_in_epoch})")
        elif rt.is_main:  # killed before its first checkpoint: start again from scratch
            (run / METRICS_FILE).unlink(missing_ok=True)
        result = trainer.run()
        result.warnings = notes + result.warnings
        return result


def _model_intact(path: Path) -> bool:
    """A model file that loads and verifies (a kill may have left none, or the user may have damaged it)."""
    from imood_cli.engine.runs.checkpoint import load_tensors

    try:
        return "skeleton" not in load_tensors(path, "model file")[1]
    except ImoodError:
        return False


def _load_newest(ckpt: CheckpointDir, trainer: Trainer) -> ResumePoint | None:
    """Load the newest checkpoint that verifies and fits the run into the trainer; older ones are the fallback
    for one whose state does not load (its counters or tensors inconsistent)."""
    for point in ckpt.resume_points():
        try:
            trainer.load_state(point.state, point.path)
        except ImoodError as exc:
            point.skipped.append(f"{point.path.name} ({str(exc).removeprefix(str(point.path) + ' ')})")
            continue
        trainer.resumed_from = point.path
        return point
    return None


def remove_partial_files(run: Path) -> None:
    """Temporary files of writes cut short by a kill: never read, safe to delete (one writer per run)."""
    for folder in (run, run / CHECKPOINT_DIR, run / "scores", run / "fits", run / "eval"):
        if folder.is_dir():
            for f in folder.iterdir():
                if f.is_file() and is_temp_file(f):
                    f.unlink(missing_ok=True)


def _truncate_metrics(path: Path, global_step: int) -> None:
    """Drop records written after the checkpoint, so the resumed run does not log them twice."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a torn last line from a kill
        if isinstance(step, int) and step <= global_step:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))
