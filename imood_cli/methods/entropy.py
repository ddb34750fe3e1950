"""Predictive entropy as an OOD score (Chan et al., "Entropy Maximization and Meta Classification for
Out-of-Distribution Detection in Semantic Segmentation", ICCV 2021, the paper pytorch-ood cites for it).

g(x) = −H(p(x)) = Σ_k p_k log p_k, in [−log K, 0]; vanilla OOD score H(p(x)). pytorch-ood's `Entropy`
returns H as well, with p clipped to ≥ 1e-7 before the log; here log p comes from log_softmax, which needs
no clip and is exact for probabilities that underflow in float32.

c = 0.1 (docs/concepts.md, "The scale c of ada_": entropy-based g is probability-scale): on a trained model the ID
entropies bunch within a
few tenths of a nat of 0 while c·log β̂ moves by at most 0.1·log(max π / min π) (≈ 0.46 for ρ = 100), the
same relative weight as msp's correction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imood_cli.plugin_api import ModelView, Paper, Score, torch

if TYPE_CHECKING:
    from torch import Tensor


class Entropy(Score):
    paper = Paper("Entropy Maximization and Meta Classification for Out-of-Distribution Detection in Semantic "
                  "Segmentation", "Chan et al.", "ICCV", 2021, "https://arxiv.org/abs/2012.06575")
    ada_scale = 0.1

    def idness(self, view: ModelView) -> Tensor:
        log_p = torch.log_softmax(view.logits.float(), dim=1)
        return (log_p.exp() * log_p).sum(dim=1)
