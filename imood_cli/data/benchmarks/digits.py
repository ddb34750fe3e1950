"""`digits`: the embedded offline benchmark, built from data that ships inside scikit-learn.

ID: handwritten digits 0-5 (8×8 grayscale), each class split 2/3 train and 1/3 test with a fixed
seed; the train split is made long-tailed with the CIFAR-LT rule. Auxiliary OOD: 1,500 patches of the
`china.jpg` sample photo and 1,500 synthetic pen strokes (random curves, drawn like handwriting that is
no digit), alternating, so any first N of them hold both kinds: outliers from photos alone teach a
discriminator "photo vs digit" and leave it at chance on the held-out digits. OOD test sets: the
held-out digits 6-9 (near-OOD), patches of `flower.jpg` (far-OOD), and synthetic noise (uniform noise and
Gaussian blobs).

`imood data prepare digits` stores what takes time to build (the scaled digits and their labels, the
photo patches and the pen strokes, uint8, about 350 KB) in DATA/digits/digits-arrays.npz and records its
sha256 in manifest.json; `load` then reads that file and never imports scikit-learn. Without the file the
arrays are built in memory as before; both ways give the same pixels. The stored file is checked
like any input (sha256, keys, dtypes, shapes, label range): one that fails is an error naming it.
"""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache
from pathlib import Path

from imood_cli.core.lazy import np, torch
from imood_cli.data.base import Benchmark, FileStatus, ImageSet
from imood_cli.data.manifest import read_recorded_npz, write_manifest
from imood_cli.data.pipeline.augment_spec import AugmentSpec
from imood_cli.data.pipeline.longtail import longtail_counts, longtail_indices
from imood_cli.errors import ImoodError
from imood_cli.fs.atomic import atomic_write_bytes
from imood_cli.fs.safe import path_kind

