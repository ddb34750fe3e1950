"""Training losses against independent float64 computations (docs/concepts.md)."""

import math

import numpy as np
import pytest
import torch

from imood_cli.core.contract import ModelOutputs
from imood_cli.core.prior import log_prior
from imood_cli.losses.la_ce import logit_adjusted_ce
from imood_cli.losses.pascl import PASCL, tail_threshold
from imood_cli.losses.simclr import SimCLR
from imood_cli.plugin_api import AuxBatch, LossContext
from imood_cli.registry import registry

COUNTS = [300, 120, 50, 20, 8]
K = len(COUNTS)



def trained_loss(name, out, ctx, **options):
    """The OOD loss `imood train --ood-metric name` computes: the objective on its score's g of the same batch."""
    score, objective = registry().training(name, **options)
    return objective.loss(out, ctx, score.idness(out))

def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def bce(logit, target):
    return -(target * math.log(sigmoid(logit)) + (1 - target) * math.log(1 - sigmoid(logit)))


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def make_batch(seed=0, n_id=6, n_ood=4):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_id + n_ood, K)) * 2
    extra = rng.normal(size=(n_id + n_ood, 1))
    lam = np.exp(rng.normal(size=(n_id + n_ood, K)) * 0.5)
    labels = rng.integers(0, K, n_id)
    return z, extra, lam, labels


def ctx_for(labels, n_total, tau=1.0, aux_linear=None):
    is_id = torch.arange(n_total) < len(labels)
    return LossContext(is_id, torch.tensor(labels), log_prior(COUNTS, tau).float(), aux_linear)


def test_logit_adjusted_ce():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, K))
    y = np.array([0, 1, 2, 3, 4])
    log_pi = np.log(np.array(COUNTS) / sum(COUNTS))
    ref = np.mean([-np.log(softmax(z[i] + log_pi)[y[i]]) for i in range(5)])
    got = logit_adjusted_ce(torch.tensor(z, dtype=torch.float32), torch.tensor(y), log_prior(COUNTS, 1.0).float())
    assert math.isclose(got.item(), ref, rel_tol=1e-5)


def test_oe_loss_is_cross_entropy_to_uniform_on_ood_rows():
    z, extra, lam, labels = make_batch()
    out = ModelOutputs(torch.tensor(z, dtype=torch.float32))
    got = trained_loss("oe", out, ctx_for(labels, len(z))).item()
    ood = z[len(labels):]
    ref = np.mean([-np.mean(np.log(softmax(r))) for r in ood])
    assert math.isclose(got, ref, rel_tol=1e-5)


@pytest.mark.parametrize("k", [5, 10])
def test_energy_loss_margins(k):
    rng = np.random.default_rng(k)
    z = rng.normal(size=(8, k)) * 20 + 10
    labels = rng.integers(0, k, 5)
    is_id = torch.arange(8) < 5
    ctx = LossContext(is_id, torch.tensor(labels), torch.zeros(k))
    m_in = -23.0 if k == 10 else -27.0  # the paper's CIFAR margins, as the cifar recipes set them
    got = trained_loss("energy", ModelOutputs(torch.tensor(z, dtype=torch.float32)), ctx, m_in=m_in, m_out=-5.0).item()
    e = -np.log(np.exp(z).sum(1))
    ref = 0.2 * (np.mean(np.maximum(e[:5] - m_in, 0) ** 2) + np.mean(np.maximum(-5.0 - e[5:], 0) ** 2))
    assert math.isclose(got, ref, rel_tol=1e-4)


def test_bin_disc_loss():
    z, extra, lam, labels = make_batch()
    out = ModelOutputs(torch.tensor(z, dtype=torch.float32), torch.tensor(extra, dtype=torch.float32))
    got = trained_loss("bin_disc", out, ctx_for(labels, len(z))).item()
    t = [1] * len(labels) + [0] * (len(z) - len(labels))
    ref = np.mean([bce(extra[i, 0], t[i]) for i in range(len(z))])
    assert math.isclose(got, ref, rel_tol=1e-5)


def imood_ref(g, z, lam, labels, counts, tau=1.0):
    """The ImOOD training steps 1-5, written out sample by sample in float64. Returns (constraint, bce, deltas)."""
    k = len(counts)
    pi = np.array(counts, np.float64) ** tau
    pi /= pi.sum()
    n_id = len(labels)
    cons, losses, deltas = [], [], []
    for i in range(len(z)):
        if i < n_id:
            q = np.full(k, 0.2 / k)
            q[labels[i]] += 0.8
        else:
            q = softmax(z[i])
        beta = np.mean(lam[i] * q / pi)
        cons.append(max(0.0, math.log(beta) + math.log(sigmoid(g[i]))))
        delta = min(max(beta + (beta - 1) * math.exp(g[i]), 0.1), 10.0)
        delta = max(delta, 1.0) if i < n_id else min(delta, 1.0)
        deltas.append(delta)
        losses.append(bce(g[i] - math.log(delta), 1.0 if i < n_id else 0.0))
    return np.mean(cons), np.mean(losses), deltas


def test_ada_bin_disc_loss_matches_reference_and_hits_every_clamp():
    from imood_cli.core.ada import imood_training_loss

    labels = np.array([0, 4, 2, 4])
    # Rows chosen so that δ before the clamps falls below 0.1, above 10, inside, and the ID/OOD
    # max/min(δ, 1) both bind: check the branches are really exercised.
    g = np.array([3.0, -2.0, 0.5, 4.0, 2.0, -3.0, 1.0, 0.2])
    rng = np.random.default_rng(5)
    z = rng.normal(size=(8, K))
    lam = np.exp(rng.normal(size=(8, K)))
    lam[0] *= 0.01  # β ≪ 1 → δ < 0.1, clamped up to 0.1 then max(·, 1) for ID
    lam[3] *= 30  # β ≫ 1 → δ > 10 for ID
    lam[4] *= 20  # OOD with δ > 1 → min(δ, 1)
    lam[5] *= 0.02  # OOD with small δ
    cons_ref, bce_ref, deltas = imood_ref(g, z, lam, labels, COUNTS)
    raw = []
    pi = np.array(COUNTS) / sum(COUNTS)
    for i in range(8):
        q = np.full(K, 0.2 / K)
        if i < 4:
            q[labels[i]] += 0.8
        else:
            q = softmax(z[i])
        b = np.mean(lam[i] * q / pi)
        raw.append(b + (b - 1) * math.exp(g[i]))
    assert min(raw) < 0.1 and max(raw) > 10
    assert any(r < 1 for r in raw[:4]) and any(r > 1 for r in raw[4:])
    assert deltas[3] == 10.0 and deltas[0] == 1.0
    out = ModelOutputs(torch.tensor(z, dtype=torch.float32), lambdas=torch.tensor(lam, dtype=torch.float32))
    cons, bce_v = imood_training_loss(torch.tensor(g, dtype=torch.float32), out, ctx_for(labels, 8))
    assert math.isclose(cons.item(), cons_ref, rel_tol=1e-5, abs_tol=1e-7)
    assert math.isclose(bce_v.item(), bce_ref, rel_tol=1e-5)
    extra = torch.tensor(g[:, None], dtype=torch.float32)
    full = trained_loss("ada_bin_disc", ModelOutputs(out.logits, extra, lambdas=out.lambdas), ctx_for(labels, 8))
    assert math.isclose(full.item(), cons_ref + bce_ref, rel_tol=1e-5)


def test_ada_loss_uses_aux_linear_for_scalar_statistics_and_oe_adds_its_loss():
    z, extra, lam, labels = make_batch(seed=3)
    lin = torch.nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(1.7)
        lin.bias.fill_(-0.4)
    p = np.array([softmax(r) for r in z])
    g = 1.7 * (p.max(1) - 1 / K) - 0.4  # aux_linear(msp statistic)
    cons_ref, bce_ref, _ = imood_ref(g, z, lam, labels, COUNTS)
    oe_ref = np.mean([-np.mean(np.log(softmax(r))) for r in z[len(labels):]])
    out = ModelOutputs(torch.tensor(z, dtype=torch.float32), lambdas=torch.tensor(lam, dtype=torch.float32))
    ctx = ctx_for(labels, len(z), aux_linear=lin)
    assert math.isclose(trained_loss("ada_msp", out, ctx).item(), cons_ref + bce_ref, rel_tol=1e-5)
    assert math.isclose(trained_loss("ada_oe", out, ctx).item(), cons_ref + bce_ref + oe_ref, rel_tol=1e-5)


def test_ada_constraint_trains_lambda_but_not_g():
    from imood_cli.core.ada import imood_training_loss

    z, extra, lam, labels = make_batch(seed=4)
    lam_t = torch.tensor(lam, dtype=torch.float32, requires_grad=True)
    g = torch.tensor(extra[:, 0] + 3, dtype=torch.float32, requires_grad=True)
    out = ModelOutputs(torch.tensor(z, dtype=torch.float32), lambdas=lam_t)
    cons, _ = imood_training_loss(g, out, ctx_for(labels, len(z)))
    cons.backward()
    assert lam_t.grad is not None and lam_t.grad.abs().sum() > 0
    assert g.grad is None or g.grad.abs().sum() == 0


def pascl_ref(proj, labels, is_id, k, T):
    """Explicit sets: anchors = tail ID rows; candidates = other tail rows + all OOD rows."""
    K_ = len(COUNTS)
    thr = round((1 - k) * K_)
    tail = [i for i in range(len(proj)) if is_id[i] and labels[i] >= thr]
    ood = [i for i in range(len(proj)) if not is_id[i]]
    if not tail:
        return 0.0
    total = []
    for a in tail:
        cands = [j for j in tail if j != a] + ood
        pos = [j for j in tail if j != a and labels[j] == labels[a]]
        if not pos:
            continue
        denom = sum(math.exp(proj[a] @ proj[j] / T) for j in cands)
        total.append(-np.mean([math.log(math.exp(proj[a] @ proj[p] / T) / denom) for p in pos]))
    return float(np.mean(total))


def unit_rows(rng, n, d=8):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def aux_batch(proj, labels_id, n_ood):
    n = len(labels_id)
    labels = np.concatenate([labels_id, labels_id, -np.ones(n_ood, int)])
    rows = np.arange(2 * n + n_ood)
    pair = np.where(rows < n, rows + n, np.where(rows < 2 * n, rows - n, -1))
    return AuxBatch(torch.tensor(proj, dtype=torch.float64), torch.tensor(labels), torch.tensor(rows < 2 * n),
                    torch.tensor(pair), torch.tensor(COUNTS))


def test_pascl_tail_threshold():
    assert tail_threshold(10, 0.4) == 6 and tail_threshold(100, 0.4) == 60 and tail_threshold(5, 0.4) == 3


def test_pascl_matches_explicit_sets():
    rng = np.random.default_rng(7)
    labels_id = np.array([0, 3, 4, 3, 1, 4])
    proj = unit_rows(rng, 2 * 6 + 5)
    b = aux_batch(proj, labels_id, 5)
    got = PASCL()(b).item()
    ref = pascl_ref(proj, b.labels.numpy(), b.is_id.numpy(), 0.4, 0.07)
    assert math.isclose(got, ref, rel_tol=1e-6)  # computed in float32
    # OOD rows never anchor: moving them changes the loss only through the denominators.
    assert PASCL(k=0.4, T=0.5)(b).item() == pytest.approx(pascl_ref(proj, b.labels.numpy(), b.is_id.numpy(), 0.4, 0.5))


def test_pascl_is_zero_without_tail_samples():
    rng = np.random.default_rng(8)
    b = aux_batch(unit_rows(rng, 2 * 3 + 2), np.array([0, 1, 2]), 2)
    assert PASCL()(b).item() == 0.0


def test_simclr_is_nt_xent_over_the_two_views():
    rng = np.random.default_rng(9)
    n, T = 4, 0.07
    proj = unit_rows(rng, 2 * n + 3)
    b = aux_batch(proj, np.array([0, 0, 1, 2]), 3)
    losses = []
    for a in range(2 * n):
        other = a + n if a < n else a - n
        denom = sum(math.exp(proj[a] @ proj[j] / T) for j in range(2 * n) if j != a)
        losses.append(-math.log(math.exp(proj[a] @ proj[other] / T) / denom))
    assert math.isclose(SimCLR()(b).item(), np.mean(losses), rel_tol=1e-6)
