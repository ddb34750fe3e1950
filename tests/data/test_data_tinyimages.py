"""The 300K random images file: memory-mapped, first N rows, header checks (data/tinyimages.py)."""

import numpy as np
import pytest
import torch
from fixtures_data import write_300k

from imood_cli.data.benchmarks import tinyimages
from imood_cli.data.benchmarks.tinyimages import load_tinyimages, open_300k, tinyimages_path
from imood_cli.errors import ImoodError


def test_first_rows_as_nchw_uint8(tmp_path):
    a = write_300k(tmp_path, rows=25)
    s = load_tinyimages(tmp_path, 10)
    assert s.images.dtype == torch.uint8 and tuple(s.images.shape) == (10, 3, 32, 32)
    # pixel (c, y, x) of image i is the file's [i, y, x, c]
    assert s.images[3, 2, 5, 7].item() == a[3, 5, 7, 2]
    assert np.array_equal(s.images.numpy(), a[:10].transpose(0, 3, 1, 2))
    assert s.labels.tolist() == [-1] * 10
    assert len(load_tinyimages(tmp_path, 0)) == 0


def test_the_file_is_memory_mapped_not_read(tmp_path):
    write_300k(tmp_path, rows=8)
    arr = open_300k(tinyimages_path(tmp_path))
    assert isinstance(arr, np.memmap) and arr.mode == "r"
    with pytest.raises(ValueError):  # read-only mapping
        arr[0, 0, 0, 0] = 1


def test_only_the_needed_rows_are_touched(tmp_path):
    # A header that promises 300,000 rows over a sparse file: reading all of it would take 921 MB of
    # zeros; the first rows come back at once, and they are the rows written.
    path = tmp_path / "tinyimages80m" / "300K_random_images.npy"
    path.parent.mkdir()
    full = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(300_000, 32, 32, 3))
    full[:4] = 7
    full[4] = 9
    del full
    s = load_tinyimages(tmp_path, 5)
    assert s.images[:4].eq(7).all() and s.images[4].eq(9).all()


def test_default_is_30000_and_too_few_rows_is_an_error(tmp_path):
    write_300k(tmp_path, rows=12)
    with pytest.raises(ImoodError, match="12 images, fewer than the 30,000"):
        load_tinyimages(tmp_path)
    with pytest.raises(ImoodError, match="fewer than the 13"):
        load_tinyimages(tmp_path, 13)


def test_truncated_file_names_the_file(tmp_path):
    write_300k(tmp_path, rows=10)
    path = tinyimages_path(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])
    with pytest.raises(ImoodError, match=r"300K_random_images\.npy.*truncated or damaged"):
        load_tinyimages(tmp_path, 2)


def test_wrong_layout_and_pickles_are_refused(tmp_path):
    path = tmp_path / "tinyimages80m" / "300K_random_images.npy"
    path.parent.mkdir()
    np.save(path, np.zeros((3, 32, 32), dtype=np.uint8))
    with pytest.raises(ImoodError, match=r"\(N, 32, 32, 3\), found uint8 \(3, 32, 32\)"):
        load_tinyimages(tmp_path, 1)
    np.save(path, np.zeros((3, 32, 32, 3), dtype=np.float32))
    with pytest.raises(ImoodError, match="float32"):
        load_tinyimages(tmp_path, 1)
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImoodError, match="not a readable .npy"):
        load_tinyimages(tmp_path, 1)


def test_both_folder_spellings(tmp_path):
    assert tinyimages_path(tmp_path) == tmp_path / "tinyimages80m" / "300K_random_images.npy"
    a = write_300k(tmp_path, rows=3, folder="tinyimages80M")
    assert tinyimages_path(tmp_path) == tmp_path / "tinyimages80M" / "300K_random_images.npy"
    assert np.array_equal(load_tinyimages(tmp_path, 3).images.numpy(), a.transpose(0, 3, 1, 2))
    st = tinyimages.status(tmp_path)
    assert st.present and st.path.parent.name == "tinyimages80M"


def test_status_when_missing_says_where_and_how(tmp_path):
    st = tinyimages.status(tmp_path)
    assert not st.present
    assert st.path == tmp_path / "tinyimages80m" / "300K_random_images.npy"
    assert "https://people.eecs.berkeley.edu/~hendrycks/300K_random_images.npy" in st.how_to_get
    with pytest.raises(ImoodError, match="not found: .*300K_random_images.npy"):
        load_tinyimages(tmp_path, 1)
