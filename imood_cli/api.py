"""The public Python API, for notebooks and scripts.

    from imood_cli import api
    scores = api.ood_scores("ada_energy", logits, class_counts)          # higher = more OOD
    result = api.evaluate(id_scores, {"svhn": svhn_scores})               # same keys as `imood eval --json`
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from imood_cli.core.contract import ModelOutputs, ModelView
from imood_cli.core.prior import log_beta, log_prior
from imood_cli.engine.evaluate import evaluate as _evaluate
from imood_cli.engine.evaluate import ood_metrics, shot_groups
from imood_cli.errors import ImoodError
from imood_cli.registry import registry

__all__ = ["ood_scores", "evaluate", "ood_metrics", "shot_groups", "log_prior", "log_beta", "detector",
           "list_detectors", "ModelOutputs", "ModelView"]


def detector(name: str, ada_scale: float | None = None, **options):
    """A detector instance from the registry (built-in or plugin); options are its hyperparameters."""
    return registry().detector(name, ada_scale=ada_scale, **options)


def list_detectors() -> list[str]:
    return registry().names("detector")


def ood_scores(detector_name: str, logits, class_counts: Sequence[int], *, extra_logit=None, features=None,
               logit_adjust: float = 1.0, ada_scale: float | None = None, fit_features=None,
               fit_labels=None, fit_logits=None, **options) -> torch.Tensor:
    """OOD scores (higher = more OOD) of one detector from raw model outputs.

    extra_logit: bin_disc's ID-vs-OOD logit [N]; features: penultimate features [N, d] (maha, gradnorm).
    A detector that needs a fit takes the ID training set's fit_features / fit_labels, and fit_logits where
    its fit reads the logits (klm). Detectors that need the model itself (feature maps, classifier weights,
    input gradients) are scored with `imood score` or `engine.score`.
    """
    logits = torch.as_tensor(logits)
    if logits.ndim != 2:
        raise ImoodError(f"logits must be [N, K], got shape {tuple(logits.shape)}")
    if logits.shape[1] != len(class_counts):
        raise ImoodError(f"logits have {logits.shape[1]} classes but class_counts has {len(class_counts)}")
    m = registry().detector(detector_name, ada_scale=ada_scale if detector_name.startswith("ada_") else None,
                            **options)
    missing = set(m.needs) - {"features", "fit"}
    if missing:
        raise ImoodError(f"{detector_name} needs {', '.join(sorted(missing))} of the model: score it with imood score")
    extra = None if extra_logit is None else torch.as_tensor(extra_logit).reshape(len(logits), -1)
    feats = None if features is None else torch.as_tensor(features).float()
    if m.needs_fit:
        if fit_features is None or fit_labels is None:
            raise ImoodError(f"{detector_name} must be fitted: pass fit_features and fit_labels (ID training features)")
        fit_f = torch.as_tensor(fit_features).float()
        # Without fit_logits the fit sees NaN logits: a fit that reads them gives NaN scores, refused below
        fit_z = (torch.full((len(fit_f), logits.shape[1]), float("nan")) if fit_logits is None
                 else torch.as_tensor(fit_logits).float())
        m.fit(ModelView(logits=fit_z, features=fit_f, labels=torch.as_tensor(fit_labels).long()))
    view = ModelView(logits=logits.float(), extra=extra, features=feats)
    scores = m.ood_score(view, log_prior(class_counts, logit_adjust).float())
    if not torch.isfinite(scores).all():
        hint = "; its fit reads the training logits: pass fit_logits" if m.needs_fit and fit_logits is None else ""
        raise ImoodError(f"{detector_name} gave NaN or infinite scores{hint}")
    return scores


def evaluate(id_scores, ood_scores_by_set: dict, *, id_labels=None, id_preds=None, class_counts=None,
             ood_preds_by_set=None, bootstrap: int = 0, seed: int = 0) -> dict:
    """Metrics with the keys of `imood eval --json` (OOD positive, scores higher for more OOD)."""
    def as_np(x):
        if x is None:
            return None
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    return _evaluate(as_np(id_scores), {k: as_np(v) for k, v in ood_scores_by_set.items()},
                     id_labels=as_np(id_labels), id_preds=as_np(id_preds), class_counts=class_counts,
                     ood_preds_by_set={k: as_np(v) for k, v in (ood_preds_by_set or {}).items()},
                     bootstrap=bootstrap, seed=seed)
