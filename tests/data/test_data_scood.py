"""SCOOD OOD test sets: imglist parsing, sc_label semantics, decoding, caching (data/scood.py)."""

import numpy as np
import pytest
from fixtures_data import SCOOD_SETS, solid_png, write_scood
from PIL import Image

from imood_cli.data.benchmarks import scood
from imood_cli.errors import ImoodError


def test_six_sets_with_sc_labels_kept(tmp_path):
    written = write_scood(tmp_path, "cifar10", per_set=3, id_label=2)
    sets = scood.load_sets(tmp_path, "cifar10", num_classes=10)
    # SCOOD's `cifar` set is the other CIFAR: cifar100 for the cifar10 benchmark
    assert list(sets) == ["texture", "svhn", "cifar100", "tin", "lsun", "places365"]
    for name, s in zip(SCOOD_SETS, sets.values()):
        pixels, labels = written[name]
        assert s.labels.tolist() == labels.tolist() == [-1, -1, -1, 2]  # the ID-class image keeps its class
        assert s.images.dtype.is_floating_point is False and tuple(s.images.shape) == (4, 3, 32, 32)
        assert np.array_equal(s.images.numpy(), pixels)


def test_cifar100_benchmark_names_the_other_set_cifar10(tmp_path):
    write_scood(tmp_path, "cifar100", per_set=1, id_label=57)
    sets = scood.load_sets(tmp_path, "cifar100", num_classes=100)
    assert "cifar10" in sets and sets["cifar10"].labels.tolist() == [-1, 57]


def test_images_are_resized_to_32_and_converted_to_rgb(tmp_path):
    base = tmp_path / "SCOOD" / "data"
    solid_png(base / "images" / "texture" / "big.png", (200, 10, 60), size=(300, 200))
    solid_png(base / "images" / "texture" / "gray.png", 77, size=(40, 40), mode="L")
    solid_png(base / "images" / "texture" / "rgba.png", (5, 6, 7, 0), size=(32, 32), mode="RGBA")
    lst = scood.imglist_path(tmp_path, "cifar10", "texture")
    lst.parent.mkdir(parents=True)
    lst.write_text('texture/big.png {"sc_label": -1}\ntexture/gray.png {"sc_label": -1, "x": [1, 2]}\n\n'
                   'texture/rgba.png {"sc_label": -1}\n')
    s = scood.load_set(tmp_path, "cifar10", "texture", 10)
    assert tuple(s.images.shape) == (3, 3, 32, 32)
    assert s.images[0, :, 16, 16].tolist() == [200, 10, 60]
    assert s.images[1].eq(77).all()  # grayscale → three equal channels
    assert s.images[2, :, 0, 0].tolist() == [5, 6, 7]  # alpha dropped


