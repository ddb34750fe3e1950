"""PASCL (Wang et al., "Partial and Asymmetric Contrastive Learning for Out-of-Distribution Detection in
Long-Tailed Recognition", ICML 2022): partial and asymmetric supervised contrastive learning.

Anchors are the tail ID views only; positives are the other view and the other same-class tail
views; negatives are the other tail views plus every auxiliary OOD projection (OOD never anchors).
"""

from __future__ import annotations

from imood_cli.losses.base import masked_contrastive
from imood_cli.plugin_api import AuxBatch, AuxLoss, OptionError


def tail_threshold(num_classes: int, k: float) -> int:
    """Classes with label >= this are the tail (the reference's round((1 - k) · K))."""
    return round((1 - k) * num_classes)


class PASCL(AuxLoss):
    hyperparameters = ("k", "T")
    k = 0.4  # fraction of classes counted as tail
    T = 0.07  # temperature

    def check(self) -> None:
        if not 0 < self.k <= 1 or not self.T > 0:
            raise OptionError(f"PASCL needs 0 < k <= 1 and T > 0, got k={self.k}, T={self.T}")

    def __call__(self, batch: AuxBatch):
        tail = batch.is_id & (batch.labels >= tail_threshold(batch.num_classes, self.k))
        positives = (batch.labels[:, None] == batch.labels[None, :]) & tail[None, :]
        return masked_contrastive(batch.projections, tail, tail | ~batch.is_id, positives, self.T)
