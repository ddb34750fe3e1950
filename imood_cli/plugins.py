"""Entry-point discovery for OOD metrics, aux losses and datasets.

The built-ins are registered through the project's own entry points, exactly like third-party
plugins. Discovery runs once, lazily. A plugin that fails to import or breaks the protocol is kept
with its error (shown by `imood plugins list`) and skipped elsewhere with a warning; every other
name keeps working. `IMOOD_PLUGINS=dist1,dist2` limits which third-party distributions load.
"""

from __future__ import annotations

import copy
import importlib.metadata as md
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imood_cli.errors import ImoodError, unknown_name

GROUPS = {"metric": "imood.ood_metrics", "aux_loss": "imood.aux_losses", "dataset": "imood.datasets"}
BUILTIN_DIST = "imood"
ADA_PREFIX = "ada_"


@dataclass
class Plugin:
    name: str
    kind: str  # metric | aux_loss | dataset
    distribution: str
    version: str
    target: str  # "module:attr"
    obj: Any = None  # the checked instance (metric, aux loss) or object (dataset)
    factory: Any = None  # what the entry point names: called for a fresh instance
    error: str | None = None
    derived_from: str | None = None  # ada_ forms name their base

    @property
    def loaded(self) -> bool:
        return self.error is None and self.obj is not None


@dataclass
class _Candidate:
    name: str
    kind: str
    distribution: str
    version: str
    target: str
    loader: Any  # callable returning the object


def _own_entry_points() -> list[_Candidate]:
    """The built-ins from pyproject.toml when imood runs from a source tree that is not installed."""
    import tomllib

    path = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if not path.exists():
        return []
    project = tomllib.loads(path.read_text())["project"]
    out = []
    for kind, group in GROUPS.items():
        for name, target in project.get("entry-points", {}).get(group, {}).items():
            ep = md.EntryPoint(name=name, value=target, group=group)
            out.append(_Candidate(name, kind, BUILTIN_DIST, project["version"], target, ep.load))
    return out


def _installed_entry_points() -> list[_Candidate]:
    out, seen, own_installed = [], set(), False
    for kind, group in GROUPS.items():
        for ep in md.entry_points(group=group):
            dist = ep.dist.metadata["Name"] if ep.dist is not None else "(unknown)"
            version = ep.dist.version if ep.dist is not None else ""
            own_installed |= dist == BUILTIN_DIST
            key = (kind, ep.name, dist, ep.value)
            if key not in seen:  # a distribution found twice on sys.path lists its entry points twice
                seen.add(key)
                out.append(_Candidate(ep.name, kind, dist, version, ep.value, ep.load))
    if not own_installed:
        out = _own_entry_points() + out
    return out


def _allowed(distribution: str) -> bool:
    allow = os.environ.get("IMOOD_PLUGINS")
    if distribution == BUILTIN_DIST or allow is None:
        return True
    return distribution in {d.strip() for d in allow.split(",") if d.strip()}


def _check_protocol(kind: str, obj: Any) -> Any:
    """Instantiate once and check the contract; returns the instance (for metrics, a template)."""
    if kind == "metric":
        from imood_cli.metrics.base import OODMetric

        inst = obj() if callable(obj) else obj
        if not callable(getattr(inst, "idness", None)):
            raise TypeError("an OOD metric must define idness(outputs)")
        scale = getattr(inst, "ada_scale", None)
        if scale is not None and not isinstance(scale, (int, float)):
            raise TypeError("ada_scale must be a number or None")
        for attr in ("extra_outputs", "needs_features", "needs_fit", "idness_is_logit", "ada_keeps_loss", "has_loss"):
            if not hasattr(inst, attr):
                setattr(inst, attr, getattr(OODMetric, attr))
        if not hasattr(inst, "ood_score"):
            raise TypeError("an OOD metric must define ood_score or inherit imood_cli.metrics.base.OODMetric")
        return inst
    if kind == "aux_loss":
        inst = obj() if isinstance(obj, type) else obj
        if not callable(inst):
            raise TypeError("an aux loss must be callable on an AuxBatch")
        return inst
    if kind == "dataset":
        inst = obj() if isinstance(obj, type) else obj
        for attr in ("load", "status", "prepare"):
            if not callable(getattr(inst, attr, None)):
                raise TypeError(f"a dataset must define {attr}()")
        return inst
    raise ValueError(kind)


