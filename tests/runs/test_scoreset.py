"""The score file read and written with numpy only: byte-compatible with the torch writer and reader
(engine/checkpoint.py), every dtype a tool may store, and no torch import on the way."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from imood_cli.engine.runs import checkpoint
from imood_cli.engine.runs.scorefile import ScoreSet, Tensor, read_score_file, stored_digest
from imood_cli.errors import ImoodError

TORCH_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
                torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]


def torch_scoreset_file(path, tensors, meta):
    """What ScoreSet.save wrote when it went through torch (engine/checkpoint.save_tensors)."""
    checkpoint.save_tensors(path, tensors, {**meta, "score_direction": "higher_is_ood"})


def random_tensor(dtype, shape, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if not dtype.is_floating_point:
        return torch.randint(0, 100, shape, generator=g).to(dtype)
    return (torch.randn(shape, generator=g) * 3).to(dtype)


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7,), (0,), (), (2, 3)], ids=str)
def test_digest_equals_the_torch_digest(dtype, shape, tmp_path):
    t = random_tensor(dtype, shape, 1)
    path = tmp_path / "x.safetensors"
    save_file({"a": t, "b.c": random_tensor(torch.float32, (3,), 2)}, path)
    tensors, _ = read_score_file(path)
    assert tensors["a"].torch_dtype == str(dtype)
    assert stored_digest(tensors) == checkpoint.torch_digest({"a": t, "b.c": random_tensor(torch.float32, (3,), 2)})


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_a_file_of_the_torch_writer_loads_with_its_values(dtype, tmp_path):
    score = random_tensor(dtype, (9,), 3)
    ood = random_tensor(torch.float32, (5,), 4)
    label, pred = torch.arange(9) % 3, torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2], dtype=torch.int32)
    path = tmp_path / "s.safetensors"
    torch_scoreset_file(path, {"id.score": score, "id.label": label, "id.pred": pred, "ood.a.b.score": ood},
                        {"metric": "msp", "ood_sets": ["a.b"], "class_counts": [5, 3, 1]})
    ss = ScoreSet.load(path)
    assert isinstance(ss.id_score, np.ndarray) and isinstance(ss.id_label, np.ndarray)
    np.testing.assert_array_equal(ss.id_score, score.to(torch.float64).numpy())  # exact: every dtype widens exactly
    np.testing.assert_array_equal(ss.ood_score["a.b"], ood.numpy())
    np.testing.assert_array_equal(ss.id_label, label.numpy())
    np.testing.assert_array_equal(ss.id_pred, pred.numpy().astype(np.int64))
    assert ss.class_counts == [5, 3, 1] and ss.metric == "msp"


def test_the_torch_reader_verifies_a_file_of_the_numpy_writer(tmp_path):
    rng = np.random.default_rng(0)
    ss = ScoreSet("ada_energy", rng.normal(size=11).astype(np.float32), rng.integers(0, 4, 11),
                  rng.integers(0, 4, 11).astype(np.int32), {"svhn": rng.normal(size=6), "x y": np.float16([1, 2, 3])},
                  {"svhn": rng.integers(0, 4, 6)}, {"class_counts": [9, 4, 2, 1], "dataset": "toy"})
    path = tmp_path / "s.safetensors"
    ss.save(path)
    tensors, meta = checkpoint.load_tensors(path, "score file")  # raises if the digest does not match
    assert meta["metric"] == "ada_energy" and meta["ood_sets"] == ["svhn", "x y"] and meta["dataset"] == "toy"
    assert tensors["id.score"].dtype == torch.float32 and tensors["id.pred"].dtype == torch.int32
    np.testing.assert_array_equal(tensors["ood.x y.score"].numpy(), np.float16([1, 2, 3]))
    np.testing.assert_array_equal(tensors["ood.svhn.pred"].numpy(), ss.ood_pred["svhn"])
    # and the stored digest is the one torch computes over the tensors it read
    header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert json.loads(header["__metadata__"]["imood"])["tensors_sha256"] == checkpoint.torch_digest(tensors)


def test_damaged_tensor_bytes_fail_the_digest(tmp_path):
    path = tmp_path / "s.safetensors"
    ScoreSet("msp", np.arange(20, dtype=np.float32), None, None, {"a": np.ones(4)}).save(path)
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0x40  # inside the last tensor's data, not the header
    path.write_bytes(bytes(blob))
    with pytest.raises(ImoodError, match="does not match the checksum"):
        ScoreSet.load(path)


def test_float8_and_bfloat16_tables_equal_torch():
    raw = torch.arange(256, dtype=torch.uint8)
    for code, dtype in (("F8_E4M3", torch.float8_e4m3fn), ("F8_E5M2", torch.float8_e5m2)):
        mine = Tensor(code, (256,), raw.numpy().tobytes()).array("t", "k")
        np.testing.assert_array_equal(mine, raw.view(dtype).float().numpy())  # NaN == NaN here
    bits = torch.randint(0, 2**16, (4096,), generator=torch.Generator().manual_seed(0)).to(torch.int32)
    as_bf16 = bits.to(torch.int16).view(torch.bfloat16)
    mine = Tensor("BF16", (4096,), as_bf16.view(torch.uint8).numpy().tobytes()).array("t", "k")
    np.testing.assert_array_equal(mine, as_bf16.float().numpy())


def test_constructor_takes_torch_tensors_lists_and_numpy():
    ss = ScoreSet("m", torch.tensor([0.5, 1.0]).bfloat16(), [0, 1], np.array([1, 1]), {"a": torch.tensor([2.0])},
                  {"a": torch.tensor([1])})
    assert ss.id_score.dtype == np.float32 and ss.id_score.tolist() == [0.5, 1.0]
    assert ss.id_label.tolist() == [0, 1] and ss.ood_pred["a"].tolist() == [1]
    for a in (ss.id_score, ss.id_label, ss.id_pred, ss.ood_score["a"], ss.ood_pred["a"]):
        assert isinstance(a, np.ndarray)
    with pytest.raises(ImoodError, match="real numbers"):
        ScoreSet("m", np.array(["a", "b"]), None, None, {"a": [1.0]})
    with pytest.raises(ImoodError, match="real numbers"):
        ScoreSet("m", np.array([1 + 2j]), None, None, {"a": [1.0]})


def test_big_endian_arrays_are_stored_little_endian(tmp_path):
    values = np.array([1.5, -2.25, 3e10], dtype=">f8")
    path = tmp_path / "s.safetensors"
    ScoreSet("m", values, None, None, {"a": np.array([1, 2], dtype=">i4")}).save(path)
    ss = ScoreSet.load(path)
    np.testing.assert_array_equal(ss.id_score, values.astype("<f8"))
    assert checkpoint.load_tensors(path)[0]["id.score"].tolist() == [1.5, -2.25, 3e10]


def test_dtypes_imood_cannot_read_are_one_error(tmp_path):
    path = tmp_path / "c.safetensors"
    save_file({"id.score": torch.tensor([1 + 1j, 2j], dtype=torch.complex64), "ood.a.score": torch.ones(2)}, path)
    with pytest.raises(ImoodError, match="real numbers"):
        ScoreSet.load(path)


def test_loading_and_evaluating_imports_no_torch(tmp_path):
    path = tmp_path / "s.safetensors"
    torch_scoreset_file(path, {"id.score": torch.randn(30).bfloat16(), "id.label": torch.arange(30) % 3,
                               "id.pred": torch.arange(30) % 3, "ood.a.score": torch.randn(10) + 1},
                        {"metric": "msp", "class_counts": [10, 5, 2]})
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch fails\n"
        "from imood_cli.engine.runs.scorefile import ScoreSet\n"
        "from imood_cli.report.results import evaluate_scoreset\n"
        f"r = evaluate_scoreset(ScoreSet.load({str(path)!r}))\n"
        "print(round(r['ood']['a']['auroc'], 6), r['id']['acc'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from sklearn.metrics import roc_auc_score

    tensors, _ = checkpoint.load_tensors(path)
    id_s, ood_s = tensors["id.score"].double().numpy(), tensors["ood.a.score"].double().numpy()
    expected = roc_auc_score(np.r_[np.zeros(30), np.ones(10)], np.r_[id_s, ood_s])
    assert out.stdout.split() == [str(round(expected, 6)), "1.0"]
