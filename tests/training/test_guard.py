"""The training guard: one warning, naming the term and its options, when a regularizer crowds out the
classifier or the classifier stays at chance; none on healthy runs (the recorded numbers of real digits runs,
and real runs through the engine)."""

import math
from types import SimpleNamespace

import pytest

from imood_cli.data.benchmarks.digits import Digits
from imood_cli.engine.runtime import setup
from imood_cli.engine.training.config import resolve_config
from imood_cli.engine.training.guard import TrainingGuard
from imood_cli.engine.training.lifecycle import train
from imood_cli.engine.training.setup import build_method
from imood_cli.engine.training.trainer import TrainObserver
from imood_cli.registry import registry

DIGITS_COUNTS = [118, 74, 46, 29, 18, 11]


def guard_for(metric="energy", aux="none", Lambda=0.5, Lambda2=0.05, log_every=20, total=120, counts=DIGITS_COUNTS):
    cfg = SimpleNamespace(ood_metric=metric, aux_ood_loss=aux, Lambda=Lambda, Lambda2=Lambda2, log_every=log_every)
    name = metric.split(":")[0]
    return TrainingGuard.for_run(cfg, registry().training(name)[1], counts, total)


def log(step, l_in, l_ood=0.0, l_aux=0.0, acc=0.9):
    return {"kind": "log", "step": step, "l_in": l_in, "l_ood": l_ood, "l_aux": l_aux, "train_acc": acc}


def feed(guard, records):
    return [w for w in (guard.observe(r) for r in records) if w]


# Recorded by digits runs of 30 epochs (120 steps, a record every 20), τ = 1: (l_in, l_ood, l_aux, train_acc).
HEALTHY = {
    "energy": [(1.1327, 0.4567, 0, 0.303), (0.3596, 0.0338, 0, 0.889), (0.1350, 0.0084, 0, 0.975),
               (0.0841, 0.0045, 0, 0.984), (0.0458, 0.0013, 0, 0.994), (0.0405, 0.0146, 0, 0.998)],
    "ada_energy": [(1.0222, 0.6598, 0, 0.707), (0.3876, 0.1364, 0, 0.871), (0.1350, 0.0434, 0, 0.965),
                   (0.0794, 0.0276, 0, 0.973), (0.0423, 0.0177, 0, 0.992), (0.0342, 0.0243, 0, 0.994)],
    # oe: the OE term (≈ log K at uniform outputs) outlives a converged cross-entropy
    "oe": [(0.9717, 1.8163, 0, 0.723), (0.3476, 1.8360, 0, 0.895), (0.1209, 1.8194, 0, 0.977),
           (0.0891, 1.8118, 0, 0.977), (0.0423, 1.8018, 0, 0.992), (0.0447, 1.8081, 0, 0.992)],
    "bin_disc+pascl": [(1.0277, 0.2042, 2.6583, 0.697), (0.3540, 0.0456, 2.3676, 0.871),
                       (0.1234, 0.0170, 1.6215, 0.969), (0.0756, 0.0122, 1.8888, 0.975),
                       (0.0444, 0.0090, 1.4413, 0.996), (0.0418, 0.0169, 1.8523, 0.994)],
}
PAPER_MARGINS = [(1.9885, 82.4601, 0.115), (2.6515, 26.8857, 0.105), (2.7235, 4.7731, 0.082),
                 (1.7916, 1.7481, 0.25), (1.4541, 0.7829, 0.373), (1.3783, 0.7506, 0.393)]


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_no_warning_on_healthy_digits_runs(name):
    metric, _, aux = name.partition("+")
    records = [log(20 * (i + 1), *values) for i, values in enumerate(HEALTHY[name])]
    assert feed(guard_for(metric, aux=aux or "none"), records) == []


def test_cifar_margins_on_digits_warn_once_naming_the_margins():
    guard = guard_for("energy")
    warnings = feed(guard, [log(20 * (i + 1), a, b, 0.0, c) for i, (a, b, c) in enumerate(PAPER_MARGINS)])
    assert len(warnings) == 1 and guard.warnings == warnings
    text = warnings[0]
    assert "--m-in/--m-out/--Lambda" in text and "chance" in text and "step 40" in text
    # the energy term peaked at 0.5·82.46/1.9885 = 20.7× the cross-entropy while accuracy sat at chance
    assert f"{0.5 * 82.4601 / 1.9885:.1f}×" in text


