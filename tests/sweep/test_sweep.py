"""`imood sweep`: plan validation, the command lines it prints and runs, its scheduler (GPU slots, order,
failures, Ctrl-C), and the shipped digits plan end to end: interrupted, resumed, run again (nothing is
retrained), with the report's mean ± std checked against numbers computed here from the score files.
"""

import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from safetensors.numpy import load_file
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from imood_cli import plans
from imood_cli.engine import sweep as engine
from imood_cli.engine.training.config import resolve_config
from imood_cli.errors import ImoodError

IMOOD = [sys.executable, "-m", "imood_cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "COLUMNS": "200"}  # wide enough that no table cell wraps

GOOD = """
[sweep]
benchmarks = ["digits"]
seeds = [0, 1]

[defaults]
epochs = 2

[[run]]
name = "A"
train = { ood_metric = "oe" }
score = ["msp"]
"""


def write(tmp_path: Path, text: str, name: str = "plan.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- validation


BAD_PLANS = [
    ("unknown sweep key", GOOD.replace("seeds =", "seed ="),
     r"unknown key in \[sweep\] of {plan}: 'seed'; did you mean 'seeds'"),
    ("seeds as text", GOOD.replace("seeds = [0, 1]", 'seeds = "0,1"'),
     r"seeds in \[sweep\] of {plan} must be a non-empty list of whole numbers >= 0"),
    ("a seed twice", GOOD.replace("seeds = [0, 1]", "seeds = [0, 0]"),
     r"seeds in \[sweep\] of {plan} lists a seed twice"),
    ("unknown train option", GOOD.replace('ood_metric = "oe"', "epoch = 3"),
     r"unknown key in train of run 'A' in {plan}: 'epoch'; did you mean 'epochs'"),
    ("train option of the wrong type", GOOD.replace('ood_metric = "oe"', 'epochs = "many"'),
     r"epochs in train of run 'A' in {plan} must be a whole number, got 'many'"),
    ("train option out of range", GOOD.replace("epochs = 2", "lr = -1.0"),
     r"lr in \[defaults\] of {plan} must be in \(0, 100\], got -1"),
    ("a key the plan owns", GOOD.replace("epochs = 2", "seed = 1"),
     r"seed in \[defaults\] of {plan} is set by the plan: seeds come from \[sweep\] seeds"),
    ("no score", GOOD.replace('score = ["msp"]', ""),
     r"score in run 'A' in {plan} must be a non-empty list of detectors"),
    ("a detector twice", GOOD.replace('score = ["msp"]', 'score = ["msp", "msp"]'),
     r"score in run 'A' in {plan} names a detector twice"),
    ("unknown method", GOOD.replace('score = ["msp"]', 'score = ["mps"]'),
     r"score of run 'A' in {plan}: unknown method 'mps'; did you mean 'msp'"),
    ("unknown method option", GOOD.replace('score = ["msp"]', 'score = ["msp:foo=1"]'),
     r"score of run 'A' in {plan}: msp: no option 'foo'"),
    ("unknown training loss", GOOD.replace('ood_metric = "oe"', 'ood_metric = "oee"'),
     r"ood_metric of run 'A' in {plan}: unknown method 'oee'; did you mean 'oe'"),
    ("unknown benchmark", GOOD.replace('["digits"]', '["cifar11"]'),
     r"benchmarks of {plan}: unknown dataset 'cifar11'; did you mean 'cifar10'"),
    ("model_from a missing run", GOOD + '[[run]]\nname = "B"\nmodel_from = "Nope"\nscore = ["ada_msp"]\n',
     r"model_from in run 'B' in {plan} names 'Nope': no run has that name"),
    ("model_from with training", GOOD + '[[run]]\nname = "B"\nmodel_from = "A"\ntrain = {}\nscore = ["ada_msp"]\n',
     r"run 'B' in {plan}: a run with model_from scores another run's model; it takes no train or init_from"),
    ("init_from a later run", GOOD.replace('name = "A"', 'name = "A"\ninit_from = "B"') +
     '[[run]]\nname = "B"\nscore = ["msp"]\n', r"init_from in run 'A' in {plan} names 'B': list it before this run"),
    ("two runs, one folder", GOOD + '[[run]]\nname = "a"\nscore = ["msp"]\n',
     r"runs 'A' and 'a' in {plan} would share the folder name 'a': rename one"),
    ("no runs", GOOD.split("[[run]]")[0], r"plan {plan} has no \[\[run\]\] tables"),
    ("not TOML", GOOD.replace("[defaults]", "[defaults"), r"plan file {plan} does not parse as TOML"),
    ("unknown published table", GOOD.replace("seeds = [0, 1]", 'seeds = [0, 1]\npublished = "table9"'),
     r"published in \[sweep\] of {plan}: unknown published table 'table9'"),
    ("a published table of another benchmark", GOOD.replace("seeds = [0, 1]",
                                                            'seeds = [0, 1]\npublished = "table1-cifar100"'),
     r"published in \[sweep\] of {plan}: table1-cifar100 \(Table 1\) reports cifar100, not digits"),
    ("unknown published row", GOOD.replace('["digits"]', '["cifar10"]').replace(
        "seeds = [0, 1]", 'seeds = [0, 1]\npublished = "table1-cifar10"').replace(
        'name = "A"', 'name = "A"\npublished = "MSPP"'),
     r"run 'A' in {plan}: unknown method in table1-cifar10 \(Table 1\): 'MSPP'; did you mean 'MSP'"),
    ("a published row without a table", GOOD.replace('name = "A"', 'name = "A"\npublished = "MSP"'),
     r"run 'A' in {plan} names a published row, but \[sweep\] names no published table"),
]


@pytest.mark.parametrize("text,pattern", [c[1:] for c in BAD_PLANS], ids=[c[0] for c in BAD_PLANS])
def test_a_bad_plan_is_one_error_line_naming_the_key_and_the_file(tmp_path, cli, text, pattern):
    plan = write(tmp_path, text)
    code, out, err = cli(["sweep", plan, "--print", "--save-root", tmp_path / "runs"])
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imood: error: "), err
    assert re.search(pattern.format(plan=re.escape(str(plan))), lines[0]), lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_plan_file_that_does_not_exist_names_the_shipped_ones(tmp_path, cli):
    code, _, err = cli(["sweep", tmp_path / "nope.toml", "--print"])
    assert code == 2
    assert f"plan file not found: {tmp_path / 'nope.toml'}" in err and "digits-smoke" in err


def test_a_run_folder_trained_otherwise_is_refused(tmp_path, cli):
    plan = write(tmp_path, GOOD)
    folder = tmp_path / "runs" / "digits" / "a-seed0"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"dataset": "digits", "seed": 0, "epochs": 3,
                                                    "ood_metric": "oe"}))
    code, _, err = cli(["sweep", plan, "--print", "--save-root", tmp_path / "runs"])
    assert code == 2
    assert f"{folder} was trained with epochs = 3 but the plan's run 'A' now says 2" in err


