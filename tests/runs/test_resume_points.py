"""Which checkpoint a resume continues from, and what it leaves alone (issue: reliability round three).

A kill can land between a checkpoint file and its index, the index can be lost or damaged, and the newest
checkpoint can hold NaN weights: each case resumes from the newest checkpoint that verifies, says so, and a
resume that fails leaves config.json as it was. In process, on the digits benchmark (3 epochs of 5 steps).
"""

import json
import os
import stat

import pytest
import torch

from imood_cli.data.benchmarks.digits import Digits
from imood_cli.engine.runs.checkpoint import CheckpointDir, load_tensors, save_tensors
from imood_cli.engine.runtime import setup
from imood_cli.engine.training.config import resolve_config
from imood_cli.engine.training.lifecycle import resume, train
from imood_cli.engine.training.trainer import TrainObserver
from imood_cli.errors import ImoodError, TrainingDiverged


@pytest.fixture(scope="module")
def bench():
    return Digits().load(None)


@pytest.fixture(scope="module")
def full(tmp_path_factory, bench):
    """The uninterrupted run."""
    root = tmp_path_factory.mktemp("full")
    return train(cfg(root, "full"), setup("cpu"), bench=bench).run_dir


def cfg(root, name, **kw):
    return resolve_config({**dict(dataset="digits", save_root=str(root), name=name, epochs=3, batch_size=64,
                                  log_every=2), **kw})


class Messages(TrainObserver):
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


class CrashAfterEpoch(TrainObserver):
    def __init__(self, epoch):
        self.epoch = epoch

    def epoch_end(self, record):
        if record["epoch"] == self.epoch:
            raise RuntimeError("simulated crash")


def crashed(root, bench, name, epoch=2):
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg(root, name), setup("cpu"), CrashAfterEpoch(epoch), bench=bench)
    return root / name


def same_weights(a, b):
    wa, wb = load_tensors(a / "model.safetensors")[0], load_tensors(b / "model.safetensors")[0]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("damage", ["missing", "not json", "hostile entry"])
def test_a_lost_or_damaged_index_is_rebuilt_from_the_files(tmp_path, bench, full, damage):
    run = crashed(tmp_path, bench, "r")
    index = run / "checkpoint" / "latest.json"
    index.unlink()
    if damage == "not json":
        index.write_text("{\"checkpoints\": [")
    elif damage == "hostile entry":
        index.write_text(json.dumps({"checkpoints": [{"file": "../../precious.txt", "epoch": 1, "step": 0,
                                                      "size": 5, "sha256": "0" * 64}]}))
    said = Messages()
    resume(run, observer=said, bench=bench, rt=setup("cpu"))
    same_weights(run, full)
    assert any("resuming from" in line and "epoch_0002" in line for line in said.lines)
    assert any(line.startswith("note: latest.json") and "written anew from the checkpoint files" in line
               for line in said.lines), said.lines
    entries = json.loads(index.read_text())["checkpoints"]
    assert [e["epoch"] for e in entries] == [2, 3]
    assert sorted(f.name for f in index.parent.glob("epoch_*")) == ["epoch_0002.safetensors", "epoch_0003.safetensors"]


def test_a_fifo_where_the_index_belongs_is_refused_without_blocking(tmp_path, bench):
    run = crashed(tmp_path, bench, "r")
    index = run / "checkpoint" / "latest.json"
    index.unlink()
    os.mkfifo(index)
    with pytest.raises(ImoodError, match="latest.json is a FIFO"):
        resume(run, bench=bench, rt=setup("cpu"))
    assert stat.S_ISFIFO(os.lstat(index).st_mode)


def test_an_unlisted_newer_checkpoint_is_used_and_an_older_listed_one_skipped_when_damaged(tmp_path, bench, full):
    run = crashed(tmp_path, bench, "r")
    ckpt = CheckpointDir(run / "checkpoint")
    index = json.loads(ckpt.index.read_text())
    # as after a kill between the file and the index: epoch 2's file is there, the index still lists only epoch 1
    ckpt.index.write_text(json.dumps({"checkpoints": index["checkpoints"][:1]}))
    point = ckpt.resume_point()
    assert point.path.name == "epoch_0002.safetensors" and "did not list epoch_0002" in point.index_note
    # a truncated unlisted file is passed over, and named
    newest = run / "checkpoint" / "epoch_0002.safetensors"
    newest.write_bytes(newest.read_bytes()[:-64])
    point = ckpt.resume_point()
    assert point.path.name == "epoch_0001.safetensors"
    assert point.skipped and point.skipped[0].startswith("epoch_0002.safetensors (")
    said = Messages()
    resume(run, observer=said, bench=bench, rt=setup("cpu"))
    same_weights(run, full)
    assert any(line.startswith("warning: skipped checkpoint epoch_0002.safetensors") for line in said.lines)


