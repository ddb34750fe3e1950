"""OOD metrics against scikit-learn, on random and on heavily tied scores (docs/concepts.md)."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from imood_cli import api
from imood_cli.engine.metrics.evaluate import evaluate
from imood_cli.engine.metrics.groups import group_errors, id_accuracy, shot_groups
from imood_cli.engine.metrics.ranking import bootstrap_ci, detection_metrics
from imood_cli.errors import ImoodError


def sklearn_reference(id_s, ood_s):
    s = np.r_[ood_s, id_s]
    y = np.r_[np.ones(len(ood_s)), np.zeros(len(id_s))]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {"auroc": roc_auc_score(y, s), "aupr_out": average_precision_score(y, s),
            "aupr_in": average_precision_score(1 - y, -s), "fpr95": fpr[np.argmax(tpr >= 0.95)]}


@pytest.mark.parametrize("seed", range(40))
def test_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(1, 300, 2)
    if seed % 3 == 0:  # heavy ties: few distinct values shared by both sets
        id_s = rng.integers(0, 5, n_id).astype(float)
        ood_s = rng.integers(1, 6, n_ood).astype(float)
    elif seed % 3 == 1:
        id_s = rng.normal(size=n_id)
        ood_s = rng.normal(1, size=n_ood)
    else:  # float32-rounded scores, as models produce
        id_s = rng.normal(size=n_id).astype(np.float32).astype(float).round(2)
        ood_s = rng.normal(0.5, size=n_ood).astype(np.float32).astype(float).round(2)
    got = detection_metrics(id_s, ood_s)
    ref = sklearn_reference(id_s, ood_s)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


def test_fpr95_is_the_id_fraction_at_the_first_threshold_reaching_95_recall():
    ood = np.arange(100, 120, dtype=float)  # 20 OOD: 95% recall = 19 detected → threshold 101
    id_s = np.array([0.0, 101.0, 102.0, 50.0])
    m = detection_metrics(id_s, ood)
    assert m["threshold"] == 101.0
    assert m["fpr95"] == pytest.approx(2 / 4)


def test_perfect_and_inverted_separation():
    assert detection_metrics([0, 1, 2], [5, 6])["auroc"] == 1.0
    assert detection_metrics([0, 1, 2], [5, 6])["fpr95"] == 0.0
    assert detection_metrics([5, 6], [0, 1, 2])["auroc"] == 0.0


@pytest.mark.parametrize("bad", [[np.nan, 1.0], [np.inf, 0.0]])
def test_non_finite_scores_are_refused(bad):
    with pytest.raises(ImoodError, match="NaN or infinite"):
        detection_metrics([0.0, 1.0], bad)


def test_empty_sets_are_refused():
    with pytest.raises(ImoodError, match="no scores"):
        detection_metrics([], [1.0])
    with pytest.raises(ImoodError, match="no OOD set"):
        evaluate([1.0], {})


def test_shot_groups_cifar10_lt():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    g = shot_groups(counts)
    assert g["many"].tolist() == [0, 1, 2]
    assert g["medium"].tolist() == [3, 4, 5, 6]
    assert g["few"].tolist() == [7, 8, 9]


def test_shot_groups_large_k_use_absolute_counts():
    counts = [150] * 100 + [50] * 50 + [10] * 50
    g = shot_groups(counts)
    assert len(g["many"]) == 100 and len(g["medium"]) == 50 and len(g["few"]) == 50


def test_id_accuracy_per_group_averages_per_class_accuracy():
    counts = [100, 50, 20, 10, 5, 2]  # K=6: many > counts[2]=20 → {0,1}; few < counts[4]=5 → {5}
    labels = np.array([0, 0, 1, 2, 3, 4, 5, 5, 5, 5])
    preds = np.array([0, 1, 1, 2, 0, 4, 5, 0, 0, 0])
    acc = id_accuracy(labels, preds, counts)
    assert acc["acc"] == pytest.approx(5 / 10)
    assert acc["many"] == pytest.approx((0.5 + 1.0) / 2)
    assert acc["medium"] == pytest.approx((1 + 0 + 1) / 3)
    assert acc["few"] == pytest.approx(0.25)


def test_group_errors_by_hand():
    counts = [100, 50, 20, 10, 5, 2]
    id_scores = np.array([0.9, 0.1, 0.2, 0.95, 0.3, 0.99])
    id_labels = np.array([0, 1, 2, 3, 4, 5])
    ood_scores = np.array([0.5, 0.95, 0.2, 0.1])
    ood_preds = np.array([0, 5, 1, 3])
    e = group_errors(id_scores, id_labels, ood_scores, ood_preds, 0.9, counts)
    assert e["id_flagged_as_ood"] == {"many": 0.5, "medium": pytest.approx(1 / 3), "few": 1.0}
    # accepted (score < 0.9): preds 0 (many), 1 (many), 3 (medium)
    assert e["ood_accepted_as"] == {"many": 0.5, "medium": 0.25, "few": 0.0}


def test_evaluate_schema_and_unweighted_mean():
    rng = np.random.default_rng(0)
    id_s = rng.normal(size=50)
    sets = {"a": rng.normal(1, size=30), "b": rng.normal(2, size=300)}
    r = api.evaluate(id_s, sets, id_labels=rng.integers(0, 3, 50), id_preds=rng.integers(0, 3, 50),
                     class_counts=[30, 10, 3])
    assert set(r["ood"]) == {"a", "b", "mean"}
    for k in ("auroc", "aupr_in", "aupr_out", "fpr95"):
        assert r["ood"]["mean"][k] == pytest.approx((r["ood"]["a"][k] + r["ood"]["b"][k]) / 2)
    assert set(r["id"]) >= {"acc", "many", "medium", "few"}
    assert "ood" in r["fpr95_convention"].lower()


def test_bootstrap_interval_contains_the_estimate():
    rng = np.random.default_rng(0)
    id_s, ood_s = rng.normal(size=400), rng.normal(1, size=400)
    ci = bootstrap_ci(id_s, ood_s, 200, seed=1)
    m = detection_metrics(id_s, ood_s)
    for k in ("auroc", "fpr95"):
        assert ci[k][0] <= m[k] <= ci[k][1]
        assert ci[k][1] - ci[k][0] < 0.2
