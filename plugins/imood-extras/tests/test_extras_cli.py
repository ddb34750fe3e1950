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
    return subprocess.run([IMOOD, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    srp = tmp_path_factory.mktemp("runs")
    r = imood("train", "--ds", "digits", "--epochs", "2", "--aux_ood_loss", "supcon", "--ood_metric", "ada_bin_disc",
              "--srp", srp, "--name", "x")
    assert r.returncode == 0, r.stderr
    return srp / "x"


def test_plugins_listed():
    r = imood("plugins", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {(row["kind"], row["name"]): row for row in json.loads(r.stdout)}
    for key in [("detector", "maxlogit"), ("detector", "ada_maxlogit"), ("detector", "knn"), ("detector", "ada_knn"),
                ("aux_loss", "supcon")]:
        assert rows[key]["loaded"] and rows[key]["distribution"] == "imood-extras", rows[key]


def test_train_with_supcon_and_score_with_extras(run):
    assert json.loads((run / "config.json").read_text())["aux_ood_loss"] == "supcon"
    r = imood("score", run, "--ood_metric", "ada_maxlogit,knn")
    assert r.returncode == 0, r.stderr
    assert (run / "scores" / "ada_maxlogit.safetensors").exists()
    assert (run / "scores" / "knn.safetensors").exists()
    cached = list((run / "fits").glob("knn-*.safetensors"))
    assert len(cached) == 1  # the fitted bank is cached next to the checkpoint

    # The knn scores imood wrote equal an independent numpy k-NN over the model's own features.
    from imood_cli.engine.benchmark import load_benchmark
    from imood_cli.engine.runtime import Runtime
    from imood_cli.engine.score import infer, load_model
    from imood_cli.engine.scoreset import ScoreSet

    loaded = load_model(run, "cpu")
    bench = load_benchmark("digits", Path("data"))
    rt = Runtime(torch.device("cpu"))
    train = infer(loaded.model, bench.train, rt, 1024, bench.augment, True).features.double().numpy()
    test = infer(loaded.model, bench.test, rt, 1024, bench.augment, True).features.double().numpy()
    train /= np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    test /= np.maximum(np.linalg.norm(test, axis=1, keepdims=True), 1e-12)
    k = min(50, len(train))
    dist = np.sqrt(((test[:, None, :] - train[None, :, :]) ** 2).sum(-1))
    ref = np.sort(dist, axis=1)[:, k - 1]
    ss = ScoreSet.load(run / "scores" / "knn.safetensors")
    np.testing.assert_allclose(ss.id_score.numpy()[: len(ref)], ref, rtol=1e-4, atol=1e-4)

    # A second run reads the cache instead of refitting.
    stamp = cached[0].stat().st_mtime_ns
    r = imood("score", run, "--ood_metric", "ada_knn")
    assert r.returncode == 0, r.stderr
    assert cached[0].stat().st_mtime_ns == stamp


def test_left_out_by_imood_plugins(run):
    r = imood("score", run, "--ood_metric", "ada_maxlogit", IMOOD_PLUGINS="")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "unknown detector 'ada_maxlogit'; did you mean" in lines[0]
    assert "imood-extras" in lines[0]  # says which left-out distribution has it
