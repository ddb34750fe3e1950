"""The `imood train` / `imood score` command lines that bring a unit to completion (what `sweep` runs, and
what `sweep --print` shows for a scheduler's job array)."""

from __future__ import annotations

import shlex
from typing import Any

from imood_cli.engine.sweep.plan import Plan
from imood_cli.engine.sweep.units import Unit, UnitState
from imood_cli.engine.training.config import options


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
