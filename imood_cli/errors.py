"""Errors a user can act on. The CLI prints their message as one line and exits with `exit_code`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ImoodError(Exception):
    """Bad input or a state the user must fix: one line, exit code 2, no traceback."""

    exit_code = 2


class TrainingDiverged(ImoodError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 1


def unknown_name(kind: str, name: str, known: Iterable[str]) -> ImoodError:
    """An `ImoodError` for an unknown name that suggests the nearest known ones."""
    known = sorted(set(known))
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    return ImoodError(f"unknown {kind} {name!r}{hint} (known: {', '.join(known)})")
