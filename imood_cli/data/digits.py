"""`digits`: the embedded offline benchmark, built from data that ships inside scikit-learn.

ID: handwritten digits 0-5 (8×8 grayscale), each class split 2/3 train and 1/3 test with a fixed
seed; the train split is made long-tailed with the CIFAR-LT rule. Auxiliary OOD: patches of the
`china.jpg` sample photo. OOD test sets: the held-out digits 6-9 (near-OOD), patches of
`flower.jpg` (far-OOD), and synthetic noise (uniform noise and Gaussian blobs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imood_cli.data.augment import AugmentSpec
from imood_cli.data.base import Benchmark, FileStatus, ImageSet
from imood_cli.data.longtail import longtail_counts, longtail_indices
from imood_cli.data.manifest import write_manifest

SIZE = 8
ID_CLASSES = 6
SEED = 0
NUM_AUX = 3000
NUM_FLOWER = 600
NUM_NOISE = 600


def _to_uint8(images: np.ndarray) -> torch.Tensor:
    """sklearn's digits are 0..16; scale to 0..255 and add the channel axis."""
    scaled = np.rint(images.astype(np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return torch.from_numpy(scaled).unsqueeze(1)


def photo_patches(photo: np.ndarray, count: int, seed: int) -> torch.Tensor:
    """Grayscale square crops of random size (16-64 px) from a photo, area-averaged down to 8×8."""
    gray = photo.astype(np.float64) @ np.array([0.2989, 0.587, 0.114])
    rng = np.random.default_rng(seed)
    h, w = gray.shape
    out = np.empty((count, SIZE, SIZE), dtype=np.uint8)
    for i in range(count):
        side = SIZE * int(rng.integers(2, 9))  # a multiple of 8 so the average is exact
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = gray[y:y + side, x:x + side]
        f = side // SIZE
        out[i] = np.rint(crop.reshape(SIZE, f, SIZE, f).mean(axis=(1, 3))).clip(0, 255)
    return torch.from_numpy(out).unsqueeze(1)


def noise_images(count: int, seed: int) -> torch.Tensor:
    """Half uniform noise, half smooth Gaussian blobs at random places and widths."""
    rng = np.random.default_rng(seed)
    half = count // 2
    uniform = rng.integers(0, 256, size=(half, SIZE, SIZE))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    blobs = np.empty((count - half, SIZE, SIZE))
    for i in range(count - half):
        cy, cx = rng.uniform(0, SIZE - 1, size=2)
        sigma = rng.uniform(0.8, 3.0)
        blobs[i] = 255 * rng.uniform(0.4, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    images = np.concatenate([uniform, np.rint(blobs)]).clip(0, 255).astype(np.uint8)
    return torch.from_numpy(images).unsqueeze(1)


def split_train_test(labels: np.ndarray, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded shuffle; the first 2/3 train, the rest test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in range(classes):
        idx = rng.permutation(np.nonzero(labels == k)[0])
        cut = (2 * len(idx)) // 3
        train.append(idx[:cut])
        test.append(idx[cut:])
    return np.concatenate(train), np.sort(np.concatenate(test))


class Digits:
    name = "digits"
    description = "embedded offline benchmark: sklearn digits 0-5 long-tailed vs digits 6-9, photo patches, noise"
    default_imbalance_ratio = 0.1

    def status(self, root: Path) -> list[FileStatus]:
        return [FileStatus("sklearn digits and sample images", Path("(inside scikit-learn)"), True,
                           "ships with scikit-learn; nothing to download")]

    def prepare(self, root: Path, imbalance_ratio: float | None = None, **_) -> dict:
        bench = self.load(root, imbalance_ratio=imbalance_ratio)
        return write_manifest(Path(root) / self.name, bench, source="sklearn.datasets (load_digits, load_sample_images)",
                              options={"imbalance_ratio": imbalance_ratio or self.default_imbalance_ratio, "seed": SEED})

    def load(self, root: Path | None = None, imbalance_ratio: float | None = None, **_) -> Benchmark:
        from sklearn.datasets import load_digits, load_sample_images

        ratio = self.default_imbalance_ratio if imbalance_ratio is None else imbalance_ratio
        digits = load_digits()
        images, labels = _to_uint8(digits.images), torch.from_numpy(digits.target.astype(np.int64))
        is_id = (labels < ID_CLASSES).numpy()
        id_idx = np.nonzero(is_id)[0]
        train_rel, test_rel = split_train_test(labels.numpy()[id_idx], ID_CLASSES, SEED)
        train_idx, test_idx = torch.from_numpy(id_idx[train_rel]), torch.from_numpy(id_idx[test_rel])
        train_labels = labels[train_idx]
        n_max = int(torch.bincount(train_labels, minlength=ID_CLASSES).min())
        counts = longtail_counts(n_max, ID_CLASSES, ratio)
        keep = train_idx[longtail_indices(train_labels, counts)]

        photos = load_sample_images()
        named = dict(zip([Path(f).name for f in photos.filenames], photos.images))
        aux = photo_patches(named["china.jpg"], NUM_AUX, SEED + 1)
        flower = photo_patches(named["flower.jpg"], NUM_FLOWER, SEED + 2)
        ood_digits = torch.from_numpy(np.nonzero(~is_id)[0])
        minus = lambda n: torch.full((n,), -1, dtype=torch.long)
        return Benchmark(
            name=self.name,
            num_classes=ID_CLASSES,
            class_counts=counts,
            train=ImageSet("digits-0-5-train-lt", labels[keep], images[keep]),
            test=ImageSet("digits-0-5-test", labels[test_idx], images[test_idx]),
            ood_tests={
                "digits-6-9": ImageSet("digits-6-9", minus(len(ood_digits)), images[ood_digits]),
                "flower-patches": ImageSet("flower-patches", minus(NUM_FLOWER), flower),
                "noise": ImageSet("noise", minus(NUM_NOISE), noise_images(NUM_NOISE, SEED + 3)),
            },
            aux_ood=ImageSet("china-patches", minus(NUM_AUX), aux),
            channels=1,
            image_size=SIZE,
            augment=AugmentSpec(crop_padding=1),
            class_names=[str(k) for k in range(ID_CLASSES)],
            description=self.description,
        )