def test_gpus_must_divide_into_the_gpus_each_run_takes(tmp_path, cli):
    plan = write(tmp_path, GOOD.replace("seeds = [0, 1]", "seeds = [0, 1]\ngpus_per_run = 2"))
    code, _, err = cli(["sweep", plan, "--gpus", "0,1,2", "--save-root", tmp_path / "runs"])
    assert code == 2
    assert "--gpus lists 3 GPUs but each run takes 2 (gpus_per_run)" in err
    assert not (tmp_path / "runs").exists()


def test_every_shipped_plan_reads_and_names_what_is_installed():
    shipped = plans.shipped()
    assert {"digits-smoke", "table1-cifar10", "table1-cifar100", "table2-imagenet", "table5-oe", "table5-energy",
            "table5-maha", "controls-cifar10"} <= set(shipped)
    for name, path in shipped.items():
        plan = engine.read_plan(path)
        engine.check_names(plan)
        assert plan.name == name
    t1 = engine.read_plan(shipped["table1-cifar10"])
    published = [r.published for r in t1.runs if r.published]
    assert published == ["MSP", "OECC", "EnergyOE", "OE", "PASCL", "OpenSampling", "ClassPrior", "BalEnergy", "EAT",
                         "COCL", "PASCL + ImOOD", "COCL + ImOOD"]  # the paper's Table 1, in its order
    assert t1.defaults["epochs"] == 200 and t1.seeds == [0, 1, 2, 3, 4, 5]
    ours = t1.run("PASCL + ImOOD")  # the "+ Ours" rows are scored with the vanilla detector
    assert ours.train["ood_metric"] == "ada_bin_disc" and ours.headline == "bin_disc"
    assert t1.run("COCL + ImOOD").train["ood_metric"] == "ada_cocl" and t1.run("COCL + ImOOD").headline == "cocl"
    controls = engine.read_plan(shipped["controls-cifar10"])
    for base, vanilla in (("energy", "energy"), ("oe", "msp"), ("bin_disc", "bin_disc")):
        ada = f"ada_{base}"
        assert controls.run(base).train == {"ood_metric": base}
        assert controls.run(f"{ada} none").train == {"ood_metric": ada, "ada_correction": "none"}
        assert controls.run(f"{ada} flat-prior").train == {"ood_metric": ada, "ada_correction": "flat-prior"}
        # every training of one statistic is scored with its vanilla detector, and the pairs separate the changes
        assert {controls.run(n).headline for n in (base, ada, f"{ada} none", f"{ada} flat-prior")} == {vanilla}
        assert [p for p in controls.compare if base in p[0] or base in p[1]] == [
            (base, ada), (base, f"{ada} none"), (f"{ada} none", ada), (f"{ada} flat-prior", ada)]


