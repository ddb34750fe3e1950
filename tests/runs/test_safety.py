"""Nothing lost, nothing escapes: run files are input like any other; imood touches only what it wrote.

Every data-loss test keeps a sentinel file outside the run folder and asserts it is untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch

from imood_cli.engine.runs.checkpoint import load_tensors, save_tensors
from imood_cli.engine.runs.lock import RunLock

EPOCHS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cli_code):
    """A finished 2-epoch digits run (with its checkpoints) and its scores."""
    root = tmp_path_factory.mktemp("safety")
    code = cli_code(["train", "--ds", "digits", "-e", EPOCHS, "--srp", root, "--name", "r", "--device", "cpu",
                     "--ood_metric", "oe", "--aux_ood_loss", "none", "-b", "32"])
    assert code == 0
    assert cli_code(["score", root / "r", "-m", "msp,maha", "--device", "cpu"]) == 0
    return root / "r"


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the trained run, next to a sentinel file that must never change."""
    copy = tmp_path / "runs" / "r"
    shutil.copytree(trained, copy)
    (tmp_path / "precious.txt").write_text("weeks of work")
    return copy


def sentinel(run):
    """The file next to the runs folder that imood must never touch."""
    return run.parent.parent / "precious.txt"


def sentinel_intact(run) -> bool:
    return sentinel(run).read_text() == "weeks of work"


def one_error(code, err, *parts):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("imood: error:"), err
    assert "Traceback" not in err
    for p in parts:
        assert p in lines[0], lines[0]
    return lines[0]


def index(run):
    return run / "checkpoint" / "latest.json"


def write_index(run, entries):
    index(run).write_text(json.dumps({"checkpoints": entries}))


# ---------------------------------------------------------------- latest.json is not trusted


def resumed_anew(code, err, run, reason):
    """A resume that set a damaged index aside: it said why, continued from the newest checkpoint file, and
    wrote the index anew."""
    assert code == 0, err
    assert f"note: latest.json is unreadable ({reason}" in err, err
    assert "resuming from" in err and "epoch_0002.safetensors" in err, err
    listed = [e["file"] for e in json.loads(index(run).read_text())["checkpoints"]]
    assert listed == ["epoch_0001.safetensors", "epoch_0002.safetensors"]


@pytest.mark.parametrize("name", ["../../precious.txt", "ABSOLUTE", "epoch_0001.safetensors/../../../x",
                                  "model.safetensors"])
def test_latest_json_cannot_point_outside_or_at_other_files(run, cli, name):
    entries = json.loads(index(run).read_text())["checkpoints"]
    entries[0]["file"] = str(sentinel(run)) if name == "ABSOLUTE" else name
    write_index(run, entries)
    (run / "model.safetensors").unlink()  # an unfinished run, so --resume continues it
    code, _, err = cli(["train", "--resume", run, "--device", "cpu"])
    resumed_anew(code, err, run, "entry ")
    assert "not one of imood's checkpoints" in err
    assert sentinel_intact(run)
    assert all(p.exists() for p in (run / "checkpoint").glob("epoch_*.safetensors"))


@pytest.mark.parametrize("content", [
    {"checkpoints": [1, 2]}, {"checkpoints": {}}, {}, [], {"checkpoints": [{"file": "epoch_0001.safetensors"}]},
    {"checkpoints": [{"epoch": 1, "step": 0, "size": 10, "sha256": "0" * 64}]},
    {"checkpoints": [{"epoch": "1", "step": 0, "size": 10, "sha256": "0" * 64, "file": "epoch_0001.safetensors"}]},
])
def test_a_malformed_index_is_set_aside_and_written_anew(run, cli, content):
    index(run).write_text(json.dumps(content))
    (run / "model.safetensors").unlink()
    code, _, err = cli(["train", "--resume", run, "--device", "cpu"])
    resumed_anew(code, err, run, "")
    assert (run / "model.safetensors").is_file()


def test_resume_without_index_never_retrains_over_a_model(run, cli):
    """A complete run whose index is lost: the resume finds the newest checkpoint file at the last epoch and
    the model intact, and touches neither."""
    model_before = (run / "model.safetensors").read_bytes()
    metrics_before = (run / "metrics.jsonl").read_bytes()
    for content in (None, '{"checkpoints": []}'):  # lost, or emptied
        index(run).unlink()
        if content is not None:
            index(run).write_text(content)
        code, _, err = cli(["train", "--resume", run, "--device", "cpu"])
        assert code == 0 and "is complete (2 epochs)" in err and "nothing to do" in err, err
        assert (run / "model.safetensors").read_bytes() == model_before
        assert (run / "metrics.jsonl").read_bytes() == metrics_before


