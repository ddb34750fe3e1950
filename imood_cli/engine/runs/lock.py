"""One writer per run: an exclusive lock on RUN/.imood.lock for as long as a process writes the run."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from imood_cli.engine.runs.layout import LOCK_FILE
from imood_cli.errors import ImoodError


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
