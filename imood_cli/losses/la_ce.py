"""Logit-adjusted cross-entropy (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021):
CE(z + τ log π, y).

log π̃ = τ log π - const, and a per-row constant leaves the softmax unchanged, so adding log π̃
is the same loss. Evaluation always uses the raw logits.
"""

from __future__ import annotations

from imood_cli.plugin_api import F, torch


def logit_adjusted_ce(logits, labels, log_prior):
    return F.cross_entropy(logits.float() + log_prior.to(logits.device, torch.float32), labels)
