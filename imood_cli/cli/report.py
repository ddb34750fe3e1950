"""`imood report`: one run or several side by side, in the terminal and as report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from imood_cli.cli.common import console, split_list
from imood_cli.cli.tables import gains_table, group_tables, id_table, per_set_table, summary_table
from imood_cli.core.atomic import atomic_write_text
from imood_cli.errors import ImoodError, unknown_name
from imood_cli.report import formats
from imood_cli.report.results import collect

FORMATS = ("terminal", "md", "latex", "json", "csv")


def report(
    runs: list[Path] = typer.Argument(..., help="Run folders (or scores folders); several are shown side by side."),
    metric: Optional[str] = typer.Option(None, "--metric", "-m", help="Detectors to include, comma-separated. (default: all scored)"),
    fmt: str = typer.Option("terminal", "--format", "-f", help="terminal | md | latex | json | csv."),
    html_path: Optional[Path] = typer.Option(None, "--html", help="Where to write report.html. (default: <first run>/report.html)"),
    no_html: bool = typer.Option(False, "--no-html", help="Do not write report.html."),
    bootstrap: int = typer.Option(0, "--bootstrap", help="Bootstrap rounds for confidence intervals in JSON output."),
) -> None:
    """Tables of every detector's results, the gain of each ada_ form over its base, and plots."""
    if fmt not in FORMATS:
        raise unknown_name("report format", fmt, FORMATS)
    if bootstrap < 0:
        raise ImoodError("--bootstrap must be >= 0")
    entries = collect(runs, split_list(metric) or None, bootstrap)
    if fmt == "terminal":
        for table in (summary_table(entries), gains_table(entries), id_table(entries), per_set_table(entries),
                      *group_tables(entries)):
            if table is not None:
                console.print(table)
    else:
        text = {"md": formats.markdown, "latex": formats.latex, "json": formats.as_json, "csv": formats.as_csv}[fmt](entries)
        print(text, end="" if text.endswith("\n") else "\n")
    if not no_html:
        from imood_cli.report.html import render

        target = html_path or Path(runs[0]) / "report.html"
        title = "imood report: " + ", ".join(Path(r).name for r in runs)
        atomic_write_text(target, render(entries, title))
        if fmt == "terminal":
            console.print(f"report with plots: {target}")
