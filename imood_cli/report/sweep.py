"""The report of a sweep: per benchmark, each row's OOD detection and ID accuracy as mean ± std over the
seeds, the paper's numbers beside them where the plan names a published table, and the JSON document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OOD_KEYS = (("auroc", "AUROC", "higher"), ("aupr_out", "AUPR-out", "higher"), ("fpr95", "FPR95", "lower"))


ID_KEYS = (("acc", "accuracy", "higher"), ("many", "many-shot", "higher"), ("medium", "medium-shot", "higher"),
           ("few", "few-shot", "higher"))


def plus_minus(mean: float | None, std: float | None) -> str | None:
    """'92.93 ± 0.26' in percent; the mean alone with one seed; None (shown –) without a result."""
    if mean is None:
        return None
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def sweep_tables(plan, rows) -> list:
    """Per benchmark: OOD detection and ID accuracy as mean ± std over seeds, and the paper's numbers beside
    them when the plan names a published table."""
    from imood_cli.report.published import compare, comparison_table
    from imood_cli.report.tables import Column, Table

    out = []
    n = len(plan.seeds)
    std_note = "±: sample standard deviation over the seeds (n − 1 in the denominator); none with one seed."
    for bench in plan.benchmarks:
        mine = [r for r in rows if r.benchmark == bench]
        partial = any(len(r.seeds) < n for r in mine)
        seeds_col = [Column("seeds", "seeds", "text")] if partial else []
        ood = Table(f"{bench}_ood", f"{plan.name}: {bench}, OOD detection (%), mean over the OOD sets, mean ± std "
                    f"over {n} seed{'s' if n != 1 else ''}", [Column("label", "run", "text"),
                    Column("detector", "detector", "text"), *seeds_col,
                    *[Column(k, name, "text", better) for k, name, better in OOD_KEYS]])
        ident = Table(f"{bench}_id", f"{plan.name}: {bench}, ID classification (%), mean ± std over seeds",
                      [Column("label", "model of", "text"), *seeds_col,
                       *[Column(k, name, "text", better) for k, name, better in ID_KEYS]])
        for r in mine:
            have = [f"{len(r.seeds)}/{n}"] if partial else []
            ood.add([r.run.name, r.run.headline, *have, *[plus_minus(r.mean(k), r.std(k)) for k, _, _ in OOD_KEYS]])
            if r.run.model_from is None:  # accuracy belongs to the model, not to the detector
                ident.add([r.run.name, *have, *[plus_minus(r.mean(k), r.std(k)) for k, _, _ in ID_KEYS]])
        ood.notes.append(std_note)
        ident.notes.append("One row per trained model; many/medium/few: per-class accuracy averaged within each "
                           "shot group of the training counts.")
        gaps = [f"{r.run.name}: " + ", ".join(f"seed {s} {why}" for s, why in sorted(r.missing.items()))
                for r in mine if r.missing]
        if gaps:
            ood.notes.append("Missing: " + "; ".join(gaps) + ".")
        out += [ood, ident]
        key = plan.published.get(bench)
        if key:
            comparisons = compare(key, [(r.run.name, {k: r.mean(k) for k in ("auroc", "aupr_out", "fpr95", "acc")})
                                        for r in mine], {r.run.name: r.run.published for r in mine})
            out.append(comparison_table(key, comparisons))
        if plan.compare:
            out.append(paired_table(plan, rows, bench))
    return out


SATURATED = 0.995  # an OOD set where every run of a comparison reaches this AUROC cannot show a difference
PAIRED_KEYS = (("auroc", "AUROC (mean over sets)", True), ("fpr95", "FPR95 (mean over sets)", False),
               ("acc", "ID accuracy", True), ("many", "many-shot accuracy", True),
               ("medium", "medium-shot accuracy", True), ("few", "few-shot accuracy", True))


def paired_comparisons(plan, rows, bench: str) -> list[dict[str, Any]]:
    """For each [A, B] of the plan's `compare`: B − A on the seeds both have, per headline number and per OOD
    set's AUROC, with its 95% t and bootstrap intervals, the seeds where B is better and the sign and Wilcoxon
    p-values; a set where every run of both is at AUROC >= 99.5 is flagged saturated."""
    from imood_cli.engine.metrics.paired import paired_difference

    by_name = {r.run.name: r for r in rows if r.benchmark == bench}
    out = []
    for a_name, b_name in plan.compare:
        a, b = by_name[a_name], by_name[b_name]
        seeds = sorted(set(a.per_seed) & set(b.per_seed))
        quantities = [(key, title, higher) for key, title, higher in PAIRED_KEYS]
        sets = list(dict.fromkeys(s for r in (a, b) for m in r.per_seed.values() for s in m.get("auroc_sets", {})))
        for key, title, higher in quantities + [(f"set:{s}", f"AUROC on {s}", True) for s in sets]:
            def value(r, seed, key=key):
                m = r.per_seed[seed]
                return m.get("auroc_sets", {}).get(key[4:]) if key.startswith("set:") else m.get(key)
            pairs = [(value(a, s), value(b, s)) for s in seeds]
            pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
            entry: dict[str, Any] = {"a": a_name, "b": b_name, "quantity": key, "title": title, "n": len(pairs)}
            if pairs:
                diff = paired_difference([x for x, _ in pairs], [y for _, y in pairs], higher_is_better=higher)
                entry.update(diff.to_dict())
                entry["saturated"] = key.startswith("set:") and all(min(x, y) >= SATURATED for x, y in pairs)
            out.append(entry)
    return out


def paired_table(plan, rows, bench: str):
    """The plan's comparisons as a table: B − A in points, its intervals, the count of better seeds, p-values."""
    from imood_cli.report.tables import Column, Table

    where = f"{plan.name}: {bench}, " if bench else ""
    table = Table(f"{bench}_paired" if bench else "paired", f"{where}paired differences B − A over the seeds both "
                  "have (points)", [Column(k, t, "text") for k, t in (
                      ("change", "A → B"), ("quantity", "quantity"), ("diff", "B − A"), ("t95", "95% t interval"),
                      ("boot95", "95% bootstrap"), ("better", "B better"), ("p_sign", "sign p"),
                      ("p_wilcoxon", "Wilcoxon p"), ("verdict", "verdict"))])
    for e in paired_comparisons(plan, rows, bench):
        if not e["n"]:
            table.add([f"{e['a']} → {e['b']}", e["title"], None, None, None, "0 seeds", None, None,
                       "no seed has both"])
            continue

        def pts(x):
            return None if x is None else f"{100 * x:+.2f}"
        t95 = f"[{pts(e['t_low'])}, {pts(e['t_high'])}]" if e["t_low"] is not None else None
        verdict = ("saturated: every run >= 99.5" if e["saturated"] else
                   "measurable" if e["measurable"] else "no measurable effect")
        table.add([f"{e['a']} → {e['b']}", e["title"], pts(e["mean"]), t95,
                   f"[{pts(e['boot_low'])}, {pts(e['boot_high'])}]", f"{e['better']}/{e['n']}",
                   f"{e['p_sign']:.3g}", None if e["p_wilcoxon"] is None else f"{e['p_wilcoxon']:.3g}", verdict])
    table.notes.append("B better: seeds where B is higher (lower for FPR95). 95% t interval of the mean difference "
                       "(Student's t, n − 1 degrees of freedom); bootstrap: percentile interval of 10,000 resampled "
                       "means (seed 0). sign p: exact two-sided sign test, ties dropped; Wilcoxon p: two-sided "
                       "signed-rank test (scipy). An interval that holds 0 is no measurable effect.")
    return table


