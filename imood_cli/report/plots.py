"""Figures for report.html, as PNG bytes, drawn on matplotlib Figure objects (no pyplot state, no display).

Names are plain text, never mathtext: a `$` in an OOD set's name is a dollar sign. Score histograms
span finite percentiles of the scores (drawn in units of a power of ten when the scores are huge),
so scores near ±1e308 draw like any others, the extremes piled into the end bins.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from imood_cli.engine.metrics.groups import shot_groups
from imood_cli.engine.metrics.ranking import curve
from imood_cli.report.results import Entry, Report

MAX_POINTS = 2000
PLAIN_TEXT = {"text.usetex": False, "text.parse_math": False}
GROUP_COLORS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
HIST_RANGE = (0.5, 99.5)  # percentiles a histogram spans


def _plain_text(fn):
    """Every Text of the figure is created and drawn with mathtext and TeX off."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with rc_context(PLAIN_TEXT):
            return fn(*args, **kwargs)
    return wrapper


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)  # the constrained layout already fits titles and legends
    return buf.getvalue()


def _thin(*arrays: np.ndarray) -> list[np.ndarray]:
    n = arrays[0].size
    if n <= MAX_POINTS:
        return list(arrays)
    idx = np.unique(np.linspace(0, n - 1, MAX_POINTS).astype(int))
    return [a[idx] for a in arrays]


