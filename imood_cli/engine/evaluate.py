"""OOD metrics from scores (SPEC §5). OOD is the positive class; a score is higher for more OOD.

One sort of the pooled scores serves AUROC, AUPR-out, AUPR-in and FPR95. Ties are grouped into one
threshold, exactly as scikit-learn's curves group them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from imood_cli.errors import ImoodError

FPR95_CONVENTION = "fraction of ID samples scored at or above the first threshold whose OOD recall is >= 0.95"
RECALL_LEVEL = 0.95
METRIC_KEYS = ("auroc", "aupr_in", "aupr_out", "fpr95")


@dataclass
class Curve:
    """Cumulative counts at each distinct score, from the highest score down."""

    thresholds: np.ndarray  # distinct scores, descending
    tps: np.ndarray  # OOD samples scored >= threshold
    fps: np.ndarray  # ID samples scored >= threshold
    n_ood: int
    n_id: int


def _check(scores: np.ndarray, what: str) -> np.ndarray:
    try:
        a = np.asarray(scores)
        if np.iscomplexobj(a):
            raise TypeError("complex")
        a = a.astype(np.float64).ravel()
    except (TypeError, ValueError):
        raise ImoodError(f"{what}: scores must be real numbers") from None
    if a.size == 0:
        raise ImoodError(f"{what} has no scores")
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise ImoodError(f"{what} has {bad} NaN or infinite score(s)")
    return a


def curve(id_scores, ood_scores) -> Curve:
    id_s = _check(id_scores, "the ID set")
    ood_s = _check(ood_scores, "the OOD set")
    s = np.concatenate([ood_s, id_s])
    order = np.argsort(-s)
    s_desc = s[order]
    is_ood = order < ood_s.size
    last = np.flatnonzero(s_desc[1:] != s_desc[:-1])
    ends = np.append(last, s_desc.size - 1)
    tps = np.cumsum(is_ood, dtype=np.int64)[ends]
    fps = ends + 1 - tps
    return Curve(s_desc[ends], tps, fps, ood_s.size, id_s.size)


def metrics_from_curve(c: Curve) -> dict[str, float]:
    tps, fps = c.tps.astype(np.float64), c.fps.astype(np.float64)
    tpr = np.concatenate([[0.0], tps / c.n_ood])
    fpr = np.concatenate([[0.0], fps / c.n_id])
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    # AUPR-out: OOD positive, thresholds from the highest score down.
    precision = tps / (tps + fps)
    aupr_out = float(np.sum(np.diff(tpr) * precision))
    # AUPR-in: ID positive with score -s, i.e. the same groups walked from the lowest score up.
    fps_before = np.concatenate([[0.0], fps[:-1]])
    tps_before = np.concatenate([[0.0], tps[:-1]])
    id_at_or_below = c.n_id - fps_before
    ood_at_or_below = c.n_ood - tps_before
    id_in_group = fps - fps_before
    aupr_in = float(np.sum(id_in_group / c.n_id * id_at_or_below / (id_at_or_below + ood_at_or_below)))
    g = int(np.argmax(tps / c.n_ood >= RECALL_LEVEL))
    fpr95 = float(fps[g] / c.n_id)
    return {"auroc": auroc, "aupr_in": aupr_in, "aupr_out": aupr_out, "fpr95": fpr95,
            "threshold": float(c.thresholds[g])}


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out, FPR95 (and the FPR95 threshold) for one OOD set."""
    return metrics_from_curve(curve(id_scores, ood_scores))


# ---- ID accuracy and shot groups
def check_class_counts(class_counts) -> list[int]:
    """Class counts as a list of whole numbers >= 0 (at least one class), or an ImoodError."""
    ok = isinstance(class_counts, (list, tuple, np.ndarray)) and len(class_counts) > 0
    if ok:
        for c in class_counts:
            if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, float, np.integer, np.floating)):
                ok = False
            elif not math.isfinite(c) or c < 0 or c != int(c):
                ok = False
            if not ok:
                break
    if not ok:
        shown = repr(class_counts)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ImoodError(f"class counts must be a non-empty list of whole numbers >= 0, got {shown}")
    return [int(c) for c in class_counts]


def class_indices(values, what: str) -> np.ndarray:
    """Labels or predictions as int64; whole numbers only."""
    a = np.asarray(values).ravel()
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    try:
        f = a.astype(np.float64)
    except (TypeError, ValueError):
        raise ImoodError(f"{what} must be class indices (whole numbers)") from None
    if f.size and (not np.isfinite(f).all() or (f != np.round(f)).any() or np.abs(f).max() > 2.0**62):
        raise ImoodError(f"{what} must be class indices (whole numbers)")
    return f.astype(np.int64)


