"""Image files: finding them under a folder, and decoding them into uint8 arrays.

`list_images` walks a folder at any depth. Symbolic links to folders are followed, but every real
folder (its device and inode) is read at most once, so a link back up the tree (`loop -> .`) ends
the walk instead of repeating it, and a folder reachable twice counts once, at the first place the
sorted walk meets it. Only regular files are taken: an image-named FIFO, socket, device or broken
link is an error naming it, never opened (opening a FIFO blocks forever).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from imood_cli.core.lazy import np
from imood_cli.errors import ImoodError
from imood_cli.fs.safe import NotRegularFile, mode_kind, open_regular

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm"})
SHOW_FAILED = 3


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _entries(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """(regular image files, other image-named entries, folders) in `folder`, each sorted by name.

    Links count as what they point to. The directory entry's type answers for most names without
    a stat call (that matters for folders of a million images); only links are stat-ed.
    """
    files, odd, dirs = [], [], []
    with os.scandir(folder) as it:
        for e in it:
            try:
                is_dir = e.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                dirs.append(e.name)
            elif is_image_name(e.name):
                try:
                    regular = e.is_file()  # follows links; False for FIFOs, sockets, devices, broken links
                except OSError:
                    regular = False
                (files if regular else odd).append(e.name)
    return sorted(files), sorted(odd), sorted(dirs)


def _kind(path: Path) -> str:
    try:
        return f"{mode_kind(os.stat(path).st_mode)}, not a regular file"
    except OSError:
        return "a broken symbolic link" if os.path.islink(path) else "unreadable"


def list_images(folder: Path, what: str | None = None) -> list[Path]:
    """Every image file under `folder` (any depth), in the order of a sorted top-down walk.

    A folder's own files come first, then each subfolder in name order, recursively (the order of
    `os.walk` with sorted names). `what` prefixes error messages (e.g. "--ood-dir").
    """
    folder = Path(folder)
    found: list[Path] = []
    bad: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            files, odd, dirs = _entries(d)
        except OSError as exc:
            if d == folder:
                raise ImoodError(f"{what + ' ' if what else ''}{folder}: cannot read the folder "
                                 f"({exc.strerror or exc})") from None
            bad.append((str(d), f"unreadable folder: {exc.strerror or exc}"))
            continue
        found.extend(d / name for name in files)
        bad.extend((str(d / name), _kind(d / name)) for name in odd)
        stack.extend(d / name for name in reversed(dirs))
    if bad:
        raise ImoodError(failed_message(f"{what + ' ' if what else ''}{folder}", bad, len(found) + len(bad))
                         + "; imood reads regular files only: remove or replace these")
    return found


SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


def to_channels(im, channels: int):
    """A PIL image in RGB (3) or L (1), 8 bits per channel, from any mode PIL decodes.

    16-bit images are scaled (65535 -> 255) and float images taken as 0..1 when they fit there; PIL's
    `convert` would clip both to 255 (a 16-bit scan turns white). Palette images with transparency go through
    RGBA; alpha is dropped.
    """
    from PIL import Image

    mode = im.mode
    if mode in SIXTEEN_BIT or mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if mode in SIXTEEN_BIT or (mode == "I" and a.size and a.max() > 255):
            a = a / 257.0
        elif mode == "F" and a.size and a.min() >= 0 and a.max() <= 1:
            a = a * 255.0
        im = Image.fromarray(np.rint(a).clip(0, 255).astype(np.uint8), "L")
    elif mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB" if channels == 3 else "L")


def open_image(path: str | Path, channels: int = 3):
    """A decoded PIL image in RGB (3 channels) or luma (1 channel), 8 bits each (`to_channels`); regular files
    only."""
    from PIL import Image

    with open_regular(path) as f, Image.open(f) as im:
        return to_channels(im, channels)


def decode_resized(path: str | Path, size: int, channels: int = 3) -> np.ndarray:
    """[C, size, size] uint8: the whole image resized (bilinear, no crop), as SCOOD's 32×32 sets are."""
    from PIL import Image

    img = open_image(path, channels)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def failed_message(what: str, failed: Sequence[tuple[str, str]], total: int) -> str:
    first = ", ".join(f"{p} ({why})" for p, why in failed[:SHOW_FAILED])
    more = f" and {len(failed) - SHOW_FAILED} more" if len(failed) > SHOW_FAILED else ""
    return f"{what}: {len(failed)} of {total} images could not be read: {first}{more}"


def decode_failure(exc: BaseException) -> str:
    """A short reason for a failed decode (PIL raises many exception types for damaged files)."""
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, NotRegularFile):
        return f"{exc.kind}, not a regular file"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}".rstrip(": ")


def decode_many(paths: Sequence[str | Path], size: int, channels: int = 3,
                threads: int | None = None) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode and resize images in a thread pool (PIL releases the GIL while decoding).

    Returns uint8 [N, C, size, size] (zeros where decoding failed) and the failures as (path, reason).
    Ctrl-C cancels the images not started yet instead of waiting for all of them.
    """
    from concurrent.futures import ThreadPoolExecutor  # here, not at the top: `plugins list` imports this module

    out = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    failed: list[tuple[str, str]] = []

    def one(i: int) -> tuple[int, str | None]:
        try:
            out[i] = decode_resized(paths[i], size, channels)
            return i, None
        except Exception as exc:
            return i, decode_failure(exc)

    pool = ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1))
    try:
        for i, why in pool.map(one, range(len(paths)), chunksize=64):
            if why is not None:
                failed.append((str(paths[i]), why))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return out, failed
