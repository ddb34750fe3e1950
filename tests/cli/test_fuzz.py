"""Fuzzing the error boundary: whatever the score file or the command line, `imood eval` / `report` /
`score` either succeed (metrics in [0, 1]) or print exactly one line `imood: error: ...` on stderr and
exit 2 — never a traceback.
"""

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fresh_digits_run
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.torch import save_file

from imood_cli.engine.metrics.ranking import METRIC_KEYS
from imood_cli.engine.runs.scorefile import ScoreSet

# IMOOD_FUZZ_EXAMPLES=1000 for a long hunt; the default keeps the file under 30 s.
EXAMPLES = int(os.environ.get("IMOOD_FUZZ_EXAMPLES", "40"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


def assert_clean_failure(code, out, err):
    assert code == 2, (code, err)
    assert "Traceback" not in err + out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("imood: error:"), err


def assert_unit(v, where):
    assert isinstance(v, float) and 0.0 <= v <= 1.0 and not math.isnan(v), (where, v)


def check_eval_json(doc):
    for name, m in doc["ood"].items():
        for k in METRIC_KEYS:
            assert_unit(m[k], (name, k))
        for k, (lo, hi) in m.get("ci95", {}).items():
            assert 0.0 <= lo <= hi <= 1.0, (name, k, lo, hi)
    if "id" in doc:
        for k in ("acc", "many", "medium", "few"):
            if doc["id"][k] is not None:
                assert_unit(doc["id"][k], k)
        for a in doc["id"]["per_class"]:
            assert a is None or 0.0 <= a <= 1.0
    for g in doc.get("groups", {}).values():
        for part in ("id_flagged_as_ood", "ood_accepted_as"):
            for v in g[part].values():
                assert v is None or 0.0 <= v <= 1.0


def eval_holds(path, cli, extra=()):
    """The property, for one score file."""
    code, out, err = cli(["eval", path, "--json", "--no-save", *extra])
    if code == 0:
        check_eval_json(json.loads(out))
    else:
        assert_clean_failure(code, out, err)
    return code


# ---- score arrays: NaN, inf, empty, huge, tied
FLOAT_DTYPES = [np.float16, np.float32, np.float64]


@st.composite
def scores(draw, max_size=25):
    kind = draw(st.sampled_from(["any", "finite", "tied", "huge", "empty"]))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    n = draw(st.integers(1, max_size))
    if kind == "empty":
        return np.zeros(0, dtype)
    if kind == "tied":
        return np.full(n, draw(st.floats(-1e3, 1e3, width=16)), dtype)
    if kind == "huge":
        vals = draw(st.lists(st.sampled_from([1e300, -1e300, 1.7e308, -1.7e308, 5e-324, 0.0]), min_size=n, max_size=n))
        return np.asarray(vals, np.float64)
    finite = kind == "finite"
    return draw(hnp.arrays(dtype, n, elements=st.floats(allow_nan=not finite, allow_infinity=not finite,
                                                         width=np.dtype(dtype).itemsize * 8)))


def labels(n, k):
    """Class indices: mostly valid, sometimes out of range, a single class, or the wrong length."""
    return st.one_of(
        hnp.arrays(np.int64, n, elements=st.integers(0, max(k - 1, 0))),
        hnp.arrays(np.int64, n, elements=st.integers(-2, k + 2)),
        st.just(np.zeros(n, np.int64)),
        st.integers(0, 30).map(lambda m: np.zeros(m, np.int64)),
    )


CLASS_COUNTS = st.one_of(
    st.none(),
    st.lists(st.integers(1, 5000), min_size=1, max_size=12),
    st.lists(st.integers(1, 300), min_size=101, max_size=120),
    st.just([7]),
    st.just([]),
    st.just([0, 0, 0]),
    st.just([-1, 5]),
    st.just("many"),
    st.just([1.5, 2]),
    st.just([None]),
    st.just({"a": 1}),
)


@st.composite
def scoresets(draw):
    id_s = draw(scores())
    n = id_s.shape[0]
    counts = draw(CLASS_COUNTS)
    k = len(counts) if isinstance(counts, list) and counts else 3
    with_labels = draw(st.booleans())
    id_label = draw(labels(n, k)) if with_labels else None
    id_pred = draw(labels(n, k)) if with_labels and draw(st.booleans()) else None
    names = draw(st.lists(st.sampled_from(["svhn", "texture", "a.b", "mean", "x y", "ünï"]), max_size=3, unique=True))
    ood, ood_pred = {}, {}
    for name in names:
        ood[name] = draw(scores())
        if draw(st.booleans()):
            ood_pred[name] = draw(labels(ood[name].shape[0], k))
    meta = {}
    if counts is not None:
        meta["class_counts"] = counts
    t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))
    ss = ScoreSet(draw(st.sampled_from(["msp", "ada_energy", ""])), t(id_s), t(id_label), t(id_pred),
                  {k: t(v) for k, v in ood.items()}, {k: t(v) for k, v in ood_pred.items()}, meta)
    return ss


