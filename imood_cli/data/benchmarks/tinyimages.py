"""The auxiliary OOD set of the CIFAR benchmarks: 300K random Tiny Images (Hendrycks et al.).

`$DATA/tinyimages80m/300K_random_images.npy` (the reference README's `tinyimages80M` spelling is
accepted too): uint8 (300000, 32, 32, 3). The file is memory-mapped; only the first
`num_ood_samples` rows are read. Only a regular file is opened (a FIFO would block forever).
"""

from __future__ import annotations

from pathlib import Path

from imood_cli.core.lazy import np, torch
from imood_cli.data.base import FileStatus, ImageSet
from imood_cli.errors import ImoodError
from imood_cli.fs.safe import NotRegularFile, is_regular_file, path_kind

URL = "https://people.eecs.berkeley.edu/~hendrycks/300K_random_images.npy"
FILENAME = "300K_random_images.npy"
FOLDERS = ("tinyimages80m", "tinyimages80M")
ROWS = 300_000
ROW_SHAPE = (32, 32, 3)
DEFAULT_SAMPLES = 30_000
SET_NAME = "tinyimages-300k"


def tinyimages_path(root: Path) -> Path:
    """The file that exists (either folder spelling), else where it should go."""
    for folder in FOLDERS:
        p = Path(root) / folder / FILENAME
        if p.exists():
            return p
    return Path(root) / FOLDERS[0] / FILENAME


def how_to_get(root: Path) -> str:
    return f"download {URL} into {tinyimages_path(root).parent}/"


def present(root: Path) -> bool:
    return is_regular_file(tinyimages_path(root))


def status(root: Path) -> FileStatus:
    path = tinyimages_path(root)
    return FileStatus("auxiliary OOD: 300K random images (training only)", path, present(root), how_to_get(root),
                      required=False)


def missing_text(root: Path) -> str | None:
    path = tinyimages_path(root)
    return None if present(root) else f"the 300K random images {path} ({how_to_get(root)})"


def open_300k(path: Path) -> np.memmap:
    """The whole file, memory-mapped read-only, after checking its header against the 300K layout."""
    path = Path(path)
    kind = path_kind(path)
    if kind is not None and kind != "a regular file":
        raise NotRegularFile(path, kind, "auxiliary OOD file")  # a FIFO would block np.load forever
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ImoodError(f"auxiliary OOD file not found: {path} (download {URL})") from None
    except (ValueError, OSError) as exc:
        raise ImoodError(f"{path} is not a readable .npy of the 300K random images ({str(exc).splitlines()[0]}): "
                         f"the download is truncated or damaged; download it again from {URL}") from None
    if not isinstance(arr, np.memmap):
        raise ImoodError(f"{path}: not a plain .npy array")
    if arr.dtype != np.uint8 or arr.ndim != 4 or tuple(arr.shape[1:]) != ROW_SHAPE:
        raise ImoodError(f"{path}: expected uint8 images of shape (N, 32, 32, 3), found {arr.dtype} {tuple(arr.shape)}")
    return arr


def load_tinyimages(root: Path, num_samples: int | None = None, path: Path | None = None) -> ImageSet:
    """The first `num_samples` images (default 30,000) as uint8 [N, 3, 32, 32], labels -1."""
    n = DEFAULT_SAMPLES if num_samples is None else int(num_samples)
    if n < 0:
        raise ImoodError(f"--num_ood_samples must be >= 0, got {n}")
    path = path or tinyimages_path(root)
    arr = open_300k(path)
    if n > arr.shape[0]:
        raise ImoodError(f"{path} holds {arr.shape[0]:,} images, fewer than the {n:,} asked for (--num_ood_samples)")
    images = torch.from_numpy(np.array(arr[:n].transpose(0, 3, 1, 2), order="C"))  # a copy: the map stays read-only
    return ImageSet(SET_NAME, torch.full((n,), -1, dtype=torch.long), images)
