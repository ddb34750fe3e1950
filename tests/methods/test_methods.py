"""The long-tailed OOD methods (cocl, balenergy, eat, opensampling, oecc): each loss against its official
formula re-derived here in float64 (numpy) from the same inputs and the same random draws, the edge cases the
official code handles (or fails on), the scores, and a short train + score of each on digits."""

import json
import math
import os
import signal

import numpy as np
import pytest
import torch

from imood_cli.core.contract import LossContext, ModelView
from imood_cli.core.prior import log_beta, log_prior
from imood_cli.engine.runs.scorefile import ScoreSet
from imood_cli.errors import ImoodError
from imood_cli.methods.balenergy import BalEnergyObjective as BalEnergy
from imood_cli.methods.cocl import COCLObjective, COCLScore
from imood_cli.methods.eat import EATObjective, EATScore, cutmix_box, tail_pastes
from imood_cli.methods.oecc import OECCObjective as OECC
from imood_cli.methods.opensampling import OpenSamplingObjective as OpenSampling
from imood_cli.methods.opensampling import rebalance_rate, sample_open_labels
from imood_cli.plugin_api import OptionError
from imood_cli.registry import registry

CIFAR10_LT = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
K = 10


# ---------------------------------------------------------------- float64 references


def lse(a, axis=-1):
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def ce(logits, target):
    """Mean cross-entropy, float64."""
    logits = np.asarray(logits, np.float64)
    return float(np.mean(lse(logits) - logits[np.arange(len(target)), target]))


def softmax(a):
    return np.exp(a - lse(a)[:, None])


def f64(t):
    return t.detach().double().numpy()


def ctx_for(labels2, m, counts=CIFAR10_LT, tau=0.0, generator=None, parameters=None):
    """LossContext for rows [2N ID views ; m OOD]; labels2 = [y ; y]."""
    n2 = labels2.shape[0]
    return LossContext(is_id=torch.arange(n2 + m) < n2, labels=labels2, log_prior=log_prior(counts, tau).float(),
                       num_id=n2, class_counts=torch.tensor(counts), generator=generator, parameters=parameters)


def labels_for(n, seed, pool=range(K)):
    rng = np.random.default_rng(seed)
    y = torch.as_tensor(rng.choice(list(pool), size=n))
    return torch.cat([y, y])


# ---------------------------------------------------------------- COCL


def cocl_reference(z, z_out, f, y2, w, u, n2, lam=(0.05, 0.05, 0.1), temperature=0.07, margin=1.0):
    """COCL's train.py loss (one view there; the ID rows here are whatever rows are given), float64.
    Returns (CE_{K+1} of ID rows, OCL, tail, head) and the total."""
    z, z_out, f, w, y2, u = f64(z), f64(z_out), f64(f), f64(w), y2.numpy(), u.double().numpy()
    full = np.concatenate([z, z_out[:, None]], axis=1)
    k = z.shape[1]
    l_in = ce(full[:n2], y2)
    l_ocl = ce(full[n2:], np.full(full.shape[0] - n2, k))
    f_id, f_ood = f[:n2], f[n2:]
    head_idx, tail_idx = y2 <= round(0.4 * k), y2 >= round(0.6 * k)

    def mh(x):  # 2-head normalisation: split the dimension in halves, L2-normalise each
        h = x.shape[1] // 2
        return np.concatenate([x[:, :h] / np.linalg.norm(x[:, :h], axis=1, keepdims=True),
                               x[:, h:] / np.linalg.norm(x[:, h:], axis=1, keepdims=True)], axis=1)

    if tail_idx.sum():
        s = mh(f_id[tail_idx]) @ np.concatenate([mh(w), mh(f_ood)]).T / temperature
        s = s - s.max(axis=1, keepdims=True)
        l_tail = ce(s, y2[tail_idx] - round(0.6 * k))
    else:
        l_tail = 0.0
    if head_idx.sum():
        sq = (f_ood ** 2).sum(1)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * f_ood @ f_ood.T, 0))
        positive = f_ood[dist.argmax(axis=1)]
        heads = f_id[head_idx]
        negative = heads[np.minimum(np.floor(u * len(heads)).astype(int), len(heads) - 1)]
        d_ap = np.linalg.norm(f_ood - positive + 1e-6, axis=1)
        d_an = np.linalg.norm(f_ood - negative + 1e-6, axis=1)
        l_head = float(np.mean(np.maximum(d_ap - d_an + margin, 0)))
    else:
        l_head = 0.0
    parts = (l_in, l_ocl, l_tail, l_head)
    return parts, l_in + lam[0] * l_ocl + lam[1] * l_tail + lam[2] * l_head


