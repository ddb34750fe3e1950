"""Binary discriminator (Bitterwolf et al., "Breaking Down Out-of-Distribution Detection", ICML 2022):
an extra (K+1)-th logit trained ID vs OOD.

g(x) = the extra logit; vanilla OOD score 1 − σ(g). c = 1: g is a logit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imood_cli.plugin_api import F, ImoodError, LossContext, Method, ModelView, Objective, Paper, Score, torch

if TYPE_CHECKING:
    from torch import Tensor


class BinDiscScore(Score):
    """The extra ID-vs-OOD logit; vanilla OOD score 1 − σ(g)."""

    extra_outputs = 1
    ada_scale = 1.0
    idness_is_logit = True

    def idness(self, view: ModelView) -> Tensor:
        if view.extra is None or view.extra.shape[1] < 1:
            raise ImoodError("bin_disc needs a model with an extra ID-vs-OOD output; this checkpoint has none")
        return view.extra[:, 0].float()

    def ood_score(self, view: ModelView, log_prior: Tensor) -> Tensor:
        return 1.0 - torch.sigmoid(self.idness(view))


class BinDiscObjective(Objective):
    """BCE of the extra logit g: ID rows 1, auxiliary rows 0."""

    extra_outputs = 1

    def loss(self, view: ModelView, ctx: LossContext, g: Tensor | None = None) -> Tensor:
        assert g is not None, "the trainer hands the score's g to the objective"
        return F.binary_cross_entropy_with_logits(g.float(), ctx.is_id.float())


class BinDisc(Method):
    score = BinDiscScore
    objective = BinDiscObjective
    ada_keeps_objective = False  # ImOOD's BCE on the same logit takes its place
    paper = Paper("Breaking Down Out-of-Distribution Detection: Many Methods Based on OOD Training Data Estimate a "
                  "Combination of the Same Core Quantities", "Bitterwolf et al.", "ICML", 2022,
                  "https://arxiv.org/abs/2206.09880")
