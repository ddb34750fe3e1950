"""CIFAR10/100-LT: safe unpickling, MD5 checks, the long-tail split, missing data, prepare and the CLI."""

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch
from fixtures_data import dump_batch, write_cifar, write_cifar_benchmark

from imood_cli.data.benchmarks import cifar
from imood_cli.data.benchmarks.cifar import CIFAR10, CIFAR100, Cifar10, Cifar100, safe_load_pickle
from imood_cli.data.pipeline.augment import CIFAR_AUGMENT
from imood_cli.data.pipeline.longtail import longtail_counts
from imood_cli.errors import ImoodError


def expected_split(labels: np.ndarray, counts: list[int]) -> list[int]:
    """Indices of the first counts[k] images of each class, walking the file order."""
    taken, keep = [0] * len(counts), []
    for i, y in enumerate(labels.tolist()):
        if taken[y] < counts[y]:
            taken[y] += 1
            keep.append(i)
    return keep


def with_fixture_md5s(folder, info):
    """The benchmark's file table with the MD5s of the fixture files (as if they were the published ones)."""
    md5 = lambda f: hashlib.md5((folder / f).read_bytes()).hexdigest()
    return dataclasses.replace(info, train=tuple((f, md5(f)) for f, _ in info.train),
                               test=tuple((f, md5(f)) for f, _ in info.test), meta=(info.meta[0], md5(info.meta[0])))


# ---------------------------------------------------------------- the long-tail rule (docs/data.md)

def test_spec_counts_from_the_benchmark_constants():
    c10 = longtail_counts(CIFAR10.n_max, CIFAR10.num_classes, 0.01)
    assert c10 == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] and sum(c10) == 12_406
    assert sum(longtail_counts(CIFAR100.n_max, CIFAR100.num_classes, 0.01)) == 10_847
    assert "12,406" in Cifar10().description and "10,847" in Cifar100().description


def test_cifar10_fixture_split_keeps_the_first_images_of_each_class(tmp_path):
    data = write_cifar_benchmark(tmp_path, "cifar10", per_class=20)
    b = Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=5, verify=False)
    counts = [int(20 * 0.1 ** (k / 9)) for k in range(10)]
    assert counts == [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]
    assert b.class_counts == counts and b.num_classes == 10
    keep = expected_split(data["cifar"]["train_y"], counts)
    assert b.train.labels.tolist() == data["cifar"]["train_y"][keep].tolist()
    assert b.train.images.dtype == torch.uint8 and tuple(b.train.images.shape) == (sum(counts), 3, 32, 32)
    assert np.array_equal(b.train.images.numpy(), data["cifar"]["train_x"][keep])
    # the test set is the whole test batch, in order
    assert np.array_equal(b.test.images.numpy(), data["cifar"]["test_x"])
    assert b.test.labels.tolist() == data["cifar"]["test_y"].tolist()
    assert list(b.ood_tests) == ["texture", "svhn", "cifar100", "tin", "lsun", "places365"]
    assert np.array_equal(b.aux_ood.images.numpy(), data["aux"][:5].transpose(0, 3, 1, 2))
    assert b.augment == CIFAR_AUGMENT and b.image_size == 32 and b.channels == 3
    assert b.class_names == [f"class{k}" for k in range(10)]


def test_cifar100_fixture(tmp_path):
    per_class = [6] * 100
    data = write_cifar_benchmark(tmp_path, "cifar100", per_class=per_class)
    b = Cifar100().load(tmp_path, imbalance_ratio=0.5, num_ood_samples=0, verify=False)
    counts = [int(6 * 0.5 ** (k / 99)) for k in range(100)]
    assert b.class_counts == counts
    keep = expected_split(data["cifar"]["train_y"], counts)
    assert b.train.labels.tolist() == data["cifar"]["train_y"][keep].tolist()
    assert b.aux_ood is None and "cifar10" in b.ood_tests
    assert b.ood_tests["cifar10"].labels.tolist() == [-1, -1, -1, 2]


def test_python3_protocol2_pickles_load_too(tmp_path):
    data = write_cifar(tmp_path, "cifar10", per_class=4, py2=False)
    images, labels = cifar.read_batches(data["folder"], CIFAR10.train, "labels", 10)
    assert np.array_equal(images.numpy(), data["train_x"]) and labels.tolist() == data["train_y"].tolist()


