"""`imood train`: every option also answers to the reference code's flag (`--ds`, `--Lambda`, ...)."""

from __future__ import annotations

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
from rich.progress import Progress
from rich.table import Table

from imood_cli.cli.common import DDP_ARGV, console, current_argv, err_console, is_main_process, progress, split_list
from imood_cli.engine import runtime
from imood_cli.engine.config import resolve_config
from imood_cli.engine.train import TrainObserver, resume
from imood_cli.engine.train import train as train_run
from imood_cli.errors import ImoodError

SCHEDULE_ALIASES = {"cos": "cosine", "multistep": "multisteps", "step": "multisteps", "const": "constant"}


class TrainProgress(TrainObserver):
    def __init__(self, bar: Progress) -> None:
        self.bar, self.task, self.info = bar, None, ""
        self.started = time.perf_counter()

    def start(self, cfg, bench, start_epoch, steps_per_epoch) -> None:
        self.total = self.bar.add_task("total", total=cfg.epochs * steps_per_epoch,
                                       completed=start_epoch * steps_per_epoch, info="")
        if not is_main_process():
            return
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

    def epoch_end(self, r: dict[str, Any]) -> None:
        self.log(r)
        self.bar.update(self.total, info=f"epoch {r['epoch']}: loss {r['loss']:.3f}")

    def message(self, text: str) -> None:
        if is_main_process():
            err_console.print(text)


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


def _opt(*names: str, help: str, **kw) -> Any:
    return typer.Option(None, *names, help=help, **kw)


