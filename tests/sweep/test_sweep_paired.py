"""A plan's `compare` pairs: the paired differences over seeds, against scipy and a hand computation."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from imood_cli.engine.sweep.plan import read_plan
from imood_cli.engine.sweep.results import RowResult
from imood_cli.errors import ImoodError
from imood_cli.report.formats import markdown
from imood_cli.report.sweep import paired_comparisons, paired_table, sweep_json

PLAN = """
[sweep]
benchmarks = ["digits"]
seeds = [0, 1, 2, 3, 4]
compare = [["energy", "ada_energy"]]
[[run]]
name = "energy"
train = { ood_metric = "energy" }
score = ["energy"]
[[run]]
name = "ada_energy"
train = { ood_metric = "ada_energy" }
score = ["energy"]
"""

A = [0.90, 0.91, 0.88, 0.93, 0.92]
B = [0.93, 0.92, 0.91, 0.92, 0.96]
NEAR_A = [0.80, 0.82, 0.79, 0.85, 0.84]
NEAR_B = [0.86, 0.84, 0.85, 0.84, 0.90]


def rows(plan):
    def numbers(auroc, near, seed, better):
        return {"auroc": auroc, "aupr_out": 0.5, "fpr95": 0.3 - (0.01 * seed if better else 0), "acc": 0.9,
                "many": 0.95, "medium": 0.9, "few": 0.8 + (0.01 if better else 0.0),
                "auroc_sets": {"near": near, "far": 0.999}}
    a = RowResult("digits", plan.run("energy"), {s: numbers(A[s], NEAR_A[s], s, False) for s in range(5)}, {})
    b = RowResult("digits", plan.run("ada_energy"), {s: numbers(B[s], NEAR_B[s], s, True) for s in range(5)}, {})
    return [a, b]


def test_the_paired_difference_equals_scipy_and_a_hand_computation(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(PLAN)
    plan = read_plan(path)
    assert plan.compare == [("energy", "ada_energy")]
    found = {e["quantity"]: e for e in paired_comparisons(plan, rows(plan), "digits")}
    auroc = found["auroc"]
    d = np.array(B) - np.array(A)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert auroc["mean"] == pytest.approx(d.mean()) and auroc["n"] == 5
    assert (auroc["t_low"], auroc["t_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert auroc["better"] == 4 and auroc["worse"] == 1 and auroc["p_sign"] == pytest.approx(6 / 16)
    assert auroc["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert found["fpr95"]["better"] == 4  # lower is better; seed 0 ties
    near = found["set:near"]
    assert near["mean"] == pytest.approx(np.mean(np.array(NEAR_B) - NEAR_A)) and not near["saturated"]
    assert found["set:far"]["saturated"] and found["set:far"]["mean"] == 0
    text = markdown(None, [paired_table(plan, rows(plan), "digits")])
    assert "| energy → ada_energy | AUROC on far | +0.00 |" in text and "saturated" in text
    doc = json.loads(sweep_json(plan, rows(plan), []))
    assert doc["benchmarks"]["digits"]["paired"][0]["quantity"] == "auroc"


def test_compare_names_runs_of_the_plan(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(PLAN.replace('[["energy", "ada_energy"]]', '[["energy", "ada_enrgy"]]'))
    with pytest.raises(ImoodError, match="did you mean 'ada_energy'"):
        read_plan(path)
    path.write_text(PLAN.replace('[["energy", "ada_energy"]]', '["energy"]'))
    with pytest.raises(ImoodError, match=r"compare in \[sweep\] of .* must be a list of \[A, B\] run-name pairs"):
        read_plan(path)


def test_a_plan_checks_aux_loss_options_as_the_command_line_does(tmp_path):
    from imood_cli.engine.sweep.plan import check_names

    path = tmp_path / "plan.toml"
    path.write_text(PLAN.replace('train = { ood_metric = "energy" }',
                                 'train = { ood_metric = "energy", aux_ood_loss = "pascl:k=0.5" }'))
    check_names(read_plan(path))  # a spec with options is a valid aux loss
    path.write_text(PLAN.replace('train = { ood_metric = "energy" }',
                                 'train = { ood_metric = "energy", aux_ood_loss = "pascl:q=1" }'))
    with pytest.raises(ImoodError, match="aux_ood_loss of run 'energy' .*no option 'q'"):
        check_names(read_plan(path))