def test_a_checkpoint_with_nan_weights_is_skipped(tmp_path, bench, full):
    run = crashed(tmp_path, bench, "r")
    path = run / "checkpoint" / "epoch_0002.safetensors"
    tensors, meta = load_tensors(path, "checkpoint")
    # the model's state dict is the first entry of the state: its tensors are stored as s.0.<i>
    name = next(k for k, t in tensors.items() if k.startswith("s.0.") and t.is_floating_point() and t.numel() > 1)
    tensors[name].view(-1)[0] = float("nan")
    save_tensors(path, tensors, meta)  # a consistent file: its digest matches its (NaN) contents
    index = run / "checkpoint" / "latest.json"
    entries = json.loads(index.read_text())["checkpoints"]
    for e in entries:  # the index vouches for the new bytes, as for a checkpoint saved with NaN weights
        if e["file"] == path.name:
            e["size"] = path.stat().st_size
    index.write_text(json.dumps({"checkpoints": entries}))
    point = CheckpointDir(run / "checkpoint").resume_point()
    assert point.path.name == "epoch_0001.safetensors"
    assert len(point.skipped) == 1 and "holds NaN or infinite values" in point.skipped[0]
    resume(run, bench=bench, rt=setup("cpu"))
    same_weights(run, full)


def test_a_failed_resume_leaves_config_json_and_names_the_right_checkpoint(tmp_path, bench):
    run = train(cfg(tmp_path, "r", epochs=2), setup("cpu"), bench=bench).run_dir
    before = (run / "config.json").read_bytes()
    model = (run / "model.safetensors").read_bytes()

    class Diverge(TrainObserver):  # the extended training diverges at its first step
        def epoch_start(self, epoch, steps, start_step):
            raise TrainingDiverged("loss is not finite (simulated)")

    with pytest.raises(TrainingDiverged) as exc:
        resume(run, observer=Diverge(), overrides={"epochs": 3}, bench=bench, rt=setup("cpu"))
    assert exc.value.exit_code == 2
    assert (run / "config.json").read_bytes() == before  # still the 2-epoch run it is
    assert (run / "model.safetensors").read_bytes() == model


def test_divergence_after_a_resume_does_not_call_the_resumed_checkpoint_new(tmp_path, bench):
    run = train(cfg(tmp_path, "r", epochs=1), setup("cpu"), bench=bench).run_dir
    # make the continued training diverge: finite weights whose logits overflow
    path = run / "checkpoint" / "epoch_0001.safetensors"
    tensors, meta = load_tensors(path, "checkpoint")
    model = dict(meta["skeleton"]["__dict__"])["model"]["__dict__"]
    key = dict(model)["classifier.weight"]["__tensor__"]
    tensors[key].fill_(3e38)
    save_tensors(path, tensors, meta)
    (run / "checkpoint" / "latest.json").unlink()  # the file vouches for itself
    with pytest.raises(TrainingDiverged) as exc:
        resume(run, overrides={"epochs": 2}, bench=bench, rt=setup("cpu"))
    msg = str(exc.value)
    assert "no checkpoint was written since the one this run resumed from" in msg and "epoch_0001" in msg
    assert json.loads((run / "config.json").read_text())["epochs"] == 1


def test_resume_refuses_a_complete_run_without_checkpoints(tmp_path, bench):
    run = train(cfg(tmp_path, "r", epochs=1), setup("cpu"), bench=bench).run_dir
    for f in (run / "checkpoint").iterdir():
        f.unlink()
    with pytest.raises(ImoodError, match="no checkpoint to continue from"):
        resume(run, bench=bench, rt=setup("cpu"))
