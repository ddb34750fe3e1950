"""`imood import-model`: timm and torchvision classifiers with weights imood did not make, scored by every
detector their family supports, through the same run folders as trained models."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from imood_cli import api
from imood_cli.engine.benchmarks import load_benchmark
from imood_cli.engine.runs.checkpoint import load_tensors
from imood_cli.engine.runs.scorefile import ScoreSet
from imood_cli.registry import registry

CLASSES = {"ant": 12, "bee": 6, "fly": 3}  # long-tailed training counts
K = len(CLASSES)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a shared 2-core machine: a second OpenMP thread waits on the other's time slice (10x slower
    # under load); the CLI's own choice is one thread at these batch sizes too.
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def bench(tmp_path_factory, cli_code):
    """A folder benchmark of 32×32 colour images: 3 classes, an OOD folder of noise."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    for split, counts in (("train", CLASSES), ("test", {c: 4 for c in CLASSES})):
        for k, (c, n) in enumerate(counts.items()):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                base = np.zeros((32, 32, 3), np.uint8)
                base[..., k] = 160  # each class has its colour
                noise = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(base + noise).save(root / split / c / f"{i}.png")
    (root / "noise").mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "noise" / f"{i}.png")
    data = root / "data"
    code = cli_code(["data", "prepare", "folder", "--name", "tiny", "--drp", data, "--train", root / "train",
                     "--test", root / "test", "--ood-dir", root / "noise"])
    assert code == 0
    return {"root": root, "data": data}


def one_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("imood: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in err


def every_detector() -> set[str]:
    """What `-m all` scores for a model without extra outputs: each distinct score once (oe scores as msp)."""
    reg, out = registry(), set()
    for name in reg.names("method"):
        score = reg.score(name)
        if not name.startswith("ada_") and reg.alias_of(name) is None and not score.extra_outputs:
            out |= {name} | ({f"ada_{name}"} if score.ada_scale is not None else set())
    return out


def timm_model(name, **options):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=K, **options).eval()


def tv_model(name):
    torch.manual_seed(0)
    return torchvision.models.get_model(name, num_classes=K).eval()


FAMILIES = {
    "timm-resnet18": ("--timm", "resnet18", lambda: timm_model("resnet18"), "safetensors", None),
    "timm-vit": ("--timm", "vit_tiny_patch16_224", lambda: timm_model("vit_tiny_patch16_224", img_size=32), "pth",
                 "unavailable: ash:layer=map, scale:layer=map"),
    "tv-resnet18": ("--torchvision", "resnet18", lambda: tv_model("resnet18"), "pth", None),
    "tv-mobilenet_v3_small": ("--torchvision", "mobilenet_v3_small", lambda: tv_model("mobilenet_v3_small"), "pth",
                              None),
}


def import_run(bench, tmp_path, cli, family):
    flag, name, build, kind, _ = FAMILIES[family]
    model = build()
    weights = tmp_path / f"w.{kind}"
    if kind == "safetensors":
        save_file(model.state_dict(), weights)
    else:
        torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, weights)
    run = tmp_path / "run"
    code, out, err = cli(["import-model", flag, name, "--weights", weights, "--ds", "tiny", "--drp",
                          bench["data"], "--out", run])
    assert code == 0, err
    return model, run, out, err


