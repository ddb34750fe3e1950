"""Validation while training (--eval-every): the held-out split, the records and their equality with a separate
scoring of the same weights, training untouched by the passes (off by default, exact resume), TensorBoard."""

import json
import os
import signal
import sys
import types

import numpy as np
import pytest
import torch
from conftest import run_cli
from sklearn.metrics import roc_auc_score, roc_curve

from imood_cli.data.base import Benchmark
from imood_cli.data.benchmarks.digits import Digits
from imood_cli.engine.runs.checkpoint import load_tensors
from imood_cli.engine.runtime import setup
from imood_cli.engine.scoring.loading import load_model
from imood_cli.engine.scoring.request import ScoreRequest
from imood_cli.engine.scoring.score import score
from imood_cli.engine.training.config import resolve_config
from imood_cli.engine.training.lifecycle import resume, train
from imood_cli.engine.training.trainer import Interrupted, TrainObserver
from imood_cli.engine.training.validation import RECORD_KEYS, hold_out
from imood_cli.errors import ImoodError

FAST = ["--ds", "digits", "-b", "32", "--device", "cpu", "--log-every", "4"]


@pytest.fixture(scope="module")
def bench():
    return Digits().load(None)


def cfg_for(tmp_path, name, **kw):
    opts = dict(dataset="digits", save_root=str(tmp_path), name=name, epochs=2, batch_size=32, log_every=4,
                device="cpu")
    opts.update(kw)
    return resolve_config(opts)


def records(run, *kinds):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if not kinds or r["kind"] in kinds]


def weights(run):
    return load_tensors(run / "model.safetensors")[0]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def fpr_at_95(id_scores, ood_scores):
    """FPR95 the scikit-learn way: the ID fraction at the first threshold reaching 95% OOD recall."""
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    fpr, tpr, _ = roc_curve(y, np.r_[id_scores, ood_scores], drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= 0.95)])


def test_the_split_is_held_out_deterministically_and_keeps_every_class(bench):
    train_bench, split = hold_out(bench, 0.1, seed=0)
    counts = np.array(bench.class_counts)
    held = np.bincount(split.id.labels.numpy(), minlength=bench.num_classes)
    assert held.tolist() == [int(np.ceil(0.1 * n)) for n in counts]  # [12, 8, 5, 3, 2, 2]
    assert train_bench.class_counts == (counts - held).tolist() and min(train_bench.class_counts) >= 1
    assert np.bincount(train_bench.train.labels.numpy()).tolist() == train_bench.class_counts
    assert len(split.ood) == 300 and len(train_bench.aux_ood) == 2700
    # the held-out images and the training images together are the benchmark's, each once
    both = torch.cat([train_bench.train.images, split.id.images]).flatten(1)
    assert sorted(map(bytes, both.numpy())) == sorted(map(bytes, bench.train.images.flatten(1).numpy()))
    aux = torch.cat([train_bench.aux_ood.images, split.ood.images]).flatten(1)
    assert sorted(map(bytes, aux.numpy())) == sorted(map(bytes, bench.aux_ood.images.flatten(1).numpy()))
    assert hold_out(bench, 0.1, seed=0)[1].digest == split.digest  # from the seed alone
    assert hold_out(bench, 0.1, seed=1)[1].digest != split.digest
    assert len(bench.train) == 296 and len(bench.aux_ood) == 3000  # the benchmark itself is untouched


def test_eval_every_writes_records_and_the_progress_line(tmp_path, capsys):
    code, _, err = run_cli(["train", *FAST, "--srp", tmp_path, "--name", "v", "-e", "3", "--eval-every", "2"], capsys)
    assert code == 0, err
    run = tmp_path / "v"
    val = records(run, "val")
    assert [(r["epoch"], r["step"]) for r in val] == [(r["epoch"], r["step"]) for r in records(run, "epoch")
                                                     if r["epoch"] in (2, 3)]  # every 2nd epoch and the last
    for r in val:
        assert set(RECORD_KEYS) <= r.keys() and r["detector"] == "bin_disc"  # ada_bin_disc: its base score
        assert r["id_images"] == 32 and r["ood_images"] == 300 and list(r["ood"]) == ["val-aux"]
        assert 0 <= r["acc"] <= 1 and 0 <= r["auroc"] <= 1 and 0 <= r["fpr95"] <= 1
    assert not records(run, "test")
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["eval_every"], cfg["val_fraction"], cfg["eval_on"]) == (2, 0.1, "val")
    assert load_tensors(run / "model.safetensors")[1]["class_counts"] == [106, 66, 41, 26, 16, 9]
    lines = [x for x in err.splitlines() if x.startswith("epoch ")]
    assert "val: acc" not in lines[0] and all("; val: acc " in x and "AUROC" in x for x in lines[1:])
    assert "32 ID images and 300 auxiliary OOD images held out of training" in err


