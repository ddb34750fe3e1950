"""Entry points of imood's groups, read without importing anything they name.

The built-ins come from imood's own pyproject.toml in a source tree (always current, even before a
reinstall), else from the installed metadata; third-party plugins from the installed metadata.
"""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

import tomllib

GROUPS = {"method": "imood.ood_metrics", "aux_loss": "imood.aux_losses", "dataset": "imood.datasets"}
OWN_PACKAGE = "imood_cli"


def normalize_dist(name: str) -> str:
    """PEP 503 normalization: IMOOD_PLUGINS=imood_extras matches the distribution imood-extras."""
    return re.sub(r"[-_.]+", "-", name).lower()


def entry_points() -> list[tuple[str, str, str, str, str]]:
    """(kind, name, target, distribution, version) of every entry point."""
    own = Path(__file__).resolve().parent.parent / "pyproject.toml"
    found = []
    if own.is_file():
        project = tomllib.loads(own.read_text())["project"]
        for kind, group in GROUPS.items():
            for name, target in project.get("entry-points", {}).get(group, {}).items():
                found.append((kind, name, target, project["name"], project["version"]))
    installed = md.entry_points()  # one scan of every distribution's metadata, not one per group
    for kind, group in GROUPS.items():
        for ep in installed.select(group=group):
            if found and ep.value.split(".")[0].split(":")[0] == OWN_PACKAGE:
                continue  # imood's installed metadata: possibly older than the source tree just read
            dist = ep.dist.metadata["Name"] if ep.dist is not None else "(unknown)"
            found.append((kind, ep.name, ep.value, dist or "(unknown)", ep.dist.version if ep.dist else ""))
    return found
