"""Long-tailed subsampling with the CIFAR-LT rule (Cao et al., 2019), docs/data.md."""

from __future__ import annotations

from imood_cli.core.lazy import torch
from imood_cli.errors import ImoodError


def check_imbalance_ratio(ratio: float) -> None:
    if not 0 < ratio <= 1:
        raise ImoodError(f"--imbalance_ratio must be in (0, 1], got {ratio}")


def longtail_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """n_k = int(n_max · ρ^(k / (K - 1)))."""
    check_imbalance_ratio(ratio)
    if num_classes == 1:
        return [n_max]
    return [int(n_max * ratio ** (k / (num_classes - 1))) for k in range(num_classes)]


def longtail_indices(labels: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Indices of the first counts[k] images of each class k, in the original order."""
    keep = []
    for k, n in enumerate(counts):
        idx = torch.nonzero(labels == k).flatten()
        if len(idx) < n:
            raise ImoodError(f"class {k} has {len(idx)} images, fewer than the {n} the long-tail split needs")
        keep.append(idx[:n])
    return torch.sort(torch.cat(keep)).values
