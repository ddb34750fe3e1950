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
