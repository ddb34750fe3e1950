"""Plans shipped with imood for `imood sweep NAME`: the paper's tables and a smoke test sized for CI.

Each `<name>.toml` here is an ordinary plan file (see imood_cli.engine.sweep.plan); `imood sweep --list` shows
them, and a copy is the starting point of a plan of one's own.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def shipped() -> dict[str, Path]:
    """{plan name: its file}, sorted by name."""
    folder = resources.files(__name__)
    found = {p.name.removesuffix(".toml"): Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}
    return dict(sorted(found.items()))


def find(name: str) -> Path | None:
    """The shipped plan called `name` (with or without .toml), if there is one."""
    return shipped().get(name.removesuffix(".toml"))
