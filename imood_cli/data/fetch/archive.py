"""Files fetched from the net: download, MD5 checksums, and archive extraction that cannot escape.

`safe_extract` reads every member header of a tar or zip archive before writing anything, and
refuses the whole archive for one bad member: an absolute path, a `..` component, a link (symbolic
or hard), a device or FIFO, a member outside the one top folder the caller expects
(`allowed_top`), more members or more bytes than the caller allows. Members are written by this
code, not by `tarfile.extractall`, and keep no permissions or owners from the archive.

Existing files are never overwritten: a file already present with the same bytes as the member is
left alone (so a half-present folder can be completed), one with other bytes stops the extraction
with an error naming it. The byte cap is counted on the bytes actually read while copying, so a
small archive that inflates without end is stopped at the cap, not when the disk is full. Any
failure, refusal or Ctrl-C removes what this extraction created (files by their inode, folders only
when empty) and nothing else.

A folder the user linked elsewhere is followed (`DATA/cifar-10-batches-py -> /big/disk/cifar` as
the `allowed_top`): links the user made are the user's layout. New files may not be created through
a link that leads out of that folder.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from imood_cli.errors import ImoodError
from imood_cli.fs.atomic import temp_name
from imood_cli.fs.safe import open_regular, path_kind

CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 2 << 30  # a few times the largest archive imood extracts (CIFAR, 178 MB unpacked)
DEFAULT_MAX_MEMBERS = 100_000
DAMAGED = "damaged or not an archive? delete it and try again"


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open_regular(path) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_md5(path: Path, expected: str, what: str | None = None) -> None:
    got = md5_file(path)
    if got != expected:
        raise ImoodError(f"{what or path.name}: MD5 {got} does not match the published {expected} ({path}); "
                         "the file is damaged or another version: delete it and prepare again, or pass --no-verify")


# ---------------------------------------------------------------- what may be written

def member_parts(name: str, archive: Path, allowed_top: str | None) -> tuple[str, ...]:
    """The member's path components below the extraction folder, or an ImoodError if the name could leave it."""
    bad = f"{archive}: refusing member {name!r}"
    if not name or "\x00" in name:
        raise ImoodError(f"{bad}: empty or NUL in the name")
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ImoodError(f"{bad}: absolute path")
    if ".." in posix.parts:
        raise ImoodError(f"{bad}: '..' in the path would escape the folder it is extracted into")
    parts = tuple(p for p in posix.parts if p not in ("", "."))
    if allowed_top is not None and parts and parts[0] != allowed_top:
        raise ImoodError(f"{bad}: this archive should hold only {allowed_top}/ (is it the right file?)")
    return parts


class _Budget:
    """Counts the bytes read from members; stops the extraction past `limit`."""

    def __init__(self, archive: Path, limit: int | None) -> None:
        self.archive, self.limit, self.used = archive, limit, 0

    def take(self, n: int) -> None:
        self.used += n
        if self.limit is not None and self.used > self.limit:
            raise ImoodError(f"{self.archive}: refusing to extract more than {self.limit:,} bytes (the cap for this "
                             "archive): it is not the expected file, or it inflates without end; delete it")


class _Created:
    """What one extraction made, to be removed again if it does not finish."""

    def __init__(self) -> None:
        self.files: dict[Path, tuple[int, int]] = {}  # path -> (st_dev, st_ino) of the file written
        self.dirs: list[Path] = []
        self.written: list[Path] = []

    def mkdirs(self, folder: Path) -> None:
        missing = []
        while not os.path.lexists(folder):
            missing.append(folder)
            folder = folder.parent
        for d in reversed(missing):
            self.dirs.append(d)  # before mkdir: Ctrl-C right after it must still find the folder
            try:
                d.mkdir()
            except FileExistsError:
                self.dirs.pop()
                if not d.is_dir():
                    raise

    def undo(self) -> None:
        for path, ident in reversed(list(self.files.items())):
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == ident:
                    path.unlink()
            except OSError:
                pass
        for d in reversed(self.dirs):
            try:
                d.rmdir()  # only when empty: anything else there is not ours
            except OSError:
                pass


def _contained(target: Path, root: Path) -> bool:
    resolved = target.resolve()
    return resolved == root or root in resolved.parents


