"""Your own images as a benchmark: `imood data prepare folder --name NAME ...`, then `--ds NAME` everywhere.

The ID classes come from an ImageFolder layout (`DIR/CLASS/*.png`, class names sorted, index = position)
or from CSV list files (`path,label`), and the class prior from the training counts, optionally made
long-tailed with imood's rule (`data.longtail`), or from `--class-counts` when the training images are not
at hand. Folders of OOD images (`--ood-dir`) become OOD test sets named after their folders.

Why a manifest that lists every file with its sha256: a user's folder changes under imood (images added,
relabelled, re-exported), and a benchmark that silently differs from the one a model was trained and scored
on makes numbers that cannot be compared. So `prepare` records every file (relative path, label, sha256,
size, modification time) and every load checks them: a changed, added or removed file is one error naming
it, and `imood data prepare NAME` records the files as they are now. Small images (size <= 64) are read
whole at each load anyway, so each is hashed as it is decoded, from the same bytes; large ones stay on disk
and are re-hashed only when their size or modification time changed (what git and rsync trust).

Every image is decoded once by `prepare`, so a truncated, empty or non-image file is named there, not
hours into training. Modes are normalised the same way everywhere: 16-bit and float images are scaled to
8 bits (PIL's own conversion would clip them to white), palette images with transparency go through RGBA,
alpha is dropped, and luma uses ITU-R 601 weights (`data.images.to_channels`, which file-backed sets use too).

Nothing is half-written: every input is checked before the one write, DATA/NAME/manifest.json, which is
atomic; a folder DATA/NAME that imood did not make (or that holds anything but the sources being prepared)
is refused, and a re-prepare replaces only the manifest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from imood_cli.core.lazy import np, torch
from imood_cli.data.augment_spec import AugmentSpec
from imood_cli.data.base import Benchmark, FileStatus, ImageSet
from imood_cli.data.folder import IN_MEMORY_MAX_SIZE
from imood_cli.data.images import SHOW_FAILED, decode_failure, failed_message, is_image_name, list_images, to_channels
from imood_cli.data.longtail import check_imbalance_ratio, longtail_counts, longtail_indices
from imood_cli.data.manifest import FILENAME, write_manifest
from imood_cli.errors import ImoodError
from imood_cli.fs.safe import check_list_path, open_regular, path_kind, read_capped, read_lines

SOURCE = "folder"  # manifest.json "source": what marks a folder benchmark
FORMAT = 1  # manifest["folder"]["format"]
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
RESERVED_NAMES = frozenset({"folder"})  # `imood data prepare folder` itself
SMALL_SIZE, LARGE_SIZE = 32, 224  # the default image size: 32 when every training image fits in 64 px, else 224
MIN_SIZE, MAX_SIZE = 4, 1024
MANIFEST_CAP = 1 << 30  # a manifest lists every file (~250 bytes each): 1 GiB is about four million images
HEADER = ("path", "label")
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
IMAGENET_GRAY = ((0.449,), (0.226,))  # the mean and std of ImageNet's three channels, for one-channel data
REDO = "run `imood data prepare {name}` to record the files as they are now"


# ---------------------------------------------------------------- names

def check_name(name: Any) -> str:
    """A plain lower-case name (letters, digits, _ and -) usable as a folder and a `--ds` value."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ImoodError(f"--name {name!r}: a folder benchmark's name is 1-64 lower-case letters, digits, '_' or '-', "
                         "starting with a letter or digit")
    if name in RESERVED_NAMES:
        raise ImoodError(f"--name {name!r} is reserved for `imood data prepare folder`: choose another name")
    return name


# ---------------------------------------------------------------- one set of images

@dataclass
class Entry:
    """One image file of a set: its path relative to the set's base folder and its class (-1: OOD)."""

    rel: str
    label: int
    where: str  # how messages name it: the file, or `list.csv:12` for a list line
    sha256: str = ""
    nbytes: int = 0
    mtime_ns: int = 0

    def record(self) -> dict:
        return {"path": self.rel, "label": self.label, "sha256": self.sha256, "bytes": self.nbytes,
                "mtime_ns": self.mtime_ns}


@dataclass
class Source:
    """Where one set's images come from: a folder of class folders, a list file, a folder of OOD images,
    or (training only) class counts without images."""

    kind: str  # "folder" | "list" | "ood" | "counts"
    path: Path | None  # the folder or list file, absolute
    entries: list[Entry] = field(default_factory=list)
    list_sha256: str | None = None

    @property
    def base(self) -> Path:
        """What entry paths are relative to: the folder, or the list file's folder."""
        assert self.path is not None
        return self.path.parent if self.kind == "list" else self.path

    def file(self, e: Entry) -> Path:
        return self.base / e.rel

    def record(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind, "path": str(self.path) if self.path is not None else None}
        if self.list_sha256 is not None:
            out["list_sha256"] = self.list_sha256
        out["files"] = [e.record() for e in self.entries]
        return out


