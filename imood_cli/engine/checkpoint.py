"""Safetensors files with JSON metadata, atomic writes, and training checkpoints.

Every file is written to a temporary name in the same folder, fsynced, then renamed over the
target, so a reader sees the old file or the new one, never half of one. Training checkpoints
are listed in checkpoint/latest.json with their size and sha256; resume takes the newest that
verifies.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from imood_cli.engine.run import CHECKPOINT_NAME, CheckpointEntry, check_checkpoint_entry, sha256_file
from imood_cli.engine.scoreset import META_KEY, read_metadata
from imood_cli.errors import ImoodError
from imood_cli.fs.atomic import atomic_write_bytes, atomic_write_text

KEEP_CHECKPOINTS = 2


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (safetensors itself has no checksum)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], digest: bool = True) -> bytes:
    """Write a safetensors file atomically; `meta` is stored as one JSON string, with a digest of the
    tensor data so damaged bytes are caught on load (training checkpoints skip it: latest.json
    already holds the sha256 of the whole file). Returns the bytes written."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if digest:
        meta = {**meta, "tensors_sha256": tensors_digest(clean)}
    data = st_save_bytes(clean, metadata={META_KEY: json.dumps(meta)})
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise ImoodError(f"cannot write {path}: {exc.strerror or exc}") from None
    return data


def load_tensors(path: Path, what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by `save_tensors`; a clear ImoodError for anything wrong."""
    path = Path(path)
    if not path.exists():
        raise ImoodError(f"{what} not found: {path}")
    if path.is_dir():
        raise ImoodError(f"{what} {path} is a folder, not a file")
    data = path.read_bytes()
    try:
        tensors = st_load_bytes(data)
        meta = read_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise ImoodError(f"{what} {path} is corrupt or truncated ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(meta, dict):
        raise ImoodError(f"{what} {path} has malformed metadata (not a JSON object)")
    expected = meta.pop("tensors_sha256", None)
    if expected is not None and tensors_digest(tensors) != expected:
        raise ImoodError(f"{what} {path} is corrupt: its tensor data does not match the checksum written with it")
    return tensors, meta


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Nested state (optimizer, scheduler) → flat tensors + a JSON skeleton. Tensors become
# {"__tensor__": key}; tuples are kept apart from lists so the structure round-trips.
def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten_state(k, f"{prefix}.k{i}", tensors), flatten_state(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def unflatten_state(skel: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__dict__" in skel:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skel["__dict__"]}
        if "__tuple__" in skel:
            return tuple(unflatten_state(v, tensors) for v in skel["__tuple__"])
    if isinstance(skel, list):
        return [unflatten_state(v, tensors) for v in skel]
    return skel


def save_state(path: Path, state: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Save a nested training state; returns {file, size, sha256} for the checkpoint list."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, "s", tensors)
    data = save_tensors(path, tensors, {**meta, "skeleton": skeleton}, digest=False)  # one hash per save
    return {"file": Path(path).name, "size": len(data), "sha256": sha256_bytes(data)}


def load_state(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    tensors, meta = load_tensors(path, "checkpoint")
    if "skeleton" not in meta:
        raise ImoodError(f"checkpoint {path} holds no training state (is it a model file?)")
    try:
        state = unflatten_state(meta.pop("skeleton"), tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise ImoodError(f"checkpoint {path} is inconsistent ({type(exc).__name__}: {exc}): its state names a "
                         "tensor it does not hold") from None
    if not isinstance(state, dict):
        raise ImoodError(f"checkpoint {path} holds no training state")
    return state, meta


class CheckpointDir:
    """runs/<name>/checkpoint/: epoch_NNNN[_step_SSSSSS].safetensors files and latest.json listing them.

    latest.json is input like any other: only entries that name imood's own checkpoint files inside this
    folder are accepted (engine.run.check_checkpoint_entry), so a damaged or hostile index can neither
    point a resume at another file nor make checkpoint rotation delete one.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.index = self.folder / "latest.json"

    def entries(self) -> list[CheckpointEntry]:
        if not self.index.exists():
            return []
        try:
            data = json.loads(self.index.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ImoodError(f"{self.index} is corrupt; remove it to start the run over") from None
        listed = data.get("checkpoints") if isinstance(data, dict) else None
        if not isinstance(listed, list):
            raise ImoodError(f"{self.index} is corrupt (no list of checkpoints); remove it to start the run over")
        return sorted((check_checkpoint_entry(e, self.index) for e in listed), key=lambda e: (e.epoch, e.step))

    def files(self) -> list[Path]:
        """Checkpoint files present on disk, whether or not the index lists them."""
        if not self.folder.is_dir():
            return []
        return sorted(f for f in self.folder.iterdir() if CHECKPOINT_NAME.match(f.name) and f.is_file())

    def save(self, epoch: int, state: dict[str, Any], meta: dict[str, Any], step: int = 0) -> Path:
        """Save after `epoch` complete epochs and `step` steps of the next one."""
        name = f"epoch_{epoch:04d}" + (f"_step_{step:06d}" if step else "")
        path = self.folder / f"{name}.safetensors"
        written = save_state(path, state, meta)
        entry = CheckpointEntry(written["file"], epoch, step, written["size"], written["sha256"])
        entries = [e for e in self.entries() if (e.epoch, e.step) != (epoch, step)] + [entry]
        entries.sort(key=lambda e: (e.epoch, e.step))
        keep, drop = entries[-KEEP_CHECKPOINTS:], entries[:-KEEP_CHECKPOINTS]
        atomic_write_text(self.index, json.dumps({"checkpoints": [vars(e) for e in keep]}, indent=2))
        for e in drop:  # only after the index no longer names them; names are checked, so always ours
            (self.folder / e.file).unlink(missing_ok=True)
        return path

    def latest_good(self) -> tuple[dict[str, Any], dict[str, Any], Path] | None:
        """The newest checkpoint whose size and sha256 match the index, or None if there is none."""
        problems = []
        for e in reversed(self.entries()):
            path = self.folder / e.file
            if not path.is_file() or path.stat().st_size != e.size or sha256_file(path) != e.sha256:
                problems.append(e.file)
                continue
            state, meta = load_state(path)
            return state, meta, path
        if problems:
            raise ImoodError(f"no intact checkpoint in {self.folder}: {', '.join(problems)} fail their checksum")
        return None

    def last_path(self) -> Path | None:
        entries = self.entries()
        return self.folder / entries[-1].file if entries else None
