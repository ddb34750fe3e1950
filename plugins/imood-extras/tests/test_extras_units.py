"""margin and supcon against independent float64 computations (numpy and explicit loops)."""

from __future__ import annotations

import importlib.metadata as md

import numpy as np
import pytest
import torch

from imood_cli import api
from imood_cli.plugin_api import AdaScore, AuxBatch, ModelOutputs
from imood_cli.registry import Registry, reset_registry
from imood_extras.margin import LogitMargin
from imood_extras.supcon import SupCon

COUNTS = [50, 20, 8, 3]  # long-tailed
torch.set_num_threads(2)  # two cores here and in CI


@pytest.fixture(autouse=True)
def _extras_loaded(monkeypatch):
    # imood's own suite sets IMOOD_PLUGINS="" (built-ins only); these tests are about the installed plugin.
    monkeypatch.delenv("IMOOD_PLUGINS", raising=False)
    previous = reset_registry(None)
    yield
    reset_registry(previous)


@pytest.fixture
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


def np_margin(logits: np.ndarray) -> np.ndarray:
    z = np.sort(logits.astype(np.float64), axis=1)
    return z[:, -1] - z[:, -2]


def test_registered_through_entry_points(reg):
    eps = {(ep.group, ep.name): ep.value for ep in md.distribution("imood-extras").entry_points}
    assert eps == {("imood.ood_metrics", "margin"): "imood_extras.margin:LogitMargin",
                   ("imood.aux_losses", "supcon"): "imood_extras.supcon:SupCon"}
    by_name = {(p.kind, p.name): p for p in reg.plugins()}
    for kind, name in [("method", "margin"), ("method", "ada_margin"), ("aux_loss", "supcon")]:
        p = by_name[(kind, name)]
        assert p.loaded, p.error
        assert p.distribution == "imood-extras"
    assert by_name[("method", "ada_margin")].derived_from == "margin"
    m = reg.score("ada_margin")
    assert isinstance(m, AdaScore) and m.scale == 1.0
    # nothing of this distribution is shadowed by (or shadows) a built-in
    assert not [p for p in reg.plugins() if p.distribution == "imood-extras" and p.status != "loaded"]


def test_margin_matches_numpy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 4, generator=g) * 3
    z = logits.double().numpy()
    ref_g = np_margin(z)
    assert (ref_g > 0).all()
    np.testing.assert_allclose(LogitMargin().idness(ModelOutputs(logits)).numpy(), ref_g, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(api.ood_scores("margin", logits, COUNTS).numpy(), -ref_g, rtol=1e-6, atol=1e-6)
    for tau in (1.0, 0.5):
        ref = -(ref_g + 1.0 * np_log_beta(z, COUNTS, tau))
        got = api.ood_scores("ada_margin", logits, COUNTS, logit_adjust=tau).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # τ = 0: uniform prior, log β̂ = 0, so ada_margin equals margin
    np.testing.assert_allclose(api.ood_scores("ada_margin", logits, COUNTS, logit_adjust=0.0).numpy(), -ref_g,
                               rtol=1e-5, atol=1e-5)


def test_margin_is_zero_for_a_tie_and_ranks_a_confident_row_higher():
    logits = torch.tensor([[2.0, 2.0, -1.0, 0.0], [5.0, 1.0, 0.0, -3.0]])
    g = LogitMargin().idness(ModelOutputs(logits))
    assert g.tolist() == [0.0, 4.0]


def test_ada_margin_moves_tail_predictions_toward_id():
    # Rows predicted as the rarest class get log β̂ > 0 and a lower (more ID) ada score; head rows a higher one.
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(200, 4, generator=g) * 4  # confident rows, as a trained model's
    vanilla = api.ood_scores("margin", logits, COUNTS)
    ada = api.ood_scores("ada_margin", logits, COUNTS)
    probs = logits.softmax(dim=1)
    pred = logits.argmax(dim=1)
    tail, head = pred == 3, pred == 0
    sure_head = probs[:, 0] > 0.97  # so little mass elsewhere that log β̂ < 0 whatever the rest holds
    assert tail.any() and sure_head.any()
    assert (ada[tail] < vanilla[tail]).all() and (ada[sure_head] > vanilla[sure_head]).all()
    rank = lambda s: s.argsort().argsort().double()
    assert rank(ada)[tail].mean() < rank(vanilla)[tail].mean()
    assert rank(ada)[head].mean() > rank(vanilla)[head].mean()


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
    moved_loss = SupCon()(AuxBatch(moved, b.labels, b.is_id, b.pair, b.class_counts))
    assert float(moved_loss) == pytest.approx(float(loss.detach()))
    loss.backward()
    assert torch.isfinite(proj.grad).all()
    assert proj.grad[12:].abs().max() == 0  # OOD rows take no part
    assert proj.grad[:12].abs().max() > 0
    # a batch with no ID view gives 0, not NaN
    none = AuxBatch(b.projections[12:], b.labels[12:], b.is_id[12:], b.pair[12:], b.class_counts)
    assert float(SupCon()(none)) == 0.0
