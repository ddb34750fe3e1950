"""Benchmarks by name: the dataset registry first, then the folder benchmarks `imood data prepare folder` wrote.

A name no built-in or plugin has is looked up as DATA/NAME/manifest.json of a prepared folder benchmark
(`data.user_folder`); built-ins and plugins always win a name. A name that is neither is an error that
suggests the nearest of both kinds and says how to make a benchmark of one's own images.
"""

from __future__ import annotations

from pathlib import Path

from imood_cli.data.base import Benchmark
from imood_cli.data.benchmarks.folder.benchmark import FolderBenchmark
from imood_cli.data.benchmarks.folder.record import prepared_names, read_folder_manifest
from imood_cli.data.benchmarks.folder.sources import NAME_PATTERN
from imood_cli.errors import ImoodError, unknown_name
from imood_cli.registry import registry

PREPARE_HINT = "imood data prepare folder --name {name} --train DIR --test DIR"


def is_registered(name: str) -> bool:
    """Whether any dataset entry point has this name (usable or not: a broken or disabled plugin keeps its own
    error instead of falling through to a folder of the same name)."""
    return any(p.kind == "dataset" and p.name == name for p in registry().plugins())


def dataset(name: str, root: str | Path | None = None):
    """The benchmark called `name`: a registered dataset, else the folder benchmark prepared under `root`."""
    reg = registry()
    try:
        return reg.dataset(name)
    except ImoodError:
        if is_registered(name):
            raise
    if root is not None and NAME_PATTERN.fullmatch(name) and read_folder_manifest(Path(root), name) is not None:
        return FolderBenchmark(name)
    raise unknown_benchmark(name, root)


def unknown_benchmark(name: str, root: str | Path | None) -> ImoodError:
    """`unknown dataset 'x'; did you mean ...? (known: ...)`, folder benchmarks under `root` among the known,
    and how to prepare one's own images."""
    folders = prepared_names(Path(root)) if root is not None else []
    err = unknown_name("dataset", name, [*registry().names("dataset"), *folders])
    hint = PREPARE_HINT.format(name=name if NAME_PATTERN.fullmatch(name) else "NAME")
    if root is not None and Path(root) != Path("data"):
        hint += f" --drp {root}"
    return ImoodError(f"{err}; to use your own images, prepare them as a benchmark first: {hint}")


def check_benchmark(name: str, root: str | Path | None) -> None:
    """`dataset(name, root)` for its error alone (a sweep plan's benchmarks, before hours of work)."""
    dataset(name, root)


def load_benchmark(name: str, root: str | Path, **options) -> Benchmark:
    return dataset(name, root).load(Path(root), **options)
