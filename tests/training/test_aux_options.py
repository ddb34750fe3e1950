"""Aux-loss options (issue 22, items 1 and 10): `--aux-ood-loss name:key=value`, `--k` / `--T` only for a loss that
declares them and only when given, config.json's record of what the loss received, and a start that fails (an
option, a NaN, a plugin that raises) leaving nothing half-made."""

import json
from pathlib import Path

import pytest

from imood_cli.engine.training.config import load_run_config
from imood_cli.engine.training.setup import build_aux_loss
from imood_cli.plugin_api import AuxLoss
from imood_cli.registry import Registry, entry_points, reset_registry

SEEN: dict[str, list] = {}  # option values each plugin loss saw in __call__
NAN = {"on": True}


class Idclr2(AuxLoss):
    """A plugin loss whose temperature is not called T: --T must not reach it."""

    hyperparameters = ("temperature",)
    temperature = 0.5

    def __call__(self, batch):
        SEEN.setdefault("idclr2", []).append(self.temperature)
        return batch.projections[:, 0].mean() / self.temperature


class WithT(AuxLoss):
    """A plugin loss with an option T of its own default (not imood's 0.07)."""

    hyperparameters = ("T",)
    T = 1.0

    def __call__(self, batch):
        SEEN.setdefault("witht", []).append(self.T)
        return batch.projections[:, 0].mean() / self.T


class Nanny(AuxLoss):
    """NaN while NAN["on"]."""

    def __call__(self, batch):
        value = batch.projections[:, 0].mean()
        return value * float("nan") if NAN["on"] else value


class Broken(AuxLoss):
    def __init__(self, **options):
        raise RuntimeError("no licence for acme-broken")


