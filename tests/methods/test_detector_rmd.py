"""rmd against pytorch-ood 0.4 and against the paper's formula in float64 numpy.

Convention: pytorch-ood's RMD fits both covariances un-normalized (sums over the N training rows) with a
1e-6 ridge, so its score equals imood's vanilla rmd score / N when imood's ridge is 1e-6 / N. pytorch-ood
inverts in float32, so it is compared on well-conditioned Gaussian features; on the tiny imood model's
features the float64 reference is the judge.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from feature_views import fitted, gaussian_problem, images, labels, tiny_model, view
from pytorch_ood.detector import RMD as PoodRMD

from imood_cli.core.prior import log_prior
from imood_cli.errors import ImoodError
from imood_cli.plugin_api import ModelView
from imood_cli.registry import registry

LOG_PRIOR = log_prior([50, 20, 8, 3, 1], 1.0).float()


def np_rmd(train, y, test, ridge):
    """g = d_0 − min_k d_k with ML covariances + ridge·I, float64 numpy, one explicit loop over classes."""
    f, t = train.astype(np.float64), test.astype(np.float64)
    k, d = y.max() + 1, f.shape[1]
    means = np.stack([f[y == c].mean(0) for c in range(k)])
    within = f - means[y]
    precision = np.linalg.inv(within.T @ within / len(f) + ridge * np.eye(d))
    mu0 = f.mean(0)
    precision0 = np.linalg.inv((f - mu0).T @ (f - mu0) / len(f) + ridge * np.eye(d))
    class_d = np.stack([np.einsum("ij,jk,ik->i", t - m, precision, t - m) for m in means], axis=1)
    background = np.einsum("ij,jk,ik->i", t - mu0, precision0, t - mu0)
    return background - class_d.min(1)


def test_rmd_matches_pytorch_ood():
    train, y, test, _, _ = gaussian_problem()
    n = len(train)
    ours = registry().score("rmd", ridge=1e-6 / n)
    ours.fit(ModelView(logits=torch.zeros(n, 5), features=train, labels=y))
    pood = PoodRMD(None).fit_features(train, y)
    got = ours.ood_score(ModelView(logits=torch.zeros(len(test), 5), features=test), LOG_PRIOR).double().numpy()
    ref = pood.predict_features(test).double().numpy() * n
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)
    assert np.ptp(ref) > 10  # the scores spread: the comparison is not between constants


def test_rmd_on_the_model_matches_float64_numpy():
    model = tiny_model()
    train_x, train_y = images(400, 1), labels(400, 2)
    ours = fitted(registry().score("rmd"), model, train_x, train_y)
    assert ours.ridge == 1e-4
    test = view(model, images(64, 3), ours.needs)
    train = view(model, train_x, set()).features.numpy()
    ref = np_rmd(train, train_y.numpy(), test.features.numpy(), 1e-4)
    np.testing.assert_allclose(ours.idness(test).double().numpy(), ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ours.ood_score(test, LOG_PRIOR).double().numpy(), -ref, rtol=1e-4, atol=1e-3)
    # ada_ c: a tenth of g's spread on the ID training set (all 400 rows: fewer than the 8192 sampled)
    g_train = np_rmd(train, train_y.numpy(), train, 1e-4)
    assert ours.ada_scale == pytest.approx(0.1 * np.std(g_train, ddof=1), rel=1e-4)
    fresh = registry().score("ada_rmd")
    fresh.load_fit_state(ours.fit_state())
    assert fresh.scale == pytest.approx(ours.ada_scale)
    np.testing.assert_allclose(fresh.idness(test).numpy(), ours.idness(test).numpy(), rtol=0, atol=0)


def test_rmd_samples_the_std_evenly_on_large_sets(monkeypatch):
    import imood_cli.methods.rmd as rmd_module

    train, y, _, _, _ = gaussian_problem(n=500)
    monkeypatch.setattr(rmd_module, "ADA_ROWS", 50)
    ours = registry().score("rmd")
    ours.fit(ModelView(logits=torch.zeros(500, 5), features=train, labels=y))
    rows = np.round(np.linspace(0, 499, 50)).astype(int)
    g = np_rmd(train.numpy(), y.numpy(), train.numpy()[rows], 1e-4)
    assert ours.ada_scale == pytest.approx(0.1 * np.std(g, ddof=1), rel=1e-4)


def test_rmd_refuses_what_it_cannot_fit():
    feats = torch.randn(10, 4)
    with pytest.raises(ImoodError, match="no ID training features for classes \\[2\\]"):
        registry().score("rmd").fit(ModelView(logits=torch.zeros(10, 3), features=feats,
                                                 labels=torch.tensor([0, 1] * 5)))
    with pytest.raises(ImoodError, match="not fitted"):
        registry().score("rmd").idness(ModelView(logits=torch.zeros(10, 3), features=feats))
    with pytest.raises(ImoodError, match="ridge must be >= 0"):
        registry().score("rmd", ridge=-1)
    with pytest.raises(ImoodError, match="singular"):  # a dead feature and no ridge
        dead = torch.cat([torch.randn(30, 3), torch.zeros(30, 1)], dim=1)
        registry().score("rmd", ridge=0).fit(ModelView(logits=torch.zeros(30, 2), features=dead,
                                                          labels=torch.arange(30) % 2))
