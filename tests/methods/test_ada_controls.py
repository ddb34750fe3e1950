"""The controls that isolate the ImOOD correction (`--ada-correction none | flat-prior`): each changes exactly
what it says, checked against a float64 computation by hand of the regularizer (Liu et al., NeurIPS 2024)."""

from __future__ import annotations

import json

import pytest
import torch

from imood_cli.core.ada import AdaScore, imood_training_loss
from imood_cli.core.contract import LossContext, ModelView
from imood_cli.core.prior import log_prior
from imood_cli.methods.energy import EnergyScore
from imood_cli.methods.msp import MSP

COUNTS = [50, 20, 8, 3]


def batch(seed=0, n_id=6, n_ood=4, k=4):
    g = torch.Generator().manual_seed(seed)
    n = n_id + n_ood
    logits = torch.randn(n, k, generator=g, dtype=torch.float64)
    lambdas = torch.rand(n, k, generator=g, dtype=torch.float64) * 2 + 0.1
    labels = torch.randint(0, k, (n_id,), generator=g)
    stat = torch.randn(n, generator=g, dtype=torch.float64) * 3
    is_id = torch.arange(n) < n_id
    view = ModelView(logits=logits.float(), lambdas=lambdas.float())
    ctx = LossContext(is_id=is_id, labels=labels, log_prior=log_prior(COUNTS, 1.0).float())
    return view, ctx, stat.float(), (logits, lambdas, labels, stat, is_id)


def by_hand(raw, prior, correction):
    """The regularizer in float64, term by term: q, β, the constraint, δ with its clamps, the BCE."""
    logits, lambdas, labels, g, is_id = raw
    k = logits.shape[1]
    onehot = torch.zeros(len(labels), k, dtype=torch.float64).scatter_(1, labels[:, None], 1.0)
    q = torch.cat([onehot * 0.8 + 0.2 / k, torch.softmax(logits[len(labels):], 1)])
    beta = (lambdas * q / prior).mean(1)
    sig = 1 / (1 + torch.exp(-g))
    constraint = torch.clamp(torch.log(beta) + torch.log(sig), min=0).mean()
    t = is_id.double()
    if correction == "none":
        p = sig
    else:
        delta = (beta + (beta - 1) * torch.exp(g)).clamp(0.1, 10)
        delta = torch.where(is_id, delta.clamp(min=1), delta.clamp(max=1))
        p = 1 / (1 + torch.exp(-(g - torch.log(delta))))
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    return constraint, bce


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("correction", ["full", "none", "flat-prior"])
def test_each_control_is_the_regularizer_with_one_thing_changed(seed, correction):
    view, ctx, g, raw = batch(seed)
    c, b = imood_training_loss(g, view, ctx, correction)
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    # flat-prior: π̃_k = 1/K inside β, so β = Σ_k λ_k q_k; the others keep the τ = 1 prior π
    prior = torch.full((4,), 0.25, dtype=torch.float64) if correction == "flat-prior" else counts / counts.sum()
    hc, hb = by_hand(raw, prior, correction)
    assert float(c) == pytest.approx(float(hc), rel=1e-5, abs=1e-6)
    assert float(b) == pytest.approx(float(hb), rel=1e-5, abs=1e-6)


def test_none_is_a_plain_logistic_loss_on_the_same_statistic_and_flat_prior_differs_from_full():
    view, ctx, g, raw = batch(7)
    full = imood_training_loss(g, view, ctx, "full")
    none = imood_training_loss(g, view, ctx, "none")
    flat = imood_training_loss(g, view, ctx, "flat-prior")
    t = raw[4].double()
    logistic = torch.nn.functional.binary_cross_entropy_with_logits(raw[3], t)
    assert float(none[1]) == pytest.approx(float(logistic), rel=1e-5)
    assert float(none[0]) == float(full[0])  # the constraint that trains λ is unchanged
    assert float(flat[1]) != pytest.approx(float(full[1]), rel=1e-3)  # the prior matters on this batch


@pytest.mark.parametrize("base", [MSP, EnergyScore])
def test_post_hoc_controls_score_as_the_vanilla_detector(base):
    view, _, _, _ = batch(3)
    lp = log_prior(COUNTS, 1.0).float()
    vanilla = base().ood_score(view, lp)
    for correction in ("none", "flat-prior"):
        assert torch.equal(AdaScore(base(), correction=correction).ood_score(view, lp), vanilla)
    assert not torch.equal(AdaScore(base()).ood_score(view, lp), vanilla)


def test_the_option_is_checked_recorded_and_trains(tmp_path, cli):
    code, _, err = cli(["train", "--ds", "digits", "--srp", tmp_path, "--name", "e", "--ood-metric", "energy",
                        "--ada-correction", "none"])
    assert code == 2 and "--ada-correction none is a control of an ada_ training loss" in err
    code, _, err = cli(["train", "--ds", "digits", "--srp", tmp_path, "--name", "a", "--ood-metric",
                        "ada_energy", "--ada-correction", "sideways"])
    assert code == 2 and "unknown --ada-correction value 'sideways'" in err
    code, _, err = cli(["train", "--ds", "digits", "-e", 1, "--srp", tmp_path, "--name", "c", "--device", "cpu",
                        "--ood-metric", "ada_energy", "--aux-ood-loss", "none", "--ada-correction", "none"])
    assert code == 0, err
    assert json.loads((tmp_path / "c" / "config.json").read_text())["ada_correction"] == "none"
