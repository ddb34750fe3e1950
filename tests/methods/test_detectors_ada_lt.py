"""The ada_ forms of entropy, maxlogit, gen, klm, odin and fdbd on a toy long-tailed problem (docs/concepts.md): the
prior correction moves tail-class ID samples toward ID and head-class ones toward OOD."""

import pytest
import torch
from detector_toys import long_tail_toy, mean_rank

from imood_cli.core.prior import log_beta
from imood_cli.registry import Registry

NAMES = ["entropy", "maxlogit", "gen", "klm", "odin", "fdbd"]


@pytest.fixture(scope="module")
def toy():
    return long_tail_toy()


@pytest.fixture(scope="module")
def registry():
    return Registry()


def scored(registry, toy, name, tau=1.0):
    ada = registry.score(f"ada_{name}")
    if ada.needs_fit:
        ada.fit(toy.train_view())
    view, lp = toy.test_view(), toy.log_prior(tau)
    return ada, view, lp, ada.base.ood_score(view, lp), ada.ood_score(view, lp)


def test_the_toy_is_long_tailed(toy):
    assert toy.counts[0] / toy.counts[-1] == 50
    pred = toy.test_view().logits.argmax(1)
    head_recall = (pred[toy.test_y <= 2] == toy.test_y[toy.test_y <= 2]).float().mean()
    predicted_head = (pred <= 2).float().mean()
    assert head_recall > 0.9 and predicted_head > 0.3  # a head-biased classifier, as plain CE trains on LT data


@pytest.mark.parametrize("name", NAMES)
def test_ada_moves_tail_toward_id_and_head_toward_ood(registry, toy, name):
    ada, view, lp, vanilla, corrected = scored(registry, toy, name)
    tail, head = toy.test_y >= 7, toy.test_y <= 2
    assert mean_rank(corrected, tail) < mean_rank(vanilla, tail) - 0.01
    assert mean_rank(corrected, head) > mean_rank(vanilla, head) + 0.01
    # The correction itself: ood = −(g + c·log β̂), log β̂ in float64 from p and π̃.
    p = torch.softmax(view.logits.double(), 1)
    beta = (p / lp.double().exp()).mean(1)
    expected = -(ada.base.idness(view).double() + ada.scale * beta.log())
    torch.testing.assert_close(corrected.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_beta(view.logits, lp).double(), beta.log(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_uniform_prior_leaves_the_vanilla_ranking(registry, toy, name):
    _, _, _, vanilla, corrected = scored(registry, toy, name, tau=0.0)
    # τ = 0: log β̂ = 0, so ada_ ranks exactly as the vanilla score (odin's −max S is monotone in its g).
    # (odin's vanilla max S ≈ 1/K is float32: rows within its resolution may swap by ~1e-4 in g.)
    in_vanilla_order = corrected.double()[vanilla.double().argsort()]
    assert bool((in_vanilla_order.diff() >= -1e-4).all())


def test_fdbd_c_is_measured_on_the_id_training_set(registry, toy):
    ada, *_ = scored(registry, toy, "fdbd")
    g = ada.base.idness(toy.train_view()).double()
    assert ada.scale == pytest.approx(0.1 * float(g.std()), rel=1e-4)
