"""A tiny imood model and the views the engine would hand its detectors, for the feature/activation
detector tests (react, ash, scale, dice, vim, knn, rmd)."""

from __future__ import annotations

import numpy as np
import torch

from imood_cli.engine import runtime
from imood_cli.engine.scoring.infer import ModelAccess
from imood_cli.models.imood_model import Architecture, ImOODModel

NUM_CLASSES = 4
SIZE = 16  # 16×16 inputs through the micro ResNet with the CIFAR stem: a 128 × 2 × 2 feature map


def tiny_model(seed: int = 0) -> ImOODModel:
    """imood_resnet_micro with random weights and BN statistics, so features and logits vary by input."""
    torch.manual_seed(seed)
    model = ImOODModel(Architecture("imood_resnet_micro", NUM_CLASSES, 0, 3, True))
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    with torch.no_grad():
        model.classifier.weight.mul_(4.0)
        model.classifier.bias.copy_(torch.randn(NUM_CLASSES, generator=g) * 0.1)
    return model.eval()


def images(n: int, seed: int) -> torch.Tensor:
    """Noise images with a per-image colour and contrast, so that features differ between images."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.randn(n, 3, 1, 1, generator=g) * 2
    contrast = torch.rand(n, 1, 1, 1, generator=g) * 3
    return torch.randn(n, 3, SIZE, SIZE, generator=g) * contrast + colour


def labels(n: int, seed: int) -> torch.Tensor:
    """Every class present (a fit needs all of them), then random."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.arange(NUM_CLASSES), torch.randint(0, NUM_CLASSES, (n - NUM_CLASSES,), generator=g)])


@torch.no_grad()
def view(model: ImOODModel, x: torch.Tensor, needs, labels: torch.Tensor | None = None):
    """The ModelView the engine builds for detectors declaring `needs` (one forward, feature map kept)."""
    out = model(x, feature_map=True).float()
    return ModelAccess(model, runtime.setup("cpu")).view(out, set(needs), images=x, labels=labels)


def fitted(detector, model: ImOODModel, train_x: torch.Tensor, train_y: torch.Tensor):
    """`detector` fitted as the engine fits it: a view of the training set with labels and the classifier."""
    detector.fit(view(model, train_x, {"classifier"}, labels=train_y))
    return detector


def np_log_beta(logits, counts, tau: float = 1.0) -> np.ndarray:
    """log β̂ = log((1/K) Σ_k p_k / π̃_k), π̃ ∝ π^τ, in float64 numpy (docs/concepts.md)."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pi = np.asarray(counts, np.float64) / np.sum(counts)
    prior = pi ** tau / np.sum(pi ** tau)
    return np.log(np.mean(p / prior, axis=1))


def np_logsumexp(z) -> np.ndarray:
    z = np.asarray(z, np.float64)
    top = z.max(1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(1, keepdims=True)))[:, 0]


def gaussian_problem(k=5, d=32, n=3000, seed=0):
    """Well-conditioned class clusters (train, labels), broader test features and a linear head (weight, bias)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g) * 2
    mix = torch.randn(d, d, generator=g) / d ** 0.5 + torch.eye(d)
    y = torch.cat([torch.arange(k), torch.randint(0, k, (n - k,), generator=g)])
    train = means[y] + torch.randn(n, d, generator=g) @ mix
    test = torch.randn(300, d, generator=g) * 2 @ mix
    weight, bias = torch.randn(k, d, generator=g) * 0.5, torch.randn(k, generator=g)
    return train, y, test, weight, bias


def np_vim(train, test, test_logits, weight, bias, dim):
    """The paper's ViM in float64 numpy: (g on test, α, g on train)."""
    f, t = train.astype(np.float64), test.astype(np.float64)
    w, b = weight.astype(np.float64), bias.astype(np.float64)
    u = -np.linalg.pinv(w) @ b
    centred = f - u
    values, vectors = np.linalg.eigh(centred.T @ centred / len(f))
    order = np.argsort(values)[::-1]
    residual_space = vectors[:, order[dim:]]  # eigenvectors beyond the D largest eigenvalues
    train_logits = f @ w.T + b
    alpha = train_logits.max(1).mean() / np.linalg.norm(centred @ residual_space, axis=1).mean()
    g_test = np_logsumexp(test_logits) - alpha * np.linalg.norm((t - u) @ residual_space, axis=1)
    g_train = np_logsumexp(train_logits) - alpha * np.linalg.norm(centred @ residual_space, axis=1)
    return g_test, alpha, g_train