def list_missing_set(path, name="lsun"):
    """Name an OOD set in the metadata that has no scores in the file (ScoreSet.save never does)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["imood"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["ood_sets"] = meta["ood_sets"] + [name]
    save_file(tensors, path, metadata={"imood": json.dumps(meta)})


@FAST
@given(ss=scoresets(), bootstrap=st.sampled_from([0, 0, 0, 3]), missing=st.booleans())
def test_eval_of_odd_score_files(cli, ss, bootstrap, missing):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "scores.safetensors"
        ss.save(path)
        if missing:
            list_missing_set(path)
        code = eval_holds(path, cli, ["--bootstrap", str(bootstrap)] if bootstrap else [])
    # finite scores everywhere, at least one set, no labels and sound metadata: it must evaluate
    ok_scores = all(a.size and np.isfinite(a.astype(np.float64)).all() for a in [ss.id_score, *ss.ood_score.values()])
    counts = ss.meta.get("class_counts")
    ok_counts = counts is None or (isinstance(counts, list) and counts and all(
        isinstance(c, int) and c >= 0 for c in counts))
    k = len(counts) if ok_counts and counts else None  # predictions are class indices in [0, K)
    ok_preds = all(p.size == ss.ood_score[name].size and (not p.size or (p.min() >= 0 and (k is None or p.max() < k)))
                   for name, p in ss.ood_pred.items())
    if (ok_scores and ok_counts and ok_preds and ss.ood_score and "mean" not in ss.ood_score and ss.id_label is None
            and not missing):
        assert code == 0


# ---- raw safetensors files: odd keys, shapes, dtypes, metadata
KEYS = ["id.score", "id.label", "id.pred", "ood.a.score", "ood.a.pred", "ood.b.score", "ood..score", "ood.a",
        "ood.c.pred", "foo", "id.score.x", "ood.mean.score"]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int32,
          torch.int64, torch.bool]
SHAPES = st.one_of(st.just(()), st.tuples(st.integers(0, 12)), st.tuples(st.integers(0, 3), st.integers(0, 3)))
META_TEXT = st.one_of(
    st.none(),
    st.sampled_from(["{", "null", "[1, 2]", '"text"', "3", "{}", '{"score_direction": "higher_is_id"}',
                     '{"ood_sets": 5}', '{"ood_sets": ["a", 1]}', '{"metric": [1]}', '{"class_counts": "x"}',
                     '{"class_counts": [3, 2, 1]}', '{"class_counts": [3, 2, 1], "ood_sets": ["a", "zzz"]}',
                     '{"class_counts": [1e400]}', '{"class_counts": [NaN]}']),
    st.dictionaries(st.sampled_from(["metric", "class_counts", "ood_sets", "score_direction", "dataset"]),
                    st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=4),
                              st.lists(st.integers(-1, 9), max_size=4)),
                    max_size=4).map(json.dumps),
)


@st.composite
def tensor(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(SHAPES)
    kind = draw(st.sampled_from(["randn", "special", "ints"]))
    if kind == "ints" or not dtype.is_floating_point:
        t = torch.randint(-3, 12, shape) if dtype not in (torch.uint8, torch.bool) else torch.randint(0, 2, shape)
        return t.to(dtype)
    t = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 100))))
    if kind == "special" and t.numel():
        t.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e38, -1e38]))
    return t.to(dtype)


@FAST
@given(tensors=st.dictionaries(st.sampled_from(KEYS), tensor(), max_size=6), meta=META_TEXT)
def test_eval_of_raw_safetensors(cli, tensors, meta):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "raw.safetensors"
        save_file(tensors, path, metadata=None if meta is None else {"imood": meta})
        eval_holds(path, cli)


@settings(max_examples=max(EXAMPLES // 2, 10), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_eval_of_damaged_bytes(cli, data):
    ss = ScoreSet("msp", torch.randn(20), torch.zeros(20, dtype=torch.long), torch.zeros(20, dtype=torch.long),
                  {"svhn": torch.randn(9)}, {}, {"class_counts": [5, 3]})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.safetensors"
        ss.save(path)
        blob = bytearray(path.read_bytes())
        how = data.draw(st.sampled_from(["truncate", "flip", "garbage"]))
        if how == "truncate":
            blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
        elif how == "flip":
            for i in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=8)):
                blob[i] ^= 0xFF
        else:
            blob = bytearray(data.draw(st.binary(max_size=300)))
        path.write_bytes(bytes(blob))
        eval_holds(path, cli)


def test_known_edge_cases(tmp_path, cli):
    def write(name, **kw):
        p = tmp_path / f"{name}.safetensors"
        ScoreSet(kw.pop("metric", "msp"), kw.pop("id_score"), kw.pop("id_label", None), kw.pop("id_pred", None),
                 kw.pop("ood"), kw.pop("ood_pred", {}), kw.pop("meta", {})).save(p)
        return p

    f = lambda *v: torch.tensor(v, dtype=torch.float32)
    n = lambda *v: torch.tensor(v, dtype=torch.long)
    # all tied: AUROC 0.5, FPR95 1
    p = write("tied", id_score=torch.zeros(5), ood={"a": torch.zeros(4)})
    assert eval_holds(p, cli) == 0
    # bfloat16 scores evaluate (numpy has no bfloat16)
    p = write("bf16", id_score=f(0, 1, 2).bfloat16(), ood={"a": f(3, 4).bfloat16()})
    assert eval_holds(p, cli) == 0
    # a single class in the ID set, class counts from the metadata
    p = write("single", id_score=f(0, 1, 2), id_label=n(1, 1, 1), id_pred=n(1, 0, 1), ood={"a": f(3)},
              meta={"class_counts": [10, 5, 1]})
    assert eval_holds(p, cli) == 0
    for name, kw, msg in [
        ("nan", dict(id_score=f(0, float("nan")), ood={"a": f(1)}), "NaN"),
        ("inf", dict(id_score=f(0, 1), ood={"a": f(float("inf"))}), "infinite"),
        ("empty", dict(id_score=torch.zeros(0), ood={"a": f(1)}), "no scores"),
        ("no_sets", dict(id_score=f(0), ood={}), "no OOD set"),
        ("mean", dict(id_score=f(0), ood={"mean": f(1)}), "'mean'"),
        ("lengths", dict(id_score=f(0, 1), id_label=n(0), id_pred=n(0, 0), ood={"a": f(1)}), "entries"),
        ("labels", dict(id_score=f(0, 1), id_label=n(0, 7), id_pred=n(0, 0), ood={"a": f(1)},
                        meta={"class_counts": [3, 1]}), "id.label holds the class index 7, outside [0, 2)"),
        ("counts", dict(id_score=f(0, 1), id_label=n(0, 1), id_pred=n(0, 0), ood={"a": f(1)},
                        meta={"class_counts": [3, -1]}), "class counts"),
        ("missing_set", dict(id_score=f(0), ood={"a": f(1)}), "'lsun'"),
    ]:
        p = write(name, **kw)
        if name == "missing_set":
            list_missing_set(p)
        code, out, err = cli(["eval", p, "--json"])
        assert_clean_failure(code, out, err)
        assert msg in err, (name, err)


# ---- command lines
@pytest.fixture(scope="module")
def score_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("scores")
    ss = ScoreSet("msp", torch.randn(30), torch.randint(0, 3, (30,)), torch.randint(0, 3, (30,)),
                  {"svhn": torch.randn(12) + 1, "noise": torch.randn(7) + 2}, {}, {"class_counts": [20, 8, 2]})
    ss.save(d / "msp.safetensors")
    ss.metric = "ada_msp"
    ss.save(d / "ada_msp.safetensors")
    return d


PATHS = st.sampled_from(["SCORES", "SCORES/msp.safetensors", "/nonexistent/x", "", ".", "EMPTY", "FILE"])


def _paths(argv, score_dir, tmp):
    empty = Path(tmp) / "empty"
    empty.mkdir(exist_ok=True)
    (Path(tmp) / "file.txt").write_text("not a score file")
    subs = {"SCORES": str(score_dir), "EMPTY": str(empty), "FILE": str(Path(tmp) / "file.txt")}
    out = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


@FAST
@given(paths=st.lists(PATHS, max_size=3),
       opts=st.lists(st.sampled_from([["--json"], ["--csv"], ["--bootstrap", "2"], ["--bootstrap", "-1"],
                                      ["--bootstrap", "x"], ["--seed", "-4"], ["--seed", "3"], ["--format", "md"],
                                      ["--no-save"], ["--bogus"], ["-m", "msp"], ["--allow-stale"]]), max_size=3))
def test_eval_command_lines(cli, score_dir, paths, opts):
    with tempfile.TemporaryDirectory() as tmp:
        argv = _paths(["eval", *paths, *[a for o in opts for a in o], "--no-save"], score_dir, tmp)
        code, out, err = cli(argv)
    if code != 0:
        assert_clean_failure(code, out, err)
    elif "--json" in argv:
        doc = json.loads(out)
        for d in (doc.values() if "ood" not in doc else [doc]):
            check_eval_json(d)


@FAST
@given(paths=st.lists(PATHS, min_size=0, max_size=2),
       opts=st.lists(st.sampled_from([["--format", "json"], ["--format", "md"], ["--format", "csv"],
                                      ["--format", "latex"], ["--format", "xml"], ["-f", ""], ["--metric", "msp"],
                                      ["--metric", "nope"], ["-m", "ada_msp,msp"], ["--bootstrap", "-2"],
                                      ["--bootstrap", "2"], ["--bootstrap", "1.5"], ["--allow-mismatch"],
                                      ["--allow-stale"], ["-m", "msp,msp"]]), max_size=3))
def test_report_command_lines(cli, score_dir, paths, opts):
    with tempfile.TemporaryDirectory() as tmp:
        argv = _paths(["report", *paths, *[a for o in opts for a in o], "--no-html"], score_dir, tmp)
        code, out, err = cli(argv)
    if code != 0:
        assert_clean_failure(code, out, err)


def test_report_with_html(score_dir, tmp_path, cli):
    code, out, err = cli(["report", score_dir, "--format", "json", "--html", tmp_path / "r.html"])
    assert code == 0, err
    assert (tmp_path / "r.html").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A digits run folder with freshly initialized weights (what score needs, without training)."""
    return fresh_digits_run(tmp_path_factory.mktemp("runs"))