SIZE = 8
ID_CLASSES = 6
SEED = 0
NUM_PATCHES = 1500  # china.jpg patches in the auxiliary set
NUM_STROKES = 1500  # pen strokes in the auxiliary set
NUM_AUX = NUM_PATCHES + NUM_STROKES
NUM_FLOWER = 600
NUM_NOISE = 600
NUM_DIGITS = 1797  # sklearn's load_digits
ARRAYS_FILE = "digits-arrays.npz"
MAX_ARRAYS_BYTES = 4 << 20  # the file is about 350 KB; anything far larger is not one imood wrote
ARRAY_SHAPES = {"digits": (NUM_DIGITS, SIZE, SIZE), "targets": (NUM_DIGITS,),
                "china_patches": (NUM_PATCHES, SIZE, SIZE), "strokes": (NUM_STROKES, SIZE, SIZE),
                "flower_patches": (NUM_FLOWER, SIZE, SIZE)}


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """sklearn's digits are 0..16; scale to 0..255."""
    return np.rint(images.astype(np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)


def photo_patches(photo: np.ndarray, count: int, seed: int) -> np.ndarray:
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
    return out


def pen_strokes(count: int, seed: int, up: int = 2, points: int = 24) -> np.ndarray:
    """1-3 quadratic Bezier curves per image with a soft pen of random width, drawn on a (8·up)² canvas,
    area-averaged to 8×8 and scaled to a full 0-255 range: shapes like handwriting, digits of no class."""
    rng = np.random.default_rng(seed)
    side = SIZE * up
    pixel = np.arange(side, dtype=np.float64)[:, None]  # the canvas' row (and column) coordinates
    t = np.linspace(0.0, 1.0, points)[:, None]
    out = np.empty((count, SIZE, SIZE), dtype=np.uint8)
    for i in range(count):
        ink = np.zeros(side * side)
        for _ in range(int(rng.integers(1, 4))):
            p = rng.uniform(1, side - 1, size=(3, 2))
            curve = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
            width = rng.uniform(0.6, 1.25)
            # squared distance of every pixel (r, c) to every curve point: (r - y)² + (c - x)², rows and
            # columns apart (3× faster than per pixel pair, the same floating-point sums)
            d2 = ((pixel - curve[:, 0]) ** 2)[:, None, :] + ((pixel - curve[:, 1]) ** 2)[None, :, :]
            ink = np.maximum(ink, np.exp(-d2.min(axis=2).reshape(-1) / (2 * width * width)))
        small = ink.reshape(SIZE, up, SIZE, up).mean(axis=(1, 3))
        out[i] = np.clip(np.rint(255 * small / max(small.max(), 1e-6)), 0, 255)
    return out


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


def build_arrays() -> dict[str, np.ndarray]:
    """The arrays that need scikit-learn (scaled digits, their labels, the china and flower patches) and the
    pen strokes (numpy alone, but seconds to draw: stored with the rest). Built once per process (about
    2.5 s on two cores); each call gets its own copies, so a caller that writes into them changes no other."""
    return {key: array.copy() for key, array in _built_arrays().items()}


@lru_cache(maxsize=1)
def _built_arrays() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits, load_sample_images

    digits = load_digits()
    photos = load_sample_images()
    named = dict(zip([Path(f).name for f in photos.filenames], photos.images))
    arrays = {"digits": _to_uint8(digits.images), "targets": digits.target.astype(np.uint8),
              "china_patches": photo_patches(named["china.jpg"], NUM_PATCHES, SEED + 1),
              "strokes": pen_strokes(NUM_STROKES, SEED + 4),
              "flower_patches": photo_patches(named["flower.jpg"], NUM_FLOWER, SEED + 2)}
    for array in arrays.values():
        array.setflags(write=False)  # the cached originals: only copies leave this module
    return arrays


def arrays_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def check_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    """dtype, shape and label range of stored arrays; an ImoodError naming `path` when one is off."""
    if set(arrays) != set(ARRAY_SHAPES):
        raise ImoodError(f"{path}: expected the arrays {', '.join(sorted(ARRAY_SHAPES))}, found "
                         f"{', '.join(sorted(arrays)) or 'none'}; delete it and run `imood data prepare digits`")
    for key, shape in ARRAY_SHAPES.items():
        a = arrays[key]
        if a.dtype != np.uint8 or a.shape != shape:
            raise ImoodError(f"{path}: {key} should be uint8 {shape}, found {a.dtype} {a.shape}; delete it and run "
                             "`imood data prepare digits`")
    if int(arrays["targets"].max()) > 9:
        raise ImoodError(f"{path}: targets outside 0..9; delete it and run `imood data prepare digits`")


def read_arrays(folder: Path) -> tuple[dict[str, np.ndarray], str] | None:
    """(the stored arrays of DATA/digits/, their file's sha256), checked against manifest.json; None
    when there is no file."""
    path = Path(folder) / ARRAYS_FILE
    if path_kind(path) is None:
        return None
    redo = "delete it (imood builds the arrays from scikit-learn) or run `imood data prepare digits` after deleting it"
    arrays, expected = read_recorded_npz(folder, ARRAYS_FILE, "digits arrays", MAX_ARRAYS_BYTES, redo)
    check_arrays(arrays, path)
    return arrays, expected


class Digits:
    name = "digits"
    description = ("embedded offline benchmark: sklearn digits 0-5 long-tailed vs digits 6-9, photo patches, noise; "
                   "aux OOD: photo patches and pen strokes")
    default_imbalance_ratio = 0.1

    def status(self, root: Path) -> list[FileStatus]:
        path = Path(root) / self.name / ARRAYS_FILE
        detail = (f"stored in {path}" if path_kind(path) is not None
                  else "built from scikit-learn at each load (`imood data prepare digits` stores them)")
        return [FileStatus("sklearn digits and sample images", Path("(inside scikit-learn)"), True,
                           "ships with scikit-learn; nothing to download", detail)]

    def prepare(self, root: Path, imbalance_ratio: float | None = None, num_ood_samples: int | None = None,
                **_) -> dict:
        """Store the arrays under DATA/digits/ (unless a checked copy is there) and write the manifest.

        The manifest, with the arrays' sha256, is written first: cut short between the two writes,
        `load` finds no arrays and builds them from scikit-learn, and the next `prepare` stores them.
        """
        folder = Path(root) / self.name
        stored = read_arrays(folder)
        if stored is None:
            arrays = build_arrays()
            raw = arrays_bytes(arrays)
            sha = hashlib.sha256(raw).hexdigest()
        else:
            (arrays, sha), raw = stored, None
        ratio = self.default_imbalance_ratio if imbalance_ratio is None else imbalance_ratio
        bench = self._benchmark(arrays, ratio, num_ood_samples, ood_tests=True)
        manifest = write_manifest(folder, bench, source="sklearn.datasets (load_digits, load_sample_images)",
                                  options={"imbalance_ratio": ratio, "seed": SEED, "verified": True},
                                  extra={"arrays": {"file": ARRAYS_FILE, "sha256": sha}})
        if raw is not None:
            try:
                atomic_write_bytes(folder / ARRAYS_FILE, raw)
            except OSError as exc:
                raise ImoodError(f"cannot write {folder / ARRAYS_FILE}: {exc.strerror or exc}") from None
        return manifest

    def load(self, root: Path | None = None, imbalance_ratio: float | None = None, num_ood_samples: int | None = None,
             ood_tests: bool = True, **_) -> Benchmark:
        """The benchmark, from DATA/digits/digits-arrays.npz when `prepare` stored it (checked), else
        built from scikit-learn. num_ood_samples: None for all 3,000 patches, 0 for none."""
        stored = read_arrays(Path(root) / self.name) if root is not None else None
        arrays = stored[0] if stored is not None else build_arrays()
        ratio = self.default_imbalance_ratio if imbalance_ratio is None else imbalance_ratio
        return self._benchmark(arrays, ratio, num_ood_samples, ood_tests)

    def _benchmark(self, arrays: dict[str, np.ndarray], ratio: float, num_ood_samples: int | None,
                   ood_tests: bool) -> Benchmark:
        if num_ood_samples is not None and not 0 <= num_ood_samples <= NUM_AUX:
            raise ImoodError(f"--num_ood_samples for digits must be in 0..{NUM_AUX:,}, got {num_ood_samples}")
        images = torch.from_numpy(arrays["digits"]).unsqueeze(1)
        labels = torch.from_numpy(arrays["targets"].astype(np.int64))
        is_id = (labels < ID_CLASSES).numpy()
        id_idx = np.nonzero(is_id)[0]
        train_rel, test_rel = split_train_test(labels.numpy()[id_idx], ID_CLASSES, SEED)
        train_idx, test_idx = torch.from_numpy(id_idx[train_rel]), torch.from_numpy(id_idx[test_rel])
        train_labels = labels[train_idx]
        n_max = int(torch.bincount(train_labels, minlength=ID_CLASSES).min())
        counts = longtail_counts(n_max, ID_CLASSES, ratio)
        keep = train_idx[longtail_indices(train_labels, counts)]
        minus = lambda n: torch.full((n,), -1, dtype=torch.long)
        sets = {}
        if ood_tests:
            ood_digits = torch.from_numpy(np.nonzero(~is_id)[0])
            sets = {
                "digits-6-9": ImageSet("digits-6-9", minus(len(ood_digits)), images[ood_digits]),
                "flower-patches": ImageSet("flower-patches", minus(NUM_FLOWER),
                                           torch.from_numpy(arrays["flower_patches"]).unsqueeze(1)),
                "noise": ImageSet("noise", minus(NUM_NOISE), noise_images(NUM_NOISE, SEED + 3)),
            }
        n_aux = NUM_AUX if num_ood_samples is None else num_ood_samples
        aux = None
        if n_aux:  # patches and strokes alternate, so every prefix holds both kinds
            both = np.stack([arrays["china_patches"], arrays["strokes"]], axis=1).reshape(NUM_AUX, SIZE, SIZE)
            aux = ImageSet("patches-and-strokes", minus(n_aux), torch.from_numpy(both[:n_aux].copy()).unsqueeze(1))
        return Benchmark(
            name=self.name,
            num_classes=ID_CLASSES,
            class_counts=counts,
            train=ImageSet("digits-0-5-train-lt", labels[keep], images[keep]),
            test=ImageSet("digits-0-5-test", labels[test_idx], images[test_idx]),
            ood_tests=sets,
            aux_ood=aux,
            channels=1,
            image_size=SIZE,
            augment=AugmentSpec(crop_padding=1),
            class_names=[str(k) for k in range(ID_CLASSES)],
            description=self.description,
        )
