"""A command started by `imood sweep` ends with the sweep, however the sweep ends.

The sweep starts each `imood train` / `imood score` in a session of its own (so that a Ctrl-C in the terminal
reaches the sweep alone, which passes one SIGINT on), and names itself in the child's environment. On Linux
the child asks the kernel for a SIGINT when that parent dies (prctl PR_SET_PDEATHSIG): a sweep killed with
SIGKILL or by the OOM killer then leaves no trainer running on its own; the trainer saves its checkpoint at
the next step and stops, and the next sweep resumes it. Elsewhere the call does nothing.
"""

from __future__ import annotations

import os
import signal
import sys

PARENT_ENV = "IMOOD_DIE_WITH"  # the pid of the sweep that started this process
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """If a sweep started this process, stop (SIGINT) when it dies; at once if it is already gone."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # the sweep died before the request was made
        os.kill(os.getpid(), signal.SIGINT)
