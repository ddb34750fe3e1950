"""Every table of `imood eval` and `imood report`, built once as plain rows.

The terminal, HTML, Markdown, LaTeX, JSON and CSV renderers only format these rows, so no two
formats can show different numbers. `records` holds every number a report shows, one row per
(run, detector, OOD set or "mean"); the report tables are views of it, and the CSV is it.
"""

from __future__ import annotations

import dataclasses
import math
import re
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
    better: str | None = None  # "higher" or "lower" is better (an arrow in the heading)
    best: str | None = None  # which value the table marks as best when it differs from `better`; "none": no mark

    @property
    def heading(self) -> str:
        return self.title + ARROW.get(self.better or "", "")

    @property
    def ranking(self) -> str | None:
        """"higher" or "lower": the direction in which this column's best value is marked (None: never)."""
        return None if self.best == "none" else self.best or self.better


@dataclass
class Table:
    key: str
    title: str
    columns: list[Column]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    preface: list[str] = field(default_factory=list)  # read before the rows (what the numbers below are not)
    stale: list[bool] = field(default_factory=list)  # rows whose scores come from an older model
    mark_best: bool = False  # rows are alternatives to compare: mark each ranked column's best value

    def add(self, row: list[Any], stale: bool = False) -> None:
        self.rows.append(row)
        self.stale.append(stale)

    def sort_rows(self, key) -> None:
        """Reorder the rows (and their stale marks) by key(row); sorted() is stable, so ties keep their order."""
        order = sorted(range(len(self.rows)), key=lambda i: key(self.rows[i]))
        self.rows = [self.rows[i] for i in order]
        self.stale = [self.stale[i] for i in order]


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


PAIR_PARTS = (("auroc", "higher"), ("fpr95", "lower"))  # a pair cell is (AUROC, FPR95)


