"""The plugin registry: discovery, ada_ derivation, broken plugins, clashes, IMOOD_PLUGINS, `imood plugins list`.

Everything here registers its plugins in process, so it holds whether or not a third-party plugin
(imood-extras) is installed; the process-wide registry is put back after each test.
"""

from __future__ import annotations

import importlib.metadata as md
import itertools
import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from imood_cli.engine.outputs import ModelOutputs
from imood_cli.engine.prior import log_prior
from imood_cli.errors import ImoodError
from imood_cli.losses.base import AuxLoss
from imood_cli.metrics.ada import Ada
from imood_cli.metrics.base import LossContext, OODMetric
from imood_cli.plugins import GROUPS, Plugin, PluginWarning, Registry, registry, reset_registry

BUILTIN_METRICS = {"msp", "oe", "energy", "bin_disc", "maha", "gradnorm"}
BUILTIN_LOSSES = {"none", "pascl", "simclr"}
_ids = itertools.count()


@pytest.fixture
def reg(monkeypatch):
    """A fresh process-wide registry over the installed entry points; the old one comes back after."""
    monkeypatch.delenv("IMOOD_PLUGINS", raising=False)
    fresh = Registry()
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


@pytest.fixture
def broken(reg, plugin_module):
    """A metric whose module raises on import, registered as an entry point of 'acme-broken'."""
    mod = plugin_module("raise RuntimeError('boom at import')\n")
    reg.add_entry_point("metric", "shiny", f"{mod}:Shiny", distribution="acme-broken")
    return reg


def by_key(r: Registry) -> dict[tuple[str, str, str], Plugin]:
    return {(p.kind, p.name, p.distribution): p for p in r.plugins()}


def run_main(argv, capsys):
    from imood_cli.cli.app import main

    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


class Doubled(OODMetric):
    """A third-party metric: g = 2 · max logit, c = 0.5."""

    ada_scale = 0.5

    def idness(self, out):
        return 2 * out.logits.float().amax(dim=1)


class DuckMetric:
    """Duck-typed: only idness and ada_scale, no base class."""

    ada_scale = 0.25

    def idness(self, out):
        return out.logits.float().mean(dim=1)


# ---------------------------------------------------------------- discovery


def test_builtins_come_from_imood_entry_points(reg):
    plugins = reg.plugins()
    builtin = {(p.kind, p.name) for p in plugins if p.distribution == "imood" and p.derived_from is None}
    assert {n for k, n in builtin if k == "metric"} >= BUILTIN_METRICS
    assert {n for k, n in builtin if k == "aux_loss"} >= BUILTIN_LOSSES
    assert ("dataset", "digits") in builtin
    # Installed: the distribution's metadata declares them. Run from a source tree that is not
    # installed (PYTHONPATH): the same table is read from pyproject.toml.
    try:
        dist = md.distribution("imood")
        version = dist.version
        declared = {(ep.group, ep.name) for ep in dist.entry_points}
    except md.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
        version = project["version"]
        declared = {(g, n) for g, eps in project["entry-points"].items() for n in eps}
    for p in plugins:
        if p.distribution == "imood":
            assert p.loaded, (p.name, p.error)
            assert p.version == version
            assert p.derived_from or ":" in p.target  # a real entry point "module:attr"
    assert {(GROUPS["metric"], n) for n in BUILTIN_METRICS} <= declared
    # every built-in metric with an ada_scale has its ada_ form, and only those
    metrics = {p.name: p for p in plugins if p.kind == "metric" and p.distribution == "imood"}
    for name in BUILTIN_METRICS:
        has_scale = metrics[name].obj.ada_scale is not None
        assert (f"ada_{name}" in metrics) == has_scale
        if has_scale:
            assert metrics[f"ada_{name}"].derived_from == name
    assert {"ada_msp", "ada_energy", "ada_bin_disc"} <= set(reg.names("metric"))
    m = reg.metric("ada_energy")
    assert isinstance(m, Ada) and m.scale == 1.0 and m.name == "ada_energy"
    assert reg.metric("msp") is not reg.metric("msp")  # a fresh instance each time
    assert registry() is reg


