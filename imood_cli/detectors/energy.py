"""Energy score (Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020), with the
energy-bounded training loss.

g(x) = logsumexp_k z_k (T = 1); vanilla OOD score −g. c = 1: g is on the logit scale.
Loss: 0.2 · [mean_ID relu(E − m_in)² + mean_OOD relu(m_out − E)²], E = −g.
"""

from __future__ import annotations

from imood_cli.plugin_api import Detector, F, LossContext, ModelView, torch


def masked_mean(x):
    return x.mean() if x.numel() else x.sum() * 0.0


class Energy(Detector):
    ada_scale = 1.0
    m_out = -5.0
    weight = 0.2

    def idness(self, view: ModelView):
        return torch.logsumexp(view.logits.float(), dim=1)

    def loss(self, view: ModelView, ctx: LossContext):
        # The margins of the energy paper's CIFAR recipe: -23 for 10 classes, -27 otherwise.
        m_in = -23.0 if view.num_classes == 10 else -27.0
        e = -self.idness(view)
        l_in = masked_mean(F.relu(e[: ctx.num_id] - m_in) ** 2)
        l_out = masked_mean(F.relu(self.m_out - e[ctx.num_id:]) ** 2)
        return self.weight * (l_in + l_out)
