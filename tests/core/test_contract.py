"""The contract, tested over every registered method and aux loss (built-in and imood-extras, whose 0.2-style
Detector goes through the compatibility path), as timm tests every model of list_models(): shapes and dtypes,
higher = more OOD on a separable toy, the ada_ form, determinism, float32 and bf16 autocast on the CPU, finite
losses with gradients, every built-in's paper."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from torch import nn

from imood_cli.core.contract import ModelOutputs
from imood_cli.core.prior import log_prior
from imood_cli.engine.metrics.ranking import detection_metrics
from imood_cli.engine.runtime import Runtime
from imood_cli.engine.scoring.infer import ModelAccess
from imood_cli.plugin_api import AuxBatch, LossContext
from imood_cli.registry import Registry, entry_points

EXTRAS = Path(__file__).resolve().parents[2] / "plugins" / "imood-extras"
K, D = 4, 16
COUNTS = [400, 150, 60, 20]


def registry_with_extras() -> Registry:
    """The built-ins plus imood-extras from its source tree (whatever is installed in the environment)."""
    project = tomllib.loads((EXTRAS / "pyproject.toml").read_text())["project"]
    found = [e for e in entry_points() if e[2].startswith("imood_cli.")]
    import sys

    if str(EXTRAS) not in sys.path:
        sys.path.insert(0, str(EXTRAS))
    for kind, group in (("method", "imood.ood_metrics"), ("aux_loss", "imood.aux_losses")):
        for name, target in project["entry-points"].get(group, {}).items():
            found.append((kind, name, target, project["name"], project["version"]))
    reg = Registry(found)
    saved = os.environ.pop("IMOOD_PLUGINS", None)  # the suite loads no third-party plugin; this one is added here
    try:
        reg.plugins()  # discovery happens now, once
    finally:
        if saved is not None:
            os.environ["IMOOD_PLUGINS"] = saved
    return reg


REG = registry_with_extras()
DETECTORS = sorted(p.name for p in REG.plugins() if p.kind == "method" and p.derived_from is None)
AUX_LOSSES = sorted(p.name for p in REG.plugins() if p.kind == "aux_loss")


def test_every_entry_point_loads():
    broken = [(p.name, p.error) for p in REG.plugins() if p.status != "loaded"]
    assert not broken
    assert {"margin", "supcon"} <= set(DETECTORS) | set(AUX_LOSSES)  # imood-extras is covered


class Toy(nn.Module):
    """A model whose 'images' are feature maps [N, D, 2, 2] with non-negative activations: pooling gives the
    features, a fixed linear layer the K class logits (and the extra outputs)."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        proto = torch.zeros(K, D)
        for k in range(K):
            proto[k, 4 * k:4 * k + 4] = 1.0
        self.classifier = nn.Linear(D, K + extra)
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.weight[:K] = proto
            self.classifier.bias.zero_()
        self.extra = extra

    def logits_from_features(self, f):
        return self.classifier(f)[:, :K]

    def logits_from_feature_map(self, m):
        return self.logits_from_features(m.mean(dim=(2, 3)))

    def class_weights(self):
        return self.classifier.weight[:K], self.classifier.bias[:K]

    def forward(self, x, feature_map=False, **_):
        f = x.mean(dim=(2, 3))
        out = self.classifier(f)
        return ModelOutputs(out[:, :K], out[:, K:] if self.extra else None, f, feature_map=x if feature_map else None)


def toy_images(n: int, ood: bool, seed: int):
    """Activations shaped like a trained network's (the premise of ASH, SCALE, ReAct, DICE): ID images have
    dense moderate activations everywhere and strong ones on the 4 dimensions of their class (classes
    long-tailed); OOD images have a few weak activations on random dimensions and no class structure."""
    g = torch.Generator().manual_seed(seed)
    if ood:
        mask = torch.rand(n, D, 2, 2, generator=g) < 0.15
        return mask * torch.rand(n, D, 2, 2, generator=g), torch.full((n,), -1)
    labels = torch.multinomial(torch.tensor(COUNTS, dtype=torch.float), n, replacement=True, generator=g)
    x = 0.5 + 0.5 * torch.rand(n, D, 2, 2, generator=g)
    for k in range(K):
        x[labels == k, 4 * k:4 * k + 4] += 2.0 + torch.rand(int((labels == k).sum()), 4, 2, 2, generator=g)
    return x, labels


