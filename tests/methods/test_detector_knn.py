"""knn against pytorch-ood 0.4 (scikit-learn's exact search underneath) and float64 numpy.

Convention: pytorch-ood's KNN score (distance to the k-th nearest normalised training feature) is
imood's vanilla OOD score −g.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from feature_views import fitted, images, labels, tiny_model, view
from pytorch_ood.detector import KNN as PoodKNN

import imood_cli.methods.knn as knn_module
from imood_cli.core.prior import log_prior
from imood_cli.errors import ImoodError
from imood_cli.plugin_api import LossContext, ModelOutputs, ModelView
from imood_cli.registry import registry

LOG_PRIOR = log_prior([50, 20, 8, 3], 1.0).float()


def np_kth_distance(queries, bank, k, leave_one_out=False):
    """Explicit loop, float64: distance of each normalised query to its k-th nearest normalised bank row."""
    q = np.asarray(queries, np.float64)
    b = np.asarray(bank, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(q))
    for i in range(len(q)):
        d = np.sqrt(((b - q[i]) ** 2).sum(1))
        if leave_one_out:
            d = np.delete(d, np.argmin(d))  # the query itself
        out[i] = np.sort(d)[min(k, len(d)) - 1]
    return out


def bank_view(features):
    n = len(features)
    return ModelView(logits=torch.zeros(n, 4), features=features, labels=torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize("k", [50, 1, 7])
def test_knn_matches_pytorch_ood_on_the_model(k):
    model = tiny_model()
    train_x, train_y = images(300, 1), labels(300, 2)
    ours = fitted(registry().score("knn", k=k), model, train_x, train_y)
    test = view(model, images(64, 3), ours.needs)
    train = view(model, train_x, set()).features
    pood = PoodKNN(None, k=k).fit_features(train, train_y)
    got = ours.ood_score(test, LOG_PRIOR).double().numpy()
    np.testing.assert_allclose(got, pood.predict_features(test.features).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, np_kth_distance(test.features, train, k), rtol=1e-5, atol=1e-6)


def test_knn_default_k_and_a_bank_smaller_than_k():
    assert registry().score("knn").k == 50  # the paper's CIFAR-10 value
    g = torch.Generator().manual_seed(1)
    train, queries = torch.randn(30, 16, generator=g), torch.randn(20, 16, generator=g)
    ours = registry().score("knn")
    ours.fit(bank_view(train))
    got = -ours.idness(ModelOutputs(torch.zeros(20, 4), features=queries)).double().numpy()
    np.testing.assert_allclose(got, np_kth_distance(queries, train, 30), rtol=1e-5, atol=1e-6)


def test_knn_blocks_give_the_same_answer_and_stay_small(monkeypatch):
    g = torch.Generator().manual_seed(2)
    train, queries = torch.randn(257, 12, generator=g), torch.randn(40, 12, generator=g)
    queries[:5] = train[:5]  # a training point is its own nearest neighbour
    ours = registry().score("knn", k=9)
    ours.fit(bank_view(train))
    whole = ours.idness(ModelOutputs(torch.zeros(40, 4), features=queries))
    seen = []
    real_nearest = knn_module.nearest

    def spy(q, bank, k):
        seen.append(q.shape[0])
        return real_nearest(q, bank, k)

    monkeypatch.setattr(knn_module, "BANK_BLOCK", 13)  # the bank searched in 20 blocks
    monkeypatch.setattr(knn_module, "QUERY_BLOCK", 7)  # the queries in 6
    monkeypatch.setattr(knn_module, "nearest", spy)
    blocked = ours.idness(ModelOutputs(torch.zeros(40, 4), features=queries))
    np.testing.assert_allclose(blocked.numpy(), whole.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(-blocked.double().numpy(), np_kth_distance(queries, train, 9), rtol=1e-5, atol=1e-6)
    assert max(seen) <= 7 and sum(seen) == 40


def test_knn_ada_scale_is_a_tenth_of_the_leave_one_out_spread(monkeypatch):
    g = torch.Generator().manual_seed(3)
    train = torch.randn(120, 8, generator=g)
    ours = registry().score("knn", k=5)
    ours.fit(bank_view(train))
    ref = -np_kth_distance(train, train, 5, leave_one_out=True)
    assert ours.ada_scale == pytest.approx(0.1 * np.std(ref, ddof=1), rel=1e-5)
    # on a large set, evenly spread rows stand for it
    monkeypatch.setattr(knn_module, "ADA_ROWS", 30)
    ours.fit(bank_view(train))
    rows = np.round(np.linspace(0, 119, 30)).astype(int)
    ref = -np_kth_distance(train[rows], train, 5, leave_one_out=True)
    assert ours.ada_scale == pytest.approx(0.1 * np.std(ref, ddof=1), rel=1e-5)
    ada = registry().score("ada_knn", k=5)
    ada.load_fit_state(ours.fit_state())
    assert ada.scale == pytest.approx(ours.ada_scale)


def test_knn_fit_state_round_trip_and_unfitted():
    g = torch.Generator().manual_seed(4)
    train, queries = torch.randn(50, 6, generator=g), torch.randn(10, 6, generator=g)
    ours = registry().score("knn", k=3)
    ours.fit(bank_view(train))
    state = ours.fit_state()
    assert set(state) == {"bank", "ada_scale"} and state["bank"].shape == (50, 6)
    fresh = registry().score("knn", k=3)
    with pytest.raises(ImoodError, match="not fitted"):
        fresh.idness(ModelOutputs(torch.zeros(10, 4), features=queries))
    fresh.load_fit_state(state)
    out = ModelOutputs(torch.zeros(10, 4), features=queries)
    np.testing.assert_allclose(fresh.idness(out).numpy(), ours.idness(out).numpy(), rtol=0, atol=0)
    with pytest.raises(ImoodError, match="k must be >= 1"):
        registry().score("knn", k=0)


def test_knn_training_bank_never_holds_the_current_batch():
    ours = registry().score("knn", k=1)
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(6, 4, generator=g) for _ in range(3)]
    for step, f in enumerate(batches):
        feats = torch.cat([f, torch.randn(2, 4, generator=g)])  # 6 ID rows, then 2 OOD rows
        ctx = LossContext(is_id=torch.arange(8) < 6, labels=torch.zeros(6, dtype=torch.long), log_prior=torch.zeros(2),
                          num_id=6)
        out = ModelOutputs(torch.zeros(8, 2), features=feats.requires_grad_())
        ours.train_update(out, ctx)
        d = -ours.idness(out)
        if step == 0:  # the first step has only its own batch
            assert torch.allclose(d[:6], torch.zeros(6), atol=1e-5)
        else:  # earlier batches only: a view is never its own neighbour, OOD rows never banked
            ref = np_kth_distance(feats.detach(), torch.cat(batches[:step]), 1)
            np.testing.assert_allclose(d.detach().numpy(), ref, rtol=1e-5, atol=1e-5)
        d.sum().backward()
        assert torch.isfinite(out.features.grad).all()