def test_an_imbalance_that_empties_a_class_is_an_error(tmp_path):
    write_cifar_benchmark(tmp_path, "cifar10", per_class=12)
    with pytest.raises(ImoodError, match="leaves class 5 without images"):
        Cifar10().load(tmp_path, imbalance_ratio=0.01, num_ood_samples=0, verify=False)


# ---------------------------------------------------------------- safe unpickling

class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Evals:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("payload", ["system", "eval", "codec"])
def test_restricted_unpickler_refuses_code(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    if payload == "system":
        obj = {b"data": RunsCode(marker), b"labels": [0]}
    elif payload == "eval":
        obj = {b"data": Evals()}
    else:
        obj = None
    if obj is not None:
        path.write_bytes(pickle.dumps(obj, protocol=2))
        # the plain pickle module would run it
        assert not marker.exists()
    else:  # _codecs.encode is allowed for latin-1 only
        path.write_bytes(b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00xq\x01X\x05\x00\x00\x00rot13q\x02\x86q\x03Rq\x04.")
    with pytest.raises(ImoodError, match="refusing to unpickle") as e:
        safe_load_pickle(path)
    assert {"system": "system is not allowed", "eval": "eval is not allowed",
            "codec": "encoding 'rot13' is not allowed"}[payload] in str(e.value)
    assert not marker.exists()


def test_a_batch_that_runs_code_is_refused_at_load(tmp_path):
    write_cifar_benchmark(tmp_path, "cifar10", per_class=20)
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    path.write_bytes(pickle.dumps({b"data": RunsCode(marker), b"labels": []}, protocol=2))
    with pytest.raises(ImoodError, match=r"data_batch_4: refusing to unpickle"):
        Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=0, verify=False)
    assert not marker.exists()


def test_damaged_and_wrong_batches(tmp_path):
    data = write_cifar(tmp_path, "cifar10", per_class=4)
    path = data["folder"] / "data_batch_2"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ImoodError, match="data_batch_2 is not a readable CIFAR batch"):
        cifar.read_batches(data["folder"], CIFAR10.train, "labels", 10)
    dump_batch(path, {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]})
    with pytest.raises(ImoodError, match=r"'data' should be uint8 \[N, 3072\], found uint8 \(2, 100\)"):
        cifar.read_batches(data["folder"], CIFAR10.train, "labels", 10)
    dump_batch(path, {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 10]})
    with pytest.raises(ImoodError, match="labels outside 0..9"):
        cifar.read_batches(data["folder"], CIFAR10.train, "labels", 10)
    dump_batch(path, {b"data": np.zeros((2, 3072), dtype=np.uint8)})
    with pytest.raises(ImoodError, match="no 'labels' entry"):
        cifar.read_batches(data["folder"], CIFAR10.train, "labels", 10)


# ---------------------------------------------------------------- checksums

def test_published_md5s_are_checked(tmp_path):
    write_cifar_benchmark(tmp_path, "cifar10", per_class=20)
    with pytest.raises(ImoodError, match="data_batch_1: MD5 [0-9a-f]{32} does not match the published "
                                         "c99cafc152244af753f735de768cd75f.*--no-verify"):
        Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=0)


def test_md5_catches_one_changed_byte_and_no_verify_skips_it(tmp_path, monkeypatch):
    data = write_cifar_benchmark(tmp_path, "cifar10", per_class=20)
    folder = data["cifar"]["folder"]
    monkeypatch.setattr(Cifar10, "info", with_fixture_md5s(folder, CIFAR10))
    good = Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=0)  # verified
    path = folder / "data_batch_3"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the pixel bytes: still a valid pickle
    path.write_bytes(bytes(raw))
    with pytest.raises(ImoodError, match="CIFAR-10 data_batch_3: MD5 .* does not match"):
        Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=0)
    unverified = Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=0, verify=False)
    assert unverified.class_counts == good.class_counts
    full_before = torch.from_numpy(data["cifar"]["train_x"])
    full_after, _ = cifar.read_batches(folder, CIFAR10.train, "labels", 10)
    assert int((full_after != full_before).sum()) == 1  # exactly the flipped pixel differs


# ---------------------------------------------------------------- missing pieces

def test_loading_without_the_300k_file_only_for_scoring(tmp_path):
    write_cifar(tmp_path, "cifar10", per_class=20)
    from fixtures_data import write_scood

    write_scood(tmp_path, "cifar10")
    b = Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=0, verify=False)
    assert b.aux_ood is None
    with pytest.raises(ImoodError) as e:
        Cifar10().load(tmp_path, imbalance_ratio=0.1, verify=False)
    msg = str(e.value)
    assert msg.startswith("cifar10 is not ready, missing: the 300K random images ")
    assert str(tmp_path / "tinyimages80m" / "300K_random_images.npy") in msg and "SCOOD" not in msg
    assert "\n" not in msg


