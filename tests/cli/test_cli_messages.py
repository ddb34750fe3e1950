"""What a user sees: help at 80 columns, progress lines outside a terminal, Ctrl-C, and benchmarks with
pieces missing (train and score use what is there)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from fixtures_data import write_cifar

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80", "IMOOD_PLUGINS": ""}
COMMANDS = [[], ["train"], ["score"], ["eval"], ["report"], ["sweep"], ["import-ckpt"], ["plugins", "list"],
            ["data", "list"], ["data", "prepare"]]


def imood(*args, cwd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imood_cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "imood")
def test_help_at_80_columns_shows_aliases_and_no_python_types(cmd, cli):
    code, out, err = cli([*cmd, "--help"])
    assert code == 0, err
    assert not re.search(r"<(str|int|float|bool|path|list\[[^\]]*\])>", out), out
    assert "×gamma" not in out
    assert max(len(line) for line in out.splitlines()) <= 100  # click wraps the help text to the width
    if cmd == ["train"]:
        flat = " ".join(out.split())
        assert "--data-root, --drp, --data_root_path DIR" in flat and "[default: 0.001; imagenet: 0.1, digits:" in flat


def test_imood_alone_prints_the_help(cli):
    code, out, err = cli([])
    assert code == 0 and "Usage: imood" in out and "train" in out and "error" not in err


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("msgs")
    proc = imood("train", "--ds", "digits", "-e", "2", "-b", "32", "--name", "r", "--ood_metric", "oe",
                 "--aux_ood_loss", "none", "--device", "cpu", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root, proc


def test_progress_outside_a_terminal_is_one_plain_line_per_epoch(digits_run):
    _, proc = digits_run
    lines = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"], proc.stderr
    assert all(re.search(r"loss [\d.]+ \(in [\d.]+, ood [\d.]+, aux [\d.]+\), lr [\d.e-]+, [\d,]+ img/s, ETA \d+:\d\d",
                         line) for line in lines), lines


@pytest.mark.parametrize("argv", [["score", "runs/r", "-m", "all", "--device", "cpu"],
                                  ["data", "prepare", "digits", "--drp", "data"]], ids=["score", "data prepare"])
def test_ctrl_c_is_one_line_and_exit_130(digits_run, argv):
    root, _ = digits_run
    p = subprocess.Popen([sys.executable, "-m", "imood_cli", *argv], cwd=root, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(2.5 if argv[0] == "score" else 1.0)  # inside the command (after the imports)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the command finished before the signal came")  # a fast machine; nothing to check
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "imood: interrupted", err


def test_ctrl_c_at_any_moment_of_score_is_130(digits_run):
    """Ctrl-C during the imports of extension modules used to end some runs by SIGINT (returncode -2) or
    with `ImportError: initialization failed` and a traceback: 7 of 24 moments between 0.5 and 4 s."""
    root, _ = digits_run
    for delay in (0.6, 1.0, 1.3, 1.6, 2.0, 2.4, 3.0):
        p = subprocess.Popen([sys.executable, "-m", "imood_cli", "score", "runs/r", "-m", "all", "--device", "cpu",
                              "--out", f"out-{delay}"], cwd=root, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        if p.returncode == 0:
            continue  # finished before the signal came
        assert p.returncode == 130 and "Traceback" not in err, (delay, p.returncode, err)
        assert err.strip().splitlines()[-1] == "imood: interrupted", err


def test_an_error_caused_by_ctrl_c_is_reported_as_the_interruption(monkeypatch, cli):
    """An extension module interrupted in its initialisation raises ImportError, not KeyboardInterrupt."""
    import imood_cli.cli.data as data_cli

    def interrupted_import(*_):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None

    monkeypatch.setattr(data_cli, "_status_rows", interrupted_import)
    before = signal.getsignal(signal.SIGINT)
    code, out, err = cli(["data", "list"])
    assert (code, err.strip()) == (130, "imood: interrupted")
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back

    def plain_bug(*_):
        raise ImportError("initialization failed")

    monkeypatch.setattr(data_cli, "_status_rows", plain_bug)
    with pytest.raises(ImportError):  # without a Ctrl-C the same error is a bug: its traceback stays
        cli(["data", "list"])


def test_cifar_without_scood_or_300k_trains_and_scores_what_is_there(tmp_path):
    data = tmp_path / "data"
    write_cifar(data, "cifar10", per_class=100)
    prep = imood("data", "prepare", "cifar10", "--drp", data, "--no-verify", "--no-download", cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr
    assert "texture" in prep.stderr and "300K" in prep.stderr  # the missing pieces are named
    small = ["--md", "imood_resnet_micro", "-e", "1", "-b", "16", "--device", "cpu", "--drp", data]
    plain = imood("train", "--ds", "cifar10", "--name", "ce", "--Lambda", "0", "--aux_ood_loss", "none", *small,
                  cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    refused = imood("train", "--ds", "cifar10", "--name", "oe", "--ood_metric", "oe", "--aux_ood_loss", "none",
                    *small, cwd=tmp_path)
    assert refused.returncode == 2 and "--aux-ood-dir" in refused.stderr
    from PIL import Image

    folder = tmp_path / "my_ood"
    folder.mkdir()
    for i in range(24):
        Image.new("RGB", (32, 32), (i * 10, 255 - i * 10, 7 * i)).save(folder / f"{i}.png")
    aux = imood("train", "--ds", "cifar10", "--name", "oe", "--ood_metric", "oe", "--aux_ood_loss", "none",
                "--aux-ood-dir", folder, *small, cwd=tmp_path)
    assert aux.returncode == 0, aux.stderr
    scored = imood("score", "runs/ce", "-m", "msp", "--ood-dir", folder, "--device", "cpu", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert "texture is missing" in scored.stderr and "mean over 1 OOD set" in scored.stdout
    bare = imood("score", "runs/ce", "-m", "msp", "--device", "cpu", cwd=tmp_path)
    assert bare.returncode == 2 and "no OOD test set" in bare.stderr
