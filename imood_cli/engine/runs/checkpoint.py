"""Safetensors files with JSON metadata, atomic writes, and training checkpoints.

Every file is written to a temporary name in the same folder, fsynced, then renamed over the
target, so a reader sees the old file or the new one, never half of one; each carries a digest of
its tensors. Training checkpoints are listed in checkpoint/latest.json; a resume takes the newest
checkpoint file that verifies, listed or not (a kill can land between the file and the index).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from imood_cli.engine.runs.digest import sha256_file, tensors_digest
from imood_cli.engine.runs.layout import CHECKPOINT_NAME
from imood_cli.engine.runs.metadata import whole_number
from imood_cli.engine.runs.owned import is_imood_checkpoint
from imood_cli.engine.runs.scorefile import META_KEY, read_metadata
from imood_cli.errors import ImoodError
from imood_cli.fs import faults
from imood_cli.fs.atomic import atomic_write_bytes, atomic_write_text
from imood_cli.fs.safe import (
    NotRegularFile,
    is_regular_file,
    open_regular,
    parse_json,
    read_capped,
    read_text,
    weights_cap,
)

KEEP_CHECKPOINTS = 2


def torch_digest(tensors: dict[str, torch.Tensor]) -> str:
    """`runs.digest.tensors_digest` of torch tensors."""
    def raw(t: torch.Tensor):
        t = t.detach().contiguous().cpu()
        return t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""

    return tensors_digest((k, str(t.dtype), tuple(t.shape), raw(t)) for k, t in tensors.items())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], digest: bool = True,
                 step: str | None = None) -> bytes:
    """Write a safetensors file atomically; `meta` is stored as one JSON string, with a digest of the
    tensor data so damaged bytes are caught on load (digest=False: `meta` brings its own). `step` names
    the write for fault injection (fs.faults). Returns the bytes written."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if digest:
        meta = {**meta, "tensors_sha256": torch_digest(clean)}
    data = st_save_bytes(clean, metadata={META_KEY: json.dumps(meta)})
    try:
        atomic_write_bytes(path, data, step)
    except OSError as exc:
        raise ImoodError(f"cannot write {path}: {exc.strerror or exc}") from None
    return data


def load_tensors(path: Path, what: str = "file", require_digest: bool = False
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by `save_tensors`; a clear ImoodError for anything wrong.

    require_digest: refuse a file without the digest of its tensors (one that nothing else vouches for)."""
    path = Path(path)
    data = read_capped(path, what, weights_cap())
    try:
        tensors = st_load_bytes(data)
        meta = read_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, RecursionError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise ImoodError(f"{what} {path} is corrupt or truncated ({first})") from None
    if not isinstance(meta, dict):
        raise ImoodError(f"{what} {path} has malformed metadata (not a JSON object)")
    expected = meta.pop("tensors_sha256", None)
    if expected is None and require_digest:
        raise ImoodError(f"{what} {path} was written without a checksum to verify it by")
    if expected is not None and torch_digest(tensors) != expected:
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


def save_state(path: Path, state: dict[str, Any], meta: dict[str, Any], step: str | None = None) -> dict[str, Any]:
    """Save a nested training state; returns {file, size, tensors_sha256} for the checkpoint list.

    The file carries the digest of its tensors like every other file imood writes, so it verifies on its
    own: a checkpoint that a kill left out of latest.json is still usable (CheckpointDir.resume_point)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, "s", tensors)
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    digest = torch_digest(clean)
    data = save_tensors(path, clean, {**meta, "skeleton": skeleton, "tensors_sha256": digest}, digest=False,
                        step=step)
    return {"file": Path(path).name, "size": len(data), "tensors_sha256": digest}


