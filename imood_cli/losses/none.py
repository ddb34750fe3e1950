"""No auxiliary loss."""

from __future__ import annotations

import torch

from imood_cli.losses.base import AuxBatch, AuxLoss


class NoAuxLoss(AuxLoss):
    needs_projections = False

    def __call__(self, batch: AuxBatch) -> torch.Tensor:
        return batch.projections.new_zeros(())
