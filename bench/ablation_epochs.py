"""Has the ablation trained to a plateau? The same configurations at two training lengths, paired by seed.

Reads two `--json` files of bench/ablation_digits.py (the same benchmark, different --epochs) and prints,
for each configuration in both, the paired difference longer − shorter over the seeds both have: AUROC and
FPR95 (means over the OOD sets), ID accuracy and few-shot accuracy, with 95% t intervals and the seeds where
the longer training is better. A configuration at its plateau shows no measurable effect of the extra epochs.

    python bench/ablation_epochs.py short.json long.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import markdown

from imood_cli.engine.metrics.paired import describe, paired_difference

QUANTITIES = (("auroc", "ΔAUROC", True), ("fpr95", "ΔFPR95", False), ("acc", "ΔID acc", True),
              ("few", "Δfew-shot acc", True))


def by_seed(doc: dict) -> dict[str, dict[int, dict]]:
    """{configuration label: {seed: result}} of one ablation JSON."""
    return {label: dict(zip(doc["seeds"], runs)) for label, runs in doc["results"].items()}


def rows(short: dict, long: dict) -> list[list[str]]:
    """One row per configuration in both files: longer − shorter, paired by seed."""
    a, b = by_seed(short), by_seed(long)
    out = []
    for label in (k for k in a if k in b):
        seeds = sorted(set(a[label]) & set(b[label]))
        if not seeds:
            continue
        cells = [f"{label} ({len(seeds)} seeds)"]
        for key, _, higher in QUANTITIES:
            diff = paired_difference([a[label][s][key] for s in seeds], [b[label][s][key] for s in seeds],
                                     higher_is_better=higher)
            cells.append(describe(diff))
        out.append(cells)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("short", type=Path, help="ablation JSON of the shorter training")
    p.add_argument("long", type=Path, help="ablation JSON of the longer training")
    args = p.parse_args(argv)
    short, long = (json.loads(f.read_text()) for f in (args.short, args.long))
    if short.get("dataset") != long.get("dataset"):
        print(f"the two files are of different benchmarks: {short.get('dataset')} and {long.get('dataset')}",
              file=sys.stderr)
        return 2
    table = rows(short, long)
    if not table:
        print("no configuration and seed is in both files", file=sys.stderr)
        return 2
    print(f"\n### {short.get('dataset')}: {long['epochs']} − {short['epochs']} epochs, paired by seed "
          f"(commits {short.get('commit', 'not recorded')} and {long.get('commit', 'not recorded')})\n")
    print(markdown(["training → detector"] + [title for _, title, _ in QUANTITIES], table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
