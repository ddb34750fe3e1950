"""fast Decision Boundary Distance, fDBD (Liu & Qin, "Fast Decision Boundary based Out-of-Distribution
Detector", ICML 2024).

The distance from the penultimate feature f to the boundary between the predicted class ŷ and class c of
the linear head z = W f + b is |z_ŷ − z_c| / ‖w_ŷ − w_c‖; fDBD averages it over c ≠ ŷ and divides by the
distance from f to μ, the mean ID training feature (fitted):

    g(x) = 1/(K−1) Σ_{c≠ŷ} |z_ŷ − z_c| / (‖w_ŷ − w_c‖₂ · ‖f − μ‖₂),   vanilla OOD score −g.

pytorch-ood's `fDBD.fit_features` / `predict_features` give −g exactly (same clamp of ‖f − μ‖ at 1e-8).

g is a ratio of distances whose size depends on the model, so c is measured: at fit time
c = 0.1 · std(g over the ID training set) (docs/concepts.md, "The scale c of ada_": distance-scale g), kept in the
fit cache. The class value
below only stands until a fit replaces it.

During ImOOD training (`ada_fdbd`), where no fit exists yet, μ tracks the mean ID feature of each batch as
an exponential moving average, and the boundary norms follow the live classifier weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imood_cli.plugin_api import ImoodError, LossContext, ModelView, Paper, Score, torch

if TYPE_CHECKING:
    from torch import Tensor

CHUNK = 16384  # training rows per pass when measuring c, bounding the [rows, K] temporaries
FEATURE_EPS = 1e-8
NORM_EPS = 1e-12  # two classes with identical weights: boundary norm 0, logit gap 0 -> term 0, not NaN


def boundary_norms(weight: Tensor) -> Tensor:
    """‖w_i − w_j‖₂ [K, K] (float64)."""
    w = weight.detach().double()
    return torch.cdist(w, w)


class FDBD(Score):
    paper = Paper("Fast Decision Boundary based Out-of-Distribution Detector", "Liu & Qin", "ICML", 2024,
                  "https://arxiv.org/abs/2312.11536")
    needs = frozenset({"features", "classifier", "fit"})
    ada_scale = 0.01
    momentum = 0.9  # ImOOD training only: weight of the previous μ per step

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.mean: Tensor | None = None  # [d] float64, μ
        self.norms: Tensor | None = None  # [K, K] float64, from the classifier the fit saw

    def _statistic(self, logits: Tensor, features: Tensor, norms: Tensor) -> Tensor:
        if self.mean is None:
            raise ImoodError("fdbd is not fitted: fit it on the ID training set first")
        z = logits.float()
        k = z.shape[1]
        if k < 2:
            raise ImoodError("fdbd needs at least two classes: it measures distances between class boundaries")
        top, pred = z.max(dim=1)
        gaps = top[:, None] - z  # >= 0; zero on the predicted class itself
        per_boundary = gaps / norms.to(z.device, z.dtype)[pred].clamp(min=NORM_EPS)
        spread = (features.float() - self.mean.to(z.device, z.dtype)).norm(dim=1).clamp(min=FEATURE_EPS)
        return per_boundary.sum(dim=1) / ((k - 1) * spread)

    def fit(self, view: ModelView) -> None:
        f = view.features
        if f is None or f.shape[0] == 0:
            raise ImoodError("fdbd needs the ID training features to fit")
        assert view.weight is not None  # "classifier" in needs
        self.mean = f.detach().double().mean(dim=0)
        self.norms = boundary_norms(view.weight)
        g = torch.cat([self._statistic(view.logits[s:s + CHUNK].detach(), f[s:s + CHUNK].detach(), self.norms)
                       for s in range(0, f.shape[0], CHUNK)])
        spread = float(g.double().std()) if g.numel() > 1 else 0.0
        # A constant g (one image, or a degenerate model) leaves c at the class value rather than 0.
        self.ada_scale = 0.1 * spread if spread > 0 else type(self).ada_scale

    def fit_state(self) -> dict[str, Tensor]:
        if self.mean is None:
            return {}
        state = {"mean": self.mean.cpu(), "ada_scale": torch.tensor(float(self.ada_scale), dtype=torch.float64)}
        if self.norms is not None:
            state["norms"] = self.norms.cpu()
        return state

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        self.mean = state["mean"].double()
        self.norms = state["norms"].double() if "norms" in state else None
        if "ada_scale" in state:
            self.ada_scale = float(state["ada_scale"])

    def idness(self, view: ModelView) -> Tensor:
        norms = self.norms
        if norms is None:
            assert view.weight is not None  # "classifier" in needs
            norms = boundary_norms(view.weight)
        assert view.features is not None  # "features" in needs
        return self._statistic(view.logits, view.features, norms)

    def train_update(self, view: ModelView, ctx: LossContext) -> None:
        assert view.features is not None  # "features" in needs
        with torch.no_grad():
            batch_mean = view.features[: ctx.num_id].detach().double().mean(dim=0)  # ID rows only
            if self.mean is None:
                self.mean = batch_mean
            else:
                self.mean = self.momentum * self.mean.to(batch_mean.device) + (1 - self.momentum) * batch_mean
