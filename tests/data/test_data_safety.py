"""Readers that never hang, never loop and never read outside the data folder.

A FIFO named like an image or a list file would block `open()` forever, out of reach of Ctrl-C.
Each such case runs in a child process with a deadline, so a regression fails in seconds instead
of hanging the suite.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import random_png, write_cifar, write_imagenet, write_scood

from imood_cli.data.benchmarks import scood
from imood_cli.data.benchmarks.imagenet_lt import ImageNetLT
from imood_cli.data.pipeline.images import list_images
from imood_cli.errors import ImoodError
from imood_cli.fs.safe import check_list_path, open_regular, read_lines

TESTS = Path(__file__).resolve().parents[1]  # tests/
DEADLINE = 60  # seconds; each child does its work in a few


def isolated(code: str, **paths) -> dict:
    """Run `code` in a child python (paths given as variables); it prints one JSON object as its result."""
    prelude = "import json, sys\nfrom pathlib import Path\n" + "".join(
        f"{k} = Path({str(v)!r})\n" for k, v in paths.items())
    try:
        done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=DEADLINE, cwd=TESTS, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])})
    except subprocess.TimeoutExpired:
        pytest.fail(f"the reader blocked for {DEADLINE} s (it opened a FIFO?)")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


CATCH = """
def outcome(fn):
    from imood_cli.errors import ImoodError
    try:
        fn()
        return "ok"
    except ImoodError as exc:
        return "ImoodError: " + str(exc)
"""


# ---------------------------------------------------------------- FIFOs are refused, never opened

def test_open_regular_refuses_a_fifo_at_once(tmp_path):
    os.mkfifo(tmp_path / "x.png")
    (tmp_path / "ok.txt").write_text("fine")
    assert open_regular(tmp_path / "ok.txt").read() == b"fine"
    out = isolated(CATCH + """
from imood_cli.fs.safe import open_regular
print(json.dumps({"fifo": outcome(lambda: open_regular(d / "x.png"))}))
""", d=tmp_path)
    assert out["fifo"].startswith("ImoodError: ") and "x.png is a FIFO (named pipe), not a regular file" in out["fifo"]
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "nope")


def test_a_fifo_in_an_ood_dir_is_named_not_opened(tmp_path):
    folder = tmp_path / "ood"
    rng = np.random.default_rng(0)
    random_png(folder / "a.png", rng)
    os.mkfifo(folder / "x.png")
    os.mkfifo(folder / "notes.txt")  # not an image name: ignored, never opened either
    out = isolated(CATCH + """
from imood_cli.data.pipeline.folder import load_image_folder, load_ood_folder
print(json.dumps({"small": outcome(lambda: load_ood_folder(d, 32, 3)),
                  "large": outcome(lambda: load_ood_folder(d, 224, 3)),
                  "aux": outcome(lambda: load_image_folder(d, 32, 3, option="--aux-ood-dir"))}))
""", d=folder)
    for key, text in out.items():
        assert text.startswith("ImoodError: "), key
        assert str(folder / "x.png") in text and "FIFO" in text and "notes.txt" not in text
    assert out["aux"].startswith(f"ImoodError: --aux-ood-dir {folder}")


def test_fifos_in_scood_lists_and_images(tmp_path):
    write_scood(tmp_path, "cifar10", per_set=2)
    images = tmp_path / "SCOOD" / "data" / "images"
    (images / "svhn" / "test" / "cifar10_001.png").unlink()
    os.mkfifo(images / "svhn" / "test" / "cifar10_001.png")
    lst = scood.imglist_path(tmp_path, "cifar10", "lsun")
    lst.unlink()
    os.mkfifo(lst)
    out = isolated(CATCH + """
from imood_cli.data.benchmarks import scood
print(json.dumps({
    "image": outcome(lambda: scood.load_set(root, "cifar10", "svhn", 10)),
    "list": outcome(lambda: scood.load_set(root, "cifar10", "lsun", 10)),
    "missing": scood.missing_sets(root, "cifar10"),
    "texture": outcome(lambda: scood.load_set(root, "cifar10", "texture", 10)),
}))
""", root=tmp_path)
    assert "1 of 3 images could not be read" in out["image"] and "cifar10_001.png (a FIFO (named pipe), not a " \
        "regular file)" in out["image"]
    assert out["list"].startswith("ImoodError: SCOOD list: ") and "FIFO" in out["list"]
    assert list(out["missing"]) == ["lsun"] and "FIFO" in out["missing"]["lsun"]
    assert out["texture"] == "ok"


def test_fifos_in_imagenet_split_and_listed_images(tmp_path):
    info = write_imagenet(tmp_path, train_counts=(2, 1), test_per_class=1, extra=2, ood=2)
    listed = info["base"] / info["test_lines"][0].split()[0]
    listed.unlink()
    os.mkfifo(listed)
    out = isolated(CATCH + """
from imood_cli.data.benchmarks.imagenet_lt import ImageNetLT
def score_unverified():
    b = ImageNetLT().load(root, num_ood_samples=0, verify=False)
    list(b.test.files.batches(4))
first = {"verified": outcome(lambda: ImageNetLT().load(root, num_ood_samples=0)),
         "unverified": outcome(score_unverified)}
