"""`imood sweep`: a plan of runs × seeds × benchmarks, trained and scored by the ordinary commands.

A plan is a TOML file:

    [sweep]     name, benchmarks, seeds, save_root, data_root, published, gpus_per_run, description
    [defaults]  TrainConfig options for every run
    [[run]]     name, train = {TrainConfig options}, score = [detectors; the first is the row's headline],
                published (the paper's row), model_from (score another run's model: a post-hoc row),
                init_from (start from another run's model of the same benchmark and seed), note

Each (benchmark, trained run, seed) is a *unit*: one run folder, `SAVE_ROOT/<benchmark>/<run>-seed<N>`,
made by `imood train` (or continued by `imood train --resume`) and scored by `imood score`, each run as a
subprocess with exactly the command line `--print` shows, so a scheduler can run the same lines. A unit
is complete when its model file exists and every score file it needs records that model's sha256; complete
units are never run again. Nothing here imports torch: the work happens in the subprocesses.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imood_cli.core.process import PARENT_ENV
from imood_cli.engine.runs.digest import sha256_file
from imood_cli.engine.runs.layout import CONFIG_FILE, MODEL_FILE, score_file_stem
from imood_cli.engine.training.config import DATASET_ALIASES, convert, from_mapping, options
from imood_cli.errors import ImoodError, unknown_name
from imood_cli.fs.safe import parse_toml, read_text
from imood_cli.registry import parse_spec

SWEEP_KEYS = ("name", "description", "benchmarks", "seeds", "save_root", "data_root", "published", "gpus_per_run")
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
SUMMARY_KEYS = ("auroc", "aupr_out", "fpr95", "acc", "many", "medium", "few")
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
                description)
    _check_references(plan)
    return plan


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
        specs = [(s, "score") for s in r.score] + ([(values["ood_metric"], "ood_metric")] if "ood_metric" in values
                                                   else [])
        for spec, what in specs:
            name, opts = parse_spec(spec)
            _named(f"{what} of {where}", reg.detector, name, **opts)  # its options are checked too
        if "aux_ood_loss" in values:
            _named(f"aux_ood_loss of {where}", reg.get, "aux_loss", values["aux_ood_loss"])


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


@dataclass
class Unit:
    """One (benchmark, trained run, seed): a run folder, trained once, scored for every row on its model."""

    benchmark: str
    seed: int
    run: RunSpec  # the run that trains the model
    folder: Path
    log: Path
    options: dict[str, Any]  # the TrainConfig values the plan sets for this folder
    rows: list[RunSpec]  # the rows scored on this model (the run itself first, if selected)
    depends: Unit | None = None  # init_from: the unit whose model this one starts from

    @property
    def key(self) -> tuple[str, str, int]:
        return self.benchmark, self.run.name, self.seed

    @property
    def label(self) -> str:
        return f"{self.benchmark} · {self.run.name} · seed {self.seed}"

    @property
    def specs(self) -> list[str]:
        return list(dict.fromkeys(s for r in self.rows for s in r.score))


def unit_folder(plan: Plan, benchmark: str, run: RunSpec, seed: int) -> Path:
    return Path(plan.save_root) / benchmark / f"{run.slug}-seed{seed}"


MAX_UNITS = 10_000  # run folders of one sweep; --max-units raises it


def units(plan: Plan, full: Plan | None = None, max_units: int = MAX_UNITS) -> list[Unit]:
    """The plan's units in the order they run: benchmark, then seed (every method on seed 0 first: the
    earliest complete comparison), then the plan's run order. `full` is the unselected plan, which holds
    the runs a selected row depends on. More than `max_units` run folders is refused before any is listed
    (a grid of millions would fill the memory before the first line of `--print`)."""
    full = full or plan
    most = len(plan.benchmarks) * len(plan.seeds) * len(full.runs)
    if most > max_units:
        raise ImoodError(f"{plan.path} asks for up to {most:,} run folders ({len(plan.benchmarks)} benchmark(s) × "
                         f"{len(plan.seeds):,} seed(s) × {len(full.runs)} run(s)), more than the {max_units:,} one "
                         "sweep runs: select fewer with --runs, --seeds or --benchmarks, or raise --max-units")
    selected = {r.name for r in plan.runs}
    needed: list[str] = []

    def need(name: str) -> None:  # a selected row's model, and the models it starts from
        spec = full.run(name)
        if spec.init_from:
            need(spec.init_from)
        if name not in needed:
            needed.append(name)

    for r in plan.runs:
        need(full.trained(r).name)
    order = [r for r in full.runs if r.name in needed]
    out: list[Unit] = []
    for bench in plan.benchmarks:
        for seed in plan.seeds:
            made: dict[str, Unit] = {}
            for spec in order:
                folder = unit_folder(plan, bench, spec, seed)
                values = {**full.defaults, **spec.train, "dataset": bench, "seed": seed}
                rows = [r for r in full.runs if full.trained(r).name == spec.name and r.name in selected]
                log = Path(plan.save_root) / LOGS / bench / f"{folder.name}.log"
                u = Unit(bench, seed, spec, folder, log, values, rows,
                         made[spec.init_from] if spec.init_from else None)
                made[spec.name] = u
                out.append(u)
    return out


# ---------------------------------------------------------------- what a unit still needs


@dataclass
class UnitState:
    train: str | None  # "train", "resume", or None when the model exists
    score: list[str]  # detector specs still to score

    @property
    def complete(self) -> bool:
        return self.train is None and not self.score


def score_meta(path: Path) -> dict[str, Any] | None:
    """The metadata of a score file if it is intact (its tensor checksum verifies), else None."""
    from imood_cli.engine.runs.scorefile import read_score_file

    try:
        return read_score_file(path)[1]
    except ImoodError:
        return None


def unit_state(unit: Unit) -> UnitState:
    """What the unit still needs: training (fresh or resumed) and the score files that are missing, damaged
    or computed from another model than the folder's model file."""
    model = unit.folder / MODEL_FILE
    if model.is_file():
        sha = sha256_file(model)
        todo = []
        for spec in unit.specs:
            meta = score_meta(unit.folder / SCORES / f"{score_file_stem(spec)}.safetensors")
            if meta is None or meta.get("checkpoint_sha256") != sha:
                todo.append(spec)
        return UnitState(None, todo)
    if (unit.folder / CONFIG_FILE).is_file():  # started, no model yet: killed, interrupted or still running
        return UnitState("resume", unit.specs)
    return UnitState("train", unit.specs)


