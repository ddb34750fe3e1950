"""The typed training configuration, the per-benchmark recipes, and its JSON/TOML round trip.

Precedence, lowest first: the field defaults, the benchmark's recipe, a `--config` TOML file,
then the command-line options a user actually typed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from imood_cli.errors import ImoodError, unknown_name


@dataclass
class TrainConfig:
    # what to train
    dataset: str = "digits"
    data_root: str = "data"
    save_root: str = "runs"
    name: str | None = None
    model: str = "resnet18"
    cifar_stem: bool = True
    pretrained: bool = False
    init_from: str | None = None  # start from the weights of an imood model (run folder or model file)
    # the method
    ood_metric: str = "ada_bin_disc"
    aux_ood_loss: str = "pascl"
    Lambda: float = 0.5
    Lambda2: float = 0.05
    logit_adjust: float = 1.0
    imbalance_ratio: float = 0.01
    num_ood_samples: int | None = 30000
    pascl_k: float = 0.4
    temperature: float = 0.07
    # optimisation
    epochs: int = 180
    batch_size: int = 256
    ood_batch_size: int | None = None  # None: same as batch_size
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=lambda: [60, 80])
    gamma: float = 0.1
    # augmentation (None: the benchmark's own)
    crop_padding: int | None = None
    flip: bool | None = None
    color_jitter: list[float] | None = None
    jitter_p: float | None = None
    grayscale_p: float | None = None
    # machinery
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto: bf16 on CUDA, off on CPU; bf16 | off
    channels_last: str = "auto"
    compile: bool = False
    workers: int = 8
    log_every: int = 50
    test_batch_size: int = 512

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in d if k not in names]
        if unknown:
            raise unknown_name("config key", unknown[0], names)
        return cls(**d)

    @property
    def run_name(self) -> str:
        return self.name or f"{self.dataset}-{self.ood_metric}-{self.aux_ood_loss}"

    @property
    def run_dir(self) -> Path:
        return Path(self.save_root) / self.run_name


# Defaults a user gets for each benchmark (SPEC §3).
RECIPES: dict[str, dict[str, Any]] = {
    "cifar10": dict(model="resnet18", cifar_stem=True, epochs=180, batch_size=256, optimizer="adam", lr=1e-3,
                    weight_decay=5e-4, schedule="cosine", imbalance_ratio=0.01, num_ood_samples=30000),
    "cifar100": dict(model="resnet18", cifar_stem=True, epochs=180, batch_size=256, optimizer="adam", lr=1e-3,
                     weight_decay=5e-4, schedule="cosine", imbalance_ratio=0.01, num_ood_samples=30000),
    "imagenet": dict(model="resnet50", cifar_stem=False, epochs=100, batch_size=256, optimizer="sgd", lr=0.1,
                     weight_decay=5e-5, schedule="multisteps", milestones=[60, 80], nesterov=True,
                     imbalance_ratio=0.01, num_ood_samples=None),
    "digits": dict(model="imood_resnet_micro", cifar_stem=True, epochs=30, batch_size=64, optimizer="adam",
                   lr=3e-3, weight_decay=5e-4, schedule="cosine", imbalance_ratio=0.1, num_ood_samples=None,
                   log_every=20, test_batch_size=1024),
}
DATASET_ALIASES = {"imagenet_lt": "imagenet", "imagenet-lt": "imagenet", "cifar10-lt": "cifar10", "cifar100-lt": "cifar100"}


def recipe_for(dataset: str) -> dict[str, Any]:
    return dict(RECIPES.get(dataset, {}))


def read_config_file(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ImoodError(f"config file not found: {path}")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ImoodError(f"config file {path} does not parse: {exc}") from None
    data = data.get("train", data)  # a [train] table or top-level keys
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in data:
        if key not in names:
            raise unknown_name(f"key in {path}:", key, names)
    return data


def resolve_config(cli: dict[str, Any], config_file: Path | None = None) -> TrainConfig:
    """Defaults ← recipe ← config file ← command line (None on the command line means 'not given')."""
    given = {k: v for k, v in cli.items() if v is not None}
    from_file = read_config_file(config_file) if config_file else {}
    dataset = given.get("dataset", from_file.get("dataset", TrainConfig.dataset))
    dataset = DATASET_ALIASES.get(dataset, dataset)
    merged = {**recipe_for(dataset), **from_file, **given, "dataset": dataset}
    cfg = TrainConfig.from_dict(merged)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ImoodError(msg)

    need(cfg.Lambda >= 0, f"--Lambda must be >= 0, got {cfg.Lambda}")
    need(cfg.Lambda2 >= 0, f"--Lambda2 must be >= 0, got {cfg.Lambda2}")
    need(0 < cfg.imbalance_ratio <= 1, f"--imbalance_ratio must be in (0, 1], got {cfg.imbalance_ratio}")
    need(cfg.logit_adjust >= 0, f"--logit_adjust must be >= 0, got {cfg.logit_adjust}")
    need(cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}")
    need(cfg.ood_batch_size is None or cfg.ood_batch_size >= 0, "--ood-batch-size must be >= 0")
    need(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")
    need(cfg.weight_decay >= 0, f"--wd must be >= 0, got {cfg.weight_decay}")
    need(0 < cfg.pascl_k <= 1, f"--k must be in (0, 1], got {cfg.pascl_k}")
    need(cfg.temperature > 0, f"--T must be > 0, got {cfg.temperature}")
    need(cfg.num_ood_samples is None or cfg.num_ood_samples >= 1, "--num_ood_samples must be >= 1")
    need(cfg.log_every >= 1, "--log-every must be >= 1")
    if cfg.optimizer not in ("adam", "sgd", "adamw"):
        raise unknown_name("optimizer", cfg.optimizer, ["adam", "sgd", "adamw"])
    if cfg.schedule not in ("cosine", "multisteps", "constant"):
        raise unknown_name("schedule", cfg.schedule, ["cosine", "multisteps", "constant"])
    if cfg.amp not in ("auto", "bf16", "off"):
        raise unknown_name("--amp value", cfg.amp, ["auto", "bf16", "off"])
    if cfg.channels_last not in ("auto", "on", "off"):
        raise unknown_name("--channels-last value", cfg.channels_last, ["auto", "on", "off"])
    if cfg.color_jitter is not None:
        need(len(cfg.color_jitter) == 4 and all(v >= 0 for v in cfg.color_jitter),
             "--color-jitter takes four non-negative numbers: brightness,contrast,saturation,hue")
    for p, name in ((cfg.jitter_p, "--jitter-p"), (cfg.grayscale_p, "--grayscale-p")):
        need(p is None or 0 <= p <= 1, f"{name} must be in [0, 1]")
    need("/" not in cfg.run_name and cfg.run_name not in (".", ".."), f"run name {cfg.run_name!r} must be a plain name")