def make(name: str, amp: bool):
    d = REG.score(name)
    model = Toy(d.extra_outputs).eval()
    access = ModelAccess(model, Runtime(torch.device("cpu"), amp=amp))
    if d.needs_fit:
        x, y = toy_images(4000, False, 0)  # enough tail images for k = 50 neighbours (knn)
        with torch.no_grad():
            d.fit(access.view(model(x), {"classifier"}, labels=y))
    return d, model, access


def scores(name: str, amp: bool = False, seed: int = 1):
    d, model, access = make(name, amp)
    lp = log_prior(COUNTS).float()
    out = {}
    for ood in (False, True):
        x, _ = toy_images(64, ood, seed + ood)
        with torch.no_grad():
            o = model(x, feature_map=True).float()
        view = access.view(o, set(d.needs), images=x)
        with torch.enable_grad() if "input_grad" in d.needs else torch.no_grad():
            if amp:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    s = d.ood_score(view, lp)
            else:
                s = d.ood_score(view, lp)
        out[ood] = s
    return d, out


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_contract(name):
    d, s = scores(name)
    for v in s.values():
        assert isinstance(v, torch.Tensor) and v.shape == (64,) and v.is_floating_point()
        assert torch.isfinite(v).all()
    if d.extra_outputs == 0:  # extra outputs mean different things per detector: their own tests check them
        auroc = detection_metrics(s[False].double().numpy(), s[True].double().numpy())["auroc"]
        assert auroc > 0.9, f"{name}: AUROC {auroc:.3f} on a separable toy (higher must mean more OOD)"
    _, again = scores(name)  # deterministic
    assert all(torch.equal(s[k], again[k]) for k in s)
    has_ada = d.ada_scale is not None
    assert (f"ada_{name}" in REG.names("method")) == has_ada
    if has_ada:
        ada, a = scores(f"ada_{name}")
        assert all(torch.isfinite(v).all() for v in a.values()) and ada.scale >= 0


@pytest.mark.parametrize("name", DETECTORS)
def test_options_and_fit_state_round_trip_and_the_ada_form_is_its_formula(name):
    """What every method, built-in or plugin, must give back: its options (a score rebuilt from them is the
    same score), its fit (a fresh instance loading the state scores the same), and its `ada_` form equal to
    -(g + c·log β̂) of its own base (core.prior.log_beta, computed here apart from the wrapper)."""
    from imood_cli.core.prior import log_beta

    d, model, access = make(name, False)
    again = REG.score(name, **d.options())
    assert again.options() == d.options()
    x, _ = toy_images(64, True, 5)
    with torch.no_grad():
        o = model(x, feature_map=True).float()
    view = access.view(o, set(d.needs), images=x)
    lp = log_prior(COUNTS).float()
    with torch.enable_grad() if "input_grad" in d.needs else torch.no_grad():
        reference = d.ood_score(view, lp)
        if d.needs_fit:
            fresh = REG.score(name, **d.options())
            fresh.load_fit_state({k: v.clone() for k, v in d.fit_state().items()})
            assert torch.equal(fresh.ood_score(view, lp), reference)
        if d.ada_scale is not None:
            ada, _, _ = make(f"ada_{name}", False)
            expected = -(ada.base.idness(view).float() + ada.scale * log_beta(view.logits, lp))
            assert torch.allclose(ada.ood_score(view, lp), expected, atol=1e-6)


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_under_bf16_autocast(name):
    """Under bf16 autocast (the engine's default on CUDA) scores stay float, finite and still separate."""
    d, s16 = scores(name, amp=True)
    for v in s16.values():
        assert v.shape == (64,) and v.is_floating_point() and torch.isfinite(v).all()
    if d.extra_outputs == 0:
        assert detection_metrics(s16[False].double().numpy(), s16[True].double().numpy())["auroc"] > 0.9


TRAINABLE = [n for n in DETECTORS if REG.get("method", n).method.trainable()]


