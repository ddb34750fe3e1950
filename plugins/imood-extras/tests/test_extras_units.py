"""margin and supcon against independent float64 computations (numpy and explicit loops), through imood's
documented surface only: imood_cli.plugin_api, imood_cli.api and the command line."""

from __future__ import annotations

import importlib.metadata as md
import json

import numpy as np
import pytest
import torch
from extras_reference import np_ada_margin, np_auroc, np_log_beta, np_margin, np_supcon

from imood_cli import api
from imood_cli.plugin_api import AdaObjective, AdaScore, AuxBatch, ModelOutputs, Score
from imood_extras.margin import LogitMargin
from imood_extras.supcon import SupCon

COUNTS = [50, 20, 8, 3]  # long-tailed


def entry_point(group: str, name: str):
    """The class an entry point of imood-extras names, loaded as imood loads it."""
    eps = [ep for ep in md.distribution("imood-extras").entry_points if ep.group == group and ep.name == name]
    assert len(eps) == 1, eps
    return eps[0].load()


def test_registered_through_entry_points(cli):
    eps = {(ep.group, ep.name): ep.value for ep in md.distribution("imood-extras").entry_points}
    assert eps == {("imood.ood_metrics", "margin"): "imood_extras.margin:LogitMargin",
                   ("imood.aux_losses", "supcon"): "imood_extras.supcon:SupCon"}
    code, out, err = cli("plugins", "list", "--json")
    assert code == 0, err
    rows = json.loads(out)
    by_name = {(r["kind"], r["name"]): r for r in rows}
    for kind, name in [("method", "margin"), ("method", "ada_margin"), ("aux_loss", "supcon")]:
        r = by_name[(kind, name)]
        assert r["loaded"], r["error"]
        assert r["distribution"] == "imood-extras"
    assert by_name[("method", "ada_margin")]["derived_from"] == "margin"
    assert by_name[("method", "margin")]["ada_scale"] == 1.0 and by_name[("method", "margin")]["needs"] == []
    assert not by_name[("method", "margin")]["trains"] and by_name[("method", "ada_margin")]["trains"]
    assert by_name[("aux_loss", "supcon")]["options"] == [
        {"name": "T", "type": "float", "default": 0.07, "phase": "training", "note": None}]
    assert {"margin", "ada_margin"} <= set(api.list_methods())
    m = api.score("ada_margin")
    assert isinstance(m, AdaScore) and m.scale == 1.0
    # margin is post hoc; ada_margin trains ImOOD's objective on the margin's g (the 0.2 Detector seen as a Score)
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.5, 0.0, 2.0, 1.5]])
    for name, is_trained in (("margin", False), ("ada_margin", True)):
        score, objective = api.training(name)
        assert isinstance(score, Score) and score.idness(ModelOutputs(logits)).tolist() == [2.0, 0.5]
        assert isinstance(objective, AdaObjective) if is_trained else objective is None
    # nothing of this distribution is shadowed by (or shadows) a built-in
    assert not [r for r in rows if r["distribution"] == "imood-extras" and r["status"] != "loaded"]


