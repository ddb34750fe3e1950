"""The published results of the ImOOD paper as imood's own data, and imood's numbers beside them.

Source: Liu et al., "Rethinking Out-of-Distribution Detection on Imbalanced Data Distribution",
NeurIPS 2024, arXiv 2407.16430 (https://arxiv.org/abs/2407.16430): every row of Tables 1–7 and of the
appendix Tables A1–A5, in `published_tables.json` beside this module, values as printed (percentages;
Table A5: probabilities). The paper's single "AUPR" is AUPR-out (OOD positive), stored as `aupr_out`.

Tables are keyed so that a plan (or `imood report --published`) can name one: `table1-cifar10`,
`table1-cifar100`, `table2-imagenet`, `table5-cifar10`, `tableA1-cifar10`, ... (`table_keys()`). A row
is named by its method as the paper prints it ("PASCL + ImOOD"), and, in the tables that list each OOD
set, as "METHOD@SET" ("PASCL@SVHN"; a method alone picks its "Average" row). JSON only: no torch.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from imood_cli.errors import ImoodError, unknown_name
from imood_cli.report.tables import Column, Table

DATA_FILE = "published_tables.json"
# (key, title, better): the numbers a comparison shows, in imood's names.
COMPARED = (("auroc", "AUROC", "higher"), ("aupr_out", "AUPR-out", "higher"), ("fpr95", "FPR95", "lower"),
            ("acc", "ACC", "higher"))
AVERAGE = "Average"


@dataclass(frozen=True)
class PublishedRow:
    method: str
    kind: str
    metrics: dict[str, float]  # as printed: percentages (Table A5: probabilities)
    ood_set: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # detector_family, venue, uncertain

    @property
    def ref(self) -> str:
        """How a plan names this row."""
        return f"{self.method}@{self.ood_set}" if self.ood_set else self.method


@dataclass(frozen=True)
class PublishedTable:
    key: str
    table: str  # "Table 1"
    benchmark: str  # the paper's description of the setting
    dataset: str | None  # the imood benchmark it corresponds to, if there is one
    units: str  # "percent" | "probability"
    rows: tuple[PublishedRow, ...]
    protocol: str | None = None
    imbalance_ratio: float | None = None

    def row(self, ref: str) -> PublishedRow:
        """A row by 'METHOD' or 'METHOD@SET'; an error names the rows there are."""
        method, _, ood_set = (p.strip() for p in ref.partition("@"))
        same = [r for r in self.rows if _norm(r.method) == _norm(method)]
        if not same:
            known = dict.fromkeys(r.method for r in self.rows)
            raise unknown_name(f"method in {self.key} ({self.table}):", method, known)
        if ood_set:
            for r in same:
                if r.ood_set and _norm(r.ood_set) == _norm(ood_set):
                    return r
            raise unknown_name(f"OOD set of {method!r} in {self.key}:", ood_set, [r.ood_set or "" for r in same])
        plain = [r for r in same if r.ood_set is None] or [r for r in same if r.ood_set == AVERAGE]
        if len(plain) == 1:
            return plain[0]
        if len(same) == 1:
            return same[0]
        raise ImoodError(f"{self.key} lists {method!r} once per OOD set: name one as "
                         f"{', '.join(repr(r.ref) for r in same)}")


def _norm(text: str) -> str:
    """Names compared without case and spaces: 'pascl+imood' is 'PASCL + ImOOD'."""
    return re.sub(r"\s+", "", text).casefold()


def source() -> dict[str, str]:
    """The paper the numbers come from (title, authors, venue, arxiv, url)."""
    return dict(_document()["source"])


@functools.cache
def _document() -> dict[str, Any]:
    text = resources.files("imood_cli.report").joinpath(DATA_FILE).read_text(encoding="utf-8")
    doc = json.loads(text)
    if doc.get("format") != "imood-published-results":
        raise ImoodError(f"{DATA_FILE} is not imood's published-results file")
    return doc


@functools.cache
def tables() -> dict[str, PublishedTable]:
    out = {}
    for key, t in _document()["tables"].items():
        rows = tuple(PublishedRow(r["method"], r["kind"], dict(r["metrics"]), r.get("ood_set"),
                                  {k: v for k, v in r.items() if k not in ("method", "kind", "metrics", "ood_set")})
                     for r in t["rows"])
        out[key] = PublishedTable(key, t["table"], t["benchmark"], t.get("dataset"), t["units"], rows,
                                  t.get("protocol"), t.get("imbalance_ratio"))
    return out


def table_keys() -> list[str]:
    return list(tables())


def table(key: str) -> PublishedTable:
    found = tables().get(key)
    if found is None:
        raise unknown_name("published table", key, tables())
    return found


def lookup(key: str, ref: str) -> PublishedRow:
    """The paper's row `ref` ('METHOD' or 'METHOD@SET') of table `key`."""
    return table(key).row(ref)


def check_reference(key: str, ref: str | None, benchmark: str, where: str) -> None:
    """That a plan's published table fits its benchmark and names a row the table has."""
    try:
        t = table(key)
        if t.units != "percent":
            raise ImoodError(f"{key} holds {t.units} values, not detection metrics to compare with")
        if t.dataset is not None and t.dataset != benchmark:
            raise ImoodError(f"{key} ({t.table}) reports {t.dataset}, not {benchmark}")
        if ref is not None:
            t.row(ref)
    except ImoodError as exc:
        raise ImoodError(f"{where}: {exc}") from None


