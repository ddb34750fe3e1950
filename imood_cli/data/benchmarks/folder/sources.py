"""Where a folder benchmark's images are: class folders (an ImageFolder layout), CSV lists (`path,label`),
folders of OOD images; each as a `Source` of entries (relative path, label), checked on the text before any
file is touched."""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from imood_cli.data.pipeline.images import (
    is_image_name,
    list_images,
)
from imood_cli.errors import ImoodError
from imood_cli.fs.safe import check_list_path, path_kind, read_capped, read_lines

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


RESERVED_NAMES = frozenset({"folder"})  # `imood data prepare folder` itself


HEADER = ("path", "label")


def check_name(name: Any) -> str:
    """A plain lower-case name (letters, digits, _ and -) usable as a folder and a `--ds` value."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ImoodError(f"--name {name!r}: a folder benchmark's name is 1-64 lower-case letters, digits, '_' or '-', "
                         "starting with a letter or digit")
    if name in RESERVED_NAMES:
        raise ImoodError(f"--name {name!r} is reserved for `imood data prepare folder`: choose another name")
    return name


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


MANIFEST_CAP = 1 << 30  # a manifest lists every file (~250 bytes each): 1 GiB is about four million images