@pytest.mark.parametrize("case", ["missing tensor", "bad epoch"])
def test_a_checkpoint_whose_state_does_not_load_is_passed_over(run, cli, case):
    """The newest checkpoint verifies but its state is inconsistent: the resume names it and continues from the
    older one; with no usable checkpoint left, one error names each."""
    import hashlib

    (run / "model.safetensors").unlink()
    entries = json.loads(index(run).read_text())["checkpoints"]
    path = run / "checkpoint" / entries[-1]["file"]
    t, m = load_tensors(path)
    if case == "missing tensor":
        t.pop(sorted(t)[0])
    else:
        for pair in m["skeleton"]["__dict__"]:
            if pair[0] == "epoch":
                pair[1] = 1.5
    data = save_tensors(path, t, m, digest=False)
    entries[-1] = {k: v for k, v in entries[-1].items() if k != "tensors_sha256"}
    entries[-1].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())  # the index vouches for it
    write_index(run, entries)
    older = run / "checkpoint" / entries[0]["file"]
    kept = older.read_bytes()
    older.write_bytes(kept[:-10])  # the older one truncated too: nothing to continue from
    code, _, err = cli(["train", "--resume", run, "--device", "cpu"])
    line = one_error(code, err, "no usable checkpoint", "inconsistent", entries[0]["file"] + " (")
    assert "epoch_0002.safetensors (" in line
    older.write_bytes(kept)
    code, _, err = cli(["train", "--resume", run, "--device", "cpu"])
    assert code == 0, err
    assert "warning: skipped checkpoint epoch_0002.safetensors (" in err and "inconsistent" in err
    assert "resuming from" in err and "(epoch 1, step 0)" in err


@pytest.mark.parametrize("config", ["[]", '{"batch_size": -5}', '{"lr": -1}', '{"epochs": "ten"}', "not json"])
def test_resumed_config_is_validated(run, cli, config):
    data = json.loads((run / "config.json").read_text())
    if config.startswith("{"):
        data.update(json.loads(config))
        text = json.dumps(data)
    else:
        text = config
    (run / "config.json").write_text(text)
    (run / "model.safetensors").unlink()
    code, _, err = cli(["train", "--resume", run, "--device", "cpu"])
    one_error(code, err, "config.json")


def test_resume_takes_the_runs_settings_and_refuses_changes(run, cli):
    (run / "model.safetensors").unlink()
    code, _, err = cli(["train", "--resume", run, "--lr", "0.5"])
    one_error(code, err, "--lr cannot change on --resume", "0.003")
    code, _, err = cli(["train", "--resume", run, "--amp", "bf16"])
    one_error(code, err, "--amp cannot change")
    code, _, err = cli(["train", "--resume", run, "--config", run / "config.json"])
    one_error(code, err, "--resume continues a run with its own settings")
    code, out, err = cli(["train", "--resume", run, "--epochs", str(EPOCHS + 1), "--device", "cpu"])
    assert code == 0, err
    assert "extends the run" in err and "recomputed" in err
    assert json.loads((run / "config.json").read_text())["epochs"] == EPOCHS + 1


# ---------------------------------------------------------------- --force removes imood's own files only


def test_force_refuses_a_folder_that_is_not_a_run(tmp_path, cli):
    folder = tmp_path / "runs" / "thesis"
    (folder / "checkpoint").mkdir(parents=True)
    keep = [folder / "chapter1.tex", folder / "checkpoint" / "epoch_0001.safetensors"]
    for f in keep:
        f.write_text("mine")
    code, _, err = cli(["train", "--ds", "digits", "-e", "1", "--srp", tmp_path / "runs", "--name", "thesis",
                        "--force", "--device", "cpu"])
    one_error(code, err, "not an imood run folder")
    assert all(f.read_text() == "mine" for f in keep)


def test_force_removes_derived_files_but_not_the_users(run, cli):
    mine = [run / "notes.md", run / "checkpoint" / "my_ckpt.pt", run / "scores" / "my_scores.safetensors",
            run / "eval" / "summary.json"]
    for f in mine:
        f.parent.mkdir(exist_ok=True)
        f.write_text("mine")
    assert (run / "scores" / "msp.safetensors").exists()
    (run / "report.html").write_text("<!doctype html><title>imood report: r</title>")
    code, _, err = cli(["train", "--ds", "digits", "-e", "1", "--srp", run.parent, "--name", "r", "--force",
                        "--device", "cpu", "--ood_metric", "oe", "--aux_ood_loss", "none", "-b", "32"])
    assert code == 0, err
    assert all(f.read_text() == "mine" for f in mine)
    assert not (run / "scores" / "msp.safetensors").exists() and not (run / "report.html").exists()
    assert not (run / "fits").exists()  # the old model's maha fit is gone too
    assert sentinel_intact(run)