def _same_bytes(src, existing: Path, budget: _Budget) -> bool:
    with open_regular(existing) as f:
        while True:
            a = src.read(CHUNK)
            budget.take(len(a))
            if a != f.read(len(a) if a else 1):
                return False
            if not a:
                return True


def _write_new(src, target: Path, budget: _Budget, created: _Created) -> None:
    """Copy `src` into a new file `target` through a temporary file; never replaces an existing file."""
    tmp = temp_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        st = os.fstat(fd)
        created.files[tmp] = (st.st_dev, st.st_ino)
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK):
                budget.take(len(chunk))
                out.write(chunk)
        created.files[target] = (st.st_dev, st.st_ino)  # before the link: an interrupt right after it is undone
        try:
            os.link(tmp, target)  # fails if target exists: never replaces a file
        except FileExistsError:
            raise ImoodError(f"{target} appeared while extracting; imood does not overwrite it") from None
        except OSError:  # a file system without hard links
            if os.path.lexists(target):
                raise ImoodError(f"{target} appeared while extracting; imood does not overwrite it") from None
            os.replace(tmp, target)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _place(src, target: Path, rel: str, budget: _Budget, created: _Created, archive: Path) -> bool:
    """Write one member's bytes at `target`; False when an identical file was already there."""
    kind = path_kind(target)
    if kind is None:
        created.mkdirs(target.parent)
        _write_new(src, target, budget, created)
        return True
    if kind != "a regular file":
        raise ImoodError(f"cannot extract {rel} from {archive}: {target} is {kind}; move it away and prepare again")
    if target in created.files:
        raise ImoodError(f"{archive}: member {rel!r} appears twice (not the expected archive?)")
    if not _same_bytes(src, target, budget):
        raise ImoodError(f"cannot extract {archive}: {target} exists with other content and imood does not "
                         "overwrite files; move it away (or delete it) and prepare again")
    return False


# ---------------------------------------------------------------- the two archive formats

def _tar_plan(tf: tarfile.TarFile, archive: Path, allowed_top: str | None, max_bytes: int | None,
              max_members: int) -> list[tuple[tarfile.TarInfo, tuple[str, ...]]]:
    plan, declared = [], 0
    while (m := tf.next()) is not None:  # member by member: a lying archive stops at its first bad header
        if m.issym() or m.islnk():
            raise ImoodError(f"{archive}: refusing member {m.name!r}: links are not extracted")
        if not (m.isfile() or m.isdir()):
            raise ImoodError(f"{archive}: refusing member {m.name!r}: not a regular file or folder")
        plan.append((m, member_parts(m.name, archive, allowed_top)))
        declared += m.size if m.isfile() else 0
        _check_caps(archive, len(plan), declared, max_bytes, max_members)
    return plan


def _zip_plan(zf: zipfile.ZipFile, archive: Path, allowed_top: str | None, max_bytes: int | None,
              max_members: int) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    plan, declared = [], 0
    for m in zf.infolist():
        mode = m.external_attr >> 16  # the Unix mode when made on Unix; its type bits may be 0
        if stat.S_ISLNK(mode):
            raise ImoodError(f"{archive}: refusing member {m.filename!r}: links are not extracted")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ImoodError(f"{archive}: refusing member {m.filename!r}: not a regular file or folder")
        plan.append((m, member_parts(m.filename, archive, allowed_top)))
        declared += 0 if m.is_dir() else m.file_size
        _check_caps(archive, len(plan), declared, max_bytes, max_members)
    return plan


def _check_caps(archive: Path, members: int, declared: int, max_bytes: int | None, max_members: int) -> None:
    if members > max_members:
        raise ImoodError(f"{archive}: refusing an archive of more than {max_members:,} members (not the expected file)")
    if max_bytes is not None and declared > max_bytes:
        raise ImoodError(f"{archive}: its members add up to more than {max_bytes:,} bytes, the cap for this archive "
                         "(not the expected file, or a decompression bomb); delete it")


