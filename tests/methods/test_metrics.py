"""Each detector against an independent float64 computation (docs/concepts.md)."""

import numpy as np
import pytest
import torch

from imood_cli import api
from imood_cli.core.contract import ModelOutputs, ModelView
from imood_cli.core.prior import log_prior
from imood_cli.errors import ImoodError
from imood_cli.registry import registry

COUNTS = [500, 200, 80, 30, 10]
K = len(COUNTS)


def fit_view(features, labels, k):
    """The view Detector.fit receives: ID training features and labels (logits unused here)."""
    f = torch.as_tensor(features, dtype=torch.float32)
    return ModelView(logits=torch.zeros(len(f), k), features=f, labels=torch.as_tensor(labels))


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def log_beta_ref(z, counts, tau=1.0):
    pi = np.array(counts, np.float64) ** tau
    pi /= pi.sum()
    return np.log((softmax(z) / pi).mean(1))


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(32, K)) * 2.5
    extra = rng.normal(size=(32, 1)) * 2
    f = np.abs(rng.normal(size=(32, 16)))
    return z, extra, f


def outputs(z, extra=None, f=None):
    t = lambda a: None if a is None else torch.tensor(a, dtype=torch.float32)
    return ModelOutputs(t(z), t(extra), t(f))


def score(name, z, extra=None, f=None, tau=1.0, scale=None):
    m = registry().score(name, ada_scale=scale)
    return m.ood_score(outputs(z, extra, f), log_prior(COUNTS, tau).float()).double().numpy()


def test_msp(data):
    z, _, _ = data
    assert np.allclose(score("msp", z), -softmax(z).max(1), atol=1e-6)
    g = softmax(z).max(1) - 1 / K
    assert np.allclose(score("ada_msp", z), -(g + 0.1 * log_beta_ref(z, COUNTS)), atol=1e-5)


def test_energy(data):
    z, _, _ = data
    lse = np.log(np.exp(z).sum(1))
    assert np.allclose(score("energy", z), -lse, atol=1e-5)
    assert np.allclose(score("ada_energy", z), -(lse + 1.0 * log_beta_ref(z, COUNTS)), atol=1e-5)


def test_bin_disc(data):
    z, extra, _ = data
    g = extra[:, 0]
    assert np.allclose(score("bin_disc", z, extra), 1 - 1 / (1 + np.exp(-g)), atol=1e-6)
    assert np.allclose(score("ada_bin_disc", z, extra), -(g + log_beta_ref(z, COUNTS)), atol=1e-5)


def test_gradnorm_closed_form_matches_autograd(data):
    z, _, f = data
    rng = np.random.default_rng(2)
    w = torch.tensor(rng.normal(size=(K, f.shape[1])), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(rng.normal(size=K), dtype=torch.float64)
    feats = torch.tensor(f)
    expected = []
    for i in range(len(feats)):  # GradNorm as its paper defines it: one backward pass per sample
        w.grad = None
        logits = feats[i] @ w.T + b
        kl = -(torch.log_softmax(logits, 0) / K).sum()  # KL(u || softmax) up to a constant
        kl.backward()
        expected.append(w.grad.abs().sum().item())
    with torch.no_grad():
        logits = (feats @ w.T + b).numpy()
    assert np.allclose(score("gradnorm", logits, None, f), -np.array(expected), rtol=1e-5)
    assert np.allclose(score("ada_gradnorm", logits, None, f),
                       -(np.array(expected) + 10 * log_beta_ref(logits, COUNTS)), rtol=1e-4, atol=1e-4)


def test_maha_matches_numpy(data):
    rng = np.random.default_rng(3)
    d = 6
    train_f = rng.normal(size=(200, d)) + np.repeat(np.eye(K, d) * 3, 40, axis=0)
    train_y = np.repeat(np.arange(K), 40)
    test_f = rng.normal(size=(20, d)) * 2
    means = np.stack([train_f[train_y == k].mean(0) for k in range(K)])
    centred = train_f - means[train_y]
    cov = centred.T @ centred / len(train_f) + 1e-4 * np.eye(d)
    prec = np.linalg.inv(cov)
    dist = np.stack([np.einsum("nd,de,ne->n", test_f - means[k], prec, test_f - means[k]) for k in range(K)], 1)
    z = rng.normal(size=(20, K))
    m = registry().score("maha")
    m.fit(fit_view(train_f, train_y, K))
    got = m.ood_score(outputs(z, None, test_f), log_prior(COUNTS).float()).double().numpy()
    assert np.allclose(got, dist.min(1), rtol=1e-4)  # larger distance = more OOD
    ada = registry().score("ada_maha")
    ada.fit(fit_view(train_f, train_y, K))
    got = ada.ood_score(outputs(z, None, test_f), log_prior(COUNTS).float()).double().numpy()
    assert np.allclose(got, dist.min(1) - 0.01 * log_beta_ref(z, COUNTS), rtol=1e-4)


def test_ada_scale_override_and_tau_zero(data):
    z, _, _ = data
    lse = np.log(np.exp(z).sum(1))
    assert np.allclose(score("ada_energy", z, scale=3.0), -(lse + 3.0 * log_beta_ref(z, COUNTS)), atol=1e-5)
    # τ = 0: the uniform prior gives log β̂ = 0, so ada_energy equals energy.
    assert np.allclose(score("ada_energy", z, tau=0.0), score("energy", z), atol=1e-5)


def test_ada_correction_favours_tail_predictions():
    # Same confidence, one on the head class and one on the tail class: the tail one is more ID.
    z = np.array([[5.0, 0, 0, 0, 0], [0, 0, 0, 0, 5.0]])
    s = score("ada_msp", z)
    assert s[1] < s[0]
    assert np.isclose(score("msp", z)[0], score("msp", z)[1])


def test_api_ood_scores_matches_registry(data):
    z, extra, f = data
    got = api.ood_scores("ada_bin_disc", torch.tensor(z), COUNTS, extra_logit=torch.tensor(extra[:, 0])).numpy()
    assert np.allclose(got, score("ada_bin_disc", z, extra), atol=1e-6)


def test_unknown_metric_suggests_nearest():
    from imood_cli.errors import ImoodError

    with pytest.raises(ImoodError, match="did you mean 'ada_energy'"):
        registry().score("ada_enrgy")


def test_api_fit_that_reads_logits_needs_them():
    """klm fits templates of the training posteriors: without fit_logits the API refuses instead of guessing."""
    torch.manual_seed(0)
    z, f, y = torch.randn(60, 4), torch.randn(60, 8), torch.randint(0, 4, (60,))
    with pytest.raises(ImoodError, match="pass fit_logits"):
        api.ood_scores("klm", z, [10, 5, 3, 2], fit_features=f, fit_labels=y)
    got = api.ood_scores("klm", z, [10, 5, 3, 2], fit_features=f, fit_labels=y, fit_logits=z)
    p = torch.softmax(z.double(), 1)
    pred = p.argmax(1)
    templates = torch.stack([p[pred == k].mean(0) for k in range(4)])
    kl = (p[:, None, :] * (p[:, None, :].log() - templates[None].log())).sum(-1)
    torch.testing.assert_close(got.double(), kl.min(1).values, rtol=1e-4, atol=1e-5)
