"""ReAct (Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations", NeurIPS 2021).

The penultimate features are clipped at c, the p-th percentile of every activation of the ID training
features (p = 90, the paper's choice), and the classifier runs on the clipped features:

    g(x) = logsumexp_k [W min(f(x), c) + b]_k        vanilla OOD score −g (the energy of the clipped logits)

ada_ c = 1: g is an energy, on the logit scale like energy's own g (docs/concepts.md).

The percentile interpolates linearly between order statistics (numpy's default, which the paper's
code and pytorch-ood use). pytorch-ood's ReAct takes `percentile` as a fraction: its 0.9 is p = 90 here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imood_cli.plugin_api import ImoodError, ModelView, OptionError, Paper, Score, percentile, torch

if TYPE_CHECKING:
    from torch import Tensor


class ReAct(Score):
    paper = Paper("ReAct: Out-of-distribution Detection With Rectified Activations", "Sun et al.", "NeurIPS", 2021,
                  "https://arxiv.org/abs/2111.12797")
    needs = frozenset({"features", "classifier", "fit"})
    ada_scale = 1.0
    hyperparameters = ("p",)
    p = 90.0  # percentile of the ID training activations at which features are clipped

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.threshold: Tensor | None = None  # float64 scalar tensor

    def check(self) -> None:
        if not 0.0 <= self.p <= 100.0:
            raise OptionError(f"p is a percentile in [0, 100], got {self.p}")
        if 0.0 < self.p < 1.0:
            raise OptionError(f"p is a percentage (the paper's 90 clips at the 90th percentile), got {self.p}: "
                              f"for the {self.p * 100:g}th percentile write p={self.p * 100:g}")

    def fit(self, view: ModelView) -> None:
        assert view.features is not None  # "features" in needs
        self.threshold = percentile(view.features, self.p)

    def fit_state(self) -> dict[str, Tensor]:
        return {} if self.threshold is None else {"threshold": self.threshold.reshape(1).cpu()}

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        self.threshold = state["threshold"].double().reshape(())

    def idness(self, view: ModelView) -> Tensor:
        if self.threshold is None:
            raise ImoodError("react is not fitted: it clips at a percentile of a trained model's ID training "
                             "features, so it is post hoc only (ada_react scores; train with e.g. ada_energy)")
        assert view.features is not None  # "features" in needs
        features = view.features.float()
        clipped = torch.minimum(features, self.threshold.to(features.device, features.dtype))  # no host sync
        return torch.logsumexp(view.logits_from_features(clipped).float(), dim=1)

