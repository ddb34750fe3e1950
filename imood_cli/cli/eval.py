"""`imood eval`: metrics from score files (nothing but the files is needed)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import typer

from imood_cli.cli.common import console
from imood_cli.cli.tables import eval_tables
from imood_cli.core.atomic import atomic_write_text
from imood_cli.engine.scoreset import ScoreSet
from imood_cli.errors import ImoodError
from imood_cli.report.results import evaluate_scoreset, score_files


def eval_scores(
    scores: list[Path] = typer.Argument(..., help="Score files, or run folders / scores folders holding them."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (several files: keyed by metric)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV: one row per metric and OOD set."),
    bootstrap: int = typer.Option(0, "--bootstrap", help="Bootstrap rounds for 95% confidence intervals (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write <run>/eval/<metric>.json next to a run's scores."),
) -> None:
    """AUROC, AUPR-in, AUPR-out and FPR95 per OOD set and their mean; ID and many/medium/few accuracy."""
    if bootstrap < 0:
        raise ImoodError("--bootstrap must be >= 0")
    files = score_files(scores)
    results = {}
    for path in files:
        ss = ScoreSet.load(path)
        key = ss.metric if ss.metric not in results else f"{ss.metric} ({path})"
        results[key] = evaluate_scoreset(ss, bootstrap=bootstrap, seed=seed)
        results[key]["score_file"] = str(path)
        if save and path.parent.name == "scores":
            atomic_write_text(path.parent.parent / "eval" / f"{path.stem}.json", json.dumps(results[key], indent=2))
    if as_json:
        print(json.dumps(next(iter(results.values())) if len(results) == 1 else results, indent=2))
    elif as_csv:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["metric", "ood_set", "auroc", "aupr_in", "aupr_out", "fpr95"])
        for metric, r in results.items():
            for set_name, m in r["ood"].items():
                w.writerow([metric, set_name] + [f"{m[k]:.6f}" for k in ("auroc", "aupr_in", "aupr_out", "fpr95")])
        print(buf.getvalue(), end="")
    else:
        for metric, r in results.items():
            for table in eval_tables(metric, r):
                console.print(table)
