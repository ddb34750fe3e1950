"""The plugin registry: entry points → classes, built-ins recognised by module, ada_ forms, isolation."""

from __future__ import annotations

import itertools
import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import run_cli

from imood_cli.core.ada import Ada
from imood_cli.core.prior import log_prior
from imood_cli.errors import ImoodError
from imood_cli.plugin_api import AuxLoss, Detector, ModelView
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
    assert {p.name for p in plugins if p.kind == "detector" and p.builtin} >= BUILTIN_DETECTORS
    assert {p.name for p in plugins if p.kind == "aux_loss" and p.builtin} >= BUILTIN_LOSSES
    for p in plugins:
        assert p.builtin and p.loaded, (p.name, p.error)
        assert p.target.startswith("imood_cli.") and ":" in p.target
    detectors = {p.name: p for p in reg.plugins() if p.kind == "detector"}
    for name in BUILTIN_DETECTORS:  # an ada_ form for exactly those that declare a c
        assert (f"ada_{name}" in detectors) == (detectors[name].cls.ada_scale is not None)
    m = reg.detector("ada_energy")
    assert isinstance(m, Ada) and m.scale == 1.0
    assert reg.detector("msp") is not reg.detector("msp")  # a fresh instance each time
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
    reg.add("detector", "counted", f"{mod}:Counted", distribution="acme")
    assert mod not in sys.modules  # nothing imported before first use
    reg.detector("counted")
    reg.detector("counted")
    assert sys.modules[mod].CALLS == [1]


def test_third_party_detector_gets_ada_form_for_scoring_and_training(reg):
    reg.add("detector", "doubled", Doubled, distribution="acme-ood", version="1.2")
    z = np.random.default_rng(0).normal(size=(16, 4))
    counts = [40, 20, 10, 5]
    lp = log_prior(counts).float()
    m = reg.detector("ada_doubled")
    assert isinstance(m, Ada) and m.scale == 0.5 and m.heads == {"lambda_head", "aux_linear"} and m.has_loss
    log_beta = torch.logsumexp(torch.log_softmax(torch.tensor(z), 1) - log_prior(counts), 1) - np.log(4)
    want = -(2 * z.max(1) + 0.5 * log_beta.numpy())
    np.testing.assert_allclose(m.ood_score(view_of(z), lp).numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reg.detector("doubled").ood_score(view_of(z), lp).numpy(), -2 * z.max(1), rtol=1e-6)
    assert reg.detector("ada_doubled", ada_scale=2.0).scale == 2.0
    with pytest.raises(ImoodError, match="applies to ada_ detectors only"):
        reg.detector("doubled", ada_scale=2.0)
    assert not reg.detector("doubled").has_loss  # post hoc only


def test_detector_without_ada_scale_has_no_ada_form(reg):
    reg.add("detector", "plain", Plain, distribution="acme")
    assert "plain" in reg.names("detector") and "ada_plain" not in reg.names("detector")
    with pytest.raises(ImoodError, match="declares no ada_scale"):
        reg.detector("ada_plain")


def test_unknown_detector_suggests_nearest(reg):
    with pytest.raises(ImoodError) as err:
        reg.detector("enrgy")
    assert str(err.value).startswith("unknown detector 'enrgy'; did you mean 'energy'")


def test_hyperparameters_are_typed_and_checked(reg):
    reg.add("detector", "tunable", Tunable, distribution="acme")
    m = reg.detector("tunable", p="95", flag="true", mode="b")
    assert (m.p, m.flag, m.mode) == (95.0, True, "b") and m.options() == {"p": 95.0, "flag": True, "mode": "b"}
    assert reg.detector("ada_tunable", p=3).base.p == 3.0
    assert Tunable.p == 90.0  # the class default is untouched
    for bad, msg in (({"q": 1}, "has no option 'q'"), ({"p": "x"}, "option p must be float"),
                     ({"flag": "maybe"}, "option flag must be bool"), ({"p": True}, "option p must be float")):
        with pytest.raises(ImoodError, match=msg):
            reg.detector("tunable", **bad)


# ---------------------------------------------------------------- isolation


def test_broken_import_is_reported_and_skipped(reg, plugin_module):
    mod = plugin_module("raise RuntimeError('boom at import')\n")
    reg.add("detector", "shiny", f"{mod}:Shiny", distribution="acme-broken")
    p = next(p for p in reg.plugins() if p.name == "shiny")
    assert p.status == "error" and p.error == "RuntimeError: boom at import"
    with pytest.warns(PluginWarning, match=r"'shiny' from acme-broken skipped: RuntimeError: boom at import"):
        assert isinstance(reg.detector("msp"), Detector)  # everything else works
    with pytest.raises(ImoodError, match="'shiny' from acme-broken cannot be used: RuntimeError: boom"):
        reg.detector("shiny")


