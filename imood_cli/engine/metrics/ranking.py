"""Detection metrics from scores: AUROC, AUPR-in, AUPR-out, FPR95 and their bootstrap intervals. OOD is the
positive class; a score is higher for more OOD.

AUROC, AUPR-out, AUPR-in and FPR95 all follow from one walk over the distinct scores in ascending
order, knowing at each distinct score v how many scores are <= v in all (E) and how many of them are
OOD (O). Ties are therefore grouped into one threshold, exactly as scikit-learn's curves group them.

The walk reads the pooled scores, sorted once, in blocks of `_BLOCK`: beyond the one sorted copy
of the scores (and its sort order, for general float64 scores) its memory is a few megabytes at any
size. Two ways to pool and sort, both exact:

- float32 scores (what score files hold), or float64 scores that are all float32 values, are widened
  to float64 and the last mantissa bit of each OOD score is set. A float32 value widened to float64
  has 29 zero bits at the bottom, so the tag moves no score past another distinct score: one
  in-place float64 sort orders the pool and keeps the ID/OOD label of every score (8 bytes a score).
- other float64 scores: each set is sorted on its own, then a stable argsort of the two sorted halves
  (a linear-time merge of two runs in numpy's timsort) tells which positions hold OOD scores (16
  bytes a score, and timsort's merge buffer of 8 bytes per score of the smaller set).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from imood_cli.errors import ImoodError

FPR95_CONVENTION = "fraction of ID samples scored at or above the first threshold whose OOD recall is >= 0.95"


RECALL_LEVEL = 0.95


METRIC_KEYS = ("auroc", "aupr_in", "aupr_out", "fpr95")


_BLOCK = 1 << 16  # scores per block of the walk: its temporaries stay in the CPU caches


_TAG = np.uint64(1)


_UNTAG = ~np.uint64(1)


@dataclass
class Curve:
    """Cumulative counts at each distinct score, from the highest score down."""

    thresholds: np.ndarray  # distinct scores, descending
    tps: np.ndarray  # OOD samples scored >= threshold
    fps: np.ndarray  # ID samples scored >= threshold
    n_ood: int
    n_id: int


def check_scores(scores, what: str) -> np.ndarray:
    """Scores as a flat float32 or float64 array (no copy when they already are one), or an ImoodError.

    float16 widens to float32; integers, booleans and wider floats become float64."""
    try:
        a = np.asarray(scores)
        if np.iscomplexobj(a):
            raise TypeError("complex")
        if a.dtype.kind == "f" and a.dtype.itemsize <= 4:
            a = a.astype(np.float32, copy=False)
        elif a.dtype != np.float64:
            a = a.astype(np.float64)
        a = a.ravel()
    except (TypeError, ValueError):
        raise ImoodError(f"{what}: scores must be real numbers") from None
    if a.size == 0:
        raise ImoodError(f"{what} has no scores")
    # min and max propagate NaN and expose ±inf without a full-size temporary
    if not (np.isfinite(a.min()) and np.isfinite(a.max())):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise ImoodError(f"{what} has {bad} NaN or infinite score(s)")
    return a


def _all_float32(a: np.ndarray) -> bool:
    if a.dtype == np.float32:
        return True
    with np.errstate(over="ignore"):  # a float64 beyond float32's range casts to inf, which differs from it
        for i in range(0, a.size, _BLOCK):
            block = a[i:i + _BLOCK]
            if not np.array_equal(block.astype(np.float32), block):
                return False
    return True


# A block is (index of its first score, keys of its scores plus the next block's first key when there
# is one, OOD flags of its scores as 64-bit 0/1); keys are equal exactly when the scores are.
_Block = tuple[int, np.ndarray, np.ndarray]


def _tagged_pool(id_s: np.ndarray, ood_s: np.ndarray) -> tuple[Iterator[_Block], Callable]:
    m, n = id_s.size, id_s.size + ood_s.size
    pool = np.empty(n, np.float64)
    pool[:m] = id_s
    pool[m:] = ood_s
    pool += 0.0  # -0.0 becomes +0.0: tagged, the two zeros would be two distinct scores
    bits = pool.view(np.uint64)
    np.bitwise_or(bits[m:], _TAG, out=bits[m:])
    pool.sort()

    def blocks() -> Iterator[_Block]:
        for i in range(0, n, _BLOCK):
            b = bits[i:i + _BLOCK + 1]
            size = min(_BLOCK, n - i)
            yield i, b & _UNTAG, b[:size] & _TAG

    return blocks(), lambda keys: keys.view(np.float64)


def _merged_pool(id_s: np.ndarray, ood_s: np.ndarray) -> tuple[Iterator[_Block], Callable]:
    m, n = id_s.size, id_s.size + ood_s.size
    pool = np.empty(n, np.float64)
    pool[:m] = id_s
    pool[m:] = ood_s
    pool[:m].sort()
    pool[m:].sort()
    order = np.argsort(pool, kind="stable")

    def blocks() -> Iterator[_Block]:
        for i in range(0, n, _BLOCK):
            o = order[i:i + _BLOCK + 1]
            size = min(_BLOCK, n - i)
            flags = np.empty(size, np.int64)
            np.greater_equal(o[:size], m, out=flags)
            yield i, pool[o], flags

    return blocks(), lambda keys: keys


def _pool(id_s: np.ndarray, ood_s: np.ndarray) -> tuple[Iterator[_Block], Callable]:
    if _all_float32(id_s) and _all_float32(ood_s):
        return _tagged_pool(id_s, ood_s)
    return _merged_pool(id_s, ood_s)


def _groups(blocks: Iterator[_Block]) -> Iterator[tuple[np.ndarray, np.ndarray, Callable[[slice], np.ndarray]]]:
    """Per block, the distinct scores whose last copy lies in it, ascending: (E, O, keys_of) where E
    counts all scores <= the distinct score and O the OOD scores among them (float64, whole numbers),
    each after one leading slot for the counts of the group before; keys_of(groups) gives their keys."""
    ood_before = 0.0
    for start, keys, flags in blocks:
        last = np.flatnonzero(keys[:-1] != keys[1:])
        if keys.size == flags.size:  # the final block, with no next key: its last score ends a group
            last = np.append(last, flags.size - 1)
        running = np.cumsum(flags)  # flags are 64-bit integers: a cumsum that casts is 3x slower
        if last.size:
            e, o = np.empty(last.size + 1), np.empty(last.size + 1)
            np.add(last, start + 1, out=e[1:])
            o[1:] = running[last]
            o[1:] += ood_before
            yield e, o, lambda groups, keys=keys, last=last: keys[last[groups]]
        ood_before += float(running[-1])


def _fpr95_rank(n_ood: int) -> int:
    """0-based ascending rank of the OOD score whose group is the first threshold, from the top, at
    which the OOD recall tps / n_ood (computed in float64, as the curve computes it) reaches 0.95."""
    need = min(max(math.ceil(RECALL_LEVEL * n_ood), 1), n_ood)
    while need > 1 and (need - 1) / n_ood >= RECALL_LEVEL:
        need -= 1
    while need / n_ood < RECALL_LEVEL:
        need += 1
    return n_ood - need


class _Walk:
    """The four metrics summed up group by group, ascending, from the counts E and O of `_groups`.

    With E', O' the counts strictly below a distinct score v (those of the group before), the group
    holds ood = O - O' OOD and idn = E - E' - ood ID scores, and
      AUROC    = sum idn * (#OOD > v + #OOD == v / 2) / (n_id n_ood)      (the ROC trapezoids)
      AUPR-out = sum ood / n_ood * (#OOD >= v) / (#all >= v)               (OOD positive, from the top)
      AUPR-in  = sum idn / n_id * (#ID <= v) / (#all <= v)                 (ID positive on -score)
    Twice the AUROC sum is a whole number, exact in float64 below 2**53 (up to ~10^8 scores).
    """

    def __init__(self, n_id: int, n_ood: int) -> None:
        self.n_id, self.n_ood, self.n = n_id, n_ood, n_id + n_ood
        self.rank95 = _fpr95_rank(n_ood)
        self.below, self.ood_below = 0.0, 0.0
        self.auroc2, self.aupr_out, self.aupr_in = 0, 0.0, 0.0
        self.fps95: int | None = None
        self.threshold = math.nan

    def add(self, e: np.ndarray, o: np.ndarray, keys_of: Callable[[slice], np.ndarray], decode: Callable) -> None:
        e[0], o[0] = self.below, self.ood_below
        e_now, e_prev, o_now, o_prev = e[1:], e[:-1], o[1:], o[:-1]
        ood = o_now - o_prev
        idn = e_now - e_prev
        idn -= ood
        # sum idn * (2 n_ood - O - O') = 2 n_ood * (ID scores in the block) - sum idn * (O + O')
        both = o_now + o_prev
        both *= idn
        self.auroc2 += 2 * self.n_ood * int((e[-1] - e[0]) - (o[-1] - o[0])) - int(both.sum())
        precision = self.n_ood - o_prev
        precision /= self.n - e_prev
        precision *= ood
        self.aupr_out += float(precision.sum())
        precision = e_now - o_now
        precision /= e_now
        precision *= idn
        self.aupr_in += float(precision.sum())
        if self.fps95 is None and o[-1] > self.rank95:
            g = int(np.searchsorted(o_now, self.rank95, side="right"))
            self.fps95 = self.n_id - int(e_prev[g] - o_prev[g])
            self.threshold = float(decode(keys_of(slice(g, g + 1)))[0])
        self.below, self.ood_below = e[-1], o[-1]

    def result(self) -> dict[str, float]:
        return {"auroc": self.auroc2 / (2 * self.n_id * self.n_ood), "aupr_in": self.aupr_in / self.n_id,
                "aupr_out": self.aupr_out / self.n_ood, "fpr95": self.fps95 / self.n_id,
                "threshold": self.threshold}


def _metrics(id_s: np.ndarray, ood_s: np.ndarray) -> dict[str, float]:
    blocks, decode = _pool(id_s, ood_s)
    walk = _Walk(id_s.size, ood_s.size)
    for e, o, keys_of in _groups(blocks):
        walk.add(e, o, keys_of, decode)
    return walk.result()


def curve(id_scores, ood_scores) -> Curve:
    """The whole curve, one entry per distinct score (for plots; `detection_metrics` needs none of it)."""
    id_s, ood_s = check_scores(id_scores, "the ID set"), check_scores(ood_scores, "the OOD set")
    blocks, decode = _pool(id_s, ood_s)
    e_parts, o_parts, keys = [], [], []
    for e, o, keys_of in _groups(blocks):
        e_parts.append(e[1:])
        o_parts.append(o[1:])
        keys.append(keys_of(slice(None)))
    e, o = np.concatenate(e_parts).astype(np.int64), np.concatenate(o_parts).astype(np.int64)
    thresholds = np.asarray(decode(np.concatenate(keys)), np.float64)
    # counts at or above a distinct score = all minus the counts below it (the group before's)
    tps = ood_s.size - np.r_[0, o[:-1]]
    fps = id_s.size - np.r_[0, e[:-1] - o[:-1]]
    return Curve(thresholds[::-1].copy(), tps[::-1].copy(), fps[::-1].copy(), ood_s.size, id_s.size)


def metrics_from_curve(c: Curve) -> dict[str, float]:
    tps = np.asarray(c.tps, np.float64)[::-1]
    fps = np.asarray(c.fps, np.float64)[::-1]
    thresholds = np.asarray(c.thresholds, np.float64)[::-1]
    # ascending, after one leading slot: the counts at or below a distinct score are all minus those
    # at or above the next one
    e, o = np.empty(tps.size + 1), np.empty(tps.size + 1)
    o[1:] = c.n_ood - np.r_[tps[1:], 0]
    e[1:] = (c.n_ood + c.n_id) - np.r_[tps[1:] + fps[1:], 0]
    walk = _Walk(c.n_id, c.n_ood)
    for i in range(0, tps.size, _BLOCK):
        walk.add(e[i:i + _BLOCK + 1], o[i:i + _BLOCK + 1], lambda g, i=i: thresholds[i:][g], lambda k: k)
    return walk.result()


def detection_metrics(id_scores, ood_scores) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out, FPR95 (and the FPR95 threshold) for one OOD set."""
    return _metrics(check_scores(id_scores, "the ID set"), check_scores(ood_scores, "the OOD set"))


def check_bootstrap(rounds, seed) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 0:
        raise ImoodError(f"bootstrap rounds must be a whole number >= 0, got {rounds!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ImoodError(f"the bootstrap seed must be a whole number >= 0, got {seed!r}")


def bootstrap_ci(id_scores, ood_scores, rounds: int, seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals of each metric over `rounds` resamplings of the ID and the OOD scores."""
    check_bootstrap(rounds, seed)
    rng = np.random.default_rng(seed)
    id_s, ood_s = check_scores(id_scores, "the ID set"), check_scores(ood_scores, "the OOD set")
    if _all_float32(id_s) and _all_float32(ood_s):  # decided once, not per round; float32 is exact for them
        id_s, ood_s = id_s.astype(np.float32, copy=False), ood_s.astype(np.float32, copy=False)
    samples = {k: [] for k in METRIC_KEYS}
    for _ in range(rounds):
        m = _metrics(id_s[rng.integers(0, id_s.size, id_s.size)], ood_s[rng.integers(0, ood_s.size, ood_s.size)])
        for k in METRIC_KEYS:
            samples[k].append(m[k])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for k, v in samples.items()}