def check_drift(unit: Unit) -> None:
    """A run folder trained with other settings than the plan now gives is another experiment: refused,
    so that it is neither skipped nor resumed as if it were this one."""
    path = unit.folder / CONFIG_FILE
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImoodError(f"{path} cannot be read ({type(exc).__name__}): remove the run folder {unit.folder} or "
                         "use another save_root") from None
    if not isinstance(stored, dict):
        raise ImoodError(f"{path} is not a JSON object: remove the run folder {unit.folder} or use another save_root")
    for key, planned in unit.options.items():
        if key in MACHINE_ONLY:
            continue
        have = stored.get(key)
        try:
            have = convert(key, have, str(path)) if have is not None else None
        except ImoodError:
            pass  # an unreadable stored value differs from the plan's: reported below
        if have != planned:
            raise ImoodError(f"{unit.folder} was trained with {key} = {json.dumps(have)} but the plan's run "
                             f"{unit.run.name!r} now says {json.dumps(planned)}: use another save_root for the changed "
                             "plan, or remove that run folder")


# ---------------------------------------------------------------- command lines


def _value(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(_value(x) for x in v)
    if isinstance(v, float):
        return repr(v)  # exact: 5e-4 stays 0.0005, never rounded to six digits
    return str(v)


def option_args(values: dict[str, Any]) -> list[str]:
    """TrainConfig values as `imood train` flags, in declaration order, primary spellings."""
    out: list[str] = []
    for name, (meta, _, _) in options().items():
        if name not in values:
            continue
        v, flag = values[name], meta.flags[0]
        if "/" in flag:
            on, off = flag.split("/")
            out.append(on if v else off)
            continue
        text = _value(v)
        # '--m-in -23.0' would read -23.0 as a flag: glue values that start with a dash
        out += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
    return out


def commands(plan: Plan, unit: Unit, state: UnitState, data_root: str | None = None) -> list[list[str]]:
    """The `imood ...` command lines (argument lists) that bring the unit to completion, in order."""
    cmds: list[list[str]] = []
    ddp = ["--ddp", "--nproc", str(plan.gpus_per_run)] if plan.gpus_per_run > 1 else []
    root = data_root or plan.data_root
    if state.train == "resume":
        cmds.append(["imood", "train", "--resume", str(unit.folder), *ddp])
    elif state.train == "train":
        where: dict[str, Any] = {"save_root": str(unit.folder.parent), "name": unit.folder.name}
        if root:
            where["data_root"] = root
        if unit.depends is not None:
            where["init_from"] = str(unit.depends.folder)
        cmds.append(["imood", "train", *option_args({**where, **unit.options}), *ddp])
    if state.score:
        cmd = ["imood", "score", str(unit.folder), "--ood-metric", ",".join(state.score)]
        if root:
            cmd += ["--data-root", root]
        if "test_batch_size" in unit.options:
            cmd += ["--batch-size", str(unit.options["test_batch_size"])]
        if "workers" in unit.options:
            cmd += ["--workers", str(unit.options["workers"])]
        cmds.append(cmd)
    return cmds


def shell_line(cmds: list[list[str]]) -> str:
    """One line a shell (or one task of a scheduler's job array) runs: the commands joined by &&."""
    return " && ".join(shlex.join(c) for c in cmds)


# ---------------------------------------------------------------- running


class SweepObserver(Protocol):
    def step_start(self, unit: Unit, cmd: list[str], slot: str | None) -> None: ...

    def step_end(self, unit: Unit, cmd: list[str], code: int, seconds: float) -> None: ...


@dataclass
class Outcome:
    unit: Unit
    status: str  # done | failed | interrupted | blocked
    message: str = ""


@dataclass
class Work:
    unit: Unit
    cmds: list[list[str]]


def launch(cmd: list[str], env: dict[str, str], log) -> subprocess.Popen:
    """Run an `imood ...` line with this installation's interpreter, in its own process group: a Ctrl-C in
    the terminal reaches the sweep alone, which passes exactly one SIGINT on (two would stop a training
    before it saves its checkpoint). The command stops when the sweep dies (core.process)."""
    argv = [sys.executable, "-m", "imood_cli", *cmd[1:]]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env={**env, PARENT_ENV: str(os.getpid())}, start_new_session=True)


