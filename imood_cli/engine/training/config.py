"""Every training option, declared once: its type, default, per-benchmark defaults, help and flags.

The Typer options of `imood train`, the `--config` TOML loader, `config.json`, the `--help` text and
the README's option table are all derived from the fields of `TrainConfig`, so they cannot disagree.
Precedence, lowest first: the field default, the benchmark's default, a `--config` file, then the
command-line options a user actually typed. This module imports nothing heavy: `imood train --help`
builds from it without torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imood_cli.errors import ImoodError, unknown_name
from imood_cli.fs.safe import NotRegularFile, parse_json, parse_toml, read_text

DATASET_ALIASES = {"imagenet_lt": "imagenet", "imagenet-lt": "imagenet", "cifar10-lt": "cifar10",
                   "cifar100-lt": "cifar100"}
SCHEDULE_ALIASES = {"cos": "cosine", "multistep": "multisteps", "step": "multisteps", "const": "constant"}
GROUPS = ("What to train", "Method", "Optimisation", "Augmentation", "Machinery", "Validation")


@dataclass(frozen=True)
class Option:
    """How one TrainConfig field appears to users."""

    help: str
    flags: tuple[str, ...]  # the first is the primary name; the rest are aliases (the reference code's among them)
    group: str
    per_benchmark: dict[str, Any]  # benchmark -> its default, where it differs from the field default
    check: Callable[[Any], str | None] | None  # returns what is wrong with a value, or None
    choices: tuple[str, ...] | None
    resumable: bool  # may change on `--resume`
    default_text: str | None  # how --help and the README show a default that is not a plain value
    metavar: str | None


def opt(default: Any, help: str, *flags: str, group: str, per_benchmark: dict | None = None,
        check: Callable[[Any], str | None] | None = None, choices: tuple[str, ...] | None = None,
        resumable: bool = False, default_text: str | None = None, metavar: str | None = None):
    meta = Option(help, flags, group, per_benchmark or {}, check, choices, resumable, default_text, metavar)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"option": meta})
    return field(default=default, metadata={"option": meta})


def at_least(low: float, strict: bool = False) -> Callable[[Any], str | None]:
    def check(v):
        if v is None:
            return None
        return None if (v > low if strict else v >= low) else f"must be {'>' if strict else '>='} {low:g}"
    return check


def within(low: float, high: float, low_open: bool = False) -> Callable[[Any], str | None]:
    """A range check; the upper bounds of the options are generous, but they keep every value a number torch
    and the step arithmetic can hold (a seed past 2^63, a 1e308 jitter or 10^9 threads used to crash)."""
    def check(v):
        if v is None:
            return None
        ok = (low < v if low_open else low <= v) and v <= high
        shown = (lambda x: f"{x:,}" if isinstance(x, int) else f"{x:g}")
        return None if ok else f"must be in {'(' if low_open else '['}{shown(low)}, {shown(high)}]"
    return check


def plain_name(v: Any) -> str | None:
    if v is None:
        return None
    if not v or "/" in v or "\\" in v or not v.isprintable() or v in (".", "..") or v.strip() != v:
        return "must be a plain folder name (no slash, control character or surrounding spaces; not . or ..)"
    return None


def no_nul(v: Any) -> str | None:
    return "must not contain a NUL character" if isinstance(v, str) and "\x00" in v else None


def jitter_ok(v: Any) -> str | None:
    if v is None:
        return None
    if len(v) != 4 or any(x < 0 for x in v) or any(x > 100 for x in v[:3]) or v[3] > 0.5:
        return "takes four numbers brightness,contrast,saturation,hue: each in [0, 100], hue <= 0.5"
    return None


WHAT, METHOD, OPTIM, AUG, MACHINE, VALID = GROUPS
EVAL_ON = ("val", "test", "val+test")
# The built-in benchmarks' own augmentation (their AugmentSpec; a test keeps the two in step).
BENCHMARK_AUGMENT = {
    "crop_padding": "the benchmark's: 4 (CIFAR), 1 (digits), 2 (glyphs), 0 (ImageNet: RandomResizedCrop in the "
                    "loader)",
    "flip": "the benchmark's: on (CIFAR), off (digits, glyphs; ImageNet flips in the loader)",
    "jitter": "the benchmark's: 0.4,0.4,0.4,0.1 (CIFAR, ImageNet), none (digits, glyphs)",
    "jitter_p": "the benchmark's: 0.8 (CIFAR, ImageNet), 0 (digits, glyphs)",
    "grayscale_p": "the benchmark's: 0.2 (CIFAR, ImageNet), 0 (digits, glyphs)",
}


@dataclass
class TrainConfig:
    # what to train
    dataset: str = opt("digits", "Benchmark: digits, glyphs, cifar10, cifar100, imagenet, a plugin's, or your own "
                       "images prepared with `imood data prepare folder --name NAME`.",
                       "--dataset", "--ds", group=WHAT, check=no_nul, metavar="NAME")
    data_root: str = opt("data", "Folder that holds every dataset ($DATA).", "--data-root", "--drp",
                         "--data_root_path", group=WHAT, check=no_nul, metavar="DIR")
    save_root: str = opt("runs", "Where run folders go.", "--save-root", "--srp", "--save_root_path", group=WHAT,
                         check=no_nul, metavar="DIR")
    name: str | None = opt(None, "Run folder name.", "--name", group=WHAT, check=plain_name,
                           default_text="<dataset>-<metric>-<aux loss>", metavar="NAME")
    model: str = opt("resnet18", "Any timm model name.", "--model", "--md", group=WHAT,
                     per_benchmark={"imagenet": "resnet50", "digits": "imood_resnet_micro",
                                    "glyphs": "imood_resnet_micro"}, check=no_nul, metavar="NAME")
    cifar_stem: bool = opt(True, "3×3 stride-1 first conv, no max-pool (ResNet-style backbones).",
                           "--cifar-stem/--no-cifar-stem", group=WHAT,
                           # glyphs: 32×32 images through the ImageNet stem (7×7 stride 2, max-pool) leave the
                           # blocks an 8×8 map, as digits' 8×8 images do with the CIFAR stem, at 1/16 of its cost
                           per_benchmark={"imagenet": False, "glyphs": False})
    pretrained: bool = opt(False, "Start from timm's pretrained weights (needs the network once).",
                           "--pretrained/--no-pretrained", group=WHAT)
    init_from: str | None = opt(None, "Start from the weights of this imood model (a run folder or its "
                                "model.safetensors; a reference .pth: imood import-ckpt it first).",
                                "--ckpt-path", "--ckpt_path", group=WHAT, check=no_nul, metavar="RUN")
    aux_ood_dir: str | None = opt(None, "Take the auxiliary OOD training images from this folder of images "
                                  "instead of the benchmark's own.", "--aux-ood-dir", group=WHAT, check=no_nul,
                                  metavar="DIR")
    # the method
    ood_metric: str = opt("ada_bin_disc", "The method: one with a training objective (oe, energy, bin_disc, ...), "
                          "ada_<name> for the ImOOD regularizer on its score, or a plugin's; name:key=value sets "
                          "its options (training and scoring ones).",
                          "--ood-metric", "-m", "--ood_metric", group=METHOD, check=no_nul, metavar="NAME")
    aux_ood_loss: str = opt("pascl", "Auxiliary loss: pascl, simclr, none, or a plugin's; name:key=value sets its "
                            "options (pascl:k=0.5:T=0.1), which win over --k and --T.", "--aux-ood-loss",
                            "--aux_ood_loss", group=METHOD, check=no_nul, metavar="NAME")
    Lambda: float = opt(0.5, "Weight of the OOD loss.", "--Lambda", "--lambda-ood", group=METHOD,
                        check=within(0, 1e6), metavar="W")
    Lambda2: float = opt(0.05, "Weight of the aux loss.", "--Lambda2", "--lambda-aux", group=METHOD,
                         check=within(0, 1e6), metavar="W")
    logit_adjust: float = opt(1.0, "τ: prior π̃ ∝ π^τ for logit-adjusted CE and every ada_ term; 0 is the uniform "
                              "prior, which turns ImOOD off.", "--logit-adjust", "--logit_adjust", group=METHOD,
                              check=within(0, 100), metavar="TAU")
    imbalance_ratio: float = opt(0.01, "ρ = n_min/n_max of the long-tailed split.", "--imbalance-ratio",
                                 "--imbalance_ratio", group=METHOD, per_benchmark={"digits": 0.1},
                                 check=within(0, 1, low_open=True), metavar="RHO")
    num_ood_samples: int | None = opt(30000, "Auxiliary OOD images used (the first N; with --aux-ood-dir, "
                                      "every image of the folder unless given).", "--num-ood-samples",
                                      "--num_ood_samples", group=METHOD,
                                      per_benchmark={"imagenet": None, "digits": None, "glyphs": None},
                                      check=within(1, 10**9),
                                      default_text="30000 (CIFAR); all (ImageNet, digits, glyphs)", metavar="N")
    pascl_k: float | None = opt(None, "PASCL: fraction of classes counted as tail (label >= round((1-k)K)); "
                                "reaches an aux loss that has an option k.", "--k", group=METHOD,
                                check=within(0, 1, low_open=True), default_text="the aux loss's own (pascl: 0.4)",
                                metavar="K")
    temperature: float | None = opt(None, "Temperature of the contrastive aux loss; reaches an aux loss that has an "
                                    "option T (pascl, simclr).", "--T", group=METHOD, check=within(1e-4, 1e4),
                                    default_text="the aux loss's own (pascl, simclr: 0.07)", metavar="T")
    m_in: float | None = opt(None, "Energy loss: ID margin m_in (ID energies above it are penalized).",
                             "--m-in", "--m_in", group=METHOD, check=within(-1e4, 1e4),
                             per_benchmark={"cifar10": -23.0, "cifar100": -27.0, "imagenet": -27.0, "digits": -6.0,
                                            "glyphs": -12.0},
                             default_text="-23 (cifar10), -27 (cifar100, imagenet), -6 (digits), -12 (glyphs); other "
                             "benchmarks: two log K below the median energy of the first training batch", metavar="M")
    m_out: float | None = opt(None, "Energy loss: OOD margin m_out (OOD energies below it are penalized).",
                              "--m-out", "--m_out", group=METHOD, check=within(-1e4, 1e4),
                              per_benchmark={"cifar10": -5.0, "cifar100": -5.0, "imagenet": -5.0, "digits": -2.0,
                                             "glyphs": -8.0},
                              default_text="-5 (cifar10, cifar100, imagenet), -2 (digits), -8 (glyphs); other "
                              "benchmarks: one log K below the median energy of the first training batch", metavar="M")
    ada_correction: str = opt("full", "The ImOOD correction of an ada_ training loss, or a control that isolates "
                              "it: full; none (the same loss family without the correction, δ ≡ 1); flat-prior "
                              "(the uniform prior inside the correction; logit-adjusted CE keeps its τ).",
                              "--ada-correction", group=METHOD, choices=("full", "none", "flat-prior"))
    train_only: str = opt("all", "Parameters to train: all; classifier (the class head only, e.g. a re-balancing "
                          "stage after --ckpt-path); bn+classifier (BatchNorm affine and the classifier, PASCL's "
                          "stage 2).", "--train-only", group=METHOD, choices=("all", "classifier", "bn+classifier"))
    # optimisation
    epochs: int = opt(180, "Epochs (--resume: more epochs extend the run).", "--epochs", "-e", "--e",
                      group=OPTIM, per_benchmark={"imagenet": 100, "digits": 30, "glyphs": 20}, check=within(1, 10**6),
                      resumable=True, metavar="N")
    batch_size: int = opt(256, "ID images per step and process (each seen in two views).", "--batch-size", "-b",
                          group=OPTIM, per_benchmark={"digits": 64, "glyphs": 64}, check=within(1, 10**7),
                          metavar="N")
    ood_batch_size: int | None = opt(None, "Auxiliary OOD images per step and process.", "--ood-batch-size",
                                     group=OPTIM, check=within(0, 10**7), default_text="the batch size", metavar="N")
    optimizer: str = opt("adam", "Optimizer.", "--optimizer", "--opt", group=OPTIM, per_benchmark={"imagenet": "sgd"},
                         choices=("adam", "sgd", "adamw"))
    lr: float = opt(1e-3, "Learning rate.", "--lr", group=OPTIM,
                    per_benchmark={"imagenet": 0.1, "digits": 3e-3, "glyphs": 3e-3},
                    check=within(0, 100, low_open=True), metavar="LR")
    weight_decay: float = opt(5e-4, "Weight decay.", "--weight-decay", "--wd", group=OPTIM,
                              per_benchmark={"imagenet": 5e-5}, check=within(0, 100), metavar="WD")
    momentum: float = opt(0.9, "SGD momentum.", "--momentum", group=OPTIM, check=within(0, 1), metavar="M")
    nesterov: bool = opt(True, "Nesterov momentum for SGD.", "--nesterov/--no-nesterov", group=OPTIM)
    schedule: str = opt("cosine", "Learning-rate schedule, stepped per iteration.", "--schedule", "--decay",
                        group=OPTIM, per_benchmark={"imagenet": "multisteps"},
                        choices=("cosine", "multisteps", "constant"))
    milestones: list[int] = opt([60, 80], "Epochs at which multisteps multiplies the learning rate by --gamma.",
                                "--milestones", group=OPTIM, metavar="E,E")
    gamma: float = opt(0.1, "Factor of each multisteps step.", "--gamma", group=OPTIM,
                       check=within(0, 1, low_open=True), metavar="G")
    # augmentation (None: the benchmark's own, data.augment)
    crop_padding: int | None = opt(None, "Random-crop padding in pixels.", "--crop-padding", group=AUG,
                                   check=within(0, 64), default_text=BENCHMARK_AUGMENT["crop_padding"],
                                   metavar="PX")
    flip: bool | None = opt(None, "Random horizontal flip.", "--flip/--no-flip", group=AUG,
                            default_text=BENCHMARK_AUGMENT["flip"])
    color_jitter: list[float] | None = opt(None, "Color jitter: brightness,contrast,saturation,hue.",
                                           "--color-jitter", group=AUG, check=jitter_ok,
                                           default_text=BENCHMARK_AUGMENT["jitter"], metavar="B,C,S,H")
    jitter_p: float | None = opt(None, "Probability of color jitter.", "--jitter-p", group=AUG, check=within(0, 1),
                                 default_text=BENCHMARK_AUGMENT["jitter_p"], metavar="P")
    grayscale_p: float | None = opt(None, "Probability of grayscale.", "--grayscale-p", group=AUG,
                                    check=within(0, 1), default_text=BENCHMARK_AUGMENT["grayscale_p"], metavar="P")
    # machinery
    seed: int = opt(0, "Random seed: same seed, same machine, same numbers.", "--seed", group=MACHINE,
                    check=within(0, 2**63 - 1), metavar="N")
    device: str = opt("auto", "auto, cpu, cuda, cuda:N, or GPU ids as in --gpu 0 (--resume: may change, with a "
                      "printed warning).", "--device", "--gpu", group=MACHINE, check=no_nul, resumable=True,
                      metavar="DEV")
    amp: str = opt("auto", "Mixed precision: auto (bf16 on CUDA), bf16, off.", "--amp", group=MACHINE,
                   choices=("auto", "bf16", "off"))
    channels_last: str = opt("auto", "channels_last memory format: auto (on CUDA), on, off.", "--channels-last",
                             group=MACHINE, choices=("auto", "on", "off"))
    compile: bool = opt(False, "torch.compile the model and the augmentation.", "--compile/--no-compile",
                        group=MACHINE)
    threads: int = opt(0, "CPU threads for torch; 0 picks them from the model and batch size.", "--threads",
                       group=MACHINE, check=within(0, 1024), resumable=True, metavar="N")
    workers: int = opt(8, "Data-loader processes for image-file datasets (ImageNet).", "--workers", group=MACHINE,
                       check=within(0, 1024), resumable=True, metavar="N")
    log_every: int = opt(50, "Steps between loss records in metrics.jsonl.", "--log-every", group=MACHINE,
                         per_benchmark={"digits": 20, "glyphs": 20}, check=within(1, 10**9), metavar="N")
    test_batch_size: int = opt(512, "Batch size when scoring.", "--test-batch-size", "--tb", group=MACHINE,
                               per_benchmark={"digits": 1024, "glyphs": 1024}, check=within(1, 10**7),
                               resumable=True, metavar="N")
    # validation while training (off by default: then the training data are those of a run without it)
    eval_every: int = opt(0, "Every N epochs (and after the last) score a validation split with the score of "
                          "--ood-metric: ID accuracy by shot group, AUROC and FPR95, into metrics.jsonl and the "
                          "progress line; 0: off. The validation images are held out of training (--val-fraction).",
                          "--eval-every", group=VALID, check=within(0, 10**6), metavar="N")
    val_fraction: float = opt(0.1, "With --eval-every: the fraction of each class's ID training images (at least one "
                              "of a class with two or more; every class keeps one) and of the auxiliary OOD images "
                              "drawn from --seed and removed from training, to validate on.", "--val-fraction",
                              group=VALID, check=within(0, 0.5, low_open=True), metavar="F")
    eval_on: str = opt("val", "What --eval-every scores: val (the held-out split), test (the benchmark's test sets, "
                       "recorded as kind \"test\"; nothing is held out), or val+test.", "--eval-on", group=VALID,
                       choices=EVAL_ON)
    tensorboard: str | None = opt(None, "Also write the loss records, the learning rate and the --eval-every metrics "
                                  "as TensorBoard events in this folder (needs the tensorboard package: pip install "
                                  "tensorboard).", "--tensorboard", group=VALID, check=no_nul, resumable=True,
                                  metavar="DIR")
    # Not an option: what the aux loss received (its options()), set by the trainer and kept in config.json, so
    # that a resume rebuilds the same loss whatever its class defaults are by then.
    aux_loss_options: dict[str, Any] | None = field(default=None, metadata={"record": True})

    @property
    def holds_out(self) -> bool:
        """Whether a validation split is held out of the training images."""
        return self.eval_every > 0 and self.eval_on != "test"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @property
    def run_name(self) -> str:
        return self.name or f"{self.dataset}-{self.ood_metric.split(':')[0]}-{self.aux_ood_loss.split(':')[0]}"

    @property
    def run_dir(self) -> Path:
        return Path(self.save_root) / self.run_name


def spec_name(spec: str) -> str:
    """The name of a `name:key=value` spec (a method's or an aux loss's)."""
    return spec.split(":")[0].strip()


@functools.cache
def options() -> dict[str, tuple[Option, Any, Any]]:
    """{field name: (Option, type, default)} in declaration order (do not modify: it is cached); the fields that
    record what a run did (aux_loss_options) are not options."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if "option" not in f.metadata:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = (f.metadata["option"], hints[f.name], default)
    return out


