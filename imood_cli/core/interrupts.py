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

A KeyboardInterrupt is never raised inside an import: an extension module runs Python code while it
initialises (pybind11's do), and an exception there can end the process with C++'s `terminate called after
throwing an instance of 'pybind11::error_already_set'` (SIGABRT) instead of exit code 130. A signal that lands
inside an import is deferred: a timer (SIGALRM, every 20 ms) raises it as soon as no import is running.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

RUNNING, STOPPING, ABORTED = "running", "stopping", "aborted"
IMPORT_SOURCES = frozenset({"<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>"})
RETRY_S = 0.02


def inside_import(frame: FrameType | None) -> bool:
    """Whether the code a signal interrupted runs inside an import statement (of any module)."""
    while frame is not None:
        if frame.f_code.co_filename in IMPORT_SOURCES:
            return True
        frame = frame.f_back
    return False


class Interrupts:
    def __init__(self, graceful: bool = True, signals: tuple[int, ...] = (signal.SIGINT,),
                 on_signal: Callable[[str], None] | None = None, escalate: bool = True) -> None:
        self.graceful, self.signals, self.on_signal, self.escalate = graceful, signals, on_signal, escalate
        self.state = RUNNING
        self._old: dict[int, Any] = {}
        self._old_alarm: Any = None  # SIGALRM's handler while an interrupt waits for an import to end

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
            self._raise(frame)

    def _raise(self, frame: FrameType | None) -> None:
        if inside_import(frame) and hasattr(signal, "setitimer") and self._old:
            if self._old_alarm is None:
                self._old_alarm = signal.signal(signal.SIGALRM, lambda _s, f: self._raise(f))
            signal.setitimer(signal.ITIMER_REAL, RETRY_S)
            return
        self._cancel_retry()
        raise KeyboardInterrupt

    def _cancel_retry(self) -> None:
        if self._old_alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old_alarm)
            self._old_alarm = None

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self.handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cancel_retry()
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
