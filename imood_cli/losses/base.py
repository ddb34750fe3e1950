"""What the built-in aux losses share: a masked supervised-contrastive loss with fixed shapes."""

from __future__ import annotations

from imood_cli.plugin_api import torch

MASKED = -1e9  # finite, so a row with no candidate gives zeros, not NaN, in the backward pass


def masked_contrastive(z, anchors, candidates, positives, temperature: float):
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
