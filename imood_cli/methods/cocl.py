"""COCL, Calibrated Outlier Class Learning (Miao et al., "Out-of-Distribution Detection in Long-Tailed
Recognition with Calibrated Outlier Class Learning", AAAI 2024; official code github.com/mala-lab/COCL,
`train.py`, `test.py`, `models/resnet.py`).

The classifier has one extra output, the outlier class (the (K+1)-th logit, view.extra[:, 0]); every
auxiliary image is labelled with it. The training loss over [2N ID views ; M auxiliary] is

    L = CE_{K+1}(z_id, y) + λ1·CE_{K+1}(z_aux, K+1) + λ2·L_tail + λ3·L_head

- The engine already adds the K-way CE(z + τ log π̃, y) over the ID views; `loss` supplies the rest of the
  (K+1)-way CE of ID rows, log(1 + exp(z_out − lse(z_1..K))), so the sum is COCL's CE exactly when
  `--logit_adjust 0` and `--Lambda 1` (the engine multiplies this loss by --Lambda; COCL's own λ1..λ3 weigh
  its parts).
- L_tail, OOD-aware tail prototype learning: features of tail-class ID rows (label ≥ round((1 − tail_rate)·K))
  against learnable prototypes (one per tail class, `training_parameters`) and every auxiliary feature of the
  batch as negatives, all L2-normalised per half of the feature vector ("2 heads"), temperature T.
- L_head, debiased head class learning: a triplet loss on the raw features of the auxiliary rows, with the
  farthest auxiliary feature of the batch as positive and a uniformly random head-class ID feature (label ≤
  round(head_rate·K)) as negative, margin 1.

Score: the outlier-class probability after outlier-class-aware logit calibration (OLC), ẑ = z − log[π̃, 1]:
softmax(ẑ)_{K+1} = σ(z_out − lse(z − log π̃)). With `imood score --logit_adjust 1` (the default) π̃ = π, the
official `test.py --OLC --tau 1`; `cocl:olc=false` gives the uncalibrated outlier probability.

g (idness) = lse(z_1..K) − z_out, the raw ID-vs-outlier logit (idness_is_logit). Since
lse(z − log π̃) = lse(z) + log β̂ + log K, the post-hoc `ada_cocl` at c = 1, −(g + log β̂), ranks exactly as
the OLC score; `--ood_metric ada_cocl` trains COCL with the ImOOD regularizer on g added (COCL + ImOOD).

Differences from the official code: imood's ID batch holds two augmented views of each image (COCL uses one),
so the CE terms average over both views and tail prototypes / head negatives are drawn from both; batch sizes
are imood's (COCL: 128 ID + 256 auxiliary: `-b 128 --ood-batch-size 256`); the number of prototypes is the
number of tail classes (the official model fixes round(0.4·(K+1)), the same count on CIFAR and ImageNet-LT);
a batch without head samples gives L_head = 0 (the official code fails), and head negatives are drawn with the
run's seeded generator (restored on resume); L2 normalisation uses a 1e-12 floor on the norm.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from imood_cli.plugin_api import (
    F,
    ImoodError,
    LossContext,
    Method,
    ModelView,
    Objective,
    OptionError,
    Paper,
    Score,
    torch,
)

if TYPE_CHECKING:
    from torch import Tensor

PROTOTYPES = "prototypes"
TRIPLET_EPS = 1e-6  # torch.nn.TripletMarginLoss's default, which COCL uses


def head_max(num_classes: int, head_rate: float) -> int:
    """Head classes are labels ≤ round(head_rate·K), inclusive, as COCL's code has it (Python's round)."""
    return round(head_rate * num_classes)


def tail_min(num_classes: int, tail_rate: float) -> int:
    """Tail classes are labels ≥ round((1 − tail_rate)·K)."""
    return round((1 - tail_rate) * num_classes)


def two_head_normalize(x: Tensor) -> Tensor:
    """L2-normalise each half of the feature vector separately (COCL's 2-head normalisation)."""
    half = math.ceil(x.shape[1] / 2)
    return torch.cat([F.normalize(part, dim=1) for part in x.split(half, dim=1)], dim=1)


def outlier_logits(view: ModelView) -> Tensor:
    if view.extra is None or view.extra.shape[1] < 1:
        raise ImoodError("cocl needs a model with an outlier-class output (extra_outputs = 1); this one has none: "
                         "train it with --ood_metric cocl")
    return view.extra[:, 0].float()


def id_completion(logits: Tensor, z_out: Tensor) -> Tensor:
    """Mean of log(1 + exp(z_out − lse(z))): what the (K+1)-way CE of ID rows adds to the K-way CE."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.softplus(z_out - torch.logsumexp(logits, dim=1)).mean()


def outlier_class_ce(logits: Tensor, z_out: Tensor) -> Tensor:
    """CE over K+1 outputs with every row labelled as the outlier class: mean of lse([z, z_out]) − z_out."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    full = torch.cat([logits, z_out[:, None]], dim=1)
    return (torch.logsumexp(full, dim=1) - z_out).mean()


def tail_prototype_loss(f_id: Tensor, labels: Tensor, f_ood: Tensor, prototypes: Tensor, first_tail: int,
                        temperature: float) -> Tensor:
    """OOD-aware tail prototype learning: CE over [prototypes ; auxiliary features] of each tail ID row, its
    class's prototype being the target; 0 without tail rows. Rows of other classes are masked, not
    gathered, so the step needs no host synchronisation."""
    x = two_head_normalize(f_id)
    keys = torch.cat([two_head_normalize(prototypes), two_head_normalize(f_ood)])
    sims = x @ keys.t() / temperature
    is_tail = labels >= first_tail
    target = (labels - first_tail).clamp(0, prototypes.shape[0] - 1)
    per_row = F.cross_entropy(sims, target, reduction="none")
    return (per_row * is_tail).sum() / is_tail.sum().clamp(min=1)


def farthest_rows(x: Tensor) -> Tensor:
    """For each row, the index of the row farthest from it (Euclidean distance; only the argmax is used)."""
    with torch.no_grad():
        return torch.cdist(x.detach(), x.detach()).argmax(dim=1)


def head_negatives(labels: Tensor, last_head: int, draws: Tensor) -> tuple[Tensor, Tensor]:
    """Row indices of uniformly random head-class ID rows, one per draw u ∈ [0, 1): the ⌊u·n_head⌋-th head row
    in batch order; also whether the batch has a head row at all."""
    is_head = labels <= last_head
    n_head = is_head.sum()
    order = torch.argsort((~is_head).to(torch.int8), stable=True)  # head rows first, in batch order
    pick = (draws * n_head).floor().long()
    pick = torch.minimum(pick, (n_head - 1).clamp(min=0))
    return order[pick], n_head > 0


def head_triplet_loss(f_id: Tensor, labels: Tensor, f_ood: Tensor, last_head: int, draws: Tensor,
                      margin: float) -> Tensor:
    """Debiased head class learning: mean relu(‖a − p + ε‖ − ‖a − n + ε‖ + margin) over auxiliary features a,
    p the farthest auxiliary feature, n a random head ID feature; 0 without head rows or auxiliary rows."""
    if f_ood.shape[0] == 0:
        return f_ood.sum() * 0.0
    positive = f_ood[farthest_rows(f_ood)]
    rows, has_head = head_negatives(labels, last_head, draws)
    negative = f_id[rows]
    d_pos = F.pairwise_distance(f_ood, positive, eps=TRIPLET_EPS)
    d_neg = F.pairwise_distance(f_ood, negative, eps=TRIPLET_EPS)
    loss = F.relu(d_pos - d_neg + margin).mean()
    return torch.where(has_head, loss, loss * 0.0)


class COCLScore(Score):
    """The outlier-class probability after outlier-class-aware logit calibration (OLC); g = lse(z) - z_out."""

    extra_outputs = 1
    ada_scale = 1.0
    idness_is_logit = True
    olc = True
    hyperparameters = ("olc",)

    def idness(self, view: ModelView) -> Tensor:
        return torch.logsumexp(view.logits.float(), dim=1) - outlier_logits(view)

    def ood_score(self, view: ModelView, log_prior: Tensor) -> Tensor:
        z = view.logits.float()
        if self.olc:
            z = z - log_prior.to(z.device, torch.float32)
        return torch.sigmoid(outlier_logits(view) - torch.logsumexp(z, dim=1))


class COCLObjective(Objective):
    """The outlier class's CE, OOD-aware tail prototype learning and debiased head class learning."""

    extra_outputs = 1
    # The official CIFAR defaults (train.py); ImageNet-LT: lambda1=0.02, lambda2=0.01, lambda3=0.01.
    lambda1 = 0.05
    lambda2 = 0.05
    lambda3 = 0.1
    temperature = 0.07
    margin = 1.0
    head_rate = 0.4
    tail_rate = 0.4
    hyperparameters = ("lambda1", "lambda2", "lambda3", "temperature", "margin", "head_rate", "tail_rate")

    def check(self) -> None:
        for key in ("lambda1", "lambda2", "lambda3", "margin"):
            if getattr(self, key) < 0:
                raise OptionError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.temperature <= 0:
            raise OptionError(f"temperature must be > 0, got {self.temperature}")
        for key in ("head_rate", "tail_rate"):
            if not 0 < getattr(self, key) < 1:
                raise OptionError(f"{key} must be in (0, 1), got {getattr(self, key)}")

    def num_prototypes(self, num_classes: int) -> int:
        count = num_classes - tail_min(num_classes, self.tail_rate)
        if count < 1:
            raise ImoodError(f"cocl: tail_rate {self.tail_rate} leaves no tail class among {num_classes}")
        return count

    def training_parameters(self, feature_dim: int, num_classes: int) -> dict[str, Tensor]:
        # COCL's initialisation: uniform in ±1/sqrt(d), from the run's seeded global generator.
        bound = 1.0 / math.sqrt(feature_dim)
        shape = (self.num_prototypes(num_classes), feature_dim)
        return {PROTOTYPES: (torch.rand(shape) * 2 - 1) * bound}

    def loss_parts(self, view: ModelView, ctx: LossContext, draws: Tensor | None = None
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(ID completion, outlier-class CE, tail prototype loss, head triplet loss); `draws` [M] in [0, 1) pick
        the head negatives (default: drawn from ctx.generator)."""
        n = ctx.num_id
        k = view.num_classes
        z, z_out, f = view.logits.float(), outlier_logits(view), view.features
        if f is None:
            raise ImoodError("cocl's training loss needs the penultimate features; the model produced none")
        f = f.float()
        f_id, f_ood, labels = f[:n], f[n:], ctx.labels
        completion, ocl = id_completion(z[:n], z_out[:n]), outlier_class_ce(z[n:], z_out[n:])
        zero = z.sum() * 0.0
        if self.lambda2 > 0:
            protos = (ctx.parameters or {}).get(PROTOTYPES)
            if protos is None:
                raise ImoodError("cocl's tail prototype loss needs its prototypes (Objective.training_parameters)")
            if protos.shape[0] != self.num_prototypes(k):
                raise ImoodError(f"cocl has {protos.shape[0]} prototypes but {self.num_prototypes(k)} tail classes")
            tail = tail_prototype_loss(f_id, labels, f_ood, protos.float(), tail_min(k, self.tail_rate),
                                       self.temperature)
        else:
            tail = zero
        if self.lambda3 > 0:
            if draws is None:
                draws = torch.rand(f_ood.shape[0], generator=ctx.generator, device=f.device)
            head = head_triplet_loss(f_id, labels, f_ood, head_max(k, self.head_rate), draws, self.margin)
        else:
            head = zero
        return completion, ocl, tail, head

    def loss(self, view: ModelView, ctx: LossContext, g: Tensor | None = None) -> Tensor:
        completion, ocl, tail, head = self.loss_parts(view, ctx)
        return completion + self.lambda1 * ocl + self.lambda2 * tail + self.lambda3 * head


class COCL(Method):
    score = COCLScore
    objective = COCLObjective
    paper = Paper("Out-of-Distribution Detection in Long-Tailed Recognition with Calibrated Outlier Class Learning",
                  "Miao et al.", "AAAI", 2024, "https://arxiv.org/abs/2312.10686")
