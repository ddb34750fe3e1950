"""The paper's published numbers as imood's data (report/published.py) and comparisons with them.

The expected values below were read by hand off /work/shared/reference/paper-tables.json (the paper's
tables, Liu et al., NeurIPS 2024, arXiv 2407.16430); a second test compares every row of that file with
imood's data file where the reference file is present.
"""

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from imood_cli.errors import ImoodError
from imood_cli.report import published
from imood_cli.report.formats import markdown

REFERENCE = Path("/work/shared/reference/paper-tables.json")

# (table key, row, {metric: value}) as printed in the paper, percentages.
HAND_CHECKED = [
    ("table1-cifar10", "MSP", {"auroc": 72.28, "aupr_out": 70.27, "fpr95": 66.07, "acc": 72.34}),
    ("table1-cifar10", "PASCL + ImOOD", {"auroc": 92.93, "aupr_out": 92.51, "fpr95": 28.73, "acc": 78.96}),
    ("table1-cifar10", "ClassPrior", {"auroc": 92.08, "aupr_out": 91.17, "fpr95": 34.42, "acc": 74.33}),
    ("table1-cifar100", "COCL + ImOOD", {"auroc": 78.5, "aupr_out": 79.96, "fpr95": 71.65, "acc": 46.8}),
    ("table1-cifar100", "OpenSampling", {"auroc": 74.37, "aupr_out": 75.8, "fpr95": 78.18, "acc": 40.87}),
    ("table2-imagenet", "PASCL + ImOOD", {"auroc": 74.69, "aupr_out": 73.08, "fpr95": 74.37, "acc": 46.63}),
    ("table2-imagenet", "COCL", {"auroc": 73.87, "aupr_out": 72.63, "fpr95": 76.35, "acc": 51.0}),
    ("table5-cifar10", "Maha + ImOOD", {"auroc": 89.3, "aupr_out": 88.68, "fpr95": 39.54}),
    ("table5-cifar10", "Energy", {"auroc": 90.27, "aupr_out": 88.73, "fpr95": 34.42}),
    ("tableA1-cifar10", "PASCL@SVHN", {"auroc": 96.63, "auroc_std": 0.9, "aupr_out": 98.06, "aupr_out_std": 0.56,
                                       "fpr95": 12.18, "fpr95_std": 3.33}),
    ("tableA1-cifar10", "PASCL + ImOOD", {"auroc": 92.93, "auroc_std": 0.26, "aupr_out": 92.51, "fpr95": 28.73}),
    ("tableA3-cifar10-rho50", "OE", {"auroc": 93.13, "aupr_out": 91.06, "fpr95": 24.73}),
    ("table3-imagenet-lt-a8", "ImOOD@Textures", {"auroc": 72.82, "fpr95": 72.73}),
    ("table6-waterbird", "PASCL + ImOOD", {"auroc": 83.27, "aupr_out": 84.19, "fpr95": 57.69}),
]


@pytest.mark.parametrize("key,ref,expected", HAND_CHECKED, ids=[f"{k}:{r}" for k, r, _ in HAND_CHECKED])
def test_lookup_returns_the_papers_numbers(key, ref, expected):
    row = published.lookup(key, ref)
    for metric, value in expected.items():
        assert row.metrics[metric] == value, metric


def test_the_source_is_cited():
    src = published.source()
    assert src["arxiv"] == "2407.16430"
    assert src["venue"] == "NeurIPS 2024"
    assert "Imbalanced Data Distribution" in src["title"]
    t = published.table("table1-cifar10")
    assert (t.table, t.dataset, t.units) == ("Table 1", "cifar10", "percent")
    assert "200 epochs" in t.protocol
    assert "2407.16430" in published.cite(t)


def test_a_per_set_table_picks_the_average_row_and_refuses_an_ambiguous_name():
    assert published.lookup("tableA2-cifar100", "PASCL").ood_set == "Average"
    assert published.lookup("tableA2-cifar100", "PASCL").metrics["auroc"] == 73.32
    uncertain = published.lookup("tableA2-cifar100", "PASCL + ImOOD")
    assert uncertain.extra["uncertain"]  # the paper states this average two ways; the data says so
    with pytest.raises(ImoodError, match="once per OOD set.*PASCL@Far-OOD"):
        published.lookup("table6-cifar10", "PASCL")
    assert published.lookup("table6-cifar10", "pascl@near-ood (cifar100 subset)").metrics["fpr95"] == 57.27


