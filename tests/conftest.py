"""Shared by every folder of tests/ (laid out like imood_cli/): the environment, and `imood` in process.

Fixtures: `cli(argv) -> (code, stdout, stderr)` in a test (it reads capsys); `cli_code(argv) -> code` where
capsys cannot go (module- or session-scoped fixtures), the output left to pytest. `run_cli` stays importable.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Hermetic: plugins installed in the environment never change an outcome. Tests that need a plugin
# register it in process or install it themselves (test_plugin_guide, test_contract's imood-extras).
os.environ["IMOOD_PLUGINS"] = ""

import pytest
import torch


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
