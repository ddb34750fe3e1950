"""entropy, maxlogit, gen and klm against pytorch-ood 0.4 on the micro ResNet's logits, and against float64
formulas where float32 softmax loses the signal (confident samples)."""

import math

import numpy as np
import pytest
import torch
from detector_toys import micro_model, micro_view
from pytorch_ood.detector import GEN as PoodGEN
from pytorch_ood.detector import Entropy as PoodEntropy
from pytorch_ood.detector import KLMatching as PoodKLM
from pytorch_ood.detector import MaxLogit as PoodMaxLogit

from imood_cli.methods.entropy import Entropy
from imood_cli.methods.gen import GEN
from imood_cli.methods.klm import KLMatching
from imood_cli.methods.maxlogit import MaxLogit
from imood_cli.plugin_api import LossContext, ModelOutputs, ModelView, OptionError, log_prior


@pytest.fixture(scope="module")
def micro():
    model = micro_model(num_classes=6)
    torch.manual_seed(1)
    x = torch.randn(40, 3, 8, 8)
    train_x = torch.randn(120, 3, 8, 8)
    return model, micro_view(model, x), micro_view(model, train_x, labels=torch.arange(120) % 6)


def logits_view(z):
    return ModelView.of(ModelOutputs(torch.as_tensor(z, dtype=torch.float32)))


LP = log_prior([5, 4, 3, 2, 1, 1])


def test_micro_logits_are_spread(micro):
    _, view, _ = micro
    p = view.logits.softmax(1)
    assert p.amax(1).min() < 0.6 and p.amax(1).max() > 0.99  # both confident and unsure rows


