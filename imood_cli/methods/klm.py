"""KL matching (Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings",
ICML 2022).

Fit: for each class k, the template d_k = mean of p(x) over the ID training images the model predicts as k
(no labels needed). Classes the model never predicts on the training set have no template.

    g(x) = −min_k KL(p(x) ‖ d_k),   KL(p ‖ d) = Σ_j p_j (log p_j − log d_j);   vanilla OOD score −g.

pytorch-ood's `KLMatching.fit_logits` / `predict_logits` compute the same templates and min-KL score; they
work in float32, the templates here are float64 and log p comes from log_softmax.

c = 0.1. KL is in nats, the units of log β̂, but its spread over ID data is that of a probability, a few
tenths on a confident model (most ID posteriors sit close to their class template), while log β̂ spans
±log(max π / min π). docs/concepts.md ("The scale c of ada_") lists klm with the logit-scale detectors (c = 1);
measured on the digits demo's
baseline, c = 1 let the correction swamp g (AUROC 94.1 → 54.5, every many-shot test digit flagged at the
FPR95 threshold), c = 0.1 gives 92.7 and `--ada-scale auto` fits c ≈ 0.04 (93.5): a probability-scale c.

During ImOOD training (`ada_klm`), where no fit exists yet, the templates track the ID rows of each batch
as an exponential moving average.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imood_cli.plugin_api import ImoodError, LossContext, ModelView, Paper, Score, torch

if TYPE_CHECKING:
    from torch import Tensor

CHUNK = 65536  # training rows per pass of the fit, bounding the [rows, K] temporaries


class KLMatching(Score):
    paper = Paper("Scaling Out-of-Distribution Detection for Real-World Settings", "Hendrycks et al.", "ICML", 2022,
                  "https://arxiv.org/abs/1911.11132")
    needs = frozenset({"fit"})
    ada_scale = 0.1
    momentum = 0.9  # ImOOD training only: weight of the previous templates per step

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.templates: Tensor | None = None  # [K, K] float64, row k = d_k
        self.counts: Tensor | None = None  # [K] int64, images predicted as k (a template exists where > 0)

    def fit(self, view: ModelView) -> None:
        z = view.logits
        if z.shape[0] == 0:
            raise ImoodError("klm needs at least one ID training image to fit its class templates")
        k = z.shape[1]
        sums = torch.zeros(k, k, dtype=torch.float64, device=z.device)
        counts = torch.zeros(k, dtype=torch.int64, device=z.device)
        for start in range(0, z.shape[0], CHUNK):
            p = torch.softmax(z[start:start + CHUNK].detach().double(), dim=1)
            pred = p.argmax(dim=1)
            sums.index_add_(0, pred, p)
            counts += torch.bincount(pred, minlength=k)
        self._set(sums / counts.clamp(min=1)[:, None], counts)

    def _set(self, templates: Tensor, counts: Tensor) -> None:
        self.templates, self.counts = templates, counts

    def fit_state(self) -> dict[str, Tensor]:
        if self.templates is None or self.counts is None:
            return {}
        return {"templates": self.templates.cpu(), "counts": self.counts.cpu()}

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        self._set(state["templates"].double(), state["counts"].long())

    def divergences(self, logits: Tensor) -> Tensor:
        """KL(p(x) ‖ d_k) [N, K'] for the K' classes that have a template."""
        if self.templates is None or self.counts is None:
            raise ImoodError("klm is not fitted: fit it on the ID training set first")
        present = self.counts.to(logits.device) > 0
        d = self.templates.to(logits.device)[present]
        # A template entry that underflowed to 0 gives an (almost) infinite divergence, not NaN.
        log_d = d.clamp(min=torch.finfo(torch.float64).tiny).log()
        log_p = torch.log_softmax(logits.double(), dim=1)
        p = log_p.exp()
        return (p * log_p).sum(dim=1, keepdim=True) - p @ log_d.T

    def idness(self, view: ModelView) -> Tensor:
        return -self.divergences(view.logits).amin(dim=1).float()

    def train_update(self, view: ModelView, ctx: LossContext) -> None:
        with torch.no_grad():
            p = torch.softmax(view.logits[: ctx.num_id].detach().double(), dim=1)  # ID rows only
            k = p.shape[1]
            pred = p.argmax(dim=1)
            # A comparison, not bincount: bincount sizes its output on the host, a sync per step.
            counts = (pred[:, None] == torch.arange(k, device=p.device)).sum(dim=0)
            means = torch.zeros(k, k, dtype=torch.float64, device=p.device).index_add_(0, pred, p)
            means = means / counts.clamp(min=1)[:, None]
            seen = counts[:, None] > 0
            if self.templates is None or self.counts is None:
                self._set(means, counts)
                return
            old = self.templates.to(p.device)
            had = self.counts.to(p.device)[:, None] > 0
            blended = torch.where(had, self.momentum * old + (1 - self.momentum) * means, means)
            self._set(torch.where(seen, blended, old), self.counts.to(p.device) + counts)