# ---------------------------------------------------------------- one writer per run


def test_second_writer_is_refused(run, cli):
    (run / "model.safetensors").unlink()
    with RunLock(run):
        code, _, err = cli(["train", "--resume", run, "--device", "cpu"])
        one_error(code, err, "being trained by another imood process", str(os.getpid()))
        code, _, err = cli(["train", "--ds", "digits", "--srp", run.parent, "--name", "r", "--force",
                            "--device", "cpu"])
        one_error(code, err, "being trained by another imood process")
    assert (run / "checkpoint" / "latest.json").exists()


# ---------------------------------------------------------------- files and modes


def test_files_follow_the_umask(tmp_path):
    from imood_cli.fs.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # no temporary left


# ---------------------------------------------------------------- score: validate, then write


def test_nan_weights_never_overwrite_good_scores(run, cli):
    before = (run / "scores" / "msp.safetensors").read_bytes()
    tensors, meta = load_tensors(run / "model.safetensors")
    tensors["classifier.weight"] = torch.full_like(tensors["classifier.weight"], float("nan"))
    save_tensors(run / "model.safetensors", tensors, meta)
    code, _, err = cli(["score", run, "-m", "msp", "--device", "cpu"])
    one_error(code, err, "classifier.weight holds NaN or infinite values")
    assert (run / "scores" / "msp.safetensors").read_bytes() == before


class NaNDetector:
    """Defined in a plugin module written by the test (see nan_plugin)."""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """In-process detector plugins that break the contract in different ways."""
    monkeypatch.delenv("IMOOD_PLUGINS", raising=False)  # the suite's default loads no third-party plugin
    from imood_cli.plugin_api import Detector
    from imood_cli.registry import Registry, entry_points, reset_registry

    class NaNScores(Detector):
        def idness(self, view):
            return view.logits[:, 0] * float("nan")

    class ShortScores(Detector):
        def idness(self, view):
            return view.logits[1:, 0]

    class ListScores(Detector):
        def idness(self, view):
            return view.logits[:, 0].tolist()

    class VectorLoss(Detector):
        def idness(self, view):
            return view.logits[:, 0]

        def loss(self, view, ctx):
            return view.logits[:, 0]

    reg = Registry([e for e in entry_points() if e[2].startswith("imood_cli.")])
    for name, cls in (("nanny", NaNScores), ("shorty", ShortScores), ("listy", ListScores), ("vecloss", VectorLoss)):
        reg.add("method", name, cls, distribution="acme-broken")
    old = reset_registry(reg)
    yield
    reset_registry(old)


@pytest.mark.parametrize("name,parts", [
    ("nanny", ("detector nanny gave", "NaN or infinite", "detector (or its fit) is at fault")),
    ("shorty", ("detector shorty (ShortScores) returned shape",)),
    ("listy", ("detector listy (ListScores) failed: TypeError",)),
])
def test_broken_detector_plugins_are_named(run, cli, plugin, name, parts):
    before = (run / "scores" / "msp.safetensors").read_bytes()
    code, _, err = cli(["score", run, "-m", name, "--device", "cpu"])  # alone: the error, nothing written
    one_error(code, err, *parts)
    assert (run / "scores" / "msp.safetensors").read_bytes() == before
    assert not (run / "scores" / f"{name}.safetensors").exists()
    code, _, err = cli(["score", run, "-m", f"msp,{name}", "--device", "cpu"])  # with others: they are written
    one_error(code, err, "1 of 2 detectors failed", name, "the others are written")
    assert (run / "scores" / "msp.safetensors").exists() and not (run / "scores" / f"{name}.safetensors").exists()


def test_a_loss_that_is_not_a_scalar_is_named(tmp_path, cli, plugin):
    code, _, err = cli(["train", "--ds", "digits", "-e", "1", "--srp", tmp_path, "--name", "v",
                        "--ood_metric", "vecloss", "--device", "cpu"])
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("imood: error:")]
    assert len(errors) == 1 and "the training loss of vecloss returned (192,), not a scalar" in errors[0]


def test_fit_cache_that_cannot_be_written_falls_back(run, tmp_path, cli):
    """A run folder where the fit cache cannot go (read-only storage; here: `fits` is a file, which fails
    for root too) still scores, with --out elsewhere, and says the fit was not cached."""
    shutil.rmtree(run / "fits")
    (run / "fits").write_text("not a folder")
    code, _, err = cli(["score", run, "-m", "maha", "--device", "cpu", "--out", tmp_path / "elsewhere"])
    assert code == 0, err
    assert (tmp_path / "elsewhere" / "maha.safetensors").exists()
    assert "not cached" in err
    assert (run / "fits").read_text() == "not a folder"


