import math

import numpy as np
import pytest
import torch

from imood_cli.core.prior import log_beta, log_prior
from imood_cli.errors import ImoodError


def test_log_prior_tau_one_is_the_empirical_prior():
    counts = [50, 30, 20]
    lp = log_prior(counts, 1.0)
    assert np.allclose(lp.exp().numpy(), [0.5, 0.3, 0.2], atol=1e-12)


def test_log_prior_tau_scales_the_exponent():
    counts = [50, 30, 20]
    tau = 0.5
    w = np.array(counts, dtype=np.float64) ** tau
    assert np.allclose(log_prior(counts, tau).exp().numpy(), w / w.sum(), atol=1e-12)


def test_log_prior_tau_zero_is_uniform():
    assert np.allclose(log_prior([1000, 10, 1], 0.0).exp().numpy(), [1 / 3] * 3, atol=1e-12)


def test_log_prior_rejects_empty_classes():
    with pytest.raises(ImoodError, match="at least one training image"):
        log_prior([5, 0, 3])


def test_log_beta_matches_float64_hand_computation():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 4)) * 3
    counts = [400, 100, 40, 10]
    pi = np.array(counts, dtype=np.float64) / sum(counts)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = np.log((p / pi).mean(axis=1))
    got = log_beta(torch.tensor(z), log_prior(counts, 1.0))
    assert np.allclose(got.numpy(), expected, atol=1e-5)


def test_log_beta_is_zero_under_a_uniform_prior():
    z = torch.randn(5, 6)
    assert torch.allclose(log_beta(z, log_prior([9, 8, 7, 6, 5, 4], 0.0)), torch.zeros(5), atol=1e-6)


def test_log_beta_is_stable_for_huge_logits():
    z = torch.tensor([[1e4, -1e4, 0.0], [0.0, 0.0, 1e4]])
    lb = log_beta(z, log_prior([100, 10, 1]))
    assert torch.isfinite(lb).all()
    # all mass on class 0 (π=100/111) → log(1/3 · 111/100); on class 2 → log(1/3 · 111)
    assert math.isclose(lb[0].item(), math.log(111 / 100 / 3), rel_tol=1e-5)
    assert math.isclose(lb[1].item(), math.log(111 / 3), rel_tol=1e-5)
