"""`api.score_model` and the public ModelView constructor: any nn.Module, every detector, no private fields.

On a timm ResNet18 the model-aware detectors equal pytorch-ood 0.4's, which is given the same model through
timm's own interface (forward_features / forward_head / get_classifier), not through imood's adapter.
Conventions mapped: pytorch-ood's percentiles and DICE's p are fractions (imood: percentages); its Mahalanobis
score is half the squared distance under an un-normalized covariance with a 1e-6 ridge (imood: the squared
distance under the covariance with its own ridge, so imood = 2N · pytorch-ood at ridge 1e-6 / N).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from pytorch_ood.detector import ASH, DICE, KNN, ODIN, SCALE, Mahalanobis, ReAct, ViM
from torch import nn

from imood_cli import api
from imood_cli.core.contract import ModelOutputs, ModelView
from imood_cli.errors import ImoodError
from imood_cli.plugin_api import log_prior
from imood_cli.registry import registry

K = 4
COUNTS = [60, 30, 15, 8]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a shared 2-core machine: a second OpenMP thread waits on the other's time slice (10x slower
    # under load); the CLI's own choice is one thread at these batch sizes too.
    torch.set_num_threads(1)
    yield


def noise_images(n, size, seed, shift=0.0):
    """Images with a per-image colour and contrast, so features differ between images."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.randn(n, 3, 1, 1, generator=g) + shift
    contrast = torch.rand(n, 1, 1, 1, generator=g) * 2 + 0.2
    return torch.randn(n, 3, size, size, generator=g) * contrast + colour


