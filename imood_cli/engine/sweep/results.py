"""A plan's results from its run folders: each row's headline detector on each seed, checked against the
model the folder holds, as mean and standard deviation over the seeds."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imood_cli.engine.runs.digest import sha256_file
from imood_cli.engine.runs.layout import MODEL_FILE, score_file_stem
from imood_cli.engine.sweep.plan import SCORES, Plan, RunSpec
from imood_cli.engine.sweep.units import unit_folder
from imood_cli.errors import ImoodError

SUMMARY_KEYS = ("auroc", "aupr_out", "fpr95", "acc", "many", "medium", "few")


@dataclass
class RowResult:
    """One row of the plan's report: a run on one benchmark, its headline detector, over the seeds."""

    benchmark: str
    run: RunSpec
    per_seed: dict[int, dict[str, float | None]]
    missing: dict[int, str]  # seed -> why it has no result

    @property
    def seeds(self) -> list[int]:
        return sorted(self.per_seed)

    def mean(self, key: str) -> float | None:
        values = [m[key] for m in self.per_seed.values() if m.get(key) is not None]
        return math.fsum(values) / len(values) if values else None

    def std(self, key: str) -> float | None:
        """Sample standard deviation over seeds (n − 1 in the denominator); None for fewer than two."""
        values = [m[key] for m in self.per_seed.values() if m.get(key) is not None]
        return statistics.stdev(values) if len(values) > 1 else None


def seed_result(path: Path, model_sha: str | None) -> tuple[dict[str, float | None] | None, str]:
    """The headline numbers of one score file (mean over its OOD sets, ID accuracy), or why there are none."""
    from imood_cli.engine.metrics.evaluate import evaluate
    from imood_cli.engine.runs.scorefile import ScoreSet

    if model_sha is None:
        return None, "no model"
    if not path.is_file():
        return None, "not scored"
    try:
        ss = ScoreSet.load(path)
    except ImoodError as exc:
        return None, str(exc)
    if ss.meta.get("checkpoint_sha256") != model_sha:
        return None, "scores of an older model"
    has_id = ss.id_label is not None and ss.id_pred is not None and ss.class_counts is not None
    r = evaluate(ss.id_score, ss.ood_score, id_labels=ss.id_label if has_id else None,
                 id_preds=ss.id_pred if has_id else None, class_counts=ss.class_counts if has_id else None)
    return headline_numbers(r), ""


def headline_numbers(result: dict) -> dict[str, Any]:
    """What a sweep row keeps of an `imood eval` document: the means over the OOD sets, ID accuracy by shot
    group, and each set's AUROC (for the paired per-set rows)."""
    m = result["ood"]["mean"]
    idr = result.get("id", {})
    return {"auroc": m["auroc"], "aupr_out": m["aupr_out"], "fpr95": m["fpr95"], "acc": idr.get("acc"),
            "many": idr.get("many"), "medium": idr.get("medium"), "few": idr.get("few"),
            "auroc_sets": {s: v["auroc"] for s, v in result["ood"].items() if s != "mean"}}


def collect(plan: Plan, full: Plan | None = None) -> list[RowResult]:
    """One result row per (benchmark, run) of the plan, from the score files of its headline detector."""
    full = full or plan
    shas: dict[Path, str | None] = {}
    out = []
    for bench in plan.benchmarks:
        for spec in plan.runs:
            per_seed, missing = {}, {}
            for seed in plan.seeds:
                folder = unit_folder(plan, bench, full.trained(spec), seed)
                if folder not in shas:
                    model = folder / MODEL_FILE
                    shas[folder] = sha256_file(model) if model.is_file() else None
                numbers, why = seed_result(folder / SCORES / f"{score_file_stem(spec.headline)}.safetensors",
                                           shas[folder])
                if numbers is None:
                    missing[seed] = why
                else:
                    per_seed[seed] = numbers
            out.append(RowResult(bench, spec, per_seed, missing))
    return out