def test_missing_pieces_in_one_message(tmp_path):
    data = write_cifar_benchmark(tmp_path, "cifar10", per_class=20)
    (data["cifar"]["folder"] / "test_batch").unlink()
    (tmp_path / "SCOOD" / "data" / "imglist" / "benchmark_cifar10" / "test_lsun.txt").unlink()
    (tmp_path / "tinyimages80m" / "300K_random_images.npy").unlink()
    with pytest.raises(ImoodError) as e:
        Cifar10().load(tmp_path, num_ood_samples=0, verify=False)
    msg = str(e.value)
    required, optional = msg.split(" (also missing, not needed to start: ")
    # Only the ID part stops the load; the absent SCOOD list is named as optional, the 300K file not at all
    # (num_ood_samples=0 does not ask for it).
    assert required.startswith("cifar10 is not ready, missing: the CIFAR-10 batches test_batch in "
                               + str(data["cifar"]["folder"]))
    assert "cifar-10-python.tar.gz" in required and "SCOOD" not in required
    assert "test_lsun.txt" in optional and "test_svhn.txt" not in optional
    assert "300K" not in msg and "\n" not in msg
    statuses = {s.what: s for s in Cifar10().status(tmp_path)}
    assert not statuses["ID test: CIFAR-10 test batch"].present
    assert statuses["ID train: CIFAR-10 training batches"].present
    assert [s.present for s in statuses.values()].count(False) == 3  # test batch, lsun list, 300K
    assert [s.what for s in statuses.values() if not s.required] == [
        "SCOOD images", *[f"OOD test: SCOOD {n} list" for n in ("texture", "svhn", "cifar100", "tin", "lsun",
                                                                "places365")],
        "auxiliary OOD: 300K random images (training only)"]


# ---------------------------------------------------------------- prepare: archives and downloads

def make_archive(root, folder_name, archive_name):
    with tarfile.open(root / archive_name, "w:gz") as tf:
        tf.add(root / folder_name, arcname=folder_name)
    shutil.rmtree(root / folder_name)
    return root / archive_name


