"""react, ash, scale, dice, vim, knn and rmd through `imood score` on a digits run: score files, fits cached
per model, values equal to pytorch-ood / float64 recomputations over the model's own features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from feature_views import np_vim
from pytorch_ood.detector import KNN as PoodKNN

from imood_cli.engine.benchmarks import load_benchmark
from imood_cli.engine.runs.scorefile import ScoreSet
from imood_cli.engine.runtime import Runtime
from imood_cli.engine.scoring.infer import infer
from imood_cli.engine.scoring.loading import load_model

SPECS = ["react", "ada_react", "ash", "ash:variant=b:layer=map", "scale", "dice", "vim", "ada_vim", "knn", "ada_knn",
         "rmd", "ada_rmd"]
FITTED = ["react", "dice", "vim", "knn", "rmd"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cli_code):
    root = tmp_path_factory.mktemp("feature-cli")
    code = cli_code(["train", "--ds", "digits", "--epochs", "2", "--srp", root, "--name", "r", "--drp", root / "data"])
    assert code == 0
    return root / "r"


@pytest.fixture(scope="module")
def scored(run, cli_code):
    code = cli_code(["score", run, "--ood_metric", ",".join(SPECS)])
    assert code == 0
    return run


def model_features(run):
    """(train features, train labels, ID test features) of the run's model, recomputed here."""
    loaded = load_model(run, "cpu")
    bench = load_benchmark("digits", run.parent / "data")
    rt = Runtime(torch.device("cpu"))
    train = infer(loaded.model, bench.train, rt, 1024, bench.augment, True).features
    test = infer(loaded.model, bench.test, rt, 1024, bench.augment, True).features
    return train, bench.train.labels, test


def test_every_detector_writes_scores_and_caches_its_fit(scored):
    for spec in SPECS:
        ss = ScoreSet.load(scored / "scores" / f"{spec.replace(':', '-')}.safetensors")
        assert np.isfinite(ss.id_score).all() and all(np.isfinite(v).all() for v in ss.ood_score.values())
    fits = {p.name.rsplit("-", 1)[0] for p in (scored / "fits").glob("*.safetensors")}
    assert set(FITTED) <= fits  # ada_<name> shares its base's fit
    meta = ScoreSet.load(scored / "scores" / "ash-variant=b-layer=map.safetensors").meta
    assert meta["detector_options"] == {"variant": "b", "p": 90.0, "layer": "map"}


def test_knn_and_its_ada_scale_equal_recomputations(scored):
    train, train_y, test = model_features(scored)
    knn = ScoreSet.load(scored / "scores" / "knn.safetensors")
    ref = PoodKNN(None, k=50).fit_features(train, train_y).predict_features(test).numpy()
    np.testing.assert_allclose(knn.id_score[: len(ref)], ref, rtol=1e-4, atol=1e-4)
    # c of ada_knn: 0.1 · std of the leave-one-out g over the training set (fewer than 4096 rows: all)
    b = train.double().numpy()
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    dist = np.sqrt(np.maximum(2 - 2 * b @ b.T, 0))
    np.fill_diagonal(dist, np.inf)
    loo = np.sort(dist, axis=1)[:, 49]
    ada = ScoreSet.load(scored / "scores" / "ada_knn.safetensors")
    assert ada.meta["ada_scale"] == pytest.approx(0.1 * np.std(-loo, ddof=1), rel=1e-3)


def test_vim_equals_the_float64_formula(scored):
    train, _, test = model_features(scored)
    model = load_model(scored, "cpu").model
    w, b = (t.detach().double().numpy() for t in model.class_weights())
    logits = test.double().numpy() @ w.T + b
    d = train.shape[1]
    g_test, _, g_train = np_vim(train.numpy(), test.numpy(), logits, w, b, dim=d // 2)
    vim = ScoreSet.load(scored / "scores" / "vim.safetensors")
    np.testing.assert_allclose(vim.id_score[: len(g_test)], -g_test, rtol=1e-3, atol=1e-3)
    assert ScoreSet.load(scored / "scores" / "ada_vim.safetensors").meta["ada_scale"] == pytest.approx(
        0.1 * np.std(g_train, ddof=1), rel=1e-3)


def test_a_second_score_reads_the_fit_cache(scored, cli_code):
    stamps = {p: p.stat().st_mtime_ns for p in (scored / "fits").glob("*.safetensors")}
    code = cli_code(["score", scored, "--ood_metric", "knn,rmd,dice"])
    assert code == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_bad_detector_option_is_one_line(run, cli):
    code, _, err = cli(["score", run, "--ood_metric", "ash:variant=q"])
    assert code == 2
    assert err.strip().count("\n") == 0 and "variant must be one of s, b, p" in err
