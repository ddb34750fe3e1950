"""The plugin registry: entry points → classes, built-ins recognised by module, ada_ forms, isolation."""

from __future__ import annotations

import itertools
import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from imood_cli.core.ada import AdaObjective, AdaScore
from imood_cli.core.prior import log_prior
from imood_cli.errors import ImoodError
from imood_cli.plugin_api import AuxLoss, Detector, ModelView, Score
from imood_cli.registry import PluginWarning, Registry, entry_points, registry, reset_registry

BUILTIN_DETECTORS = {"msp", "oe", "energy", "bin_disc", "maha", "gradnorm"}
BUILTIN_LOSSES = {"none", "pascl", "simclr"}
_ids = itertools.count()


@pytest.fixture
def reg(monkeypatch):
    """A fresh process-wide registry over the built-ins only; the old one comes back after."""
    monkeypatch.delenv("IMOOD_PLUGINS", raising=False)
    fresh = Registry([e for e in entry_points() if e[2].startswith("imood_cli.")])
    old = reset_registry(fresh)
    yield fresh
    reset_registry(old)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """Write a module under a fresh name into tmp_path (on sys.path); returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"imood_test_plugin_{next(_ids)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    return write


class Doubled(Detector):
    """A third-party detector: g = 2 · max logit, c = 0.5."""

    ada_scale = 0.5

    def idness(self, view):
        return 2 * view.logits.float().amax(dim=1)


class Plain(Detector):
    def idness(self, view):
        return view.logits.float().mean(dim=1)


class Tunable(Detector):
    ada_scale = 1.0
    hyperparameters = ("p", "flag", "mode")
    p = 90.0
    flag = False
    mode = "a"

    def idness(self, view):
        return view.logits.float().amax(dim=1) * self.p


def view_of(z):
    return ModelView(logits=torch.as_tensor(z, dtype=torch.float32))


# ---------------------------------------------------------------- discovery


def test_builtins_are_entry_points_recognised_by_module(reg):
    plugins = [p for p in reg.plugins() if p.derived_from is None]
    assert {p.name for p in plugins if p.kind == "method" and p.builtin} >= BUILTIN_DETECTORS
    assert {p.name for p in plugins if p.kind == "aux_loss" and p.builtin} >= BUILTIN_LOSSES
    for p in plugins:
        assert p.builtin and p.loaded, (p.name, p.error)
        assert p.target.startswith("imood_cli.") and ":" in p.target
    detectors = {p.name: p for p in reg.plugins() if p.kind == "method"}
    for name in BUILTIN_DETECTORS:  # an ada_ form for exactly those that declare a c
        assert (f"ada_{name}" in detectors) == (detectors[name].cls.ada_scale is not None)
    m = reg.score("ada_energy")
    assert isinstance(m, AdaScore) and m.scale == 1.0
    assert reg.score("msp") is not reg.score("msp")  # a fresh instance each time
    assert registry() is reg


def test_discovery_is_lazy_and_runs_once(reg, plugin_module):
    mod = plugin_module("""
        from imood_cli.plugin_api import Detector
        CALLS = []
        CALLS.append(1)
        class Counted(Detector):
            def idness(self, view):
                return view.logits.sum(1)
    """)
    reg.add("method", "counted", f"{mod}:Counted", distribution="acme")
    assert mod not in sys.modules  # nothing imported before first use
    reg.score("counted")
    reg.score("counted")
    assert sys.modules[mod].CALLS == [1]


def test_third_party_detector_gets_ada_form_for_scoring_and_training(reg):
    reg.add("method", "doubled", Doubled, distribution="acme-ood", version="1.2")
    z = np.random.default_rng(0).normal(size=(16, 4))
    counts = [40, 20, 10, 5]
    lp = log_prior(counts).float()
    m = reg.score("ada_doubled")
    assert isinstance(m, AdaScore) and m.scale == 0.5
    score, objective = reg.training("ada_doubled")  # a 0.2 Detector: its ImOOD form trains too
    assert isinstance(objective, AdaObjective) and objective.heads == {"lambda_head", "aux_linear"}
    log_beta = torch.logsumexp(torch.log_softmax(torch.tensor(z), 1) - log_prior(counts), 1) - np.log(4)
    want = -(2 * z.max(1) + 0.5 * log_beta.numpy())
    np.testing.assert_allclose(m.ood_score(view_of(z), lp).numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reg.score("doubled").ood_score(view_of(z), lp).numpy(), -2 * z.max(1), rtol=1e-6)
    assert reg.score("ada_doubled", ada_scale=2.0).scale == 2.0
    with pytest.raises(ImoodError, match="applies to ada_ methods only"):
        reg.score("doubled", ada_scale=2.0)
    assert reg.training("doubled")[1] is None  # post hoc only: no objective of its own


def test_detector_without_ada_scale_has_no_ada_form(reg):
    reg.add("method", "plain", Plain, distribution="acme")
    assert "plain" in reg.names("method") and "ada_plain" not in reg.names("method")
    with pytest.raises(ImoodError, match="declares no ada_scale"):
        reg.score("ada_plain")


def test_unknown_detector_suggests_nearest(reg):
    with pytest.raises(ImoodError) as err:
        reg.score("enrgy")
    assert str(err.value).startswith("unknown method 'enrgy'; did you mean 'energy'")


def test_hyperparameters_are_typed_and_checked(reg):
    reg.add("method", "tunable", Tunable, distribution="acme")
    m = reg.score("tunable", p="95", flag="true", mode="b")
    assert (m.p, m.flag, m.mode) == (95.0, True, "b") and m.options() == {"p": 95.0, "flag": True, "mode": "b"}
    assert reg.score("ada_tunable", p=3).base.p == 3.0
    assert Tunable.p == 90.0  # the class default is untouched
    for bad, msg in (({"q": 1}, "no option 'q'"), ({"p": "x"}, "option p must be float"),
                     ({"flag": "maybe"}, "option flag must be bool"), ({"p": True}, "option p must be float")):
        with pytest.raises(ImoodError, match=msg):
            reg.score("tunable", **bad)


# ---------------------------------------------------------------- isolation


def test_broken_import_is_reported_and_skipped(reg, plugin_module):
    mod = plugin_module("raise RuntimeError('boom at import')\n")
    reg.add("method", "shiny", f"{mod}:Shiny", distribution="acme-broken")
    p = next(p for p in reg.plugins() if p.name == "shiny")
    assert p.status == "error" and p.error == "RuntimeError: boom at import"
    with pytest.warns(PluginWarning, match=r"'shiny' from acme-broken skipped: RuntimeError: boom at import"):
        assert isinstance(reg.score("msp"), Score)  # everything else works
    with pytest.raises(ImoodError, match="'shiny' from acme-broken cannot be used: RuntimeError: boom"):
        reg.score("shiny")


def test_plugin_that_exits_on_import_does_not_stop_imood(reg, plugin_module):
    mod = plugin_module("import sys\nsys.exit(3)\n")
    reg.add("method", "quitter", f"{mod}:Quitter", distribution="acme")
    with pytest.warns(PluginWarning, match="SystemExit"):
        assert "msp" in reg.names("method")


class NoIdness(Detector):
    ada_scale = 1.0


class TextScale(Detector):
    ada_scale = "big"

    def idness(self, view):
        return view.logits[:, 0]


class OddNeeds(Detector):
    needs = frozenset({"telepathy"})

    def idness(self, view):
        return view.logits[:, 0]


class NotADetector:
    def idness(self, view):
        return view.logits[:, 0]


def loss_function(batch):
    return batch.projections.sum()


@pytest.mark.parametrize("kind,obj,message", [
    ("method", NoIdness, "must define idness"),
    ("method", TextScale, "ada_scale must be a finite number"),
    ("method", OddNeeds, "unknown needs"),
    ("method", NotADetector, "must subclass imood_cli.plugin_api.Method, Score or Detector"),
    ("aux_loss", Doubled, "must subclass imood_cli.plugin_api.AuxLoss"),
    ("aux_loss", loss_function, "must name a class"),
])
def test_contract_breaking_plugin(reg, kind, obj, message):
    reg.add(kind, "bad", f"{obj.__module__}:{obj.__qualname__}", distribution="acme-bad")
    p = next(p for p in reg.plugins() if p.name == "bad")
    assert p.status == "error" and message in p.error
    with pytest.warns(PluginWarning, match=message):
        reg.names(kind)


def test_ada_prefixed_names_are_reserved(reg):
    reg.add("method", "ada_mine", Doubled, distribution="acme")
    p = next(p for p in reg.plugins() if p.name == "ada_mine" and p.derived_from is None)
    assert p.status == "refused" and "ImOOD forms" in p.error


class Fine(Detector):
    def idness(self, view):
        return view.logits.max(dim=1).values


@pytest.mark.parametrize("kind,name,why", [
    ("method", "all", "reserved by the command line"),  # collided with -m all
    ("dataset", "folder", "reserved by the command line"),  # imood data prepare folder
    ("method", "MSP", "not lower-case"),  # beside msp: two files that collide on a case-insensitive filesystem
    ("method", "a,b", "not lower-case"),  # made `score -m all` fail for everyone
    ("method", 'quo"te', "not lower-case"),
    ("method", "x:y", "not lower-case"),
    ("method", "9lives", "starting with a letter"),
])
def test_plugin_names_follow_the_command_line_spelling(reg, kind, name, why):
    reg.add(kind, name, Fine if kind == "method" else object, distribution="acme-names")
    p = next(p for p in reg.plugins() if p.name == name and p.derived_from is None)
    assert p.status == "refused" and why in p.error and p.cls is None
    with pytest.warns(PluginWarning, match=why):
        names = reg.names(kind)
    assert name not in names and "msp" in reg.names("method")
    if kind == "method":
        with pytest.raises(ImoodError, match=why):  # used anyway: the refusal's reason, not "unknown method"
            reg.score(name)


def test_aux_loss_plugin_gets_the_options_it_declares(reg):
    class Temp(AuxLoss):
        hyperparameters = ("T",)
        T = 1.0

        def __call__(self, batch):
            return batch.projections.sum() / self.T

    reg.add("aux_loss", "temp", Temp, distribution="acme")
    loss = reg.aux_loss("temp", k=0.3, T=0.5)  # k is PASCL's, not Temp's: dropped
    assert loss.T == 0.5 and Temp.T == 1.0
    assert reg.aux_loss("pascl", k=0.3, T=0.2).k == 0.3


# ---------------------------------------------------------------- names


@pytest.mark.filterwarnings("ignore::imood_cli.registry.PluginWarning")
def test_two_plugins_with_one_name_are_both_refused(reg):
    reg.add("method", "twin", Doubled, distribution="acme-a")
    reg.add("method", "twin", Plain, distribution="acme-b")
    with pytest.raises(ImoodError, match="name clash: 'twin' is provided by both acme-a and acme-b"):
        reg.score("twin")
    assert reg.score("msp") is not None


def test_a_plugin_never_disables_a_builtin(reg):
    reg.add("method", "msp", Doubled, distribution="acme-shadow")
    with pytest.warns(PluginWarning, match="'msp' from acme-shadow skipped: 'msp' is a built-in name"):
        m = reg.score("msp")
    assert type(m).__module__ == "imood_cli.methods.msp"
    assert isinstance(reg.score("ada_msp").base, type(m))


def test_a_distribution_that_claims_to_be_imood_is_still_a_plugin(monkeypatch, reg):
    """Built-ins are recognised by module: a dist-info named 'imood' cannot bypass IMOOD_PLUGINS."""
    reg.add("method", "sneaky", Doubled, distribution="imood")
    monkeypatch.setenv("IMOOD_PLUGINS", "")
    reg.add("method", "noop", Plain, distribution="acme")  # any add rediscovers
    p = next(p for p in reg.plugins() if p.name == "sneaky")
    assert not p.builtin and p.status == "disabled"
    assert "sneaky" not in reg.names("method") and "msp" in reg.names("method")


@pytest.mark.filterwarnings("ignore::imood_cli.registry.PluginWarning")
@pytest.mark.parametrize("value,expect", [
    (None, {"one", "two", "three"}),
    ("acme-one", {"one"}),
    ("ACME_one , acme.two", {"one", "two"}),  # distribution names are normalized
    ("", set()),  # set but empty: only the built-ins
])
def test_imood_plugins_allow_list(plugin_module, monkeypatch, value, expect):
    if value is None:
        monkeypatch.delenv("IMOOD_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("IMOOD_PLUGINS", value)
    mod = plugin_module("raise RuntimeError('must not be imported when left out')\n")
    r = Registry([e for e in entry_points() if e[2].startswith("imood_cli.")])
    r.add("method", "one", Doubled, distribution="acme-one")
    r.add("method", "two", Plain, distribution="acme_two")
    r.add("method", "three", f"{mod}:Three", distribution="acme-three")
    third = {p.name: p for p in r.plugins() if p.distribution.startswith("acme") and p.derived_from is None}
    assert {n for n, p in third.items() if p.status != "disabled"} == expect
    for p in third.values():
        if p.status == "disabled":
            assert "IMOOD_PLUGINS" in p.error and "must not be imported" not in p.error
    assert BUILTIN_DETECTORS <= set(r.names("method"))  # the built-ins always load
    if "one" not in expect:
        with pytest.raises(ImoodError) as err:
            r.score("ada_one")
        assert str(err.value).startswith("unknown method 'ada_one'; did you mean")
        assert "acme-one provides 'one' but IMOOD_PLUGINS leaves it out" in str(err.value)


# ---------------------------------------------------------------- the CLI


def test_plugins_list_json_and_table(reg, plugin_module, cli):
    mod = plugin_module("raise RuntimeError('boom at import')\n")
    reg.add("method", "shiny", f"{mod}:Shiny", distribution="acme-broken")
    reg.add("method", "doubled", Doubled, distribution="acme-ood", version="1.2")
    code, out, err = cli(["plugins", "list", "--json"])
    assert code == 0, err
    keyed = {(r["kind"], r["name"], r["distribution"]): r for r in json.loads(out)}
    bad = keyed[("method", "shiny", "acme-broken")]
    assert bad["loaded"] is False and bad["status"] == "error" and bad["error"] == "RuntimeError: boom at import"
    good = keyed[("method", "ada_doubled", "acme-ood")]
    assert good["loaded"] and good["derived_from"] == "doubled" and good["version"] == "1.2"
    code, out, err = cli(["plugins", "list"])
    assert code == 0 and "shiny" in out and "acme-broken" in out and "ada_energy" in out
    assert "1 plugin(s) cannot be used" in out
