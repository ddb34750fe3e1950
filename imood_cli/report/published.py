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
from pathlib import Path
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


# ---------------------------------------------------------------- like with like

# What the paper's tables measured, per benchmark, in imood's names (the tables' `protocol` in words).
# `imbalance_ratio` is overridden by a table that states its own (Table A3's ρ = 50).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "cifar10": {"dataset": "cifar10", "imbalance_ratio": 0.01, "model": "resnet18", "epochs": 200,
                "ood_sets": ("texture", "svhn", "cifar100", "tin", "lsun", "places365"),
                "aux_ood": "the 300K random images", "num_ood_samples": 30000},
    "cifar100": {"dataset": "cifar100", "imbalance_ratio": 0.01, "model": "resnet18", "epochs": 200,
                 "ood_sets": ("texture", "svhn", "cifar10", "tin", "lsun", "places365"),
                 "aux_ood": "the 300K random images", "num_ood_samples": 30000},
    "imagenet": {"dataset": "imagenet", "model": "resnet50", "epochs": 100, "ood_sets": ("ood_test_1k",),
                 "aux_ood": "ImageNet-Extra (extra_1k)"},
}
PLAN_OF = {"cifar10": "table1-cifar10", "cifar100": "table1-cifar100", "imagenet": "table2-imagenet"}


@dataclass(frozen=True)
class Recipe:
    """How imood reproduces a paper row: the training (`--ood-metric`, `--aux-ood-loss`) and the detector
    the row's numbers are for (the `+ ImOOD` rows are scored with the vanilla detector)."""

    ood_metric: str | None
    aux_ood_loss: str
    detector: str


@functools.cache
def recipes(dataset: str) -> dict[str, Recipe]:
    """Each paper method's recipe, by normalised method name, from the shipped sweep plan of its benchmark
    (ImageNet's rows are the CIFAR rows' methods)."""
    import tomllib

    plan_name = PLAN_OF.get(dataset)
    if plan_name is None:
        return {}
    doc = tomllib.loads(resources.files("imood_cli.plans").joinpath(f"{plan_name}.toml").read_text(encoding="utf-8"))
    defaults = doc.get("defaults", {})
    runs = {r["name"]: r for r in doc.get("run", [])}
    out = {}
    for r in runs.values():
        if not r.get("published") or not r.get("score"):
            continue
        trained = runs.get(r.get("model_from", ""), r)  # a post-hoc row reads another row's model
        train = {**defaults, **trained.get("train", {})}
        aux = str(train.get("aux_ood_loss", "none")).split(":")[0]
        out[_norm(r["published"])] = Recipe(train.get("ood_metric"), aux, str(r["score"][0]))
    return out


def protocol(t: PublishedTable) -> dict[str, Any]:
    facts = dict(PROTOCOLS.get(t.dataset or "", {}))
    if facts and t.imbalance_ratio is not None:
        facts["imbalance_ratio"] = t.imbalance_ratio
    return facts


def _same_score(a: str, b: str) -> bool:
    """Two detector names that give the same scores (oe scores as msp), options ignored."""
    from imood_cli.registry import registry

    def canonical(name: str) -> str:
        name = name.split(":")[0]
        try:
            return registry().alias_of(name) or name
        except ImoodError:
            return name

    return canonical(a) == canonical(b)


def _run_config(entry: Any) -> dict[str, Any] | None:
    from imood_cli.fs.safe import read_json

    if entry.run_path is None or not (Path(entry.run_path) / "config.json").is_file():
        return None
    try:
        doc = read_json(Path(entry.run_path) / "config.json", "the run's config.json")
    except ImoodError:
        return None
    return doc if isinstance(doc, dict) else None


def differences(facts: dict[str, Any], recipe: Recipe | None, entry: Any, config: dict[str, Any] | None
                ) -> tuple[list[str], str | None]:
    """(every way the run's protocol differs from the paper row's, the reason its Δ means nothing or None)."""
    diffs, blocker = [], None
    sets, paper_sets = list(entry.sets), list(facts.get("ood_sets", ()))
    if paper_sets and set(sets) != set(paper_sets):
        diffs.append(f"OOD test sets {', '.join(sets) or 'none'} (the paper: {', '.join(paper_sets)})")
        blocker = "different OOD sets"
    if recipe is not None and not _same_score(entry.metric, recipe.detector):
        diffs.append(f"detector {entry.metric} (the paper's numbers are {recipe.detector}'s)")
        blocker = blocker or f"the paper's numbers are {recipe.detector}'s"
    dataset = entry.scores.meta.get("dataset") or (config or {}).get("dataset")
    if facts.get("dataset") and dataset != facts["dataset"]:
        diffs.append(f"ID data {dataset or 'not recorded'} (the paper: {facts['dataset']})")
        blocker = blocker or "different ID data"
    if config is None:
        diffs.append("training not recorded (no config.json: an imported or foreign model)")
        return diffs, blocker
    checks = [("imbalance_ratio", "imbalance ratio"), ("model", "backbone"), ("epochs", "epochs")]
    for key, words in checks:
        if key in facts and config.get(key) != facts[key]:
            diffs.append(f"{words} {config.get(key)} (the paper: {facts[key]})")
    if "aux_ood" in facts:
        if config.get("aux_ood_dir"):
            diffs.append(f"auxiliary OOD images from {config['aux_ood_dir']} (the paper: {facts['aux_ood']})")
        elif "num_ood_samples" in facts and config.get("num_ood_samples") != facts["num_ood_samples"]:
            diffs.append(f"{config.get('num_ood_samples')} auxiliary OOD images (the paper: "
                         f"{facts['num_ood_samples']} of {facts['aux_ood']})")
    if recipe is not None and recipe.ood_metric is not None:
        trained = (str(config.get("ood_metric", "")).split(":")[0],
                   str(config.get("aux_ood_loss", "none")).split(":")[0])
        wanted = (recipe.ood_metric.split(":")[0], recipe.aux_ood_loss)
        if trained != wanted:
            diffs.append(f"trained with --ood-metric {trained[0]} --aux-ood-loss {trained[1]} (the paper's row: "
                         f"{wanted[0]}, {wanted[1]})")
    return diffs, blocker


