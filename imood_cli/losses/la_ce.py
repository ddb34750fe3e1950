"""Logit-adjusted cross-entropy (Menon et al., 2021): CE(z + τ log π, y).

log π̃ = τ log π - const, and a per-row constant leaves the softmax unchanged, so adding log π̃
is the same loss. Evaluation always uses the raw logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_adjusted_ce(logits: torch.Tensor, labels: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float() + log_prior.to(logits.device, torch.float32), labels)
