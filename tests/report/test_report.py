"""`imood report` and `imood eval` on run folders: every table in every format with values computed
independently (scikit-learn and float64 references written here), like compared with like, stale
scores, row order, plots that survive odd inputs, Ctrl-C, and start-up without torch."""

import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from imood_cli.engine.runs.scorefile import ScoreSet
from imood_cli.report.results import distinguishing_suffixes

COUNTS = [500, 300, 200, 120, 80, 50, 30, 20, 10, 5]
GROUPS = {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]}  # shot groups for CIFAR10-LT-like counts
TITLES = {
    "summary": "OOD detection, mean over OOD sets (%)",
    "gains": "Gain of the ada_ form over its base (points)",
    "id": "ID classification (%)",
    "per_set": "Per OOD set: AUROC / FPR95 (%)",
    "id_flagged": "ID images flagged as OOD at the FPR95 threshold, by shot group (%)",
    "ood_accepted": "OOD images accepted as ID, by the shot group of their predicted class (%)",
}
KEYS = list(TITLES)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


# ---- run folders with score files
def make_run(root: Path, sets=("svhn", "lsun"), metrics=("msp", "ada_msp", "energy"), seed=0, dataset="toy",
             model=b"model v1", n_id=300, n_ood=120, shift=1.0):
    """A run folder: a model file (only its sha256 matters here) and one score file per detector."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.safetensors").write_bytes(model)
    sha = hashlib.sha256(model).hexdigest()
    labels = rng.integers(0, 10, n_id)
    preds = np.where(rng.random(n_id) < 0.75, labels, rng.integers(0, 10, n_id))
    ood_pred = {s: rng.integers(0, 10, n_ood) for s in sets}
    for i, m in enumerate(metrics):
        id_s = rng.normal(size=n_id) + 0.15 * labels  # tail classes look more OOD, as in the paper
        ood = {s: rng.normal(shift + 0.3 * i, size=n_ood).round(2) for s in sets}
        ScoreSet(m, id_s.round(2), labels, preds, ood, ood_pred,
                 {"class_counts": COUNTS, "dataset": dataset, "id_set": f"{dataset}-test",
                  "checkpoint": str(root / "model.safetensors"), "checkpoint_sha256": sha}).save(
            root / "scores" / f"{m}.safetensors")
    return root


def fpr95_reference(id_s, ood_s):
    """FPR95 and its threshold in float64: the first distinct score from the top whose OOD recall is >= 0.95."""
    for t in np.unique(np.r_[id_s, ood_s])[::-1]:
        if np.mean(ood_s >= t) >= 0.95:
            return float(np.mean(id_s >= t)), float(t)
    raise AssertionError("unreachable")


def reference(path: Path) -> dict:
    """Every number of a score file, computed here with scikit-learn and numpy."""
    ss = ScoreSet.load(path)
    id_s = ss.id_score.astype(np.float64)
    out = {"sets": {}, "id": {}}
    for s, ood in ss.ood_score.items():
        ood = ood.astype(np.float64)
        y = np.r_[np.zeros(id_s.size), np.ones(ood.size)]
        scores = np.r_[id_s, ood]
        fpr, t = fpr95_reference(id_s, ood)
        flagged = {g: float(np.mean(id_s[np.isin(ss.id_label, c)] >= t)) for g, c in GROUPS.items()}
        accepted = {g: float(np.sum((ood < t) & np.isin(ss.ood_pred[s], c)) / ood.size) for g, c in GROUPS.items()}
        out["sets"][s] = {"auroc": roc_auc_score(y, scores), "aupr_in": average_precision_score(1 - y, -scores),
                          "aupr_out": average_precision_score(y, scores), "fpr95": fpr,
                          "flagged": flagged, "accepted": accepted}
    per_class = [np.mean(ss.id_pred[ss.id_label == k] == k) for k in range(10)]
    out["id"] = {"acc": float(np.mean(ss.id_pred == ss.id_label)),
                 **{g: float(np.mean([per_class[k] for k in c])) for g, c in GROUPS.items()}}
    return out


def pct(v):
    return "–" if v is None else f"{100 * v:.2f}"


def expected_tables(rows: list[tuple[str, Path]], models: list[tuple[str, Path]]) -> dict[str, list[list]]:
    """The six tables from the references, values in % (points for gains), each AUROC / FPR95 cell a pair:
    rows are (label, score file); models (label, one of its score files)."""
    refs = {label: reference(p) for label, p in rows}
    sets = list(next(iter(refs.values()))["sets"])
    keys = ("auroc", "aupr_in", "aupr_out", "fpr95")
    mean = lambda r, k: 100 * np.mean([r["sets"][s][k] for s in sets])
    out = {k: [] for k in KEYS}
    for label, _ in rows:
        r = refs[label]
        out["summary"].append([label, *[mean(r, k) for k in keys]])
        metric = label.split(" · ")[-1]
        if metric.startswith("ada_"):
            base = refs[label.replace(metric, metric[4:])]
            out["gains"].append([label, *[mean(r, k) - mean(base, k) for k in keys]])
        out["per_set"].append([label, *[(100 * r["sets"][s]["auroc"], 100 * r["sets"][s]["fpr95"]) for s in sets]])
        for key, part in (("id_flagged", "flagged"), ("ood_accepted", "accepted")):
            out[key].append([label, *[100 * np.mean([r["sets"][s][part][g] for s in sets]) for g in GROUPS]])
    for label, p in models:
        r = reference(p)["id"]
        out["id"].append([label, 100 * r["acc"], *[100 * r[g] for g in GROUPS]])
    return out


def number(text: str):
    """A cell as the renderers write it: '12.34', '+1.20', '12.34 / 56.78' or '–'; a column's best value is
    bold (Markdown **12.34**, LaTeX \\textbf{12.34})."""
    text = re.sub(r"\\textbf\{([^}]*)\}", r"\1", text).replace("**", "")
    if text == "–":
        return None
    if " / " in text:
        return tuple(number(t) for t in text.split(" / "))
    return float(text)


def assert_tables(got: dict[str, list[list[str]]], expected: dict[str, list[list]]):
    """Same labels; every number the expected value rounded to two decimals (half a unit of the last digit)."""
    assert list(got) == list(expected)
    for key in expected:
        assert len(got[key]) == len(expected[key]), key
        for row, want in zip(got[key], expected[key]):
            assert row[0] == want[0], (key, row, want)
            assert len(row) == len(want), (key, row, want)
            for cell, value in zip(row[1:], want[1:]):
                shown = number(cell)
                pairs = zip(shown, value) if isinstance(value, tuple) else [(shown, value)]
                for s, v in pairs:
                    assert s == pytest.approx(v, abs=0.005 + 1e-9), (key, row, want)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a = make_run(root / "a" / "run", seed=1)
    b = make_run(root / "b" / "run", seed=2, shift=1.4, model=b"model b")
    rows = [(f"{r} · {m}", root / r / "run" / "scores" / f"{m}.safetensors")
            for r in ("a", "b") for m in ("energy", "msp", "ada_msp")]
    rows = [(label.replace(" · ", "/run · ", 1), p) for label, p in rows]
    models = [("a/run", a / "scores" / "msp.safetensors"), ("b/run", b / "scores" / "msp.safetensors")]
    return a, b, expected_tables(rows, models)


# ---- parsers of each format, all returning {table key: rows of cell texts}
def parse_markdown(text):
    found = {}
    for section in text.split("### ")[1:]:
        title, _, body = section.partition("\n")
        rows = [[c.strip().replace("\\", "") for c in line.strip()[1:-1].split(" | ")]
                for line in body.splitlines() if line.startswith("| ")]
        found[title.strip()] = rows[1:]  # after the header
    return {k: found[TITLES[k]] for k in KEYS}


LATEX_BACK = [(r"$\cdot$", "·"), (r"\_", "_"), ("--", "–"), (r"\%", "%"), (r"$\Delta$", "Δ")]


def parse_latex(text):
    found = {}
    for block in text.split(r"\begin{table}")[1:]:
        title = re.search(r"\\caption\{(.*)\}", block).group(1)
        body = block.split(r"\midrule")[1].split(r"\bottomrule")[0]
        rows = []
        for line in body.strip().splitlines():
            for a, b in LATEX_BACK:
                line = line.replace(a, b)
            rows.append([c.strip() for c in line.removesuffix(r" \\").split(" & ")])
        for a, b in LATEX_BACK:
            title = title.replace(a, b)
        found[title] = rows
    return {k: found[TITLES[k]] for k in KEYS}


def parse_terminal(text):
    """Rich tables in order: the rows between the header rule and the bottom border."""
    tables, current, titles, pending = [], None, [], []
    for line in text.splitlines():
        if line.startswith("┏"):
            current = []
            titles.append(" ".join(" ".join(pending).split()))
            pending = []
        elif line.startswith("└"):
            tables.append(current)
            current = None
        elif current is not None and line.startswith("│"):
            current.append([c.strip() for c in line.strip("│").split("│")])
        elif current is None:
            pending.append(line)
    out = {}
    for key, title, rows in zip(KEYS, titles, tables):
        assert title.endswith(TITLES[key]), (title, TITLES[key])
        out[key] = rows
    assert len(tables) == len(KEYS)
    return out


class TableParser(HTMLParser):
    """Tables marked data-table in an HTML page, as rows of cell texts; images and section ids too."""

    def __init__(self):
        super().__init__()
        self.tables, self.sections, self.images, self._table, self._row, self._cell = {}, [], [], None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "data-table" in a:
            self._table = self.tables.setdefault(a["data-table"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""
        elif tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "img":
            self.images.append(a.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def parse_html(text):
    p = TableParser()
    p.feed(text)
    return {k: p.tables[k][1:] for k in KEYS}, p


def json_as_text(doc):
    """The JSON tables formatted as the other formats format them (their values are fractions)."""
    out = {}
    for t in doc["tables"]:
        rows = []
        for row in t["rows"]:
            cells = []
            for col, v in zip(t["columns"], row):
                if col["kind"] == "text":
                    cells.append(v)
                elif col["kind"] == "delta":
                    cells.append(f"{100 * v:+.2f}")
                elif col["kind"] == "pair":
                    cells.append("–" if v is None else " / ".join(pct(x) for x in v))
                else:
                    cells.append(pct(v))
            rows.append(cells)
        out[t["key"]] = rows
    return out


# ---- every format, every table, every value
def test_every_format_carries_every_table_with_the_reference_values(two_runs, tmp_path, cli):
    a, b, expected = two_runs
    outputs = {}
    for fmt in ("md", "latex", "json", "csv", "terminal"):
        code, out, err = cli(["report", a, b, "--format", fmt, "--no-html"])
        assert code == 0, err
        outputs[fmt] = out
    assert_tables(parse_markdown(outputs["md"]), expected)
    assert_tables(parse_latex(outputs["latex"]), expected)
    assert_tables(parse_terminal(outputs["terminal"]), expected)
    doc = json.loads(outputs["json"])
    assert_tables(json_as_text(doc), expected)
    code, out, err = cli(["report", a, b, "--html", tmp_path / "r.html", "--format", "md"])
    assert code == 0, err
    tables, page = parse_html((tmp_path / "r.html").read_text())
    assert_tables(tables, expected)
    assert {"plots-ranking", "plots-roc", "plots-pr", "plots-class", "plots-scores"} <= set(page.sections)
    assert sum(src.startswith("data:image/png;base64,") for src in page.images) == 4 + 6  # 4 figures + 6 rows

    # CSV: one row per run, detector and set (and the mean), with every table's numbers as columns
    recs = list(csv.DictReader(io.StringIO(outputs["csv"])))
    assert len(recs) == 6 * 3
    means = [r for r in recs if r["ood_set"] == "mean"]
    as_pct = lambda rec, cols: [100 * float(rec[c]) for c in cols]
    for rec, row in zip(means, expected["summary"]):
        assert f"{rec['run']} · {rec['metric']}" == row[0]
        assert as_pct(rec, ("auroc", "aupr_in", "aupr_out", "fpr95")) == pytest.approx(row[1:], abs=1e-10)
    for rec, row in zip(means, expected["id_flagged"]):
        assert as_pct(rec, [f"id_flagged_{g}" for g in GROUPS]) == pytest.approx(row[1:], abs=1e-10)
    for rec, row in zip(means, expected["ood_accepted"]):
        assert as_pct(rec, [f"ood_accepted_{g}" for g in GROUPS]) == pytest.approx(row[1:], abs=1e-10)
    gains = [r for r in means if r["gain_auroc"]]
    assert [f"{r['run']} · {r['metric']}" for r in gains] == [row[0] for row in expected["gains"]]
    for rec, row in zip(gains, expected["gains"]):
        assert as_pct(rec, [f"gain_{m}" for m in ("auroc", "aupr_in", "aupr_out", "fpr95")]) == pytest.approx(
            row[1:], abs=1e-10)
    ref = reference(a / "scores" / "msp.safetensors")
    svhn = next(r for r in recs if r["run"] == "a/run" and r["metric"] == "msp" and r["ood_set"] == "svhn")
    assert float(svhn["auroc"]) == pytest.approx(ref["sets"]["svhn"]["auroc"], abs=1e-12)
    assert float(svhn["id_acc"]) == pytest.approx(ref["id"]["acc"], abs=1e-12)
    assert [float(svhn[g]) for g in GROUPS] == pytest.approx([ref["id"][g] for g in GROUPS], abs=1e-12)
    assert [float(svhn[f"id_flagged_{g}"]) for g in GROUPS] == pytest.approx(
        [ref["sets"]["svhn"]["flagged"][g] for g in GROUPS], abs=1e-12)

    # JSON also holds each row's eval document, bootstrap intervals included when asked for
    code, out, err = cli(["report", a, "--format", "json", "--no-html", "--bootstrap", "5"])
    entry = json.loads(out)["entries"][0]
    assert entry["metric"] == "energy" and {"lo", "hi"} != set(entry["ood"]["svhn"]["ci95"])
    assert set(entry["ood"]["svhn"]["ci95"]) == {"auroc", "aupr_in", "aupr_out", "fpr95"}


def test_rows_follow_the_arguments_and_the_metric_order(two_runs, cli):
    a, b, _ = two_runs
    code, out, err = cli(["report", b, a, "--format", "json", "--no-html"])
    assert code == 0, err
    labels = [row[0] for row in json.loads(out)["tables"][0]["rows"]]
    assert labels == [f"{r}/run · {m}" for r in "ba" for m in ("energy", "msp", "ada_msp")]
    code, out, err = cli(["report", a, b, "-m", "ada_msp,energy", "--format", "json", "--no-html"])
    labels = [row[0] for row in json.loads(out)["tables"][0]["rows"]]
    assert labels == [f"{r}/run · {m}" for r in "ab" for m in ("ada_msp", "energy")]
    # a run named twice (as a folder and as its scores folder) is one set of rows
    code, out, err = cli(["report", a, a / "scores", "--format", "json", "--no-html"])
    assert [row[0] for row in json.loads(out)["tables"][0]["rows"]] == ["energy", "msp", "ada_msp"]


def test_a_detector_missing_from_one_run_is_named(two_runs, tmp_path, cli):
    a, _, _ = two_runs
    c = make_run(tmp_path / "c", metrics=("msp",))
    code, out, err = cli(["report", a, c, "-m", "msp,energy", "--no-html"])
    assert code == 2 and err.count("\n") == 1
    assert f"{c} has no scores for energy: run `imood score {c} --ood_metric energy`" in err


def test_shortest_distinguishing_suffixes(tmp_path):
    paths = [tmp_path / "x" / "a" / "run", tmp_path / "y" / "a" / "run", tmp_path / "z" / "b" / "run",
             tmp_path / "solo"]
    assert distinguishing_suffixes(paths) == ["x/a/run", "y/a/run", "b/run", "solo"]


# ---- like with like
def test_different_ood_sets_are_refused_then_marked(two_runs, tmp_path, cli):
    a, _, _ = two_runs
    c = make_run(tmp_path / "c", sets=("svhn", "lsun", "te$x_t"), seed=5)
    code, out, err = cli(["report", a, c, "--no-html"])
    assert code == 2 and err.startswith("imood: error:") and err.count("\n") == 1
    assert "'te$x_t' is missing from run" in err and "--allow-mismatch" in err

    code, out, err = cli(["report", a, c, "--allow-mismatch", "--format", "json", "--html", tmp_path / "r.html"])
    assert code == 0, err
    assert err.startswith("imood: warning: the rows cover different OOD sets") and err.count("\n") == 1
    doc = json.loads(out)
    assert doc["ood_sets"] == ["svhn", "lsun", "te$x_t"]
    tables = {t["key"]: t for t in doc["tables"]}
    summary = tables["summary"]
    assert [c["key"] for c in summary["columns"]][-1] == "mean_over"
    assert [row[-1] for row in summary["rows"]] == ["svhn, lsun"] * 3 + ["svhn, lsun, te$x_t"] * 3
    assert any("'te$x_t' is missing from" in n for n in summary["notes"])
    per_set = tables["per_set"]["rows"]
    assert [row[3] for row in per_set[:3]] == [None] * 3 and all(row[3] is not None for row in per_set[3:])
    # each mean is over the row's own sets: c's mean includes te$x_t
    ref = reference(c / "scores" / "msp.safetensors")
    c_msp = next(row for row in summary["rows"] if row[0].endswith("c · msp"))
    assert c_msp[1] == pytest.approx(np.mean([ref["sets"][s]["auroc"] for s in ("svhn", "lsun", "te$x_t")]), abs=1e-12)
    # the missing cells are marked in the page, and the plots name the set
    tables_html, page = parse_html((tmp_path / "r.html").read_text())
    assert [row[3] for row in tables_html["per_set"][:3]] == ["–"] * 3
    assert "te$x_t" in (tmp_path / "r.html").read_text()


def test_different_datasets_are_refused_then_noted(two_runs, tmp_path, cli):
    a, _, _ = two_runs
    other = make_run(tmp_path / "other", dataset="cifar100", seed=7)
    code, out, err = cli(["report", a, other, "--no-html"])
    assert code == 2 and "different datasets" in err and "cifar100" in err and err.count("\n") == 1
    code, out, err = cli(["report", a, other, "--no-html", "--allow-mismatch", "--format", "md"])
    assert code == 0 and "The rows come from different datasets" in out and "imood: warning" in err
    summary = parse_markdown(out)["summary"]
    assert [row[-1] for row in summary] == ["toy / toy-test"] * 3 + ["cifar100 / cifar100-test"] * 3


SCOOD_CIFAR10 = ("texture", "svhn", "cifar100", "tin", "lsun", "places365")


def test_published_numbers_beside_the_rows(tmp_path, cli):
    from imood_cli.report import published

    run = make_run(tmp_path / "MSP", sets=SCOOD_CIFAR10, metrics=("msp", "energy"), dataset="cifar10")
    code, out, err = cli(["report", run, "--published", "table1-cifar10", "--format", "json",
                          "--html", tmp_path / "r.html"])
    assert code == 0, err
    tables = json.loads(out)["tables"]
    assert [t["key"] for t in tables[:2]] == ["summary", "published_table1-cifar10"]  # beside the main table
    table = tables[1]
    [row] = table["rows"]  # compared on msp, the detector of the paper's MSP row; energy is not compared
    cell = dict(zip([c["key"] for c in table["columns"]], row))
    paper = published.lookup("table1-cifar10", "MSP").metrics
    ours = reference(run / "scores" / "msp.safetensors")
    mean_auroc = np.mean([m["auroc"] for m in ours["sets"].values()])
    assert cell["label"] == "msp" and cell["published"] == "MSP" and cell["comparable"] == "protocol differs"
    assert cell["paper_auroc"] == pytest.approx(paper["auroc"] / 100, abs=1e-12)
    assert cell["diff_auroc"] == pytest.approx(mean_auroc - paper["auroc"] / 100, abs=1e-12)
    assert cell["diff_acc"] == pytest.approx(ours["id"]["acc"] - paper["acc"] / 100, abs=1e-12)
    assert any("its other detectors are not compared" in line for line in table["preface"])
    assert any("training not recorded" in line for line in table["preface"])
    page = TableParser()
    page.feed((tmp_path / "r.html").read_text())
    assert [row[0] for row in page.tables["published_table1-cifar10"][1:]] == ["msp"]
    code, out, err = cli(["report", run, "--published", "table1-cifar1", "--no-html"])
    assert code == 2 and "unknown published table 'table1-cifar1'" in err and err.count("\n") == 1
    code, out, err = cli(["report", run, "--published", "table1-cifar10:MPS", "--no-html"])
    assert code == 2 and "MPS" in err and "did you mean 'MSP'" in err and err.count("\n") == 1


def test_a_run_on_other_ood_sets_gets_its_differences_and_no_delta(tmp_path, cli):
    run = make_run(tmp_path / "MSP", sets=("svhn",), metrics=("msp",), dataset="cifar10")
    (run / "config.json").write_text(json.dumps({"dataset": "cifar10", "imbalance_ratio": 0.01, "model": "resnet18",
                                                 "epochs": 2, "ood_metric": "msp", "aux_ood_loss": "none",
                                                 "aux_ood_dir": "/data/my-ood-folder", "num_ood_samples": 30000}))
    code, out, err = cli(["report", run, "--published", "table1-cifar10", "--format", "md", "--no-html"])
    assert code == 0, err
    section = out[out.index("### Beside the paper"):]
    before_rows = section[:section.index("| run · detector")]
    for needle in ("OOD test sets svhn (the paper: texture, svhn, cifar100, tin, lsun, places365)",
                   "epochs 2 (the paper: 200)", "auxiliary OOD images from /data/my-ood-folder"):
        assert needle in before_rows, needle  # listed above the numbers
    lines = [line for line in section.split("\n\n### ")[0].splitlines() if line.startswith("| ")]
    [row] = [[c.strip() for c in line.strip()[1:-1].split(" | ")] for line in lines[1:]]  # after the header
    assert row[:3] == ["msp", "MSP", "no: different OOD sets"]
    assert all(cell == "–" for cell in row[4::2])  # no Δ at all


# ---- the model behind the scores
def test_stale_scores_are_refused_unless_allowed(tmp_path, cli):
    run = make_run(tmp_path / "run")
    assert cli(["eval", run, "--json"])[0] == 0
    (run / "model.safetensors").write_bytes(b"retrained")
    for argv in (["eval", run], ["eval", run / "scores" / "msp.safetensors"], ["report", run, "--no-html"]):
        code, out, err = cli(argv)
        assert code == 2 and err.count("\n") == 1, err
        assert "were computed from an older model" in err and f"run `imood score {run.resolve()}` again" in err
    saved = (run / "eval" / "msp.json").read_text()
    code, out, err = cli(["eval", run / "scores" / "msp.safetensors", "--json", "--allow-stale"])
    assert code == 0 and json.loads(out)["stale"] is True and "imood: warning:" in err
    assert (run / "eval" / "msp.json").read_text() == saved  # stale results never replace a fresh evaluation
    code, out, err = cli(["report", run, "--allow-stale", "--format", "json", "--no-html"])
    assert code == 0, err
    doc = json.loads(out)
    assert all(e["stale"] for e in doc["entries"])
    assert all(row[0].endswith("(stale)") for row in doc["tables"][0]["rows"])
    assert any("--allow-stale" in n for n in doc["tables"][0]["notes"])


def test_score_files_outside_a_run_are_not_checked(tmp_path, cli):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    ScoreSet("m", np.arange(20.0), None, None, {"a": np.arange(5.0) + 30},
             meta={"checkpoint_sha256": "0" * 64}).save(folder / "m.safetensors")
    code, out, err = cli(["eval", folder / "m.safetensors", "--json"])
    assert code == 0 and json.loads(out)["ood"]["a"]["auroc"] == 1.0 and not err


def test_a_run_without_scores_says_what_to_do(tmp_path, cli):
    run = tmp_path / "fresh"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"m")
    for cmd in ("eval", "report"):
        code, out, err = cli([cmd, run])
        assert code == 2 and err == f"imood: error: {run} has no scores yet: run `imood score {run}`\n"


# ---- files imood did not write
def test_report_never_replaces_a_file_it_did_not_write(two_runs, tmp_path, cli, cli_code):
    a, _, _ = two_runs
    mine = tmp_path / "notes.html"
    mine.write_text("my notes")
    code, out, err = cli(["report", a, "--html", mine])
    assert code == 2 and "not a report imood wrote" in err and mine.read_text() == "my notes"
    link = tmp_path / "link.html"
    link.symlink_to(mine)
    code, out, err = cli(["report", a, "--html", link])
    assert code == 2 and "symbolic link" in err and mine.read_text() == "my notes"
    target = tmp_path / "r.html"
    assert cli_code(["report", a, "--html", target, "--format", "md"]) == 0
    assert cli_code(["report", a, "--html", target, "--format", "md"]) == 0  # its own report: replaced


def test_eval_never_replaces_a_file_it_did_not_write(tmp_path, cli, cli_code):
    run = make_run(tmp_path / "run", metrics=("msp",))
    (run / "eval").mkdir()
    (run / "eval" / "msp.json").write_text('{"mine": 1}')
    code, out, err = cli(["eval", run])
    assert code == 2 and "not an evaluation imood wrote" in err
    assert (run / "eval" / "msp.json").read_text() == '{"mine": 1}'
    assert cli_code(["eval", run, "--no-save"]) == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(run / "eval")
    (run / "eval").symlink_to(outside)
    code, out, err = cli(["eval", run])
    assert code == 2 and "link out of the run folder" in err and not list(outside.iterdir())


# ---- plots that survive what tools write
def test_odd_set_names_huge_scores_and_a_thousand_classes(tmp_path, cli):
    rng = np.random.default_rng(3)
    counts = list(rng.integers(5, 1200, 1000))
    folder = tmp_path / "odd"
    folder.mkdir()
    n = 3000
    labels = rng.integers(0, 1000, n)
    id_s = rng.normal(size=n)
    id_s[:5] = [1.7e308, -1.7e308, 5e-324, 1e300, -1e300]
    ood = {"te$\\x$t": rng.normal(1, size=400), "a$b$c": np.r_[np.full(50, 1.7e308), np.full(50, -1.7e308)],
           "one value": np.zeros(30)}
    ScoreSet("msp", id_s, labels, labels, ood, {k: rng.integers(0, 1000, v.size) for k, v in ood.items()},
             {"class_counts": [int(c) for c in counts]}).save(folder / "msp.safetensors")
    code, out, err = cli(["report", folder, "--html", tmp_path / "r.html", "--format", "md"])
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # one row: nothing to rank
    assert r"te\$\\x\$t" in out and r"a\$b\$c" in out  # Markdown: a $ and a \ stay text


def test_mathtext_would_have_failed_on_these_names():
    """The names above are hostile to matplotlib's default text parsing: report/plots.py must turn it off."""
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().set_title("te$\\x$t")
    with pytest.raises(ValueError):
        fig.savefig(io.BytesIO(), format="png")


