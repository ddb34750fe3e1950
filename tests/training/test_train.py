"""Training: determinism, exact resume (after an epoch and mid-epoch), divergence, bad options."""

import json
import os
import signal

import pytest
import torch

from imood_cli.data.benchmarks.digits import Digits
from imood_cli.engine.runs.checkpoint import load_tensors
from imood_cli.engine.runtime import setup
from imood_cli.engine.training.config import resolve_config
from imood_cli.engine.training.lifecycle import resume, train
from imood_cli.engine.training.trainer import Interrupted, Trainer, TrainObserver
from imood_cli.errors import ImoodError, TrainingDiverged


@pytest.fixture(scope="module")
def bench():
    return Digits().load(None)


def cfg_for(tmp_path, name, **kw):
    opts = dict(dataset="digits", save_root=str(tmp_path), name=name, epochs=3, batch_size=32, log_every=2)
    opts.update(kw)
    return resolve_config(opts)


def weights(run):
    return load_tensors(run / "model.safetensors")[0]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class CrashAfterEpoch(TrainObserver):
    def __init__(self, epoch):
        self.epoch = epoch

    def epoch_end(self, record):
        if record["epoch"] == self.epoch:
            raise RuntimeError("simulated crash")


class SigintAtStep(TrainObserver):
    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def step(self, epoch, step, images):
        if (epoch, step) == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_same_seed_same_numbers(tmp_path, bench):
    rt = setup("cpu")
    a = train(cfg_for(tmp_path, "a", epochs=2), rt, bench=bench)
    b = train(cfg_for(tmp_path, "b", epochs=2), rt, bench=bench)
    assert_same_weights(weights(a.run_dir), weights(b.run_dir))
    la = (a.run_dir / "metrics.jsonl").read_text().splitlines()
    lb = (b.run_dir / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "images_per_s"} for x in lines]
    assert strip(la) == strip(lb)
    c = train(cfg_for(tmp_path, "c", epochs=2, seed=1), rt, bench=bench)
    assert not torch.equal(weights(a.run_dir)["classifier.weight"], weights(c.run_dir)["classifier.weight"])


def test_run_folder_contents(tmp_path, bench):
    res = train(cfg_for(tmp_path, "r", epochs=1), setup("cpu"), bench=bench)
    cfg = json.loads((res.run_dir / "config.json").read_text())
    assert cfg["ood_metric"] == "ada_bin_disc" and cfg["dataset"] == "digits"
    tensors, meta = load_tensors(res.run_dir / "model.safetensors")
    assert meta["class_counts"] == bench.class_counts
    assert meta["architecture"]["extra_outputs"] == 1 and meta["architecture"]["num_classes"] == 6
    assert meta["metric"] == "ada_bin_disc"
    records = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "epoch" and all(k in records[-1] for k in ("loss", "l_in", "l_ood", "l_aux"))


@pytest.mark.parametrize("metric,aux", [("ada_oe", "simclr"), ("energy", "none"), ("ada_maha", "pascl"),
                                        ("maha", "none"), ("ada_energy", "pascl"), ("ada_gradnorm", "none")])
def test_every_training_combination_runs(tmp_path, bench, metric, aux):
    res = train(cfg_for(tmp_path, metric, epochs=1, ood_metric=metric, aux_ood_loss=aux), setup("cpu"), bench=bench)
    rec = json.loads((res.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(torch.isfinite(torch.tensor(rec[k])) for k in ("loss", "l_in", "l_ood", "l_aux"))
    if metric in ("maha", "none"):
        assert rec["l_ood"] == 0.0  # vanilla maha is post-hoc only: no OOD training loss


def test_resume_after_a_crash_reaches_the_same_weights(tmp_path, bench):
    rt = setup("cpu")
    full = train(cfg_for(tmp_path, "full"), rt, bench=bench)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg_for(tmp_path, "crash"), rt, CrashAfterEpoch(2), bench=bench)
    assert not (tmp_path / "crash" / "model.safetensors").exists()
    resumed = resume(tmp_path / "crash", bench=bench, rt=rt)
    assert resumed.epochs == 3
    assert_same_weights(weights(full.run_dir), weights(resumed.run_dir))
    records = [json.loads(x) for x in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["kind"]) for r in records]
    assert [s for s, _ in keys] == sorted(s for s, _ in keys) and len(keys) == len(set(keys))  # none twice
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]


