"""SCALE (Xu, Chen, Franchi & Yao, "Scaling for Training Time and Post-hoc Out-of-distribution Detection
Enhancement", ICLR 2024).

Per sample, r = Σa / Σ top(a), the sum of all n activations over the sum of the t = n − round(n·p/100)
largest; every activation is multiplied by exp(r), none is pruned, and the classifier re-runs on them:

    g(x) = logsumexp_k z_k(a(x) · exp(r(x)))        vanilla OOD score −g (the energy of the re-run logits)

Defaults are the paper's (and its code's): p = 85 on the penultimate features, i.e. after global
average pooling (`layer=features`); `layer=map` scales the last feature map before pooling instead.
Like the paper, SCALE assumes non-negative (post-ReLU) activations.

ada_ c = 1: g is an energy, on the logit scale like energy's own g (docs/concepts.md).

pytorch-ood's SCALE takes `percentile` as a fraction and defaults to 0.65; its 0.85 on a [N, d, 1, 1]
view of the features is `scale` here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imood_cli.plugin_api import ImoodError, ModelView, OptionError, Paper, Score, torch

if TYPE_CHECKING:
    from torch import Tensor

LAYERS = ("features", "map")


def scale_activations(x: Tensor, p: float) -> Tensor:
    """Each row of x ([N, ...]) times exp(its sum / the sum of its top n − round(n·p/100) entries)."""
    flat = x.reshape(x.shape[0], -1)
    n = flat.shape[1]
    keep = n - round(n * p / 100.0)  # the paper's rounding, half to even
    if keep < 1:
        raise ImoodError(f"scale: p={p} leaves none of {n} activations per sample in the top part: lower p")
    top = flat.topk(keep, dim=1).values.sum(dim=1, keepdim=True)
    total = flat.sum(dim=1, keepdim=True)
    # All-zero rows: 0/0 is taken as 0, so they stay zero.
    ratio = torch.where(top != 0, total / torch.where(top != 0, top, 1.0), 0.0)
    return (flat * torch.exp(ratio)).reshape(x.shape)


class SCALE(Score):
    paper = Paper("Scaling for Training Time and Post-hoc Out-of-distribution Detection Enhancement", "Xu et al.",
                  "ICLR", 2024, "https://arxiv.org/abs/2310.00227")
    ada_scale = 1.0
    hyperparameters = ("p", "layer")
    p = 85.0  # percentage of each sample's activations left out of the top sum
    layer = "features"

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        """What the engine hands over follows the layer chosen."""
        return frozenset({"feature_map"}) if self.layer == "map" else frozenset({"features", "classifier"})

    def check(self) -> None:
        if self.layer not in LAYERS:
            raise OptionError(f"layer must be one of {', '.join(LAYERS)}, got {self.layer!r}")
        if not 0.0 <= self.p < 100.0:
            raise OptionError(f"p is a percentage in [0, 100), got {self.p}")
        if 0.0 < self.p < 1.0:
            raise OptionError(f"p is a percentage (pytorch-ood's percentile=0.85 is p=85), got {self.p}: "
                              f"for {self.p * 100:g}% write p={self.p * 100:g}")

    def idness(self, view: ModelView) -> Tensor:
        if self.layer == "map":
            assert view.feature_map is not None  # "feature_map" in needs
            logits = view.logits_from_feature_map(scale_activations(view.feature_map.float(), self.p))
        else:
            assert view.features is not None  # "features" in needs
            logits = view.logits_from_features(scale_activations(view.features.float(), self.p))
        return torch.logsumexp(logits.float(), dim=1)
