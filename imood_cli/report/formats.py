"""A report as Markdown, LaTeX, JSON and CSV (for papers and scripts): the rows of report/tables.py, formatted."""

from __future__ import annotations

import csv
import io
import json
import math

from imood_cli import __version__
from imood_cli.report.results import Report
from imood_cli.report.tables import RECORD_COLUMNS, Table, best_cells, is_marked, marked_text, records, report_tables


def _md_cell(text: str) -> str:
    for ch in "\\|$*<>`":  # a table cell stays text: no pipes, math, emphasis, HTML or code
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def _md_bold(text: str) -> str:
    return f"**{text}**"


def markdown(report: Report, tables: list[Table] | None = None) -> str:
    """One `###` section per table; the best value of each ranked column in bold."""
    lines = []
    for t in tables or report_tables(report):
        best = best_cells(t)
        lines += [f"### {t.title}", ""]
        if t.preface:
            lines += [f"{_md_cell(n)}  " for n in t.preface] + [""]
        lines.append("| " + " | ".join(_md_cell(c.heading) for c in t.columns) + " |")
        lines.append("|" + "|".join(":--" if c.kind == "text" else "--:" for c in t.columns) + "|")
        lines += ["| " + " | ".join(marked_text(c, v, is_marked(best, c, i), _md_cell, _md_bold)
                                   for c, v in zip(t.columns, row)) + " |" for i, row in enumerate(t.rows)]
        lines.append("")
        lines += [f"{_md_cell(n)}  " for n in t.notes]  # two spaces: a line break in Markdown
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                 "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "·": r"$\cdot$", "↑": r"$\uparrow$",
                 "↓": r"$\downarrow$", "Δ": r"$\Delta$", "–": "--", "≤": r"$\le$", "≥": r"$\ge$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_bold(text: str) -> str:
    return rf"\textbf{{{text}}}"


def latex(report: Report, tables: list[Table] | None = None) -> str:
    """One booktabs table per report table, with its title as the caption; best values in \\textbf."""
    out = [f"% imood {__version__} report; needs \\usepackage{{booktabs}}"]
    for t in tables or report_tables(report):
        best = best_cells(t)
        align = "".join("l" if c.kind == "text" else "r" for c in t.columns)
        out += [r"\begin{table}[ht]", r"\centering", rf"\caption{{{latex_escape(t.title)}}}"]
        if t.preface:
            out.append(r"{\footnotesize " + latex_escape(" ".join(t.preface)) + r"}\par\smallskip")
        out += [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
                " & ".join(latex_escape(c.heading) for c in t.columns) + r" \\", r"\midrule"]
        out += [" & ".join(marked_text(c, v, is_marked(best, c, i), latex_escape, _latex_bold)
                           for c, v in zip(t.columns, row)) + r" \\" for i, row in enumerate(t.rows)]
        out += [r"\bottomrule", r"\end{tabular}"]
        if t.notes:
            out.append(r"\par\smallskip{\footnotesize " + latex_escape(" ".join(t.notes)) + "}")
        out += [r"\end{table}", ""]
    return "\n".join(out)


def _finite(value):
    """JSON has no NaN or infinity: those become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _files_of(e) -> list[tuple[str, object]]:
    """A row's detector and those with identical scores (`aliases`), each with its score file."""
    return [(e.metric, e.path), *zip(e.aliases, e.alias_paths)]


def as_json(report: Report, tables: list[Table] | None = None) -> str:
    """Every table (values as fractions, null where missing; `best`: per ranked column the indices of the rows
    with its best value, a pair of such lists for an AUROC / FPR95 column), the records behind them, and each
    row's `imood eval --json` document."""
    doc = {
        "format": "imood-report", "imood_version": __version__,
        "runs": [{"name": name, "path": str(path)} for name, path in report.runs],
        "ood_sets": report.sets, "warnings": report.warnings,
        "tables": [{"key": t.key, "title": t.title,
                    "columns": [{"key": c.key, "title": c.heading, "kind": c.kind} for c in t.columns],
                    "rows": t.rows, "stale": t.stale, "best": best_cells(t), "notes": t.notes,
                    "preface": t.preface}
                   for t in tables or report_tables(report)],
        "records": [{k: r[k] for k in RECORD_COLUMNS} for r in records(report, aliases=True)],
        "entries": [{"run": e.run or report.runs[0][0], "metric": name, "score_file": str(path),
                     "stale": e.stale, "alias_of": None if name == e.metric else e.metric,
                     **{k: v for k, v in e.result.items() if k != "metric"}}
                    for e in report.entries for name, path in _files_of(e)],
    }
    return json.dumps(_finite(doc), indent=2, ensure_ascii=False) + "\n"


def as_csv(report: Report) -> str:
    """The records: one row per run, detector and OOD set (and 'mean'), every table's numbers as columns,
    fractions in [0, 1], empty where a value does not exist."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(RECORD_COLUMNS), extrasaction="ignore")
    w.writeheader()
    for r in records(report, aliases=True):
        w.writerow({k: "" if r[k] is None else r[k] for k in RECORD_COLUMNS})
    return buf.getvalue()
