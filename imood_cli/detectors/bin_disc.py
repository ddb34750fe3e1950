"""Binary discriminator (Bitterwolf et al., "Breaking Down Out-of-Distribution Detection", ICML 2022):
an extra (K+1)-th logit trained ID vs OOD.

g(x) = the extra logit; vanilla OOD score 1 − σ(g). c = 1: g is a logit.
"""

from __future__ import annotations

from imood_cli.plugin_api import Detector, F, ImoodError, LossContext, ModelView, torch


class BinDisc(Detector):
    extra_outputs = 1
    ada_scale = 1.0
    idness_is_logit = True

    def idness(self, view: ModelView):
        if view.extra is None or view.extra.shape[1] < 1:
            raise ImoodError("bin_disc needs a model with an extra ID-vs-OOD output; this checkpoint has none")
        return view.extra[:, 0].float()

    def ood_score(self, view: ModelView, log_prior):
        return 1.0 - torch.sigmoid(self.idness(view))

    def loss(self, view: ModelView, ctx: LossContext):
        return F.binary_cross_entropy_with_logits(self.idness(view), ctx.is_id.float())
