"""Training throughput: imood's step against a reference-style loop, side by side in one run.

Both run the complete ImOOD loss (logit-adjusted CE + ada_bin_disc + pascl) on the same model,
on synthetic data shaped like CIFAR10-LT (12,406 ID images, 32×32, + auxiliary OOD), with the
batch layout of the recipe: N ID images in two views + N OOD images per step.

- reference-style: torch DataLoader with PIL transforms (RandomCrop pad 4, flip, ColorJitter p=0.8,
  RandomGrayscale 0.2) in worker processes, fp32, contiguous memory format;
- imood: uint8 data held on the device, augmentation as batched tensor ops, bf16 autocast and
  channels_last on CUDA (and optionally torch.compile).

    python bench/bench_train.py                       # CUDA if present: batch 256, resnet18
    python bench/bench_train.py --tiny                # the CPU check CI runs
    python bench/bench_train.py --epochs 180          # also the whole recipe's wall time
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import print_table, sync, synthetic_cifar_lt, write_json
from PIL import Image

from imood_cli.data.pipeline.batches import InMemoryEpoch
from imood_cli.engine.runtime import setup
from imood_cli.engine.training.config import resolve_config
from imood_cli.engine.training.trainer import Trainer


class PILPairs(torch.utils.data.Dataset):
    """The reference code's data path: a PIL image per sample, torchvision transforms per view."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform, views: int) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels = labels.numpy()
        self.transform, self.views = transform, views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        return tuple(self.transform(img) for _ in range(self.views)) + (int(self.labels[i]),)


def reference_transform():
    from torchvision import transforms as T

    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2), T.ToTensor()])


def make_trainer(bench, args, fast: bool, compile_model: bool = False) -> Trainer:
    cfg = resolve_config(dict(dataset="cifar10", model=args.model, batch_size=args.batch, epochs=args.epochs or 1,
                              ood_metric="ada_bin_disc", aux_ood_loss="pascl", save_root="/tmp/imood-bench",
                              name="bench", amp="auto" if fast else "off", channels_last="auto" if fast else "off",
                              compile=compile_model, device=args.device))
    rt = setup(cfg.device, cfg.amp, cfg.channels_last)
    return Trainer(cfg, rt, bench=bench)


def bench_imood(trainer: Trainer, steps: int, warmup: int) -> float:
    epoch = trainer._epoch(0)
    gen = trainer._generator(0)
    last = None

    def run(n, start):
        nonlocal last
        for i in range(n):
            last = trainer.train_step(epoch.batch((start + i) % len(epoch)), gen)

    run(warmup, 0)
    sync(trainer.rt.device)
    t = time.perf_counter()
    run(steps, warmup)
    float(last[0])  # one host read, at the end
    sync(trainer.rt.device)
    return steps * images_per_step(trainer) / (time.perf_counter() - t)


def images_per_step(trainer: Trainer) -> int:
    return 3 * trainer.cfg.batch_size


def bench_reference(trainer: Trainer, bench, steps: int, warmup: int, workers: int) -> float:
    tf = reference_transform()
    dev = trainer.rt.device
    batch = trainer.cfg.batch_size
    pin = dev.type == "cuda"
    id_loader = torch.utils.data.DataLoader(PILPairs(bench.train.images, bench.train.labels, tf, 2), batch_size=batch,
                                            shuffle=True, drop_last=True, num_workers=workers, pin_memory=pin,
                                            persistent_workers=workers > 0)
    ood_loader = torch.utils.data.DataLoader(PILPairs(bench.aux_ood.images, bench.aux_ood.labels, tf, 1),
                                             batch_size=batch,
                                             shuffle=True, drop_last=True, num_workers=workers, pin_memory=pin,
                                             persistent_workers=workers > 0)

    def batches():
        while True:
            for (v1, v2, y), (o, _) in zip(id_loader, ood_loader):
                yield v1, v2, y, o

    it = batches()

    def step():
        v1, v2, y, o = next(it)
        x = torch.cat([v1, v2, o]).to(dev, non_blocking=True)
        parts = trainer.loss_on(x, y.to(dev, non_blocking=True), o.shape[0])
        trainer.optimize(parts)
        return parts

    for _ in range(warmup):
        step()
    sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        parts = step()
    float(parts[0].detach())
    sync(dev)
    return steps * 3 * batch / (time.perf_counter() - t)


