"""bench/select_margins.py (energy margins chosen on held-out data) and bench/ablation_epochs.py (two training lengths
paired by seed)."""

import json

import pytest
from conftest import import_bench


@pytest.fixture(scope="module")
def select_margins():
    return import_bench("select_margins")


def test_choice_prefers_id_accuracy_among_near_best_held_out_auroc(select_margins):
    rows = [{"m_in": -27, "auroc": 0.999, "acc": 0.50},
            {"m_in": -12, "auroc": 0.996, "acc": 0.97},   # within 0.5 points of the best AUROC, best accuracy
            {"m_in": -6, "auroc": 0.990, "acc": 0.99}]    # the most accurate, but 0.9 points below the best AUROC
    assert select_margins.choose(rows)["m_in"] == -12


def test_each_setting_is_scored_on_the_held_out_split_only(select_margins, tmp_path, capsys):
    """Two settings, one seed, two epochs on digits: the table's numbers are the runs' own last validation
    records (held-out ID against held-out auxiliary images), the runs held out what --val-fraction says, and
    a second invocation reuses the finished runs."""
    out = tmp_path / "runs"
    args = ["--seeds", "0", "--epochs", "2", "--grid=-6/-2,-9/-4", "--out", str(out), "--json",
            str(tmp_path / "m.json")]
    assert select_margins.main(args) == 0
    first = capsys.readouterr().out
    doc = json.loads((tmp_path / "m.json").read_text())
    for row, name in zip(doc["rows"], ("energy-m-6-m-2-seed0", "energy-m-9-m-4-seed0")):
        records = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
        val = [r for r in records if r["kind"] == "val"]
        assert [r["epoch"] for r in val] == [2]
        assert row["auroc"] == pytest.approx(val[0]["auroc"]) and row["acc"] == pytest.approx(val[0]["acc"])
        assert f"| {row['m_in']:g}, {row['m_out']:g}" in first
        assert f"{100 * row['auroc']:.2f} | {100 * row['fpr95']:.2f} | {100 * row['acc']:.2f}" in first
        config = json.loads((out / name / "config.json").read_text())
        assert (config["m_in"], config["m_out"], config["val_fraction"]) == (row["m_in"], row["m_out"], 0.1)
        assert set(val[0]["ood"]) == {"val-aux"}  # no test OOD set was scored
    stamp = {n: (out / n / "metrics.jsonl").stat().st_mtime_ns for n in ("energy-m-6-m-2-seed0",)}
    assert select_margins.main(args) == 0
    assert capsys.readouterr().out.split("Wall time")[0] == first.split("Wall time")[0]
    assert (out / "energy-m-6-m-2-seed0" / "metrics.jsonl").stat().st_mtime_ns == stamp["energy-m-6-m-2-seed0"]


def test_epochs_comparison_pairs_runs_by_seed(tmp_path, capsys):
    """bench/ablation_epochs.py: longer − shorter per configuration, paired by seed value (not list position),
    over the seeds both files have; files of two benchmarks are refused."""
    ablation_epochs = import_bench("ablation_epochs")

    def run(auroc, acc):
        return {"auroc": auroc, "fpr95": 0.2, "acc": acc, "few": 0.9}

    short = {"dataset": "digits", "epochs": 30, "seeds": [0, 1, 2],
             "results": {"energy": [run(0.90, 0.95), run(0.92, 0.96), run(0.5, 0.5)], "only-short": [run(1, 1)] * 3}}
    long = {"dataset": "digits", "epochs": 60, "seeds": [1, 0],
            "results": {"energy": [run(0.94, 0.97), run(0.93, 0.96)]}}
    (tmp_path / "s.json").write_text(json.dumps(short))
    (tmp_path / "l.json").write_text(json.dumps(long))
    assert ablation_epochs.main([str(tmp_path / "s.json"), str(tmp_path / "l.json")]) == 0
    out = capsys.readouterr().out
    assert "60 − 30 epochs" in out and "only-short" not in out
    row = next(line for line in out.splitlines() if line.startswith("| energy (2 seeds)"))
    cells = [c.strip() for c in row.split("|")[2:-1]]
    # seed 0: 0.90 → 0.93, seed 1: 0.92 → 0.94: +3 and +2 points, mean +2.50; ID acc +1 and +1 point
    assert cells[0].startswith("no measurable effect: +2.50 [") and "(2/2 better" in cells[0]  # two seeds: wide
    assert cells[1].startswith("no measurable effect: +0.00") and cells[2].startswith("+1.00 [+1.00, +1.00]")
    long["dataset"] = "glyphs"
    (tmp_path / "l.json").write_text(json.dumps(long))
    assert ablation_epochs.main([str(tmp_path / "s.json"), str(tmp_path / "l.json")]) == 2