@pytest.fixture(scope="module")
def r18():
    """timm's ResNet18, random weights with varied BN statistics and gains, in eval mode."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=K)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)  # no zero-init residual branches
    with torch.no_grad():
        model.fc.weight.mul_(4.0)
    model.eval()
    train_x = noise_images(200, 16, 2)
    train_y = torch.cat([torch.arange(K), torch.randint(0, K, (196,), generator=g)])
    test_x, ood_x = noise_images(24, 40, 3), noise_images(24, 40, 4, shift=2.0)  # 40 px: a 2×2 last map
    return model, train_x, train_y, test_x, ood_x


def timm_stages(model, x):
    """Feature map, pooled features and logits by timm's own interface (independent of imood's adapters)."""
    with torch.no_grad():
        m = model.forward_features(x)
        return m, model.forward_head(m, pre_logits=True), model.forward_head(m)


def test_model_aware_detectors_equal_pytorch_ood(r18, monkeypatch):
    import imood_cli.methods.maha as maha

    model, train_x, train_y, test_x, ood_x = r18
    n = len(train_x)
    monkeypatch.setattr(maha, "RIDGE", 1e-6 / n)  # pytorch-ood's ridge on its un-normalized covariance
    specs = ["react", "ash", "ash:layer=map", "scale", "scale:layer=map", "dice", "vim:dim=64", "odin", "knn", "maha"]
    got = api.score_model(model, [(test_x, torch.arange(24) % K)], {"ood": [ood_x]}, specs, class_counts=COUNTS,
                          fit_loader=[(train_x[:100], train_y[:100]), (train_x[100:], train_y[100:])])
    assert got.capabilities.provides == {"feature_map", "features", "classifier"}
    _, train_f, _ = timm_stages(model, train_x)
    head, fc = (lambda m: model.get_classifier()(m.flatten(1))), model.get_classifier()
    pooled = lambda f: f[:, :, None, None]
    refs = {
        "react": ReAct(None, head, percentile=0.9).fit_feature_maps(pooled(train_f), train_y),
        "ash": ASH(None, head, variant="ash-s", percentile=0.9),
        "ash:layer=map": ASH(None, model.forward_head, variant="ash-s", percentile=0.9),
        "scale": SCALE(None, head, percentile=0.85),
        "scale:layer=map": SCALE(None, model.forward_head, percentile=0.85),
        "dice": DICE(None, fc.weight, fc.bias, p=0.9).fit_features(train_f, train_y),
        "vim:dim=64": ViM(None, 64, fc.weight, fc.bias).fit_features(train_f, train_y),
        "knn": KNN(None, k=50).fit_features(train_f, train_y),
    }
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # pytorch-ood's Mahalanobis in float64 (its ridge is tiny)
    try:
        refs["maha"] = Mahalanobis(None).fit_features(train_f.double(), train_y)
    finally:
        torch.set_default_dtype(default)
    for name, x, scores in (("id", test_x, got.id_scores), ("ood", ood_x, {k: v["ood"] for k, v in
                                                                          got.ood_scores.items()})):
        m, f, _ = timm_stages(model, x)
        with torch.no_grad():
            expected = {
                "react": refs["react"].predict_feature_maps(pooled(f)),
                "ash": refs["ash"].predict_feature_maps(pooled(f)),
                "ash:layer=map": refs["ash:layer=map"].predict_feature_maps(m),
                "scale": refs["scale"].predict_feature_maps(pooled(f)),
                "scale:layer=map": refs["scale:layer=map"].predict_feature_maps(m),
                "dice": refs["dice"].predict_features(f),
                "vim:dim=64": refs["vim:dim=64"].predict_features(f),
                "knn": refs["knn"].predict_features(f),
                "maha": 2 * n * refs["maha"].predict_features(f.double()),
            }
        expected["odin"] = ODIN(model, eps=0.0014, temperature=1000.0).predict(x)
        assert m.shape[-2:] == (2, 2)
        for label, want in expected.items():
            np.testing.assert_allclose(scores[label].double().numpy(), want.detach().double().numpy(), rtol=1e-4,
                                       atol=1e-4, err_msg=f"{label} on {name}")


class Net(nn.Module):
    """A classifier of one's own: conv body, average pooling, linear head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                  nn.ReLU())
        self.fc = nn.Linear(32, K)

    def forward(self, x):
        return self.fc(self.body(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def net_data():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.fc.weight.mul_(5)
    g = torch.Generator().manual_seed(5)
    y = torch.cat([torch.arange(K), torch.randint(0, K, (116,), generator=g)])
    train = noise_images(120, 8, 6) + y.view(-1, 1, 1, 1).float()
    test_y = torch.arange(40) % K
    test = noise_images(40, 8, 7) + test_y.view(-1, 1, 1, 1).float()
    ood = noise_images(30, 8, 8, shift=-3.0)
    return net, (train, y), (test, test_y), ood


def split_of(net):
    return api.Split(feature_map=net.body, pool=lambda m: m.mean(dim=(2, 3)), head=net.fc)


def test_every_builtin_detector_runs_through_the_api(net_data):
    net, (train, y), (test, test_y), ood = net_data
    net.train()  # the caller's mode comes back afterwards
    out = api.score_model(net, [(test[:20], test_y[:20]), (test[20:], test_y[20:])], {"far": [ood]}, "all",
                          class_counts=COUNTS, fit_loader=[(train, y)], split=split_of(net))
    assert net.training and all(m.training for m in net.modules())
    expected = set(api._expand("all"))
    assert set(out.id_scores) == expected and not out.skipped
    for label in expected:
        assert out.id_scores[label].shape == (40,) and out.ood_scores[label]["far"].shape == (30,)
        assert torch.isfinite(out.id_scores[label]).all(), label
        doc = out.evaluation[label]
        assert set(doc["ood"]) == {"far", "mean"} and {"acc", "many", "medium", "few"} <= set(doc["id"])
    # the preds are the model's argmax, and msp is its formula
    with torch.no_grad():
        z = net.eval()(test)
    assert torch.equal(out.id_preds, z.argmax(1))
    torch.testing.assert_close(out.id_scores["msp"], -torch.softmax(z, 1).amax(1))


def test_the_adapter_is_chosen_when_no_split_is_given(net_data):
    """Net has no adapter: split at its last linear layer (features and classifier, no map)."""
    net, (train, y), (test, test_y), ood = net_data
    with pytest.raises(ImoodError, match=r"ash:layer=map needs the model's feature map, and Net .* has none"):
        api.score_model(net, [(test, test_y)], {"far": [ood]}, ["react", "ash:layer=map"], class_counts=COUNTS,
                        fit_loader=[(train, y)])
    out = api.score_model(net, [(test, test_y)], {"far": [ood]}, ["react", "ash:layer=map"], class_counts=COUNTS,
                          fit_loader=[(train, y)], skip_unavailable=True)
    assert set(out.id_scores) == {"react"} and "does not know where it pools" in out.skipped["ash:layer=map"]
    with_split = api.score_model(net, [(test, test_y)], {"far": [ood]}, ["react"], class_counts=COUNTS,
                                 fit_loader=[(train, y)], split=split_of(net))
    torch.testing.assert_close(out.id_scores["react"], with_split.id_scores["react"])


def test_what_a_caller_gets_wrong_is_one_clear_error(net_data):
    net, (train, y), (test, test_y), ood = net_data
    loaders = ([(test, test_y)], {"far": [ood]})
    with pytest.raises(ImoodError, match="must be fitted on the ID training set: pass fit_loader"):
        api.score_model(net, *loaders, ["maha"], class_counts=COUNTS)
    with pytest.raises(ImoodError, match="4 outputs but class_counts has 3"):
        api.score_model(net, *loaders, ["msp"], class_counts=[3, 2, 1])
    with pytest.raises(ImoodError, match="extra output"):
        api.score_model(net, *loaders, ["bin_disc"], class_counts=COUNTS)
    whole = nn.Sequential(nn.Conv2d(3, K, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ImoodError, match="vim needs the model's features and classifier"):
        api.score_model(whole, *loaders, ["msp", "vim"], class_counts=COUNTS, fit_loader=[(train, y)])
    out = api.score_model(whole, *loaders, "all", class_counts=COUNTS, fit_loader=[(train, y)])
    assert "vim" in out.skipped and "msp" in out.id_scores and "odin" in out.id_scores


def test_ada_scale_and_saved_scores_for_imood_eval(net_data, tmp_path, cli):
    net, (train, y), (test, test_y), ood = net_data
    fixed = api.score_model(net, [(test, test_y)], {"far": [ood]}, ["energy", "ada_energy"], class_counts=COUNTS,
                            ada_scale=0.5)
    z = net.eval()(test).detach()
    lp = log_prior(COUNTS).float()
    p = torch.softmax(z, 1)
    expected = -(torch.logsumexp(z, 1) + 0.5 * torch.log((p / lp.exp()).mean(1)))
    torch.testing.assert_close(fixed.id_scores["ada_energy"], expected, rtol=1e-5, atol=1e-5)
    auto = api.score_model(net, [(test, test_y)], {"far": [ood]}, ["ada_energy"], class_counts=COUNTS,
                           fit_loader=[(train, y)], ada_scale="auto")
    assert torch.isfinite(auto.id_scores["ada_energy"]).all()
    paths = fixed.save(tmp_path / "scores")
    code, out, err = cli(["eval", paths["ada_energy"], "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ood"]["mean"]["auroc"] == pytest.approx(fixed.evaluation["ada_energy"]["ood"]["mean"]["auroc"])
    assert doc["id"]["acc"] == pytest.approx(fixed.evaluation["ada_energy"]["id"]["acc"])


def test_a_view_of_any_model_without_private_fields(net_data):
    """ModelView.of with the stages as callables is all a detector's test needs (what a plugin author writes)."""
    net, (train, y), (test, _), _ = net_data
    net.eval()

    def view(x, labels=None):
        with torch.no_grad():
            m = net.body(x)
            f = m.mean(dim=(2, 3))
            out = ModelOutputs(net.fc(f), features=f, feature_map=m)
        return ModelView.of(out, labels=labels, images=x, weight=net.fc.weight.detach(), bias=net.fc.bias.detach(),
                            logits_from_features=net.fc, logits_from_feature_map=lambda t: net.fc(t.mean(dim=(2, 3))),
                            logits_from_images=net)

    react = registry().score("react")
    react.fit(view(train, y))
    scores = react.ood_score(view(test), log_prior(COUNTS))
    f = net.body(test).mean(dim=(2, 3)).detach().clamp(max=float(react.threshold))
    torch.testing.assert_close(scores, -torch.logsumexp(net.fc(f), 1).detach())
    odin = registry().score("odin")
    with torch.enable_grad():
        assert odin.ood_score(view(test), log_prior(COUNTS)).shape == (40,)
    # api.model_view builds the same view through the adapter (or a split)
    built = api.model_view(net, test, split=split_of(net))
    torch.testing.assert_close(react.ood_score(built, log_prior(COUNTS)), scores)
    bare = ModelView.of(ModelOutputs(torch.zeros(2, K)))
    with pytest.raises(RuntimeError, match="declares 'classifier'"):
        bare.logits_from_features(torch.zeros(2, 32))
    with pytest.raises(TypeError, match="unexpected keyword argument '_head'"):
        ModelView.of(ModelOutputs(torch.zeros(2, K)), _head=None)


def test_keep_going_drops_only_the_detectors_that_fail(net_data, monkeypatch):
    """A fit that fails (vim's dim beyond the 32 features) and a score that breaks on the second batch (knn):
    with keep_going, both are named in `failed` and the others are exactly what they are when scored alone;
    without it, the first failure is the error."""
    import imood_cli.methods.knn as knn

    net, (train, y), (test, test_y), ood = net_data
    calls = {"n": 0}
    idness = knn.KNN.idness

    def breaks_on_batch_2(self, view):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("broke on batch 2")
        return idness(self, view)

    monkeypatch.setattr(knn.KNN, "idness", breaks_on_batch_2)
    loaders = ([(test[:20], test_y[:20]), (test[20:], test_y[20:])], {"far": [ood]})
    specs = ["msp", "vim:dim=40", "knn", "energy"]
    with pytest.raises(ImoodError, match=r"vim.*smaller than the features \(d = 32\)"):
        api.score_model(net, *loaders, specs, class_counts=COUNTS, fit_loader=[(train, y)])
    out = api.score_model(net, *loaders, specs, class_counts=COUNTS, fit_loader=[(train, y)], keep_going=True)
    assert list(out.failed) == ["vim:dim=40", "knn"]
    assert out.failed["vim:dim=40"].startswith("fit: OptionError: ") and "d = 32" in out.failed["vim:dim=40"]
    assert out.failed["knn"] == "score: RuntimeError: broke on batch 2"
    assert set(out.id_scores) == set(out.ood_scores) == set(out.evaluation) == {"msp", "energy"}
    alone = api.score_model(net, *loaders, ["msp", "energy"], class_counts=COUNTS)
    for label in ("msp", "energy"):
        assert torch.equal(out.id_scores[label], alone.id_scores[label])
        assert out.evaluation[label] == alone.evaluation[label]
    calls["n"] = 0
    with pytest.raises(ImoodError, match="vim:dim=40 .*knn"):  # none left: one error naming each
        api.score_model(net, *loaders, ["vim:dim=40", "knn"], class_counts=COUNTS, fit_loader=[(train, y)],
                        keep_going=True)
