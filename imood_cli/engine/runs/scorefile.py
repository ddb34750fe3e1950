"""The score file: the contract between `imood score` and `imood eval` (README "Score file").

safetensors with `id.score`, `id.label`, `id.pred`, `ood.<set>.score` (and `ood.<set>.pred`), and
JSON metadata with `class_counts`, `metric`, `score_direction` = "higher_is_ood", the dataset names
and the checkpoint the scores came from. Scores from any tool can be evaluated this way.

Reading and writing needs numpy and safetensors only, so `imood eval` and `imood report` start
without torch. The `tensors_sha256` digest in the metadata is `runs.digest.tensors_digest` (name,
torch dtype name, shape, raw little-endian bytes, in sorted key order), which the checkpoint writer
computes over torch tensors, so files written by either side verify on the other.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imood_cli.engine.metrics.groups import check_class_counts
from imood_cli.engine.runs.digest import tensors_digest
from imood_cli.errors import ImoodError
from imood_cli.fs.atomic import atomic_write_bytes
from imood_cli.fs.safe import read_capped, weights_cap

DIRECTION = "higher_is_ood"
META_KEY = "imood"  # one metadata entry holding a JSON document (score files and engine/checkpoint.py's files)

# safetensors dtype code -> (torch's name for it, the numpy dtype it is read as, or None when numpy lacks it)
DTYPES: dict[str, tuple[str, Any]] = {
    "F64": ("torch.float64", np.float64), "F32": ("torch.float32", np.float32), "F16": ("torch.float16", np.float16),
    "BF16": ("torch.bfloat16", None), "F8_E4M3": ("torch.float8_e4m3fn", None), "F8_E5M2": ("torch.float8_e5m2", None),
    "I64": ("torch.int64", np.int64), "I32": ("torch.int32", np.int32), "I16": ("torch.int16", np.int16),
    "I8": ("torch.int8", np.int8), "U64": ("torch.uint64", np.uint64), "U32": ("torch.uint32", np.uint32),
    "U16": ("torch.uint16", np.uint16), "U8": ("torch.uint8", np.uint8), "BOOL": ("torch.bool", np.bool_),
    "C64": ("torch.complex64", np.complex64),
}
CODE_OF = {np.dtype(np_type): code for code, (_, np_type) in DTYPES.items() if np_type is not None}


@dataclass
class Tensor:
    """One stored tensor: its safetensors dtype code, shape and raw little-endian bytes."""

    code: str
    shape: tuple[int, ...]
    data: bytes | bytearray | np.ndarray  # anything hashlib and np.frombuffer read as raw bytes

    @property
    def torch_dtype(self) -> str:
        return DTYPES[self.code][0] if self.code in DTYPES else self.code

    def array(self, where: str, key: str) -> np.ndarray:
        """The values as numpy; bfloat16 and float8 widen exactly to float32 (numpy has neither)."""
        if self.code not in DTYPES:
            raise ImoodError(f"{where}: {key} has dtype {self.code}, which imood cannot read; store float32")
        np_type = DTYPES[self.code][1]
        if np_type is not None:
            return np.frombuffer(self.data, dtype=np.dtype(np_type).newbyteorder("<")).reshape(self.shape)
        raw = np.frombuffer(self.data, dtype=np.uint16 if self.code == "BF16" else np.uint8)
        if self.code == "BF16":  # the upper half of a float32
            return (raw.astype("<u4") << 16).view("<f4").reshape(self.shape)
        return FLOAT8[self.code][raw].reshape(self.shape)


def _float8_table(exponent_bits: int, mantissa_bits: int, ieee_specials: bool) -> np.ndarray:
    """float32 value of each of the 256 bytes of an OCP float8 format (E4M3 "fn": no infinities,
    NaN only at S.1111.111; E5M2: IEEE-style infinities and NaNs). Micikevicius et al., "FP8 Formats
    for Deep Learning", 2022."""
    bias = (1 << (exponent_bits - 1)) - 1
    out = np.empty(256, np.float32)
    top = (1 << exponent_bits) - 1
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        e = (b >> mantissa_bits) & top
        m = b & ((1 << mantissa_bits) - 1)
        if ieee_specials and e == top:
            out[b] = sign * np.inf if m == 0 else np.nan
        elif not ieee_specials and e == top and m == (1 << mantissa_bits) - 1:
            out[b] = np.nan
        elif e == 0:
            out[b] = sign * m / (1 << mantissa_bits) * 2.0 ** (1 - bias)
        else:
            out[b] = sign * (1 + m / (1 << mantissa_bits)) * 2.0 ** (e - bias)
    return out


