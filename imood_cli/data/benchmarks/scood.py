"""The OOD test sets of the CIFAR benchmarks: SCOOD (Yang et al., ICCV 2021), docs/data.md.

Layout: `$DATA/SCOOD/data/imglist/benchmark_{cifar10|cifar100}/test_{name}.txt` for the six sets
texture, svhn, cifar (the other CIFAR), tin, lsun, places365, and the images under
`$DATA/SCOOD/data/images/`. Each list line is `<relative path> <json dict>`; the dict's `sc_label`
is -1 for an OOD image and >= 0 for an image that semantically belongs to an ID class: that label
is kept, and the scorer moves such images into the ID set.

Images are decoded with PIL, converted to RGB and resized to 32×32 (bilinear). The decoded sets
are cached as .npz files (no pickles) keyed by the list's SHA-256, so only the first load decodes.
A cache is an input like any other: one whose arrays do not have the dtype, shape and labels the
list implies is ignored and decoded again, never scored.

A set whose list (or the images/ folder) is absent is missing: `load_present_sets` returns the
others and names the missing ones. List lines must name paths inside images/ (relative, no `..`),
and only regular files are read.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

from imood_cli.core.lazy import np, torch
from imood_cli.data.base import FileStatus, ImageSet
from imood_cli.data.pipeline.images import decode_many, failed_message
from imood_cli.errors import ImoodError
from imood_cli.fs.atomic import atomic_write_bytes
from imood_cli.fs.safe import absent_or_kind, check_list_path, is_regular_file, open_regular, read_lines

URL = "https://drive.google.com/file/d/1cbLXZ39xnJjxXnDM7g2KODHIjE0Qj4gu/view"
SETS = ("texture", "svhn", "cifar", "tin", "lsun", "places365")
CACHE_VERSION = "1"
NPY_HEADER_SLACK = 4096  # bytes an .npy member may hold beyond its pixels (its header)


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


def set_present(root: Path, benchmark: str, name: str) -> bool:
    return images_dir(root).is_dir() and is_regular_file(imglist_path(root, benchmark, name))


def status(root: Path, benchmark: str) -> list[FileStatus]:
    out = [FileStatus("SCOOD images", images_dir(root), images_dir(root).is_dir(), how_to_get(root), required=False)]
    for name in SETS:
        p = imglist_path(root, benchmark, name)
        state = "" if is_regular_file(p) else absent_or_kind(p)
        out.append(FileStatus(f"OOD test: SCOOD {display_name(benchmark, name)} list", p, not state,
                              how_to_get(root), "" if state == "missing" else state, required=False))
    return out


def missing_sets(root: Path, benchmark: str) -> dict[str, str]:
    """Display name -> where to get it, for every set that cannot be loaded from disk."""
    out = {}
    for name in SETS:
        if not set_present(root, benchmark, name):
            lst = imglist_path(root, benchmark, name)
            what = (f"{lst} is {absent_or_kind(lst)}" if images_dir(root).is_dir()
                    else f"{images_dir(root)}/ is missing")  # the same text for every set: shown once
            out[display_name(benchmark, name)] = f"{what}; {how_to_get(root)}"
    return out


def missing_text(root: Path, benchmark: str) -> str | None:
    """One compact phrase for whatever SCOOD pieces are missing, or None."""
    lists = [imglist_path(root, benchmark, n).name for n in SETS
             if not is_regular_file(imglist_path(root, benchmark, n))]
    parts = [] if images_dir(root).is_dir() else ["images/"]
    if lists:
        folder = imglist_path(root, benchmark, SETS[0]).parent.relative_to(scood_dir(root))
        parts.append(f"{', '.join(lists)} in {folder}/")
    if not parts:
        return None
    return f"SCOOD {' and '.join(parts)} under {scood_dir(root)} ({how_to_get(root)})"


def parse_imglist(path: Path, num_classes: int, base: Path | None = None) -> tuple[list[str], list[int]]:
    """(relative paths, labels): label = sc_label when >= 0 (an ID class), -1 for OOD.

    Paths must be relative to `base` (the images/ folder) without `..`: anything else names the line.
    """
    rels, labels = [], []
    base = base if base is not None else Path(path).parent
    for lineno, line in read_lines(path, "SCOOD list"):
        cut = line.find(" {")
        if cut < 0:
            raise ImoodError(f"{path}:{lineno}: expected '<relative path> <json dict>', got {line[:80]!r}")
        try:
            meta = json.loads(line[cut + 1:])
        except json.JSONDecodeError as exc:
            raise ImoodError(f"{path}:{lineno}: the dict is not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise ImoodError(f"{path}:{lineno}: the dict is nested too deeply") from None
        sc = meta.get("sc_label") if isinstance(meta, dict) else None
        if isinstance(sc, bool) or not isinstance(sc, int):
            raise ImoodError(f"{path}:{lineno}: no integer sc_label in {line[cut + 1:][:80]}")
        if sc >= num_classes:
            raise ImoodError(f"{path}:{lineno}: sc_label {sc} is not a class of a {num_classes}-class benchmark "
                             "(a list of the other benchmark?)")
        rels.append(check_list_path(line[:cut].strip(), path, lineno, base))
        labels.append(sc if sc >= 0 else -1)
    if not rels:
        raise ImoodError(f"{path} lists no image")
    return rels, labels


def _read_cache(path: Path, key: str, labels: np.ndarray, size: int) -> np.ndarray | None:
    """The cached uint8 [N, 3, size, size] images if the cache matches the list in every way, else None."""
    n = len(labels)
    try:
        with open_regular(path) as f:
            with zipfile.ZipFile(f) as zf:  # refuse to inflate more than the set can be
                most = n * (3 * size * size + 8) + 4 * len(key) + 3 * NPY_HEADER_SLACK
                if sum(i.file_size for i in zf.infolist()) > most:
                    return None
            f.seek(0)
            with np.load(f, allow_pickle=False) as z:
                if set(z.files) != {"images", "labels", "key"}:
                    return None
                stored_key = z["key"]
                if stored_key.dtype.kind != "U" or stored_key.shape != () or str(stored_key) != key:
                    return None
                images, stored = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, ImoodError):
        return None
    if images.dtype != np.uint8 or images.shape != (n, 3, size, size):
        return None
    if stored.dtype.kind not in "iu" or stored.shape != (n,) or not np.array_equal(stored, labels):
        return None
    return np.ascontiguousarray(images)


def _write_cache(path: Path, key: str, images: np.ndarray, labels: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels, key=np.array(key))
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass  # a read-only data folder: decode again next time


def load_set(root: Path, benchmark: str, name: str, num_classes: int, size: int = 32,
             cache_dir: Path | None = None) -> ImageSet:
    """One SCOOD test set as uint8 [N, 3, size, size] with labels (-1 OOD, >= 0 ID class)."""
    lst = imglist_path(root, benchmark, name)
    shown = display_name(benchmark, name)
    try:
        with open_regular(lst, "SCOOD list") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ImoodError(f"SCOOD list missing: {lst} ({how_to_get(root)})") from None
    key = f"{hashlib.sha256(raw).hexdigest()}|{size}|{num_classes}|{CACHE_VERSION}"
    base = images_dir(root)
    rels, labels = parse_imglist(lst, num_classes, base)
    labels_np = np.asarray(labels, dtype=np.int64)
    cache = Path(cache_dir) / f"scood-{shown}-{size}.npz" if cache_dir is not None else None
    if cache is not None and cache.exists():
        hit = _read_cache(cache, key, labels_np, size)
        if hit is not None:
            return ImageSet(shown, torch.from_numpy(labels_np), torch.from_numpy(hit))
    images, failed = decode_many([base / r for r in rels], size, 3)
    if failed:
        raise ImoodError(failed_message(f"SCOOD {shown} ({lst.name})", failed, len(rels)) + f" (paths under {base})")
    if cache is not None:
        _write_cache(cache, key, images, labels_np)
    return ImageSet(shown, torch.from_numpy(labels_np), torch.from_numpy(images))


def load_sets(root: Path, benchmark: str, num_classes: int, size: int = 32,
              cache_dir: Path | None = None) -> dict[str, ImageSet]:
    """All six sets; a missing one is an error (see `load_present_sets` for partial data)."""
    return {display_name(benchmark, n): load_set(root, benchmark, n, num_classes, size, cache_dir) for n in SETS}


def load_present_sets(root: Path, benchmark: str, num_classes: int, size: int = 32,
                      cache_dir: Path | None = None) -> tuple[dict[str, ImageSet], dict[str, str]]:
    """(the sets on disk, display name -> where to get it for the missing ones), in SCOOD's order."""
    missing = missing_sets(root, benchmark)
    sets = {display_name(benchmark, n): load_set(root, benchmark, n, num_classes, size, cache_dir)
            for n in SETS if display_name(benchmark, n) not in missing}
    return sets, missing
