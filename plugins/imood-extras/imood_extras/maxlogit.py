"""MaxLogit (Hendrycks et al., "Scaling out-of-distribution detection for real-world settings", 2022)."""

from __future__ import annotations

from imood_cli.plugin_api import Detector, ModelView


class MaxLogit(Detector):
    """g(x) = max_k z_k (higher = more ID); the vanilla OOD score is -max_k z_k.

    ada_scale c = 1.0, the same as energy: max z and energy's g = logsumexp z are on the same logit
    scale (max z <= logsumexp z <= max z + log K, so they differ by at most log K and move together),
    and log β̂ is itself a log-ratio of probabilities, i.e. in the same units. The ImOOD score
    -(g + c·log β̂) then adds the class-prior correction at full weight, exactly as for energy; a
    smaller c would under-correct a statistic that already lives on the logit scale.
    """

    ada_scale = 1.0

    def idness(self, view: ModelView):
        return view.logits.float().amax(dim=1)
