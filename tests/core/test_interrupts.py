"""The one interrupt state machine (core.interrupts), signal by signal, in this process's main thread.

The commands that use it are tested end to end elsewhere (a training's Ctrl-C saves and resumes exactly:
tests/training/test_train.py, tests/runs/test_kill_resume.py; a sweep passes one SIGINT on:
tests/sweep/test_sweep.py; any other command prints one line and exits 130: tests/cli/test_cli_messages.py)."""

from __future__ import annotations

import os
import signal

import pytest

from imood_cli.core.interrupts import ABORTED, RUNNING, STOPPING, Interrupts


def send(sig=signal.SIGINT):
    os.kill(os.getpid(), sig)  # delivered to the main thread at the next bytecode boundary


def test_graceful_first_signal_stops_at_the_next_safe_point_and_the_second_aborts():
    before = signal.getsignal(signal.SIGINT)
    with Interrupts(graceful=True) as it:
        assert it.state == RUNNING and not it.stopping and not it.came
        send()
        assert it.state == STOPPING and it.stopping and it.came  # no exception: the work goes on to a safe point
        with pytest.raises(KeyboardInterrupt):
            send()
        assert it.state == ABORTED
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


def test_immediate_mode_interrupts_at_once_and_remembers_it():
    with pytest.raises(KeyboardInterrupt):
        with Interrupts(graceful=False) as it:
            send()
    assert it.came and it.state == STOPPING


def test_a_callback_receives_each_state_and_nothing_is_raised_without_escalation():
    seen = []
    with Interrupts(signals=(signal.SIGINT, signal.SIGTERM), on_signal=seen.append, escalate=False) as it:
        send(signal.SIGTERM)
        send(signal.SIGINT)
        send(signal.SIGINT)
    assert seen == [STOPPING, ABORTED, ABORTED] and it.state == ABORTED


def test_nested_machines_restore_each_other():
    with Interrupts(graceful=False):
        outer = signal.getsignal(signal.SIGINT)
        with Interrupts(graceful=True) as inner:
            send()
            assert inner.stopping
        assert signal.getsignal(signal.SIGINT) == outer


def test_a_signal_inside_an_import_waits_for_the_import_to_end(tmp_path, monkeypatch):
    """An extension module's initialisation runs Python code; a KeyboardInterrupt raised there can abort the
    process (pybind11: `terminate called ...`). The signal is raised as soon as the import is over."""
    import sys
    import time

    (tmp_path / "slow_ext.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"  # the Ctrl-C lands in the middle of the import
        "for _ in range(20):\n"
        "    time.sleep(0.005)\n"  # the deferred retries fire here, still inside the import
        "finished = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    alarm_before = signal.getsignal(signal.SIGALRM)
    with Interrupts(graceful=False) as it:
        with pytest.raises(KeyboardInterrupt):
            import slow_ext  # noqa: F401
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the interrupt comes here, after the import
                time.sleep(0.001)
        assert it.came
    assert sys.modules["slow_ext"].finished  # the module initialised in full
    assert signal.getsignal(signal.SIGALRM) is alarm_before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    del sys.modules["slow_ext"]
