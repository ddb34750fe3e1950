"""The plugin guide (docs/plugins.md) is the contract: its plugin, installed with pip, scores and trains, and
every public name and field of imood_cli.plugin_api is documented there."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imood_cli import plugin_api

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def plugin_section() -> str:
    return GUIDE.read_text(encoding="utf-8")


def code_blocks(section: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def test_every_public_name_and_field_is_documented():
    section = plugin_section()
    for name in plugin_api.__all__:
        if name not in ("Ada", "ADA_PREFIX", "Configurable"):  # internals re-exported for tests
            assert f"`{name}`" in section or f"{name}(" in section, name
    for cls in (plugin_api.ModelView, plugin_api.LossContext, plugin_api.AuxBatch):
        for f in dataclasses.fields(cls):
            if not f.name.startswith("_"):
                assert f"`{f.name}`" in section or f".{f.name}`" in section, f"{cls.__name__}.{f.name}"
    for need in plugin_api.NEEDS:
        assert f"`{need}`" in section, need
    for cls, attrs in ((plugin_api.Score, ("needs", "ada_scale", "extra_outputs", "idness_is_logit",
                                           "hyperparameters")),
                       (plugin_api.Objective, ("needs", "extra_outputs", "heads", "hyperparameters")),
                       (plugin_api.Method, ("score", "objective", "paper", "ada_keeps_objective")),
                       (plugin_api.Detector, ("needs", "train_needs", "ada_scale", "extra_outputs",
                                              "idness_is_logit", "ada_keeps_loss", "heads", "hyperparameters"))):
        for attr in attrs:
            assert f"`{attr}`" in section or f"`Method.{attr}`" in section, (cls.__name__, attr)
            assert hasattr(cls, attr) or attr in getattr(cls, "__annotations__", {}), (cls.__name__, attr)
    for method in ("idness", "ood_score", "fit", "fit_state", "load_fit_state", "train_update", "check", "loss",
                   "training_parameters", "state", "load_state"):
        assert f"{method}(" in section, method


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The guide's acme-ood plugin, written from its code blocks and installed with pip into a folder."""
    root = tmp_path_factory.mktemp("plugin")
    blocks = code_blocks(plugin_section())
    source = next(code for lang, code in blocks if lang == "python" and code.startswith("# acme_ood/detectors.py"))
    project = next(code for lang, code in blocks if lang == "toml" and code.startswith("# pyproject.toml"))
    pkg = root / "acme-ood"
    (pkg / "acme_ood").mkdir(parents=True)
    (pkg / "acme_ood" / "__init__.py").write_text("")
    (pkg / "acme_ood" / "detectors.py").write_text(source)
    (pkg / "pyproject.toml").write_text(project)
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "--target", str(site), str(pkg)], check=True, timeout=300)
    return pkg, site


def test_the_guides_plugin_imports_only_the_public_contract(installed):
    pkg, _ = installed
    tree = ast.parse((pkg / "acme_ood" / "detectors.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m and m.startswith("imood")} == {"imood_cli.plugin_api"}


def imood(site: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    env.pop("IMOOD_PLUGINS", None)
    return subprocess.run([sys.executable, "-m", "imood_cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_guides_plugin_loads_scores_and_trains(installed, tmp_path):
    _, site = installed
    listed = imood(site, "plugins", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(listed.stdout) if r["distribution"] == "acme-ood"}
    for key in [("method", n) for n in ("residual", "ada_residual", "clipped", "ada_clipped")] + [
            ("aux_loss", "centring")]:
        assert rows[key]["loaded"], rows.get(key)
    assert rows[("method", "clipped")]["paper"].startswith("Acme et al., \"Clipped energy (example)\"")
    own = imood(site, "train", "--ds", "digits", "-e", "1", "-b", "32", "--name", "own", "--ood_metric",
                "clipped:gap=2", "--device", "cpu", cwd=tmp_path)
    assert own.returncode == 0, own.stderr
    config = json.loads((tmp_path / "runs" / "own" / "config.json").read_text())
    assert config["ood_metric"] == "clipped:gap=2"
    trained = imood(site, "train", "--ds", "digits", "-e", "1", "-b", "32", "--name", "acme", "--ood-metric",
                    "ada_clipped", "--aux-ood-loss", "centring:temperature=0.5", "--device", "cpu", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    config = json.loads((tmp_path / "runs" / "acme" / "config.json").read_text())
    assert config["aux_loss_options"] == {"temperature": 0.5}  # what the aux loss received
    wrong_phase = imood(site, "score", "runs/acme", "-m", "clipped:gap=2", "--device", "cpu", cwd=tmp_path)
    assert wrong_phase.returncode == 2 and "gap is a training option" in wrong_phase.stderr, wrong_phase.stderr
    fraction = imood(site, "score", "runs/acme", "-m", "clipped:p=0.8", "--device", "cpu", cwd=tmp_path)
    assert fraction.returncode == 2 and "write p=80" in fraction.stderr, fraction.stderr
    scored = imood(site, "score", "runs/acme", "-m", "residual,ada_residual,clipped:p=80,ada_clipped",
                   "--device", "cpu", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    from imood_cli.engine.runs.scorefile import ScoreSet

    scores = tmp_path / "runs" / "acme" / "scores"
    for stem in ("residual", "ada_residual", "clipped-p=80", "ada_clipped"):
        ss = ScoreSet.load(scores / f"{stem}.safetensors")
        assert len(ss.id_score) > 0
    ada = ScoreSet.load(scores / "ada_residual.safetensors")
    assert ada.meta["ada_scale"] != 1.0  # the fit set c from the ID data
    before = ScoreSet.load(scores / "clipped-p=80.safetensors")
    assert before.meta["detector_options"] == {"p": 80.0}
    # the author edits fit in the installed plugin: the next score refits, with no flag
    module = next(site.rglob("acme_ood/detectors.py"))
    source = module.read_text()
    edited = source.replace("self.clip = percentile(view.features, self.p)",
                            "self.clip = percentile(view.features, self.p) * 0.5")
    assert edited != source
    module.write_text(edited)
    again = imood(site, "score", "runs/acme", "-m", "clipped:p=80", "--device", "cpu", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    after = ScoreSet.load(scores / "clipped-p=80.safetensors")
    assert not np.allclose(after.id_score, before.id_score)  # the edited fit, not the cached one
