"""What a plugin author meets: option errors with one prefix, the percentage convention, one warning line for
broken plugins, `plugins show` and the dataset types of the public contract."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from imood_cli import plugin_api
from imood_cli.errors import ImoodError
from imood_cli.plugin_api import Method, ModelView, Objective, OptionError, Paper, Score
from imood_cli.registry import PluginWarning, Registry, entry_points, reset_registry


@pytest.fixture
def reg(monkeypatch):
    monkeypatch.delenv("IMOOD_PLUGINS", raising=False)
    fresh = Registry([e for e in entry_points() if e[2].startswith("imood_cli.")])
    old = reset_registry(fresh)
    yield fresh
    reset_registry(old)


class ClipAct(Score):
    """Clipped activations: g = logsumexp of the classifier on f clipped at its p-th percentile."""

    needs = frozenset({"features", "classifier", "fit"})
    ada_scale = 1.0
    hyperparameters = ("p",)
    p = 90.0
    paper = Paper("Clipped activations (a test plugin)", "Acme et al.", "arXiv", 2025, "https://example.org/c")

    def check(self) -> None:
        plugin_api.check_percentage("p", self.p)
        if self.p == 42:
            raise OptionError("clipact: p=42 is reserved")  # an author's own prefix

    def fit(self, view: ModelView) -> None:
        self.clip = plugin_api.percentile(view.features, self.p)

    def idness(self, view: ModelView) -> torch.Tensor:
        return torch.logsumexp(view.logits_from_features(view.features.clamp(max=float(self.clip))), dim=1)


class Gap(Objective):
    hyperparameters = ("gap",)
    gap = 5.0

    def loss(self, view, ctx, g=None):
        return torch.relu(self.gap + g[~ctx.is_id].mean() - g[ctx.is_id].mean())


class Clip(Method):
    """Clipped activations, trained with a gap."""

    score = ClipAct
    objective = Gap
    paper = ClipAct.paper


def test_an_option_error_names_the_method_once_and_stays_an_option_error(reg, capsys):
    from conftest import run_cli

    reg.add("method", "clipact", ClipAct, distribution="acme")
    for options, message in (({"p": 42}, "clipact: p=42 is reserved"),
                             ({"p": "x"}, "clipact: option p must be float, got 'x'"),
                             ({"q": 1}, "clipact: no option 'q' (options: p)"),
                             ({"p": 0.8}, "clipact: p is a percentage (0-100, not a fraction), got 0.8: for 80% "
                                          "write p=80")):
        with pytest.raises(OptionError) as caught:
            reg.score("clipact", **options)
        assert str(caught.value) == message and isinstance(caught.value, ImoodError)
    with pytest.raises(OptionError, match=r"^ada_clipact: p=42 is reserved$"):
        reg.score("ada_clipact", p=42)
    code, out, err = run_cli(["score", "/nowhere", "-m", "clipact:p=42"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("imood: error: ")


def test_percentages_and_a_percentile_of_any_size():
    plugin_api.check_percentage("p", 0.0)
    plugin_api.check_percentage("p", 99.5)
    plugin_api.check_percentage("p", 100.0, inclusive=True)
    for bad in (-1.0, 100.0, 0.5):
        with pytest.raises(OptionError):
            plugin_api.check_percentage("p", bad)
    rng = np.random.default_rng(0)
    for n, p in ((1, 50.0), (7, 0.0), (7, 100.0), (1000, 37.3), (1001, 99.9)):
        x = rng.normal(size=n)
        assert float(plugin_api.percentile(torch.from_numpy(x), p)) == pytest.approx(np.percentile(x, p), abs=1e-12)
    big = torch.arange((1 << 24) + 3, dtype=torch.float32).flip(0)  # torch.quantile refuses this many
    assert float(plugin_api.percentile(big, 90.0)) == pytest.approx(np.percentile(big.numpy(), 90.0), rel=1e-7)
    with pytest.raises(ImoodError, match="no values"):
        plugin_api.percentile(torch.zeros(0), 50.0)


def test_broken_plugins_are_one_warning_line(reg, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "acme_broken_mod.py").write_text("raise RuntimeError('boom')\n")
    for name in ("one", "two", "three"):
        reg.add("method", name, f"acme_broken_mod:X{name}", distribution="acme-broken")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.names("method")
        reg.names("aux_loss")
    said = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert said == ["imood: 3 plugins skipped (acme-broken: one, two, three); `imood plugins list` says why"]


def test_plugins_show_and_list_describe_needs_options_and_paper(reg, capsys):
    from conftest import run_cli

    reg.add("method", "clip", Clip, distribution="acme", version="1.2")
    code, out, err = run_cli(["plugins", "show", "clip", "--json"], capsys)
    assert code == 0, err
    facts = json.loads(out)
    assert facts["needs"] == ["classifier", "features", "fit"] and facts["ada_scale"] == 1.0
    assert facts["summary"] == "Clipped activations, trained with a gap."
    assert facts["options"] == [{"name": "p", "type": "float", "default": 90.0, "phase": "scoring", "note": None},
                                {"name": "gap", "type": "float", "default": 5.0, "phase": "training", "note": None}]
    assert facts["paper"].startswith("Acme et al.") and facts["trains"] is True
    assert facts["source"].endswith("test_plugin_authors.py")
    code, out, err = run_cli(["plugins", "show", "ada_clip"], capsys)
    assert code == 0 and "the ImOOD form of clip" in out and "p (float, scoring): 90.0" in out
    code, out, err = run_cli(["plugins", "list", "--json"], capsys)
    row = next(r for r in json.loads(out) if r["name"] == "clip")
    assert row["options"] == facts["options"] and row["needs"] == facts["needs"]
    code, out, err = run_cli(["plugins", "show", "clpi"], capsys)
    assert code == 2 and "did you mean 'clip'" in err


def test_a_dataset_plugin_needs_only_the_public_contract():
    from imood_cli.data import base

    for name in ("Dataset", "Benchmark", "ImageSet", "FileStatus", "AugmentSpec"):
        assert getattr(plugin_api, name) is getattr(base, name), name
    images = plugin_api.ImageSet("toy", torch.tensor([0, 1]), torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    bench = plugin_api.Benchmark("toy", 2, [1, 1], images, images, {}, None, 1, 4,
                                 augment=plugin_api.AugmentSpec(flip=True))
    assert len(bench.train.subset(torch.tensor([1]))) == 1 and bench.augment.flip


def test_a_score_that_needs_a_fit_and_does_not_track_it_cannot_be_trained(reg, tmp_path, monkeypatch, cli):
    reg.add("method", "clip", Clip, distribution="acme")
    monkeypatch.chdir(tmp_path)
    for metric in ("clip", "ada_clip"):  # its objective would read a g whose fit never happened
        code, _, err = cli(["train", "--ds", "digits", "-e", "1", "--ood-metric", metric, "--device", "cpu"])
        assert code == 2 and f"{metric} cannot be trained" in err and "no train_update" in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
