"""`imood report --figures DIR`: each figure of the report as an SVG and a PDF file, for a paper.

File names are stable (the same report gives the same names: `ranking`, `roc`, `pr`, `per-class`,
`scores-<run>-<detector>`) and safe everywhere, \\includegraphics included: letters, digits, `_` and `-`
only, at most 100 characters. imood replaces only files it wrote itself: every SVG and PDF it writes names
`imood report` as its creator (SVG: the Dublin Core creator in the first lines; PDF: the /Creator of the
document information dictionary the trailer points to), and any other file, a link or a folder of the same
name is refused before anything is written.
"""

from __future__ import annotations

import re
from pathlib import Path

from imood_cli.errors import ImoodError
from imood_cli.fs.atomic import atomic_write_bytes

FORMATS = ("svg", "pdf")
MAX_STEM = 100
MAX_READ = 64 << 20  # an existing figure larger than this is not one imood wrote
SVG_CREATOR = re.compile(rb"<dc:creator>\s*<cc:Agent>\s*<dc:title>imood report[ <]")
PDF_INFO = re.compile(rb"/Info\s+(\d+)\s+(\d+)\s+R")


def safe_stem(key: str) -> str:
    """A figure's key as a file name stem: runs of other characters become one '-', no leading or trailing
    '-', at most MAX_STEM characters; never empty."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", key).strip("-_")[:MAX_STEM].rstrip("-_")
    return stem or "figure"


def stems(keys: list[str]) -> list[str]:
    """Safe, distinct stems for the keys, in order; a stem taken by an earlier key gets -2, -3, ..."""
    out: list[str] = []
    taken: set[str] = set()
    for key in keys:
        stem = base = safe_stem(key)
        n = 1
        while stem.casefold() in taken:  # case-insensitive file systems (macOS, Windows) would clash
            n += 1
            stem = f"{base[: MAX_STEM - len(str(n)) - 1]}-{n}"
        taken.add(stem.casefold())
        out.append(stem)
    return out


def _svg_is_ours(head: bytes) -> bool:
    return bool(SVG_CREATOR.search(head))


def _pdf_is_ours(data: bytes) -> bool:
    """The document information dictionary named by the (last) trailer says imood report created the file."""
    if not data.startswith(b"%PDF-"):
        return False
    tail = data[-4096:]
    refs = PDF_INFO.findall(tail)
    if not refs:
        return False
    num, gen = refs[-1]
    start = data.rfind(b"\n" + num + b" " + gen + b" obj")
    if start < 0:
        return False
    end = data.find(b"endobj", start)
    return end > 0 and b"/Creator (imood report" in data[start:end]


def is_ours(path: Path) -> bool:
    """Whether `path` is a figure imood wrote (a regular file with imood's creator mark)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        if path.stat().st_size > MAX_READ:
            return False
        data = path.read_bytes()
    except OSError:
        return False
    return _svg_is_ours(data[:4096]) if path.suffix == ".svg" else _pdf_is_ours(data)


def check_folder(folder: Path) -> None:
    """--figures DIR must be a folder (or not exist yet); refused before any work."""
    if folder.exists() and not folder.is_dir():
        raise ImoodError(f"--figures {folder} is not a folder: give the folder to write the figures into")


def check_targets(paths: list[Path]) -> None:
    """Refuse, naming the first, any target that exists and is not a figure imood wrote."""
    for p in paths:
        if p.is_symlink():
            raise ImoodError(f"{p} is a symbolic link; imood does not write through it: choose another --figures "
                             "folder or move it")
        if p.exists() and not is_ours(p):
            raise ImoodError(f"{p} exists and is not a figure imood wrote; choose another --figures folder or "
                             "move it")


def plan(folder: Path, keys: list[str]) -> list[Path]:
    """The files of the figures with these keys, <stem>.svg and <stem>.pdf each, in order; refused (before
    anything is drawn into them) when one exists and is not a figure imood wrote."""
    check_folder(folder)
    targets = [folder / f"{stem}.{fmt}" for stem in stems(keys) for fmt in FORMATS]
    check_targets(targets)
    return targets


def write(folder: Path, figures: list[tuple[str, object]], encode) -> list[Path]:
    """Write each (key, figure) as <stem>.svg and <stem>.pdf into `folder`, encoded by encode(figure, fmt);
    every target is checked before the first is written. Returns the paths written."""
    targets = plan(folder, [key for key, _ in figures])
    written = []
    for path, (_, fig) in zip(targets, [f for f in figures for _ in FORMATS]):
        try:
            atomic_write_bytes(path, encode(fig, path.suffix[1:]))
        except OSError as exc:
            raise ImoodError(f"cannot write {path}: {exc.strerror or exc}") from None
        written.append(path)
    return written