def test_prepare_extracts_a_local_archive_and_writes_the_manifest(tmp_path):
    write_cifar_benchmark(tmp_path, "cifar10", per_class=20, aux_rows=8)
    make_archive(tmp_path, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    statuses = Cifar10().status(tmp_path)
    assert "cifar-10-python.tar.gz is present" in statuses[0].detail
    with pytest.raises(ImoodError, match="cifar-10-python.tar.gz: MD5 .* c58f30108f718f92721af3b95e74349a"):
        Cifar10().prepare(tmp_path, imbalance_ratio=0.1, num_ood_samples=8, download=False)
    m = Cifar10().prepare(tmp_path, imbalance_ratio=0.1, num_ood_samples=8, verify=False, download=False)
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file()
    on_disk = json.loads((tmp_path / "cifar10" / "manifest.json").read_text())
    assert on_disk["class_counts"] == [int(20 * 0.1 ** (k / 9)) for k in range(10)] == m["class_counts"]
    assert on_disk["train_size"] == sum(on_disk["class_counts"])
    assert on_disk["options"]["verified"] is False and on_disk["aux_ood"]["size"] == 8
    assert on_disk["ood_tests"]["svhn"]["size"] == 4 and on_disk["ood_tests"]["svhn"]["id_images"] == 1
    assert on_disk["test_class_counts"] == [2] * 10


def test_prepare_downloads_with_the_published_md5(tmp_path, monkeypatch):
    src = tmp_path / "mirror"
    src.mkdir()
    write_cifar(src, "cifar10", per_class=20)
    archive = make_archive(src, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    root = tmp_path / "data"
    from fixtures_data import write_300k, write_scood

    write_scood(root, "cifar10")
    write_300k(root, rows=6)
    calls = []

    def fake_fetch(url, dest, md5=None, max_bytes=None):
        calls.append((url, md5))
        assert max_bytes is not None and max_bytes >= archive.stat().st_size
        shutil.copy(archive, dest)
        return dest

    monkeypatch.setattr(cifar, "fetch", fake_fetch)
    Cifar10().prepare(root, imbalance_ratio=0.1, num_ood_samples=6, verify=False)
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", None)]
    shutil.rmtree(root / "cifar-10-batches-py")
    (root / "cifar-10-python.tar.gz").unlink()
    with pytest.raises(ImoodError, match="MD5"):  # verified: the fixture archive is not the published one
        Cifar10().prepare(root, imbalance_ratio=0.1, num_ood_samples=6)
    assert calls[-1] == ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")


def test_prepare_downloads_cifar_even_when_scood_is_missing(tmp_path, monkeypatch):
    """SCOOD cannot be downloaded; it no longer stops `prepare` from making the ID part ready."""
    src = tmp_path / "mirror"
    src.mkdir()
    write_cifar(src, "cifar10", per_class=20)
    archive = make_archive(src, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    root = tmp_path / "data"
    fetched = []

    def fake_fetch(url, dest, md5=None, max_bytes=None):
        fetched.append(url)
        if "cifar-10" not in url:
            raise ImoodError(f"could not download {url} (offline)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(archive, dest)
        return dest

    monkeypatch.setattr(cifar, "fetch", fake_fetch)
    m = Cifar10().prepare(root, imbalance_ratio=0.1, verify=False)
    assert fetched == [CIFAR10.url, "https://people.eecs.berkeley.edu/~hendrycks/300K_random_images.npy"]
    assert m["train_size"] == sum(int(20 * 0.1 ** (k / 9)) for k in range(10))
    assert m["ood_tests"] == {} and m["aux_ood"] is None
    assert set(m["missing"]) == {"texture", "svhn", "cifar100", "tin", "lsun", "places365", "tinyimages-300k"}
    assert "offline" in m["missing"]["tinyimages-300k"] and "drive.google.com" in m["missing"]["lsun"]


# ---------------------------------------------------------------- through the CLI

def test_cli_data_list_and_prepare(tmp_path, cli):
    write_cifar_benchmark(tmp_path, "cifar10", per_class=20, aux_rows=10)
    code, out, err = cli(["data", "list", "--drp", tmp_path, "--json"])
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["cifar10"]["ready"] is True and rows["cifar100"]["ready"] is False
    assert rows["imagenet"]["ready"] is False and rows["digits"]["ready"] is True
    files = {f["what"]: f for f in rows["cifar100"]["files"]}
    assert files["ID train: CIFAR-100 training batches"]["path"] == str(tmp_path / "cifar-100-python")
    assert files["auxiliary OOD: 300K random images (training only)"]["present"] is True

    argv = ["data", "prepare", "cifar10", "--drp", tmp_path, "--no-download", "--imbalance_ratio", "0.1",
            "--num_ood_samples", "10"]
    code, out, err = cli(argv)
    assert code == 2 and "does not match the published" in err and "--no-verify" in err
    code, out, err = cli(argv + ["--no-verify"])
    assert code == 0, err
    assert "not verified" in out and str(tmp_path / "cifar10" / "manifest.json") in "".join(out.split())
    manifest = json.loads((tmp_path / "cifar10" / "manifest.json").read_text())
    assert manifest["class_counts"] == [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]
    assert set(manifest["ood_tests"]) == {"texture", "svhn", "cifar100", "tin", "lsun", "places365"}


def test_cli_missing_data_is_one_line_exit_2(tmp_path, cli):
    code, out, err = cli(["data", "prepare", "cifar100", "--drp", tmp_path, "--no-download"])
    assert code == 2
    assert err.count("\n") == 1 and "cifar-100-python" in err and "SCOOD" in err
    # the six SCOOD sets share one way to get them: it is named once
    assert err.count("drive.google.com") == 1 and "texture, svhn, cifar10, tin, lsun, places365: " in err


# ---------------------------------------------------------------- hostile batch files

@pytest.mark.parametrize("payload, why", [
    (b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"abc", "more memory than there is"),  # BINBYTES8 2^40
    (b"\x80\x04\x95" + (1 << 40).to_bytes(8, "little") + b"abc", "not a readable CIFAR batch"),  # FRAME 2^40
    (b"\x80\x02h\x05.", "not a readable CIFAR batch"),  # a memo entry that was never stored
    (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n)R.", "TypeError"),  # an allowed global, called wrongly
    (b"", "not a readable CIFAR batch"),
])
def test_hostile_batch_files_are_one_clear_error(tmp_path, payload, why):
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(ImoodError) as e:
        safe_load_pickle(path)
    assert str(path) in str(e.value) and why in str(e.value) and "\n" not in str(e.value)


def test_a_batch_that_asks_numpy_for_a_terabyte(tmp_path):
    # _reconstruct(ndarray, (2**40,), b"B") allocates before any data is read
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x06\x00\x00\x00\x00\x00\x01"
                     b"\x85C\x01B\x87R.")
    with pytest.raises(ImoodError, match="data_batch_1"):
        safe_load_pickle(path)


def test_batches_that_are_not_dicts_or_hold_odd_labels(tmp_path):
    data = write_cifar(tmp_path, "cifar10", per_class=4)
    path = data["folder"] / "data_batch_2"
    dump_batch(path, [1, 2, 3])
    with pytest.raises(ImoodError, match="data_batch_2 is not a CIFAR batch: it holds a list"):
        cifar.read_batches(data["folder"], CIFAR10.train, "labels", 10)
    dump_batch(path, {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [[0], [1, 2]]})
    with pytest.raises(ImoodError, match="labels should be 2 integers"):
        cifar.read_batches(data["folder"], CIFAR10.train, "labels", 10)
    dump_batch(data["folder"] / "batches.meta", ["not", "a", "dict"])
    assert cifar.read_class_names(data["folder"], CIFAR10) is None  # names only label reports


def test_random_damage_to_a_batch_only_ever_gives_an_imood_error(tmp_path):
    data = write_cifar(tmp_path, "cifar10", per_class=2)
    path = data["folder"] / "data_batch_1"
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        raw = bytearray(good)
        if rng.random() < 0.5:  # flip bytes (mostly in the opcodes and lengths near the start)
            for i in rng.integers(0, min(len(raw), 400), size=int(rng.integers(1, 4))):
                raw[i] = int(rng.integers(0, 256))
        else:  # cut it short
            raw = raw[:int(rng.integers(0, len(raw)))]
        path.write_bytes(bytes(raw))
        try:
            cifar.read_batches(data["folder"], CIFAR10.train[:1], "labels", 10)
            outcomes["ok"] += 1
        except ImoodError as exc:
            assert str(path) in str(exc)
            outcomes["error"] += 1
    assert outcomes["error"] > 100  # the damage was real; nothing but ImoodError came out


# ---------------------------------------------------------------- the user's links, verify as recorded

def test_a_linked_batches_folder_is_used_and_completed_from_the_archive(tmp_path):
    """DATA/cifar-10-batches-py -> another disk: prepare extracts the absent files into it."""
    disk = tmp_path / "big-disk"
    disk.mkdir()
    write_cifar(disk, "cifar10", per_class=20)
    data = tmp_path / "data"
    data.mkdir()
    archive = make_archive(disk, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    shutil.move(archive, data / archive.name)
    with tarfile.open(data / archive.name) as tf:  # the linked folder holds part of the files already
        tf.extract("cifar-10-batches-py/data_batch_1", disk, filter="data")
    (data / "cifar-10-batches-py").symlink_to(disk / "cifar-10-batches-py", target_is_directory=True)
    m = Cifar10().prepare(data, imbalance_ratio=0.1, num_ood_samples=0, verify=False, download=False)
    assert m["options"]["cifar"].startswith("extracted from")
    assert sorted(p.name for p in (disk / "cifar-10-batches-py").iterdir()) == sorted(
        [*(f for f, _ in CIFAR10.train), "test_batch", "batches.meta"])
    assert (data / "cifar-10-batches-py").is_symlink() and m["train_size"] == sum(m["class_counts"])
    assert all(s.present for s in Cifar10().status(data)[:2])


def test_no_verify_data_stays_usable_and_verify_none_follows_the_manifest(tmp_path):
    write_cifar_benchmark(tmp_path, "cifar10", per_class=20, aux_rows=10)
    with pytest.raises(ImoodError, match="MD5"):  # no manifest yet: verify=None checks
        Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=0)
    Cifar10().prepare(tmp_path, imbalance_ratio=0.1, num_ood_samples=10, verify=False, download=False)
    b = Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=10)  # as recorded: not verified
    assert len(b.train) == sum(int(20 * 0.1 ** (k / 9)) for k in range(10))
    with pytest.raises(ImoodError, match="MD5"):
        Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=0, verify=True)
    from imood_cli.engine.benchmarks import load_benchmark

    assert len(load_benchmark("cifar10", tmp_path, imbalance_ratio=0.1, num_ood_samples=0).train) == len(b.train)
    manifest = tmp_path / "cifar10" / "manifest.json"
    manifest.write_text("{not json")
    with pytest.raises(ImoodError, match=r"manifest\.json is not valid JSON"):
        Cifar10().load(tmp_path, imbalance_ratio=0.1, num_ood_samples=0)
