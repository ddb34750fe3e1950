"""Checksums of what imood writes: the sha256 of a file, and the digest of a set of tensors (torch-free)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from imood_cli.fs.safe import open_regular


def sha256_file(path: Path) -> str:
    """sha256 of a regular file (anything else, a FIFO say, is refused: reading it could block forever)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_digest(tensors: Iterable[tuple[str, str, tuple[int, ...], Any]]) -> str:
    """sha256 over every tensor's name, torch dtype name, shape and raw little-endian bytes, in name order
    (safetensors itself has no checksum). `tensors` gives (name, dtype name such as "torch.float32", shape,
    bytes or any buffer); the checkpoint writer hands torch tensors' bytes, the score-file reader the bytes
    as stored, so a file written by either verifies on the other."""
    h = hashlib.sha256()
    for name, dtype, shape, data in sorted(tensors, key=lambda t: t[0]):
        h.update(f"{name}|{dtype}|{tuple(shape)}|".encode())
        h.update(data)
    return h.hexdigest()
