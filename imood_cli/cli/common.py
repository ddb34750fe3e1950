"""Shared pieces of the commands: consoles, list parsing, progress bars."""

from __future__ import annotations

import functools
import os

import typer
from rich.console import Console

_KEPT_CONTROLS = "\n\t"


def shown(text: object, keep: str = _KEPT_CONTROLS) -> str:
    """Text as it may reach a terminal: control characters other than `keep` (ESC above all, which starts the
    terminal's escape sequences: a run folder or set name could retitle the window or hide output) are written
    as Python escapes."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else c.encode("unicode_escape").decode("ascii") for c in text)


class SafeConsole(Console):
    """A rich Console that escapes control characters in every string it renders (messages, table cells and
    titles all pass through render_str); its own styling is added after."""

    def render_str(self, text: str, **kwargs):
        return super().render_str(shown(text), **kwargs)


# emoji off: a name like "a:smile:b" prints as written (and rich's emoji table is not loaded at start-up)
console = SafeConsole(highlight=False, emoji=False)
err_console = SafeConsole(stderr=True, highlight=False, emoji=False)


_ARGV: list[str] = []
DDP_ARGV = "IMOOD_DDP_ARGV"  # `imood train --ddp` hands its command line to the processes it starts


def set_argv(args: list[str]) -> None:
    """The command line being run (for --ddp, which starts the same command once per process)."""
    _ARGV[:] = args


def current_argv() -> list[str]:
    return list(_ARGV)


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def split_list(value: str | list[str] | None) -> list[str]:
    """'a,b' or ['a', 'b,c'] → ['a', 'b', 'c']."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    return [p.strip() for item in items for p in item.split(",") if p.strip()]


def progress(transient: bool = True):
    """A rich progress display on stderr, drawn only on a terminal and by the main process."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=transient,
        disable=not is_main_process() or not err_console.is_terminal,  # no bar lines in logs and pipes
    )


class ScoreProgress:
    """engine.score.ScoreObserver as progress bars."""

    def __init__(self, bar) -> None:
        self.bar = bar
        self.task = None

    def start_set(self, name: str, size: int) -> None:
        self.task = self.bar.add_task(name, total=size, info="")

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)

    def end_set(self, name: str) -> None:
        self.bar.remove_task(self.task)


def warn(text: str) -> None:
    err_console.print(f"[yellow]warning:[/] {text}")


def abort_on_interrupt(command):
    """Ctrl-C as click's Abort, which the CLI turns into one line and exit code 130 (Typer itself would
    turn a KeyboardInterrupt into a silent exit)."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            raise typer.Abort() from None
    return run
