"""Folders of images as extra OOD test sets (data/folder.py, `imood score --ood-dir`)."""

import numpy as np
import pytest
import torch
from fixtures_data import random_png, solid_png
from PIL import Image

from imood_cli.data.pipeline.folder import load_ood_folder
from imood_cli.errors import ImoodError


def test_every_image_at_any_depth_resized_in_sorted_order(tmp_path):
    folder = tmp_path / "my-ood"
    rng = np.random.default_rng(0)
    a = random_png(folder / "b" / "deep" / "x.png", rng)  # 32×32: resizing to 32 keeps it
    solid_png(folder / "a.png", (9, 99, 199), size=(70, 50))
    Image.new("RGB", (16, 16), (40, 50, 60)).save(folder / "b" / "c.JPG", quality=100)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"ignored")
    s = load_ood_folder(folder, 32, 3)
    assert s.name == "my-ood" and s.labels.tolist() == [-1, -1, -1]
    assert s.images.dtype == torch.uint8 and tuple(s.images.shape) == (3, 3, 32, 32)
    # sorted paths: a.png, b/c.JPG, b/deep/x.png
    assert s.images[0, :, 10, 10].tolist() == [9, 99, 199]
    assert np.abs(s.images[1, :, 5, 5].numpy().astype(int) - [40, 50, 60]).max() <= 2  # JPEG
    assert np.array_equal(s.images[2].numpy(), a)


def test_grayscale_conversion_uses_itu_luma(tmp_path):
    folder = tmp_path / "gray"
    solid_png(folder / "rgb.png", (200, 100, 50), size=(12, 12))
    solid_png(folder / "rgba.png", (0, 255, 0, 10), size=(12, 12), mode="RGBA")
    s = load_ood_folder(folder, 8, 1)
    assert tuple(s.images.shape) == (2, 1, 8, 8)
    luma = lambda r, g, b: r * 0.299 + g * 0.587 + b * 0.114
    assert abs(int(s.images[0, 0, 3, 3]) - luma(200, 100, 50)) <= 1
    assert abs(int(s.images[1, 0, 0, 0]) - luma(0, 255, 0)) <= 1


def test_empty_and_broken_folders(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.md").write_text("x")
    with pytest.raises(ImoodError, match="holds no image files"):
        load_ood_folder(tmp_path / "empty", 32, 3)
    with pytest.raises(ImoodError, match="not a folder"):
        load_ood_folder(tmp_path / "nope", 32, 3)
    broken = tmp_path / "broken"
    solid_png(broken / "good.png", (1, 2, 3))
    for i in range(5):
        (broken / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff" + bytes(20))
    with pytest.raises(ImoodError) as e:
        load_ood_folder(broken, 32, 3)
    msg = str(e.value)
    assert "5 of 6 images could not be read" in msg and "bad0.jpg" in msg and "and 2 more" in msg
    assert "\n" not in msg


def test_large_images_stay_on_disk_with_the_test_transform(tmp_path):
    folder = tmp_path / "big"
    solid_png(folder / "x.png", (5, 6, 7), size=(300, 260))
    s = load_ood_folder(folder, 224, 3)
    assert s.images is None and s.files.paths == [str(folder / "x.png")] and s.files.mode == "center"
    (batch,) = list(s.files.batches(8))
    assert tuple(batch.shape) == (1, 3, 224, 224) and batch[0, :, 0, 0].tolist() == [5, 6, 7]


def test_score_with_ood_dir_end_to_end(tmp_path, cli):
    """`imood score RUN --ood-dir FOLDER` on an (untrained) digits model: the folder becomes an OOD set."""
    from imood_cli.data.benchmarks.digits import Digits
    from imood_cli.engine.runs.checkpoint import load_tensors, save_tensors
    from imood_cli.engine.training.config import resolve_config
    from imood_cli.engine.training.setup import model_metadata
    from imood_cli.models.imood_model import Architecture, ImOODModel

    cfg = resolve_config(dict(dataset="digits", save_root=str(tmp_path), name="r"))
    counts = Digits().load(None).class_counts
    arch = Architecture(cfg.model, 6, 0, 1, cfg.cifar_stem)
    torch.manual_seed(0)
    run = tmp_path / "r"
    run.mkdir()
    save_tensors(run / "model.safetensors", ImOODModel(arch).state_dict(), model_metadata(cfg, arch, counts, 0))
    folder = tmp_path / "scribbles"
    rng = np.random.default_rng(1)
    for i in range(7):
        random_png(folder / f"s{i}.png", rng, size=(20, 24))
    code, out, err = cli(["score", run, "-m", "msp", "--device", "cpu", "--ood-dir", folder])
    assert code == 0, err
    tensors, meta = load_tensors(run / "scores" / "msp.safetensors")
    assert tensors["ood.scribbles.score"].shape == (7,)
    assert "scribbles" in meta["ood_sets"] and "digits-6-9" in meta["ood_sets"]


# ---------------------------------------------------------------- auxiliary OOD from any folder (--aux-ood-dir)

def test_load_image_folder_names_limits_and_matches_the_ood_dir_reader(tmp_path):
    from imood_cli.data.pipeline.folder import load_image_folder

    folder = tmp_path / "aux"
    rng = np.random.default_rng(4)
    pixels = {name: random_png(folder / name, rng) for name in ("b/2.png", "a.png", "b/1.png", "c/0.png")}
    full = load_image_folder(folder, 32, 3)
    assert full.name == "aux" and full.labels.tolist() == [-1] * 4
    order = ["a.png", "b/1.png", "b/2.png", "c/0.png"]  # the folder's own files, then subfolders in name order
    assert all(np.array_equal(full.images[i].numpy(), pixels[n]) for i, n in enumerate(order))
    assert np.array_equal(load_ood_folder(folder, 32, 3).images.numpy(), full.images.numpy())
    first = load_image_folder(folder, 32, 3, name="extra", limit=2)
    assert first.name == "extra" and torch.equal(first.images, full.images[:2])
    with pytest.raises(ImoodError, match=r"--aux-ood-dir .* holds 4 images, fewer than the 5 asked for"):
        load_image_folder(folder, 32, 3, limit=5, option="--aux-ood-dir")
    with pytest.raises(ImoodError, match="whole number >= 1"):
        load_image_folder(folder, 32, 3, limit=0)
    big = load_image_folder(folder, 224, 3, limit=3)  # ImageNet sizes stay on disk, for the training loader
    assert big.images is None and big.files.paths == [str(folder / n) for n in order[:3]]