def _recorded_match(t: PublishedTable, entries: list[Any], config: dict[str, Any] | None) -> PublishedRow | None:
    """The paper row whose recipe trains as the run did and scores with a detector the run was scored with."""
    if config is None:
        return None
    trained = (str(config.get("ood_metric", "")).split(":")[0], str(config.get("aux_ood_loss", "none")).split(":")[0])
    found = []
    for r in t.rows:
        if r.ood_set is not None and r.ood_set != AVERAGE:
            continue
        recipe = recipes(t.dataset or "").get(_norm(r.method))
        if (recipe is not None and recipe.ood_metric is not None
                and (recipe.ood_metric.split(":")[0], recipe.aux_ood_loss) == trained
                and any(_same_score(e.metric, recipe.detector) for e in entries)):
            found.append(r)
    return found[0] if len(found) == 1 else None


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'table1-cifar10' or 'table1-cifar10:PASCL + ImOOD' -> (key, row or None); both checked."""
    key, _, row = spec.partition(":")
    t = table(key.strip())
    if row.strip():
        t.row(row.strip())
        return t.key, row.strip()
    return t.key, None


def for_report(spec: str, report: Any) -> Table:
    """`imood report --published KEY[:ROW]`: each run beside the paper row it reproduces, on the detector the
    paper reports, with every difference of protocol listed; Δ only where the OOD sets, the ID data and the
    detector are the paper's. A run is matched to ROW when given, else by its name ('OE', a sweep's run folder
    'pascl+imood-seed0'), else by its recorded training (`--ood-metric`, `--aux-ood-loss`) and the detectors
    it was scored with."""
    key, explicit = parse_spec(spec)
    t = table(key)
    if t.units != "percent":
        raise ImoodError(f"{key} holds {t.units} values, not detection metrics to compare with")
    facts = protocol(t)
    by_run: dict[str, list[Any]] = {}
    for e in report.entries:
        by_run.setdefault(e.run or report.runs[0][0], []).append(e)
    columns = [Column("label", "run · detector", "text"), Column("published", "paper row", "text"),
               Column("comparable", "comparable", "text")]
    for k, title, better in COMPARED:
        columns += [Column(f"paper_{k}", title), Column(f"diff_{k}", "Δ", "delta", better)]
    out = Table(f"published_{key}", f"Beside the paper: {t.table}, {t.key} (%): the paper's value, then Δ = ours − "
                "paper", columns)
    for run, entries in by_run.items():
        config = _run_config(entries[0])
        row = (t.row(explicit) if explicit else _match(t, run) or _recorded_match(t, entries, config))
        if row is None:
            out.preface.append(f"{run}: no row of {t.key} matches (name the row: --published "
                               f"{t.key}:\"ROW\"; rows: {', '.join(dict.fromkeys(r.method for r in t.rows))}).")
            continue
        recipe = recipes(t.dataset or "").get(_norm(row.method))
        shown = [e for e in entries if recipe is None or _same_score(e.metric, recipe.detector)]
        if recipe is not None and len(shown) < len(entries):
            out.preface.append(f"{run}: compared on {recipe.detector}, the detector the paper's {row.method!r} "
                               f"numbers are for; its other detectors are not compared.")
        if recipe is not None and not shown:
            out.preface.append(f"{run}: not scored with {recipe.detector} (imood score RUN -m {recipe.detector}).")
        for e in shown:
            diffs, blocker = differences(facts, recipe, e, config)
            comparison = compare(key, [(e.label, report_rows_of(e))], {e.label: row.ref})[0]
            if diffs:
                out.preface.append(f"{e.label} differs from the paper's {row.method!r}: " + "; ".join(diffs) + ".")
            if blocker:
                comparison.diff = {k: None for k in comparison.diff}
                verdict = f"no: {blocker}"
            else:
                verdict = "yes" if not diffs else "protocol differs"
            cells = [e.label, row.ref, verdict]
            for k, _, _ in COMPARED:
                cells += [comparison.paper[k], comparison.diff[k]]
            out.add(cells, e.stale)
    out.notes.append(f"Δ in points; a negative ΔFPR95 is better. Δ is shown only where the run was tested on the "
                     f"paper's OOD sets and ID data with the detector the paper reports. Source: {cite(t)}")
    if t.protocol:
        out.notes.append(f"The paper's protocol: {t.protocol}.")
    return out


def report_rows_of(entry: Any) -> dict[str, float | None]:
    mean = entry.result["ood"]["mean"]
    return {"auroc": mean["auroc"], "aupr_out": mean["aupr_out"], "fpr95": mean["fpr95"],
            "acc": entry.result.get("id", {}).get("acc")}