def _part_text(kind: str, value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{100 * value:+.2f}" if kind == "delta" else f"{100 * value:.2f}"


def _best_of(values: list[float | None], direction: str, kind: str) -> list[int]:
    """Indices of the values that show as the best one (ties: every one); none when fewer than two values
    compete or when every value shows the same."""
    present = [(i, v) for i, v in enumerate(values) if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(present) < 2:
        return []
    top = _part_text(kind, (max if direction == "higher" else min)(v for _, v in present))
    rows = [i for i, v in present if _part_text(kind, v) == top]
    return [] if len(rows) == len(present) else rows


def best_cells(t: Table) -> dict[str, list]:
    """Per ranked column of a table that marks its best values: the indices of the rows holding the best
    value as shown (ties all marked), or for an AUROC / FPR95 pair column one such list per part. Columns
    where nothing stands out (one value, or all equal) are left out; CSV and JSON values are never marked
    (JSON carries this as the table's `best`)."""
    if not t.mark_best:
        return {}
    out: dict[str, list] = {}
    for i, c in enumerate(t.columns):
        values = [row[i] for row in t.rows]
        if c.kind == "pair" and c.best != "none":
            parts = [_best_of([None if v is None else v[p] for v in values], direction, "pct")
                     for p, (_, direction) in enumerate(PAIR_PARTS)]
            if any(parts):
                out[c.key] = parts
        elif c.kind in ("pct", "delta") and c.ranking:
            rows = _best_of(values, c.ranking, c.kind)
            if rows:
                out[c.key] = rows
    return out


def is_marked(best: dict[str, list], column: Column, row: int) -> bool | list[bool]:
    """Whether the cell (a pair: each of its two parts) holds its column's best value."""
    marked = best.get(column.key)
    if column.kind == "pair":
        return [bool(marked) and row in marked[p] for p in range(2)]
    return bool(marked) and row in marked


def marked_text(column: Column, value: Any, mark: bool | list[bool], text=lambda s: s, bold=lambda s: s) -> str:
    """cell_text with the best parts marked: `text` makes a piece of plain text safe for the format (escaping),
    `bold` marks an escaped piece."""
    if column.kind == "pair" and value is not None:
        marks = mark if isinstance(mark, list) else [bool(mark)] * 2
        parts = [text(_part_text("pct", v)) for v in value]
        return text(" / ").join(bold(p) if m else p for p, m in zip(parts, marks))
    shown = text(cell_text(column, value))
    return bold(shown) if mark is True and value is not None else shown


# ---- --sort: the order of rows
SORTS = ("auroc", "fpr95", "name")


def natural(name: str) -> list[tuple[int, Any]]:
    """A name as a sort key: case-insensitive, numbers by value (seed2 before seed10)."""
    return [(0, int(t)) if t.isdigit() else (1, t.casefold()) for t in re.split(r"(\d+)", name) if t]


def sort_key(by: str, name: str, value: float | None = None) -> tuple:
    """The key of a row under --sort BY: auroc highest first, fpr95 lowest first, name in natural order; rows
    without the value come last."""
    if by == "name":
        return (0, natural(name))
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return (1, 0.0)
    return (0, -value if by == "auroc" else value)


def sort_report(report: Report, by: str | None) -> Report:
    """The report with its rows (every table, the records, the figures' order) in --sort order: by the row's
    mean AUROC or FPR95 over its OOD sets, or by name; without `by`, argument order."""
    if by is None:
        return report
    if by not in SORTS:
        raise ValueError(f"unknown sort {by!r}")
    key = (lambda e: sort_key(by, e.label)) if by == "name" else (
        lambda e: sort_key(by, e.label, e.result["ood"]["mean"].get(by)))
    return dataclasses.replace(report, entries=sorted(report.entries, key=key))


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


# ---- the records behind every report table
RECORD_COLUMNS = (
    "run", "metric", "dataset", "id_set", "ood_set", "stale", "auroc", "aupr_in", "aupr_out", "fpr95", "threshold",
    *(f"gain_{k}" for k, _, _ in METRICS), "id_acc", *GROUPS,
    *(f"{short}_{g}" for _, short in GROUP_PARTS for g in GROUPS), "mean_over", "alias_of",
)


def _gain(entry: Entry, base: Entry | None, key: str, sets: list[str]) -> float | None:
    """ada_<m> minus <m> of the same run over the given sets both cover (like with like)."""
    if base is None:
        return None
    common = [s for s in sets if s in base.result["ood"]]
    if not common:
        return None
    return sum(entry.result["ood"][s][key] - base.result["ood"][s][key] for s in common) / len(common)


def records(report: Report, aliases: bool = False) -> list[dict[str, Any]]:
    """One row per (run, detector, OOD set or 'mean') with every number the report tables show; a detector
    whose scores are another's of the same run (oe's are msp's) has its own rows with `aliases`, `alias_of`
    naming it."""
    out = []
    for e in report.entries:
        first = len(out)
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
            rec["alias_of"] = None
            out.append(rec)
        mine = out[first:]
        for alias in e.aliases if aliases else ():
            out += [{**rec, "metric": alias, "alias_of": e.metric} for rec in mine]
    return out


def _label_column(title: str = "run · detector") -> Column:
    return Column("label", title, "text")


def _metric_columns(prefix: str = "", kind: str = "pct", title: str = "{}", best: str | None = None) -> list[Column]:
    return [Column(prefix + k, title.format(name), kind, better, best) for k, name, better in METRICS]


def report_tables(report: Report, sort: str | None = None) -> list[Table]:
    """The six tables of a report, in the order every format shows them. The rows follow the report's entries
    (see sort_report); with `sort` auroc or fpr95 the gains table is ordered by its own ΔAUROC or ΔFPR95."""
    recs = records(report)
    means = [r for r in recs if r["ood_set"] == "mean"]
    differ = report.sets_differ

    id_differ = "dataset" in report.mismatches or "id_set" in report.mismatches
    extra = ([Column("id_data", "ID data", "text")] if id_differ else []) + (
        [Column("mean_over", "mean over", "text")] if differ else [])
    # means over different OOD sets are not compared: no best mark then (the per-set table still has them)
    summary = Table("summary", "OOD detection, mean over OOD sets (%)",
                    [_label_column(), *_metric_columns(best="none" if differ else None), *extra], mark_best=True)
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
                  *_metric_columns("gain_", "delta", "Δ{}")], mark_best=True)
    for r in means:
        if r["metric"].startswith("ada_") and base_of(r["entry"], report.entries) is not None:
            gains.add([r["label"], *[r[f"gain_{k}"] for k, _, _ in METRICS]], r["stale"])
    if sort in ("auroc", "fpr95"):
        col = 1 + [k for k, _, _ in METRICS].index(sort)
        gains.sort_rows(lambda row: sort_key(sort, row[0], row[col]))
    gains.notes.append("The ada_ form minus its base detector in the same run, averaged over the OOD sets both "
                       "were scored on; a positive ΔFPR95 is worse." if gains.rows else
                       "No ada_ detector was scored together with its base detector.")

    id_table = Table("id", "ID classification (%)", [_label_column("model"),
                     Column("id_acc", "accuracy", best="higher"), *[Column(g, f"{g}-shot", best="higher")
                                                                    for g in GROUPS]], mark_best=True)
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
                    [_label_column(), *[Column(s, s, "pair") for s in report.sets]], mark_best=True)
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
        t = Table(short, title, [_label_column(), *[Column(f"{short}_{g}", g, better="lower") for g in GROUPS]],
                  mark_best=True)
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


def eval_tables(name: str, result: dict, sort: str | None = None) -> list[Table]:
    """The tables `imood eval` prints for one score file; with `sort` the OOD sets are in that order (the mean
    stays last). Its rows are OOD sets, not alternatives: no best value is marked."""
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
    if sort is not None:
        ood.sort_rows(lambda row: (row[0] == "mean", sort_key(sort, row[0], result["ood"][row[0]].get(sort))))
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
        if sort is not None:
            grp.sort_rows(lambda row: sort_key(sort, row[0], result["ood"].get(row[0], {}).get(sort)))
        out.append(grp)
    return out


def summary_table(key: str, title: str, rows: list[tuple[str, dict]], label_title: str = "detector",
                  sort: str | None = None) -> Table:
    """One row per score file (its label and `imood eval --json` document): the mean over its OOD sets and
    its ID accuracy, best values marked (the means only when every row covers the same OOD sets); `imood score`
    and a several-file `imood eval` print it."""
    sets = {tuple(sorted(s for s in result["ood"] if s != "mean")) for _, result in rows}
    table = Table(key, title, [Column("label", label_title, "text"),
                               *_metric_columns(best=None if len(sets) <= 1 else "none"),
                               Column("id_acc", "ID acc", best="higher")], mark_best=True)
    if len(sets) > 1:
        table.notes.append("The rows cover different OOD sets: their means are not compared.")
    for label, result in rows:
        m = result["ood"]["mean"]
        table.add([label, *[m.get(k) for k, _, _ in METRICS], result.get("id", {}).get("acc")],
                  bool(result.get("stale")))
    if sort is not None:
        col = {"auroc": 1, "fpr95": 4, "name": 0}[sort]
        table.sort_rows(lambda row: sort_key(sort, row[0], row[col]))
    return table
