"""Matplotlib figures for the HTML report, returned as PNG bytes (Agg backend, no display needed)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from imood_cli.engine.evaluate import curve, shot_groups
from imood_cli.report.results import Entry

MAX_POINTS = 2000


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _thin(*arrays: np.ndarray) -> list[np.ndarray]:
    n = arrays[0].size
    if n <= MAX_POINTS:
        return list(arrays)
    idx = np.unique(np.linspace(0, n - 1, MAX_POINTS).astype(int))
    return [a[idx] for a in arrays]


def _grid(n: int):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def _curves(entries: list[Entry], roc: bool) -> bytes:
    """One panel per OOD set, one line per (run, detector): ROC, or precision-recall with OOD positive."""
    sets = [s for s in entries[0].scores.ood_score]
    fig, axes = _grid(len(sets))
    for ax, s in zip(axes, sets):
        for e in entries:
            if s not in e.scores.ood_score:
                continue
            c = curve(e.scores.id_score.numpy(), e.scores.ood_score[s].numpy())
            if roc:
                x, y = _thin(np.r_[0.0, c.fps / c.n_id], np.r_[0.0, c.tps / c.n_ood])
                area = e.result["ood"][s]["auroc"]
            else:
                x, y = _thin(c.tps / c.n_ood, c.tps / (c.tps + c.fps))
                area = e.result["ood"][s]["aupr_out"]
            ax.plot(x, y, label=f"{e.label} ({100 * area:.1f})")
        if roc:
            ax.plot([0, 1], [0, 1], color="0.8", lw=0.8, ls="--")
            ax.axhline(0.95, color="0.7", lw=0.6, ls=":")
            ax.set(title=f"ROC: {s}", xlabel="ID flagged as OOD (FPR)", ylabel="OOD detected (TPR)")
        else:
            ax.set(title=f"PR (OOD positive): {s}", xlabel="recall", ylabel="precision")
        ax.set(xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(fontsize=7, loc="lower right" if roc else "lower left")
    return _png(fig)


def roc_curves(entries: list[Entry]) -> bytes:
    return _curves(entries, roc=True)


def pr_curves(entries: list[Entry]) -> bytes:
    return _curves(entries, roc=False)


def score_histograms(entry: Entry) -> bytes:
    ss = entry.scores
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ood = np.concatenate([v.numpy() for v in ss.ood_score.values()])
    id_s = ss.id_score.numpy()
    lo, hi = np.percentile(np.r_[id_s, ood], [0.5, 99.5])
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 60)
    if ss.id_label is not None and ss.class_counts is not None:
        labels = ss.id_label.numpy()
        for name, classes in shot_groups(ss.class_counts).items():
            sel = np.isin(labels, classes)
            if sel.any():
                ax.hist(id_s[sel], bins=bins, density=True, histtype="step", lw=1.6, label=f"ID {name}-shot")
    else:
        ax.hist(id_s, bins=bins, density=True, histtype="step", lw=1.6, label="ID")
    ax.hist(ood, bins=bins, density=True, alpha=0.35, color="0.3", label="OOD (all sets)")
    ax.set(title=f"{entry.label}: score distribution (higher = more OOD)", xlabel="OOD score", ylabel="density")
    ax.legend(fontsize=8)
    return _png(fig)


def per_class(entries: list[Entry]) -> bytes | None:
    usable = [e for e in entries if e.scores.id_label is not None and e.scores.class_counts is not None and "id" in e.result]
    if not usable:
        return None
    fig, (acc_ax, fpr_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    models = set()
    for e in usable:
        counts = np.asarray(e.scores.class_counts)
        order = np.argsort(-counts)
        model = e.scores.meta.get("checkpoint_sha256") or e.run
        if model not in models:  # accuracy belongs to the model, not the detector: one line per run
            models.add(model)
            acc = np.array([np.nan if a is None else a for a in e.result["id"]["per_class"]])
            acc_ax.plot(counts[order], acc[order], marker="o", ms=3, label=e.run or "model")
        labels, id_s = e.scores.id_label.numpy(), e.scores.id_score.numpy()
        thresholds = [g["threshold"] for g in e.result.get("groups", {}).values()]
        if thresholds:
            flagged = np.mean([id_s >= t for t in thresholds], axis=0)
            rate = np.array([flagged[labels == k].mean() if (labels == k).any() else np.nan for k in range(counts.size)])
            fpr_ax.plot(counts[order], rate[order], marker="o", ms=3, label=e.label)
    for ax, what in ((acc_ax, "accuracy"), (fpr_ax, "ID flagged as OOD at the FPR95 threshold")):
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set(xlabel="training images of the class (head → tail)", ylabel=what, ylim=(-0.02, 1.02), title=f"per class: {what}")
        ax.legend(fontsize=7)
    return _png(fig)
