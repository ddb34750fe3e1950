"""Image files read on demand, for data that does not fit in memory (ImageNet-LT and its OOD sets).

- `FileImages`: a list of image paths plus the test transform; `batches()` yields uint8
  [B, C, S, S] tensors through a torch DataLoader with worker processes.
- `FileEpoch`: one training epoch over image files with the interface of
  `data.batches.InMemoryEpoch` (`len()`, `batch(step) -> Batch`). Each step's batch is decoded by
  one loader worker: two independent RandomResizedCrop + horizontal-flip views of each ID image and
  one of each auxiliary OOD image, as uint8. The rest of the augmentation (color jitter, grayscale,
  normalization) runs later on the training device from the benchmark's AugmentSpec.
  Every random draw derives from (seed, epoch, rank, step), and the image order is exactly
  InMemoryEpoch's, so an interrupted run resumes on the same batches whatever the worker count.

Files are opened through `data.images.open_image`: regular files only (a FIFO is refused, never opened).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imood_cli.data.base import ImageSet
from imood_cli.data.pipeline.batches import Batch, EpochOrder, epoch_seed
from imood_cli.data.pipeline.images import SHOW_FAILED, failed_message, open_image
from imood_cli.errors import ImoodError

RESIZE_FOR_CROP = 256 / 224  # test transform: resize the shorter side to 256, center crop 224
RRC_RATIO = (3 / 4, 4 / 3)


# ---------------------------------------------------------------- tensors

def to_uint8_tensor(img) -> torch.Tensor:
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


# ---------------------------------------------------------------- test-time reading

def test_transform(img, size: int, mode: str):
    """PIL → PIL. center: resize the shorter side to round(size·256/224), center crop size; resize: squash."""
    import torchvision.transforms.functional as F

    if mode == "center":
        img = F.resize(img, round(size * RESIZE_FOR_CROP), F.InterpolationMode.BILINEAR)
        return F.center_crop(img, [size, size])
    if mode == "resize":
        return F.resize(img, [size, size], F.InterpolationMode.BILINEAR)
    raise ValueError(f"unknown transform mode {mode!r}")


class _TestImages(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[str], size: int, mode: str, channels: int) -> None:
        self.paths, self.size, self.mode, self.channels = paths, size, mode, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = test_transform(open_image(self.paths[i], self.channels), self.size, self.mode)
            return to_uint8_tensor(img), ""
        except Exception as exc:  # reported by the main process with the path
            return torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8), f"{type(exc).__name__}: {exc}"


def _check_failures(what: str, paths: Sequence[str], start: int, errors: Sequence[str], total: int) -> None:
    failed = [(str(paths[start + k]), e.splitlines()[0]) for k, e in enumerate(errors) if e]
    if failed:
        raise ImoodError(failed_message(what, failed, total) + " (in one batch; fix or remove these files)")


@dataclass
class FileImages:
    """Image files read on demand. mode: "center" (resize 256, center crop 224 for size 224) or "resize"."""

    paths: list[str]
    size: int = 224
    mode: str = "center"
    channels: int = 3
    name: str = "images"

    def __post_init__(self) -> None:
        self.paths = [str(p) for p in self.paths]
        if self.mode not in ("center", "resize"):
            raise ValueError(f"unknown transform mode {self.mode!r}")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: torch.Tensor | Sequence[int]) -> FileImages:
        idx = index.tolist() if isinstance(index, torch.Tensor) else list(index)
        return FileImages([self.paths[i] for i in idx], self.size, self.mode, self.channels, self.name)

    def batches(self, batch_size: int, workers: int = 0, pin_memory: bool = False) -> Iterator[torch.Tensor]:
        """uint8 [B, C, size, size] batches in order, decoded by `workers` loader processes."""
        loader = torch.utils.data.DataLoader(
            _TestImages(self.paths, self.size, self.mode, self.channels), batch_size=batch_size, shuffle=False,
            num_workers=workers, pin_memory=pin_memory, prefetch_factor=4 if workers else None)
        start = 0
        for images, errors in loader:
            _check_failures(self.name, self.paths, start, errors, len(self.paths))
            start += images.shape[0]
            yield images


def file_image_set(name: str, paths: Sequence[str | Path], labels: torch.Tensor | Sequence[int], size: int = 224,
                   mode: str = "center", channels: int = 3) -> ImageSet:
    labels = labels if isinstance(labels, torch.Tensor) else torch.tensor(list(labels), dtype=torch.long)
    return ImageSet(name, labels.long(), None, FileImages(list(paths), size, mode, channels, name))


# ---------------------------------------------------------------- training epochs

def random_resized_crop_params(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                               g: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawing from `g` instead of the global generator."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=g).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=g).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_view(img, size: int, scale: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop(size, scale) then a horizontal flip with p 0.5, as uint8 [C, size, size]."""
    import torchvision.transforms.functional as F

    i, j, h, w = random_resized_crop_params(img.width, img.height, scale, RRC_RATIO, g)
    out = F.resized_crop(img, i, j, h, w, [size, size], F.InterpolationMode.BILINEAR)
    if torch.rand(1, generator=g).item() < 0.5:
        out = F.hflip(out)
    return to_uint8_tensor(out)


