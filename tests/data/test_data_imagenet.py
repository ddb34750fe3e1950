"""ImageNet-LT from image files: split files, file-backed sets, test batches and FileEpoch."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from fixtures_data import write_imagenet
from PIL import Image

from imood_cli.data.base import ImageSet
from imood_cli.data.benchmarks.imagenet_lt import IMAGENET_AUGMENT, ImageNetLT
from imood_cli.data.pipeline.batches import InMemoryEpoch
from imood_cli.data.pipeline.files import FileEpoch, FileImages, file_image_set, random_resized_crop_params
from imood_cli.errors import ImoodError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_data")
    info = write_imagenet(root, train_counts=(5, 3, 2), test_per_class=2, extra=6, ood=4)
    return root, info


def test_load_builds_file_backed_sets_from_the_split_files(tree):
    root, info = tree
    b = ImageNetLT().load(root, num_ood_samples=4)
    assert b.num_classes == 3 and b.class_counts == [5, 3, 2]
    assert b.train.images is None and len(b.train.files) == 10
    assert b.train.files.paths[0] == str(root / "imagenet" / info["train_lines"][0].split()[0])
    assert b.train.labels.tolist() == [0] * 5 + [1] * 3 + [2] * 2
    assert b.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert b.class_names == info["wnids"]
    assert list(b.ood_tests) == ["ood_test_1k"] and b.ood_tests["ood_test_1k"].labels.tolist() == [-1] * 4
    # aux OOD: the first 4 files of extra_1k in sorted path order
    extra = sorted((root / "imagenet" / "extra_1k").rglob("*.JPEG"))
    assert b.aux_ood.files.paths == [str(p) for p in extra[:4]]
    assert b.image_size == 224 and b.channels == 3
    assert b.augment == IMAGENET_AUGMENT and b.augment.mean == (0.485, 0.456, 0.406)
    assert b.augment.crop_padding == 0 and b.augment.flip is False
    assert ImageNetLT().load(root, num_ood_samples=0).aux_ood is None
    assert len(ImageNetLT().load(root).aux_ood) == 6  # default: all of extra_1k
    with pytest.raises(ImoodError, match="6 images, fewer than the 7"):
        ImageNetLT().load(root, num_ood_samples=7)


def test_subset_keeps_files(tree):
    root, _ = tree
    b = ImageNetLT().load(root, num_ood_samples=0)
    sub = b.train.subset(torch.tensor([9, 0]))
    assert sub.files.paths == [b.train.files.paths[9], b.train.files.paths[0]] and sub.labels.tolist() == [2, 0]


def test_test_batches_resize_256_center_crop_224(tmp_path):
    # left half red, right half blue, 512×256: the shorter side is already 256; the center crop
    # takes columns 144..367, so the crop's column 111 is red and column 112 is blue.
    a = np.zeros((256, 512, 3), dtype=np.uint8)
    a[:, :256] = (255, 0, 0)
    a[:, 256:] = (0, 0, 255)
    Image.fromarray(a).save(tmp_path / "halves.png")
    small = np.full((20, 30, 3), (10, 200, 30), dtype=np.uint8)  # upscaled: a solid color stays solid
    Image.fromarray(small).save(tmp_path / "small.png")
    f = FileImages([tmp_path / "halves.png", tmp_path / "small.png"], size=224)
    (batch,) = list(f.batches(4))
    assert batch.dtype == torch.uint8 and tuple(batch.shape) == (2, 3, 224, 224)
    assert batch[0, :, 100, 111].tolist() == [255, 0, 0] and batch[0, :, 100, 112].tolist() == [0, 0, 255]
    assert batch[1, :, 7, 200].tolist() == [10, 200, 30]
    expected = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])(Image.open(tmp_path / "halves.png"))
    assert torch.equal(batch[0], expected)


def test_test_batches_with_workers_equal_without(tree):
    root, _ = tree
    files = ImageNetLT().load(root, num_ood_samples=0).test.files
    serial = torch.cat(list(files.batches(4, workers=0)))
    parallel = torch.cat(list(files.batches(4, workers=2)))
    assert tuple(serial.shape) == (6, 3, 224, 224) and torch.equal(serial, parallel)


def test_unreadable_test_image_names_the_file(tmp_path):
    (tmp_path / "bad.JPEG").write_bytes(b"\xff\xd8garbage")
    Image.new("RGB", (10, 10)).save(tmp_path / "ok.png")
    f = FileImages([tmp_path / "ok.png", tmp_path / "bad.JPEG"], size=32, name="ood_test_1k")
    with pytest.raises(ImoodError, match=r"ood_test_1k: 1 of 2 images could not be read: .*bad\.JPEG"):
        list(f.batches(2))


def test_random_resized_crop_params_equal_torchvisions():
    img = Image.new("RGB", (57, 41))
    for seed in range(20):
        torch.manual_seed(seed)
        theirs = T.RandomResizedCrop.get_params(img, [0.2, 1.0], [3 / 4, 4 / 3])
        ours = random_resized_crop_params(57, 41, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(seed))
        assert ours == theirs


def test_file_epoch_follows_in_memory_epoch_order(tree):
    root, _ = tree
    b = ImageNetLT().load(root, num_ood_samples=6)
    fake = ImageSet("x", b.train.labels, torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1))
    fake_aux = ImageSet("a", b.aux_ood.labels, torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1))
    mem = InMemoryEpoch(fake, fake_aux, 4, 3, seed=5, epoch=2)
    files = FileEpoch(b.train, b.aux_ood, 4, 3, seed=5, epoch=2, size=32)
    assert len(files) == len(mem) == 2
    for step in range(len(mem)):
        fb, mb = files.batch(step), mem.batch(step)
        assert torch.equal(fb.labels, mb.labels)
        assert fb.view1.dtype == torch.uint8 and tuple(fb.view1.shape) == (4, 3, 32, 32)
        assert tuple(fb.view2.shape) == (4, 3, 32, 32) and tuple(fb.ood.shape) == (3, 3, 32, 32)
        assert not torch.equal(fb.view1, fb.view2)  # two independent crops


def test_file_epoch_is_deterministic_across_workers_and_resumes_mid_epoch(tree):
    root, _ = tree
    b = ImageNetLT().load(root, num_ood_samples=6)
    a = FileEpoch(b.train, b.aux_ood, 3, 2, seed=1, epoch=0, size=48)
    w = FileEpoch(b.train, b.aux_ood, 3, 2, seed=1, epoch=0, size=48, workers=2)
    seq_a = [a.batch(s) for s in range(len(a))]
    seq_w = [w.batch(s) for s in range(len(w))]
    w.close()
    resumed = FileEpoch(b.train, b.aux_ood, 3, 2, seed=1, epoch=0, size=48).batch(2)
    for x, y in zip(seq_a, seq_w):
        assert torch.equal(x.view1, y.view1) and torch.equal(x.view2, y.view2) and torch.equal(x.ood, y.ood)
    assert torch.equal(resumed.view1, seq_a[2].view1) and torch.equal(resumed.ood, seq_a[2].ood)
    other_epoch = FileEpoch(b.train, b.aux_ood, 3, 2, seed=1, epoch=1, size=48).batch(0)
    assert not torch.equal(other_epoch.view1, seq_a[0].view1)
    # going back restarts the loader at that step
    assert torch.equal(a.batch(0).view2, seq_a[0].view2)


def test_file_epoch_ranks_split_the_images(tree):
    root, _ = tree
    b = ImageNetLT().load(root, num_ood_samples=0)
    tagged = ImageSet(b.train.name, torch.arange(10), None, b.train.files)  # labels = image index
    seen = []
    for rank in (0, 1):
        e = FileEpoch(tagged, None, 2, 0, seed=3, epoch=0, rank=rank, world_size=2, size=16)
        assert len(e) == 2
        for s in range(len(e)):
            bt = e.batch(s)
            assert bt.ood.shape[0] == 0
            seen += bt.labels.tolist()
    assert len(seen) == 8 and len(set(seen)) == 8


def test_file_epoch_reports_an_unreadable_training_image(tmp_path):
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"broken")
    s = file_image_set("train", [tmp_path / "a.png", tmp_path / "b.png"], [0, 1], size=16)
    e = FileEpoch(s, None, 2, 0, seed=0, epoch=0)
    with pytest.raises(ImoodError, match=r"1 training image\(s\) could not be read: .*b\.png"):
        e.batch(0)


def test_split_files_in_imagenet_lt_folder_and_verification(tmp_path):
    info = write_imagenet(tmp_path, train_counts=(2, 1), test_per_class=1, extra=1, ood=1, split_dir="ImageNet_LT")
    b = ImageNetLT().load(tmp_path)
    assert b.class_counts == [2, 1]
    missing = info["base"] / info["test_lines"][1].split()[0]
    missing.unlink()
    with pytest.raises(ImoodError, match=r"1 of 2 listed images are missing .*--no-verify") as e:
        ImageNetLT().load(tmp_path)
    assert str(missing) in str(e.value)
    assert len(ImageNetLT().load(tmp_path, verify=False).test) == 2


def test_missing_pieces_and_bad_splits(tmp_path):
    with pytest.raises(ImoodError) as e:
        ImageNetLT().load(tmp_path, num_ood_samples=0)
    msg = str(e.value)
    assert "ImageNet_LT_train.txt, ImageNet_LT_test.txt" in msg and "train/ and val/" in msg
    assert "ood_test_1k/" in msg and "extra_1k" not in msg and "\n" not in msg
    assert [s.present for s in ImageNetLT().status(tmp_path)] == [False] * 6

    write_imagenet(tmp_path, train_counts=(1, 1), test_per_class=1, extra=1, ood=1)
    split = tmp_path / "imagenet" / "ImageNet_LT_train.txt"
    split.write_text("train/a.JPEG 0\ntrain/b.JPEG 2\n")
    with pytest.raises(ImoodError, match="class 1 has no training image"):
        ImageNetLT().load(tmp_path, verify=False)
    split.write_text("train/a.JPEG zero\n")
    with pytest.raises(ImoodError, match=r"ImageNet_LT_train.txt:1: expected '<relative path> <label>'"):
        ImageNetLT().load(tmp_path, verify=False)
    split.write_text("train/a.JPEG 0\n")
    with pytest.raises(ImoodError, match="label 1 is not among the 1 train classes"):
        ImageNetLT().load(tmp_path, verify=False)
    for p in (tmp_path / "imagenet" / "ood_test_1k").rglob("*.JPEG"):
        p.unlink()
    (tmp_path / "imagenet" / "ImageNet_LT_test.txt").write_text("val/x.JPEG 0\n")
    with pytest.raises(ImoodError, match="ood_test_1k holds no image files"):
        ImageNetLT().load(tmp_path, verify=False)


def test_prepare_writes_a_manifest(tree, tmp_path):
    root, _ = tree
    import json

    m = ImageNetLT().prepare(root, num_ood_samples=2)
    on_disk = json.loads((root / "imagenet" / "manifest.json").read_text())
    assert on_disk["class_counts"] == [5, 3, 2] == m["class_counts"]
    assert on_disk["aux_ood"]["size"] == 2 and on_disk["ood_tests"]["ood_test_1k"]["size"] == 4
    assert on_disk["options"]["verified"] is True