def default_for(name: str, dataset: str) -> Any:
    meta, _, default = options()[name]
    return meta.per_benchmark.get(dataset, default)


def recipe_for(dataset: str) -> dict[str, Any]:
    """The defaults that differ for this benchmark (the recipes in docs/cli/train.md)."""
    return {name: meta.per_benchmark[dataset] for name, (meta, _, _) in options().items()
            if dataset in meta.per_benchmark}


def default_help(name: str) -> str:
    """'default: X; imagenet: Y, digits: Z', as --help and the README show it."""
    meta, _, default = options()[name]
    if meta.default_text:
        return f"default: {meta.default_text}"
    if default is None and not meta.per_benchmark:
        return ""
    others = ", ".join(f"{b}: {show(v)}" for b, v in meta.per_benchmark.items())
    return f"default: {show(default)}" + (f"; {others}" if others else "")


def show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(show(v) for v in value)
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- typed values


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def convert(name: str, value: Any, where: str) -> Any:
    """A value from a config file, config.json or the command line as the field's type, strictly
    (a bool is not a number, 2.5 is not an int, "no" is not a bool), then range-checked."""
    meta, tp, _ = options()[name]
    base, nullable = _base_type(tp)
    key = f"{name} in {where}" if where else meta.flags[0].split("/")[0]

    def bad(expected: str) -> ImoodError:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return ImoodError(f"{key} must be {expected}, got {shown}")

    if value is None:
        if not nullable:
            raise bad(f"a {base.__name__}" if isinstance(base, type) else "a value")
        return None
    if base is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("a whole number")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a finite number")
        value = float(value)
    elif base is str:
        if not isinstance(value, str):
            raise bad("text")
        if name == "schedule":
            value = SCHEDULE_ALIASES.get(value, value)
        if name == "dataset":
            value = DATASET_ALIASES.get(value, value)
    elif typing.get_origin(base) is list:
        item = typing.get_args(base)[0]
        if isinstance(value, str):  # "60,80" on the command line or in a file
            parts = [p.strip() for p in value.split(",") if p.strip()]
            try:
                value = [item(p) for p in parts]
            except ValueError:
                raise bad(f"a comma-separated list of {'whole numbers' if item is int else 'numbers'}") from None
        if not isinstance(value, list) or not all(
                not isinstance(v, bool) and isinstance(v, (int, float) if item is float else int)
                and (item is int or math.isfinite(v)) for v in value):
            raise bad(f"a list of {'whole numbers' if item is int else 'numbers'}")
        value = [item(v) for v in value]
    if meta.choices is not None and value not in meta.choices:
        raise unknown_name(f"{key} value", value, meta.choices)
    problem = meta.check(value) if meta.check else None
    if problem:
        got = repr(value) if isinstance(value, str) and not value.isprintable() else show(value)
        raise ImoodError(f"{key} {problem}, got {got}")
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    """A `--config` TOML (or JSON) file: option keys at the top level, or one [train] table holding them;
    every value type-checked. Anything else in the file (keys beside a [train] table, other tables) is an
    error naming it: nothing in a config file is silently left unread."""
    path = Path(path)
    text = read_text(path, "config file")
    where = f"config file {path}"
    data = parse_json(text, where) if path.suffix == ".json" else parse_toml(text, where)
    if isinstance(data, dict) and "train" in data:
        if not isinstance(data["train"], dict):
            raise ImoodError(f"train in {where} must hold a table of option values, not "
                             f"{type(data['train']).__name__}")
        others = [k for k in data if k != "train"]
        if others:
            raise ImoodError(f"{where} has a [train] table and also {', '.join(repr(k) for k in others[:5])} outside "
                             "it: put every option in the [train] table, or every option at the top level")
        data, where = data["train"], f"[train] of {path}"
    if isinstance(data, dict):
        tables = [k for k, v in data.items() if isinstance(v, dict) and k != AUX_RECORD]
        if tables:
            raise ImoodError(f"{where}: [{tables[0]}] is not a table imood reads in a config file (option keys go at "
                             "the top level or in one [train] table)")
    return from_mapping(data, str(where), records=True)


