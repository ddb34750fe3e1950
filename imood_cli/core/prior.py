"""Class prior π, the adjusted prior π̃ = softmax(τ·log π), and log β̂ (docs/concepts.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from imood_cli.core.lazy import torch
from imood_cli.errors import ImoodError

if TYPE_CHECKING:
    from torch import Tensor


def log_prior(class_counts: Sequence[int] | Tensor, logit_adjust: float = 1.0) -> Tensor:
    """log π̃ [K] (float64) with π̃_k ∝ π_k^τ; τ = 0 gives the uniform prior (every ImOOD term off)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ImoodError("class counts must be a non-empty list of numbers")
    if (counts <= 0).any():
        raise ImoodError("every class needs at least one training image to define the class prior")
    log_pi = torch.log(counts / counts.sum())
    return torch.log_softmax(logit_adjust * log_pi, dim=0)


def log_beta(logits: Tensor, log_prior_adj: Tensor) -> Tensor:
    """log β̂(x) = log((1/K) Σ_k p_k(x) / π̃_k) [N], computed with logsumexp for stability.

    logits: [N, K] class logits; log_prior_adj: log π̃ [K] from `log_prior`.
    """
    k = logits.shape[1]
    log_p = torch.log_softmax(logits.float(), dim=1)
    lp = log_prior_adj.to(device=logits.device, dtype=log_p.dtype)
    return torch.logsumexp(log_p - lp, dim=1) - torch.log(torch.tensor(float(k), device=logits.device))
