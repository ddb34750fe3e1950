"""Rich tables for eval and report: the rows of imood_cli/report/tables.py, rendered for the terminal."""

from __future__ import annotations

import sys

from rich.markup import escape
from rich.table import Table as RichTable

from imood_cli.cli.common import console
from imood_cli.report.tables import Column, Table, best_cells, cell_text, is_marked, marked_text


def _bold(text: str) -> str:
    return f"[bold]{text}[/]"


def _styled(column, value, mark: bool | list[bool] = False) -> str:
    """A cell as rich markup: missing values dim, gains green or red, each column's best value bold."""
    text = marked_text(column, value, mark, escape, _bold)
    if value is None:
        return f"[dim]{text}[/]"
    if column.kind == "delta":
        good = (value > 0) == (column.better == "higher")
        return f"[{'green' if good else 'red'}]{text}[/]" if value else f"[dim]{text}[/]"
    if column.kind == "interval":
        return f"[dim]{text}[/]"
    return text


LABEL_MIN_WIDTH = 16  # a name column narrower than this folds its names; it never collapses to nothing
CELL_EDGES = 3  # one space either side of a cell and the border to its right


def _is_name(c: Column) -> bool:
    return c.key == "label" or c.kind == "text"


def _widest(t: Table) -> list[int]:
    return [max((len(cell_text(c, row[i])) for row in t.rows), default=0) for i, c in enumerate(t.columns)]


def _min_widths(t: Table) -> list[int]:
    """The narrowest each column may get: a name column LABEL_MIN_WIDTH (or its widest name when shorter);
    a number column its widest value and the longest word of its heading (headings wrap between words)."""
    return [min(w, LABEL_MIN_WIDTH) if _is_name(c) else max(max(len(x) for x in c.heading.split()), w)
            for c, w in zip(t.columns, _widest(t))]


def rich_table(t: Table) -> RichTable:
    """Numbers are never cut or wrapped; headings wrap between words when the terminal is too narrow for
    them on one line."""
    out = RichTable(title=escape(t.title), title_justify="left", caption=escape(" ".join(t.notes)) or None,
                    caption_justify="left")
    for c, widest, narrowest in zip(t.columns, _widest(t), _min_widths(t)):
        if _is_name(c):  # long names fold, so that numbers never break; short ones stay whole
            out.add_column(escape(c.heading), justify="left", overflow="fold", min_width=narrowest,
                           no_wrap=widest <= LABEL_MIN_WIDTH)
        else:
            out.add_column(escape(c.heading), justify="right", overflow="fold", min_width=narrowest)
    best = best_cells(t)
    for i, (row, stale) in enumerate(zip(t.rows, t.stale)):
        out.add_row(*[_styled(c, v, is_marked(best, c, i)) for c, v in zip(t.columns, row)],
                    style="yellow" if stale else None)
    return out


def split_columns(t: Table, width: int) -> list[Table]:
    """`t` itself when its columns fit `width` characters at their narrowest, else parts that do: each
    repeats the name columns, keeps a 95% CI beside its value, and says which part it is; the notes
    follow the last part."""
    widths = _min_widths(t)
    names = [i for i, c in enumerate(t.columns) if _is_name(c)]
    groups: list[list[int]] = []
    for i, c in enumerate(t.columns):
        if i in names:
            continue
        if c.kind == "interval" and groups:
            groups[-1].append(i)
        else:
            groups.append([i])
    fixed = 1 + sum(widths[i] + CELL_EDGES for i in names)
    parts: list[list[int]] = []
    used = width  # forces a first part
    for g in groups:
        cost = sum(widths[i] + CELL_EDGES for i in g)
        if used + cost > width and (not parts or parts[-1]):
            parts.append([])
            used = fixed
        parts[-1].extend(g)
        used += cost
    if len(parts) <= 1:
        return [t]
    out = []
    for n, part in enumerate(parts, 1):
        keep = sorted(names + part)
        sub = Table(t.key, f"{t.title} [part {n} of {len(parts)}]", [t.columns[i] for i in keep],
                    notes=t.notes if n == len(parts) else [], mark_best=t.mark_best)
        for row, stale in zip(t.rows, t.stale):
            sub.add([row[i] for i in keep], stale)
        out.append(sub)
    return out


def print_table(t: Table) -> None:
    """One table on standard output at the terminal's width (in parts when it cannot fit)."""
    if t.preface:
        console.print()
    for line in t.preface:
        console.print(escape(line), highlight=False)
    for part in split_columns(t, console.width):
        console.print(rich_table(part))


def print_warning(text: str) -> None:
    """One line on stderr, never wrapped (scripts grep for it)."""
    print(f"imood: warning: {' '.join(text.split())}", file=sys.stderr)
