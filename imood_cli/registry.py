"""The registry: the entry points (imood_cli.discovery) as a dict of classes (docs/plugins.md).

Built-ins are recognised by their module, never by a distribution name anyone can claim; they always load
and always win a name. `IMOOD_PLUGINS=a,b` limits which third-party distributions load (set but empty:
none). A plugin that fails to import or breaks the contract is kept with its error (`imood plugins list`)
and skipped elsewhere. `ada_<name>` is derived at lookup for a detector that declares `ada_scale`.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import os
import warnings
from dataclasses import dataclass
from typing import Any

from imood_cli.core.ada import ADA_PREFIX, AdaObjective, AdaScore
from imood_cli.core.contract import OptionError, check_class, named_option_error, plugin_name_problem
from imood_cli.core.contract import parse_spec as parse_spec  # re-exported: callers spell detectors with it
from imood_cli.core.method import Method, Objective, Score, as_method
from imood_cli.discovery import GROUPS, OWN_PACKAGE, entry_points, normalize_dist
from imood_cli.errors import ImoodError, unknown_name

LABELS = {"method": "method", "aux_loss": "aux loss", "dataset": "dataset"}
ENV = "IMOOD_PLUGINS"


class PluginWarning(UserWarning):
    """A plugin was skipped: it failed to import, breaks the contract, or its name is taken."""


@dataclass
class Plugin:
    name: str
    kind: str  # detector | aux_loss | dataset
    distribution: str
    version: str
    target: str  # "module:Class"
    cls: Any = None
    error: str | None = None
    status: str = "loaded"  # loaded | error | refused (its name) | disabled | shadowed | clash
    derived_from: str | None = None  # ada_ forms name their base

    @property
    def method(self) -> type[Method]:
        """The method the entry point names: a Method subclass as it is, a Score subclass as a post-hoc method,
        a 0.2 Detector subclass through Method.from_detector."""
        return as_method(self.cls)

    @property
    def builtin(self) -> bool:
        return self.target.split(":")[0].split(".")[0] == OWN_PACKAGE

    @property
    def loaded(self) -> bool:
        return self.status == "loaded"


class Registry:
    def __init__(self, found: list[tuple[str, str, str, str, str]] | None = None) -> None:
        self._found = found
        self._plugins: dict[tuple[str, str], Plugin] | None = None
        self._others: list[Plugin] = []  # shadowed, clashing and disabled entries, for `plugins list`
        self._classes: dict[tuple[str, str, str], type] = {}  # added in process: no import needed
        self._warned = False

    def add(self, kind: str, name: str, target: type | str, distribution: str = "(in-process)",
            version: str = "") -> None:
        """Register a class (or a "module:Class" entry point, imported on first use) in process, as if a
        distribution's entry point named it: for tests and notebooks."""
        if kind not in GROUPS:
            raise ValueError(f"kind must be one of {', '.join(GROUPS)}")
        if self._found is None:
            self._found = entry_points()
        if not isinstance(target, str):
            self._classes[(kind, name, distribution)] = target
            target = f"{target.__module__}:{target.__qualname__}"
        self._found.append((kind, name, target, distribution, version))
        self._plugins, self._warned = None, False

    def _load(self) -> dict[tuple[str, str], Plugin]:
        allow = os.environ.get(ENV)
        allowed = None if allow is None else {normalize_dist(d.strip()) for d in allow.split(",") if d.strip()}
        table: dict[tuple[str, str], Plugin] = {}
        self._others, seen = [], set()
        for kind, name, target, dist, version in self._found if self._found is not None else entry_points():
            p = Plugin(name, kind, dist, version, target)
            if (kind, name, target) in seen:  # the same entry point twice (source tree and installed metadata)
                continue
            seen.add((kind, name, target))
            if not p.builtin and allowed is not None and normalize_dist(dist) not in allowed:
                p.status, p.error = "disabled", f"not loaded: {ENV}={allow!r} leaves {dist} out"
            elif kind == "method" and name.startswith(ADA_PREFIX):
                p.status, p.error = "refused", f"names starting with {ADA_PREFIX!r} are the ImOOD forms imood derives"
            elif not p.builtin and plugin_name_problem(kind, name):
                p.status, p.error = "refused", plugin_name_problem(kind, name)
            else:
                try:
                    p.cls = self._classes.get((kind, name, dist)) or md.EntryPoint(name, target, GROUPS[kind]).load()
                    check_class(kind, p.cls)
                except (Exception, SystemExit) as exc:  # a broken plugin must not break imood
                    p.cls, p.status, p.error = None, "error", " ".join(f"{type(exc).__name__}: {exc}".split())
            self._place(table, p)
        return table

    def _place(self, table: dict[tuple[str, str], Plugin], p: Plugin) -> None:
        key, held = (p.kind, p.name), table.get((p.kind, p.name))
        if p.status == "disabled" or held is None:
            (self._others.append(p) if p.status == "disabled" else table.__setitem__(key, p))
            return
        if held.builtin != p.builtin:  # the built-in keeps the name; the plugin is shadowed
            builtin, other = (held, p) if held.builtin else (p, held)
            other.status = "shadowed"
            other.error = f"{other.name!r} is a built-in name: {other.distribution}'s is ignored"
            table[key] = builtin
            self._others.append(other)
            return
        for q in (held, p):  # two third-party plugins: neither is used
            q.status = "clash"
            q.error = f"name clash: {p.name!r} is provided by both {held.distribution} and {p.distribution}"
        self._others.append(p)

    def plugins(self) -> list[Plugin]:
        """Every entry point (usable, broken, shadowed, clashing, disabled) and the derived ada_ forms."""
        if self._plugins is None:
            self._plugins = self._load()
        out = list(self._plugins.values()) + self._others
        for p in list(self._plugins.values()):
            if p.kind == "method" and p.loaded and p.method.ada_scale() is not None:
                out.append(Plugin(ADA_PREFIX + p.name, p.kind, p.distribution, p.version, p.target, p.cls,
                                  derived_from=p.name))
        return out

    def _warn(self) -> None:
        """One warning line per command for the plugins that cannot be used: the reason when there is one, else
        how many from which distributions (a broken distribution used to print a line per entry point)."""
        if self._warned:
            return
        self._warned = True
        bad = [p for p in self.plugins()
               if p.status in ("error", "refused", "clash", "shadowed") and p.derived_from is None]
        if len(bad) == 1:
            p = bad[0]
            message = f"imood: {LABELS[p.kind]} plugin {p.name!r} from {p.distribution} skipped: {p.error}"
        elif bad:
            by_dist: dict[str, list[str]] = {}
            for p in bad:
                by_dist.setdefault(p.distribution, []).append(p.name)
            where = "; ".join(f"{d}: {', '.join(names)}" for d, names in by_dist.items())
            message = f"imood: {len(bad)} plugins skipped ({where}); `imood plugins list` says why"
        else:
            return
        warnings.warn(message, PluginWarning, stacklevel=3)

    def names(self, kind: str) -> list[str]:
        self._warn()
        return sorted(p.name for p in self.plugins() if p.kind == kind and p.loaded)

    def get(self, kind: str, name: str) -> Plugin:
        """The usable plugin of this name, or an ImoodError that says why there is none."""
        self._warn()  # also loads the table
        table = self._plugins or {}
        base = name[len(ADA_PREFIX):] if kind == "method" and name.startswith(ADA_PREFIX) else None
        p = table.get((kind, base or name))
        if p is not None and p.loaded:
            if base is None:
                return p
            if p.method.ada_scale() is not None:
                return Plugin(name, kind, p.distribution, p.version, p.target, p.cls, derived_from=base)
            raise ImoodError(f"{base!r} declares no ada_scale, so it has no ImOOD form {name!r}")
        if p is not None:
            raise ImoodError(f"{LABELS[kind]} {name!r} from {p.distribution} cannot be used: {p.error}")
        off = sorted({q.distribution for q in self._others if q.kind == kind and q.name == (base or name)})
        err = unknown_name(LABELS[kind], name, self.names(kind))
        if off:
            raise ImoodError(f"{err} ({', '.join(off)} provides {(base or name)!r} but {ENV} leaves it out)")
        raise err

    def score(self, name: str, ada_scale: float | None = None, ada_correction: str = "full", **options: Any) -> Score:
        """A fresh score of the method `name` (fitted state is per instance), for `imood score -m name:options`;
        `ada_<name>` wraps its base with the correction or one of its controls (core.ada.CORRECTIONS)."""
        p = self.get("method", name)
        base = p.derived_from or name
        try:
            score = p.method.build_score(base, options)
        except OptionError as exc:
            raise named_option_error(name, exc, p.cls) from None
        if p.derived_from is None:
            if ada_scale is not None:
                raise ImoodError(f"--ada-scale applies to ada_ methods only, not {name!r}")
            if ada_correction != "full":
                raise ImoodError(f"--ada-correction applies to ada_ methods only, not {name!r}")
            return score
        return AdaScore(score, scale=ada_scale, correction=ada_correction)

    def training(self, name: str, ada_correction: str = "full", **options: Any) -> tuple[Score, Objective | None]:
        """The score whose g a run trains and the objective it trains with (None: the classifier alone), for
        `imood train --ood-metric name:options`; `ada_<name>` trains ImOOD's regularizer on the base score's g,
        with the base method's own objective where it keeps it."""
        p = self.get("method", name)
        base = p.derived_from or name
        try:
            score, objective = p.method.build_training(base, options)
        except OptionError as exc:
            raise named_option_error(name, exc, p.cls) from None
        if p.derived_from is None:
            if ada_correction != "full":
                raise ImoodError(f"--ada-correction applies to ada_ methods only, not {name!r}")
            return score, objective
        return score, AdaObjective(score, objective, keep_base=p.method.ada_keeps_objective, correction=ada_correction)

    def alias_of(self, name: str) -> str | None:
        """The method whose score `name` scores with, when that is another method's (outlier exposure scores
        as msp, balanced energy as energy): the two give identical scores on any model. None otherwise."""
        p = self.get("method", name)
        prefix = ADA_PREFIX if p.derived_from else ""
        base = p.derived_from or name
        score = p.method.score if issubclass(p.method, Method) and hasattr(p.method, "score") else None
        if score is None:
            return None
        for other in self.plugins():
            if (other.kind == "method" and other.loaded and other.derived_from is None and other.name != base
                    and getattr(other.method, "score", None) is score and other.method.__module__ == score.__module__):
                return prefix + other.name
        return None

    def describe(self, kind: str, name: str) -> dict[str, Any]:
        """What `imood plugins show` prints: where a plugin comes from, its docstring's first line and, for a
        method, its paper, needs, `ada_` scale and options by phase (type, default)."""
        p = self.get(kind, name)
        target = p.cls if p.derived_from is None else self.get(kind, p.derived_from).cls
        own = target.__dict__.get("__doc__") or getattr(inspect.getmodule(target), "__doc__", None) or ""
        doc = inspect.cleandoc(own)
        try:
            source = inspect.getsourcefile(target)
        except TypeError:
            source = None
        out: dict[str, Any] = {"name": name, "kind": kind, "distribution": p.distribution, "version": p.version,
                               "target": p.target, "source": source, "summary": " ".join(doc.split("\n\n")[0].split()),
                               "ada_form_of": p.derived_from}
        if kind == "method":
            method = self.get("method", p.derived_from or name).method
            paper = method.paper
            out.update(paper=paper.cite() if paper else None, paper_url=paper.url if paper else None,
                       trains=method.trainable() or p.derived_from is not None, scores_as=self.alias_of(name))
            try:
                score = self.score(p.derived_from or name)  # an ada_ form's c is its base's
                out.update(needs=sorted(score.needs), ada_scale=score.ada_scale, extra_outputs=score.extra_outputs)
            except ImoodError as exc:  # a method that cannot be built with its defaults says why
                out.update(needs=None, ada_scale=None, extra_outputs=None, problem=str(exc))
            out["options"] = option_table(method)
        elif kind == "aux_loss":
            out["options"] = [option_row(target, key, "training") for key in target.hyperparameters]
        return out

    def aux_loss(self, spec: str, **defaults: Any):
        """A fresh aux loss of `name[:key=value...]` (`imood train --aux-ood-loss pascl:k=0.5:T=0.1`).

        The spec's options are the loss's own: typed and checked by the class, an unknown key an error naming
        the loss and its options. `defaults` (imood's `--k` and `--T`, what a run recorded) reach only the
        options the loss declares, and only when not None; the spec's win over them."""
        try:
            name, given = parse_spec(spec)
        except ImoodError:
            raise ImoodError(f"aux loss options go as name:key=value[:key=value], got {spec!r}") from None
        p = self.get("aux_loss", name)
        options = {k: v for k, v in defaults.items() if v is not None and k in p.cls.hyperparameters}
        options.update(given)
        try:
            return p.cls(**options)
        except OptionError as exc:
            text = str(named_option_error(name, exc, p.cls)).removeprefix(f"{name}: ")
            raise OptionError(f"{aux_label(p)}: {text}") from None
        except Exception as exc:
            raise ImoodError(f"{aux_label(p)}: {type(exc).__name__}: {exc}") from None

    def dataset(self, name: str):
        return self.get("dataset", name).cls()


