"""Folder benchmarks (data/benchmarks/folder/, `imood data prepare folder`): the user's own images as ID data."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imood_cli.data.benchmarks.folder.benchmark import split_counts
from imood_cli.data.benchmarks.folder.files import decode_bytes
from imood_cli.data.pipeline.images import decode_resized
from imood_cli.engine.benchmarks import load_benchmark
from imood_cli.engine.metrics.groups import shot_groups
from imood_cli.errors import ImoodError

TRAIN = {"cat": 12, "dog": 5, "owl": 2}
TEST = {"cat": 3, "dog": 2, "owl": 2}


def write_image(path: Path, kind: int, rng: np.random.Generator) -> None:
    """Mixed sizes (all <= 64 px) and modes: RGB, L, RGBA, palette GIF, 16-bit PNG, JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = 20 + kind * 3, 30 - kind
    if kind == 0:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path.with_suffix(".png"))
    elif kind == 1:
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").save(path.with_suffix(".png"))
    elif kind == 2:
        Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").save(path.with_suffix(".png"))
    elif kind == 3:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P").save(path.with_suffix(".gif"))
    elif kind == 4:
        Image.fromarray(np.full((h, w), 257 * 100, dtype=np.uint16)).save(path.with_suffix(".png"))  # 16-bit
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path.with_suffix(".jpg"), quality=95)


def write_tree(root: Path, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    for split, counts in (("train", TRAIN), ("test", TEST)):
        for c, n in counts.items():
            for i in range(n):
                write_image(root / split / c / f"{i:03d}", i % 6, rng)
    (root / "noise").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "noise" / f"n{i}.png")
    return {"train": root / "train", "test": root / "test", "ood": root / "noise", "data": root / "data"}


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path)


def prepare(t, cli, *extra, name="mine"):
    return cli(["data", "prepare", "folder", "--name", name, "--drp", t["data"], *extra])


def manifest_of(t, name="mine") -> dict:
    return json.loads((t["data"] / name / "manifest.json").read_text())


def one_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("imood: error: "), err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


# ---------------------------------------------------------------- prepare and load

def test_prepare_records_classes_counts_files_and_checksums(tree, cli):
    code, out, err = prepare(tree, cli, "--train", tree["train"], "--test", tree["test"], "--ood-dir", tree["ood"])
    assert code == 0, err
    assert "mine: prepared" in out and "cat 12, dog 5, owl 2" in out
    m = manifest_of(tree)
    assert m["source"] == "folder" and m["dataset"] == "mine"
    assert m["class_names"] == ["cat", "dog", "owl"] and m["class_counts"] == [12, 5, 2]
    assert m["test_class_counts"] == [3, 2, 2] and m["train_size"] == 19
    assert m["image_size"] == 32 and m["channels"] == 3  # every image <= 64 px, not all grayscale
    rec = m["folder"]
    assert rec["train"]["path"] == str(tree["train"]) and rec["test"]["path"] == str(tree["test"])
    assert rec["ood"]["noise"]["path"] == str(tree["ood"]) and m["ood_tests"]["noise"]["size"] == 4
    files = {f["path"]: f for f in rec["train"]["files"]}
    assert len(files) == 19 and files["dog/004.png"]["label"] == 1 and files["owl/001.png"]["label"] == 2
    raw = (tree["train"] / "cat" / "003.gif").read_bytes()
    assert files["cat/003.gif"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert files["cat/003.gif"]["bytes"] == len(raw)

    b = load_benchmark("mine", tree["data"])
    assert b.num_classes == 3 and b.class_counts == [12, 5, 2] and b.class_names == ["cat", "dog", "owl"]
    assert tuple(b.train.images.shape) == (19, 3, 32, 32) and b.train.labels.tolist() == [0] * 12 + [1] * 5 + [2] * 2
    assert b.test.labels.tolist() == [0, 0, 0, 1, 1, 2, 2] and list(b.ood_tests) == ["noise"]
    assert b.ood_tests["noise"].labels.tolist() == [-1] * 4 and b.aux_ood is None
    cat0 = np.asarray(Image.open(tree["train"] / "cat" / "000.png")).transpose(2, 0, 1)
    assert np.array_equal(b.train.images[0].numpy(), cat0)  # 32×32 RGB: kept as it is
    assert b.train.images[4].unique().tolist() == [100]  # 16-bit 25,700 -> 100 (PIL alone would clip to 255)
    assert b.augment.crop_padding == 4 and b.augment.flip  # CIFAR's for small color images


def test_decoding_matches_the_ood_folder_reader(tree):
    """8-bit images decode to exactly the pixels `--ood-dir` gives them (data.images.decode_resized)."""
    for path in sorted(tree["train"].rglob("*.*")):
        if Image.open(path).mode.startswith("I;16"):
            continue
        for size, channels in ((32, 3), (8, 1)):
            assert np.array_equal(decode_bytes(path.read_bytes(), size, channels),
                                  decode_resized(path, size, channels)), path


def test_large_images_default_to_224_on_disk_and_changes_are_found(tmp_path, cli):
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / c / f"{i}.jpg")
    t = {"data": tmp_path / "data"}
    code, out, err = cli(["data", "prepare", "folder", "--name", "big", "--drp", t["data"], "--train",
                          tmp_path / "train", "--test", tmp_path / "test"])
    assert code == 0, err
    assert manifest_of(t, "big")["image_size"] == 224
    b = load_benchmark("big", t["data"])
    assert b.train.images is None and b.train.files.size == 224 and b.train.files.mode == "center"
    assert b.train.files.paths[0] == str(tmp_path / "train" / "a" / "0.jpg") and b.augment.mean is not None
    f = tmp_path / "test" / "b" / "1.jpg"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    load_benchmark("big", t["data"])  # a new time alone: re-hashed, the same bytes
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size, other bytes, a new time
    f.write_bytes(bytes(data))
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 2 * 10**9))
    with pytest.raises(ImoodError, match=f"{f} \\(contents changed\\).*imood data prepare big"):
        load_benchmark("big", t["data"])
    code, out, err = cli(["data", "prepare", "folder", "--name", "small", "--drp", t["data"], "--train",
                          tmp_path / "train", "--test", tmp_path / "test", "--image-size", "16"])
    assert code == 0, err
    small = load_benchmark("small", t["data"])
    assert tuple(small.train.images.shape) == (4, 3, 16, 16)