def test_margin_matches_numpy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 4, generator=g) * 3
    z = logits.double().numpy()
    ref_g = np_margin(z)
    assert (ref_g > 0).all()
    np.testing.assert_allclose(LogitMargin().idness(ModelOutputs(logits)).numpy(), ref_g, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(api.ood_scores("margin", logits, COUNTS).numpy(), -ref_g, rtol=1e-6, atol=1e-6)
    for tau in (1.0, 0.5):
        ref = -(ref_g + 1.0 * np_log_beta(z, COUNTS, tau))
        got = api.ood_scores("ada_margin", logits, COUNTS, logit_adjust=tau).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # τ = 0: uniform prior, log β̂ = 0, so ada_margin equals margin
    np.testing.assert_allclose(api.ood_scores("ada_margin", logits, COUNTS, logit_adjust=0.0).numpy(), -ref_g,
                               rtol=1e-5, atol=1e-5)


def test_margin_is_zero_for_a_tie_and_ranks_a_confident_row_higher():
    logits = torch.tensor([[2.0, 2.0, -1.0, 0.0], [5.0, 1.0, 0.0, -3.0]])
    g = LogitMargin().idness(ModelOutputs(logits))
    assert g.tolist() == [0.0, 4.0]


def test_ada_margin_moves_tail_predictions_toward_id():
    # Rows predicted as the rarest class get log β̂ > 0 and a lower (more ID) ada score; head rows a higher one.
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(200, 4, generator=g) * 4  # confident rows, as a trained model's
    vanilla = api.ood_scores("margin", logits, COUNTS)
    ada = api.ood_scores("ada_margin", logits, COUNTS)
    probs = logits.softmax(dim=1)
    pred = logits.argmax(dim=1)
    tail, head = pred == 3, pred == 0
    sure_head = probs[:, 0] > 0.97  # so little mass elsewhere that log β̂ < 0 whatever the rest holds
    assert tail.any() and sure_head.any()
    assert (ada[tail] < vanilla[tail]).all() and (ada[sure_head] > vanilla[sure_head]).all()
    rank = lambda s: s.argsort().argsort().double()
    assert rank(ada)[tail].mean() < rank(vanilla)[tail].mean()
    assert rank(ada)[head].mean() > rank(vanilla)[head].mean()


def test_margin_on_a_model_through_the_api(tmp_path, cli):
    # Any nn.Module whose forward gives the logits: the view the engine builds, score_model, and its score files
    # read back by `imood eval --json`, each against logits recomputed here from the weights in float64.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    g = torch.Generator().manual_seed(1)
    x_id, y_id = torch.randn(96, 8, generator=g) * 2, torch.randint(0, 4, (96,), generator=g)
    x_ood = torch.randn(64, 8, generator=g) * 0.3  # near the origin: logits close together, small margins
    w1, b1, w2, b2 = (p.detach().double().numpy() for p in model.parameters())

    def np_logits(x):
        return np.maximum(x.double().numpy() @ w1.T + b1, 0) @ w2.T + b2

    z_id, z_ood = np_logits(x_id), np_logits(x_ood)
    view = api.model_view(model, x_id, needs=())
    np.testing.assert_allclose(LogitMargin().idness(view).numpy(), np_margin(z_id), rtol=1e-5, atol=1e-5)

    def batches(x, y=None):
        return [x[i:i + 32] if y is None else (x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]

    out = api.score_model(model, batches(x_id, y_id), {"near-origin": batches(x_ood)}, ["margin", "ada_margin"],
                          class_counts=COUNTS)
    assert (out.id_preds.numpy() == z_id.argmax(1)).all()
    for label, ref in (("margin", lambda z: -np_margin(z)), ("ada_margin", lambda z: np_ada_margin(z, COUNTS))):
        np.testing.assert_allclose(out.id_scores[label].numpy(), ref(z_id), rtol=1e-5, atol=1e-5, err_msg=label)
        np.testing.assert_allclose(out.ood_scores[label]["near-origin"].numpy(), ref(z_ood), rtol=1e-5, atol=1e-5,
                                   err_msg=label)
    auroc = np_auroc(-np_margin(z_id), -np_margin(z_ood))
    assert 0.5 < auroc < 1  # the toy separates them, not perfectly
    assert out.evaluation["margin"]["ood"]["near-origin"]["auroc"] == pytest.approx(auroc, abs=1e-6)

    files = out.save(tmp_path)
    code, text, err = cli("eval", files["margin"], "--json")
    assert code == 0, err
    doc = json.loads(text)
    assert doc["metric"] == "margin"
    assert doc["ood"]["near-origin"]["auroc"] == pytest.approx(auroc, abs=1e-6)
    assert doc["id"]["acc"] == pytest.approx(float((z_id.argmax(1) == y_id.numpy()).mean()))


def make_batch(n: int, m: int, k: int, seed: int) -> AuxBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    proj = torch.nn.functional.normalize(torch.randn(2 * n + m, 8, generator=g), dim=1)
    rows = torch.arange(2 * n + m)
    pair = torch.where(rows < n, rows + n, torch.where(rows < 2 * n, rows - n, -1))
    full = torch.cat([labels, labels, torch.full((m,), -1)])
    is_id = rows < 2 * n
    return AuxBatch(proj, full, is_id, pair, torch.bincount(labels, minlength=k))


@pytest.mark.parametrize("n,m,k,T", [(6, 4, 3, 0.07), (5, 0, 2, 0.07), (4, 5, 4, 0.5)])
def test_supcon_matches_loops(n, m, k, T):
    b = make_batch(n, m, k, seed=n + m)
    cls = entry_point("imood.aux_losses", "supcon")  # what `imood train --aux-ood-loss supcon --T T` builds
    assert cls is SupCon
    loss = cls(T=T) if T != 0.07 else cls()
    assert loss.T == T
    ref = np_supcon(b.projections.numpy(), b.labels.numpy(), b.is_id.numpy(), T)
    assert float(loss(b)) == pytest.approx(ref, rel=1e-4, abs=1e-5)


def test_supcon_ignores_ood_rows_and_has_gradients():
    b = make_batch(6, 4, 3, seed=7)
    proj = b.projections.clone().requires_grad_()
    loss = SupCon()(AuxBatch(proj, b.labels, b.is_id, b.pair, b.class_counts))
    moved = b.projections.clone()
    moved[12:] = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)  # other OOD projections
    moved_loss = SupCon()(AuxBatch(moved, b.labels, b.is_id, b.pair, b.class_counts))
    assert float(moved_loss) == pytest.approx(float(loss.detach()))
    loss.backward()
    assert torch.isfinite(proj.grad).all()
    assert proj.grad[12:].abs().max() == 0  # OOD rows take no part
    assert proj.grad[:12].abs().max() > 0
    # a batch with no ID view gives 0, not NaN
    none = AuxBatch(b.projections[12:], b.labels[12:], b.is_id[12:], b.pair[12:], b.class_counts)
    assert float(SupCon()(none)) == 0.0
