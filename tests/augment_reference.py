"""torchvision's per-image augmentation, the reference imood's batched augmentation is checked against (used by
tests/data/test_augment.py and tests/training/test_train.py)."""

import torch
import torchvision.transforms.v2.functional as TF

from imood_cli.data.pipeline.augment import AugmentSpec


def per_image(img: torch.Tensor, d, i: int, spec: AugmentSpec) -> torch.Tensor:
    """What torchvision's RandomCrop(pad) → RandomHorizontalFlip → ColorJitter (p) → RandomGrayscale does."""
    p = spec.crop_padding
    h, w = img.shape[-2:]
    x = TF.pad(img, [p, p, p, p], fill=0)
    x = TF.crop(x, int(d.offset_y[i]), int(d.offset_x[i]), h, w)
    if d.flip[i]:
        x = TF.hflip(x)
    x = x.float() / 255
    if d.jitter[i]:
        b, c, s, hue = d.factors[i].tolist()
        for op in d.order[i].tolist():
            if op == 0 and spec.jitter[0] > 0:
                x = TF.adjust_brightness(x, b)
            elif op == 1 and spec.jitter[1] > 0:
                x = TF.adjust_contrast(x, c)
            elif op == 2 and spec.jitter[2] > 0:
                x = TF.adjust_saturation(x, s)
            elif op == 3 and spec.jitter[3] > 0:
                x = TF.adjust_hue(x, hue)
    if d.gray[i] and x.shape[0] == 3:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    return x