def safe_extract(archive: Path, dest: Path, allowed_top: str | None = None, max_bytes: int | None = DEFAULT_MAX_BYTES,
                 max_members: int = DEFAULT_MAX_MEMBERS) -> list[Path]:
    """Extract a .tar, .tar.gz/.tgz/.tar.bz2/.tar.xz or .zip into `dest`; returns the files written.

    allowed_top: the one top-level folder the archive may hold (e.g. "cifar-10-batches-py"); any
    other member refuses the archive. max_bytes: the most member bytes read (None: no cap);
    max_members: the most members. Files already present with identical bytes are skipped (not
    returned); every header is checked before the first byte is written.
    """
    archive, dest = Path(archive), Path(dest)
    created = _Created()
    budget = _Budget(archive, max_bytes)
    try:
        with open_regular(archive, "archive") as f:
            created.mkdirs(dest)
            base = dest / allowed_top if allowed_top else dest
            # The top folder may be the user's link to another disk: it is followed, and is then the limit.
            root = base.resolve() if base.is_dir() else dest.resolve() / (allowed_top or "")
            if zipfile.is_zipfile(f):
                f.seek(0)
                with zipfile.ZipFile(f) as zf:
                    plan = _zip_plan(zf, archive, allowed_top, max_bytes, max_members)
                    _check_targets(plan, dest, root, archive)
                    for m, parts in plan:
                        if m.is_dir():
                            created.mkdirs(dest.joinpath(*parts))
                        elif parts:
                            with zf.open(m) as src:
                                if _place(src, dest.joinpath(*parts), m.filename, budget, created, archive):
                                    created.written.append(dest.joinpath(*parts))
            else:
                f.seek(0)
                with tarfile.open(fileobj=f, mode="r:*") as tf:
                    plan = _tar_plan(tf, archive, allowed_top, max_bytes, max_members)
                    _check_targets(plan, dest, root, archive)
                    for m, parts in plan:
                        if m.isdir():
                            created.mkdirs(dest.joinpath(*parts))
                        elif parts:
                            with tf.extractfile(m) as src:
                                if _place(src, dest.joinpath(*parts), m.name, budget, created, archive):
                                    created.written.append(dest.joinpath(*parts))
    except BaseException as exc:
        created.undo()
        if isinstance(exc, ImoodError) or not isinstance(exc, Exception):
            raise
        if isinstance(exc, OSError) and exc.filename is not None:
            raise ImoodError(f"cannot extract {archive}: {exc.strerror or exc} ({exc.filename})") from None
        if isinstance(exc, (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)):
            raise ImoodError(f"cannot extract {archive}: {exc} ({DAMAGED})") from None
        raise ImoodError(f"cannot extract {archive}: {type(exc).__name__}: {exc} ({DAMAGED})") from None
    return created.written


def _check_targets(plan, dest: Path, root: Path, archive: Path) -> None:
    """Every member that would create a file must land inside `root`, links on the way included."""
    for m, parts in plan:
        target = dest.joinpath(*parts)
        if parts and path_kind(target) is None and not _contained(target, root):
            name = m.name if isinstance(m, tarfile.TarInfo) else m.filename
            raise ImoodError(f"{archive}: refusing member {name!r}: it resolves outside {root}")


# ---------------------------------------------------------------- downloads

def download(url: str, dest: Path, md5: str | None = None, timeout: float = 60.0,
             max_bytes: int | None = None) -> Path:
    """Fetch `url` to the new file `dest` (through a temporary file), checking the MD5 when one is published.

    Never replaces an existing `dest`; a failure, a wrong checksum, more than `max_bytes` or Ctrl-C
    leave nothing behind.
    """
    import urllib.error
    import urllib.request

    dest = Path(dest)
    if os.path.lexists(dest):
        raise ImoodError(f"{dest} already exists ({path_kind(dest)}); imood does not overwrite it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dest)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        got = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(CHUNK):
                got += len(chunk)
                if max_bytes is not None and got > max_bytes:
                    raise ImoodError(f"{url} sent more than {max_bytes:,} bytes, more than the file can be; "
                                     f"download it yourself and put it at {dest}")
                out.write(chunk)
        if md5 is not None:
            check_md5(tmp, md5, what=f"download of {url}")
        try:
            os.link(tmp, dest)
        except FileExistsError:
            raise ImoodError(f"{dest} appeared while downloading; imood does not overwrite it") from None
        except OSError:
            os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ImoodError(f"could not download {url} ({reason}); download it yourself and put it at {dest}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest

