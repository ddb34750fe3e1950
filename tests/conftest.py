"""Shared by every folder of tests/ (laid out like imood_cli/): the environment, and `imood` in process.

Fixtures: `cli(argv) -> (code, stdout, stderr)` in a test (it reads capsys); `cli_code(argv) -> code` where
capsys cannot go (module- or session-scoped fixtures), the output left to pytest. `run_cli` stays importable.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Hermetic: plugins installed in the environment never change an outcome. Tests that need a plugin
# register it in process or install it themselves (test_plugin_guide, test_contract's imood-extras).
os.environ["IMOOD_PLUGINS"] = ""

from pathlib import Path

import pytest
import torch


def import_bench(name: str):
    """A script of bench/ (a folder of scripts, not a package) imported as a module, sys.path left as it was."""
    import importlib
    import sys

    folder = str(Path(__file__).resolve().parents[1] / "bench")
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(folder)


@pytest.fixture(autouse=True)
def _threads():
    # Two cores here and in CI: keep torch from oversubscribing them when tests run in parallel.
    torch.set_num_threads(2)
    yield


def run_cli(argv, capsys=None):
    """Run `imood argv` in process; returns (exit code, stdout, stderr) when capsys is given."""
    from imood_cli.cli.app import main

    try:
        main(list(map(str, argv)))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    if capsys is None:
        return code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def cli(capsys):
    """`cli(argv)`: run `imood argv` in process; returns (exit code, stdout, stderr) of that command alone."""

    def run(argv):
        capsys.readouterr()  # drop what came before (an earlier command, a hypothesis example)
        return run_cli(argv, capsys)

    return run


@pytest.fixture(scope="session")
def cli_code():
    """`cli_code(argv)`: run `imood argv` in process; returns its exit code. For fixtures of any scope."""
    return run_cli


def fresh_digits_run(root, name: str = "r"):
    """ROOT/NAME: a digits run folder with freshly initialized weights (seed 0): what `imood score` needs,
    without training. A plain function, so fixtures of any scope can call it."""
    import torch

    from imood_cli.data.benchmarks.digits import Digits
    from imood_cli.engine.runs.checkpoint import save_tensors
    from imood_cli.engine.training.config import resolve_config
    from imood_cli.engine.training.setup import architecture, model_metadata
    from imood_cli.fs.atomic import atomic_write_text
    from imood_cli.models.imood_model import ImOODModel

    cfg = resolve_config({"dataset": "digits", "save_root": str(root), "name": name, "epochs": 1})
    bench = Digits().load(None)
    arch = architecture(cfg, bench, 1)
    torch.manual_seed(0)
    run = Path(root) / name
    atomic_write_text(run / "config.json", cfg.to_json())
    save_tensors(run / "model.safetensors", ImOODModel(arch).state_dict(),
                 model_metadata(cfg, arch, list(bench.class_counts), 1))
    return run
