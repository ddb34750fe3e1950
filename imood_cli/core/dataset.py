"""What a benchmark hands to the engine: the types a dataset plugin (`imood.datasets`) builds, exported by
`imood_cli.plugin_api`.

A dataset plugin is a class with `name`, `description`, `status(root) -> list[FileStatus]`, `prepare(root,
**options) -> dict` and `load(root, **options) -> Benchmark` (the `Dataset` protocol below).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imood_cli.core.lazy import torch


@dataclass(frozen=True)
class AugmentSpec:
    """What a benchmark asks of training augmentation (the ops themselves are imood's): padding for random
    crops, flips, colour jitter and its probability, grayscale, and the normalisation mean / std."""

    crop_padding: int = 0
    flip: bool = False
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.0
    grayscale_p: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        return asdict(self)




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
    """One benchmark as loaded. `missing` maps each standard OOD test set (or other optional piece)
    that is not on disk to where to get it; `ood_tests` holds the ones that are."""

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
    missing: dict[str, str] = field(default_factory=dict)


@dataclass
class FileStatus:
    """One piece of a benchmark on disk, for `imood data list` and the missing-data messages.

    required: False for pieces a benchmark can do without (OOD test sets are then left out and
    named in `Benchmark.missing`; auxiliary OOD is needed only when asked for).
    """

    what: str
    path: Path
    present: bool
    how_to_get: str = ""
    detail: str = ""
    required: bool = True


def group_missing(missing: dict[str, str]) -> list[tuple[list[str], str]]:
    """(piece names, where to get them) with each distinct way to get them once, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for piece, how in missing.items():
        groups.setdefault(how, []).append(piece)
    return [(pieces, how) for how, pieces in groups.items()]


def missing_phrase(missing: dict[str, str]) -> str:
    """One line for messages: `texture, svhn: <how>; tinyimages-300k: <how>`."""
    return "; ".join(f"{', '.join(pieces)}: {how}" for pieces, how in group_missing(missing))


class Dataset(Protocol):
    name: str
    description: str

    def status(self, root: Path) -> list[FileStatus]: ...

    def prepare(self, root: Path, **options: Any) -> dict: ...

    def load(self, root: Path, **options: Any) -> Benchmark: ...
