"""The run folder and the model file: what imood writes there, how it is read back and checked, the lock
that keeps one writer per run, and what `--force` may remove (imood's own files, nothing else).

    runs/<name>/
      config.json          the resolved TrainConfig
      model.safetensors    final weights + metadata (format "imood-model")
      checkpoint/          epoch_NNNN[_step_SSSSSS].safetensors + latest.json
      metrics.jsonl        loss records
      fits/ scores/ eval/  detector fits, score files, evaluations
      report.html
      .imood.lock          held (flock) by the process training the run

This module imports no torch at import time: `imood report` reads model hashes through it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imood_cli.errors import ImoodError
from imood_cli.fs.atomic import is_temp_file
from imood_cli.fs.safe import open_regular, parse_json, read_json

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".imood.lock"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_NAME = re.compile(r"^epoch_(\d{4,})(?:_step_(\d{6,}))?\.safetensors$")
DERIVED_DIRS = ("scores", "eval", "fits")
REPORT_FILE = "report.html"


def model_path(target: Path) -> Path:
    """A run folder's model file, or the path of a model file itself."""
    target = Path(target)
    if target.is_dir():
        path = target / MODEL_FILE
        if not path.exists():
            hint = (" (training has not finished: continue it with imood train --resume)"
                    if (target / CHECKPOINT_DIR).exists() else "")
            raise ImoodError(f"no {MODEL_FILE} in {target}{hint}")
        return path
    if not target.exists():
        raise ImoodError(f"run folder or model file not found: {target}")
    return target


def sha256_file(path: Path) -> str:
    """sha256 of a regular file (anything else, a FIFO say, is refused: reading it could block forever)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_of(score_file: Path) -> Path | None:
    """The run folder a score file belongs to (RUN/scores/x.safetensors), if it is inside one."""
    p = Path(score_file).resolve()
    run = p.parent.parent
    return run if p.parent.name == "scores" and (run / MODEL_FILE).is_file() else None


# ---------------------------------------------------------------- model metadata


def _whole(v: Any, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def check_model_metadata(meta: Any, path: Path) -> dict[str, Any]:
    """The metadata of a model file after checking every field that scoring and training rely on; returns
    the architecture fields as plain values."""
    from imood_cli.engine.metrics.evaluate import check_class_counts

    def bad(what: str) -> ImoodError:
        return ImoodError(f"{path} has malformed metadata: {what}")

    if not isinstance(meta, dict) or "architecture" not in meta or "class_counts" not in meta:
        raise ImoodError(f"{path} is not an imood model file (no architecture or class counts in its metadata)")
    a = meta["architecture"]
    if not isinstance(a, dict):
        raise bad("architecture is not a JSON object")
    if not isinstance(a.get("backbone"), str) or not a["backbone"] or "\x00" in a["backbone"]:
        raise bad("architecture.backbone is not a model name")
    if not _whole(a.get("num_classes"), 1, 1_000_000):
        raise bad(f"architecture.num_classes must be a whole number in 1..1000000, got {a.get('num_classes')!r}")
    if not _whole(a.get("extra_outputs", 0), 0, 1024) or not _whole(a.get("in_chans", 3), 1, 64):
        raise bad("architecture.extra_outputs must be a whole number in 0..1024 and in_chans in 1..64")
    if not isinstance(a.get("cifar_stem", False), bool):
        raise bad("architecture.cifar_stem must be true or false")
    try:
        counts = check_class_counts(meta["class_counts"])
    except ImoodError as exc:
        raise bad(str(exc)) from None
    if len(counts) != a["num_classes"] or min(counts) < 1:
        raise bad(f"{len(counts)} class counts for {a['num_classes']} classes: wrong number of classes, or a class "
                  "without training images")
    meta["class_counts"] = counts
    config = meta.get("config")
    if config is None:  # the training options are not needed to score: defaults then
        config = {}
    if not isinstance(config, dict):
        raise bad(f"config must be a JSON object of training options, got {type(config).__name__}")
    for key, kind in (("data_root", str), ("dataset", str), ("imbalance_ratio", (int, float))):
        value = config.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise bad(f"config.{key} has the wrong type ({type(value).__name__})")
    ratio = config.get("imbalance_ratio")
    if ratio is not None and not 0 < ratio <= 1:
        raise bad(f"config.imbalance_ratio must be in (0, 1], got {ratio}")
    for key in ("dataset", "metric", "aux_loss"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(f"{key} must be text")
    meta["config"] = config
    return {k: a.get(k, d) for k, d in (("backbone", None), ("num_classes", None), ("extra_outputs", 0),
                                         ("in_chans", 3), ("cifar_stem", False))}


# ---------------------------------------------------------------- one writer per run


class RunLock:
    """An exclusive lock on RUN/.imood.lock for as long as a process trains the run.

    flock is released by the kernel when the process dies (even by SIGKILL), so a crashed run never
    leaves a stale lock behind.
    """

    def __init__(self, run: Path) -> None:
        self.path = Path(run) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # no flock on this platform: nothing to hold
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                who = f" (process {holder})" if holder else ""
                raise ImoodError(f"{self.path.parent} is being trained by another imood process{who}; "
                                 "wait for it to finish, or stop it first") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock; the file stays (removing it would race)
            self.fd = None


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode(errors="replace").strip()
        return text if text.isdigit() else ""
    except OSError:
        return ""


# ---------------------------------------------------------------- what imood wrote


def is_run_folder(folder: Path) -> bool:
    """A folder imood trained in: its config.json is a JSON object of training options."""
    try:
        data = read_json(Path(folder) / CONFIG_FILE, "run configuration")
    except ImoodError:
        return False
    return isinstance(data, dict) and {"dataset", "ood_metric", "epochs"} <= set(data)


def _imood_safetensors(path: Path, formats: tuple[str, ...] | None = None) -> bool:
    """A safetensors file whose metadata imood wrote (the 'imood' JSON entry), optionally of these formats."""
    try:
        with open_regular(path) as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100_000_000:
                return False
            header = parse_json(f.read(n), str(path))
        meta = parse_json((header.get("__metadata__") or {}).get("imood", "null"), str(path))
    except (OSError, ValueError, AttributeError, TypeError, ImoodError):
        return False
    if not isinstance(meta, dict):
        return False
    if formats is None:
        return True
    return meta.get("format") in formats or ("skeleton" in meta and "imood-checkpoint" in formats)


def own_files(run: Path) -> list[Path]:
    """Every file in RUN that imood wrote (by name and, for data files, by content); `--force` removes these."""
    run = Path(run)
    found: list[Path] = []
    model = run / MODEL_FILE
    if model.is_file() and _imood_safetensors(model):
        found.append(model)
    for name in (METRICS_FILE,):
        if (run / name).is_file():
            found.append(run / name)
    report = run / REPORT_FILE
    if report.is_file() and b"imood report" in _head(report):
        found.append(report)
    ckpt = run / CHECKPOINT_DIR
    if ckpt.is_dir():
        for f in ckpt.iterdir():
            if f.is_file() and not f.is_symlink() and (is_imood_checkpoint(f) or f.name == "latest.json"):
                found.append(f)
    for sub in DERIVED_DIRS:
        folder = run / sub
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if not f.is_file() or f.is_symlink():
                continue
            if f.suffix == ".safetensors" and _imood_safetensors(f):
                found.append(f)
            elif sub == "eval" and f.suffix == ".json" and _is_eval_json(f):
                found.append(f)
    for folder in (run, ckpt, *(run / s for s in DERIVED_DIRS)):
        if folder.is_dir():
            found += [f for f in folder.iterdir() if f.is_file() and is_temp_file(f)]
    return found


def _is_eval_json(path: Path) -> bool:
    try:
        data = read_json(path, "evaluation")
    except ImoodError:
        return False
    return isinstance(data, dict) and "fpr95_convention" in data


def _head(path: Path, n: int = 4096) -> bytes:
    try:
        with open_regular(path) as f:
            return f.read(n)
    except (OSError, ImoodError):
        return b""


def clear_run(run: Path) -> list[Path]:
    """`--force`: remove imood's own files from RUN (refused for a folder imood did not make); returns them."""
    run = Path(run)
    if not run.exists():
        return []
    if not run.is_dir():
        raise ImoodError(f"{run} is a file, not a run folder")
    if any(run.iterdir()) and not is_run_folder(run):
        raise ImoodError(f"{run} is not an imood run folder (no imood config.json): --force only starts over in a "
                         "folder imood trained in; pick another --name")
    removed = own_files(run)
    for f in removed:
        f.unlink(missing_ok=True)
    for sub in (CHECKPOINT_DIR, *DERIVED_DIRS):  # folders imood made, once empty
        try:
            (run / sub).rmdir()
        except OSError:
            pass
    return removed