def test_16_bit_images_on_disk_are_scaled_too(tmp_path, cli):
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(np.full((80, 100), 257 * 100, dtype=np.uint16)).save(tmp_path / split / c / "x.png")
    code, out, err = cli(["data", "prepare", "folder", "--name", "deep", "--drp", tmp_path / "data", "--train",
                          tmp_path / "train", "--test", tmp_path / "test"])
    assert code == 0, err
    b = load_benchmark("deep", tmp_path / "data")
    assert b.image_size == 224 and b.channels == 1 and b.test.files is not None
    batch = next(b.test.files.batches(4))
    assert tuple(batch.shape) == (2, 1, 224, 224) and batch.unique().tolist() == [100]


def test_grayscale_folders_get_one_channel_unless_asked(tmp_path, cli):
    for split in ("train", "test"):
        for c in ("0", "1"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("L", (8, 8), 200).save(tmp_path / split / c / "x.png")
    base = ["data", "prepare", "folder", "--drp", tmp_path / "data", "--train", tmp_path / "train", "--test",
            tmp_path / "test"]
    assert cli([*base, "--name", "g"])[0] == 0
    assert cli([*base, "--name", "c", "--channels", "3"])[0] == 0
    g, c = load_benchmark("g", tmp_path / "data"), load_benchmark("c", tmp_path / "data")
    assert g.channels == 1 and tuple(g.train.images.shape) == (2, 1, 32, 32) and not g.augment.flip
    assert c.channels == 3 and c.train.images.unique().tolist() == [200]


def test_changed_added_and_removed_files_are_noticed_and_prepare_again_records_them(tree, cli):
    assert prepare(tree, cli, "--train", tree["train"], "--test", tree["test"], "--ood-dir", tree["ood"])[0] == 0
    (tree["data"] / "mine" / "notes.txt").write_text("mine")
    victim = tree["train"] / "dog" / "000.png"
    original = victim.read_bytes()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(victim)
    code, out, err = cli(["train", "--ds", "mine", "--drp", tree["data"], "--srp", tree["data"].parent / "runs",
                          "--epochs", "1", "--device", "cpu"])
    one_error(code, err, victim, "contents changed", "imood data prepare mine")
    victim.write_bytes(original)
    load_benchmark("mine", tree["data"])  # as recorded again
    added = tree["test"] / "owl" / "new.png"
    Image.new("RGB", (9, 9)).save(added)
    with pytest.raises(ImoodError, match=f"{added} \\(added\\)"):
        load_benchmark("mine", tree["data"])
    added.unlink()
    gone = tree["ood"] / "n2.png"
    gone.unlink()
    with pytest.raises(ImoodError, match=f"{gone} \\(removed\\)"):
        load_benchmark("mine", tree["data"])
    Image.new("RGB", (9, 9)).save(tree["train"] / "owl" / "new.png")
    code, out, err = cli(["data", "prepare", "mine", "--drp", tree["data"]])  # the recorded sources
    assert code == 0, err
    m = manifest_of(tree)
    assert m["class_counts"] == [12, 5, 3] and m["ood_tests"]["noise"]["size"] == 3
    assert (tree["data"] / "mine" / "notes.txt").read_text() == "mine"  # only the manifest was replaced
    assert load_benchmark("mine", tree["data"]).class_counts == [12, 5, 3]
    tree["ood"].rename(tree["ood"].with_name("elsewhere"))  # a whole OOD folder gone: scored without it
    b = load_benchmark("mine", tree["data"])
    assert b.ood_tests == {} and str(tree["ood"]) in b.missing["noise"]


def test_list_files_with_header_names_indices_and_quoted_paths(tree, cli):
    base = tree["train"].parent
    (base / "train.csv").write_text("path,label\n" + "".join(
        f"train/{c}/{p.name},{c}\n" for c in TRAIN for p in sorted((tree["train"] / c).iterdir()))
        + '"with,comma.png",owl\n')
    Image.new("RGB", (10, 10), (5, 5, 5)).save(base / "with,comma.png")
    (base / "test.csv").write_text("".join(f"test/{c}/{p.name},{k}\n" for k, c in enumerate(TEST)
                                           for p in sorted((tree["test"] / c).iterdir())))
    code, out, err = prepare(tree, cli, "--train-list", base / "train.csv", "--test-list", base / "test.csv")
    assert code == 0, err
    m = manifest_of(tree)
    assert m["class_names"] == ["cat", "dog", "owl"] and m["class_counts"] == [12, 5, 3]
    assert m["test_class_counts"] == [3, 2, 2] and m["folder"]["train"]["path"] == str(base / "train.csv")
    assert m["folder"]["train"]["list_sha256"] == hashlib.sha256((base / "train.csv").read_bytes()).hexdigest()
    assert load_benchmark("mine", tree["data"]).train.images[-1, :, 0, 0].tolist() == [5, 5, 5]
    # indices throughout: classes 0..K-1, named by their index; a first line that is not path,label is data
    (base / "idx.csv").write_text("train/cat/000.png,1\ntrain/dog/000.png,0\n")
    code, out, err = prepare(tree, cli, "--train-list", base / "idx.csv", "--test-list", base / "idx.csv",
                             name="idx")
    assert code == 0, err
    assert manifest_of(tree, "idx")["class_names"] == ["0", "1"] and manifest_of(tree, "idx")["class_counts"] == [1, 1]
    (base / "idx.csv").write_text("train/cat/000.png,1\n")
    with pytest.raises(ImoodError, match="idx.csv.*list file changed.*imood data prepare idx"):
        load_benchmark("idx", tree["data"])


def test_imbalance_ratio_keeps_the_first_images_of_each_class(tree, cli):
    code, out, err = prepare(tree, cli, "--train", tree["train"], "--test", tree["test"], "--imbalance-ratio", "0.5")
    assert code == 0, err
    m = manifest_of(tree)
    # n_k = int(n_max · 0.5^(k/2)) with the largest n_max the classes allow: 6 would need 3 owls, 5 gives [5, 3, 2]
    assert m["class_counts"] == [5, 3, 2] and m["folder"]["source_class_counts"] == [12, 5, 2]
    assert m["options"]["imbalance_ratio"] == 0.5 and m["train"]["name"] == "mine-train-lt"
    b = load_benchmark("mine", tree["data"], imbalance_ratio=0.01)  # train's --imbalance_ratio does not apply
    assert b.class_counts == [5, 3, 2] and b.train.labels.tolist() == [0] * 5 + [1] * 3 + [2] * 2
    whole = decode_bytes((tree["train"] / "cat" / "004.png").read_bytes(), 32, 3)
    assert np.array_equal(b.train.images[4].numpy(), whole)  # the first five cats in sorted order
    assert sum(split_counts([5000] * 10, 0.01)) == 12406  # a balanced CIFAR-10 folder gives CIFAR10-LT


def test_class_counts_without_training_images(tree, cli):
    code, out, err = prepare(tree, cli, "--class-counts", "500,120,30", "--test", tree["test"])
    assert code == 0, err
    m = manifest_of(tree)
    assert m["class_counts"] == [500, 120, 30] and m["folder"]["train"]["kind"] == "counts"
    assert m["class_names"] == ["cat", "dog", "owl"] and m["options"]["class_counts_from"] == "--class-counts"
    b = load_benchmark("mine", tree["data"])
    assert b.class_counts == [500, 120, 30] and len(b.train) == 650 and len(b.test) == 7
    with pytest.raises(ImoodError, match="prepared with --class-counts and has no training images"):
        assert b.train.in_memory
    for method in (["--Lambda", "0"], []):  # the reason comes first, also where an OOD loss wants auxiliary images
        code, out, err = cli(["train", "--ds", "mine", "--drp", tree["data"], "--srp", tree["data"].parent / "runs",
                              "--epochs", "1", "--device", "cpu", "--model", "imood_resnet_micro", *method])
        one_error(code, err, "--class-counts", "no training images", "--train DIR")
    assert not (tree["data"].parent / "runs").exists()
    code, out, err = prepare(tree, cli, "--class-counts", "5,1", "--test", tree["test"], name="two")
    one_error(code, err, "--class-counts gives 2 classes but the test set has 3")


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written

def _truncate(t):
    p = t["train"] / "dog" / "001.png"
    p.write_bytes(p.read_bytes()[:40])
    return [p]


def _empty_file(t):
    p = t["train"] / "cat" / "empty.png"
    p.write_bytes(b"")
    return [p, "empty file"]


def _not_an_image(t):
    p = t["test"] / "owl" / "notes.jpg"
    p.write_text("not an image")
    return [p, "not an image"]


def _empty_class(t):
    (t["train"] / "emu").mkdir()
    return ["class folder 'emu'", "holds no image files"]


def _class_only_in_test(t):
    (t["test"] / "yak").mkdir()
    Image.new("RGB", (8, 8)).save(t["test"] / "yak" / "y.png")
    return ["class 'yak'", "every test class needs training images"]


def _fifo(t):
    os.mkfifo(t["train"] / "cat" / "pipe.png")
    return [t["train"] / "cat" / "pipe.png", "FIFO"]


def _stray_image(t):
    Image.new("RGB", (8, 8)).save(t["train"] / "stray.png")
    return [t["train"] / "stray.png", "not inside a class folder"]


def _ood_fifo(t):
    os.mkfifo(t["ood"] / "p.png")
    return [t["ood"] / "p.png", "FIFO"]


@pytest.mark.parametrize("spoil", [_truncate, _empty_file, _not_an_image, _empty_class, _class_only_in_test, _fifo,
                                   _stray_image, _ood_fifo])
def test_bad_folders_are_one_line_naming_the_file_or_class(tree, cli, spoil):
    needles = spoil(tree)
    code, out, err = prepare(tree, cli, "--train", tree["train"], "--test", tree["test"], "--ood-dir", tree["ood"])
    one_error(code, err, *needles)
    assert not tree["data"].exists()


def _list(t, text):
    p = t["train"].parent / "l.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize("train_text,test_text,needles", [
    ("train/cat/000.png,cat\n../x.png,cat\n", "test/cat/000.png,cat\n", ["l.csv:2", "'..'"]),
    ("/etc/passwd,cat\n", "test/cat/000.png,cat\n", ["l.csv:1", "absolute path"]),
    ("train/cat/000.png,cat\ntrain/cat/nope.png,cat\n", "test/cat/000.png,cat\n", ["l.csv:2", "does not exist"]),
    ("train/cat/000.png,cat\ntrain/dog/000.png\n", "test/cat/000.png,cat\n", ["l.csv:2", "expected 'path,label'"]),
    ("train/cat/000.png,cat\ntrain/dog/000.png,1\n", "test/cat/000.png,cat\n", ["l.csv:2", "a number"]),
    ("train/cat/000.png,cat\ntrain/cat/000.png,cat\n", "test/cat/000.png,cat\n", ["l.csv:2", "listed twice"]),
    ("train/cat/000.png,cat\n", "test/cat/000.png,cat\ntest/dog/000.png,dog\n", ["t.csv:2", "unknown label 'dog'"]),
    ("train/cat/000.png,0\ntrain/dog/000.png,2\n", "test/cat/000.png,0\n", ["l.csv", "class '1' has no training"]),
])
def test_bad_list_lines_are_one_line_naming_the_line(tree, cli, train_text, test_text, needles):
    train = _list(tree, train_text)
    test = tree["train"].parent / "t.csv"
    test.write_text(test_text)
    code, out, err = prepare(tree, cli, "--train-list", train, "--test-list", test)
    one_error(code, err, *needles)
    assert not tree["data"].exists()


