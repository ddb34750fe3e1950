"""`imood plugins list`."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from imood_cli.cli.common import console
from imood_cli.plugins import registry

app = typer.Typer(help="OOD metrics, aux losses and datasets from installed plugins.", no_args_is_help=True)


@app.command("list")
def list_plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every metric, aux loss and dataset: where it comes from and whether it loaded."""
    plugins = registry().plugins()
    rows = [{"name": p.name, "kind": p.kind, "distribution": p.distribution, "version": p.version,
             "loaded": p.loaded, "error": p.error, "derived_from": p.derived_from, "target": p.target} for p in plugins]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="imood plugins", title_justify="left")
    for col in ("name", "kind", "distribution", "version", "status"):
        table.add_column(col)
    for r in sorted(rows, key=lambda r: (r["kind"], r["name"])):
        if r["loaded"]:
            status = "[green]loaded[/]" + (f" (ImOOD form of {r['derived_from']})" if r["derived_from"] else "")
        else:
            status = f"[red]{r['error']}[/]"
        table.add_row(r["name"], r["kind"], r["distribution"], r["version"], status)
    console.print(table)
