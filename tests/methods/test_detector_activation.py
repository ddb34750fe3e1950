"""react, ash, scale and dice against pytorch-ood 0.4 on the same tiny imood model and images.

Conventions mapped here (and in the README): pytorch-ood's percentiles and DICE's p are fractions, imood's
are percentages; pytorch-ood's score is the energy −logsumexp z of the re-run logits, imood's vanilla OOD
score of these detectors is that same number; imood applies ASH and SCALE to the pooled features by
default (the papers' setting), which pytorch-ood sees as a [N, d, 1, 1] map.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from feature_views import fitted, images, labels, np_logsumexp, tiny_model, view
from pytorch_ood.detector import ASH as PoodASH
from pytorch_ood.detector import DICE as PoodDICE
from pytorch_ood.detector import SCALE as PoodSCALE
from pytorch_ood.detector import ReAct as PoodReAct

from imood_cli.core.prior import log_prior
from imood_cli.errors import ImoodError
from imood_cli.methods.react import percentile
from imood_cli.registry import registry

LOG_PRIOR = log_prior([50, 20, 8, 3], 1.0).float()
ALL_NEEDS = {"features", "classifier", "feature_map"}


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    train_x, train_y = images(300, 1), labels(300, 2)
    test = view(model, images(64, 3), ALL_NEEDS)
    train_features = view(model, train_x, {"classifier"}).features
    return model, train_x, train_y, train_features, test


def pooled_head(model):
    """pytorch-ood's head for a [N, d, 1, 1] map of the pooled features: the classifier."""
    return lambda m: model.logits_from_features(m.flatten(1))


def scores(detector, test):
    with torch.no_grad():
        return detector.ood_score(test, LOG_PRIOR).double().numpy()


def close(got, ref, tol=1e-5):
    np.testing.assert_allclose(got, np.asarray(ref, np.float64), rtol=tol, atol=tol)


