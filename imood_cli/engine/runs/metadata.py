"""The metadata of a model file, checked field by field before scoring or training relies on it (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imood_cli.errors import ImoodError


def whole_number(v: Any, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def check_model_metadata(meta: Any, path: Path) -> dict[str, Any]:
    """The metadata of a model file after checking every field that scoring and training rely on; returns
    the architecture fields as plain values."""
    from imood_cli.engine.metrics.groups import check_class_counts

    def bad(what: str) -> ImoodError:
        return ImoodError(f"{path} has malformed metadata: {what}")

    if not isinstance(meta, dict) or "architecture" not in meta or "class_counts" not in meta:
        raise ImoodError(f"{path} is not an imood model file (no architecture or class counts in its metadata)")
    a = meta["architecture"]
    if not isinstance(a, dict):
        raise bad("architecture is not a JSON object")
    if not isinstance(a.get("backbone"), str) or not a["backbone"] or "\x00" in a["backbone"]:
        raise bad("architecture.backbone is not a model name")
    if not whole_number(a.get("num_classes"), 1, 1_000_000):
        raise bad(f"architecture.num_classes must be a whole number in 1..1000000, got {a.get('num_classes')!r}")
    if not whole_number(a.get("extra_outputs", 0), 0, 1024) or not whole_number(a.get("in_chans", 3), 1, 64):
        raise bad("architecture.extra_outputs must be a whole number in 0..1024 and in_chans in 1..64")
    if not isinstance(a.get("cifar_stem", False), bool):
        raise bad("architecture.cifar_stem must be true or false")
    try:
        counts = check_class_counts(meta["class_counts"])
    except ImoodError as exc:
        raise bad(str(exc)) from None
    if len(counts) != a["num_classes"] or min(counts) < 1:
        raise bad(f"{len(counts)} class counts for {a['num_classes']} classes: wrong number of classes, or a class "
                  "without training images")
    meta["class_counts"] = counts
    config = meta.get("config")
    if config is None:  # the training options are not needed to score: defaults then
        config = {}
    if not isinstance(config, dict):
        raise bad(f"config must be a JSON object of training options, got {type(config).__name__}")
    for key, kind in (("data_root", str), ("dataset", str), ("imbalance_ratio", (int, float))):
        value = config.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise bad(f"config.{key} has the wrong type ({type(value).__name__})")
    ratio = config.get("imbalance_ratio")
    if ratio is not None and not 0 < ratio <= 1:
        raise bad(f"config.imbalance_ratio must be in (0, 1], got {ratio}")
    for key in ("dataset", "metric", "aux_loss"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(f"{key} must be text")
    meta["config"] = config
    return {k: a.get(k, d) for k, d in (("backbone", None), ("num_classes", None), ("extra_outputs", 0),
                                         ("in_chans", 3), ("cifar_stem", False))}