def test_histogram_window_of_extreme_scores():
    from imood_cli.report.plots import _span

    lo, hi, unit = _span(np.array([-1.7e308, 0.0, 1.7e308]), 0.0)
    assert np.isfinite([lo, hi]).all() and unit == 1e308 and lo < hi
    assert _span(np.array([5e-324, 0.0]), 0.0) == (-0.5, 0.5, 1.0)
    lo, hi, unit = _span(np.arange(1000.0), 500.0)
    assert unit == 1.0 and (lo, hi) == (4.0, 995.0)


# ---- interruption and start-up
def test_ctrl_c_in_report_is_one_line_and_130(two_runs, cli, monkeypatch):
    a, _, _ = two_runs
    import imood_cli.report.results as results

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(results, "evaluate_scoreset", interrupted)
    code, out, err = cli(["report", a, "--no-html"])
    assert code == 130 and err == "imood: interrupted\n"


def test_sigint_during_eval_exits_130(tmp_path):
    rng = np.random.default_rng(0)
    ScoreSet("m", rng.normal(size=20000), None, None, {"a": rng.normal(1, size=20000)}).save(tmp_path / "m.safetensors")
    p = subprocess.Popen([sys.executable, "-m", "imood_cli", "eval", str(tmp_path / "m.safetensors"),
                          "--bootstrap", "100000", "--no-save"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV)
    time.sleep(4)  # well into the bootstrap, which takes minutes
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err == "imood: interrupted\n" and out == ""


def imported_modules(argv, cwd):
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "imood_cli", *map(str, argv)], capture_output=True,
                       text=True, timeout=300, env=ENV, cwd=cwd)
    assert r.returncode == 0, r.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}


