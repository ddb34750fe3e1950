"""Ctrl-C (SIGINT) and SIGTERM while imood works: one state machine for every command.

    RUNNING --first signal--> STOPPING --second signal--> ABORTED

- RUNNING: nothing came.
- STOPPING: the first signal came. Work that has a safe point to stop at polls `stopping` and stops there:
  training finishes the current step, saves a checkpoint and exits (130, resumable); a sweep stops starting
  commands and passes one SIGINT to each running one, so their trainings save too. Work without such a point
  (scoring, evaluation, reports: nothing they write is half-done, every file is written atomically) asks for
  `graceful=False`, and the first signal interrupts it at once with KeyboardInterrupt.
- ABORTED: a second signal while stopping: KeyboardInterrupt at once (the last checkpoint stays intact).

`on_signal` (the sweep) is called with the state each signal leads to, instead of raising in STOPPING; it
raises nothing itself in ABORTED either when `escalate=False`, so the sweep can pass the second signal on and
wait for its commands to end. Handlers are installed only in the main thread (Python delivers signals
there), and the previous ones are restored on exit. `came` tells the command line afterwards that a signal
arrived, so whatever error it caused on its way out is reported as the interruption (exit code 130).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

RUNNING, STOPPING, ABORTED = "running", "stopping", "aborted"


class Interrupts:
    def __init__(self, graceful: bool = True, signals: tuple[int, ...] = (signal.SIGINT,),
                 on_signal: Callable[[str], None] | None = None, escalate: bool = True) -> None:
        self.graceful, self.signals, self.on_signal, self.escalate = graceful, signals, on_signal, escalate
        self.state = RUNNING
        self._old: dict[int, Any] = {}

    @property
    def came(self) -> bool:
        return self.state != RUNNING

    @property
    def stopping(self) -> bool:
        """A signal came: stop at the next safe point."""
        return self.state != RUNNING

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        """One signal: the next state, and what it does (see the module docstring)."""
        self.state = STOPPING if self.state == RUNNING else ABORTED
        if self.on_signal is not None:
            self.on_signal(self.state)
        if self.state == ABORTED and self.escalate or self.state == STOPPING and not self.graceful:
            raise KeyboardInterrupt

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self.handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
