"""Every table of `imood eval` and `imood report`, built once as plain rows.

The terminal, HTML, Markdown, LaTeX, JSON and CSV renderers only format these rows, so no two
formats can show different numbers. `records` holds every number a report shows, one row per
(run, detector, OOD set or "mean"); the report tables are views of it, and the CSV is it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imood_cli.engine.metrics.ranking import FPR95_CONVENTION
from imood_cli.report.results import Entry, Report, base_of

GROUPS = ("many", "medium", "few")
METRICS = (("auroc", "AUROC", "higher"), ("aupr_in", "AUPR-in", "higher"), ("aupr_out", "AUPR-out", "higher"),
           ("fpr95", "FPR95", "lower"))
ARROW = {"higher": "↑", "lower": "↓"}
MISSING = "–"
GROUP_PARTS = (("id_flagged_as_ood", "id_flagged"), ("ood_accepted_as", "ood_accepted"))


@dataclass(frozen=True)
class Column:
    """`kind` says how a value is shown: text; pct (a fraction, shown in %); delta (a difference of
    fractions, in points); pair (two fractions: AUROC / FPR95); interval (a 95% interval of a fraction)."""

    key: str
    title: str
    kind: str = "pct"
    better: str | None = None  # "higher" or "lower" is better

    @property
    def heading(self) -> str:
        return self.title + ARROW.get(self.better or "", "")


@dataclass
class Table:
    key: str
    title: str
    columns: list[Column]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stale: list[bool] = field(default_factory=list)  # rows whose scores come from an older model

    def add(self, row: list[Any], stale: bool = False) -> None:
        self.rows.append(row)
        self.stale.append(stale)


def cell_text(column: Column, value: Any) -> str:
    """How every renderer but JSON and CSV writes a value."""
    if value is None:
        return MISSING
    if column.kind == "text":
        return str(value)
    if column.kind == "pct":
        return f"{100 * value:.2f}"
    if column.kind == "delta":
        return f"{100 * value:+.2f}"
    if column.kind == "pair":
        return " / ".join(MISSING if v is None else f"{100 * v:.2f}" for v in value)
    if column.kind == "interval":
        return f"{100 * value[0]:.1f}–{100 * value[1]:.1f}"
    raise ValueError(f"unknown column kind {column.kind!r}")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


# ---- the records behind every report table
RECORD_COLUMNS = (
    "run", "metric", "dataset", "id_set", "ood_set", "stale", "auroc", "aupr_in", "aupr_out", "fpr95", "threshold",
    *(f"gain_{k}" for k, _, _ in METRICS), "id_acc", *GROUPS,
    *(f"{short}_{g}" for _, short in GROUP_PARTS for g in GROUPS), "mean_over",
)


def _gain(entry: Entry, base: Entry | None, key: str, sets: list[str]) -> float | None:
    """ada_<m> minus <m> of the same run over the given sets both cover (like with like)."""
    if base is None:
        return None
    common = [s for s in sets if s in base.result["ood"]]
    if not common:
        return None
    return sum(entry.result["ood"][s][key] - base.result["ood"][s][key] for s in common) / len(common)


def records(report: Report) -> list[dict[str, Any]]:
    """One row per (run, detector, OOD set or 'mean') with every number the report tables show."""
    out = []
    for e in report.entries:
        base = base_of(e, report.entries)
        idr = e.result.get("id", {})
        groups = e.result.get("groups", {})
        run = e.run or report.runs[0][0]
        for s in [*e.sets, "mean"]:
            m = e.result["ood"][s]
            over = e.sets if s == "mean" else [s]
            rec: dict[str, Any] = {"run": run, "metric": e.metric, "dataset": e.scores.meta.get("dataset"),
                                   "id_set": e.scores.meta.get("id_set"), "ood_set": s, "stale": e.stale,
                                   "label": e.label, "entry": e}
            rec.update({k: m[k] for k, _, _ in METRICS})
            rec["threshold"] = m.get("threshold")
            rec.update({f"gain_{k}": _gain(e, base, k, over) for k, _, _ in METRICS})
            rec["id_acc"] = idr.get("acc")
            rec.update({g: idr.get(g) for g in GROUPS})
            for part, short in GROUP_PARTS:
                for g in GROUPS:
                    rec[f"{short}_{g}"] = _mean([groups[x][part].get(g) for x in over if x in groups])
            rec["mean_over"] = ", ".join(over)
            out.append(rec)
    return out


def _label_column(title: str = "run · detector") -> Column:
    return Column("label", title, "text")


def _metric_columns(prefix: str = "", kind: str = "pct", title: str = "{}") -> list[Column]:
    return [Column(prefix + k, title.format(name), kind, better) for k, name, better in METRICS]


def report_tables(report: Report) -> list[Table]:
    """The six tables of a report, in the order every format shows them."""
    recs = records(report)
    means = [r for r in recs if r["ood_set"] == "mean"]
    differ = report.sets_differ

    id_differ = "dataset" in report.mismatches or "id_set" in report.mismatches
    extra = ([Column("id_data", "ID data", "text")] if id_differ else []) + (
        [Column("mean_over", "mean over", "text")] if differ else [])
    summary = Table("summary", "OOD detection, mean over OOD sets (%)", [_label_column(), *_metric_columns(), *extra])
    for r in means:
        r["id_data"] = " / ".join(str(r[k]) for k in ("dataset", "id_set") if r[k] is not None) or None
        summary.add([r["label"], *[r[k] for k, _, _ in METRICS], *[r[c.key] for c in extra]], r["stale"])
    if differ:
        summary.notes.append(_sentence(report.mismatches.get("ood_sets", "the rows cover different OOD sets")) +
                             " Each mean is over the sets in its 'mean over' column: compare only rows that list "
                             "the same sets.")
    else:
        summary.notes.append(f"Unweighted mean over the {len(report.sets)} OOD sets: {', '.join(report.sets)}.")
    summary.notes.append(f"OOD is the positive class. FPR95: {FPR95_CONVENTION}.")

    gains = Table("gains", "Gain of the ada_ form over its base (points)", [_label_column(),
                  *_metric_columns("gain_", "delta", "Δ{}")])
    for r in means:
        if r["metric"].startswith("ada_") and base_of(r["entry"], report.entries) is not None:
            gains.add([r["label"], *[r[f"gain_{k}"] for k, _, _ in METRICS]], r["stale"])
    gains.notes.append("The ada_ form minus its base detector in the same run, averaged over the OOD sets both "
                       "were scored on; a positive ΔFPR95 is worse." if gains.rows else
                       "No ada_ detector was scored together with its base detector.")

    id_table = Table("id", "ID classification (%)", [_label_column("model"), Column("id_acc", "accuracy"),
                     *[Column(g, f"{g}-shot") for g in GROUPS]])
    seen = set()
    for r in means:
        e = r["entry"]
        if r["id_acc"] is None or e.model in seen:
            continue
        seen.add(e.model)
        name = (e.run or report.runs[0][0]) + (" (stale)" if e.stale else "")
        id_table.add([name, r["id_acc"], *[r[g] for g in GROUPS]], e.stale)
    id_table.notes.append("One row per model: accuracy does not depend on the detector. Many/medium/few: per-class "
                          "accuracy averaged within each shot group of the training counts." if id_table.rows else
                          "Not available: the score files hold no ID labels, predictions and class counts.")

    per_set = Table("per_set", "Per OOD set: AUROC / FPR95 (%)",
                    [_label_column(), *[Column(s, s, "pair") for s in report.sets]])
    for r in means:
        e = r["entry"]
        cells = [(e.result["ood"][s]["auroc"], e.result["ood"][s]["fpr95"]) if s in e.result["ood"] else None
                 for s in report.sets]
        per_set.add([r["label"], *cells], r["stale"])
    if differ:
        per_set.notes.append(f"{MISSING}: the row was not scored on this set.")

    shot = []
    for short, title, note in (
        ("id_flagged", "ID images flagged as OOD at the FPR95 threshold, by shot group (%)",
         "Fraction of the ID test images of each shot group scored at or above the FPR95 threshold of each OOD "
         "set, averaged over the row's OOD sets: the tail classes the detector gives up."),
        ("ood_accepted", "OOD images accepted as ID, by the shot group of their predicted class (%)",
         "Fraction of each OOD set scored below its FPR95 threshold and predicted as a class of the group, "
         "averaged over the row's OOD sets; the three add up to the OOD images that get through (about 5%)."),
    ):
        t = Table(short, title, [_label_column(), *[Column(f"{short}_{g}", g, better="lower") for g in GROUPS]])
        for r in means:
            if r["id_acc"] is not None:
                t.add([r["label"], *[r[f"{short}_{g}"] for g in GROUPS]], r["stale"])
        t.notes.append(note if t.rows else "Not available: the score files hold no ID labels, predictions and "
                       "class counts.")
        if short == "ood_accepted" and t.rows and all(v is None for row in t.rows for v in row[1:]):
            t.notes.append("The score files hold no predictions for the OOD images (the ood.SET.pred tensors).")
        shot.append(t)
    summary.notes += [_sentence(text) for kind, text in report.mismatches.items() if kind != "ood_sets"]
    if any(e.stale for e in report.entries):
        summary.notes.append("(stale): scores computed from an older model than the run's current model.safetensors, "
                             "shown because of --allow-stale.")
    return [summary, gains, id_table, per_set, *shot]


def eval_tables(name: str, result: dict) -> list[Table]:
    """The tables `imood eval` prints for one score file."""
    with_ci = any("ci95" in m for m in result["ood"].values())
    cols = [Column("label", "OOD set", "text")]
    for k, title, better in METRICS:
        cols.append(Column(k, title, "pct", better))
        if with_ci:
            cols.append(Column(f"{k}_ci95", "95% CI", "interval"))
    ood = Table("ood", f"{name}: OOD detection (OOD = positive; %)", cols)
    for s, m in result["ood"].items():
        row = [s]
        for k, _, _ in METRICS:
            row.append(m[k])
            if with_ci:
                row.append(m.get("ci95", {}).get(k))
        ood.add(row)
    ood.notes.append(f"FPR95: {result['fpr95_convention']}.")
    out = [ood]
    if "id" in result:
        idr = result["id"]
        acc = Table("id", f"{name}: ID classification (%)", [Column("label", "ID set", "text"),
                    Column("acc", "accuracy"), *[Column(g, f"{g}-shot") for g in GROUPS]])
        acc.add([result.get("id_set") or result.get("dataset") or "ID test set", idr["acc"],
                 *[idr[g] for g in GROUPS]])
        out.append(acc)
        grp = Table("groups", f"{name}: errors at the FPR95 threshold, by shot group (%)",
                    [Column("label", "OOD set", "text"),
                     *[Column(f"id_flagged_{g}", f"ID {g} flagged OOD", better="lower") for g in GROUPS],
                     *[Column(f"ood_accepted_{g}", f"OOD taken as {g}", better="lower") for g in GROUPS]])
        for s, g in result.get("groups", {}).items():
            grp.add([s, *[g[part].get(x) for part, _ in GROUP_PARTS for x in GROUPS]])
        out.append(grp)
    return out
