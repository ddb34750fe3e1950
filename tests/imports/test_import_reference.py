"""Importing checkpoints of the reference code (PASCL/ImOOD CIFAR ResNet18 .pth state dicts)."""

import json
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imood_cli.engine.imports import import_reference
from imood_cli.engine.runs.checkpoint import load_tensors
from imood_cli.engine.scoring.loading import load_model
from imood_cli.errors import ImoodError
from imood_cli.models.reference import load_reference, read_reference_file


@pytest.fixture(autouse=True, scope="module")
def _command():
    """Register `imood import-ckpt` in-process until cli/app.py does it itself."""
    from imood_cli.cli.app import app
    from imood_cli.cli.import_ckpt import import_ckpt

    if not any(c.name == "import-ckpt" for c in app.registered_commands):
        app.command("import-ckpt")(import_ckpt)
    yield


# ---- the reference architecture, written after models/resnet.py of amazon-science/long-tailed-ood-detection
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ReferenceResNet18(nn.Module):
    def __init__(self, num_classes=10, extra=0, in_chans=3, heads=True):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, 2, 1)
        self.layer2 = self._make_layer(128, 2, 2)
        self.layer3 = self._make_layer(256, 2, 2)
        self.layer4 = self._make_layer(512, 2, 2)
        self.linear = nn.Linear(512, num_classes + extra)  # + bin_disc's ID-vs-OOD logit
        if heads:  # the ImOOD heads
            self.aux_linear = nn.Linear(1, 1)
            self.projection = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
            self.lambda_linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        feats = F.adaptive_avg_pool2d(out, 1).flatten(1)  # = F.avg_pool2d(out, 4) on 32×32 inputs
        return self.linear(feats), feats


