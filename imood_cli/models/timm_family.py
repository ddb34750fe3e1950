"""timm models by name: building them, their pretrained weights from the local cache, their recipe.

timm itself fetches pretrained weights from the Hugging Face hub, and offline it retries for tens of seconds
before failing. imood looks in the local caches first (the Hugging Face hub cache, then torch hub's folder
for timm's older URLs), reads the file itself (safetensors, or torch.load with weights_only=True) and hands
timm the state dict, so that timm's own adaptations still apply (position embeddings resampled to another
input size, the first convolution to another number of channels). Nothing cached: one error at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from imood_cli.errors import ImoodError, unknown_name
from imood_cli.models.preprocess import Recipe, per_channel
from imood_cli.models.weights import find_state_dict, read_weights

HF_FILES = ("model.safetensors", "pytorch_model.bin")
OFFLINE = ("1", "true", "yes", "on")


def check_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        raise unknown_name("timm model", name, timm.list_models())


def pretrained_cfg(name: str) -> dict:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def fixed_size(name: str) -> bool:
    """Whether the model is built for one input size (vision transformers: their position embedding)."""
    return bool(pretrained_cfg(name).get("fixed_input_size"))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved as huggingface_hub does, from the environment at call time."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "huggingface" / "hub"


def cached_file(name: str) -> Path | None:
    """The cached pretrained weights of `name` (Hugging Face hub cache, then torch hub), or None."""
    cfg = pretrained_cfg(name)
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        files = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else HF_FILES
        for filename in files:
            found = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache_dir()), revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = cfg.get("url")
    if url and not url.endswith(".npz"):  # .npz: JAX weights timm converts with code of its own
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if path.is_file():
            return path
    return None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE


def create(name: str, num_classes: int, in_chans: int, img_size: int | None = None, pretrained: bool = False,
           download: bool = False) -> nn.Module:
    """timm's `name` with `num_classes` outputs (0: no classifier). `pretrained` weights come from the local
    cache; with `download` (training) timm may fetch them when they are not cached and HF_HUB_OFFLINE is unset."""
    import timm

    check_name(name)
    options = {"num_classes": num_classes, "in_chans": in_chans, **({"img_size": img_size} if img_size else {})}
    if not pretrained:
        return _build(name, options)
    cfg = pretrained_cfg(name)
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        raise ImoodError(f"timm has no pretrained weights for {name}")
    path = cached_file(name)
    if path is None:
        if download and not offline():
            try:
                return timm.create_model(name, pretrained=True, **options)
            except Exception as exc:
                raise ImoodError(f"cannot load pretrained weights for {name} ({type(exc).__name__}); they come from "
                                 "the Hugging Face hub: go online once, or drop --pretrained") from None
        where = cfg.get("hf_hub_id") or cfg.get("url")
        raise ImoodError(f"no pretrained weights for timm {name} ({where}) in the local cache ({hf_cache_dir()}); "
                         f"imood does not download them here: fetch them once online (python -c \"import timm; "
                         f"timm.create_model('{name}', pretrained=True)\"), or pass --weights FILE")
    state, _, _ = find_state_dict(read_weights(path, "cached pretrained weights"), path)
    return _build(name, {**options, "pretrained": True, "pretrained_cfg_overlay": {"state_dict": state}})


def _build(name: str, options: dict) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, **options)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        shown = {k: v for k, v in options.items() if k != "pretrained_cfg_overlay"}
        raise ImoodError(f"cannot build timm {name} with {shown}: {' '.join(str(exc).split())[:200]}") from None


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled features the classifier reads: timm's head_hidden_size, which differs from
    num_features (the channels before pooling) where a layer follows the pooling (MobileNetV3: 576 -> 1024)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def classifier_key(model: nn.Module) -> str | tuple[str, ...] | None:
    """The classifier's name(s) in the model's state dict, as timm's pretrained_cfg says."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    key = cfg.get("classifier") if isinstance(cfg, dict) else None
    return tuple(key) if isinstance(key, (list, tuple)) else key


def pretrained_classes(name: str) -> int | None:
    return pretrained_cfg(name).get("num_classes")


def recipe(name: str, in_chans: int) -> Recipe:
    cfg = pretrained_cfg(name)
    mean = per_channel(tuple(cfg.get("mean") or (0.485, 0.456, 0.406)), in_chans)
    std = per_channel(tuple(cfg.get("std") or (0.229, 0.224, 0.225)), in_chans)
    size = int((cfg.get("input_size") or (3, 224, 224))[-1])
    tag = f"{name}.{cfg['tag']}" if cfg.get("tag") else name
    return Recipe(mean, std, size, f"timm pretrained_cfg of {tag}")
