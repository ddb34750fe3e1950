"""Entry-point discovery for OOD metrics, aux losses and datasets (DESIGN.md "Plugin protocols").

The built-ins are registered through the project's own entry points, exactly like third-party
plugins. Discovery runs once, lazily, on first use. A plugin that fails to import or breaks the
protocol is kept with its error (shown by `imood plugins list`) and skipped elsewhere with a
warning; every other name keeps working. Names are unique per kind: two providers of one name are
an error, naming both distributions, when the name is used. Every metric that declares `ada_scale`
gets an `ada_<name>` form (ImOOD post-hoc normalization and training) for free.

`IMOOD_PLUGINS=dist1,dist2` limits which third-party distributions load (set but empty: only the
built-ins); the built-in distribution `imood` always loads.
"""

from __future__ import annotations

import copy
import importlib.metadata as md
import inspect
import math
import numbers
import os
import re
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from imood_cli.errors import ImoodError, unknown_name

GROUPS = {"metric": "imood.ood_metrics", "aux_loss": "imood.aux_losses", "dataset": "imood.datasets"}
LABELS = {"metric": "OOD metric", "aux_loss": "aux loss", "dataset": "dataset"}
BUILTIN_DIST = "imood"
ADA_PREFIX = "ada_"
ENV = "IMOOD_PLUGINS"


class PluginWarning(UserWarning):
    """A plugin was skipped: it failed to import, breaks the protocol, or its name clashes."""


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
    disabled: bool = False  # left out by IMOOD_PLUGINS (never imported)
    clash: list[str] = field(default_factory=list)  # the other distributions providing this name
    base: Plugin | None = field(default=None, repr=False, compare=False)  # ada_ forms: the base metric's plugin

    @property
    def loaded(self) -> bool:
        return self.error is None and self.obj is not None

    @property
    def status(self) -> str:
        if self.loaded:
            return "loaded"
        if self.disabled:
            return "disabled"
        return "clash" if self.clash else "error"


@dataclass
class _Candidate:
    name: str
    kind: str
    distribution: str
    version: str
    target: str
    loader: Callable[[], Any]  # returns what the entry point names


# ---------------------------------------------------------------- discovery


def normalize_dist(name: str) -> str:
    """PEP 503 normalization, so IMOOD_PLUGINS=imood_extras matches the distribution imood-extras."""
    return re.sub(r"[-_.]+", "-", name).lower()


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
    out, own_installed = [], False
    for kind, group in GROUPS.items():
        for ep in md.entry_points(group=group):
            dist = (ep.dist.metadata["Name"] if ep.dist is not None else None) or "(unknown)"
            version = (ep.dist.version if ep.dist is not None else "") or ""
            own_installed |= normalize_dist(dist) == BUILTIN_DIST
            out.append(_Candidate(ep.name, kind, dist, version, ep.value, ep.load))
    if not own_installed:
        out = _own_entry_points() + out
    return out


def allowed_distributions() -> set[str] | None:
    """The third-party distributions IMOOD_PLUGINS lets load (normalized), or None for all."""
    allow = os.environ.get(ENV)
    if allow is None:
        return None
    return {normalize_dist(d.strip()) for d in allow.split(",") if d.strip()}


def _allowed(distribution: str, allow: set[str] | None) -> bool:
    norm = normalize_dist(distribution)
    return norm == BUILTIN_DIST or allow is None or norm in allow


# ---------------------------------------------------------------- protocol checks

_METRIC_FLAGS = ("needs_features", "needs_fit", "idness_is_logit", "ada_keeps_loss")
_METRIC_METHODS = ("ood_score", "loss", "fit", "fit_state", "load_fit_state", "train_update")


def _defines(inst: Any, method: str) -> bool:
    """Whether the plugin itself provides `method` (not only the no-op of the OODMetric base class)."""
    from imood_cli.metrics.base import OODMetric

    fn = getattr(type(inst), method, None)
    if fn is None:
        return callable(getattr(inst, method, None))
    return callable(fn) and fn is not getattr(OODMetric, method, None)


