"""Reading a sweep plan: every key checked, every name resolved, before hours of work (see the package
docstring for the format)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imood_cli.engine.runs.layout import score_file_stem
from imood_cli.engine.training.config import DATASET_ALIASES, convert, from_mapping
from imood_cli.errors import ImoodError, unknown_name
from imood_cli.fs.safe import parse_toml, read_text
from imood_cli.registry import parse_spec

SWEEP_KEYS = ("name", "description", "benchmarks", "seeds", "save_root", "data_root", "published", "gpus_per_run",
              "compare")
RUN_KEYS = ("name", "train", "score", "published", "model_from", "init_from", "note")
# Set by the plan's structure, never by an option table: each unit gets its own.
PLAN_OWNED = {"dataset": "the benchmark comes from [sweep] benchmarks",
              "seed": "seeds come from [sweep] seeds",
              "save_root": "run folders go under [sweep] save_root",
              "name": "run folders are named after the run and the seed",
              "data_root": "set data_root in [sweep] (or imood sweep --data-root)",
              "init_from": "start from another run's model with the run's init_from key"}
# May differ between a run folder's config.json and the plan without making it another run.
MACHINE_ONLY = {"device", "threads", "workers", "test_batch_size", "data_root", "save_root", "name", "init_from"}
SCORES = "scores"
LOGS = "logs"


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class RunSpec:
    """One [[run]] of a plan: a row of the plan's report."""

    name: str
    slug: str  # its folder name, without the seed
    score: tuple[str, ...]  # detector specs; score[0] is the row's headline detector
    train: dict[str, Any]  # its TrainConfig values (the plan's [defaults] not included)
    published: str | None = None
    model_from: str | None = None
    init_from: str | None = None
    note: str | None = None

    @property
    def headline(self) -> str:
        return self.score[0]


@dataclass
class Plan:
    path: Path
    name: str
    benchmarks: list[str]
    seeds: list[int]
    save_root: str
    runs: list[RunSpec]
    defaults: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    published: dict[str, str] = field(default_factory=dict)  # benchmark -> key of a published table
    gpus_per_run: int = 1
    description: str | None = None
    compare: list[tuple[str, str]] = field(default_factory=list)  # (A, B) run pairs: B − A paired over seeds

    def run(self, name: str) -> RunSpec:
        for r in self.runs:
            if r.name == name:
                return r
        raise unknown_name(f"run in {self.path}:", name, [r.name for r in self.runs])

    def trained(self, spec: RunSpec) -> RunSpec:
        """The run whose model a row scores: itself, or the run its model_from names."""
        return self.run(spec.model_from) if spec.model_from else spec


def run_slug(name: str) -> str:
    """A run or plan name as a folder name: 'PASCL + ImOOD' -> 'pascl+imood', 'Ablation α' -> 'ablation-α'.

    Letters and digits of any script are kept; every other run of characters (slashes, dots at the ends,
    spaces) becomes one '-', so a slug never leaves the folder it is made in."""
    text = re.sub(r"\s*\+\s*", "+", name.strip().lower())
    text = re.sub(r"[^\w+.=-]+", "-", text)
    return text.strip("-.")


def plain_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        shown = repr(value)[:40]
        raise ImoodError(f"{what} must be non-empty text, got {shown}")
    return value.strip()


def name_text(value: Any, what: str) -> str:
    """A name (of a plan, a run, a benchmark): text without control characters, which would otherwise reach
    the terminal and the run folders' names."""
    text = plain_text(value, what)
    bad = next((c for c in text if not c.isprintable()), None)
    if bad is not None:
        raise ImoodError(f"{what} holds the control character {bad!r}; names are printable text")
    return text


def _table(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImoodError(f"{what} must be a table, got {type(value).__name__}")
    return value


def _check_keys(data: dict[str, Any], known: Iterable[str], what: str) -> None:
    for key in data:
        if key not in known:
            raise unknown_name(f"key in {what}:", key, known)


def _option_table(data: Any, where: str) -> dict[str, Any]:
    """TrainConfig values of a [defaults] or train table, type-checked; keys the plan owns are refused."""
    data = _table(data, where)
    for key in data:
        if key in PLAN_OWNED:
            raise ImoodError(f"{key} in {where} is set by the plan: {PLAN_OWNED[key]}")
    return from_mapping(data, where)


def _whole_list(value: Any, what: str) -> list[int]:
    ok = isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                   for v in value)
    if not ok:
        raise ImoodError(f"{what} must be a non-empty list of whole numbers >= 0, got {repr(value)[:60]}")
    if len(set(value)) != len(value):
        raise ImoodError(f"{what} lists a seed twice: {value}")
    return list(value)


