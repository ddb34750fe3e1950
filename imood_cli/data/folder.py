"""Any folder of images as an extra OOD test set (`imood score --ood-dir FOLDER`).

Every image file under the folder (any depth, sorted by path) is an OOD image (label -1); the set
is named after the folder. Small benchmarks (image size <= 64, e.g. CIFAR 32×32) decode the images
into memory, resized to size×size and converted to the benchmark's channels, and report images that
cannot be decoded up front. For larger image sizes (ImageNet's 224) the set stays file-backed and
gets the benchmark's test transform (resize 256, center crop 224) when it is scored.
"""

from __future__ import annotations

from pathlib import Path

import torch

from imood_cli.data.base import ImageSet
from imood_cli.data.files import decode_many, failed_message, file_image_set, list_images
from imood_cli.errors import ImoodError

IN_MEMORY_MAX_SIZE = 64


def load_ood_folder(folder: Path, size: int, channels: int, in_memory: bool | None = None) -> ImageSet:
    folder = Path(folder)
    if not folder.is_dir():
        raise ImoodError(f"--ood-dir {folder}: not a folder")
    if channels not in (1, 3):
        raise ImoodError(f"--ood-dir {folder}: cannot convert images to {channels} channels (1 or 3)")
    name = folder.resolve().name or str(folder)
    paths = list_images(folder)
    if not paths:
        raise ImoodError(f"--ood-dir {folder} holds no image files (looked for "
                         ".jpg .jpeg .png .bmp .gif .webp .tif .tiff .ppm .pgm at any depth)")
    labels = torch.full((len(paths),), -1, dtype=torch.long)
    if in_memory is None:
        in_memory = size <= IN_MEMORY_MAX_SIZE
    if not in_memory:
        return file_image_set(name, paths, labels, size, mode="center", channels=channels)
    images, failed = decode_many(paths, size, channels)
    if failed:
        raise ImoodError(failed_message(f"--ood-dir {folder}", failed, len(paths)) + "; remove or fix them")
    return ImageSet(name, labels, torch.from_numpy(images))
