"""Running a sweep's commands: one unit per worker slot (GPU group) at a time, each command its own process,
failures recorded while the others go on, and Ctrl-C or SIGTERM passed on once so trainings save."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from imood_cli.core.interrupts import Interrupts
from imood_cli.core.process import PARENT_ENV
from imood_cli.engine.sweep.units import Unit
from imood_cli.errors import ImoodError


class SweepObserver(Protocol):
    def step_start(self, unit: Unit, cmd: list[str], slot: str | None) -> None: ...

    def step_end(self, unit: Unit, cmd: list[str], code: int, seconds: float) -> None: ...


@dataclass
class Outcome:
    unit: Unit
    status: str  # done | failed | interrupted | blocked
    message: str = ""


@dataclass
class Work:
    unit: Unit
    cmds: list[list[str]]


def launch(cmd: list[str], env: dict[str, str], log) -> subprocess.Popen:
    """Run an `imood ...` line with this installation's interpreter, in its own process group: a Ctrl-C in
    the terminal reaches the sweep alone, which passes exactly one SIGINT on (two would stop a training
    before it saves its checkpoint). The command stops when the sweep dies (core.process)."""
    argv = [sys.executable, "-m", "imood_cli", *cmd[1:]]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env={**env, PARENT_ENV: str(os.getpid())}, start_new_session=True)


def gpu_slots(gpus: list[str] | None, per_run: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each worker: GPUs taken per_run at a time (None: one worker, the
    environment as it is)."""
    if not gpus:
        return [None]
    if len(gpus) % per_run:
        raise ImoodError(f"--gpus lists {len(gpus)} GPUs but each run takes {per_run} (gpus_per_run): give a "
                         "multiple of it")
    return [",".join(gpus[i:i + per_run]) for i in range(0, len(gpus), per_run)]


Launcher = Callable[[list[str], dict[str, str], Any], Any]


class Pool:
    """The units' commands, one unit per slot at a time, each slot a thread that starts processes and waits.

    A failing unit is recorded and the others go on; a unit whose init_from model failed is blocked. Ctrl-C
    (or SIGTERM) stops starting work and passes SIGINT to every running command, so a training saves its
    checkpoint; the next sweep resumes it.
    """

    def __init__(self, work: list[Work], done: set[tuple[str, str, int]], observer: SweepObserver | None = None,
                 launcher: Launcher | None = None) -> None:
        self.launcher = launcher or launch
        self.observer = observer
        self.pending = list(work)
        self.finished: dict[tuple[str, str, int], bool] = {k: True for k in done}
        self.outcomes: list[Outcome] = []
        self.running: dict[int, Any] = {}
        self.cond = threading.Condition()
        self.stop = threading.Event()

    # ---- what a slot does
    def take(self) -> Work | None:
        """The next unit whose dependency has finished (waiting for one while others run), or None."""
        with self.cond:
            while not self.stop.is_set() and self.pending:
                for i, w in enumerate(self.pending):
                    dep = w.unit.depends
                    if dep is None or dep.key in self.finished:
                        return self.pending.pop(i)
                self.cond.wait(0.5)
            return None

    def finish(self, w: Work, outcome: Outcome) -> None:
        with self.cond:
            self.outcomes.append(outcome)
            self.finished[w.unit.key] = outcome.status == "done"
            self.cond.notify_all()

    def step(self, w: Work, cmd: list[str], slot: str | None) -> int:
        """Run one command of a unit to its end, logged in the unit's log; its exit code."""
        env = dict(os.environ)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        w.unit.log.parent.mkdir(parents=True, exist_ok=True)
        with open(w.unit.log, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            where = f" CUDA_VISIBLE_DEVICES={slot}" if slot is not None else ""
            log.write(f"# {stamp} imood sweep: {w.unit.label}{where}\n$ {shlex.join(cmd)}\n".encode())
            log.flush()
            if self.observer:
                self.observer.step_start(w.unit, cmd, slot)
            started = time.monotonic()
            with self.cond:
                if self.stop.is_set():
                    return 130
                proc = self.launcher(cmd, env, log)
                self.running[id(proc)] = proc
            try:
                code = proc.wait()
            finally:
                with self.cond:
                    self.running.pop(id(proc), None)
            took = time.monotonic() - started
            log.write(f"# exit {code} after {took:.1f} s\n".encode())
        if self.observer:
            self.observer.step_end(w.unit, cmd, code, took)
        return code

    def unit_outcome(self, w: Work, slot: str | None) -> Outcome:
        """Every command of one unit in turn, up to the first that does not succeed."""
        for cmd in w.cmds:
            try:
                code = self.step(w, cmd, slot)
            except Exception as exc:  # a log that cannot be written, a command that cannot start
                return Outcome(w.unit, "failed", f"`{shlex.join(cmd[:2])}` could not run: {type(exc).__name__}: {exc}")
            if code == 0:
                continue
            if self.stop.is_set() or code in (130, -signal.SIGINT):
                return Outcome(w.unit, "interrupted", f"stopped during `{shlex.join(cmd[:2])}`")
            return Outcome(w.unit, "failed", f"`{shlex.join(cmd[:2])}` {_ended(code)}; log: {w.unit.log}")
        return Outcome(w.unit, "done")

    def worker(self, slot: str | None) -> None:
        while (w := self.take()) is not None:
            dep = w.unit.depends
            if dep is not None and not self.finished.get(dep.key, False):
                self.finish(w, Outcome(w.unit, "blocked", f"not run: {dep.label} did not complete"))
                continue
            self.finish(w, self.unit_outcome(w, slot))

    def interrupt(self) -> None:
        """Stop starting work, and pass one SIGINT to each running command."""
        self.stop.set()
        with self.cond:
            for proc in list(self.running.values()):
                try:
                    os.kill(proc.pid, signal.SIGINT)
                except (ProcessLookupError, PermissionError):
                    pass
            self.cond.notify_all()

    # ---- the whole run
    def run(self, slots: list[str | None]) -> tuple[list[Outcome], bool]:
        """Run every unit on these slots; the outcomes and whether the sweep was interrupted."""
        exited: list[int] = []

        def run_slot(i: int, slot: str | None) -> None:
            try:
                self.worker(slot)
            finally:
                exited.append(i)

        threads = [threading.Thread(target=run_slot, args=(i, s), daemon=True) for i, s in enumerate(slots)]
        # Each Ctrl-C or SIGTERM (a scheduler's pre-emption) passes one SIGINT on: the first lets trainings
        # save and stop, a second stops them at once; the sweep waits for its commands either way.
        with Interrupts(signals=(signal.SIGINT, signal.SIGTERM), on_signal=lambda state: self.interrupt(),
                        escalate=False):
            for t in threads:
                t.start()
            # Sleep rather than Thread.join: a signal handler runs in the main thread between the sleeps.
            while len(exited) < len(threads):
                time.sleep(0.1)
            for t in threads:
                t.join()
        with self.cond:
            left = list(self.pending)
        outcomes = self.outcomes + [Outcome(w.unit, "interrupted", "not started") for w in left]
        return outcomes, self.stop.is_set()


def run_work(work: list[Work], done: set[tuple[str, str, int]], slots: list[str | None],
             observer: SweepObserver | None = None, launcher: Launcher | None = None) -> tuple[list[Outcome], bool]:
    """Run the units' commands on these slots (a `Pool`); returns the outcomes and whether it was interrupted."""
    return Pool(work, done, observer, launcher).run(slots)


def _ended(code: int) -> str:
    if code >= 0:
        return f"exited with {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


