"""The cost of validation while training: digits epochs without and with `--eval-every 1`, side by side in one run.

Each variant trains the digits recipe (imood_resnet_micro, ada_bin_disc + pascl, batch 64) for --epochs
epochs, the variants interleaved over --repeat rounds; the table gives the mean wall time per epoch (training,
the checkpoint and, when on, the validation pass; not the setup before the first epoch) and the validation
pass alone as its records time it. With `--eval-every` on, the training set is 10% smaller (the held-out
split): the epoch time compares what a user runs, not equal work.

    python bench/bench_validation.py                  # 5 epochs, 3 rounds, on the CPU
    python bench/bench_validation.py --tiny           # the CI-sized check
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import print_table, write_json

from imood_cli.data.benchmarks.digits import Digits
from imood_cli.engine.runtime import setup
from imood_cli.engine.training.config import resolve_config
from imood_cli.engine.training.lifecycle import train
from imood_cli.engine.training.trainer import TrainObserver

VARIANTS = {
    "off": {},
    "--eval-every 1": {"eval_every": 1},
    "--eval-every 1 --eval-on val+test": {"eval_every": 1, "eval_on": "val+test"},
}


class EpochClock(TrainObserver):
    """From the start of the first epoch to the end of the last (its validation pass and checkpoint included)."""

    def start(self, cfg, bench, start_epoch, steps_per_epoch) -> None:
        self.t0 = time.perf_counter()

    def epoch_end(self, record) -> None:
        self.t1 = time.perf_counter()


def run_once(bench, root: Path, name: str, options: dict, args) -> tuple[float, float]:
    """(seconds per epoch, seconds per validation pass) of one training run."""
    cfg = resolve_config(dict(dataset="digits", save_root=str(root), name=name, epochs=args.epochs,
                              batch_size=args.batch, device=args.device, threads=args.threads, **options))
    rt = setup(cfg.device, cfg.amp, cfg.channels_last)
    clock = EpochClock()
    train(cfg, rt, clock, bench=bench)
    per_epoch = (clock.t1 - clock.t0) / args.epochs
    records = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines()]
    passes: dict[int, float] = {}
    for r in records:
        if r["kind"] in ("val", "test"):
            passes[r["epoch"]] = passes.get(r["epoch"], 0.0) + r["seconds"]
    return per_epoch, (statistics.mean(passes.values()) if passes else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="rounds, each running every variant once")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="one epoch, one round (CI)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.tiny:
        args.epochs, args.repeat = 1, 1
    bench = Digits().load(None)
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train(resolve_config(dict(dataset="digits", save_root=str(root), name="warmup", epochs=1,
                                  device=args.device)), setup(args.device), bench=bench)  # imports, allocator
        for round_ in range(args.repeat):
            for i, (variant, options) in enumerate(VARIANTS.items()):
                times[variant].append(run_once(bench, root, f"r{round_}-{i}", options, args))
    base = statistics.mean(t for t, _ in times["off"])
    rows, results = [], {}
    for variant, runs in times.items():
        epoch = statistics.mean(t for t, _ in runs)
        val = statistics.mean(v for _, v in runs)
        results[variant] = {"epoch_s": epoch, "validation_s": val, "ratio": epoch / base}
        rows.append([variant, f"{epoch * 1000:,.0f}", f"{val * 1000:,.0f}", f"{epoch / base:.2f}x"])
    print_table(f"validation while training on digits ({args.device}, {args.epochs} epochs × {args.repeat} rounds, "
                f"batch {args.batch})", ["training", "ms per epoch", "ms per validation pass", "vs off"], rows)
    write_json(args.json, {"benchmark": "validation", "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
