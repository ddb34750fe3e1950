"""`imood data prepare | list`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from imood_cli.cli.common import console
from imood_cli.engine.benchmark import dataset
from imood_cli.registry import registry

app = typer.Typer(help="Prepare benchmarks and see which are present.", no_args_is_help=True)

DRP = typer.Option(Path("data"), "--data-root", "--drp", "--data_root_path", help="Folder that holds every dataset ($DATA).")


@app.command("prepare")
def prepare(
    name: str = typer.Argument(..., help="Benchmark: digits, cifar10, cifar100, imagenet, or a plugin's."),
    data_root: Path = DRP,
    imbalance_ratio: Optional[float] = typer.Option(None, "--imbalance-ratio", "--imbalance_ratio",
                                                    help="ρ of the long-tail split, in (0, 1]. (default: the benchmark's)"),
    num_ood_samples: Optional[int] = typer.Option(None, "--num-ood-samples", "--num_ood_samples",
                                                  help="Auxiliary OOD images to use (CIFAR: the first 30,000 of 300K)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check checksums of the known files."),
    download: bool = typer.Option(True, "--download/--no-download", help="Download what can be downloaded."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Build the long-tailed split, check every file, and write DATA/<name>/manifest.json."""
    ds = dataset(name)
    manifest = ds.prepare(data_root, imbalance_ratio=imbalance_ratio, num_ood_samples=num_ood_samples,
                          verify=verify, download=download)
    if as_json:
        print(json.dumps(manifest, indent=2))
        return
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
    console.print(f"class counts (train): {counts}  (imbalance {min(counts)}/{max(counts)} = {min(counts) / max(counts):.3g})")
    if not verify:
        console.print("[yellow]checksums were not verified (--no-verify)[/]")
    console.print(f"manifest: {manifest['path']}")


@app.command("list")
def list_datasets(data_root: Path = DRP, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every known benchmark and whether its files are present under DATA."""
    reg = registry()
    rows = []
    for name in reg.names("dataset"):
        ds = reg.dataset(name)
        status = ds.status(data_root)
        rows.append({"name": name, "description": getattr(ds, "description", ""),
                     "ready": all(s.present for s in status),
                     "files": [{"what": s.what, "path": str(s.path), "present": s.present, "how_to_get": s.how_to_get,
                                "detail": s.detail} for s in status]})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"benchmarks under {data_root}", title_justify="left")
    for col in ("benchmark", "ready", "piece", "where", "how to get it"):
        table.add_column(col)
    for row in rows:
        for i, f in enumerate(row["files"]):
            mark = "[green]present[/]" if f["present"] else "[red]missing[/]"
            table.add_row(row["name"] if i == 0 else "", ("[green]yes[/]" if row["ready"] else "[red]no[/]") if i == 0 else "",
                          f"{f['what']}: {mark}", f["path"], "" if f["present"] else f["how_to_get"])
    console.print(table)