def cocl_batch(seed, n=8, m=6, d=12, pool=range(K)):
    g = torch.Generator().manual_seed(seed)
    y2 = labels_for(n, seed, pool)
    rows = 2 * n + m
    z = torch.randn(rows, K, generator=g) * 2
    z_out = torch.randn(rows, 1, generator=g) * 2
    f = torch.randn(rows, d, generator=g).abs() + 0.1  # post-ReLU-like features
    w = torch.randn(COCLObjective().num_prototypes(K), d, generator=g)
    return y2, z, z_out, f, w


@pytest.mark.parametrize("pool", [range(K), range(0, 5), range(6, K)], ids=["mixed", "no-tail", "no-head"])
def test_cocl_loss_equals_the_official_formula(pool):
    y2, z, z_out, f, w = cocl_batch(1, pool=pool)
    n2, m = y2.shape[0], z.shape[0] - y2.shape[0]
    det = COCLObjective()
    ctx = ctx_for(y2, m, generator=torch.Generator().manual_seed(7), parameters={"prototypes": w})
    view = ModelView(logits=z, extra=z_out, features=f)
    u = torch.rand(m, generator=torch.Generator().manual_seed(7))  # the draws `loss` takes from ctx.generator
    (ref_in, ref_ocl, ref_tail, ref_head), ref_total = cocl_reference(z, z_out[:, 0], f, y2, w, u, n2)
    completion, ocl, tail, head = det.loss_parts(view, ctx, draws=u)
    engine_l_in = ce(f64(z[:n2]), y2.numpy())  # the engine's K-way CE at --logit_adjust 0
    assert engine_l_in + completion.item() == pytest.approx(ref_in, rel=1e-5)
    assert ocl.item() == pytest.approx(ref_ocl, rel=1e-5)
    assert tail.item() == pytest.approx(ref_tail, rel=1e-5, abs=1e-7)
    assert head.item() == pytest.approx(ref_head, rel=1e-5, abs=1e-7)
    if pool == range(0, 5):
        assert tail.item() == 0.0 and ref_head > 0
    if pool == range(6, K):
        assert head.item() == 0.0 and ref_tail > 0
    total = det.loss(view, ctx)  # draws its negatives from ctx.generator, seeded as `u` above
    assert engine_l_in + total.item() == pytest.approx(ref_total, rel=1e-5)


def test_cocl_gradients_reach_every_input_and_are_finite():
    y2, z, z_out, f, w = cocl_batch(2)
    z, z_out, f, w = (t.clone().requires_grad_() for t in (z, z_out, f, w))
    ctx = ctx_for(y2, z.shape[0] - y2.shape[0], generator=torch.Generator().manual_seed(0),
                  parameters={"prototypes": w})
    COCLObjective().loss(ModelView(logits=z, extra=z_out, features=f), ctx).backward()
    for t in (z, z_out, f, w):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_cocl_head_negatives_are_uniform_over_head_rows():
    # 3 head rows among 8 ID rows: each must be picked about a third of the time, never a non-head row
    from imood_cli.methods.cocl import head_negatives

    labels = torch.tensor([7, 0, 9, 4, 8, 2, 6, 6])
    rows, has_head = head_negatives(labels, 4, torch.rand(30000, generator=torch.Generator().manual_seed(3)))
    counts = torch.bincount(rows, minlength=8).double() / 30000
    assert bool(has_head)
    assert counts[[1, 3, 5]].tolist() == pytest.approx([1 / 3] * 3, abs=0.015)
    assert counts[[0, 2, 4, 6, 7]].sum() == 0