def _instantiate(kind: str, obj: Any) -> Any:
    """What an entry point names → the object: a class is instantiated, a zero-argument factory
    called, an instance used as it is."""
    if isinstance(obj, type):
        return obj()
    marker = {"metric": "idness", "dataset": "load"}.get(kind)
    if marker is not None:
        if hasattr(obj, marker):
            return obj
        if callable(obj):
            return obj()
        return obj
    # aux loss: a callable that can be called without arguments is a factory (its parameters, all
    # with defaults, are options); one that needs the batch is the loss itself
    if callable(obj) and _accepts(obj, 0):
        return obj()
    return obj


def _accepts(fn: Any, n: int) -> bool:
    try:
        inspect.signature(fn).bind(*([None] * n))
        return True
    except TypeError:
        return False
    except ValueError:  # no signature (builtins): assume it does
        return True


def check_metric(inst: Any) -> Any:
    """Check the OOD-metric contract; fill in what a duck-typed metric may leave to the defaults."""
    from imood_cli.metrics.base import OODMetric

    if not callable(getattr(inst, "idness", None)) or not _defines(inst, "idness"):
        raise TypeError("an OOD metric must define idness(outputs) -> Tensor[N]")
    if not hasattr(inst, "has_loss"):
        inst.has_loss = _defines(inst, "loss")
    for attr in ("extra_outputs", "ada_scale", "name", *_METRIC_FLAGS):
        if not hasattr(inst, attr):
            setattr(inst, attr, getattr(OODMetric, attr))
    extra = inst.extra_outputs
    if isinstance(extra, bool) or not isinstance(extra, numbers.Integral) or extra < 0:
        raise TypeError(f"extra_outputs must be an integer >= 0, got {extra!r}")
    for attr in (*_METRIC_FLAGS, "has_loss"):
        if not isinstance(getattr(inst, attr), bool):
            raise TypeError(f"{attr} must be True or False, got {getattr(inst, attr)!r}")
    scale = inst.ada_scale
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
                              or not math.isfinite(scale) or scale < 0):
        raise TypeError(f"ada_scale must be a finite number >= 0 or None, got {scale!r}")
    if inst.needs_fit:
        missing = [m for m in ("fit", "fit_state", "load_fit_state") if not _defines(inst, m)]
        if missing:
            raise TypeError(f"needs_fit is set but the metric does not define {', '.join(missing)}")
    if inst.has_loss and not _defines(inst, "loss"):
        raise TypeError("has_loss is set but the metric does not define loss(outputs, ctx)")
    if inst.ada_keeps_loss and not inst.has_loss:
        raise TypeError("ada_keeps_loss is set but the metric has no loss")
    for method in _METRIC_METHODS:  # duck-typed metrics get the base class's defaults
        if not callable(getattr(inst, method, None)):
            setattr(inst, method, types.MethodType(getattr(OODMetric, method), inst))
    return inst


def check_aux_loss(inst: Any) -> Any:
    if not callable(inst):
        raise TypeError("an aux loss must be callable as loss(batch: AuxBatch) -> scalar Tensor")
    if not _accepts(inst, 1):
        raise TypeError("an aux loss must take one argument, the AuxBatch")
    flag = getattr(inst, "needs_projections", True)
    if not isinstance(flag, bool):
        raise TypeError(f"needs_projections must be True or False, got {flag!r}")
    return inst


def check_dataset(inst: Any) -> Any:
    for attr in ("load", "status", "prepare"):
        if not callable(getattr(inst, attr, None)):
            raise TypeError(f"a dataset must define {attr}()")
    return inst


_CHECKS = {"metric": check_metric, "aux_loss": check_aux_loss, "dataset": check_dataset}


def _check_protocol(kind: str, obj: Any) -> Any:
    """Instantiate what the entry point names and check the contract; returns the instance."""
    if kind not in _CHECKS:
        raise ValueError(kind)
    return _CHECKS[kind](_instantiate(kind, obj))


def _target_of(obj: Any) -> str:
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module and qual:
        return f"{module}:{qual}"
    return f"{type(obj).__module__}:{type(obj).__qualname__}()"


