"""imood-extras teaches plugin authors to use only imood's documented surface, so its code is held to it.

The plugin imports `imood_cli.plugin_api` and nothing else of imood (docs/plugins.md). Its tests also use the
public Python API (`imood_cli.api`, docs/api.md), `Registry` / `reset_registry` to register a class in process
(docs/plugins.md, "To unit-test a plugin without installing it") and the command line, in a process of its own
or in this one through `imood_cli.cli.app.main`. Nothing under imood_cli.engine, .methods, .core, .data or
.models: those change without notice.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from imood_cli import api, plugin_api

ROOT = Path(__file__).resolve().parents[1]
SOURCE = sorted((ROOT / "imood_extras").glob("*.py"))
TESTS = sorted((ROOT / "tests").glob("*.py"))

PLUGIN_SURFACE = {"imood_cli.plugin_api": {*plugin_api.__all__, "__all__"}}
TEST_SURFACE = {
    **PLUGIN_SURFACE,
    "imood_cli.api": {*api.__all__, "__all__"},
    "imood_cli.registry": {"Registry", "reset_registry"},
    "imood_cli.cli.app": {"main"},
}


def dotted(node: ast.AST) -> tuple[str, str] | None:
    """(root name, "a.b.c") of an attribute chain `root.a.b.c`, or None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return (node.id, ".".join(reversed(parts))) if isinstance(node, ast.Name) else None


def imood_uses(tree: ast.AST) -> list[tuple[int, str, str | None]]:
    """(line, module, name) for every use of imood in a module: its imports (name None for `import m`), the
    attributes it reads of an imported imood module (`api.score`, `imood_cli.engine.runtime`), and modules
    named to importlib.import_module / __import__."""
    uses: list[tuple[int, str, str | None]] = []
    bound: dict[str, str] = {}  # local name -> the imood module (or object) it is
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "imood_cli":
                    uses.append((node.lineno, alias.name, None))
                    bound[alias.asname or "imood_cli"] = alias.name if alias.asname else "imood_cli"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "imood_cli":
                continue
            for alias in node.names:
                if node.module == "imood_cli":  # `from imood_cli import api`: the module imood_cli.api
                    uses.append((node.lineno, f"imood_cli.{alias.name}", None))
                    bound[alias.asname or alias.name] = f"imood_cli.{alias.name}"
                else:
                    uses.append((node.lineno, node.module, alias.name))
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            target = node.args[0].value
            if called in ("import_module", "__import__") and isinstance(target, str) and target.startswith("imood_cli"):
                uses.append((node.lineno, target, None))
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):  # whole chains only: `api.score`, `imood_cli.engine.runtime.Runtime`
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        chain = dotted(node)
        if chain is None or chain[0] not in bound:
            continue
        full = f"{bound[chain[0]]}.{chain[1]}"
        module = next((m for m in TEST_SURFACE if full.startswith(m + ".")), None)
        if module is not None:
            uses.append((node.lineno, module, full[len(module) + 1:].split(".")[0]))
        elif not any(m.startswith(full + ".") for m in TEST_SURFACE):  # `imood_cli.cli` on the way to .app
            uses.append((node.lineno, full, None))
    return uses


def breaches(source: str, surface: dict[str, set[str]], where: str = "") -> list[str]:
    """The uses of imood in `source` that are not in `surface` ({module: its public names})."""
    out = []
    for line, module, name in imood_uses(ast.parse(source, where)):
        if module == "imood_cli" and name is None:  # `import imood_cli` alone names nothing
            continue
        if module not in surface:
            out.append(f"{where}:{line}: {module}" + (f".{name}" if name else ""))
        elif name is not None and name not in surface[module]:
            out.append(f"{where}:{line}: {module}.{name} is not part of the documented surface")
    return out


def test_the_files_are_found():
    assert {p.name for p in SOURCE} >= {"__init__.py", "margin.py", "supcon.py"}
    assert {p.name for p in TESTS} >= {"test_extras_cli.py", "test_extras_units.py", "test_surface.py"}


@pytest.mark.parametrize("path", SOURCE, ids=lambda p: p.name)
def test_the_plugin_imports_only_the_plugin_api(path):
    assert not breaches(path.read_text(), PLUGIN_SURFACE, path.name)


@pytest.mark.parametrize("path", TESTS, ids=lambda p: p.name)
def test_the_tests_use_only_the_documented_surface(path):
    assert not breaches(path.read_text(), TEST_SURFACE, path.name)


def test_the_check_catches_internals():
    sample = """
import imood_cli.engine.runtime
from imood_cli.engine.runs.scorefile import ScoreSet
from imood_cli import core
from imood_cli.registry import registry, Registry
from imood_cli.cli.app import main
from imood_cli import api as public
from imood_cli.plugin_api import Detector
import imood_cli
import importlib
importlib.import_module("imood_cli.methods.energy")
public.ood_scores
public.registry
imood_cli.engine.runtime.Runtime
imood_cli.api.score
imood_cli.api._expand
imood_cli.cli.app.main
"""
    found = {b.split(": ", 1)[1] for b in breaches(sample, TEST_SURFACE, "sample")}
    private = "is not part of the documented surface"
    assert found == {"imood_cli.engine.runtime", "imood_cli.engine.runs.scorefile.ScoreSet", "imood_cli.core",
                     f"imood_cli.registry.registry {private}", "imood_cli.methods.energy",
                     f"imood_cli.api.registry {private}", "imood_cli.engine.runtime.Runtime",
                     f"imood_cli.api._expand {private}"}
    # the plugin itself may not even use the public API or the command line
    assert {b.split(": ", 1)[1] for b in breaches(sample, PLUGIN_SURFACE, "sample")} >= {
        "imood_cli.api", "imood_cli.cli.app.main", "imood_cli.registry.Registry"}
