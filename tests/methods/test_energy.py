"""Energy method: the margin loss against a float64 reference, margins as options (`-m energy:m_in=`,
`--m-in`), the benchmarks' defaults, margins chosen from the first batch's energies, and where the margins
in use are recorded."""

import json
import math

import numpy as np
import pytest
import torch

from imood_cli.core.contract import LossContext, ModelOutputs
from imood_cli.data.benchmarks.digits import Digits
from imood_cli.engine.runs.checkpoint import CheckpointDir, load_tensors
from imood_cli.engine.runtime import setup
from imood_cli.engine.training.config import default_for, resolve_config
from imood_cli.engine.training.lifecycle import resume, train
from imood_cli.engine.training.setup import build_method
from imood_cli.engine.training.trainer import TrainObserver
from imood_cli.errors import ImoodError
from imood_cli.methods.energy import ID_GAP, OOD_GAP, EnergyObjective, EnergyScore, margins_from_energies
from imood_cli.registry import parse_spec, registry


def energies64(z):
    z = np.asarray(z, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))


def reference_loss(z, n_id, m_in, m_out, weight=0.2):
    e = energies64(z)
    l_in = np.mean(np.maximum(e[:n_id] - m_in, 0.0) ** 2)
    l_out = np.mean(np.maximum(m_out - e[n_id:], 0.0) ** 2)
    return weight * (l_in + l_out)


def batch(seed, k, n_id=6, n_ood=4, scale=4.0, shift=0.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_id + n_ood, k)) * scale + shift
    labels = torch.tensor(rng.integers(0, k, n_id))
    ctx = LossContext(torch.arange(n_id + n_ood) < n_id, labels, torch.zeros(k), num_id=n_id)
    return z, ModelOutputs(torch.tensor(z, dtype=torch.float32)), ctx


@pytest.mark.parametrize("m_in,m_out,k", [(-23.0, -5.0, 10), (-27.0, -5.0, 6), (-6.0, -2.5, 6), (-1.0, 3.0, 4)])
def test_loss_equals_the_float64_reference(m_in, m_out, k):
    z, out, ctx = batch(k, k, shift=2.0)
    got = EnergyObjective(m_in=m_in, m_out=m_out).loss(out, ctx, EnergyScore().idness(out)).item()
    assert got == pytest.approx(reference_loss(z, 6, m_in, m_out), rel=1e-5)


def test_both_hinges_are_exercised():
    """A batch where some ID energies sit above m_in and some OOD energies below m_out, others not."""
    z, out, ctx = batch(3, 6, scale=3.0)
    e = energies64(z)
    m_in, m_out = float(np.median(e[:6])), float(np.median(e[6:]))
    assert (e[:6] > m_in).any() and (e[:6] < m_in).any() and (e[6:] < m_out).any() and (e[6:] > m_out).any()
    det = EnergyObjective(m_in=m_in, m_out=m_out, weight=0.5)
    got = det.loss(out, ctx, EnergyScore().idness(out)).item()
    assert got == pytest.approx(reference_loss(z, 6, m_in, m_out, 0.5), rel=1e-5)


def test_margins_as_options_and_their_errors():
    name, opts = parse_spec("energy:m_in=-7.5:m_out=-2")
    _, det = registry().training(name, **opts)
    assert (det.m_in, det.m_out) == (-7.5, -2.0)
    assert det.options() == {"m_in": -7.5, "m_out": -2.0, "weight": 0.2}
    _, ada = registry().training("ada_energy", m_in="-4")
    assert ada.options()["m_in"] == -4.0 and ada.options()["m_out"] is None
    with pytest.raises(ImoodError, match="m_in"):
        registry().training("energy", m_in="low")
    with pytest.raises(ImoodError, match="m_out"):
        registry().training("energy", m_out=float("nan"))
    with pytest.raises(ImoodError, match="weight"):
        registry().training("energy", weight=-1)
    with pytest.raises(ImoodError, match="m_in is a training option"):  # not a scoring one
        registry().score("energy", m_in=-7)


def test_cli_margins_reach_the_method_and_nothing_else(tmp_path):
    cfg = resolve_config({"dataset": "digits", "ood_metric": "energy", "m_in": -8.0, "save_root": str(tmp_path)})
    _, det = build_method(cfg)
    assert det.m_in == -8.0 and det.m_out == default_for("m_out", "digits")
    typed = resolve_config({"dataset": "digits", "ood_metric": "energy:m_in=-9", "m_in": -8.0})
    assert build_method(typed)[1].m_in == -9.0  # the method's own option wins over the flag
    with pytest.raises(ImoodError, match="--m-in applies to a method with energy margins"):
        build_method(resolve_config({"dataset": "digits", "ood_metric": "oe", "m_in": -8.0}))
    # the benchmark's default margins do not stop a method without margins
    _, oe = build_method(resolve_config({"dataset": "digits", "ood_metric": "oe"}))
    assert "m_in" not in oe.options()


@pytest.mark.parametrize("dataset,m_in,m_out", [("cifar10", -23.0, -5.0), ("cifar100", -27.0, -5.0),
                                                ("imagenet", -27.0, -5.0)])
