"""DICE (Sun & Li, "DICE: Leveraging Sparsification for Out-of-Distribution Detection", ECCV 2022).

Each classifier weight is ranked by its contribution on ID data, V = W ⊙ m̄ (m̄ the mean penultimate
feature of the ID training set, broadcast over the K rows of W); the weights whose contribution is at
or below the p-th percentile of V are dropped (sparsity p = 90, the paper's CIFAR setting; it uses 70 on
ImageNet), and the energy of the sparsified classifier is the statistic:

    g(x) = logsumexp_k [(M ⊙ W) f(x) + b]_k,   M = [V > percentile_p(V)]      vanilla OOD score −g

ada_ c = 1: g is an energy, on the logit scale like energy's own g (docs/concepts.md).

Only the mask M is fitted; W and b are read from the model at scoring time. pytorch-ood's DICE takes p
as a fraction: its 0.9 is p = 90 here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imood_cli.plugin_api import ImoodError, ModelView, OptionError, Paper, Score, percentile, torch

if TYPE_CHECKING:
    from torch import Tensor


class DICE(Score):
    paper = Paper("DICE: Leveraging Sparsification for Out-of-Distribution Detection", "Sun & Li", "ECCV", 2022,
                  "https://arxiv.org/abs/2111.09805")
    needs = frozenset({"features", "classifier", "fit"})
    ada_scale = 1.0
    hyperparameters = ("p",)
    p = 90.0  # sparsity: the percentage of classifier weights dropped

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.mask: Tensor | None = None  # [K, d] bool: the weights kept

    def check(self) -> None:
        if not 0.0 <= self.p < 100.0:
            raise OptionError(f"p is the percentage of weights dropped, in [0, 100), got {self.p}")
        if 0.0 < self.p < 1.0:
            raise OptionError(f"p is a percentage (the paper's sparsity 0.9 is p=90), got {self.p}: "
                              f"to drop {self.p * 100:g}% of the weights write p={self.p * 100:g}")

    def fit(self, view: ModelView) -> None:
        assert view.features is not None and view.weight is not None  # "features", "classifier" in needs
        if view.features.shape[0] == 0:
            raise ImoodError("dice needs ID training features to rank the classifier's weights")
        mean = view.features.double().mean(dim=0)
        contribution = view.weight.double() * mean[None, :]
        self.mask = contribution > percentile(contribution, self.p)

    def fit_state(self) -> dict[str, Tensor]:
        return {} if self.mask is None else {"mask": self.mask.cpu()}

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        self.mask = state["mask"].bool()

    def idness(self, view: ModelView) -> Tensor:
        if self.mask is None:
            raise ImoodError("dice is not fitted: it ranks the classifier's weights on a trained model's ID "
                             "training features, so it is post hoc only (ada_dice scores; train with e.g. ada_energy)")
        assert view.features is not None and view.weight is not None and view.bias is not None  # needs
        weight = view.weight.float() * self.mask.to(view.weight.device)
        logits = view.features.float() @ weight.T + view.bias.float()
        return torch.logsumexp(logits, dim=1)
