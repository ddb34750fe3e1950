"""`imood eval`: metrics from score files (nothing but the files is needed; torch is never imported)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

import typer

from imood_cli.cli.common import abort_on_interrupt
from imood_cli.errors import ImoodError, unknown_name
from imood_cli.fs.safe import read_json


def _eval_json_path(run: Path, stem: str) -> Path:
    """RUN/eval/<metric>.json, refused when writing it would leave the run folder or replace another file."""
    folder = run / "eval"
    if folder.is_symlink() or (folder.exists() and not folder.resolve().is_relative_to(run.resolve())):
        raise ImoodError(f"{folder} is a link out of the run folder; imood does not write through it "
                         "(remove the link, or pass --no-save)")
    target = folder / f"{stem}.json"
    if target.is_symlink() or target.is_dir():
        raise ImoodError(f"{target} is not a file imood wrote; move it away or pass --no-save")
    if target.exists():
        try:  # a FIFO or a device there is refused by read_json, never opened for reading
            ours = "fpr95_convention" in read_json(target, "evaluation")
        except (ImoodError, TypeError):
            ours = False
        if not ours:
            raise ImoodError(f"{target} exists and is not an evaluation imood wrote; move it away or pass --no-save")
    return target


@abort_on_interrupt
def eval_scores(
    scores: list[Path] = typer.Argument(..., metavar="SCORES", show_default=False,
                                        help="Score files, or run folders / scores folders holding them."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (several files: keyed by metric)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV: one row per metric and OOD set."),
    bootstrap: int = typer.Option(0, "--bootstrap", metavar="N",
                                  help="Bootstrap rounds for 95% confidence intervals (0: none)."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the bootstrap."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write RUN/eval/<metric>.json for score files in a "
                              "run's scores folder."),
    allow_stale: bool = typer.Option(False, "--allow-stale", help="Evaluate scores computed from an older model than "
                                     "the run's model.safetensors, marked stale (never saved), instead of refusing."),
    sort: Optional[str] = typer.Option(None, "--sort", metavar="KEY",
                                       help="Order the score files (by their mean over the OOD sets) and each "
                                            "file's OOD sets: auroc (highest first), fpr95 (lowest first) or name. "
                                            "[default: the order found]"),
) -> None:
    """AUROC, AUPR-in, AUPR-out and FPR95 per OOD set and their mean; ID and many/medium/few accuracy."""
    # numpy and the report modules load only when the command runs: `imood --help` stays fast
    from imood_cli.cli.tables import print_table, print_warning
    from imood_cli.engine.runs.scorefile import ScoreSet
    from imood_cli.fs.atomic import atomic_write_text
    from imood_cli.report.results import ModelCheck, evaluate_scoreset, fingerprint, representative, run_of, score_files
    from imood_cli.report.tables import METRICS, SORTS, eval_tables, sort_key, summary_table

    if sort is not None and sort not in SORTS:
        raise unknown_name("--sort key", sort, SORTS)
    if bootstrap < 0:
        raise ImoodError("--bootstrap must be >= 0")
    if seed < 0:
        raise ImoodError("--seed must be >= 0")
    check = ModelCheck()
    results = {}
    same: dict[tuple, list[str]] = {}  # identical scores of one model (oe scores as msp): named together
    for path in score_files(scores):
        ss = ScoreSet.load(path)
        reason = check.stale_reason(path, ss)
        if reason and not allow_stale:
            raise ImoodError(reason)
        key = ss.metric if ss.metric not in results else f"{ss.metric} ({path})"
        results[key] = evaluate_scoreset(ss, bootstrap=bootstrap, seed=seed)
        results[key]["score_file"] = str(path)
        results[key]["alias_of"] = None
        same.setdefault((ss.meta.get("checkpoint_sha256"), bool(reason), fingerprint(ss)), []).append(key)
        if reason:
            results[key]["stale"] = True
            print_warning(reason.split(";")[0] + "; shown because of --allow-stale")
        run = run_of(path)
        if save and run is not None and not reason:
            atomic_write_text(_eval_json_path(run, path.stem), json.dumps(results[key], indent=2))
    aliases: dict[str, list[str]] = {}
    for keys in same.values():
        head = representative(keys)
        aliases[head] = [k for k in keys if k != head]
        for k in aliases[head]:
            results[k]["alias_of"] = head
    if sort is not None:
        results = dict(sorted(results.items(), key=lambda kv: sort_key(sort, kv[0], kv[1]["ood"]["mean"].get(sort))))
    if as_json:
        print(json.dumps(next(iter(results.values())) if len(results) == 1 else results, indent=2))
    elif as_csv:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["metric", "ood_set", *[k for k, _, _ in METRICS], "alias_of"])
        for metric, r in results.items():
            names = list(r["ood"])
            if sort is not None:  # the mean stays last
                names.sort(key=lambda s: (s == "mean", sort_key(sort, s, r["ood"][s].get(sort))))
            for set_name in names:
                m = r["ood"][set_name]
                w.writerow([metric, set_name] + [f"{m[k]:.6f}" for k, _, _ in METRICS] + [r["alias_of"] or ""])
        print(buf.getvalue(), end="")
    else:
        def name(metric: str, r: dict) -> str:
            others = aliases.get(metric)
            return metric + (f" (= {', '.join(others)})" if others else "") + (" (stale)" if r.get("stale") else "")

        shown = {metric: r for metric, r in results.items() if r["alias_of"] is None}
        for metric, r in shown.items():
            for t in eval_tables(name(metric, r), r, sort):
                print_table(t)
        if len(shown) > 1:  # the files side by side, after the details: the comparison ends the output
            rows = [(name(metric, r), r) for metric, r in shown.items()]
            print_table(summary_table("files", f"{len(rows)} score files: mean over each file's OOD sets (%)",
                                      rows, sort=sort))
