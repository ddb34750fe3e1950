"""ODIN (Liang et al., "Enhancing the Reliability of Out-of-distribution Image Detection in Neural
Networks", ICLR 2018): temperature scaling plus a small input perturbation toward higher confidence.

    x̂ = x − ε · sign(∇_x CE(z(x) / T, ŷ)) / σ,   ŷ = argmax_k z_k(x)
    S(x̂; T) = softmax(z(x̂) / T),   vanilla OOD score −max_k S_k(x̂; T)      (T = 1000, ε = 0.0014)

σ is the per-channel std of the input normalization (option `std`), so that ε is a step on the [0, 1]
pixel scale as in the paper's code; pytorch-ood's `ODIN(eps, temperature, norm_std)` is the same score
(its `norm_std` is this `std`). imood's CIFAR and digits recipes feed unnormalized pixels: leave `std`
empty. For ImageNet-LT (mean/std normalized) pass `-m odin:std=imagenet` (0.229, 0.224, 0.225), or the
std values joined by "_" (`std=0.5` or `std=0.25_0.25_0.25`).

ID-ness on the logit scale: g(x) = T · (log max_k S_k(x̂; T) + log K). It is increasing in the vanilla
statistic (same ranking), and at large T it tends to max_k z_k(x̂) − mean_k z_k(x̂): a logit margin, so
c = 1 as for energy and maxlogit. (max S itself sits within ~1e-3 of 1/K at T = 1000; a probability-scale
c would swamp it.)

Cost: one extra forward and backward pass plus a forward of x̂ per batch. Only the input's gradient is
taken (autograd.grad with respect to x): the model's parameters never accumulate a .grad.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from imood_cli.plugin_api import F, ImoodError, ModelView, OptionError, Paper, Score, torch

if TYPE_CHECKING:
    from torch import Tensor

STD_PRESETS = {"imagenet": (0.229, 0.224, 0.225)}


def parse_std(text: str) -> tuple[float, ...]:
    """The `std` option: '' (no normalization), a preset name, or positive numbers joined by '_'."""
    text = text.strip()
    if not text:
        return ()
    if text.lower() in STD_PRESETS:
        return STD_PRESETS[text.lower()]
    try:
        values = tuple(float(v) for v in text.split("_"))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        presets = ", ".join(STD_PRESETS)
        raise OptionError(f"std must be empty, {presets}, or positive numbers joined by '_' "
                          f"(e.g. 0.25_0.25_0.25), got {text!r}")
    return values


def perturb(view: ModelView, temperature: float, eps: float, std: tuple[float, ...]) -> Tensor:
    """x̂ = x − eps · sign(∇_x CE(z(x)/T, argmax z)) / std, detached; the model's parameters get no .grad."""
    if view.images is None:
        raise ImoodError("ODIN needs the input images: declare 'input_grad' in needs")
    with torch.enable_grad():
        x = view.images.detach().requires_grad_(True)
        z = view.logits_from_images(x).float() / temperature
        # A sum, not a mean: the sign is the same, and no 1/N can underflow a small gradient to 0.
        loss = F.cross_entropy(z, z.argmax(dim=1), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    step = grad.sign()
    if std:
        channels = x.shape[1]
        if len(std) not in (1, channels):
            raise ImoodError(f"odin: std has {len(std)} values but the images have {channels} channels")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        step = step / torch.tensor(std, dtype=step.dtype, device=step.device).view(shape)
    return x.detach() - eps * step


def tempered_logits(view: ModelView, temperature: float, eps: float, std: tuple[float, ...]) -> Tensor:
    """z(x̂) / T [N, K] in float64 (no graph); with eps = 0 no extra pass is needed: x̂ = x."""
    if eps == 0:
        z = view.logits.detach()
    else:
        x_hat = perturb(view, temperature, eps, std)
        with torch.no_grad():
            z = view.logits_from_images(x_hat)
    return z.double() / temperature


class ODIN(Score):
    paper = Paper("Enhancing The Reliability of Out-of-distribution Image Detection in Neural Networks", "Liang et al.",
                  "ICLR", 2018, "https://arxiv.org/abs/1706.02690")
    needs = frozenset({"input_grad"})
    ada_scale = 1.0
    hyperparameters = ("T", "eps", "std")
    T = 1000.0
    eps = 0.0014
    std = ""

    def check(self) -> None:
        if not self.T > 0:
            raise OptionError(f"T must be > 0, got {self.T}")
        if not self.eps >= 0:
            raise OptionError(f"eps must be >= 0, got {self.eps}")
        self._std = parse_std(self.std)

    def _log_max_softmax(self, view: ModelView) -> Tensor:
        z = tempered_logits(view, self.T, self.eps, self._std)
        return torch.log_softmax(z, dim=1).amax(dim=1)

    def idness(self, view: ModelView) -> Tensor:
        k = view.num_classes
        return (self.T * (self._log_max_softmax(view) + math.log(k))).float()

    def ood_score(self, view: ModelView, log_prior: Tensor) -> Tensor:
        return -self._log_max_softmax(view).exp().float()
