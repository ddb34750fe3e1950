"""Any folder of images as an OOD set: extra OOD test sets (`imood score --ood-dir FOLDER`) and
auxiliary OOD training data (`imood train --aux-ood-dir FOLDER`).

Every image file under the folder (any depth, in the order of a sorted walk; see
`data.images.list_images` for links, loops and non-regular files) is an OOD image (label -1); the
set is named after the folder. Small benchmarks (image size <= 64, e.g. CIFAR 32×32) decode the
images into memory, resized to size×size and converted to the benchmark's channels, and report
images that cannot be decoded up front. For larger image sizes (ImageNet's 224) the set stays
file-backed: scored with the benchmark's test transform (resize 256, center crop 224), or cropped by
the training loader when it is auxiliary OOD.
"""

from __future__ import annotations

from pathlib import Path

from imood_cli.core.lazy import torch
from imood_cli.data.base import ImageSet
from imood_cli.data.pipeline.images import IMAGE_EXTENSIONS, decode_many, failed_message, list_images
from imood_cli.errors import ImoodError

IN_MEMORY_MAX_SIZE = 64


def load_image_folder(folder: Path, size: int, channels: int, name: str | None = None, limit: int | None = None,
                      *, in_memory: bool | None = None, option: str = "image folder") -> ImageSet:
    """The images under `folder` as one OOD set (labels -1).

    name: the set's name (default: the folder's). limit: only the first `limit` images of the
    sorted walk (an error if there are fewer). in_memory: decode now (default for size <= 64) or
    keep the files. option: how error messages name the folder (e.g. "--aux-ood-dir").
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImoodError(f"{option} {folder}: not a folder")
    if channels not in (1, 3):
        raise ImoodError(f"{option} {folder}: cannot convert images to {channels} channels (1 or 3)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ImoodError(f"{option} {folder}: the number of images to use must be a whole number >= 1, got {limit!r}")
    name = name or folder.resolve().name or str(folder)
    paths = list_images(folder, option)
    if not paths:
        raise ImoodError(f"{option} {folder} holds no image files (looked for "
                         f"{' '.join(sorted(IMAGE_EXTENSIONS))} at any depth)")
    if limit is not None:
        if limit > len(paths):
            raise ImoodError(f"{option} {folder} holds {len(paths):,} images, fewer than the {limit:,} asked for")
        paths = paths[:limit]
    labels = torch.full((len(paths),), -1, dtype=torch.long)
    if in_memory is None:
        in_memory = size <= IN_MEMORY_MAX_SIZE
    if not in_memory:
        from imood_cli.data.pipeline.files import file_image_set

        return file_image_set(name, paths, labels, size, mode="center", channels=channels)
    images, failed = decode_many(paths, size, channels)
    if failed:
        raise ImoodError(failed_message(f"{option} {folder}", failed, len(paths)) + "; remove or fix them")
    return ImageSet(name, labels, torch.from_numpy(images))


def load_ood_folder(folder: Path, size: int, channels: int, in_memory: bool | None = None) -> ImageSet:
    """An extra OOD test set for `imood score --ood-dir FOLDER`."""
    return load_image_folder(folder, size, channels, in_memory=in_memory, option="--ood-dir")
