"""`imood plugins list`."""

from __future__ import annotations

import json
import os

import typer

from imood_cli.cli.common import console

app = typer.Typer(help="Detectors, aux losses and datasets: the built-ins and installed plugins.",
                  no_args_is_help=True)


def plugin_rows() -> list[dict]:
    from imood_cli.registry import LABELS, registry

    rows = [{"name": p.name, "kind": p.kind, "distribution": p.distribution, "version": p.version,
             "loaded": p.loaded, "status": p.status, "error": p.error, "derived_from": p.derived_from,
             "target": p.target, "builtin": p.builtin}
            for p in registry().plugins()]
    kinds = list(LABELS)
    # ada_x right after x
    return sorted(rows, key=lambda r: (kinds.index(r["kind"]) if r["kind"] in kinds else len(kinds),
                                       r["derived_from"] or r["name"], r["derived_from"] is not None,
                                       r["distribution"]))


@app.command("list")
def list_plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per plugin.")) -> None:
    """Every detector, aux loss and dataset: where it comes from and whether it loaded.

    A plugin that failed to import, breaks the protocol or clashes with another one's name is listed
    with its error; the other commands skip it with a warning.
    """
    from rich.markup import escape
    from rich.table import Table

    from imood_cli.registry import ENV, LABELS

    rows = plugin_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    allow = os.environ.get(ENV)
    title = "imood plugins" + (f" ({ENV}={allow!r})" if allow is not None else "")
    table = Table(title=title, title_justify="left")
    for col in ("name", "kind", "distribution", "version", "status"):
        table.add_column(col, overflow="fold")
    for r in rows:
        if r["loaded"]:
            status = "[green]loaded[/]" + (f" (ImOOD form of {escape(r['derived_from'])})" if r["derived_from"] else "")
        elif r["status"] == "disabled":
            status = f"[yellow]{escape(r['error'])}[/]"
        else:
            status = f"[red]{escape(r['error'])}[/]"
        table.add_row(escape(r["name"]), LABELS.get(r["kind"], r["kind"]), escape(r["distribution"]),
                      escape(r["version"]), status)
    console.print(table)
    bad = sum(r["status"] in ("error", "refused", "clash") and not r["derived_from"] for r in rows)
    if bad:
        console.print(f"[red]{bad} plugin(s) cannot be used[/]; every other name works.")