def train(
    resume_run: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder from its last checkpoint."),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML (or JSON) file of option values (a \\[train] table or top-level keys)."),
    force: bool = typer.Option(False, "--force", help="Start over in an existing run folder."),
    # what
    dataset: Optional[str] = _opt("--dataset", "--ds", help="Benchmark: digits | cifar10 | cifar100 | imagenet. (default: digits)"),
    data_root: Optional[str] = _opt("--data-root", "--drp", "--data_root_path", help="Dataset folder ($DATA). (default: data)"),
    save_root: Optional[str] = _opt("--save-root", "--srp", "--save_root_path", help="Where run folders go. (default: runs)"),
    name: Optional[str] = _opt("--name", help="Run folder name. (default: <dataset>-<metric>-<aux loss>)"),
    model: Optional[str] = _opt("--model", "--md", help="Any timm model name. (default: resnet18 (CIFAR), resnet50 (ImageNet), imood_resnet_micro (digits))"),
    cifar_stem: Optional[bool] = _opt("--cifar-stem/--no-cifar-stem", help="3×3 stride-1 first conv, no max-pool. (default: on except ImageNet)"),
    pretrained: Optional[bool] = _opt("--pretrained/--no-pretrained", help="Start from timm's pretrained weights (needs the network once). (default: off)"),
    # method
    ood_metric: Optional[str] = _opt("--ood-metric", "--ood_metric", help="OOD training loss: oe energy bin_disc maha msp gradnorm or a plugin's; ada_<name> for ImOOD. (default: ada_bin_disc)"),
    aux_ood_loss: Optional[str] = _opt("--aux-ood-loss", "--aux_ood_loss", help="Auxiliary loss: pascl | simclr | none | a plugin's. (default: pascl)"),
    Lambda: Optional[float] = _opt("--Lambda", "--lambda-ood", help="Weight of the OOD loss. (default: 0.5)"),
    Lambda2: Optional[float] = _opt("--Lambda2", "--lambda-aux", help="Weight of the aux loss. (default: 0.05)"),
    logit_adjust: Optional[float] = _opt("--logit-adjust", "--logit_adjust", help="τ: prior π̃ ∝ π^τ for logit-adjusted CE and every ada_ term; 0 = uniform prior, which turns ImOOD off. (default: 1.0)"),
    imbalance_ratio: Optional[float] = _opt("--imbalance-ratio", "--imbalance_ratio", help="ρ = n_min/n_max of the long-tailed split, in (0, 1]. (default: 0.01; digits 0.1)"),
    num_ood_samples: Optional[int] = _opt("--num-ood-samples", "--num_ood_samples", help="Auxiliary OOD images used. (default: 30000 (CIFAR))"),
    pascl_k: Optional[float] = _opt("--k", help="PASCL: fraction of classes counted as tail. (default: 0.4)"),
    temperature: Optional[float] = _opt("--T", help="Contrastive temperature. (default: 0.07)"),
    # optimisation
    epochs: Optional[int] = _opt("--epochs", "-e", "--e", help="Epochs. (default: 180 CIFAR, 100 ImageNet, 30 digits)"),
    batch_size: Optional[int] = _opt("--batch-size", "-b", help="ID images per step and process (each seen in two views). (default: 256; digits 64)"),
    ood_batch_size: Optional[int] = _opt("--ood-batch-size", help="Auxiliary OOD images per step. (default: = batch size)"),
    optimizer: Optional[str] = _opt("--optimizer", "--opt", help="adam | sgd | adamw. (default: adam; ImageNet sgd)"),
    lr: Optional[float] = _opt("--lr", help="Learning rate. (default: 1e-3; ImageNet 0.1)"),
    weight_decay: Optional[float] = _opt("--weight-decay", "--wd", help="Weight decay. (default: 5e-4; ImageNet 5e-5)"),
    momentum: Optional[float] = _opt("--momentum", help="SGD momentum. (default: 0.9)"),
    schedule: Optional[str] = _opt("--schedule", "--decay", help="cosine (cos) | multisteps | constant. (default: cosine; ImageNet multisteps)"),
    milestones: Optional[str] = _opt("--milestones", help="Epochs of the ×gamma steps for multisteps. (default: 60,80)"),
    # augmentation
    crop_padding: Optional[int] = _opt("--crop-padding", help="Random-crop padding. (default: 4 CIFAR, 1 digits)"),
    flip: Optional[bool] = _opt("--flip/--no-flip", help="Random horizontal flip. (default: on CIFAR/ImageNet)"),
    color_jitter: Optional[str] = _opt("--color-jitter", help="brightness,contrast,saturation,hue. (default: 0.4,0.4,0.4,0.1)"),
    jitter_p: Optional[float] = _opt("--jitter-p", help="Probability of color jitter. (default: 0.8)"),
    grayscale_p: Optional[float] = _opt("--grayscale-p", help="Probability of grayscale. (default: 0.2)"),
    # machinery
    seed: Optional[int] = _opt("--seed", help="Random seed; same seed, same machine, same numbers. (default: 0)"),
    device: Optional[str] = _opt("--device", "--gpu", help="auto | cpu | cuda | cuda:N | a GPU id as in --gpu 0. (default: auto)"),
    amp: Optional[str] = _opt("--amp", help="auto (bf16 on CUDA) | bf16 | off. (default: auto)"),
    channels_last: Optional[str] = _opt("--channels-last", help="auto (on CUDA) | on | off. (default: auto)"),
    compile_model: Optional[bool] = _opt("--compile/--no-compile", help="torch.compile the model. (default: off)"),
    workers: Optional[int] = _opt("--workers", help="Data-loader workers for image-file datasets. (default: 8)"),
    log_every: Optional[int] = _opt("--log-every", help="Steps between loss records in metrics.jsonl. (default: 50)"),
    test_batch_size: Optional[int] = _opt("--test-batch-size", "--tb", help="Batch size when scoring. (default: 512)"),
    ckpt_path: Optional[str] = _opt("--ckpt-path", "--ckpt_path", help="Start from the weights of this imood model (run folder or model.safetensors; a reference .pth: imood import-ckpt it first)."),
    ddp: bool = typer.Option(False, "--ddp", help="Train on several processes (one per GPU of --gpu): imood starts them through torchrun."),
    nproc: Optional[int] = typer.Option(None, "--nproc", help="Processes for --ddp. (default: the GPUs named by --gpu, else every visible GPU)"),
    dist_url: Optional[str] = typer.Option(None, "--dist-url", "--dist_url", help="Rendezvous for --ddp, as tcp://HOST:PORT. (default: localhost, a free port)"),
) -> None:
    """Train a classifier and OOD detector on long-tailed data with the ImOOD regularizer.

    L = logit-adjusted CE + Lambda · OOD loss + Lambda2 · aux loss, over two views of each ID image
    and a batch of auxiliary OOD images.
    """
    if ddp and "WORLD_SIZE" not in os.environ:
        n = nproc or default_nproc(device)
        if n > 1:
            raise typer.Exit(launch_ddp(n, dist_url))
    rt = runtime.setup(device or "auto", amp or "auto", channels_last or "auto")
    bar = progress(transient=True)
    observer = TrainProgress(bar)
    started = time.perf_counter()
    if resume_run is not None:
        with bar:
            result = resume(resume_run, rt, observer, epochs=epochs)
        cfg_name = resume_run
    else:
        cli = dict(
            dataset=dataset, data_root=data_root, save_root=save_root, name=name, model=model, cifar_stem=cifar_stem,
            pretrained=pretrained, ood_metric=ood_metric, aux_ood_loss=aux_ood_loss, Lambda=Lambda, Lambda2=Lambda2,
            logit_adjust=logit_adjust, imbalance_ratio=imbalance_ratio, num_ood_samples=num_ood_samples,
            pascl_k=pascl_k, temperature=temperature, epochs=epochs, batch_size=batch_size,
            ood_batch_size=ood_batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum,
            schedule=SCHEDULE_ALIASES.get(schedule, schedule) if schedule else None,
            milestones=[int(m) for m in split_list(milestones)] if milestones else None,
            crop_padding=crop_padding, flip=flip,
            color_jitter=[float(v) for v in split_list(color_jitter)] if color_jitter else None,
            jitter_p=jitter_p, grayscale_p=grayscale_p, seed=seed, device=device, amp=amp,
            channels_last=channels_last, compile=compile_model, workers=workers, log_every=log_every,
            test_batch_size=test_batch_size, init_from=ckpt_path,
        )
        cfg = resolve_config(cli, config)
        with bar:
            result = train_run(cfg, rt, observer, force=force)
        cfg_name = cfg.run_dir
    if not is_main_process():
        return
    took = time.perf_counter() - started
    table = Table(title=f"trained {result.run_dir}", title_justify="left", show_header=False)
    table.add_row("epochs", str(result.epochs))
    for key in ("loss", "l_in", "l_ood", "l_aux"):
        if key in result.last:
            table.add_row(f"final {key}", f"{result.last[key]:.4f}")
    table.add_row("wall time", f"{took:.1f} s")
    table.add_row("model", str(result.run_dir / "model.safetensors"))
    console.print(table)
    console.print(f"next: imood score {cfg_name}")
