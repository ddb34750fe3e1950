"""Report rows as Markdown, LaTeX, JSON and CSV (for papers and scripts)."""

from __future__ import annotations

import csv
import io
import json

from imood_cli.report.results import Entry

KEYS = ("auroc", "aupr_in", "aupr_out", "fpr95")
HEADERS = ("AUROC", "AUPR-in", "AUPR-out", "FPR95")


def rows(entries: list[Entry]) -> list[dict]:
    out = []
    for e in entries:
        for set_name, m in e.result["ood"].items():
            row = {"run": e.run, "metric": e.metric, "ood_set": set_name, **{k: m[k] for k in KEYS}}
            idr = e.result.get("id", {})
            row.update({"id_acc": idr.get("acc"), "many": idr.get("many"), "medium": idr.get("medium"), "few": idr.get("few")})
            out.append(row)
    return out


def _summary(entries: list[Entry]) -> list[list[str]]:
    body = []
    for e in entries:
        m = e.result["ood"]["mean"]
        idr = e.result.get("id", {})
        vals = [m[k] for k in KEYS] + [idr.get("acc"), idr.get("many"), idr.get("medium"), idr.get("few")]
        body.append([e.label] + ["–" if v is None else f"{100 * v:.2f}" for v in vals])
    return body


SUMMARY_HEAD = ["run · detector", *HEADERS, "ID acc", "many", "medium", "few"]


def markdown(entries: list[Entry]) -> str:
    lines = ["| " + " | ".join(SUMMARY_HEAD) + " |", "|" + "---|" * len(SUMMARY_HEAD)]
    lines += ["| " + " | ".join(r) + " |" for r in _summary(entries)]
    lines.append("")
    lines.append("Mean over OOD sets, in %. FPR95: ID fraction at the first threshold with OOD recall >= 0.95.")
    return "\n".join(lines) + "\n"


def latex(entries: list[Entry]) -> str:
    esc = lambda s: s.replace("_", r"\_").replace("·", r"$\cdot$").replace("%", r"\%")
    out = [r"\begin{tabular}{l" + "r" * (len(SUMMARY_HEAD) - 1) + "}", r"\toprule",
           " & ".join(esc(h) for h in SUMMARY_HEAD) + r" \\", r"\midrule"]
    out += [" & ".join(esc(c) for c in r) + r" \\" for r in _summary(entries)]
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def as_json(entries: list[Entry]) -> str:
    return json.dumps([{"run": e.run, "metric": e.metric, **e.result} for e in entries], indent=2)


def as_csv(entries: list[Entry]) -> str:
    buf = io.StringIO()
    data = rows(entries)
    w = csv.DictWriter(buf, fieldnames=list(data[0]))
    w.writeheader()
    w.writerows(data)
    return buf.getvalue()
