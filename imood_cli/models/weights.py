"""Reading weights files: safetensors, or a PyTorch pickle through `torch.load(weights_only=True)` only.

The bytes are read once, as a regular file within the machine's memory (never a FIFO or a device), and
parsed from memory, so nothing but that one read touches the path. A pickle that names any callable other
than torch's tensor rebuilders is refused by `weights_only=True` before anything in it runs; TorchScript
archives (compiled code) are refused before torch sees them.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from imood_cli.errors import ImoodError
from imood_cli.fs.safe import read_capped, weights_cap

# Where a checkpoint dict may keep its state dict (the reference code, timm's and common trainers).
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net", "network")


def looks_like_safetensors(data: bytes) -> bool:
    head = data[:9]
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def is_torchscript(data: bytes) -> bool:
    """A zip written by torch.jit.save: its archive holds compiled code (`code/`, `constants.pkl`)."""
    if not data.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return False
    return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in names)


def read_bytes(path: Path, what: str = "weights file") -> bytes:
    return read_capped(Path(path), what, weights_cap())


def load_safetensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # a header that lies about offsets, a truncated body: one line either way
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise ImoodError(f"{path} is corrupt or truncated: not a readable safetensors file ({detail})") from None


def load_pickle(data: bytes, path: Path) -> Any:
    """`torch.load(weights_only=True)` of bytes already read, every failure one clear ImoodError."""
    if is_torchscript(data):
        raise ImoodError(f"{path} is a TorchScript archive (torch.jit.save), not a state dict; imood imports weights "
                         "only: in the code that made it, torch.save(model.state_dict(), path)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says what matters
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"it asks to run or build {found.group(1)}" if found else "it is not a pickle of plain tensors"
        raise ImoodError(
            f"refused {path}: not a plain weights file ({what}); imood loads .pth files with weights_only=True "
            "and never unpickles arbitrary objects. If you trust the file, re-save its state dict with "
            "torch.save(model.state_dict(), path)"
        ) from None
    except Exception as exc:  # truncated zip, EOF, struct errors: all mean a damaged file
        detail = " ".join(str(exc).split(". ")[0].split())[:120] or type(exc).__name__
        raise ImoodError(f"{path} is corrupt or truncated: not a readable PyTorch checkpoint ({detail})") from None


def read_weights(path: Path, what: str = "weights file") -> Any:
    """What a .safetensors or .pth/.pt/.bin file holds (told apart by their bytes, not their names)."""
    path = Path(path)
    data = read_bytes(path, what)
    if looks_like_safetensors(data):
        return load_safetensors(data, path)
    return load_pickle(data, path)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and any(
        isinstance(v, torch.Tensor) for v in obj.values())


def find_state_dict(obj: Any, path: Path) -> tuple[dict[str, Any], str, int | None]:
    """The state dict in a loaded file: the file itself, or under 'state_dict' / 'model' / ...

    Returns (state dict, the key it sat under or "", the epoch the file names, if any).
    """
    if not isinstance(obj, dict):
        raise ImoodError(f"{path} holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    epoch = obj.get("epoch") if isinstance(obj.get("epoch"), int) and not isinstance(obj.get("epoch"), bool) else None
    for key in CONTAINER_KEYS:
        if _is_state_dict(obj.get(key)):
            return obj[key], key, epoch
    if _is_state_dict(obj):
        return obj, "", None
    keys = ", ".join(repr(k) for k in list(obj)[:6])
    odd = next((k for k in obj if not isinstance(k, str)), None)
    if odd is not None and any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ImoodError(f"{path} maps {type(odd).__name__} keys such as {odd!r} to tensors: a state dict maps "
                         "parameter names (text) to tensors")
    raise ImoodError(f"{path} holds no state dict (top-level keys: {keys}; looked for the tensors themselves or "
                     f"under {', '.join(CONTAINER_KEYS)})")


def strip_prefixes(sd: dict[str, Any], prefixes: tuple[str, ...],
                   keep: frozenset[str] = frozenset()) -> tuple[dict[str, Any], str]:
    """Drop wrapper prefixes (DDP's `module.`, torch.compile's `_orig_mod.`, ...) that every key carries,
    except those the model's own names start with (`keep`)."""
    stripped = ""
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if sd and p not in keep and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                stripped += p
                changed = True
    return sd, stripped


def examples(keys: list[str], n: int = 3) -> str:
    """'a, b, c and 4 more'."""
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
