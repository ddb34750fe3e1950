"""Which rows of a report the figures draw (numpy only: `imood report --no-html` never needs matplotlib).

Two rows whose score files hold identical scores (the same ID scores and the same scores for every OOD set,
compared by content) draw identical curves: `oe`, `oecc` and `opensampling` score with `msp`'s score on a
model not trained with them, `balenergy` with `energy`'s. The figures draw such rows once, under one name
that lists the others (`msp (= oe, oecc, opensampling)`), so no curve ever hides another.

By default each run's figures show the `ada_` pair with the largest gain (mean AUROC gained plus mean
FPR95 saved over the OOD sets both were scored on) and the detector with the best mean AUROC with its
pair, then the next best by AUROC, up to `--plots N` distinct detectors; `--curves NAMES` names them instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from imood_cli.errors import ImoodError
from imood_cli.report.results import Entry, Report, representative
from imood_cli.report.results import fingerprint as scores_fingerprint


def fingerprint(entry: Entry) -> str:
    """A digest of a row's scores by value: equal digests draw identical curves and histograms."""
    return scores_fingerprint(entry.scores)


def _base(metric: str) -> str:
    return metric.split(":")[0].removeprefix("ada_")


@dataclass
class Drawn:
    """The rows the figures draw, one per distinct set of scores, and what the page says about the choice."""

    report: Report  # the report restricted to the drawn rows, in drawing order
    names: dict[int, str] = field(default_factory=dict)  # id(entry) -> legend label, naming identical rows
    notes: list[str] = field(default_factory=list)  # for the page: what is drawn and why
    distinct: list[Entry] = field(default_factory=list)  # one row per distinct scores of the whole report

    def name(self, e: Entry) -> str:
        return self.names.get(id(e), e.label)


class Twins:
    """The rows of a report grouped by identical scores."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.digest = {id(e): fingerprint(e) for e in report.entries}
        self.groups: dict[str, list[Entry]] = {}
        for e in report.entries:
            self.groups.setdefault(self.digest[id(e)], []).append(e)

    def of(self, e: Entry) -> list[Entry]:
        """Every row with the scores of `e`, `e` included, in report order."""
        return self.groups[self.digest[id(e)]]

    def representative(self, e: Entry) -> Entry:
        """The row a group is drawn as: msp, energy, maxlogit or bin_disc (or its ada_ form) where the group has
        one, else the first in report order."""
        group = self.of(e)  # in report order
        names = [x.metric for x in group]
        return group[names.index(representative(names))]

    def same(self, a: Entry, b: Entry) -> bool:
        return self.digest[id(a)] == self.digest[id(b)]

    def label(self, e: Entry) -> str:
        """The row's label, naming the rows with identical scores: `msp (= oe, oecc, opensampling)`."""
        others = [x.metric if x.run == e.run else x.label for x in self.of(e) if x is not e]
        return f"{e.label} (= {', '.join(others)})" if others else e.label

    def distinct(self) -> list[Entry]:
        """One row per distinct scores, each group's representative, in report order."""
        chosen = {id(self.representative(e)) for e in self.report.entries}
        return [e for e in self.report.entries if id(e) in chosen]


def _mean(e: Entry, key: str) -> float | None:
    v = e.result.get("ood", {}).get("mean", {}).get(key)
    return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None


def gain(ada: Entry, base: Entry) -> float | None:
    """AUROC gained plus FPR95 saved by the ada_ form, mean over the OOD sets both were scored on (fractions)."""
    common = [s for s in ada.sets if s in base.sets]
    if not common:
        return None
    d_auroc = np.mean([ada.result["ood"][s]["auroc"] - base.result["ood"][s]["auroc"] for s in common])
    d_fpr = np.mean([ada.result["ood"][s]["fpr95"] - base.result["ood"][s]["fpr95"] for s in common])
    return float(d_auroc - d_fpr)


def _partner(e: Entry, rows: list[Entry]) -> Entry | None:
    """The other half of e's pair in the same run: ada_<m> for <m>, <m> for ada_<m>."""
    want = e.metric[4:] if e.metric.startswith("ada_") else f"ada_{e.metric}"
    return next((x for x in rows if x.metric == want and x.run == e.run and x.run_path == e.run_path), None)


