"""manifest.json: what `imood data prepare` found and built, with checksums of the sets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from imood_cli import __version__
from imood_cli.core.atomic import atomic_write_text
from imood_cli.data.base import Benchmark, ImageSet


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


def write_manifest(folder: Path, bench: Benchmark, source: str, options: dict, where: dict | None = None) -> dict:
    where = where or {}
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
        "test_class_counts": torch.bincount(bench.test.labels[bench.test.labels >= 0], minlength=bench.num_classes).tolist(),
        "aux_ood": describe_set(bench.aux_ood, where.get("aux_ood")) if bench.aux_ood is not None else None,
        "ood_tests": {k: describe_set(v, where.get(k)) for k, v in bench.ood_tests.items()},
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2))
    manifest["path"] = str(folder / "manifest.json")
    return manifest