def test_a_sustained_dominant_term_is_named_with_its_peak_ratio():
    guard = guard_for("oe", total=400)  # sustain: a quarter of 400 steps = 100 steps = 5 records
    records = [log(20 * (i + 1), 1.0, 30.0 + i, acc=0.95) for i in range(6)]
    out = [guard.observe(r) for r in records]
    assert out[:4] == [None] * 4 and out[4] is not None and out[5] is None
    ratio = 0.5 * 34.0 / 1.0
    assert f"{ratio:.0f}× every other loss term" in out[4] and "for 100 steps, up to step 100" in out[4]
    assert "Set --Lambda " in out[4] and "--m-in" not in out[4]  # oe has no margins


def test_a_stretch_interrupted_by_a_balanced_record_starts_again():
    guard = guard_for("energy", total=400)
    records = [log(20, 1.0, 30.0), log(40, 1.0, 30.0), log(60, 1.0, 30.0), log(80, 1.0, 1.0)]
    records += [log(100 + 20 * i, 1.0, 30.0) for i in range(4)]
    assert feed(guard, records) == []


def test_the_aux_term_names_lambda2():
    guard = guard_for("bin_disc", aux="pascl", total=80)
    text = feed(guard, [log(20, 0.5, 0.3, 400.0), log(40, 0.5, 0.3, 400.0)])[0]
    assert text.startswith("the aux loss pascl (Lambda2 · l_aux") and "--Lambda2" in text


def test_a_converged_cross_entropy_counts_as_a_tenth_of_log_k():
    """OE at 0.5·1.8 = 0.9 beside l_in = 0.001: 900× the CE, yet only 0.9/(0.1·log 6) = 5× the floor."""
    guard = guard_for("oe")
    floor = 0.1 * math.log(6)
    assert guard.ce_floor == pytest.approx(floor)
    assert feed(guard, [log(20 * i, 0.001, 1.8, 1.0) for i in range(1, 7)]) == []
    # the same term just over 10× the floor is reported
    just_over = 10.1 * floor / 0.5
    assert len(feed(guard_for("oe"), [log(20 * i, 0.001, just_over, 1.0) for i in range(1, 7)])) == 1


def test_near_chance_accuracy_without_a_large_term_points_at_the_optimiser():
    guard = guard_for("bin_disc")
    chance = 118 / sum(DIGITS_COUNTS)
    floor = chance + 0.25 * (1 - chance)
    assert guard.accuracy_floor() == pytest.approx(floor)
    text = feed(guard, [log(20, 1.7, 0.6, acc=floor - 0.01), log(40, 1.7, 0.6, acc=floor - 0.01)])[0]
    assert "--lr" in text and f"{100 * chance:.0f}%" in text
    assert feed(guard_for("bin_disc"), [log(20, 1.7, 0.6, acc=floor + 0.01), log(40, 1.7, 0.6, acc=floor + 0.01)]) == []


def test_the_first_record_alone_never_warns():
    assert feed(guard_for("energy", total=20), [log(20, 2.0, 500.0, 0.0)]) == []


def test_ada_energy_names_no_margins_and_epoch_records_are_ignored():
    guard = guard_for("ada_energy")
    assert guard.controls["l_ood"] == "--Lambda"
    epoch = dict(log(120, 1.0, 300.0, 0.0), kind="epoch")
    assert feed(guard, [epoch] * 10) == []
    assert guard_for("balenergy").controls["l_ood"] == "--m-in/--m-out/--Lambda"


# ---- through the engine


class Messages(TrainObserver):
    def __init__(self):
        self.seen = []

    def message(self, text):
        self.seen.append(text)


@pytest.fixture(scope="module")
def digits():
    return Digits().load(None)


def run(tmp_path, digits, name, **opts):
    cfg = resolve_config({"dataset": "digits", "save_root": str(tmp_path), "name": name, "aux_ood_loss": "none",
                          **opts})
    obs = Messages()
    return train(cfg, setup("cpu"), obs, bench=digits), obs


def test_engine_warns_once_through_the_observer_and_the_result(tmp_path, digits):
    result, obs = run(tmp_path, digits, "cifar-margins", ood_metric="energy", m_in=-27.0, m_out=-5.0, epochs=10)
    assert len(result.warnings) == 1 and obs.seen == [f"warning: {result.warnings[0]}"]
    assert "--m-in/--m-out/--Lambda" in result.warnings[0]
    assert build_method(resolve_config({"dataset": "digits", "ood_metric": "energy", "m_in": -27.0}))[1].m_in == -27.0


def test_engine_is_silent_on_a_healthy_digits_run(tmp_path, digits):
    result, obs = run(tmp_path, digits, "healthy", ood_metric="energy", epochs=20)
    assert result.warnings == [] and obs.seen == []
    assert result.last["train_acc"] >= 0.9