# ---------------------------------------------------------------- command lines


def test_print_shows_one_line_per_run_folder(tmp_path, cli):
    plan = write(tmp_path, GOOD + '[[run]]\nname = "A post hoc"\nmodel_from = "A"\nscore = ["ada_msp"]\n')
    root = tmp_path / "runs"
    code, out, err = cli(["sweep", plan, "--print", "--save-root", root])
    assert code == 0, err
    expected = [
        shlex.join(["imood", "train", "--dataset", "digits", "--save-root", str(root / "digits"), "--name",
                    f"a-seed{s}", "--ood-metric", "oe", "--epochs", "2", "--seed", str(s)]) + " && " +
        shlex.join(["imood", "score", str(root / "digits" / f"a-seed{s}"), "--ood-metric", "msp,ada_msp"])
        for s in (0, 1)]
    assert out.splitlines() == expected
    assert "2 of 2 run folders to train or score (0 complete)" in err


def test_train_flags_parse_back_to_the_planned_options():
    """The flags the sweep writes are read by `imood train` as the values the plan gave (negative numbers,
    switches, lists, floats written exactly)."""
    from imood_cli.cli.app import app

    values = {"dataset": "digits", "seed": 3, "m_in": -23.0, "flip": False, "milestones": [30, 60], "lr": 0.0005,
              "ood_metric": "eat:stage=2", "color_jitter": [0.4, 0.4, 0.4, 0.1], "epochs": 7, "Lambda2": 1e-05,
              "train_only": "bn+classifier", "num_ood_samples": 1000}
    args = engine.option_args(values)
    group = typer.main.get_command(app)
    ctx = group.make_context("imood", ["train"], resilient_parsing=True)
    parsed = group.get_command(ctx, "train").make_context("train", list(args)).params
    given = {k: v for k, v in parsed.items() if v is not None and k in values}
    cfg = resolve_config(given)
    assert {k: getattr(cfg, k) for k in values} == values


