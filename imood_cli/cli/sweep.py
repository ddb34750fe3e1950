"""`imood sweep PLAN`: train and score a plan of runs × seeds × benchmarks, then report mean ± std per row."""

from __future__ import annotations

import dataclasses
import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from imood_cli.cli.common import console, split_list
from imood_cli.errors import ImoodError, unknown_name
from imood_cli.report.sweep import sweep_json, sweep_tables

FORMATS = ("terminal", "md", "json")


class StepLines:
    """Progress as one plain line per command started and ended (readable in logs and job output)."""

    def __init__(self, total: int) -> None:
        self.total, self.started = total, 0
        self.lock = threading.Lock()
        self.number: dict[tuple, int] = {}

    def step_start(self, unit, cmd: list[str], slot: str | None) -> None:
        with self.lock:
            if unit.key not in self.number:
                self.started += 1
                self.number[unit.key] = self.started
            gpu = f" [GPU {slot}]" if slot is not None else ""
            _say(f"[{self.number[unit.key]}/{self.total}]{gpu} {unit.label}: {_step(cmd)} (log: {unit.log})")

    def step_end(self, unit, cmd: list[str], code: int, seconds: float) -> None:
        with self.lock:
            how = "done" if code == 0 else f"exit code {code}" if code > 0 else f"stopped by {_signal_name(-code)}"
            _say(f"[{self.number[unit.key]}/{self.total}] {unit.label}: {_step(cmd)} {how} after {seconds:.1f} s")


def _say(text: str) -> None:
    """One line on stderr, never wrapped: job logs and scripts read it."""
    print(text, file=sys.stderr, flush=True)


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _step(cmd: list[str]) -> str:
    return "train --resume" if cmd[1:3] == ["train", "--resume"] else cmd[1]


def _plan_file(name: str) -> Path:
    from imood_cli import plans

    path = Path(name)
    if path.is_file():
        return path
    found = plans.find(name) if "/" not in name else None
    if found is not None:
        return found
    if path.exists():
        raise ImoodError(f"plan file {path} is not a file")
    raise ImoodError(f"plan file not found: {name} (plans imood ships: {', '.join(plans.shipped())})")


def _list_plans() -> None:
    from rich.table import Table

    from imood_cli import plans
    from imood_cli.engine.sweep.plan import read_plan

    table = Table(title="plans imood ships (imood sweep NAME)", title_justify="left")
    for col in ("name", "runs × seeds × benchmarks", "description"):
        table.add_column(col)
    for name, path in plans.shipped().items():
        p = read_plan(path)
        table.add_row(name, f"{len(p.runs)} × {len(p.seeds)} × {len(p.benchmarks)}", p.description or "")
    console.print(table)


def _check_published(plan) -> None:
    from imood_cli.report.published import check_reference

    for bench, key in plan.published.items():
        check_reference(key, None, bench, f"published in [sweep] of {plan.path}")
        for r in plan.runs:
            check_reference(key, r.published, bench, f"run {r.name!r} in {plan.path}")