def test_unknown_names_are_one_error_with_suggestions():
    with pytest.raises(ImoodError, match="unknown published table 'table1-cifar'.*did you mean"):
        published.table("table1-cifar")
    with pytest.raises(ImoodError, match=r"unknown method in table1-cifar10.*'PASCL \+ Ours'.*did you mean"):
        published.lookup("table1-cifar10", "PASCL + Ours")
    assert published.lookup("table1-cifar10", "pascl+imood").method == "PASCL + ImOOD"
    with pytest.raises(ImoodError, match="probability values"):
        published.compare("tableA5-cifar10", [("OE", {"auroc": 0.9})])
    with pytest.raises(ImoodError, match="plan.toml: table1-cifar100 .* reports cifar100, not cifar10"):
        published.check_reference("table1-cifar100", "MSP", "cifar10", "plan.toml")


@pytest.mark.skipif(not REFERENCE.is_file(), reason="the transcription the data file was made from is not here; "
                    "the hand-checked rows above still run")
def test_every_row_of_the_transcription_is_in_the_data_file():
    rows = json.loads(REFERENCE.read_text())
    ours = [(key, r) for key, t in published.tables().items() for r in t.rows]
    assert len(rows) == len(ours) == 106
    for ref_row in rows:
        metrics = {k.replace("aupr", "aupr_out"): v for k, v in ref_row["metrics"].items()}
        match = [(key, r) for key, r in ours if r.method == ref_row["method"] and r.metrics == metrics
                 and r.ood_set == ref_row.get("ood_set")]
        assert len(match) == 1, ref_row
        key, r = match[0]
        assert published.table(key).table == ref_row["table"]
        assert published.table(key).benchmark == ref_row["benchmark"]


def test_compare_gives_the_papers_values_and_the_differences():
    ours = {"auroc": 0.75, "aupr_out": 0.7, "fpr95": 0.6, "acc": None}
    [c] = published.compare("table1-cifar10", [("my MSP run", ours)], {"my MSP run": "MSP"})
    assert c.row.method == "MSP"
    assert c.paper == pytest.approx({"auroc": 0.7228, "aupr_out": 0.7027, "fpr95": 0.6607, "acc": 0.7234})
    assert c.diff["auroc"] == pytest.approx(0.75 - 0.7228)
    assert c.diff["fpr95"] == pytest.approx(0.6 - 0.6607)
    assert c.diff["acc"] is None  # no number of ours: no difference
    [by_name, unmatched] = published.compare("table1-cifar10", [("OE", ours), ("mystery", ours)])
    assert by_name.row.method == "OE" and unmatched.row is None and unmatched.paper["auroc"] is None


def test_the_comparison_table_renders_paper_values_and_signed_points():
    ours = {"auroc": 0.75, "aupr_out": 0.7, "fpr95": 0.6, "acc": 0.8}
    table = published.comparison_table("table1-cifar10", published.compare(
        "table1-cifar10", [("mine", ours)], {"mine": "MSP"}))
    text = markdown(None, [table])
    assert "| mine | MSP | 72.28 | +2.72 | 70.27 | -0.27 | 66.07 | -6.07 | 72.34 | +7.66 |" in text
    assert "arXiv 2407.16430" in text


SCOOD = ["texture", "svhn", "cifar100", "tin", "lsun", "places365"]


def entry(run, metric, auroc, dataset="cifar10", sets=SCOOD, run_path=None):
    result = {"ood": {"mean": {"auroc": auroc, "aupr_out": 0.5, "fpr95": 0.5}}, "id": {"acc": 0.7}}
    return SimpleNamespace(run=run, metric=metric, label=f"{run} · {metric}", result=result, sets=list(sets),
                           scores=SimpleNamespace(meta={"dataset": dataset}), run_path=run_path, stale=False)


def columns(table, row):
    return dict(zip([c.key for c in table.columns], row))


