"""The CIFAR recipe's augmentation; `AugmentSpec` itself is `imood_cli.core.dataset`'s (public for plugins).

Kept apart from the ops so that describing a benchmark (`imood data list`) does not import torch.
"""

from __future__ import annotations

from imood_cli.core.dataset import AugmentSpec as AugmentSpec

CIFAR_AUGMENT = AugmentSpec(crop_padding=4, flip=True, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2)
