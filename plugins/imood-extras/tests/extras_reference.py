"""Independent float64 references with plain numpy: the margin, ImOOD's log β̂, AUROC and supcon."""

from __future__ import annotations

import numpy as np


def np_margin(logits: np.ndarray) -> np.ndarray:
    """g = z_(1) − z_(2) per row, by sorting."""
    z = np.sort(np.asarray(logits, np.float64), axis=1)
    return z[:, -1] - z[:, -2]


def np_log_beta(logits: np.ndarray, counts, tau: float = 1.0) -> np.ndarray:
    """log β̂ = log((1/K) Σ_k p_k / π̃_k), π̃ ∝ π^τ."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pi = np.asarray(counts, np.float64) / np.sum(counts)
    prior = pi ** tau / np.sum(pi ** tau)
    return np.log(np.mean(p / prior, axis=1))


def np_ada_margin(logits: np.ndarray, counts, tau: float = 1.0, c: float = 1.0) -> np.ndarray:
    """ada_margin's OOD score, −(g + c·log β̂)."""
    return -(np_margin(logits) + c * np_log_beta(logits, counts, tau))


def np_auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """P(an OOD score > an ID score) + ½ P(tie): OOD positive, higher = more OOD."""
    a, b = np.asarray(ood_scores, np.float64)[:, None], np.asarray(id_scores, np.float64)[None, :]
    return float((a > b).mean() + 0.5 * (a == b).mean())


def np_supcon(z: np.ndarray, labels: np.ndarray, is_id: np.ndarray, T: float) -> float:
    """Explicit loops: anchors every ID view, positives same-class ID views, OOD excluded."""
    z = z.astype(np.float64)
    ids = [i for i in range(len(z)) if is_id[i]]
    losses = []
    for i in ids:
        others = [a for a in ids if a != i]
        pos = [p for p in others if labels[p] == labels[i]]
        if not pos:
            continue
        denom = sum(np.exp(z[i] @ z[a] / T) for a in others)
        losses.append(-np.mean([np.log(np.exp(z[i] @ z[p] / T) / denom) for p in pos]))
    return float(np.mean(losses)) if losses else 0.0