def test_cocl_score_is_the_calibrated_outlier_probability():
    g = torch.Generator().manual_seed(4)
    z, z_out = torch.randn(20, K, generator=g) * 3, torch.randn(20, 1, generator=g) * 3
    view = ModelView(logits=z, extra=z_out)
    lp = log_prior(CIFAR10_LT, 1.0).float()
    pi = np.array(CIFAR10_LT, np.float64) / sum(CIFAR10_LT)
    calibrated = np.concatenate([f64(z), f64(z_out)], axis=1) - np.log(np.append(pi, 1.0))  # OLC, τ = 1
    ref = softmax(calibrated)[:, -1]
    assert f64(COCLScore().ood_score(view, lp)) == pytest.approx(ref, rel=1e-5)
    raw = softmax(np.concatenate([f64(z), f64(z_out)], axis=1))[:, -1]
    assert f64(COCLScore(olc=False).ood_score(view, lp)) == pytest.approx(raw, rel=1e-5)
    # ada_cocl at c = 1 is the OLC logit up to the constant log K: the same ranking
    ada = registry().score("ada_cocl")
    assert ada.scale == 1.0
    ada_score = f64(ada.ood_score(view, lp))
    assert ada_score == pytest.approx(np.log(ref / (1 - ref)) + np.log(K), rel=1e-4, abs=1e-4)
    g_ref = lse(f64(z)) - f64(z_out)[:, 0]
    assert ada_score == pytest.approx(-(g_ref + f64(log_beta(z, lp))), rel=1e-5, abs=1e-5)


def test_cocl_options_and_missing_outputs():
    assert registry().training("cocl", lambda1="0.02")[1].lambda1 == 0.02
    assert [COCLObjective().num_prototypes(k) for k in (10, 100, 1000)] == [4, 40, 400]
    with pytest.raises(OptionError):
        COCLObjective(temperature=0)
    with pytest.raises(ImoodError, match="outlier-class output"):
        COCLScore().idness(ModelView(logits=torch.zeros(2, K)))
    score, ada = registry().training("ada_cocl")
    assert ada.extra_outputs == 1 and score.idness_is_logit and "aux_linear" not in ada.heads


# ---------------------------------------------------------------- BalEnergy


OFFICIAL_P_AUX = [0.249973333, 0.079566667, 0.163056667, 0.248683333, 0.061536667, 0.085046667, 0.030543333,
                  0.02319, 0.023856667, 0.034546667]  # inf_train_im_res.py, CIFAR10-LT ResNet18


def balenergy_reference(z_id, z_ood, p_aux, m_in, m_out, lamb, g1, g2):
    """The official bracket (before its 0.1), float64."""
    z_id, z_ood, p = f64(z_id), f64(z_ood), np.asarray(p_aux, np.float64)
    p1, p2 = p ** g1 / (p ** g1).sum(), p ** g2 / (p ** g2).sum()
    q = softmax(z_ood)
    w1, w2 = q @ np.maximum(p1, 0), q @ np.maximum(p2, 0)
    e_in = -lse(z_id)
    e_out = -lse(z_ood) - lamb * w1
    return float(np.mean(np.maximum(e_in - m_in, 0) ** 2)
                 + (np.maximum(m_out - e_out, 0) ** 2 * w2).sum() / w2.sum())


def energy_batch(seed, n=6, m=8, k=K):
    g = torch.Generator().manual_seed(seed)
    z_id = torch.randn(2 * n, k, generator=g) * 3 + 19  # energies around the ID margin
    z_ood = torch.randn(m, k, generator=g) * 3 + 3  # around the OOD margin
    return torch.cat([z_id, z_ood]), labels_for(n, seed)