@pytest.mark.parametrize("args,needles", [
    (["--name", "digits"], ["'digits' is the name of a built-in"]),
    (["--name", "imagenet_lt"], ["built-in", "imagenet"]),
    (["--name", "Mine"], ["lower-case"]),
    (["--name", "folder"], ["reserved"]),
    ([], ["needs --name"]),
    (["--name", "x", "--train-list", "l.csv"], ["give the training set one way", "--train and --train-list"]),
    (["--name", "x", "--imbalance-ratio", "1.5"], ["(0, 1]"]),
    (["--name", "x", "--image-size", "2"], ["--image-size"]),
    (["--name", "x", "--channels", "2"], ["--channels must be 1"]),
    (["--name", "x", "--num-ood-samples", "5"], ["--num-ood-samples does not apply"]),
])
def test_bad_options_are_one_line(tree, cli, args, needles):
    (tree["train"].parent / "l.csv").write_text("train/cat/000.png,cat\n")
    code, out, err = cli(["data", "prepare", "folder", "--drp", tree["data"], "--train", tree["train"], "--test",
                          tree["test"], *[a if a != "l.csv" else tree["train"].parent / a for a in args]])
    one_error(code, err, *needles)
    assert not tree["data"].exists()
    code, out, err = cli(["data", "prepare", "digits", "--drp", tree["data"], "--train", tree["train"]])
    one_error(code, err, "--train belongs to `imood data prepare folder`")


