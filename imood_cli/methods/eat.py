"""EAT, Expand and AugmenT (Wei et al., "EAT: Towards Long-Tailed Out-of-Distribution Detection", AAAI 2024;
official code github.com/Stomach-ache/Long-Tailed-OOD-Detection, `stage1.py`, `stage2.py` @ 61baf16,
`test.py`).

The classifier gets `odc` abstention (OOD) classes as extra outputs: 3 for CIFAR-10 (the default), 30 for
CIFAR-100 and ImageNet-LT (`eat:odc=30`). imood puts them after the K class logits (EAT puts them first).

Stage 1 (`eat`, train with `--logit_adjust 0 --Lambda 1`), over [2N ID views ; M auxiliary] and CutMix pastes:

    L = CE_{K+odc}(z_id, y) + Λ0·CE(z_paste, y_tail) + Λ1·CE_{K+odc}(z_aux, v),  v = argmax_{j ≤ odc} z_aux,abst

- The engine adds the K-way CE(z + τ log π̃, y); `loss` adds the rest of the (K+odc)-way CE of ID rows,
  log(1 + exp(lse(z_abst) − lse(z_1..K))), which makes it EAT's CE exactly at τ = 0 and --Lambda 1.
- Virtual labels: each auxiliary image is pushed to its currently most likely abstention class.
- Tail pastes: head = label < round(head_rate·K), tail = label ≥ round((1 − tail_rate)·K) (CIFAR-10: 0-3 and
  6-9; CIFAR-100: 0-39 and 60-99; EAT's ImageNet split is head_rate = tail_rate = 0.5). With t = ⌊#head/#tail⌋
  ≥ 1, the tail images of each view, repeated t times, are pasted as one CutMix box into the first t·#tail
  head images of the same view; the tail images of view 1, repeated ⌊M/#tail⌋ times, into the first auxiliary
  images. Each group draws λ ~ Beta(0.9999, 0.9999) and a box centre; the box side is int(side·√(1 − λ)).
  A paste keeps its tail label. The pastes go through the model in a second forward pass
  (ModelView.logits_from_images, train_needs = {"input_grad"}).

Stage 2 (`eat:stage=2`, classifier re-training): `imood train --ckpt-path STAGE1 --train-only classifier
--ood_metric eat:stage=2 --logit_adjust 1 --Lambda 1`. The official loss is CE(z + log π′, y) over K+odc
outputs, π′ ∝ [pseudo_count]·odc ++ n_k; with the engine's CE(z + log π, y) (τ = 1) the rest is
log(1 + exp(lse(z_abst) + log(pseudo_count/Σn) − lse(z + log π))), which is what `loss` returns; auxiliary rows
are ignored.

Score: the summed abstention probability, σ(lse(z_abst) − lse(z_1..K)), over every extra output of the model.
g = lse(z_1..K) − lse(z_abst), an ID-vs-abstention logit (idness_is_logit, c = 1; `ada_eat` adds ImOOD).

Left out or changed: one classifier head instead of EAT's three identically trained ones (the score is one
head's, in [0, 1] instead of [0, 3]); two views per ID image in both stages (stage 2 uses one); the pastes'
CE covers the columns ModelView.logits_from_images returns (the K class logits) instead of all K+odc; a second
forward pass for the pastes instead of one concatenated batch (batch-norm statistics see them separately);
a batch without tail images has no pastes (EAT reuses the previous batch's), and with #head < #tail no
head pastes (EAT's shapes then only match by chance); the OOD pastes use the auxiliary batch size M where
EAT uses the ID batch size (equal by default); stage 2 forwards the auxiliary batch (it has no loss, but
batch-norm statistics see it: use a small `--ood-batch-size`) and no pastes; draws come from a numpy
generator seeded from the run's torch generator, so a resumed run draws the same boxes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from imood_cli.core.lazy import np
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

BETA = 0.9999  # EAT's CutMix Beta(α, α)


class Box(NamedTuple):
    """A CutMix box: rows [r1, r2), columns [c1, c2)."""

    r1: int
    c1: int
    r2: int
    c2: int


def cutmix_box(height: int, width: int, lam: float, row: int, col: int) -> Box:
    """EAT's box (rand_bbox): sides int(side·√(1 − λ)), centred at (row, col), clipped to the image."""
    cut = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(height * cut), int(width * cut)

    def clip(v: int, hi: int) -> int:
        return min(max(v, 0), hi)

    return Box(clip(row - cut_h // 2, height), clip(col - cut_w // 2, width),
               clip(row + cut_h // 2, height), clip(col + cut_w // 2, width))


def draw_box(rng: np.random.Generator, height: int, width: int) -> Box:
    """λ ~ Beta(0.9999, 0.9999), then a uniform centre, in EAT's order."""
    lam = float(rng.beta(BETA, BETA))
    row, col = int(rng.integers(height)), int(rng.integers(width))
    return cutmix_box(height, width, lam, row, col)


def paste(background: Tensor, foreground: Tensor, box: Box) -> Tensor:
    out = background.clone()
    out[:, :, box.r1:box.r2, box.c1:box.c2] = foreground[:, :, box.r1:box.r2, box.c1:box.c2]
    return out


def class_split(num_classes: int, head_rate: float, tail_rate: float) -> tuple[int, int]:
    """(first non-head label, first tail label)."""
    return round(head_rate * num_classes), round((1 - tail_rate) * num_classes)


def tail_pastes(images: Tensor, labels: Tensor, num_id: int, head_end: int, tail_start: int, head_box: Box,
                ood_box: Box) -> tuple[Tensor, Tensor]:
    """EAT's tail-on-head and tail-on-OOD CutMix pastes of a batch [view 1 ; view 2 ; auxiliary].

    labels: [num_id] of both views ([y ; y]). Returns (images [P, C, H, W], labels [P]); P may be 0.
    """
    n = num_id // 2
    v1, v2, ood = images[:n], images[n:num_id], images[num_id:]
    y = labels[:n]
    tail, head = y >= tail_start, y < head_end
    n_tail, n_head = int(tail.sum()), int(head.sum())
    out_x, out_y = [images[:0]], [labels[:0]]
    if n_tail == 0:
        return images[:0], labels[:0]
    times = n_head // n_tail
    if times >= 1:
        fg = torch.cat([v1[tail].repeat(times, 1, 1, 1), v2[tail].repeat(times, 1, 1, 1)])
        bg = torch.cat([v1[head][: times * n_tail], v2[head][: times * n_tail]])
        out_x.append(paste(bg, fg, head_box))
        out_y.append(y[tail].repeat(2 * times))
    times_ood = ood.shape[0] // n_tail
    if times_ood >= 1:
        fg = v1[tail].repeat(times_ood, 1, 1, 1)
        out_x.append(paste(ood[: times_ood * n_tail], fg, ood_box))
        out_y.append(y[tail].repeat(times_ood))
    return torch.cat(out_x), torch.cat(out_y)


def abstention_logits(view: ModelView) -> Tensor:
    if view.extra is None or view.extra.shape[1] < 1:
        raise ImoodError("eat needs a model with abstention outputs (extra outputs); this one has none: "
                         "train it with --ood_metric eat")
    return view.extra.float()


def id_completion(logits: Tensor, abstention: Tensor) -> Tensor:
    """Mean of log(1 + exp(lse(z_abst) − lse(z))): the (K+odc)-way CE of ID rows minus the K-way one."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.softplus(torch.logsumexp(abstention, dim=1) - torch.logsumexp(logits, dim=1)).mean()


def virtual_label_ce(logits: Tensor, abstention: Tensor) -> Tensor:
    """CE over K+odc outputs towards each row's most likely abstention class."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    full = torch.cat([logits, abstention], dim=1)
    target = logits.shape[1] + abstention.argmax(dim=1)
    return F.cross_entropy(full, target)


def stage2_completion(logits: Tensor, abstention: Tensor, log_prior: Tensor, total_count: Tensor,
                      pseudo_count: float) -> Tensor:
    """Mean of log(1 + exp(lse(z_abst) + log(pseudo_count/Σn) − lse(z + log π))): with the engine's
    CE(z + log π, y), EAT's stage-2 CE over K+odc outputs with pseudo-counts for the abstention classes."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    shift = torch.log(pseudo_count / total_count.double()).float()
    ids = torch.logsumexp(logits + log_prior.to(logits.device, torch.float32), dim=1)
    return F.softplus(torch.logsumexp(abstention, dim=1) + shift - ids).mean()


class EATScore(Score):
    """The summed abstention probability; g = lse(z_1..K) − lse(z_abst), over every extra output of the model."""

    extra_outputs = 1
    ada_scale = 1.0
    idness_is_logit = True

    def idness(self, view: ModelView) -> Tensor:
        return torch.logsumexp(view.logits.float(), dim=1) - torch.logsumexp(abstention_logits(view), dim=1)

    def ood_score(self, view: ModelView, log_prior: Tensor) -> Tensor:
        return torch.sigmoid(-self.idness(view))


class EATObjective(Objective):
    """Stage 1: the abstention classes' CE, tail pastes and virtual labels; stage 2: classifier re-training."""

    odc = 3
    lambda0 = 0.05  # paste CE (README; argparse default 1)
    lambda1 = 0.05  # virtual-label CE (README; argparse default 1)
    head_rate = 0.4
    tail_rate = 0.4
    stage = 1
    pseudo_count = 10000.0
    hyperparameters = ("odc", "lambda0", "lambda1", "head_rate", "tail_rate", "stage", "pseudo_count")

    def check(self) -> None:
        if self.odc < 1:
            raise OptionError(f"odc (abstention classes) must be >= 1, got {self.odc}")
        if self.stage not in (1, 2):
            raise OptionError(f"stage must be 1 or 2, got {self.stage}")
        for key in ("lambda0", "lambda1"):
            if getattr(self, key) < 0:
                raise OptionError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("head_rate", "tail_rate"):
            if not 0 < getattr(self, key) < 1:
                raise OptionError(f"{key} must be in (0, 1), got {getattr(self, key)}")
        if self.pseudo_count <= 0:
            raise OptionError(f"pseudo_count must be > 0, got {self.pseudo_count}")

    @property
    def extra_outputs(self) -> int:  # type: ignore[override]
        """The abstention classes the model needs."""
        return self.odc

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        """Stage 1 forwards its tail pastes through the model."""
        return frozenset({"input_grad"}) if self.stage == 1 and self.lambda0 > 0 else frozenset()

    def draw_boxes(self, images: Tensor, generator: torch.Generator | None) -> tuple[Box, Box]:
        """Two CutMix boxes (head pastes, OOD pastes) from a numpy generator seeded by the torch one."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=images.device))
        rng = np.random.default_rng(seed)
        h, w = images.shape[2], images.shape[3]
        return draw_box(rng, h, w), draw_box(rng, h, w)

    def pastes(self, view: ModelView, ctx: LossContext, boxes: tuple[Box, Box] | None = None
               ) -> tuple[Tensor, Tensor]:
        """The tail pastes of this batch (images, labels)."""
        if view.images is None:
            raise ImoodError("eat's stage-1 loss needs the training images (needs 'input_grad')")
        head_end, tail_start = class_split(view.num_classes, self.head_rate, self.tail_rate)
        if boxes is None:
            boxes = self.draw_boxes(view.images, ctx.generator)
        assert ctx.num_id is not None  # LossContext.__post_init__ sets it
        return tail_pastes(view.images, ctx.labels, ctx.num_id, head_end, tail_start, *boxes)

    def loss_parts(self, view: ModelView, ctx: LossContext, boxes: tuple[Box, Box] | None = None
                   ) -> tuple[Tensor, ...]:
        """Stage 1: (ID completion, paste CE, virtual-label CE). Stage 2: (stage-2 completion,)."""
        n = ctx.num_id
        z, abst = view.logits.float(), abstention_logits(view)
        if self.stage == 2:
            total = ctx.class_counts.sum() if ctx.class_counts is not None else None
            if total is None:
                raise ImoodError("eat's stage-2 loss needs the class counts")
            return (stage2_completion(z[:n], abst[:n], ctx.log_prior, total, self.pseudo_count),)
        paste_ce = z.sum() * 0.0
        if self.lambda0 > 0:
            images, labels = self.pastes(view, ctx, boxes)
            if images.shape[0]:
                paste_ce = F.cross_entropy(view.logits_from_images(images).float(), labels)
        return id_completion(z[:n], abst[:n]), paste_ce, virtual_label_ce(z[n:], abst[n:])

    def loss(self, view: ModelView, ctx: LossContext, g: Tensor | None = None) -> Tensor:
        parts = self.loss_parts(view, ctx)
        if self.stage == 2:
            return parts[0]
        completion, paste_ce, ood_ce = parts
        return completion + self.lambda0 * paste_ce + self.lambda1 * ood_ce


class EAT(Method):
    score = EATScore
    objective = EATObjective
    paper = Paper("EAT: Towards Long-Tailed Out-of-Distribution Detection", "Wei et al.", "AAAI", 2024,
                  "https://arxiv.org/abs/2312.08939")