def test_the_papers_margins_stay_the_cifar_and_imagenet_defaults(dataset, m_in, m_out):
    _, det = build_method(resolve_config({"dataset": dataset, "ood_metric": "energy"}))
    assert (det.m_in, det.m_out) == (m_in, m_out)


def test_digits_defaults_are_reachable_by_an_untrained_network():
    """The digits margins sit within a few log K of the untrained network's energy (≈ −log K)."""
    m_in, m_out = default_for("m_in", "digits"), default_for("m_out", "digits")
    k = Digits().load(None, num_ood_samples=0, ood_tests=False).num_classes
    assert m_in < m_out < -math.log(k)
    assert -math.log(k) - m_in <= 4 * math.log(k)


def test_margins_from_energies_by_hand():
    rng = np.random.default_rng(5)
    e_id, e_ood = rng.normal(-2.0, 0.3, size=12), rng.normal(-1.5, 0.3, size=7)
    pooled = np.sort(np.concatenate([e_id, e_ood]))
    e0 = pooled[(len(pooled) - 1) // 2]  # torch's median: the lower middle value
    got = margins_from_energies(torch.tensor(e_id), torch.tensor(e_ood), 6)
    assert got == pytest.approx((e0 - ID_GAP * math.log(6), e0 - OOD_GAP * math.log(6)), rel=1e-6)


def test_margins_not_given_are_chosen_on_the_first_batch_and_then_kept():
    z, out, ctx = batch(1, 6, scale=0.1)
    det = EnergyObjective(m_out=-1.0)
    first = det.loss(out, ctx, EnergyScore().idness(out)).item()
    e = energies64(z)
    e0 = np.sort(e)[(len(e) - 1) // 2]
    assert det.m_in == pytest.approx(e0 - ID_GAP * math.log(6), rel=1e-5) and det.m_out == -1.0
    assert first == pytest.approx(reference_loss(z, 6, det.m_in, -1.0), rel=1e-5)
    chosen = det.m_in
    z2, out2, ctx2 = batch(2, 6, scale=5.0, shift=3.0)
    assert det.loss(out2, ctx2, EnergyScore().idness(out2)).item() == pytest.approx(
        reference_loss(z2, 6, chosen, -1.0), rel=1e-5)
    assert det.m_in == chosen
    restored = EnergyObjective()
    restored.load_state(det.state())
    assert (restored.m_in, restored.m_out) == (chosen, -1.0)


@pytest.fixture(scope="module")
def digits():
    return Digits().load(None)


def test_margins_used_are_recorded_in_config_and_checkpoints(tmp_path, digits):
    rt = setup("cpu")
    cfg = resolve_config({"dataset": "digits", "ood_metric": "energy", "save_root": str(tmp_path), "name": "given",
                          "epochs": 1, "batch_size": 32, "log_every": 2})
    train(cfg, rt, bench=digits)
    stored = json.loads((tmp_path / "given" / "config.json").read_text())
    assert (stored["m_in"], stored["m_out"]) == (default_for("m_in", "digits"), default_for("m_out", "digits"))
    state = CheckpointDir(tmp_path / "given" / "checkpoint").latest_good()[0]
    assert float(state["metric"]["m_in"]) == stored["m_in"] and float(state["metric"]["m_out"]) == stored["m_out"]

    # A benchmark without margin defaults: the margins come from the first batch and land in the checkpoint.
    free = resolve_config({"dataset": "digits", "ood_metric": "energy", "save_root": str(tmp_path), "name": "free",
                           "epochs": 1, "batch_size": 32, "log_every": 2})
    free.m_in = free.m_out = None
    train(free, rt, bench=digits)
    state = CheckpointDir(tmp_path / "free" / "checkpoint").latest_good()[0]
    m_in, m_out = float(state["metric"]["m_in"]), float(state["metric"]["m_out"])
    # the untrained network's energies are near -log K, and the rule puts m_out one log K and m_in two below
    assert m_out - m_in == pytest.approx((ID_GAP - OOD_GAP) * math.log(6), rel=1e-5)
    assert -math.log(6) - 2 < m_out + OOD_GAP * math.log(6) < -math.log(6) + 2


class CrashAfterFirstEpoch(TrainObserver):
    def epoch_end(self, record):
        if record["epoch"] == 1:
            raise RuntimeError("simulated crash")


def test_a_resumed_run_keeps_the_margins_it_chose(tmp_path, digits):
    """Margins chosen on the first batch come back from the checkpoint: the resumed run ends with the weights
    of an uninterrupted one (it would re-choose them on another batch otherwise)."""
    rt = setup("cpu")

    def cfg(name):
        c = resolve_config({"dataset": "digits", "ood_metric": "energy", "save_root": str(tmp_path), "name": name,
                            "epochs": 2, "batch_size": 32, "log_every": 2})
        c.m_in = c.m_out = None
        return c

    train(cfg("whole"), rt, bench=digits)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg("cut"), rt, CrashAfterFirstEpoch(), bench=digits)
    resume(tmp_path / "cut", bench=digits, rt=rt)
    a = load_tensors(tmp_path / "whole" / "model.safetensors")[0]
    b = load_tensors(tmp_path / "cut" / "model.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
