"""Your own images as a benchmark: `imood data prepare folder --name NAME ...`, then `--ds NAME` everywhere.

The ID classes come from an ImageFolder layout (`DIR/CLASS/*.png`, class names sorted, index = position)
or from CSV list files (`path,label`), and the class prior from the training counts, optionally made
long-tailed with imood's rule (`data.longtail`), or from `--class-counts` when the training images are not
at hand. Folders of OOD images (`--ood-dir`) become OOD test sets named after their folders.

Why a manifest that lists every file with its sha256: a user's folder changes under imood (images added,
relabelled, re-exported), and a benchmark that silently differs from the one a model was trained and scored
on makes numbers that cannot be compared. So `prepare` records every file (relative path, label, sha256,
size, modification time) and every load checks them: a changed, added or removed file is one error naming
it, and `imood data prepare NAME` records the files as they are now. Small images (size <= 64) are read
whole at each load anyway, so each is hashed as it is decoded, from the same bytes; large ones stay on disk
and are re-hashed only when their size or modification time changed (what git and rsync trust).

Every image is decoded once by `prepare`, so a truncated, empty or non-image file is named there, not
hours into training. Modes are normalised the same way everywhere: 16-bit and float images are scaled to
8 bits (PIL's own conversion would clip them to white), palette images with transparency go through RGBA,
alpha is dropped, and luma uses ITU-R 601 weights (`data.images.to_channels`, which file-backed sets use too).

Nothing is half-written: every input is checked before the one write, DATA/NAME/manifest.json, which is
atomic; a folder DATA/NAME that imood did not make (or that holds anything but the sources being prepared)
is refused, and a re-prepare replaces only the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imood_cli.core.lazy import torch
from imood_cli.data.base import Benchmark, FileStatus, ImageSet
from imood_cli.data.benchmarks.folder.files import Probe, check_files, check_listing, decode_set, probe_set
from imood_cli.data.benchmarks.folder.record import (
    MAX_SIZE,
    MIN_SIZE,
    SOURCE,
    Plan,
    _Check,
    _described,
    _given_options,
    _options,
    _record,
    _where,
    manifest_path,
    plan_from_manifest,
    read_folder_manifest,
)
from imood_cli.data.benchmarks.folder.sources import (
    Entry,
    Source,
    _abs,
    _bincount,
    _show_names,
    check_name,
    folder_source,
    list_source,
    ood_source,
)
from imood_cli.data.manifest import FILENAME, write_manifest
from imood_cli.data.pipeline.augment_spec import AugmentSpec
from imood_cli.data.pipeline.longtail import check_imbalance_ratio, longtail_counts
from imood_cli.errors import ImoodError
from imood_cli.fs.safe import path_kind

SMALL_SIZE, LARGE_SIZE = 32, 224  # the default image size: 32 when every training image fits in 64 px, else 224
IMAGENET_GRAY = ((0.449,), (0.226,))  # the mean and std of ImageNet's three channels, for one-channel data


# ---------------------------------------------------------------- names


# ---------------------------------------------------------------- one set of images


# ---------------------------------------------------------------- reading, hashing and decoding images


# ---------------------------------------------------------------- the split and the set-up

def split_counts(counts: list[int], ratio: float) -> list[int]:
    """imood's long-tail rule n_k = int(n_max · ρ^(k/(K-1))) (`data.longtail`) with the largest n_max every
    class has images for: a balanced folder keeps its per-class count as n_max (a folder of CIFAR-10's
    training images gives CIFAR10-LT's 12,406 at ρ = 0.01)."""
    check_imbalance_ratio(ratio)
    k = len(counts)
    factors = [ratio ** (i / (k - 1)) if k > 1 else 1.0 for i in range(k)]
    n_max = min(int((c + 1) / f) for c, f in zip(counts, factors))
    while n_max > 0 and any(n > c for n, c in zip(longtail_counts(n_max, k, ratio), counts)):
        n_max -= 1
    split = longtail_counts(n_max, k, ratio) if n_max > 0 else [0] * k
    if 0 in split:
        c = split.index(0)
        raise ImoodError(f"--imbalance-ratio {ratio:g}: class {c} would keep no training image (the classes have "
                         f"{counts} images); use a larger ratio or more images")
    return split


def default_size(probes: list[Probe]) -> int:
    return SMALL_SIZE if all(max(p.width, p.height) <= 64 for p in probes) else LARGE_SIZE


def augment_for(size: int, channels: int, in_memory: bool) -> AugmentSpec:
    """Training augmentation: CIFAR's (padding size/8, flip, jitter) for small color images, digits' (padding
    only) for small grayscale ones, ImageNet-LT's (crops in the loader, its mean/std) for large ones."""
    if not in_memory:
        from imood_cli.data.benchmarks.imagenet_lt import IMAGENET_AUGMENT

        if channels == 3:
            return IMAGENET_AUGMENT
        return AugmentSpec(mean=IMAGENET_GRAY[0], std=IMAGENET_GRAY[1])
    pad = max(1, size // 8)
    if channels == 1:
        return AugmentSpec(crop_padding=pad)
    return AugmentSpec(crop_padding=pad, flip=True, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2)


def parse_class_counts(text: str | Sequence[int]) -> list[int]:
    """`--class-counts 500,120,30`: one whole number >= 1 per class, in class order."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        counts = [int(str(p).strip()) for p in parts]
    except ValueError:
        counts = []
    if not counts or any(c < 1 for c in counts):
        raise ImoodError(f"--class-counts takes one whole number >= 1 per class, comma-separated (500,120,30), "
                         f"got {text!r}")
    return counts


def _sources(train: Path | None, test: Path | None, train_list: Path | None, test_list: Path | None,
             class_counts: list[int] | None) -> tuple[Source, Source, list[str]]:
    """(train, test, class names) from one of the three input forms."""
    forms = [("--train", train), ("--train-list", train_list), ("--class-counts", class_counts)]
    given = [f for f, v in forms if v is not None]
    if len(given) != 1:
        raise ImoodError("give the training set one way: --train DIR (class folders), --train-list FILE (CSV "
                         "path,label) or --class-counts N,N,... (no training images)"
                         + (f"; got {' and '.join(given)}" if given else ""))
    tests = [f for f, v in (("--test", test), ("--test-list", test_list)) if v is not None]
    if len(tests) != 1:
        raise ImoodError("give the ID test set one way: --test DIR (class folders) or --test-list FILE (CSV "
                         "path,label)" + (f"; got {' and '.join(tests)}" if tests else ""))
    if class_counts is not None:
        k = len(class_counts)
        if test is not None:
            test_src, classes = folder_source(test, "--test", None)
        else:
            test_src, classes = list_source(test_list, "--test-list", None, class_count=k)
        if len(classes) != k:
            raise ImoodError(f"--class-counts gives {k} classes but the test set has {len(classes)} "
                             f"({_show_names(classes)}): give one count per class, in sorted class order")
        return Source("counts", None), test_src, classes
    if train is not None:
        train_src, classes = folder_source(train, "--train", None)
    else:
        train_src, classes = list_source(train_list, "--train-list", None)
        counts = _bincount(train_src.entries, len(classes))
        if 0 in counts:
            raise ImoodError(f"{train_src.path}: class {classes[counts.index(0)]!r} has no training image (with "
                             f"indices as labels, the classes are 0..{len(classes) - 1})")
    if test is not None:
        test_src, _ = folder_source(test, "--test", classes)
    else:
        test_src, _ = list_source(test_list, "--test-list", classes)
    return train_src, test_src, classes


def plan_folder(name: str, *, train: Path | None = None, test: Path | None = None, train_list: Path | None = None,
                test_list: Path | None = None, class_counts: str | Sequence[int] | None = None,
                ood_dirs: Sequence[Path] = (), imbalance_ratio: float | None = None, image_size: int | None = None,
                channels: int | None = None) -> Plan:
    """Check every option and every file (each image read, hashed and decoded once); nothing is written."""
    check_name(name)
    if image_size is not None and (isinstance(image_size, bool) or not MIN_SIZE <= image_size <= MAX_SIZE):
        raise ImoodError(f"--image-size must be a whole number in {MIN_SIZE}..{MAX_SIZE}, got {image_size!r}")
    if channels is not None and channels not in (1, 3):
        raise ImoodError(f"--channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    counts_given = parse_class_counts(class_counts) if class_counts is not None else None
    if imbalance_ratio is not None:
        check_imbalance_ratio(imbalance_ratio)
        if counts_given is not None:
            raise ImoodError("--imbalance-ratio subsamples the training images, which --class-counts does not "
                             "give: write the counts you want in --class-counts")
    given = {"train": str(_abs(train)) if train is not None else None,
             "test": str(_abs(test)) if test is not None else None,
             "train_list": str(_abs(train_list)) if train_list is not None else None,
             "test_list": str(_abs(test_list)) if test_list is not None else None,
             "class_counts": counts_given, "ood_dirs": [str(_abs(d)) for d in ood_dirs],
             "imbalance_ratio": imbalance_ratio, "image_size": image_size, "channels": channels}
    train_src, test_src, classes = _sources(train, test, train_list, test_list, counts_given)
    ood: dict[str, Source] = {}
    for d in ood_dirs:
        set_name, src = ood_source(d)
        if set_name in ood or set_name == "mean":
            why = "'mean' is where evaluations keep the average" if set_name == "mean" else (
                f"{ood[set_name].path} has it too")
            raise ImoodError(f"--ood-dir {d}: the OOD set would be named {set_name!r}, but {why}; rename the folder")
        ood[set_name] = src
    probes = [] if train_src.kind == "counts" else probe_set(train_src, f"--train {train_src.path}"
                                                             if train_src.kind == "folder"
                                                             else f"--train-list {train_src.path}")
    test_probes = probe_set(test_src, f"{'--test' if test_src.kind == 'folder' else '--test-list'} {test_src.path}")
    for src in ood.values():
        probe_set(src, f"--ood-dir {src.path}")
    shape_from = probes or test_probes  # --class-counts: the test images stand in for the training images
    size = image_size or default_size(shape_from)
    ch = channels or (1 if all(p.gray for p in shape_from) else 3)
    if counts_given is not None:
        source_counts = counts_given
    else:
        source_counts = _bincount(train_src.entries, len(classes))
    prior = split_counts(source_counts, imbalance_ratio) if imbalance_ratio is not None else list(source_counts)
    return Plan(name, classes, train_src, test_src, ood, source_counts, prior, size, ch, given)


# ---------------------------------------------------------------- the sets, as the engine uses them

def no_training_images(name: str) -> ImoodError:
    return ImoodError(f"{name} was prepared with --class-counts and has no training images: training, and detectors "
                      "fitted on the ID training set (maha, knn, vim, rmd, ...) or --ada-scale auto, need them; "
                      "detectors without a fit (msp, energy, ...) score it. Prepare it with --train DIR or "
                      "--train-list FILE to train or fit")


class NoTrainingImages(ImageSet):
    """The training set of a benchmark prepared with --class-counts: labels that give its size and prior, no
    images. Whatever reads the images (training, detectors fitted on the ID training set, --ada-scale auto)
    gets one error that says why, where it asks."""

    def __init__(self, name: str, labels, benchmark: str) -> None:  # not the dataclass __init__: no images to set
        self.name, self.labels, self._benchmark = name, labels, benchmark

    def _refuse(self):
        raise no_training_images(self._benchmark)

    images = property(lambda self: self._refuse())
    files = property(lambda self: self._refuse())

    def subset(self, index, name: str | None = None) -> ImageSet:
        self._refuse()


def _labels(entries: list[Entry]):
    return torch.tensor([e.label for e in entries], dtype=torch.long)


def _image_set(set_name: str, src: Source, entries: list[Entry], plan: Plan, bench: str, check: bool) -> ImageSet:
    """In memory (size <= 64: decoded, each file checked against its sha256) or file-backed (test transform
    resize + center crop; files checked by size, time and, where the time moved, sha256)."""
    view = Source(src.kind, src.path, entries, src.list_sha256)
    if plan.in_memory:
        images = decode_set(view, plan.image_size, plan.channels, bench)
        return ImageSet(set_name, _labels(entries), torch.from_numpy(images))
    from imood_cli.data.pipeline.files import file_image_set

    if check:
        check_files(view, bench)
    return file_image_set(set_name, [str(view.file(e)) for e in entries], _labels(entries), plan.image_size,
                          mode="center", channels=plan.channels)


def build_benchmark(plan: Plan, *, check: bool, ood_tests: bool = True, for_manifest: bool = False,
                    description: str = "") -> Benchmark:
    """The Benchmark of a plan. check: verify file-backed sets against their records (in-memory sets are
    always checked as they are decoded). for_manifest: a --class-counts training set as plain labels."""
    k = len(plan.classes)
    if plan.counts_only:
        labels = torch.repeat_interleave(torch.arange(k), torch.tensor(plan.class_counts))
        train = (ImageSet(plan.train_name, labels) if for_manifest
                 else NoTrainingImages(plan.train_name, labels, plan.name))
    else:
        train = _image_set(plan.train_name, plan.train, plan.kept(), plan, plan.name, check)
    test = _image_set(f"{plan.name}-test", plan.test, plan.test.entries, plan, plan.name, check)
    sets, missing = {}, {}
    if ood_tests:
        for set_name, src in plan.ood.items():
            if path_kind(src.path) != "a folder":
                missing[set_name] = f"{src.path}/ (the --ood-dir it was prepared from is gone)"
                continue
            if check:
                check_listing(src, plan.name, "--ood-dir")
            sets[set_name] = _image_set(set_name, src, src.entries, plan, plan.name, check)
    return Benchmark(name=plan.name, num_classes=k, class_counts=list(plan.class_counts), train=train, test=test,
                     ood_tests=sets, aux_ood=None, channels=plan.channels, image_size=plan.image_size,
                     augment=augment_for(plan.image_size, plan.channels, plan.in_memory),
                     class_names=list(plan.classes), description=description, missing=missing)


# ---------------------------------------------------------------- prepare: the one write

def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def check_target(folder: Path, name: str, sources: list[Path]) -> None:
    """DATA/NAME may be written when it is absent, holds this command's manifest (a re-prepare: only the
    manifest is replaced), or holds nothing but the sources being prepared (DATA/NAME/train/, ...)."""
    kind = path_kind(folder)
    if kind is None:
        return
    if kind != "a folder":
        raise ImoodError(f"{folder} is {kind}, not a folder imood made: choose another --name")
    manifest = folder / FILENAME
    if path_kind(manifest) is not None:
        if read_folder_manifest(folder.parent, name, quiet_foreign=True) is None:
            raise ImoodError(f"{folder} holds a {FILENAME} that `imood data prepare folder` did not write: it is not "
                             "replaced; choose another --name")
        return
    try:
        with os.scandir(folder) as it:
            entries = sorted(e.name for e in it)
    except OSError as exc:
        raise ImoodError(f"cannot read {folder}: {exc.strerror or exc}") from None
    for entry in entries:
        p = folder / entry
        if not any(_inside(s, p) or _inside(p, s) for s in sources):
            raise ImoodError(f"{folder} exists and was not made by `imood data prepare folder` ({p} is not one of the "
                             "images being prepared): choose another --name, or move it away")


def prepare_folder(root: Path, name: str, **options: Any) -> dict:
    """Check everything (`plan_folder`), then write DATA/NAME/manifest.json atomically; returns the manifest.

    On any failure (or Ctrl-C) nothing is left behind: the manifest is the only write, atomic, and a DATA/NAME
    folder this call created is removed again.
    """
    root = Path(root)
    folder = root / check_name(name)
    plan = plan_folder(name, **options)
    sources = [s.path for s in (plan.train, plan.test, *plan.ood.values()) if s.path is not None]
    check_target(folder, name, sources)
    bench = build_benchmark(plan, check=False, for_manifest=True)
    created = [p for p in (folder, *folder.parents) if path_kind(p) is None]
    try:
        return write_manifest(folder, bench, source=SOURCE, options=_options(plan), where=_where(plan),
                              extra={"class_names": plan.classes, "folder": _record(plan)})
    except BaseException:
        for p in created:  # innermost first; only folders this call made, and only if still empty
            try:
                p.rmdir()
            except OSError:
                break
        raise


# ---------------------------------------------------------------- reading a manifest back


class FolderBenchmark:
    """A prepared folder benchmark, looked up by name under DATA (not through the registry: the engine's
    `benchmark.dataset` falls back to it for a name that no built-in or plugin has)."""

    description = "your own images, prepared by `imood data prepare folder`"
    default_imbalance_ratio = None

    def __init__(self, name: str) -> None:
        self.name = check_name(name)

    def manifest(self, root: Path) -> dict:
        m = read_folder_manifest(root, self.name)
        if m is None:
            raise ImoodError(f"no folder benchmark {self.name!r} under {root}: prepare it with `imood data prepare "
                             f"folder --name {self.name} --train DIR --test DIR` (see imood data prepare --help)")
        return m

    def status(self, root: Path) -> list[FileStatus]:
        """The sources recorded in the manifest and whether they are there (no file is read)."""
        root, path = Path(root), manifest_path(root, self.name)
        how = f"the source given to `imood data prepare folder`; if it moved, prepare {self.name} again from there"
        try:
            m = self.manifest(root)
            plan = plan_from_manifest(root, self.name, m)
        except ImoodError as exc:
            return [FileStatus("manifest", path, False, "run `imood data prepare folder` again", str(exc))]
        self.description = _described(m)
        out = [FileStatus("manifest", path, True)]
        k = len(plan.classes)
        if plan.counts_only:
            out.append(FileStatus("ID train: class counts only (no images)", Path("(--class-counts)"), True,
                                  detail=f"class counts {plan.class_counts}"))
        else:
            out.append(FileStatus(f"ID train: {'class folders' if plan.train.kind == 'folder' else 'list file'}",
                                  plan.train.path, path_kind(plan.train.path) is not None, how,
                                  f"{len(plan.train.entries):,} images in {k} classes; prior {plan.class_counts}"))
        out.append(FileStatus(f"ID test: {'class folders' if plan.test.kind == 'folder' else 'list file'}",
                              plan.test.path, path_kind(plan.test.path) is not None, how,
                              f"{len(plan.test.entries):,} images"))
        for n, s in plan.ood.items():
            out.append(FileStatus(f"OOD test: {n}", s.path, path_kind(s.path) == "a folder", how,
                                  f"{len(s.entries):,} images", required=False))
        return out

    def prepare(self, root: Path, imbalance_ratio: float | None = None, **_) -> dict:
        """`imood data prepare NAME`: prepare again from the sources and options the manifest recorded (a new
        --imbalance-ratio replaces the recorded one)."""
        root = Path(root)
        plan = plan_from_manifest(root, self.name, self.manifest(root))
        opts = _given_options(plan.given, _Check(manifest_path(root, self.name), self.name))
        if imbalance_ratio is not None:
            opts["imbalance_ratio"] = imbalance_ratio
        return prepare_folder(root, self.name, **opts)

    def load(self, root: Path, ood_tests: bool = True, **_) -> Benchmark:
        """The benchmark as prepared, every file checked against the manifest. --imbalance_ratio of train and
        score does not apply (the split is the one `prepare` made); there is no auxiliary OOD set of its own
        (`imood train --aux-ood-dir DIR`).

        ood_tests=False is how training asks for its data (`engine.train.load_training_data`): a benchmark
        without training images says so then, before any other complaint (such as a missing auxiliary set).
        """
        root = Path(root)
        m = self.manifest(root)
        plan = plan_from_manifest(root, self.name, m)
        if plan.counts_only and not ood_tests:
            raise no_training_images(self.name)
        if not plan.counts_only:
            check_listing(plan.train, self.name, "--train" if plan.train.kind == "folder" else "--train-list")
        check_listing(plan.test, self.name, "--test" if plan.test.kind == "folder" else "--test-list")
        return build_benchmark(plan, check=True, ood_tests=ood_tests, description=_described(m))
