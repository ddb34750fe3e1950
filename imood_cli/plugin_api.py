"""imood's public plugin contract: a plugin imports this module and nothing else of imood.

    from imood_cli.plugin_api import Detector, ModelView, torch

    class LogitMargin(Detector):
        \"\"\"Logit margin: how far the top class leads the runner-up.\"\"\"
        ada_scale = 1.0                      # logit-scale g: c = 1 gives `ada_margin` for free

        def idness(self, view: ModelView):   # [N], higher = more ID
            top2 = view.logits.topk(2, dim=1).values
            return top2[:, 0] - top2[:, 1]

Entry-point groups (pyproject.toml): `imood.ood_metrics` names a Method (or a Score alone, or a 0.2
Detector), `imood.aux_losses` an AuxLoss subclass, `imood.datasets` a class with `load`, `status` and
`prepare` (the `Dataset` protocol; it returns a `Benchmark` of `ImageSet`s). Every field's
shape, dtype and meaning is documented on the classes below; `NEEDS` lists what a detector may ask for.

A test of a model-aware detector builds the view the engine would build with `ModelView.of(outputs, weight=...,
bias=..., logits_from_features=..., logits_from_feature_map=..., logits_from_images=...)`: the model's later
stages as plain callables, no private fields (`imood_cli.api.model_view` builds it from any nn.Module).

`torch` and `F` (torch.nn.functional) here are imported on first use: a plugin that takes them from
this module keeps `imood plugins list` and `imood --help` fast. Importing torch directly works too.
"""

from imood_cli.core.ada import ADA_PREFIX, CORRECTIONS, AdaObjective, AdaScore
from imood_cli.core.contract import (
    NEEDS,
    AuxBatch,
    AuxLoss,
    Configurable,
    Detector,
    LossContext,
    ModelOutputs,
    ModelView,
    OptionError,
    class_probs,
)
from imood_cli.core.dataset import AugmentSpec, Benchmark, Dataset, FileStatus, ImageSet
from imood_cli.core.lazy import F, torch
from imood_cli.core.method import Method, Objective, Paper, Score
from imood_cli.core.percent import check_percentage, percentile
from imood_cli.core.prior import log_beta, log_prior
from imood_cli.errors import ImoodError

Ada = AdaScore  # the 0.2 name: plugins written for 0.2 keep importing it

__all__ = [
    "NEEDS", "ADA_PREFIX", "CORRECTIONS", "Ada", "AdaObjective", "AdaScore", "AugmentSpec", "AuxBatch", "AuxLoss",
    "Benchmark", "Configurable", "Dataset", "FileStatus", "ImageSet",
    "Detector", "LossContext", "Method", "ModelOutputs", "ModelView", "Objective", "OptionError", "ImoodError",
    "Paper", "Score", "check_percentage", "class_probs", "percentile", "log_beta", "log_prior", "torch", "F",
]
