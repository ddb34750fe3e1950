"""No auxiliary loss."""

from __future__ import annotations

from imood_cli.plugin_api import AuxBatch, AuxLoss


class NoAuxLoss(AuxLoss):
    needs_projections = False

    def __call__(self, batch: AuxBatch):
        return batch.projections.new_zeros(())
