"""odin against pytorch-ood 0.4's ODIN on the micro ResNet, through the view imood's engine builds."""

import math

import numpy as np
import pytest
import torch
from detector_toys import micro_model, micro_view
from pytorch_ood.detector import ODIN as PoodODIN
from pytorch_ood.detector import odin_preprocessing
from torch import nn

from imood_cli.errors import ImoodError
from imood_cli.methods.odin import ODIN, parse_std
from imood_cli.plugin_api import OptionError, log_prior

LP = log_prior([6, 5, 4, 3, 2, 1])


class LogitsOnly(nn.Module):
    """The model as pytorch-ood calls it: images in, class logits out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


@pytest.fixture(scope="module")
def micro():
    model = micro_model(num_classes=6)
    torch.manual_seed(2)
    x = torch.rand(24, 3, 8, 8)
    return model, x


@pytest.mark.parametrize("eps,temperature,std", [(0.0014, 1000.0, ""), (0.05, 1000.0, ""), (0.02, 10.0, "0.5_0.25_0.2"),
                                                 (0.02, 1.0, "0.3")])
def test_odin_equals_pytorch_ood(micro, eps, temperature, std):
    model, x = micro
    ours = ODIN(eps=eps, T=temperature, std=std).ood_score(micro_view(model, x), LP)
    norm_std = list(parse_std(std)) * (3 if len(parse_std(std)) == 1 else 1) or None
    theirs = PoodODIN(LogitsOnly(model), eps=eps, temperature=temperature, norm_std=norm_std).predict(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_the_perturbation_moves_toward_confidence(micro):
    model, x = micro
    view = micro_view(model, x)
    plain = ODIN(eps=0.0).idness(view)
    perturbed = ODIN(eps=0.05).idness(view)
    # The step lowers the tempered cross-entropy of the predicted class: max S, hence g, goes up.
    assert (perturbed > plain).float().mean() > 0.9
    z = view.logits.double()
    torch.testing.assert_close(plain.double(), 1000 * (torch.log_softmax(z / 1000, 1).amax(1) + math.log(6)),
                               rtol=1e-6, atol=1e-6)


def test_idness_is_a_logit_margin_in_float64(micro):
    model, x = micro
    view = micro_view(model, x)
    detector = ODIN()
    x_hat = odin_preprocessing(LogitsOnly(model), x, eps=detector.eps, temperature=detector.T)
    with torch.no_grad():
        z_hat = model(x_hat).logits.double()
    expected = detector.T * (torch.log_softmax(z_hat / detector.T, 1).amax(1) + math.log(6))
    torch.testing.assert_close(detector.idness(view).double(), expected, rtol=1e-5, atol=1e-5)
    # At T = 1000 g is within a few hundredths of max z − mean z: the logit scale that c = 1 assumes.
    margin = z_hat.amax(1) - z_hat.mean(1)
    assert float((expected - margin).abs().max()) < 0.05 * float(margin.abs().max())
    # ood_score ranks exactly as −g.
    np.testing.assert_array_equal(np.argsort(detector.ood_score(view, LP).numpy(), kind="stable"),
                                  np.argsort(-detector.idness(view).numpy(), kind="stable"))


def test_no_gradient_reaches_the_parameters(micro):
    model, x = micro
    assert all(p.requires_grad for p in model.parameters())
    view = micro_view(model, x)
    with torch.enable_grad():  # as the engine scores input_grad detectors
        scores = ODIN().ood_score(view, LP)
    assert not scores.requires_grad
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # and the detector takes its own gradient even when called without one
        torch.testing.assert_close(ODIN().ood_score(view, LP), scores)


def test_std_presets_and_errors(micro):
    assert parse_std("") == () and parse_std("imagenet") == (0.229, 0.224, 0.225)
    assert parse_std("0.5_0.25") == (0.5, 0.25)
    for bad in ("x", "0_1", "-1", "0.2,0.3", "nan"):
        with pytest.raises(OptionError, match="std must be"):
            ODIN(std=bad)
    for key, value in (("T", 0.0), ("eps", -0.1)):
        with pytest.raises(OptionError, match=key):
            ODIN(**{key: value})
    model, x = micro
    with pytest.raises(ImoodError, match="std has 2 values but the images have 3 channels"):
        ODIN(std="0.5_0.5").ood_score(micro_view(model, x), LP)
    with pytest.raises(ImoodError, match="input images"):
        ODIN().idness(micro_view(model, x, needs={"features"}))