def step_seed(seed: int, epoch: int, rank: int, step: int) -> int:
    return epoch_seed(epoch_seed(seed, epoch, salt=1_000 + rank), step, salt=1)


class _EpochSteps(torch.utils.data.Dataset):
    """Item `step` is that step's whole batch for one rank, decoded in one loader worker."""

    def __init__(self, epoch: FileEpoch) -> None:
        e = epoch
        self.paths, self.labels = e.train.files.paths, e.train.labels
        self.ood_paths = e.aux.files.paths if e.ood_batch_size else []
        self.order, self.ood_order = e.order, getattr(e, "ood_order", None)
        self.b, self.m, self.w, self.r = e.batch_size, e.ood_batch_size, e.world, e.rank
        self.size, self.scale, self.channels = e.size, e.scale, e.train.files.channels
        self.seed, self.epoch, self.steps = e.seed, e.epoch, e.steps

    def __len__(self) -> int:
        return self.steps

    def _open(self, path: str, failed: list[str]):
        try:
            return open_image(path, self.channels)
        except Exception as exc:
            failed.append(f"{path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            from PIL import Image

            return Image.new("RGB" if self.channels == 3 else "L", (self.size, self.size))

    def __getitem__(self, step: int):
        b, m, w, r = self.b, self.m, self.w, self.r
        g = torch.Generator().manual_seed(step_seed(self.seed, self.epoch, r, step))
        idx = self.order[(step * w + r) * b:(step * w + r + 1) * b]
        failed: list[str] = []
        v1, v2 = [], []
        for i in idx.tolist():
            img = self._open(self.paths[i], failed)
            v1.append(train_view(img, self.size, self.scale, g))
            v2.append(train_view(img, self.size, self.scale, g))
        ood = []
        if m:
            for i in self.ood_order[(step * w + r) * m:(step * w + r + 1) * m].tolist():
                ood.append(train_view(self._open(self.ood_paths[i], failed), self.size, self.scale, g))
        empty = torch.zeros(0, self.channels, self.size, self.size, dtype=torch.uint8)
        return (torch.stack(v1), torch.stack(v2), self.labels[idx].clone(),
                torch.stack(ood) if ood else empty, failed)


class FileEpoch:
    """Training batches of a file-backed set; the same interface and image order as InMemoryEpoch.

    `batch(step)` is meant to be called with consecutive steps (the loader prefetches ahead); a
    call with any other step (resuming mid-epoch) restarts the loader at that step.
    """

    def __init__(self, train: ImageSet, aux: ImageSet | None, batch_size: int, ood_batch_size: int,
                 seed: int, epoch: int, rank: int = 0, world_size: int = 1, *, workers: int = 0,
                 size: int | None = None, scale: tuple[float, float] = (0.2, 1.0), pin_memory: bool = False,
                 prefetch_factor: int = 2) -> None:
        if train.files is None:
            raise ValueError(f"{train.name}: FileEpoch needs a file-backed set (ImageSet.files)")
        if aux is not None and len(aux) and aux.files is None:
            raise ValueError(f"{aux.name}: the auxiliary OOD set must be file-backed too")
        self.train, self.aux = train, aux
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world_size
        self.size = size or train.files.size
        self.scale = tuple(scale)
        self.workers, self.pin_memory, self.prefetch_factor = workers, pin_memory, prefetch_factor
        # InMemoryEpoch's order, draw for draw.
        plan = EpochOrder(len(train), len(aux) if aux is not None else 0, batch_size, ood_batch_size, seed, epoch,
                          world_size)
        self.batch_size, self.steps, self.ood_batch_size = plan.batch_size, plan.steps, plan.ood_batch_size
        self.order, self.ood_order = plan.order, plan.ood_order
        self._iter: Iterator | None = None
        self._next_step: int | None = None

    def __len__(self) -> int:
        return self.steps

    def _start(self, step: int) -> None:
        self.close()
        loader = torch.utils.data.DataLoader(
            _EpochSteps(self), batch_size=None, sampler=range(step, self.steps), num_workers=self.workers,
            pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor if self.workers else None)
        self._iter = iter(loader)
        self._next_step = step

    def batch(self, step: int) -> Batch:
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} outside the epoch's {self.steps} steps")
        if self._iter is None or step != self._next_step:
            self._start(step)
        v1, v2, labels, ood, failed = next(self._iter)
        self._next_step = step + 1
        if failed:
            raise ImoodError(f"{self.train.name}: {len(failed)} training image(s) could not be read: "
                             f"{', '.join(failed[:SHOW_FAILED])}")
        return Batch(v1, v2, labels, ood)

    def close(self) -> None:
        """Stop the loader workers (also when the epoch is dropped)."""
        it, self._iter = self._iter, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