def randomized(model, seed=0):
    """Random weights and non-trivial BatchNorm statistics, so a wrong mapping cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif name.endswith("num_batches_tracked"):
                t.fill_(1234)
            elif name.endswith("bn1.weight") or name.endswith("bn2.weight") or ".shortcut.1.weight" in name:
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif t.is_floating_point():
                fan_in = t[0].numel() if t.ndim > 1 else 10
                t.copy_(torch.randn(t.shape, generator=g) / fan_in ** 0.5)
    return model.eval()


K = 10
COUNTS = "5000,2997,1796,1077,645,387,232,139,83,50"


@pytest.fixture(scope="module")
def reference_bin_disc():
    torch.manual_seed(0)
    return randomized(ReferenceResNet18(K, extra=1))


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory, reference_bin_disc):
    path = tmp_path_factory.mktemp("ref") / "latest.pth"
    torch.save(reference_bin_disc.state_dict(), path)
    return path


def test_imported_model_matches_the_reference(tmp_path, reference_bin_disc, reference_file):
    counts = [int(c) for c in COUNTS.split(",")]
    res = import_reference(reference_file, tmp_path / "imp", "cifar10", class_counts=counts)
    assert res.arch.backbone == "resnet18" and res.arch.cifar_stem and res.arch.extra_outputs == 1
    assert res.heads_missing == []
    loaded = load_model(res.out)  # the run folder loads like any trained one
    model = loaded.model
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_logits, want_feats = reference_bin_disc(x)
        got = model(x, projections=True, lambdas=True)
        ref = reference_bin_disc
        want_proj = F.normalize(ref.projection(want_feats), dim=1)
        want_lambda = torch.exp(ref.lambda_linear(want_feats)).clamp(min=1e-4)
    torch.testing.assert_close(got.logits, want_logits[:, :K], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.extra, want_logits[:, K:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.features, want_feats, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.projections, want_proj, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.lambdas, want_lambda, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.aux_linear.weight, ref.aux_linear.weight)
    # BN statistics came across (not left at 0/1)
    torch.testing.assert_close(model.backbone.layer2[0].downsample[1].running_var,
                               ref.layer2[0].shortcut[1].running_var)
    meta = loaded.meta
    assert meta["format"] == "imood-model" and meta["class_counts"] == [int(c) for c in COUNTS.split(",")]
    assert meta["metric"] == "bin_disc" and meta["dataset"] == "cifar10"
    assert meta["imported_from"]["sha256"] == res.source_sha256
    cfg = json.loads((res.out / "config.json").read_text())
    assert cfg["dataset"] == "cifar10" and cfg["imbalance_ratio"] == 0.01 and cfg["model"] == "resnet18"


def test_container_keys_ddp_prefix_and_missing_heads(tmp_path, cli_code):
    torch.manual_seed(1)
    ref = randomized(ReferenceResNet18(K, heads=False), seed=3)
    sd = {"module." + k: v for k, v in ref.state_dict().items()}
    path = tmp_path / "ddp.pth"
    torch.save({"epoch": 180, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path)
    model, info = load_reference(path, K)
    assert info.container == "state_dict" and info.stripped_prefix == "module." and info.epoch == 180
    assert info.arch.extra_outputs == 0
    assert sorted(info.heads_missing) == ["aux_linear", "lambda_head", "projection"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref(x)[0], atol=1e-4, rtol=1e-4)
    assert model(x).extra is None
    # the missing heads are reported on the command line and the import still succeeds
    code = cli_code(["import-ckpt", path, "--ds", "cifar10", "--class-counts", COUNTS, "--out", tmp_path / "run",
                     "--ood_metric", "energy"])
    assert code == 0
    _, meta = load_tensors(tmp_path / "run" / "model.safetensors")
    assert meta["metric"] == "energy" and meta["epochs"] == 180
    assert meta["imported_from"]["fresh_heads"] == ["aux_linear", "projection", "lambda_head"]


def test_import_then_score_on_digits(tmp_path, cli):
    """End to end through the CLI: a 1-channel reference ResNet18 for the 6-class digits benchmark."""
    torch.manual_seed(2)
    ref = randomized(ReferenceResNet18(6, in_chans=1), seed=5)
    path = tmp_path / "digits.pth"
    torch.save({"model": ref.state_dict()}, path)
    code, out, err = cli(["import-ckpt", path, "--ds", "digits", "--out", tmp_path / "d"])
    assert code == 0, err
    _, meta = load_tensors(tmp_path / "d" / "model.safetensors")
    from imood_cli.data.benchmarks.digits import Digits

    assert meta["class_counts"] == list(Digits().load(None).class_counts)
    code, out, err = cli(["score", tmp_path / "d", "-m", "msp,ada_energy"])
    assert code == 0, err
    assert (tmp_path / "d" / "scores" / "ada_energy.safetensors").exists()


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_hostile_pickle_is_refused(tmp_path, cli, how):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"conv1.weight": torch.zeros(1)}, "x": Evil(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(ImoodError, match="refused .*not a plain weights file"):
        read_reference_file(path)
    code, out, err = cli(["import-ckpt", path, "--ds", "cifar10", "--class-counts", COUNTS, "--out",
                          tmp_path / "o"])
    assert code == 2 and not marker.exists()
    assert err.startswith("imood: error: refused") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_truncated_and_junk_files(tmp_path, cli, reference_file):
    data = reference_file.read_bytes()
    cases = {"trunc.pth": data[: len(data) // 2], "empty.pth": b"", "tiny.pth": data[:10],
             "junk.pth": bytes(range(256)) * 4}
    for name, blob in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        code, out, err = cli(["import-ckpt", p, "--ds", "cifar10", "--class-counts", COUNTS, "--out",
                              tmp_path / ("o" + name)])
        assert code == 2, name
        assert err.startswith("imood: error:") and len(err.strip().splitlines()) == 1, (name, err)
        assert "corrupt or truncated" in err or "refused" in err, (name, err)
        assert "Traceback" not in err
    code, _, err = cli(["import-ckpt", tmp_path / "nope.pth", "--ds", "cifar10", "--class-counts", COUNTS])
    assert code == 2 and "not found" in err


def _expect_error(tmp_path, cli, sd, match, counts=COUNTS, extra=()):
    p = tmp_path / "bad.pth"
    torch.save(sd, p)
    code, out, err = cli(["import-ckpt", p, "--ds", "cifar10", "--class-counts", counts, "--out", tmp_path / "o",
                          "--force", *extra])
    assert code == 2 and err.startswith("imood: error:") and len(err.strip().splitlines()) == 1, err
    assert match in err, err


def test_mismatches_are_one_clear_error(tmp_path, cli, reference_bin_disc):
    sd = reference_bin_disc.state_dict()
    _expect_error(tmp_path, cli, sd, "wrong number of classes", counts="1,2,3")  # 11 outputs for 3 classes
    _expect_error(tmp_path, cli, {**sd, "dual_linear.weight": torch.zeros(2, 2)}, "dual_linear.weight")
    _expect_error(tmp_path, cli, {k: v for k, v in sd.items() if k != "layer3.1.conv2.weight"},
                  "missing 1 required tensor")
    _expect_error(tmp_path, cli, {k: v for k, v in sd.items() if k != "projection.2.bias"},
                  "projection head is incomplete")
    _expect_error(tmp_path, cli, {**sd, "lambda_linear.weight": torch.zeros(5, 512)},
                  "lambda_linear.weight has shape")
    _expect_error(tmp_path, cli, {**sd, "layer1.0.conv1.weight": torch.zeros(64, 64, 5, 5)}, "architecture")
    _expect_error(tmp_path, cli, {k: v for k, v in sd.items() if not k.startswith("layer4.1.")}, "blocks per stage")
    _expect_error(tmp_path, cli, {**sd, "linear.bias": torch.full((11,), float("nan"))}, "NaN")
    _expect_error(tmp_path, cli, [1, 2, 3], "not a state dict")
    _expect_error(tmp_path, cli, {"epoch": 3, "acc": 0.5}, "holds no state dict")
    _expect_error(tmp_path, cli, sd, "extra classifier output", extra=("--ood_metric", "energy"))
    _expect_error(tmp_path, cli, sd, "unknown method", extra=("--ood_metric", "bogus"))


def test_refuses_to_overwrite_a_run(tmp_path, cli, reference_file):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = cli(["import-ckpt", reference_file, "--ds", "cifar10", "--class-counts", COUNTS, "--out", out])
    assert code == 2 and "already exists" in err


def test_torchvision_style_names_and_imagenet_stem(tmp_path):
    """`downsample` / `fc` names and a 7×7 stem (torchvision's ResNet, which timm's matches layer for layer)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(4)
    ref = randomized(torchvision.models.resnet18(num_classes=5), seed=7)
    path = tmp_path / "tv.pth"
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, path)
    model, info = load_reference(path, 5)
    assert info.arch.backbone == "resnet18" and not info.arch.cifar_stem and info.arch.extra_outputs == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref(x), atol=1e-4, rtol=1e-4)


def test_a_safetensors_file_is_not_imported(tmp_path, cli):
    from safetensors.torch import save_file

    p = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, p)
    code, _, err = cli(["import-ckpt", p, "--ds", "cifar10", "--class-counts", COUNTS, "--out", tmp_path / "o"])
    assert code == 2 and "safetensors file" in err