def test_a_folder_imood_did_not_make_is_refused_and_left_alone(tree, cli):
    (tree["data"] / "mine").mkdir(parents=True)
    (tree["data"] / "mine" / "stuff.txt").write_text("keep")
    code, out, err = prepare(tree, cli, "--train", tree["train"], "--test", tree["test"])
    one_error(code, err, tree["data"] / "mine", "not made by `imood data prepare folder`")
    (tree["data"] / "other").mkdir()
    (tree["data"] / "other" / "manifest.json").write_text('{"dataset": "other", "source": "elsewhere"}')
    code, out, err = prepare(tree, cli, "--train", tree["train"], "--test", tree["test"], name="other")
    one_error(code, err, "did not write")
    assert (tree["data"] / "mine" / "stuff.txt").read_text() == "keep"
    assert not (tree["data"] / "mine" / "manifest.json").exists()
    assert json.loads((tree["data"] / "other" / "manifest.json").read_text())["source"] == "elsewhere"
    # images kept in DATA/NAME/ itself are the sources, not a stranger's folder
    os.rename(tree["train"], tree["data"] / "mine" / "train")
    (tree["data"] / "mine" / "stuff.txt").unlink()
    code, out, err = prepare(tree, cli, "--train", tree["data"] / "mine" / "train", "--test", tree["test"])
    assert code == 0, err


