"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The bytes go to a temporary file in the target's folder (created with mode 0666 minus the umask, as
`open` would, so collaborators on shared storage can read runs), are fsynced, then renamed over the
target; the folder is fsynced too. A failure leaves the old file and no temporary one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from imood_cli.errors import ImoodError
from imood_cli.fs import faults

TMP_SUFFIX = ".tmp"


def temp_name(path: Path) -> Path:
    """A fresh hidden temporary name beside `path`: `.<name>.<random>.tmp`."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, step: str | None = None) -> None:
    """Write `data` to `path` atomically (OSError on failure, with nothing left behind).

    step: the name of this write for fault injection (fs.faults): `<step>.partial`, `.synced`, `.renamed`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            if step is not None:
                half = len(data) // 2
                f.write(memoryview(data)[:half])
                f.flush()
                faults.reached(f"{step}.partial")
                f.write(memoryview(data)[half:])
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if step is not None:
            faults.reached(f"{step}.synced")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if step is not None:
        faults.reached(f"{step}.renamed")
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, step: str | None = None) -> None:
    """`atomic_write_bytes` of UTF-8 text; a failure is one ImoodError naming the file."""
    try:
        atomic_write_bytes(path, text.encode(), step)
    except OSError as exc:
        raise ImoodError(f"cannot write {path}: {exc.strerror or exc}") from None


def is_temp_file(path: Path) -> bool:
    """A temporary file of `atomic_write_bytes` (left by a process killed mid-write)."""
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)