def _grid(n: int, cols: int = 3, width: float = 4.2, height: float = 3.7):
    cols = max(1, min(n, cols))
    rows = -(-n // cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


HEADLINE = ("msp", "energy", "bin_disc", "maxlogit")


def _rank(e: Entry, first: list[str], rows: list[Entry]) -> tuple[int, int]:
    base = e.metric.split(":")[0].removeprefix("ada_")
    return (first.index(base) if base in first else len(first), rows.index(e))


def select_entries(report: Report, per_run: int) -> Report:
    """The report restricted to at most `per_run` detectors of each run for the figures (0: every one): the
    run's training detector and msp / energy first, each followed by its ada_ form, then the others in report
    order. Tables always show every row; drawing 45 detectors (-m all) would make an unreadable figure."""
    if per_run <= 0:
        return report
    chosen = []
    for run in dict.fromkeys(e.run for e in report.entries):
        rows = [e for e in report.entries if e.run == run]
        trained = str(rows[0].scores.meta.get("trained_with") or "").split(":")[0].removeprefix("ada_") if rows else ""
        first = [trained, *HEADLINE]

        chosen += sorted(rows, key=functools.partial(_rank, first=first, rows=rows))[:per_run]
    keep = {id(e) for e in chosen}
    return dataclasses.replace(report, entries=[e for e in report.entries if id(e) in keep])


def _colors(report: Report) -> dict[int, str]:
    """One colour per row of the report, the same in every panel."""
    palette = [f"C{i}" for i in range(10)]
    return {id(e): palette[i % len(palette)] for i, e in enumerate(report.entries)}


def _curves(report: Report, roc: bool) -> bytes | None:
    """One panel per OOD set, one line per row: ROC, or precision-recall with OOD positive."""
    if not report.sets:
        return None
    colors = _colors(report)
    fig, axes = _grid(len(report.sets))
    for ax, s in zip(axes, report.sets):
        for e in report.entries:
            if s not in e.scores.ood_score:
                ax.plot([], [], ls="none", label=f"{e.label}: not scored on this set")
                continue
            c = curve(e.scores.id_score, e.scores.ood_score[s])
            tps, fps = np.asarray(c.tps, np.float64), np.asarray(c.fps, np.float64)
            if roc:
                x, y = _thin(np.r_[0.0, fps / c.n_id], np.r_[0.0, tps / c.n_ood])
                area = e.result["ood"][s]["auroc"]
            else:
                x, y = _thin(tps / c.n_ood, tps / (tps + fps))
                area = e.result["ood"][s]["aupr_out"]
            ax.plot(x, y, color=colors[id(e)], lw=1.3, label=f"{e.label} ({100 * area:.1f})")
        if roc:
            ax.plot([0, 1], [0, 1], color="0.8", lw=0.8, ls="--")
            ax.axhline(0.95, color="0.7", lw=0.6, ls=":")
            ax.set(xlabel="ID flagged as OOD (FPR)", ylabel="OOD detected (TPR)")
        else:
            ax.set(xlabel="recall (OOD)", ylabel="precision (OOD)")
        ax.set_title(f"{'ROC' if roc else 'PR'}: {s}", fontsize=10)
        ax.set(xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(fontsize=7, loc="lower right" if roc else "lower left",
                  title="AUROC %" if roc else "AUPR-out %", title_fontsize=7)
    return _png(fig)


@_plain_text
def roc_curves(report: Report) -> bytes | None:
    return _curves(report, roc=True)


@_plain_text
def pr_curves(report: Report) -> bytes | None:
    return _curves(report, roc=False)


# ---- per class, head to tail
def _fitted_ylim(ax, values: list[np.ndarray], margin: float = 0.05) -> None:
    """The y range the data needs (within [0, 1]), so small differences between classes are visible."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    if finite.size == 0:
        ax.set_ylim(0, 1)
        return
    lo, hi = max(0.0, float(finite.min()) - margin), min(1.0, float(finite.max()) + margin)
    if hi - lo < 0.1:
        mid = (hi + lo) / 2
        lo, hi = max(0.0, mid - 0.05), min(1.0, mid + 0.05)
    ax.set_ylim(lo - 0.01, hi + 0.01)


def _class_axis(ax, counts: np.ndarray, order: np.ndarray, groups: dict[str, np.ndarray]) -> None:
    """Class ids as ticks, head to tail, with the shot-group boundaries and names."""
    k = counts.size
    step = 1 if k <= 40 else int(math.ceil(k / 20))
    ticks = np.arange(0, k, step)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(int(c)) for c in order[ticks]], fontsize=7, rotation=90 if k > 20 else 0)
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_xlabel("class id, sorted by training images (head → tail)")
    start = 0
    for name in ("many", "medium", "few"):
        n = len(groups[name])
        if n == 0:
            continue
        if start > 0:
            ax.axvline(start - 0.5, color="0.35", ls="--", lw=0.9)
        ax.axvspan(start - 0.5, start + n - 0.5, color=GROUP_COLORS[name], alpha=0.05, lw=0)
        if n >= 0.12 * k:  # a narrow group is named in the title only, so names never overlap
            ax.text(start + n / 2 - 0.5, 1.01, name, transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=8, color=GROUP_COLORS[name])
        start += n


def _group_sizes(groups: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {len(groups[name])}" for name in ("many", "medium", "few"))


def _binned(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(centre, mean) of each run of `width` consecutive classes: with hundreds of classes of a few test images
    each, single classes are noise; the mean over neighbours in the head-to-tail order shows the trend."""
    if width == 1:
        return np.arange(values.size, dtype=np.float64), values
    starts = np.arange(0, values.size, width)
    with np.errstate(invalid="ignore"):
        means = np.array([np.nanmean(values[i:i + width]) if np.isfinite(values[i:i + width]).any() else np.nan
                          for i in starts])
    return starts + (np.minimum(starts + width, values.size) - starts - 1) / 2, means


def _count_bars(ax, counts: np.ndarray, order: np.ndarray) -> None:
    """Training images per class as grey bars on a second axis, behind the lines."""
    bars = ax.twinx()
    edges = np.arange(counts.size + 1) - 0.5  # one filled outline, not one patch per class
    bars.stairs(counts[order], edges, fill=True, color="0.91", baseline=0.8 if counts.min() > 0 else 0, zorder=0)
    if counts.min() > 0 and counts.max() / counts.min() > 20:
        bars.set_yscale("log")
        bars.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # the default is mathtext
        bars.yaxis.set_minor_formatter(NullFormatter())
    bars.set_ylabel("training images", color="0.45")
    bars.tick_params(axis="y", colors="0.45", labelsize=7)
    ax.set_zorder(bars.get_zorder() + 1)
    ax.patch.set_visible(False)


@_plain_text
def per_class(report: Report) -> list[tuple[str, bytes]]:
    """Per class against its training count: accuracy of each model and, one panel per OOD set, the
    fraction of the class's ID images flagged as OOD at that set's FPR95 threshold. One figure per
    distinct training split (rows trained on other class counts get their own)."""
    usable = [e for e in report.entries
              if "id" in e.result and e.scores.class_counts is not None and e.scores.id_label is not None]
    by_counts: dict[tuple[int, ...], list[Entry]] = {}
    for e in usable:
        by_counts.setdefault(tuple(e.scores.class_counts), []).append(e)
    colors = _colors(report)
    figures = []
    for counts_key, entries in by_counts.items():
        counts = np.asarray(counts_key, np.int64)
        k = counts.size
        order = np.argsort(-counts, kind="stable")
        groups = shot_groups(counts)
        sets = [s for s in report.sets if any(s in e.result.get("groups", {}) for e in entries)]
        cols = 2 if len(sets) > 1 else 1
        rows = 1 + -(-len(sets) // cols)
        fig = Figure(figsize=(12, 3.6 * rows), layout="constrained")
        fig.get_layout_engine().set(h_pad=0.15, w_pad=0.1)
        grid = fig.add_gridspec(rows, cols)
        acc_ax = fig.add_subplot(grid[0, :])
        _count_bars(acc_ax, counts, order)
        marker = {"marker": "o", "ms": 3} if k <= 60 else {}
        width = 1 if k <= 100 else int(math.ceil(k / 50))
        seen, acc_values = set(), []
        for e in entries:
            if e.model in seen:  # accuracy belongs to the model, not the detector: one line per model
                continue
            seen.add(e.model)
            acc = np.array([np.nan if a is None else a for a in e.result["id"]["per_class"]], np.float64)
            x, y = _binned(acc[order], width)
            acc_values.append(y)
            name = (e.run or report.runs[0][0]) + (" (stale)" if e.stale else "")
            acc_ax.plot(x, y, lw=1.2, label=name, **marker)
        _fitted_ylim(acc_ax, acc_values)
        acc_ax.set_ylabel("ID accuracy")
        per = "per class" if width == 1 else f"mean over each {width} consecutive classes"
        acc_ax.set_title(f"accuracy, {per} (classes: {_group_sizes(groups)})", fontsize=10, pad=16)
        _class_axis(acc_ax, counts, order, groups)
        acc_ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.07, 1), frameon=False, title="model",
                      title_fontsize=8)
        handles: dict[str, object] = {}
        for i, s in enumerate(sets):
            ax = fig.add_subplot(grid[1 + i // cols, i % cols])
            rates = []
            for e in entries:
                if s not in e.result.get("groups", {}):
                    continue
                labels = np.asarray(e.scores.id_label, np.int64)
                flagged = np.asarray(e.scores.id_score, np.float64) >= e.result["groups"][s]["threshold"]
                seen_k = np.bincount(labels, minlength=k).astype(np.float64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    rate = np.bincount(labels, weights=flagged, minlength=k) / seen_k
                rate[seen_k == 0] = np.nan
                x, y = _binned(rate[order], width)
                rates.append(y)
                line = ax.plot(x, y, lw=1.1, color=colors[id(e)], label=e.label, **marker)[0]
                handles.setdefault(e.label, line)
            _fitted_ylim(ax, rates)
            ax.set_ylabel("ID flagged as OOD")
            ax.set_title(f"at the FPR95 threshold of OOD set {s}", fontsize=10, pad=16)
            _class_axis(ax, counts, order, groups)
        if handles:  # the colours are the same in every panel: one legend for all of them
            fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=8, frameon=False,
                       title="run · detector", title_fontsize=8)
        dataset = next((e.scores.meta.get("dataset") for e in entries if e.scores.meta.get("dataset")), None)
        caption = (f"{dataset + ': ' if isinstance(dataset, str) else ''}{k} classes sorted by their training images "
                   "(grey bars, right axis); dashed lines separate the many-, medium- and few-shot groups. Top: ID "
                   "accuracy per class, one line per model. Below, one panel per OOD set: the fraction of each "
                   "class's ID test images scored at or above that set's FPR95 threshold.")
        figures.append((caption, _png(fig)))
    return figures


# ---- score distributions
def _span(values: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(low, high, unit): the histogram's range in units of `unit`, covering the central percentiles and the
    threshold; `unit` is a power of ten that keeps huge scores and their differences finite."""
    lo = float(np.percentile(values, HIST_RANGE[0], method="lower"))
    hi = float(np.percentile(values, HIST_RANGE[1], method="higher"))
    lo, hi = min(lo, threshold), max(hi, threshold)
    biggest = max(abs(lo), abs(hi))
    unit = 10.0 ** math.floor(math.log10(biggest)) if biggest > 1e6 else 1.0
    lo, hi = lo / unit, hi / unit
    if not np.all(np.diff(np.linspace(lo, hi, 61)) > 0):  # one value (or a subnormal range): a unit-wide window
        mid = lo / 2 + hi / 2
        lo, hi = mid - 0.5, mid + 0.5
    return lo, hi, unit


def _in_window(a: np.ndarray, unit: float, lo: float, hi: float) -> np.ndarray:
    return np.clip(a / unit, lo, hi)


@_plain_text
def score_histograms(entry: Entry) -> bytes:
    """One panel per OOD set: the ID scores (per shot group when labelled), the set's scores and its
    FPR95 threshold."""
    ss = entry.scores
    sets = entry.sets
    fig, axes = _grid(len(sets), cols=3, width=4.4, height=3.3)
    id_s = np.asarray(ss.id_score, np.float64)
    split = None
    if ss.id_label is not None and ss.class_counts is not None and "id" in entry.result:
        labels = np.asarray(ss.id_label, np.int64)
        split = {name: np.isin(labels, classes) for name, classes in shot_groups(ss.class_counts).items()}
    for ax, s in zip(axes, sets):
        ood = np.asarray(ss.ood_score[s], np.float64)
        threshold = float(entry.result["ood"][s]["threshold"])
        lo, hi, unit = _span(np.concatenate([id_s, ood]), threshold)
        edges = np.linspace(lo, hi, 1 + int(np.clip(2 * math.sqrt(min(id_s.size, ood.size)), 10, 60)))
        scaled = functools.partial(_in_window, unit=unit, lo=lo, hi=hi)
        if split:
            for name, sel in split.items():
                if sel.any():
                    ax.hist(scaled(id_s[sel]), bins=edges, density=True, histtype="step", lw=1.4,
                            color=GROUP_COLORS[name], label=f"ID {name}-shot")
        else:
            ax.hist(scaled(id_s), bins=edges, density=True, histtype="step", lw=1.4, color="tab:blue", label="ID")
        ax.hist(scaled(ood), bins=edges, density=True, alpha=0.35, color="0.3", label="OOD set")
        ax.axvline(min(max(threshold / unit, lo), hi), color="k", ls="--", lw=1, label="its FPR95 threshold")
        fpr = entry.result["ood"][s]["fpr95"]
        ax.set_title(f"{s}: {100 * fpr:.1f}% of ID at or above the threshold", fontsize=9)
        ax.set_xlabel("OOD score" + (f" (units of {unit:.0e})" if unit != 1.0 else ""))
        ax.set_ylabel("density")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"{entry.label} (higher = more OOD)", fontsize=10)
    return _png(fig)
