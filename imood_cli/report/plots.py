"""The figures of `imood report`, drawn on matplotlib Figure objects (no pyplot state, no display): PNG for
report.html, SVG and PDF for `--figures DIR`, all encoded from the same Figure.

Which rows are drawn is report/selection.py's choice (one curve per distinct set of scores). Names are plain
text, never mathtext: a `$` in an OOD set's name is a dollar sign. Fonts are sized for the page: a figure is
drawn about as wide as report.html shows it, so 9-11 pt text reads as 9-11 pt. Score histograms span finite
percentiles of the scores (drawn in units of a power of ten when the scores are huge), so scores near ±1e308
draw like any others, the extremes piled into the end bins.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from imood_cli import __version__
from imood_cli.engine.metrics.groups import shot_groups
from imood_cli.engine.metrics.ranking import curve
from imood_cli.report.results import Entry, Report
from imood_cli.report.selection import Drawn, choose
from imood_cli.report.tables import sort_key

MAX_POINTS = 2000
PLAIN_TEXT = {"text.usetex": False, "text.parse_math": False}
STYLE = {
    **PLAIN_TEXT, "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 11,
    "svg.hashsalt": "imood", "svg.fonttype": "path", "pdf.fonttype": 42,  # SVG ids fixed; PDF fonts TrueType
}
CREATOR = f"imood report {__version__}"  # in every SVG and PDF: report/figures.py replaces only files with it
GROUP_COLORS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
HIST_RANGE = (0.5, 99.5)  # percentiles a histogram spans
PALETTE = [f"C{i}" for i in range(10)]
DASHED = (0, (4, 2))
MAX_LABEL = 60  # characters of a name in a legend or on an axis


def _styled(fn):
    """Every Text of the figure is created and drawn with mathtext and TeX off, at the page's font sizes."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


@dataclass
class Plot:
    """One figure: `key` is its file name stem (report/figures.py makes it safe), `section` where the page
    shows it (roc, pr, ranking, class, scores), `caption` what it shows."""

    key: str
    section: str
    caption: str
    figure: Figure
    alt: str = ""


@_styled
def encode(fig: Figure, fmt: str) -> bytes:
    """The figure as PNG (100 dpi, the page's scale), SVG (text as paths) or PDF (TrueType fonts); no date, so
    the same report gives the same bytes."""
    buf = io.BytesIO()
    if fmt == "png":
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": CREATOR})
    elif fmt == "svg":
        fig.savefig(buf, format="svg", metadata={"Creator": CREATOR, "Date": None})
    elif fmt == "pdf":
        fig.savefig(buf, format="pdf", metadata={"Creator": CREATOR, "CreationDate": None})
    else:
        raise ValueError(f"unknown figure format {fmt!r}")
    return buf.getvalue()


def _short(text: str, n: int = MAX_LABEL) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _thin(*arrays: np.ndarray) -> list[np.ndarray]:
    n = arrays[0].size
    if n <= MAX_POINTS:
        return list(arrays)
    idx = np.unique(np.linspace(0, n - 1, MAX_POINTS).astype(int))
    return [a[idx] for a in arrays]