def load_state(path: Path, require_digest: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    tensors, meta = load_tensors(path, "checkpoint", require_digest)
    if "skeleton" not in meta:
        raise ImoodError(f"checkpoint {path} holds no training state (is it a model file?)")
    try:
        state = unflatten_state(meta.pop("skeleton"), tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ImoodError(f"checkpoint {path} is inconsistent ({type(exc).__name__}): its state names a tensor it "
                         "does not hold") from None
    if not isinstance(state, dict):
        raise ImoodError(f"checkpoint {path} holds no training state")
    return state, meta


def non_finite_weight(model_state: Any) -> str | None:
    """The name of the first floating-point tensor of a state dict that holds NaN or an infinity, if any."""
    if not isinstance(model_state, dict):
        return None
    for name, t in model_state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return str(name)
    return None


@dataclass
class ResumePoint:
    """The checkpoint a resume continues from, and what was passed over on the way to it (in words)."""

    state: dict[str, Any]
    meta: dict[str, Any]
    path: Path
    skipped: list[str] = field(default_factory=list)
    index_note: str | None = None  # why latest.json was not used as it stood, if it was not
    listed: list[str] | None = None  # the index's files, when it lists this checkpoint (it is current)

    def tidy(self, ckpt: CheckpointDir) -> None:
        """Leave the folder as a save would have (the writing process only): with a current index, remove the
        older checkpoints a kill kept from rotation; otherwise write the index anew from the files."""
        if self.listed is not None:
            ckpt.prune(set(self.listed), _position(self.path))
        else:
            ckpt.rebuild_index()


class CheckpointDir:
    """runs/<name>/checkpoint/: epoch_NNNN[_step_SSSSSS].safetensors files and latest.json listing them.

    A save writes the checkpoint file (atomically), then the index, then removes checkpoints older than the
    last KEEP_CHECKPOINTS; a kill can land between any two of these. So a resume does not trust the index
    alone: it looks at every checkpoint file in the folder, newest first, and continues from the first one
    that verifies (the checksum in the index where it lists the file, else the digest inside the file).
    latest.json is input like any other: only entries that name imood's own checkpoint files inside this
    folder are accepted (engine.run.check_checkpoint_entry); an index that is missing, unreadable or names
    anything else is set aside and rebuilt from the files, and rotation only removes files of imood's
    checkpoint name and format.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.index = self.folder / "latest.json"

    def read_index(self) -> tuple[list[CheckpointEntry], str | None]:
        """The index's entries (oldest first) and, when it cannot be used, why not (then no entries)."""
        if not self.index.exists() and not self.index.is_symlink():
            return [], None if not self.files() else f"{self.index.name} is missing"
        try:
            data = parse_json(read_text(self.index, "checkpoint index"), str(self.index))
            listed = data.get("checkpoints") if isinstance(data, dict) else None
            if not isinstance(listed, list):
                raise ImoodError("it holds no list of checkpoints")
            entries = [check_checkpoint_entry(e, self.index) for e in listed]
        except NotRegularFile:
            raise  # a FIFO or a device where the index belongs is not imood's to read or replace
        except ImoodError as exc:
            reason = str(exc)
            for prefix in (f"checkpoint index {self.index} ", f"{self.index} is corrupt: ", f"{self.index} "):
                reason = reason.removeprefix(prefix)
            return [], f"{self.index.name} is unreadable ({reason})"
        return sorted(entries, key=lambda e: (e.epoch, e.step)), None

    def entries(self) -> list[CheckpointEntry]:
        return self.read_index()[0]

    def files(self) -> list[Path]:
        """Checkpoint files present on disk, whether or not the index lists them, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [f for f in self.folder.iterdir() if CHECKPOINT_NAME.match(f.name) and is_regular_file(f)]
        return sorted(found, key=_position)

    def newest_epoch(self) -> int:
        """Complete epochs of the newest checkpoint on disk (listed or not; 0 if there is none)."""
        return max((_position(f)[0] for f in self.files()), default=0)

    def save(self, epoch: int, state: dict[str, Any], meta: dict[str, Any], step: int = 0) -> Path:
        """Save after `epoch` complete epochs and `step` steps of the next one."""
        name = f"epoch_{epoch:04d}" + (f"_step_{step:06d}" if step else "")
        path = self.folder / f"{name}.safetensors"
        written = save_state(path, state, meta, step="checkpoint.data")
        entry = CheckpointEntry(written["file"], epoch, step, written["size"], None, written["tensors_sha256"])
        listed, problem = self.read_index()
        if problem is not None:
            listed = self._entries_from_files()
        entries = [e for e in listed if (e.epoch, e.step) != (epoch, step)] + [entry]
        entries.sort(key=lambda e: (e.epoch, e.step))
        keep = entries[-KEEP_CHECKPOINTS:]
        atomic_write_text(self.index, json.dumps({"checkpoints": [e.to_dict() for e in keep]}, indent=2),
                          step="checkpoint.index")
        self.prune({e.file for e in keep}, (epoch, step))
        return path

    def _entries_from_files(self) -> list[CheckpointEntry]:
        """Index entries for the checkpoint files on disk that carry their digest (read from the header only)."""
        out = []
        for f in self.files():
            digest = header_digest(f)
            if digest is not None:
                epoch, step = _position(f)
                out.append(CheckpointEntry(f.name, epoch, step, f.stat().st_size, None, digest))
        return out

    def prune(self, kept: set[str], before: tuple[int, int]) -> None:
        """Remove imood's checkpoint files older than `before` that the index no longer names (rotation; also
        those a kill left behind between a save and its rotation)."""
        for f in self.files():
            if f.name not in kept and _position(f) < before and is_imood_checkpoint(f):
                f.unlink(missing_ok=True)
                faults.reached("checkpoint.rotated")

    def resume_points(self) -> Iterator[ResumePoint]:
        """The checkpoints a resume may continue from, newest first, each verified as it comes up.

        Verified means: the size and checksum the index records for it, or, for a file the index does not
        list, the digest written inside it; and weights that are finite. Each point carries what was passed
        over before it; the caller adds to `skipped` a point it cannot use (a state that does not fit the run)
        and takes the next. When none is left: an error listing every checkpoint and why, or nothing at all
        when the folder holds no checkpoint (a run killed before its first one starts again)."""
        entries, index_note = self.read_index()
        listed = {e.file: e for e in entries}
        skipped: list[str] = []
        for path in reversed(self.files()):
            try:
                state, meta = self._verified(path, listed.get(path.name))
            except ImoodError as exc:
                skipped.append(f"{path.name} ({_without_path(exc, path)})")
                continue
            note = index_note
            if path.name not in listed and note is None:
                note = f"{self.index.name} did not list {path.name} yet (the run stopped between the two writes)"
            yield ResumePoint(state, meta, path, skipped, note, sorted(listed) if path.name in listed else None)
        gone = [e.file for e in entries if not (self.folder / e.file).exists()]
        skipped += [f"{name} (listed in {self.index.name} but missing)" for name in gone]
        if skipped:
            raise ImoodError(f"no usable checkpoint in {self.folder}: {'; '.join(skipped)}")

    def resume_point(self) -> ResumePoint | None:
        """The newest checkpoint that verifies (None when the folder holds none at all)."""
        return next(self.resume_points(), None)

    def rebuild_index(self) -> None:
        """Write latest.json anew from the checkpoint files that carry their digest (after a kill or damage)."""
        entries = self._entries_from_files()[-KEEP_CHECKPOINTS:]
        atomic_write_text(self.index, json.dumps({"checkpoints": [e.to_dict() for e in entries]}, indent=2),
                          step="checkpoint.rebuild")

    def _verified(self, path: Path, entry: CheckpointEntry | None) -> tuple[dict[str, Any], dict[str, Any]]:
        if entry is not None:
            size = path.stat().st_size
            if size != entry.size:
                raise ImoodError(f"{size} bytes where {self.index.name} recorded {entry.size}")
            if entry.sha256 is not None and sha256_file(path) != entry.sha256:  # an index of imood 0.2
                raise ImoodError(f"its sha256 differs from the one {self.index.name} recorded")
        # a file the index does not vouch for must carry its own digest
        state, meta = load_state(path, require_digest=entry is None or entry.sha256 is None)
        bad = non_finite_weight(state.get("model"))
        if bad:
            raise ImoodError(f"its weight {bad} holds NaN or infinite values")
        return state, meta

    def latest_good(self) -> tuple[dict[str, Any], dict[str, Any], Path] | None:
        point = self.resume_point()
        return None if point is None else (point.state, point.meta, point.path)

    def last_path(self) -> Path | None:
        files = self.files()
        return files[-1] if files else None


def header_digest(path: Path) -> str | None:
    """The `tensors_sha256` in a safetensors file's metadata, read from its header alone (None if absent)."""
    try:
        with open_regular(path) as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100_000_000:
                return None
            meta = read_metadata(n.to_bytes(8, "little") + f.read(n))
    except (OSError, ValueError, ImoodError, RecursionError):
        return None
    digest = meta.get("tensors_sha256") if isinstance(meta, dict) else None
    return digest if isinstance(digest, str) else None


def _position(path: Path) -> tuple[int, int]:
    m = CHECKPOINT_NAME.match(path.name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (-1, -1)


def _without_path(exc: Exception, path: Path) -> str:
    """An error about `path` without the path itself, for a list that names the file already."""
    text = str(exc)
    for prefix in (f"checkpoint {path} ", f"{path}: ", f"{path} "):
        text = text.removeprefix(prefix)
    return text


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
    ok = (whole_number(epoch, 0, 10**7) and whole_number(step, 0, 10**9) and whole_number(size, 1, 2**50)
          and isinstance(name, str) and (sha is not None or digest is not None) and (sha is None or _hex_digest(sha))
          and (digest is None or _hex_digest(digest)))
    expected = f"epoch_{epoch:04d}" + (f"_step_{step:06d}" if step else "") + ".safetensors" if ok else None
    if not ok or name != expected:
        shown = repr(name)[:80] if isinstance(name, str) else "no file name"
        raise ImoodError(f"{where} is corrupt: entry {shown} is not one of imood's checkpoints (epoch_NNNN.safetensors "
                         "with epoch, step, size and a checksum)")
    return CheckpointEntry(name, epoch, step, size, sha, digest)
