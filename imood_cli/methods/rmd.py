"""Relative Mahalanobis distance (Ren, Fort, Liu, Roy, Padhy & Lakshminarayanan, "A Simple Fix to
Mahalanobis Distance for Improving Near-OOD Detection", arXiv 2106.09022, 2021).

Two Gaussian models of the ID training features: one per class (means μ_k, one shared covariance Σ, as
maha) and one background Gaussian fitted to all of them together (mean μ_0, covariance Σ_0). With
d_k(f) = (f − μ_k)ᵀ Σ⁻¹ (f − μ_k) and d_0(f) = (f − μ_0)ᵀ Σ_0⁻¹ (f − μ_0):

    g(x) = −min_k [d_k(f) − d_0(f)] = d_0(f) − min_k d_k(f)        vanilla OOD score min_k d_k − d_0

Covariances are maximum-likelihood (divided by N) plus ridge·I (ridge = 1e-4, as maha). pytorch-ood's
RMD uses un-normalized covariances (sums) with a 1e-6 ridge, so its score is this vanilla score / N when
ridge = 1e-6 / N here.

ada_ c = 0.1 · std(g on the ID training set), set at fit time and kept with the fit: g is a difference
of squared distances whose spread grows with the feature dimension, so c is measured in the units of g
(docs/concepts.md, "The scale c of ada_": distance-scale detectors) and c · log β̂ moves g by a tenth of its ID
spread per unit of log β̂.
The std is taken over at most 8192 training rows spread evenly through the set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imood_cli.methods.knn import evenly_spaced
from imood_cli.plugin_api import ImoodError, ModelView, OptionError, Paper, Score, torch

if TYPE_CHECKING:
    from torch import Tensor

ADA_FRACTION = 0.1  # c = ADA_FRACTION · std(g on the ID training set)
ADA_ROWS = 8192  # training rows the std is measured on (all when fewer)


def whitening(cov: Tensor) -> Tensor:
    """L with Σ⁻¹ = L Lᵀ, so that (f − μ)ᵀ Σ⁻¹ (f − μ) = ‖(f − μ) L‖²."""
    precision = torch.linalg.inv(cov)
    return torch.linalg.cholesky((precision + precision.T) / 2)


class RMD(Score):
    paper = Paper("A Simple Fix to Mahalanobis Distance for Improving Near-OOD Detection", "Ren et al.", "arXiv", 2021,
                  "https://arxiv.org/abs/2106.09022")
    needs = frozenset({"features", "fit"})
    ada_scale = ADA_FRACTION  # replaced by ADA_FRACTION · std(g) on the ID training set at fit time
    hyperparameters = ("ridge",)
    ridge = 1e-4  # added to the diagonal of both covariances

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.means: Tensor | None = None  # [K, d] class means, float64
        self.class_whitening: Tensor | None = None  # [d, d]
        self.background_mean: Tensor | None = None  # [d]
        self.background_whitening: Tensor | None = None  # [d, d]

    def check(self) -> None:
        if not self.ridge >= 0.0:
            raise OptionError(f"ridge must be >= 0, got {self.ridge}")

    def fit(self, view: ModelView) -> None:
        assert view.features is not None and view.labels is not None  # "features", "fit" in needs
        f, labels = view.features.double(), view.labels
        n, d = f.shape
        k = view.num_classes
        counts = torch.bincount(labels, minlength=k)
        if (counts == 0).any():
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise ImoodError(f"rmd cannot fit class means: no ID training features for classes {missing}")
        means = torch.zeros(k, d, dtype=torch.float64, device=f.device).index_add_(0, labels, f)
        means /= counts[:, None].double()
        ridge = self.ridge * torch.eye(d, dtype=torch.float64, device=f.device)
        within = f - means[labels]
        background = f.mean(dim=0)
        around = f - background
        try:
            self.class_whitening = whitening(within.T @ within / n + ridge)
            self.background_whitening = whitening(around.T @ around / n + ridge)
        except RuntimeError as exc:  # linalg errors: a singular covariance
            raise ImoodError(f"rmd: the ID feature covariance is singular ({exc}); raise rmd:ridge=...") from None
        self.means, self.background_mean = means, background
        rows = evenly_spaced(n, ADA_ROWS).to(f.device)
        self.ada_scale = ADA_FRACTION * float(self._idness(f[rows]).std())

    def fit_state(self) -> dict[str, Tensor]:
        if (self.means is None or self.class_whitening is None or self.background_mean is None
                or self.background_whitening is None):
            return {}
        return {"means": self.means.cpu(), "class_whitening": self.class_whitening.cpu(),
                "background_mean": self.background_mean.cpu(),
                "background_whitening": self.background_whitening.cpu(),
                "ada_scale": torch.tensor([self.ada_scale], dtype=torch.float64)}

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        self.means = state["means"].double()
        self.class_whitening = state["class_whitening"].double()
        self.background_mean = state["background_mean"].double()
        self.background_whitening = state["background_whitening"].double()
        self.ada_scale = float(state["ada_scale"])

    def _idness(self, features: Tensor) -> Tensor:
        if (self.means is None or self.class_whitening is None or self.background_mean is None
                or self.background_whitening is None):
            raise ImoodError("rmd is not fitted: its Gaussians come from a trained model's ID training features, "
                             "so it is post hoc only (ada_rmd scores; train with e.g. ada_energy)")
        f = features.double()
        w = self.class_whitening.to(f.device)
        class_distance = torch.cdist(f @ w, self.means.to(f.device) @ w).pow(2).amin(dim=1)
        background = (f - self.background_mean.to(f.device)) @ self.background_whitening.to(f.device)
        return background.pow(2).sum(dim=1) - class_distance

    def idness(self, view: ModelView) -> Tensor:
        assert view.features is not None  # "features" in needs
        return self._idness(view.features).float()
