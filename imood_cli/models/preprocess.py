"""How an imported model's inputs are made from a benchmark's images.

A model imood trained sees the benchmark's own test transform. A model trained elsewhere expects its own
recipe: the mean and std it was trained with (timm's `pretrained_cfg`, torchvision's weights transforms),
a number of channels, an input size. `imood import-model` records these in the model file; scoring then turns
the benchmark's images (uint8, scaled to [0, 1]) into the model's inputs: channels matched (grey repeated to
RGB, RGB to ITU-R 601 luma), resized when the sizes differ (bilinear, antialiased), normalized.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from imood_cli.errors import ImoodError

LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
MAX_SIZE = 4096


@dataclass(frozen=True)
class Recipe:
    """What a model library says its weights expect."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    source: str


@dataclass(frozen=True)
class Preprocess:
    """The transform from [0, 1] images to an imported model's inputs; stored under `preprocess` in its model
    file's metadata."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    in_chans: int
    source: str = ""

    def __post_init__(self) -> None:
        check(self.to_dict(), "preprocess")

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "image_size": self.image_size,
                "in_chans": self.in_chans, "resize": "bilinear", "source": self.source}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Preprocess:
        check(d, where)
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]), int(d["image_size"]),
                   int(d["in_chans"]), str(d.get("source", "")))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] floats in [0, 1] -> the model's input."""
        c = x.shape[1]
        if c != self.in_chans:
            if c == 1:
                x = x.expand(-1, self.in_chans, -1, -1)
            elif c == 3 and self.in_chans == 1:
                w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
                x = (x * w).sum(dim=1, keepdim=True)
            else:
                raise ImoodError(f"the model takes {self.in_chans}-channel images, the benchmark's have {c}")
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        mean, std = _mean_std(self.mean, self.std, x.device, x.dtype)
        return (x - mean) / std


@functools.lru_cache(maxsize=16)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # made once per device: a tensor literal per batch would be a blocking host-to-device copy
    return (torch.tensor(mean, device=device, dtype=dtype).view(1, -1, 1, 1),
            torch.tensor(std, device=device, dtype=dtype).view(1, -1, 1, 1))


def _numbers(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)


def check(d: Any, where: str) -> None:
    """One clear error for a malformed record (a hand-edited model file, a bad --mean)."""
    def bad(what: str) -> ImoodError:
        return ImoodError(f"{where}: {what}")

    if not isinstance(d, dict):
        raise bad("the preprocessing record is not a JSON object")
    chans = d.get("in_chans")
    if not isinstance(chans, int) or isinstance(chans, bool) or chans not in (1, 3):
        raise bad(f"in_chans must be 1 or 3, got {chans!r}")
    for key in ("mean", "std"):
        if not _numbers(d.get(key)) or len(d[key]) != chans:
            raise bad(f"{key} must be {chans} finite number(s) (one per channel), got {d.get(key)!r}")
    if any(s <= 0 for s in d["std"]):
        raise bad(f"std must be > 0, got {d['std']!r}")
    size = d.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_SIZE:
        raise bad(f"image_size must be a whole number in 1..{MAX_SIZE}, got {size!r}")


def per_channel(values: tuple[float, ...], chans: int) -> tuple[float, ...]:
    """A recipe's RGB statistics for `chans` channels: their mean for one channel (as timm does)."""
    if len(values) == chans:
        return tuple(values)
    if len(values) == 1:
        return tuple(values) * chans
    if chans == 1:
        return (sum(values) / len(values),)
    raise ImoodError(f"{len(values)} values for {chans} channels")


def parse_values(text: str | None, option: str) -> tuple[float, ...] | None:
    """'0.5,0.5,0.5' or '0.5' -> a tuple of floats."""
    if text is None:
        return None
    parts = [p for p in str(text).replace(" ", ",").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ImoodError(f"{option} takes numbers separated by commas, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ImoodError(f"{option} takes finite numbers, got {text!r}")
    return values