def default_rows(rows: list[Entry], twins: Twins, per_run: int) -> tuple[list[Entry], list[str]]:
    """At most `per_run` distinct rows of one run: the ada_ pair with the largest gain, then the best mean AUROC
    with its pair, then by AUROC (0: every distinct row). Returns the rows in report order and why."""
    distinct = [e for e in rows if twins.representative(e) is e]
    if per_run <= 0 or len(distinct) <= per_run:
        return by_pair(distinct), []
    chosen: list[Entry] = []
    why = []

    def take(e: Entry | None) -> None:
        if e is not None and len(chosen) < per_run and not any(twins.same(e, x) for x in chosen):
            chosen.append(twins.representative(e))

    pairs = []
    for e in distinct:
        base = _partner(e, rows) if e.metric.startswith("ada_") else None
        if base is not None and not twins.same(e, base):
            g = gain(e, base)
            if g is not None:
                pairs.append((g, twins.representative(base), e))
    if pairs and per_run >= 2:
        g, base, ada = max(pairs, key=lambda p: p[0])
        take(base)
        take(ada)
        d = {k: (ada.result["ood"]["mean"][k] - base.result["ood"]["mean"][k]) * 100 for k in ("auroc", "fpr95")}
        why.append(f"the largest ada_ gain, {base.label} → {ada.label} (ΔAUROC {d['auroc']:+.2f}, "
                   f"ΔFPR95 {d['fpr95']:+.2f}{'; every ada_ form loses here' if g < 0 else ''})")
    ranked = sorted(distinct, key=lambda e: -(_mean(e, "auroc") if _mean(e, "auroc") is not None else -1.0))
    if ranked:
        best = ranked[0]
        why.append(f"the best mean AUROC, {best.label} ({100 * (_mean(best, 'auroc') or 0):.2f})")
    for e in ranked:
        take(e)
        partner = _partner(e, rows)
        take(twins.representative(partner) if partner is not None else None)
        if len(chosen) >= per_run:
            break
    keep = {id(e) for e in chosen}
    return by_pair([e for e in distinct if id(e) in keep]), why


def by_pair(rows: list[Entry]) -> list[Entry]:
    """Rows with each detector and its ada_ form side by side (base first), pairs in order of first appearance."""
    family: dict[str, int] = {}
    for e in rows:
        family.setdefault(e.metric.removeprefix("ada_"), len(family))
    return sorted(rows, key=lambda e: (family[e.metric.removeprefix("ada_")], e.metric.startswith("ada_")))


def check_curves(report: Report, names: list[str]) -> None:
    """Every name --curves gives is a detector of the report (checked before anything is printed)."""
    known = [m for e in report.entries for m in (e.metric, *e.aliases)]
    absent = [n for n in names if n not in known]
    if absent:
        raise ImoodError(f"--curves: no row of the report is {', '.join(map(repr, absent))} (its detectors: "
                         f"{', '.join(dict.fromkeys(known))})")


def named_rows(report: Report, names: list[str], twins: Twins) -> tuple[list[Entry], list[str]]:
    """The rows of each run named by --curves, in that order; a name with the scores of one named before it
    is drawn once."""
    check_curves(report, names)
    out, notes = [], []
    for run in dict.fromkeys(e.run for e in report.entries):
        rows = [e for e in report.entries if e.run == run]
        for n in names:
            for e in (x for x in rows if n == x.metric or n in x.aliases):
                twin = next((x for x in out if twins.same(x, e)), None)
                if twin is None:
                    out.append(e)
                elif twin is not e:
                    notes.append(f"{e.label} has the scores of {twin.label} and is drawn once")
    return out, notes


def choose(report: Report, per_run: int = 4, curves: list[str] | None = None) -> Drawn:
    """The rows the figures draw: `curves` by name, else the default choice of at most `per_run` per run."""
    twins = Twins(report)
    if curves:
        rows, notes = named_rows(report, curves, twins)
        why = []
    else:
        rows, why, notes = [], [], []
        for run in dict.fromkeys(e.run for e in report.entries):
            mine, reasons = default_rows([e for e in report.entries if e.run == run], twins, per_run)
            rows += mine
            why += [f"{run}: {r}" if run else r for r in reasons]
    drawn = Drawn(dataclasses.replace(report, entries=rows), {id(e): twins.label(e) for e in report.entries},
                  distinct=twins.distinct())
    same = [twins.label(e) for e in twins.distinct() if len(twins.of(e)) > 1]
    if same:
        drawn.notes.append("Identical scores are drawn once, under one name: " + "; ".join(same) + ".")
    if curves:
        drawn.notes.append(f"Drawn as --curves asks: {', '.join(e.label for e in rows)}." + (
            " " + "; ".join(notes) + "." if notes else ""))
    elif len(rows) < len(drawn.distinct):
        drawn.notes.append(f"The figures draw {len(rows)} of the {len(drawn.distinct)} distinct rows: "
                           + "; ".join(why) + ", each with its pair. imood report --curves NAMES draws others, "
                           "--plots 0 every one.")
    return drawn