def _abs(path: Path) -> Path:
    """Absolute, without resolving links (a link the user made stays the name they gave)."""
    return Path(os.path.abspath(path))


def _rel(path: Path, base: Path) -> str:
    return PurePosixPath(*path.relative_to(base).parts).as_posix()


def _need_folder(path: Path, option: str) -> Path:
    kind = path_kind(path)
    if kind != "a folder":
        raise ImoodError(f"{option} {path}: {'no such folder' if kind is None else f'{kind}, not a folder'}")
    return _abs(path)


def class_folders(root: Path, option: str) -> dict[str, list[Path]]:
    """{class name: its image files} of an ImageFolder layout, classes in sorted order.

    Hidden folders are skipped; an image file outside the class folders, a class folder without images, or a
    FIFO or device named like an image (`data.images.list_images`) is an error naming it.
    """
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise ImoodError(f"{option} {root}: cannot read the folder ({exc.strerror or exc})") from None
    names, stray = [], []
    for e in entries:
        try:
            is_dir = e.is_dir()
        except OSError:
            is_dir = False
        if is_dir and not e.name.startswith("."):
            names.append(e.name)
        elif not is_dir and is_image_name(e.name):
            stray.append(e.name)
    if stray:
        raise ImoodError(f"{option} {root}: {root / stray[0]} is not inside a class folder ({len(stray)} such "
                         f"image(s)); images go in {root}/CLASS/, one folder per class")
    if not names:
        raise ImoodError(f"{option} {root} holds no class folders: images go in {root}/CLASS/, one folder per class")
    out = {}
    for name in names:
        files = list_images(root / name, option)
        if not files:
            raise ImoodError(f"{option} {root}: class folder {name!r} ({root / name}) holds no image files")
        out[name] = files
    return out


