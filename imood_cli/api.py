"""The public Python API, for notebooks and scripts.

    from imood_cli import api
    scores = api.ood_scores("ada_energy", logits, class_counts)          # higher = more OOD
    result = api.evaluate(id_scores, {"svhn": svhn_scores})               # same keys as `imood eval --json`
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from imood_cli.engine.evaluate import evaluate as _evaluate
from imood_cli.engine.evaluate import ood_metrics, shot_groups
from imood_cli.engine.outputs import ModelOutputs
from imood_cli.engine.prior import log_beta, log_prior
from imood_cli.errors import ImoodError
from imood_cli.plugins import registry

__all__ = ["ood_scores", "evaluate", "ood_metrics", "shot_groups", "log_prior", "log_beta", "metric", "list_metrics",
           "ModelOutputs"]


def metric(name: str, ada_scale: float | None = None):
    """A metric instance from the registry (built-in or plugin)."""
    return registry().metric(name, ada_scale=ada_scale)


def list_metrics() -> list[str]:
    return registry().names("metric")


def ood_scores(metric_name: str, logits: torch.Tensor, class_counts: Sequence[int], *, extra_logit=None, features=None,
               logit_adjust: float = 1.0, ada_scale: float | None = None, fit_features=None, fit_labels=None) -> torch.Tensor:
    """OOD scores (higher = more OOD) of one detector from raw model outputs.

    extra_logit: bin_disc's ID-vs-OOD logit [N]; features: penultimate features [N, d] (maha, gradnorm).
    maha needs fit_features / fit_labels (ID training features) to fit its class means and covariance.
    """
    logits = torch.as_tensor(logits)
    if logits.ndim != 2:
        raise ImoodError(f"logits must be [N, K], got shape {tuple(logits.shape)}")
    if logits.shape[1] != len(class_counts):
        raise ImoodError(f"logits have {logits.shape[1]} classes but class_counts has {len(class_counts)}")
    m = registry().metric(metric_name, ada_scale=ada_scale if metric_name.startswith("ada_") else None)
    extra = None if extra_logit is None else torch.as_tensor(extra_logit).reshape(len(logits), -1)
    feats = None if features is None else torch.as_tensor(features)
    if m.needs_fit:
        if fit_features is None or fit_labels is None:
            raise ImoodError(f"{metric_name} must be fitted: pass fit_features and fit_labels (ID training features)")
        m.fit(torch.as_tensor(fit_features), torch.as_tensor(fit_labels).long(), len(class_counts))
    out = ModelOutputs(logits=logits.float(), extra=extra, features=feats)
    return m.ood_score(out, log_prior(class_counts, logit_adjust).float())


def evaluate(id_scores, ood_scores_by_set: dict, *, id_labels=None, id_preds=None, class_counts=None,
             ood_preds_by_set=None, bootstrap: int = 0, seed: int = 0) -> dict:
    """Metrics with the keys of `imood eval --json` (OOD positive, scores higher for more OOD)."""
    as_np = lambda x: None if x is None else (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))  # noqa: E731
    return _evaluate(as_np(id_scores), {k: as_np(v) for k, v in ood_scores_by_set.items()},
                     id_labels=as_np(id_labels), id_preds=as_np(id_preds), class_counts=class_counts,
                     ood_preds_by_set={k: as_np(v) for k, v in (ood_preds_by_set or {}).items()},
                     bootstrap=bootstrap, seed=seed)
