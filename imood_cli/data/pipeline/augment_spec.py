"""What a benchmark asks of training augmentation (the ops themselves are in `data.augment`).

Kept apart from the ops so that describing a benchmark (`imood data list`) does not import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class AugmentSpec:
    crop_padding: int = 0
    flip: bool = False
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.0
    grayscale_p: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


CIFAR_AUGMENT = AugmentSpec(crop_padding=4, flip=True, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2)
