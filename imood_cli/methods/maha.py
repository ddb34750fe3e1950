"""Mahalanobis distance to the nearest class mean (Lee et al., "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018), tied covariance.

g(x) = −min_k (f−μ_k)ᵀ Σ⁻¹ (f−μ_k), class means μ_k and tied covariance Σ (+1e-4·I) of the ID training
features; vanilla OOD score the min distance. c = 0.01: g is a squared distance (docs/concepts.md, "The scale c of
ada_").

Larger distance means more OOD (the reference code had the sign reversed). Fitted on ID training
features only. During ImOOD training the class means and covariance track the ID features of each
batch as an exponential moving average, since no fitted statistics exist yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imood_cli.plugin_api import ImoodError, LossContext, ModelView, Paper, Score, torch

if TYPE_CHECKING:
    from torch import Tensor

RIDGE = 1e-4


def fit_gaussian(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Class means [K, d] and tied covariance [d, d] (+ RIDGE·I), in float64."""
    f = features.double()
    d = f.shape[1]
    means = torch.zeros(num_classes, d, dtype=torch.float64, device=f.device)
    present = torch.bincount(labels, minlength=num_classes)
    if (present == 0).any():
        missing = torch.nonzero(present == 0).flatten().tolist()
        raise ImoodError(f"cannot fit class means: no training features for classes {missing}")
    means.index_add_(0, labels, f)
    means /= present[:, None].double()
    centred = f - means[labels]
    cov = centred.T @ centred / f.shape[0] + RIDGE * torch.eye(d, dtype=torch.float64, device=f.device)
    return means, cov


class Mahalanobis(Score):
    paper = Paper("A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks",
                  "Lee et al.", "NeurIPS", 2018, "https://arxiv.org/abs/1807.03888")
    needs = frozenset({"features", "fit"})
    ada_scale = 0.01
    momentum = 0.9

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.means: Tensor | None = None  # [K, d] float64
        self.whiten: Tensor | None = None  # W with Σ⁻¹ = W Wᵀ
        self.cov: Tensor | None = None  # [d, d] float64, + RIDGE·I

    def _set(self, means: Tensor, cov: Tensor) -> None:
        self.means = means
        self.cov = cov
        precision, _ = torch.linalg.inv_ex(cov)  # the _ex forms skip the host-side error check
        precision = (precision + precision.T) / 2
        self.whiten, _ = torch.linalg.cholesky_ex(precision)

    def fit(self, view: ModelView) -> None:
        assert view.features is not None and view.labels is not None  # "features", "fit" in needs
        self._set(*fit_gaussian(view.features, view.labels, view.num_classes))

    def fit_state(self) -> dict[str, Tensor]:
        if self.means is None or self.cov is None:
            return {}
        return {"means": self.means.cpu(), "cov": self.cov.cpu()}

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        self._set(state["means"].double(), state["cov"].double())

    def distances(self, features: Tensor) -> Tensor:
        """Squared Mahalanobis distance of each row to each class mean, [N, K]."""
        if self.whiten is None or self.means is None:
            raise ImoodError("maha is not fitted: fit it on ID training features first")
        w = self.whiten.to(features.device)
        fw = features.double() @ w
        mw = self.means.to(features.device) @ w
        return torch.cdist(fw, mw).pow(2)

    def idness(self, view: ModelView) -> Tensor:
        assert view.features is not None  # "features" in needs
        return -self.distances(view.features).amin(dim=1).to(view.features.dtype)

    def train_update(self, view: ModelView, ctx: LossContext) -> None:
        assert view.features is not None  # "features" in needs
        feats = view.features[: ctx.num_id].detach()  # ID rows only: OOD never enters the class statistics
        k = view.num_classes
        with torch.no_grad():
            f = feats.double()
            counts = (ctx.labels[:, None] == torch.arange(k, device=f.device)).sum(0)  # no host sync
            sums = torch.zeros(k, f.shape[1], dtype=torch.float64, device=f.device).index_add_(0, ctx.labels, f)
            if self.means is None:
                base = f.mean(0, keepdim=True).expand(k, -1)
                means = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None].double(), base).clone()
            else:
                seen = counts[:, None] > 0
                batch_means = sums / counts.clamp(min=1)[:, None].double()
                means = torch.where(seen, self.momentum * self.means + (1 - self.momentum) * batch_means, self.means)
            centred = f - means[ctx.labels]
            cov = centred.T @ centred / max(f.shape[0], 1)
            eye = RIDGE * torch.eye(f.shape[1], dtype=torch.float64, device=f.device)
            if self.means is not None and self.cov is not None:  # set together by _set
                cov = self.momentum * (self.cov - eye) + (1 - self.momentum) * cov
            cov = cov + eye
            self._set(means, cov)