def read_plan(path: Path) -> Plan:
    """A plan file, checked like any input: unknown keys, wrong types and dangling references are one
    ImoodError naming the key and the file."""
    path = Path(path)
    data = parse_toml(read_text(path, "plan file"), f"plan file {path}")
    _check_keys(data, ("sweep", "defaults", "run"), f"plan {path}")
    if "sweep" not in data:
        raise ImoodError(f"plan {path} has no [sweep] table (benchmarks, seeds, ...)")
    head = _table(data["sweep"], f"[sweep] in {path}")
    _check_keys(head, SWEEP_KEYS, f"[sweep] of {path}")
    where = f"[sweep] of {path}"
    name = name_text(head.get("name", path.stem), f"name in {where}")
    if "benchmarks" not in head or "seeds" not in head:
        raise ImoodError(f"{where} must list benchmarks and seeds")
    benchmarks = head["benchmarks"]
    if not isinstance(benchmarks, list) or not benchmarks:
        raise ImoodError(f"benchmarks in {where} must be a non-empty list of benchmark names")
    benchmarks = [convert("dataset", plain_text(b, f"benchmarks in {where}"), where) for b in benchmarks]
    if len(set(benchmarks)) != len(benchmarks):
        raise ImoodError(f"benchmarks in {where} lists a benchmark twice: {benchmarks}")
    seeds = _whole_list(head["seeds"], f"seeds in {where}")
    if "save_root" not in head and not run_slug(name):
        raise ImoodError(f"name in {where} needs a letter or digit (it names the plan's folder under runs/)")
    save_root = plain_text(head.get("save_root", f"runs/{run_slug(name)}"), f"save_root in {where}")
    data_root = plain_text(head["data_root"], f"data_root in {where}") if "data_root" in head else None
    gpus_per_run = head.get("gpus_per_run", 1)
    if not isinstance(gpus_per_run, int) or isinstance(gpus_per_run, bool) or not 1 <= gpus_per_run <= 64:
        raise ImoodError(f"gpus_per_run in {where} must be a whole number in 1..64, got {gpus_per_run!r}")
    description = plain_text(head["description"], f"description in {where}") if "description" in head else None
    published = _published(head.get("published"), benchmarks, where)
    defaults = _option_table(data.get("defaults", {}), f"[defaults] of {path}")
    runs_data = data.get("run")
    if not isinstance(runs_data, list) or not runs_data:
        raise ImoodError(f"plan {path} has no [[run]] tables: add one per method")
    runs = [_read_run(r, i, path) for i, r in enumerate(runs_data)]
    plan = Plan(path, name, benchmarks, seeds, save_root, runs, defaults, data_root, published, gpus_per_run,
                description, _compare(head.get("compare", []), [r.name for r in runs], where))
    _check_references(plan)
    return plan


def _compare(value: Any, names: list[str], where: str) -> list[tuple[str, str]]:
    """`compare = [["energy", "ada_energy"], ...]`: pairs of run names, each reported as a paired difference."""
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
        raise ImoodError(f"compare in {where} must be a list of [A, B] run-name pairs, e.g. "
                         '[["energy", "ada_energy"]]')
    out = []
    for a, b in value:
        for ref in (a, b):
            if not isinstance(ref, str) or ref not in names:
                raise unknown_name(f"run in compare of {where}:", str(ref), names)
        if a == b:
            raise ImoodError(f"compare in {where} pairs {a!r} with itself")
        out.append((a, b))
    return out


def _published(value: Any, benchmarks: list[str], where: str) -> dict[str, str]:
    """`published = "table1-cifar10"` (one benchmark) or a table {benchmark = "table key"}."""
    if value is None:
        return {}
    if isinstance(value, str):
        if len(benchmarks) != 1:
            raise ImoodError(f"published in {where} names one table for {len(benchmarks)} benchmarks: give a table "
                             "{benchmark = \"table key\"} instead")
        return {benchmarks[0]: plain_text(value, f"published in {where}")}
    out = {}
    for bench, key in _table(value, f"published in {where}").items():
        bench = DATASET_ALIASES.get(bench, bench)
        if bench not in benchmarks:
            raise unknown_name(f"benchmark in published of {where}:", bench, benchmarks)
        out[bench] = plain_text(key, f"published.{bench} in {where}")
    return out


def _read_run(data: Any, index: int, path: Path) -> RunSpec:
    data = _table(data, f"[[run]] number {index + 1} in {path}")
    if "name" not in data:
        raise ImoodError(f"[[run]] number {index + 1} in {path} has no name")
    name = name_text(data["name"], f"name of [[run]] number {index + 1} in {path}")
    where = f"run {name!r} in {path}"
    _check_keys(data, RUN_KEYS, where)
    slug = run_slug(name)
    if not slug:
        raise ImoodError(f"{where}: the name needs a letter or digit (it names the run folders)")
    score = data.get("score")
    if not isinstance(score, list) or not score:
        raise ImoodError(f"score in {where} must be a non-empty list of detectors (the first is the row's headline)")
    specs = [plain_text(s, f"score in {where}") for s in score]
    stems = [score_file_stem(s) for s in specs]
    if len(set(stems)) != len(stems):
        raise ImoodError(f"score in {where} names a detector twice: {specs}")
    model_from = plain_text(data["model_from"], f"model_from in {where}") if "model_from" in data else None
    init_from = plain_text(data["init_from"], f"init_from in {where}") if "init_from" in data else None
    if model_from and ("train" in data or init_from):
        raise ImoodError(f"{where}: a run with model_from scores another run's model; it takes no train or init_from")
    train = _option_table(data.get("train", {}), f"train of {where}")
    published = plain_text(data["published"], f"published in {where}") if "published" in data else None
    note = plain_text(data["note"], f"note in {where}") if "note" in data else None
    return RunSpec(name, slug, tuple(specs), train, published, model_from, init_from, note)


