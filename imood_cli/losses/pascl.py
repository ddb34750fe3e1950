"""PASCL (Wang et al., ICML 2022): partial and asymmetric supervised contrastive learning.

Anchors are the tail ID views only; positives are the other view and the other same-class tail
views; negatives are the other tail views plus every auxiliary OOD projection (OOD never anchors).
"""

from __future__ import annotations

import torch

from imood_cli.losses.base import AuxBatch, AuxLoss, masked_contrastive


def tail_threshold(num_classes: int, k: float) -> int:
    """Classes with label >= this are the tail (the reference's round((1 - k) · K))."""
    return round((1 - k) * num_classes)


class PASCL(AuxLoss):
    k = 0.4  # fraction of classes counted as tail
    T = 0.07  # temperature

    def __call__(self, batch: AuxBatch) -> torch.Tensor:
        tail = batch.is_id & (batch.labels >= tail_threshold(batch.num_classes, self.k))
        positives = (batch.labels[:, None] == batch.labels[None, :]) & tail[None, :]
        return masked_contrastive(batch.projections, tail, tail | ~batch.is_id, positives, self.T)
