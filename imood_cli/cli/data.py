"""`imood data prepare | list`.

`list` imports neither torch nor the engine: it reads the registry's dataset classes (torch-free at
import) and asks each for its status. `prepare` loads data, so it imports what it needs inside.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Prepare benchmarks and see which are present.", no_args_is_help=True)

DRP = typer.Option(Path("data"), "--data-root", "--drp", "--data_root_path", metavar="DIR",
                   help="Folder that holds every dataset ($DATA).")
INDENT = "  "
PIECE_INDENT = " " * 4
URL = re.compile(r"https?://\S+")


FOLDER = "folder"  # `imood data prepare folder`: a benchmark of the user's own images (data/benchmarks/folder/)


@app.command("prepare")
def prepare(
    name: str = typer.Argument(..., metavar="NAME",
                               help="Benchmark: digits, glyphs, cifar10, cifar100, imagenet, a plugin's, or a folder "
                                    "benchmark prepared before (prepared again from the sources it recorded); "
                                    "folder: a new benchmark from your own images (--name, and the (folder) "
                                    "options)."),
    data_root: Path = DRP,
    imbalance_ratio: Optional[float] = typer.Option(
        None, "--imbalance-ratio", "--imbalance_ratio", metavar="RHO",
        help="ρ of the long-tail split, in (0, 1]. [default: the benchmark's; folder: no split, the folder's own "
             "counts are the prior]"),
    num_ood_samples: Optional[int] = typer.Option(
        None, "--num-ood-samples", "--num_ood_samples", metavar="N",
        help="Auxiliary OOD images to use (CIFAR: the first 30,000 of 300K; 0: none)."),
    verify: Optional[bool] = typer.Option(None, "--verify/--no-verify",
                                          help="Check checksums of the known files. [default: verify]"),
    download: Optional[bool] = typer.Option(None, "--download/--no-download",
                                            help="Download what can be downloaded. [default: download]"),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    bench_name: Optional[str] = typer.Option(
        None, "--name", metavar="NAME",
        help="(folder) The benchmark's name for --ds: lower-case letters, digits, _ and -; written to "
             "DATA/NAME/manifest.json."),
    train: Optional[Path] = typer.Option(None, "--train", metavar="DIR",
                                         help="(folder) Training images in class folders: DIR/CLASS/*.png; classes "
                                              "sorted by name."),
    test: Optional[Path] = typer.Option(None, "--test", metavar="DIR",
                                        help="(folder) ID test images in class folders, classes of --train."),
    train_list: Optional[Path] = typer.Option(
        None, "--train-list", metavar="FILE",
        help="(folder) Training images as a CSV list of path,label (paths relative to the list's folder; label: "
             "a class name or index; a first line path,label is a header)."),
    test_list: Optional[Path] = typer.Option(None, "--test-list", metavar="FILE",
                                             help="(folder) ID test images as a CSV list of path,label."),
    class_counts: Optional[str] = typer.Option(
        None, "--class-counts", metavar="N,N,...",
        help="(folder) Training images per class, in class order, instead of the images (then no training and no "
             "fitted detectors)."),
    ood_dir: Optional[list[Path]] = typer.Option(
        None, "--ood-dir", metavar="DIR",
        help="(folder) An OOD test set: every image under DIR, named after it (repeatable)."),
    image_size: Optional[int] = typer.Option(
        None, "--image-size", metavar="S",
        help="(folder) Images are S×S. [default: 32 if every training image is at most 64 px, else 224]"),
    channels: Optional[int] = typer.Option(
        None, "--channels", metavar="1|3",
        help="(folder) 1 (grayscale) or 3 (RGB). [default: 1 if every training image is grayscale, else 3]"),
) -> None:
    """Build the long-tailed split, check every file, and write DATA/<name>/manifest.json.

    Pieces a benchmark can do without (OOD test sets, auxiliary OOD) may be missing: they are listed
    with where to get them, recorded in the manifest, and the command still succeeds.

    `imood data prepare folder --name NAME --train DIR --test DIR [--ood-dir DIR ...]` makes a benchmark of
    your own images (or --train-list/--test-list FILE, or --class-counts N,N,... with the test images): every
    file is decoded and its sha256 recorded, and `--ds NAME` then works wherever a benchmark is named.
    """
    from imood_cli.errors import ImoodError

    folder_options = {"--name": bench_name, "--train": train, "--test": test, "--train-list": train_list,
                      "--test-list": test_list, "--class-counts": class_counts, "--ood-dir": ood_dir or None,
                      "--image-size": image_size, "--channels": channels}
    builtin_options = {"--num-ood-samples": num_ood_samples, "--verify/--no-verify": verify,
                       "--download/--no-download": download}
    if name == FOLDER:
        _refuse(builtin_options, "a folder benchmark (your own images)")
        manifest = _prepare_folder(data_root, bench_name, train=train, test=test, train_list=train_list,
                                   test_list=test_list, class_counts=class_counts, ood_dirs=ood_dir or [],
                                   imbalance_ratio=imbalance_ratio, image_size=image_size, channels=channels)
        name = manifest["dataset"]
    else:
        given = [flag for flag, value in folder_options.items() if value is not None]
        if given:
            raise ImoodError(f"{given[0]} belongs to `imood data prepare folder` (a benchmark of your own images), "
                             f"not to `imood data prepare {name}`")
        from imood_cli.data.benchmarks.folder.benchmark import FolderBenchmark
        from imood_cli.engine.benchmarks import dataset

        ds = dataset(name, data_root)
        if isinstance(ds, FolderBenchmark):
            _refuse(builtin_options, f"the folder benchmark {name}")
        manifest = ds.prepare(data_root, imbalance_ratio=imbalance_ratio, num_ood_samples=num_ood_samples,
                              verify=True if verify is None else verify,
                              download=True if download is None else download)
    _show_prepared(name, manifest, as_json, verified=verify is not False)


def _refuse(options: dict, what: str) -> None:
    from imood_cli.errors import ImoodError

    given = [flag for flag, value in options.items() if value is not None]
    if given:
        raise ImoodError(f"{given[0]} does not apply to {what}")


def _prepare_folder(data_root: Path, bench_name: Optional[str], **options) -> dict:
    """`imood data prepare folder`: the name checked against every benchmark imood knows, then
    `data.user_folder.prepare_folder` (which checks everything else before its one write)."""
    from imood_cli.data.benchmarks.folder.benchmark import prepare_folder
    from imood_cli.data.benchmarks.folder.sources import check_name
    from imood_cli.engine.benchmarks import is_registered
    from imood_cli.engine.training.config import DATASET_ALIASES
    from imood_cli.errors import ImoodError

    if bench_name is None:
        raise ImoodError("imood data prepare folder needs --name NAME: the name --ds will know the benchmark by")
    check_name(bench_name)
    if is_registered(bench_name) or bench_name in DATASET_ALIASES:
        raise ImoodError(f"--name {bench_name!r} is the name of a built-in or plugin benchmark "
                         f"({DATASET_ALIASES.get(bench_name, bench_name)}): choose another name")
    return prepare_folder(data_root, bench_name, **options)


def _show_prepared(name: str, manifest: dict, as_json: bool, verified: bool) -> None:
    """The prepared sets as a table (or the manifest as JSON), then the missing pieces as warnings."""
    from rich.markup import escape
    from rich.table import Table

    from imood_cli.cli.common import console
    from imood_cli.data.base import group_missing

    missing = manifest.get("missing") or {}
    folder = manifest.get("source") == FOLDER
    if as_json:
        print(json.dumps(manifest, indent=2))
    else:
        table = Table(title=f"{escape(name)}: prepared", title_justify="left")
        table.add_column("set")
        table.add_column("role")
        table.add_column("images", justify="right")
        counts_only = folder and manifest["folder"]["train"]["kind"] == "counts"
        ratio = (manifest.get("options") or {}).get("imbalance_ratio")
        role = ("ID train (long-tailed)" if not folder else "ID train: class counts only, no images" if counts_only
                else f"ID train (long-tailed, ρ = {ratio:g})" if ratio is not None else "ID train")
        size = "-" if counts_only else f"{manifest['train']['size']:,}"
        table.add_row(escape(manifest["train"]["name"]), role, size)
        table.add_row(escape(manifest["test"]["name"]), "ID test", f"{manifest['test']['size']:,}")
        if manifest.get("aux_ood"):
            table.add_row(manifest["aux_ood"]["name"], "auxiliary OOD (training)", f"{manifest['aux_ood']['size']:,}")
        for set_name, info in manifest["ood_tests"].items():
            moved = f" ({info['id_images']} of ID classes move to ID)" if info.get("id_images") else ""
            table.add_row(escape(set_name), "OOD test" + moved, f"{info['size']:,}")
        console.print(table)
        counts = manifest["class_counts"]
        images = "none (--class-counts)" if folder and counts_only else f"{manifest['train_size']:,}"
        console.print(f"training images: {images}; class counts: {counts} "
                      f"(imbalance {min(counts)}/{max(counts)} = {min(counts) / max(counts):.3g})")
        if folder:
            names = manifest["class_names"]
            shown = ", ".join(f"{n} {c}" for n, c in zip(names[:20], counts))
            more = f" and {len(names) - 20} more" if len(names) > 20 else ""
            opts = manifest["options"]
            console.print(escape(f"classes: {shown}{more}; images {opts['image_size']}×{opts['image_size']}, "
                                 f"{opts['channels']} channel(s), "
                                 f"{'decoded into memory' if opts['in_memory'] else 'read from disk'}"),
                          soft_wrap=True)
        if not verified:
            console.print("[yellow]checksums were not verified (--no-verify)[/]")
        console.print(f"manifest: {escape(manifest['path'])}", soft_wrap=True)
        if folder:
            drp = escape(str(Path(manifest["path"]).parent.parent))
            console.print(f"next: imood score RUN --ds {name} --drp {drp} (no training: there are no training images)"
                          if counts_only else f"next: imood train --ds {name} --drp {drp}", soft_wrap=True)
    if missing:  # on stderr, so --json output stays one document
        _warn(f"{name} is ready to train, but {len(missing)} piece(s) are missing: {', '.join(missing)}")
        for pieces, how in group_missing(missing):
            _warn(f"{', '.join(pieces)}: {how}")


def _warn(text: str) -> None:
    """A warning line on stderr, never wrapped by rich: paths and URLs in it stay whole for copying."""
    from rich.markup import escape

    from imood_cli.cli.common import err_console

    err_console.print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True)


def _status_rows(data_root: Path) -> list[dict]:
    """Every registered benchmark, then the folder benchmarks prepared under DATA (whose names no registered
    benchmark has: those win the name)."""
    from imood_cli.data.benchmarks.folder.benchmark import FolderBenchmark
    from imood_cli.data.benchmarks.folder.record import prepared_names
    from imood_cli.registry import registry

    reg = registry()
    registered = {p.name for p in reg.plugins() if p.kind == "dataset"}
    found = [(name, reg.dataset(name)) for name in reg.names("dataset")]
    found += [(name, FolderBenchmark(name)) for name in prepared_names(data_root) if name not in registered]
    rows = []
    for name, ds in found:
        status = ds.status(data_root)
        rows.append({"name": name, "description": getattr(ds, "description", ""),
                     "ready": all(s.present for s in status),
                     "files": [{"what": s.what, "path": str(s.path), "present": s.present, "how_to_get": s.how_to_get,
                                "detail": s.detail} for s in status],
                     "_required": [getattr(s, "required", True) for s in status]})
    return rows


def wrap_prose(text: str, width: int, indent: str) -> list[str]:
    """Lines of at most `width` characters; URLs on a line of their own, and no word (a path) ever broken.

    A word longer than the line stands alone on its line, whole: the terminal may wrap it, but
    nothing is cut, so it can be copied.
    """
    lines: list[str] = []
    prose: list[str] = []

    def flush() -> None:
        if prose:
            lines.extend(textwrap.wrap(" ".join(prose), width, initial_indent=indent, subsequent_indent=indent,
                                       break_long_words=False, break_on_hyphens=False))
            prose.clear()

    for word in text.split():
        if URL.fullmatch(word.strip("(.,;)")):
            flush()
            lines.append(indent + word)
        else:
            prose.append(word)
    flush()
    return lines


def _block(row: dict, width: int) -> list[str]:
    """One benchmark: a heading line, its description, then each piece with its path and how to get it."""
    from rich.markup import escape

    files, required = row["files"], row["_required"]
    absent = [f for f in files if not f["present"]]
    needed = [f for f, req in zip(files, required) if req and not f["present"]]
    if not absent:
        state = "[green]ready[/]"
    elif not needed:
        state = f"[yellow]usable[/]: {len(absent)} optional piece(s) missing"
    else:
        state = f"[red]not ready[/]: {len(absent)} of {len(files)} pieces missing"
    out = [f"[bold]{escape(row['name'])}[/]: {state}"]
    out += [escape(line) for line in wrap_prose(row["description"], width, INDENT)]
    shown_how = None
    for f, req in zip(files, required):
        mark = "[green]present[/]" if f["present"] else ("[red]missing[/]" if req else "[yellow]missing[/]")
        optional = "" if req else " (optional)"
        out.append(f"{INDENT}{mark}  {escape(f['what'])}{optional}")
        out.append(escape(PIECE_INDENT + f["path"]))
        if f["detail"]:
            out += [escape(line) for line in wrap_prose(f["detail"], width, PIECE_INDENT)]
        if not f["present"] and f["how_to_get"]:
            how = "as above" if f["how_to_get"] == shown_how else f["how_to_get"]
            out += [escape(line) for line in wrap_prose("get it: " + how, width, PIECE_INDENT)]
            shown_how = f["how_to_get"]
    return out


@app.command("list")
def list_datasets(data_root: Path = DRP, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every known benchmark and whether its files are present under DATA."""
    rows = _status_rows(data_root)
    if as_json:
        print(json.dumps([{k: v for k, v in row.items() if not k.startswith("_")} for row in rows], indent=2))
        return
    from rich.markup import escape

    from imood_cli.cli.common import SafeConsole

    console = SafeConsole(highlight=False, emoji=False, soft_wrap=True)  # soft wrap: long paths and URLs are never cut
    width = max(40, min(console.width, 100))
    console.print(f"benchmarks under {escape(str(data_root))}")
    for row in rows:
        console.print()
        for line in _block(row, width):
            console.print(line)
