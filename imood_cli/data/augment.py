"""Training augmentation as batched tensor ops on the training device (SPEC §3 recipes).

Random crop with zero padding, horizontal flip, color jitter (brightness, contrast, saturation,
hue in a random order per image, applied with probability p) and random grayscale, with
per-sample randomness drawn from one generator. The formulas are torchvision's, so the same
draws give the same pixels as torchvision's per-image transforms (tested).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


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
    def rand(*shape):
        return torch.rand(*shape, device=device, generator=generator)

    span = 2 * spec.crop_padding + 1
    offset_y = torch.randint(0, span, (batch,), device=device, generator=generator)
    offset_x = torch.randint(0, span, (batch,), device=device, generator=generator)
    flip = rand(batch) < (0.5 if spec.flip else 0.0)
    jitter = rand(batch) < spec.jitter_p
    b, c, s, h = spec.jitter
    u = rand(batch, 4)
    # Built from Python floats: a tensor literal on the device would be a blocking host copy.
    factors = torch.stack([(1 - b) + 2 * b * u[:, 0], (1 - c) + 2 * c * u[:, 1], (1 - s) + 2 * s * u[:, 2],
                           -h + 2 * h * u[:, 3]], dim=1)
    order = torch.argsort(rand(batch, 4), dim=1)
    gray = rand(batch) < spec.grayscale_p
    return Draws(offset_y, offset_x, flip, jitter, factors, order, gray)


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


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc = x.amin(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = (hr + hg + hb) / 6.0 + 1.0
    h = torch.fmod(h, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(dim=1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int32)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    i = i % 6
    mask = i.unsqueeze(1) == torch.arange(6, device=i.device).view(-1, 1, 1)  # [B, 6, H, W]
    a1 = torch.stack((v, q, p, p, t, v), dim=1)
    a2 = torch.stack((t, v, v, q, p, p), dim=1)
    a3 = torch.stack((p, p, t, v, v, q), dim=1)
    a4 = torch.stack((a1, a2, a3), dim=1)  # [B, 3, 6, H, W]
    return torch.einsum("...ijk, ...xijk -> ...xjk", mask.to(x.dtype), a4)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    hsv = _rgb_to_hsv(x)
    h = hsv[:, 0] + shift.view(-1, 1, 1)
    h = h - torch.floor(h)  # wrap into [0, 1)
    return _hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x: torch.Tensor, d: Draws, spec: AugmentSpec) -> torch.Tensor:
    """Each image applies the active ops in its own random order, or none when its jitter draw fails.

    Every op runs on the whole batch and `torch.where` keeps it where it applies: more arithmetic,
    but no data-dependent shapes, so the step never waits on the host.
    """
    active = [i for i, amount in enumerate(spec.jitter) if amount > 0]
    if not active or spec.jitter_p <= 0:
        return x
    for step in range(4):
        for op in active:
            use = (d.jitter & (d.order[:, step] == op)).view(-1, 1, 1, 1)
            x = torch.where(use, _JITTER_OPS[op](x, d.factors[:, op]), x)
    return x


def augment(images: torch.Tensor, spec: AugmentSpec, generator: torch.Generator | None = None,
            draws: Draws | None = None) -> torch.Tensor:
    """uint8 [B, C, H, W] → augmented float [B, C, H, W] in [0, 1] (then normalised if the spec says so)."""
    d = draws if draws is not None else draw(spec, images.shape[0], images.device, generator)
    x = random_crop(images, spec.crop_padding, d.offset_y, d.offset_x)
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
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: a fresh tensor literal each batch would be a blocking host-to-device copy.
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))


def normalize(x: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    if spec.mean is None:
        return x
    mean, std = _mean_std(tuple(spec.mean), tuple(spec.std), x.device)
    return (x - mean) / std
