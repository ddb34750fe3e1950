"""The OOD metrics against scikit-learn and an independent FPR95, on every kind of input the fast
path treats differently (float32 scores tagged in a widened float64, other float64 scores merged by a
stable argsort; blocks of the walk as small as one score), and their peak memory per score."""

import contextlib
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import average_precision_score, roc_auc_score

from imood_cli.engine.metrics import ranking
from imood_cli.engine.metrics.ranking import bootstrap_ci, curve, detection_metrics, metrics_from_curve
from imood_cli.errors import ImoodError

TOL = 1e-12
SETTINGS = settings(max_examples=100, deadline=None, database=None,  # nothing written into the repository
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
SIZES = st.integers(1, 80)
BLOCKS = st.sampled_from([1, 2, 3, 7, 64, 1 << 16])


def fpr95_reference(id_s, ood_s):
    """The rule of FPR95_CONVENTION, walked threshold by threshold from the highest distinct score."""
    id_s, ood_s = id_s.astype(np.float64), ood_s.astype(np.float64)  # float32 >= a Python float compares in float32
    for t in sorted(set(np.r_[id_s, ood_s].tolist()), reverse=True):
        if np.count_nonzero(ood_s >= t) / ood_s.size >= 0.95:
            return np.count_nonzero(id_s >= t) / id_s.size, t
    raise AssertionError("recall 1 is always reached at the lowest score")


def assert_matches_references(id_s, ood_s, got):
    s = np.r_[ood_s.astype(np.float64), id_s.astype(np.float64)]
    y = np.r_[np.ones(ood_s.size), np.zeros(id_s.size)]
    assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=TOL, rel=0)
    assert got["aupr_out"] == pytest.approx(average_precision_score(y, s), abs=TOL, rel=0)
    assert got["aupr_in"] == pytest.approx(average_precision_score(1 - y, -s), abs=TOL, rel=0)
    fpr, threshold = fpr95_reference(id_s, ood_s)
    assert got["fpr95"] == pytest.approx(fpr, abs=TOL, rel=0)
    assert got["threshold"] == threshold


@contextlib.contextmanager
def block_size(n):
    saved = ranking._BLOCK
    ranking._BLOCK = n
    try:
        yield
    finally:
        ranking._BLOCK = saved


def check(id_s, ood_s, block):
    with block_size(block):
        got = detection_metrics(id_s, ood_s)
        assert_matches_references(id_s, ood_s, got)
        assert metrics_from_curve(curve(id_s, ood_s)) == pytest.approx(got, abs=TOL, rel=0)


# float64 scores over the whole range: subnormals, -0.0 and 0.0, magnitudes up to 1e300 (merged path)
FLOAT64 = st.floats(-1e300, 1e300, allow_nan=False, allow_subnormal=True)
# float32 scores over float32's whole finite range (tagged path)
FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)
# values no float32 equals, so that ties take the merged path too
TIED64 = st.sampled_from([0.1, 0.2, 1 / 3, -0.7, 0.0, -0.0, 1e-310])
TIED32 = st.sampled_from([0.0, -0.0, 1.0, 2.5, -3.0, 1e-40])


@SETTINGS
@given(arrays(np.float64, SIZES, elements=FLOAT64), arrays(np.float64, SIZES, elements=FLOAT64), BLOCKS)
def test_float64_scores_equal_sklearn(id_s, ood_s, block):
    check(id_s, ood_s, block)


@SETTINGS
@given(arrays(np.float32, SIZES, elements=FLOAT32), arrays(np.float32, SIZES, elements=FLOAT32), BLOCKS)
def test_float32_scores_equal_sklearn(id_s, ood_s, block):
    check(id_s, ood_s, block)


@SETTINGS
@given(arrays(np.float64, SIZES, elements=TIED64), arrays(np.float64, SIZES, elements=TIED64), BLOCKS)
def test_heavily_tied_float64_scores_equal_sklearn(id_s, ood_s, block):
    check(id_s, ood_s, block)