def gpu_slots(gpus: list[str] | None, per_run: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each worker: GPUs taken per_run at a time (None: one worker, the
    environment as it is)."""
    if not gpus:
        return [None]
    if len(gpus) % per_run:
        raise ImoodError(f"--gpus lists {len(gpus)} GPUs but each run takes {per_run} (gpus_per_run): give a "
                         "multiple of it")
    return [",".join(gpus[i:i + per_run]) for i in range(0, len(gpus), per_run)]


def run_work(work: list[Work], done: set[tuple[str, str, int]], slots: list[str | None],
             observer: SweepObserver | None = None,
             launcher: Callable[[list[str], dict[str, str], Any], Any] | None = None) -> tuple[list[Outcome], bool]:
    """Run the units' commands, one unit per slot at a time; returns the outcomes and whether the sweep was
    interrupted. A failing unit is recorded and the others go on; a unit whose init_from model failed is
    blocked. Ctrl-C (or SIGTERM) stops starting work and passes SIGINT to every running command, so a
    training saves its checkpoint; the next sweep resumes it."""
    launcher = launcher or launch
    pending = list(work)
    finished: dict[tuple[str, str, int], bool] = {k: True for k in done}
    outcomes: list[Outcome] = []
    running: dict[int, Any] = {}
    cond = threading.Condition()
    stop = threading.Event()

    def take() -> Work | None:
        with cond:
            while not stop.is_set() and pending:
                for i, w in enumerate(pending):
                    dep = w.unit.depends
                    if dep is None or dep.key in finished:
                        return pending.pop(i)
                cond.wait(0.5)
            return None

    def finish(w: Work, outcome: Outcome) -> None:
        with cond:
            outcomes.append(outcome)
            finished[w.unit.key] = outcome.status == "done"
            cond.notify_all()

    def step(w: Work, cmd: list[str], slot: str | None) -> int:
        env = dict(os.environ)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        w.unit.log.parent.mkdir(parents=True, exist_ok=True)
        with open(w.unit.log, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            where = f" CUDA_VISIBLE_DEVICES={slot}" if slot is not None else ""
            log.write(f"# {stamp} imood sweep: {w.unit.label}{where}\n$ {shlex.join(cmd)}\n".encode())
            log.flush()
            if observer:
                observer.step_start(w.unit, cmd, slot)
            started = time.monotonic()
            with cond:
                if stop.is_set():
                    return 130
                proc = launcher(cmd, env, log)
                running[id(proc)] = proc
            try:
                code = proc.wait()
            finally:
                with cond:
                    running.pop(id(proc), None)
            took = time.monotonic() - started
            log.write(f"# exit {code} after {took:.1f} s\n".encode())
        if observer:
            observer.step_end(w.unit, cmd, code, took)
        return code

    def worker(slot: str | None) -> None:
        while (w := take()) is not None:
            dep = w.unit.depends
            if dep is not None and not finished.get(dep.key, False):
                finish(w, Outcome(w.unit, "blocked", f"not run: {dep.label} did not complete"))
                continue
            outcome = Outcome(w.unit, "done")
            for cmd in w.cmds:
                try:
                    code = step(w, cmd, slot)
                except Exception as exc:  # a log that cannot be written, a command that cannot start
                    outcome = Outcome(w.unit, "failed", f"`{shlex.join(cmd[:2])}` could not run: "
                                                        f"{type(exc).__name__}: {exc}")
                    break
                if code == 0:
                    continue
                if stop.is_set() or code in (130, -signal.SIGINT):
                    outcome = Outcome(w.unit, "interrupted", f"stopped during `{shlex.join(cmd[:2])}`")
                else:
                    outcome = Outcome(w.unit, "failed", f"`{shlex.join(cmd[:2])}` {_ended(code)}; log: {w.unit.log}")
                break
            finish(w, outcome)

    def interrupt() -> None:
        stop.set()
        with cond:
            for proc in list(running.values()):
                try:
                    os.kill(proc.pid, signal.SIGINT)
                except (ProcessLookupError, PermissionError):
                    pass
            cond.notify_all()

    exited: list[int] = []

    def run_slot(i: int, slot: str | None) -> None:
        try:
            worker(slot)
        finally:
            exited.append(i)

    threads = [threading.Thread(target=run_slot, args=(i, s), daemon=True) for i, s in enumerate(slots)]
    previous = _on_sigterm()
    started: list[threading.Thread] = []
    try:
        try:
            for t in threads:
                t.start()
                started.append(t)
        except KeyboardInterrupt:
            interrupt()
        # Sleep rather than Thread.join: a KeyboardInterrupt inside join can leave the thread looking finished.
        while len(exited) < len(started):
            try:
                time.sleep(0.1)
            except KeyboardInterrupt:
                interrupt()  # once per Ctrl-C: a second one stops a training at once, as in `imood train`
        for t in started:
            t.join()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    with cond:
        left = list(pending)
    outcomes += [Outcome(w.unit, "interrupted", "not started") for w in left]
    return outcomes, stop.is_set()


def _ended(code: int) -> str:
    if code >= 0:
        return f"exited with {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _on_sigterm():
    """SIGTERM (a scheduler's pre-emption, `kill`) stops the sweep the way Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------- the plan's results


@dataclass
class RowResult:
    """One row of the plan's report: a run on one benchmark, its headline detector, over the seeds."""

    benchmark: str
    run: RunSpec
    per_seed: dict[int, dict[str, float | None]]
    missing: dict[int, str]  # seed -> why it has no result

    @property
    def seeds(self) -> list[int]:
        return sorted(self.per_seed)

    def mean(self, key: str) -> float | None:
        values = [m[key] for m in self.per_seed.values() if m.get(key) is not None]
        return math.fsum(values) / len(values) if values else None

    def std(self, key: str) -> float | None:
        """Sample standard deviation over seeds (n − 1 in the denominator); None for fewer than two."""
        values = [m[key] for m in self.per_seed.values() if m.get(key) is not None]
        return statistics.stdev(values) if len(values) > 1 else None


def seed_result(path: Path, model_sha: str | None) -> tuple[dict[str, float | None] | None, str]:
    """The headline numbers of one score file (mean over its OOD sets, ID accuracy), or why there are none."""
    from imood_cli.engine.metrics.evaluate import evaluate
    from imood_cli.engine.runs.scorefile import ScoreSet

    if model_sha is None:
        return None, "no model"
    if not path.is_file():
        return None, "not scored"
    try:
        ss = ScoreSet.load(path)
    except ImoodError as exc:
        return None, str(exc)
    if ss.meta.get("checkpoint_sha256") != model_sha:
        return None, "scores of an older model"
    has_id = ss.id_label is not None and ss.id_pred is not None and ss.class_counts is not None
    r = evaluate(ss.id_score, ss.ood_score, id_labels=ss.id_label if has_id else None,
                 id_preds=ss.id_pred if has_id else None, class_counts=ss.class_counts if has_id else None)
    m = r["ood"]["mean"]
    idr = r.get("id", {})
    return {"auroc": m["auroc"], "aupr_out": m["aupr_out"], "fpr95": m["fpr95"], "acc": idr.get("acc"),
            "many": idr.get("many"), "medium": idr.get("medium"), "few": idr.get("few")}, ""


def collect(plan: Plan, full: Plan | None = None) -> list[RowResult]:
    """One result row per (benchmark, run) of the plan, from the score files of its headline detector."""
    full = full or plan
    shas: dict[Path, str | None] = {}
    out = []
    for bench in plan.benchmarks:
        for spec in plan.runs:
            per_seed, missing = {}, {}
            for seed in plan.seeds:
                folder = unit_folder(plan, bench, full.trained(spec), seed)
                if folder not in shas:
                    model = folder / MODEL_FILE
                    shas[folder] = sha256_file(model) if model.is_file() else None
                numbers, why = seed_result(folder / SCORES / f"{score_file_stem(spec.headline)}.safetensors",
                                           shas[folder])
                if numbers is None:
                    missing[seed] = why
                else:
                    per_seed[seed] = numbers
            out.append(RowResult(bench, spec, per_seed, missing))
    return out
