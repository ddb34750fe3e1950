"""The OOD-metric contract (DESIGN.md "Plugin protocols").

A metric turns model outputs into an ID-ness statistic g(x) (higher = more ID). Optional parts:
a training loss, a fit on ID training features, and `ada_scale`, the c of the ImOOD post-hoc
normalization; a metric that declares it gets an `ada_<name>` form from the registry for free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from imood_cli.engine.outputs import ModelOutputs


@dataclass
class LossContext:
    """What an OOD training loss may need beside the outputs.

    Rows are [ID views ; auxiliary OOD]; `labels` covers the ID rows only.
    """

    is_id: torch.Tensor  # bool [N]
    labels: torch.Tensor  # long [N_id]
    log_prior: torch.Tensor  # log π̃ [K]
    aux_linear: Callable[[torch.Tensor], torch.Tensor] | None = None
    num_id: int | None = None  # ID rows come first: rows [:num_id] are ID (slicing needs no host sync)

    def __post_init__(self) -> None:
        if self.num_id is None:
            self.num_id = int(self.labels.shape[0])


class OODMetric:
    """Base class for OOD metrics; subclasses set the attributes and implement `idness`."""

    name: str = ""
    extra_outputs: int = 0  # extra classifier outputs the metric reads (bin_disc: 1)
    needs_features: bool = False  # reads ModelOutputs.features
    needs_fit: bool = False  # must be fitted on ID training features before scoring
    ada_scale: float | None = None  # c in ood = -(g + c log β̂); None: no ada_ form
    idness_is_logit: bool = False  # g is already an ID-vs-OOD logit (ImOOD training skips aux_linear)
    ada_keeps_loss: bool = False  # the ada_ training loss also adds this metric's own loss
    has_loss: bool = False  # implements `loss` (else training adds no OOD loss: post-hoc only)

    def idness(self, out: ModelOutputs) -> torch.Tensor:
        raise NotImplementedError

    def ood_score(self, out: ModelOutputs, log_prior: torch.Tensor) -> torch.Tensor:
        """Vanilla OOD score (higher = more OOD); the prior is unused by vanilla metrics."""
        return -self.idness(out)

    def loss(self, out: ModelOutputs, ctx: LossContext) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no training loss")

    # Fitting (maha and friends). The state travels as a flat dict of tensors so it can be cached
    # in a safetensors file next to the checkpoint.
    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        pass

    def fit_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_fit_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def train_update(self, out: ModelOutputs, ctx: LossContext) -> None:
        """Called each training step before `idness`, for metrics whose statistic tracks the batch."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def class_probs(out: ModelOutputs) -> torch.Tensor:
    return torch.softmax(out.logits.float(), dim=1)
