"""Shared fixtures for detector tests: the micro ResNet seen through imood's ModelAccess (as `imood score`
sees a model), and a toy long-tailed problem with a classifier actually trained on it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imood_cli.core.contract import ModelOutputs, ModelView
from imood_cli.core.prior import log_prior
from imood_cli.engine import runtime
from imood_cli.engine.scoring.infer import ModelAccess
from imood_cli.models.imood_model import Architecture, ImOODModel

NEEDS_ALL = {"features", "classifier", "feature_map", "input_grad"}


def micro_model(num_classes: int = 6, in_chans: int = 3, seed: int = 0, logit_gain: float = 20.0) -> ImOODModel:
    """The digits-sized ResNet in eval mode, classifier scaled so the logits spread over several units."""
    torch.manual_seed(seed)
    model = ImOODModel(Architecture("imood_resnet_micro", num_classes, 0, in_chans, True)).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(logit_gain)
        model.classifier.bias.uniform_(-1.0, 1.0)
    return model


def micro_view(model: ImOODModel, x: torch.Tensor, labels: torch.Tensor | None = None,
               needs: set[str] = NEEDS_ALL) -> ModelView:
    """The view `imood score` builds for a batch: one no-grad forward, the declared model parts."""
    with torch.no_grad():
        out = model(x, feature_map=True).float()
    return ModelAccess(model, runtime.setup("cpu")).view(out, needs, images=x, labels=labels)


class ToyNet(nn.Module):
    """Two-layer MLP over "images" [N, d, 1, 1]: features after the ReLU, then a linear classifier."""

    def __init__(self, d: int, hidden: int, k: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, k)

    def forward(self, x):
        f = self.body(x)
        return f, self.classifier(f)


@dataclass
class LongTailToy:
    model: ToyNet
    counts: list[int]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def log_prior(self, tau: float = 1.0) -> torch.Tensor:
        return log_prior(self.counts, tau).float()

    def view(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> ModelView:
        model = self.model
        with torch.no_grad():
            f, z = model(x)
        return ModelView.of(ModelOutputs(z, features=f), labels=labels, images=x,
                            weight=model.classifier.weight.detach(), bias=model.classifier.bias.detach(),
                            _head_from_features=lambda t: model.classifier(t),
                            _forward=lambda t: model(t)[1])

    def train_view(self) -> ModelView:
        return self.view(self.train_x, self.train_y)

    def test_view(self) -> ModelView:
        return self.view(self.test_x, self.test_y)


def long_tail_toy(num_classes: int = 10, head: int = 300, ratio: float = 0.02, per_test_class: int = 200,
                  d: int = 8, seed: int = 0) -> LongTailToy:
    """Overlapping Gaussian classes with counts n_k = int(head · ratio^(k/(K−1))) (class 0 the largest), a
    classifier trained on them with plain cross-entropy (so it favours the head classes, as long-tailed
    training does) and a balanced test set."""
    g = torch.Generator().manual_seed(seed)
    k = num_classes
    means = torch.randn(k, d, generator=g) * 1.6
    counts = [int(head * ratio ** (c / (k - 1))) for c in range(k)]

    def draw(per_class):
        y = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
        x = means[y] + torch.randn(len(y), d, generator=g)
        return x[:, :, None, None], y

    train_x, train_y = draw(counts)
    test_x, test_y = draw([per_test_class] * k)
    torch.manual_seed(seed)
    model = ToyNet(d, 32, k)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small only lose to thread hand-offs on busy cores
    try:
        for _ in range(300):
            opt.zero_grad()
            nn.functional.cross_entropy(model(train_x)[1], train_y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval().requires_grad_(False)
    return LongTailToy(model, counts, train_x, train_y, test_x, test_y)


def mean_rank(scores: torch.Tensor, rows: torch.Tensor) -> float:
    """Mean rank (0 = least OOD, 1 = most OOD) of `rows` among all scored ID samples."""
    ranks = scores.double().argsort().argsort().double() / (scores.numel() - 1)
    return float(ranks[rows].mean())
