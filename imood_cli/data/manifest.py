"""manifest.json: what `imood data prepare` found and built, with checksums of the sets.

Besides the sets, a manifest records which pieces were on disk (`pieces`: name -> present) and
where to get the missing ones (`missing`), and whether the files were checked against their
published checksums (`options.verified`). `load(..., verify=None)` follows that record, so data
prepared with `--no-verify` stays usable by `train` and `score` without re-checking.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from imood_cli import __version__
from imood_cli.core.lazy import torch
from imood_cli.data.base import Benchmark, ImageSet
from imood_cli.errors import ImoodError
from imood_cli.fs.atomic import atomic_write_text
from imood_cli.fs.safe import read_capped, read_regular

if TYPE_CHECKING:
    import numpy as np

FILENAME = "manifest.json"


def set_checksum(s: ImageSet) -> str:
    """sha256 over the labels and, for in-memory sets, the pixels."""
    h = hashlib.sha256(s.labels.numpy().tobytes())
    if s.images is not None:
        h.update(s.images.contiguous().numpy().tobytes())
    return h.hexdigest()


def describe_set(s: ImageSet, where: str | None = None) -> dict:
    out = {"name": s.name, "size": len(s), "sha256": set_checksum(s)}
    moved = int((s.labels >= 0).sum()) if s.labels.numel() else 0
    if where:
        out["where"] = where
    if s.name and moved and (s.labels < 0).any():
        out["id_images"] = moved  # SCOOD-style sets: images of ID classes scored with the ID set
    return out


def write_manifest(folder: Path, bench: Benchmark, source: str, options: dict, where: dict | None = None,
                   missing: dict[str, str] | None = None, pieces: dict[str, bool] | None = None,
                   extra: dict | None = None) -> dict:
    """Write DATA/<name>/manifest.json atomically; returns it with its `path`.

    missing: piece -> where to get it (defaults to `bench.missing`); pieces: piece -> present;
    extra: more top-level keys a benchmark records (e.g. the stored arrays of `digits`).
    """
    where = where or {}
    missing = dict(bench.missing if missing is None else missing)
    test_labels = bench.test.labels
    manifest = {
        "dataset": bench.name,
        "imood_version": __version__,
        "source": source,
        "options": options,
        "num_classes": bench.num_classes,
        "class_counts": bench.class_counts,
        "train_size": len(bench.train),
        "image_size": bench.image_size,
        "channels": bench.channels,
        "train": describe_set(bench.train, where.get("train")),
        "test": describe_set(bench.test, where.get("test")),
        "test_class_counts": torch.bincount(test_labels[test_labels >= 0], minlength=bench.num_classes).tolist(),
        "aux_ood": describe_set(bench.aux_ood, where.get("aux_ood")) if bench.aux_ood is not None else None,
        "ood_tests": {k: describe_set(v, where.get(k)) for k, v in bench.ood_tests.items()},
        "pieces": dict(pieces) if pieces is not None else {k: k not in missing for k in
                                                           ["train", "test", *bench.ood_tests, *missing]},
        "missing": missing,
        **(extra or {}),
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / FILENAME, json.dumps(manifest, indent=2))
    manifest["path"] = str(folder / FILENAME)
    return manifest


def read_manifest(folder: Path) -> dict | None:
    """DATA/<name>/manifest.json as a dict, None when there is none; a damaged one is an error naming it."""
    path = Path(folder) / FILENAME
    try:
        raw = read_regular(path, "manifest")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ImoodError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImoodError(f"{path} is not valid JSON ({exc}); delete it and run `imood data prepare` again") from None
    if not isinstance(manifest, dict):
        raise ImoodError(f"{path} should hold a JSON object; delete it and run `imood data prepare` again")
    return manifest


def recorded_verify(folder: Path) -> bool:
    """Whether to check checksums when `verify=None`: False only when the manifest says the data were
    prepared with --no-verify; with no manifest, True (the safe side)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return True
    options = manifest.get("options")
    verified = options.get("verified", True) if isinstance(options, dict) else True
    if not isinstance(verified, bool):
        raise ImoodError(f"{Path(folder) / FILENAME}: options.verified should be true or false, got {verified!r}; "
                         "run `imood data prepare` again")
    return verified


def resolve_verify(verify: bool | None, folder: Path) -> bool:
    """verify=True/False as given; None: as DATA/<name>/manifest.json recorded (see `recorded_verify`)."""
    return recorded_verify(folder) if verify is None else bool(verify)


def read_recorded_npz(folder: Path, file: str, what: str, cap: int, redo: str) -> tuple[dict[str, np.ndarray], str]:
    """(the arrays of the .npz `file` in `folder`, its sha256), checked against the sha256 manifest.json recorded
    for it (its `arrays` entry): a file not recorded, changed, oversized or unreadable is one ImoodError ending
    with `redo`, what the user can do about it. Never unpickled."""
    import io
    import zipfile

    import numpy as np  # here: `imood data list` reads manifests without numpy
    path = Path(folder) / file
    raw = read_capped(path, what, cap)
    record = (read_manifest(folder) or {}).get("arrays")
    expected = record.get("sha256") if isinstance(record, dict) and record.get("file") == file else None
    if expected is None:
        raise ImoodError(f"{path} is not recorded in {Path(folder) / 'manifest.json'}, so imood cannot check it; "
                         f"{redo}")
    if hashlib.sha256(raw).hexdigest() != expected:
        raise ImoodError(f"{path}: sha256 does not match the one manifest.json recorded (the file changed); {redo}")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: np.array(z[k]) for k in z.files}  # a copy: arrays read from a zip are read-only
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ImoodError(f"{path} is not a readable .npz ({exc}); {redo}") from None
    return arrays, expected
