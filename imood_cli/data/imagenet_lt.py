"""`imagenet`: the ImageNet-LT benchmark (SPEC §4), read from image files on demand.

ID: the OLTR split files `ImageNet_LT_train.txt` / `ImageNet_LT_test.txt` (lines `<path> <label>`,
paths relative to `$DATA/imagenet/`, e.g. `train/n01440764/n01440764_190.JPEG 0`), looked for in
`$DATA/imagenet/` and `$DATA/ImageNet_LT/`. The class counts come from the train split, so the
imbalance is the split's own (`--imbalance_ratio` does not apply). Auxiliary OOD:
`$DATA/imagenet/extra_1k/`; OOD test: `$DATA/imagenet/ood_test_1k/` (folders of images, any depth,
taken in sorted path order).

The sets are `FileImages` (ImageSet.files): test batches are resize 256 + center crop 224 (uint8),
training epochs are `data.files.FileEpoch` (RandomResizedCrop 224, scale 0.2–1, and flip in the
loader; color jitter, grayscale and the ImageNet mean/std on the device from IMAGENET_AUGMENT).
"""

from __future__ import annotations

from pathlib import Path

import torch

from imood_cli.data.augment import AugmentSpec
from imood_cli.data.base import Benchmark, FileStatus, ImageSet
from imood_cli.data.files import file_image_set, list_images
from imood_cli.data.manifest import write_manifest
from imood_cli.errors import ImoodError

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
        if p.is_file():
            return p
    return Path(root) / SPLIT_DIRS[0] / SPLIT_FILES[which]


def parse_split(path: Path) -> tuple[list[str], list[int]]:
    rels, labels = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ImoodError(f"{path}:{lineno}: expected '<relative path> <label>', got {line[:80]!r}")
            label = int(parts[1])
            if label < 0:
                raise ImoodError(f"{path}:{lineno}: negative label {label}")
            rels.append(parts[0])
            labels.append(label)
    if not rels:
        raise ImoodError(f"{path} lists no image")
    return rels, labels


