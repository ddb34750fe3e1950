"""The report of a sweep: per benchmark, each row's OOD detection and ID accuracy as mean ± std over the
seeds, the paper's numbers beside them where the plan names a published table, and the JSON document."""

from __future__ import annotations

import json
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
    return out


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
        doc["benchmarks"][bench] = {"published": key, "rows": entries}
    if plan.published:
        doc["source"] = source()
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
