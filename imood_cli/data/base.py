"""What every benchmark hands to the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from imood_cli.data.augment import AugmentSpec


@dataclass
class ImageSet:
    """Images as one uint8 tensor [N, C, H, W] (fits in memory), or files read on demand.

    labels: class index for ID images, -1 for OOD images. In an OOD test set, an image with a
    label >= 0 is semantically an ID class (SCOOD's sc_label) and is scored with the ID set.
    """

    name: str
    labels: torch.Tensor
    images: torch.Tensor | None = None
    files: Any = None  # a FileImages for data that does not fit in memory

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.images is not None and self.images.shape[0] != n:
            raise ValueError(f"{self.name}: {self.images.shape[0]} images but {n} labels")
        if self.images is not None and self.images.dtype != torch.uint8:
            raise ValueError(f"{self.name}: images must be uint8, got {self.images.dtype}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def subset(self, index: torch.Tensor, name: str | None = None) -> ImageSet:
        files = self.files.subset(index) if self.files is not None else None
        images = self.images[index] if self.images is not None else None
        return ImageSet(name or self.name, self.labels[index], images, files)


@dataclass
class Benchmark:
    name: str
    num_classes: int
    class_counts: list[int]
    train: ImageSet
    test: ImageSet
    ood_tests: dict[str, ImageSet]
    aux_ood: ImageSet | None
    channels: int
    image_size: int
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    class_names: list[str] | None = None
    description: str = ""


@dataclass
class FileStatus:
    """One piece of a benchmark on disk, for `imood data list` and the missing-data messages."""

    what: str
    path: Path
    present: bool
    how_to_get: str = ""
    detail: str = ""


class Dataset(Protocol):
    name: str
    description: str

    def status(self, root: Path) -> list[FileStatus]: ...

    def prepare(self, root: Path, **options) -> dict: ...

    def load(self, root: Path, **options) -> Benchmark: ...