def aux_label(p: Plugin) -> str:
    """How messages name an aux loss: "aux loss 'pascl'", a plugin's with its distribution."""
    return f"aux loss {p.name!r}" + ("" if p.builtin else f" from {p.distribution}")


def option_row(cls: type, key: str, phase: str) -> dict[str, Any]:
    default = getattr(cls, key, None)
    default = None if isinstance(default, property) else default
    return {"name": key, "type": type(default).__name__ if default is not None else None, "default": default,
            "phase": phase, "note": getattr(cls, "default_notes", {}).get(key)}


def option_table(method: type[Method]) -> list[dict[str, Any]]:
    """A method's options: the score's (`imood score -m name:key=value`, also taken by training) and the
    objective's (`imood train --ood-metric name:key=value` only); a 0.2 detector's take both phases."""
    if not hasattr(method, "score"):  # a 0.2 Detector: one option bag for both phases
        detector = method.detector  # type: ignore[attr-defined]
        return [option_row(detector, key, "scoring and training") for key in detector.hyperparameters]
    rows = [option_row(method.score, key, "scoring") for key in method.score.hyperparameters]
    if method.objective is not None:
        rows += [option_row(method.objective, key, "training") for key in method.objective.hyperparameters]
    return rows


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry; entry points are read and imported on first use, once."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def reset_registry(new: Registry | None = None) -> Registry | None:
    """Replace the process-wide registry (None: rediscover on next use); returns the previous one."""
    global _REGISTRY
    old, _REGISTRY = _REGISTRY, new
    return old
