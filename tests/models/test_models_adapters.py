"""Adapters against the models they split: for every family, the stages an adapter hands to detectors give back
the model's own logits, the pooled features are what its classifier reads, and imood's model built from the name
holds the same network (the class of bug where the classifier was sized with timm's num_features, 576, while
MobileNetV3 pools to head_hidden_size, 1024)."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from imood_cli.engine.runs.checkpoint import load_tensors, save_tensors
from imood_cli.engine.scoring.loading import load_model
from imood_cli.errors import ImoodError
from imood_cli.models.adapter import LAST_LINEAR, TIMM, WHOLE, LastLinear, Split, Whole, adapter_for
from imood_cli.models.imood_model import Architecture, ImOODModel
from imood_cli.models.importer import import_classifier
from imood_cli.models.preprocess import Preprocess, Recipe
from imood_cli.models.staged import StagedModel
from imood_cli.models.torchvision_family import TorchvisionAdapter

K, S = 5, 32
# One model per family timm's interface covers (tiny variants where timm has them), and one whose logits average
# two heads (distilled DeiT: no single linear classifier).
TIMM_FAMILIES = ["resnet18", "test_convnext", "test_vit", "test_efficientnet", "mobilenetv3_small_050",
                 "mobilenetv2_050", "regnetx_002", "densenet121", "deit_tiny_distilled_patch16_224"]
NO_CLASSIFIER = {"deit_tiny_distilled_patch16_224"}
TOKENS = {"test_vit", "deit_tiny_distilled_patch16_224"}


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a shared 2-core machine: a second OpenMP thread waits on the other's time slice (10x slower
    # under load); the CLI's own choice is one thread at these batch sizes too.
    torch.set_num_threads(1)
    yield


def close(a, b, tol=1e-4):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def images(n=2, seed=0, c=3, size=S):
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def timm_whole(name):
    torch.manual_seed(0)
    options = {"img_size": S} if timm.models.get_pretrained_cfg(name).fixed_input_size else {}
    return timm.create_model(name, num_classes=K, **options).eval(), options.get("img_size")


@pytest.mark.parametrize("name", TIMM_FAMILIES)
def test_timm_family(name, tmp_path):
    whole, img_size = timm_whole(name)
    x = images()
    staged = StagedModel(whole)
    assert staged.adapter is TIMM
    with torch.no_grad():
        own = whole(x)
        out = staged(x, feature_map=True)
        close(out.logits, own)
        caps = staged.capabilities(x[:1])
        assert ("feature_map" in caps.provides) == (name not in TOKENS)
        assert ("classifier" in caps.provides) == (name not in NO_CLASSIFIER)
        assert "features" in caps.provides
        if name not in NO_CLASSIFIER:
            assert out.features.shape[1] == whole.get_classifier().in_features
            close(staged.logits_from_features(out.features), own)
        if name not in TOKENS:
            close(staged.logits_from_feature_map(out.feature_map), own)
    # imported from a weights file, it is the same network; imood's classifier reads the pooled features
    # (timm's head_hidden_size, not num_features)
    path = tmp_path / "w.safetensors"
    save_file(whole.state_dict(), path)
    imported = import_classifier("timm", name, K, image_size=S, weights=path)
    mine = imported.model
    assert imported.arch.split == ("none" if name in NO_CLASSIFIER else "classifier")
    assert imported.arch.img_size == img_size
    with torch.no_grad():
        got = mine(x, feature_map=True)
    close(got.logits, own)
    if name not in NO_CLASSIFIER:
        assert mine.feature_dim == got.features.shape[1] == out.features.shape[1] == mine.classifier.in_features
        cls = whole.pretrained_cfg["classifier"]
        assert imported.classifier == cls
        assert set(mine.backbone.state_dict()) == {k for k in whole.state_dict() if not k.startswith(cls + ".")}


def test_mobilenetv3_pools_wider_than_its_last_map():
    """The latent bug: MobileNetV3's conv_head follows the pooling, 576 channels -> 1024 features."""
    model = ImOODModel(Architecture("mobilenetv3_small_100", K)).eval()
    assert model.backbone.num_features == 576 and model.feature_dim == 1024
    with torch.no_grad():
        out = model(images(), feature_map=True)
    assert out.feature_map.shape[1] == 576 and out.features.shape == (2, 1024) and out.logits.shape == (2, K)


