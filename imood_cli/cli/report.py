"""`imood report`: one run or several side by side, in the terminal and as report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from imood_cli.cli.common import abort_on_interrupt, console, split_list
from imood_cli.errors import ImoodError, unknown_name

FORMATS = ("terminal", "md", "latex", "json", "csv")
SORTS = ("auroc", "fpr95", "name")  # report/tables.py SORTS, here so that --help needs no numpy


@abort_on_interrupt
def report(
    runs: list[Path] = typer.Argument(..., metavar="RUN", show_default=False,
                                      help="Run folders (or scores folders, or score files); several are shown side "
                                           "by side, in the order given."),
    metric: Optional[str] = typer.Option(None, "--ood-metric", "-m", "--metric", metavar="NAMES",
                                         help="Detectors to include, comma-separated, in this order. [default: all "
                                              "scored, each base detector then its ada_ form]"),
    fmt: str = typer.Option("terminal", "--format", "-f", metavar="FORMAT",
                            help="terminal, md, latex, json or csv; each carries every table."),
    html_path: Optional[Path] = typer.Option(None, "--html", metavar="FILE",
                                             help="Where to write the page with plots. [default: <first run>/"
                                                  "report.html]"),
    no_html: bool = typer.Option(False, "--no-html", help="Do not write report.html."),
    plots: int = typer.Option(4, "--plots", metavar="N", help="Distinct detectors of each run drawn in the figures: "
                              "the ada_ pair with the largest gain, then the best mean AUROC with its pair; 0 "
                              "draws every one. Identical scores are drawn once. The tables hold every row."),
    compare: Optional[list[str]] = typer.Option(None, "--compare", metavar="A,B",
                                                help="Paired differences B − A over seeds of the run folders named "
                                                     "A-seed<N> and B-seed<N> (a sweep's), per detector both have, "
                                                     "with intervals and p-values (repeatable)."),
    curves: Optional[str] = typer.Option(None, "--curves", metavar="NAMES",
                                         help="Detectors to draw in the figures, comma-separated, in this order "
                                              "(instead of --plots' choice)."),
    log_fpr: bool = typer.Option(True, "--log-fpr/--linear-fpr", help="The ROC curves' FPR axis: log scale (the "
                                 "low-FPR region and each FPR95 stay apart) or linear."),
    figures_dir: Optional[Path] = typer.Option(None, "--figures", metavar="DIR",
                                               help="Also write each figure as DIR/<name>.svg and .pdf (for a "
                                                    "paper); only figures imood wrote are replaced."),
    sort: Optional[str] = typer.Option(None, "--sort", metavar="KEY",
                                       help="Order the rows of every table and format: auroc (highest mean "
                                            "first), fpr95 (lowest first) or name. [default: argument order]"),
    bootstrap: int = typer.Option(0, "--bootstrap", metavar="N", help="Bootstrap rounds for 95% intervals in the "
                                  "JSON output (0: none)."),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help="Report rows scored on different OOD sets or "
                                        "ID data side by side, marked, instead of refusing."),
    allow_stale: bool = typer.Option(False, "--allow-stale", help="Report scores computed from an older model than "
                                     "the run's model.safetensors, marked (stale), instead of refusing them."),
    published: Optional[str] = typer.Option(None, "--published", metavar="TABLE[:ROW]",
                                            help="Compare with the ImOOD paper's table (e.g. table1-cifar10, or "
                                                 "table1-cifar10:\"PASCL + ImOOD\" to name the row): each run on the "
                                                 "detector the paper reports, every difference of protocol listed, "
                                                 "Δ only where OOD sets, ID data and detector match. A run is matched "
                                                 "by its name or its recorded training when no row is named."),
) -> None:
    """Every table (mean metrics, ada_ gains, ID accuracy, per OOD set, shot-group errors) and plots."""
    from imood_cli.cli.tables import print_table, print_warning
    from imood_cli.fs.atomic import atomic_write_text
    from imood_cli.report import formats
    from imood_cli.report.results import collect, source_root
    from imood_cli.report.tables import report_tables, sort_report

    if fmt not in FORMATS:
        raise unknown_name("report format", fmt, FORMATS)
    if sort is not None and sort not in SORTS:
        raise unknown_name("--sort key", sort, SORTS)
    if bootstrap < 0:
        raise ImoodError("--bootstrap must be >= 0")
    if published:
        from imood_cli.report import published as paper

        paper.parse_spec(published)  # a misspelt table or row fails before any work
    target = None
    if plots < 0:
        raise ImoodError(f"--plots must be >= 0, got {plots}")
    if not no_html:
        from imood_cli.report.html import check_replaceable

        target = html_path or source_root(Path(runs[0])) / "report.html"
        check_replaceable(target)  # before minutes of work
    if figures_dir is not None:
        from imood_cli.report.figures import check_folder

        check_folder(figures_dir)
    metrics = list(dict.fromkeys(split_list(metric))) or None
    rep = collect(runs, metrics, bootstrap, allow_stale=allow_stale, allow_mismatch=allow_mismatch)
    for w in rep.warnings:
        print_warning(w)
    curve_names = list(dict.fromkeys(split_list(curves))) or None
    if curve_names:
        from imood_cli.report.selection import check_curves

        check_curves(rep, curve_names)
    rep = sort_report(rep, sort)
    tables = report_tables(rep, sort)
    if published:
        tables.insert(1, paper.for_report(published, rep))  # beside the main table
    if compare:
        from imood_cli.report.sweep import report_pairs

        pairs = []
        for item in compare:
            names = split_list(item)
            if len(names) != 2:
                raise ImoodError(f"--compare takes two run names, A,B: got {item!r}")
            pairs.append((names[0], names[1]))
        tables += report_pairs(rep, pairs)
    if fmt == "terminal":
        for t in tables:
            print_table(t)
    elif fmt == "csv":  # the records behind the report's own tables
        print(formats.as_csv(rep), end="")
    else:
        render = {"md": formats.markdown, "latex": formats.latex, "json": formats.as_json}[fmt]
        print(render(rep, tables), end="")
    if target is None and figures_dir is None:
        return
    from imood_cli.report import plots as figures

    made = figures.build(rep, plots, curve_names, log_fpr, sort)
    if figures_dir is not None:  # a file of another author there stops the command before anything is written
        from imood_cli.report.figures import plan

        plan(figures_dir, [p.key for p in made[1]])
    if target is not None:
        from imood_cli.report.html import render as render_html

        title = "imood report: " + ", ".join(name for name, _ in rep.runs)
        atomic_write_text(target, render_html(rep, title, tables, figures=made))
        if fmt == "terminal":
            console.print(f"report with plots: {target}")
    if figures_dir is not None:
        from imood_cli.report.figures import write

        written = write(figures_dir, [(p.key, p.figure) for p in made[1]], figures.encode)
        if fmt == "terminal":
            console.print(f"figures: {len(written)} files (SVG and PDF) in {figures_dir}")