@pytest.mark.parametrize("family", FAMILIES)
def test_import_then_score_every_detector(bench, tmp_path, cli, family):
    model, run, out, err = import_run(bench, tmp_path, cli, family)
    flag, name, _, _, unavailable = FAMILIES[family]
    tensors, meta = load_tensors(run / "model.safetensors")
    assert meta["imported_from"]["source"] == flag.lstrip("-") and meta["class_counts"] == list(CLASSES.values())
    assert meta["preprocess"]["image_size"] == 32 and meta["preprocess"]["in_chans"] == 3
    cfg_mean = (timm.models.get_pretrained_cfg(name).mean if flag == "--timm"
                else torchvision.models.get_model_weights(name).DEFAULT.transforms().mean)
    assert meta["preprocess"]["mean"] == pytest.approx(list(cfg_mean))
    assert json.loads((run / "config.json").read_text())["dataset"] == "tiny"
    if unavailable:
        assert unavailable in " ".join(err.split())
    code, out, err = cli(["score", run, "-m", "all", "--device", "cpu", "-b", "16"])
    assert code == 0, err
    written = {p.stem.replace("-", ":") for p in (run / "scores").glob("*.safetensors")}
    assert written == every_detector()
    rows: list[str] = []  # the name column, with the lines of a wrapped name joined
    for cells in (line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│")):
        if rows and not any(c.strip() for c in cells[1:]):
            rows[-1] += " " + cells[0].strip()
        else:
            rows.append(cells[0].strip())
    # each distinct score once, naming the methods that score with it (the files are the owner's only)
    # (a row may name more: on a random-weight model other scores can be identical by value too)
    named = {r.split(" (= ")[0]: set(r.split(" (= ")[1].rstrip(")").split(", ")) if " (= " in r else set()
             for r in rows}
    assert {"oe", "oecc", "opensampling"} <= named["msp"] and "balenergy" in named["energy"], rows
    assert {"ada_oe", "ada_oecc", "ada_opensampling"} <= named["ada_msp"], rows
    assert not any(r.startswith(("oe", "ada_oe")) for r in rows)
    if unavailable:
        assert unavailable in " ".join(err.split())
    code, out, err = cli(["eval", run / "scores" / "ada_react.safetensors", "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc["ood"]) == {"noise", "mean"} and {"many", "medium", "few"} <= set(doc["id"])


def benchmark_inputs(bench, mean, std):
    """The benchmark's images as the imported model sees them: [0, 1], then normalized with its recipe."""
    b = load_benchmark("tiny", bench["data"], num_ood_samples=0)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    norm = lambda images: (images.float() / 255 - m) / s
    ood = next(iter(b.ood_tests.values()))
    return b, norm(b.train.images), b.train.labels, norm(b.test.images), b.test.labels, norm(ood.images)


def test_the_api_gives_the_cli_scores(bench, tmp_path, cli):
    model, run, _, _ = import_run(bench, tmp_path, cli, "timm-resnet18")
    detectors = ["msp", "ada_energy", "react", "ada_react", "ash", "scale", "dice", "vim", "knn:k=5", "maha", "odin",
                 "fdbd", "rmd", "gradnorm", "klm"]
    code, _, err = cli(["score", run, "-m", ",".join(detectors), "--device", "cpu", "-b", "16"])
    assert code == 0, err
    cfg = timm.models.get_pretrained_cfg("resnet18")
    b, train_x, train_y, test_x, test_y, ood_x = benchmark_inputs(bench, cfg.mean, cfg.std)
    got = api.score_model(model, [(test_x, test_y)], {"noise": [ood_x]}, detectors,
                          class_counts=b.class_counts, fit_loader=[(train_x, train_y)])
    for label in detectors:
        ss = ScoreSet.load(run / "scores" / f"{label.replace(':', '-')}.safetensors")
        np.testing.assert_allclose(got.id_scores[label].numpy(), ss.id_score, rtol=1e-4, atol=1e-4, err_msg=label)
        np.testing.assert_allclose(got.ood_scores[label]["noise"].numpy(), ss.ood_score["noise"], rtol=1e-4,
                                   atol=1e-4, err_msg=label)
        np.testing.assert_array_equal(got.id_preds.numpy(), ss.id_pred)
        assert got.evaluation[label]["ood"]["mean"]["auroc"] == pytest.approx(
            api.evaluate(ss.id_score, ss.ood_score)["ood"]["mean"]["auroc"], abs=1e-6)


def test_weights_that_do_not_fit_are_one_clear_error(bench, tmp_path, cli):
    model = timm_model("resnet18")
    sd = model.state_dict()

    def expect(state, *needles, extra=()):
        path = tmp_path / "bad.pth"
        torch.save(state, path)
        code, _, err = cli(["import-model", "--timm", "resnet18", "--weights", path, "--ds", "tiny", "--drp",
                            bench["data"], "--out", tmp_path / "o", *extra])
        one_error(code, err, *needles)
        assert not (tmp_path / "o" / "model.safetensors").exists()

    ten = timm.create_model("resnet18", num_classes=10).state_dict()
    expect(ten, "the classifier fc has 10 outputs but the benchmark has 3 classes")
    expect({k: v for k, v in sd.items() if k != "layer3.1.conv2.weight"}, "1 missing (layer3.1.conv2.weight)")
    expect({**sd, "extra.weight": torch.zeros(2)}, "1 unexpected (extra.weight)")
    expect({**sd, "conv1.weight": torch.zeros(64, 1, 7, 7)}, "conv1.weight has shape (64, 1, 7, 7)", "--in-chans")
    expect({**sd, "fc.bias": torch.full((K,), float("nan"))}, "NaN")
    expect([1, 2], "not a state dict")
    expect(sd, "give --weights FILE or --pretrained, not both", extra=("--pretrained",))
    code, _, err = cli(["import-model", "--timm", "resnet18", "--torchvision", "resnet18", "--ds", "tiny"])
    one_error(code, err, "--timm NAME or --torchvision NAME")
    code, _, err = cli(["import-model", "--timm", "resnet_18", "--ds", "tiny", "--drp", bench["data"], "--out",
                        tmp_path / "o"])
    one_error(code, err, "unknown timm model 'resnet_18'", "resnet18")
    # Lightning-style `model.` prefixes are removed, the model's own names never
    path = tmp_path / "lightning.pth"
    torch.save({"state_dict": {"model." + k: v for k, v in sd.items()}}, path)
    code, out, err = cli(["import-model", "--timm", "resnet18", "--weights", path, "--ds", "tiny", "--drp",
                          bench["data"], "--out", tmp_path / "ok"])
    assert code == 0, err
    assert load_tensors(tmp_path / "ok" / "model.safetensors")[1]["imported_from"]["stripped_prefix"] == "model."


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_a_pickle_that_would_run_code_is_refused(bench, tmp_path, cli, how):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": timm_model("resnet18").state_dict(), "x": Evil(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    code, _, err = cli(["import-model", "--timm", "resnet18", "--weights", path, "--ds", "tiny", "--drp",
                        bench["data"], "--out", tmp_path / "o"])
    one_error(code, err, "refused", "not a plain weights file")
    assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag,name", [("--timm", "resnet18"), ("--torchvision", "resnet18")])
def test_pretrained_offline_fails_at_once(bench, tmp_path, cli, monkeypatch, flag, name):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    counts = ",".join(["5"] * 1000)  # ImageNet's classes, the pretrained classifier's
    start = time.monotonic()
    code, _, err = cli(["import-model", flag, name, "--pretrained", "--ds", "tiny", "--drp", bench["data"],
                        "--class-counts", counts, "--out", tmp_path / "o"])
    assert time.monotonic() - start < 5
    one_error(code, err, "no pretrained weights", "local cache", "--weights FILE")


def test_pretrained_from_the_local_caches(bench, tmp_path, cli, monkeypatch):
    """What timm and torchvision would have downloaded, placed in their caches by hand: read from there."""
    counts = ",".join(["5"] * 1000)
    torch.manual_seed(7)
    ref = timm.create_model("resnet18").eval()  # 1000 classes, as the pretrained weights
    snap = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc123")
    (snap / "snapshots" / "abc123").mkdir(parents=True)
    save_file(ref.state_dict(), snap / "snapshots" / "abc123" / "model.safetensors")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    code, _, err = cli(["import-model", "--timm", "resnet18", "--pretrained", "--ds", "tiny", "--drp",
                        bench["data"], "--class-counts", counts, "--out", tmp_path / "t"])
    assert code == 0, err
    tensors, meta = load_tensors(tmp_path / "t" / "model.safetensors")
    assert torch.equal(tensors["classifier.weight"], ref.fc.weight) and torch.equal(
        tensors["backbone.layer4.1.conv2.weight"], ref.layer4[1].conv2.weight)
    assert meta["imported_from"]["weights"] == "pretrained (local cache)"
    # torchvision: its DEFAULT weights' file in torch hub's checkpoint folder
    torch.manual_seed(8)
    tv = torchvision.models.resnet18().eval()
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(tv.state_dict(), hub / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code, _, err = cli(["import-model", "--torchvision", "resnet18", "--pretrained", "--ds", "tiny", "--drp",
                        bench["data"], "--class-counts", counts, "--out", tmp_path / "v"])
    assert code == 0, err
    tensors, _ = load_tensors(tmp_path / "v" / "model.safetensors")
    assert torch.equal(tensors["classifier.weight"], tv.fc.weight)
    # ImageNet's 1000 classes are not the benchmark's 3: refused, fine-tuned weights go through --weights
    code, _, err = cli(["import-model", "--timm", "resnet18", "--pretrained", "--ds", "tiny", "--drp",
                        bench["data"], "--out", tmp_path / "x"])
    one_error(code, err, "classifies 1000 classes but the benchmark has 3")


def test_force_replaces_only_an_imood_run(bench, tmp_path, cli):
    model, run, _, _ = import_run(bench, tmp_path, cli, "timm-resnet18")
    weights = tmp_path / "w.safetensors"
    argv = ["import-model", "--timm", "resnet18", "--weights", weights, "--ds", "tiny", "--drp", bench["data"]]
    code, _, err = cli([*argv, "--out", run])
    one_error(code, err, "already exists")
    assert cli(["score", run, "-m", "msp", "--device", "cpu", "-b", "16"])[0] == 0
    assert (run / "scores" / "msp.safetensors").exists()
    code, _, err = cli([*argv, "--out", run, "--force"])
    assert code == 0, err
    assert not (run / "scores" / "msp.safetensors").exists()  # scores of the replaced model are gone
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    code, _, err = cli([*argv, "--out", other, "--force"])
    one_error(code, err, "not an imood run folder")
    assert (other / "notes.txt").read_text() == "keep"


def test_grey_images_and_another_input_size(bench, tmp_path, cli):
    """--in-chans 1 turns the benchmark's colour images to luma; --image-size resizes them for the model."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=K, in_chans=1).eval()
    weights = tmp_path / "g.safetensors"
    save_file(model.state_dict(), weights)
    run = tmp_path / "g"
    code, _, err = cli(["import-model", "--timm", "resnet18", "--weights", weights, "--in-chans", "1",
                        "--image-size", "48", "--mean", "0.5", "--std", "0.25", "--ds", "tiny", "--drp",
                        bench["data"], "--out", run])
    assert code == 0, err
    meta = load_tensors(run / "model.safetensors")[1]
    assert meta["preprocess"] == {"mean": [0.5], "std": [0.25], "image_size": 48, "in_chans": 1, "resize": "bilinear",
                                  "source": "--mean/--std"}
    code, _, err = cli(["score", run, "-m", "msp", "--device", "cpu", "-b", "16"])
    assert code == 0, err
    b = load_benchmark("tiny", bench["data"], num_ood_samples=0)
    x = b.test.images.float() / 255
    luma = 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = torch.nn.functional.interpolate(luma, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        msp = -torch.softmax(model((x - 0.5) / 0.25), dim=1).amax(1)
    np.testing.assert_allclose(ScoreSet.load(run / "scores" / "msp.safetensors").id_score, msp.numpy(), rtol=1e-5,
                               atol=1e-6)


def test_model_file_metadata_is_checked(bench, tmp_path, cli):
    from imood_cli.engine.runs.checkpoint import save_tensors

    _, run, _, _ = import_run(bench, tmp_path, cli, "tv-resnet18")
    tensors, meta = load_tensors(run / "model.safetensors")
    for change, needle in [(lambda m: m["preprocess"].update(std=[0, 1, 1]), "std must be > 0"),
                           (lambda m: m["architecture"].update(source="keras"), "architecture.source"),
                           (lambda m: m["architecture"].update(split="half"), "architecture.split")]:
        bad = json.loads(json.dumps(meta))
        change(bad)
        bad.pop("tensors_sha256", None)
        save_tensors(Path(tmp_path / "bad" / "model.safetensors"), tensors, bad)
        code, _, err = cli(["score", tmp_path / "bad", "-m", "msp", "--device", "cpu", "-b", "16"])
        one_error(code, err, needle)
