"""Supervised contrastive loss (Khosla et al., NeurIPS 2020) over all ID views.

Anchors: every ID view. Positives: the other views of the same class (the other view of the same
image included). Denominator: every other ID view. Auxiliary OOD rows take no part at all (neither
anchors nor negatives); that is the difference from PASCL, which anchors tail views only and uses
OOD rows as negatives.

    L = mean_i  -1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p / T) / Σ_{a∈A(i)} exp(z_i·z_a / T) )

i over ID views with at least one positive, A(i) = the other ID views, P(i) = those of i's class.
"""

from __future__ import annotations

from imood_cli.plugin_api import AuxBatch, AuxLoss, torch

MASKED = -1e9  # finite: a row with no candidate gives zeros, not NaN, in the backward pass


class SupCon(AuxLoss):
    hyperparameters = ("T",)
    T = 0.07  # temperature; `imood train --T` sets it

    def __call__(self, batch: AuxBatch):
        # Masks over all rows instead of boolean indexing: fixed shapes, no wait on the host.
        z = batch.projections.float()
        is_id = batch.is_id
        eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
        candidates = is_id[None, :] & ~eye  # the other ID views; OOD rows never enter the softmax
        log_prob = torch.log_softmax((z @ z.T / self.T).masked_fill(~candidates, MASKED), dim=1)
        positives = (batch.labels[:, None] == batch.labels[None, :]) & candidates
        n_pos = positives.sum(dim=1)
        per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(dim=1) / n_pos.clamp(min=1)
        use = is_id & (n_pos > 0)  # OOD rows never anchor
        return (per_anchor * use).sum() / use.sum().clamp(min=1)
