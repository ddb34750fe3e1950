"""`digits`: arrays stored by `data prepare digits`, read back without scikit-learn, checked like any input."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from imood_cli.data.benchmarks import digits as digits_mod
from imood_cli.data.benchmarks.digits import ARRAYS_FILE, Digits
from imood_cli.errors import ImoodError

TESTS = Path(__file__).resolve().parents[1]  # tests/


def all_sets(b):
    return {"train": b.train, "test": b.test, "aux": b.aux_ood, **b.ood_tests}


def assert_same_benchmark(a, b):
    assert a.class_counts == b.class_counts
    sa, sb = all_sets(a), all_sets(b)
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k].images, sb[k].images) and torch.equal(sa[k].labels, sb[k].labels), k


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits_data")
    manifest = Digits().prepare(root)
    return root, manifest


def test_prepare_stores_the_arrays_and_records_their_checksum(prepared):
    root, manifest = prepared
    path = root / "digits" / ARRAYS_FILE
    raw = path.read_bytes()
    assert 200_000 < len(raw) < 600_000  # a few hundred KB
    assert manifest["arrays"] == {"file": ARRAYS_FILE, "sha256": hashlib.sha256(raw).hexdigest()}
    with np.load(path, allow_pickle=False) as z:
        assert {k: (z[k].dtype, z[k].shape) for k in z.files} == {
            "digits": (np.uint8, (1797, 8, 8)), "targets": (np.uint8, (1797,)),
            "china_patches": (np.uint8, (1500, 8, 8)), "strokes": (np.uint8, (1500, 8, 8)),
            "flower_patches": (np.uint8, (600, 8, 8))}
        # independently: sklearn's 0..16 digits scaled to 0..255, and their labels
        from sklearn.datasets import load_digits

        d = load_digits()
        assert np.array_equal(z["digits"], np.rint(d.images * (255 / 16)).astype(np.uint8))
        assert np.array_equal(z["targets"], d.target)
    assert "stored in" in Digits().status(root)[0].detail


@pytest.mark.parametrize("ratio", [None, 0.5])
def test_stored_arrays_give_the_same_pixels_as_a_fresh_build(prepared, ratio):
    root, _ = prepared
    assert_same_benchmark(Digits().load(root, imbalance_ratio=ratio), Digits().load(None, imbalance_ratio=ratio))


def test_loading_stored_arrays_does_not_import_scikit_learn(prepared):
    root, _ = prepared
    code = textwrap.dedent(f"""
        import sys, hashlib, json
        sys.modules["sklearn"] = None  # any import of scikit-learn now fails
        from imood_cli.data.benchmarks.digits import Digits
        b = Digits().load({str(root)!r})
        h = hashlib.sha256(b.train.images.numpy().tobytes() + b.ood_tests["flower-patches"].images.numpy().tobytes())
        print(json.dumps([h.hexdigest(), "sklearn" in sys.modules and sys.modules["sklearn"] is not None]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    digest, imported = json.loads(done.stdout.strip().splitlines()[-1])
    b = Digits().load(None)
    assert digest == hashlib.sha256(b.train.images.numpy().tobytes()
                                    + b.ood_tests["flower-patches"].images.numpy().tobytes()).hexdigest()
    assert imported is False


def copy_prepared(prepared, tmp_path):
    root, _ = prepared
    (tmp_path / "digits").mkdir()
    for name in (ARRAYS_FILE, "manifest.json"):
        (tmp_path / "digits" / name).write_bytes((root / "digits" / name).read_bytes())
    return tmp_path / "digits"


def rewrite(folder, **changes):
    """Store altered arrays and record their true checksum, so only the content checks can catch them."""
    with np.load(folder / ARRAYS_FILE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    raw = digits_mod.arrays_bytes(arrays)
    (folder / ARRAYS_FILE).write_bytes(raw)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["arrays"]["sha256"] = hashlib.sha256(raw).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("change, match", [
    ({"targets": np.full(1797, 12, dtype=np.uint8)}, "targets outside 0..9"),
    ({"digits": np.zeros((1797, 8, 8), dtype=np.float32)}, r"digits should be uint8 \(1797, 8, 8\), found float32"),
    ({"china_patches": np.zeros((30, 8, 8), dtype=np.uint8)}, r"china_patches should be uint8 \(1500, 8, 8\)"),
    ({"flower_patches": None}, "expected the arrays china_patches, digits, flower_patches, strokes, targets"),
])
def test_stored_arrays_are_checked(prepared, tmp_path, change, match):
    folder = copy_prepared(prepared, tmp_path)
    rewrite(folder, **change)
    with pytest.raises(ImoodError, match=match) as e:
        Digits().load(tmp_path)
    assert str(folder / ARRAYS_FILE) in str(e.value)


def test_changed_or_unrecorded_arrays_are_refused_and_never_overwritten(prepared, tmp_path):
    folder = copy_prepared(prepared, tmp_path)
    raw = bytearray((folder / ARRAYS_FILE).read_bytes())
    raw[len(raw) // 2] ^= 1
    (folder / ARRAYS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ImoodError, match="sha256 does not match"):
        Digits().load(tmp_path)
    with pytest.raises(ImoodError, match="sha256 does not match"):
        Digits().prepare(tmp_path)
    assert (folder / ARRAYS_FILE).read_bytes() == bytes(raw)  # prepare did not replace it
    (folder / "manifest.json").unlink()
    with pytest.raises(ImoodError, match="not recorded in"):
        Digits().load(tmp_path)
    (folder / ARRAYS_FILE).unlink()  # gone: built from scikit-learn again, as before
    assert_same_benchmark(Digits().load(tmp_path), Digits().load(None))


def test_a_prepare_cut_short_after_the_manifest_still_loads(tmp_path, monkeypatch):
    def fail(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(digits_mod, "atomic_write_bytes", fail)
    with pytest.raises(KeyboardInterrupt):
        Digits().prepare(tmp_path)
    assert sorted(os.listdir(tmp_path / "digits")) == ["manifest.json"]
    assert_same_benchmark(Digits().load(tmp_path), Digits().load(None))
    monkeypatch.undo()
    Digits().prepare(tmp_path)  # the next prepare stores them
    assert_same_benchmark(Digits().load(tmp_path), Digits().load(None))


def test_num_ood_samples_and_ood_tests(prepared):
    root, _ = prepared
    full = Digits().load(root)
    assert len(full.aux_ood) == 3000 and Digits().load(root, num_ood_samples=0).aux_ood is None
    assert torch.equal(Digits().load(root, num_ood_samples=10).aux_ood.images, full.aux_ood.images[:10])
    assert Digits().load(root, ood_tests=False).ood_tests == {}
    with pytest.raises(ImoodError, match="0..3,000"):
        Digits().load(root, num_ood_samples=3001)


def test_auxiliary_set_alternates_photo_patches_and_pen_strokes():
    """Outliers from photos alone teach 'photo vs digit'; the pen strokes are digit-like shapes of no class.
    They alternate, so the first N images (--num_ood_samples) hold both kinds."""
    from imood_cli.data.benchmarks.digits import build_arrays, pen_strokes

    arrays = build_arrays()
    bench = Digits().load(None)
    aux = bench.aux_ood.images[:, 0].numpy()
    assert bench.aux_ood.name == "patches-and-strokes" and aux.shape == (3000, 8, 8)
    np.testing.assert_array_equal(aux[0::2], arrays["china_patches"])
    np.testing.assert_array_equal(aux[1::2], arrays["strokes"])
    np.testing.assert_array_equal(pen_strokes(5, 4), pen_strokes(5, 4))  # seeded: the same every time
    strokes = arrays["strokes"].astype(int)
    assert (strokes.max(axis=(1, 2)) == 255).all()  # each drawn to the full range, like the scaled digits
    ink = (strokes > 64).mean(axis=(1, 2))
    assert 0.05 < ink.mean() < 0.6  # lines, not blank images nor filled squares
    assert len(Digits().load(None, num_ood_samples=2).aux_ood) == 2


def test_built_arrays_are_cached_per_process_but_handed_out_as_copies():
    """Each in-memory load would otherwise redraw the strokes and decode the photos (seconds); a caller
    that writes into its arrays must not change what the next load gets."""
    from imood_cli.data.benchmarks.digits import build_arrays

    first = build_arrays()
    first["strokes"][:] = 0
    first["digits"][0] = 7
    second = build_arrays()
    assert second["strokes"].max() == 255 and not (second["digits"][0] == 7).all()
    assert second["strokes"].flags.writeable  # torch.from_numpy gets a writable array, no warning
    bench = Digits().load(None)
    assert bench.aux_ood.images[1::2].amax() == 255