@SETTINGS
@given(arrays(np.float32, SIZES, elements=TIED32), arrays(np.float32, SIZES, elements=TIED32), BLOCKS)
def test_heavily_tied_float32_scores_equal_sklearn(id_s, ood_s, block):
    check(id_s, ood_s, block)


@SETTINGS
@given(arrays(np.float32, SIZES, elements=TIED32 | FLOAT32), arrays(np.float64, SIZES, elements=TIED64 | FLOAT64),
       BLOCKS)
def test_float32_id_with_float64_ood_equal_sklearn(id_s, ood_s, block):
    check(id_s, ood_s, block)


@SETTINGS
@given(SIZES, SIZES, st.sampled_from([0.0, -0.0, 1.5, -2.0, 1e-320]), st.sampled_from([np.float32, np.float64]),
       BLOCKS)
def test_all_equal_scores(n_id, n_ood, value, dtype, block):
    id_s, ood_s = np.full(n_id, value, dtype), np.full(n_ood, value, dtype)
    check(id_s, ood_s, block)
    with block_size(block):
        m = detection_metrics(id_s, ood_s)
    n = n_id + n_ood
    assert (m["auroc"], m["fpr95"]) == (0.5, 1.0)
    assert m["aupr_out"] == pytest.approx(n_ood / n, abs=TOL) and m["aupr_in"] == pytest.approx(n_id / n, abs=TOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("id_value,ood_value,auroc", [(0.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.5, 0.5, 0.5),
                                                      (-0.0, 0.0, 0.5), (0.1, 0.1, 0.5)])
def test_one_id_and_one_ood_score(dtype, id_value, ood_value, auroc):
    id_s, ood_s = np.array([id_value], dtype), np.array([ood_value], dtype)
    check(id_s, ood_s, 1 << 16)
    assert detection_metrics(id_s, ood_s)["auroc"] == auroc


@pytest.mark.parametrize("n_ood", list(range(1, 60)) + [99, 100, 101, 199, 200, 201, 1000, 1999, 2000, 2001])
def test_fpr95_threshold_is_the_first_reaching_95_percent_recall(n_ood):
    # distinct OOD scores 0..n_ood-1 and one ID score at each of them: FPR95 = fraction of ID scores at
    # or above the highest score t with #OOD >= t >= 0.95 n_ood (in float64, as the curve divides)
    ood_s = np.arange(n_ood, dtype=np.float64)
    id_s = np.arange(n_ood, dtype=np.float64)
    recall = (n_ood - ood_s) / n_ood
    t = ood_s[recall >= 0.95].max()
    m = detection_metrics(id_s, ood_s)
    assert m["threshold"] == t
    assert m["fpr95"] == np.count_nonzero(id_s >= t) / n_ood


def test_negative_zero_ties_with_zero_on_both_paths():
    for dtype in (np.float32, np.float64):
        tiny = 1e-300 if dtype == np.float64 else 1.0
        m = detection_metrics(np.array([-0.0, -0.0], dtype), np.array([0.0, tiny], dtype))
        assert m["auroc"] == 0.75  # one OOD tied with both ID scores (half each), one above them


def test_threshold_is_the_float32_value_itself():
    id_s = np.array([0.1, 0.2, 0.3], np.float32)
    ood_s = np.array([0.7, 0.35, 0.8], np.float32)
    assert detection_metrics(id_s, ood_s)["threshold"] == float(np.float32(0.35))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", [0, 70_000, 199_997])
@pytest.mark.parametrize("bad,count", [(np.nan, 1), (np.inf, 1), (-np.inf, 3)])
def test_nan_and_inf_anywhere_in_a_large_set_are_refused(dtype, where, bad, count):
    ood_s = np.linspace(0, 1, 200_000).astype(dtype)
    ood_s[where:where + count] = bad
    with pytest.raises(ImoodError, match=f"the OOD set has {count} NaN or infinite score"):
        detection_metrics(np.zeros(3, dtype), ood_s)


def test_other_real_inputs_are_read_like_scikit_learn():
    id_s, ood_s = [0, 1, 2, 2], np.array([2, 3, 1], np.int16)
    assert_matches_references(np.array(id_s, np.float64), ood_s.astype(np.float64), detection_metrics(id_s, ood_s))
    half = np.array([0.5, 1.25, 3.0], np.float16)
    assert detection_metrics(half, half[::-1].copy())["auroc"] == 0.5
    with pytest.raises(ImoodError, match="real numbers"):
        detection_metrics([1 + 2j], [1.0])


def test_curve_equals_sklearn_roc_points():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(3)
    id_s, ood_s = rng.normal(size=300).round(1), rng.normal(1, size=200).round(1)
    with block_size(16):
        c = curve(id_s, ood_s)
    fpr, tpr, thr = roc_curve(np.r_[np.ones(200), np.zeros(300)], np.r_[ood_s, id_s], drop_intermediate=False)
    np.testing.assert_array_equal(c.thresholds, thr[1:])
    np.testing.assert_allclose(c.fps / c.n_id, fpr[1:], rtol=0, atol=1e-15)
    np.testing.assert_allclose(c.tps / c.n_ood, tpr[1:], rtol=0, atol=1e-15)


def test_bootstrap_equals_sklearn_on_the_same_resamples():
    rng = np.random.default_rng(5)
    id_s, ood_s = rng.normal(size=150).astype(np.float32), rng.normal(1, size=90).round(1)
    rounds, seed = 40, 9
    draw = np.random.default_rng(seed)
    samples = {k: [] for k in ("auroc", "aupr_in", "aupr_out", "fpr95")}
    for _ in range(rounds):
        i, o = id_s[draw.integers(0, 150, 150)].astype(np.float64), ood_s[draw.integers(0, 90, 90)]
        y, s = np.r_[np.ones(90), np.zeros(150)], np.r_[o, i]
        samples["auroc"].append(roc_auc_score(y, s))
        samples["aupr_out"].append(average_precision_score(y, s))
        samples["aupr_in"].append(average_precision_score(1 - y, -s))
        samples["fpr95"].append(fpr95_reference(i, o)[0])
    ci = bootstrap_ci(id_s, ood_s, rounds, seed=seed)
    for k, v in samples.items():
        assert ci[k] == pytest.approx([np.percentile(v, 2.5), np.percentile(v, 97.5)], abs=TOL, rel=0), k


def scores(n, dtype, ties, seed=0):
    rng = np.random.default_rng(seed)
    id_s, ood_s = rng.normal(size=n // 2), rng.normal(0.8, size=n - n // 2)
    if ties:
        id_s, ood_s = id_s.round(2), ood_s.round(2)
    return id_s.astype(dtype), ood_s.astype(dtype)


@pytest.mark.parametrize("id_dtype,ood_dtype", [(np.float32, np.float32), (np.float64, np.float64),
                                                (np.float32, np.float64)])
@pytest.mark.parametrize("ties", [False, True])
def test_peak_memory_per_score_is_bounded(id_dtype, ood_dtype, ties):
    n = 2_000_000
    id_s, ood_s = scores(n, np.float64, ties)
    id_s, ood_s = id_s.astype(id_dtype), ood_s.astype(ood_dtype)
    tracemalloc.start()
    try:
        detection_metrics(id_s, ood_s)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # numpy's timsort takes its merge buffer (8 bytes per score of the smaller set) from malloc, which
    # tracemalloc does not see: it is counted here by hand for the float64 path that merges
    merge_buffer = 8 * min(id_s.size, ood_s.size) if np.float64 in (id_dtype, ood_dtype) else 0
    assert peak + merge_buffer <= 40 * n
