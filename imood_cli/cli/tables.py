"""Rich tables for eval and report: the rows of imood_cli/report/tables.py, rendered for the terminal."""

from __future__ import annotations

import sys

from rich.markup import escape
from rich.table import Table as RichTable

from imood_cli.report.tables import Table, cell_text


def _styled(column, value) -> str:
    text = escape(cell_text(column, value))
    if value is None:
        return f"[dim]{text}[/]"
    if column.kind == "delta":
        good = (value > 0) == (column.better == "higher")
        return f"[{'green' if good else 'red'}]{text}[/]" if value else f"[dim]{text}[/]"
    if column.kind == "interval":
        return f"[dim]{text}[/]"
    return text


def rich_table(t: Table) -> RichTable:
    out = RichTable(title=t.title, title_justify="left", caption=" ".join(t.notes) or None, caption_justify="left")
    for c in t.columns:
        if c.key == "label" or c.kind == "text":  # names wrap, so that numbers and set names never break
            out.add_column(escape(c.heading), justify="left", overflow="fold")
        else:
            out.add_column(escape(c.heading), justify="right", no_wrap=True, min_width=len(c.heading))
    for row, stale in zip(t.rows, t.stale):
        out.add_row(*[_styled(c, v) for c, v in zip(t.columns, row)], style="yellow" if stale else None)
    return out


def print_warning(text: str) -> None:
    """One line on stderr, never wrapped (scripts grep for it)."""
    print(f"imood: warning: {' '.join(text.split())}", file=sys.stderr)