def _check_exist(paths: list[Path], what: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        first = ", ".join(str(p) for p in missing[:SHOW])
        raise ImoodError(f"{what}: {len(missing):,} of {len(paths):,} listed images are missing (first: {first}); "
                         "fix the folder or pass --no-verify to skip this check")


class ImageNetLT:
    name = "imagenet"
    description = ("ImageNet-LT (OLTR split, 1,000 classes) vs ImageNet-10K ood_test_1k; aux OOD: extra_1k; "
                   "read from image files")
    default_imbalance_ratio = None

    def status(self, root: Path) -> list[FileStatus]:
        root, base = Path(root), imagenet_dir(root)
        split_how = f"the OLTR split file, from {OLTR_URL}; put it in {base}/"
        out = [
            FileStatus("ID split: ImageNet_LT_train.txt", split_path(root, "train"),
                       split_path(root, "train").is_file(), split_how),
            FileStatus("ID split: ImageNet_LT_test.txt", split_path(root, "test"),
                       split_path(root, "test").is_file(), split_how),
            FileStatus("ID train images (ImageNet train/)", base / "train", (base / "train").is_dir(),
                       f"extract the ImageNet-1k training set ({IMAGENET_URL}) into {base / 'train'}/"),
            FileStatus("ID test images (ImageNet val/, in class folders)", base / "val", (base / "val").is_dir(),
                       f"extract the ImageNet-1k validation set ({IMAGENET_URL}) into {base / 'val'}/, one folder per class"),
            FileStatus("auxiliary OOD: extra_1k (training only)", base / "extra_1k", (base / "extra_1k").is_dir(), OOD_HOW),
            FileStatus("OOD test: ood_test_1k", base / "ood_test_1k", (base / "ood_test_1k").is_dir(), OOD_HOW),
        ]
        return out

    def _missing(self, root: Path, need_aux: bool) -> list[str]:
        """Compact phrases: the split files, the ImageNet folders, the ImageNet-10K OOD folders."""
        base, out = imagenet_dir(root), []
        splits = [SPLIT_FILES[w] for w in SPLIT_FILES if not split_path(root, w).is_file()]
        if splits:
            out.append(f"the OLTR split file(s) {', '.join(splits)} in {base}/ or {Path(root) / SPLIT_DIRS[1]}/ "
                       f"(from {OLTR_URL})")
        folders = [d for d in ("train", "val") if not (base / d).is_dir()]
        if folders:
            out.append(f"the ImageNet-1k {' and '.join(f'{d}/' for d in folders)} folder(s) in {base}/ "
                       f"(from {IMAGENET_URL}; val/ in one folder per class)")
        ood = [d for d in ("extra_1k", "ood_test_1k") if not (base / d).is_dir() and (need_aux or d != "extra_1k")]
        if ood:
            out.append(f"the OOD folder(s) {' and '.join(f'{d}/' for d in ood)} in {base}/ ({OOD_HOW})")
        return out

    def _folder_set(self, folder: Path, name: str, limit: int | None = None) -> ImageSet:
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
             verify: bool = True, **_) -> Benchmark:
        root, base = Path(root), imagenet_dir(root)
        if num_ood_samples is not None and num_ood_samples < 0:
            raise ImoodError(f"--num_ood_samples must be >= 0, got {num_ood_samples}")
        missing = self._missing(root, need_aux=num_ood_samples != 0)
        if missing:
            raise ImoodError(f"{self.name} is not ready, missing: {'; '.join(missing)}")
        train_rel, train_labels = parse_split(split_path(root, "train"))
        test_rel, test_labels = parse_split(split_path(root, "test"))
        k = max(train_labels) + 1
        counts = torch.bincount(torch.tensor(train_labels), minlength=k).tolist()
        if 0 in counts:
            raise ImoodError(f"{split_path(root, 'train')}: class {counts.index(0)} has no training image "
                             f"(labels must be 0..K-1)")
        if max(test_labels) >= k:
            raise ImoodError(f"{split_path(root, 'test')}: label {max(test_labels)} is not among the {k} train classes")
        train_paths = [base / r for r in train_rel]
        test_paths = [base / r for r in test_rel]
        if verify:
            _check_exist(train_paths, f"ImageNet-LT train ({split_path(root, 'train')})")
            _check_exist(test_paths, f"ImageNet-LT test ({split_path(root, 'test')})")
        class_names = [""] * k
        for rel, label in zip(train_rel, train_labels):
            if not class_names[label]:
                class_names[label] = Path(rel).parent.name or str(label)
        aux = None
        if num_ood_samples != 0:
            aux = self._folder_set(base / "extra_1k", "extra_1k", num_ood_samples)
        return Benchmark(
            name=self.name,
            num_classes=k,
            class_counts=counts,
            train=file_image_set("imagenet-lt-train", train_paths, train_labels, IMAGE_SIZE),
            test=file_image_set("imagenet-lt-test", test_paths, test_labels, IMAGE_SIZE),
            ood_tests={"ood_test_1k": self._folder_set(base / "ood_test_1k", "ood_test_1k")},
            aux_ood=aux,
            channels=3,
            image_size=IMAGE_SIZE,
            augment=IMAGENET_AUGMENT,
            class_names=class_names,
            description=self.description,
        )

    def prepare(self, root: Path, imbalance_ratio: float | None = None, num_ood_samples: int | None = None,
                verify: bool = True, download: bool = True, **_) -> dict:
        """Nothing can be downloaded (ImageNet needs an account): check the files and write the manifest."""
        root, base = Path(root), imagenet_dir(root)
        bench = self.load(root, num_ood_samples=num_ood_samples, verify=verify)
        where = {"train": str(split_path(root, "train")), "test": str(split_path(root, "test")),
                 "aux_ood": str(base / "extra_1k"), "ood_test_1k": str(base / "ood_test_1k")}
        options = {"imbalance_ratio": None, "split": "OLTR ImageNet-LT",
                   "num_ood_samples": len(bench.aux_ood) if bench.aux_ood is not None else 0,
                   "verified": bool(verify)}
        return write_manifest(root / self.name, bench, source=f"{IMAGENET_URL}; OLTR split {OLTR_URL}",
                              options=options, where=where)
