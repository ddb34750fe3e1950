"""Identical scores are one row: oe, oecc and opensampling score with msp's score (balenergy with energy's),
so on one model their files hold msp's scores. eval and report show one row naming them all; JSON and CSV
keep every name, with `alias_of`."""

import csv
import dataclasses
import io
import json

from conftest import fresh_digits_run
from test_report import make_run

from imood_cli.engine.runs.scorefile import ScoreSet


def with_copies(run, copies):
    """Score files of other detectors holding exactly the scores of an existing one (as imood writes them)."""
    for name, of in copies.items():
        ss = ScoreSet.load(run / "scores" / f"{of}.safetensors")
        dataclasses.replace(ss, metric=name).save(run / "scores" / f"{name}.safetensors")
    return run


def test_report_shows_identical_scores_once_and_keeps_every_name_in_json_and_csv(tmp_path, cli):
    run = with_copies(make_run(tmp_path / "run", metrics=("msp", "ada_msp", "energy")),
                      {"oe": "msp", "oecc": "msp", "ada_oe": "ada_msp"})
    code, out, err = cli(["report", run, "--format", "md", "--no-html"])
    assert code == 0, err
    summary = out[out.index("### OOD detection"):].split("\n\n### ")[0]
    names = [line.split(" | ")[0].strip("| ") for line in summary.splitlines() if line.startswith("| ")][1:]
    assert sorted(names) == ["ada_msp (= ada_oe)", "energy", "msp (= oe, oecc)"]  # one row each
    code, out, err = cli(["report", run, "--format", "json", "--no-html"])
    doc = json.loads(out)
    entries = {e["metric"]: e for e in doc["entries"]}
    assert set(entries) == {"msp", "ada_msp", "energy", "oe", "oecc", "ada_oe"}
    assert entries["oe"]["alias_of"] == "msp" and entries["ada_oe"]["alias_of"] == "ada_msp"
    assert entries["msp"]["alias_of"] is None
    assert entries["oecc"]["score_file"].endswith("oecc.safetensors")
    assert entries["oe"]["ood"]["mean"] == entries["msp"]["ood"]["mean"]
    code, out, err = cli(["report", run, "--format", "csv", "--no-html"])
    rows = list(csv.DictReader(io.StringIO(out)))
    oe = [r for r in rows if r["metric"] == "oe"]
    msp = [r for r in rows if r["metric"] == "msp"]
    assert oe and all(r["alias_of"] == "msp" for r in oe) and all(r["alias_of"] == "" for r in msp)
    assert [r["auroc"] for r in oe] == [r["auroc"] for r in msp]


def test_scores_that_only_look_alike_stay_apart(tmp_path, cli):
    run = make_run(tmp_path / "run", metrics=("msp", "energy"))
    ss = ScoreSet.load(run / "scores" / "msp.safetensors")
    changed = dataclasses.replace(ss, metric="oe", id_score=ss.id_score.copy())
    changed.id_score[0] += 0.01  # one score of 300 differs: not the same detector's scores
    changed.save(run / "scores" / "oe.safetensors")
    code, out, err = cli(["report", run, "--format", "json", "--no-html"])
    assert code == 0, err
    assert {e["metric"]: e["alias_of"] for e in json.loads(out)["entries"]} == {"msp": None, "energy": None,
                                                                                 "oe": None}


def test_eval_names_identical_files_together(tmp_path, cli):
    run = with_copies(make_run(tmp_path / "run", metrics=("msp", "energy")), {"oe": "msp"})
    code, out, err = cli(["eval", run / "scores", "--json", "--no-save"])
    assert code == 0, err
    doc = json.loads(out)
    assert {k: v["alias_of"] for k, v in doc.items()} == {"energy": None, "msp": None, "oe": "msp"}
    code, out, err = cli(["eval", run / "scores", "--no-save"])
    assert code == 0, err
    assert "msp (= oe)" in out and "2 score files" in out  # oe's details are msp's: shown once
    code, out, err = cli(["eval", run / "scores", "--csv", "--no-save"])
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["alias_of"] for r in rows if r["metric"] == "oe"} == {"msp"}


def test_score_prints_one_row_for_identical_scores_and_writes_every_file(tmp_path, cli):
    run = fresh_digits_run(tmp_path)
    code, out, err = cli(["score", run, "-m", "oe,msp,energy,balenergy", "--device", "cpu"])
    assert code == 0, err
    rows = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    assert sorted(rows) == ["energy (= balenergy)", "msp (= oe)"]
    for name, of in (("oe", "msp"), ("balenergy", "energy")):
        a, b = (ScoreSet.load(run / "scores" / f"{n}.safetensors") for n in (name, of))
        assert (a.id_score == b.id_score).all() and a.metric == name  # every file written, under its own name
    # c of the correction is --ada-c (the 0.2 spelling --ada-scale still works): not the method ada_scale
    for flag, out in (("--ada-c", "c"), ("--ada-scale", "scale")):
        code, _, err = cli(["score", run, "-m", "ada_msp,ada_scale", flag, "0.5", "--device", "cpu", "--out",
                            tmp_path / out])
        assert code == 0, err
    for name in ("ada_msp", "ada_scale"):
        a, b = (ScoreSet.load(tmp_path / out / f"{name}.safetensors") for out in ("c", "scale"))
        assert a.meta["ada_scale"] == b.meta["ada_scale"] == 0.5 and (a.id_score == b.id_score).all()
