"""A plan's units: one run folder each (a benchmark, the run that trains its model, a seed), in the order they
run, and what each still needs (training, a resume, score files)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imood_cli.engine.runs.digest import sha256_file
from imood_cli.engine.runs.layout import CONFIG_FILE, MODEL_FILE, score_file_stem
from imood_cli.engine.sweep.plan import LOGS, MACHINE_ONLY, SCORES, Plan, RunSpec
from imood_cli.engine.training.config import convert
from imood_cli.errors import ImoodError


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
