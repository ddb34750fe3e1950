"""report.html: one self-contained page, every report table and the figures (PNG embedded as data URIs)."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

from imood_cli import __version__
from imood_cli.errors import ImoodError
from imood_cli.report import plots
from imood_cli.report.results import Report
from imood_cli.report.selection import Drawn
from imood_cli.report.tables import MISSING, Table, best_cells, is_marked, marked_text, report_tables

GENERATOR = "imood report"  # marks a file imood wrote, so it may be replaced; nothing else is overwritten
NAV = {"summary": "summary", "gains": "ada_ gains", "id": "ID accuracy", "per_set": "per OOD set",
       "id_flagged": "ID flagged, by shot group", "ood_accepted": "OOD accepted, by shot group"}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0;font-size:14px}td,th{border-bottom:1px solid #ddd;padding:4px 10px;
text-align:right;white-space:nowrap}td.text,th.text{text-align:left}th{background:#f4f4f4}
img{max-width:100%}.preface{color:#7a3b00;font-size:13px;margin:.2em 0}
.note{color:#555;font-size:13px;margin:.2em 0}.missing{color:#aaa}tr.stale td{color:#8a6d00}
.warn{background:#fff6dd;border-left:4px solid #e0a800;padding:.4em 1em;margin:1em 0}nav a{margin-right:1em}
.good{color:#137333}.bad{color:#b3261e}section{overflow-x:auto}td strong{font-weight:700}
figure{margin:1em 0}figcaption{color:#555;font-size:13px;margin:.3em 0}
"""


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _strong(text: str) -> str:
    return f"<strong>{text}</strong>"


def _cell(column, value, mark: bool | list[bool] = False) -> str:
    text = marked_text(column, value, mark, html.escape, _strong)
    classes = ["text"] if column.kind == "text" else []
    if value is None:
        classes.append("missing")
    elif column.kind == "delta" and value:
        classes.append("good" if (value > 0) == (column.better == "higher") else "bad")
    return f"<td class='{' '.join(classes)}'>{text}</td>" if classes else f"<td>{text}</td>"


def table_html(t: Table) -> str:
    head = "".join(f"<th class='{c.kind}'>{html.escape(c.heading)}</th>" for c in t.columns)
    best = best_cells(t)
    body = "".join(("<tr class='stale'>" if stale else "<tr>")
                   + "".join(_cell(c, v, is_marked(best, c, i)) for c, v in zip(t.columns, row)) + "</tr>"
                   for i, (row, stale) in enumerate(zip(t.rows, t.stale)))
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in t.notes)
    preface = "".join(f'<p class="preface">{html.escape(n)}</p>' for n in t.preface)
    return (f'<section id="table-{t.key}"><h2>{html.escape(t.title)}</h2>{preface}'
            f'<table data-table="{t.key}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}</section>')


SECTIONS = (("ranking", "Every detector, ranked"), ("roc", "ROC curves, one panel per OOD set"),
            ("pr", "Precision-recall curves (OOD positive), one panel per OOD set"),
            ("class", "Per class, from head to tail"), ("scores", "Score distributions, one panel per OOD set"))
NAV_PLOTS = {"ranking": "ranking", "roc": "ROC", "pr": "PR", "class": "per class", "scores": "scores"}


def render(report: Report, title: str = "imood report", tables: list[Table] | None = None,
           plots_per_run: int = 4, figures: tuple[Drawn, list[plots.Plot]] | None = None) -> str:
    """The page: every table, and the figures (`figures`: plots.build's rows and figures; by default at most
    `plots_per_run` distinct detectors per run, 0: all)."""
    tables = tables or report_tables(report)
    drawn, made = figures or plots.build(report, plots_per_run)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">imood {html.escape(__version__)}, {when} UTC. OOD is the positive class; scores are '
        f"higher for more OOD. Values in %, {MISSING} where a row has no value; the best value of each column "
        "in bold.</p>",
    ]
    if report.warnings:
        parts.append('<div class="warn">' + "".join(f"<p>{html.escape(w)}</p>" for w in report.warnings) + "</div>")
    links = [(f"table-{t.key}", NAV.get(t.key) or t.title.split(":")[0]) for t in tables] + [
        (f"plots-{key}", NAV_PLOTS[key]) for key, _ in SECTIONS]
    parts.append("<nav>" + "".join(f'<a href="#{k}">{html.escape(v)}</a>' for k, v in links) + "</nav>")
    parts += [table_html(t) for t in tables]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in drawn.notes]
    for key, heading in SECTIONS:
        mine = [p for p in made if p.section == key]
        parts.append(f'<section id="plots-{key}"><h2>{html.escape(heading)}</h2>')
        if key == "class" and not mine:
            parts.append('<p class="note">Not available: the score files hold no ID labels, predictions and class '
                         "counts.</p>")
        if key == "ranking" and not mine:
            parts.append('<p class="note">One distinct detector: nothing to rank.</p>')
        if key == "scores":
            parts.append(f'<p class="note">Each panel spans the {plots.HIST_RANGE[0]}–{plots.HIST_RANGE[1]} '
                         "percentile range of the ID and OOD scores (and the threshold); scores beyond it are counted "
                         "in the end bins. ID scores per shot group where the score file has labels.</p>")
        for p in mine:
            caption = f"<figcaption>{html.escape(p.caption)}</figcaption>" if p.caption else ""
            parts.append(f'<figure id="figure-{html.escape(p.key)}">{caption}'
                         f"{_img(plots.encode(p.figure, 'png'), p.alt or p.caption)}</figure>")
        parts.append("</section>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><meta name=\"generator\" content=\"{GENERATOR} "
            f"{html.escape(__version__)}\"><title>{html.escape(title)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


def check_replaceable(target: Path) -> None:
    """imood replaces only a report it wrote itself: never a link, a folder or another file."""
    if target.is_symlink():
        raise ImoodError(f"{target} is a symbolic link; imood does not write through it: choose another --html path")
    if not target.exists():
        return
    if target.is_dir():
        raise ImoodError(f"--html {target} is a folder: give the path of the file to write")
    with open(target, "rb") as f:
        head = f.read(4096).decode("utf-8", "replace")
    if f'content="{GENERATOR}' not in head and "<title>imood report" not in head:
        raise ImoodError(f"{target} exists and is not a report imood wrote; choose another --html path or move it")