def profile_steps(trainer: Trainer, folder: Path, steps: int = 20) -> None:
    """A chrome trace of `steps` steady-state steps and the table of where their time goes."""
    from torch.profiler import ProfilerActivity, profile

    folder.mkdir(parents=True, exist_ok=True)
    epoch, gen = trainer._epoch(0), trainer._generator(0)
    for s in range(5):  # warm-up: cuDNN autotuning, allocator, lazy initialisation
        trainer.train_step(epoch.batch(s % len(epoch)), gen)
    sync(trainer.rt.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.rt.device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        for s in range(steps):
            trainer.train_step(epoch.batch((5 + s) % len(epoch)), gen)
        sync(trainer.rt.device)
    prof.export_chrome_trace(str(folder / "train_trace.json"))
    key = "self_cuda_time_total" if trainer.rt.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=40)
    (folder / "train_profile.txt").write_text(table)
    print(f"\nprofile of {steps} steps: {folder / 'train_trace.json'}, {folder / 'train_profile.txt'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=256, help="ID images per step (each in two views; as many OOD)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers of the reference-style loop")
    ap.add_argument("--num-aux", type=int, default=30000)
    ap.add_argument("--compile", action="store_true", help="also measure imood with torch.compile")
    ap.add_argument("--epochs", type=int, default=0, help="also run the whole recipe for this many epochs (wall time)")
    ap.add_argument("--tiny", action="store_true", help="a small CPU-sized check (CI)")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="also write a torch.profiler trace of 20 steady-state default steps (and its op table) here")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.tiny:
        args.batch, args.steps, args.warmup, args.workers, args.num_aux = 8, 3, 1, 0, 64
        args.model = "imood_resnet_micro"
    bench = synthetic_cifar_lt(num_aux=args.num_aux)
    rows, results = [], {}

    def measure(name, fn):
        try:
            results[name] = fn()
            print(f"  {name}: {results[name]:,.0f} images/s", flush=True)
        except Exception as exc:  # a variant that fails (a compiler, say) must not hide the others
            print(f"  {name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", flush=True)

    # Each trainer is made inside its measurement and dropped after it, so only one holds memory.
    measure("reference_style_fp32", lambda: bench_reference(make_trainer(bench, args, fast=False), bench, args.steps,
                                                            args.warmup, args.workers))
    measure("imood_device_aug_fp32",
            lambda: bench_imood(make_trainer(bench, args, fast=False), args.steps, args.warmup))
    fast = make_trainer(bench, args, fast=True)
    measure("imood_bf16_channels_last", lambda: bench_imood(fast, args.steps, args.warmup))
    comp = None
    if args.compile:
        comp = make_trainer(bench, args, fast=True, compile_model=True)
        measure("imood_bf16_channels_last_compiled", lambda: bench_imood(comp, args.steps, args.warmup + 10))
        if "imood_bf16_channels_last_compiled" not in results:
            comp = None
    if args.profile:
        profile_steps(fast, Path(args.profile))
    base = results["reference_style_fp32"]
    for name, ips in results.items():
        rows.append([name, ips, f"{ips / base:.2f}x"])
    device = fast.rt.device
    print_table(f"training throughput on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'} "
                f"({args.model}, {args.batch}×2 ID + {args.batch} OOD per step; images/s)",
                ["loop", "images/s", "vs reference"], rows)
    payload = {"benchmark": "train", "args": vars(args), "images_per_s": results}
    write_json(args.json, payload)  # now, in case the recipe run below is cut short
    if args.epochs:
        # The recipe reuses the warmed-up trainer (compiled if asked): its weights are irrelevant to
        # the timing, and a fresh one would time compilation again.
        trainer = comp if comp is not None else fast
        steps = len(InMemoryEpoch(trainer.train_set, trainer.aux_set, args.batch, args.batch, 0, 0))
        t = time.perf_counter()
        for epoch in range(args.epochs):
            batches = trainer._epoch(epoch)
            gen = trainer._generator(epoch)
            for s in range(len(batches)):
                last = trainer.train_step(batches.batch(s), gen)
            loss = float(last[0])  # the once-per-epoch host read of the real loop
            if (epoch + 1) % 20 == 0:
                print(f"  epoch {epoch + 1}: {time.perf_counter() - t:.1f} s, loss {loss:.3f}", flush=True)
        sync(device)
        wall = time.perf_counter() - t
        print(f"\nwhole recipe: {args.epochs} epochs × {steps} steps in {wall:.1f} s "
              f"({args.epochs * steps * 3 * args.batch / wall:,.0f} images/s)")
        payload["recipe"] = {"epochs": args.epochs, "steps_per_epoch": steps, "wall_s": wall}
    write_json(args.json, payload)


if __name__ == "__main__":
    main()