def test_sigint_mid_epoch_saves_and_resumes_exactly(tmp_path, bench):
    rt = setup("cpu")
    full = train(cfg_for(tmp_path, "full"), rt, bench=bench)
    with pytest.raises(Interrupted) as exc:
        train(cfg_for(tmp_path, "int"), rt, SigintAtStep(2, 2), bench=bench)
    assert exc.value.exit_code == 130 and "--resume" in str(exc.value)
    index = json.loads((tmp_path / "int" / "checkpoint" / "latest.json").read_text())["checkpoints"]
    assert index[-1]["epoch"] == 1 and index[-1]["step"] == 2
    resumed = resume(tmp_path / "int", bench=bench, rt=rt)
    assert_same_weights(weights(full.run_dir), weights(resumed.run_dir))
    # the loss records, the mid-epoch ones included, are those of the uninterrupted run
    strip = lambda run: [{k: v for k, v in json.loads(x).items() if k != "images_per_s"}
                         for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "int") == strip(full.run_dir)


def test_corrupt_checkpoint_is_not_used(tmp_path, bench):
    rt = setup("cpu")
    with pytest.raises(RuntimeError):
        train(cfg_for(tmp_path, "c"), rt, CrashAfterEpoch(2), bench=bench)
    index = json.loads((tmp_path / "c" / "checkpoint" / "latest.json").read_text())["checkpoints"]
    newest = tmp_path / "c" / "checkpoint" / index[-1]["file"]
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated: resume falls back to the older one
    resumed = resume(tmp_path / "c", bench=bench, rt=rt)
    assert resumed.epochs == 3
    full = train(cfg_for(tmp_path, "full"), rt, bench=bench)
    assert_same_weights(weights(full.run_dir), weights(resumed.run_dir))


def test_nan_loss_stops_with_the_parts_and_keeps_the_checkpoint(tmp_path, bench, monkeypatch):
    real = Trainer.loss_on

    def poisoned(self, x, labels, m):  # the loss turns NaN from the second step of epoch 2 on
        parts = real(self, x, labels, m)
        return parts * float("nan") if self.global_step >= self.steps_per_epoch + 1 else parts

    monkeypatch.setattr(Trainer, "loss_on", poisoned)
    with pytest.raises(TrainingDiverged) as exc:
        train(cfg_for(tmp_path, "nan", log_every=1), setup("cpu"), bench=bench)
    msg = str(exc.value)
    assert exc.value.exit_code == 2
    assert "loss is not finite at epoch 2, step 11" in msg and "l_in=nan" in msg  # 9 steps of 32 per epoch
    assert f"the last good checkpoint is {tmp_path / 'nan' / 'checkpoint' / 'epoch_0001.safetensors'}" in msg
    assert sorted(f.name for f in (tmp_path / "nan" / "checkpoint").glob("epoch_*")) == ["epoch_0001.safetensors"]


def test_weights_that_turn_nan_at_the_end_of_an_epoch_are_not_saved(tmp_path, bench, monkeypatch):
    real = Trainer.optimize

    def poisoned(self, parts):  # the last update of epoch 2 leaves a NaN weight; its loss was finite
        real(self, parts)
        if self.global_step == 2 * self.steps_per_epoch - 1:
            with torch.no_grad():
                self.core.classifier.weight[0, 0] = float("nan")

    monkeypatch.setattr(Trainer, "optimize", poisoned)
    with pytest.raises(TrainingDiverged) as exc:
        train(cfg_for(tmp_path, "w"), setup("cpu"), bench=bench)
    msg = str(exc.value)
    assert "the weights became non-finite (classifier.weight) at the end of epoch 2 (step 18)" in msg
    assert "the last good checkpoint is" in msg and "epoch_0001" in msg
    assert sorted(f.name for f in (tmp_path / "w" / "checkpoint").glob("epoch_*")) == ["epoch_0001.safetensors"]


@pytest.mark.parametrize("opts,match", [
    (dict(Lambda=-1), "--Lambda must be in \\[0, 1e\\+06\\]"),
    (dict(imbalance_ratio=1.5), "imbalance.ratio must be in"),
    (dict(imbalance_ratio=0), "imbalance.ratio must be in"),
    (dict(ood_metric="ada_enrgy"), "did you mean 'ada_energy'"),
    (dict(model="resnet_nope"), "unknown timm model"),
    (dict(aux_ood_loss="pasc"), "did you mean 'pascl'"),
    (dict(optimizer="adamx"), "unknown --optimizer value 'adamx'"),
])
def test_bad_options_fail_before_any_work(tmp_path, bench, opts, match):
    with pytest.raises(ImoodError, match=match):
        cfg = cfg_for(tmp_path, "bad", **opts)
        train(cfg, setup("cpu"), bench=bench)
    assert not (tmp_path / "bad").exists()


