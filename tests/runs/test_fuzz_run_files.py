"""Random corruptions of every file imood reads from a run folder (config.json, checkpoint/latest.json,
checkpoints and the model file with their metadata, score files, fit caches), of the data folder's
manifest and arrays, and of `--config`: every command ends with a result or exactly one `imood: error:` line
and exit code 2; never a traceback; no file outside the run folder (and the data folder it was given)
changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("IMOOD_FUZZ_EXAMPLES", "25"))  # each example runs a command: keep the default short
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, cli_code):
    """A data folder with digits prepared, and a finished run with scores, a fit cache and checkpoints."""
    root = tmp_path_factory.mktemp("pristine")
    assert cli_code(["data", "prepare", "digits", "--drp", root / "data"]) == 0
    assert cli_code(["train", "--ds", "digits", "--drp", root / "data", "-e", "2", "-b", "32", "--srp", root / "runs",
                     "--name", "r", "--ood_metric", "oe", "--aux_ood_loss", "none", "--device", "cpu"]) == 0
    assert cli_code(["score", root / "runs" / "r", "-m", "msp,maha", "--device", "cpu"]) == 0
    return root


def run_files(root: Path) -> list[str]:
    run = root / "runs" / "r"
    files = [p for p in run.rglob("*") if p.is_file() and not p.name.startswith(".")]
    files += [p for p in (root / "data").rglob("*") if p.is_file()]
    return sorted(str(p.relative_to(root)) for p in files)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**15, 10**15) | st.floats(allow_nan=False)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def corrupt(path: Path, data: st.DataObject) -> None:
    raw = path.read_bytes()
    how = data.draw(st.sampled_from(["truncate", "flip", "garbage", "empty", "delete", "json"]))
    if how == "truncate" and raw:
        path.write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1))])
    elif how == "flip" and raw:
        b = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= data.draw(st.integers(1, 255))
        path.write_bytes(bytes(b))
    elif how == "garbage":
        path.write_bytes(data.draw(st.binary(max_size=200)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "delete":
        path.unlink()
    else:  # a structural change in the JSON (a file's own, or a safetensors header's imood metadata)
        mutate_json(path, raw, data)


def mutate_json(path: Path, raw: bytes, data: st.DataObject) -> None:
    if path.suffix == ".json":
        try:
            doc = json.loads(raw)
        except ValueError:
            return
        path.write_text(json.dumps(replace_somewhere(doc, data)))
    elif path.suffix == ".safetensors" and len(raw) > 8:
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        meta = json.loads(header.get("__metadata__", {}).get("imood", "{}"))
        header.setdefault("__metadata__", {})["imood"] = json.dumps(replace_somewhere(meta, data))
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def replace_somewhere(doc, data: st.DataObject):
    """The document with one value (found by walking down at random) replaced by a random JSON value."""
    if isinstance(doc, dict) and doc and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(doc)))
        return {**doc, key: replace_somewhere(doc[key], data)}
    if isinstance(doc, list) and doc and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(doc) - 1))
        return doc[:i] + [replace_somewhere(doc[i], data)] + doc[i + 1:]
    return data.draw(JSON_VALUES)


COMMANDS = {
    "score": lambda root: ["score", root / "runs" / "r", "-m", "msp,maha", "--device", "cpu"],
    "eval": lambda root: ["eval", root / "runs" / "r"],
    "report": lambda root: ["report", root / "runs" / "r", "--no-html"],
    "resume": lambda root: ["train", "--resume", root / "runs" / "r", "--device", "cpu"],
}


def check(code: int, out: str, err: str) -> None:
    assert "Traceback" not in out + err, err[-3000:]
    if code != 0:
        errors = [line for line in err.splitlines() if line.startswith("imood: error:")]
        assert code == 2 and len(errors) == 1, (code, err[-3000:])


@FUZZ
@given(data=st.data())
def test_corrupt_run_and_data_files(pristine, tmp_path_factory, data, cli):
    root = tmp_path_factory.mktemp("case")
    shutil.copytree(pristine, root, dirs_exist_ok=True)
    (root / "precious.txt").write_text("weeks of work")
    target = data.draw(st.sampled_from(run_files(root)))
    corrupt(root / target, data)
    outside = digest(root / "runs") | {"precious.txt": digest(root)["precious.txt"]}
    outside = {k: v for k, v in outside.items() if not k.startswith("r/")}
    command = data.draw(st.sampled_from(sorted(COMMANDS)))
    if command == "resume":  # an unfinished run, so resume reads the checkpoints
        (root / "runs" / "r" / "model.safetensors").unlink(missing_ok=True)
    code, out, err = cli(COMMANDS[command](root))
    check(code, out, err)
    after = {k: v for k, v in digest(root / "runs").items() if not k.startswith("r/")}
    after["precious.txt"] = digest(root)["precious.txt"]
    assert after == outside


@FUZZ
@given(data=st.data())
def test_corrupt_config_files(tmp_path_factory, data, cli):
    root = tmp_path_factory.mktemp("config")
    doc = {"dataset": "digits", "epochs": 1, "batch_size": 32, "lr": 0.003, "ood_metric": "oe", "device": "cpu",
           "aux_ood_loss": "none", "milestones": [60, 80], "color_jitter": [0.4, 0.4, 0.4, 0.1]}
    doc = replace_somewhere(doc, data)
    text = json.dumps(doc) if data.draw(st.booleans()) else data.draw(st.text(max_size=200))
    path = root / ("run.json" if text.startswith(("{", "[")) else "run.toml")
    path.write_text(text)
    (root / "precious.txt").write_text("weeks of work")
    code, out, err = cli(["train", "--config", path, "--srp", root / "runs", "--name", "f", "-e", "1"])
    check(code, out, err)
    assert (root / "precious.txt").read_text() == "weeks of work"
