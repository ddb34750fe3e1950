"""Paired statistics over seeds, against scipy and hand computations on fixed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from imood_cli.engine.metrics.paired import describe, paired_difference, sign_test

A = [0.931, 0.925, 0.940, 0.918, 0.935, 0.929, 0.922]
B = [0.950, 0.941, 0.947, 0.930, 0.949, 0.931, 0.940]


def test_the_t_interval_equals_scipys():
    d = np.subtract(B, A)
    diff = paired_difference(A, B)
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert diff.mean == pytest.approx(d.mean(), abs=1e-15)
    assert (diff.t_low, diff.t_high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert diff.better == 7 and diff.worse == 0 and diff.measurable


def test_the_sign_test_by_hand_and_against_scipys_binomial_test():
    assert sign_test(7, 0) == pytest.approx(2 / 2**7)  # 0.015625
    assert sign_test(5, 0) == pytest.approx(0.0625)  # "5 of 5 seeds" is p = 0.0625
    assert sign_test(14, 1) == pytest.approx(stats.binomtest(14, 15, 0.5).pvalue)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0
    for k, m in [(2, 9), (6, 11), (12, 15)]:
        assert sign_test(k, m - k) == pytest.approx(stats.binomtest(k, m, 0.5).pvalue)


def test_wilcoxon_equals_scipys_and_ties_are_dropped():
    a = [0.5, 0.6, 0.7, 0.8, 0.9, 0.4]
    b = [0.52, 0.57, 0.75, 0.8, 0.95, 0.41]  # one tie
    diff = paired_difference(a, b)
    d = np.subtract(b, a)
    assert diff.p_wilcoxon == pytest.approx(stats.wilcoxon(d[d != 0]).pvalue)
    assert diff.better == 4 and diff.worse == 1


def test_bootstrap_interval_holds_the_mean_and_is_seeded():
    one = paired_difference(A, B, seed=3)
    two = paired_difference(A, B, seed=3)
    assert (one.boot_low, one.boot_high) == (two.boot_low, two.boot_high)
    assert one.boot_low < one.mean < one.boot_high


def test_lower_is_better_counts_and_no_measurable_effect():
    fpr_a, fpr_b = [0.30, 0.20, 0.25, 0.28], [0.29, 0.22, 0.24, 0.29]
    diff = paired_difference(fpr_a, fpr_b, higher_is_better=False)
    assert diff.better == 2 and diff.worse == 2 and not diff.measurable
    assert describe(diff).startswith("no measurable effect: ")
    d = np.subtract(fpr_b, fpr_a)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / math.sqrt(4)
    assert diff.t_high == pytest.approx(d.mean() + half)


def test_describe_in_percent():
    assert describe(paired_difference(A, B)) == "+1.26 [+0.69, +1.83] (7/7 better, sign p = 0.0156)"
