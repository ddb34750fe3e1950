"""--sort auroc|fpr95|name in `imood report`, `imood eval` and `imood score`, and the best value of each column
marked (bold in the terminal, Markdown, LaTeX and HTML; `best` in JSON; never in CSV): row orders and best rows
are computed here with scikit-learn from the score files, independently of imood."""

import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import fresh_digits_run
from test_report import parse_latex, parse_markdown, parse_terminal
from test_report_figures import make_run, reference

SHIFTS = {"msp": 1.0, "ada_msp": 1.6, "energy": 0.6, "ada_energy": 1.3, "maxlogit": 2.0}
BY_NAME = ["ada_energy", "ada_msp", "energy", "maxlogit", "msp"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = make_run(tmp_path_factory.mktemp("runs") / "toy", shifts=SHIFTS, copies={})
    ref = reference(root)
    for key in ("mean_auroc", "mean_fpr95"):  # distinct values, so that every order below is the only right one
        assert len({round(100 * r[key], 2) for r in ref.values()}) == len(ref)
    return root, ref


def expected_order(ref, by):
    if by == "name":
        return BY_NAME
    key = "mean_auroc" if by == "auroc" else "mean_fpr95"
    return sorted(ref, key=lambda m: -ref[m][key] if by == "auroc" else ref[m][key])


def gains(ref):
    """ΔAUROC and ΔFPR95 (means over the sets) of each ada_ form over its base."""
    return {m: (ref[m]["mean_auroc"] - ref[m[4:]]["mean_auroc"], ref[m]["mean_fpr95"] - ref[m[4:]]["mean_fpr95"])
            for m in ref if m.startswith("ada_") and m[4:] in ref}


def best_rows(ref, labels):
    """Per summary column (AUROC, FPR95), the label that holds the best value."""
    return {"auroc": max(labels, key=lambda m: ref[m]["mean_auroc"]),
            "fpr95": min(labels, key=lambda m: ref[m]["mean_fpr95"])}


@pytest.mark.parametrize("by", ["auroc", "fpr95", "name"])
def test_report_rows_follow_sort_in_every_format(run, tmp_path, cli, by):
    root, ref = run
    want = expected_order(ref, by)
    outs = {}
    for fmt in ("md", "latex", "json", "csv", "terminal"):
        code, out, err = cli(["report", root, "--sort", by, "--format", fmt, "--no-html"])
        assert code == 0, err
        outs[fmt] = out
    for parsed in (parse_markdown(outs["md"]), parse_latex(outs["latex"]), parse_terminal(outs["terminal"])):
        assert [row[0] for row in parsed["summary"]] == want
        assert [row[0] for row in parsed["per_set"]] == want
        assert [row[0] for row in parsed["id_flagged"]] == want
    doc = json.loads(outs["json"])
    tables = {t["key"]: t for t in doc["tables"]}
    assert [row[0] for row in tables["summary"]["rows"]] == want
    assert [e["metric"] for e in doc["entries"]] == want
    means = [r["metric"] for r in csv.DictReader(io.StringIO(outs["csv"])) if r["ood_set"] == "mean"]
    assert means == want
    # the gains table by its own Δ (best first) under auroc / fpr95
    g = gains(ref)
    gain_rows = [row[0] for row in tables["gains"]["rows"]]
    if by == "auroc":
        assert gain_rows == sorted(g, key=lambda m: -g[m][0])
    elif by == "fpr95":
        assert gain_rows == sorted(g, key=lambda m: g[m][1])
    else:
        assert gain_rows == sorted(g)


def test_best_value_marked_in_every_format_but_csv(run, tmp_path, cli):
    root, ref = run
    labels = list(ref)
    best = best_rows(ref, labels)
    col = {"auroc": 1, "fpr95": 4}
    code, md, err = cli(["report", root, "--format", "md", "--html", tmp_path / "r.html"])
    assert code == 0, err
    summary = md.split("### ")[1].splitlines()
    rows = [[c.strip() for c in line.strip()[1:-1].split(" | ")] for line in summary if line.startswith("| ")][1:]
    for key, c in col.items():
        bold = [row[0] for row in rows if row[c].startswith("**")]
        assert bold == [best[key]], (key, rows)
        assert rows[[r[0] for r in rows].index(best[key])][c] == f"**{100 * ref[best[key]]['mean_' + key]:.2f}**"
    # per OOD set: the best AUROC and the best FPR95 of each set, each part of its pair cell
    per_set = [r for r in parse_markdown(md)["per_set"]]
    for i, s in enumerate(["svhn", "lsun"], 1):
        top_auroc = max(labels, key=lambda m: ref[m]["auroc"][s])
        marked = [row[0] for row in per_set if row[i].split(" / ")[0].startswith("**")]
        assert marked == [top_auroc]
    code, tex, err = cli(["report", root, "--format", "latex", "--no-html"])
    tex_rows = [line.split(" & ") for line in tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()]
    assert [r[0].replace(r"\_", "_") for r in tex_rows if r[col["auroc"]].startswith(r"\textbf{")] == [best["auroc"]]
    code, out, err = cli(["report", root, "--format", "json", "--no-html"])
    doc = json.loads(out)
    summary = next(t for t in doc["tables"] if t["key"] == "summary")
    names = [row[0] for row in summary["rows"]]
    assert [names[i] for i in summary["best"]["auroc"]] == [best["auroc"]]
    assert [names[i] for i in summary["best"]["fpr95"]] == [best["fpr95"]]
    per = next(t for t in doc["tables"] if t["key"] == "per_set")
    assert [per["rows"][i][0] for i in per["best"]["svhn"][0]] == [max(labels, key=lambda m: ref[m]["auroc"]["svhn"])]
    code, out, err = cli(["report", root, "--format", "csv", "--no-html"])
    assert "**" not in out and "textbf" not in out and "best" not in out.splitlines()[0]
    page = (tmp_path / "r.html").read_text()
    table = re.search(r'<table data-table="summary">.*?</table>', page).group(0)
    cells = [c for tr in re.findall(r"<tr>(.*?)</tr>", table) if (c := re.findall(r"<td[^>]*>(.*?)</td>", tr))]
    for key, c in col.items():
        strong = [row[0] for row in cells if row[c].startswith("<strong>")]
        assert strong == [best[key]], (key, cells)
        row = cells[[r[0] for r in cells].index(best[key])]
        assert row[c] == f"<strong>{100 * ref[best[key]]['mean_' + key]:.2f}</strong>"


def test_best_is_bold_on_a_terminal_and_ties_are_all_marked(run, tmp_path):
    root, ref = run
    p = subprocess.run([sys.executable, "-m", "imood_cli", "report", root, "--no-html", "--sort", "fpr95"],
                       env={**ENV, "FORCE_COLOR": "1"}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    best = best_rows(ref, list(ref))
    lines = p.stdout.split("Gain of the ada_ form")[0].splitlines()
    rows = [line for line in lines if line.startswith("│")]
    for key, c in (("auroc", 2), ("fpr95", 5)):
        value = f"{100 * ref[best[key]]['mean_' + key]:.2f}"
        marked = [ANSI.sub("", r.split("│")[1]).strip() for r in rows if f"\x1b[1m{value}\x1b[0m" in r.split("│")[c]]
        assert marked == [best[key]], (key, rows)
    # a value every row shares is no one's best: an ID accuracy column of one model is left unmarked
    from imood_cli.report.tables import Column, Table, best_cells

    t = Table("t", "t", [Column("label", "x", "text"), Column("a", "a", better="higher"),
                         Column("b", "b", best="higher")], mark_best=True)
    for label, a, b in (("x", 0.5, 0.9), ("y", 0.7, 0.9), ("z", 0.7000001, 0.9)):
        t.add([label, a, b])
    assert best_cells(t) == {"a": [1, 2]}  # a tie as shown (70.00) marks both; column b never stands out


def test_eval_sorts_the_files_and_ends_with_them_side_by_side(run, tmp_path, cli):
    root, ref = run
    want = expected_order(ref, "fpr95")
    code, out, err = cli(["eval", root, "--sort", "fpr95", "--no-save"])
    assert code == 0, err
    titles = [line.split(":")[0] for line in out.splitlines() if ": OOD detection" in line]
    assert titles == want
    last = parse_terminal_tables(out)[-1]
    assert [row[0] for row in last] == want
    code, out, err = cli(["eval", root, "--sort", "auroc", "--no-save", "--json"])
    assert list(json.loads(out)) == expected_order(ref, "auroc")
    code, out, err = cli(["eval", root, "--sort", "name", "--no-save", "--csv"])
    metrics = list(dict.fromkeys(r["metric"] for r in csv.DictReader(io.StringIO(out))))
    assert metrics == BY_NAME
    sets = [r["ood_set"] for r in csv.DictReader(io.StringIO(out)) if r["metric"] == "msp"]
    assert sets == ["lsun", "svhn", "mean"]  # the sets by name, the mean last


def parse_terminal_tables(text):
    """Every rich table of the output as rows of cells."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("┏"):
            current = []
        elif line.startswith("└"):
            tables.append(current)
            current = None
        elif current is not None and line.startswith("│"):
            current.append([c.strip() for c in line.strip("│").split("│")])
    return tables


@pytest.mark.parametrize("command", ["report", "eval"])
def test_an_unknown_sort_key_is_one_line(run, cli, command):
    root, _ = run
    code, out, err = cli([command, root, "--sort", "aurok", "--no-save" if command == "eval" else "--no-html"])
    assert code == 2 and out == "" and err.startswith("imood: error: unknown --sort key 'aurok'; did you mean 'auroc'")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A digits run folder with freshly initialized weights: what score needs, without training."""
    return fresh_digits_run(tmp_path_factory.mktemp("a-folder-with-a-rather-long-name-for-the-runs"))


def test_score_sorts_its_table_and_names_the_files_whole_at_80_columns(digits_run, tmp_path):
    out = tmp_path / "scores-of-a-run-in-a-folder-whose-path-is-longer-than-eighty-characters" / "scores"
    p = subprocess.run([sys.executable, "-m", "imood_cli", "score", digits_run, "-m", "msp,energy,maxlogit",
                        "--sort", "fpr95", "--device", "cpu", "--out", out], env={**ENV, "COLUMNS": "80"},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    ref = reference(out.parent)
    table = parse_terminal_tables(p.stdout)
    assert len(table) == 1
    assert [row[0] for row in table[0]] == sorted(ref, key=lambda m: ref[m]["mean_fpr95"])
    for row in table[0]:
        assert float(row[4]) == pytest.approx(100 * ref[row[0]]["mean_fpr95"], abs=0.005)
    lines = p.stdout.splitlines()
    header = next(line for line in lines if "detector" in line)
    assert "file" not in header and "…" not in p.stdout  # no column of cut paths
    assert all(len(line) <= 80 for line in lines if line.startswith(("┏", "│", "└", "┃")))
    assert f"score files: {out}/<detector>.safetensors" in lines  # the whole path, on one line
