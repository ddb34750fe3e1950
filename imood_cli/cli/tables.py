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


def _label_column(t: Table, title: str = "run · detector") -> None:
    t.add_column(title, no_wrap=True)


def summary_table(entries: list[Entry]) -> Table:
    t = Table(title="OOD detection, mean over OOD sets (%)", title_justify="left")
    _label_column(t)
    for key in NAMES:
        t.add_column(NAMES[key], justify="right")
    for e in entries:
        m = e.result["ood"]["mean"]
        t.add_row(e.label, *[pct(m[k]) for k in NAMES])
    return t


def gains_table(entries: list[Entry]) -> Table | None:
    """What the ImOOD correction changes: each ada_<m> against <m> of the same run, in points."""
    rows = [(e, base_of(e, entries)) for e in entries]
    rows = [(e, b) for e, b in rows if b is not None]
    if not rows:
        return None
    t = Table(title="gain of the ada_ form over its base (points; green = better)", title_justify="left")
    _label_column(t)
    for key in NAMES:
        t.add_column(f"Δ{NAMES[key]}", justify="right")
    for e, b in rows:
        cells = []
        for key in NAMES:
            d = 100 * (e.result["ood"]["mean"][key] - b.result["ood"]["mean"][key])
            good = d > 0 if HIGHER_BETTER[key] else d < 0
            cells.append(f"[{'green' if good else 'red' if d else 'dim'}]{d:+.2f}[/]")
        t.add_row(e.label, *cells)
    return t


def id_table(entries: list[Entry]) -> Table | None:
    """ID accuracy is a property of the model, so one row per run."""
    seen, t = set(), Table(title="ID classification (%)", title_justify="left")
    _label_column(t, "run")
    for col in ("accuracy", "many-shot", "medium-shot", "few-shot"):
        t.add_column(col, justify="right")
    for e in entries:
        idr = e.result.get("id")
        key = e.scores.meta.get("checkpoint_sha256") or e.run
        if idr is None or key in seen:
            continue
        seen.add(key)
        t.add_row(e.run or e.scores.meta.get("dataset", "model"), pct(idr["acc"]), pct(idr["many"]), pct(idr["medium"]),
                  pct(idr["few"]))
    return t if seen else None


def per_set_table(entries: list[Entry]) -> Table:
    sets = [s for s in entries[0].result["ood"] if s != "mean"]
    t = Table(title="per OOD set: AUROC / FPR95 (%)", title_justify="left")
    _label_column(t)
    for s in sets:
        t.add_column(s, justify="right")
    for e in entries:
        t.add_row(e.label, *[f"{pct(e.result['ood'][s]['auroc'])} / {pct(e.result['ood'][s]['fpr95'])}"
                             if s in e.result["ood"] else "–" for s in sets])
    return t


def group_tables(entries: list[Entry]) -> list[Table]:
    """The paper's Fig. 1 at the FPR95 threshold, averaged over OOD sets: which ID images are lost,
    and which classes absorb the OOD images that get through."""
    flagged = Table(title="ID images flagged as OOD at the FPR95 threshold, by shot group (%)", title_justify="left")
    taken = Table(title="OOD images accepted as ID, by the shot group of their predicted class (%)",
                  title_justify="left")
    for t in (flagged, taken):
        _label_column(t)
        for grp in ("many", "medium", "few"):
            t.add_column(grp, justify="right")
    for e in entries:
        groups = e.result.get("groups", {})
        if not groups:
            continue

        def mean(part: str, grp: str):
            vals = [g[part].get(grp) for g in groups.values() if g[part].get(grp) is not None]
            return sum(vals) / len(vals) if vals else None

        flagged.add_row(e.label, *[pct(mean("id_flagged_as_ood", g)) for g in ("many", "medium", "few")])
        taken.add_row(e.label, *[pct(mean("ood_accepted_as", g)) for g in ("many", "medium", "few")])
    return [flagged, taken] if flagged.row_count else []
