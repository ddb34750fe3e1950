"""`glyphs`: the rendered benchmark with a real tail: deterministic, the stated sizes, disjoint sets, stored
arrays checked like any input, prepared and loaded through the CLI."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from imood_cli.data.benchmarks import glyphs as glyphs_mod
from imood_cli.data.benchmarks.glyphs import (
    ARRAYS_FILE,
    CLASSES,
    GREEK,
    SEED,
    SYMBOLS,
    Glyphs,
    arrays_bytes,
    build_arrays,
)
from imood_cli.data.pipeline.longtail import longtail_counts
from imood_cli.engine.metrics.groups import shot_groups
from imood_cli.errors import ImoodError
from imood_cli.registry import Registry, reset_registry


@pytest.fixture
def registered():
    """`glyphs` in the process-wide registry, as its entry point will put it (the same target, so once
    pyproject.toml names it the two are one entry)."""
    reg = Registry()
    reg.add("dataset", "glyphs", Glyphs, distribution="imood")
    old = reset_registry(reg)
    yield reg
    reset_registry(old)


@pytest.fixture(scope="module")
def arrays():
    return build_arrays()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("glyphs_data")
    manifest = Glyphs().prepare(root)
    return root, manifest


def all_sets(b):
    return {"train": b.train, "test": b.test, "aux": b.aux_ood, **b.ood_tests}


def assert_same_benchmark(a, b):
    assert a.class_counts == b.class_counts
    sa, sb = all_sets(a), all_sets(b)
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k].images, sb[k].images) and torch.equal(sa[k].labels, sb[k].labels), k


# ---------------------------------------------------------------- what it holds


def test_classes_and_long_tail_groups(arrays):
    """59 letters and digits; at ρ = 0.01 the shot groups hold 20 / 20 / 19 classes, the few-shot ones with
    5-20 training images, each class with 100 test images."""
    assert glyphs_mod.NUM_CLASSES == len(set(CLASSES)) == 59
    assert set(CLASSES) == set("0123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
    bench = Glyphs().load(None)
    counts = bench.class_counts
    assert counts == longtail_counts(500, 59, 0.01) == glyphs_mod.train_counts(0.01)
    assert counts[0] == 500 and counts[-1] == 5 and len(bench.train) == sum(counts) == 6462
    assert sum(n <= 20 for n in counts) >= 15
    groups = shot_groups(counts)
    assert {k: len(v) for k, v in groups.items()} == {"many": 20, "medium": 20, "few": 19}
    assert max(counts[k] for k in groups["few"]) <= 20 and min(counts[k] for k in groups["many"]) > 100
    assert torch.bincount(bench.train.labels, minlength=59).tolist() == counts
    assert torch.bincount(bench.test.labels, minlength=59).tolist() == [100] * 59
    assert bench.class_names == list(CLASSES) and bench.channels == 1 and bench.image_size == 32
    assert not bench.augment.flip  # letters have a handedness
    assert {k: len(v) for k, v in bench.ood_tests.items()} == {"greek": 2000, "flower-patches": 2000, "noise": 2000}
    assert len(bench.aux_ood) == 6000
    for s in all_sets(bench).values():
        assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (1, 32, 32)


def test_images_are_glyphs_on_a_dark_ground(arrays):
    """Each ID image has ink: a bright glyph over a darker ground, not a blank or saturated square."""
    test = arrays["test"].astype(np.float64)
    ground = np.median(test.reshape(len(test), -1), axis=1)
    bright = np.percentile(test.reshape(len(test), -1), 99, axis=1)
    assert (bright - ground > 40).mean() > 0.99
    assert (ground < 110).all()


# ---------------------------------------------------------------- deterministic


def test_two_builds_are_identical_to_the_byte(arrays):
    """Same seed, same arrays and the same .npz bytes (so the same sha256 in every manifest); another seed
    draws other images."""
    fresh = glyphs_mod._built_arrays.__wrapped__  # the build itself, not the per-process cache
    again = fresh(tuple(glyphs_mod.train_counts(0.01)), SEED)
    assert set(again) == set(arrays)
    for key in arrays:
        np.testing.assert_array_equal(again[key], arrays[key], err_msg=key)
    assert hashlib.sha256(arrays_bytes(again)).hexdigest() == hashlib.sha256(arrays_bytes(arrays)).hexdigest()
    other = glyphs_mod.class_images(3, 4, glyphs_mod.TRAIN, seed=SEED + 1)
    assert not np.array_equal(other, arrays["train"][arrays["train_labels"] == 3][:4])


def test_each_class_is_one_stream_so_any_ratio_takes_a_prefix(arrays):
    """Image j of class k depends on (seed, set, k, j) only: the first n of a class are the same whatever
    n, which lets one stored file serve every ρ whose counts it covers."""
    k = 7
    ten = glyphs_mod.class_images(k, 10, glyphs_mod.TRAIN)
    np.testing.assert_array_equal(glyphs_mod.class_images(k, 3, glyphs_mod.TRAIN), ten[:3])
    np.testing.assert_array_equal(arrays["train"][arrays["train_labels"] == k][:10], ten)
    assert not np.array_equal(glyphs_mod.class_images(k, 10, glyphs_mod.TEST), ten)  # another stream


def test_built_arrays_are_cached_but_handed_out_as_copies(arrays):
    first = build_arrays()
    first["aux"][:] = 0
    assert build_arrays()["aux"].max() == 255 and build_arrays()["aux"].flags.writeable


# ---------------------------------------------------------------- disjoint sets


def test_id_aux_and_ood_classes_are_disjoint():
    id_, near, aux = set(CLASSES), set(GREEK), set(SYMBOLS)
    assert len(near) == len(GREEK) == 27 and len(aux) == len(SYMBOLS)
    assert not id_ & near and not id_ & aux and not near & aux
    assert all("\u0370" <= c <= "\u03ff" for c in GREEK)
    # Greek capitals drawn like Latin ones, and symbols drawn like letters, are left out by name
    assert not set("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧικνορυχς") & near
    assert not set("×⊂⊃∪∩∨∧∑∏∆∈∝∂∅µ|$¢€£¥") & aux


def test_no_glyph_of_the_ood_or_aux_sets_is_drawn_like_an_id_glyph():
    """No Greek letter or symbol has the outline of an ID glyph, nor a symbol that of a Greek letter, in any
    face that has both: DejaVu draws each homoglyph (Greek Α, Latin A) with the very same outline, which
    this catches (overlap 1.0), while near-OOD letters that merely resemble one (Λ and A) stay below 0.95."""
    def overlap(a, b):  # the soft IoU of two glyphs' ink
        return np.minimum(a, b).sum(axis=-1) / np.maximum(a, b).sum(axis=-1)

    def ink(chars, face):  # at half the master's resolution: as the images see it, and 4× fewer sums
        m = np.stack([glyphs_mod._master(c, face) for c in chars]).astype(np.float32) / 255
        return m.reshape(len(chars), 48, 2, 48, 2).mean(axis=(2, 4)).reshape(len(chars), -1)

    for face in glyphs_mod.DEJAVU + glyphs_mod.STIX:
        near = [c for c in GREEK if face in glyphs_mod.faces_for(c)]
        aux = [c for c in SYMBOLS if face in glyphs_mod.faces_for(c)]
        for group, against in ((near + aux, list(CLASSES)), (aux, near)):
            if not group:
                continue
            ov = overlap(ink(group, face)[:, None], ink(against, face)[None])
            i, j = np.unravel_index(ov.argmax(), ov.shape)
            assert ov.max() < 0.95, f"{group[i]!r} is drawn like {against[j]!r} in {face} (overlap {ov.max():.2f})"
    ab = ink("ΑA", "DejaVuSans.ttf")
    assert overlap(ab[0], ab[1]) == 1.0  # the check can fail


def test_no_image_is_shared_between_sets(arrays):
    """Not one identical image across ID train, ID test, the auxiliary set and the OOD test sets."""
    seen = {}
    for key in ("train", "test", "aux", "greek", "flower_patches", "noise"):
        digests = {hashlib.sha256(im.tobytes()).digest() for im in arrays[key]}
        for other, theirs in seen.items():
            assert not digests & theirs, f"{key} and {other} share an image"
        seen[key] = digests


def test_auxiliary_set_alternates_symbols_china_patches_and_strokes(arrays):
    """Image i of the auxiliary set is a symbol, a crop of china.jpg or a pen stroke as i % 3 is 0, 1, 2, so
    any first N (N >= 3) hold every kind; the far-OOD patches come from the other photo, flower.jpg."""
    g, aux = glyphs_mod, arrays["aux"]
    np.testing.assert_array_equal(aux[0::3], g.cycle_images(SYMBOLS, 2000, SEED, g.SYMBOL))
    np.testing.assert_array_equal(aux[1::3], g.photo_patches(g.photo("china.jpg"), 2000, SEED, g.CHINA))
    np.testing.assert_array_equal(aux[2::3][:50], g.pen_strokes(50, SEED))
    flower = g.photo_patches(g.photo("flower.jpg"), 2000, SEED, g.FLOWER)
    np.testing.assert_array_equal(arrays["flower_patches"], flower)
    bench = Glyphs().load(None, num_ood_samples=3)
    assert bench.aux_ood.name == "symbols-patches-strokes" and len(bench.aux_ood) == 3
    np.testing.assert_array_equal(bench.aux_ood.images[:, 0].numpy(), aux[:3])
    assert Glyphs().load(None, num_ood_samples=0).aux_ood is None
    with pytest.raises(ImoodError, match="0..6,000"):
        Glyphs().load(None, num_ood_samples=6001)


# ---------------------------------------------------------------- stored arrays


def test_prepare_stores_the_arrays_and_records_their_checksum(prepared, arrays):
    root, manifest = prepared
    raw = (root / "glyphs" / ARRAYS_FILE).read_bytes()
    assert raw == arrays_bytes(arrays)  # the same bytes a build gives: the same sha256 on every machine run
    assert manifest["arrays"]["file"] == ARRAYS_FILE
    assert manifest["arrays"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert manifest["class_counts"] == glyphs_mod.train_counts(0.01) and manifest["test_class_counts"] == [100] * 59
    assert set(manifest["ood_tests"]) == {"greek", "flower-patches", "noise"}
    with np.load(root / "glyphs" / ARRAYS_FILE, allow_pickle=False) as z:
        assert {k: z[k].dtype for k in z.files} == {k: np.dtype(np.uint8) for k in glyphs_mod.ARRAY_KEYS}
    assert "stored in" in Glyphs().status(root)[0].detail


def test_stored_arrays_give_the_same_benchmark_as_a_fresh_build(prepared):
    root, _ = prepared
    assert_same_benchmark(Glyphs().load(root), Glyphs().load(None))


def test_a_smaller_ratio_takes_prefixes_of_the_stored_classes(prepared):
    """ρ = 0.005 needs no more images of any class than the stored ρ = 0.01: served from the file."""
    root, _ = prepared
    full, small = Glyphs().load(root), Glyphs().load(root, imbalance_ratio=0.005)
    assert small.class_counts == glyphs_mod.train_counts(0.005) and len(small.train) < len(full.train)
    for k in (0, 30, 58):
        n = small.class_counts[k]
        np.testing.assert_array_equal(small.train.images[small.train.labels == k].numpy(),
                                      full.train.images[full.train.labels == k][:n].numpy())
    np.testing.assert_array_equal(small.train.images[small.train.labels == 58][:, 0].numpy(),
                                  glyphs_mod.class_images(58, small.class_counts[58], glyphs_mod.TRAIN))


def test_loading_stored_arrays_renders_nothing(prepared):
    """With the file, load reads it: no font, no PIL, no scikit-learn; and importing the module (as
    `imood data list` does) loads none of torch, numpy's consumers or the renderers."""
    root, _ = prepared
    code = textwrap.dedent(f"""
        import sys, hashlib, json
        import imood_cli.data.benchmarks.glyphs
        heavy = sorted(m for m in ("torch", "PIL", "matplotlib", "sklearn", "fontTools") if m in sys.modules)
        for m in ("PIL", "matplotlib", "sklearn", "fontTools"):
            sys.modules[m] = None  # any import of them now fails
        b = imood_cli.data.benchmarks.glyphs.Glyphs().load({str(root)!r})
        h = hashlib.sha256(b.train.images.numpy().tobytes() + b.ood_tests["greek"].images.numpy().tobytes())
        print(json.dumps([h.hexdigest(), heavy]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    digest, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    b = Glyphs().load(None)
    assert digest == hashlib.sha256(b.train.images.numpy().tobytes()
                                    + b.ood_tests["greek"].images.numpy().tobytes()).hexdigest()
    assert heavy == []


def copy_prepared(prepared, tmp_path):
    root, _ = prepared
    (tmp_path / "glyphs").mkdir()
    for name in (ARRAYS_FILE, "manifest.json"):
        (tmp_path / "glyphs" / name).write_bytes((root / "glyphs" / name).read_bytes())
    return tmp_path / "glyphs"


def rewrite(folder, **changes):
    """Store altered arrays and record their true checksum, so only the content checks can catch them."""
    with np.load(folder / ARRAYS_FILE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    raw = arrays_bytes({k: v for k, v in arrays.items() if v is not None})
    (folder / ARRAYS_FILE).write_bytes(raw)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["arrays"]["sha256"] = hashlib.sha256(raw).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def labels_with(counts):
    return np.repeat(np.arange(len(counts), dtype=np.uint8), counts)


@pytest.mark.parametrize("change, match", [
    ({"test": np.zeros((5900, 32, 32), dtype=np.float32)}, "test should be uint8, found float32"),
    ({"greek": np.zeros((20, 32, 32), dtype=np.uint8)}, r"greek should have the shape \(2000, 32, 32\)"),
    ({"noise": None}, "expected the arrays aux, flower_patches, greek, noise, test, test_labels, train, "),
    ({"test_labels": np.zeros(5900, dtype=np.uint8)}, "test_labels should be 100 of each class"),
    ({"train_labels": labels_with(glyphs_mod.train_counts(0.01))[::-1].copy()}, "train_labels should be class-major"),
    ({"train_labels": np.full(6462, 59, dtype=np.uint8)}, "train_labels should be class-major"),
    ({"train": np.zeros((10, 32, 32), dtype=np.uint8)}, r"train should be \[N, 32, 32\] with N = len"),
])
def test_stored_arrays_are_checked(prepared, tmp_path, change, match):
    folder = copy_prepared(prepared, tmp_path)
    rewrite(folder, **change)
    with pytest.raises(ImoodError, match=match) as e:
        Glyphs().load(tmp_path)
    assert str(folder / ARRAYS_FILE) in str(e.value)


def test_a_changed_byte_is_an_error_naming_the_file(prepared, tmp_path, registered, cli):
    folder = copy_prepared(prepared, tmp_path)
    raw = bytearray((folder / ARRAYS_FILE).read_bytes())
    raw[len(raw) // 2] ^= 1
    (folder / ARRAYS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ImoodError, match="sha256 does not match") as e:
        Glyphs().load(tmp_path)
    assert str(folder / ARRAYS_FILE) in str(e.value)
    code, out, err = cli(["data", "prepare", "glyphs", "--drp", tmp_path])
    assert code == 2 and "sha256 does not match" in err and str(folder / ARRAYS_FILE) in err.replace("\n", "")
    assert (folder / ARRAYS_FILE).read_bytes() == bytes(raw)  # prepare did not replace it
    (folder / "manifest.json").unlink()
    with pytest.raises(ImoodError, match="not recorded in"):
        Glyphs().load(tmp_path)
    (folder / ARRAYS_FILE).unlink()  # gone: rendered in memory again
    assert_same_benchmark(Glyphs().load(tmp_path), Glyphs().load(None))


def test_a_prepare_cut_short_after_the_manifest_still_loads(tmp_path, monkeypatch):
    def fail(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(glyphs_mod, "atomic_write_bytes", fail)
    with pytest.raises(KeyboardInterrupt):
        Glyphs().prepare(tmp_path)
    assert sorted(os.listdir(tmp_path / "glyphs")) == ["manifest.json"]
    assert_same_benchmark(Glyphs().load(tmp_path), Glyphs().load(None))


def test_prepare_replaces_a_stored_file_that_does_not_cover_the_ratio(prepared, tmp_path, monkeypatch):
    """A file with fewer images of a class than ρ needs is imood's own, checked: prepare removes it before
    writing the manifest, so no cut leaves a manifest that disagrees with the file."""
    folder = copy_prepared(prepared, tmp_path)
    labels = labels_with(glyphs_mod.train_counts(0.01))
    keep = np.ones(len(labels), dtype=bool)
    keep[np.flatnonzero(labels == 58)[1:]] = False  # class 58 keeps 1 of its 5 images
    with np.load(folder / ARRAYS_FILE, allow_pickle=False) as z:
        rewrite(folder, train=z["train"][keep], train_labels=labels[keep])
    assert_same_benchmark(Glyphs().load(tmp_path), Glyphs().load(None))  # not covered: rendered in memory
    Glyphs().prepare(tmp_path)
    assert (folder / ARRAYS_FILE).read_bytes() == (prepared[0] / "glyphs" / ARRAYS_FILE).read_bytes()


# ---------------------------------------------------------------- through the CLI


def test_prepare_and_load_through_the_cli(prepared, tmp_path, registered, cli):
    from imood_cli.engine.benchmarks import load_benchmark

    code, out, err = cli(["data", "prepare", "glyphs", "--drp", tmp_path])
    assert code == 0, err
    assert "glyphs: prepared" in out and "6,462" in out
    assert (tmp_path / "glyphs" / ARRAYS_FILE).read_bytes() == (prepared[0] / "glyphs" / ARRAYS_FILE).read_bytes()
    code, out, err = cli(["data", "list", "--drp", tmp_path, "--json"])
    assert code == 0, err
    listed = json.dumps(json.loads(out))
    assert "glyphs" in listed and "stored in" in listed
    bench = load_benchmark("glyphs", tmp_path)  # as `imood train --ds glyphs` and `imood score` load it
    assert_same_benchmark(bench, Glyphs().load(None))