FLOAT8 = {"F8_E4M3": _float8_table(4, 3, ieee_specials=False), "F8_E5M2": _float8_table(5, 2, ieee_specials=True)}


def stored_digest(tensors: dict[str, Tensor]) -> str:
    """`runs.digest.tensors_digest` of tensors as they are stored."""
    return tensors_digest((k, t.torch_dtype, t.shape, t.data) for k, t in tensors.items())


def _little_endian(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))


def _stored(a: np.ndarray) -> Tensor:
    """A little-endian contiguous array as the tensor safetensors writes (its bytes viewed, not copied)."""
    return Tensor(CODE_OF[a.dtype.newbyteorder("=")], tuple(int(n) for n in a.shape), a.reshape(-1).view(np.uint8))


def read_score_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and the metadata of a safetensors file; one ImoodError for anything wrong with it."""
    from safetensors import SafetensorError, deserialize

    path = Path(path)
    data = read_capped(path, "score file", weights_cap())
    try:
        tensors = {name: Tensor(v["dtype"], tuple(v["shape"]), v["data"]) for name, v in deserialize(data)}
        meta = read_metadata(data)
    except (SafetensorError, ValueError, TypeError, json.JSONDecodeError, RecursionError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise ImoodError(f"score file {path} is corrupt or truncated ({first})") from None
    if not isinstance(meta, dict):
        raise ImoodError(f"score file {path}: its 'imood' metadata must be a JSON object, got {type(meta).__name__}")
    expected = meta.pop("tensors_sha256", None)
    if expected is not None and stored_digest(tensors) != expected:
        raise ImoodError(f"score file {path} is corrupt: its tensor data does not match the checksum written with it")
    return tensors, meta


def read_metadata(data: bytes) -> Any:
    """The JSON document under META_KEY in a safetensors file's header (any JSON value: callers check it)."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header runs past the end of the file")
    header = json.loads(data[8:8 + n])
    raw = (header.get("__metadata__") or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


def as_array(values: Any, what: str) -> np.ndarray:
    """Scores, labels or predictions as a numpy array: numpy arrays, lists, CPU or GPU torch tensors."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor, without importing torch
        values = values.detach().cpu()
        if values.is_floating_point() and str(values.dtype) not in ("torch.float16", "torch.float32", "torch.float64"):
            values = values.float()  # bfloat16 and float8 are exact in float32; numpy has neither
    try:
        a = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise ImoodError(f"{what}: cannot be read as an array ({exc})") from None
    if a.dtype.kind not in "biuf":
        raise ImoodError(f"{what} must hold real numbers, got {a.dtype}")
    if a.dtype.newbyteorder("=") not in CODE_OF:
        a = a.astype(np.float64 if a.dtype.kind == "f" else np.int64)
    return a


@dataclass(eq=False)  # arrays have no single truth value: two score sets are equal only when they are one
class ScoreSet:
    """One detector's scores on the ID test set and each OOD test set, as numpy arrays.

    The constructor takes anything `np.asarray` reads (CPU or GPU torch tensors included) and keeps numpy.
    """

    metric: str
    id_score: np.ndarray
    id_label: np.ndarray | None
    id_pred: np.ndarray | None
    ood_score: dict[str, np.ndarray]
    ood_pred: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id_score = as_array(self.id_score, "id.score")
        self.id_label = None if self.id_label is None else as_array(self.id_label, "id.label")
        self.id_pred = None if self.id_pred is None else as_array(self.id_pred, "id.pred")
        self.ood_score = {k: as_array(v, f"ood.{k}.score") for k, v in self.ood_score.items()}
        self.ood_pred = {k: as_array(v, f"ood.{k}.pred") for k, v in self.ood_pred.items()}

    @property
    def class_counts(self) -> list[int] | None:
        return self.meta.get("class_counts")

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array under its name in the file."""
        out = {"id.score": self.id_score}
        for key, value in (("id.label", self.id_label), ("id.pred", self.id_pred)):
            if value is not None:  # scores from another tool may come without labels
                out[key] = value
        for name, s in self.ood_score.items():
            out[f"ood.{name}.score"] = s
            if name in self.ood_pred:
                out[f"ood.{name}.pred"] = self.ood_pred[name]
        return out

    def save(self, path: Path) -> None:
        """Write the file atomically, with the digest of its tensor data in the metadata."""
        from safetensors.numpy import save as st_save

        arrays = {k: _little_endian(v) for k, v in self.arrays().items()}
        digest = stored_digest({k: _stored(v) for k, v in arrays.items()})
        meta = {**self.meta, "metric": self.metric, "score_direction": DIRECTION, "ood_sets": list(self.ood_score),
                "tensors_sha256": digest}
        data = st_save(arrays, metadata={META_KEY: json.dumps(meta)})
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise ImoodError(f"cannot write {path}: {exc.strerror or exc}") from None

    @classmethod
    def load(cls, path: Path) -> ScoreSet:
        raw, meta = read_score_file(path)
        where = f"score file {path}"
        if meta.get("score_direction", DIRECTION) != DIRECTION:
            raise ImoodError(f"{where}: score_direction must be {DIRECTION!r}, got {meta['score_direction']!r}")
        listed = meta.get("ood_sets", [])
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            raise ImoodError(f"{where}: metadata 'ood_sets' must be a list of set names")
        if "id.score" not in raw:
            raise ImoodError(f"{where} has no 'id.score' tensor")
        for k, t in raw.items():  # before any length is read
            if len(t.shape) != 1:
                raise ImoodError(f"{where}: {k} must be one-dimensional, got shape {tuple(t.shape)}")
        ood_names = sorted({k.split(".", 1)[1].rsplit(".", 1)[0] for k in raw if k.startswith("ood.")})
        for name in [*ood_names, *listed]:
            problem = set_name_problem(name)
            if problem:
                raise ImoodError(f"{where}: OOD set name {name[:40]!r} {problem}")
        order = [n for n in listed if n in ood_names] + [n for n in ood_names if n not in listed]
        missing = [n for n in listed if n not in ood_names]
        if missing:
            raise ImoodError(f"{where}: OOD set {missing[0]!r} is listed in the metadata but has no scores")
        if not order:
            raise ImoodError(f"{where} has no OOD set (no 'ood.<set>.score' tensor)")
        id_score = _scores(raw["id.score"], "id.score", where)
        n = id_score.shape[0]
        labels = {}
        for key in ("id.label", "id.pred"):
            if key in raw:
                labels[key] = _indices(raw[key], key, where)
                if labels[key].shape[0] != n:
                    raise ImoodError(f"{where}: {key} has {labels[key].shape[0]} entries but id.score has {n}")
        ood_score, ood_pred = {}, {}
        for name in order:
            if f"ood.{name}.score" not in raw:
                raise ImoodError(f"{where}: OOD set {name!r} has no 'ood.{name}.score' tensor")
            ood_score[name] = _scores(raw[f"ood.{name}.score"], f"ood.{name}.score", where)
            if f"ood.{name}.pred" in raw:
                ood_pred[name] = _indices(raw[f"ood.{name}.pred"], f"ood.{name}.pred", where)
                if ood_pred[name].shape[0] != ood_score[name].shape[0]:
                    raise ImoodError(f"{where}: ood.{name}.pred and ood.{name}.score differ in length")
        if meta.get("class_counts") is not None:
            try:
                meta = {**meta, "class_counts": check_class_counts(meta["class_counts"])}
            except ImoodError as exc:
                raise ImoodError(f"{where}: {exc}") from None
        check_meta_types(meta, where)
        k = len(meta["class_counts"]) if meta.get("class_counts") is not None else None
        names = meta.get("class_names")
        if names is not None and (not all(isinstance(n, str) and n.isprintable() for n in names)
                                  or (k is not None and len(names) != k)):
            raise ImoodError(f"{where}: metadata 'class_names' must be a list of printable names, one per class"
                             + (f" ({k})" if k is not None else ""))
        for key, values in (("id.label", labels.get("id.label")), ("id.pred", labels.get("id.pred")),
                            *((f"ood.{n}.pred", p) for n, p in ood_pred.items())):
            if values is not None and values.size and (values.min() < 0 or (k is not None and values.max() >= k)):
                bad = int(values.min()) if values.min() < 0 else int(values.max())
                within = f"[0, {k})" if k is not None else "0 or more"
                raise ImoodError(f"{where}: {key} holds the class index {bad}, outside {within}"
                                 + (f" for the {k} classes of its class counts" if k is not None else ""))
        metric = meta.get("metric")
        metric = metric if isinstance(metric, str) and metric else Path(path).stem
        return cls(metric, id_score, labels.get("id.label"), labels.get("id.pred"), ood_score, ood_pred, meta)


# What the metadata keys imood reads must be, where present (other keys are carried along unread).
META_TYPES: dict[str, tuple[type, ...]] = {
    "metric": (str,), "dataset": (str,), "id_set": (str,), "trained_with": (str,), "checkpoint": (str,),
    "checkpoint_sha256": (str,), "ada_scale_rule": (str,), "ada_scale": (int, float), "logit_adjust": (int, float),
    "num_classes": (int,), "moved_to_id": (dict,), "detector_options": (dict,), "missing_ood_sets": (list,),
    "class_names": (list,),
}


def check_meta_types(meta: dict[str, Any], where: str) -> None:
    for key, kinds in META_TYPES.items():
        value = meta.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ImoodError(f"{where}: metadata {key!r} must be {' or '.join(k.__name__ for k in kinds)}, got "
                             f"{type(value).__name__}")
        if isinstance(value, str) and not value.isprintable():
            raise ImoodError(f"{where}: metadata {key!r} holds a control character")
        if isinstance(value, float) and not math.isfinite(value):
            raise ImoodError(f"{where}: metadata {key!r} must be finite, got {value}")


def set_name_problem(name: str) -> str | None:
    """Why an OOD set name cannot be shown and written (in tables, file names of figures), or None."""
    if not name.strip():
        return "is empty"
    if len(name) > 200:
        return "is longer than 200 characters"
    if not name.isprintable() or "/" in name:  # a figure of the set may be written under its name
        return "holds a control character or a slash"
    return None


def _scores(t: Tensor, key: str, where: str) -> np.ndarray:
    """Scores as float32/float64 (float16, booleans and integers become float64)."""
    if t.code == "C64":
        raise ImoodError(f"{where}: {key} must hold real numbers, got {t.torch_dtype}")
    a = t.array(where, key)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def _indices(t: Tensor, key: str, where: str) -> np.ndarray:
    """Labels and predictions as int64; whole numbers only."""
    if t.code == "C64":
        raise ImoodError(f"{where}: {key} must hold class indices, got {t.torch_dtype}")
    a = t.array(where, key)
    if a.dtype.kind == "f":
        f = a.astype(np.float64)
        if not (np.isfinite(f).all() and (f == np.round(f)).all()) or (f.size and np.abs(f).max() > 2.0**62):
            raise ImoodError(f"{where}: {key} must hold class indices (whole numbers)")
        return f.astype(np.int64)
    return a.astype(np.int64)
