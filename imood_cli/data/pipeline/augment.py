"""Training augmentation as batched tensor ops on the training device (the recipes in docs/cli/train.md).

Random crop with zero padding, horizontal flip, color jitter (brightness, contrast, saturation,
hue in a random order per image, applied with probability p) and random grayscale, with
per-sample randomness drawn from one generator. The formulas are torchvision's, so the same
draws give the same pixels as torchvision's per-image transforms (tested).

The whole batch goes through every op with per-sample parameters (identity where an op does not
apply), so shapes never depend on the data and the host never waits for the device. The op count
is kept low on purpose: at CIFAR sizes a training step is bound by kernel launches, not arithmetic.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

# Re-exported: the spec lives in a torch-free module so describing a benchmark does not import torch.
from imood_cli.data.pipeline.augment_spec import CIFAR_AUGMENT as CIFAR_AUGMENT
from imood_cli.data.pipeline.augment_spec import AugmentSpec as AugmentSpec

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass
class Draws:
    """The random numbers of one batch: kept apart from the ops so tests can replay them per image."""

    offset_y: torch.Tensor  # [B] long in [0, 2·pad]
    offset_x: torch.Tensor
    flip: torch.Tensor  # [B] bool
    jitter: torch.Tensor  # [B] bool
    factors: torch.Tensor  # [B, 4] brightness, contrast, saturation factors and hue shift
    order: torch.Tensor  # [B, 4] permutation of the four jitter ops
    gray: torch.Tensor  # [B] bool


def draw(spec: AugmentSpec, batch: int, device: torch.device, generator: torch.Generator | None) -> Draws:
    """Every random number of a batch from one uniform draw."""
    u = torch.rand(batch, 13, device=device, generator=generator)
    span = 2 * spec.crop_padding + 1
    offsets = (u[:, :2] * span).long().clamp_(max=span - 1)  # uniform integers in [0, 2·pad]
    flip = u[:, 2] < (0.5 if spec.flip else 0.0)
    jitter = u[:, 3] < spec.jitter_p
    gray = u[:, 4] < spec.grayscale_p
    # (1 - a) + 2a·u per factor, hue: -h + 2h·u; built from Python floats, as a tensor literal on the
    # device would be a blocking host copy.
    b, c, s, h = spec.jitter
    cols = torch.arange(4, device=device)
    width = torch.where(cols == 0, 2 * b, torch.where(cols == 1, 2 * c, torch.where(cols == 2, 2 * s, 2 * h)))
    low = torch.where(cols == 0, 1 - b, torch.where(cols == 1, 1 - c, torch.where(cols == 2, 1 - s, -h)))
    factors = low + width * u[:, 5:9]
    order = torch.argsort(u[:, 9:13], dim=1)
    return Draws(offsets[:, 0], offsets[:, 1], flip, jitter, factors, order, gray)


def random_crop(images: torch.Tensor, pad: int, offset_y: torch.Tensor, offset_x: torch.Tensor) -> torch.Tensor:
    if pad == 0:
        return images
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = offset_y[:, None] + torch.arange(h, device=images.device)  # [B, H]
    cols = offset_x[:, None] + torch.arange(w, device=images.device)  # [B, W]
    batch = torch.arange(b, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] → [B, 1, H, W] luma with torchvision's weights."""
    r, g, b = x.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * other).clamp(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    lum = grayscale(x) if x.shape[1] == 3 else x
    return _blend(x, lum.mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return _blend(x, grayscale(x), factor)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's conversion (same branches, same divisions), returning h, s, v of [B, H, W]."""
    r, g, b = x.unbind(dim=1)
    maxc = x.amax(dim=1)
    minc = x.amin(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    h = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The branch-free form of the sector formula: channel n = v − v·s·clamp(min(k, 4 − k), 0, 1),
    k = (n + 6h) mod 6 with n = 5, 3, 1 for r, g, b (the same values as torchvision's six cases)."""
    n = torch.arange(5, 0, -2, device=h.device, dtype=h.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)
    v, s = v.unsqueeze(1), s.unsqueeze(1)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    h, s, v = _rgb_to_hsv(x)
    h = h + shift.view(-1, 1, 1)
    return _hsv_to_rgb(h - torch.floor(h), s, v)


def color_jitter(x: torch.Tensor, d: Draws, spec: AugmentSpec) -> torch.Tensor:
    """Each image applies the active ops in its own random order, or none when its jitter draw fails.

    Brightness, contrast and saturation are all blends f·x + (1 − f)·other (other = 0, the mean
    luma, the luma), so each of the four rounds is one blend with per-image f and `other` (f = 1
    is exact identity) plus, when hue is on, one hue rotation with a per-image shift (0 elsewhere).
    """
    b, c, s, h = spec.jitter
    if spec.jitter_p <= 0 or not any(a > 0 for a in (b, c, s, h)):
        return x
    rgb = x.shape[1] == 3
    enabled = {BRIGHTNESS: b > 0, CONTRAST: c > 0, SATURATION: s > 0 and rgb, HUE: h > 0 and rgb}
    for step in range(4):
        op = torch.where(d.jitter, d.order[:, step], -1)  # -1: this image does nothing this round
        if enabled[BRIGHTNESS] or enabled[CONTRAST] or enabled[SATURATION]:
            blends = (op == BRIGHTNESS) & enabled[BRIGHTNESS] | (op == CONTRAST) & enabled[CONTRAST] \
                | (op == SATURATION) & enabled[SATURATION]
            f = torch.where(blends, d.factors.gather(1, op.clamp(min=0, max=2)[:, None])[:, 0], 1.0)
            lum = grayscale(x) if rgb else x
            other = torch.where((op == CONTRAST).view(-1, 1, 1, 1), lum.mean(dim=(1, 2, 3), keepdim=True),
                                torch.where((op == SATURATION).view(-1, 1, 1, 1), lum, 0.0))
            x = _blend(x, other, f)
        if enabled[HUE]:
            x = adjust_hue(x, torch.where(op == HUE, d.factors[:, HUE], 0.0))
    return x


def augment(images: torch.Tensor, spec: AugmentSpec, generator: torch.Generator | None = None,
            draws: Draws | None = None) -> torch.Tensor:
    """uint8 [B, C, H, W] → augmented float [B, C, H, W] in [0, 1] (then normalised if the spec says so)."""
    d = draws if draws is not None else draw(spec, images.shape[0], images.device, generator)
    return apply(images, spec, d)


def apply(images: torch.Tensor, spec: AugmentSpec, d: Draws) -> torch.Tensor:
    """The deterministic part of `augment` (a pure function of the images and the draws, so it can be
    handed to torch.compile)."""
    x = random_crop(images, spec.crop_padding, d.offset_y, d.offset_x)
    if spec.flip:
        x = torch.where(d.flip.view(-1, 1, 1, 1), x.flip(-1), x)
    x = x.float().div_(255.0)
    x = color_jitter(x, d, spec)
    if spec.grayscale_p > 0 and x.shape[1] == 3:
        x = torch.where(d.gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
    return normalize(x, spec)


def to_float(images: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """The test-time transform of in-memory sets: no augmentation, same scaling and normalization."""
    return normalize(images.float().div_(255.0), spec)


@functools.lru_cache(maxsize=16)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...],
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: a fresh tensor literal each batch would be a blocking host-to-device copy.
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))


def normalize(x: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    if spec.mean is None:
        return x
    mean, std = _mean_std(tuple(spec.mean), tuple(spec.std), x.device)
    return (x - mean) / std
