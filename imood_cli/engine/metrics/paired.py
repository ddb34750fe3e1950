"""Paired comparisons over seeds: is configuration B better than A, and by how much, with what certainty?

Two configurations trained on the same seeds give paired results (a_i, b_i); their differences d_i = b_i − a_i
are what a claim rests on. For each comparison: the mean difference with a 95% interval from Student's t and
from a percentile bootstrap of the pairs, the number of seeds on which B is better, and two-sided p-values of
the sign test and of Wilcoxon's signed-rank test. An interval that holds 0 is "no measurable effect".

numpy only at import; scipy (a dependency of scikit-learn) gives the t quantile and Wilcoxon's test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from imood_cli.errors import ImoodError

LEVEL = 0.95
BOOTSTRAP = 10_000


@dataclass(frozen=True)
class PairedDifference:
    """B − A over n paired seeds (in the units of the values, e.g. AUROC in [0, 1])."""

    n: int
    mean: float
    t_low: float | None  # None with fewer than 2 pairs
    t_high: float | None
    boot_low: float
    boot_high: float
    better: int  # pairs where B is better (higher, or lower when lower is better)
    worse: int
    p_sign: float
    p_wilcoxon: float | None  # None when every difference is 0
    higher_is_better: bool = True

    @property
    def measurable(self) -> bool:
        """The t interval (or, with one pair, the bootstrap's) excludes 0."""
        low, high = (self.t_low, self.t_high) if self.t_low is not None else (self.boot_low, self.boot_high)
        return low > 0 or high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "measurable": self.measurable}


def paired_difference(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True,
                      bootstrap: int = BOOTSTRAP, seed: int = 0, level: float = LEVEL) -> PairedDifference:
    """The paired comparison of B against A (same length, same seed order)."""
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1 or a_arr.size == 0:
        raise ImoodError(f"a paired comparison needs two equally long, non-empty lists, got {a_arr.size} and "
                         f"{b_arr.size} values")
    if not (np.isfinite(a_arr).all() and np.isfinite(b_arr).all()):
        raise ImoodError("a paired comparison needs finite values")
    d = b_arr - a_arr
    n = d.size
    mean = float(d.mean())
    t_low = t_high = None
    if n > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
        t_low, t_high = mean - half, mean + half
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(bootstrap, n))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    boot_low, boot_high = (float(x) for x in np.percentile(means, [tail, 100 - tail]))
    sign = 1.0 if higher_is_better else -1.0
    better, worse = int((sign * d > 0).sum()), int((sign * d < 0).sum())
    return PairedDifference(n, mean, t_low, t_high, boot_low, boot_high, better, worse, sign_test(better, worse),
                            wilcoxon_p(d), higher_is_better)


def sign_test(better: int, worse: int) -> float:
    """Two-sided exact sign test (ties dropped): P(a split at least as uneven) under p = 1/2."""
    m = better + worse
    if m == 0:
        return 1.0
    k = min(better, worse)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2**m
    return min(1.0, 2 * tail)


def wilcoxon_p(d: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of the differences (zeros dropped); None if all are zero."""
    if not np.any(d != 0):
        return None
    from scipy import stats

    return float(stats.wilcoxon(d[d != 0]).pvalue)


def describe(diff: PairedDifference, scale: float = 100.0, digits: int = 2) -> str:
    """'+1.97 [+0.81, +3.13] (14/15 better, sign p = 0.001)', or 'no measurable effect (...)'."""
    fmt = (lambda x: f"{scale * x:+.{digits}f}")
    low, high = (diff.t_low, diff.t_high) if diff.t_low is not None else (diff.boot_low, diff.boot_high)
    core = f"{fmt(diff.mean)} [{fmt(low)}, {fmt(high)}] ({diff.better}/{diff.n} better, sign p = {diff.p_sign:.3g})"
    return core if diff.measurable else f"no measurable effect: {core}"
