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


@app.command("prepare")
def prepare(
    name: str = typer.Argument(..., metavar="NAME",
                               help="Benchmark: digits, cifar10, cifar100, imagenet, or a plugin's."),
    data_root: Path = DRP,
    imbalance_ratio: Optional[float] = typer.Option(
        None, "--imbalance-ratio", "--imbalance_ratio", metavar="RHO",
        help="ρ of the long-tail split, in (0, 1]. [default: the benchmark's]"),
    num_ood_samples: Optional[int] = typer.Option(
        None, "--num-ood-samples", "--num_ood_samples", metavar="N",
        help="Auxiliary OOD images to use (CIFAR: the first 30,000 of 300K; 0: none)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check checksums of the known files."),
    download: bool = typer.Option(True, "--download/--no-download", help="Download what can be downloaded."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Build the long-tailed split, check every file, and write DATA/<name>/manifest.json.

    Pieces a benchmark can do without (OOD test sets, auxiliary OOD) may be missing: they are listed
    with where to get them, recorded in the manifest, and the command still succeeds.
    """
    from rich.markup import escape
    from rich.table import Table

    from imood_cli.cli.common import console
    from imood_cli.data.base import group_missing
    from imood_cli.registry import registry

    ds = registry().dataset(name)
    manifest = ds.prepare(data_root, imbalance_ratio=imbalance_ratio, num_ood_samples=num_ood_samples,
                          verify=verify, download=download)
    missing = manifest.get("missing") or {}
    if as_json:
        print(json.dumps(manifest, indent=2))
    else:
        table = Table(title=f"{name}: prepared", title_justify="left")
        table.add_column("set")
        table.add_column("role")
        table.add_column("images", justify="right")
        table.add_row(manifest["train"]["name"], "ID train (long-tailed)", f"{manifest['train']['size']:,}")
        table.add_row(manifest["test"]["name"], "ID test", f"{manifest['test']['size']:,}")
        if manifest.get("aux_ood"):
            table.add_row(manifest["aux_ood"]["name"], "auxiliary OOD (training)", f"{manifest['aux_ood']['size']:,}")
        for set_name, info in manifest["ood_tests"].items():
            moved = f" ({info['id_images']} of ID classes move to ID)" if info.get("id_images") else ""
            table.add_row(set_name, "OOD test" + moved, f"{info['size']:,}")
        console.print(table)
        counts = manifest["class_counts"]
        console.print(f"training images: {manifest['train_size']:,}; class counts: {counts} "
                      f"(imbalance {min(counts)}/{max(counts)} = {min(counts) / max(counts):.3g})")
        if not verify:
            console.print("[yellow]checksums were not verified (--no-verify)[/]")
        console.print(f"manifest: {escape(manifest['path'])}", soft_wrap=True)
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
    from imood_cli.registry import registry

    reg = registry()
    rows = []
    for name in reg.names("dataset"):
        ds = reg.dataset(name)
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
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False, emoji=False, soft_wrap=True)  # soft wrap: long paths and URLs are never cut
    width = max(40, min(console.width, 100))
    console.print(f"benchmarks under {escape(str(data_root))}")
    for row in rows:
        console.print()
        for line in _block(row, width):
            console.print(line)
