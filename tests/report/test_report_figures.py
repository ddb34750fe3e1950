"""The figures of `imood report`: which detectors are drawn (checked against gains and AUROCs computed here
with scikit-learn), never two identical curves, the plotted data itself, FPR95 marked, class names on the
per-class axes, the ranking, and `--figures DIR` (valid SVG and PDF files, stable safe names, foreign files
never replaced)."""

import hashlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from imood_cli.engine.runs.scorefile import ScoreSet

COUNTS = [500, 300, 200, 120, 80, 50, 30, 20, 10, 5]
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SETS = ("svhn", "lsun")
# detector -> OOD shift of its scores (higher: easier to detect), or the detector whose scores it copies
SHIFTS = {"msp": 1.0, "ada_msp": 1.15, "energy": 0.7, "ada_energy": 1.6, "maxlogit": 2.2, "ada_maxlogit": 2.4,
          "entropy": 1.2, "ada_entropy": 1.0}
COPIES = {"oe": "msp", "oecc": "msp", "ada_oe": "ada_msp", "balenergy": "energy"}


def make_run(root: Path, names=None, shifts=SHIFTS, copies=COPIES, model=b"model", sets=SETS, n_id=400, n_ood=200):
    """A run folder whose score files hold independent scores per detector, except the copies: the same
    scores as another detector (oecc's stored as float32, as another tool might: the same values)."""
    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.safetensors").write_bytes(model)
    labels = rng.integers(0, 10, n_id)
    preds = np.where(rng.random(n_id) < 0.8, labels, rng.integers(0, 10, n_id))
    meta = {"class_counts": COUNTS, "dataset": "toy", "id_set": "toy-test",
            "checkpoint_sha256": hashlib.sha256(model).hexdigest(), **({"class_names": names} if names else {})}
    made = {}
    exact = lambda a: np.round(a * 1024) / 1024  # float32 holds these exactly: oecc's float32 copy is the same
    for m, shift in shifts.items():
        id_s = exact(rng.normal(size=n_id) + 0.1 * labels)
        made[m] = (id_s, {s: exact(rng.normal(shift, size=n_ood)) for s in sets})
    for m, source in copies.items():
        id_s, ood = made[source]
        if m == "oecc":
            id_s, ood = id_s.astype(np.float32), {s: v.astype(np.float32) for s, v in ood.items()}
        made[m] = (id_s, ood)
    for m, (id_s, ood) in made.items():
        ScoreSet(m, id_s, labels, preds, ood, {}, dict(meta)).save(root / "scores" / f"{m}.safetensors")
    return root


def fpr95(id_s, ood_s):
    """The first distinct score from the top whose OOD recall is >= 0.95: the ID fraction at or above it."""
    for t in np.unique(np.r_[id_s, ood_s])[::-1]:
        if np.mean(ood_s >= t) >= 0.95:
            return float(np.mean(id_s >= t))
    raise AssertionError("unreachable")


def reference(run: Path) -> dict:
    """Per detector: scores (float64), mean AUROC and FPR95 over the sets, computed here."""
    out = {}
    for f in sorted((run / "scores").glob("*.safetensors")):
        ss = ScoreSet.load(f)
        id_s = ss.id_score.astype(np.float64)
        ood = {s: v.astype(np.float64) for s, v in ss.ood_score.items()}
        au = {s: roc_auc_score(np.r_[np.zeros(id_s.size), np.ones(v.size)], np.r_[id_s, v]) for s, v in ood.items()}
        fp = {s: fpr95(id_s, v) for s, v in ood.items()}
        out[f.stem] = {"id": id_s, "ood": ood, "auroc": au, "fpr95": fp, "mean_auroc": np.mean(list(au.values())),
                       "mean_fpr95": np.mean(list(fp.values()))}
    return out


def groups_of(ref: dict) -> list[set[str]]:
    """Detectors grouped by identical scores (np.array_equal on every array)."""
    groups: list[set[str]] = []
    for m, r in ref.items():
        for g in groups:
            o = ref[next(iter(g))]
            if np.array_equal(o["id"], r["id"]) and all(np.array_equal(o["ood"][s], r["ood"][s]) for s in r["ood"]):
                g.add(m)
                break
        else:
            groups.append({m})
    return groups


