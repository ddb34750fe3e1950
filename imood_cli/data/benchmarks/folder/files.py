"""Reading a folder benchmark's images: every file decoded once when it is prepared (so a damaged one is
named there), hashed as it is read, and checked against what the manifest recorded at every load."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imood_cli.core.lazy import np
from imood_cli.data.benchmarks.folder.sources import MANIFEST_CAP, Source, _rel, class_folders
from imood_cli.data.pipeline.images import (
    SHOW_FAILED,
    decode_failure,
    failed_message,
    list_images,
    to_channels,
)
from imood_cli.errors import ImoodError
from imood_cli.fs.safe import open_regular, path_kind, read_capped

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


REDO = "run `imood data prepare {name}` to record the files as they are now"


def _pool_map(fn: Callable[[int], Any], n: int) -> list[Any]:
    """[fn(0), ..., fn(n-1)] over a thread pool (hashing and PIL decoding release the GIL); Ctrl-C cancels
    what has not started instead of waiting for it."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        out = list(pool.map(fn, range(n)))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return out


def _read(path: Path) -> tuple[bytes, os.stat_result]:
    """A regular file's bytes and its stat (of the open file: the bytes and the record match)."""
    with open_regular(path) as f:
        return f.read(), os.fstat(f.fileno())


def _failure(exc: BaseException) -> str:
    """Why an image could not be used, in words (PIL's own message names an in-memory buffer)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can read"
    return decode_failure(exc)


def _open_image(data: bytes):
    """A fully decoded PIL image (a truncated file fails here, not later)."""
    from PIL import Image

    if not data:
        raise ValueError("empty file")
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def decode_bytes(data: bytes, size: int, channels: int) -> np.ndarray:
    """[C, size, size] uint8: the whole image resized (bilinear, no crop), as `data.images.decode_resized`."""
    from PIL import Image

    img = to_channels(_open_image(data), channels)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


@dataclass
class Probe:
    width: int
    height: int
    gray: bool


def probe_set(src: Source, what: str) -> list[Probe]:
    """Read, hash and fully decode every image of a set, filling each entry's sha256, size and mtime.
    Unreadable, truncated, empty or non-image files are one error naming them."""
    entries = src.entries

    def one(i: int) -> Probe | tuple[str, str]:
        e = entries[i]
        try:
            data, st = _read(src.file(e))
            im = _open_image(data)
        except Exception as exc:
            return e.where, _failure(exc)
        e.sha256, e.nbytes, e.mtime_ns = hashlib.sha256(data).hexdigest(), len(data), st.st_mtime_ns
        return Probe(im.width, im.height, im.mode in GRAY_MODES)

    out = _pool_map(one, len(entries))
    failed = [r for r in out if isinstance(r, tuple)]
    if failed:
        raise ImoodError(failed_message(what, failed, len(entries)) + "; remove or fix them")
    return out


class FilesChanged(ImoodError):
    """Files of a prepared set differ from what the manifest records."""


def _changed_error(name: str, changed: list[tuple[str, str]]) -> FilesChanged:
    first = ", ".join(f"{p} ({why})" for p, why in changed[:SHOW_FAILED])
    more = f" and {len(changed) - SHOW_FAILED} more" if len(changed) > SHOW_FAILED else ""
    return FilesChanged(f"folder benchmark {name}: {len(changed)} file(s) differ from what `imood data prepare` "
                        f"recorded: {first}{more}; {REDO.format(name=name)}")


def decode_set(src: Source, size: int, channels: int, name: str) -> np.ndarray:
    """uint8 [N, C, size, size] of a set's images, each checked against its recorded sha256 (from the same
    bytes that are decoded, so what is checked is what is used)."""
    entries = src.entries
    out = np.zeros((len(entries), channels, size, size), dtype=np.uint8)

    def one(i: int) -> tuple[str, str] | None:
        e, file = entries[i], src.file(entries[i])
        try:
            data, _ = _read(file)
        except FileNotFoundError:
            return str(file), "removed"
        except Exception as exc:
            return str(file), decode_failure(exc)
        if hashlib.sha256(data).hexdigest() != e.sha256:
            return str(file), "contents changed"
        try:
            out[i] = decode_bytes(data, size, channels)
        except Exception as exc:
            return str(file), _failure(exc)
        return None

    changed = [r for r in _pool_map(one, len(entries)) if r is not None]
    if changed:
        raise _changed_error(name, changed)
    return out


def check_files(src: Source, name: str) -> None:
    """A file-backed set: each file is still a regular file of the recorded size and, where its modification
    time moved, the recorded sha256 (unchanged size and time are trusted, as git and rsync do)."""
    entries = src.entries

    def one(i: int) -> tuple[str, str] | None:
        e, file = entries[i], src.file(entries[i])
        try:
            st = os.stat(file)
        except FileNotFoundError:
            return str(file), "removed"
        except OSError as exc:
            return str(file), f"unreadable: {exc.strerror or exc}"
        if st.st_size != e.nbytes:
            return str(file), "contents changed"
        if st.st_mtime_ns == e.mtime_ns:
            return None
        try:
            data, _ = _read(file)
        except Exception as exc:
            return str(file), decode_failure(exc)
        return None if hashlib.sha256(data).hexdigest() == e.sha256 else (str(file), "contents changed")

    changed = [r for r in _pool_map(one, len(entries)) if r is not None]
    if changed:
        raise _changed_error(name, changed)


def check_listing(src: Source, name: str, option: str) -> None:
    """Files added to or removed from a source since `prepare`: a folder is listed again, a list file's
    sha256 compared."""
    if src.kind == "list":
        try:
            raw = read_capped(src.path, f"{option} list", MANIFEST_CAP)
        except ImoodError:
            raise _changed_error(name, [(str(src.path), "the list file is gone or unreadable")]) from None
        if hashlib.sha256(raw).hexdigest() != src.list_sha256:
            raise _changed_error(name, [(str(src.path), "the list file changed")])
        return
    if path_kind(src.path) != "a folder":
        raise ImoodError(f"folder benchmark {name}: {option} {src.path} is gone (prepared from there); "
                         f"{REDO.format(name=name)}, or prepare it from where the images are now")
    if src.kind == "folder":
        now = {_rel(p, src.path) for files in class_folders(src.path, option).values() for p in files}
    else:
        now = {_rel(p, src.path) for p in list_images(src.path, option)}
    recorded = {e.rel for e in src.entries}
    changed = [(str(src.path / r), "added") for r in sorted(now - recorded)]
    changed += [(str(src.path / r), "removed") for r in sorted(recorded - now)]
    if changed:
        raise _changed_error(name, changed)