def sweep(
    plan: Optional[str] = typer.Argument(None, metavar="PLAN", show_default=False,
                                         help="A plan file (TOML), or the name of a plan imood ships (--list)."),
    print_only: bool = typer.Option(False, "--print", "--dry-run", help=(
        "Print the command lines that would run now, one line per run folder (for a scheduler's job array), "
        "and run nothing.")),
    collect: bool = typer.Option(False, "--collect", help=(
        "Only report, from the run folders under the plan's save_root (runs done elsewhere).")),
    gpus: Optional[str] = typer.Option(None, "--gpus", metavar="IDS", help=(
        "GPUs to use, e.g. 0,1,2,3: one run at a time on each (gpus_per_run at a time for plans that ask for "
        "more), through CUDA_VISIBLE_DEVICES. [default: one run at a time, the environment's devices]")),
    runs: Optional[str] = typer.Option(None, "--runs", metavar="NAMES", help=(
        "Only these runs of the plan, comma-separated (the models they score or start from are trained too).")),
    seeds: Optional[str] = typer.Option(None, "--seeds", metavar="N,N", help="These seeds instead of the plan's."),
    benchmarks: Optional[str] = typer.Option(None, "--benchmarks", metavar="NAMES",
                                             help="Only these benchmarks of the plan."),
    save_root: Optional[str] = typer.Option(None, "--save-root", "--srp", metavar="DIR",
                                            help="Where the run folders go. [default: the plan's save_root]"),
    data_root: Optional[str] = typer.Option(None, "--data-root", "--drp", metavar="DIR", help=(
        "Dataset folder. [default: the plan's data_root, else imood train's]")),
    fmt: str = typer.Option("terminal", "--format", "-f", metavar="FORMAT",
                            help="Report format: terminal, md or json."),
    list_plans: bool = typer.Option(False, "--list", help="List the plans imood ships."),
    max_units: int = typer.Option(10_000, "--max-units", metavar="N", min=1, help=(
        "Refuse a plan of more run folders than this (benchmarks × seeds × runs).")),
) -> None:
    """Train and score every run × seed × benchmark of a plan, skipping what is complete and resuming what was
    interrupted, then report each run's mean ± std over seeds (beside the paper's numbers when the plan names a
    published table). Each step is an ordinary `imood train` / `imood score` process; --print shows them."""
    from imood_cli.engine import sweep as engine

    if list_plans:
        _list_plans()
        return
    if plan is None:
        raise ImoodError("give a plan file or the name of a shipped plan (imood sweep --list shows them)")
    if fmt not in FORMATS:
        raise unknown_name("report format", fmt, FORMATS)
    if print_only and collect:
        raise ImoodError("--print shows what would run and --collect only reports: give one of them")
    full = engine.read_plan(_plan_file(plan))
    if save_root is not None:
        full = dataclasses.replace(full, save_root=engine.plain_text(save_root, "--save-root"))
    if data_root is not None:
        full = dataclasses.replace(full, data_root=engine.plain_text(data_root, "--data-root"))
    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in split_list(seeds)]
        except ValueError:
            raise ImoodError(f"--seeds must be whole numbers separated by commas, got {seeds!r}") from None
    chosen = engine.select(full, split_list(runs) or None, seed_list, split_list(benchmarks) or None)
    _check_published(chosen)
    if not collect:
        engine.check_names(full)
    units = engine.units(chosen, full, max_units)
    for u in units:
        engine.check_drift(u)

    if collect:
        failed: list = []
    else:
        states = {u.key: engine.unit_state(u) for u in units}
        todo = [u for u in units if not states[u.key].complete]
        if print_only:
            _print_commands(chosen, units, states)
            return
        slots = engine.gpu_slots(split_list(gpus) or None, chosen.gpus_per_run)
        if todo:
            _say(f"{chosen.name}: {len(todo)} of {len(units)} run folders to train or score "
                 f"({len(units) - len(todo)} complete)")
        else:
            _say(f"{chosen.name}: all {len(units)} run folders are complete")
        work = [engine.Work(u, engine.commands(chosen, u, states[u.key])) for u in todo]
        done = {u.key for u in units if states[u.key].complete}
        outcomes, interrupted = engine.run_work(work, done, slots, StepLines(len(work)))
        if interrupted:
            stopped = [o for o in outcomes if o.status == "interrupted"]
            _say(f"imood: interrupted: {len(stopped)} run folder(s) not finished; run the same `imood sweep` again "
                 "to resume them")
            raise typer.Exit(130)
        failed = [o for o in outcomes if o.status in ("failed", "blocked")]

    rows = engine.collect(chosen, full)
    _print_report(chosen, rows, failed, fmt)
    for o in failed:
        _say(f"imood: {o.status}: {o.unit.label}: {o.message}")
    if failed:
        raise typer.Exit(1)


def _print_commands(plan, units, states) -> None:
    from imood_cli.engine.sweep.commands import commands, shell_line

    pending = {u.key for u in units if not states[u.key].complete}
    for u in units:
        if u.key not in pending:
            continue
        line = shell_line(commands(plan, u, states[u.key]))
        if u.depends is not None and u.depends.key in pending:
            line += f"  # after the line of {u.depends.folder}"
        print(line)
    _say(f"{plan.name}: {len(pending)} of {len(units)} run folders to train or score "
         f"({len(units) - len(pending)} complete)")


# ---------------------------------------------------------------- the plan's report


def _rich(t):
    """A report table for the terminal, numbers right-aligned."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    from imood_cli.report.tables import cell_text

    out = RichTable(title=escape(t.title), title_justify="left", caption=escape(" ".join(t.notes)) or None,
                    caption_justify="left")
    for c in t.columns:
        out.add_column(escape(c.heading), justify="left" if c.key in ("label", "detector", "published") else "right")
    for row in t.rows:
        out.add_row(*[escape(cell_text(c, v)) if v is not None else "[dim]–[/]" for c, v in zip(t.columns, row)])
    return out


def _print_report(plan, rows, failed, fmt: str) -> None:
    if fmt == "json":
        print(sweep_json(plan, rows, failed), end="")
        return
    tables = sweep_tables(plan, rows)
    if fmt == "md":
        from imood_cli.report.formats import markdown

        print(markdown(None, tables), end="")
        return
    for t in tables:
        console.print(_rich(t))