SCORE_OPTS = st.sampled_from([
    ["-m", "msp"], ["-m", "nope"], ["-m", "ada_msp"], ["--ood_metric", "ada_bogus"], ["--ada-scale", "x"],
    ["--device", "tpu"], ["--device", "cuda:3"], ["--ds", "cifar77"], ["--ood-dir", "/nonexistent"],
    ["--batch-size", "abc"], ["--logit-adjust", "zz"], ["--format", "json"], ["--ckpt_path", "/nonexistent"],
])


@settings(max_examples=max(EXAMPLES // 5, 8), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(target=st.sampled_from(["RUN", "/nonexistent/run", "FILE", None]), opts=st.lists(SCORE_OPTS, max_size=2))
def test_score_command_lines(cli, trained_run, target, opts):
    flat = [a for o in opts for a in o]
    assume(not ("-m" in flat and "msp" in flat and "ada_msp" in flat))  # keep examples cheap
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "model.safetensors"
        file.write_bytes(b"\x00" * 16)
        t = {"RUN": str(trained_run), "FILE": str(file), None: None}.get(target, target)
        argv = ["score", *([t] if t else []), *flat, "--device", "cpu", "--out", str(Path(tmp) / "s")]
        if not any(o in flat for o in ("-m", "--ood_metric")):
            argv += ["-m", "msp"]
        code, out, err = cli(argv)
    if code != 0:
        # the progress bar may leave a blank line on a non-terminal stderr
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("imood: error:"), (code, err)
        assert "Traceback" not in err


# Crashes fuzzing once found, kept as regression tests.
KNOWN_CRASHES = {
    "score --batch-size 0": ["score", "RUN", "-m", "msp", "--batch-size", "0"],
    "score --batch-size -5": ["score", "RUN", "-m", "msp", "--batch-size", "-5"],
    "score --out FILE": ["score", "RUN", "-m", "msp", "--out", "FILE"],
    "report --html DIR": ["report", "SCORES", "--html", "DIR"],
}


@pytest.mark.parametrize("case", list(KNOWN_CRASHES))
def test_known_crashes(cli, trained_run, score_dir, tmp_path, case):
    (tmp_path / "file").write_text("x")
    subs = {"RUN": str(trained_run), "SCORES": str(score_dir), "FILE": str(tmp_path / "file"), "DIR": str(tmp_path)}
    argv = [subs.get(a, a) for a in KNOWN_CRASHES[case]] + ["--device", "cpu"] * (case.startswith("score"))
    code, out, err = cli(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("imood: error:")


def test_a_metric_named_twice_is_scored_once(cli, trained_run, tmp_path):
    code, out, err = cli(["score", str(trained_run), "-m", "msp,msp", "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["msp.safetensors"]
