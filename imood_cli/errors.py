"""Errors a user can act on. The CLI prints their message as one line and exits with `exit_code`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

MAX_LISTED = 40  # timm knows ~1,200 models: past this, name the count instead of every one


class ImoodError(Exception):
    """Bad input or a state the user must fix: one line, exit code 2, no traceback."""

    exit_code = 2


class TrainingDiverged(ImoodError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept. Exit code 2 like any
    state the user must fix (here: the settings, a learning rate too high, say)."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> ImoodError:
    """An `ImoodError` for an unknown name that suggests the nearest known ones."""
    known = sorted(set(known))
    near = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    listing = ", ".join(known) if len(known) <= MAX_LISTED else f"{len(known)} names"
    return ImoodError(f"unknown {kind} {name!r}{hint} (known: {listing})")
