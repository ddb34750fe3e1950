"""The OOD test sets of the CIFAR benchmarks: SCOOD (Yang et al., ICCV 2021), SPEC §4.

Layout: `$DATA/SCOOD/data/imglist/benchmark_{cifar10|cifar100}/test_{name}.txt` for the six sets
texture, svhn, cifar (the other CIFAR), tin, lsun, places365, and the images under
`$DATA/SCOOD/data/images/`. Each list line is `<relative path> <json dict>`; the dict's `sc_label`
is -1 for an OOD image and >= 0 for an image that semantically belongs to an ID class: that label
is kept, and the scorer moves such images into the ID set.

Images are decoded with PIL, converted to RGB and resized to 32×32 (bilinear). The decoded sets
are cached as .npz files (no pickles) keyed by the list's SHA-256, so only the first load decodes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from imood_cli.data.base import FileStatus, ImageSet
from imood_cli.data.files import decode_many, failed_message
from imood_cli.errors import ImoodError

URL = "https://drive.google.com/file/d/1cbLXZ39xnJjxXnDM7g2KODHIjE0Qj4gu/view"
SETS = ("texture", "svhn", "cifar", "tin", "lsun", "places365")
CACHE_VERSION = "1"


def scood_dir(root: Path) -> Path:
    return Path(root) / "SCOOD" / "data"


def images_dir(root: Path) -> Path:
    return scood_dir(root) / "images"


def imglist_path(root: Path, benchmark: str, name: str) -> Path:
    return scood_dir(root) / "imglist" / f"benchmark_{benchmark}" / f"test_{name}.txt"


def display_name(benchmark: str, name: str) -> str:
    """SCOOD calls the other CIFAR `cifar`; the sets are reported as cifar100 (for cifar10) and cifar10."""
    if name == "cifar":
        return "cifar100" if benchmark == "cifar10" else "cifar10"
    return name


def how_to_get(root: Path) -> str:
    return f"download SCOOD from {URL} and unpack it so that {scood_dir(root)}/imglist and images/ exist"


def status(root: Path, benchmark: str) -> list[FileStatus]:
    out = [FileStatus("SCOOD images", images_dir(root), images_dir(root).is_dir(), how_to_get(root))]
    for name in SETS:
        p = imglist_path(root, benchmark, name)
        out.append(FileStatus(f"OOD test: SCOOD {display_name(benchmark, name)} list", p, p.is_file(), how_to_get(root)))
    return out


def missing_text(root: Path, benchmark: str) -> str | None:
    """One compact phrase for whatever SCOOD pieces are missing, or None."""
    lists = [imglist_path(root, benchmark, n).name for n in SETS if not imglist_path(root, benchmark, n).is_file()]
    parts = [] if images_dir(root).is_dir() else ["images/"]
    if lists:
        folder = imglist_path(root, benchmark, SETS[0]).parent.relative_to(scood_dir(root))
        parts.append(f"{', '.join(lists)} in {folder}/")
    if not parts:
        return None
    return f"SCOOD {' and '.join(parts)} under {scood_dir(root)} ({how_to_get(root)})"


def parse_imglist(path: Path, num_classes: int) -> tuple[list[str], list[int]]:
    """(relative paths, labels): label = sc_label when >= 0 (an ID class), -1 for OOD."""
    rels, labels = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            cut = line.find(" {")
            if cut < 0:
                raise ImoodError(f"{path}:{lineno}: expected '<relative path> <json dict>', got {line[:80]!r}")
            try:
                meta = json.loads(line[cut + 1:])
            except json.JSONDecodeError as exc:
                raise ImoodError(f"{path}:{lineno}: the dict is not valid JSON ({exc.msg})") from None
            sc = meta.get("sc_label") if isinstance(meta, dict) else None
            if isinstance(sc, bool) or not isinstance(sc, int):
                raise ImoodError(f"{path}:{lineno}: no integer sc_label in {line[cut + 1:][:80]}")
            if sc >= num_classes:
                raise ImoodError(f"{path}:{lineno}: sc_label {sc} is not a class of a {num_classes}-class benchmark "
                                 "(a list of the other benchmark?)")
            rels.append(line[:cut].strip())
            labels.append(sc if sc >= 0 else -1)
    if not rels:
        raise ImoodError(f"{path} lists no image")
    return rels, labels


def _read_cache(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return torch.from_numpy(z["images"].copy()), torch.from_numpy(z["labels"].astype(np.int64))
    except (OSError, ValueError, KeyError):
        return None


def _write_cache(path: Path, key: str, images: np.ndarray, labels: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.part")
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels, key=np.array(key))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only data folder: decode again next time


def load_set(root: Path, benchmark: str, name: str, num_classes: int, size: int = 32,
             cache_dir: Path | None = None) -> ImageSet:
    """One SCOOD test set as uint8 [N, 3, size, size] with labels (-1 OOD, >= 0 ID class)."""
    lst = imglist_path(root, benchmark, name)
    shown = display_name(benchmark, name)
    try:
        raw = lst.read_bytes()
    except FileNotFoundError:
        raise ImoodError(f"SCOOD list missing: {lst} ({how_to_get(root)})") from None
    key = f"{hashlib.sha256(raw).hexdigest()}|{size}|{num_classes}|{CACHE_VERSION}"
    cache = Path(cache_dir) / f"scood-{shown}-{size}.npz" if cache_dir is not None else None
    if cache is not None and cache.exists():
        hit = _read_cache(cache, key)
        if hit is not None:
            return ImageSet(shown, hit[1], hit[0])
    rels, labels = parse_imglist(lst, num_classes)
    base = images_dir(root)
    images, failed = decode_many([base / r for r in rels], size, 3)
    if failed:
        raise ImoodError(failed_message(f"SCOOD {shown} ({lst.name})", failed, len(rels)) + f" (paths under {base})")
    labels_np = np.asarray(labels, dtype=np.int64)
    if cache is not None:
        _write_cache(cache, key, images, labels_np)
    return ImageSet(shown, torch.from_numpy(labels_np), torch.from_numpy(images))


def load_sets(root: Path, benchmark: str, num_classes: int, size: int = 32,
              cache_dir: Path | None = None) -> dict[str, ImageSet]:
    return {display_name(benchmark, n): load_set(root, benchmark, n, num_classes, size, cache_dir) for n in SETS}
