import torch

from imood_cli.data.benchmarks.digits import Digits
from imood_cli.data.pipeline.longtail import longtail_counts, longtail_indices


def test_cifar10_lt_counts():
    counts = longtail_counts(5000, 10, 0.01)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406


def test_cifar100_lt_total():
    assert sum(longtail_counts(500, 100, 0.01)) == 10847


def test_longtail_keeps_the_first_images_of_each_class_in_order():
    labels = torch.tensor([1, 0, 1, 0, 1, 0, 2, 1])
    idx = longtail_indices(labels, [2, 3, 1])
    assert idx.tolist() == [0, 1, 2, 3, 4, 6]


def test_digits_benchmark_follows_the_rule():
    b = Digits().load(None)
    counts = torch.bincount(b.train.labels, minlength=6).tolist()
    n_max = counts[0]
    assert counts == [int(n_max * 0.1 ** (k / 5)) for k in range(6)]
    assert b.class_counts == counts
    # the test split stays balanced-ish (a third of each class) and disjoint from OOD digits
    test_counts = torch.bincount(b.test.labels, minlength=6)
    assert test_counts.min() >= 55 and b.test.labels.max() == 5
    assert set(b.ood_tests) == {"digits-6-9", "flower-patches", "noise"}
    assert all((s.labels == -1).all() for s in b.ood_tests.values())
    assert b.train.images.dtype == torch.uint8 and b.train.images.shape[1:] == (1, 8, 8)


def test_digits_is_deterministic_and_ratio_is_an_option():
    a, b = Digits().load(None), Digits().load(None)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.aux_ood.images, b.aux_ood.images)
    c = Digits().load(None, imbalance_ratio=0.5)
    assert sum(c.class_counts) > sum(a.class_counts)
