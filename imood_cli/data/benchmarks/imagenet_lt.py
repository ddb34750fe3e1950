"""`imagenet`: the ImageNet-LT benchmark (docs/data.md), read from image files on demand.

ID: the OLTR split files `ImageNet_LT_train.txt` / `ImageNet_LT_test.txt` (lines `<path> <label>`,
paths relative to `$DATA/imagenet/`, e.g. `train/n01440764/n01440764_190.JPEG 0`), looked for in
`$DATA/imagenet/` and `$DATA/ImageNet_LT/`. The class counts come from the train split, so the
imbalance is the split's own (`--imbalance_ratio` does not apply). Auxiliary OOD:
`$DATA/imagenet/extra_1k/`; OOD test: `$DATA/imagenet/ood_test_1k/` (folders of images, any depth,
taken in sorted path order).

The sets are `FileImages` (ImageSet.files): test batches are resize 256 + center crop 224 (uint8),
training epochs are `data.files.FileEpoch` (RandomResizedCrop 224, scale 0.2–1, and flip in the
loader; color jitter, grayscale and the ImageNet mean/std on the device from IMAGENET_AUGMENT).

Split lines must name paths inside `$DATA/imagenet/` (relative, no `..`); anything else is an error
naming the file and line. Only the ID part is required: without `ood_test_1k/` the benchmark loads
with no OOD test set and names it in `Benchmark.missing`; `extra_1k/` is needed only when auxiliary
OOD is asked for (num_ood_samples != 0).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from imood_cli.core.lazy import torch
from imood_cli.data.base import Benchmark, FileStatus, ImageSet, missing_phrase
from imood_cli.data.manifest import resolve_verify, write_manifest
from imood_cli.data.pipeline.augment_spec import AugmentSpec
from imood_cli.data.pipeline.images import list_images
from imood_cli.errors import ImoodError
from imood_cli.fs.safe import absent_or_kind, check_list_path, is_regular_file, mode_kind, read_lines

IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_AUGMENT = AugmentSpec(crop_padding=0, flip=False, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2,
                               mean=IMAGENET_MEAN, std=IMAGENET_STD)
SPLIT_FILES = {"train": "ImageNet_LT_train.txt", "test": "ImageNet_LT_test.txt"}
SPLIT_DIRS = ("imagenet", "ImageNet_LT")
OLTR_URL = "https://github.com/zhmiao/OpenLongTailRecognition-OLTR"
IMAGENET_URL = "https://image-net.org"
OOD_HOW = (f"built from ImageNet-10K ({IMAGENET_URL}) by the reference code's "
           "datasets/ImageNet_LT/get_imagenet10k.sh")
SHOW = 3


def imagenet_dir(root: Path) -> Path:
    return Path(root) / "imagenet"


def split_path(root: Path, which: str) -> Path:
    """The split file that exists (imagenet/ first, then ImageNet_LT/), else where it should go."""
    for d in SPLIT_DIRS:
        p = Path(root) / d / SPLIT_FILES[which]
        if is_regular_file(p):
            return p
    return Path(root) / SPLIT_DIRS[0] / SPLIT_FILES[which]


def parse_split(path: Path, base: Path | None = None) -> tuple[list[str], list[int]]:
    """(relative paths, labels) of an OLTR split file; every path must stay inside `base`."""
    rels, labels = [], []
    base = base if base is not None else Path(path).parent
    for lineno, line in read_lines(path, "split file"):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or not parts[1].isascii():
            raise ImoodError(f"{path}:{lineno}: expected '<relative path> <label>', got {line[:80]!r}")
        label = int(parts[1])
        if label < 0:
            raise ImoodError(f"{path}:{lineno}: negative label {label}")
        rels.append(check_list_path(parts[0], path, lineno, base))
        labels.append(label)
    if not rels:
        raise ImoodError(f"{path} lists no image")
    return rels, labels


def _check_exist(paths: list[Path], what: str) -> None:
    """Every listed image is a regular file (stat only: nothing is opened)."""
    bad = []
    for p in paths:
        try:
            mode = os.stat(p).st_mode
        except OSError:
            bad.append(f"{p} (missing)")
            continue
        if not stat.S_ISREG(mode):
            bad.append(f"{p} ({mode_kind(mode)}, not a regular file)")
    if bad:
        raise ImoodError(f"{what}: {len(bad):,} of {len(paths):,} listed images are missing or not regular files "
                         f"(first: {', '.join(bad[:SHOW])}); fix the folder or pass --no-verify to skip this check")


class ImageNetLT:
    name = "imagenet"
    description = ("ImageNet-LT (OLTR split, 1,000 classes) vs ImageNet-10K ood_test_1k; aux OOD: extra_1k; "
                   "read from image files")
    default_imbalance_ratio = None

    def status(self, root: Path) -> list[FileStatus]:
        root, base = Path(root), imagenet_dir(root)
        split_how = f"the OLTR split file, from {OLTR_URL}; put it in {base}/"
        train_how = f"extract the ImageNet-1k training set ({IMAGENET_URL}) into {base / 'train'}/"
        val_how = f"extract the ImageNet-1k validation set ({IMAGENET_URL}) into {base / 'val'}/, one folder per class"
        return [
            FileStatus("ID split: ImageNet_LT_train.txt", split_path(root, "train"),
                       is_regular_file(split_path(root, "train")), split_how),
            FileStatus("ID split: ImageNet_LT_test.txt", split_path(root, "test"),
                       is_regular_file(split_path(root, "test")), split_how),
            FileStatus("ID train images (ImageNet train/)", base / "train", (base / "train").is_dir(), train_how),
            FileStatus("ID test images (ImageNet val/, in class folders)", base / "val", (base / "val").is_dir(),
                       val_how),
            FileStatus("auxiliary OOD: extra_1k (training only)", base / "extra_1k", (base / "extra_1k").is_dir(),
                       OOD_HOW, required=False),
            FileStatus("OOD test: ood_test_1k", base / "ood_test_1k", (base / "ood_test_1k").is_dir(), OOD_HOW,
                       required=False),
        ]

    def _missing_id(self, root: Path) -> list[str]:
        """Compact phrases for the absent ID pieces: the split files, the ImageNet folders."""
        base, out = imagenet_dir(root), []
        splits = [SPLIT_FILES[w] for w in SPLIT_FILES if not is_regular_file(split_path(root, w))]
        if splits:
            odd = [f"{p} is {absent_or_kind(p)}" for f in splits for d in SPLIT_DIRS
                   if absent_or_kind(p := Path(root) / d / f) != "missing"]
            out.append(f"the OLTR split file(s) {', '.join(splits)} in {base}/ or {Path(root) / SPLIT_DIRS[1]}/ "
                       f"({'; '.join([*odd, f'from {OLTR_URL}'])})")
        folders = [d for d in ("train", "val") if not (base / d).is_dir()]
        if folders:
            out.append(f"the ImageNet-1k {' and '.join(f'{d}/' for d in folders)} folder(s) in {base}/ "
                       f"(from {IMAGENET_URL}; val/ in one folder per class)")
        return out

    def missing_pieces(self, root: Path) -> dict[str, str]:
        """The absent OOD folders -> where to get them."""
        base = imagenet_dir(root)
        return {d: f"{base / d}/ ({OOD_HOW})" for d in ("ood_test_1k", "extra_1k") if not (base / d).is_dir()}

    def _not_ready(self, required: list[str], root: Path) -> ImoodError:
        """One line: what must be there first, then the absent OOD test folder (extra_1k is named only when
        it was asked for, and then among the required)."""
        optional = self.missing_pieces(root)
        optional.pop("extra_1k", None)
        also = f" (also missing, not needed to start: {missing_phrase(optional)})" if optional else ""
        return ImoodError(f"{self.name} is not ready, missing: {'; '.join(required)}{also}")

    def _folder_set(self, folder: Path, name: str, limit: int | None = None) -> ImageSet:
        from imood_cli.data.pipeline.files import file_image_set

        paths = list_images(folder)
        if not paths:
            raise ImoodError(f"{folder} holds no image files ({OOD_HOW})")
        if limit is not None:
            if limit > len(paths):
                raise ImoodError(f"{folder} holds {len(paths):,} images, fewer than the {limit:,} asked for "
                                 "(--num_ood_samples)")
            paths = paths[:limit]
        return file_image_set(name, paths, torch.full((len(paths),), -1, dtype=torch.long), IMAGE_SIZE)

    def load(self, root: Path, imbalance_ratio: float | None = None, num_ood_samples: int | None = None,
             verify: bool | None = None, ood_tests: bool = True, **_) -> Benchmark:
        """The benchmark. verify: check that every listed image is a regular file (None: as the manifest
        recorded, True without one); ood_tests=False skips ood_test_1k; num_ood_samples=0: no extra_1k."""
        from imood_cli.data.pipeline.files import file_image_set

        root, base = Path(root), imagenet_dir(root)
        if num_ood_samples is not None and num_ood_samples < 0:
            raise ImoodError(f"--num_ood_samples must be >= 0, got {num_ood_samples}")
        aux_required = num_ood_samples != 0 and not (base / "extra_1k").is_dir()
        required = self._missing_id(root)
        if aux_required:
            required.append(f"the auxiliary OOD folder {base / 'extra_1k'}/ ({OOD_HOW}; or pass --num_ood_samples 0 "
                            "to go without it)")
        if required:
            raise self._not_ready(required, root)
        train_rel, train_labels = parse_split(split_path(root, "train"), base)
        test_rel, test_labels = parse_split(split_path(root, "test"), base)
        k = max(train_labels) + 1
        counts = torch.bincount(torch.tensor(train_labels), minlength=k).tolist()
        if 0 in counts:
            raise ImoodError(f"{split_path(root, 'train')}: class {counts.index(0)} has no training image "
                             f"(labels must be 0..K-1)")
        if max(test_labels) >= k:
            raise ImoodError(f"{split_path(root, 'test')}: label {max(test_labels)} is not among the {k} train classes")
        train_paths = [base / r for r in train_rel]
        test_paths = [base / r for r in test_rel]
        if resolve_verify(verify, root / self.name):
            _check_exist(train_paths, f"ImageNet-LT train ({split_path(root, 'train')})")
            _check_exist(test_paths, f"ImageNet-LT test ({split_path(root, 'test')})")
        class_names = [""] * k
        for rel, label in zip(train_rel, train_labels):
            if not class_names[label]:
                class_names[label] = Path(rel).parent.name or str(label)
        aux = None
        if num_ood_samples != 0:
            aux = self._folder_set(base / "extra_1k", "extra_1k", num_ood_samples)
        sets, missing = {}, {}
        if ood_tests:
            missing = {d: how for d, how in self.missing_pieces(root).items() if d == "ood_test_1k"}
            if not missing:
                sets["ood_test_1k"] = self._folder_set(base / "ood_test_1k", "ood_test_1k")
        return Benchmark(
            name=self.name,
            num_classes=k,
            class_counts=counts,
            train=file_image_set("imagenet-lt-train", train_paths, train_labels, IMAGE_SIZE),
            test=file_image_set("imagenet-lt-test", test_paths, test_labels, IMAGE_SIZE),
            ood_tests=sets,
            aux_ood=aux,
            channels=3,
            image_size=IMAGE_SIZE,
            augment=IMAGENET_AUGMENT,
            class_names=class_names,
            description=self.description,
            missing=missing,
        )

    def prepare(self, root: Path, imbalance_ratio: float | None = None, num_ood_samples: int | None = None,
                verify: bool | None = True, download: bool = True, **_) -> dict:
        """Nothing can be downloaded (ImageNet needs an account): check the files and write the manifest.

        Absent OOD folders are recorded in the manifest's `missing`; only a missing ID part is an error.
        """
        root, base = Path(root), imagenet_dir(root)
        verify = resolve_verify(verify, root / self.name)
        aux_here = (base / "extra_1k").is_dir()
        bench = self.load(root, num_ood_samples=num_ood_samples if aux_here else 0, verify=verify)
        missing = self.missing_pieces(root)
        where = {"train": str(split_path(root, "train")), "test": str(split_path(root, "test")),
                 "aux_ood": str(base / "extra_1k"), "ood_test_1k": str(base / "ood_test_1k")}
        options = {"imbalance_ratio": None, "split": "OLTR ImageNet-LT",
                   "num_ood_samples": len(bench.aux_ood) if bench.aux_ood is not None else 0,
                   "verified": bool(verify)}
        pieces = {"train": True, "test": True, "extra_1k": aux_here, "ood_test_1k": "ood_test_1k" not in missing}
        return write_manifest(root / self.name, bench, source=f"{IMAGENET_URL}; OLTR split {OLTR_URL}",
                              options=options, where=where, missing=missing, pieces=pieces)
