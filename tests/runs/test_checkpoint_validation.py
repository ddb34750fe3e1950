"""Damaged or mismatched model files: `imood score RUN` says what is wrong in one line and exits 2."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from imood_cli.engine.runs.checkpoint import load_tensors, save_tensors


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, cli_code):
    root = tmp_path_factory.mktemp("runs")
    code = cli_code(["train", "--ds", "digits", "--epochs", "1", "--srp", root, "--name", "r", "--device", "cpu"])
    assert code == 0
    run = root / "r"
    assert (run / "model.safetensors").exists()
    return run


def copy_run(good_run, tmp_path, name="run"):
    d = tmp_path / name
    d.mkdir()
    for f in ("model.safetensors", "config.json"):
        shutil.copy(good_run / f, d / f)
    return d


def score_fails(run, cli, *match):
    code, out, err = cli(["score", run, "-m", "msp,ada_msp", "--device", "cpu"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("imood: error:"), err
    assert "Traceback" not in err + out
    for m in match:
        assert m in lines[0], lines[0]
    return lines[0]


def model(run):
    return run / "model.safetensors"


def edit(run, fn):
    """Rewrite model.safetensors with fn(tensors, meta) applied (in place)."""
    tensors, meta = load_tensors(model(run))
    fn(tensors, meta)
    save_tensors(model(run), tensors, meta)


def test_the_good_run_scores(good_run, tmp_path, cli):
    run = copy_run(good_run, tmp_path)
    code, out, err = cli(["score", run, "-m", "msp", "--device", "cpu"])
    assert code == 0, err
    assert (run / "scores" / "msp.safetensors").exists()


# ---- damaged files
def _truncate(frac):
    def damage(p):
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * frac)])
    return damage


def _header_garbage(p):
    data = bytearray(p.read_bytes())
    data[8:40] = b"#" * 32
    p.write_bytes(bytes(data))


def _header_length_past_end(p):
    data = bytearray(p.read_bytes())
    data[:8] = (len(data) * 4).to_bytes(8, "little")
    p.write_bytes(bytes(data))


def _metadata_not_json(p):
    save_file(load_file(p), p, metadata={"imood": "{not json"})


DAMAGE = {
    "truncated to half": _truncate(0.5),
    "truncated to 99%": _truncate(0.99),
    "truncated to 4 bytes": lambda p: p.write_bytes(p.read_bytes()[:4]),
    "empty": lambda p: p.write_bytes(b""),
    "zeros": lambda p: p.write_bytes(bytes(4096)),
    "random bytes": lambda p: p.write_bytes(bytes((i * 7919) % 251 for i in range(10000))),
    "garbage header": _header_garbage,
    "header length past the end": _header_length_past_end,
    "metadata not JSON": _metadata_not_json,
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_corrupt_model_file(good_run, tmp_path, cli, how):
    run = copy_run(good_run, tmp_path)
    DAMAGE[how](model(run))
    score_fails(run, cli, "corrupt or truncated")


def test_model_file_is_a_folder(good_run, tmp_path, cli):
    run = copy_run(good_run, tmp_path)
    model(run).unlink()
    model(run).mkdir()
    score_fails(run, cli, "folder")


def test_no_model_yet(good_run, tmp_path, cli):
    run = copy_run(good_run, tmp_path)
    model(run).unlink()
    (run / "checkpoint").mkdir()
    score_fails(run, cli, "no model.safetensors", "--resume")


def test_nonexistent_run(tmp_path, cli):
    score_fails(tmp_path / "nope", cli, "not found")


def test_a_training_checkpoint_is_not_a_model(good_run, tmp_path, cli):
    run = copy_run(good_run, tmp_path)
    ckpt = sorted((good_run / "checkpoint").glob("epoch_*.safetensors"))[-1]
    shutil.copy(ckpt, model(run))
    score_fails(run, cli, "training checkpoint")


def test_metadata_without_architecture(good_run, tmp_path, cli):
    run = copy_run(good_run, tmp_path)
    save_file(load_file(model(run)), model(run))
    score_fails(run, cli, "not an imood model file")


# ---- files that are intact but do not fit
def _set_arch(**kw):
    return lambda t, m: m["architecture"].update(kw)


def _drop(prefix):
    def fn(t, m):
        for k in [k for k in t if k.startswith(prefix)]:
            del t[k]
    return fn


def _fewer_classifier_rows(t, m):
    t["classifier.weight"] = t["classifier.weight"][:3].clone()
    t["classifier.bias"] = t["classifier.bias"][:3].clone()


def _extra_tensor(t, m):
    t["mystery.weight"] = torch.zeros(3)


MISMATCH = {
    "another architecture": (_set_arch(backbone="resnet18"), "architecture"),
    "unknown backbone": (_set_arch(backbone="no_such_net_v9"), "unknown timm model"),
    "wrong number of classes (metadata)": (_set_arch(num_classes=10), "wrong number of classes"),
    "wrong number of classes (weights)": (_fewer_classifier_rows, "wrong number of classes"),
    "extra output not declared": (_set_arch(extra_outputs=0), "classifier.weight"),
    "wrong input channels": (_set_arch(in_chans=3), "wrong architecture"),
    "no cifar stem": (_set_arch(cifar_stem=False), "conv1"),
    "missing projection head": (_drop("projection."), "projection"),
    "missing aux_linear head": (_drop("aux_linear."), "aux_linear"),
    "missing lambda head": (_drop("lambda_head."), "lambda_head"),
    "missing backbone layer": (_drop("backbone.layer3."), "backbone.layer3"),
    "unknown tensor": (_extra_tensor, "mystery.weight"),
}


@pytest.mark.parametrize("how", list(MISMATCH))
def test_mismatched_model_file(good_run, tmp_path, cli, how):
    fn, match = MISMATCH[how]
    run = copy_run(good_run, tmp_path)
    edit(run, fn)
    score_fails(run, cli, match)


def test_nan_weights_are_reported(good_run, tmp_path, cli):
    run = copy_run(good_run, tmp_path)
    edit(run, lambda t, m: t.__setitem__("classifier.weight", torch.full_like(t["classifier.weight"], float("nan"))))
    score_fails(run, cli, "NaN")


# Malformed metadata: load_model checks every field it relies on.
BAD_METADATA = {
    "architecture is a string": lambda t, m: m.__setitem__("architecture", "resnet18"),
    "negative number of classes": _set_arch(num_classes=-3),
    "number of classes is a string": _set_arch(num_classes="6"),
    "class counts of another length": lambda t, m: m.__setitem__("class_counts", [5, 4]),
    "class counts not numbers": lambda t, m: m.__setitem__("class_counts", "many"),
}


@pytest.mark.parametrize("how", list(BAD_METADATA))
def test_bad_metadata(good_run, tmp_path, cli, how):
    run = copy_run(good_run, tmp_path)
    edit(run, BAD_METADATA[how])
    score_fails(run, cli)


def test_the_training_config_is_not_needed_to_score_but_a_malformed_one_is_refused(good_run, tmp_path, cli):
    # the training configuration is informative: the architecture, counts and dataset suffice without it; one
    # that is there but not an object of options (a list, a string) is a damaged file, refused like any other
    run = copy_run(good_run, tmp_path)
    edit(run, lambda t, m: m.pop("config"))
    code, out, err = cli(["score", run, "-m", "msp", "--device", "cpu"])
    assert code == 0, err
    for bad in ([1], "lr=3"):
        edit(run, lambda t, m, bad=bad: m.__setitem__("config", bad))
        code, out, err = cli(["score", run, "-m", "msp", "--device", "cpu"])
        assert code == 2 and "config must be a JSON object of training options" in err, err
