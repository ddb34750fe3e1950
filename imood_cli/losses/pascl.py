"""PASCL (Wang et al., ICML 2022): partial and asymmetric supervised contrastive learning.

Anchors are the tail ID views only; positives are the other view and the other same-class tail
views; negatives are the other tail views plus every auxiliary OOD projection (OOD never anchors).
"""

from __future__ import annotations

import torch

from imood_cli.losses.base import AuxBatch, AuxLoss, supervised_contrastive


def tail_threshold(num_classes: int, k: float) -> int:
    """Classes with label >= this are the tail (the reference's round((1 - k) · K))."""
    return round((1 - k) * num_classes)


class PASCL(AuxLoss):
    k = 0.4  # fraction of classes counted as tail
    T = 0.07  # temperature

    def __call__(self, batch: AuxBatch) -> torch.Tensor:
        tail = batch.is_id & (batch.labels >= tail_threshold(batch.num_classes, self.k))
        if not tail.any():
            return batch.projections.sum() * 0.0
        ood = ~batch.is_id
        anchors = batch.projections[tail]
        candidates = torch.cat([anchors, batch.projections[ood]])
        candidate_labels = torch.cat([batch.labels[tail], torch.full_like(batch.labels[ood], -1)])
        self_index = torch.arange(anchors.shape[0], device=anchors.device)
        return supervised_contrastive(anchors, batch.labels[tail], candidates, candidate_labels, self_index, self.T)
