"""`imood score`: the fit cache is keyed on the method's code (an edited plugin refits), `--refit`, and a detector
that fails (in its fit or its scores) among others: the others are written, the failed ones named in one line."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap

import numpy as np
import pytest
from conftest import fresh_digits_run

from imood_cli.engine.runs.checkpoint import load_tensors, save_tensors
from imood_cli.engine.runs.scorefile import ScoreSet, read_metadata
from imood_cli.registry import Registry, entry_points, reset_registry

_ids = itertools.count()

SHIFTED = """
from pathlib import Path

from imood_cli.plugin_api import Score, torch

LOG = Path({log!r})


class Shifted(Score):
    \"\"\"g = max logit - shift, the shift fitted on the ID training set; every fit is logged.\"\"\"

    needs = frozenset({{"fit"}})
    ada_scale = 1.0

    def __init__(self, **options):
        super().__init__(**options)
        self.shift = None

    def fit(self, view):
        with LOG.open("a") as f:
            f.write("fit\\n")
        self.shift = view.logits.float().mean()  # FIT

    def fit_state(self):
        return {{"shift": self.shift.reshape(1).cpu()}}

    def load_fit_state(self, state):
        self.shift = state["shift"].reshape(())

    def idness(self, view):
        return view.logits.float().amax(dim=1) - self.shift.to(view.logits.device)
"""

FAILING = """
from imood_cli.plugin_api import OptionError, Score


class FitFails(Score):
    \"\"\"A fit that finds its option impossible only once it sees the data.\"\"\"

    needs = frozenset({"fit"})

    def fit(self, view):
        raise OptionError(f"fitfails: dim must be smaller than the features ({view.logits.shape[1]})")

    def idness(self, view):
        return view.logits.float().amax(dim=1)


class ScoreFails(Score):
    \"\"\"Scores the first batch, then breaks: a failure in the middle of the shared pass.\"\"\"

    calls = 0

    def idness(self, view):
        type(self).calls += 1
        if type(self).calls > 1:
            raise RuntimeError("broke on batch 2")
        return view.logits.float().amax(dim=1)
