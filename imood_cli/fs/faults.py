"""Named steps of imood's writes where a test can kill the process outright, to show that a kill at any
instant leaves files the next run continues from (tests/runs/test_kill_resume.py).

Off unless the environment names a step: `IMOOD_FAULT=checkpoint.index.synced@2` sends SIGKILL to the
process the second time it reaches that step (`@1` when no count is given). A kill is what a user's
`kill -9`, an out-of-memory kill or a power cut does: no handler, no cleanup, nothing flushed after it.
The steps of one atomic write are `<what>.partial` (half the bytes in the temporary file), `<what>.synced`
(the temporary file complete on disk), `<what>.renamed` (in place, the folder not yet synced).
"""

from __future__ import annotations

import os
import signal

ENV = "IMOOD_FAULT"
_reached: dict[str, int] = {}


def reached(step: str) -> None:
    """Called at each named step; kills the process when IMOOD_FAULT names this step and occurrence."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, nth = spec.partition("@")
    if name != step:
        return
    _reached[step] = _reached.get(step, 0) + 1
    if _reached[step] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