def tv_small(family):
    """A small instance of each torchvision family class (the adapters go by class)."""
    from torchvision.models import convnext, densenet, mobilenetv2, vision_transformer

    torch.manual_seed(0)
    build = {
        "resnet": lambda: torchvision.models.resnet18(num_classes=K),
        "regnet": lambda: torchvision.models.regnet_x_400mf(num_classes=K),
        "mobilenet_v2": lambda: mobilenetv2.MobileNetV2(num_classes=K, width_mult=0.25),
        "mobilenet_v3": lambda: torchvision.models.mobilenet_v3_small(num_classes=K),
        "efficientnet": lambda: torchvision.models.efficientnet_b0(num_classes=K),
        "convnext": lambda: convnext.ConvNeXt([convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, None, 1)],
                                              num_classes=K),
        "densenet": lambda: densenet.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16,
                                              num_classes=K),
        "vit": lambda: vision_transformer.VisionTransformer(S, 16, 1, 2, 16, 32, num_classes=K),
        "vit_pre_logits": lambda: vision_transformer.VisionTransformer(S, 16, 1, 2, 16, 32, num_classes=K,
                                                                       representation_size=8),
    }[family]
    model = build()
    for m in model.modules():  # varied BN statistics, so that a wrong stage shows in the numbers
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


TV_FAMILIES = ["resnet", "regnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "convnext", "densenet", "vit",
               "vit_pre_logits"]


@pytest.mark.parametrize("family", TV_FAMILIES)
def test_torchvision_family(family):
    model = tv_small(family)
    adapter = adapter_for(model)
    assert isinstance(adapter, TorchvisionAdapter)
    x = images(3, 1)
    staged = StagedModel(model)
    with torch.no_grad():
        own = model(x)
        out = staged(x, feature_map=True)
        close(out.logits, own)
        head = adapter.classifier(model)
        assert isinstance(head, nn.Linear) and out.features.shape == (3, head.in_features)
        close(staged.logits_from_features(out.features), own)
        w, b = staged.class_weights()
        close(out.features @ w.T + b, own)
        caps = staged.capabilities(x[:1])
        spatial = not family.startswith("vit")
        assert caps.provides == ({"feature_map", "features", "classifier"} if spatial else {"features", "classifier"})
        if spatial:
            close(staged.logits_from_feature_map(out.feature_map), own)
        else:
            assert "tokens" in caps.missing["feature_map"]
    assert staged.check(x) is None


@pytest.mark.parametrize("family", TV_FAMILIES)
def test_torchvision_family_through_the_importer(family, tmp_path, monkeypatch):
    """The by-name path (build, split off the classifier, move the weights, rebuild from the model file's
    architecture) for each family, on the small instances (`imood import-model --torchvision` runs resnet18 and
    mobilenet_v3_small by their real names in test_import_model)."""
    from imood_cli.models import torchvision_family

    whole = tv_small(family)
    path = tmp_path / "w.pth"
    torch.save({"model": {"module." + k: v for k, v in whole.state_dict().items()}}, path)
    monkeypatch.setattr(torchvision_family, "check_name", lambda name: None)
    monkeypatch.setattr(torchvision_family, "create", lambda name, num_classes, image_size=None: tv_small(family))
    monkeypatch.setattr(torchvision_family, "fixed_size", lambda name: False)
    monkeypatch.setattr(torchvision_family, "recipe", lambda name: Recipe((0.5,) * 3, (0.25,) * 3, 224, "test"))
    imported = import_classifier("torchvision", family, K, image_size=S, weights=path)
    assert imported.arch.source == "torchvision" and imported.arch.split == "classifier"
    assert imported.container == "model" and imported.stripped_prefix == "module."
    assert imported.classifier == adapter_for(whole).classifier_name(whole)
    x = images(2, 2)
    with torch.no_grad():
        close(imported.model(x).logits, whole(x))
    rebuilt = ImOODModel(imported.arch)  # what loading the model file builds
    rebuilt.load_state_dict(imported.model.state_dict())
    with torch.no_grad():
        close(rebuilt.eval()(x).logits, whole(x))


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, K)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Doubled(Body):
    def forward(self, x):
        return 2 * super().forward(x)  # the last linear layer does not make the logits


def test_any_module_splits_at_its_last_linear_layer():
    torch.manual_seed(0)
    model = Body().eval()
    assert adapter_for(model) is LAST_LINEAR
    staged = StagedModel(model)
    x = images()
    with torch.no_grad():
        out = staged(x, feature_map=True)
        close(out.logits, model(x))
        f = torch.relu(model.conv(x)).mean(dim=(2, 3))
        close(out.features, f)
        caps = staged.capabilities(x)
    assert caps.provides == {"features", "classifier"} and out.feature_map is None
    assert "does not know where it pools" in caps.missing["feature_map"]
    assert staged.check(x) is None
    assert StagedModel(Doubled().eval()).check(x) == "its last linear layer does not make its logits"


def test_a_split_given_as_callables():
    torch.manual_seed(0)
    model = Body().eval()
    split = Split(feature_map=lambda x: torch.relu(model.conv(x)), pool=lambda m: m.mean(dim=(2, 3)), head=model.fc)
    staged = StagedModel(model, split)
    x = images()
    with torch.no_grad():
        out = staged(x, feature_map=True)
        close(out.logits, model(x))
        close(staged.logits_from_feature_map(out.feature_map), model(x))
        assert staged.capabilities(x).provides == {"feature_map", "features", "classifier"}
    features_only = StagedModel(model, Split(features=lambda x: torch.relu(model.conv(x)).mean(dim=(2, 3))))
    with torch.no_grad():
        assert features_only.capabilities(x).provides == {"features"}
    with pytest.raises(ValueError, match="go together"):
        Split(feature_map=lambda x: x)
    with pytest.raises(ValueError, match="nn.Linear"):
        Split(features=lambda x: x, head=nn.Conv2d(1, 1, 1))


