"""Benchmarks by name, through the dataset registry."""

from __future__ import annotations

from pathlib import Path

from imood_cli.data.base import Benchmark
from imood_cli.registry import registry


def dataset(name: str):
    return registry().dataset(name)


def load_benchmark(name: str, root: str | Path, **options) -> Benchmark:
    return dataset(name).load(Path(root), **options)