def heavy(modules):
    return sorted(m for m in modules if m.split(".")[0] in ("torch", "timm", "matplotlib"))


def test_eval_and_report_start_without_torch(two_runs, tmp_path):
    a, _, _ = two_runs
    assert heavy(imported_modules(["eval", a / "scores" / "msp.safetensors", "--json", "--no-save"], tmp_path)) == []
    assert heavy(imported_modules(["report", a, "--no-html", "--format", "md"], tmp_path)) == []
    with_html = imported_modules(["report", a, "--html", tmp_path / "r.html", "--format", "md"], tmp_path)
    assert "matplotlib" in with_html and not any(m.split(".")[0] in ("torch", "timm") for m in with_html)


# ---- the page in a real browser
def browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(browser() is None, reason="no chromium binary (apt-get install chromium); the page's tables are "
                    "still checked by test_every_format_carries_every_table_with_the_reference_values")
def test_report_html_in_headless_chromium(two_runs, tmp_path, cli_code):
    a, b, expected = two_runs
    page = tmp_path / "report.html"
    assert cli_code(["report", a, b, "--html", page, "--format", "md"]) == 0
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'p'}"]
    dom = subprocess.run([browser(), *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    tables, parsed = parse_html(dom.stdout)
    assert_tables(tables, expected)
    assert {"plots-ranking", "plots-roc", "plots-pr", "plots-class", "plots-scores"} <= set(parsed.sections)
    shot = tmp_path / "shot.png"
    r = subprocess.run([browser(), *flags, "--window-size=1280,4000", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] == 4000 and pixels.shape[1] == 1280
    assert pixels[..., :3].std() > 0.05  # text, tables and plots, not a blank page
    rows_with_ink = (pixels[..., :3].min(axis=2) < 0.5).any(axis=1).mean()
    assert rows_with_ink > 0.3  # the page is filled from top to bottom


def test_figures_show_a_few_detectors_and_the_tables_every_row(tmp_path, cli):
    """--plots N draws N distinct detectors (which ones: tests/report/test_report_figures.py); the tables hold
    every row."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "many"
    folder.mkdir()
    names = ["entropy", "ada_entropy", "msp", "ada_msp", "energy", "ada_energy"]
    for name in names:
        ScoreSet(name, rng.normal(size=200), None, None, {"noise": rng.normal(1, size=100)}, {},
                 {}).save(folder / f"{name}.safetensors")
    code, out, err = cli(["report", folder, "--html", tmp_path / "r.html", "--plots", "2"])
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 3 + 2  # ranking, ROC, PR, and a histogram for each of 2 rows
    drawn = re.findall(r'alt="scores of ([^"]+)"', page)
    assert len(drawn) == 2 and drawn[0].removeprefix("ada_") == drawn[1].removeprefix("ada_")  # one pair
    assert "The figures draw 2 of the 6 distinct rows" in page
    assert all(f">{n}<" in page for n in names)  # every row is in the tables
    code, out, err = cli(["report", folder, "--html", tmp_path / "all.html", "--plots", "0"])
    assert code == 0 and (tmp_path / "all.html").read_text().count("data:image/png;base64,") == 3 + 6
    code, out, err = cli(["report", folder, "--plots", "-1"])
    assert code == 2 and "--plots must be >= 0" in err


@pytest.mark.parametrize("columns", [80, 60])
def test_terminal_tables_fit_a_narrow_terminal_without_cutting_a_number(tmp_path, columns):
    """At 80 columns the shot-group table once squeezed the set names to nothing and cut its last
    columns; with bootstrap intervals eval's OOD table lost FPR95. Every line now fits, every set name
    and every value is printed whole, and a table too wide at its narrowest comes in numbered parts."""
    run = make_run(tmp_path / "r", sets=("svhn", "places365"), metrics=("msp",))
    argv = [sys.executable, "-m", "imood_cli", "eval", run / "scores" / "msp.safetensors", "--no-save",
            "--bootstrap", "20"]
    p = subprocess.run(argv, env={**ENV, "COLUMNS": str(columns)}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(subprocess.run([*argv, "--json"], env=ENV, capture_output=True, text=True, timeout=120).stdout)
    lines = p.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= columns
    cells = [c.strip() for line in lines for c in line.split("│")]
    for s in ("svhn", "places365"):
        assert s in cells
        for k in ("auroc", "aupr_in", "aupr_out", "fpr95"):
            assert f"{100 * doc['ood'][s][k]:.2f}" in cells, (s, k)
        for part in ("id_flagged_as_ood", "ood_accepted_as"):
            for g in ("many", "medium", "few"):
                assert f"{100 * doc['groups'][s][part][g]:.2f}" in cells, (s, part, g)
    titles = [line.rstrip() for line in lines if line.startswith("msp: OOD detection")]
    n = len(titles)
    assert n >= 2 and titles == [f"msp: OOD detection (OOD = positive; %) [part {i} of {n}]" for i in range(1, n + 1)]
    note = next(i for i, line in enumerate(lines) if line.startswith("FPR95: fraction"))
    last_part = max(i for i, line in enumerate(lines) if line.startswith("msp: OOD detection"))
    assert last_part < note < next(i for i, line in enumerate(lines) if line.startswith("msp: ID classification"))
