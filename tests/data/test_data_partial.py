"""Partial benchmarks: the ID part is enough to prepare and train; missing OOD pieces are named, not fatal."""

import json
import os
import shutil
import tarfile

import numpy as np
import pytest
from fixtures_data import write_300k, write_cifar, write_imagenet, write_scood

from imood_cli.data.benchmarks.cifar import Cifar10
from imood_cli.data.benchmarks.imagenet_lt import ImageNetLT
from imood_cli.data.fetch import archive as archive_mod
from imood_cli.errors import ImoodError

SCOOD_NAMES = ["texture", "svhn", "cifar100", "tin", "lsun", "places365"]


def files_and_folders(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------- CIFAR

def test_load_returns_the_scood_sets_on_disk_and_names_the_rest(tmp_path):
    write_cifar(tmp_path, "cifar10", per_class=20)
    written = write_scood(tmp_path, "cifar10", per_set=2)
    for name in ("lsun", "cifar"):
        (tmp_path / "SCOOD" / "data" / "imglist" / "benchmark_cifar10" / f"test_{name}.txt").unlink()
    b = Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=0, verify=False)
    assert list(b.ood_tests) == ["texture", "svhn", "tin", "places365"]
    assert np.array_equal(b.ood_tests["tin"].images.numpy(), written["tin"][0])
    assert list(b.missing) == ["cifar100", "lsun"]
    assert all("drive.google.com" in how for how in b.missing.values())


def test_ood_tests_false_does_not_read_the_test_sets(tmp_path):
    write_cifar(tmp_path, "cifar10", per_class=20)
    write_scood(tmp_path, "cifar10", per_set=2)
    broken = tmp_path / "SCOOD" / "data" / "images" / "svhn" / "test" / "cifar10_000.png"
    broken.write_bytes(b"not a png")
    b = Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=0, verify=False, ood_tests=False)
    assert b.ood_tests == {} and b.missing == {} and b.aux_ood is None
    assert not (tmp_path / "cifar10" / "cache").exists()  # nothing was decoded
    with pytest.raises(ImoodError, match="cifar10_000.png"):  # what ood_tests=False did not read
        Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=0, verify=False)


def test_auxiliary_ood_is_required_only_when_asked_for(tmp_path):
    write_cifar(tmp_path, "cifar10", per_class=20)
    assert Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=0, verify=False).aux_ood is None
    with pytest.raises(ImoodError) as e:
        Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=5, verify=False)
    required = str(e.value).split(" (also missing")[0]
    assert "300K_random_images.npy" in required and "--num_ood_samples 0" in required
    aux = write_300k(tmp_path, rows=8)
    b = Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=5, verify=False)
    assert np.array_equal(b.aux_ood.images.numpy(), aux[:5].transpose(0, 3, 1, 2))


def test_prepare_with_only_the_id_part_records_what_is_missing(tmp_path):
    write_cifar(tmp_path, "cifar10", per_class=20)
    m = Cifar10().prepare(tmp_path, imbalance_ratio=0.1, verify=False, download=False)
    on_disk = json.loads((tmp_path / "cifar10" / "manifest.json").read_text())
    assert on_disk["train_size"] == sum(int(20 * 0.1 ** (k / 9)) for k in range(10)) == m["train_size"]
    assert on_disk["ood_tests"] == {} and on_disk["aux_ood"] is None
    assert on_disk["pieces"] == {"train": True, "test": True, "tinyimages-300k": False,
                                 **{n: False for n in SCOOD_NAMES}}
    assert list(on_disk["missing"]) == [*SCOOD_NAMES, "tinyimages-300k"]
    assert "hendrycks/300K_random_images.npy" in on_disk["missing"]["tinyimages-300k"]
    # SCOOD arrives: prepare again, and the manifest says so
    write_scood(tmp_path, "cifar10", per_set=1)
    m = Cifar10().prepare(tmp_path, imbalance_ratio=0.1, verify=False, download=False)
    assert list(m["ood_tests"]) == SCOOD_NAMES and list(m["missing"]) == ["tinyimages-300k"]


def test_a_missing_id_part_is_still_an_error(tmp_path):
    write_scood(tmp_path, "cifar10", per_set=1)
    write_300k(tmp_path, rows=4)
    with pytest.raises(ImoodError, match="cifar10 is not ready, missing: the CIFAR-10 batches in"):
        Cifar10().prepare(tmp_path, download=False)
    assert not (tmp_path / "cifar10" / "manifest.json").exists()


@pytest.fixture(scope="module")
def full_size_cifar10(tmp_path_factory):
    """CIFAR-10 batches with the published 5,000 images per class (random pixels), nothing else."""
    root = tmp_path_factory.mktemp("cifar10_full")
    write_cifar(root, "cifar10", per_class=5000, test_per_class=2)
    return root