@dataclass
class CheckpointEntry:
    """One entry of checkpoint/latest.json. A checkpoint of imood 0.3 carries the digest of its tensors
    (`tensors_sha256`, also inside the file); an index of 0.2 recorded the sha256 of the whole file."""

    file: str
    epoch: int
    step: int
    size: int
    sha256: str | None = None
    tensors_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


def _hex_digest(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None


def check_checkpoint_entry(e: Any, where: Path) -> CheckpointEntry:
    """One entry of checkpoint/latest.json, accepted only if it names imood's own checkpoint file."""
    if not isinstance(e, dict):
        raise ImoodError(f"{where} is corrupt: an entry is not an object")
    epoch, step, size, name = e.get("epoch"), e.get("step", 0), e.get("size"), e.get("file")
    sha, digest = e.get("sha256"), e.get("tensors_sha256")
    ok = (_whole(epoch, 0, 10**7) and _whole(step, 0, 10**9) and _whole(size, 1, 2**50) and isinstance(name, str)
          and (sha is not None or digest is not None) and (sha is None or _hex_digest(sha))
          and (digest is None or _hex_digest(digest)))
    expected = f"epoch_{epoch:04d}" + (f"_step_{step:06d}" if step else "") + ".safetensors" if ok else None
    if not ok or name != expected:
        shown = repr(name)[:80] if isinstance(name, str) else "no file name"
        raise ImoodError(f"{where} is corrupt: entry {shown} is not one of imood's checkpoints (epoch_NNNN.safetensors "
                         "with epoch, step, size and a checksum)")
    return CheckpointEntry(name, epoch, step, size, sha, digest)


def is_imood_checkpoint(path: Path) -> bool:
    """A training checkpoint imood wrote: its name and its metadata say so (rotation removes only these)."""
    return (CHECKPOINT_NAME.match(Path(path).name) is not None and not Path(path).is_symlink()
            and _imood_safetensors(path, ("imood-checkpoint",)))
