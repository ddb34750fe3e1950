"""The run folder: what imood writes where, and how a folder is recognised as one of imood's runs.

    runs/<name>/
      config.json          the resolved TrainConfig
      model.safetensors    final weights + metadata (format "imood-model")
      checkpoint/          epoch_NNNN[_step_SSSSSS].safetensors + latest.json
      metrics.jsonl        loss records
      fits/ scores/ eval/  detector fits, score files, evaluations
      report.html
      .imood.lock          held (flock) by the process training the run

This module imports no torch: `imood report` reads run folders through it.
"""

from __future__ import annotations

import re
from pathlib import Path

from imood_cli.core.contract import parse_spec
from imood_cli.errors import ImoodError
from imood_cli.fs.safe import open_regular, parse_json, read_json

MODEL_FILE = "model.safetensors"


CONFIG_FILE = "config.json"


METRICS_FILE = "metrics.jsonl"


LOCK_FILE = ".imood.lock"


CHECKPOINT_DIR = "checkpoint"


CHECKPOINT_NAME = re.compile(r"^epoch_(\d{4,})(?:_step_(\d{6,}))?\.safetensors$")


DERIVED_DIRS = ("scores", "eval", "fits")


REPORT_FILE = "report.html"


def model_path(target: Path) -> Path:
    """A run folder's model file, or the path of a model file itself."""
    target = Path(target)
    if target.is_dir():
        path = target / MODEL_FILE
        if not path.exists():
            hint = (" (training has not finished: continue it with imood train --resume)"
                    if (target / CHECKPOINT_DIR).exists() else "")
            raise ImoodError(f"no {MODEL_FILE} in {target}{hint}")
        return path
    if not target.exists():
        raise ImoodError(f"run folder or model file not found: {target}")
    return target


def holds_model(folder: Path) -> bool:
    """A folder whose scores are checked against a model: it holds a model file (what `eval` and `report` ask;
    `is_run_folder` is the stricter question of whether imood made the folder)."""
    return (Path(folder) / MODEL_FILE).is_file()


def run_of(score_file: Path) -> Path | None:
    """The run folder a score file belongs to (RUN/scores/x.safetensors), if it is inside one."""
    p = Path(score_file).resolve()
    run = p.parent.parent
    return run if p.parent.name == "scores" and holds_model(run) else None


def is_run_folder(folder: Path) -> bool:
    """A folder imood made a run in: its config.json is a JSON object of training options, or its
    model.safetensors carries imood's metadata (a run trained, being trained, or imported)."""
    folder = Path(folder)
    try:
        data = read_json(folder / CONFIG_FILE, "run configuration")
    except ImoodError:
        data = None
    if isinstance(data, dict) and {"dataset", "ood_metric", "epochs"} <= set(data):
        return True
    return imood_safetensors(folder / MODEL_FILE)


def imood_safetensors(path: Path, formats: tuple[str, ...] | None = None) -> bool:
    """A safetensors file whose metadata imood wrote (the 'imood' JSON entry), optionally of these formats."""
    try:
        with open_regular(path) as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100_000_000:
                return False
            header = parse_json(f.read(n), str(path))
        meta = parse_json((header.get("__metadata__") or {}).get("imood", "null"), str(path))
    except (OSError, ValueError, AttributeError, TypeError, ImoodError):
        return False
    if not isinstance(meta, dict):
        return False
    if formats is None:
        return True
    return meta.get("format") in formats or ("skeleton" in meta and "imood-checkpoint" in formats)


def detector_label(spec: str) -> str:
    """The name a detector's scores go under: 'react : p=95' -> 'react:p=95' (as typed, minus spaces)."""
    name, options = parse_spec(spec)
    return name + "".join(f":{k}={v}" for k, v in options.items())


def score_file_stem(spec: str) -> str:
    """The stem of a detector's score file (and fit cache): 'react:p=95' -> 'react-p=95' (no ':' in file names)."""
    stem = detector_label(spec).replace(":", "-")
    if not re.fullmatch(r"[A-Za-z0-9_.=+\-]+", stem) or stem.startswith("."):
        raise ImoodError(f"detector {spec!r}: options may use letters, digits and . _ = + - only")
    return stem
