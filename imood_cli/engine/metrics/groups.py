"""Shot groups (many / medium / few training images per class) and the errors a long-tailed classifier makes
in each: ID accuracy by group, ID images flagged as OOD by group, OOD images accepted as each group."""

from __future__ import annotations

import math

import numpy as np

from imood_cli.errors import ImoodError

# ---- ID accuracy and shot groups
MAX_CLASSES = 1_000_000


MAX_CLASS_COUNT = 10**9  # images of one class: far above any dataset, far below what float64 sums lose


def check_class_counts(class_counts) -> list[int]:
    """Class counts as a list of whole numbers in [0, 10^9] (1 to 10^6 classes), or an ImoodError."""
    ok = isinstance(class_counts, (list, tuple, np.ndarray)) and 0 < len(class_counts) <= MAX_CLASSES
    if ok:
        for c in class_counts:
            if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, float, np.integer, np.floating)):
                ok = False
            elif not math.isfinite(c) or not 0 <= c <= MAX_CLASS_COUNT or c != int(c):
                ok = False
            if not ok:
                break
    if not ok:
        shown = repr(class_counts)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ImoodError(f"class counts must be a list of 1 to {MAX_CLASSES:,} whole numbers in [0, "
                         f"{MAX_CLASS_COUNT:,}], got {shown}")
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
    """Many / medium / few-shot classes (docs/concepts.md, "Shot groups")."""
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
