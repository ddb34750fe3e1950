"""SimCLR (Chen et al., 2020): NT-Xent over the two views of each ID image.

Each view's only positive is the other view of the same image; every other ID view is a negative.
(The reference code's "simclr" was an ID-vs-OOD discriminator on one projection coordinate; this is
the real thing.)
"""

from __future__ import annotations

import torch

from imood_cli.losses.base import AuxBatch, AuxLoss, masked_contrastive


class SimCLR(AuxLoss):
    T = 0.07

    def __call__(self, batch: AuxBatch) -> torch.Tensor:
        rows = torch.arange(batch.is_id.shape[0], device=batch.is_id.device)
        positives = batch.pair[:, None] == rows[None, :]
        return masked_contrastive(batch.projections, batch.is_id, batch.is_id, positives, self.T)
