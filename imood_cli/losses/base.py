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


MASKED = -1e9  # finite, so a row with no candidate gives zeros, not NaN, in the backward pass


def masked_contrastive(z: torch.Tensor, anchors: torch.Tensor, candidates: torch.Tensor, positives: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """Mean over anchors of -mean_{positives} log softmax over candidates, self always excluded.

    z: [R, p] rows; anchors, candidates: bool [R]; positives: bool [R, R]. Anchors without a
    positive are left out of the mean; with no anchor at all the loss is 0. Fixed shapes
    throughout, so nothing waits on the host.
    """
    r = z.shape[0]
    logits = z.float() @ z.float().T / temperature
    eye = torch.eye(r, dtype=torch.bool, device=z.device)
    valid = candidates[None, :] & ~eye
    log_prob = torch.log_softmax(logits.masked_fill(~valid, MASKED), dim=1)
    pos = positives & valid
    n_pos = pos.sum(dim=1)
    per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(dim=1) / n_pos.clamp(min=1)
    use = anchors & (n_pos > 0)
    return (per_anchor * use).sum() / use.sum().clamp(min=1)