@pytest.mark.parametrize("name", TRAINABLE + [f"ada_{n}" for n in TRAINABLE if REG.score(n).ada_scale is not None])
def test_training_loss_contract(name):
    torch.manual_seed(0)
    score, d = REG.training(name)
    model = Toy(max(score.extra_outputs, d.extra_outputs))
    x_id, y = toy_images(16, False, 3)
    x_ood, _ = toy_images(8, True, 4)
    x = torch.cat([x_id, x_id, x_ood]).requires_grad_(True)
    out = model(x, feature_map=True)
    n_id = 32
    lambdas = torch.rand(len(x), K) + 0.5
    out = ModelOutputs(out.logits, out.extra, out.features, None, lambdas, out.feature_map)
    own = {k: nn.Parameter(v) for k, v in d.training_parameters(D, K).items()}
    aux_linear = nn.Linear(1, 1)
    ctx = LossContext(is_id=torch.arange(len(x)) < n_id, labels=torch.cat([y, y]), log_prior=log_prior(COUNTS).float(),
                      aux_linear=aux_linear, num_id=n_id, class_counts=torch.tensor(COUNTS),
                      generator=torch.Generator().manual_seed(0), parameters=own)
    needs = score.needs | d.needs
    view = ModelAccess(model, Runtime(torch.device("cpu"))).view(out, set(needs) | {"classifier"}, images=x)
    score.train_update(view, ctx)
    d.train_update(view, ctx)
    loss = d.loss(view, ctx, score.idness(view))
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", AUX_LOSSES)
def test_aux_loss_contract(name):
    loss_fn = REG.aux_loss(name)
    g = torch.Generator().manual_seed(0)
    n, m = 12, 6
    labels = torch.cat([torch.randint(0, K, (n,), generator=g).repeat(2), torch.full((m,), -1)])
    z = torch.nn.functional.normalize(torch.randn(2 * n + m, 8, generator=g), dim=1).requires_grad_(True)
    rows = torch.arange(2 * n + m)
    pair = torch.where(rows < n, rows + n, torch.where(rows < 2 * n, rows - n, -1))
    batch = AuxBatch(z, labels, labels >= 0, pair, torch.tensor(COUNTS))
    a, b = loss_fn(batch), loss_fn(batch)
    assert a.ndim == 0 and torch.isfinite(a) and torch.equal(a, b)
    if loss_fn.needs_projections:
        a.backward()
        assert z.grad is not None and torch.isfinite(z.grad).all()


BUILT_IN = sorted(p.name for p in REG.plugins() if p.kind == "method" and p.builtin and p.derived_from is None)


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_method_names_its_paper(name):
    paper = REG.get("method", name).method.paper
    assert paper is not None, f"{name} declares no paper"
    assert paper.title and paper.authors and paper.venue and 2000 < paper.year < 2100
    assert paper.url.startswith("https://"), f"{name}: no link to the paper"


def test_a_scoring_run_refuses_a_training_option_naming_its_phase():
    from imood_cli.errors import ImoodError

    with pytest.raises(ImoodError, match=r"cocl: lambda1 is a training option \(imood train --ood-metric cocl:lambda1"):
        REG.score("cocl", lambda1=9)
    score, objective = REG.training("cocl", lambda1=0.2)  # the same option is the objective's at training time
    assert objective.lambda1 == 0.2 and "lambda1" not in score.options()


def test_the_02_api_names_still_work_with_a_warning():
    from imood_cli import api

    with pytest.warns(DeprecationWarning, match="api.detector is now api.score"):
        old = api.detector("ada_gen", gamma=0.2)
    new = api.score("ada_gen", gamma=0.2)
    assert type(old) is type(new) and old.options() == new.options() == {"gamma": 0.2, "M": 100}
    with pytest.warns(DeprecationWarning, match="api.list_detectors is now api.list_methods"):
        assert api.list_detectors() == api.list_methods()
    with pytest.warns(DeprecationWarning, match="api.ood_metrics is now api.detection_metrics"):
        old = api.ood_metrics(np.array([0.0, 1.0, 2.0]), np.array([1.5, 3.0]))
    assert old == api.detection_metrics(np.array([0.0, 1.0, 2.0]), np.array([1.5, 3.0]))