# ---------------------------------------------------------------- lookup, listing

def test_unknown_name_suggests_folder_benchmarks_and_how_to_prepare(tree, cli):
    assert prepare(tree, cli, "--train", tree["train"], "--test", tree["test"])[0] == 0
    code, out, err = cli(["train", "--ds", "mien", "--drp", tree["data"], "--srp", tree["data"].parent / "runs",
                          "--epochs", "1"])
    one_error(code, err, "unknown dataset 'mien'; did you mean 'mine'", "imood data prepare folder --name mien")
    code, out, err = cli(["data", "prepare", "cifar1", "--drp", tree["data"]])
    one_error(code, err, "unknown dataset 'cifar1'", "imood data prepare folder")


def test_sweep_plans_name_folder_benchmarks(tree, cli):
    from imood_cli.engine import sweep

    assert prepare(tree, cli, "--train", tree["train"], "--test", tree["test"])[0] == 0
    plan = tree["data"].parent / "plan.toml"
    plan.write_text(f'[sweep]\nbenchmarks = ["mine"]\nseeds = [0]\ndata_root = "{tree["data"]}"\n\n'
                    '[[run]]\nname = "A"\ntrain = { ood_metric = "oe" }\nscore = ["msp"]\n')
    sweep.check_names(sweep.read_plan(plan))
    plan.write_text(plan.read_text().replace('"mine"', '"mien"'))
    with pytest.raises(ImoodError, match="benchmarks of .*unknown dataset 'mien'; did you mean 'mine'"):
        sweep.check_names(sweep.read_plan(plan))


