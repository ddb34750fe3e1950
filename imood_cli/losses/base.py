"""The aux-loss contract (DESIGN.md "Plugin protocols").

An aux loss sees the projections of one training batch laid out as
[ID view 1 (N rows) ; ID view 2 (N rows) ; auxiliary OOD (M rows)] and returns a scalar.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AuxBatch:
    projections: torch.Tensor  # [2N + M, p], L2-normalised
    labels: torch.Tensor  # [2N + M] class of each row, -1 for OOD rows
    is_id: torch.Tensor  # bool [2N + M]
    pair: torch.Tensor  # [2N + M] row index of the other view of the same image, -1 for OOD rows
    class_counts: torch.Tensor  # [K] training images per class

    @property
    def num_classes(self) -> int:
        return self.class_counts.numel()


class AuxLoss:
    """Base class: options arrive as keyword arguments (`--k`, `--T` on the command line)."""

    name: str = ""
    needs_projections: bool = True

    def __init__(self, **options) -> None:
        for key, value in options.items():
            if not hasattr(self, key):
                raise TypeError(f"{type(self).__name__} takes no option {key!r}")
            setattr(self, key, value)

    def __call__(self, batch: AuxBatch) -> torch.Tensor:
        raise NotImplementedError


def supervised_contrastive(
    anchors: torch.Tensor, anchor_labels: torch.Tensor, candidates: torch.Tensor, candidate_labels: torch.Tensor,
    self_index: torch.Tensor, temperature: float,
) -> torch.Tensor:
    """Mean over anchors of -mean_{positives} log softmax over candidates (self excluded).

    candidate_labels < 0 never count as positives (OOD negatives). self_index[i] is the column of
    anchor i among the candidates. Anchors without a positive are left out of the mean.
    """
    logits = anchors.float() @ candidates.float().T / temperature
    not_self = torch.ones_like(logits, dtype=torch.bool)
    rows = torch.arange(anchors.shape[0], device=logits.device)
    not_self[rows, self_index] = False
    logits = logits.masked_fill(~not_self, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (anchor_labels[:, None] == candidate_labels[None, :]) & not_self & (candidate_labels[None, :] >= 0)
    n_pos = positive.sum(dim=1)
    has = n_pos > 0
    if not has.any():
        return anchors.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~positive, 0.0)).sum(dim=1)[has] / n_pos[has]
    return per_anchor.mean()