def test_bilinear_resize_of_a_larger_image(tmp_path):
    base = tmp_path / "SCOOD" / "data"
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, size=(64, 48, 3), dtype=np.uint8)
    (base / "images" / "tin").mkdir(parents=True)
    Image.fromarray(a).save(base / "images" / "tin" / "x.png")
    lst = scood.imglist_path(tmp_path, "cifar10", "tin")
    lst.parent.mkdir(parents=True)
    lst.write_text('tin/x.png {"sc_label": -1}\n')
    s = scood.load_set(tmp_path, "cifar10", "tin", 10)
    expected = np.asarray(Image.fromarray(a).resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(s.images[0].numpy(), expected)


def test_undecodable_and_missing_images_are_named(tmp_path):
    write_scood(tmp_path, "cifar10", per_set=3)
    images = tmp_path / "SCOOD" / "data" / "images"
    (images / "svhn" / "test" / "cifar10_001.png").write_bytes(b"not a png at all")
    (images / "svhn" / "test" / "cifar10_002.png").unlink()
    with pytest.raises(ImoodError) as e:
        scood.load_set(tmp_path, "cifar10", "svhn", 10)
    msg = str(e.value)
    assert "2 of 4 images could not be read" in msg
    assert "svhn/test/cifar10_001.png" in msg and "cifar10_002.png (missing)" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("line, match", [
    ("a.png", "expected '<relative path> <json dict>'"),
    ("a.png {sc_label: 1}", "not valid JSON"),
    ('a.png {"label": 1}', "no integer sc_label"),
    ('a.png {"sc_label": "3"}', "no integer sc_label"),
    ('a.png {"sc_label": 10}', "sc_label 10 is not a class of a 10-class benchmark"),
])
def test_bad_list_lines_name_file_and_line(tmp_path, line, match):
    lst = scood.imglist_path(tmp_path, "cifar10", "lsun")
    lst.parent.mkdir(parents=True)
    lst.write_text('ok.png {"sc_label": -1}\n' + line + "\n")
    with pytest.raises(ImoodError, match=match) as e:
        scood.parse_imglist(lst, 10)
    assert "test_lsun.txt:2" in str(e.value)


def test_paths_with_spaces_and_any_negative_label(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text('dir a/b c.png {"sc_label": -5, "other": "x y"}\nx.png {"sc_label": 0}\n')
    assert scood.parse_imglist(lst, 10) == (["dir a/b c.png", "x.png"], [-1, 0])


def test_decoded_sets_are_cached_and_the_cache_follows_the_list(tmp_path):
    written = write_scood(tmp_path, "cifar10", per_set=2)
    cache = tmp_path / "cache"
    first = scood.load_set(tmp_path, "cifar10", "lsun", 10, cache_dir=cache)
    cached = cache / "scood-lsun-32.npz"
    assert cached.exists()
    with np.load(cached, allow_pickle=False) as z:  # no pickles in the cache
        assert np.array_equal(z["images"], written["lsun"][0])
    # With the images gone, the cache still serves the same set ...
    for p in (tmp_path / "SCOOD" / "data" / "images" / "lsun").rglob("*.png"):
        p.unlink()
    again = scood.load_set(tmp_path, "cifar10", "lsun", 10, cache_dir=cache)
    assert np.array_equal(again.images.numpy(), first.images.numpy())
    assert again.labels.tolist() == first.labels.tolist() == [-1, -1, 2]
    # ... but a changed list is decoded again (and now finds the images missing).
    lst = scood.imglist_path(tmp_path, "cifar10", "lsun")
    lst.write_text(lst.read_text().replace('"sc_label": 2', '"sc_label": 3'))
    with pytest.raises(ImoodError, match="3 of 3 images could not be read"):
        scood.load_set(tmp_path, "cifar10", "lsun", 10, cache_dir=cache)


def test_status_and_missing_text(tmp_path):
    st = scood.status(tmp_path, "cifar10")
    assert [s.present for s in st] == [False] * 7
    assert st[1].path == tmp_path / "SCOOD" / "data" / "imglist" / "benchmark_cifar10" / "test_texture.txt"
    text = scood.missing_text(tmp_path, "cifar10")
    assert "test_cifar.txt" in text and "drive.google.com" in text and str(tmp_path / "SCOOD" / "data") in text
    write_scood(tmp_path, "cifar10", per_set=1)
    assert scood.missing_text(tmp_path, "cifar10") is None
    assert all(s.present for s in scood.status(tmp_path, "cifar10"))
    scood.imglist_path(tmp_path, "cifar10", "places365").unlink()
    text = scood.missing_text(tmp_path, "cifar10")
    assert "test_places365.txt" in text and "test_svhn.txt" not in text and "images/" not in text.split("(")[0]



# ---------------------------------------------------------------- caches are inputs too

def forge_cache(path, images, labels, key):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels, key=np.array(key))


@pytest.mark.parametrize("forgery", ["float images", "wrong shape", "fewer labels", "other labels", "int8 images",
                                     "extra array", "object array", "not a zip"])
def test_a_cache_that_does_not_fit_the_list_is_ignored_and_rebuilt(tmp_path, forgery):
    written = write_scood(tmp_path, "cifar10", per_set=3, id_label=2)
    pixels, labels = written["svhn"]
    cache_dir = tmp_path / "cache"
    scood.load_set(tmp_path, "cifar10", "svhn", 10, cache_dir=cache_dir)  # a valid cache, to take its key from
    path = cache_dir / "scood-svhn-32.npz"
    with np.load(path, allow_pickle=False) as z:
        key = str(z["key"])
    n = len(labels)
    if forgery == "float images":
        forge_cache(path, pixels.astype(np.float32) / 255, labels, key)
    elif forgery == "wrong shape":
        forge_cache(path, pixels[:, :, :16, :16], labels, key)
    elif forgery == "fewer labels":
        forge_cache(path, pixels, labels[:-1], key)
    elif forgery == "other labels":
        forge_cache(path, pixels, np.full(n, -1), key)  # the ID-class image would be scored as OOD
    elif forgery == "int8 images":
        forge_cache(path, pixels.view(np.int8), labels, key)
    elif forgery == "extra array":
        np.savez(path, images=pixels, labels=labels, key=np.array(key), more=np.zeros(3))
    elif forgery == "object array":
        np.savez(path, images=np.array([None] * n, dtype=object), labels=labels, key=np.array(key))
    else:
        path.write_bytes(b"PK\x03\x04 not really")
    s = scood.load_set(tmp_path, "cifar10", "svhn", 10, cache_dir=cache_dir)
    assert np.array_equal(s.images.numpy(), pixels) and s.labels.tolist() == labels.tolist()
    with np.load(path, allow_pickle=False) as z:  # rebuilt: the next load is a valid hit
        assert z["images"].dtype == np.uint8 and np.array_equal(z["images"], pixels)
        assert z["labels"].tolist() == labels.tolist()


def test_a_cache_that_would_inflate_past_the_set_is_ignored(tmp_path):
    written = write_scood(tmp_path, "cifar10", per_set=1)
    cache_dir = tmp_path / "cache"
    scood.load_set(tmp_path, "cifar10", "tin", 10, cache_dir=cache_dir)
    path = cache_dir / "scood-tin-32.npz"
    with np.load(path, allow_pickle=False) as z:
        key = str(z["key"])
    big = np.zeros((2000, 3, 32, 32), dtype=np.uint8)  # 6 MB of zeros in a few KB
    np.savez_compressed(path, images=big, labels=np.zeros(2000, dtype=np.int64), key=np.array(key))
    assert path.stat().st_size < 100_000
    s = scood.load_set(tmp_path, "cifar10", "tin", 10, cache_dir=cache_dir)
    assert np.array_equal(s.images.numpy(), written["tin"][0])


def test_partial_scood_returns_the_sets_on_disk_and_names_the_others(tmp_path):
    write_scood(tmp_path, "cifar10", per_set=1)
    scood.imglist_path(tmp_path, "cifar10", "cifar").unlink()
    scood.imglist_path(tmp_path, "cifar10", "lsun").unlink()
    sets, missing = scood.load_present_sets(tmp_path, "cifar10", 10)
    assert list(sets) == ["texture", "svhn", "tin", "places365"]
    assert list(missing) == ["cifar100", "lsun"]
    assert "test_lsun.txt is missing" in missing["lsun"] and scood.URL in missing["lsun"]
    import shutil

    shutil.rmtree(tmp_path / "SCOOD" / "data" / "images")
    sets, missing = scood.load_present_sets(tmp_path, "cifar10", 10)
    assert sets == {} and len(missing) == 6 and "images/ is missing" in missing["texture"]
