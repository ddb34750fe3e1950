"""Files fetched from the net: download, MD5 checksums, and archive extraction that cannot escape.

`safe_extract` checks every member of a tar or zip archive before writing anything: an absolute
path, a `..` component, a link (symbolic or hard), a device or FIFO is refused, so a crafted
archive cannot write outside the target folder. Members are written by this code, not by
`tarfile.extractall`, and keep no permissions or owners from the archive.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from imood_cli.errors import ImoodError

CHUNK = 1 << 20


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_md5(path: Path, expected: str, what: str | None = None) -> None:
    got = md5_file(path)
    if got != expected:
        raise ImoodError(f"{what or path.name}: MD5 {got} does not match the published {expected} ({path}); "
                         "the file is damaged or another version: delete it and prepare again, or pass --no-verify")


def _member_target(dest: Path, name: str, archive: Path) -> Path:
    """Where a member goes, or an ImoodError if its name could leave `dest`."""
    bad = f"{archive}: refusing member {name!r}"
    if not name or "\x00" in name:
        raise ImoodError(f"{bad}: empty or NUL in the name")
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ImoodError(f"{bad}: absolute path")
    if any(part == ".." for part in posix.parts):
        raise ImoodError(f"{bad}: '..' in the path would escape {dest}")
    target = (dest / Path(*[p for p in posix.parts if p not in ("", ".")])) if posix.parts else dest
    root = dest.resolve()
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        raise ImoodError(f"{bad}: it resolves outside {dest}")
    return target


def _tar_members(tf: tarfile.TarFile, dest: Path, archive: Path) -> list[tuple[tarfile.TarInfo, Path]]:
    out = []
    for m in tf.getmembers():
        if m.issym() or m.islnk():
            raise ImoodError(f"{archive}: refusing member {m.name!r}: links are not extracted")
        if not (m.isfile() or m.isdir()):
            raise ImoodError(f"{archive}: refusing member {m.name!r}: not a regular file or folder")
        out.append((m, _member_target(dest, m.name, archive)))
    return out


def _zip_members(zf: zipfile.ZipFile, dest: Path, archive: Path) -> list[tuple[zipfile.ZipInfo, Path]]:
    out = []
    for m in zf.infolist():
        mode = m.external_attr >> 16  # the Unix mode when made on Unix; its type bits may be 0
        if stat.S_ISLNK(mode):
            raise ImoodError(f"{archive}: refusing member {m.filename!r}: links are not extracted")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ImoodError(f"{archive}: refusing member {m.filename!r}: not a regular file or folder")
        out.append((m, _member_target(dest, m.filename, archive)))
    return out


def _copy(src, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    with open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)
    os.replace(tmp, target)


def safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Extract a .tar, .tar.gz/.tgz/.tar.bz2/.tar.xz or .zip into `dest`; returns the files written.

    Every member is checked first; one bad member refuses the whole archive and writes nothing.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = _zip_members(zf, dest, archive)
                for m, target in members:
                    if m.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    with zf.open(m) as src:
                        _copy(src, target)
                    written.append(target)
            return written
        with tarfile.open(archive, "r:*") as tf:
            members = _tar_members(tf, dest, archive)
            for m, target in members:
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                src = tf.extractfile(m)
                with src:
                    _copy(src, target)
                written.append(target)
    except OSError as exc:
        if exc.filename is not None:
            raise ImoodError(f"cannot extract {archive}: {exc.strerror or exc} ({exc.filename})") from None
        raise ImoodError(f"cannot extract {archive}: {exc} (damaged or not an archive? delete it and try again)") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise ImoodError(f"cannot extract {archive}: {exc} (damaged or not an archive? delete it and try again)") from None
    return written


def download(url: str, dest: Path, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest` (through a .part file), checking the MD5 when one is published."""
    import urllib.error
    import urllib.request

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, CHUNK)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise ImoodError(f"could not download {url} ({reason}); download it yourself and put it at {dest}") from None
    if md5 is not None:
        try:
            check_md5(tmp, md5, what=f"download of {url}")
        except ImoodError:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, dest)
    return dest
