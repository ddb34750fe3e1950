"""Every row of the paper's Table 1 runs on the CIFAR fixtures: the exact command lines of the shipped
`table1-cifar10` plan (`imood sweep --print`), at a fixture's size (one epoch of the digits-sized ResNet,
small batches), trained and scored in order, COCL + ImOOD included."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_data import write_cifar_benchmark

from imood_cli.engine.runs.scorefile import ScoreSet
from imood_cli.engine.sweep.commands import commands
from imood_cli.engine.sweep.plan import read_plan, select
from imood_cli.engine.sweep.units import unit_state, units

PLANS = Path(__file__).resolve().parents[2] / "imood_cli" / "plans"
SMALL = ["-e", "1", "--md", "imood_resnet_micro", "-b", "32", "--ood-batch-size", "32", "--num_ood_samples", "40",
         "--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, cli_code):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_benchmark(root, "cifar10", per_class=100)  # 242 long-tailed training images
    # the fixture's batches are not the published files: prepared unverified, as a user would
    assert cli_code(["data", "prepare", "cifar10", "--drp", root, "--no-verify", "--no-download",
                     "--num-ood-samples", "40"]) == 0
    return root


def test_every_row_of_table1_trains_and_scores_on_the_cifar_fixture(data, tmp_path, cli):
    plan = read_plan(PLANS / "table1-cifar10.toml")
    plan.save_root = str(tmp_path / "runs")
    plan = select(plan, seeds=[0])
    rows = {r.name for r in plan.runs}
    assert {"MSP", "OECC", "EnergyOE", "OE", "PASCL", "OpenSampling", "ClassPrior", "BalEnergy", "COCL",
            "PASCL + ImOOD", "COCL + ImOOD"} <= rows and any(r.startswith("EAT") for r in rows)
    for unit in units(plan):  # dependency order: a model is trained before the rows that start from it
        for cmd in commands(plan, unit, unit_state(unit), data_root=str(data)):
            argv = cmd[1:] + (SMALL if cmd[1] == "train" else ["--device", "cpu", "--batch-size", "64"])
            code, out, err = cli(argv)
            assert code == 0, (unit.label, " ".join(map(str, argv)), err[-2000:])
        for spec in unit.specs:
            ss = ScoreSet.load(next((unit.folder / "scores").glob(f"{spec.split(':')[0]}*.safetensors")))
            assert len(ss.id_score) and len(ss.ood_score) == 6, (unit.label, spec)  # the six SCOOD sets
