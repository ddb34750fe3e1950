"""Rich tables for eval and report."""

from __future__ import annotations

from rich.table import Table

from imood_cli.report.results import Entry, base_of

HIGHER_BETTER = {"auroc": True, "aupr_in": True, "aupr_out": True, "fpr95": False}
NAMES = {"auroc": "AUROC↑", "aupr_in": "AUPR-in↑", "aupr_out": "AUPR-out↑", "fpr95": "FPR95↓"}


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _ci(m: dict, key: str) -> str:
    ci = m.get("ci95", {}).get(key)
    return f" [dim]({100 * ci[0]:.1f}–{100 * ci[1]:.1f})[/]" if ci else ""


def eval_tables(title: str, r: dict) -> list[Table]:
    t = Table(title=f"{title}: OOD detection (OOD = positive; %)", title_justify="left")
    t.add_column("OOD set")
    for key in NAMES:
        t.add_column(NAMES[key], justify="right")
    for name, m in r["ood"].items():
        style = "bold" if name == "mean" else None
        t.add_row(name, *[pct(m[k]) + _ci(m, k) for k in NAMES], style=style)
    t.caption = f"FPR95: {r['fpr95_convention']}"
    out = [t]
    if "id" in r:
        a = Table(title=f"{title}: ID classification (%)", title_justify="left")
        for col in ("accuracy", "many-shot", "medium-shot", "few-shot"):
            a.add_column(col, justify="right")
        a.add_row(pct(r["id"]["acc"]), pct(r["id"]["many"]), pct(r["id"]["medium"]), pct(r["id"]["few"]))
        out.append(a)
        g = Table(title=f"{title}: errors at the FPR95 threshold, by shot group (%)", title_justify="left")
        g.add_column("OOD set")
        for grp in ("many", "medium", "few"):
            g.add_column(f"ID {grp} flagged OOD", justify="right")
        for grp in ("many", "medium", "few"):
            g.add_column(f"OOD taken as {grp}", justify="right")
        for name, e in r.get("groups", {}).items():
            flagged = [pct(e["id_flagged_as_ood"].get(grp)) for grp in ("many", "medium", "few")]
            taken = [pct(e["ood_accepted_as"].get(grp)) for grp in ("many", "medium", "few")]
            g.add_row(name, *flagged, *taken)
        out.append(g)
    return out


def _delta(v: float, base: float, key: str) -> str:
    d = 100 * (v - base)
    good = d > 0 if HIGHER_BETTER[key] else d < 0
    color = "green" if good else ("red" if d != 0 else "dim")
    return f" [{color}]({d:+.2f})[/]"


def summary_table(entries: list[Entry]) -> Table:
    t = Table(title="mean over OOD sets (%); (±) = change of the ada_ form over its base", title_justify="left")
    t.add_column("run · detector")
    for key in NAMES:
        t.add_column(NAMES[key], justify="right")
    for col in ("ID acc", "many", "medium", "few"):
        t.add_column(col, justify="right")
    for e in entries:
        m = e.result["ood"]["mean"]
        base = base_of(e, entries)
        cells = [pct(m[k]) + (_delta(m[k], base.result["ood"]["mean"][k], k) if base else "") for k in NAMES]
        idr = e.result.get("id", {})
        t.add_row(e.label, *cells, pct(idr.get("acc")), pct(idr.get("many")), pct(idr.get("medium")), pct(idr.get("few")))
    return t


def per_set_table(entries: list[Entry]) -> Table:
    sets = [s for s in entries[0].result["ood"] if s != "mean"]
    t = Table(title="per OOD set: AUROC / FPR95 (%)", title_justify="left")
    t.add_column("run · detector")
    for s in sets:
        t.add_column(s, justify="right")
    for e in entries:
        t.add_row(e.label, *[f"{pct(e.result['ood'][s]['auroc'])} / {pct(e.result['ood'][s]['fpr95'])}"
                             if s in e.result["ood"] else "–" for s in sets])
    return t


def group_table(entries: list[Entry]) -> Table:
    t = Table(title="at the FPR95 threshold, mean over OOD sets (%): tail ID flagged as OOD, OOD taken as head",
              title_justify="left")
    t.add_column("run · detector")
    for grp in ("many", "medium", "few"):
        t.add_column(f"ID {grp} → OOD", justify="right")
    for grp in ("many", "medium", "few"):
        t.add_column(f"OOD → {grp}", justify="right")
    for e in entries:
        groups = e.result.get("groups", {})
        if not groups:
            continue

        def mean(part: str, grp: str):
            vals = [g[part].get(grp) for g in groups.values() if g[part].get(grp) is not None]
            return sum(vals) / len(vals) if vals else None

        t.add_row(e.label, *[pct(mean("id_flagged_as_ood", g)) for g in ("many", "medium", "few")],
                  *[pct(mean("ood_accepted_as", g)) for g in ("many", "medium", "few")])
    return t
