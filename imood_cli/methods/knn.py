"""Deep nearest neighbours (Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest
Neighbors", ICML 2022).

Features are L2-normalised, f̂ = f / ‖f‖; the statistic is minus the Euclidean distance to the k-th
nearest normalised ID training feature (k = 50, the paper's CIFAR-10 value; fewer when the training set
is smaller):

    g(x) = −‖f̂(x) − f̂_(k)‖₂        vanilla OOD score ‖f̂(x) − f̂_(k)‖₂ (pytorch-ood's score)

The search is exact and blocked: similarities of at most QUERY_BLOCK queries × BANK_BLOCK bank rows
exist at once and a running top-k is kept, so memory stays linear in the bank (50,000 × 512 features
need no 50,000² matrix). Neighbours are chosen by cosine similarity (the same order as the distance for
unit vectors); the distance to the chosen one is then computed directly, which is exact near 0 and
differentiable for ImOOD training.

ada_ c = 0.1 · std(g on the ID training set), set at fit time and kept with the fit. Distances between
unit vectors lie in [0, 2] and their ID spread depends on the model, so c is measured in the units of
g (docs/concepts.md, "The scale c of ada_": distance-scale detectors): c · log β̂ moves g by a tenth of its ID spread
per unit of
log β̂. The std is taken over at most 4096 training rows spread evenly through the set, each scored
leave-one-out (its own feature is not its neighbour), like a test sample.

Training with ada_knn: no fitted bank exists yet, so the normalised ID features of the last steps
(up to TRAIN_BANK rows) stand in for it; a batch's rows join the bank one step later, so a view
never finds itself among its neighbours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imood_cli.plugin_api import F, ImoodError, LossContext, ModelView, OptionError, Paper, Score, torch

if TYPE_CHECKING:
    from torch import Tensor

QUERY_BLOCK = 1024
BANK_BLOCK = 16384
ADA_FRACTION = 0.1  # c = ADA_FRACTION · std(g on the ID training set)
ADA_ROWS = 4096  # training rows the std is measured on (all when fewer)
TRAIN_BANK = 8192


def nearest(queries: Tensor, bank: Tensor, k: int) -> Tensor:
    """Indices [N, k] of the k bank rows most similar to each query (rows unit length), best first."""
    best_sim: Tensor | None = None
    best_idx: Tensor | None = None
    for start in range(0, bank.shape[0], BANK_BLOCK):
        sim = queries @ bank[start:start + BANK_BLOCK].T
        top = sim.topk(min(k, sim.shape[1]), dim=1)
        block_sim, block_idx = top.values, top.indices + start
        if best_sim is not None and best_idx is not None:  # merge two short lists, never the whole block
            block_sim, block_idx = torch.cat([best_sim, block_sim], dim=1), torch.cat([best_idx, block_idx], dim=1)
            top = block_sim.topk(min(k, block_sim.shape[1]), dim=1)
            block_sim, block_idx = top.values, block_idx.gather(1, top.indices)
        best_sim, best_idx = block_sim, block_idx
    if best_idx is None:
        raise ImoodError("knn: the bank of ID training features is empty")
    return best_idx


def kth_distance(features: Tensor, bank: Tensor, k: int) -> Tensor:
    """‖f̂ − f̂_(k)‖ of each row of `features` against the (normalised) bank, [N]."""
    q = F.normalize(features.float(), dim=1)
    k = min(k, bank.shape[0])
    with torch.no_grad():
        blocks = [nearest(block, bank, k)[:, k - 1] for block in q.detach().split(QUERY_BLOCK)]
        kth = torch.cat(blocks) if blocks else torch.zeros(0, dtype=torch.long, device=q.device)
    diff = q - bank[kth]
    return diff.pow(2).sum(dim=1).clamp(min=1e-12).sqrt()  # clamp: a finite gradient at distance 0


def evenly_spaced(n: int, at_most: int) -> Tensor:
    """Indices of at most `at_most` rows spread evenly over n (every row when n is small)."""
    if n <= at_most:
        return torch.arange(n)
    return torch.linspace(0, n - 1, at_most).round().long()


class KNN(Score):
    paper = Paper("Out-of-Distribution Detection with Deep Nearest Neighbors", "Sun et al.", "ICML", 2022,
                  "https://arxiv.org/abs/2204.06507")
    needs = frozenset({"features", "fit"})
    ada_scale = ADA_FRACTION  # replaced by ADA_FRACTION · std(g) on the ID training set at fit time
    hyperparameters = ("k",)
    k = 50

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.bank: Tensor | None = None  # [n, d] normalised ID training features
        self.pending: Tensor | None = None  # training: this step's features, banked next step

    def check(self) -> None:
        if self.k < 1:
            raise OptionError(f"k must be >= 1, got {self.k}")

    def fit(self, view: ModelView) -> None:
        features = view.features
        assert features is not None  # "features" in needs
        if features.ndim != 2 or features.shape[0] == 0:
            raise ImoodError("knn needs at least one ID training feature to fit")
        self.bank = F.normalize(features.detach().float(), dim=1).contiguous()
        self.pending = None
        self.ada_scale = ADA_FRACTION * float(self.leave_one_out_idness().std()) if len(self.bank) > 1 else 0.0

    def leave_one_out_idness(self) -> Tensor:
        """g of evenly spread training rows against the bank without themselves: their (k+1)-th nearest
        row counting themselves is their k-th nearest other row."""
        bank = self.bank
        if bank is None:
            raise ImoodError("knn is not fitted: fit it on ID training features first")
        n = bank.shape[0]
        rows = evenly_spaced(n, ADA_ROWS).to(bank.device)
        return -kth_distance(bank[rows], bank, min(self.k + 1, n))

    def fit_state(self) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        if self.bank is not None:
            state["bank"] = self.bank.detach().cpu().contiguous()
            state["ada_scale"] = torch.tensor([self.ada_scale], dtype=torch.float64)
        if self.pending is not None:
            state["pending"] = self.pending.detach().cpu().contiguous()
        return state

    def load_fit_state(self, state: dict[str, Tensor]) -> None:
        self.bank = state["bank"].float() if "bank" in state else None
        self.pending = state["pending"].float() if "pending" in state else None
        if "ada_scale" in state:
            self.ada_scale = float(state["ada_scale"])

    def idness(self, view: ModelView) -> Tensor:
        if self.bank is None:
            raise ImoodError("knn is not fitted: fit it on ID training features first")
        assert view.features is not None  # "features" in needs
        return -kth_distance(view.features, self.bank.to(view.features.device), self.k)

    def train_update(self, view: ModelView, ctx: LossContext) -> None:
        assert view.features is not None  # "features" in needs
        feats = F.normalize(view.features[: ctx.num_id].detach().float(), dim=1)  # ID rows only, never OOD
        if self.pending is not None:
            banked = [t for t in (self.bank, self.pending) if t is not None]
            self.bank = torch.cat(banked)[-TRAIN_BANK:]
        elif self.bank is None:  # the very first step: its own batch is all there is
            self.bank = feats
        self.pending = feats
