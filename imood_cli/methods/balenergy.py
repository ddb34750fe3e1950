"""Balanced energy regularization (Choi et al., "Balanced Energy Regularization Loss for Out-of-distribution
Detection", CVPR 2023; official code github.com/hyunjunChhoi/Balanced_Energy,
`classification/inf_train_im_res.py`, margins and λ from `inf_run_im_res.sh`).

The energy loss of Liu et al. with an adaptive OOD margin and per-sample weights taken from the class prior
of the auxiliary data, P_aux (the fraction of auxiliary images the classifier assigns to each class):

    P_j = P_aux^γj / ‖P_aux^γj‖₁,  w_j(x) = Σ_k softmax(z(x))_k · relu(P_j,k)      (j = 1, 2; auxiliary rows)
    E_in = −lse(z_id),  E_out = −lse(z_aux) − λ·w_1
    L = weight · [ mean relu(E_in − m_in)² + Σ relu(m_out − E_out)²·w_2 / Σ w_2 ]

weight = 0.2, so that the default `--Lambda 0.5` gives the official 0.1. Margins and λ follow the official
run script: m_in = −23, λ = 10 for 10 classes, m_in = −27, λ = 100 otherwise (the printed option values are
the 10-class ones; an option given explicitly, e.g. `--m-in`, always wins); m_out = −5, γ1 = γ2 = 0.75.
γ1 = γ2 = 0 and λ = 0 give the plain energy loss (`energy`).

P_aux: the official code hard-codes a vector per dataset and backbone, measured once on the CE-pretrained
model it fine-tunes. imood estimates it while training instead: an exponential moving average (momentum
`momentum`, 0.99) of the fraction of each batch's auxiliary rows whose arg-max class is k, started from the
first batch's fractions; it is kept in checkpoints, so a resumed run continues the same estimate. With
`momentum=1` the first batch's estimate is kept. `p_aux=a,b,...` (K numbers) fixes it, e.g. to the official
vector. Under DDP each process keeps its own estimate from its own batches.

Score: energy, −lse(z) (T = 1); g = lse(z), c = 1 as for `energy`.

The official recipe fine-tunes a CE-trained long-tailed model for 20 epochs: in imood that is
`imood train --ckpt-path BASELINE_RUN --ood_metric balenergy --logit_adjust 0 ...` (see the docs for the full
command). Differences: two augmented views per ID image (the ID terms average over both), the auxiliary
images are the benchmark's first 30,000 in imood's shuffled order (the official loader does not shuffle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imood_cli.methods.energy import EnergyScore
from imood_cli.plugin_api import F, ImoodError, LossContext, Method, ModelView, Objective, OptionError, Paper, torch

if TYPE_CHECKING:
    from torch import Tensor

RECIPES = {10: (-23.0, 10.0)}  # K -> (m_in, λ) of the official run script
OTHER_RECIPE = (-27.0, 100.0)  # the CIFAR-100 values, for every other K


def masked_mean(x: Tensor) -> Tensor:
    return x.mean() if x.numel() else x.sum() * 0.0


def parse_prior(text: str) -> list[float] | None:
    """'0.25,0.08,...' -> floats (None for an empty string: estimate it)."""
    if not text.strip():
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise OptionError(f"p_aux must be comma-separated numbers, got {text!r}") from None
    if any(not v >= 0 or v == float("inf") for v in values) or sum(values) <= 0:
        raise OptionError(f"p_aux must be finite numbers >= 0 with a positive sum, got {text!r}")
    return values


def balanced_prior(p_aux: Tensor, gamma: float) -> Tensor:
    """P_aux^γ normalised to sum 1."""
    p = p_aux.float() ** gamma
    return p / p.sum()


def assignment_fractions(logits: Tensor, num_classes: int) -> Tensor:
    """Fraction of rows whose arg-max class is k, [K]."""
    top = logits.argmax(dim=1)
    return (top[:, None] == torch.arange(num_classes, device=logits.device)).float().mean(dim=0)


def balanced_energy_loss(logits_id: Tensor, logits_ood: Tensor, p_aux: Tensor, m_in: float, m_out: float,
                         lamb: float, gamma1: float, gamma2: float) -> Tensor:
    """The bracket of the balanced energy loss (without the outer weight)."""
    e_in = -torch.logsumexp(logits_id, dim=1)
    l_in = masked_mean(F.relu(e_in - m_in) ** 2)
    if logits_ood.shape[0] == 0:
        return l_in
    q = torch.softmax(logits_ood, dim=1)
    w1 = q @ F.relu(balanced_prior(p_aux, gamma1))
    w2 = q @ F.relu(balanced_prior(p_aux, gamma2))
    e_out = -torch.logsumexp(logits_ood, dim=1) - lamb * w1
    return l_in + (F.relu(m_out - e_out) ** 2 * w2).sum() / w2.sum()


class BalEnergyObjective(Objective):
    """The balanced energy loss, with its running estimate of the auxiliary data's class prior."""

    m_in = -23.0
    m_out = -5.0
    lamb = 10.0
    gamma1 = 0.75
    gamma2 = 0.75
    weight = 0.2
    momentum = 0.99
    p_aux = ""
    hyperparameters = ("m_in", "m_out", "lamb", "gamma1", "gamma2", "weight", "momentum", "p_aux")
    default_notes = {"m_in": "the benchmark's --m-in (without one: -23 for K = 10, else -27)",
                     "m_out": "the benchmark's --m-out (without one: -5)", "lamb": "10 (K = 10), else 100",
                     "p_aux": "empty (estimated)"}

    def check(self) -> None:
        if not 0 <= self.momentum <= 1:
            raise OptionError(f"momentum must be in [0, 1], got {self.momentum}")
        for key in ("lamb", "gamma1", "gamma2", "weight"):
            if getattr(self, key) < 0:
                raise OptionError(f"{key} must be >= 0, got {getattr(self, key)}")
        self._fixed = parse_prior(self.p_aux)
        self._fixed_tensor: Tensor | None = None
        self._estimate: Tensor | None = None

    def recipe(self, num_classes: int) -> tuple[float, float]:
        """(m_in, λ): the options when given, else the official run script's values for K classes."""
        m_in, lamb = RECIPES.get(num_classes, OTHER_RECIPE)
        given = vars(self)
        return given.get("m_in", m_in), given.get("lamb", lamb)

    def training_parameters(self, feature_dim: int, num_classes: int) -> dict[str, Tensor]:
        # Called once before training: the first place that knows K, so a wrong p_aux fails before any work.
        self.prior(num_classes, "cpu")
        return {}

    def prior(self, num_classes: int, device: torch.device | str) -> Tensor:
        """P_aux [K]: the fixed vector, else the running estimate (uniform before the first batch)."""
        if self._fixed is not None:
            if len(self._fixed) != num_classes:
                raise ImoodError(f"balenergy: p_aux has {len(self._fixed)} values for {num_classes} classes")
            if self._fixed_tensor is None or self._fixed_tensor.device != torch.device(device):
                self._fixed_tensor = torch.tensor(self._fixed, device=device)
            return self._fixed_tensor
        if self._estimate is None:
            return torch.full((num_classes,), 1.0 / num_classes, device=device)
        return self._estimate

    def train_update(self, view: ModelView, ctx: LossContext) -> None:
        ood = view.logits[ctx.num_id:]
        if self._fixed is not None or ood.shape[0] == 0:
            return
        with torch.no_grad():
            batch = assignment_fractions(ood.float(), view.num_classes)
            if self._estimate is None:
                self._estimate = batch
            else:
                self._estimate = self.momentum * self._estimate + (1 - self.momentum) * batch

    def state(self) -> dict[str, Tensor]:
        return {} if self._estimate is None else {"p_aux": self._estimate}

    def load_state(self, state: dict[str, Tensor]) -> None:
        if "p_aux" in state:
            self._estimate = state["p_aux"].float()

    def loss(self, view: ModelView, ctx: LossContext, g: Tensor | None = None) -> Tensor:
        z = view.logits.float()
        k = view.num_classes
        m_in, lamb = self.recipe(k)
        p_aux = self.prior(k, z.device)
        return self.weight * balanced_energy_loss(z[: ctx.num_id], z[ctx.num_id:], p_aux, m_in, self.m_out, lamb,
                                                  self.gamma1, self.gamma2)


class BalEnergy(Method):
    """Balanced energy regularization: trained with BalEnergyObjective, scored with energy."""

    score = EnergyScore
    objective = BalEnergyObjective
    paper = Paper("Balanced Energy Regularization Loss for Out-of-distribution Detection", "Choi et al.", "CVPR", 2023,
                  "https://arxiv.org/abs/2306.10485")
