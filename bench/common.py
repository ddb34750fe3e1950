"""Shared pieces of the benchmarks: synthetic CIFAR10-LT-shaped data, timing, tables, JSON."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imood_cli.data.base import Benchmark, ImageSet
from imood_cli.data.pipeline.augment import CIFAR_AUGMENT
from imood_cli.data.pipeline.longtail import longtail_counts


def synthetic_cifar_lt(num_aux: int = 30000, size: int = 32, classes: int = 10, n_max: int = 5000,
                       ratio: float = 0.01, seed: int = 0) -> Benchmark:
    """Random uint8 images with CIFAR10-LT's class counts (12,406 images) and a 300K-style aux set."""
    g = torch.Generator().manual_seed(seed)
    counts = longtail_counts(n_max, classes, ratio)
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    images = torch.randint(0, 256, (len(labels), 3, size, size), dtype=torch.uint8, generator=g)
    aux = torch.randint(0, 256, (num_aux, 3, size, size), dtype=torch.uint8, generator=g)
    test = torch.randint(0, 256, (1000, 3, size, size), dtype=torch.uint8, generator=g)
    minus = lambda n: torch.full((n,), -1, dtype=torch.long)
    return Benchmark("synthetic-cifar10-lt", classes, counts, ImageSet("train", labels, images),
                     ImageSet("test", torch.arange(1000) % classes, test),
                     {"noise": ImageSet("noise", minus(1000), test)},
                     ImageSet("aux", minus(num_aux), aux), 3, size, CIFAR_AUGMENT)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["commit"] = commit()
    return info


def commit() -> str:
    """The checkout's commit (with '+changes' when tracked files differ from it), or 'unknown' outside git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+changes" if dirty else "")) if head else "unknown"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def run_records(run: Path, kind: str) -> list[dict]:
    """The records of one kind ("epoch", "val", ...) in a training run's metrics.jsonl, in order."""
    records = (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip())
    return [r for r in records if r.get("kind") == kind]


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in header]] + [[f"{c:,.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"machine": machine(), **payload}, indent=2))