AUX_RECORD = "aux_loss_options"


def aux_record(value: Any, where: str) -> dict[str, Any] | None:
    """config.json's `aux_loss_options`: {option: value} of plain values (JSON scalars), or null."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and (isinstance(v, (bool, int, str)) or isinstance(v, float) and math.isfinite(v))
            for k, v in value.items()):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ImoodError(f"{AUX_RECORD} in {where} must be a table of the aux loss's option values (text, numbers, "
                         f"true or false), got {shown}")
    return dict(value)


def from_mapping(data: Any, where: str, records: bool = False) -> dict[str, Any]:
    """Type-checked field values from a JSON/TOML object (unknown keys and wrong types are errors). `records`:
    the object may hold what a run recorded besides its options (config.json's aux_loss_options)."""
    if not isinstance(data, dict):
        raise ImoodError(f"{where} must hold a table of option values, not {type(data).__name__}")
    known = options()
    out = {}
    for key, value in data.items():
        if records and key == AUX_RECORD:
            out[key] = aux_record(value, where)
            continue
        if key not in known:
            raise unknown_name(f"key in {where}:", key, known)
        out[key] = convert(key, value, where)
    return out


def resolve_config(cli: dict[str, Any], config_file: Path | None = None) -> TrainConfig:
    """Defaults ← benchmark ← config file ← command line (None on the command line means 'not given')."""
    given = {k: convert(k, v, "") for k, v in cli.items() if v is not None}
    from_file = read_config_file(config_file) if config_file else {}
    if "aux_ood_loss" in given and spec_name(given["aux_ood_loss"]) != spec_name(
            from_file.get("aux_ood_loss", TrainConfig.aux_ood_loss)):
        from_file.pop(AUX_RECORD, None)  # a run's config.json as --config, for another aux loss: not its options
    dataset = given.get("dataset", from_file.get("dataset", TrainConfig.dataset))
    return TrainConfig(**{**recipe_for(dataset), **from_file, **given, "dataset": dataset})


def load_run_config(path: Path) -> TrainConfig:
    """A run's config.json, re-validated like a config file (older runs lack newer keys: their defaults)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise ImoodError(f"no config.json in {path.parent}: not an imood run folder")
    try:
        data = parse_json(read_text(path, "run configuration"), f"{path}")
    except NotRegularFile:
        raise
    except ImoodError as exc:
        raise ImoodError(f"{exc}; the run cannot be resumed") from None
    values = from_mapping(data, str(path), records=True)
    dataset = values.get("dataset", TrainConfig.dataset)
    return TrainConfig(**{**recipe_for(dataset), **values})
