"""ClassPrior (Jiang et al., "Detecting Out-of-distribution Data through In-distribution Class Prior",
ICML 2023; ICLR 2023 submission): post-hoc scores that re-weight (RW) or re-place (RP) the uniform prior
hidden in a detector with the ID training prior π. With sim(x) = 1 − cos(p(x), π):

    rw_energy  (default)  g = T · logsumexp(z / T) · sim(x),        T = 1
    rp_msp                g = max_k (p_k − π_k)
    rw_odin               g = max_k softmax(z′ / T)_k · sim(x),     T = 1000 (`odin_T`), z′ the logits of the
                          ODIN-perturbed input (ε = `odin_eps`, 0 by default as in the official code, so z′ = z);
                          sim uses the unperturbed, untempered p
    rp_gradnorm           g = ‖f‖₁ · ‖π − p‖₁ / (d · K)

Vanilla OOD score −g. The official code (XueJiang16/class_prior, funcs.py) divides RP-GradNorm by the
constant 2048 where this divides by the feature size d: a constant factor, same ranking. No pytorch-ood
counterpart; the tests check the formulas in float64.

The prior is the engine's log π̃ (docs/concepts.md, "Class prior and τ": π̃ ∝ π^τ with τ = `--logit_adjust`): the
paper's π, the class
frequencies of the training labels, is τ = 1, the default of `imood score`. τ = 0 gives the uniform prior u:
rp_msp becomes msp's max p − 1/K and rp_gradnorm GradNorm / (d · K), while the RW variants keep the weight
1 − cos(p, u), which still grows with the confidence of p. `idness`, which receives no prior, is this τ = 0
statistic.

No `ada_` form: ClassPrior already is a class-prior correction of the score; adding c · log β̂ on top would
correct twice.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from imood_cli.methods.odin import parse_std, tempered_logits
from imood_cli.plugin_api import ModelView, OptionError, Paper, Score, torch

if TYPE_CHECKING:
    from torch import Tensor

VARIANTS = ("rw_energy", "rp_msp", "rw_odin", "rp_gradnorm")


class ClassPrior(Score):
    paper = Paper("Detecting Out-of-distribution Data through In-distribution Class Prior", "Jiang et al.", "ICML",
                  2023, "https://proceedings.mlr.press/v202/jiang23e.html")
    hyperparameters = ("variant", "T", "odin_T", "odin_eps", "std")
    variant = "rw_energy"
    T = 1.0  # rw_energy's temperature
    odin_T = 1000.0
    odin_eps = 0.0
    std = ""  # rw_odin with odin_eps > 0: the input normalization's std, as odin's `std`

    def check(self) -> None:
        if self.variant not in VARIANTS:
            raise OptionError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        for key in ("T", "odin_T"):
            if not getattr(self, key) > 0:
                raise OptionError(f"{key} must be > 0, got {getattr(self, key)}")
        if not self.odin_eps >= 0:
            raise OptionError(f"odin_eps must be >= 0, got {self.odin_eps}")
        self._std = parse_std(self.std)

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        """What the engine supplies depends on the variant."""
        return frozenset({"rp_gradnorm": {"features"},
                          "rw_odin": {"input_grad"} if self.odin_eps > 0 else set()}.get(self.variant, set()))

    def prior_idness(self, view: ModelView, log_prior: Tensor) -> Tensor:
        """g(x) [N] for the prior π̃ = exp(log_prior) [K]."""
        z = view.logits.float()
        p = torch.softmax(z, dim=1)
        prior = log_prior.to(z.device, torch.float32).exp()[None, :]
        if self.variant == "rp_msp":
            return (p - prior).amax(dim=1)
        if self.variant == "rp_gradnorm":
            assert view.features is not None  # "features" in needs for rp_gradnorm
            f = view.features.float()
            return f.abs().sum(dim=1) * (prior - p).abs().sum(dim=1) / (f.shape[1] * z.shape[1])
        # ‖p‖ >= 1/√K and ‖π̃‖ > 0: the cosine needs no epsilon.
        sim = 1.0 - (p * prior).sum(dim=1) / (p.norm(dim=1) * prior.norm())
        if self.variant == "rw_energy":
            return self.T * torch.logsumexp(z / self.T, dim=1) * sim
        tempered = tempered_logits(view, self.odin_T, self.odin_eps, self._std)
        return torch.softmax(tempered, dim=1).amax(dim=1).float() * sim

    def idness(self, view: ModelView) -> Tensor:
        k = view.num_classes
        uniform = torch.full((k,), -math.log(k), device=view.logits.device)
        return self.prior_idness(view, uniform)

    def ood_score(self, view: ModelView, log_prior: Tensor) -> Tensor:
        return -self.prior_idness(view, log_prior)
