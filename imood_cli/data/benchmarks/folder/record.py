"""A folder benchmark's manifest: what `prepare` records (the sources, every file, the options) and how a
load reads it back, every field checked."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imood_cli.core.lazy import torch
from imood_cli.data.benchmarks.folder.sources import MANIFEST_CAP, NAME_PATTERN, Entry, Source, _bincount, _show_names
from imood_cli.data.manifest import FILENAME
from imood_cli.data.pipeline.folder import IN_MEMORY_MAX_SIZE
from imood_cli.data.pipeline.longtail import longtail_indices
from imood_cli.errors import ImoodError
from imood_cli.fs.safe import check_list_path, path_kind, read_capped

SOURCE = "folder"  # manifest.json "source": what marks a folder benchmark


FORMAT = 1  # manifest["folder"]["format"]


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


MIN_SIZE = 4


MAX_SIZE = 1024


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
