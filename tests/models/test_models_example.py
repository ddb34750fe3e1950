"""The worked example (examples/own_model.py) runs offline from start to end, so it cannot rot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_model.py"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # a tiny model on a shared 2-core machine
    yield


def test_own_model_example(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("own_model_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(tmp_path, epochs=0, ood_images=40, batch_size=32)  # one CPU thread at this size
    out = capsys.readouterr().out
    for command in ("$ imood data prepare folder", "$ imood import-model --timm resnet18", "$ imood score",
                    "$ imood eval"):
        assert command in out
    run = tmp_path / "runs" / "resnet18-mydigits"
    scores = {p.stem for p in (run / "scores").glob("*.safetensors")}
    assert {"msp", "ada_energy", "react", "ada_react", "vim", "knn", "maha", "odin"} <= scores
    assert set(result["ood"]) == {"ood", "mean"} and 0 <= result["ood"]["mean"]["auroc"] <= 1
    assert result["id"]["few"] is not None
