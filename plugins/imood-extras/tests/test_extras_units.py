"""maxlogit, knn and supcon against independent float64 computations (numpy and explicit loops)."""

from __future__ import annotations

import importlib.metadata as md

import numpy as np
import pytest
import torch

import imood_extras.knn as knn_mod
from imood_cli import api
from imood_cli.core.ada import Ada
from imood_cli.core.contract import ModelOutputs, ModelView
from imood_cli.plugin_api import AuxBatch, LossContext
from imood_cli.registry import Registry
from imood_extras.knn import KNN
from imood_extras.maxlogit import MaxLogit
from imood_extras.supcon import SupCon

COUNTS = [50, 20, 8, 3]  # long-tailed
torch.set_num_threads(2)  # two cores here and in CI


@pytest.fixture(scope="module")
def reg():
    return Registry()  # the installed entry points, independent of the process-wide registry


def np_log_beta(logits: np.ndarray, counts, tau: float = 1.0) -> np.ndarray:
    """log β̂ = log((1/K) Σ_k p_k / π̃_k), π̃ ∝ π^τ, in float64 with plain numpy."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pi = np.asarray(counts, np.float64) / np.sum(counts)
    prior = pi ** tau / np.sum(pi ** tau)
    return np.log(np.mean(p / prior, axis=1))


def np_kth_distance(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    q = queries.astype(np.float64)
    b = bank.astype(np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    k = min(k, len(b))
    out = np.empty(len(q))
    for i in range(len(q)):
        d = np.sqrt(((b - q[i]) ** 2).sum(1))
        out[i] = np.sort(d)[k - 1]
    return out


def test_registered_through_entry_points(reg):
    eps = {(ep.group, ep.name): ep.value for ep in md.distribution("imood-extras").entry_points}
    assert eps == {("imood.ood_metrics", "maxlogit"): "imood_extras.maxlogit:MaxLogit",
                   ("imood.ood_metrics", "knn"): "imood_extras.knn:KNN",
                   ("imood.aux_losses", "supcon"): "imood_extras.supcon:SupCon"}
    by_name = {(p.kind, p.name): p for p in reg.plugins()}
    for kind, name in [("detector", "maxlogit"), ("detector", "knn"), ("detector", "ada_maxlogit"), ("detector", "ada_knn"),
                       ("aux_loss", "supcon")]:
        p = by_name[(kind, name)]
        assert p.loaded, p.error
        assert p.distribution == "imood-extras"
    assert by_name[("detector", "ada_knn")].derived_from == "knn"
    m = reg.detector("ada_maxlogit")
    assert isinstance(m, Ada) and m.scale == 1.0
    assert reg.detector("ada_knn").scale == 0.1


def test_maxlogit_matches_numpy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 4, generator=g) * 3
    z = logits.double().numpy()
    ref_g = z.max(1)
    out = ModelOutputs(logits)
    np.testing.assert_allclose(MaxLogit().idness(out).numpy(), ref_g, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(api.ood_scores("maxlogit", logits, COUNTS).numpy(), -ref_g, rtol=1e-6, atol=1e-6)
    for tau in (1.0, 0.5):
        ref = -(ref_g + 1.0 * np_log_beta(z, COUNTS, tau))
        got = api.ood_scores("ada_maxlogit", logits, COUNTS, logit_adjust=tau).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # τ = 0: uniform prior, log β̂ = 0, so ada_maxlogit equals maxlogit
    np.testing.assert_allclose(api.ood_scores("ada_maxlogit", logits, COUNTS, logit_adjust=0.0).numpy(), -ref_g,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_train,k", [(300, 50), (30, 50), (200, 7)])
def test_knn_matches_numpy(n_train, k):
    g = torch.Generator().manual_seed(n_train + k)
    train = torch.randn(n_train, 16, generator=g)
    queries = torch.cat([torch.randn(40, 16, generator=g), train[:5]])  # a training point: its own neighbour
    ref = np_kth_distance(queries.numpy(), train.numpy(), k)
    m = KNN(k=k)
    m.fit(ModelView(logits=torch.zeros(n_train, 4), features=train, labels=torch.zeros(n_train, dtype=torch.long)))
    got = -m.idness(ModelOutputs(torch.zeros(len(queries), 4), features=queries))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_knn_default_k_and_api(reg):
    g = torch.Generator().manual_seed(1)
    train = torch.randn(120, 8, generator=g)
    feats = torch.randn(30, 8, generator=g)
    logits = torch.randn(30, 4, generator=g)
    assert reg.detector("knn").k == 50
    ref = np_kth_distance(feats.numpy(), train.numpy(), 50)
    got = api.ood_scores("knn", logits, COUNTS, features=feats, fit_features=train,
                         fit_labels=torch.zeros(120, dtype=torch.long))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)
    ref_ada = -(-ref + 0.1 * np_log_beta(logits.numpy(), COUNTS))
    got_ada = api.ood_scores("ada_knn", logits, COUNTS, features=feats, fit_features=train,
                             fit_labels=torch.zeros(120, dtype=torch.long))
    np.testing.assert_allclose(got_ada.numpy(), ref_ada, rtol=1e-5, atol=1e-5)


def test_knn_blocks_and_fit_state_round_trip(monkeypatch):
    g = torch.Generator().manual_seed(2)
    train, feats = torch.randn(257, 12, generator=g), torch.randn(20, 12, generator=g)
    m = KNN()
    m.fit(ModelView(logits=torch.zeros(257, 2), features=train, labels=torch.zeros(257, dtype=torch.long)))
    out = ModelOutputs(torch.zeros(20, 2), features=feats)
    whole = m.idness(out)
    monkeypatch.setattr(knn_mod, "CHUNK", 13)  # the bank searched in 20 blocks
    np.testing.assert_allclose(m.idness(out).numpy(), whole.numpy(), rtol=1e-6, atol=1e-6)
    state = m.fit_state()
    assert set(state) == {"bank"} and state["bank"].shape == (257, 12)
    fresh = KNN()
    fresh.load_fit_state(state)
    np.testing.assert_allclose(fresh.idness(out).numpy(), whole.numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match="not fitted"):
        KNN().idness(out)


def test_knn_training_bank_never_holds_the_current_batch():
    m = KNN(k=1)
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(6, 4, generator=g) for _ in range(3)]
    for step, f in enumerate(batches):
        feats = torch.cat([f, torch.randn(2, 4, generator=g)])  # 6 ID rows, then 2 OOD rows
        is_id = torch.arange(8) < 6
        ctx = LossContext(is_id=is_id, labels=torch.zeros(6, dtype=torch.long), log_prior=torch.zeros(2))
        out = ModelOutputs(torch.zeros(8, 2), features=feats.requires_grad_())
        m.train_update(out, ctx)
        d = -m.idness(out)
        if step == 0:  # the first step has only its own batch
            assert torch.allclose(d[:6], torch.zeros(6), atol=1e-5)
        else:  # earlier batches only: a view is never its own neighbour, OOD rows never banked
            prev = torch.cat(batches[:step]).numpy()
            ref = np_kth_distance(feats.detach().numpy(), prev, 1)
            np.testing.assert_allclose(d.detach().numpy(), ref, rtol=1e-5, atol=1e-5)
        d.sum().backward()
        assert torch.isfinite(out.features.grad).all()


def np_supcon(z: np.ndarray, labels: np.ndarray, is_id: np.ndarray, T: float) -> float:
    """Explicit loops, float64: anchors every ID view, positives same-class ID views, OOD excluded."""
    z = z.astype(np.float64)
    ids = [i for i in range(len(z)) if is_id[i]]
    losses = []
    for i in ids:
        others = [a for a in ids if a != i]
        pos = [p for p in others if labels[p] == labels[i]]
        if not pos:
            continue
        denom = sum(np.exp(z[i] @ z[a] / T) for a in others)
        losses.append(-np.mean([np.log(np.exp(z[i] @ z[p] / T) / denom) for p in pos]))
    return float(np.mean(losses)) if losses else 0.0


def make_batch(n: int, m: int, k: int, seed: int) -> AuxBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    proj = torch.nn.functional.normalize(torch.randn(2 * n + m, 8, generator=g), dim=1)
    rows = torch.arange(2 * n + m)
    pair = torch.where(rows < n, rows + n, torch.where(rows < 2 * n, rows - n, -1))
    full = torch.cat([labels, labels, torch.full((m,), -1)])
    is_id = rows < 2 * n
    return AuxBatch(proj, full, is_id, pair, torch.bincount(labels, minlength=k))


@pytest.mark.parametrize("n,m,k,T", [(6, 4, 3, 0.07), (5, 0, 2, 0.07), (4, 5, 4, 0.5)])
def test_supcon_matches_loops(reg, n, m, k, T):
    b = make_batch(n, m, k, seed=n + m)
    loss = reg.aux_loss("supcon", T=T) if T != 0.07 else reg.aux_loss("supcon")
    assert loss.T == T
    ref = np_supcon(b.projections.numpy(), b.labels.numpy(), b.is_id.numpy(), T)
    assert float(loss(b)) == pytest.approx(ref, rel=1e-4, abs=1e-5)


def test_supcon_ignores_ood_rows_and_has_gradients():
    b = make_batch(6, 4, 3, seed=7)
    proj = b.projections.clone().requires_grad_()
    loss = SupCon()(AuxBatch(proj, b.labels, b.is_id, b.pair, b.class_counts))
    moved = b.projections.clone()
    moved[12:] = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)  # other OOD projections
    assert float(SupCon()(AuxBatch(moved, b.labels, b.is_id, b.pair, b.class_counts))) == pytest.approx(float(loss.detach()))
    loss.backward()
    assert torch.isfinite(proj.grad).all()
    assert proj.grad[12:].abs().max() == 0  # OOD rows take no part
    assert proj.grad[:12].abs().max() > 0
    # a batch with no ID view gives 0, not NaN
    none = AuxBatch(b.projections[12:], b.labels[12:], b.is_id[12:], b.pair[12:], b.class_counts)
    assert float(SupCon()(none)) == 0.0
