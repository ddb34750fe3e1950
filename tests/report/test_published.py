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


def test_report_rows_are_matched_by_run_name_or_sweep_folder():
    def entry(run, metric, auroc, dataset="cifar10"):
        result = {"ood": {"mean": {"auroc": auroc, "aupr_out": 0.5, "fpr95": 0.5}}, "id": {"acc": 0.7}}
        return SimpleNamespace(run=run, label=f"{run} · {metric}", result=result,
                               scores=SimpleNamespace(meta={"dataset": dataset}))

    report = SimpleNamespace(entries=[entry("oe-seed0", "msp", 0.9), entry("pascl+imood-seed3", "bin_disc", 0.95),
                                      entry("mystery", "msp", 0.5)], runs=[("oe-seed0", Path("x"))])
    table = published.for_report("table1-cifar10", report)
    assert [row[:2] for row in table.rows] == [["oe-seed0 · msp", "OE"], ["pascl+imood-seed3 · bin_disc",
                                                                           "PASCL + ImOOD"], ["mystery · msp", None]]
    auroc_diff = table.rows[1][[c.key for c in table.columns].index("diff_auroc")]
    assert math.isclose(auroc_diff, 0.95 - 0.9293)
    report.entries.append(entry("digits-run", "msp", 0.9, dataset="digits"))
    with pytest.raises(ImoodError, match="--published table1-cifar10: the paper's Table 1 reports cifar10, but the "
                       "report's rows come from digits"):
        published.for_report("table1-cifar10", report)


def test_loading_the_data_imports_no_torch():
    code = ("import sys; from imood_cli.report import published as p; p.tables(); p.lookup('table1-cifar10', 'MSP');"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
