"""`imood plugins list` and `imood plugins show NAME`."""

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
             "target": p.target, "builtin": p.builtin, **method_facts(reg, p),
             **(details(reg, p) if p.loaded else {})}
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


def details(reg, p) -> dict:
    """What `plugins show` says of a loaded plugin, less what the row already has."""
    facts = reg.describe(p.kind, p.name)
    return {k: v for k, v in facts.items() if k in ("summary", "source", "needs", "ada_scale", "extra_outputs",
                                                    "options", "problem")}


@app.command("show")
def show_plugin(name: str = typer.Argument(..., metavar="NAME", help="A method, aux loss or dataset name."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON: one object.")) -> None:
    """One plugin: where it comes from, what it does, its paper, what it needs and its options by phase."""
    from rich.markup import escape

    from imood_cli.registry import LABELS, registry

    reg = registry()
    kinds = [k for k in LABELS if name in reg.names(k)]
    if not kinds:
        reg.get("method", name)  # the nearest names, or why a plugin of that name was refused
    facts = reg.describe(kinds[0], name)
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    lines = [f"[bold]{escape(name)}[/] ({LABELS.get(facts['kind'], facts['kind'])}, {escape(facts['distribution'])} "
             f"{escape(facts['version'])})"]
    if facts.get("ada_form_of"):
        lines.append(f"the ImOOD form of {escape(facts['ada_form_of'])}: ood = -(g + c·log β̂)")
    if facts["summary"]:
        lines.append(escape(facts["summary"]))
    if facts.get("paper"):
        lines.append(f"paper: {escape(facts['paper'])} {escape(facts.get('paper_url') or '')}")
    if facts["kind"] == "method":
        lines.append(f"trains an objective: {'yes' if facts['trains'] else 'no (post hoc)'}"
                     + (f"; scores as {escape(facts['scores_as'])}" if facts.get("scores_as") else ""))
        if facts.get("problem"):
            lines.append(f"[yellow]{escape(facts['problem'])}[/]")
        else:
            lines.append(f"needs: {', '.join(facts['needs']) or 'the logits only'}; c of ada_: "
                         f"{facts['ada_scale'] if facts['ada_scale'] is not None else 'none (no ada_ form)'}"
                         + (f"; extra outputs: {facts['extra_outputs']}" if facts["extra_outputs"] else ""))
    for opt in facts.get("options", []):
        default = opt["note"] or ("empty" if opt["default"] == "" else opt["default"])
        lines.append(f"  {escape(opt['name'])} ({opt['type']}, {opt['phase']}): {escape(str(default))}")
    if facts.get("options") == []:
        lines.append("options: none")
    lines.append(f"source: {escape(str(facts['source'] or facts['target']))}")
    for line in lines:
        console.print(line, soft_wrap=False)


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
    table = Table(title=title, title_justify="left", caption="imood plugins show NAME: one in full (needs, options, "
                  "source)", caption_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("from", overflow="fold")
    table.add_column("status", overflow="fold")
    table.add_column("paper", overflow="fold")
    for r in rows:
        if r["loaded"]:
            status = "[green]ok[/]" + (f" · ada_ of {escape(r['derived_from'])}" if r["derived_from"] else "")
            if r.get("scores_as"):
                status += f" · scores as {escape(r['scores_as'])}"
        elif r["status"] == "disabled":
            status = f"[yellow]{escape(r['error'])}[/]"
        else:
            status = f"[red]{escape(r['error'])}[/]"
        paper = "" if r["derived_from"] or not r.get("paper") else short_cite(r["paper"])
        table.add_row(escape(r["name"]), LABELS.get(r["kind"], r["kind"]),
                      escape(f"{r['distribution']} {r['version']}"), status, escape(paper))
    console.print(table)
    bad = sum(r["status"] in ("error", "refused", "clash") and not r["derived_from"] for r in rows)
    if bad:
        console.print(f"[red]{bad} plugin(s) cannot be used[/]; every other name works.")