def _check_references(plan: Plan) -> None:
    seen: dict[str, RunSpec] = {}
    slugs: dict[str, str] = {}
    for r in plan.runs:
        where = f"run {r.name!r} in {plan.path}"
        if r.name in seen:
            raise ImoodError(f"{plan.path} has two runs named {r.name!r}")
        if r.slug in slugs:
            raise ImoodError(f"runs {slugs[r.slug]!r} and {r.name!r} in {plan.path} would share the folder name "
                             f"{r.slug!r}: rename one")
        for key, ref in (("model_from", r.model_from), ("init_from", r.init_from)):
            if ref is None:
                continue
            if ref == r.name:
                raise ImoodError(f"{key} in {where} names the run itself")
            if ref not in seen:
                later = any(o.name == ref for o in plan.runs)
                hint = "list it before this run" if later else "no run has that name"
                raise ImoodError(f"{key} in {where} names {ref!r}: {hint}")
            if seen[ref].model_from:
                raise ImoodError(f"{key} in {where} names {ref!r}, which trains no model of its own "
                                 f"(it scores {seen[ref].model_from!r}'s): name {seen[ref].model_from!r}")
        seen[r.name] = r
        slugs[r.slug] = r.name
    if plan.published:
        return
    named = [r.name for r in plan.runs if r.published]
    if named:
        raise ImoodError(f"run {named[0]!r} in {plan.path} names a published row, but [sweep] names no published "
                         "table")


def check_names(plan: Plan) -> None:
    """Benchmarks (built-in, plugin, or folder benchmarks prepared under the plan's data root), detectors, OOD
    losses and aux losses the plan names exist (before hours of work)."""
    from imood_cli.engine.benchmarks import check_benchmark
    from imood_cli.engine.training.config import TrainConfig
    from imood_cli.registry import registry

    reg = registry()
    for b in plan.benchmarks:
        _named(f"benchmarks of {plan.path}", check_benchmark, b, plan.data_root or TrainConfig.data_root)
    for r in plan.runs:
        where = f"run {r.name!r} in {plan.path}"
        values = {**plan.defaults, **r.train}
        for spec in r.score:  # their options are checked too, each in its phase
            name, opts = parse_spec(spec)
            _named(f"score of {where}", reg.score, name, **opts)
        if "ood_metric" in values:
            name, opts = parse_spec(values["ood_metric"])
            _named(f"ood_metric of {where}", reg.training, name, **opts)
        if "aux_ood_loss" in values:
            _named(f"aux_ood_loss of {where}", reg.aux_loss, values["aux_ood_loss"])  # name:key=value checked too


def _named(where: str, lookup: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        lookup(*args, **kwargs)
    except ImoodError as exc:
        raise ImoodError(f"{where}: {exc}") from None


def select(plan: Plan, runs: list[str] | None = None, seeds: list[int] | None = None,
           benchmarks: list[str] | None = None) -> Plan:
    """The plan restricted to some runs, seeds (any, also ones the plan does not list) or benchmarks."""
    chosen = plan.runs
    if runs:
        names = [plan.run(n).name for n in runs]  # unknown names: one error with the known ones
        chosen = [r for r in plan.runs if r.name in names]
    bench = plan.benchmarks
    if benchmarks:
        wanted = [DATASET_ALIASES.get(b, b) for b in benchmarks]
        for b in wanted:
            if b not in plan.benchmarks:
                raise unknown_name(f"benchmark of {plan.path}:", b, plan.benchmarks)
        bench = [b for b in plan.benchmarks if b in wanted]
    if seeds is not None:
        if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ImoodError(f"--seeds must list distinct whole numbers >= 0, got {seeds}")
    return Plan(plan.path, plan.name, bench, list(seeds) if seeds is not None else plan.seeds, plan.save_root,
                chosen, plan.defaults, plan.data_root, {b: k for b, k in plan.published.items() if b in bench},
                plan.gpus_per_run, plan.description) if (runs or benchmarks or seeds is not None) else plan


# ---------------------------------------------------------------- units: one run folder each


# ---------------------------------------------------------------- what a unit still needs


# ---------------------------------------------------------------- command lines


# ---------------------------------------------------------------- running


# ---------------------------------------------------------------- the plan's results


