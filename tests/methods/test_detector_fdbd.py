"""fdbd against pytorch-ood 0.4's fDBD on the micro ResNet's features and classifier, and a float64 formula."""

import numpy as np
import pytest
import torch
from detector_toys import micro_model, micro_view
from pytorch_ood.detector import fDBD as PoodFDBD

from imood_cli.errors import ImoodError
from imood_cli.methods.fdbd import FDBD
from imood_cli.plugin_api import LossContext, ModelOutputs, ModelView, log_prior

LP = log_prior([6, 5, 4, 3, 2, 1])


@pytest.fixture(scope="module")
def micro():
    model = micro_model(num_classes=6)
    torch.manual_seed(4)
    test = micro_view(model, torch.randn(30, 3, 8, 8))
    train = micro_view(model, torch.randn(100, 3, 8, 8), labels=torch.arange(100) % 6)
    return model, test, train


def test_fdbd_equals_pytorch_ood(micro):
    model, test, train = micro
    ours = FDBD()
    ours.fit(train)
    theirs = PoodFDBD(None, model.classifier).fit_features(train.features)
    torch.testing.assert_close(ours.ood_score(test, LP), theirs.predict_features(test.features), rtol=1e-5, atol=1e-6)


def test_fit_measures_c_from_the_id_training_set_and_caches_it(micro):
    model, test, train = micro
    d = FDBD()
    d.fit(train)
    g_train = -PoodFDBD(None, model.classifier).fit_features(train.features).predict_features(train.features)
    assert d.ada_scale == pytest.approx(0.1 * float(g_train.double().std()), rel=1e-5)
    assert FDBD.ada_scale == 0.01  # the class value is untouched
    restored = FDBD()
    restored.load_fit_state(d.fit_state())
    assert restored.ada_scale == d.ada_scale
    torch.testing.assert_close(restored.idness(test), d.idness(test), rtol=0, atol=0)


def test_fdbd_float64_formula():
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(4, 5)), rng.normal(size=4)
    train_f, test_f = rng.normal(size=(50, 5)) + 1.0, rng.normal(size=(12, 5)) * 2
    mu = train_f.mean(0)
    z = test_f @ w.T + b
    expected = []
    for f, row in zip(test_f, z):
        y = row.argmax()
        terms = [abs(row[y] - row[c]) / np.linalg.norm(w[y] - w[c]) for c in range(4) if c != y]
        expected.append(np.mean(terms) / np.linalg.norm(f - mu))

    def view(f):
        t = torch.tensor(f, dtype=torch.float32)
        return ModelView.of(ModelOutputs(t @ torch.tensor(w, dtype=torch.float32).T + torch.tensor(b).float(),
                                         features=t), weight=torch.tensor(w).float(), bias=torch.tensor(b).float())

    d = FDBD()
    d.fit(view(train_f))
    np.testing.assert_allclose(d.idness(view(test_f)).numpy(), expected, rtol=1e-5)


def test_unfitted_and_single_class_are_clear_errors():
    view = ModelView.of(ModelOutputs(torch.zeros(2, 3), features=torch.zeros(2, 4)), weight=torch.zeros(3, 4))
    with pytest.raises(ImoodError, match="fdbd is not fitted"):
        FDBD().idness(view)
    one = ModelView.of(ModelOutputs(torch.zeros(2, 1), features=torch.ones(2, 4)), weight=torch.ones(1, 4))
    with pytest.raises(ImoodError, match="at least two classes"):
        FDBD().fit(one)


def test_training_mean_tracks_id_rows_and_follows_live_weights():
    d = FDBD()
    f1 = torch.tensor([[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]])  # last row: OOD
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    view = ModelView.of(ModelOutputs(f1 @ w.T, features=f1), weight=w, bias=torch.zeros(3))
    ctx = LossContext(is_id=torch.tensor([True, True, False]), labels=torch.tensor([0, 1]), log_prior=LP[:3])
    d.train_update(view, ctx)
    torch.testing.assert_close(d.mean, torch.tensor([2.0, 1.0], dtype=torch.float64))
    f2 = torch.tensor([[0.0, 4.0]])
    d.train_update(ModelView.of(ModelOutputs(f2 @ w.T, features=f2), weight=w),
                   LossContext(is_id=torch.tensor([True]), labels=torch.tensor([1]), log_prior=LP[:3]))
    torch.testing.assert_close(d.mean, torch.tensor([1.8, 1.3], dtype=torch.float64))
    assert d.norms is None  # no fit: the boundary norms come from the classifier of each step
    g = d.idness(view)
    fitted = FDBD()
    fitted.mean, fitted.norms = d.mean, torch.cdist(w.double(), w.double())
    torch.testing.assert_close(g, fitted.idness(view))
