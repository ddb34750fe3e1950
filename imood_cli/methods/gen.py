"""Generalized ENtropy, GEN (Liu et al., "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution
Detection", CVPR 2023).

The paper's score is G_γ(p) = −Σ_{j ∈ top-M} p_j^γ (1 − p_j)^γ over the M largest probabilities
(γ = 0.1, M = 100), higher for ID. Here the sum is a mean over the min(M, K) terms:

    g(x) = −(1 / min(M, K)) Σ_{j ∈ top-M} p_j^γ (1 − p_j)^γ   ∈ [−1, 0],   vanilla OOD score −g.

A constant factor, so the ranking is the paper's; pytorch-ood's `GEN(gamma, M)` returns −g exactly (it
averages too), up to its clamp of p to [1e-7, 1 − 1e-7]. Here the powers are taken in log space:
p^γ = exp(γ log p) from log_softmax, and the top class's 1 − p_1 = Σ_{k≠1} p_k from a logsumexp of the
other logits. So a confident sample, whose p_1 rounds to 1 and whose tail probabilities underflow in
float32, keeps the (1 − p_1)^γ and p_j^γ terms that carry the signal instead of 0 or the clamp's 0.2.

c = 0.1 (docs/concepts.md, "The scale c of ada_": GEN is probability-scale): g lies in [−1, 0] like msp's g in [0, 1
− 1/K].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imood_cli.plugin_api import ModelView, OptionError, Paper, Score, torch

if TYPE_CHECKING:
    from torch import Tensor


def log_one_minus_top(logits: Tensor, top_index: Tensor) -> Tensor:
    """log(1 − p_top) [N] without cancellation: the log of the other classes' probability mass."""
    others = logits.scatter(1, top_index[:, None], float("-inf"))
    return torch.logsumexp(others, dim=1) - torch.logsumexp(logits, dim=1)


class GEN(Score):
    paper = Paper("GEN: Pushing the Limits of Softmax-Based Out-of-Distribution Detection", "Liu et al.", "CVPR", 2023,
                  "https://openaccess.thecvf.com/content/CVPR2023/html/Liu_GEN_Pushing_the_Limits_of_Softmax-Based_Out-of-Distribution_Detection_CVPR_2023_paper.html")
    ada_scale = 0.1
    hyperparameters = ("gamma", "M")
    gamma = 0.1
    M = 100

    def check(self) -> None:
        if not self.gamma > 0:
            raise OptionError(f"gamma must be > 0, got {self.gamma}")
        if self.M < 1:
            raise OptionError(f"M must be >= 1, got {self.M}")

    def idness(self, view: ModelView) -> Tensor:
        z = view.logits.float()
        log_p = torch.log_softmax(z, dim=1)
        top_log_p, top_index = log_p.topk(min(self.M, z.shape[1]), dim=1)
        # Below the top class p <= 1/2, where log1p(-p) is accurate.
        log_q = torch.cat([log_one_minus_top(z, top_index[:, 0])[:, None],
                           torch.log1p(-top_log_p[:, 1:].exp())], dim=1)
        return -torch.exp(self.gamma * (top_log_p + log_q)).mean(dim=1)
