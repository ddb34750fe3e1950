"""End to end through imood's CLI on the digits benchmark, with imood-extras installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BIN = Path(sys.executable).parent
IMOOD = shutil.which("imood", path=str(BIN)) or shutil.which("imood")


def imood(*args, **env):
    base = {k: v for k, v in os.environ.items() if k != "IMOOD_PLUGINS"}  # every installed plugin, unless told
    return subprocess.run([IMOOD, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**base, "HF_HUB_OFFLINE": "1", **env})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    srp = tmp_path_factory.mktemp("runs")
    r = imood("train", "--ds", "digits", "--epochs", "2", "--aux_ood_loss", "supcon", "--ood_metric", "ada_margin",
              "--srp", srp, "--drp", srp / "data", "--name", "x")
    assert r.returncode == 0, r.stderr
    return srp / "x"


def test_plugins_listed():
    r = imood("plugins", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {(row["kind"], row["name"]): row for row in json.loads(r.stdout)}
    for key in [("method", "margin"), ("method", "ada_margin"), ("aux_loss", "supcon")]:
        assert rows[key]["loaded"] and rows[key]["distribution"] == "imood-extras", rows[key]


def test_train_with_supcon_and_score_with_margin(run):
    config = json.loads((run / "config.json").read_text())
    assert config["aux_ood_loss"] == "supcon" and config["ood_metric"] == "ada_margin"  # ImOOD training with it
    r = imood("score", run, "--ood_metric", "margin,ada_margin")
    assert r.returncode == 0, r.stderr
    assert not r.stderr.count("skipped")  # no plugin warning: nothing clashes with a built-in

    # The margins imood wrote equal the top-two gap of the model's own logits, recomputed here.
    from imood_cli.engine.benchmarks import load_benchmark
    from imood_cli.engine.runs.scorefile import ScoreSet
    from imood_cli.engine.runtime import Runtime
    from imood_cli.engine.scoring.infer import infer
    from imood_cli.engine.scoring.loading import load_model

    loaded = load_model(run, "cpu")
    bench = load_benchmark("digits", run.parent / "data")
    logits = infer(loaded.model, bench.test, Runtime(torch.device("cpu")), 1024, bench.augment, False).logits
    z = np.sort(logits.double().numpy(), axis=1)
    ss = ScoreSet.load(run / "scores" / "margin.safetensors")
    np.testing.assert_allclose(np.asarray(ss.id_score)[: len(z)], -(z[:, -1] - z[:, -2]), rtol=1e-4, atol=1e-4)
    ada = ScoreSet.load(run / "scores" / "ada_margin.safetensors")
    assert np.shape(ada.id_score) == np.shape(ss.id_score) and not np.allclose(ada.id_score, ss.id_score)


def test_left_out_by_imood_plugins(run):
    r = imood("score", run, "--ood_metric", "ada_margin", IMOOD_PLUGINS="")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "unknown method 'ada_margin'" in lines[0]
    assert "imood-extras" in lines[0]  # says which left-out distribution has it