@pytest.mark.parametrize("n,p", [(1, 50.0), (7, 0.0), (7, 100.0), (1000, 90.0), (1001, 37.5), (999, 99.9)])
def test_percentile_matches_numpy(n, p):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    assert float(percentile(x, p)) == pytest.approx(np.percentile(x.double().numpy(), p), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("p", [90.0, 95.0])
def test_react_matches_pytorch_ood(setup, p):
    model, train_x, train_y, train_features, test = setup
    ours = fitted(registry().score("react", p=p), model, train_x, train_y)
    pood = PoodReAct(None, pooled_head(model), percentile=p / 100).fit_feature_maps(train_features[:, :, None, None],
                                                                                  train_y)
    assert float(ours.threshold) == pytest.approx(np.percentile(train_features.double().numpy(), p), rel=1e-9)
    assert float(ours.threshold) == pytest.approx(pood.threshold, rel=1e-6)
    with torch.no_grad():
        ref = pood.predict_feature_maps(test.features[:, :, None, None])
    close(scores(ours, test), ref)
    # and the float64 formula: energy of W·min(f, c) + b
    f = test.features.double().numpy().clip(max=float(ours.threshold))
    w, b = (t.detach().double().numpy() for t in model.class_weights())
    close(scores(ours, test), -np_logsumexp(f @ w.T + b), 1e-4)
    assert (test.features > ours.threshold).any()  # the clipping did something


def test_react_fit_state_round_trip_and_unfitted(setup):
    model, train_x, train_y, _, test = setup
    ours = fitted(registry().score("react"), model, train_x, train_y)
    fresh = registry().score("react")
    with pytest.raises(ImoodError, match="not fitted"):
        fresh.idness(test)
    fresh.load_fit_state(ours.fit_state())
    close(scores(fresh, test), scores(ours, test), 0)


@pytest.mark.parametrize("variant", ["s", "b", "p"])
@pytest.mark.parametrize("p", [90.0, 65.0])
def test_ash_on_features_matches_pytorch_ood(setup, variant, p):
    model, *_, test = setup
    ours = registry().score("ash", variant=variant, p=p)
    assert ours.needs == {"features", "classifier"}
    pood = PoodASH(None, pooled_head(model), variant=f"ash-{variant}", percentile=p / 100)
    with torch.no_grad():
        ref = pood.predict_feature_maps(test.features[:, :, None, None])
    close(scores(ours, test), ref)


@pytest.mark.parametrize("variant", ["s", "b", "p"])
def test_ash_on_the_feature_map_matches_pytorch_ood(setup, variant):
    model, *_, test = setup
    ours = registry().score("ash", variant=variant, layer="map", p=65)
    assert ours.needs == {"feature_map"}  # the engine then keeps the map, not the classifier
    pood = PoodASH(None, model.logits_from_feature_map, variant=f"ash-{variant}", percentile=0.65)
    with torch.no_grad():
        ref = pood.predict_feature_maps(test.feature_map.contiguous())
    close(scores(ours, test), ref)


def test_ash_defaults_and_the_formula_in_float64(setup):
    model, *_, test = setup
    ours = registry().score("ash")
    assert (ours.variant, ours.p, ours.layer) == ("s", 90.0, "features")  # ASH-S@90, the paper's code default
    f = test.features.double().numpy()
    d = f.shape[1]
    keep = d - int(np.round(d * 0.9))
    out = np.zeros_like(f)
    for i, row in enumerate(f):  # row by row: keep the top `keep`, times exp(sum / kept sum)
        top = np.argsort(-row, kind="stable")[:keep]
        out[i, top] = row[top] * np.exp(row.sum() / row[top].sum())
    w, b = (t.detach().double().numpy() for t in model.class_weights())
    close(scores(ours, test), -np_logsumexp(out @ w.T + b), 1e-4)


@pytest.mark.parametrize("layer,p", [("features", 85.0), ("features", 60.0), ("map", 85.0)])
def test_scale_matches_pytorch_ood(setup, layer, p):
    model, *_, test = setup
    ours = registry().score("scale", layer=layer, p=p)
    if layer == "map":
        pood = PoodSCALE(None, model.logits_from_feature_map, percentile=p / 100)
        batch = test.feature_map.contiguous()
    else:
        pood = PoodSCALE(None, pooled_head(model), percentile=p / 100)
        batch = test.features[:, :, None, None].contiguous()
    with torch.no_grad():
        ref = pood.predict_feature_maps(batch)
    close(scores(ours, test), ref)


def test_scale_default_and_the_formula_in_float64(setup):
    model, *_, test = setup
    ours = registry().score("scale")
    assert (ours.p, ours.layer) == (85.0, "features")
    f = test.features.double().numpy()
    keep = f.shape[1] - int(np.round(f.shape[1] * 0.85))
    top_sum = -np.sort(-f, axis=1)[:, :keep].sum(axis=1)
    scaled = f * np.exp(f.sum(axis=1) / top_sum)[:, None]  # nothing pruned, every activation scaled
    w, b = (t.detach().double().numpy() for t in model.class_weights())
    close(scores(ours, test), -np_logsumexp(scaled @ w.T + b), 1e-4)


@pytest.mark.parametrize("p", [90.0, 70.0])
def test_dice_matches_pytorch_ood(setup, p):
    model, train_x, train_y, train_features, test = setup
    ours = fitted(registry().score("dice", p=p), model, train_x, train_y)
    w, b = model.class_weights()
    pood = PoodDICE(None, w, b, p=p / 100).fit_features(train_features, train_y)
    assert torch.equal(ours.mask, pood.masked_w != 0)
    with torch.no_grad():
        ref = pood.predict_features(test.features)
    close(scores(ours, test), ref)
    # float64: keep the weights whose contribution w·mean(f) is above the p-th percentile
    contribution = w.detach().double().numpy() * train_features.double().numpy().mean(0)
    kept = contribution > np.percentile(contribution, p)
    assert kept.mean() == pytest.approx(1 - p / 100, abs=0.01)
    masked = w.detach().double().numpy() * kept
    close(scores(ours, test), -np_logsumexp(test.features.double().numpy() @ masked.T + b.detach().double().numpy()),
          1e-4)
    fresh = registry().score("dice", p=p)
    fresh.load_fit_state(ours.fit_state())
    close(scores(fresh, test), scores(ours, test), 0)


def test_all_zero_rows_stay_finite():
    # A row of zeros (a dead input): ASH-S and SCALE take 0/0 as 0 instead of producing NaN.
    model = tiny_model()
    v = view(model, images(4, 5), ALL_NEEDS)
    v.features[0] = 0
    v.feature_map[0] = 0
    for spec in ({}, {"variant": "b"}, {"layer": "map"}):
        assert torch.isfinite(registry().score("ash", **spec).idness(v)).all()
    for spec in ({}, {"layer": "map"}):
        assert torch.isfinite(registry().score("scale", **spec).idness(v)).all()


@pytest.mark.parametrize("name,options,message", [
    ("react", {"p": "101"}, "percentile in \\[0, 100\\]"),
    ("react", {"p": "0.9"}, "write p=90"),
    ("ash", {"variant": "x"}, "variant must be one of s, b, p"),
    ("ash", {"layer": "pool"}, "layer must be one of features, map"),
    ("ash", {"p": "100"}, "\\[0, 100\\)"),
    ("ash", {"p": "0.65"}, "write p=65"),
    ("scale", {"p": "-1"}, "\\[0, 100\\)"),
    ("dice", {"p": "0.9"}, "write p=90"),
    ("dice", {"p": "abc"}, "must be float"),
])
def test_bad_options_are_one_clear_error(name, options, message):
    with pytest.raises(ImoodError, match=message):
        registry().score(name, **options)


def test_pruning_everything_is_refused():
    model = tiny_model()
    v = view(model, images(2, 6), ALL_NEEDS)
    with pytest.raises(ImoodError, match="keeps none"):
        registry().score("ash", p=99.9).idness(v)  # 128 features: round(127.87) = 128 pruned
