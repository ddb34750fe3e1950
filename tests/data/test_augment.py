"""The batched device augmentation against torchvision's per-image ops with the same draws."""

import pytest
import torch
from augment_reference import per_image

from imood_cli.data.pipeline.augment import CIFAR_AUGMENT, AugmentSpec, augment, draw


@pytest.mark.parametrize("channels,spec", [
    (3, CIFAR_AUGMENT), (1, AugmentSpec(crop_padding=1, jitter=(0.4, 0.4, 0, 0), jitter_p=0.8)),
    (3, AugmentSpec(crop_padding=2, flip=True, jitter=(0, 0.3, 0, 0.2), jitter_p=1.0))])
def test_same_draws_same_pixels(channels, spec):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, channels, 12, 10), dtype=torch.uint8, generator=g)
    d = draw(spec, 64, torch.device("cpu"), torch.Generator().manual_seed(1))
    got = augment(images, spec, draws=d)
    want = torch.stack([per_image(images[i], d, i, spec) for i in range(64)])
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()


def test_draws_exercise_every_branch():
    d = draw(CIFAR_AUGMENT, 512, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert 0.4 < d.flip.float().mean() < 0.6 and 0.75 < d.jitter.float().mean() < 0.85
    assert 0.15 < d.gray.float().mean() < 0.25
    assert d.offset_x.min() == 0 and d.offset_x.max() == 8
    assert (d.factors[:, :3] >= 0.6).all() and (d.factors[:, :3] <= 1.4).all() and d.factors[:, 3].abs().max() <= 0.1
    assert {tuple(o) for o in d.order.tolist()} > {(0, 1, 2, 3)}  # orders differ between images


def test_same_generator_seed_same_batch_and_normalization():
    spec = AugmentSpec(crop_padding=4, flip=True, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    a = augment(images, spec, torch.Generator().manual_seed(5))
    b = augment(images, spec, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    plain = augment(images, AugmentSpec(crop_padding=4, flip=True), torch.Generator().manual_seed(5))
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    assert torch.allclose(a, (plain - mean) / std, atol=1e-6)
