"""What imood wrote in a run folder (by name and by content), and `--force`, which removes only that."""

from __future__ import annotations

from pathlib import Path

from imood_cli.engine.runs.layout import (
    CHECKPOINT_DIR,
    CHECKPOINT_NAME,
    DERIVED_DIRS,
    METRICS_FILE,
    MODEL_FILE,
    REPORT_FILE,
    imood_safetensors,
    is_run_folder,
)
from imood_cli.errors import ImoodError
from imood_cli.fs.atomic import is_temp_file
from imood_cli.fs.safe import open_regular, read_json


def own_files(run: Path) -> list[Path]:
    """Every file in RUN that imood wrote (by name and, for data files, by content); `--force` removes these."""
    run = Path(run)
    found: list[Path] = []
    model = run / MODEL_FILE
    if model.is_file() and imood_safetensors(model):
        found.append(model)
    for name in (METRICS_FILE,):
        if (run / name).is_file():
            found.append(run / name)
    report = run / REPORT_FILE
    if report.is_file() and b"imood report" in _head(report):
        found.append(report)
    ckpt = run / CHECKPOINT_DIR
    if ckpt.is_dir():
        for f in ckpt.iterdir():
            if f.is_file() and not f.is_symlink() and (is_imood_checkpoint(f) or f.name == "latest.json"):
                found.append(f)
    for sub in DERIVED_DIRS:
        folder = run / sub
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if not f.is_file() or f.is_symlink():
                continue
            if f.suffix == ".safetensors" and imood_safetensors(f):
                found.append(f)
            elif sub == "eval" and f.suffix == ".json" and _is_eval_json(f):
                found.append(f)
    for folder in (run, ckpt, *(run / s for s in DERIVED_DIRS)):
        if folder.is_dir():
            found += [f for f in folder.iterdir() if f.is_file() and is_temp_file(f)]
    return found


def _is_eval_json(path: Path) -> bool:
    try:
        data = read_json(path, "evaluation")
    except ImoodError:
        return False
    return isinstance(data, dict) and "fpr95_convention" in data


def _head(path: Path, n: int = 4096) -> bytes:
    try:
        with open_regular(path) as f:
            return f.read(n)
    except (OSError, ImoodError):
        return b""


def clear_run(run: Path) -> list[Path]:
    """`--force`: remove imood's own files from RUN (refused for a folder imood did not make); returns them."""
    run = Path(run)
    if not run.exists():
        return []
    if not run.is_dir():
        raise ImoodError(f"{run} is a file, not a run folder")
    if any(run.iterdir()) and not is_run_folder(run):
        raise ImoodError(f"{run} is not an imood run folder (no imood config.json): --force only starts over in a "
                         "folder imood trained in; pick another --name")
    removed = own_files(run)
    for f in removed:
        f.unlink(missing_ok=True)
    for sub in (CHECKPOINT_DIR, *DERIVED_DIRS):  # folders imood made, once empty
        try:
            (run / sub).rmdir()
        except OSError:
            pass
    return removed


def is_imood_checkpoint(path: Path) -> bool:
    """A training checkpoint imood wrote: its name and its metadata say so (rotation removes only these)."""
    return (CHECKPOINT_NAME.match(Path(path).name) is not None and not Path(path).is_symlink()
            and imood_safetensors(path, ("imood-checkpoint",)))
