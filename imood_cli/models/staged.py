"""A classifier in stages, as the scoring engine sees every model: imood's own and any nn.Module.

`StagedClassifier` is what the engine asks of a model: one forward pass giving the logits, the pooled
features and (on demand) the feature map; the head re-run on a modified map or modified features; the
classifier's weight and bias; and which of these the model has (`capabilities`, from one probe pass).
`StagedModel` wraps any module through its family's adapter; `ImOODModel` is imood's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from imood_cli.core.contract import ModelOutputs
from imood_cli.errors import ImoodError
from imood_cli.models.adapter import STAGES, Adapter, Capabilities, adapter_for


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for a probe pass, then every submodule's own mode back (a model may freeze some BN layers)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class StagedClassifier(nn.Module):
    adapter: Adapter

    @property
    def has_classifier(self) -> bool:
        raise NotImplementedError

    def logits_from_feature_map(self, m: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def capabilities(self, x: torch.Tensor) -> Capabilities:
        """Which stages detectors can have, from one pass over `x` (eval mode, restored after)."""
        with eval_mode(self):
            out = self(x, feature_map=True)
        got = set()
        m, f = out.feature_map, out.features
        if m is not None and m.ndim == 4 and self.adapter.spatial_map:
            got.add("feature_map")
        if f is not None and f.ndim == 2 and f.shape[0] == x.shape[0]:
            got.add("features")
            if self.has_classifier:
                got.add("classifier")
        missing = {}
        for stage in STAGES:
            if stage in got:
                continue
            why = self.adapter.missing(self._source_module(), stage)
            if stage == "feature_map" and m is not None and m.ndim != 4 and self.adapter.spatial_map:
                why = f"its last stage has shape {tuple(m.shape)} (tokens?), not a spatial map [N, C, H, W]"
            missing[stage] = why
        return Capabilities(self.adapter.family, frozenset(got), missing)

    def _source_module(self) -> nn.Module:
        return self


class StagedModel(StagedClassifier):
    """Any classifier module (its own classifier inside) seen in stages through an adapter.

    The adapter is its family's (`adapter.adapter_for`) unless one is given, e.g. an `adapter.Split` of
    callables. `check(x)` verifies once that the split reproduces the module's logits.
    """

    def __init__(self, module: nn.Module, adapter: Adapter | None = None) -> None:
        super().__init__()
        self.module = module
        self.adapter = adapter if adapter is not None else adapter_for(module)
        self.training = module.training  # the wrapper follows the module's mode

    def _source_module(self) -> nn.Module:
        return self.module

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def has_classifier(self) -> bool:
        return self.adapter.classifier(self.module) is not None

    def forward(self, x: torch.Tensor, feature_map: bool = False, **_: bool) -> ModelOutputs:
        s = self.adapter.run(self.module, x)
        logits = s.logits
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            what = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ImoodError(f"the model returned {what}, not logits [N, K]: score a module whose forward returns "
                             "the class logits")
        keep_map = feature_map and self.adapter.spatial_map
        return ModelOutputs(logits, features=s.features, feature_map=s.feature_map if keep_map else None)

    def logits_from_feature_map(self, m: torch.Tensor) -> torch.Tensor:
        return self.adapter.forward_head(self.module, m)

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        head = self.adapter.classifier(self.module)
        if head is None:
            raise ImoodError(f"{type(self.module).__name__} has no linear classifier imood can re-run")
        return head(f)

    def class_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        head = self.adapter.classifier(self.module)
        if head is None:
            raise ImoodError(f"{type(self.module).__name__} has no linear classifier")
        bias = head.bias if head.bias is not None else torch.zeros(head.out_features, device=head.weight.device)
        return head.weight, bias

    @torch.no_grad()
    def check(self, x: torch.Tensor) -> str | None:
        """None when the adapter's stages reproduce the module's own logits on `x`; else what differs. A module
        split at its last linear layer whose logits do not come from that layer falls back to logits only."""
        with eval_mode(self):
            own = self.module(x)
            staged = self(x, feature_map=True)
            if not isinstance(own, torch.Tensor):
                return f"its forward returns {type(own).__name__}, not a logits tensor"
            problem = None
            if own.shape != staged.logits.shape or not torch.allclose(own, staged.logits, rtol=1e-4, atol=1e-5):
                problem = "the split's logits differ from the model's"
            elif self.has_classifier and staged.features is not None:
                again = self.logits_from_features(staged.features)
                if again.shape != own.shape or not torch.allclose(again, own, rtol=1e-4, atol=1e-5):
                    problem = "its last linear layer does not make its logits"
        return problem

