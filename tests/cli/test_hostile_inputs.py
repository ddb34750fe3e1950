"""The hostile inputs of the 0.2 review (reliability round three), replayed: each is generated here, handed to
the command that mishandled it, and must end in a result or in exactly one `imood: error:` line with exit code
2, without a hang, a traceback, or a file touched that imood did not write.

Numbers refer to the review's list: 1 data loss, 3 escape, 4 memory exhaustion, 5 FIFOs, 6 silent settings,
8 tracebacks, 9 malformed data accepted, 10 messages, 11 orphans and caps. (2, the unresumable kill, is
tests/runs/test_kill_resume.py and tests/runs/test_resume_points.py; 7, plugin names, tests/core/test_registry.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from imood_cli.engine.runs.checkpoint import load_tensors, save_tensors

PRECIOUS = "weeks of work"


@pytest.fixture(autouse=True)
def no_hang():
    """A read that blocks (a FIFO opened for reading waits for a writer) fails the test instead of the suite."""
    def timeout(signum, frame):
        raise TimeoutError("hung for 60 s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cli_code):
    """A finished 1-epoch digits run with msp scores."""
    root = tmp_path_factory.mktemp("hostile")
    assert cli_code(["train", "--ds", "digits", "-e", 1, "--srp", root, "--name", "r", "--device", "cpu",
                     "--ood-metric", "oe", "--aux-ood-loss", "none", "-b", "64"]) == 0
    assert cli_code(["score", root / "r", "-m", "msp", "--device", "cpu"]) == 0
    return root / "r"


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "runs" / "r"
    shutil.copytree(trained, copy)
    return copy


def one_error(code, err, *parts):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("imood: error:"), err
    for p in parts:
        assert p in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- 1. data loss


def test_1_import_ckpt_force_never_replaces_a_file_in_a_folder_imood_did_not_make(tmp_path, cli):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "model.safetensors").write_text(PRECIOUS)
    pth = tmp_path / "w.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, pth)
    code, _, err = cli(["import-ckpt", pth, "--ds", "cifar10", "--class-counts", "5,3", "--out", theirs, "--force"])
    one_error(code, err, "not an imood run folder", "--force only replaces imood's own files")
    assert (theirs / "model.safetensors").read_text() == PRECIOUS


# ---------------------------------------------------------------- 3. escape


def test_3_a_plan_name_cannot_leave_the_working_folder(tmp_path, monkeypatch, cli):
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    plan = work / "p.toml"
    plan.write_text('[sweep]\nname = "../../../x"\nbenchmarks = ["digits"]\nseeds = [0]\n'
                    '[[run]]\nname = "m"\nscore = ["msp"]\n')
    code, out, err = cli(["sweep", plan, "--print"])
    assert code == 0, err
    assert "runs/x/digits/m-seed0" in out
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- 4. memory exhaustion


def test_4_dev_zero_as_config_or_model_is_refused_not_read(run, tmp_path, cli):
    config = tmp_path / "c.toml"
    config.symlink_to("/dev/zero")
    code, _, err = cli(["train", "--config", config, "--srp", tmp_path, "--name", "z"])
    one_error(code, err, "is a character device, not a regular file")
    (run / "model.safetensors").unlink()
    (run / "model.safetensors").symlink_to("/dev/zero")
    code, _, err = cli(["score", run, "-m", "msp", "--device", "cpu"])
    one_error(code, err, "is a character device, not a regular file")


def test_4_a_batch_larger_than_the_machine_is_refused_before_it_is_allocated(tmp_path, cli):
    code, _, err = cli(["train", "--ds", "digits", "-e", 1, "--srp", tmp_path, "--name", "big", "--device", "cpu",
                        "-b", 10_000_000])
    one_error(code, err, "needs at least", "for its inputs and activations", "lower --batch-size")
    assert not (tmp_path / "big").exists()


# ---------------------------------------------------------------- 5. FIFOs


def fifo(path: Path) -> Path:
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    return path


def test_5_a_fifo_is_refused_wherever_imood_reads_a_file(run, tmp_path, cli):
    for argv in (  # --config, import-ckpt, train --ckpt-path
        ["train", "--config", fifo(tmp_path / "c.toml"), "--srp", tmp_path, "--name", "f"],
        ["import-ckpt", fifo(tmp_path / "f.pth"), "--ds", "digits", "--class-counts", "3,2", "--out", tmp_path / "i"],
        ["train", "--ds", "digits", "-e", 1, "--srp", tmp_path, "--name", "g", "--device", "cpu", "--ckpt-path",
         fifo(tmp_path / "m.safetensors")],
    ):
        code, _, err = cli(argv)
        one_error(code, err, "FIFO")
    # the run's own files
    scores = run / "scores" / "msp.safetensors"
    for argv in (["eval", run], ["report", run, "--no-html"]):
        saved = scores.read_bytes()
        fifo(scores)
        code, _, err = cli(argv)
        one_error(code, err, "FIFO", "msp.safetensors")
        scores.unlink()
        scores.write_bytes(saved)
    model = run / "model.safetensors"
    saved = model.read_bytes()
    fifo(model)
    code, _, err = cli(["score", run, "-m", "msp", "--device", "cpu"])
    one_error(code, err, "FIFO", "model.safetensors")
    model.unlink()
    model.write_bytes(saved)
    config = run / "config.json"
    saved = config.read_bytes()
    fifo(config)
    code, _, err = cli(["train", "--resume", run, "--device", "cpu"])
    one_error(code, err, "config.json is a FIFO")  # not "not an imood run folder"
    config.unlink()
    config.write_bytes(saved)
    model.unlink()
    fifo(run / "checkpoint" / "latest.json")
    code, _, err = cli(["train", "--resume", run, "--device", "cpu"])
    one_error(code, err, "latest.json is a FIFO")


# ---------------------------------------------------------------- 6. silent wrong settings


@pytest.mark.parametrize("text,why", [
    ("lr = 0.5\n[train]\nepochs = 1\n", "has a [train] table and also 'lr' outside it"),
    ("[train]\nepochs = 1\n[score]\nbatch_size = 4\n", "has a [train] table and also 'score' outside it"),
    ("epochs = 1\n[score]\nbatch_size = 4\n", "[score] is not a table imood reads"),
])
def test_6_every_key_of_a_config_file_is_read_or_refused(tmp_path, cli, text, why):
    config = tmp_path / "c.toml"
    config.write_text(text)
    code, _, err = cli(["train", "--config", config, "--srp", tmp_path, "--name", "s"])
    one_error(code, err, why)
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- 8. tracebacks


def test_8_deep_nesting_is_refused_before_parsing(tmp_path, cli):
    deep = "[" * 5000 + "]" * 5000
    (tmp_path / "c.toml").write_text(f"milestones = {deep}\n")
    (tmp_path / "c.json").write_text(f'{{"milestones": {deep}}}')
    (tmp_path / "p.toml").write_text(f'[sweep]\nbenchmarks = ["digits"]\nseeds = [0]\nx = {deep}\n')
    for argv in (["train", "--config", tmp_path / "c.toml"], ["train", "--config", tmp_path / "c.json"],
                 ["sweep", tmp_path / "p.toml", "--print"]):
        code, _, err = cli(argv)
        one_error(code, err, "nests arrays or tables", "deep; imood reads at most 64 levels")


def test_8_an_overflowing_jitter_is_refused_and_leaves_no_run_folder(tmp_path, cli):
    code, _, err = cli(["train", "--ds", "digits", "-e", 1, "--srp", tmp_path, "--name", "j", "--device", "cpu",
                        "--color-jitter", "1e308,0,0,0"])
    one_error(code, err, "--color-jitter", "each in [0, 100]")
    assert not (tmp_path / "j").exists()


def test_8_score_all_on_a_model_with_a_nan_weight_is_one_error(run, cli):
    tensors, meta = load_tensors(run / "model.safetensors")
    tensors["classifier.weight"][0, 0] = float("nan")
    save_tensors(run / "model.safetensors", tensors, meta)
    code, _, err = cli(["score", run, "-m", "all", "--device", "cpu"])
    one_error(code, err, "classifier.weight holds NaN or infinite values")


# ---------------------------------------------------------------- 9. malformed data accepted


def score_file(path: Path, meta: dict | None = None, **arrays) -> Path:
    base = {"id.score": np.linspace(0, 1, 6), "id.label": np.array([0, 1, 0, 1, 0, 1]),
            "id.pred": np.array([0, 1, 1, 1, 0, 0]), "ood.far.score": np.linspace(0.5, 2, 5)}
    base.update(arrays)
    doc = {"class_counts": [10, 3], "metric": "msp", "score_direction": "higher_is_ood", **(meta or {})}
    save_file({k: np.ascontiguousarray(v) for k, v in base.items()}, str(path), metadata={"imood": json.dumps(doc)})
    return path


@pytest.mark.parametrize("arrays,meta,why", [
    ({"id.pred": np.array([0, 1, -7, 1, 0, 0])}, None, "id.pred holds the class index -7, outside [0, 2)"),
    ({"id.pred": np.array([0, 1, 10**12, 1, 0, 0])}, None, "id.pred holds the class index 1000000000000"),
    ({"id.label": np.array([0, 1, 2, 1, 0, 1])}, None, "id.label holds the class index 2, outside [0, 2)"),
    ({"ood..score": np.ones(3)}, None, "OOD set name '' is empty"),
    ({"ood.a\x1b[2Jb.score": np.ones(3)}, None, "holds a control character"),
    ({}, {"metric": 5}, "metadata 'metric' must be str"),
    ({}, {"dataset": ["x"]}, "metadata 'dataset' must be str"),
    ({}, {"ada_scale": "big"}, "metadata 'ada_scale' must be int or float"),
    ({}, {"class_counts": [1e308, 3]}, "class counts must be a list of 1 to 1,000,000 whole numbers in [0, "),
    ({}, {"class_names": "cat,dog"}, "metadata 'class_names' must be list"),
    ({}, {"class_names": ["cat"]}, "'class_names' must be a list of printable names, one per class (2)"),
    ({}, {"class_names": ["cat", "d\x1b[2Jog"]}, "'class_names' must be a list of printable names"),
])
def test_9_malformed_score_files_are_refused(tmp_path, cli, arrays, meta, why):
    path = score_file(tmp_path / "s.safetensors", meta, **arrays)
    code, _, err = cli(["eval", path])
    one_error(code, err, why)


@pytest.mark.parametrize("change,why", [
    (lambda m: m.update(config="lr=3"), "config must be a JSON object of training options, got str"),
    (lambda m: m.update(class_counts=[1e308] * len(m["class_counts"])), "class counts must be a list"),
])
def test_9_malformed_model_metadata_is_refused(run, cli, change, why):
    tensors, meta = load_tensors(run / "model.safetensors")
    change(meta)
    save_tensors(run / "model.safetensors", tensors, meta)
    code, _, err = cli(["score", run, "-m", "msp", "--device", "cpu"])
    one_error(code, err, "malformed metadata", why)


# ---------------------------------------------------------------- 10. messages


@pytest.mark.parametrize("name", ["bad\x1b[31mname", "two\nlines"])
def test_10_control_characters_in_names_are_refused(tmp_path, cli, name):
    code, _, err = cli(["train", "--ds", "digits", "--srp", tmp_path, "--name", name])
    line = one_error(code, err, "--name must be a plain folder name", "control character")
    assert "\x1b" not in err and line.endswith(f"got {name!r}".replace("\x1b", "\\x1b"))


def test_10_names_that_reach_the_terminal_are_escaped(tmp_path, cli):
    path = score_file(tmp_path / "s.safetensors", {"dataset": "ok"})
    odd = tmp_path / "odd\x1b]0;title\x07"
    odd.mkdir()
    code, _, err = cli(["eval", odd / "missing.safetensors"])
    line = one_error(code, err)
    assert "\x1b" not in err and "\x07" not in err and "\\x1b]0;title\\x07" in line
    assert cli(["eval", path])[0] == 0


def test_10_a_sweep_run_name_in_any_script_is_kept(tmp_path, cli):
    plan = tmp_path / "p.toml"
    plan.write_text('[sweep]\nname = "Ablation α"\nbenchmarks = ["digits"]\nseeds = [0]\n'
                    '[[run]]\nname = "τ-Ω"\nscore = ["msp"]\n')
    code, out, err = cli(["sweep", plan, "--print"])
    assert code == 0, err
    assert "runs/ablation-α/digits/τ-ω-seed0" in out


def test_10_import_ckpt_names_what_it_was_given(tmp_path, cli):
    args = ["--ds", "cifar10", "--class-counts", "5,3", "--out"]
    code, _, err = cli(["import-ckpt", "/dev/null", *args, tmp_path / "a"])
    one_error(code, err, "/dev/null is a character device, not a regular file")

    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    ts = tmp_path / "ts.pth"
    torch.jit.save(scripted, str(ts))
    code, _, err = cli(["import-ckpt", ts, *args, tmp_path / "b"])
    one_error(code, err, "is a TorchScript archive (torch.jit.save)", "state_dict")

    ints = tmp_path / "ints.pth"
    torch.save({0: torch.zeros(2)}, ints)
    code, _, err = cli(["import-ckpt", ints, *args, tmp_path / "c"])
    one_error(code, err, "maps int keys such as 0 to tensors")


def test_10_a_negative_epoch_count_says_what_is_wrong(tmp_path, cli):
    code, _, err = cli(["train", "--ds", "digits", "--srp", tmp_path, "--name", "n", "--epochs", "-5"])
    one_error(code, err, "--epochs must be in [1, 1,000,000], got -5")


# ---------------------------------------------------------------- 11. orphans and caps


def test_11_a_command_started_by_a_sweep_dies_with_it(tmp_path):
    """The sweep's child asks for SIGINT when its parent dies: kill -9 the parent, the child stops."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    child = ("import os, signal, time\n"
             "from imood_cli.core.process import die_with_parent\n"
             "die_with_parent()\n"
             "signal.signal(signal.SIGINT, lambda *a: (open(os.environ['MARK'], 'w').write('sigint'), os._exit(130)))\n"
             "open(os.environ['READY'], 'w').close()\n"
             "time.sleep(120)\n")
    parent = ("import os, subprocess, sys, time\n"
              "from imood_cli.core.process import PARENT_ENV\n"
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}], start_new_session=True,"
              " env={**os.environ, PARENT_ENV: str(os.getpid())})\n"
              "print(p.pid, flush=True)\n"
              "time.sleep(120)\n")
    env = {**os.environ, "MARK": str(tmp_path / "mark"), "READY": str(tmp_path / "ready")}
    p = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, env=env)
    child_pid = int(p.stdout.readline())
    for _ in range(600):  # the child has asked for its signal once it wrote READY
        if (tmp_path / "ready").exists():
            break
        time.sleep(0.05)
    p.kill()
    p.wait()
    for _ in range(600):
        if (tmp_path / "mark").exists():
            break
        time.sleep(0.05)
    assert (tmp_path / "mark").read_text() == "sigint"
    for _ in range(200):
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child_pid, signal.SIGKILL)
        raise AssertionError("the child outlived its sweep")


def test_11_a_grid_of_millions_is_refused_before_it_is_listed(tmp_path, cli):
    plan = tmp_path / "p.toml"
    seeds = ", ".join(map(str, range(2000)))
    runs = "".join(f'[[run]]\nname = "m{i}"\nscore = ["msp"]\n' for i in range(50))
    plan.write_text(f'[sweep]\nbenchmarks = ["digits"]\nseeds = [{seeds}]\n{runs}')
    code, _, err = cli(["sweep", plan, "--print"])
    one_error(code, err, "up to 100,000 run folders", "raise --max-units")
    code, out, _ = cli(["sweep", plan, "--print", "--max-units", "200000", "--seeds", "0", "--runs", "m1"])
    assert code == 0 and out.count("imood train") == 1