"""


@pytest.fixture
def digits_run(tmp_path):
    """A digits run folder with freshly initialized weights: what score needs, without training (its own, as
    the tests write its fits/ and scores/)."""
    return fresh_digits_run(tmp_path / "runs")


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """`install(source, {name: Class}) -> module`: write `source` as a module in tmp_path and register its classes
    as acme 1.0's entry points ("module:Class", imported by the registry) in a fresh process-wide registry;
    installing again under the same module name re-imports the edited file."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("IMOOD_PLUGINS", "acme")
    old = reset_registry()
    module_names = []

    def install(source, classes, module=None):
        module = module or f"imood_fit_cache_plugin_{next(_ids)}"
        (folder / f"{module}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        sys.modules.pop(module, None)  # the registry imports the file as it is now
        module_names.append(module)
        reg = Registry([e for e in entry_points() if e[2].startswith("imood_cli.")])
        for name, cls in classes.items():
            reg.add("method", name, f"{module}:{cls}", distribution="acme", version="1.0")
        reset_registry(reg)
        return module

    yield install
    reset_registry(old)
    for module in module_names:
        sys.modules.pop(module, None)


def fits_logged(tmp_path):
    log = tmp_path / "fits.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def id_scores(run, label):
    return ScoreSet.load(run / "scores" / f"{label}.safetensors").id_score


def the_cache(run):
    (cache,) = (run / "fits").glob("shifted-*.safetensors")
    return cache


def test_an_edited_plugin_refits_and_an_unedited_one_reuses_its_fit(cli, digits_run, plugins, tmp_path):
    source = SHIFTED.format(log=str(tmp_path / "fits.log"))
    module = plugins(source, {"shifted": "Shifted"})
    code, _, err = cli(["score", digits_run, "-m", "shifted", "--device", "cpu"])
    assert code == 0, err
    assert fits_logged(tmp_path) == 1
    first, cache = id_scores(digits_run, "shifted"), the_cache(digits_run)
    before = cache.read_bytes()

    plugins(source, {"shifted": "Shifted"}, module=module)  # unedited, imported afresh: the cache serves
    code, _, err = cli(["score", digits_run, "-m", "shifted", "--device", "cpu"])
    assert code == 0, err
    assert fits_logged(tmp_path) == 1
    np.testing.assert_array_equal(id_scores(digits_run, "shifted"), first)
    assert cache.read_bytes() == before

    # the author edits `fit` (an editable install: same distribution, same version); a new process imports it
    edited = source.replace("view.logits.float().mean()  # FIT", "view.logits.float().mean() + 1.5  # FIT, edited")
    assert edited != source
    plugins(edited, {"shifted": "Shifted"}, module=module)
    code, _, err = cli(["score", digits_run, "-m", "shifted", "--device", "cpu"])
    assert code == 0, err
    assert fits_logged(tmp_path) == 2
    np.testing.assert_allclose(id_scores(digits_run, "shifted"), first + 1.5, rtol=0, atol=1e-5)
    assert the_cache(digits_run) == cache and cache.read_bytes() != before  # replaced, not a second file
    # what the cache was keyed on is in its metadata: the model, the options and the code
    meta = [read_metadata(data) for data in (before, cache.read_bytes())]
    for m in meta:
        assert m["code"]["distribution"] == "acme" and m["code"]["version"] == "1.0"
        assert m["code"]["class"] == f"{module}:Shifted" and len(m["code"]["source_sha256"]) == 64
        assert m["options"] == {} and len(m["checkpoint_sha256"]) == 64
    assert meta[0]["code"]["source_sha256"] != meta[1]["code"]["source_sha256"]


def test_a_cache_written_before_the_code_key_is_refitted(cli, digits_run, plugins, tmp_path):
    plugins(SHIFTED.format(log=str(tmp_path / "fits.log")), {"shifted": "Shifted"})
    assert cli(["score", digits_run, "-m", "shifted", "--device", "cpu"])[0] == 0
    cache = the_cache(digits_run)
    state, meta = load_tensors(cache)
    meta.pop("code", None)  # as imood wrote it before
    save_tensors(cache, {"shift": state["shift"] + 100}, meta)
    code, _, err = cli(["score", digits_run, "-m", "shifted", "--device", "cpu"])
    assert code == 0, err
    assert fits_logged(tmp_path) == 2
    assert "code" in load_tensors(cache)[1]


def test_refit_ignores_and_replaces_the_cache(cli, digits_run, plugins, tmp_path):
    plugins(SHIFTED.format(log=str(tmp_path / "fits.log")), {"shifted": "Shifted"})
    spec = ["-m", "shifted,ada_shifted", "--device", "cpu"]
    code, _, err = cli(["score", digits_run, *spec])
    assert code == 0, err
    assert fits_logged(tmp_path) == 1  # ada_shifted reads shifted's fit
    before = the_cache(digits_run).read_bytes()
    code, _, err = cli(["score", digits_run, *spec, "--refit"])
    assert code == 0, err
    assert fits_logged(tmp_path) == 2  # refitted once: the fresh fit serves ada_shifted too
    assert the_cache(digits_run).read_bytes() == before  # the same code, model and data: the same fit, rewritten
    code, _, err = cli(["score", digits_run, *spec])
    assert code == 0, err
    assert fits_logged(tmp_path) == 2  # the refit's cache is used again


def test_a_detector_whose_fit_fails_is_named_and_the_others_are_written(cli, digits_run):
    code, out, err = cli(["score", digits_run, "-m", "msp,vim:dim=9999,energy", "--device", "cpu"])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("imood: error: 1 of 3 detectors failed: vim:dim=9999 (fit: ")
    assert "dim=9999" in lines[0] and lines[0].endswith("; the others are written")
    written = sorted(p.name for p in (digits_run / "scores").iterdir())
    assert written == ["energy.safetensors", "msp.safetensors"]
    assert "msp" in out and "energy" in out and "vim" not in out  # the table of those that scored


def test_failures_in_fit_and_in_the_middle_of_the_pass_drop_only_those_detectors(cli, digits_run, plugins, tmp_path):
    plugins(FAILING, {"fitfails": "FitFails", "scorefails": "ScoreFails"})
    code, _, err = cli(["score", digits_run, "-m", "msp,scorefails,fitfails,energy", "--device", "cpu", "-b", "64"])
    assert code == 2
    lines = err.strip().splitlines()
    assert lines == ["imood: error: 2 of 4 detectors failed: scorefails (score: RuntimeError: broke on batch 2), "
                     "fitfails (fit: OptionError: dim must be smaller than the features (6)); the others are written"]
    assert sorted(p.name for p in (digits_run / "scores").iterdir()) == ["energy.safetensors", "msp.safetensors"]
    failed_msp, failed_energy = id_scores(digits_run, "msp"), id_scores(digits_run, "energy")
    ood = ScoreSet.load(digits_run / "scores" / "msp.safetensors").ood_score
    code, _, err = cli(["score", digits_run, "-m", "msp,energy", "--device", "cpu", "-b", "64",
                        "--out", tmp_path / "clean"])
    assert code == 0, err
    clean = ScoreSet.load(tmp_path / "clean" / "msp.safetensors")
    np.testing.assert_array_equal(failed_msp, clean.id_score)  # every batch of the shared pass scored
    np.testing.assert_array_equal(failed_energy, ScoreSet.load(tmp_path / "clean" / "energy.safetensors").id_score)
    assert {k: v.shape for k, v in ood.items()} == {k: v.shape for k, v in clean.ood_score.items()}


@pytest.mark.parametrize("spec, message", [
    ("vim:dim=9999", "imood: error: vim: the principal space must be smaller than the features (d = 128), got "
                     "dim=9999: pass vim:dim=D with 1 <= D < 128"),
    ("scorefails", "imood: error: detector scorefails (ScoreFails) failed: RuntimeError: broke on batch 2"),
    ("fitfails", "imood: error: fitfails: dim must be smaller than the features (6)"),
    ("fitfails,scorefails", "imood: error: 2 of 2 detectors failed: fitfails (fit: OptionError: dim must be smaller "
                            "than the features (6)), scorefails (score: RuntimeError: broke on batch 2); nothing "
                            "was written"),
])
def test_a_lone_failing_detector_is_one_line_and_nothing_is_written(cli, digits_run, plugins, spec, message):
    plugins(FAILING, {"fitfails": "FitFails", "scorefails": "ScoreFails"})
    code, out, err = cli(["score", digits_run, "-m", spec, "--device", "cpu", "-b", "64"])
    assert code == 2
    assert err.strip().splitlines() == [message]
    assert not (digits_run / "scores").exists()
    assert out == ""
