"""The commands end to end on digits, and their exit codes for bad input."""

import json

import numpy as np
import pytest
import torch

from imood_cli.engine.runs.scorefile import ScoreSet


@pytest.fixture(scope="module")
def run(tmp_path_factory, cli_code):
    root = tmp_path_factory.mktemp("cli")
    code = cli_code(["train", "--ds", "digits", "--epochs", "2", "--srp", root, "--name", "r", "--drp", root / "data"])
    assert code == 0
    return root / "r"


def test_pipeline_end_to_end(run, cli, tmp_path):
    detectors = "msp,ada_msp,bin_disc,ada_bin_disc,maha,ada_gradnorm"
    code, out, err = cli(["score", run, "--ood_metric", detectors])
    assert code == 0, err
    for m in ("msp", "ada_msp", "bin_disc", "ada_bin_disc", "maha", "ada_gradnorm"):
        assert (run / "scores" / f"{m}.safetensors").exists()
    assert list((run / "fits").glob("maha-*.safetensors"))  # the fit is cached per checkpoint
    code, out, err = cli(["eval", run / "scores" / "ada_bin_disc.safetensors", "--json"])
    assert code == 0, err
    r = json.loads(out)
    assert set(r["ood"]) == {"digits-6-9", "flower-patches", "noise", "mean"}
    for m in r["ood"].values():
        assert set(m) >= {"auroc", "aupr_in", "aupr_out", "fpr95"}
        assert all(0 <= m[k] <= 1 for k in ("auroc", "aupr_in", "aupr_out", "fpr95"))
    assert set(r["id"]) >= {"acc", "many", "medium", "few"}
    assert "0.95" in r["fpr95_convention"]
    assert (run / "eval" / "ada_bin_disc.json").exists()
    # eval recomputes from nothing but the file: check it against the scores inside it
    ss = ScoreSet.load(run / "scores" / "ada_bin_disc.safetensors")
    acc = float(np.mean(ss.id_pred == ss.id_label))
    assert r["id"]["acc"] == pytest.approx(acc)
    code, out, err = cli(["report", run, "--format", "md", "--html", tmp_path / "r.html"])
    assert code == 0, err
    assert "| ada_msp |" in out and "| msp |" in out
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    code, out, err = cli(["eval", run, "--csv"])
    assert code == 0 and out.splitlines()[0] == "metric,ood_set,auroc,aupr_in,aupr_out,fpr95,alias_of"


def test_score_file_format(run, cli):
    cli(["score", run, "--ood_metric", "energy"])
    from safetensors import safe_open

    with safe_open(run / "scores" / "energy.safetensors", "pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["imood"])
    assert {"id.score", "id.label", "id.pred", "ood.noise.score", "ood.noise.pred"} <= keys
    assert meta["score_direction"] == "higher_is_ood" and meta["metric"] == "energy"
    assert meta["class_counts"] and meta["checkpoint"].endswith("model.safetensors")
    assert meta["class_names"] == [str(k) for k in range(len(meta["class_counts"]))]  # digits' names: its digits


def test_eval_accepts_scores_from_any_tool(tmp_path, cli):
    rng = np.random.default_rng(0)
    ss = ScoreSet("mine", torch.tensor(rng.normal(size=50)), None, None, {"x": torch.tensor(rng.normal(2, size=40))})
    ss.save(tmp_path / "mine.safetensors")
    code, out, err = cli(["eval", tmp_path / "mine.safetensors", "--json"])
    assert code == 0, err
    assert "id" not in json.loads(out) and json.loads(out)["ood"]["x"]["auroc"] > 0.8


def one_line_error(code, err, pattern):
    assert code == 2
    lines = [x for x in err.strip().splitlines() if x]
    assert len(lines) == 1 and lines[0].startswith("imood: error:"), err
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize("argv,pattern", [
    (["train", "--ds", "digts"], "did you mean 'digits'"),
    (["data", "prepare", "cifar1"], "unknown dataset"),
    (["train", "--ood_metric", "ada_bin_dsc", "--epochs", "1"], "did you mean 'ada_bin_disc'"),
    (["train", "--imbalance_ratio", "2"], "(0, 1]"),
    (["train", "--Lambda", "-0.5"], "--Lambda must be in [0, 1e+06], got -0.5"),
    (["train", "--md", "resnet181"], "unknown timm model"),
    (["score", "/nonexistent/run"], "not found"),
    (["eval", "/nonexistent/scores.safetensors"], "not found"),
    (["report", "/nonexistent/run"], "not found"),
    (["train", "--no-such-flag"], "No such option"),
    (["train", "--md", "resnet18", "--pretrained", "--epochs", "1"], "pretrained weights"),  # offline in tests
])
def test_bad_input_is_one_line_and_exit_2(argv, pattern, cli, tmp_path):
    code, out, err = cli(argv + (["--srp", tmp_path] if argv[0] == "train" else []))
    one_line_error(code, err, pattern)


def test_unknown_score_metric_suggests_nearest(run, cli, monkeypatch):
    from imood_cli.registry import reset_registry

    monkeypatch.setenv("IMOOD_PLUGINS", "")  # built-ins only, whatever is installed
    old = reset_registry()
    try:
        code, out, err = cli(["score", run, "--ood_metric", "ada_enrgy"])
    finally:
        reset_registry(old)
    one_line_error(code, err, "unknown method 'ada_enrgy'; did you mean 'ada_energy'")


def test_nan_scores_and_empty_sets_are_refused(tmp_path, cli):
    ss = ScoreSet("m", torch.tensor([0.1, float("nan")]), None, None, {"x": torch.tensor([1.0])})
    ss.save(tmp_path / "nan.safetensors")
    one_line_error(*cli(["eval", tmp_path / "nan.safetensors"])[::2], "NaN")
    ss = ScoreSet("m", torch.tensor([0.1, 0.2]), None, None, {"x": torch.zeros(0)})
    ss.save(tmp_path / "empty.safetensors")
    one_line_error(*cli(["eval", tmp_path / "empty.safetensors"])[::2], "no scores")


def test_checkpoint_of_another_architecture(run, tmp_path, cli):
    from imood_cli.engine.runs.checkpoint import load_tensors, save_tensors

    tensors, meta = load_tensors(run / "model.safetensors")
    meta["architecture"]["backbone"] = "resnet18"
    (tmp_path / "other").mkdir()
    save_tensors(tmp_path / "other" / "model.safetensors", tensors, meta)
    code, out, err = cli(["score", tmp_path / "other"])
    one_line_error(code, err, "architecture")


def test_bin_disc_on_a_model_without_the_extra_output(tmp_path, cli, cli_code):
    assert cli_code(["train", "--ds", "digits", "--epochs", "1", "--ood_metric", "energy", "--srp", tmp_path,
                     "--name", "e", "--drp", tmp_path]) == 0
    code, out, err = cli(["score", tmp_path / "e", "--ood_metric", "ada_bin_disc"])
    one_line_error(code, err, "extra classifier output")


def test_help_and_version(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = cli(["--help"])
    assert code == 0 and "train" in out and "score" in out
    code, out, _ = cli(["train", "--help"])
    assert code == 0 and "--ood_metric" in out and "--Lambda" in out and "uniform prior" in out
    assert "[default: 0.5]" in out
    code, out, _ = cli(["--version"])
    assert code == 0 and out.startswith("imood ")
