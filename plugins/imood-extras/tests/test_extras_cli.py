"""End to end through imood's command line on the digits benchmark, with imood-extras installed.

Results are read the documented way: score files are safetensors (docs/file-formats.md: `id.score`,
`ood.<set>.score`, `id.pred`, metadata under `imood`), metrics come from `imood eval --json`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from extras_reference import np_ada_margin, np_auroc, np_margin
from safetensors import safe_open

from imood_cli import api
from imood_cli.plugin_api import ModelView, Score
from imood_cli.registry import Registry, reset_registry

BIN = Path(sys.executable).parent
IMOOD = shutil.which("imood", path=str(BIN)) or shutil.which("imood")


def imood(*args, **env):
    """`imood args` in a process of its own (every installed plugin, unless IMOOD_PLUGINS is given)."""
    base = {k: v for k, v in os.environ.items() if k != "IMOOD_PLUGINS"}
    return subprocess.run([IMOOD, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**base, "HF_HUB_OFFLINE": "1", **env})


def read_scores(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """A score file's tensors and its `imood` metadata."""
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["imood"])


class OneLogit(Score):
    """A test probe, not a detector: g = the logit of class k, so that k = 0..K-1 read the model's logits back."""

    hyperparameters = ("k",)
    k = 0

    def idness(self, view: ModelView):
        return view.logits[:, self.k]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    srp = tmp_path_factory.mktemp("runs")
    r = imood("train", "--ds", "digits", "--epochs", "2", "--aux_ood_loss", "supcon", "--ood_metric", "ada_margin",
              "--srp", srp, "--drp", srp / "data", "--name", "x")
    assert r.returncode == 0, r.stderr
    return srp / "x"


def test_plugins_listed():
    r = imood("plugins", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {(row["kind"], row["name"]): row for row in json.loads(r.stdout)}
    for key in [("method", "margin"), ("method", "ada_margin"), ("aux_loss", "supcon")]:
        assert rows[key]["loaded"] and rows[key]["distribution"] == "imood-extras", rows[key]
    assert rows[("method", "ada_margin")]["derived_from"] == "margin"
    assert rows[("method", "margin")]["target"] == "imood_extras.margin:LogitMargin"
    assert rows[("aux_loss", "supcon")]["target"] == "imood_extras.supcon:SupCon"


def test_train_with_supcon_and_score_with_margin(run, tmp_path, cli):
    config = json.loads((run / "config.json").read_text())
    assert config["aux_ood_loss"] == "supcon" and config["ood_metric"] == "ada_margin"  # ImOOD training with it
    r = imood("score", run, "--ood_metric", "margin,ada_margin")
    assert r.returncode == 0, r.stderr
    assert not r.stderr.count("skipped")  # no plugin warning: nothing clashes with a built-in

    # The model's logits, read back through the command line: one probe score file per class (the probe is
    # registered in process, as docs/plugins.md shows for testing a plugin without installing it).
    margin, meta = read_scores(run / "scores" / "margin.safetensors")
    ada, ada_meta = read_scores(run / "scores" / "ada_margin.safetensors")
    k = meta["num_classes"]
    reg = Registry()
    reg.add("method", "onelogit", OneLogit, distribution="imood-extras-tests")
    old = reset_registry(reg)
    try:
        probes = ",".join(f"onelogit:k={j}" for j in range(k))
        code, _, err = cli("score", run, "-m", probes, "-o", tmp_path / "logits")
    finally:
        reset_registry(old)
    assert code == 0, err
    columns = [read_scores(tmp_path / "logits" / f"onelogit-k={j}.safetensors")[0] for j in range(k)]
    logits = {key: -np.stack([c[key] for c in columns], axis=1).astype(np.float64)  # the probe's OOD score is −g
              for key in columns[0] if key.endswith(".score")}
    ood_sets = [key[len("ood."):-len(".score")] for key in logits if key.startswith("ood.")]
    assert ood_sets and set(ood_sets) == set(meta["ood_sets"])
    assert (margin["id.pred"] == logits["id.score"].argmax(1)).all()  # the logits are the model's

    # The margins imood wrote equal the top-two gap of those logits, recomputed here, on every set.
    for key, z in logits.items():
        np.testing.assert_allclose(margin[key], -np_margin(z), rtol=1e-5, atol=1e-5, err_msg=key)
    # ada_margin is −(g + c·log β̂) with c = 1.0 and the run's class counts and τ
    assert ada_meta["ada_scale"] == 1.0 and ada_meta["metric"] == "ada_margin"
    counts, tau = ada_meta["class_counts"], ada_meta["logit_adjust"]
    assert len(counts) == k and tau == config["logit_adjust"]
    for key, z in logits.items():
        np.testing.assert_allclose(ada[key], np_ada_margin(z, counts, tau), rtol=1e-5, atol=1e-5, err_msg=key)
    assert not np.allclose(ada["id.score"], margin["id.score"])  # the prior correction changes something

    # `imood eval --json` on the file agrees with the reference scores and with api.evaluate
    r = imood("eval", run / "scores" / "margin.safetensors", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    ref_id = -np_margin(logits["id.score"])
    ref_ood = {s: -np_margin(logits[f"ood.{s}.score"]) for s in ood_sets}
    mine = api.evaluate(ref_id, ref_ood)
    for s in ood_sets:
        assert doc["ood"][s]["auroc"] == pytest.approx(np_auroc(ref_id, ref_ood[s]), abs=1e-4)
        assert doc["ood"][s]["auroc"] == pytest.approx(mine["ood"][s]["auroc"], abs=1e-4)
        assert doc["ood"][s]["fpr95"] == pytest.approx(mine["ood"][s]["fpr95"], abs=3e-3)  # one ID image
    assert doc["id"]["acc"] == pytest.approx(float((logits["id.score"].argmax(1) == margin["id.label"]).mean()))


def test_left_out_by_imood_plugins(run):
    r = imood("score", run, "--ood_metric", "ada_margin", IMOOD_PLUGINS="")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "unknown method 'ada_margin'" in lines[0]
    assert "imood-extras" in lines[0]  # says which left-out distribution has it
