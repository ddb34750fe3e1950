"""MaxLogit (Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022).

g(x) = max_k z_k; vanilla OOD score −max_k z_k (pytorch-ood's `MaxLogit`, exactly).

c = 1, as for energy: max z ≤ logsumexp z ≤ max z + log K, so both live on the logit scale and move
together, and log β̂ is a log-ratio of probabilities in the same units. A smaller c would under-correct a
statistic that already is a logit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imood_cli.plugin_api import ModelView, Paper, Score

if TYPE_CHECKING:
    from torch import Tensor


class MaxLogit(Score):
    paper = Paper("Scaling Out-of-Distribution Detection for Real-World Settings", "Hendrycks et al.", "ICML", 2022,
                  "https://arxiv.org/abs/1911.11132")
    ada_scale = 1.0

    def idness(self, view: ModelView) -> Tensor:
        return view.logits.float().amax(dim=1)
