"""Energy margins chosen on held-out data: never on a benchmark's test OOD sets.

For each (m_in, m_out) of a grid, `energy` trains with `--eval-every EPOCHS --eval-on val`: a split of the ID
training images (`--val-fraction`, per class) and the same fraction of the auxiliary OOD images are held out of
training (engine.training.validation.hold_out, drawn from the seed), and the trained model's energy score is
evaluated on them at the last epoch. The table gives, per setting, the mean over seeds of the held-out AUROC
and FPR95 (held-out ID against held-out auxiliary images) and of the held-out ID accuracy (all, few-shot). The
chosen setting has the highest held-out ID accuracy among those within half a point of the best held-out AUROC:
a held-out auxiliary split is often nearly saturated (every setting separates it), and then the margins
decide what the ID hinge costs the classifier.
The test OOD sets are not loaded into any number here.

    python bench/select_margins.py                                  # digits, 3 seeds × 30 epochs
    python bench/select_margins.py --benchmark glyphs --data-root DATA --epochs 20 --seeds 0,1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import markdown, run_records, write_json

from imood_cli.data.benchmarks.digits import Digits
from imood_cli.data.benchmarks.glyphs import Glyphs
from imood_cli.engine.runtime import setup
from imood_cli.engine.training.config import resolve_config
from imood_cli.engine.training.lifecycle import train

GRIDS = {"digits": [(-27.0, -5.0), (-12.0, -5.0), (-9.0, -4.0), (-7.0, -3.0), (-6.0, -2.0)],
         "glyphs": [(-16.0, -8.0), (-16.0, -4.0), (-12.0, -8.0), (-12.0, -4.0), (-8.0, -4.0), (-8.0, -2.0)]}
AUROC_SLACK = 0.005  # settings within this of the best held-out AUROC compete on held-out ID accuracy


def held_out_record(run: Path) -> dict:
    """The last validation record of the run's metrics.jsonl."""
    vals = run_records(run, "val")
    if not vals:
        raise SystemExit(f"{run}: no validation record in metrics.jsonl")
    return vals[-1]


def finished(run: Path, epochs: int) -> dict | None:
    """The run's validation record of its last epoch, if it has one."""
    try:
        record = held_out_record(run)
    except (OSError, SystemExit, ValueError):
        return None
    return record if record.get("epoch") == epochs else None


def choose(rows: list[dict]) -> dict:
    """The highest held-out ID accuracy among the settings within AUROC_SLACK of the best held-out AUROC."""
    best = max(r["auroc"] for r in rows)
    return max((r for r in rows if r["auroc"] >= best - AUROC_SLACK), key=lambda r: r["acc"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", default="digits", choices=sorted(GRIDS))
    p.add_argument("--data-root", type=Path, default=Path("data"), help="where glyphs was prepared")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0-2)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per training (default 30, digits' recipe)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held out of ID training and auxiliary images")
    p.add_argument("--grid", default=None, help="m_in/m_out pairs, e.g. '-6/-2,-9/-4' (default: the benchmark's)")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (reused when finished)")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    grid = GRIDS[args.benchmark] if args.grid is None else [
        tuple(float(x) for x in pair.split("/")) for pair in args.grid.split(",")]
    bench = Digits().load(None) if args.benchmark == "digits" else Glyphs().load(args.data_root)
    rt = setup("cpu")
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="imood-margins-")
    root = args.out or Path(tmp.name)
    started = time.perf_counter()
    rows = []
    for m_in, m_out in grid:
        per_seed = []
        for seed in seeds:
            name = f"energy-m{m_in:g}-m{m_out:g}-seed{seed}"
            opts = {"dataset": bench.name, "save_root": str(root), "name": name, "ood_metric": "energy",
                    "aux_ood_loss": "none", "logit_adjust": 1.0, "seed": seed, "epochs": args.epochs,
                    "device": "cpu", "m_in": m_in, "m_out": m_out, "eval_every": args.epochs, "eval_on": "val",
                    "val_fraction": args.val_fraction}
            if finished(root / name, args.epochs) is None:  # a run of --out that finished is reused
                train(resolve_config(opts), rt, bench=bench, force=True)
            per_seed.append(held_out_record(root / name))
            r = per_seed[-1]
            print(f"  m_in {m_in:g} m_out {m_out:g} seed {seed}: held-out AUROC {100 * r['auroc']:.2f} "
                  f"ID acc {100 * r['acc']:.2f}", file=sys.stderr, flush=True)
        rows.append({"m_in": m_in, "m_out": m_out, "per_seed": per_seed,
                     **{k: float(np.mean([r[k] for r in per_seed])) for k in ("auroc", "fpr95", "acc", "acc_few")}})
    chosen = choose(rows)
    print(f"\n### {bench.name}: energy margins on held-out data ({args.val_fraction:g} of the ID training and of "
          f"the auxiliary images), {len(seeds)} seeds ({args.seeds}), {args.epochs} epochs\n")
    print(markdown(["m_in, m_out", "held-out AUROC", "held-out FPR95", "held-out ID acc", "held-out few-shot acc"],
                   [[f"{r['m_in']:g}, {r['m_out']:g}" + (" (chosen)" if r is chosen else "")]
                    + [f"{100 * r[k]:.2f}" for k in ("auroc", "fpr95", "acc", "acc_few")] for r in rows]))
    print(f"\nChosen: the highest held-out ID accuracy among settings within {100 * AUROC_SLACK:g} points of the "
          f"best held-out AUROC. Wall time {(time.perf_counter() - started) / 60:.1f} min.")
    write_json(args.json, {"benchmark": "select_margins", "dataset": bench.name, "seeds": seeds,
                           "epochs": args.epochs, "val_fraction": args.val_fraction, "rows": rows,
                           "chosen": [chosen["m_in"], chosen["m_out"]]})
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
