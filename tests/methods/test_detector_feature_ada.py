"""The ada_ forms of react, ash, scale, dice, vim, knn and rmd on a toy long-tailed problem (docs/concepts.md).

ada_<name> scores −(g + c·log β̂): tail-predicted ID samples (log β̂ > 0) must move toward ID and
head-predicted ones toward OOD, by exactly c·log β̂ (log β̂ recomputed in float64 numpy), with c = 1
for the energy-scale detectors and c fitted on the ID training set for the distance-scale ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from feature_views import np_log_beta

from imood_cli.core.prior import log_prior
from imood_cli.plugin_api import ModelView
from imood_cli.registry import registry

COUNTS = [400, 120, 40, 12]  # long-tailed training set
K, D = 4, 16
ENERGY_SCALE = ["react", "ash", "scale", "dice"]
FITTED_SCALE = ["vim", "knn", "rmd"]


def toy_problem():
    """Non-negative (post-ReLU) class clusters, a classifier biased toward the head classes as a long-tailed
    model's is, a balanced ID test set (100 per class) and 300 OOD rows."""
    g = torch.Generator().manual_seed(0)
    means = torch.rand(K, D, generator=g) * 2
    means[:, :K] += torch.eye(K) * 3
    weight = means - means.mean(0)
    bias = 0.5 * torch.log(torch.tensor(COUNTS, dtype=torch.float32))

    def head(f):
        return f @ weight.T + bias

    def make_view(f, labels=None):
        return ModelView(logits=head(f), features=f, weight=weight, bias=bias, labels=labels,
                         feature_map=f[:, :, None, None], _head_from_features=head,
                         _head_from_map=lambda m: head(m.flatten(2).mean(2)))

    def sample(y):
        return torch.relu(means[y] + torch.randn(len(y), D, generator=g) * 0.8)

    train_y = torch.cat([torch.full((c,), k) for k, c in enumerate(COUNTS)])
    train = make_view(sample(train_y), train_y)
    test_y = torch.arange(K).repeat_interleave(100)
    ood = torch.relu(torch.rand(300, D, generator=g) * 3 * torch.rand(300, 1, generator=g)
                     + torch.randn(300, D, generator=g))
    test = make_view(torch.cat([sample(test_y), ood]))
    is_id = torch.arange(len(test.features)) < len(test_y)
    return train, test, test_y, is_id


@pytest.fixture(scope="module")
def problem():
    return toy_problem()


def rank(scores):
    return scores.argsort().argsort().double()


@pytest.mark.parametrize("name", ENERGY_SCALE + FITTED_SCALE)
def test_ada_moves_tail_predictions_toward_id(problem, name):
    train, test, test_y, is_id = problem
    ada = registry().score(f"ada_{name}")
    if ada.base.needs_fit:
        ada.fit(train)
    lp = log_prior(COUNTS, 1.0).float()
    vanilla = ada.base.ood_score(test, lp).double()
    adjusted = ada.ood_score(test, lp).double()

    c = ada.scale
    if name in ENERGY_SCALE:
        assert c == 1.0
    else:  # fitted on the ID training set, read from the detector at scoring time
        assert c == ada.base.ada_scale and c > 0 and c != type(ada.base).ada_scale
    log_beta = np_log_beta(test.logits.numpy(), COUNTS)
    np.testing.assert_allclose((adjusted - vanilla).numpy(), -c * log_beta, rtol=1e-4, atol=1e-4)

    pred = test.logits.argmax(dim=1)
    tail, head = is_id & (pred == K - 1), is_id & (pred == 0)
    assert tail.sum() >= 20 and head.sum() >= 20
    assert rank(adjusted)[tail].mean() < rank(vanilla)[tail].mean()  # tail ID samples look more ID
    assert rank(adjusted)[head].mean() > rank(vanilla)[head].mean()  # head ID samples less
    # the paper's first failure mode: tail-class ID samples flagged as OOD at 95% OOD recall never increase
    tail_class = is_id & (torch.cat([test_y, torch.full((300,), -1)]) == K - 1)

    def flagged(scores):
        threshold = torch.quantile(scores[~is_id], 0.05)
        return float((scores[tail_class] >= threshold).double().mean())

    assert flagged(adjusted) <= flagged(vanilla)


def test_ada_scale_override_wins_over_the_fitted_one(problem):
    train, test, *_ = problem
    ada = registry().score("ada_knn", ada_scale=0.5)
    ada.fit(train)
    assert ada.base.ada_scale != 0.5 and ada.scale == 0.5


def test_tau_zero_turns_the_correction_off(problem):
    train, test, *_ = problem
    for name in ("react", "rmd"):
        ada = registry().score(f"ada_{name}")
        ada.fit(train)
        lp = log_prior(COUNTS, 0.0).float()
        torch.testing.assert_close(ada.ood_score(test, lp), ada.base.ood_score(test, lp), rtol=1e-5, atol=1e-5)
