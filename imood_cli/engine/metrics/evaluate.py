"""The `imood eval` document of one detector's scores: detection metrics per OOD set and their mean
(`metrics.ranking`), ID accuracy and the errors by shot group (`metrics.groups`). numpy only."""

from __future__ import annotations

import numpy as np

from imood_cli.engine.metrics.groups import group_errors, id_accuracy
from imood_cli.engine.metrics.ranking import (
    FPR95_CONVENTION,
    METRIC_KEYS,
    bootstrap_ci,
    check_bootstrap,
    check_scores,
    detection_metrics,
)
from imood_cli.errors import ImoodError


def evaluate(id_scores, ood_scores_by_set: dict, *, id_labels=None, id_preds=None, class_counts=None,
             ood_preds_by_set: dict | None = None, bootstrap: int = 0, seed: int = 0) -> dict:
    """The `imood eval --json` document: per-set metrics and their unweighted mean, ID accuracy."""
    if not ood_scores_by_set:
        raise ImoodError("no OOD set to evaluate against")
    if "mean" in ood_scores_by_set:
        raise ImoodError("an OOD set may not be named 'mean': that key holds the average over the sets")
    check_bootstrap(bootstrap, seed)
    id_s = check_scores(id_scores, "the ID set")
    result: dict = {"ood": {}, "fpr95_convention": FPR95_CONVENTION, "score_direction": "higher_is_ood"}
    for name, scores in ood_scores_by_set.items():
        m = detection_metrics(id_s, check_scores(scores, f"OOD set {name!r}"))
        if bootstrap:
            m["ci95"] = bootstrap_ci(id_s, scores, bootstrap, seed)
        result["ood"][name] = m
    sets = list(result["ood"].values())
    result["ood"]["mean"] = {k: float(np.mean([m[k] for m in sets])) for k in METRIC_KEYS}
    if id_labels is not None and id_preds is not None and class_counts is not None:
        result["id"] = id_accuracy(id_labels, id_preds, class_counts)
        result["groups"] = {}
        for name, scores in ood_scores_by_set.items():
            preds = (ood_preds_by_set or {}).get(name)
            result["groups"][name] = group_errors(id_s, id_labels, scores, preds, result["ood"][name]["threshold"],
                                                  class_counts)
    return result
