"""entropy, maxlogit, gen, klm, odin, fdbd and classprior through `imood score` on a tiny digits run."""

import pytest
import torch

from imood_cli.engine.runs.checkpoint import load_tensors
from imood_cli.engine.runs.scorefile import ScoreSet

DETECTORS = ["entropy", "ada_entropy", "maxlogit", "gen", "gen:M=3", "klm", "ada_klm", "odin", "ada_odin", "fdbd",
             "ada_fdbd", "classprior", "classprior:variant=rp_msp",
             "classprior:variant=rp_gradnorm", "classprior:variant=rw_odin:odin_eps=0.002"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cli_code):
    root = tmp_path_factory.mktemp("detA")
    code = cli_code(["train", "--ds", "digits", "--epochs", "1", "--srp", root, "--name", "r", "--drp", root / "data"])
    assert code == 0
    return root / "r"


def test_every_detector_scores_end_to_end(run, cli):
    code, out, err = cli(["score", run, "--ood_metric", ",".join(DETECTORS)])
    assert code == 0, err
    sets = {}
    for label in DETECTORS:
        path = run / "scores" / f"{label.replace(':', '-')}.safetensors"
        sets[label] = ScoreSet.load(path)
        assert sets[label].ood_score and all(len(s) for s in sets[label].ood_score.values())
    # The fits are cached per checkpoint, one per detector (ada_ shares its base's).
    assert len(list((run / "fits").glob("klm-*.safetensors"))) == 1
    (fdbd_fit,) = (run / "fits").glob("fdbd-*.safetensors")
    state, _ = load_tensors(fdbd_fit, "fit cache")
    assert sets["ada_fdbd"].meta["ada_scale"] == pytest.approx(float(state["ada_scale"]))
    assert sets["ada_fdbd"].meta["ada_scale"] != 0.01  # measured on the training set, not the class value
    odin, ada_odin = sets["odin"], sets["ada_odin"]
    assert odin.meta["detector_options"] == {"T": 1000.0, "eps": 0.0014, "std": ""}
    assert ada_odin.meta["ada_scale"] == 1.0
    assert sets["gen:M=3"].meta["detector_options"] == {"gamma": 0.1, "M": 3}
    assert not torch.equal(torch.as_tensor(sets["gen"].id_score), torch.as_tensor(sets["gen:M=3"].id_score))


def test_fit_cache_is_reused_with_identical_scores(run, cli):
    first = {}
    for attempt in range(2):
        code, _, err = cli(["score", run, "--ood_metric", "fdbd,ada_klm", "--out", run / f"again{attempt}"])
        assert code == 0, err
        for label in ("fdbd", "ada_klm"):
            ss = ScoreSet.load(run / f"again{attempt}" / f"{label}.safetensors")
            if attempt == 0:
                first[label] = ss
            else:
                assert (ss.id_score == first[label].id_score).all()
                for name, s in ss.ood_score.items():
                    assert (s == first[label].ood_score[name]).all()


@pytest.mark.parametrize("spec,pattern", [("gen:gamma=0", "gen: gamma must be > 0"),
                                          ("odin:std=a_b", "odin: std must be"),
                                          ("classprior:variant=rw_msp", "variant must be one of"),
                                          ("ada_classprior", "declares no ada_scale")])
def test_bad_options_are_one_line_errors(run, cli, spec, pattern):
    code, _, err = cli(["score", run, "--ood_metric", spec])
    errors = [x for x in err.splitlines() if x.startswith("imood: error:")]
    assert code == 2 and len(errors) == 1 and pattern in errors[0] and "Traceback" not in err, err
