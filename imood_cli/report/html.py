"""report.html: one self-contained page (tables + PNG plots embedded as data URIs)."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone

from imood_cli import __version__
from imood_cli.report import plots
from imood_cli.report.formats import SUMMARY_HEAD, _summary
from imood_cli.report.results import Entry

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}img{max-width:100%}.note{color:#666;font-size:13px}
"""


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(head: list[str], body: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{h}</tr>{b}</table>"


def render(entries: list[Entry], title: str = "imood report") -> str:
    sets = [s for s in entries[0].result["ood"] if s != "mean"]
    per_set = [[e.label] + [f"{100 * e.result['ood'][s]['auroc']:.2f} / {100 * e.result['ood'][s]['fpr95']:.2f}"
                            if s in e.result["ood"] else "–" for s in sets] for e in entries]
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">imood {__version__}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. OOD is the positive '
        "class; scores are higher for more OOD. FPR95: fraction of ID samples at or above the first threshold whose "
        "OOD recall is at least 0.95.</p>",
        "<h2>Summary (mean over OOD sets, %)</h2>", _table(SUMMARY_HEAD, _summary(entries)),
        "<h2>Per OOD set: AUROC / FPR95 (%)</h2>", _table(["run · detector", *sets], per_set),
        "<h2>ROC curves</h2>", _img(plots.roc_curves(entries), "ROC curves"),
        "<h2>Precision-recall curves (OOD positive)</h2>", _img(plots.pr_curves(entries), "PR curves"),
        "<h2>Per class, against its training count</h2>", _img(plots.per_class(entries), "per-class accuracy"),
        "<h2>Score distributions</h2>",
    ]
    parts += [_img(plots.score_histograms(e), f"scores of {e.label}") for e in entries]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
