"""`imood train`: its options are generated from `engine.config.TrainConfig`, where each is declared once
(type, default per benchmark, help, the reference code's flag), so the help cannot disagree with the run.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from imood_cli.cli.common import DDP_ARGV, console, current_argv, err_console, is_main_process, progress
from imood_cli.engine.training import config as train_config
from imood_cli.errors import ImoodError


class TrainProgress:
    """Progress of a run: a bar on a terminal; one plain line per epoch otherwise (nohup, sbatch, CI)."""

    def __init__(self, bar) -> None:
        self.bar, self.task, self.total, self.info = bar, None, None, ""
        self.plain = not err_console.is_terminal
        self.started = time.perf_counter()
        self.steps_left = 0
        self.evaluations: list[dict[str, Any]] = []  # this epoch's --eval-every records, for its line

    def start(self, cfg, bench, start_epoch, steps_per_epoch) -> None:
        self.epochs, self.steps_per_epoch = cfg.epochs, steps_per_epoch
        self.first_epoch = start_epoch
        self.total = self.bar.add_task("total", total=cfg.epochs * steps_per_epoch,
                                       completed=start_epoch * steps_per_epoch, info="")
        if is_main_process():
            err_console.print(f"[bold]{cfg.run_name}[/]: {bench.name} ({len(bench.train):,} ID images, "
                              f"{bench.num_classes} classes), {cfg.model}, {cfg.ood_metric} + {cfg.aux_ood_loss}, "
                              f"{cfg.epochs} epochs × {steps_per_epoch} steps")

    def epoch_start(self, epoch, steps, start_step) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(f"epoch {epoch}", total=steps, completed=start_step, info=self.info)
        self.bar.update(self.total, advance=start_step)

    def step(self, epoch, step, images) -> None:
        self.bar.update(self.task, advance=1)
        self.bar.update(self.total, advance=1)

    def log(self, r: dict[str, Any]) -> None:
        self.info = (f"loss {r['loss']:.3f} (in {r['l_in']:.3f} ood {r['l_ood']:.3f} aux {r['l_aux']:.3f}) "
                     f"{r['images_per_s']:,.0f} img/s")
        self.bar.update(self.task, info=self.info)

    def evaluated(self, r: dict[str, Any]) -> None:
        self.evaluations.append(r)

    def epoch_end(self, r: dict[str, Any]) -> None:
        from imood_cli.engine.training.validation import progress_text

        self.log(r)
        evals = "".join(f"; {progress_text(e)}" for e in self.evaluations if e["epoch"] == r["epoch"])
        self.evaluations = []
        self.bar.update(self.total, info=f"epoch {r['epoch']}: loss {r['loss']:.3f}{evals}")
        if self.plain and is_main_process():
            done = r["epoch"] - self.first_epoch
            per_epoch = (time.perf_counter() - self.started) / max(done, 1)
            eta = per_epoch * (self.epochs - r["epoch"])
            err_console.print(f"epoch {r['epoch']}/{self.epochs}: loss {r['loss']:.4f} (in {r['l_in']:.4f}, "
                              f"ood {r['l_ood']:.4f}, aux {r['l_aux']:.4f}), lr {r['lr']:.3g}, "
                              f"{r['images_per_s']:,.0f} img/s{evals}, ETA {_duration(eta)}", highlight=False,
                              soft_wrap=True)  # one line per epoch in a log, whatever its width

    def message(self, text: str) -> None:
        if is_main_process():
            err_console.print(text, highlight=False, soft_wrap=not err_console.is_terminal)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def default_nproc(device: str | None) -> int:
    if device and device.replace(",", "").isdigit():
        return len(device.split(","))
    import torch

    return torch.cuda.device_count() if device in (None, "auto", "cuda") else 1


def launch_ddp(nproc: int, dist_url: str | None) -> int:
    """The reference's `--ddp`: run this same command once per process under torchrun."""
    host, port = "127.0.0.1", None
    if dist_url:
        m = re.fullmatch(r"(?:tcp://)?([^:/]+):(\d+)", dist_url.strip())
        if not m:
            raise ImoodError(f"--dist_url must look like tcp://HOST:PORT, got {dist_url!r}")
        host, port = m.group(1), int(m.group(2))
    if port is None:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    # The command line travels in the environment: torchrun's own parser would take imood's flags
    # that abbreviate one of its options (--e is --event-log-handler to it) for its own.
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-addr={host}",
           f"--master-port={port}", "-m", "imood_cli"]
    env = {**os.environ, DDP_ARGV: json.dumps(current_argv())}
    err_console.print(f"--ddp: {nproc} processes through torchrun (rendezvous {host}:{port})")
    return subprocess.run(cmd, env=env).returncode


