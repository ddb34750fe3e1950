"""Writers of tiny datasets in the exact on-disk formats of the real benchmarks (for tmp_path)."""

from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


class Py2StylePickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING opcodes) and numpy's _reconstruct under its Python 2
    module name, as the published CIFAR batches (made with Python 2's cPickle) do."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dump_batch(path: Path, obj, py2: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if py2:
        buf = io.BytesIO()
        Py2StylePickler(buf, protocol=2).dump(obj)
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))


def cifar_arrays(per_class: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images [N, 3, 32, 32] and labels in a shuffled class order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(per_class)), per_class))
    images = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    return images, labels


def write_cifar(root: Path, which: str = "cifar10", per_class: int | list[int] = 12, test_per_class: int = 2,
                seed: int = 0, py2: bool = True) -> dict:
    """CIFAR python batches under root; returns the train/test arrays in file order."""
    k = 10 if which == "cifar10" else 100
    per = [per_class] * k if isinstance(per_class, int) else list(per_class)
    train_x, train_y = cifar_arrays(per, seed)
    test_x, test_y = cifar_arrays([test_per_class] * k, seed + 1)
    folder = Path(root) / ("cifar-10-batches-py" if which == "cifar10" else "cifar-100-python")
    names = [f"class{i}".encode() for i in range(k)]
    if which == "cifar10":
        chunks = np.array_split(np.arange(len(train_y)), 5)
        for fname, idx in zip(CIFAR10_TRAIN, chunks):
            dump_batch(folder / fname, {b"batch_label": fname.encode(), b"labels": train_y[idx].tolist(),
                                        b"data": train_x[idx].reshape(len(idx), 3072),
                                        b"filenames": [f"{i}.png".encode() for i in idx]}, py2)
        dump_batch(folder / "test_batch", {b"batch_label": b"test", b"labels": test_y.tolist(),
                                           b"data": test_x.reshape(len(test_y), 3072)}, py2)
        dump_batch(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 10000,
                                             b"num_vis": 3072}, py2)
    else:
        for fname, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            dump_batch(folder / fname, {b"filenames": [b"x.png"] * len(y), b"batch_label": fname.encode(),
                                        b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist(),
                                        b"data": x.reshape(len(y), 3072)}, py2)
        dump_batch(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}, py2)
    return {"folder": folder, "train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def solid_png(path: Path, color, size=(32, 32), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def random_png(path: Path, rng: np.random.Generator, size=(32, 32)) -> np.ndarray:
    """A random RGB PNG of size (w, h); returns its pixels [3, h, w]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return a.transpose(2, 0, 1)


SCOOD_SETS = ("texture", "svhn", "cifar", "tin", "lsun", "places365")


def write_scood(root: Path, benchmark: str = "cifar10", per_set: int = 3, id_label: int = 2, seed: int = 0) -> dict:
    """SCOOD lists for the six sets; each has `per_set` OOD images and one image with sc_label id_label.

    Returns {set: (pixels [N, 3, 32, 32], labels)} in list order.
    """
    rng = np.random.default_rng(seed)
    base = Path(root) / "SCOOD" / "data"
    out = {}
    for name in SCOOD_SETS:
        lines, pixels, labels = [], [], []
        for i in range(per_set + 1):
            rel = f"{name}/test/{benchmark}_{i:03d}.png"
            pixels.append(random_png(base / "images" / rel, rng))
            sc = id_label if i == per_set else -1
            extra = {"sc_label": sc, "label": sc if sc >= 0 else 0}
            lines.append(f"{rel} {json.dumps(extra)}")
            labels.append(sc)
        lst = base / "imglist" / f"benchmark_{benchmark}" / f"test_{name}.txt"
        lst.parent.mkdir(parents=True, exist_ok=True)
        lst.write_text("\n".join(lines) + "\n")
        out[name] = (np.stack(pixels), np.array(labels))
    return out


def write_300k(root: Path, rows: int = 40, folder: str = "tinyimages80m", seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).integers(0, 256, size=(rows, 32, 32, 3), dtype=np.uint8)
    path = Path(root) / folder / "300K_random_images.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, a)
    return a


def write_cifar_benchmark(root: Path, which: str = "cifar10", per_class: int | list[int] = 12, aux_rows: int = 40,
                          py2: bool = True) -> dict:
    return {"cifar": write_cifar(root, which, per_class, py2=py2), "scood": write_scood(root, which),
            "aux": write_300k(root, aux_rows)}


def jpeg(path: Path, rng: np.random.Generator, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(a).save(path, quality=90)


def write_imagenet(root: Path, train_counts=(5, 3, 2), test_per_class: int = 2, extra: int = 6, ood: int = 4,
                   split_dir: str = "imagenet", seed: int = 0) -> dict:
    """A tiny ImageNet-LT tree: OLTR split files over train/ and val/, extra_1k/ and ood_test_1k/ folders."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "imagenet"
    wnids = [f"n0{1000000 + k}" for k in range(len(train_counts))]
    train_lines, test_lines = [], []
    for k, (wnid, n) in enumerate(zip(wnids, train_counts)):
        for i in range(n):
            rel = f"train/{wnid}/{wnid}_{i}.JPEG"
            jpeg(base / rel, rng)
            train_lines.append(f"{rel} {k}")
        for i in range(test_per_class):
            rel = f"val/{wnid}/ILSVRC2012_val_{k:03d}{i:02d}.JPEG"
            jpeg(base / rel, rng)
            test_lines.append(f"{rel} {k}")
    split = Path(root) / split_dir
    split.mkdir(parents=True, exist_ok=True)
    (split / "ImageNet_LT_train.txt").write_text("\n".join(train_lines) + "\n")
    (split / "ImageNet_LT_test.txt").write_text("\n".join(test_lines) + "\n")
    for folder, count in (("extra_1k", extra), ("ood_test_1k", ood)):
        for i in range(count):
            jpeg(base / folder / f"n09{i % 2:06d}" / f"img_{i:03d}.JPEG", rng, size=(48, 36))
    return {"base": base, "train_lines": train_lines, "test_lines": test_lines, "wnids": wnids}
