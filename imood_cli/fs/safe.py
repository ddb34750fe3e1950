"""Opening the files users name: regular files only, and list paths that stay inside their folder.

Opening a FIFO for reading blocks until a writer appears, inside the open() system call, where
Ctrl-C cannot reach it; a character device such as /dev/zero never ends. So every reader here stats
a path before opening it and refuses anything that is not a regular file. The open itself uses
O_NONBLOCK and checks fstat once more, so a file swapped for a FIFO between the two calls is still
refused without blocking.

Symbolic links are followed: a link the user made (`DATA/cifar-10-batches-py -> /big/disk/cifar`,
a class folder on another disk) is part of the user's layout and is trusted. What users do not
control is what a list file or an archive says, so paths named by list files must be relative and
free of `..` (checked on the text, before any file is touched), and archives never create links
(`data.archive`).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import tomllib

from imood_cli.errors import ImoodError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotRegularFile(ImoodError):
    """A path that exists but is not a regular file (or is a broken link); `kind` says what it is."""

    def __init__(self, path: Path | str, kind: str, what: str | None = None) -> None:
        self.path, self.kind = Path(path), kind
        prefix = f"{what}: " if what else ""
        super().__init__(f"{prefix}{path} is {kind}, not a regular file: imood does not read it (replace it with "
                         "the file or remove it)")


def mode_kind(mode: int) -> str:
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def path_kind(path: Path | str) -> str | None:
    """What `path` is after following links ("a regular file", "a FIFO (named pipe)", ...), None if absent."""
    try:
        return mode_kind(os.stat(path).st_mode)
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else None
    except NotADirectoryError:
        return None
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"


def is_regular_file(path: Path | str) -> bool:
    """True for a regular file or a link to one; never blocks, never opens anything."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def absent_or_kind(path: Path | str) -> str:
    """'missing', or what sits at `path` instead of a regular file (for messages)."""
    kind = path_kind(path)
    return "missing" if kind is None else f"{kind}, not a regular file"


def open_regular(path: Path | str, what: str | None = None) -> BinaryIO:
    """`open(path, "rb")` for regular files only: anything else is a NotRegularFile (an ImoodError).

    A missing file raises FileNotFoundError as `open` does, so callers keep their own wording for it.
    """
    kind = path_kind(path)
    if kind is None:
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if kind != "a regular file":
        raise NotRegularFile(path, kind, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, mode_kind(mode), what)
        if flags & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path | str, what: str | None = None) -> bytes:
    with open_regular(path, what) as f:
        return f.read()