def _grid(n: int, cols: int = 3, width: float = 4.0, height: float = 3.6, extra: float = 0.0):
    cols = max(1, min(n, cols))
    rows = -(-n // cols)
    fig = Figure(figsize=(width * cols, height * rows + extra), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


def line_styles(entries: list[Entry]) -> dict[int, tuple[str, object]]:
    """(colour, line style) per row: a detector and its ada_ form share a colour, the base dashed and the
    ada_ form solid, so each pair reads as one comparison; the same in every panel."""
    family: dict[tuple, int] = {}
    forms: dict[tuple, set[bool]] = {}
    for e in entries:
        key = (e.run, str(e.run_path), e.metric.removeprefix("ada_"))
        family.setdefault(key, len(family))
        forms.setdefault(key, set()).add(e.metric.startswith("ada_"))
    out = {}
    for e in entries:
        key = (e.run, str(e.run_path), e.metric.removeprefix("ada_"))
        paired = len(forms[key]) == 2
        out[id(e)] = (PALETTE[family[key] % len(PALETTE)],
                      DASHED if paired and not e.metric.startswith("ada_") else "-")
    return out


def _shared_legend(fig: Figure, handles: list, labels: list[str], title: str | None = None) -> None:
    if not handles:
        return
    labels = [_short(x) for x in labels]
    ncols = 1 if len(handles) == 1 or max(map(len, labels)) > 48 else 2
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, frameon=False, handlelength=2.6,
               title=title)


# ---- ROC and precision-recall, one panel per OOD set
def _curves(drawn: Drawn, roc: bool, log_fpr: bool = False) -> Figure | None:
    report = drawn.report
    if not report.sets or not report.entries:
        return None
    styles = line_styles(report.entries)
    n_lines = len(report.entries)
    fig, axes = _grid(len(report.sets), extra=0.35 + 0.22 * math.ceil(n_lines / 2))
    left = None
    if roc and log_fpr:
        n_id = max(int(e.scores.id_score.size) for e in report.entries)
        left = 10.0 ** math.floor(math.log10(1.0 / n_id))  # a decade below the smallest FPR one ID image makes
    handles: dict[int, Line2D] = {}
    for ax, s in zip(axes, report.sets):
        mine, values = [], []
        for e in report.entries:
            color, ls = styles[id(e)]
            if s not in e.scores.ood_score:
                mine.append(Line2D([], [], color=color, ls=ls, lw=1.6))
                values.append("not scored")
                continue
            c = curve(e.scores.id_score, e.scores.ood_score[s])
            tps, fps = np.asarray(c.tps, np.float64), np.asarray(c.fps, np.float64)
            m = e.result["ood"][s]
            if roc:
                x, y = np.r_[0.0, fps / c.n_id], np.r_[0.0, tps / c.n_ood]
                if left is not None:  # FPR 0 sits at the left edge of the log axis
                    x = np.maximum(x, left)
                x, y = _thin(x, y)
                values.append(f"{100 * m['auroc']:.1f} / {100 * m['fpr95']:.1f}")
            else:
                x, y = _thin(tps / c.n_ood, tps / (tps + fps))
                values.append(f"{100 * m['aupr_out']:.1f}")
            line = ax.plot(x, y, color=color, ls=ls, lw=1.6, label=drawn.name(e))[0]  # the label names the row
            if roc:  # FPR95: the ID fraction flagged where 95% of this set is detected
                ax.plot([max(m["fpr95"], left or 0.0)], [0.95], ls="none", marker="o", ms=6.5, mfc=color,
                        mec="white", mew=1.0, zorder=4, clip_on=False)
            handles.setdefault(id(e), line)
            mine.append(line)
        if roc:
            if left is not None:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # the default is mathtext
                ax.set_xlim(left, 1.0)
                grid = np.logspace(math.log10(left), 0, 200)
                ax.plot(grid, grid, color="0.8", lw=0.8, ls="--")
            else:
                ax.plot([0, 1], [0, 1], color="0.8", lw=0.8, ls="--")
                ax.set_xlim(0, 1)
            ax.axhline(0.95, color="0.45", lw=0.8, ls=":", zorder=1)
            ax.text(1.01, 0.95, "95%", transform=ax.get_yaxis_transform(), ha="left", va="center", fontsize=8,
                    color="0.35")
            ax.set_xlabel("FPR: ID flagged as OOD" + (" (log scale)" if left is not None else ""))
            ax.set_ylabel("TPR: OOD detected")
        else:
            ax.set(xlabel="recall (OOD)", ylabel="precision (OOD)", xlim=(0, 1))
        ax.set_ylim(0, 1.01)
        ax.set_title(s)
        ax.grid(True, color="0.92", lw=0.6)
        ax.legend(mine, values, loc="lower right" if roc else "lower left", handlelength=1.8,
                  title="AUROC / FPR95 (%)" if roc else "AUPR-out (%)", framealpha=0.92)
    _shared_legend(fig, list(handles.values()), [drawn.name(e) for e in report.entries if id(e) in handles])
    return fig


@_styled
def roc_figure(drawn: Drawn, log_fpr: bool = True) -> Figure | None:
    return _curves(drawn, roc=True, log_fpr=log_fpr)


@_styled
def pr_figure(drawn: Drawn) -> Figure | None:
    return _curves(drawn, roc=False)


# ---- every distinct row, ranked
@_styled
def ranking_figure(drawn: Drawn, sort: str | None = None, sets_differ: bool = False) -> Figure | None:
    """Mean AUROC and mean FPR95 of every distinct row side by side, ranked by AUROC (or FPR95 under
    --sort fpr95); AUROC bars start at chance (50%)."""
    by = sort if sort in ("auroc", "fpr95") else "auroc"
    rows = [e for e in drawn.distinct if e.result.get("ood", {}).get("mean")]
    if len(rows) < 2:
        return None
    rows = sorted(rows, key=lambda e: sort_key(by, e.label, e.result["ood"]["mean"].get(by)))
    runs = list(dict.fromkeys(e.run for e in rows))
    n = len(rows)
    fig = Figure(figsize=(11, 1.5 + 0.27 * n), layout="constrained")
    ax_a, ax_f = fig.subplots(1, 2, sharey=True)
    y = np.arange(n)
    if len(runs) > 1:
        colors = [PALETTE[runs.index(e.run) % len(PALETTE)] for e in rows]
        legend = [Patch(color=PALETTE[i % len(PALETTE)], label=_short(r)) for i, r in enumerate(runs)]
    else:
        colors = ["tab:orange" if e.metric.startswith("ada_") else "tab:blue" for e in rows]
        legend = [Patch(color="tab:blue", label="detector"), Patch(color="tab:orange", label="its ada_ form")]
    auroc = np.array([100 * e.result["ood"]["mean"]["auroc"] for e in rows])
    fpr = np.array([100 * e.result["ood"]["mean"]["fpr95"] for e in rows])
    floor = min(50.0, 5 * math.floor(auroc.min() / 5))
    ax_a.barh(y, auroc - floor, left=floor, color=colors, height=0.72)
    ax_a.set_xlim(floor, 100 + 0.09 * (100 - floor))
    ax_f.barh(y, fpr, color=colors, height=0.72)
    ax_f.set_xlim(0, min(100.0, max(10.0, 1.18 * fpr.max())) if fpr.max() < 100 else 109)
    for ax, vals in ((ax_a, auroc), (ax_f, fpr)):
        for yi, v in zip(y, vals):
            ax.text(v, yi, f" {v:.1f}", va="center", ha="left", fontsize=8)
        ax.grid(True, axis="x", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
    ax_a.set_yticks(y, [_short(drawn.name(e), 48) for e in rows])
    ax_a.set_ylim(n - 0.5, -0.5)  # best at the top, no empty rows around the bars
    ax_a.set_title("mean AUROC (%) ↑" + ("  (ranked)" if by == "auroc" else ""))
    ax_f.set_title("mean FPR95 (%) ↓" + ("  (ranked)" if by == "fpr95" else ""))
    ax_a.set_xlabel(f"AUROC, bars from {floor:g} (chance is 50)")
    ax_f.set_xlabel("FPR95: ID flagged at 95% TPR")
    over = "each row's own OOD sets (they differ)" if sets_differ else "the OOD sets"
    fig.suptitle(f"Every distinct detector, mean over {over}")
    fig.legend(handles=legend, loc="outside lower center", ncols=len(legend), frameon=False)
    return fig


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


def class_names(entries: list[Entry], k: int) -> list[str] | None:
    """The class names a score file records (`class_names` in its metadata: k printable names), shortened
    for an axis; None when no file of these rows has them (the axis then shows class ids)."""
    for e in entries:
        names = e.scores.meta.get("class_names")
        if (isinstance(names, list) and len(names) == k
                and all(isinstance(n, str) and n.strip() and n.isprintable() for n in names)):
            return [_short(n.strip(), 16) for n in names]
    return None


def _tick_plan(k: int, names: list[str] | None, px: float) -> tuple[int, int]:
    """(step, rotation) of the class ticks of an axis about `px` pixels wide: every class whose label fits
    side by side (about 6 px a character at 8-9 pt), else labels longer than 3 characters written upwards
    (13 px a label), else every step-th class."""
    longest = max(map(len, names)) if names else len(str(k - 1))
    flat = px / (6.0 * (longest + 1))
    if k <= flat:
        return 1, 0
    if longest <= 3:
        return int(math.ceil(k / flat)), 0
    return int(math.ceil(k / (px / 13.0))), 90


def _class_axis(ax, counts: np.ndarray, order: np.ndarray, groups: dict[str, np.ndarray],
                names: list[str] | None = None, px: float = 1000) -> None:
    """Class names (or ids) as ticks, head to tail, with the shot-group boundaries and names."""
    k = counts.size
    step, rotate = _tick_plan(k, names, px)
    ticks = np.arange(0, k, step)
    ax.set_xticks(ticks)
    ax.set_xticklabels([names[int(c)] if names else str(int(c)) for c in order[ticks]],
                       fontsize=8 if len(ticks) > 20 else 9, rotation=rotate)
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_xlabel(f"{'class' if names else 'class id'}, sorted by training images (head → tail)")
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
                    va="bottom", fontsize=9, color=GROUP_COLORS[name])
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
    bars.tick_params(axis="y", colors="0.45", labelsize=8)
    ax.set_zorder(bars.get_zorder() + 1)
    ax.patch.set_visible(False)


@_styled
def per_class_figures(drawn: Drawn) -> list[tuple[str, Figure]]:
    """Per class against its training count: accuracy of each model and, one panel per OOD set, the
    fraction of the class's ID images flagged as OOD at that set's FPR95 threshold. One figure per
    distinct training split (rows trained on other class counts get their own)."""
    report = drawn.report
    usable = [e for e in report.entries
              if "id" in e.result and e.scores.class_counts is not None and e.scores.id_label is not None]
    by_counts: dict[tuple[int, ...], list[Entry]] = {}
    for e in usable:
        by_counts.setdefault(tuple(e.scores.class_counts), []).append(e)
    styles = line_styles(report.entries)
    figures = []
    for counts_key, entries in by_counts.items():
        counts = np.asarray(counts_key, np.int64)
        k = counts.size
        order = np.argsort(-counts, kind="stable")
        groups = shot_groups(counts)
        names = class_names(entries, k)
        sets = [s for s in report.sets if any(s in e.result.get("groups", {}) for e in entries)]
        cols = 2 if len(sets) > 1 else 1
        rows = 1 + -(-len(sets) // cols)
        longest = max(map(len, names)) if names else 0
        tall = 0.07 * longest if any(_tick_plan(k, names, px)[1] for px in (1000, 480)) else 0.0  # names upwards
        fig = Figure(figsize=(12, (3.7 + tall) * rows), layout="constrained")
        fig.get_layout_engine().set(h_pad=0.15, w_pad=0.1)
        grid = fig.add_gridspec(rows, cols)
        acc_ax = fig.add_subplot(grid[0, :])
        _count_bars(acc_ax, counts, order)
        marker = {"marker": "o", "ms": 3.5} if k <= 60 else {}
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
            acc_ax.plot(x, y, lw=1.4, label=_short(name), **marker)
        _fitted_ylim(acc_ax, acc_values)
        acc_ax.set_ylabel("ID accuracy")
        per = "per class" if width == 1 else f"mean over each {width} consecutive classes"
        acc_ax.set_title(f"accuracy, {per} (classes: {_group_sizes(groups)})", pad=16)
        _class_axis(acc_ax, counts, order, groups, names, px=1000)
        acc_ax.legend(loc="upper left", bbox_to_anchor=(1.07, 1), frameon=False, title="model")
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
                color, ls = styles[id(e)]
                line = ax.plot(x, y, lw=1.3, color=color, ls=ls, label=drawn.name(e), **marker)[0]
                handles.setdefault(drawn.name(e), line)
            _fitted_ylim(ax, rates)
            ax.set_ylabel("ID flagged as OOD")
            ax.set_title(f"at the FPR95 threshold of OOD set {s}", pad=16)
            _class_axis(ax, counts, order, groups, names, px=1000 if cols == 1 else 480)
        if handles:  # the colours are the same in every panel: one legend for all of them
            title = "run · detector" if len(report.runs) > 1 else "detector"
            if len(sets) % cols:  # in the empty cell of the last row
                spare = fig.add_subplot(grid[rows - 1, cols - 1])
                spare.axis("off")
                spare.legend(list(handles.values()), [_short(x) for x in handles], loc="center left",
                             frameon=False, title=title, handlelength=2.6)
            else:
                _shared_legend(fig, list(handles.values()), list(handles), title=title)
        dataset = next((e.scores.meta.get("dataset") for e in entries if e.scores.meta.get("dataset")), None)
        caption = (f"{dataset + ': ' if isinstance(dataset, str) else ''}{k} classes sorted by their training images "
                   "(grey bars, right axis); dashed lines separate the many-, medium- and few-shot groups. Top: ID "
                   "accuracy per class, one line per model. Below, one panel per OOD set: the fraction of each "
                   "class's ID test images scored at or above that set's FPR95 threshold.")
        figures.append((caption, fig))
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


@_styled
def histogram_figure(entry: Entry, title: str | None = None) -> Figure:
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
                    ax.hist(scaled(id_s[sel]), bins=edges, density=True, histtype="step", lw=1.5,
                            color=GROUP_COLORS[name], label=f"ID {name}-shot")
        else:
            ax.hist(scaled(id_s), bins=edges, density=True, histtype="step", lw=1.5, color="tab:blue", label="ID")
        ax.hist(scaled(ood), bins=edges, density=True, alpha=0.35, color="0.3", label="OOD set")
        ax.axvline(min(max(threshold / unit, lo), hi), color="k", ls="--", lw=1, label="its FPR95 threshold")
        fpr = entry.result["ood"][s]["fpr95"]
        ax.set_title(f"{s}: {100 * fpr:.1f}% of ID at or above the threshold", fontsize=10)
        ax.set_xlabel("OOD score" + (f" (units of {unit:.0e})" if unit != 1.0 else ""))
        ax.set_ylabel("density")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", frameon=False)
    fig.suptitle(f"{_short(title or entry.label, 100)} (higher = more OOD)")
    return fig


# ---- every figure of a report
ROC_CAPTION = ("One panel per OOD set, one line per detector (a detector dashed, its ada_ form solid in the same "
               "colour). Dots: each curve's FPR95, the fraction of ID images flagged where 95% of the set is "
               "detected (the dotted line, TPR 95%). The box in each panel gives AUROC / FPR95 (%).")


def build(report: Report, per_run: int = 4, curves: list[str] | None = None, log_fpr: bool = True,
          sort: str | None = None) -> tuple[Drawn, list[Plot]]:
    """The rows to draw and every figure of the report, in page order: ranking, ROC, PR, per class, one
    score histogram per drawn row."""
    drawn = choose(report, per_run, curves)
    out = []
    rank = ranking_figure(drawn, sort, report.sets_differ)
    if rank is not None:
        out.append(Plot("ranking", "ranking", "Mean AUROC and FPR95 of every distinct detector of the report "
                        "(identical scores once), best first.", rank, "ranking of the detectors"))
    roc = roc_figure(drawn, log_fpr)
    if roc is not None:
        scale = (" The FPR axis is logarithmic, so the low-FPR region and each FPR95 stay apart (--linear-fpr: "
                 "linear)." if log_fpr else " The FPR axis is linear.")
        out.append(Plot("roc", "roc", ROC_CAPTION + scale, roc, "ROC curves"))
    pr = pr_figure(drawn)
    if pr is not None:
        out.append(Plot("pr", "pr", "Precision and recall with OOD as the positive class, one panel per OOD set; "
                        "the box gives AUPR-out (%).", pr, "PR curves"))
    per_class = per_class_figures(drawn)
    for i, (caption, fig) in enumerate(per_class):
        out.append(Plot("per-class" if len(per_class) == 1 else f"per-class-{i + 1}", "class", caption, fig,
                        caption))
    for e in drawn.report.entries:
        key = "scores-" + (f"{e.run}-" if e.run else "") + e.metric
        out.append(Plot(key, "scores", "", histogram_figure(e, drawn.name(e)), f"scores of {e.label}"))
    return drawn, out
