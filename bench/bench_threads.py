"""CPU threads for training, measured side by side: seconds per step with one thread and with every core,
for models from the digits one to ResNet18 at CIFAR size, and the count imood picks by its rule (one thread
below engine.runtime.ONE_THREAD_BELOW multiply-accumulates per step).

    python bench/bench_threads.py
    python bench/bench_threads.py --quick     # CI
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from common import print_table, synthetic_cifar_lt, write_json

from imood_cli.data.benchmarks.digits import Digits
from imood_cli.engine import runtime
from imood_cli.engine.training.config import resolve_config
from imood_cli.engine.training.trainer import Trainer
from imood_cli.models.imood_model import forward_macs

CASES = [("digits", "imood_resnet_micro", 64), ("cifar10", "imood_resnet_micro", 64), ("cifar10", "resnet18", 8),
         ("cifar10", "resnet18", 32)]


def seconds_per_step(dataset: str, model: str, batch: int, threads: int, steps: int) -> tuple[float, float]:
    bench = Digits().load(None) if dataset == "digits" else synthetic_cifar_lt(num_aux=4 * batch)
    cfg = resolve_config(dict(dataset=dataset, model=model, batch_size=batch, ood_metric="ada_bin_disc",
                              aux_ood_loss="pascl", save_root="/tmp/imood-bench-threads", name="t", device="cpu",
                              threads=threads))
    trainer = Trainer(cfg, runtime.setup("cpu"), bench=bench)
    epoch, gen = trainer._epoch(0), trainer._generator(0)
    trainer.train_step(epoch.batch(0), gen)
    t = time.perf_counter()
    for s in range(steps):
        trainer.train_step(epoch.batch((s + 1) % len(epoch)), gen)
    macs = 3 * forward_macs(trainer.core, bench.channels, bench.image_size) * (3 * batch)
    return (time.perf_counter() - t) / steps, macs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    cases = CASES[:1] if args.quick else CASES
    steps = 1 if args.quick else args.steps
    rows, results = [], {}
    for dataset, model, batch in cases:
        one, macs = seconds_per_step(dataset, model, batch, 1, steps)
        every, _ = seconds_per_step(dataset, model, batch, cores, steps)
        picked = runtime.choose_threads(0, macs, torch.device("cpu"))
        best = 1 if one <= every else cores
        label = f"{dataset} {model} batch {batch}"
        results[label] = {"macs_per_step": macs, "one_thread_s": one, "all_threads_s": every, "picked": picked}
        rows.append([label, f"{macs:.2e}", f"{one * 1000:.1f}", f"{every * 1000:.1f}", f"{every / one:.2f}x", picked,
                     "yes" if picked == best else "no"])
    print_table(f"training step on the CPU, 1 thread vs {cores} (ms per step)",
                ["case", "MACs/step", "1 thread", f"{cores} threads", "ratio", "imood picks", "best?"], rows)
    write_json(args.json, {"benchmark": "threads", "cores": cores, "results": results})


if __name__ == "__main__":
    main()
