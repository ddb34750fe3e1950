"""classprior: pytorch-ood has no ClassPrior, so each variant is checked against its formula (Jiang et al.,
the official funcs.py) written here in float64, with π̃ from imood's log prior."""

import numpy as np
import pytest
import torch
from detector_toys import micro_model, micro_view
from pytorch_ood.detector import odin_preprocessing
from torch import nn

from imood_cli.errors import ImoodError
from imood_cli.methods.classprior import ClassPrior
from imood_cli.methods.msp import MSP
from imood_cli.plugin_api import OptionError, log_prior
from imood_cli.registry import Registry

COUNTS = [500, 200, 90, 30, 12, 5]


@pytest.fixture(scope="module")
def micro():
    model = micro_model(num_classes=6)
    torch.manual_seed(5)
    x = torch.rand(30, 3, 8, 8)
    return model, x, micro_view(model, x)


def softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def reference(variant, z, f, prior, temperature=1.0, z_perturbed=None, odin_t=1000.0):
    """The paper's ID-ness in float64 (feature size d where the official code writes 2048)."""
    z = np.asarray(z, np.float64)
    p = softmax64(z)
    sim = 1 - (p @ prior) / (np.linalg.norm(p, axis=1) * np.linalg.norm(prior))
    if variant == "rp_msp":
        return (p - prior).max(1)
    if variant == "rw_energy":
        zt = z / temperature
        lse = zt.max(1) + np.log(np.exp(zt - zt.max(1, keepdims=True)).sum(1))
        return temperature * lse * sim
    if variant == "rw_odin":
        zp = z if z_perturbed is None else np.asarray(z_perturbed, np.float64)
        return softmax64(zp / odin_t).max(1) * sim
    f = np.asarray(f, np.float64)
    return np.abs(f).sum(1) * np.abs(prior - p).sum(1) / (f.shape[1] * z.shape[1])


@pytest.mark.parametrize("tau", [1.0, 0.5])
@pytest.mark.parametrize("variant,options", [("rw_energy", {}), ("rw_energy", {"T": 2.0}), ("rp_msp", {}),
                                             ("rw_odin", {}), ("rp_gradnorm", {})])
def test_variant_matches_the_float64_formula(micro, variant, options, tau):
    _, _, view = micro
    counts = np.array(COUNTS, np.float64)
    prior = counts ** tau / (counts ** tau).sum()  # τ = 1: the training label frequencies, the paper's π
    d = ClassPrior(variant=variant, **options)
    ours = d.ood_score(view, log_prior(COUNTS, tau).float())
    expected = -reference(variant, view.logits, view.features, prior, temperature=options.get("T", 1.0))
    np.testing.assert_allclose(ours.numpy(), expected, rtol=2e-5, atol=1e-7)


def test_prior_changes_the_ranking(micro):
    _, _, view = micro
    d = ClassPrior()
    with_prior = d.ood_score(view, log_prior(COUNTS, 1.0).float())
    uniform = d.ood_score(view, log_prior(COUNTS, 0.0).float())
    assert not torch.equal(with_prior.argsort(), uniform.argsort())


def test_rw_odin_with_a_perturbation(micro):
    model, x, view = micro
    d = ClassPrior(variant="rw_odin", odin_eps=0.01)
    assert "input_grad" in d.needs and "input_grad" not in ClassPrior(variant="rw_odin").needs

    class LogitsOnly(nn.Module):
        def forward(self, t):
            return model(t).logits

    x_hat = odin_preprocessing(LogitsOnly(), x, eps=0.01, temperature=1000.0)
    with torch.no_grad():
        z_hat = model(x_hat).logits
    prior = np.array(COUNTS, np.float64) / sum(COUNTS)
    expected = -reference("rw_odin", view.logits, None, prior, z_perturbed=z_hat)
    ours = d.ood_score(view, log_prior(COUNTS, 1.0).float())
    np.testing.assert_allclose(ours.numpy(), expected, rtol=2e-5, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())


def test_idness_is_the_uniform_prior_statistic(micro):
    _, _, view = micro
    for variant in ("rw_energy", "rp_msp", "rw_odin", "rp_gradnorm"):
        d = ClassPrior(variant=variant)
        torch.testing.assert_close(d.idness(view), -d.ood_score(view, log_prior(COUNTS, 0.0).float()))
    # At the uniform prior, RP-MSP is msp's g = max p − 1/K.
    torch.testing.assert_close(ClassPrior(variant="rp_msp").idness(view), MSP().idness(view))


def test_needs_follow_the_variant_and_there_is_no_ada_form():
    assert ClassPrior().needs == frozenset()
    assert ClassPrior(variant="rp_gradnorm").needs == frozenset({"features"})
    reg = Registry()
    reg.add("method", "classprior_copy", ClassPrior)
    with pytest.raises(ImoodError, match="declares no ada_scale"):
        reg.score("ada_classprior_copy")


@pytest.mark.parametrize("options,message", [({"variant": "rw_msp"}, "variant must be one of"),
                                             ({"T": 0.0}, "T must be > 0"), ({"odin_T": -1.0}, "odin_T must be > 0"),
                                             ({"odin_eps": -0.1}, "odin_eps must be >= 0"),
                                             ({"std": "abc"}, "std must be")])
def test_options_are_checked(options, message):
    with pytest.raises(OptionError, match=message):
        ClassPrior(**options)
