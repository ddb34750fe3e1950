"""ASH (Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for Out-of-Distribution
Detection", ICLR 2023).

Per sample, the activations a (n values) below its own p-th percentile are set to 0 and the top
t = n − round(n·p/100) are kept as they are (ASH-P), all set to Σa / t (ASH-B, keeping the sum), or
multiplied by exp(Σa / Σ kept) (ASH-S); the classifier re-runs on the shaped activations:

    g(x) = logsumexp_k z_k(ASH(a(x)))        vanilla OOD score −g (the energy of the re-run logits)

Defaults are the paper's (and its code's) main setting: ASH-S at p = 90 on the penultimate features,
i.e. after global average pooling (`layer=features`). `layer=map` shapes the last feature map before
pooling instead (pytorch-ood's examples; the paper's appendix studies earlier layers), then pools and
classifies. Like the paper, ASH assumes non-negative (post-ReLU) activations.

ada_ c = 1: g is an energy, on the logit scale like energy's own g (docs/concepts.md).

pytorch-ood's ASH takes `percentile` as a fraction and defaults to 0.65; its `ash-s` at 0.9 on a
[N, d, 1, 1] view of the features is `ash` here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imood_cli.plugin_api import ImoodError, ModelView, OptionError, Paper, Score, torch

if TYPE_CHECKING:
    from torch import Tensor

VARIANTS = ("s", "b", "p")
LAYERS = ("features", "map")


def kept_count(n: int, p: float) -> int:
    """How many of n activations survive pruning at percentile p (the paper's rounding, half to even)."""
    keep = n - round(n * p / 100.0)
    if keep < 1:
        raise ImoodError(f"pruning {p}% of {n} activations per sample keeps none: lower p")
    return keep


def shape_activations(x: Tensor, p: float, variant: str) -> Tensor:
    """ASH-`variant` of each row of x ([N, ...], shaped over all non-batch dimensions), same shape."""
    flat = x.reshape(x.shape[0], -1)
    keep = kept_count(flat.shape[1], p)
    values, index = flat.topk(keep, dim=1)
    total = flat.sum(dim=1, keepdim=True)
    if variant == "b":
        values = (total / keep).expand_as(values)
    shaped = torch.zeros_like(flat).scatter(1, index, values)
    if variant == "s":
        kept = values.sum(dim=1, keepdim=True)
        # All-zero rows keep sum 0; their ratio 0/0 is taken as 0, leaving the zeros unchanged.
        ratio = torch.where(kept != 0, total / torch.where(kept != 0, kept, 1.0), 0.0)
        shaped = shaped * torch.exp(ratio)
    return shaped.reshape(x.shape)


class ASH(Score):
    paper = Paper("Extremely Simple Activation Shaping for Out-of-Distribution Detection", "Djurisic et al.", "ICLR",
                  2023, "https://arxiv.org/abs/2209.09858")
    ada_scale = 1.0
    hyperparameters = ("variant", "p", "layer")
    variant = "s"
    p = 90.0  # percentage of each sample's activations pruned
    layer = "features"

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        """What the engine hands over follows the layer chosen."""
        return frozenset({"feature_map"}) if self.layer == "map" else frozenset({"features", "classifier"})

    def check(self) -> None:
        if self.variant not in VARIANTS:
            raise OptionError(f"variant must be one of {', '.join(VARIANTS)} (ASH-S, ASH-B, ASH-P), "
                              f"got {self.variant!r}")
        if self.layer not in LAYERS:
            raise OptionError(f"layer must be one of {', '.join(LAYERS)}, got {self.layer!r}")
        if not 0.0 <= self.p < 100.0:
            raise OptionError(f"p is the percentage of activations pruned, in [0, 100), got {self.p}")
        if 0.0 < self.p < 1.0:
            raise OptionError(f"p is a percentage (pytorch-ood's percentile=0.9 is p=90), got {self.p}: "
                              f"to prune {self.p * 100:g}% write p={self.p * 100:g}")

    def idness(self, view: ModelView) -> Tensor:
        if self.layer == "map":
            assert view.feature_map is not None  # "feature_map" in needs
            logits = view.logits_from_feature_map(shape_activations(view.feature_map.float(), self.p, self.variant))
        else:
            assert view.features is not None  # "features" in needs
            logits = view.logits_from_features(shape_activations(view.features.float(), self.p, self.variant))
        return torch.logsumexp(logits.float(), dim=1)
