"""ViM (Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022).

Features are taken around the origin u = −W⁺b (W⁺ the pseudo-inverse of the classifier weight), the
point the classifier maps to zero logits. The principal space P is spanned by the eigenvectors of the D
largest eigenvalues of the ID training features' second moment about u; the residual is the part of
f − u outside it. Its norm, scaled by α = mean_i max_k z_ik / mean_i ‖(f_i − u)^{P⊥}‖ over the ID
training set, is the virtual logit:

    g(x) = logsumexp_k z_k(x) − α ‖(f(x) − u)^{P⊥}‖        vanilla OOD score −g (pytorch-ood's score)

D follows the paper's code: 1000 for d ≥ 2048, 512 for d ≥ 768, else d/2 (`dim=0`), or `dim=D`.

ada_ c = 0.1 · std(g on the ID training set), set at fit time and kept with the fit: g is an energy
minus a distance in α-scaled feature units, whose spread depends on the model, so c is measured in the
units of g (docs/concepts.md, "The scale c of ada_": distance-scale detectors) and c · log β̂ moves g by a tenth of
its ID spread per
unit of log β̂.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imood_cli.plugin_api import ImoodError, ModelView, OptionError, Paper, Score, torch

if TYPE_CHECKING:
    from torch import Tensor

ADA_FRACTION = 0.1  # c = ADA_FRACTION · std(g on the ID training set)


def principal_dim(d: int, requested: int) -> int:
    """D for features of size d: `requested`, or the paper's rule when 0."""
    if requested:
        dim = requested
    elif d >= 2048:
        dim = 1000
    elif d >= 768:
        dim = 512
    else:
        dim = d // 2
    if not 1 <= dim < d:
        raise OptionError(f"vim: the principal space must be smaller than the features (d = {d}), got dim={dim}: "
                         f"pass vim:dim=D with 1 <= D < {d}")
    return dim


class ViM(Score):
    paper = Paper("ViM: Out-Of-Distribution with Virtual-logit Matching", "Wang et al.", "CVPR", 2022,
                  "https://arxiv.org/abs/2203.10807")
    needs = frozenset({"features", "classifier", "fit"})
    ada_scale = ADA_FRACTION  # replaced by ADA_FRACTION · std(g) on the ID training set at fit time
    hyperparameters = ("dim",)
    dim = 0  # principal dimension D; 0 picks it from the feature size as the paper does

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.origin: Tensor | None = None  # u [d]
        self.residual_basis: Tensor | None = None  # [d, d − D], orthonormal columns spanning P⊥
        self.alpha: Tensor | None = None  # float64 scalar tensor

    def check(self) -> None:
        if self.dim < 0:
            raise OptionError(f"dim must be >= 0 (0 picks it from the feature size), got {self.dim}")

    def fit(self, view: ModelView) -> None:
        assert view.features is not None and view.weight is not None and view.bias is not None  # needs
        f = view.features.double()
        if f.shape[0] < 2:
            raise ImoodError("vim needs at least two ID training features to fit its principal space")
        weight, bias = view.weight.double(), view.bias.double()
        d = f.shape[1]
        dim = principal_dim(d, self.dim)
        origin = -(torch.linalg.pinv(weight) @ bias)
        centred = f - origin
        _, vectors = torch.linalg.eigh(centred.T @ centred / f.shape[0])  # eigenvalues ascending
        basis = vectors[:, : d - dim].contiguous()
        residual = (centred @ basis).norm(dim=1)
        logits = f @ weight.T + bias
        alpha = logits.amax(dim=1).mean() / residual.mean()
        self.origin, self.residual_basis, self.alpha = origin, basis, alpha
        g = torch.logsumexp(logits, dim=1) - alpha * residual
        self.ada_scale = ADA_FRACTION * float(g.std())

    def fit_state(self) -> dict[str, Tensor]:
        if self.origin is None or self.residual_basis is None or self.alpha is None:
            return {}
        return {"origin": self.origin.cpu(), "residual_basis": self.residual_basis.cpu(),
                "alpha": self.alpha.reshape(1).cpu(), "ada_scale": torch.tensor([self.ada_scale], dtype=torch.float64)}

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        self.origin = state["origin"].double()
        self.residual_basis = state["residual_basis"].double()
        self.alpha = state["alpha"].double().reshape(())
        self.ada_scale = float(state["ada_scale"])

    def virtual_logit(self, features: Tensor) -> Tensor:
        """α ‖(f − u)^{P⊥}‖ for each row, [N] float32."""
        if self.origin is None or self.residual_basis is None or self.alpha is None:
            raise ImoodError("vim is not fitted: its principal space comes from a trained model's ID training "
                             "features, so it is post hoc only (ada_vim scores; train with e.g. ada_energy)")
        f = features.float()
        basis = self.residual_basis.to(f.device, torch.float32)
        centred = f - self.origin.to(f.device, torch.float32)
        return (centred @ basis).norm(dim=1) * self.alpha.to(f.device, torch.float32)

    def idness(self, view: ModelView) -> Tensor:
        assert view.features is not None  # "features" in needs
        return torch.logsumexp(view.logits.float(), dim=1) - self.virtual_logit(view.features)