split = root / "imagenet" / "ImageNet_LT_train.txt"
split.unlink()
import os
os.mkfifo(split)
first["split"] = outcome(lambda: ImageNetLT().load(root, num_ood_samples=0, verify=False))
print(json.dumps(first))
""", root=tmp_path)
    assert f"{listed} (a FIFO (named pipe), not a regular file)" in out["verified"]
    assert out["unverified"].startswith("ImoodError: imagenet-lt-test: 1 of 2 images could not be read")
    assert "FIFO" in out["unverified"]
    assert "ImageNet_LT_train.txt" in out["split"] and "is a FIFO (named pipe), not a regular file" in out["split"]


def test_fifos_as_cifar_batches_and_the_300k_file(tmp_path):
    data = write_cifar(tmp_path, "cifar10", per_class=4)
    batch = data["folder"] / "data_batch_2"
    batch.unlink()
    os.mkfifo(batch)
    npy = tmp_path / "tinyimages80m" / "300K_random_images.npy"
    npy.parent.mkdir()
    os.mkfifo(npy)
    out = isolated(CATCH + """
from imood_cli.data.benchmarks import cifar, tinyimages
from imood_cli.data.benchmarks.cifar import Cifar10
print(json.dumps({
    "pickle": outcome(lambda: cifar.safe_load_pickle(root / "cifar-10-batches-py" / "data_batch_2")),
    "load": outcome(lambda: Cifar10().load(root, num_ood_samples=0, verify=False)),
    "md5": outcome(lambda: Cifar10().load(root, num_ood_samples=0, verify=True)),
    "npy": outcome(lambda: tinyimages.open_300k(root / "tinyimages80m" / "300K_random_images.npy")),
}))
""", root=tmp_path)
    assert "CIFAR batch: " in out["pickle"] and "FIFO" in out["pickle"]
    assert "data_batch_2 is a FIFO (named pipe), not a regular file" in out["load"]
    assert "data_batch_2 is a FIFO" in out["md5"]
    assert "auxiliary OOD file: " in out["npy"] and "FIFO" in out["npy"]


# ---------------------------------------------------------------- links: each real folder once

def test_a_symlink_loop_is_walked_once(tmp_path):
    folder = tmp_path / "ood"
    rng = np.random.default_rng(1)
    random_png(folder / "a.png", rng)
    random_png(folder / "sub" / "b.png", rng)
    (folder / "loop").symlink_to(".", target_is_directory=True)
    (folder / "sub" / "up").symlink_to("..", target_is_directory=True)
    (folder / "sub" / "self").symlink_to(folder / "sub", target_is_directory=True)
    out = isolated("""
from imood_cli.data.pipeline.images import list_images
print(json.dumps([str(p) for p in list_images(d)]))
""", d=folder)
    assert out == [str(folder / "a.png"), str(folder / "sub" / "b.png")]


def test_a_linked_folder_elsewhere_is_followed_once(tmp_path):
    rng = np.random.default_rng(2)
    other = tmp_path / "elsewhere"
    random_png(other / "x.png", rng)
    folder = tmp_path / "ood"
    random_png(folder / "a.png", rng)
    (folder / "b_link").symlink_to(other, target_is_directory=True)
    (folder / "c_link").symlink_to(other, target_is_directory=True)  # the same folder again: counted once
    (folder / "z.png").symlink_to(folder / "a.png")  # a link to a file is a file
    assert list_images(folder) == [folder / "a.png", folder / "z.png", folder / "b_link" / "x.png"]


def test_a_broken_image_link_is_named(tmp_path):
    folder = tmp_path / "ood"
    random_png(folder / "a.png", np.random.default_rng(3))
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ImoodError, match=r"gone\.png \(a broken symbolic link\)"):
        list_images(folder, "--ood-dir")


# ---------------------------------------------------------------- list paths stay inside the data folder

@pytest.mark.parametrize("rel, why", [
    ("/etc/passwd", "is an absolute path"),
    ("\\\\server\\share\\x.png", "is an absolute path"),
    ("C:/x.png", "is an absolute path"),
    ("../outside.png", "goes up with '..'"),
    ("train/../../outside.png", "goes up with '..'"),
])
def test_list_paths_must_stay_inside(tmp_path, rel, why):
    with pytest.raises(ImoodError) as e:
        check_list_path(rel, tmp_path / "list.txt", 7, tmp_path)
    assert f"list.txt:7: {rel!r} {why}" in str(e.value)
    assert check_list_path("train/n01/x.JPEG", tmp_path / "l.txt", 1, tmp_path) == "train/n01/x.JPEG"


@pytest.mark.parametrize("bad", ["/etc/hostname 0", "../../outside.JPEG 1", "train/../../../x.JPEG 0"])
def test_imagenet_split_lines_outside_the_folder_are_refused_and_never_verified(tmp_path, bad):
    write_imagenet(tmp_path, train_counts=(2, 1), test_per_class=1, extra=1, ood=1)
    split = tmp_path / "imagenet" / "ImageNet_LT_train.txt"
    split.write_text(split.read_text() + bad + "\n")
    for verify in (True, False):
        with pytest.raises(ImoodError) as e:
            ImageNetLT().prepare(tmp_path, verify=verify)
        assert f"{split}:4: " in str(e.value)
    assert not (tmp_path / "imagenet" / "manifest.json").exists()


def test_scood_list_lines_outside_the_folder_are_refused(tmp_path):
    write_scood(tmp_path, "cifar10", per_set=1)
    lst = scood.imglist_path(tmp_path, "cifar10", "tin")
    lst.write_text(lst.read_text() + '../../../../etc/passwd {"sc_label": -1}\n')
    with pytest.raises(ImoodError, match=r"test_tin\.txt:3: .* goes up with '\.\.'"):
        scood.load_set(tmp_path, "cifar10", "tin", 10)


def test_list_files_that_are_not_utf8_name_the_line(tmp_path):
    lst = tmp_path / "ImageNet_LT_test.txt"
    lst.write_bytes(b"val/a.JPEG 0\nval/\xff.JPEG 1\n")
    with pytest.raises(ImoodError, match=r"ImageNet_LT_test\.txt:2: not UTF-8"):
        read_lines(lst)