def test_eval_values_equal_a_separate_scoring_of_the_saved_model(tmp_path, bench):
    rt = setup("cpu")
    cfg = cfg_for(tmp_path, "v", eval_every=1, seed=3)
    result = train(cfg, rt, bench=bench)
    last = records(result.run_dir, "val")[-1]
    assert last["epoch"] == 2 and result.evaluated == [last]
    # the same split, scored independently: the model file through imood's scoring, AUROC by scikit-learn
    train_bench, split = hold_out(bench, 0.1, seed=3)
    loaded = load_model(result.run_dir)
    assert loaded.class_counts == train_bench.class_counts
    val_bench = Benchmark("val", bench.num_classes, train_bench.class_counts, train_bench.train, split.id,
                          {"val-aux": split.ood}, None, bench.channels, bench.image_size, bench.augment)
    ss = score(loaded, val_bench, ScoreRequest(["bin_disc"], logit_adjust=cfg.logit_adjust), rt)["bin_disc"]
    id_s, ood_s = ss.id_score, ss.ood_score["val-aux"]
    auroc = roc_auc_score(np.r_[np.zeros(len(id_s)), np.ones(len(ood_s))], np.r_[id_s, ood_s])
    assert last["auroc"] == pytest.approx(auroc, abs=1e-6)
    assert last["ood"]["val-aux"]["auroc"] == pytest.approx(auroc, abs=1e-6)
    assert last["fpr95"] == pytest.approx(fpr_at_95(id_s, ood_s), abs=1e-6)
    correct = ss.id_pred == ss.id_label
    assert last["acc"] == pytest.approx(correct.mean(), abs=1e-6)
    per_class = [correct[ss.id_label == c].mean() for c in range(bench.num_classes)]
    groups = {"many": [0, 1], "medium": [2, 3, 4], "few": [5]}  # digits' shot groups of these class counts
    for g, classes in groups.items():
        assert last[f"acc_{g}"] == pytest.approx(np.mean([per_class[c] for c in classes]), abs=1e-6)
    assert (last["id_images"], last["ood_images"]) == (len(id_s), len(ood_s))


def test_off_by_default_and_eval_on_test_leave_training_as_it_was(tmp_path, bench):
    rt = setup("cpu")
    plain = train(cfg_for(tmp_path, "plain"), rt, bench=bench)
    assert not records(plain.run_dir, "val", "test") and plain.evaluated == []
    assert load_tensors(plain.run_dir / "model.safetensors")[1]["class_counts"] == bench.class_counts
    assert json.loads((plain.run_dir / "config.json").read_text())["eval_every"] == 0
    # the test sets hold nothing out: the same images, and passes that leave the training's numbers alone
    tested = train(cfg_for(tmp_path, "test", eval_every=1, eval_on="test"), rt, bench=bench)
    assert_same_weights(weights(plain.run_dir), weights(tested.run_dir))
    strip = lambda rs: [{k: v for k, v in r.items() if k != "images_per_s"} for r in rs]
    assert strip(records(plain.run_dir)) == strip(records(tested.run_dir, "log", "epoch"))
    test = records(tested.run_dir, "test")
    assert [r["epoch"] for r in test] == [1, 2] and not records(tested.run_dir, "val")
    assert set(test[0]["ood"]) == set(bench.ood_tests) and test[0]["id_images"] == len(bench.test)
    assert test[0]["auroc"] == pytest.approx(np.mean([m["auroc"] for m in test[0]["ood"].values()]))


def test_eval_on_needs_eval_every(tmp_path, bench):
    with pytest.raises(ImoodError, match="--eval-every"):
        train(cfg_for(tmp_path, "x", eval_on="test"), setup("cpu"), bench=bench)
    assert not (tmp_path / "x").exists()


class SigintAtStep(TrainObserver):
    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def step(self, epoch, step, images):
        if (epoch, step) == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_and_resumed_run_with_validation_is_exact(tmp_path, bench):
    rt = setup("cpu")
    full = train(cfg_for(tmp_path, "full", epochs=3, eval_every=1), rt, bench=bench)
    with pytest.raises(Interrupted):
        train(cfg_for(tmp_path, "int", epochs=3, eval_every=1), rt, SigintAtStep(2, 3), bench=bench)
    resumed = resume(tmp_path / "int", bench=bench, rt=rt)
    assert_same_weights(weights(full.run_dir), weights(resumed.run_dir))
    strip = lambda run: [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in records(run)]
    assert strip(tmp_path / "int") == strip(full.run_dir)  # the validation records included, each once
    assert [r["epoch"] for r in records(full.run_dir, "val")] == [1, 2, 3]


def test_tensorboard_without_the_package_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import fails, as when not installed
    code, out, err = run_cli(["train", *FAST, "--srp", tmp_path / "runs", "--name", "tb", "-e", "1",
                              "--tensorboard", tmp_path / "tb"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imood: error: --tensorboard") and "pip install tensorboard" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tb").exists()


class FakeWriter:
    made = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_writes_losses_lr_and_validation_metrics(tmp_path, bench, monkeypatch):
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    FakeWriter.made.clear()
    res = train(cfg_for(tmp_path, "tb", eval_every=1, tensorboard=str(tmp_path / "tb")), setup("cpu"), bench=bench)
    (writer,) = FakeWriter.made
    assert writer.log_dir == str(tmp_path / "tb") and writer.closed
    tags = {tag for tag, _, _ in writer.scalars}
    assert {"train/loss", "train/l_in", "train/l_ood", "train/l_aux", "train/train_acc", "train/lr",
            "epoch/loss", "val/acc", "val/acc_many", "val/auroc", "val/fpr95"} <= tags
    val = {(tag, step): value for tag, value, step in writer.scalars if tag.startswith("val/")}
    for r in records(res.run_dir, "val"):
        assert val[("val/auroc", r["step"])] == r["auroc"] and val[("val/acc", r["step"])] == r["acc"]
    logs = records(res.run_dir, "log")
    assert [(s, v) for t, v, s in writer.scalars if t == "train/lr"] == [(r["step"], r["lr"]) for r in logs]