def shot_groups(class_counts) -> dict[str, np.ndarray]:
    """Many / medium / few-shot classes (SPEC §5)."""
    counts = np.asarray(check_class_counts(class_counts))
    k = counts.size
    if k > 100:
        many, few = counts > 100, counts < 20
    else:
        desc = np.sort(counts)[::-1]
        many = counts > desc[int(math.floor(0.34 * k))]
        few = counts < desc[int(math.floor(0.67 * k))]
    medium = ~many & ~few
    return {"many": np.flatnonzero(many), "medium": np.flatnonzero(medium), "few": np.flatnonzero(few)}


def id_accuracy(labels, preds, class_counts) -> dict:
    labels, preds = class_indices(labels, "ID labels"), class_indices(preds, "ID predictions")
    class_counts = check_class_counts(class_counts)
    k = len(class_counts)
    if labels.size == 0:
        raise ImoodError("the ID set is empty")
    if labels.shape != preds.shape:
        raise ImoodError(f"ID labels ({labels.size}) and predictions ({preds.size}) differ in length")
    if labels.min() < 0 or labels.max() >= k:
        raise ImoodError(f"ID labels must lie in [0, {k - 1}] for {k} classes")
    correct = labels == preds
    seen = np.bincount(labels, minlength=k)
    hits = np.bincount(labels, weights=correct, minlength=k)
    per_class = np.where(seen > 0, hits / np.maximum(seen, 1), np.nan)
    out = {"acc": float(correct.mean()), "per_class": [None if np.isnan(a) else float(a) for a in per_class]}
    for name, classes in shot_groups(class_counts).items():
        vals = per_class[classes]
        vals = vals[~np.isnan(vals)]
        out[name] = float(vals.mean()) if vals.size else None
    return out


def group_errors(id_scores, id_labels, ood_scores, ood_preds, threshold: float, class_counts) -> dict:
    """The paper's Fig. 1 at the FPR95 threshold: ID images flagged as OOD, by their shot group, and
    OOD images accepted as ID, by the shot group of the class they were predicted as."""
    groups = shot_groups(class_counts)
    k = len(class_counts)
    group_of = np.empty(k, dtype=object)
    for name, classes in groups.items():
        group_of[classes] = name
    id_scores, id_labels = np.asarray(id_scores, np.float64).ravel(), class_indices(id_labels, "ID labels")
    if id_labels.size != id_scores.size:
        raise ImoodError(f"ID labels ({id_labels.size}) and ID scores ({id_scores.size}) differ in length")
    flagged = id_scores >= threshold
    out = {"threshold": float(threshold), "id_flagged_as_ood": {}, "ood_accepted_as": {}}
    for name, classes in groups.items():
        in_group = np.isin(id_labels, classes)
        out["id_flagged_as_ood"][name] = float(flagged[in_group].mean()) if in_group.any() else None
    if ood_preds is not None:
        ood_scores, ood_preds = np.asarray(ood_scores, np.float64).ravel(), class_indices(ood_preds, "OOD predictions")
        if ood_preds.size != ood_scores.size:
            raise ImoodError(f"OOD predictions ({ood_preds.size}) and OOD scores ({ood_scores.size}) differ in length")
        accepted = ood_scores < threshold
        n_ood = max(ood_scores.size, 1)
        for name, classes in groups.items():
            out["ood_accepted_as"][name] = float((accepted & np.isin(ood_preds, classes)).sum() / n_ood)
    return out


def _check_bootstrap(rounds, seed) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 0:
        raise ImoodError(f"bootstrap rounds must be a whole number >= 0, got {rounds!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ImoodError(f"the bootstrap seed must be a whole number >= 0, got {seed!r}")


def bootstrap_ci(id_scores, ood_scores, rounds: int, seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals of each metric over `rounds` resamplings of the ID and the OOD scores."""
    _check_bootstrap(rounds, seed)
    rng = np.random.default_rng(seed)
    id_s, ood_s = _check(id_scores, "the ID set"), _check(ood_scores, "the OOD set")
    samples = {k: [] for k in METRIC_KEYS}
    for _ in range(rounds):
        m = ood_metrics(id_s[rng.integers(0, id_s.size, id_s.size)], ood_s[rng.integers(0, ood_s.size, ood_s.size)])
        for k in METRIC_KEYS:
            samples[k].append(m[k])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for k, v in samples.items()}


def evaluate(id_scores, ood_scores_by_set: dict, *, id_labels=None, id_preds=None, class_counts=None,
             ood_preds_by_set: dict | None = None, bootstrap: int = 0, seed: int = 0) -> dict:
    """The `imood eval --json` document: per-set metrics and their unweighted mean, ID accuracy."""
    if not ood_scores_by_set:
        raise ImoodError("no OOD set to evaluate against")
    if "mean" in ood_scores_by_set:
        raise ImoodError("an OOD set may not be named 'mean': that key holds the average over the sets")
    _check_bootstrap(bootstrap, seed)
    id_s = _check(id_scores, "the ID set")
    result: dict = {"ood": {}, "fpr95_convention": FPR95_CONVENTION, "score_direction": "higher_is_ood"}
    for name, scores in ood_scores_by_set.items():
        m = ood_metrics(id_s, _check(scores, f"OOD set {name!r}"))
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