def test_runs_are_matched_by_name_and_compared_on_the_papers_detector():
    report = SimpleNamespace(entries=[entry("oe-seed0", "msp", 0.9), entry("pascl+imood-seed3", "msp", 0.8),
                                      entry("pascl+imood-seed3", "bin_disc", 0.95), entry("mystery", "msp", 0.5)],
                             runs=[("oe-seed0", Path("x"))])
    table = published.for_report("table1-cifar10", report)
    assert [row[:2] for row in table.rows] == [["oe-seed0 · msp", "OE"], ["pascl+imood-seed3 · bin_disc",
                                                                           "PASCL + ImOOD"]]
    pascl = columns(table, table.rows[1])
    assert math.isclose(pascl["diff_auroc"], 0.95 - 0.9293) and pascl["comparable"] == "protocol differs"
    preface = " ".join(table.preface)
    assert "pascl+imood-seed3: compared on bin_disc" in preface and "its other detectors are not compared" in preface
    assert "mystery: no row of table1-cifar10 matches" in preface and "training not recorded" in preface


def test_a_detector_the_paper_does_not_report_or_other_data_give_no_delta():
    report = SimpleNamespace(entries=[entry("PASCL + ImOOD", "msp", 0.9), entry("OE", "msp", 0.9, dataset="digits"),
                                      entry("MSP", "msp", 0.9, sets=["svhn"])], runs=[("x", Path("x"))])
    table = published.for_report("table1-cifar10", report)
    assert "PASCL + ImOOD: not scored with bin_disc (imood score RUN -m bin_disc)." in table.preface
    rows = {r[0]: columns(table, r) for r in table.rows}
    assert set(rows) == {"OE · msp", "MSP · msp"}
    assert rows["OE · msp"]["comparable"] == "no: different ID data"
    assert rows["MSP · msp"]["comparable"] == "no: different OOD sets"
    assert all(v is None for r in rows.values() for k, v in r.items() if k.startswith("diff_"))
    assert all(r["paper_auroc"] is not None for r in rows.values())  # the paper's values stay, for reading


def test_a_run_is_matched_by_its_recorded_training_or_by_the_row_named(tmp_path):
    run = tmp_path / "my-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(
        {"dataset": "cifar10", "imbalance_ratio": 0.01, "model": "resnet18", "epochs": 200,
         "ood_metric": "ada_bin_disc", "aux_ood_loss": "pascl", "num_ood_samples": 30000, "aux_ood_dir": None}))
    report = SimpleNamespace(entries=[entry("my-run", "bin_disc", 0.93, run_path=run)], runs=[("my-run", run)])
    table = published.for_report("table1-cifar10", report)
    [row] = table.rows
    assert columns(table, row)["published"] == "PASCL + ImOOD" and columns(table, row)["comparable"] == "yes"
    assert table.preface == []  # nothing differs from the paper's protocol
    oe_trained = tmp_path / "oe-run"
    oe_trained.mkdir()
    (oe_trained / "config.json").write_text(json.dumps(
        {"dataset": "cifar10", "imbalance_ratio": 0.01, "model": "resnet18", "epochs": 200, "ood_metric": "oe",
         "aux_ood_loss": "none", "num_ood_samples": 30000}))
    # oe training, scored with msp and classprior: OE's row and ClassPrior's both fit; named, each compares
    report = SimpleNamespace(entries=[entry("oe-run", "msp", 0.9, run_path=oe_trained),
                                      entry("oe-run", "classprior", 0.92, run_path=oe_trained)],
                             runs=[("oe-run", oe_trained)])
    assert published.for_report("table1-cifar10", report).rows == []  # ambiguous: not guessed
    table = published.for_report("table1-cifar10:ClassPrior", report)
    assert [r[:3] for r in table.rows] == [["oe-run · classprior", "ClassPrior", "yes"]]
    table = published.for_report("table1-cifar10:OE", report)
    assert [r[:3] for r in table.rows] == [["oe-run · msp", "OE", "yes"]]
    cocl = published.for_report("table1-cifar10:COCL", report)
    assert cocl.rows == [] and "oe-run: not scored with cocl (imood score RUN -m cocl)." in cocl.preface
    with pytest.raises(ImoodError, match="did you mean 'COCL'"):
        published.parse_spec("table1-cifar10:CCOL")


def test_oe_scores_as_msp_so_an_oe_file_compares_on_an_msp_row():
    report = SimpleNamespace(entries=[entry("MSP", "oe", 0.7)], runs=[("MSP", Path("x"))])
    [row] = published.for_report("table1-cifar10", report).rows
    assert row[:2] == ["MSP · oe", "MSP"]


def test_loading_the_data_imports_no_torch():
    code = ("import sys; from imood_cli.report import published as p; p.tables(); p.lookup('table1-cifar10', 'MSP');"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
