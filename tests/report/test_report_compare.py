"""`imood report --compare A,B`: runs named A-seed<N> and B-seed<N> paired by seed, as a sweep's compare."""

import json

import numpy as np
import pytest
from scipy import stats
from test_report import make_run, reference


def test_report_pairs_runs_by_seed(tmp_path, cli):
    runs = []
    for seed in range(4):
        runs.append(make_run(tmp_path / f"energy-seed{seed}", metrics=("msp",), seed=seed, shift=1.0))
        runs.append(make_run(tmp_path / f"ada_energy-seed{seed}", metrics=("msp",), seed=10 + seed, shift=1.3))
    code, out, err = cli(["report", *runs, "--compare", "energy,ada_energy", "--format", "json", "--no-html"])
    assert code == 0, err
    table = next(t for t in json.loads(out)["tables"] if t["key"] == "paired")
    rows = {r[1]: dict(zip([c["key"] for c in table["columns"]], r)) for r in table["rows"]}
    auroc = rows["AUROC (mean over sets)"]
    a = [np.mean([m["auroc"] for m in reference(tmp_path / f"energy-seed{s}" / "scores" / "msp.safetensors")
                  ["sets"].values()]) for s in range(4)]
    b = [np.mean([m["auroc"] for m in reference(tmp_path / f"ada_energy-seed{s}" / "scores" / "msp.safetensors")
                  ["sets"].values()]) for s in range(4)]
    d = np.array(b) - np.array(a)
    assert auroc["change"] == "energy · msp → ada_energy · msp"
    assert float(auroc["diff"]) == pytest.approx(100 * d.mean(), abs=0.005)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    low, high = (float(x) for x in auroc["t95"].strip("[]").split(", "))
    assert (low, high) == pytest.approx((100 * (d.mean() - half), 100 * (d.mean() + half)), abs=0.005)
    assert auroc["better"] == f"{int((d > 0).sum())}/4"
    code, out, err = cli(["report", *runs, "--compare", "energy,nope", "--no-html"])
    assert code == 2 and "no run folder of the report is named nope-seed<N>" in err