def test_data_list_shows_folder_benchmarks_without_torch_numpy_or_pil(tree, cli):
    assert prepare(tree, cli, "--train", tree["train"], "--test", tree["test"], "--ood-dir", tree["ood"])[0] == 0
    code, out, err = cli(["data", "list", "--drp", tree["data"], "--json"])
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert list(rows)[-1] == "mine" and rows["mine"]["ready"]
    assert [f["path"] for f in rows["mine"]["files"]] == [str(tree["data"] / "mine" / "manifest.json"),
                                                          str(tree["train"]), str(tree["test"]), str(tree["ood"])]
    code = ("import sys\nfrom imood_cli.cli.data import _status_rows\n"
            f"rows = _status_rows({str(tree['data'])!r})\n"
            "assert rows[-1]['name'] == 'mine' and rows[-1]['ready'], rows[-1]\n"
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------- end to end: digits as image files

def test_digits_as_image_files_train_score_eval(tmp_path, cli):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    train_counts, test_per_class = [60, 30, 12, 6], 8
    for k, n in enumerate(train_counts):
        idx = np.flatnonzero(digits.target == k)
        for split, chosen in (("train", idx[:n]), ("test", idx[n:n + test_per_class])):
            (tmp_path / split / f"d{k}").mkdir(parents=True)
            for i in chosen:
                Image.fromarray(images[i], "L").save(tmp_path / split / f"d{k}" / f"{i}.png")
    (tmp_path / "eight-nine").mkdir()
    for i in np.flatnonzero(digits.target >= 8)[:40]:
        Image.fromarray(images[i], "L").save(tmp_path / "eight-nine" / f"{i}.png")
    data, runs = tmp_path / "data", tmp_path / "runs"
    code, out, err = cli(["data", "prepare", "folder", "--name", "digits4", "--drp", data, "--train",
                          tmp_path / "train", "--test", tmp_path / "test", "--ood-dir", tmp_path / "eight-nine",
                          "--image-size", "8"])
    assert code == 0, err
    code, out, err = cli(["train", "--ds", "digits4", "--drp", data, "--epochs", "1", "--model",
                          "imood_resnet_micro", "--Lambda", "0", "--aux-ood-loss", "none", "--srp", runs,
                          "--name", "r", "--device", "cpu", "-b", "32"])
    assert code == 0, err
    code, out, err = cli(["score", runs / "r", "-m", "msp,energy", "--device", "cpu"])
    assert code == 0, err
    code, out, err = cli(["eval", runs / "r" / "scores" / "msp.safetensors", "--json", "--no-save"])
    assert code == 0, err
    result = json.loads(out)
    assert list(result["ood"]) == ["eight-nine", "mean"]
    per_class = np.array(result["id"]["per_class"], dtype=float)
    groups = shot_groups(train_counts)  # from the folder's counts: 60 many, 30 and 12 medium, 6 few
    assert groups["many"].tolist() == [0] and groups["medium"].tolist() == [1, 2] and groups["few"].tolist() == [3]
    for name, classes in groups.items():
        assert result["id"][name] == pytest.approx(per_class[classes].mean())
    from imood_cli.engine.runs.scorefile import ScoreSet

    meta = ScoreSet.load(runs / "r" / "scores" / "msp.safetensors").meta
    assert meta["class_counts"] == train_counts and meta["dataset"] == "digits4"
    # the same test images with the prior alone: scoring works, fitting does not
    code, out, err = cli(["data", "prepare", "folder", "--name", "digits4-prior", "--drp", data,
                          "--class-counts", ",".join(map(str, train_counts)), "--test", tmp_path / "test",
                          "--ood-dir", tmp_path / "eight-nine", "--image-size", "8"])
    assert code == 0, err
    code, out, err = cli(["score", runs / "r", "--ds", "digits4-prior", "-m", "energy", "--device", "cpu",
                          "--out", tmp_path / "prior-scores"])
    assert code == 0, err
    energy = ScoreSet.load(tmp_path / "prior-scores" / "energy.safetensors")
    assert energy.meta["dataset"] == "digits4-prior" and len(energy.id_score) == 4 * test_per_class
    code, out, err = cli(["score", runs / "r", "--ds", "digits4-prior", "-m", "maha", "--device", "cpu",
                          "--out", tmp_path / "prior-scores"])
    one_error(code, err, "digits4-prior was prepared with --class-counts", "maha")