def test_ood_dir_names_never_replace_a_set(run, tmp_path, cli):
    from PIL import Image

    for folder in (tmp_path / "x" / "noise", tmp_path / "a" / "mine", tmp_path / "b" / "mine"):
        folder.mkdir(parents=True)
        Image.new("L", (8, 8), 128).save(folder / "img.png")
    code, _, err = cli(["score", run, "-m", "msp", "--device", "cpu", "--ood-dir", tmp_path / "x" / "noise"])
    one_error(code, err, "already has an OOD set named 'noise'")
    code, _, err = cli(["score", run, "-m", "msp", "--device", "cpu", "--ood-dir", tmp_path / "a" / "mine",
                        "--ood-dir", tmp_path / "b" / "mine"])
    one_error(code, err, "would both be named 'mine'")


# ---------------------------------------------------------------- model metadata


@pytest.mark.parametrize("edit,part", [
    (lambda m: m["architecture"].update(extra_outputs=10**12), "extra_outputs"),
    (lambda m: m["config"].update(data_root=["a", "b"]), "config.data_root"),
    (lambda m: m["config"].update(imbalance_ratio="abc"), "config.imbalance_ratio"),
    (lambda m: m.update(class_counts=[1, 2]), "class counts"),
])
def test_malformed_model_metadata_is_one_line(run, cli, edit, part):
    tensors, meta = load_tensors(run / "model.safetensors")
    edit(meta)
    save_tensors(run / "model.safetensors", tensors, meta)
    code, _, err = cli(["score", run, "-m", "msp", "--device", "cpu"])
    one_error(code, err, "malformed metadata", part)


# ---------------------------------------------------------------- --config is input too


@pytest.mark.parametrize("toml,part", [
    ('epochs = "ten"', "epochs in"), ("batch_size = 2.5", "batch_size in"), ("lr = 1979-05-27", "lr in"),
    ('milestones = "abc"', "milestones in"), ('name = "a\\u0000b"', "name in"),
    ("crop_padding = -3", "crop_padding in"),
    ("crop_padding = 1000000", "crop_padding in"), ("epochs = 2.5", "epochs in"), ("lr = true", "lr in"),
    ("color_jitter = [0.4, 0.4, 0.4, 5.0]", "color_jitter in"), ('flip = "no"', "flip in"),
    ("[[train]]\nepochs = 1", "must hold a table"), ("bogus = 1", "unknown key"),
])
def test_config_file_values_are_type_checked(tmp_path, cli, toml, part):
    f = tmp_path / "run.toml"
    f.write_text(toml + "\n")
    code, _, err = cli(["train", "--config", f, "--srp", tmp_path, "--device", "cpu"])
    line = one_error(code, err, part)
    assert str(f) in line or "unknown key" in line


def test_config_file_that_is_not_utf8_or_not_a_table(tmp_path, cli):
    f = tmp_path / "run.toml"
    f.write_bytes(b"epochs = 3\n\xff\xfe")
    code, _, err = cli(["train", "--config", f, "--srp", tmp_path])
    one_error(code, err, "not UTF-8")
    g = tmp_path / "run.json"
    g.write_text("[1, 2]")
    code, _, err = cli(["train", "--config", g, "--srp", tmp_path])
    one_error(code, err, "must hold a table")


def test_ood_batch_size_zero_with_an_ood_loss(tmp_path, cli):
    code, _, err = cli(["train", "--ds", "digits", "--srp", tmp_path, "--ood-batch-size", "0",
                        "--ood_metric", "oe", "--device", "cpu"])
    one_error(code, err, "--ood-batch-size 0")


def test_device_in_a_config_file_is_used(tmp_path, cli):
    f = tmp_path / "run.toml"
    f.write_text('device = "cuda:7"\n')
    code, _, err = cli(["train", "--config", f, "--srp", tmp_path, "-e", "1"])
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    one_error(code, err, "cuda")


def test_an_untrainable_ada_detector_is_refused_before_the_run_folder_exists(tmp_path, cli):
    code, _, err = cli(["train", "--ds", "digits", "--srp", tmp_path, "--name", "x", "--ood_metric", "ada_react",
                        "--device", "cpu"])
    one_error(code, err, "ada_react cannot be trained", "react needs statistics fitted on a trained model")
    assert not (tmp_path / "x").exists()
