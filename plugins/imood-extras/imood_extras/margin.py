"""Logit margin: how far the top class leads the runner-up.

g(x) = z_(1)(x) − z_(2)(x), the largest logit minus the second largest; the vanilla OOD score is −g. The
top-two margin is the uncertainty measure of margin sampling (Scheffer, Decomain & Wrobel, "Active Hidden
Markov Models for Information Extraction", IDA 2001); here it is taken on the logits. An ID sample
usually has one clear class; an OOD sample tends to split its evidence between classes, so its margin
is small.
"""

from __future__ import annotations

from imood_cli.plugin_api import Detector, ModelView


class LogitMargin(Detector):
    """Logit margin: g = z_(1) − z_(2), the top logit's lead over the runner-up (higher = more ID).

    ada_scale c = 1.0, as for energy: the margin is a difference of logits, so it lives on the logit
    scale, and log β̂ is a log-ratio of probabilities, in the same units. The ImOOD score
    −(g + c·log β̂) then adds the class-prior correction at full weight, as it does for energy.
    """

    ada_scale = 1.0

    def idness(self, view: ModelView):
        top2 = view.logits.float().topk(2, dim=1).values
        return top2[:, 0] - top2[:, 1]