def folder_source(root: Path, option: str, classes: list[str] | None) -> tuple[Source, list[str]]:
    """The images of an ImageFolder layout; classes None: they are its folders, sorted; else every folder
    must name one of `classes` (a test set's classes come from the training set)."""
    root = _need_folder(root, option)
    found = class_folders(root, option)
    if classes is None:
        classes = list(found)
    index = {c: k for k, c in enumerate(classes)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise ImoodError(f"{option} {root}: class {unknown[0]!r} ({root / unknown[0]}) is not a class of the training "
                         f"set ({_show_names(classes)}): every test class needs training images")
    entries = [Entry(_rel(p, root), index[c], str(p)) for c, files in found.items() for p in files]
    return Source("folder", root, entries), classes


def read_list(path: Path, option: str) -> list[tuple[int, str, str]]:
    """(line number, relative path, label) of a CSV list file.

    Header rule: the first non-blank line is skipped when its two fields are `path` and `label` (any case);
    any other line is an image. Fields may be CSV-quoted (a path with a comma); paths are relative to the
    list's folder, without `..` (`fs.safe.check_list_path`).
    """
    kind = path_kind(path)
    if kind is None:
        raise ImoodError(f"{option} {path}: no such file")
    lines = read_lines(path, f"{option} list")
    rows = []
    for i, (lineno, line) in enumerate(lines):
        try:
            fields = [f.strip() for f in next(csv.reader([line]))]
        except csv.Error as exc:
            raise ImoodError(f"{path}:{lineno}: not a CSV line ({exc})") from None
        if i == 0 and tuple(f.lower() for f in fields) == HEADER:
            continue
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise ImoodError(f"{path}:{lineno}: expected 'path,label' (quote a path that holds a comma), "
                             f"got {line[:80]!r}")
        rows.append((lineno, check_list_path(fields[0], path, lineno, path.parent), fields[1]))
    if not rows:
        raise ImoodError(f"{option} {path} lists no image")
    return rows


def _is_index(label: str) -> bool:
    return label.isascii() and label.isdigit()


def _defined_classes(rows: list[tuple[int, str, str]], path: Path, size: int | None) -> list[str]:
    """The classes a list defines: the sorted names it uses, or 0..K-1 when every label is a whole number
    (K: `size`, or the largest label + 1). Names and numbers mixed in one list is an error naming the line."""
    first = _is_index(rows[0][2])
    for lineno, _, label in rows:
        if _is_index(label) != first:
            raise ImoodError(f"{path}:{lineno}: label {label!r} is {'a name' if first else 'a number'} but line "
                             f"{rows[0][0]} uses {'numbers' if first else 'names'}: use class names or indices "
                             "throughout")
    if not first:
        return sorted({label for _, _, label in rows})
    k = size if size is not None else max(int(label) for _, _, label in rows) + 1
    return [str(i) for i in range(k)]


def list_source(path: Path, option: str, classes: list[str] | None,
                class_count: int | None = None) -> tuple[Source, list[str]]:
    """The images a list file names. classes None: the list defines them (`_defined_classes`); else a label is
    a class name, or, naming none, a whole number k in 0..K-1 taken as the class index."""
    path = _abs(path)
    rows = read_list(path, option)
    if classes is None:
        classes = _defined_classes(rows, path, class_count)
    index = {c: k for k, c in enumerate(classes)}
    entries, seen = [], {}
    for lineno, rel, label in rows:
        k = index.get(label)
        if k is None and _is_index(label) and int(label) < len(classes):
            k = int(label)
        if k is None:
            raise ImoodError(f"{path}:{lineno}: unknown label {label!r}: not one of the {len(classes)} classes "
                             f"({_show_names(classes)})")
        key = os.path.normpath(rel)
        if key in seen:
            raise ImoodError(f"{path}:{lineno}: {rel!r} is listed twice (first on line {seen[key]})")
        seen[key] = lineno
        file = path.parent / rel
        kind = path_kind(file)
        if kind != "a regular file":
            raise ImoodError(f"{path}:{lineno}: {file} {'does not exist' if kind is None else f'is {kind}'}"
                             f"{'' if kind is None else ', not a regular file'}")
        entries.append(Entry(rel, k, f"{file} ({path.name}:{lineno})"))
    raw = read_capped(path, f"{option} list", MANIFEST_CAP)
    return Source("list", path, entries, hashlib.sha256(raw).hexdigest()), classes


def ood_source(folder: Path) -> tuple[str, Source]:
    """(set name, images) of one --ood-dir: every image at any depth, the set named after the folder."""
    folder = _need_folder(folder, "--ood-dir")
    files = list_images(folder, "--ood-dir")
    if not files:
        raise ImoodError(f"--ood-dir {folder} holds no image files")
    name = Path(os.path.realpath(folder)).name or str(folder)
    return name, Source("ood", folder, [Entry(_rel(p, folder), -1, str(p)) for p in files])


def _bincount(entries: list[Entry], k: int) -> list[int]:
    """Images per class (plain Python: `imood data list` reads manifests without numpy)."""
    counts = [0] * k
    for e in entries:
        counts[e.label] += 1
    return counts


def _show_names(names: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


# ---------------------------------------------------------------- reading, hashing and decoding images

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


# ---------------------------------------------------------------- the split and the set-up

def split_counts(counts: list[int], ratio: float) -> list[int]:
    """imood's long-tail rule n_k = int(n_max · ρ^(k/(K-1))) (`data.longtail`) with the largest n_max every
    class has images for: a balanced folder keeps its per-class count as n_max (a folder of CIFAR-10's
    training images gives CIFAR10-LT's 12,406 at ρ = 0.01)."""
    check_imbalance_ratio(ratio)
    k = len(counts)
    factors = [ratio ** (i / (k - 1)) if k > 1 else 1.0 for i in range(k)]
    n_max = min(int((c + 1) / f) for c, f in zip(counts, factors))
    while n_max > 0 and any(n > c for n, c in zip(longtail_counts(n_max, k, ratio), counts)):
        n_max -= 1
    split = longtail_counts(n_max, k, ratio) if n_max > 0 else [0] * k
    if 0 in split:
        c = split.index(0)
        raise ImoodError(f"--imbalance-ratio {ratio:g}: class {c} would keep no training image (the classes have "
                         f"{counts} images); use a larger ratio or more images")
    return split


def default_size(probes: list[Probe]) -> int:
    return SMALL_SIZE if all(max(p.width, p.height) <= 64 for p in probes) else LARGE_SIZE


def augment_for(size: int, channels: int, in_memory: bool) -> AugmentSpec:
    """Training augmentation: CIFAR's (padding size/8, flip, jitter) for small color images, digits' (padding
    only) for small grayscale ones, ImageNet-LT's (crops in the loader, its mean/std) for large ones."""
    if not in_memory:
        from imood_cli.data.imagenet_lt import IMAGENET_AUGMENT

        if channels == 3:
            return IMAGENET_AUGMENT
        return AugmentSpec(mean=IMAGENET_GRAY[0], std=IMAGENET_GRAY[1])
    pad = max(1, size // 8)
    if channels == 1:
        return AugmentSpec(crop_padding=pad)
    return AugmentSpec(crop_padding=pad, flip=True, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2)


def parse_class_counts(text: str | Sequence[int]) -> list[int]:
    """`--class-counts 500,120,30`: one whole number >= 1 per class, in class order."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        counts = [int(str(p).strip()) for p in parts]
    except ValueError:
        counts = []
    if not counts or any(c < 1 for c in counts):
        raise ImoodError(f"--class-counts takes one whole number >= 1 per class, comma-separated (500,120,30), "
                         f"got {text!r}")
    return counts


@dataclass
class Plan:
    """Everything a folder benchmark is, before anything is decoded into sets."""

    name: str
    classes: list[str]
    train: Source  # kind "counts" when only --class-counts were given
    test: Source
    ood: dict[str, Source]
    source_counts: list[int]  # training images per class before the long-tail split
    class_counts: list[int]  # the prior: after the split
    image_size: int
    channels: int
    given: dict[str, Any]  # the options as given, so `imood data prepare NAME` can repeat them

    @property
    def in_memory(self) -> bool:
        return self.image_size <= IN_MEMORY_MAX_SIZE

    @property
    def counts_only(self) -> bool:
        return self.train.kind == "counts"

    @property
    def train_name(self) -> str:
        return f"{self.name}-train{'-lt' if self.given.get('imbalance_ratio') is not None else ''}"

    def kept(self) -> list[Entry]:
        """The training entries of the split: the first class_counts[k] of class k in the recorded order."""
        labels = torch.tensor([e.label for e in self.train.entries], dtype=torch.long)
        return [self.train.entries[i] for i in longtail_indices(labels, self.class_counts).tolist()]


def _sources(train: Path | None, test: Path | None, train_list: Path | None, test_list: Path | None,
             class_counts: list[int] | None) -> tuple[Source, Source, list[str]]:
    """(train, test, class names) from one of the three input forms."""
    forms = [("--train", train), ("--train-list", train_list), ("--class-counts", class_counts)]
    given = [f for f, v in forms if v is not None]
    if len(given) != 1:
        raise ImoodError("give the training set one way: --train DIR (class folders), --train-list FILE (CSV "
                         "path,label) or --class-counts N,N,... (no training images)"
                         + (f"; got {' and '.join(given)}" if given else ""))
    tests = [f for f, v in (("--test", test), ("--test-list", test_list)) if v is not None]
    if len(tests) != 1:
        raise ImoodError("give the ID test set one way: --test DIR (class folders) or --test-list FILE (CSV "
                         "path,label)" + (f"; got {' and '.join(tests)}" if tests else ""))
    if class_counts is not None:
        k = len(class_counts)
        if test is not None:
            test_src, classes = folder_source(test, "--test", None)
        else:
            test_src, classes = list_source(test_list, "--test-list", None, class_count=k)
        if len(classes) != k:
            raise ImoodError(f"--class-counts gives {k} classes but the test set has {len(classes)} "
                             f"({_show_names(classes)}): give one count per class, in sorted class order")
        return Source("counts", None), test_src, classes
    if train is not None:
        train_src, classes = folder_source(train, "--train", None)
    else:
        train_src, classes = list_source(train_list, "--train-list", None)
        counts = _bincount(train_src.entries, len(classes))
        if 0 in counts:
            raise ImoodError(f"{train_src.path}: class {classes[counts.index(0)]!r} has no training image (with "
                             f"indices as labels, the classes are 0..{len(classes) - 1})")
    if test is not None:
        test_src, _ = folder_source(test, "--test", classes)
    else:
        test_src, _ = list_source(test_list, "--test-list", classes)
    return train_src, test_src, classes


def plan_folder(name: str, *, train: Path | None = None, test: Path | None = None, train_list: Path | None = None,
                test_list: Path | None = None, class_counts: str | Sequence[int] | None = None,
                ood_dirs: Sequence[Path] = (), imbalance_ratio: float | None = None, image_size: int | None = None,
                channels: int | None = None) -> Plan:
    """Check every option and every file (each image read, hashed and decoded once); nothing is written."""
    check_name(name)
    if image_size is not None and (isinstance(image_size, bool) or not MIN_SIZE <= image_size <= MAX_SIZE):
        raise ImoodError(f"--image-size must be a whole number in {MIN_SIZE}..{MAX_SIZE}, got {image_size!r}")
    if channels is not None and channels not in (1, 3):
        raise ImoodError(f"--channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    counts_given = parse_class_counts(class_counts) if class_counts is not None else None
    if imbalance_ratio is not None:
        check_imbalance_ratio(imbalance_ratio)
        if counts_given is not None:
            raise ImoodError("--imbalance-ratio subsamples the training images, which --class-counts does not "
                             "give: write the counts you want in --class-counts")
    given = {"train": str(_abs(train)) if train is not None else None,
             "test": str(_abs(test)) if test is not None else None,
             "train_list": str(_abs(train_list)) if train_list is not None else None,
             "test_list": str(_abs(test_list)) if test_list is not None else None,
             "class_counts": counts_given, "ood_dirs": [str(_abs(d)) for d in ood_dirs],
             "imbalance_ratio": imbalance_ratio, "image_size": image_size, "channels": channels}
    train_src, test_src, classes = _sources(train, test, train_list, test_list, counts_given)
    ood: dict[str, Source] = {}
    for d in ood_dirs:
        set_name, src = ood_source(d)
        if set_name in ood or set_name == "mean":
            why = "'mean' is where evaluations keep the average" if set_name == "mean" else (
                f"{ood[set_name].path} has it too")
            raise ImoodError(f"--ood-dir {d}: the OOD set would be named {set_name!r}, but {why}; rename the folder")
        ood[set_name] = src
    probes = [] if train_src.kind == "counts" else probe_set(train_src, f"--train {train_src.path}"
                                                             if train_src.kind == "folder"
                                                             else f"--train-list {train_src.path}")
    test_probes = probe_set(test_src, f"{'--test' if test_src.kind == 'folder' else '--test-list'} {test_src.path}")
    for src in ood.values():
        probe_set(src, f"--ood-dir {src.path}")
    shape_from = probes or test_probes  # --class-counts: the test images stand in for the training images
    size = image_size or default_size(shape_from)
    ch = channels or (1 if all(p.gray for p in shape_from) else 3)
    if counts_given is not None:
        source_counts = counts_given
    else:
        source_counts = _bincount(train_src.entries, len(classes))
    prior = split_counts(source_counts, imbalance_ratio) if imbalance_ratio is not None else list(source_counts)
    return Plan(name, classes, train_src, test_src, ood, source_counts, prior, size, ch, given)


# ---------------------------------------------------------------- the sets, as the engine uses them

def no_training_images(name: str) -> ImoodError:
    return ImoodError(f"{name} was prepared with --class-counts and has no training images: training, and detectors "
                      "fitted on the ID training set (maha, knn, vim, rmd, ...) or --ada-scale auto, need them; "
                      "detectors without a fit (msp, energy, ...) score it. Prepare it with --train DIR or "
                      "--train-list FILE to train or fit")


class NoTrainingImages(ImageSet):
    """The training set of a benchmark prepared with --class-counts: labels that give its size and prior, no
    images. Whatever reads the images (training, detectors fitted on the ID training set, --ada-scale auto)
    gets one error that says why, where it asks."""

    def __init__(self, name: str, labels, benchmark: str) -> None:  # not the dataclass __init__: no images to set
        self.name, self.labels, self._benchmark = name, labels, benchmark

    def _refuse(self):
        raise no_training_images(self._benchmark)

    images = property(lambda self: self._refuse())
    files = property(lambda self: self._refuse())

    def subset(self, index, name: str | None = None) -> ImageSet:
        self._refuse()


def _labels(entries: list[Entry]):
    return torch.tensor([e.label for e in entries], dtype=torch.long)


def _image_set(set_name: str, src: Source, entries: list[Entry], plan: Plan, bench: str, check: bool) -> ImageSet:
    """In memory (size <= 64: decoded, each file checked against its sha256) or file-backed (test transform
    resize + center crop; files checked by size, time and, where the time moved, sha256)."""
    view = Source(src.kind, src.path, entries, src.list_sha256)
    if plan.in_memory:
        images = decode_set(view, plan.image_size, plan.channels, bench)
        return ImageSet(set_name, _labels(entries), torch.from_numpy(images))
    from imood_cli.data.files import file_image_set

    if check:
        check_files(view, bench)
    return file_image_set(set_name, [str(view.file(e)) for e in entries], _labels(entries), plan.image_size,
                          mode="center", channels=plan.channels)


def build_benchmark(plan: Plan, *, check: bool, ood_tests: bool = True, for_manifest: bool = False,
                    description: str = "") -> Benchmark:
    """The Benchmark of a plan. check: verify file-backed sets against their records (in-memory sets are
    always checked as they are decoded). for_manifest: a --class-counts training set as plain labels."""
    k = len(plan.classes)
    if plan.counts_only:
        labels = torch.repeat_interleave(torch.arange(k), torch.tensor(plan.class_counts))
        train = (ImageSet(plan.train_name, labels) if for_manifest
                 else NoTrainingImages(plan.train_name, labels, plan.name))
    else:
        train = _image_set(plan.train_name, plan.train, plan.kept(), plan, plan.name, check)
    test = _image_set(f"{plan.name}-test", plan.test, plan.test.entries, plan, plan.name, check)
    sets, missing = {}, {}
    if ood_tests:
        for set_name, src in plan.ood.items():
            if path_kind(src.path) != "a folder":
                missing[set_name] = f"{src.path}/ (the --ood-dir it was prepared from is gone)"
                continue
            if check:
                check_listing(src, plan.name, "--ood-dir")
            sets[set_name] = _image_set(set_name, src, src.entries, plan, plan.name, check)
    return Benchmark(name=plan.name, num_classes=k, class_counts=list(plan.class_counts), train=train, test=test,
                     ood_tests=sets, aux_ood=None, channels=plan.channels, image_size=plan.image_size,
                     augment=augment_for(plan.image_size, plan.channels, plan.in_memory),
                     class_names=list(plan.classes), description=description, missing=missing)


# ---------------------------------------------------------------- prepare: the one write

def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def check_target(folder: Path, name: str, sources: list[Path]) -> None:
    """DATA/NAME may be written when it is absent, holds this command's manifest (a re-prepare: only the
    manifest is replaced), or holds nothing but the sources being prepared (DATA/NAME/train/, ...)."""
    kind = path_kind(folder)
    if kind is None:
        return
    if kind != "a folder":
        raise ImoodError(f"{folder} is {kind}, not a folder imood made: choose another --name")
    manifest = folder / FILENAME
    if path_kind(manifest) is not None:
        if read_folder_manifest(folder.parent, name, quiet_foreign=True) is None:
            raise ImoodError(f"{folder} holds a {FILENAME} that `imood data prepare folder` did not write: it is not "
                             "replaced; choose another --name")
        return
    try:
        with os.scandir(folder) as it:
            entries = sorted(e.name for e in it)
    except OSError as exc:
        raise ImoodError(f"cannot read {folder}: {exc.strerror or exc}") from None
    for entry in entries:
        p = folder / entry
        if not any(_inside(s, p) or _inside(p, s) for s in sources):
            raise ImoodError(f"{folder} exists and was not made by `imood data prepare folder` ({p} is not one of the "
                             "images being prepared): choose another --name, or move it away")


def prepare_folder(root: Path, name: str, **options: Any) -> dict:
    """Check everything (`plan_folder`), then write DATA/NAME/manifest.json atomically; returns the manifest.

    On any failure (or Ctrl-C) nothing is left behind: the manifest is the only write, atomic, and a DATA/NAME
    folder this call created is removed again.
    """
    root = Path(root)
    folder = root / check_name(name)
    plan = plan_folder(name, **options)
    sources = [s.path for s in (plan.train, plan.test, *plan.ood.values()) if s.path is not None]
    check_target(folder, name, sources)
    bench = build_benchmark(plan, check=False, for_manifest=True)
    created = [p for p in (folder, *folder.parents) if path_kind(p) is None]
    try:
        return write_manifest(folder, bench, source=SOURCE, options=_options(plan), where=_where(plan),
                              extra={"class_names": plan.classes, "folder": _record(plan)})
    except BaseException:
        for p in created:  # innermost first; only folders this call made, and only if still empty
            try:
                p.rmdir()
            except OSError:
                break
        raise


def _options(plan: Plan) -> dict:
    return {"imbalance_ratio": plan.given.get("imbalance_ratio"), "image_size": plan.image_size,
            "channels": plan.channels, "in_memory": plan.in_memory, "verified": True,
            "class_counts_from": "--class-counts" if plan.counts_only else "the training images"}


def _where(plan: Plan) -> dict:
    out = {"train": str(plan.train.path) if plan.train.path else "--class-counts", "test": str(plan.test.path)}
    out.update({n: str(s.path) for n, s in plan.ood.items()})
    return out


def _record(plan: Plan) -> dict:
    train = ({"kind": "counts", "path": None, "files": []} if plan.counts_only else plan.train.record())
    return {"format": FORMAT, "given": plan.given, "image_size": plan.image_size, "channels": plan.channels,
            "source_class_counts": plan.source_counts, "class_counts": plan.class_counts, "train": train,
            "test": plan.test.record(), "ood": {n: s.record() for n, s in plan.ood.items()}}


# ---------------------------------------------------------------- reading a manifest back

def manifest_path(root: Path, name: str) -> Path:
    return Path(root) / name / FILENAME


def read_folder_manifest(root: Path, name: str, quiet_foreign: bool = False) -> dict | None:
    """DATA/NAME/manifest.json when it is a folder benchmark's; None when there is none or it is another
    benchmark's. A manifest that cannot be read or parsed is an error naming it (quiet_foreign: None, for
    callers that only ask whether it is one of ours)."""
    path = manifest_path(root, name)
    if path_kind(path) is None:
        return None
    try:
        raw = read_capped(path, "manifest", MANIFEST_CAP)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ImoodError(f"{path} is not valid JSON ({str(exc)[:100]}); delete it and run `imood data prepare` "
                             "again") from None
    except ImoodError:
        if quiet_foreign:
            return None
        raise
    if not isinstance(data, dict) or data.get("source") != SOURCE:
        return None
    return data


def prepared_names(root: Path) -> list[str]:
    """Names of the folder benchmarks under DATA (sorted), for `imood data list` and name suggestions.
    Unreadable manifests are passed over: the benchmark's own load names what is wrong."""
    try:
        with os.scandir(root) as it:
            names = sorted(e.name for e in it if NAME_PATTERN.fullmatch(e.name))
    except OSError:
        return []
    out = []
    for n in names:
        try:
            if read_folder_manifest(root, n, quiet_foreign=True) is not None:
                out.append(n)
        except ImoodError:
            continue
    return out


class _Check:
    """Validation of a manifest read back: every error names the file and says to prepare again."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name

    def fail(self, what: str) -> ImoodError:
        return ImoodError(f"{self.path}: {what}; the manifest is damaged: delete it and run `imood data prepare "
                          f"folder --name {self.name} ...` again")

    def get(self, d: Any, key: str, kinds: type | tuple[type, ...], where: str) -> Any:
        if not isinstance(d, dict) or key not in d:
            raise self.fail(f"{where} has no {key!r}")
        v = d[key]
        if isinstance(v, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            raise self.fail(f"{where}.{key} has the wrong type")
        if not isinstance(v, kinds):
            raise self.fail(f"{where}.{key} has the wrong type")
        return v

    def whole(self, d: Any, key: str, where: str, low: int = 0) -> int:
        v = self.get(d, key, int, where)
        if v < low:
            raise self.fail(f"{where}.{key} must be >= {low}")
        return v

    def counts(self, v: Any, k: int, where: str) -> list[int]:
        if (not isinstance(v, list) or len(v) != k
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in v)):
            raise self.fail(f"{where} must list {k} whole numbers >= 1")
        return v

    def source(self, d: Any, where: str, kinds: tuple[str, ...], k: int) -> Source:
        kind = self.get(d, "kind", str, where)
        if kind not in kinds:
            raise self.fail(f"{where}.kind must be one of {', '.join(kinds)}")
        if kind == "counts":
            return Source("counts", None)
        path = Path(self.get(d, "path", str, where))
        if not path.is_absolute() or "\x00" in str(path):
            raise self.fail(f"{where}.path must be an absolute path")
        list_sha = self.get(d, "list_sha256", str, where) if kind == "list" else None
        files = self.get(d, "files", list, where)
        entries, low = [], -1 if kind == "ood" else 0
        for i, f in enumerate(files):
            at = f"{where}.files[{i}]"
            rel = self.get(f, "path", str, at)
            try:
                check_list_path(rel, self.path, i + 1, path)
            except ImoodError as exc:
                raise self.fail(f"{at}: {exc}") from None
            label = self.get(f, "label", int, at)
            if not low <= label < (0 if kind == "ood" else k):
                raise self.fail(f"{at}.label {label} is outside the classes 0..{k - 1}")
            sha = self.get(f, "sha256", str, at)
            if not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise self.fail(f"{at}.sha256 is not a sha256")
            entries.append(Entry(rel, label, str(path / rel), sha, self.whole(f, "bytes", at),
                                 self.get(f, "mtime_ns", int, at)))
        if not entries:
            raise self.fail(f"{where} lists no file")
        return Source(kind, path, entries, list_sha)


def plan_from_manifest(root: Path, name: str, manifest: dict) -> Plan:
    """The Plan a manifest records, every field checked (a damaged manifest is one error naming it)."""
    c = _Check(manifest_path(root, name), name)
    if manifest.get("dataset") != name:
        raise c.fail(f"it names the benchmark {manifest.get('dataset')!r}, not {name!r}")
    rec = c.get(manifest, "folder", dict, "the manifest")
    if rec.get("format") != FORMAT:
        raise c.fail(f"folder.format is {rec.get('format')!r}; this imood reads format {FORMAT}")
    classes = c.get(manifest, "class_names", list, "the manifest")
    if not classes or not all(isinstance(x, str) for x in classes) or len(set(classes)) != len(classes):
        raise c.fail("class_names must be distinct names")
    k = len(classes)
    size = c.whole(rec, "image_size", "folder", MIN_SIZE)
    if size > MAX_SIZE:
        raise c.fail(f"folder.image_size must be at most {MAX_SIZE}")
    channels = c.get(rec, "channels", int, "folder")
    if channels not in (1, 3):
        raise c.fail("folder.channels must be 1 or 3")
    given = c.get(rec, "given", dict, "folder")
    source_counts = c.counts(rec.get("source_class_counts"), k, "folder.source_class_counts")
    prior = c.counts(rec.get("class_counts"), k, "folder.class_counts")
    train = c.source(rec.get("train"), "folder.train", ("folder", "list", "counts"), k)
    test = c.source(rec.get("test"), "folder.test", ("folder", "list"), k)
    ood_rec = c.get(rec, "ood", dict, "folder")
    ood = {n: c.source(s, f"folder.ood.{n}", ("ood",), k) for n, s in ood_rec.items()}
    if train.kind != "counts":
        if _bincount(train.entries, k) != source_counts:
            raise c.fail("folder.source_class_counts do not match the training files")
    if any(p > s for p, s in zip(prior, source_counts)):
        raise c.fail("folder.class_counts exceed the training images of a class")
    if manifest.get("class_counts") != prior:
        raise c.fail("class_counts differ from folder.class_counts")
    return Plan(name, classes, train, test, ood, source_counts, prior, size, channels, given)


def _given_options(given: dict, c: _Check) -> dict[str, Any]:
    """The options `prepare` was given, as recorded, type-checked (they are passed to `prepare_folder`,
    which checks their values)."""
    opts: dict[str, Any] = {}
    for key in ("train", "test", "train_list", "test_list"):
        v = given.get(key)
        if v is not None and not isinstance(v, str):
            raise c.fail(f"folder.given.{key} must be a path")
        opts[key] = Path(v) if v is not None else None
    dirs = given.get("ood_dirs") or []
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        raise c.fail("folder.given.ood_dirs must list paths")
    opts["ood_dirs"] = [Path(d) for d in dirs]
    counts = given.get("class_counts")
    if counts is not None and (not isinstance(counts, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in counts)):
        raise c.fail("folder.given.class_counts must list whole numbers")
    opts["class_counts"] = counts
    for key, kinds in (("imbalance_ratio", (int, float)), ("image_size", int), ("channels", int)):
        v = given.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, kinds)):
            raise c.fail(f"folder.given.{key} has the wrong type")
        opts[key] = v
    return opts


def _described(manifest: dict) -> str:
    rec = manifest.get("folder") if isinstance(manifest.get("folder"), dict) else {}
    names = manifest.get("class_names") if isinstance(manifest.get("class_names"), list) else []
    size, ch = rec.get("image_size"), rec.get("channels")
    shape = f"{size}×{size} {'RGB' if ch == 3 else 'grayscale'}" if size and ch else "images"
    train = rec.get("train") if isinstance(rec.get("train"), dict) else {}
    origin = "class counts given, no training images" if train.get("kind") == "counts" else (
        f"prior from {sum(x for x in manifest.get('class_counts') or [] if isinstance(x, int)):,} training images")
    return (f"folder benchmark (imood data prepare folder): {len(names)} classes "
            f"({_show_names([str(n) for n in names], 5)}), {shape}; {origin}")


class FolderBenchmark:
    """A prepared folder benchmark, looked up by name under DATA (not through the registry: the engine's
    `benchmark.dataset` falls back to it for a name that no built-in or plugin has)."""

    description = "your own images, prepared by `imood data prepare folder`"
    default_imbalance_ratio = None

    def __init__(self, name: str) -> None:
        self.name = check_name(name)

    def manifest(self, root: Path) -> dict:
        m = read_folder_manifest(root, self.name)
        if m is None:
            raise ImoodError(f"no folder benchmark {self.name!r} under {root}: prepare it with `imood data prepare "
                             f"folder --name {self.name} --train DIR --test DIR` (see imood data prepare --help)")
        return m

    def status(self, root: Path) -> list[FileStatus]:
        """The sources recorded in the manifest and whether they are there (no file is read)."""
        root, path = Path(root), manifest_path(root, self.name)
        how = f"the source given to `imood data prepare folder`; if it moved, prepare {self.name} again from there"
        try:
            m = self.manifest(root)
            plan = plan_from_manifest(root, self.name, m)
        except ImoodError as exc:
            return [FileStatus("manifest", path, False, "run `imood data prepare folder` again", str(exc))]
        self.description = _described(m)
        out = [FileStatus("manifest", path, True)]
        k = len(plan.classes)
        if plan.counts_only:
            out.append(FileStatus("ID train: class counts only (no images)", Path("(--class-counts)"), True,
                                  detail=f"class counts {plan.class_counts}"))
        else:
            out.append(FileStatus(f"ID train: {'class folders' if plan.train.kind == 'folder' else 'list file'}",
                                  plan.train.path, path_kind(plan.train.path) is not None, how,
                                  f"{len(plan.train.entries):,} images in {k} classes; prior {plan.class_counts}"))
        out.append(FileStatus(f"ID test: {'class folders' if plan.test.kind == 'folder' else 'list file'}",
                              plan.test.path, path_kind(plan.test.path) is not None, how,
                              f"{len(plan.test.entries):,} images"))
        for n, s in plan.ood.items():
            out.append(FileStatus(f"OOD test: {n}", s.path, path_kind(s.path) == "a folder", how,
                                  f"{len(s.entries):,} images", required=False))
        return out

    def prepare(self, root: Path, imbalance_ratio: float | None = None, **_) -> dict:
        """`imood data prepare NAME`: prepare again from the sources and options the manifest recorded (a new
        --imbalance-ratio replaces the recorded one)."""
        root = Path(root)
        plan = plan_from_manifest(root, self.name, self.manifest(root))
        opts = _given_options(plan.given, _Check(manifest_path(root, self.name), self.name))
        if imbalance_ratio is not None:
            opts["imbalance_ratio"] = imbalance_ratio
        return prepare_folder(root, self.name, **opts)

    def load(self, root: Path, ood_tests: bool = True, **_) -> Benchmark:
        """The benchmark as prepared, every file checked against the manifest. --imbalance_ratio of train and
        score does not apply (the split is the one `prepare` made); there is no auxiliary OOD set of its own
        (`imood train --aux-ood-dir DIR`).

        ood_tests=False is how training asks for its data (`engine.train.load_training_data`): a benchmark
        without training images says so then, before any other complaint (such as a missing auxiliary set).
        """
        root = Path(root)
        m = self.manifest(root)
        plan = plan_from_manifest(root, self.name, m)
        if plan.counts_only and not ood_tests:
            raise no_training_images(self.name)
        if not plan.counts_only:
            check_listing(plan.train, self.name, "--train" if plan.train.kind == "folder" else "--train-list")
        check_listing(plan.test, self.name, "--test" if plan.test.kind == "folder" else "--test-list")
        return build_benchmark(plan, check=True, ood_tests=ood_tests, description=_described(m))
