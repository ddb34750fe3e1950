"""SimCLR (Chen et al., 2020): NT-Xent over the two views of each ID image.

Each view's only positive is the other view of the same image; every other ID view is a negative.
(The reference code's "simclr" was an ID-vs-OOD discriminator on one projection coordinate; this is
the real thing.)
"""

from __future__ import annotations

import torch

from imood_cli.losses.base import AuxBatch, AuxLoss, supervised_contrastive


class SimCLR(AuxLoss):
    T = 0.07

    def __call__(self, batch: AuxBatch) -> torch.Tensor:
        rows = torch.nonzero(batch.is_id).flatten()
        if rows.numel() < 2:
            return batch.projections.sum() * 0.0
        z = batch.projections[rows]
        # Label every image by its lower row index so only the two views of an image match.
        position = torch.full((batch.is_id.numel(),), -1, dtype=torch.long, device=z.device)
        position[rows] = torch.arange(rows.numel(), device=z.device)
        image_id = torch.minimum(rows, batch.pair[rows])
        self_index = position[rows]
        return supervised_contrastive(z, image_id, z, image_id, self_index, self.T)
