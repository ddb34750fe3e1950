"""Training batches for one epoch: [ID view 1 ; ID view 2] plus auxiliary OOD, as uint8 on the device.

All randomness of an epoch derives from (seed, epoch, rank), so the sampler state is just the epoch
and the step within it: an interrupted run resumes on exactly the batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imood_cli.data.base import ImageSet


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + salt * 104_729) % (2**62)


@dataclass
class Batch:
    view1: torch.Tensor  # uint8 [N, C, H, W]
    view2: torch.Tensor  # uint8 [N, C, H, W]: the same images, to be augmented independently
    labels: torch.Tensor  # long [N]
    ood: torch.Tensor  # uint8 [M, C, H, W]


class EpochOrder:
    """Which images each step of an epoch takes: one permutation shared by every process (each takes
    its slice), and the auxiliary OOD images in repeated permutations."""

    def __init__(self, n: int, n_aux: int, batch_size: int, ood_batch_size: int, seed: int, epoch: int,
                 world_size: int = 1) -> None:
        per_step = batch_size * world_size
        self.batch_size = min(batch_size, n // world_size) if n < per_step else batch_size
        if self.batch_size < 1:
            raise ValueError(f"{n} training images cannot feed {world_size} processes")
        self.steps = max(1, n // (self.batch_size * world_size))
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        self.order = torch.randperm(n, generator=g)
        self.ood_batch_size = ood_batch_size if n_aux else 0
        self.ood_order = None
        if self.ood_batch_size:
            reps = -(-self.steps * self.ood_batch_size * world_size // n_aux)
            go = torch.Generator().manual_seed(epoch_seed(seed, epoch, salt=1))
            self.ood_order = torch.cat([torch.randperm(n_aux, generator=go) for _ in range(reps)])


class InMemoryEpoch:
    """Batches of a uint8 tensor set that is already on the training device."""

    def __init__(self, train: ImageSet, aux: ImageSet | None, batch_size: int, ood_batch_size: int,
                 seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> None:
        self.train, self.aux = train, aux
        plan = EpochOrder(len(train), len(aux) if aux is not None else 0, batch_size, ood_batch_size, seed, epoch,
                          world_size)
        device = train.images.device
        self.batch_size, self.steps, self.ood_batch_size = plan.batch_size, plan.steps, plan.ood_batch_size
        self.order = plan.order.to(device)
        self.ood_order = plan.ood_order.to(device) if plan.ood_order is not None else None
        self.rank, self.world = rank, world_size

    def __len__(self) -> int:
        return self.steps

    def batch(self, step: int) -> Batch:
        b, w, r = self.batch_size, self.world, self.rank
        idx = self.order[(step * w + r) * b:(step * w + r + 1) * b]
        images = self.train.images[idx]
        if self.ood_batch_size:
            m = self.ood_batch_size
            oidx = self.ood_order[(step * w + r) * m:(step * w + r + 1) * m]
            ood = self.aux.images[oidx]
        else:
            ood = images[:0]
        return Batch(images, images, self.train.labels[idx], ood)