def test_entropy_equals_pytorch_ood(micro):
    _, view, _ = micro
    ours = Entropy().ood_score(view, LP)
    theirs = PoodEntropy(None).predict_logits(view.logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(Entropy().idness(view), -ours)


def test_entropy_float64_formula_on_confident_rows():
    z = np.array([[40.0, 0.0, -5.0, 3.0], [1.0, 1.0, 1.0, 1.0], [0.0, -30.0, 2.0, 2.0]])
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    h = -(p * np.log(p)).sum(1)
    ours = Entropy().ood_score(logits_view(z), LP[:4])
    np.testing.assert_allclose(ours.numpy(), h, rtol=1e-5, atol=1e-12)
    assert ours[0] > 0  # pytorch-ood's clip and float32 softmax would give exactly 0 here


def test_maxlogit_equals_pytorch_ood(micro):
    _, view, _ = micro
    ours = MaxLogit().ood_score(view, LP)
    torch.testing.assert_close(ours, PoodMaxLogit(None).predict_logits(view.logits), rtol=0, atol=0)


@pytest.mark.parametrize("gamma,m", [(0.1, 100), (0.1, 3), (0.5, 6), (2.0, 1)])
def test_gen_equals_pytorch_ood_mean_over_top_m(micro, gamma, m):
    _, view, _ = micro
    ours = GEN(gamma=gamma, M=m).ood_score(view, LP)
    theirs = PoodGEN(None, gamma=gamma, M=m).predict_logits(view.logits)
    # Where float32 holds 1 − p_1 to a few digits, pytorch-ood's direct powers are accurate: equal there.
    p = view.logits.softmax(1)
    plain = p.amax(1) < 0.999
    assert plain.sum() >= 30
    torch.testing.assert_close(ours[plain], theirs[plain], rtol=2e-5, atol=1e-6)
    # Every row, the confident ones included, against the float64 formula.
    np.testing.assert_allclose(ours.numpy(), gen_float64(view.logits.numpy(), gamma, m), rtol=2e-5, atol=1e-7)


def gen_float64(z, gamma, m):
    """The paper's G_γ = Σ_{top M} p^γ (1 − p)^γ, divided by min(M, K), from exact float64 probabilities."""
    z = np.asarray(z, np.float64)
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    out = []
    for row in log_p:
        order = np.argsort(-row)[:m]
        terms = []
        for j in order:
            rest = np.delete(row, j)
            log_q = np.log(np.exp(rest - rest.max()).sum()) + rest.max()  # log(1 − p_j) = log Σ_{k≠j} p_k
            terms.append(np.exp(gamma * (row[j] + log_q)))
        out.append(np.sum(terms) / min(m, len(row)))
    return np.array(out)


def test_gen_keeps_the_signal_of_confident_rows():
    # p_1 rounds to 1 and the tail underflows in float32: the (1 − p_1)^γ and p_j^γ terms still rank these rows.
    z = np.array([[30.0, 0.0, -2.0, -60.0], [40.0, 0.0, -2.0, -60.0], [20.0, 19.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    ours = GEN(gamma=0.1, M=100).ood_score(logits_view(z), LP[:4])
    np.testing.assert_allclose(ours.numpy(), gen_float64(z, 0.1, 100), rtol=1e-5)
    assert ours[0] > ours[1] > 0  # more confident = less OOD, even past float32's resolution of p_1


def test_gen_sum_form_of_the_paper():
    z = torch.randn(20, 150, generator=torch.Generator().manual_seed(3)) * 4
    ours = GEN().idness(logits_view(z))
    paper = -gen_float64(z.numpy(), 0.1, 100) * 100  # the paper sums the M = 100 terms
    np.testing.assert_allclose((ours * 100).numpy(), paper, rtol=1e-4)


@pytest.mark.parametrize("options,message", [({"gamma": 0.0}, "gamma must be > 0"), ({"M": 0}, "M must be >= 1"),
                                             ({"gamma": "x"}, "must be float")])
def test_gen_options_are_checked(options, message):
    with pytest.raises(OptionError, match=message):
        GEN(**options)


def test_klm_equals_pytorch_ood(micro):
    _, view, train = micro
    ours = KLMatching()
    ours.fit(train)
    theirs = PoodKLM(None).fit_logits(train.logits)
    torch.testing.assert_close(ours.ood_score(view, LP), theirs.predict_logits(view.logits), rtol=1e-4, atol=1e-5)
    fitted = sorted(int(k) for k in theirs.dists.keys())
    assert torch.nonzero(ours.counts).flatten().tolist() == fitted
    assert len(fitted) < 6  # a class no training image is predicted as has no template, in both


def test_klm_float64_formula_and_fit_state():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(60, 4)) * 3
    test = rng.normal(size=(15, 4)) * 3
    d = KLMatching()
    d.fit(ModelView.of(ModelOutputs(torch.tensor(train, dtype=torch.float32))))
    p_train = np.exp(train - train.max(1, keepdims=True))
    p_train /= p_train.sum(1, keepdims=True)
    pred = p_train.argmax(1)
    templates = {k: p_train[pred == k].mean(0) for k in np.unique(pred)}
    p = np.exp(test - test.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = np.min([(p * (np.log(p) - np.log(t))).sum(1) for t in templates.values()], axis=0)
    view = logits_view(test)
    np.testing.assert_allclose(d.ood_score(view, LP[:4]).numpy(), expected, rtol=1e-5)
    again = KLMatching()
    again.load_fit_state(d.fit_state())
    torch.testing.assert_close(again.idness(view), d.idness(view), rtol=0, atol=0)


def test_klm_refuses_to_score_unfitted():
    from imood_cli.errors import ImoodError

    with pytest.raises(ImoodError, match="klm is not fitted"):
        KLMatching().idness(logits_view(np.zeros((2, 3))))


def test_klm_training_templates_track_id_rows():
    d = KLMatching()
    z1 = torch.tensor([[3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [9.0, 0.0, 0.0]])  # last row: OOD
    ctx = LossContext(is_id=torch.tensor([True, True, True, False]), labels=torch.tensor([0, 0, 2]),
                      log_prior=LP[:3])
    d.train_update(logits_view(z1), ctx)
    p1 = torch.softmax(z1.double(), 1)
    torch.testing.assert_close(d.templates[0], p1[:2].mean(0))
    torch.testing.assert_close(d.templates[2], p1[2])
    assert d.counts.tolist() == [2, 0, 1]
    z2 = torch.tensor([[0.0, 4.0, 0.0], [1.0, 0.0, 0.0]])
    d.train_update(logits_view(z2), LossContext(is_id=torch.tensor([True, True]), labels=torch.tensor([1, 0]),
                                                log_prior=LP[:3]))
    p2 = torch.softmax(z2.double(), 1)
    torch.testing.assert_close(d.templates[0], 0.9 * p1[:2].mean(0) + 0.1 * p2[1])
    torch.testing.assert_close(d.templates[1], p2[0])  # first seen now: taken as is
    torch.testing.assert_close(d.templates[2], p1[2])  # not seen this step: kept
    assert torch.isfinite(d.idness(logits_view(z2))).all()


def test_maxlogit_and_entropy_scales_follow_spec():
    assert MaxLogit.ada_scale == 1.0 and Entropy.ada_scale == 0.1 and GEN.ada_scale == 0.1
    # klm: not c = 1 as a logit-scale g; its g is a KL divergence with a probability's spread (docs/methods)
    assert KLMatching.ada_scale == 0.1
    assert math.isclose(float(Entropy().idness(logits_view(np.zeros((1, 5))))), -math.log(5), rel_tol=1e-6)