class Registry:
    def __init__(self, candidates: list[_Candidate] | None = None) -> None:
        self._candidates = candidates
        self._plugins: list[Plugin] | None = None

    def add(self, kind: str, name: str, obj: Any, distribution: str = "(in-process)", version: str = "") -> None:
        """Register an object in process (tests, notebooks); call before first use."""
        self._plugins = None
        if self._candidates is None:
            self._candidates = _installed_entry_points()
        self._candidates.append(_Candidate(name, kind, distribution, version, repr(obj), lambda: obj))

    def add_entry_point(self, kind: str, name: str, target: str, distribution: str = "(in-process)") -> None:
        ep = md.EntryPoint(name=name, value=target, group=GROUPS[kind])
        self._plugins = None
        if self._candidates is None:
            self._candidates = _installed_entry_points()
        self._candidates.append(_Candidate(name, kind, distribution, "", target, ep.load))

    def plugins(self) -> list[Plugin]:
        if self._plugins is None:
            self._plugins = self._load()
        return self._plugins

    def _load(self) -> list[Plugin]:
        candidates = self._candidates if self._candidates is not None else _installed_entry_points()
        plugins: list[Plugin] = []
        by_name: dict[tuple[str, str], Plugin] = {}
        for c in candidates:
            p = Plugin(c.name, c.kind, c.distribution, c.version, c.target)
            if not _allowed(c.distribution):
                p.error = "not loaded: distribution not in IMOOD_PLUGINS"
                plugins.append(p)
                continue
            try:
                p.factory = c.loader()
                p.obj = _check_protocol(c.kind, p.factory)
            except Exception as exc:  # a broken plugin must not break imood
                p.error = f"{type(exc).__name__}: {exc}"
            clash = by_name.get((c.kind, c.name))
            if clash is not None:
                msg = f"name {c.name!r} is provided by both {clash.distribution} and {c.distribution}"
                clash.error = p.error = msg
            elif p.error is None:
                by_name[(c.kind, c.name)] = p
            plugins.append(p)
        for p in list(plugins):
            if p.kind == "metric" and p.loaded and getattr(p.obj, "ada_scale", None) is not None:
                ada = ADA_PREFIX + p.name
                if (("metric", ada)) not in by_name:
                    plugins.append(Plugin(ada, "metric", p.distribution, p.version, p.target, obj=p.obj,
                                          factory=p.factory, derived_from=p.name))
        return plugins

    def names(self, kind: str, loaded_only: bool = True) -> list[str]:
        return sorted({p.name for p in self.plugins() if p.kind == kind and (p.loaded or not loaded_only)})

    def _find(self, kind: str, name: str, label: str) -> Plugin:
        matches = [p for p in self.plugins() if p.kind == kind and p.name == name]
        good = [p for p in matches if p.loaded]
        if len(good) == 1:
            return good[0]
        if matches:
            raise ImoodError(f"{label} {name!r} cannot be used: {matches[0].error}")
        raise unknown_name(label, name, self.names(kind))

    def metric(self, name: str, ada_scale: float | None = None):
        """A fresh metric instance (fitted state is per instance)."""
        from imood_cli.metrics.ada import Ada

        p = self._find("metric", name, "OOD metric")
        if p.derived_from is not None:
            return Ada(self.metric(p.derived_from), scale=ada_scale)
        if ada_scale is not None:
            raise ImoodError(f"--ada-scale applies to ada_ metrics only, not {name!r}")
        inst = _check_protocol("metric", p.factory) if callable(p.factory) else copy.deepcopy(p.obj)
        inst.name = name
        return inst

    def aux_loss(self, name: str, **options):
        p = self._find("aux_loss", name, "aux loss")
        # Each loss takes the options it declares as class attributes (pascl: k, T); others are not its business.
        options = {k: v for k, v in options.items() if hasattr(p.factory, k)}
        if isinstance(p.factory, type):
            try:
                inst = p.factory(**options)
            except TypeError as exc:
                raise ImoodError(f"aux loss {name!r}: {exc}") from None
        else:
            inst = p.obj
        inst.name = name
        return inst

    def dataset(self, name: str):
        return self._find("dataset", name, "dataset").obj


_REGISTRY: Registry | None = None


def registry() -> Registry:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
        for p in _REGISTRY.plugins():
            if p.error and not p.error.startswith("not loaded"):
                warnings.warn(f"imood plugin {p.name!r} from {p.distribution} skipped: {p.error}", stacklevel=2)
    return _REGISTRY


def reset_registry(new: Registry | None = None) -> None:
    """Forget discovered plugins (tests install in-process plugins this way)."""
    global _REGISTRY
    _REGISTRY = new
