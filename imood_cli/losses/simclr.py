"""SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020): NT-Xent over the two views of each ID image.

Each view's only positive is the other view of the same image; every other ID view is a negative.
(The reference code's "simclr" was an ID-vs-OOD discriminator on one projection coordinate; this is
the real thing.)
"""

from __future__ import annotations

from imood_cli.losses.base import masked_contrastive
from imood_cli.plugin_api import AuxBatch, AuxLoss, OptionError, torch


class SimCLR(AuxLoss):
    hyperparameters = ("T",)
    T = 0.07

    def check(self) -> None:
        if not self.T > 0:
            raise OptionError(f"SimCLR needs T > 0, got {self.T}")

    def __call__(self, batch: AuxBatch):
        rows = torch.arange(batch.is_id.shape[0], device=batch.is_id.device)
        positives = batch.pair[:, None] == rows[None, :]
        return masked_contrastive(batch.projections, batch.is_id, batch.is_id, positives, self.T)