def test_plugin_that_exits_on_import_does_not_stop_imood(reg, plugin_module):
    mod = plugin_module("import sys\nsys.exit(3)\n")
    reg.add("detector", "quitter", f"{mod}:Quitter", distribution="acme")
    with pytest.warns(PluginWarning, match="SystemExit"):
        assert "msp" in reg.names("detector")


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
    ("detector", NoIdness, "must define idness"),
    ("detector", TextScale, "ada_scale must be a finite number"),
    ("detector", OddNeeds, "unknown needs"),
    ("detector", NotADetector, "must subclass imood_cli.plugin_api.Detector"),
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
    reg.add("detector", "ada_mine", Doubled, distribution="acme")
    p = next(p for p in reg.plugins() if p.name == "ada_mine" and p.derived_from is None)
    assert p.status == "refused" and "ImOOD forms" in p.error


class Fine(Detector):
    def idness(self, view):
        return view.logits.max(dim=1).values


@pytest.mark.parametrize("kind,name,why", [
    ("detector", "all", "reserved by the command line"),  # collided with -m all
    ("dataset", "folder", "reserved by the command line"),  # imood data prepare folder
    ("detector", "MSP", "not lower-case"),  # beside msp: two files that collide on a case-insensitive filesystem
    ("detector", "a,b", "not lower-case"),  # made `score -m all` fail for everyone
    ("detector", 'quo"te', "not lower-case"),
    ("detector", "x:y", "not lower-case"),
    ("detector", "9lives", "starting with a letter"),
])
def test_plugin_names_follow_the_command_line_spelling(reg, capsys, kind, name, why):
    reg.add(kind, name, Fine if kind == "detector" else object, distribution="acme-names")
    p = next(p for p in reg.plugins() if p.name == name and p.derived_from is None)
    assert p.status == "refused" and why in p.error and p.cls is None
    with pytest.warns(PluginWarning, match=why):
        names = reg.names(kind)
    assert name not in names and "msp" in reg.names("detector")
    if kind == "detector":
        with pytest.raises(ImoodError, match=why):  # used anyway: the refusal's reason, not "unknown detector"
            reg.detector(name)


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
    reg.add("detector", "twin", Doubled, distribution="acme-a")
    reg.add("detector", "twin", Plain, distribution="acme-b")
    with pytest.raises(ImoodError, match="name clash: 'twin' is provided by both acme-a and acme-b"):
        reg.detector("twin")
    assert reg.detector("msp") is not None


def test_a_plugin_never_disables_a_builtin(reg):
    reg.add("detector", "msp", Doubled, distribution="acme-shadow")
    with pytest.warns(PluginWarning, match="'msp' from acme-shadow skipped: 'msp' is a built-in name"):
        m = reg.detector("msp")
    assert type(m).__module__ == "imood_cli.detectors.msp"
    assert isinstance(reg.detector("ada_msp").base, type(m))


def test_a_distribution_that_claims_to_be_imood_is_still_a_plugin(monkeypatch, reg):
    """Built-ins are recognised by module: a dist-info named 'imood' cannot bypass IMOOD_PLUGINS."""
    reg.add("detector", "sneaky", Doubled, distribution="imood")
    monkeypatch.setenv("IMOOD_PLUGINS", "")
    reg.add("detector", "noop", Plain, distribution="acme")  # any add rediscovers
    p = next(p for p in reg.plugins() if p.name == "sneaky")
    assert not p.builtin and p.status == "disabled"
    assert "sneaky" not in reg.names("detector") and "msp" in reg.names("detector")


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
    r.add("detector", "one", Doubled, distribution="acme-one")
    r.add("detector", "two", Plain, distribution="acme_two")
    r.add("detector", "three", f"{mod}:Three", distribution="acme-three")
    third = {p.name: p for p in r.plugins() if p.distribution.startswith("acme") and p.derived_from is None}
    assert {n for n, p in third.items() if p.status != "disabled"} == expect
    for p in third.values():
        if p.status == "disabled":
            assert "IMOOD_PLUGINS" in p.error and "must not be imported" not in p.error
    assert BUILTIN_DETECTORS <= set(r.names("detector"))  # the built-ins always load
    if "one" not in expect:
        with pytest.raises(ImoodError) as err:
            r.detector("ada_one")
        assert str(err.value).startswith("unknown detector 'ada_one'; did you mean")
        assert "acme-one provides 'one' but IMOOD_PLUGINS leaves it out" in str(err.value)


# ---------------------------------------------------------------- the CLI


def test_plugins_list_json_and_table(reg, plugin_module, capsys):
    mod = plugin_module("raise RuntimeError('boom at import')\n")
    reg.add("detector", "shiny", f"{mod}:Shiny", distribution="acme-broken")
    reg.add("detector", "doubled", Doubled, distribution="acme-ood", version="1.2")
    code, out, err = run_cli(["plugins", "list", "--json"], capsys)
    assert code == 0, err
    keyed = {(r["kind"], r["name"], r["distribution"]): r for r in json.loads(out)}
    bad = keyed[("detector", "shiny", "acme-broken")]
    assert bad["loaded"] is False and bad["status"] == "error" and bad["error"] == "RuntimeError: boom at import"
    good = keyed[("detector", "ada_doubled", "acme-ood")]
    assert good["loaded"] and good["derived_from"] == "doubled" and good["version"] == "1.2"
    code, out, err = run_cli(["plugins", "list"], capsys)
    assert code == 0 and "shiny" in out and "acme-broken" in out and "ada_energy" in out
    assert "1 plugin(s) cannot be used" in out