def train(resume_run: Optional[Path], config: Optional[Path], force: bool, ddp: bool, nproc: Optional[int],
          dist_url: Optional[str], **given: Any) -> None:
    """Train a classifier and OOD detector on long-tailed data with the ImOOD regularizer.

    L = logit-adjusted CE + Lambda · OOD loss + Lambda2 · aux loss, over two views of each ID image and a
    batch of auxiliary OOD images. Defaults depend on --ds (shown per benchmark below).
    """
    from imood_cli.engine import runtime
    from imood_cli.engine.training.lifecycle import resume
    from imood_cli.engine.training.lifecycle import train as train_run

    given = {k: v for k, v in given.items() if v is not None}
    if ddp and "WORLD_SIZE" not in os.environ:
        n = nproc or default_nproc(given.get("device"))
        if n > 1:
            raise typer.Exit(launch_ddp(n, dist_url))
    observer_bar = progress(transient=True)
    observer = TrainProgress(observer_bar)
    started = time.perf_counter()
    if resume_run is not None:
        if config is not None or force:
            raise ImoodError("--resume continues a run with its own settings: it takes neither --config nor --force")
        with observer_bar:
            result = resume(resume_run, observer, overrides=given)
        name = resume_run
    else:
        cfg = train_config.resolve_config(given, config)
        rt = runtime.setup(cfg.device, cfg.amp, cfg.channels_last)
        with observer_bar:
            result = train_run(cfg, rt, observer, force=force)
        name = cfg.run_dir
    if not is_main_process():
        return
    from rich.table import Table

    took = time.perf_counter() - started
    table = Table(title=f"trained {result.run_dir}", title_justify="left", show_header=False)
    table.add_row("epochs", str(result.epochs))
    for key in ("loss", "l_in", "l_ood", "l_aux"):
        if key in result.last:
            table.add_row(f"final {key}", f"{result.last[key]:.4f}")
    table.add_row("wall time", f"{took:.1f} s")
    table.add_row("model", str(result.run_dir / "model.safetensors"))
    console.print(table)
    console.print(f"next: imood score {name}")


def _cli_type(tp: Any) -> Any:
    """The type Typer parses an option as: lists arrive as 'a,b' text, everything may be left out."""
    base, _ = train_config._base_type(tp)
    if base in (bool, int, float, str):
        return Optional[base]
    return Optional[str]


def _resumable_flags() -> str:
    """'--epochs, --device, ... and --tensorboard': the options that may change on --resume."""
    flags = [meta.flags[0].split("/")[0] for meta, _, _ in train_config.options().values() if meta.resumable]
    return ", ".join(flags[:-1]) + f" and {flags[-1]}" if len(flags) > 1 else "".join(flags)


def _parameters() -> list[inspect.Parameter]:
    launcher = [
        ("resume_run", Optional[Path], typer.Option(None, "--resume", metavar="RUN", help=(
            "Continue the run in this folder from its newest intact checkpoint, with its own settings "
            f"(only {_resumable_flags()} may be given)."))),
        ("config", Optional[Path], typer.Option(None, "--config", metavar="FILE", help=(
            "A TOML (or JSON) file of option values: keys as in config.json, top level or a [train] table."))),
        ("force", bool, typer.Option(False, "--force", help=(
            "Start over in an existing run folder: removes imood's own files there (model, checkpoints, "
            "scores, evaluations, report), nothing else."))),
        ("ddp", bool, typer.Option(False, "--ddp", help=(
            "Train on several processes, one per GPU of --gpu: imood starts them through torchrun."))),
        ("nproc", Optional[int], typer.Option(None, "--nproc", metavar="N", help=(
            "Processes for --ddp. [default: the GPUs named by --gpu, else every visible GPU]"))),
        ("dist_url", Optional[str], typer.Option(None, "--dist-url", "--dist_url", metavar="URL", help=(
            "Rendezvous for --ddp, as tcp://HOST:PORT. [default: localhost, a free port]"))),
    ]
    params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=t) for n, t, d in launcher]
    for name, (meta, tp, _) in train_config.options().items():
        shown = train_config.default_help(name)
        text = meta.help + (f" One of: {', '.join(meta.choices)}." if meta.choices else "")
        text += f" [{shown}]" if shown else ""
        kw = {"metavar": meta.metavar} if meta.metavar else {}
        if meta.choices:
            kw["metavar"] = "|".join(meta.choices)
        default = typer.Option(None, *meta.flags, help=text, show_default=False, rich_help_panel=meta.group, **kw)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=_cli_type(tp)))
    return params


train.__signature__ = inspect.Signature(_parameters())  # type: ignore[attr-defined]
train.__annotations__ = {}