def test_a_module_without_a_linear_layer_gives_logits_only():
    model = nn.Sequential(nn.Conv2d(3, K, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    assert isinstance(adapter_for(model), Whole) and adapter_for(model) is WHOLE
    caps = StagedModel(model).capabilities(images())
    assert caps.provides == frozenset()
    assert caps.why({"features", "classifier"}).startswith("no features or classifier: imood cannot split Sequential")
    assert isinstance(LAST_LINEAR, LastLinear)


def test_architecture_metadata_of_older_files_is_unchanged():
    """A trained model's metadata keeps the five fields of 0.2; the 0.3 fields appear only when they are set."""
    old = {"backbone": "resnet18", "num_classes": 10, "extra_outputs": 1, "in_chans": 3, "cifar_stem": True}
    assert Architecture.from_dict(old).to_dict() == old
    new = Architecture("vit_b_16", 10, source="torchvision", img_size=32, split="classifier")
    assert new.to_dict() == {**old, "backbone": "vit_b_16", "extra_outputs": 0, "cifar_stem": False,
                             "source": "torchvision", "img_size": 32}
    assert Architecture.from_dict(new.to_dict()) == new


def test_a_micro_model_file_of_0_2_loads_bit_identically(tmp_path):
    from imood_cli import __version__

    torch.manual_seed(3)
    arch = Architecture("imood_resnet_micro", 4, 0, 1, True)
    model = ImOODModel(arch).eval()
    meta = {"format": "imood-model", "imood_version": "0.2.0", "architecture": dict(arch.to_dict()),
            "class_counts": [8, 4, 2, 1], "metric": "oe", "dataset": "digits", "epochs": 1, "config": {}}
    assert set(meta["architecture"]) == {"backbone", "num_classes", "extra_outputs", "in_chans", "cifar_stem"}
    save_tensors(tmp_path / "model.safetensors", model.state_dict(), meta)
    loaded = load_model(tmp_path)
    x = images(3, 4, c=1, size=8)
    with torch.no_grad():
        assert torch.equal(loaded.model(x).logits, model(x).logits)
    assert loaded.preprocess is None and __version__
    _, back = load_tensors(tmp_path / "model.safetensors")
    assert "preprocess" not in back


def test_preprocess_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    grey = torch.rand(2, 1, 8, 8, generator=g)
    prep = Preprocess((0.5, 0.4, 0.3), (0.2, 0.25, 0.5), 16, 3, "test")
    want = torch.nn.functional.interpolate(grey.repeat(1, 3, 1, 1), size=(16, 16), mode="bilinear",
                                           align_corners=False, antialias=True)
    want = (want - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1)
    close(prep.apply(grey), want, 1e-6)
    rgb = torch.rand(2, 3, 8, 8, generator=g)
    luma = 0.2989 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
    close(Preprocess((0.5,), (0.5,), 8, 1).apply(rgb), (luma - 0.5) / 0.5, 1e-6)
    for bad, match in [({"mean": [0.5, 0.5], "std": [1, 1, 1], "image_size": 8, "in_chans": 3}, "mean must be 3"),
                       ({"mean": [0], "std": [0], "image_size": 8, "in_chans": 1}, "std must be > 0"),
                       ({"mean": [0], "std": [1], "image_size": 0, "in_chans": 1}, "image_size"),
                       ({"mean": [0], "std": [1], "image_size": 8, "in_chans": 2}, "in_chans")]:
        with pytest.raises(ImoodError, match=match):
            Preprocess.from_dict(bad, "test")


@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_a_resnet_trained_with_the_cifar_stem(source, tmp_path):
    from imood_cli.models.imood_model import apply_cifar_stem

    torch.manual_seed(2)
    whole = timm.create_model("resnet18", num_classes=K) if source == "timm" else torchvision.models.resnet18(
        num_classes=K)
    apply_cifar_stem(whole, 3)
    whole.eval()
    path = tmp_path / "w.pth"
    torch.save(whole.state_dict(), path)
    with pytest.raises(ImoodError, match=r"conv1.weight has shape \(64, 3, 3, 3\)"):
        import_classifier(source, "resnet18", K, image_size=S, weights=path)
    imported = import_classifier(source, "resnet18", K, image_size=S, weights=path, cifar_stem=True)
    x = images(2, 5)
    with torch.no_grad():
        close(imported.model(x).logits, whole(x))
    assert imported.arch.cifar_stem and ImOODModel(imported.arch).backbone.conv1.kernel_size == (3, 3)