@pytest.fixture
def reg(monkeypatch, tmp_path):
    """The built-ins and the plugins above (from the distribution "acme"), in a fresh working folder."""
    monkeypatch.delenv("IMOOD_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)
    fresh = Registry([e for e in entry_points() if e[2].startswith("imood_cli.")])
    for name, cls in (("idclr2", Idclr2), ("witht", WithT), ("nanny", Nanny), ("broken", Broken)):
        fresh.add("aux_loss", name, cls, distribution="acme")
    old = reset_registry(fresh)
    SEEN.clear()
    NAN["on"] = True
    yield fresh
    reset_registry(old)


def train(cli, name, *more):
    return cli(["train", "--ds", "digits", "-e", "1", "-b", "32", "--device", "cpu", "--name", name, *more])


def config(name):
    return json.loads((Path("runs") / name / "config.json").read_text())


def errors(err):
    lines = [line for line in err.splitlines() if line.startswith("imood: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def losses(name):
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
            for line in (Path("runs") / name / "metrics.jsonl").read_text().splitlines()]


def test_an_option_in_the_spec_reaches_the_plugin_and_is_recorded(reg, cli):
    code, _, err = train(cli, "a", "--aux-ood-loss", "idclr2:temperature=0.2")
    assert code == 0, err
    assert SEEN["idclr2"] and set(SEEN["idclr2"]) == {0.2}
    cfg = config("a")
    assert cfg["aux_ood_loss"] == "idclr2:temperature=0.2" and cfg["aux_loss_options"] == {"temperature": 0.2}
    assert cfg["temperature"] is None and cfg["pascl_k"] is None  # not given


def test_a_plugin_keeps_its_own_default_and_T_does_not_reach_a_loss_without_T(reg, cli):
    code, _, err = train(cli, "a", "--aux-ood-loss", "idclr2")
    assert code == 0, err
    assert set(SEEN.pop("idclr2")) == {0.5}
    code, _, err = train(cli, "b", "--aux-ood-loss", "idclr2", "--T", "0.2")
    assert code == 0, err
    assert set(SEEN["idclr2"]) == {0.5}  # temperature is not T
    assert "warning: --T 0.2 does not reach the aux loss 'idclr2' from acme, which has no option T" in err
    cfg = config("b")
    assert cfg["temperature"] == 0.2 and cfg["aux_loss_options"] == {"temperature": 0.5}


def test_T_reaches_a_loss_that_declares_it_only_when_given_and_the_spec_wins(reg, cli):
    assert train(cli, "a", "--aux-ood-loss", "witht")[0] == 0
    assert set(SEEN.pop("witht")) == {1.0}  # its own default, not imood's 0.07
    assert train(cli, "b", "--aux-ood-loss", "witht", "--T", "0.2")[0] == 0
    assert set(SEEN.pop("witht")) == {0.2}
    assert train(cli, "c", "--aux-ood-loss", "witht:T=0.3", "--T", "0.2")[0] == 0
    assert set(SEEN.pop("witht")) == {0.3}
    assert config("c")["aux_loss_options"] == {"T": 0.3}


@pytest.mark.parametrize("spec,message", [
    ("idclr2:temp=0.2", "aux loss 'idclr2' from acme: no option 'temp' (options: temperature)"),
    ("idclr2:temperature=warm", "aux loss 'idclr2' from acme: option temperature must be float, got 'warm'"),
    ("pascl:q=1", "aux loss 'pascl': no option 'q' (options: k, T)"),
    ("pascl:k=2", "aux loss 'pascl': PASCL needs 0 < k <= 1"),
    ("pascl:k", "aux loss options go as name:key=value"),
    ("broken", "aux loss 'broken' from acme: RuntimeError: no licence for acme-broken"),
])
def test_a_bad_option_or_a_plugin_that_raises_is_one_error_line_and_leaves_no_folder(reg, cli, spec, message):
    code, _, err = train(cli, "a", "--aux-ood-loss", spec)
    assert code == 2
    assert message in errors(err)
    assert not Path("runs").exists()


def test_a_nan_aux_loss_names_the_loss_and_leaves_no_run_folder(reg, cli):
    Path("keep").mkdir()  # a save root that exists: only what this command made goes
    (Path("keep") / "notes.txt").write_text("mine")
    code, _, err = train(cli, "n", "--aux-ood-loss", "nanny", "--save-root", "keep")
    assert code == 2
    line = errors(err)
    assert "the aux loss 'nanny' from acme returned nan at epoch 1, step 1" in line, line
    assert "no checkpoint was written yet" in line
    assert sorted(p.name for p in Path("keep").iterdir()) == ["notes.txt"]
    code, _, err = train(cli, "n", "--aux-ood-loss", "nanny", "--save-root", "new/deeper")
    assert code == 2 and not Path("new").exists()


def test_a_resume_that_fails_leaves_the_run_as_it_was_and_a_resume_rebuilds_the_recorded_loss(reg, cli, monkeypatch):
    NAN["on"] = False
    assert train(cli, "r", "--aux-ood-loss", "nanny")[0] == 0
    run = Path("runs") / "r"
    before = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    NAN["on"] = True
    code, _, err = cli(["train", "--resume", str(run), "--epochs", "2"])
    assert code == 2 and "the aux loss 'nanny' from acme returned nan at epoch 2" in errors(err)
    after = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert after == before

    assert train(cli, "s", "--aux-ood-loss", "idclr2", "-e", "1")[0] == 0
    SEEN.clear()
    monkeypatch.setattr(Idclr2, "temperature", 0.9)  # the plugin's default changes between the two commands
    code, _, err = cli(["train", "--resume", "runs/s", "--epochs", "2"])
    assert code == 0, err
    assert set(SEEN["idclr2"]) == {0.5}  # the loss the run was started with
    assert config("s")["aux_loss_options"] == {"temperature": 0.5}


def test_a_config_file_takes_the_spec(reg, cli):
    Path("c.toml").write_text('aux_ood_loss = "idclr2:temperature=0.2"\n')
    code, _, err = cli(["train", "--config", "c.toml", "--ds", "digits", "-e", "1", "-b", "32", "--device", "cpu",
                        "--name", "c"])
    assert code == 0, err
    assert set(SEEN["idclr2"]) == {0.2} and config("c")["aux_loss_options"] == {"temperature": 0.2}
    # a run's config.json as --config: its record goes with it, for the same loss only
    SEEN.clear()
    code, _, err = cli(["train", "--config", "runs/c/config.json", "--name", "d"])
    assert code == 0, err
    assert set(SEEN["idclr2"]) == {0.2}
    code, _, err = cli(["train", "--config", "runs/c/config.json", "--name", "e", "--aux-ood-loss", "witht"])
    assert code == 0, err
    assert config("e")["aux_loss_options"] == {"T": 1.0}


def test_an_old_config_json_without_the_record_loads_and_rebuilds_the_same_pascl(reg, tmp_path):
    old = {"dataset": "digits", "ood_metric": "ada_bin_disc", "aux_ood_loss": "pascl", "epochs": 1,
           "pascl_k": 0.4, "temperature": 0.07}  # what imood wrote before aux_loss_options
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = load_run_config(tmp_path / "config.json")
    assert cfg.aux_loss_options is None
    loss, warnings = build_aux_loss(cfg)
    assert loss.options() == {"k": 0.4, "T": 0.07} and warnings == []
    cfg.aux_ood_loss = "none"  # an old run with no aux loss recorded the --k and --T defaults too: no warning
    loss, warnings = build_aux_loss(cfg)
    assert loss.options() == {} and warnings == []


def test_the_builtin_defaults_are_unchanged(reg, cli):
    """pascl and simclr without options train exactly as with today's --k / --T defaults spelled out."""
    assert train(cli, "plain")[0] == 0
    assert train(cli, "spelled", "--aux-ood-loss", "pascl:k=0.4:T=0.07")[0] == 0
    assert train(cli, "flags", "--k", "0.4", "--T", "0.07")[0] == 0
    assert losses("plain") == losses("spelled") == losses("flags")
    assert config("plain")["aux_loss_options"] == {"k": 0.4, "T": 0.07}
    cfg = load_run_config(Path("runs/plain/config.json"))
    cfg.aux_ood_loss, cfg.aux_loss_options = "simclr", None
    assert build_aux_loss(cfg)[0].options() == {"T": 0.07}