def test_cli_prepare_with_cifar_only_reports_12406_and_names_the_missing_pieces(full_size_cifar10, cli):
    root = full_size_cifar10
    code, out, err = cli(["data", "prepare", "cifar10", "--drp", root, "--no-download", "--no-verify"])
    assert code == 0, err
    assert "12,406" in out
    warnings = err.splitlines()
    assert warnings[0] == ("warning: cifar10 is ready to train, but 7 piece(s) are missing: "
                           "texture, svhn, cifar100, tin, lsun, places365, tinyimages-300k")
    # one line per way to get them, each whole (no wrapping inside paths or URLs)
    assert warnings[1].startswith(f"warning: {', '.join(SCOOD_NAMES)}: {root / 'SCOOD' / 'data' / 'images'}/ is "
                                  "missing; download SCOOD from https://drive.google.com/file/d/")
    assert warnings[2] == (f"warning: tinyimages-300k: the 300K random images "
                           f"{root / 'tinyimages80m' / '300K_random_images.npy'} (download "
                           f"https://people.eecs.berkeley.edu/~hendrycks/300K_random_images.npy into "
                           f"{root / 'tinyimages80m'}/)")
    assert len(warnings) == 3
    manifest = json.loads((root / "cifar10" / "manifest.json").read_text())
    assert manifest["train_size"] == 12_406
    assert manifest["class_counts"] == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    code, out, err = cli(["data", "prepare", "cifar10", "--drp", root, "--no-download", "--no-verify", "--json"])
    assert code == 0 and json.loads(out)["missing"] == manifest["missing"]  # stdout stays one JSON document


def test_ctrl_c_during_prepare_exits_130_and_leaves_no_partial_files(tmp_path, cli, monkeypatch):
    src = tmp_path / "mirror"
    src.mkdir()
    write_cifar(src, "cifar10", per_class=4)
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    before = (root / "cifar-10-python.tar.gz").read_bytes()
    real, calls = archive_mod._write_new, []

    def interrupted(*args):
        calls.append(args[1])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(archive_mod, "_write_new", interrupted)
    code, out, err = cli(["data", "prepare", "cifar10", "--drp", root, "--no-download", "--no-verify"])
    assert code == 130 and "Traceback" not in err, err
    assert files_and_folders(root) == ["cifar-10-python.tar.gz"]
    assert (root / "cifar-10-python.tar.gz").read_bytes() == before
    monkeypatch.setattr(archive_mod, "_write_new", real)
    code, out, err = cli(["data", "prepare", "cifar10", "--drp", root, "--no-download", "--no-verify",
                          "--imbalance_ratio", "0.5"])
    assert code == 0, err  # the next prepare starts over cleanly
    assert len(os.listdir(root / "cifar-10-batches-py")) == 7


# ---------------------------------------------------------------- ImageNet-LT

def test_imagenet_without_ood_test_1k_loads_and_names_it(tmp_path):
    write_imagenet(tmp_path, train_counts=(2, 1), test_per_class=1, extra=2, ood=2)
    shutil.rmtree(tmp_path / "imagenet" / "ood_test_1k")
    b = ImageNetLT().load(tmp_path, num_ood_samples=2)
    assert b.ood_tests == {} and list(b.missing) == ["ood_test_1k"] and "get_imagenet10k.sh" in b.missing["ood_test_1k"]
    assert len(b.aux_ood) == 2
    assert ImageNetLT().load(tmp_path, ood_tests=False).missing == {}
    m = ImageNetLT().prepare(tmp_path)
    assert m["pieces"] == {"train": True, "test": True, "extra_1k": True, "ood_test_1k": False}
    assert list(m["missing"]) == ["ood_test_1k"]


def test_imagenet_prepare_without_extra_1k_records_it_and_training_asks_for_it(tmp_path):
    write_imagenet(tmp_path, train_counts=(2, 1), test_per_class=1, extra=2, ood=2)
    shutil.rmtree(tmp_path / "imagenet" / "extra_1k")
    m = ImageNetLT().prepare(tmp_path)
    assert m["aux_ood"] is None and list(m["missing"]) == ["extra_1k"] and m["pieces"]["extra_1k"] is False
    with pytest.raises(ImoodError, match=r"the auxiliary OOD folder .*extra_1k/ .*--num_ood_samples 0"):
        ImageNetLT().load(tmp_path)
    assert ImageNetLT().load(tmp_path, num_ood_samples=0).aux_ood is None


def test_imagenet_no_verify_is_remembered(tmp_path):
    info = write_imagenet(tmp_path, train_counts=(2, 1), test_per_class=1, extra=1, ood=1)
    (info["base"] / info["test_lines"][0].split()[0]).unlink()
    with pytest.raises(ImoodError, match="listed images are missing"):
        ImageNetLT().prepare(tmp_path)
    ImageNetLT().prepare(tmp_path, verify=False)
    assert len(ImageNetLT().load(tmp_path).test) == 2  # verify=None: as the manifest recorded
    with pytest.raises(ImoodError, match="listed images are missing"):
        ImageNetLT().load(tmp_path, verify=True)