def test_discovery_is_lazy_and_runs_once(reg, plugin_module):
    mod = plugin_module("""
        from imood_cli.metrics.base import OODMetric
        CALLS = []

        class Counted(OODMetric):
            def idness(self, out):
                return out.logits.amax(1)

        def make():
            CALLS.append(1)
            return Counted()
    """)
    reg.add_entry_point("metric", "counted", f"{mod}:make", distribution="acme-count")
    assert mod not in sys.modules  # nothing imported before first use
    reg.names("metric")
    calls = sys.modules[mod].CALLS
    assert len(calls) == 1  # imported and checked once
    reg.plugins(), reg.names("metric"), reg.names("aux_loss")
    assert len(calls) == 1
    reg.metric("counted")
    assert len(calls) == 2  # the factory makes a fresh instance per use


# ---------------------------------------------------------------- ada_ derivation


def test_third_party_metric_gets_ada_form_for_scoring_and_training(reg):
    reg.add("metric", "doubled", Doubled, distribution="acme-ood", version="1.2")
    reg.add("metric", "duck", DuckMetric(), distribution="acme-ood", version="1.2")
    rows = by_key(reg)
    ada = rows[("metric", "ada_doubled", "acme-ood")]
    assert ada.loaded and ada.derived_from == "doubled" and ada.version == "1.2"
    assert rows[("metric", "ada_duck", "acme-ood")].loaded

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 4, generator=g) * 2
    counts = [40, 12, 5, 2]
    out = ModelOutputs(logits)
    # independent float64 reference: -(g + c · log((1/K) Σ p_k / π_k))
    z = logits.double().numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pi = np.array(counts, np.float64) / sum(counts)
    log_b = np.log(np.mean(p / pi, axis=1))
    lp = log_prior(counts, 1.0).float()

    m = reg.metric("ada_doubled")
    assert isinstance(m, Ada) and m.name == "ada_doubled" and m.scale == 0.5
    np.testing.assert_allclose(m.ood_score(out, lp).numpy(), -(2 * z.max(1) + 0.5 * log_b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reg.metric("doubled").ood_score(out, lp).numpy(), -2 * z.max(1), rtol=1e-6)
    assert reg.metric("ada_doubled", ada_scale=2.0).scale == 2.0
    with pytest.raises(ImoodError, match="ada_ metrics only"):
        reg.metric("doubled", ada_scale=2.0)

    duck = reg.metric("ada_duck")
    np.testing.assert_allclose(duck.ood_score(out, lp).numpy(), -(z.mean(1) + 0.25 * log_b), rtol=1e-5, atol=1e-5)
    plain = reg.metric("duck")  # the defaults a duck-typed metric gets
    np.testing.assert_allclose(plain.ood_score(out, lp).numpy(), -z.mean(1), rtol=1e-6)
    assert plain.needs_fit is False and plain.has_loss is False and plain.fit_state() == {}

    # the training form: ImOOD's loss through aux_linear, with gradients to the logits
    is_id = torch.arange(32) < 24
    train_out = ModelOutputs(logits.clone().requires_grad_(), lambdas=torch.ones(32, 4))
    ctx = LossContext(is_id=is_id, labels=torch.randint(0, 4, (24,), generator=g), log_prior=lp,
                      aux_linear=torch.nn.Linear(1, 1))
    m.train_update(train_out, ctx)
    loss = m.loss(train_out, ctx)
    assert m.has_loss and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert train_out.logits.grad.abs().sum() > 0


def test_metric_without_ada_scale_has_no_ada_form(reg):
    class Plain(OODMetric):
        def idness(self, out):
            return out.logits.amax(1)

    reg.add("metric", "plainmetric", Plain, distribution="acme-ood")
    assert "plainmetric" in reg.names("metric") and "ada_plainmetric" not in reg.names("metric")
    with pytest.raises(ImoodError, match=r"unknown OOD metric 'ada_plainmetric'; did you mean"):
        reg.metric("ada_plainmetric")


def test_unknown_metric_suggests_nearest(reg):
    with pytest.raises(ImoodError) as err:
        reg.metric("enrgy")
    msg = str(err.value)
    assert msg.startswith("unknown OOD metric 'enrgy'; did you mean 'energy'")
    assert err.value.exit_code == 2 and "\n" not in msg


# ---------------------------------------------------------------- broken plugins


def test_broken_import_is_reported_and_skipped(broken):
    p = by_key(broken)[("metric", "shiny", "acme-broken")]
    assert not p.loaded and p.status == "error"
    assert p.error == "RuntimeError: boom at import"
    with pytest.warns(PluginWarning, match=r"'shiny' from acme-broken skipped: RuntimeError: boom at import"):
        m = broken.metric("msp")  # everything else works, with a warning
    assert m.name == "msp"
    assert "shiny" not in broken.names("metric") and "ada_shiny" not in broken.names("metric")
    with pytest.raises(ImoodError, match=r"OOD metric 'shiny' from acme-broken cannot be used: RuntimeError: boom"):
        broken.metric("shiny")


def test_plugin_that_exits_on_import_does_not_stop_imood(reg, plugin_module):
    mod = plugin_module("import sys\nsys.exit(3)\n")
    reg.add_entry_point("aux_loss", "quitter", f"{mod}:Loss", distribution="acme-exit")
    p = by_key(reg)[("aux_loss", "quitter", "acme-exit")]
    assert p.error == "SystemExit: 3"
    with pytest.warns(PluginWarning):
        assert reg.aux_loss("pascl").name == "pascl"


class NoIdness(OODMetric):
    pass


class TextScale(OODMetric):
    ada_scale = "1.0"

    def idness(self, out):
        return out.logits.amax(1)


class FitlessFit(OODMetric):
    needs_fit = True

    def idness(self, out):
        return out.logits.amax(1)


class LosslessLoss(OODMetric):
    has_loss = True

    def idness(self, out):
        return out.logits.amax(1)


class NotALoss:
    pass


class NoLoad:
    def status(self, root):
        return []

    def prepare(self, root):
        return {}


@pytest.mark.parametrize("kind,obj,message", [
    ("metric", NoIdness, "must define idness"),
    ("metric", 42, "must define idness"),
    ("metric", TextScale, "ada_scale must be a finite number"),
    ("metric", FitlessFit, "needs_fit is set but the metric does not define fit, fit_state, load_fit_state"),
    ("metric", LosslessLoss, "has_loss is set but the metric does not define loss"),
    ("aux_loss", NotALoss, "must be callable"),
    ("dataset", NoLoad, "must define load"),
])
def test_protocol_breaking_plugin(reg, kind, obj, message):
    reg.add(kind, "rogue", obj, distribution="acme-rogue")
    p = by_key(reg)[(kind, "rogue", "acme-rogue")]
    assert not p.loaded and p.error.startswith("TypeError: ") and message in p.error
    with pytest.warns(PluginWarning, match="'rogue' from acme-rogue skipped") as caught:
        assert "rogue" not in reg.names(kind)
    assert caught[0].filename == __file__  # the warning points at the caller
    assert "ada_rogue" not in reg.names("metric")
    lookup = {"metric": reg.metric, "aux_loss": reg.aux_loss, "dataset": reg.dataset}[kind]
    with pytest.raises(ImoodError, match=f"'rogue' from acme-rogue cannot be used: TypeError: .*{message}"):
        lookup("rogue")
    assert reg.metric("energy").name == "energy" and reg.aux_loss("simclr").name == "simclr"


def test_protocol_breaking_entry_point(reg, plugin_module):
    mod = plugin_module("THING = 3\n")
    reg.add_entry_point("metric", "thing", f"{mod}:THING", distribution="acme-rogue")
    reg.add_entry_point("metric", "ghost", f"{mod}:Missing", distribution="acme-rogue")
    rows = by_key(reg)
    assert "must define idness" in rows[("metric", "thing", "acme-rogue")].error
    assert rows[("metric", "ghost", "acme-rogue")].error.startswith("AttributeError")


def test_aux_loss_plugin_gets_the_options_it_declares(reg):
    class Scaled(AuxLoss):
        T = 0.3

        def __call__(self, batch):
            return batch.projections.sum() * 0.0 + self.T

    def make(T=0.5):  # a factory taking the option as a parameter
        loss = Scaled()
        loss.T = T
        return loss

    reg.add("aux_loss", "scaled", Scaled, distribution="acme-loss")
    reg.add("aux_loss", "made", make, distribution="acme-loss")
    a = reg.aux_loss("scaled", k=0.4, T=0.2)
    assert a.T == 0.2 and a.name == "scaled" and not hasattr(a, "k")
    assert reg.aux_loss("scaled") is not a
    assert reg.aux_loss("made", k=0.4, T=0.9).T == 0.9


# ---------------------------------------------------------------- name clashes


def test_name_clash_names_both_distributions(reg):
    reg.add("metric", "twin", Doubled, distribution="acme-a")
    reg.add("metric", "twin", DuckMetric, distribution="acme-b")
    rows = by_key(reg)
    for dist, other in (("acme-a", "acme-b"), ("acme-b", "acme-a")):
        p = rows[("metric", "twin", dist)]
        assert p.status == "clash" and p.clash == [other]
        assert "acme-a" in p.error and "acme-b" in p.error
    with pytest.warns(PluginWarning, match="'twin' skipped: name clash") as caught:
        assert reg.metric("msp").name == "msp"  # the rest keeps working
    assert len(caught) == 1  # one warning per clash
    for name in ("twin", "ada_twin"):  # the ada_ forms clash too
        with pytest.raises(ImoodError) as err:
            reg.metric(name)
        msg = str(err.value)
        assert f"OOD metric {name!r} cannot be used: name clash" in msg
        assert "acme-a" in msg and "acme-b" in msg


def test_clash_with_a_builtin_and_with_a_derived_name(reg):
    reg.add("metric", "energy", Doubled, distribution="acme-a")
    reg.add("metric", "ada_msp", Doubled, distribution="acme-b")
    with pytest.warns(PluginWarning) as caught, \
            pytest.raises(ImoodError, match=r"'energy' is provided by both imood \(.*\) and acme-a"):
        reg.metric("energy")
    said = sorted(str(w.message).split(" skipped")[0] for w in caught)
    assert said == ["imood: OOD metric plugin 'ada_msp'", "imood: OOD metric plugin 'energy'"]
    with pytest.raises(ImoodError, match=r"'ada_msp' is provided by both imood \(ImOOD form of msp.*\) and acme-b"):
        reg.metric("ada_msp")
    assert reg.metric("msp").name == "msp" and reg.metric("ada_oe").name == "ada_oe"


def test_clash_is_lifted_by_leaving_one_distribution_out(reg, monkeypatch):
    reg.add("metric", "twin", Doubled, distribution="acme-a")
    reg.add("metric", "twin", DuckMetric, distribution="acme-b")
    monkeypatch.setenv("IMOOD_PLUGINS", "acme-a")
    reg.add("metric", "noop", Doubled, distribution="acme-a")  # any add rediscovers
    assert isinstance(reg.metric("twin"), Doubled)


# ---------------------------------------------------------------- IMOOD_PLUGINS


def allow_list_registry(plugin_module) -> Registry:
    mod = plugin_module("raise RuntimeError('must not be imported when left out')\n")
    r = Registry()
    r.add("metric", "one", Doubled, distribution="acme-one")
    r.add("metric", "two", DuckMetric, distribution="acme_two")
    r.add_entry_point("metric", "three", f"{mod}:Three", distribution="acme-three")
    return r


@pytest.mark.filterwarnings("ignore::imood_cli.plugins.PluginWarning")  # 'three' fails to import when allowed
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
    r = allow_list_registry(plugin_module)
    third = {p.name: p for p in r.plugins() if p.distribution.startswith("acme") and p.derived_from is None}
    enabled = {n for n, p in third.items() if not p.disabled}
    assert enabled == expect
    for name, p in third.items():
        if p.disabled:
            assert p.status == "disabled" and "IMOOD_PLUGINS" in p.error and "must not be imported" not in p.error
    assert ("three" in expect) == (third["three"].error == "RuntimeError: must not be imported when left out")
    assert {"one", "two"} & expect == {"one", "two"} & set(r.names("metric"))
    assert BUILTIN_METRICS <= set(r.names("metric"))  # the built-ins always load
    assert all(p.loaded for p in r.plugins() if p.distribution == "imood")
    if "one" not in expect:
        with pytest.raises(ImoodError) as err:
            r.metric("ada_one")
        assert str(err.value).startswith("unknown OOD metric 'ada_one'; did you mean")
        assert "acme-one provides 'one' but IMOOD_PLUGINS leaves it out" in str(err.value)


# ---------------------------------------------------------------- the CLI


def test_plugins_list_json_with_a_broken_plugin(broken, capsys):
    broken.add("metric", "doubled", Doubled, distribution="acme-ood", version="1.2")
    code, out, err = run_main(["plugins", "list", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert {"name", "kind", "distribution", "version", "loaded", "status", "error", "derived_from"} <= set(rows[0])
    keyed = {(r["kind"], r["name"], r["distribution"]): r for r in rows}
    bad = keyed[("metric", "shiny", "acme-broken")]
    assert bad["loaded"] is False and bad["status"] == "error" and bad["error"] == "RuntimeError: boom at import"
    good = keyed[("metric", "ada_doubled", "acme-ood")]
    assert good["loaded"] and good["derived_from"] == "doubled" and good["version"] == "1.2" and good["error"] is None
    assert all(r["loaded"] for r in rows if r["distribution"] == "imood")
    assert {r["name"] for r in rows if r["kind"] == "aux_loss"} >= BUILTIN_LOSSES


def test_plugins_list_table(broken, capsys):
    code, out, err = run_main(["plugins", "list"], capsys)
    assert code == 0, err
    assert "shiny" in out and "acme-broken" in out and "ada_energy" in out
    assert "1 plugin(s) cannot be used" in out


def tiny_run(root):
    """A model file for digits, untrained: enough for `imood score` to get to the metric names."""
    from imood_cli.data.load import load_benchmark
    from imood_cli.engine.checkpoint import save_tensors
    from imood_cli.engine.config import resolve_config
    from imood_cli.engine.model import ImOODModel
    from imood_cli.engine.train import architecture, model_metadata

    cfg = resolve_config({"dataset": "digits", "save_root": str(root), "name": "tiny", "ood_metric": "msp"})
    bench = load_benchmark("digits", root)
    arch = architecture(cfg, bench, 0)
    torch.manual_seed(0)
    run = root / "tiny"
    run.mkdir()
    save_tensors(run / "model.safetensors", ImOODModel(arch).state_dict(),
                 model_metadata(cfg, arch, list(bench.class_counts), 0))
    return run


def test_score_with_a_plugin_metric_that_is_not_there(reg, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMOOD_PLUGINS", "")  # as if imood-extras were not installed
    reset_registry(Registry())
    run = tiny_run(tmp_path)
    code, out, err = run_main(["score", run, "--ood_metric", "ada_maxlogit", "--device", "cpu"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("imood: error: unknown OOD metric 'ada_maxlogit'; did you mean 'ada_")
    assert "ada_msp" in lines[0]
    assert not (run / "scores").exists()