def expected_default(ref: dict, per_run: int = 4) -> list[set[str]]:
    """The groups the default figures draw: the ada_ pair with the largest mean AUROC gain plus FPR95 saving,
    then the best mean AUROC and its pair."""
    groups = groups_of(ref)
    group = {m: frozenset(g) for g in groups for m in g}
    pairs = []
    for m in ref:
        if m.startswith("ada_") and m[4:] in ref and group[m] != group[m[4:]]:
            a, b = ref[m], ref[m[4:]]
            gain = np.mean([a["auroc"][s] - b["auroc"][s] - (a["fpr95"][s] - b["fpr95"][s]) for s in SETS])
            pairs.append((gain, m[4:], m))
    _, base, ada = max(pairs)
    chosen = [group[base], group[ada]]
    for m in sorted(ref, key=lambda m: -ref[m]["mean_auroc"]):
        partner = m[4:] if m.startswith("ada_") else f"ada_{m}"
        for x in (m, partner):
            if x in ref and group[x] not in chosen and len(chosen) < per_run:
                chosen.append(group[x])
        if len(chosen) >= per_run:
            break
    return [set(g) for g in chosen]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = make_run(tmp_path_factory.mktemp("runs") / "toy", names=NAMES)
    return root, reference(root)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two detectors on one OOD set: for the checks that render every figure (PNG, SVG, PDF)."""
    return make_run(tmp_path_factory.mktemp("tiny") / "toy", names=NAMES, shifts={"msp": 1.0, "ada_msp": 1.3},
                    copies={}, sets=("svhn",), n_id=200, n_ood=100)


def build(run_dir: Path, **kwargs):
    from imood_cli.report import plots
    from imood_cli.report.results import collect

    report = collect([run_dir])
    return report, *plots.build(report, **kwargs)


def curves(fig) -> list[tuple[str, list]]:
    """Per axes of a figure, the plotted rows: (label, xy data) of every line the figure names."""
    out = []
    for ax in fig.axes:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                out.append((ax.get_title(), line.get_label(), np.asarray(line.get_xydata())))
    return out


def row_names(label: str) -> set[str]:
    """'msp (= oe, oecc)' -> {'msp', 'oe', 'oecc'}."""
    first, _, rest = label.partition(" (= ")
    return {first, *(x.strip() for x in rest.rstrip(")").split(",") if x.strip())}


# ---- which rows, and no curve twice
def test_default_figures_draw_the_largest_gain_and_the_best_auroc_once_each(run):
    root, ref = run
    report, drawn, made = build(root, log_fpr=False)
    want = expected_default(ref)
    assert {"energy", "balenergy"} in want and {"ada_maxlogit"} in want  # the fixture's design, checked here
    got = [row_names(drawn.name(e)) for e in drawn.report.entries]
    assert sorted(map(sorted, got)) == sorted(map(sorted, want))
    groups = groups_of(ref)
    for section in ("roc", "pr", "class"):
        fig = next(p.figure for p in made if p.section == section)
        by_panel: dict[str, list] = {}
        for title, label, xy in curves(fig):
            if not title.startswith("accuracy"):  # one line per model there, not per detector
                by_panel.setdefault(title, []).append((label, xy))
        for panel, lines in by_panel.items():
            labels = [label for label, _ in lines]
            assert len(labels) == len(set(labels)) == len(want), (section, panel, labels)
            for g in groups:  # at most one curve per group of identical scores
                assert sum(bool(row_names(label) & g) for label in labels) <= 1, (section, panel, g)
            for i in range(len(lines)):
                for j in range(i + 1, len(lines)):
                    a, b = lines[i][1], lines[j][1]
                    assert a.shape != b.shape or not np.array_equal(a, b), (section, panel, labels[i], labels[j])
    hist = [p for p in made if p.section == "scores"]
    assert len(hist) == len(want)
    # every group of identical scores is named once, with all its names
    for g in groups:
        named = [e for e in drawn.distinct if row_names(drawn.name(e)) == g]
        assert len(named) == 1, g


def test_roc_curves_are_the_scores_roc_with_fpr95_marked(run):
    root, ref = run
    report, drawn, made = build(root, log_fpr=False)
    roc = next(p.figure for p in made if p.section == "roc")
    for ax in roc.axes:
        s = ax.get_title()
        if s not in SETS:
            continue
        assert ax.get_xscale() == "linear"
        dots = sorted(float(line.get_xdata()[0]) for line in ax.get_lines()
                      if line.get_marker() == "o" and list(line.get_ydata()) == [0.95])
        shown = []
        for _, label, xy in curves(roc):
            if _ != s:
                continue
            name = sorted(row_names(label))[0]
            r = ref[name]
            fpr, tpr, _t = roc_curve(np.r_[np.zeros(r["id"].size), np.ones(r["ood"][s].size)],
                                     np.r_[r["id"], r["ood"][s]], drop_intermediate=False)
            assert np.allclose(xy[:, 0], fpr) and np.allclose(xy[:, 1], tpr), (s, label)
            shown.append(r["fpr95"][s])
        assert dots == pytest.approx(sorted(shown), abs=1e-12)  # one FPR95 dot per curve, where it belongs
        legend = ax.get_legend()
        assert legend is not None and min(t.get_fontsize() for t in legend.get_texts()) >= 9  # readable


def test_log_fpr_is_the_default_and_legends_are_readable(run, tiny, tmp_path, cli):
    root, _ = run
    report, drawn, made = build(root)
    roc = next(p.figure for p in made if p.section == "roc")
    panels = [ax for ax in roc.axes if ax.get_title() in SETS]
    assert [ax.get_xscale() for ax in panels] == ["log", "log"]
    assert panels[0].get_xlim()[0] <= 1 / 400  # one ID image's FPR is on the axis
    for fig in (p.figure for p in made):
        for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]:
            assert min(t.get_fontsize() for t in legend.get_texts()) >= 9
    code, out, err = cli(["report", tiny, "--linear-fpr", "--html", tmp_path / "r.html", "--format", "md"])
    assert code == 0, err
    assert "The FPR axis is linear" in (tmp_path / "r.html").read_text()


def test_curves_by_name_draw_identical_scores_once(run, tmp_path, cli):
    root, _ = run
    report, drawn, made = build(root, curves=["oe", "msp", "ada_msp", "oecc"])
    # oe and oecc have msp's scores: one row, named after msp, drawn once
    assert [e.metric for e in drawn.report.entries] == ["msp", "ada_msp"]
    assert row_names(drawn.name(drawn.report.entries[0])) == {"oe", "msp", "oecc"}
    code, out, err = cli(["report", root, "--curves", "msp,ada_msp", "--html", tmp_path / "r.html", "--format",
                          "md"])
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert re.findall(r'alt="scores of ([^"]+)"', page) == ["msp (= oe, oecc)", "ada_msp (= ada_oe)"]
    code, out, err = cli(["report", root, "--curves", "msp,nope", "--html", tmp_path / "x.html"])
    assert code == 2 and out == "" and err.startswith("imood: error: --curves: no row of the report is 'nope'")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.html").exists()


def test_class_names_on_the_per_class_axes_and_ids_without_them(run, tmp_path):
    root, _ = run
    _, _, made = build(root)
    fig = next(p.figure for p in made if p.section == "class")
    order = np.argsort(-np.asarray(COUNTS), kind="stable")
    top = fig.axes[0]
    assert [t.get_text() for t in top.get_xticklabels()] == [NAMES[k] for k in order]
    assert top.get_xlabel().startswith("class, sorted")
    bare = make_run(tmp_path / "bare", shifts={"msp": 1.0, "ada_msp": 1.2}, copies={})
    _, _, made = build(bare)
    top = next(p.figure for p in made if p.section == "class").axes[0]
    assert [t.get_text() for t in top.get_xticklabels()] == [str(k) for k in order]
    assert top.get_xlabel().startswith("class id")


def test_the_ranking_shows_every_distinct_detector_by_auroc(run):
    root, ref = run
    _, drawn, made = build(root)
    fig = next(p.figure for p in made if p.section == "ranking")
    ax_auroc, ax_fpr = fig.axes[:2]
    labels = [t.get_text() for t in ax_auroc.get_yticklabels()]
    groups = groups_of(ref)
    assert len(labels) == len(groups)
    ranked = sorted(groups, key=lambda g: -ref[next(iter(g))]["mean_auroc"])
    assert [row_names(label) for label in labels] == ranked
    tops = [b.get_x() + b.get_width() for b in ax_auroc.patches]  # bars start at chance, 50
    fprs = [b.get_width() for b in ax_fpr.patches]
    assert tops == pytest.approx([100 * ref[next(iter(g))]["mean_auroc"] for g in ranked], abs=1e-9)
    assert fprs == pytest.approx([100 * ref[next(iter(g))]["mean_fpr95"] for g in ranked], abs=1e-9)


# ---- --figures DIR
def check_svg(path: Path):
    root = ET.fromstring(path.read_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


def check_pdf(path: Path):
    """A minimal structural check: header, end marker, startxref pointing at the xref table, a trailer naming
    the catalog, and the creator."""
    data = path.read_bytes()
    assert data.startswith(b"%PDF-1.") and data.rstrip().endswith(b"%%EOF")
    offset = int(re.findall(rb"startxref\s+(\d+)", data)[-1])
    assert data[offset:offset + 4] == b"xref"
    trailer = data[data.rindex(b"trailer"):]
    assert b"/Root" in trailer and b"/Info" in trailer
    assert b"/Creator (imood report" in data


def test_figures_dir_gets_valid_svg_and_pdf_files_with_stable_names(tiny, tmp_path, cli):
    out = tmp_path / "figs"
    argv = ["report", tiny, "--figures", out, "--no-html", "--format", "md"]
    code, stdout, err = cli(argv)
    assert code == 0, err
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(f"{s}.{x}" for s in ("ranking", "roc", "pr", "per-class", "scores-msp", "scores-ada_msp")
                           for x in ("svg", "pdf"))
    for f in out.iterdir():
        (check_svg if f.suffix == ".svg" else check_pdf)(f)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    code, stdout, err = cli(argv)
    assert code == 0, err  # its own files are replaced, byte for byte the same (no dates in them)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


@pytest.mark.parametrize("foreign", ["svg", "pdf", "pdf-mentions", "link", "folder"])
def test_figures_never_replace_a_file_imood_did_not_write(tiny, tmp_path, cli, foreign):
    root = tiny
    out = tmp_path / "paper"
    out.mkdir()
    mine = {"svg": ("roc.svg", b"<svg xmlns='http://www.w3.org/2000/svg'><!-- my own figure --></svg>"),
            "pdf": ("pr.pdf", b"%PDF-1.4\n% my figure\n%%EOF\n"),
            # a paper that includes an imood figure mentions its creator, but its own /Info is not imood's
            "pdf-mentions": ("roc.pdf", b"%PDF-1.4\n5 0 obj << /PTEX.InfoDict << /Creator (imood report 0.2) >> >>"
                             b" endobj\n9 0 obj << /Creator (pdfTeX) >> endobj\ntrailer << /Info 9 0 R >>\n%%EOF\n")}
    if foreign == "link":
        (tmp_path / "elsewhere.svg").write_bytes(b"x")
        (out / "pr.svg").symlink_to(tmp_path / "elsewhere.svg")
        name = "pr.svg"
    elif foreign == "folder":
        (out / "ranking.pdf").mkdir()
        name = "ranking.pdf"
    else:
        name, data = mine[foreign]
        (out / name).write_bytes(data)
    before = sorted(p.name for p in out.iterdir())
    page = tmp_path / "r.html"
    code, stdout, err = cli(["report", root, "--figures", out, "--html", page, "--format", "md"])
    assert code == 2 and name in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in out.iterdir()) == before and not page.exists()  # nothing written or replaced
    if foreign in mine:
        assert (out / name).read_bytes() == mine[foreign][1]
    (tmp_path / "file").write_text("x")
    code, stdout, err = cli(["report", root, "--figures", tmp_path / "file", "--no-html"])
    assert code == 2 and "is not a folder" in err and stdout == ""  # refused before any table is printed


def test_figure_file_names_are_safe_and_distinct():
    from imood_cli.report.figures import safe_stem, stems

    assert safe_stem("scores-a/run · react:p=95") == "scores-a-run-react-p-95"
    assert safe_stem("../../etc/passwd") == "etc-passwd"
    assert safe_stem("$$$") == "figure"
    assert stems(["scores-a b", "scores-a/b", "Scores-A-B", "roc"]) == ["scores-a-b", "scores-a-b-2", "Scores-A-B-3",
                                                                         "roc"]
    assert all(len(s) <= 100 for s in stems(["x" * 300, "x" * 300]))