def report_pairs(report: Any, pairs: list[tuple[str, str]]) -> list:
    """`imood report --compare A,B`: the paired table of runs named `A-seed<N>` against `B-seed<N>` (a sweep's
    run folders), per detector both were scored with."""
    import re
    from types import SimpleNamespace

    from imood_cli.engine.sweep.results import RowResult, headline_numbers
    from imood_cli.errors import ImoodError

    folders = dict(report.runs)
    groups: dict[str, dict[int, list]] = {}
    for e in report.entries:
        label = e.run or report.runs[0][0]
        m = re.fullmatch(r"(.*)-seed(\d+)", Path(folders.get(label, label)).name)
        if m:
            groups.setdefault(m.group(1), {}).setdefault(int(m.group(2)), []).append(e)
    tables = []
    for a, b in pairs:
        for name in (a, b):
            if name not in groups:
                raise ImoodError(f"--compare: no run folder of the report is named {name}-seed<N> (runs: "
                                 f"{', '.join(sorted(groups)) or 'none named <run>-seed<N>'})")
        detectors = [d for d in dict.fromkeys(e.metric for es in groups[a].values() for e in es)
                     if any(e.metric == d for es in groups[b].values() for e in es)]
        if not detectors:
            raise ImoodError(f"--compare {a},{b}: the two have no detector in common")
        rows, compare = [], []
        for d in detectors:
            for name in (a, b):
                per_seed = {}
                for seed, es in groups[name].items():
                    e = next((x for x in es if x.metric == d), None)
                    if e is not None:
                        per_seed[seed] = headline_numbers(e.result)
                rows.append(RowResult("", SimpleNamespace(name=f"{name} · {d}"), per_seed, {}))
            compare.append((f"{a} · {d}", f"{b} · {d}"))
        tables.append(paired_table(SimpleNamespace(name="report", compare=compare), rows, ""))
    return tables


def sweep_json(plan, rows, failed) -> str:
    from imood_cli import __version__
    from imood_cli.engine.sweep.results import SUMMARY_KEYS
    from imood_cli.report.published import compare, source

    doc: dict[str, Any] = {"format": "imood-sweep", "imood_version": __version__, "plan": plan.name,
                           "plan_file": str(plan.path), "save_root": plan.save_root, "seeds": plan.seeds,
                           "benchmarks": {}, "failed": [{"run": o.unit.label, "status": o.status, "message": o.message}
                                                        for o in failed]}
    for bench in plan.benchmarks:
        key = plan.published.get(bench)
        entries = []
        for r in (r for r in rows if r.benchmark == bench):
            entry = {"run": r.run.name, "detector": r.run.headline, "published": r.run.published,
                     "seeds": r.seeds, "missing": {str(s): why for s, why in r.missing.items()},
                     "per_seed": {str(s): m for s, m in sorted(r.per_seed.items())},
                     "mean": {k: r.mean(k) for k in SUMMARY_KEYS}, "std": {k: r.std(k) for k in SUMMARY_KEYS}}
            if key:
                c = compare(key, [(r.run.name, entry["mean"])], {r.run.name: r.run.published})[0]
                entry["paper"], entry["diff"] = c.paper, c.diff
            entries.append(entry)
        doc["benchmarks"][bench] = {"published": key, "rows": entries,
                                    "paired": paired_comparisons(plan, rows, bench) if plan.compare else []}
    if plan.published:
        doc["source"] = source()
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