def test_existing_run_folder_needs_resume_or_force(tmp_path, bench):
    rt = setup("cpu")
    train(cfg_for(tmp_path, "x", epochs=1), rt, bench=bench)
    with pytest.raises(ImoodError, match="--resume"):
        train(cfg_for(tmp_path, "x", epochs=1), rt, bench=bench)
    train(cfg_for(tmp_path, "x", epochs=1), rt, bench=bench, force=True)


def test_config_file_precedence(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('[train]\ndataset = "digits"\nepochs = 7\nlr = 0.01\n')
    cfg = resolve_config({"lr": 0.02}, f)
    assert (cfg.epochs, cfg.lr, cfg.model) == (7, 0.02, "imood_resnet_micro")
    f.write_text('epochz = 3\n')
    with pytest.raises(ImoodError, match="epochs"):
        resolve_config({}, f)


def test_start_from_a_model_and_refuse_a_mismatch(tmp_path, bench):
    rt = setup("cpu")
    base = train(cfg_for(tmp_path, "base", epochs=1, ood_metric="energy"), rt, bench=bench)
    tuned = train(cfg_for(tmp_path, "tuned", epochs=1, ood_metric="energy", init_from=str(base.run_dir), lr=1e-12),
                  rt, bench=bench)
    # with a vanishing learning rate the weights stay those it started from (BN statistics move)
    a, b = weights(base.run_dir), weights(tuned.run_dir)
    assert torch.allclose(a["classifier.weight"], b["classifier.weight"], atol=1e-6)
    with pytest.raises(ImoodError, match="extra classifier output"):
        train(cfg_for(tmp_path, "bd", epochs=1, ood_metric="ada_bin_disc", init_from=str(base.run_dir)), rt,
              bench=bench)
    assert not (tmp_path / "bd").exists()


def test_reference_spelling_of_model_names(tmp_path, bench):
    res = train(cfg_for(tmp_path, "caps", epochs=1, model="IMOOD_ResNet_Micro"), setup("cpu"), bench=bench)
    assert json.loads((res.run_dir / "config.json").read_text())["model"] == "imood_resnet_micro"


def test_fast_step_equals_a_per_image_torchvision_step(tmp_path):
    """The device-batched training step against the plain one: per-image torchvision transforms with
    the same random draws, then the same loss and optimizer; the weights after two steps agree."""
    from augment_reference import per_image

    from imood_cli.data.base import Benchmark, ImageSet
    from imood_cli.data.pipeline.augment import CIFAR_AUGMENT, draw
    from imood_cli.engine.training.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    n = 40
    minus = lambda k: torch.full((k,), -1)
    images = torch.randint(0, 256, (n, 3, 12, 12), dtype=torch.uint8, generator=g)
    aux = torch.randint(0, 256, (30, 3, 12, 12), dtype=torch.uint8, generator=g)
    bench = Benchmark("tiny-rgb", 4, [16, 12, 8, 4], ImageSet("t", torch.arange(n) % 4, images),
                      ImageSet("t", torch.arange(8) % 4, images[:8]), {"x": ImageSet("x", minus(8), aux[:8])},
                      ImageSet("a", minus(30), aux), 3, 12, CIFAR_AUGMENT)
    opts = dict(dataset="cifar10", model="imood_resnet_micro", batch_size=8, epochs=1, save_root=str(tmp_path),
                device="cpu", ood_metric="ada_bin_disc", aux_ood_loss="pascl")
    fast = Trainer(resolve_config({**opts, "name": "fast"}), setup("cpu"), bench=bench)
    slow = Trainer(resolve_config({**opts, "name": "slow"}), setup("cpu"), bench=bench)
    epoch = fast._epoch(0)
    gen_fast, gen_slow = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for step in range(2):
        b = epoch.batch(step)
        fast.train_step(b, gen_fast)
        rows = torch.cat([b.view1, b.view2, b.ood])
        d = draw(CIFAR_AUGMENT, rows.shape[0], rows.device, gen_slow)
        x = torch.stack([per_image(rows[i], d, i, CIFAR_AUGMENT) for i in range(rows.shape[0])])
        slow.optimize(slow.loss_on(x, b.labels, b.ood.shape[0]))
    for (k, a), (_, c) in zip(fast.core.state_dict().items(), slow.core.state_dict().items()):
        assert torch.allclose(a.float(), c.float(), atol=1e-4), k
