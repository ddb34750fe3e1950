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

The jobs, one module each: `plan` (reading and checking a plan), `units` (what each run folder still
needs), `commands` (its command lines), `pool` (running them), `results` (collecting the rows).
"""

from imood_cli.engine.sweep.commands import commands, option_args, shell_line
from imood_cli.engine.sweep.plan import Plan, RunSpec, check_names, name_text, plain_text, read_plan, run_slug, select
from imood_cli.engine.sweep.pool import Outcome, Work, gpu_slots, launch, run_work
from imood_cli.engine.sweep.results import RowResult, collect
from imood_cli.engine.sweep.units import MAX_UNITS, Unit, UnitState, check_drift, unit_state, units

__all__ = ["MAX_UNITS", "Outcome", "Plan", "RowResult", "RunSpec", "Unit", "UnitState", "Work", "check_drift",
           "check_names", "collect", "commands", "gpu_slots", "launch", "name_text", "option_args", "plain_text",
           "read_plan", "run_slug", "run_work", "select", "shell_line", "unit_state", "units"]
