"""What a training run is made of, before its first step: the method and aux loss of its options, the
training data, the architecture and its starting weights, the heads that train, the optimizer and schedule."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from imood_cli import __version__
from imood_cli.core.contract import AuxLoss, OptionError
from imood_cli.core.method import DetectorObjective, Objective, Score
from imood_cli.data.base import Benchmark
from imood_cli.data.pipeline.augment import AugmentSpec
from imood_cli.engine.benchmarks import load_benchmark
from imood_cli.engine.training.config import TrainConfig, default_for, spec_name
from imood_cli.errors import ImoodError
from imood_cli.models.imood_model import Architecture, ImOODModel
from imood_cli.registry import aux_label, parse_spec, registry


def augment_spec(cfg: TrainConfig, bench: Benchmark) -> AugmentSpec:
    spec = bench.augment
    over = {
        "crop_padding": cfg.crop_padding, "flip": cfg.flip, "jitter_p": cfg.jitter_p, "grayscale_p": cfg.grayscale_p,
        "jitter": tuple(cfg.color_jitter) if cfg.color_jitter is not None else None,
    }
    return AugmentSpec(**{**spec.to_dict(), **{k: v for k, v in over.items() if v is not None}})


def architecture(cfg: TrainConfig, bench: Benchmark, extra_outputs: int) -> Architecture:
    return Architecture(cfg.model, bench.num_classes, extra_outputs, bench.channels, cfg.cifar_stem)


def model_metadata(cfg: TrainConfig, arch: Architecture, class_counts: list[int], epochs_done: int) -> dict[str, Any]:
    return {
        "format": "imood-model", "imood_version": __version__, "architecture": arch.to_dict(),
        "class_counts": class_counts, "metric": cfg.ood_metric, "aux_loss": cfg.aux_ood_loss,
        "dataset": cfg.dataset, "logit_adjust": cfg.logit_adjust, "epochs": epochs_done, "config": cfg.to_dict(),
    }


def lr_factor(cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if cfg.schedule == "multisteps":
            epoch = step // steps_per_epoch
            return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        return 1.0

    return factor


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """The optimizer with its fused kernel (one launch for all parameters; on the CPU 3-5x faster than the
    per-parameter loop, bench/bench_ops.py), where this torch has one for the device."""
    if cfg.optimizer == "sgd":
        cls, kw = torch.optim.SGD, dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                        weight_decay=cfg.weight_decay)
    else:
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        kw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device in this torch
        return cls(params, **kw)


def used_heads(objective: Objective | None, aux, cfg: TrainConfig) -> dict[str, bool]:
    """Heads that receive gradients; the rest are frozen so DDP needs no unused-parameter search."""
    ood = cfg.Lambda > 0 and objective is not None
    heads = objective.heads if objective is not None else frozenset()
    return {
        "projection": aux.needs_projections and cfg.Lambda2 > 0,
        "lambda_head": ood and "lambda_head" in heads,
        "aux_linear": ood and "aux_linear" in heads,
    }


def freeze_for(model: ImOODModel, train_only: str) -> None:
    """--train-only: keep gradients only for the classifier (and BatchNorm's affine parameters)."""
    if train_only == "all":
        return
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            p.requires_grad_(False)
    if train_only == "bn+classifier":
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(True)


def build_method(cfg: TrainConfig) -> tuple[Score, Objective | None]:
    """The score whose g the run trains and its objective, of `--ood-metric name[:key=value...]` (None: a method
    without an objective trains the classifier alone); --m-in / --m-out reach a method that declares them."""
    name, options = parse_spec(cfg.ood_metric)
    reg = registry()
    declared = reg.get("method", name).method.options_of()
    for key in ("m_in", "m_out"):
        value = getattr(cfg, key)
        if value is not None:
            if key not in declared:
                if value == default_for(key, cfg.dataset):
                    continue  # the benchmark's default margin, meant for the methods that have margins
                raise ImoodError(f"--{key.replace('_', '-')} applies to a method with energy margins "
                                 f"(energy, balenergy), not {name}")
            options.setdefault(key, value)
    if cfg.ada_correction != "full" and not name.startswith("ada_"):
        raise ImoodError(f"--ada-correction {cfg.ada_correction} is a control of an ada_ training loss; "
                         f"{name} has no ImOOD correction to change")
    score, objective = reg.training(name, ada_correction=cfg.ada_correction, **options)
    reads_g = objective is not None and not isinstance(objective, DetectorObjective)  # a 0.2 loss computes its own
    if reads_g and score.needs_fit and not score.tracks_in_training:
        raise ImoodError(f"{name} cannot be trained: {name.removeprefix('ada_')} needs statistics fitted on a trained "
                         f"model and does not track them during training (no train_update); score a trained model "
                         f"with {name} instead")
    return score, objective


# The values config.json recorded for --k and --T when they were not given, before they reached only the aux
# losses that declare them: a run of those days resumed with a loss without them is not warned about them.
LEGACY_AUX_DEFAULTS = {"k": 0.4, "T": 0.07}
AUX_FLAGS = {"k": ("--k", "pascl_k"), "T": ("--T", "temperature")}


def build_aux_loss(cfg: TrainConfig) -> tuple[AuxLoss, list[str]]:
    """The aux loss of `--aux-ood-loss name[:key=value...]` and the warnings to show.

    Its options, lowest first: the class defaults, what the run recorded (config.json's aux_loss_options: a
    resume rebuilds the same loss), `--k` / `--T` when given and the loss declares k / T, the spec's own. A
    recorded option the loss does not have is an error; `--k` / `--T` given to a loss without them, a warning."""
    reg = registry()
    p = reg.get("aux_loss", spec_name(cfg.aux_ood_loss))
    declared = tuple(p.cls.hyperparameters)
    recorded = dict(cfg.aux_loss_options or {})
    stray = [k for k in recorded if k not in declared]
    if stray:
        raise OptionError(f"{aux_label(p)} has no option {stray[0]!r} (options: {', '.join(declared) or 'none'}), "
                          f"which the run recorded in aux_loss_options: it was trained with another version of the "
                          "loss, or the record belongs to another loss")
    warnings = []
    imood = {key: getattr(cfg, field) for key, (_, field) in AUX_FLAGS.items()}
    for key, value in imood.items():
        if value is not None and key not in declared and value != LEGACY_AUX_DEFAULTS[key]:
            hint = f"; set its options as {p.name}:key=value" if declared else ""
            warnings.append(f"{AUX_FLAGS[key][0]} {value:g} does not reach the {aux_label(p)}, which has no option "
                            f"{key} (options: {', '.join(declared) or 'none'}){hint}")
    loss = reg.aux_loss(cfg.aux_ood_loss, **{**recorded, **imood})
    return loss, warnings


def load_training_data(cfg: TrainConfig, needs_aux: bool) -> Benchmark:
    """The ID training set and, when an OOD loss needs it, the auxiliary OOD images: the benchmark's own, or
    those of --aux-ood-dir. Test sets are not loaded: training does not need them. A run that holds out a
    validation split (--eval-every) loads the auxiliary images for it even without an OOD loss, where the
    benchmark has them (without them the split has no OOD part)."""
    wants_aux = needs_aux or cfg.holds_out
    from_folder = wants_aux and cfg.aux_ood_dir is not None
    options = dict(imbalance_ratio=cfg.imbalance_ratio, ood_tests=False)
    try:
        bench = load_benchmark(cfg.dataset, cfg.data_root,
                               num_ood_samples=cfg.num_ood_samples if wants_aux and not from_folder else 0, **options)
    except ImoodError as exc:
        if not wants_aux or from_folder:
            raise
        bare = load_benchmark(cfg.dataset, cfg.data_root, num_ood_samples=0, **options)  # the ID part alone loads?
        if not needs_aux:
            return bare  # the validation split goes without auxiliary images
        raise ImoodError(f"{exc}; or train without the benchmark's auxiliary images: --aux-ood-dir DIR (any "
                         "folder of images), or --Lambda 0 (no OOD loss)") from None
    if from_folder:
        from imood_cli.data.pipeline.folder import load_image_folder

        # The benchmark's own default (30,000 of the 300K file) is not a request about the user's folder
        limit = None if cfg.num_ood_samples == default_for("num_ood_samples", cfg.dataset) else cfg.num_ood_samples
        bench.aux_ood = load_image_folder(Path(cfg.aux_ood_dir), bench.image_size, bench.channels,
                                          limit=limit, option="--aux-ood-dir")
    return bench


def load_test_sets(cfg: TrainConfig) -> Benchmark:
    """The benchmark with its OOD test sets and no auxiliary images, for --eval-on test."""
    return load_benchmark(cfg.dataset, cfg.data_root, imbalance_ratio=cfg.imbalance_ratio, num_ood_samples=0,
                          ood_tests=True)


AUX_WEIGHT_FLOOR = 1e-2


@torch.no_grad()
def conv_output_bytes(model: torch.nn.Module, in_chans: int, size: int, itemsize: int) -> int:
    """Bytes of the convolution and linear outputs of one image's forward pass: a lower bound of what autograd
    keeps per image for the backward pass (it keeps these layers' inputs, and more)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * itemsize

    kinds = (torch.nn.Conv2d, torch.nn.Linear)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, kinds)]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model(torch.zeros(1, in_chans, size, size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total


def orient_aux_linear(head: torch.nn.Linear) -> None:
    """aux_linear starts as the identity: the ImOOD logit is the statistic itself, higher = more ID.

    A model trained with an ada_ loss is scored with the vanilla statistic (docs/concepts.md, "ImOOD
    training"), which is right only if aux_linear is increasing. torch's default init draws its single weight
    from U(-1, 1): on a negative draw the BCE trains the statistic upside down (on digits: ID energies fall,
    auxiliary ones rise, and the vanilla energy score ranks OOD as ID, AUROC near 0)."""
    with torch.no_grad():
        head.weight.fill_(1.0)
        head.bias.zero_()


def keep_aux_linear_increasing(head: torch.nn.Linear) -> None:
    """Projected step: the weight stays above a small floor, so the map cannot turn decreasing mid-run."""
    with torch.no_grad():
        head.weight.clamp_(min=AUX_WEIGHT_FLOOR)


def init_weights(model: ImOODModel, target: Path, metric_name: str) -> None:
    """Start from an imood model's weights; any architecture difference is an error before training."""
    from imood_cli.engine.runs.checkpoint import load_tensors
    from imood_cli.engine.runs.layout import model_path
    from imood_cli.engine.scoring.loading import architecture_of, check_state_dict

    path = model_path(target)
    tensors, meta = load_tensors(path, "model file")
    theirs, ours = architecture_of(meta, path), model.arch
    if theirs.extra_outputs < ours.extra_outputs:
        raise ImoodError(f"{metric_name} needs {ours.extra_outputs} extra classifier output(s), but {path} has "
                         f"{theirs.extra_outputs}: start from scratch, or train a metric without one")
    for name in ("backbone", "num_classes", "in_chans", "cifar_stem", "extra_outputs"):
        if getattr(theirs, name) != getattr(ours, name):
            raise ImoodError(f"{path} has {name} = {getattr(theirs, name)!r}, this run needs "
                             f"{getattr(ours, name)!r}")
    check_state_dict(model, tensors, path)
    model.load_state_dict(tensors)