def _describe_error(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


# ---------------------------------------------------------------- the registry


class Registry:
    def __init__(self, candidates: list[_Candidate] | None = None) -> None:
        self._candidates = candidates
        self._plugins: list[Plugin] | None = None
        self._warned = False

    def add(self, kind: str, name: str, obj: Any, distribution: str = "(in-process)", version: str = "") -> None:
        """Register an object in process (tests, notebooks), as if a distribution's entry point named it."""
        if kind not in GROUPS:
            raise ValueError(f"kind must be one of {', '.join(GROUPS)}")
        self._base_candidates().append(_Candidate(name, kind, distribution, version, _target_of(obj), lambda: obj))

    def add_entry_point(self, kind: str, name: str, target: str, distribution: str = "(in-process)",
                        version: str = "") -> None:
        """Register a "module:attr" entry point in process; it is imported like an installed one."""
        ep = md.EntryPoint(name=name, value=target, group=GROUPS[kind])
        self._base_candidates().append(_Candidate(name, kind, distribution, version, target, ep.load))

    def _base_candidates(self) -> list[_Candidate]:
        self._plugins = None  # rediscover on next use
        self._warned = False
        if self._candidates is None:
            self._candidates = _installed_entry_points()
        return self._candidates

    def plugins(self) -> list[Plugin]:
        """Every plugin (loaded, broken, clashing or disabled) and the derived ada_ forms."""
        if self._plugins is None:
            self._plugins = self._load()
        return self._plugins

    def _load(self) -> list[Plugin]:
        candidates = self._candidates if self._candidates is not None else _installed_entry_points()
        allow = allowed_distributions()
        plugins: list[Plugin] = []
        seen = set()
        for c in candidates:
            key = (c.kind, c.name, normalize_dist(c.distribution), c.target)
            if key in seen:  # the very same entry point twice (a distribution found twice on sys.path)
                continue
            seen.add(key)
            p = Plugin(c.name, c.kind, c.distribution, c.version, c.target)
            if not _allowed(c.distribution, allow):
                p.disabled = True
                p.error = f"not loaded: {ENV}={os.environ.get(ENV, '')!r} leaves {c.distribution} out"
            else:
                try:
                    p.factory = c.loader()
                    p.obj = _check_protocol(c.kind, p.factory)
                except (Exception, SystemExit) as exc:  # a broken plugin must not break imood
                    p.obj, p.error = None, _describe_error(exc)
            plugins.append(p)
        for p in list(plugins):
            if p.kind == "metric" and p.loaded and p.obj.ada_scale is not None:
                plugins.append(Plugin(ADA_PREFIX + p.name, "metric", p.distribution, p.version, p.target, obj=p.obj,
                                      factory=p.factory, derived_from=p.name, base=p))
        _mark_clashes(plugins)
        for p in plugins:  # an ada_ form is usable only when its base is
            if p.base is not None and p.error is None and p.base.error is not None:
                p.error, p.clash = p.base.error, list(p.base.clash)
        return plugins

    # ---- lookups

    def _warn_skipped(self) -> None:
        if self._warned:
            return
        self._warned = True
        level, frame = 1, sys._getframe(0)  # point the warning at the first caller outside this module
        while frame is not None and frame.f_code.co_filename == __file__:
            frame, level = frame.f_back, level + 1
        said = set()
        for p in self.plugins():
            if p.error is None or p.disabled or p.base is not None:
                continue
            label = LABELS.get(p.kind, p.kind)
            where = "" if p.clash else f" from {p.distribution}"  # a clash's message names every provider
            msg = f"imood: {label} plugin {p.name!r}{where} skipped: {p.error}"
            if msg not in said:
                said.add(msg)
                warnings.warn(msg, PluginWarning, stacklevel=level)

    def names(self, kind: str, loaded_only: bool = True) -> list[str]:
        self._warn_skipped()
        return sorted({p.name for p in self.plugins() if p.kind == kind and (p.loaded or not loaded_only)})

    def find(self, kind: str, name: str) -> Plugin:
        """The one usable plugin of this name, or an ImoodError that says why there is none."""
        self._warn_skipped()
        label = LABELS.get(kind, kind)
        matches = [p for p in self.plugins() if p.kind == kind and p.name == name and not p.disabled]
        good = [p for p in matches if p.loaded]
        if len(good) == 1 and len(matches) == 1:
            return good[0]
        if matches:
            p = next((p for p in matches if p.clash), matches[0])
            if p.clash:
                raise ImoodError(f"{label} {name!r} cannot be used: {p.error}; uninstall one of them "
                                 f"or leave one out with {ENV}=<distributions to load>")
            raise ImoodError(f"{label} {name!r} from {p.distribution} cannot be used: {p.error}")
        err = unknown_name(label, name, self.names(kind))
        base = name[len(ADA_PREFIX):] if kind == "metric" and name.startswith(ADA_PREFIX) else None
        off = sorted({p.distribution for p in self.plugins()
                      if p.kind == kind and p.disabled and p.name in (name, base)})
        if off:
            err = ImoodError(f"{err} ({', '.join(off)} provides {(base or name)!r} but {ENV} leaves it out)")
        raise err

    _find = find  # older spelling

    def metric(self, name: str, ada_scale: float | None = None):
        """A fresh metric instance (fitted state is per instance)."""
        from imood_cli.metrics.ada import Ada

        p = self.find("metric", name)
        if p.derived_from is not None:
            return Ada(self._fresh_metric(p.base), scale=ada_scale)
        if ada_scale is not None:
            raise ImoodError(f"--ada-scale applies to ada_ metrics only, not {name!r}")
        return self._fresh_metric(p)

    @staticmethod
    def _fresh_metric(p: Plugin):
        if p.obj is p.factory:  # the entry point names an instance: copy it
            inst = copy.deepcopy(p.obj)
        else:
            inst = _check_protocol("metric", p.factory)
        inst.name = p.name
        return inst

    def aux_loss(self, name: str, **options):
        """A fresh aux loss; it receives the options it declares (pascl: k, T), the others are dropped."""
        p = self.find("aux_loss", name)
        factory = p.factory
        if p.obj is factory or not callable(factory):  # an instance: shared, options do not apply
            inst = p.obj
        else:
            options = {k: v for k, v in options.items() if _takes_option(factory, k)}
            try:
                inst = check_aux_loss(factory(**options) if isinstance(factory, type) or options
                                      else _instantiate("aux_loss", factory))
            except ImoodError:
                raise
            except (Exception, SystemExit) as exc:
                raise ImoodError(f"aux loss {name!r} from {p.distribution}: {_describe_error(exc)}") from None
        try:
            inst.name = name
        except AttributeError:
            pass
        return inst

    def dataset(self, name: str):
        return self.find("dataset", name).obj


def _takes_option(factory: Any, key: str) -> bool:
    """A class declares options as class attributes (AuxLoss) or named __init__ parameters."""
    if isinstance(factory, type) and hasattr(factory, key):
        return True
    try:
        param = inspect.signature(factory).parameters.get(key)
    except (TypeError, ValueError):
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def _mark_clashes(plugins: list[Plugin]) -> None:
    """Two providers of one (kind, name) make both unusable; the error names every distribution."""
    groups: dict[tuple[str, str], list[Plugin]] = {}
    for p in plugins:
        if not p.disabled:
            groups.setdefault((p.kind, p.name), []).append(p)
    for (kind, name), same in groups.items():
        if len(same) < 2:
            continue
        same.sort(key=lambda p: normalize_dist(p.distribution) != BUILTIN_DIST)  # the built-in first
        who = [_provider(p) for p in same]
        listed = f"both {who[0]} and {who[1]}" if len(who) == 2 else f"{', '.join(who[:-1])} and {who[-1]}"
        msg = f"name clash: {name!r} is provided by {listed}"
        for p in same:
            p.clash = [q.distribution for q in same if q is not p]
            p.error = msg if p.error is None else f"{msg}; this one also failed: {p.error}"


def _provider(p: Plugin) -> str:
    what = f"ImOOD form of {p.derived_from} from {p.base.target}" if p.derived_from else p.target
    return f"{p.distribution} ({what})"


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry; entry points are read and imported on first use, once."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def reset_registry(new: Registry | None = None) -> Registry | None:
    """Replace the process-wide registry (None: rediscover on next use); returns the previous one.

    Tests install in-process plugins this way and put the old registry back afterwards.
    """
    global _REGISTRY
    old, _REGISTRY = _REGISTRY, new
    return old
