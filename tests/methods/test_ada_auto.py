"""`imood score --ada-scale auto`: c removes the correlation between each class's mean ID score and its log
prior on the training set; checked against the rule recomputed in float64 with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imood_cli.data.benchmarks.digits import Digits
from imood_cli.engine.runs.scorefile import ScoreSet


@pytest.fixture(scope="module")
def run(tmp_path_factory, cli_code):
    root = tmp_path_factory.mktemp("auto")
    assert cli_code(["train", "--ds", "digits", "-e", "3", "--srp", root, "--name", "r", "--device", "cpu",
                     "--ood_metric", "oe", "--aux_ood_loss", "none", "--logit_adjust", "0"]) == 0
    return root / "r"


def expected_c(run, statistic) -> float:
    """The rule, independently: per-class means over the ID training set of g and of log β̂, then
    c = -cov(mean g, log π̃) / cov(mean log β̂, log π̃), clipped at 0 (τ = 1)."""
    from imood_cli.engine.scoring.loading import load_model

    loaded = load_model(run)
    bench = Digits().load(None)
    x = bench.train.images.float() / 255.0
    with torch.no_grad():
        z = loaded.model(x).logits.double().numpy()
    y = bench.train.labels.numpy()
    counts = np.asarray(loaded.class_counts, dtype=np.float64)
    log_pi = np.log(counts / counts.sum())
    log_p = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
    log_beta = np.log(np.exp(log_p - log_pi).mean(1))
    g = statistic(z, log_p)
    k = len(counts)
    gm = np.array([g[y == c].mean() for c in range(k)])
    bm = np.array([log_beta[y == c].mean() for c in range(k)])
    cov = lambda a, b: ((a - a.mean()) * (b - b.mean())).mean()
    return max(-cov(gm, log_pi) / cov(bm, log_pi), 0.0)


def test_auto_scale_follows_the_rule(run, tmp_path, cli_code):
    assert cli_code(["score", run, "-m", "ada_msp,ada_energy", "--ada-scale", "auto", "--device", "cpu",
                     "--out", tmp_path]) == 0
    msp = ScoreSet.load(tmp_path / "ada_msp.safetensors").meta
    energy = ScoreSet.load(tmp_path / "ada_energy.safetensors").meta
    want_msp = expected_c(run, lambda z, log_p: np.exp(log_p).max(1) - 1 / z.shape[1])
    want_energy = expected_c(run, lambda z, log_p: np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1))
    assert msp["ada_scale"] == pytest.approx(want_msp, rel=1e-4, abs=1e-6)
    assert energy["ada_scale"] == pytest.approx(want_energy, rel=1e-4, abs=1e-6)
    assert "imood's heuristic" in msp["ada_scale_rule"]


def test_ada_scale_takes_a_number_or_auto(run, cli):
    code, _, err = cli(["score", run, "-m", "ada_msp", "--ada-scale", "big", "--device", "cpu"])
    assert code == 2 and "--ada-scale takes a number >= 0 or auto" in err
