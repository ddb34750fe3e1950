"""What a model hands to metrics and losses, named so nobody slices tensors by position."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutputs:
    """One forward pass over a batch.

    logits: [N, K] class logits z (never the extra outputs).
    extra: [N, E] extra outputs (bin_disc's ID-vs-OOD logit is column 0), or None.
    features: [N, d] penultimate features f, or None when not kept.
    projections: [N, p] L2-normalised projections for contrastive aux losses, or None.
    lambdas: [N, K] λ(x) of the ImOOD λ head, or None.
    """

    logits: torch.Tensor
    extra: torch.Tensor | None = None
    features: torch.Tensor | None = None
    projections: torch.Tensor | None = None
    lambdas: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    def float(self) -> "ModelOutputs":
        """The same outputs in float32 (after bf16 autocast)."""
        conv = lambda t: None if t is None else t.float()  # noqa: E731
        return ModelOutputs(*(conv(getattr(self, f)) for f in ("logits", "extra", "features", "projections", "lambdas")))

    @staticmethod
    def cat(parts: list["ModelOutputs"]) -> "ModelOutputs":
        def join(name):
            ts = [getattr(p, name) for p in parts]
            return None if ts[0] is None else torch.cat(ts)

        return ModelOutputs(*(join(f) for f in ("logits", "extra", "features", "projections", "lambdas")))