def read_lines(path: Path | str, what: str | None = None) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line of a UTF-8 list file, stripped.

    Lines end at \\n, \\r\\n or \\r, as with `open(path)`. A line that is not UTF-8 is an error naming it.
    """
    out = []
    for lineno, raw in enumerate(read_regular(path, what).splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ImoodError(f"{path}:{lineno}: not UTF-8 text (byte {exc.start + 1} of the line)") from None
        if line:
            out.append((lineno, line))
    return out


def check_list_path(rel: str, list_file: Path | str, lineno: int, base: Path | str) -> str:
    """`rel` if it names a path inside `base`: relative, without `..`; else an error naming the line.

    Checked on the text alone, so a list line can never make imood look outside `base`, whatever
    exists on disk. (Links inside `base` are the user's own and are followed.)
    """
    where = f"{list_file}:{lineno}"
    if not rel or "\x00" in rel:
        raise ImoodError(f"{where}: empty path or a NUL byte in {rel!r}")
    posix = PurePosixPath(rel.replace("\\", "/"))
    if posix.is_absolute() or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise ImoodError(f"{where}: {rel!r} is an absolute path; list paths must be relative to {base}")
    if ".." in posix.parts:
        raise ImoodError(f"{where}: {rel!r} goes up with '..'; list paths must stay inside {base}")
    return rel


# ---------------------------------------------------------------- reading within limits
#
# Every file imood reads goes through `read_capped` (or `open_regular` for streaming readers): a regular
# file after following links, no larger than what its kind of file can sensibly be, checked on the open
# descriptor before a byte is read. Structured text (JSON, TOML) is also checked for nesting before it is
# parsed, so neither a huge nor a deeply nested file reaches a parser.

MiB = 1 << 20
TEXT_CAP = 8 * MiB  # config, plan and index files, manifests, config.json, eval documents
MAX_NESTING = 64  # arrays and tables inside one another; imood's own files need fewer than 10


def machine_memory() -> int:
    """Physical memory in bytes (0 where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def weights_cap() -> int:
    """The largest weights or score file imood loads: it is read whole, so no more than the machine's memory."""
    return machine_memory() or 1 << 40


def human_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def read_capped(path: Path | str, what: str, cap: int = TEXT_CAP) -> bytes:
    """The bytes of a regular file no larger than `cap`; one ImoodError naming `what` and the path for a
    missing file, a folder, a FIFO or device, an unreadable or an oversized file."""
    try:
        f = open_regular(path, what)
    except FileNotFoundError:
        raise ImoodError(f"{what} not found: {path}") from None
    except NotRegularFile as exc:
        if exc.kind == "a folder":
            raise ImoodError(f"{what} {path} is a folder, not a file") from None
        raise
    except OSError as exc:
        raise ImoodError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size > cap:
            raise _too_big(path, what, size, cap)
        try:  # to the end, in blocks: read(n) would allocate n bytes at once, and the file may grow meanwhile
            chunks, total = [], 0
            while total <= cap:
                block = f.read(min(max(size - total, 0), cap + 1 - total) or (1 << 20))
                if not block:
                    break
                chunks.append(block)
                total += len(block)
            data = b"".join(chunks)
        except OSError as exc:
            raise ImoodError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > cap:  # grew while it was read
        raise _too_big(path, what, len(data), cap)
    return data


def _too_big(path: Path | str, what: str, size: int, cap: int) -> ImoodError:
    return ImoodError(f"{what} {path} is {human_size(size)}, more than the {human_size(cap)} imood reads for a {what}: "
                      "is it the right file?")


def read_text(path: Path | str, what: str, cap: int = TEXT_CAP) -> str:
    """A UTF-8 text file within `cap` (see `read_capped`)."""
    raw = read_capped(path, what, cap)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ImoodError(f"{what} {path} is not UTF-8 text") from None


def nesting_depth(text: str, toml: bool = False) -> int:
    """How deeply arrays and tables nest in JSON (or TOML) text, counted on brackets outside strings (and
    TOML comments). A cheap upper bound on what a parser would recurse into."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(depth - 1, 0)
        elif c == '"' or (toml and c == "'"):
            quote = c * 3 if toml and text.startswith(c * 3, i) else c
            i += len(quote)
            while i < n and not text.startswith(quote, i):
                i += 2 if c == '"' and text[i] == "\\" else 1
            i += len(quote) - 1
        elif toml and c == "#":
            while i < n and text[i] != "\n":
                i += 1
        i += 1
    return deepest


def check_nesting(text: str, where: str, toml: bool = False) -> None:
    depth = nesting_depth(text, toml)
    if depth > MAX_NESTING:
        raise ImoodError(f"{where} nests arrays or tables {depth} deep; imood reads at most {MAX_NESTING} levels")


def parse_json(text: str | bytes, where: str) -> Any:
    """JSON text checked for nesting first; one ImoodError naming `where` if it does not parse."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ImoodError(f"{where} is not UTF-8 text") from None
    check_nesting(text, where)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ImoodError(f"{where} is not valid JSON ({str(exc)[:120]})") from None


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """TOML text checked for nesting first; one ImoodError naming `where` if it does not parse."""
    check_nesting(text, where, toml=True)
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ImoodError(f"{where} does not parse as TOML: {str(exc)[:160]}") from None


def read_json(path: Path | str, what: str, cap: int = TEXT_CAP) -> Any:
    return parse_json(read_text(path, what, cap), f"{what} {path}")