def test_balenergy_loss_equals_the_official_formula():
    z, y2 = energy_batch(0)
    n2 = y2.shape[0]
    det = BalEnergy(p_aux=",".join(map(str, OFFICIAL_P_AUX)))
    got = det.loss(ModelView(logits=z), ctx_for(y2, z.shape[0] - n2)).item()
    ref = balenergy_reference(z[:n2], z[n2:], OFFICIAL_P_AUX, -23, -5, 10, 0.75, 0.75)
    assert ref > 0 and got * 0.5 == pytest.approx(0.1 * ref, rel=1e-5)  # --Lambda 0.5 × weight 0.2 = 0.1
    # CIFAR-100's recipe for other K, and options given explicitly win over it
    z100 = torch.cat([torch.randn(12, 100) * 3 + 21, torch.randn(8, 100) * 3 + 2])
    p100 = np.random.default_rng(0).dirichlet(np.ones(100))
    det = BalEnergy(p_aux=",".join(map(str, p100)))
    got = det.loss(ModelView(logits=z100), ctx_for(y2, 8, counts=[5] * 100)).item()
    assert got == pytest.approx(0.2 * balenergy_reference(z100[:12], z100[12:], p100, -27, -5, 100, 0.75, 0.75),
                                rel=1e-5)
    det = BalEnergy(p_aux=",".join(map(str, p100)), m_in=-20.0, lamb=3.0)
    got = det.loss(ModelView(logits=z100), ctx_for(y2, 8, counts=[5] * 100)).item()
    assert got == pytest.approx(0.2 * balenergy_reference(z100[:12], z100[12:], p100, -20, -5, 3, 0.75, 0.75),
                                rel=1e-5)


def test_balenergy_without_balancing_is_the_energy_loss():
    # γ1 = γ2 = 0, λ = 0: the energy-bounded loss of Liu et al. (means over ID and OOD rows)
    z, y2 = energy_batch(1)
    n2 = y2.shape[0]
    got = BalEnergy(gamma1=0.0, gamma2=0.0, lamb=0.0).loss(ModelView(logits=z), ctx_for(y2, 8)).item()
    e = -lse(f64(z))
    ref = np.mean(np.maximum(e[:n2] + 23, 0) ** 2) + np.mean(np.maximum(-5 - e[n2:], 0) ** 2)
    assert got == pytest.approx(0.2 * ref, rel=1e-5)


def test_balenergy_prior_estimate_is_a_running_average_of_assignments_and_survives_a_checkpoint():
    det = BalEnergy()
    z1, y2 = energy_batch(2)
    z2, _ = energy_batch(3)
    ctx = ctx_for(y2, 8)
    det.train_update(ModelView(logits=z1), ctx)
    det.train_update(ModelView(logits=z2), ctx)
    frac = [np.bincount(f64(z[12:]).argmax(1), minlength=K) / 8 for z in (z1, z2)]
    expected = 0.99 * frac[0] + 0.01 * frac[1]
    assert f64(det.prior(K, "cpu")) == pytest.approx(expected, abs=1e-6)
    got = det.loss(ModelView(logits=z2), ctx).item()
    ref = balenergy_reference(z2[:12], z2[12:], expected, -23, -5, 10, 0.75, 0.75)
    assert got == pytest.approx(0.2 * ref, rel=1e-5)
    other = BalEnergy()
    assert f64(other.prior(K, "cpu")) == pytest.approx(np.full(K, 0.1))  # uniform before any batch
    other.load_state(det.state())
    assert other.loss(ModelView(logits=z2), ctx).item() == got


def test_balenergy_gradients_are_finite_and_bad_priors_are_refused():
    z, y2 = energy_batch(4)
    z.requires_grad_()
    BalEnergy().loss(ModelView(logits=z), ctx_for(y2, 8)).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with pytest.raises(OptionError, match="p_aux"):
        BalEnergy(p_aux="0.5,x")
    with pytest.raises(ImoodError, match="3 values for 10 classes"):
        BalEnergy(p_aux="1,2,3").loss(ModelView(logits=z), ctx_for(y2, 8))


# ---------------------------------------------------------------- EAT


def rand_bbox_reference(size, lam, cx, cy):
    """EAT's rand_bbox with the centre given (it draws cx ∈ [0, size[2]), cy ∈ [0, size[3]))."""
    w, h = size[2], size[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(w * cut_rat), int(h * cut_rat)
    return (np.clip(cx - cut_w // 2, 0, w), np.clip(cy - cut_h // 2, 0, h),
            np.clip(cx + cut_w // 2, 0, w), np.clip(cy + cut_h // 2, 0, h))


def eat_pastes_reference(in_data, labels, ood, head_end, tail_start, box_h, box_o, batch_size):
    """stage1.py's pastes (labels of one view, in_data = [view 1 ; view 2]), in numpy, literally."""
    n = labels.shape[0]
    head, tail = labels < head_end, labels >= tail_start
    head_num, tail_num = head.sum(), tail.sum()
    times = head_num // tail_num
    t = in_data[:n][tail]
    tail_data, tail_labels = t, labels[tail]
    for _ in range(times - 1):
        tail_data, tail_labels = np.concatenate([tail_data, t]), np.concatenate([tail_labels, labels[tail]])
    t = in_data[n:2 * n][tail]
    for _ in range(times):
        tail_data, tail_labels = np.concatenate([tail_data, t]), np.concatenate([tail_labels, labels[tail]])
    half = round(tail_labels.shape[0] / 2)
    extra = np.concatenate([in_data[:n][head][:half], in_data[n:2 * n][head][:half]]).copy()
    x1, y1, x2, y2 = box_h
    extra[:, :, x1:x2, y1:y2] = tail_data[:, :, x1:x2, y1:y2]
    times1 = batch_size // tail_num
    t = in_data[:n][tail]
    ood_tail, ood_labels = t, labels[tail]
    for _ in range(times1 - 1):
        ood_tail, ood_labels = np.concatenate([ood_tail, t]), np.concatenate([ood_labels, labels[tail]])
    extra_in = ood[:times1 * tail_num].copy()
    x1, y1, x2, y2 = box_o
    extra_in[:, :, x1:x2, y1:y2] = ood_tail[:, :, x1:x2, y1:y2]
    return np.concatenate([extra, extra_in]), np.concatenate([tail_labels, ood_labels])


@pytest.mark.parametrize("lam,cx,cy", [(0.3, 16, 16), (0.01, 0, 31), (0.999, 5, 9), (0.6, 31, 2)])
def test_eat_box_is_rand_bbox(lam, cx, cy):
    box = cutmix_box(32, 32, lam, cx, cy)
    assert tuple(box) == tuple(int(v) for v in rand_bbox_reference((1, 3, 32, 32), lam, cx, cy))


def eat_images(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2 * n + m, 3, 8, 8, generator=g)


def test_eat_pastes_are_the_official_ones():
    y = torch.tensor([0, 1, 2, 0, 7, 3, 1, 9, 2, 0, 5, 1])  # 8 head (< 4), 2 tail (>= 6): t = 4
    n, m = y.shape[0], y.shape[0]
    x = eat_images(n, m, 0)
    bh, bo = cutmix_box(8, 8, 0.4, 3, 5), cutmix_box(8, 8, 0.7, 6, 1)
    images, labels = tail_pastes(x, torch.cat([y, y]), 2 * n, 4, 6, bh, bo)
    ref_x, ref_y = eat_pastes_reference(f64(x[:2 * n]), y.numpy(), f64(x[2 * n:]), 4, 6, bh, bo, n)
    assert images.shape[0] == 2 * 4 * 2 + (m // 2) * 2
    assert np.array_equal(labels.numpy(), ref_y)
    assert np.array_equal(f64(images), ref_x)


def test_eat_paste_edge_cases():
    x = eat_images(4, 4, 1)
    box = cutmix_box(8, 8, 0.5, 4, 4)
    no_tail = torch.tensor([0, 1, 2, 3] * 2)
    images, labels = tail_pastes(x, no_tail, 8, 4, 6, box, box)
    assert images.shape[0] == 0 and labels.shape[0] == 0
    # fewer head than tail images: no head pastes (EAT's shapes only match by chance), the OOD pastes remain
    few_head = torch.tensor([0, 6, 7, 8] * 2)
    images, labels = tail_pastes(x, few_head, 8, 4, 6, box, box)
    assert labels.tolist() == [6, 7, 8]
    expected = x[8:11].clone()
    expected[:, :, box.r1:box.r2, box.c1:box.c2] = x[1:4][:, :, box.r1:box.r2, box.c1:box.c2]
    assert torch.equal(images, expected)
    # fewer auxiliary images than tail images: no OOD pastes
    x = eat_images(4, 1, 2)
    images, labels = tail_pastes(x, torch.tensor([0, 1, 6, 7] * 2), 8, 4, 6, box, box)
    assert labels.tolist() == [6, 7, 6, 7]


def linear_forward(weight):
    def forward(images):
        return images.flatten(1) @ weight

    return forward


def test_eat_stage1_loss_equals_the_official_formula():
    odc, n, m = 3, 12, 12
    y = torch.tensor([0, 1, 2, 0, 7, 3, 1, 9, 2, 0, 5, 1])
    y2 = torch.cat([y, y])
    x = eat_images(n, m, 3)
    g = torch.Generator().manual_seed(5)
    rows = 2 * n + m
    z, abst = torch.randn(rows, K, generator=g) * 2, torch.randn(rows, odc, generator=g) * 2
    weight = torch.randn(3 * 64, K + odc, generator=g) * 0.1  # a model that returns every output
    view = ModelView(logits=z, extra=abst, images=x, _forward=linear_forward(weight))
    det = EATObjective(odc=odc)
    boxes = det.draw_boxes(x, torch.Generator().manual_seed(11))  # the draws `loss` makes from ctx.generator
    assert boxes == EATObjective().draw_boxes(x, torch.Generator().manual_seed(11))
    completion, paste_ce, ood_ce = det.loss_parts(view, ctx_for(y2, m), boxes)
    # official layout: abstention classes first, labels shifted by odc
    official = np.concatenate([f64(abst), f64(z)], axis=1)
    ref_id = ce(official[:2 * n], y2.numpy() + odc)
    ref_x, ref_y = eat_pastes_reference(f64(x[:2 * n]), y.numpy(), f64(x[2 * n:]), 4, 6, *boxes, n)
    paste_out = ref_x.reshape(len(ref_x), -1) @ f64(weight)
    ref_paste = ce(np.concatenate([paste_out[:, K:], paste_out[:, :K]], axis=1), ref_y + odc)
    ood = official[2 * n:]
    ref_ood = ce(ood, ood[:, :odc].argmax(1))
    engine_l_in = ce(f64(z[:2 * n]), y2.numpy())  # --logit_adjust 0
    assert engine_l_in + completion.item() == pytest.approx(ref_id, rel=1e-5)
    assert paste_ce.item() == pytest.approx(ref_paste, rel=1e-5)
    assert ood_ce.item() == pytest.approx(ref_ood, rel=1e-5)
    view.extra.requires_grad_()
    loss = det.loss(view, ctx_for(y2, m, generator=torch.Generator().manual_seed(11)))
    assert engine_l_in + loss.item() == pytest.approx(ref_id + 0.05 * ref_paste + 0.05 * ref_ood, rel=1e-5)
    loss.backward()
    assert torch.isfinite(view.extra.grad).all() and view.extra.grad.abs().sum() > 0


def test_eat_stage2_loss_is_the_official_logit_adjusted_ce():
    odc, pseudo = 3, 10000.0
    y2 = labels_for(10, 6)
    g = torch.Generator().manual_seed(6)
    z, abst = torch.randn(24, K, generator=g) * 2, torch.randn(24, odc, generator=g) * 2
    det = EATObjective(stage=2)
    assert det.needs == frozenset()
    got = det.loss(ModelView(logits=z, extra=abst), ctx_for(y2, 4, tau=1.0)).item()
    counts = np.array([pseudo] * odc + CIFAR10_LT, np.float64)
    prior = counts / counts.sum()
    official = np.concatenate([f64(abst), f64(z)], axis=1)[:20] + np.log(prior)
    ref = ce(official, y2.numpy() + odc)
    pi = np.array(CIFAR10_LT, np.float64) / sum(CIFAR10_LT)
    engine_l_in = ce(f64(z[:20]) + np.log(pi), y2.numpy())  # --logit_adjust 1
    assert engine_l_in + got == pytest.approx(ref, rel=1e-5)


def test_eat_score_options_and_declarations():
    g = torch.Generator().manual_seed(8)
    z, abst = torch.randn(10, K, generator=g), torch.randn(10, 30, generator=g)
    score = EATScore().ood_score(ModelView(logits=z, extra=abst), log_prior(CIFAR10_LT).float())
    ref = softmax(np.concatenate([f64(z), f64(abst)], axis=1))[:, K:].sum(1)
    assert f64(score) == pytest.approx(ref, rel=1e-5)
    eat_score, det = registry().training("eat", odc="30")
    assert det.extra_outputs == 30 and det.needs == frozenset({"input_grad"}) and eat_score.needs == frozenset()
    assert registry().training("ada_eat", odc="30")[1].extra_outputs == 30
    with pytest.raises(OptionError):
        EATObjective(stage=3)
    with pytest.raises(ImoodError, match="abstention"):
        EATScore().idness(ModelView(logits=z))


# ---------------------------------------------------------------- Open-Sampling


def test_opensampling_rate_labels_and_loss_equal_the_official_formula():
    counts = torch.tensor(CIFAR10_LT)
    pi = np.array(CIFAR10_LT, np.float64) / sum(CIFAR10_LT)
    ref_r = pi.max() + pi.min() - pi
    assert f64(rebalance_rate(counts, -1.0)) == pytest.approx(ref_r, rel=1e-6)
    assert f64(rebalance_rate(counts, 0.6)) == pytest.approx(0.6 - pi, rel=1e-6)
    # the labels follow Categorical(r / Σr): frequencies over many draws
    draws = sample_open_labels(rebalance_rate(counts, -1.0), 200000, torch.Generator().manual_seed(0))
    freq = np.bincount(draws.numpy(), minlength=K) / 200000
    assert freq == pytest.approx(ref_r / ref_r.sum(), abs=0.004)
    # the loss: torch's weighted CE mean, w = K·r/Σr, with the same labels the detector draws
    y2, m = labels_for(6, 1), 16
    g = torch.Generator().manual_seed(2)
    z = torch.randn(12 + m, K, generator=g) * 2
    t = sample_open_labels(rebalance_rate(counts, -1.0), m, torch.Generator().manual_seed(9))
    zo = f64(z[12:])
    w = K * ref_r / ref_r.sum()
    per = lse(zo) - zo[np.arange(m), t.numpy()]
    ref = float((w[t.numpy()] * per).sum() / w[t.numpy()].sum())
    det = OpenSampling()
    got = det.loss(ModelView(logits=z), ctx_for(y2, m, generator=torch.Generator().manual_seed(9)))
    assert got.item() == pytest.approx(ref, rel=1e-5)
    z.requires_grad_()
    det.loss(ModelView(logits=z), ctx_for(y2, m, generator=torch.Generator().manual_seed(9))).backward()
    assert torch.isfinite(z.grad).all() and z.grad[:12].abs().sum() == 0
    with pytest.raises(ImoodError, match="largest class share"):
        OpenSampling(alpha=0.2).loss(ModelView(logits=z), ctx_for(y2, m))


# ---------------------------------------------------------------- OECC


def test_oecc_loss_equals_the_official_sums():
    y2, m = labels_for(8, 3), 12
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(16 + m, K, generator=g) * 3).requires_grad_()
    got = OECC().loss(ModelView(logits=z), ctx_for(y2, m))
    p = softmax(f64(z))
    # one view of 8 images in the official batch: each image once, i.e. the mean of the two views' sums
    id_sums = [np.sum((p[rows].max(1) - 0.9486) ** 2) for rows in (slice(0, 8), slice(8, 16))]
    ref = 0.07 * np.mean(id_sums) + 0.05 * np.abs(p[16:] - 1 / K).sum()
    assert got.item() == pytest.approx(ref, rel=1e-5)
    got.backward()
    assert torch.isfinite(z.grad).all()
    assert OECC(a_tr=0.7).loss(ModelView(logits=z), ctx_for(y2, m)).item() != pytest.approx(got.item())
    with pytest.raises(OptionError):
        OECC(a_tr=1.5)


# ---------------------------------------------------------------- train and score on digits


def train_args(root, name, *more):
    return ["train", "--ds", "digits", "-e", "1", "-b", "16", "--ood-batch-size", "16", "--aux_ood_loss", "none",
            "--srp", root, "--name", name, "--drp", root / "data", "--log-every", "4", *more]


def scores_of(run, metric):
    ss = ScoreSet.load(run / "scores" / f"{metric}.safetensors")
    return np.concatenate([ss.id_score, *ss.ood_score.values()])


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory, cli_code):
    root = tmp_path_factory.mktemp("methods")
    plans = {
        "cocl": ["--ood_metric", "cocl", "--Lambda", "1", "--logit_adjust", "0"],
        "ada_cocl": ["--ood_metric", "ada_cocl", "--Lambda", "1"],
        "eat": ["--ood_metric", "eat", "--Lambda", "1", "--logit_adjust", "0"],
        "opensampling": ["--ood_metric", "opensampling", "--Lambda", "1", "--logit_adjust", "0"],
        "oecc": ["--ood_metric", "oecc", "--Lambda", "1", "--logit_adjust", "0"],
        # fine-tuning stages start from the runs above
        "eat2": ["--ood_metric", "eat:stage=2", "--Lambda", "1", "--logit_adjust", "1", "--train-only", "classifier",
                 "--ckpt-path", root / "eat"],
        "balenergy": ["--ood_metric", "balenergy", "--logit_adjust", "0", "--ckpt-path", root / "opensampling"],
    }
    for name, args in plans.items():
        assert cli_code(train_args(root, name, *args)) == 0, name
    return root


@pytest.mark.parametrize("run,metrics", [("cocl", "cocl,ada_cocl"), ("ada_cocl", "cocl"), ("eat", "eat,ada_eat"),
                                         ("eat2", "eat"), ("opensampling", "opensampling"), ("oecc", "oecc"),
                                         ("balenergy", "balenergy,ada_balenergy")])
def test_each_method_trains_and_scores_on_digits(digits_runs, run, metrics, cli):
    folder = digits_runs / run
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert records and all(math.isfinite(r[k]) for r in records for k in ("loss", "l_in", "l_ood"))
    assert any(r["l_ood"] != 0 for r in records)
    code, out, err = cli(["score", folder, "--ood_metric", metrics])
    assert code == 0, err
    for metric in metrics.split(","):
        s = scores_of(folder, metric)
        assert np.isfinite(s).all() and s.std() > 0


def test_model_files_hold_the_extra_outputs_but_not_the_prototypes(digits_runs):
    from imood_cli.engine.runs.checkpoint import load_tensors

    tensors, meta = load_tensors(digits_runs / "cocl" / "model.safetensors")
    assert meta["architecture"]["extra_outputs"] == 1 and not any(k.startswith("ood_params") for k in tensors)
    tensors, meta = load_tensors(digits_runs / "eat2" / "model.safetensors")
    assert meta["architecture"]["extra_outputs"] == 3
    stage1 = load_tensors(digits_runs / "eat" / "model.safetensors")[0]
    # --train-only classifier: the backbone is the stage-1 one, the classifier moved
    weights = [k for k in tensors if k.startswith("backbone.") and k.endswith((".weight", ".bias"))]
    assert weights and all(torch.equal(tensors[k], stage1[k]) for k in weights)
    assert not torch.equal(tensors["classifier.weight"], stage1["classifier.weight"])


@pytest.mark.parametrize("metric", ["cocl", "balenergy"])
def test_resume_after_an_interrupt_reaches_the_same_weights(tmp_path, metric):
    # COCL draws head negatives and owns prototypes, BalEnergy keeps a running prior: all must come back exactly
    from imood_cli.data.benchmarks.digits import Digits
    from imood_cli.engine.runs.checkpoint import load_tensors
    from imood_cli.engine.runtime import setup
    from imood_cli.engine.training.config import resolve_config
    from imood_cli.engine.training.lifecycle import resume, train
    from imood_cli.engine.training.trainer import Interrupted, TrainObserver

    class SigintAtStep(TrainObserver):
        def step(self, epoch, step, images):
            if (epoch, step) == (1, 5):
                os.kill(os.getpid(), signal.SIGINT)

    bench = Digits().load(None)
    rt = setup("cpu")

    def cfg(name):
        return resolve_config(dict(dataset="digits", save_root=str(tmp_path), name=name, epochs=2, batch_size=32,
                                   ood_batch_size=32, ood_metric=metric, aux_ood_loss="none", Lambda=1.0,
                                   logit_adjust=0.0, log_every=3))

    full = train(cfg("full"), rt, bench=bench)
    with pytest.raises(Interrupted):
        train(cfg("cut"), rt, SigintAtStep(), bench=bench)
    resumed = resume(tmp_path / "cut", bench=bench, rt=rt)
    a, b = load_tensors(full.run_dir / "model.safetensors")[0], load_tensors(resumed.run_dir / "model.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda run: [{k: v for k, v in json.loads(x).items() if k != "images_per_s"}
                         for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "cut") == strip(full.run_dir)
