"""What every test of imood-extras shares: the installed plugins loaded, and `imood` run in process.

Only the documented surface of imood is used here and in the tests (test_surface.py checks it): the registry
is replaced the way docs/plugins.md shows ("To unit-test a plugin without installing it"), and the command
line runs through `imood_cli.cli.app.main`, as `imood` itself does.
"""

from __future__ import annotations

import pytest
import torch

from imood_cli.cli.app import main
from imood_cli.registry import Registry, reset_registry


@pytest.fixture(autouse=True)
def _extras_loaded(monkeypatch):
    # imood's own suite sets IMOOD_PLUGINS="" (built-ins only); these tests are about the installed plugin.
    monkeypatch.delenv("IMOOD_PLUGINS", raising=False)
    torch.set_num_threads(2)  # two cores here and in CI
    previous = reset_registry(Registry())  # the installed entry points, read afresh for each test
    yield
    reset_registry(previous)


@pytest.fixture
def cli(capsys):
    """`cli(*args)`: run `imood args` in this process; returns (exit code, stdout, stderr) of that command."""

    def run(*args):
        capsys.readouterr()  # drop what came before
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