# ---------------------------------------------------------------- comparisons


@dataclass
class Comparison:
    """One of imood's rows beside the paper's: values as fractions, differences as ours − paper."""

    label: str
    row: PublishedRow | None
    ours: dict[str, float | None]
    paper: dict[str, float | None]
    diff: dict[str, float | None]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "published": self.row.ref if self.row else None,
                "ours": self.ours, "paper": self.paper, "diff": self.diff}


def _match(t: PublishedTable, name: str) -> PublishedRow | None:
    """A name matched to a method of the table: as printed ('PASCL + ImOOD'), or as `imood sweep` names its
    run folders ('pascl+imood', 'pascl+imood-seed3')."""
    from imood_cli.engine.sweep.plan import run_slug

    bare = re.sub(r"-seed\d+$", "", name.strip())
    for r in t.rows:
        if r.ood_set is not None and r.ood_set != AVERAGE:
            continue
        if _norm(r.method) in (_norm(name), _norm(bare)) or run_slug(r.method) == run_slug(bare):
            return r
    return None


def compare(key: str, rows: Iterable[tuple[str, Mapping[str, float | None]]],
            mapping: Mapping[str, str | None] | None = None) -> list[Comparison]:
    """imood's rows (a label and its mean AUROC, AUPR-out, FPR95 and ID accuracy as fractions) beside the
    paper's rows of table `key`. `mapping` names each label's row ('MSP', 'PASCL@SVHN'; None: no row);
    without it a label is matched to the method of the same name."""
    t = table(key)
    if t.units != "percent":
        raise ImoodError(f"{key} holds {t.units} values, not detection metrics to compare with")
    out = []
    for label, ours in rows:
        if mapping is not None:
            ref = mapping.get(label)
            row = t.row(ref) if ref else None
        else:
            row = _match(t, label)
        mine = {k: ours.get(k) for k, _, _ in COMPARED}
        paper = {k: (row.metrics[k] / 100 if row is not None and k in row.metrics else None) for k, _, _ in COMPARED}
        diff = {k: (mine[k] - paper[k] if mine[k] is not None and paper[k] is not None else None)
                for k, _, _ in COMPARED}
        out.append(Comparison(label, row, mine, paper, diff))
    return out


def cite(t: PublishedTable) -> str:
    s = source()
    return f"{t.table} of {s['authors']}, {s['venue']} (arXiv {s['arxiv']}): {t.benchmark}."


def comparison_table(key: str, comparisons: list[Comparison], label_title: str = "run") -> Table:
    """The comparison as a report table: per metric the paper's value and ours − paper. The paper's row name
    gets a column when it differs from a label."""
    t = table(key)
    named = any(c.row is None or c.row.ref != c.label for c in comparisons)
    columns = [Column("label", label_title, "text"), *([Column("published", "paper row", "text")] if named else [])]
    for k, title, better in COMPARED:
        columns += [Column(f"paper_{k}", title), Column(f"diff_{k}", "Δ", "delta", better)]
    out = Table(f"published_{key}", f"Beside the paper: {t.table}, {t.key} (%): the paper's value, then Δ = ours − "
                "paper", columns)
    for c in comparisons:
        cells = [c.label, *([c.row.ref if c.row else None] if named else [])]
        for k, _, _ in COMPARED:
            cells += [c.paper[k], c.diff[k]]
        out.add(cells)
    out.notes.append(f"Δ in points; a negative ΔFPR95 is better. Source: {cite(t)}")
    if any(c.row is None for c in comparisons):
        out.notes.append("–: no row of the paper's table matches, or the paper does not report that number.")
    if t.protocol:
        out.notes.append(f"The paper's protocol: {t.protocol}.")
    return out


def report_rows(report: Any) -> list[tuple[str, dict[str, float | None]]]:
    """The rows of an `imood report` (report.results.Report) as (label, mean metrics and ID accuracy)."""
    rows = []
    for e in report.entries:
        mean = e.result["ood"]["mean"]
        rows.append((e.label, {"auroc": mean["auroc"], "aupr_out": mean["aupr_out"], "fpr95": mean["fpr95"],
                               "acc": e.result.get("id", {}).get("acc")}))
    return rows


def for_report(key: str, report: Any) -> Table:
    """`imood report --published KEY`: the report's rows beside the paper's table, each matched by its run's
    name ('OE', or a sweep's run folder 'pascl+imood-seed0'); rows of runs named otherwise stay unmatched."""
    t = table(key)
    if t.units != "percent":
        raise ImoodError(f"{key} holds {t.units} values, not detection metrics to compare with")
    others = sorted({d for e in report.entries if isinstance(d := e.scores.meta.get("dataset"), str)} - {t.dataset})
    if t.dataset is not None and others:
        raise ImoodError(f"--published {key}: the paper's {t.table} reports {t.dataset}, but the report's rows come "
                         f"from {', '.join(others)}")
    mapping = {}
    for e in report.entries:
        row = _match(t, e.run or report.runs[0][0])
        mapping[e.label] = row.ref if row is not None else None
    return comparison_table(key, compare(key, report_rows(report), mapping), "run · detector")