@pytest.mark.parametrize("spec,stem", [("msp", "msp"), ("ada_energy", "ada_energy"), ("react:p=95", "react-p=95"),
                                       ("eat: stage=2 :odc=30", "eat-stage=2-odc=30"), ("classprior", "classprior")])
def test_score_file_names_are_the_ones_imood_score_writes(spec, stem):
    from imood_cli.engine.runs.layout import score_file_stem

    assert score_file_stem(spec) == stem


# ---------------------------------------------------------------- the scheduler, with stand-in commands

CHILD = r"""
import json, os, signal, sys, time
name, record, ready, behaviour = sys.argv[1:5]
def note(**kw):
    with open(record, "a") as f:
        f.write(json.dumps({"name": name, "t": time.time(), **kw}) + "\n")
def on_sigint(signum, frame):
    note(event="sigint")
    sys.exit(130)
signal.signal(signal.SIGINT, on_sigint)
note(event="start", gpu=os.environ.get("CUDA_VISIBLE_DEVICES"), sid=os.getsid(0))
open(ready, "w").close()
time.sleep(30 if behaviour == "wait" else 0.3)
note(event="end")
sys.exit(3 if behaviour == "fail" else 0)
"""


def stand_in(tmp_path: Path, behaviour: dict[str, str]):
    """A launcher that runs a small Python process per command instead of imood: it records its start, end,
    GPU and session, and fails, waits for a signal, or succeeds as `behaviour` says for the run."""
    record, script = tmp_path / "record.jsonl", tmp_path / "child.py"
    script.write_text(CHILD)

    def launch(cmd, env, log):
        name = cmd[cmd.index("--name") + 1] if "--name" in cmd else Path(cmd[2]).name  # train, or score RUN
        ready = tmp_path / f"{name}.ready"
        return subprocess.Popen([sys.executable, str(script), name, str(record), str(ready),
                                 behaviour.get(name, "ok")], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    return launch, record


def events(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def plan_units(tmp_path: Path, text: str):
    plan = engine.read_plan(write(tmp_path, text))
    plan.save_root = str(tmp_path / "runs")
    us = engine.units(plan)
    return plan, us, [engine.Work(u, [["imood", "train", "--name", u.folder.name]]) for u in us]


PIPELINE = """
[sweep]
benchmarks = ["digits"]
seeds = [0]
[[run]]
name = "A"
score = ["msp"]
[[run]]
name = "B"
init_from = "A"
score = ["msp"]
[[run]]
name = "C"
score = ["msp"]
[[run]]
name = "D"
init_from = "C"
score = ["msp"]
"""


def test_pool_runs_one_command_per_gpu_in_dependency_order_and_survives_a_failure(tmp_path):
    plan, us, work = plan_units(tmp_path, PIPELINE)
    launch, record = stand_in(tmp_path, {"c-seed0": "fail"})
    outcomes, interrupted = engine.run_work(work, set(), engine.gpu_slots(["0", "1"], 1), launcher=launch)
    assert not interrupted
    status = {o.unit.run.name: (o.status, o.message) for o in outcomes}
    assert status["A"][0] == status["B"][0] == "done"
    assert status["C"][0] == "failed" and "exited with 3" in status["C"][1] and str(us[2].log) in status["C"][1]
    assert status["D"] == ("blocked", "not run: digits · C · seed 0 did not complete")
    ev = events(record)
    starts = {e["name"]: e for e in ev if e["event"] == "start"}
    ends = {e["name"]: e for e in ev if e["event"] == "end"}
    assert set(starts) == {"a-seed0", "b-seed0", "c-seed0"}  # D never started
    assert starts["b-seed0"]["t"] >= ends["a-seed0"]["t"]  # B starts from A's model
    assert {e["gpu"] for e in starts.values()} == {"0", "1"}  # two slots, both used
    log = us[0].log.read_text()
    assert "CUDA_VISIBLE_DEVICES=" in log and "$ imood train --name a-seed0\n" in log and "# exit 0 after" in log


def test_a_failing_run_is_reported_with_its_log_and_the_others_go_on(tmp_path, cli, monkeypatch):
    plan = write(tmp_path, GOOD)
    launch, record = stand_in(tmp_path, {"a-seed0": "fail"})
    monkeypatch.setattr(engine.pool, "launch", launch)
    code, out, err = cli(["sweep", plan, "--save-root", tmp_path / "runs", "--format", "json"])
    assert code == 1
    log = tmp_path / "runs" / "logs" / "digits" / "a-seed0.log"
    assert f"imood: failed: digits · A · seed 0: `imood train` exited with 3; log: {log}" in err
    started = [e["name"] for e in events(record) if e["event"] == "start"]
    assert started == ["a-seed0", "a-seed1", "a-seed1"]  # seed 1 went on: its train, then its score
    doc = json.loads(out)  # the report still comes, with what is missing and what failed
    assert doc["benchmarks"]["digits"]["rows"][0]["missing"] == {"0": "no model", "1": "no model"}
    assert [f["run"] for f in doc["failed"]] == ["digits · A · seed 0"]


def test_a_command_that_cannot_start_is_a_failure_not_a_lost_run(tmp_path):
    plan, us, work = plan_units(tmp_path, PIPELINE)

    def launch(cmd, env, log):
        raise FileNotFoundError(2, "No such file or directory", "imood")

    outcomes, interrupted = engine.run_work(work[:1], set(), [None], launcher=launch)
    assert not interrupted
    assert [(o.status, o.message) for o in outcomes] == [
        ("failed", "`imood train` could not run: FileNotFoundError: [Errno 2] No such file or directory: 'imood'")]


def test_gpu_slots_group_gpus_per_run():
    assert engine.gpu_slots(None, 1) == [None]
    assert engine.gpu_slots(["0", "1", "2", "3"], 2) == ["0,1", "2,3"]
    with pytest.raises(ImoodError, match="--gpus lists 3 GPUs but each run takes 2"):
        engine.gpu_slots(["0", "1", "2"], 2)


def test_ctrl_c_passes_one_sigint_to_the_running_command_and_starts_nothing_else(tmp_path):
    plan, us, work = plan_units(tmp_path, PIPELINE.replace('init_from = "A"\n', "").replace('init_from = "C"\n', ""))
    launch, record = stand_in(tmp_path, {"a-seed0": "wait"})

    def press_ctrl_c():
        deadline = time.monotonic() + 60
        while not (tmp_path / "a-seed0.ready").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    outcomes, interrupted = engine.run_work(work, set(), [None], launcher=launch)
    assert interrupted
    assert {o.unit.run.name: o.status for o in outcomes} == dict.fromkeys("ABCD", "interrupted")
    ev = events(record)
    assert [e["event"] for e in ev] == ["start", "sigint"]  # exactly one SIGINT; B, C, D never started
    assert ev[0]["sid"] != os.getsid(0)  # its own session: a terminal's Ctrl-C reaches the sweep alone
    assert "# exit 130 after" in us[0].log.read_text()


# ---------------------------------------------------------------- the digits plan, end to end


def log_commands(log: Path) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in log.read_text().splitlines() if line.startswith("$ ")]


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every model file: its mtime and sha256."""
    from imood_cli.engine.runs.digest import sha256_file

    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, sha256_file(p)) for p in root.rglob("model.safetensors")}


def sweep_cmd(root: Path, *extra: str) -> list[str]:
    return [*IMOOD, "sweep", "digits-smoke", "--save-root", str(root), *extra]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The shipped digits plan: printed, interrupted after its first run folder, finished, run again, and
    resumed after one model file went missing."""
    tmp = tmp_path_factory.mktemp("sweep")
    root = tmp / "runs"
    out: dict = {"root": root}
    # Stored arrays (the default data root, ./data): each of the sweep's ~20 processes then reads them
    # instead of building them from scikit-learn (2.5 s each).
    prepared = subprocess.run([*IMOOD, "data", "prepare", "digits"], cwd=tmp, env=ENV, capture_output=True, text=True,
                              timeout=300)
    assert prepared.returncode == 0, prepared.stderr
    printed = subprocess.run(sweep_cmd(root, "--print"), cwd=tmp, env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert printed.returncode == 0, printed.stderr
    out["printed"] = printed.stdout.splitlines()

    first_log = root / "logs" / "digits" / "msp-seed0.log"
    second_log = root / "logs" / "digits" / "oe-seed0.log"
    with open(tmp / "interrupted.err", "wb") as err:
        p = subprocess.Popen(sweep_cmd(root), cwd=tmp, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 600
        while p.poll() is None and time.monotonic() < deadline and not second_log.exists():
            time.sleep(0.05)
        time.sleep(1.0)  # the second run folder's training has started
        p.send_signal(signal.SIGINT)
        out["interrupted_rc"] = p.wait(timeout=600)
    out["interrupted_err"] = (tmp / "interrupted.err").read_text()
    out["after_interrupt"] = snapshot(root)
    out["first_log_after_interrupt"] = first_log.read_text()

    done = subprocess.run(sweep_cmd(root, "--format", "json"), cwd=tmp, env=ENV, capture_output=True, text=True,
                          timeout=1800)
    out["finished"] = done
    out["after_finish"] = snapshot(root)
    out["logs_after_finish"] = {p.name: p.read_text() for p in (root / "logs" / "digits").iterdir()}

    again = subprocess.run(sweep_cmd(root), cwd=tmp, env=ENV, capture_output=True, text=True, timeout=600)
    out["again"] = again
    out["after_again"] = snapshot(root)
    out["logs_after_again"] = {p.name: p.read_text() for p in (root / "logs" / "digits").iterdir()}

    lost = root / "digits" / "oe+imood-seed1" / "model.safetensors"
    lost.unlink()  # as if the machine died between the last checkpoint and the model file
    resumed = subprocess.run(sweep_cmd(root, "--format", "json"), cwd=tmp, env=ENV, capture_output=True, text=True,
                             timeout=900)
    out["resumed"] = resumed
    out["after_resume"] = snapshot(root)
    return out


def test_an_interrupted_sweep_stops_with_130_and_keeps_the_finished_run(digits):
    assert digits["interrupted_rc"] == 130, digits["interrupted_err"]
    assert "imood: interrupted:" in digits["interrupted_err"]
    assert "digits/msp-seed0/model.safetensors" in digits["after_interrupt"]


def test_the_rerun_finishes_without_retraining_completed_runs(digits):
    done = digits["finished"]
    assert done.returncode == 0, done.stderr
    before, after = digits["after_interrupt"], digits["after_finish"]
    assert len(after) == 6
    for model, stamp in before.items():  # finished before the interruption: untouched since
        assert after[model] == stamp, model
    first = digits["logs_after_finish"]["msp-seed0.log"]
    assert first == digits["first_log_after_interrupt"]  # nothing was run for it again
    assert [c[1] for c in log_commands(Path(digits["root"]) / "logs" / "digits" / "msp-seed0.log")] == ["train",
                                                                                                          "score"]


def test_running_a_complete_sweep_again_runs_nothing(digits):
    again = digits["again"]
    assert again.returncode == 0, again.stderr
    assert "digits-smoke: all 6 run folders are complete" in again.stderr
    assert digits["after_again"] == digits["after_finish"]
    assert digits["logs_after_again"] == digits["logs_after_finish"]


def test_print_showed_the_commands_that_ran(digits):
    root = Path(digits["root"])
    assert len(digits["printed"]) == 6
    for line in digits["printed"]:
        cmds = [shlex.split(part) for part in line.split(" && ")]
        train, score = cmds
        name = train[train.index("--name") + 1]
        ran = log_commands(root / "logs" / "digits" / f"{name}.log")
        assert ran[0] == train  # the first command run for this folder is the printed one
        assert [c for c in ran if c[1] == "score"][-1] == score
        assert [c for c in ran if c[1] == "train" and "--resume" not in c] in ([train], [train, train])


def test_a_run_folder_without_its_model_is_resumed(digits):
    resumed = digits["resumed"]
    assert resumed.returncode == 0, resumed.stderr
    folder = Path(digits["root"]) / "digits" / "oe+imood-seed1"
    ran = log_commands(Path(digits["root"]) / "logs" / "digits" / "oe+imood-seed1.log")
    assert ["imood", "train", "--resume", str(folder)] in ran
    others = {k: v for k, v in digits["after_finish"].items() if "oe+imood-seed1" not in k}
    assert {k: v for k, v in digits["after_resume"].items() if k in others} == others
    assert "digits/oe+imood-seed1/model.safetensors" in digits["after_resume"]


def expected_numbers(path: Path) -> dict[str, float]:
    """Mean AUROC / AUPR-out / FPR95 over the OOD sets and the ID accuracies of a score file, computed here
    with scikit-learn and numpy from the raw tensors."""
    t = load_file(str(path))
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(json.loads(f.read(n))["__metadata__"]["imood"])
    id_s = t["id.score"].astype(np.float64)
    per_set = []
    for name in meta["ood_sets"]:
        ood = t[f"ood.{name}.score"].astype(np.float64)
        y = np.r_[np.zeros(id_s.size), np.ones(ood.size)]
        s = np.r_[id_s, ood]
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        per_set.append((roc_auc_score(y, s), average_precision_score(y, s), fpr[np.argmax(tpr >= 0.95)]))
    labels, preds = t["id.label"], t["id.pred"]
    counts = np.array(meta["class_counts"])
    k = counts.size
    desc = np.sort(counts)[::-1]
    many, few = counts > desc[int(0.34 * k)], counts < desc[int(0.67 * k)]
    per_class = np.array([np.mean(preds[labels == c] == c) for c in range(k)])
    return {"auroc": np.mean([p[0] for p in per_set]), "aupr_out": np.mean([p[1] for p in per_set]),
            "fpr95": np.mean([p[2] for p in per_set]), "acc": np.mean(preds == labels),
            "many": per_class[many].mean(), "medium": per_class[~many & ~few].mean(), "few": per_class[few].mean()}


def test_the_report_gives_mean_and_std_over_seeds_of_each_row(digits):
    root = Path(digits["root"])
    doc = json.loads(digits["resumed"].stdout)
    rows = doc["benchmarks"]["digits"]["rows"]
    assert [(r["run"], r["detector"]) for r in rows] == [("MSP", "msp"), ("MSP + ImOOD post hoc", "ada_msp"),
                                                         ("OE", "msp"), ("OE + ImOOD", "msp")]
    folders = {"MSP": "msp", "MSP + ImOOD post hoc": "msp", "OE": "oe", "OE + ImOOD": "oe+imood"}
    terminal = digits["again"].stdout
    for r in rows:
        assert r["seeds"] == [0, 1] and r["missing"] == {}
        per_seed = [expected_numbers(root / "digits" / f"{folders[r['run']]}-seed{s}" / "scores" /
                                     f"{r['detector']}.safetensors") for s in (0, 1)]
        for key in ("auroc", "aupr_out", "fpr95", "acc", "many", "medium", "few"):
            values = [p[key] for p in per_seed]
            assert math.isclose(r["mean"][key], statistics.fmean(values), abs_tol=1e-9), (r["run"], key)
            assert math.isclose(r["std"][key], statistics.stdev(values), abs_tol=1e-9), (r["run"], key)
        line = next(x for x in terminal.splitlines() if f" {r['run']} " in x and f" {r['detector']} " in x)
        for key in ("auroc", "aupr_out", "fpr95"):
            assert f"{100 * r['mean'][key]:.2f}" in line and f"{100 * r['std'][key]:.2f}" in line
