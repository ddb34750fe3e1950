"""`imood plugins list`."""

from __future__ import annotations

import json
import os

import typer

from imood_cli.cli.common import console

app = typer.Typer(help="Methods, aux losses and datasets: the built-ins and installed plugins.",
                  no_args_is_help=True)


def plugin_rows() -> list[dict]:
    from imood_cli.registry import LABELS, registry

    reg = registry()
    rows = [{"name": p.name, "kind": p.kind, "distribution": p.distribution, "version": p.version,
             "loaded": p.loaded, "status": p.status, "error": p.error, "derived_from": p.derived_from,
             "target": p.target, "builtin": p.builtin, **method_facts(reg, p)}
            for p in reg.plugins()]
    kinds = list(LABELS)
    # ada_x right after x
    return sorted(rows, key=lambda r: (kinds.index(r["kind"]) if r["kind"] in kinds else len(kinds),
                                       r["derived_from"] or r["name"], r["derived_from"] is not None,
                                       r["distribution"]))


def short_cite(cite: str) -> str:
    """'Liu et al., "Energy-based ...", NeurIPS 2020' as 'Liu et al., NeurIPS 2020' (the table's width)."""
    authors, _, rest = cite.partition(', "')
    where = rest.rpartition('", ')[2]
    return f"{authors}, {where}" if rest else cite


def method_facts(reg, p) -> dict:
    """A loaded method's paper, whether it trains an objective, and the method whose score it scores with."""
    if p.kind != "method" or not p.loaded:
        return {}
    method = reg.get("method", p.derived_from or p.name).method
    paper = method.paper
    return {"paper": paper.cite() if paper is not None else None, "paper_url": paper.url if paper else None,
            "trains": method.trainable() or p.derived_from is not None, "scores_as": reg.alias_of(p.name)}


@app.command("list")
def list_plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per plugin.")) -> None:
    """Every method, aux loss and dataset: where it comes from, its paper and whether it loaded.

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
    for col in ("name", "kind", "distribution", "version", "paper", "status"):
        table.add_column(col, overflow="fold")
    for r in rows:
        if r["loaded"]:
            status = "[green]loaded[/]" + (f" (ImOOD form of {escape(r['derived_from'])})" if r["derived_from"] else "")
            if r.get("scores_as"):
                status += f"; scores as {escape(r['scores_as'])}"
        elif r["status"] == "disabled":
            status = f"[yellow]{escape(r['error'])}[/]"
        else:
            status = f"[red]{escape(r['error'])}[/]"
        paper = "" if r["derived_from"] or not r.get("paper") else short_cite(r["paper"])
        table.add_row(escape(r["name"]), LABELS.get(r["kind"], r["kind"]), escape(r["distribution"]),
                      escape(r["version"]), escape(paper), status)
    console.print(table)
    bad = sum(r["status"] in ("error", "refused", "clash") and not r["derived_from"] for r in rows)
    if bad:
        console.print(f"[red]{bad} plugin(s) cannot be used[/]; every other name works.")
