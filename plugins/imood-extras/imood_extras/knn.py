"""Deep nearest neighbors (Sun et al., "Out-of-distribution detection with deep nearest neighbors", ICML 2022).

g(x) = -‖f̂(x) − f̂_(k)‖₂: minus the distance from the L2-normalized penultimate feature to its k-th
nearest L2-normalized ID training feature (k = 50, or the number of training features when fewer).
The vanilla OOD score is that distance. The bank of normalized training features is fitted through
imood's `needs_fit` protocol, so `imood score` fits it once per checkpoint and caches it in RUN/fits/.
"""

from __future__ import annotations

from imood_cli.plugin_api import Detector, F, ImoodError, LossContext, ModelView, OptionError, torch

CHUNK = 65536  # bank rows per similarity block, bounds memory on large training sets


class KNN(Detector):
    """ada_scale c = 0.1, the same as msp's. For unit vectors the distance lies in [0, 2], and the
    gap between ID and OOD distances is a few tenths: the range of msp's g = max p − 1/K, not the
    range of logits (energy, c = 1) or of squared Mahalanobis distances (c = 0.01). With c = 0.1,
    c·log β̂ (log β̂ spans about ±3 on the long-tailed benchmarks) shifts g by a few tenths too: a
    correction of the same relative weight as msp's, neither swamping the distance nor vanishing.
    """

    needs = frozenset({"features", "fit"})
    ada_scale = 0.1
    hyperparameters = ("k",)
    k = 50
    train_bank_size = 8192  # ada_knn training: the ID features of the last steps stand in for the fit

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.bank = None  # [n, d] L2-normalized ID training features
        self.pending = None  # training: this step's features, banked next step

    def check(self) -> None:
        if self.k < 1:
            raise OptionError(f"k must be >= 1, got {self.k}")

    # ---- fitting (scoring)
    def fit(self, view: ModelView) -> None:
        features = view.features
        if features.ndim != 2 or features.shape[0] == 0:
            raise ImoodError("knn needs at least one ID training feature to fit")
        self.bank = F.normalize(features.detach().float(), dim=1).contiguous()
        self.pending = None

    def fit_state(self):
        state = {}
        if self.bank is not None:
            state["bank"] = self.bank.detach().cpu().contiguous()
        if self.pending is not None:
            state["pending"] = self.pending.detach().cpu().contiguous()
        return state

    def load_fit_state(self, state) -> None:
        self.bank = state["bank"].float() if "bank" in state else None
        self.pending = state["pending"].float() if "pending" in state else None

    # ---- the statistic
    def kth_distance(self, features):
        """Distance of each row of `features` to its k-th nearest bank row (both L2-normalized), [N]."""
        if self.bank is None:
            raise ImoodError("knn is not fitted: fit it on ID training features first")
        bank = self.bank.to(features.device)
        q = F.normalize(features.float(), dim=1)
        k = min(self.k, bank.shape[0])
        # Nearest by cosine similarity (monotone in distance for unit vectors), selected without grad
        # in blocks; then the exact distance to the chosen neighbour, differentiable for training.
        with torch.no_grad():
            best_sim = best_idx = None
            for start in range(0, bank.shape[0], CHUNK):
                sim = q.detach() @ bank[start:start + CHUNK].T
                idx = torch.arange(start, start + sim.shape[1], device=sim.device).expand_as(sim)
                if best_sim is not None:
                    sim, idx = torch.cat([best_sim, sim], 1), torch.cat([best_idx, idx], 1)
                top = sim.topk(min(k, sim.shape[1]), dim=1)
                best_sim, best_idx = top.values, idx.gather(1, top.indices)
            kth = best_idx[:, k - 1]
        diff = q - bank[kth]
        return diff.pow(2).sum(dim=1).clamp(min=1e-12).sqrt()  # clamp: no NaN gradient at distance 0

    def idness(self, view: ModelView):
        return -self.kth_distance(view.features)

    # ---- ImOOD training (ada_knn): no fitted bank exists yet, so use the recent ID features
    def train_update(self, view: ModelView, ctx: LossContext) -> None:
        feats = view.features[: ctx.num_id]  # ID rows come first
        feats = F.normalize(feats.detach().float(), dim=1)  # ID rows only: OOD never enters the bank
        banked = [t for t in (self.bank, self.pending) if t is not None]
        if self.pending is not None:
            self.bank = torch.cat(banked)[-self.train_bank_size:]
        elif self.bank is None:  # very first step: the batch itself is all there is
            self.bank = feats
        # This step's rows join the bank next step, so a view never finds itself among its neighbours.
        self.pending = feats
