"""Gather score files and their evaluations for `imood eval` and `imood report` (numpy only, no torch).

A score file in `RUN/scores/` belongs to the run: it is checked against the run's current
`model.safetensors` (the sha256 recorded at scoring time must match), so a retrained model is never
reported with the scores of the one before. Score files anywhere else come from other tools and are
taken as they are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imood_cli.engine.metrics.evaluate import evaluate
from imood_cli.engine.runs.digest import sha256_file
from imood_cli.engine.runs.layout import MODEL_FILE, holds_model, run_of
from imood_cli.engine.runs.scorefile import ScoreSet
from imood_cli.errors import ImoodError

SCORES = "scores"
COPIED_META = ("dataset", "id_set", "checkpoint", "logit_adjust", "ada_scale", "moved_to_id", "trained_with")


def evaluate_scoreset(ss: ScoreSet, bootstrap: int = 0, seed: int = 0) -> dict:
    """The `imood eval --json` document of one score file."""
    has_id = ss.id_label is not None and ss.id_pred is not None and ss.class_counts is not None
    result = evaluate(
        ss.id_score, ss.ood_score,
        id_labels=ss.id_label if has_id else None, id_preds=ss.id_pred if has_id else None,
        class_counts=ss.class_counts if has_id else None,
        ood_preds_by_set=ss.ood_pred, bootstrap=bootstrap, seed=seed,
    )
    result["metric"] = ss.metric
    for key in COPIED_META:
        if key in ss.meta:
            result[key] = ss.meta[key]
    return result


# ---- run folders and their score files
def source_root(arg: Path) -> Path:
    """What an argument of eval/report names: a run folder, a scores folder or a score file -> the run
    folder (or, for scores of another tool, the folder holding them)."""
    if arg.is_file():
        return run_of(arg) or arg.parent
    if arg.name == SCORES and holds_model(arg.parent):  # another tool's scores folder stays its own root
        return arg.parent
    return arg


def score_files(paths: list[Path], metrics: list[str] | None = None) -> list[Path]:
    """Score files named directly, or found in a run folder's scores/ or a scores folder, in argument order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
            continue
        if not p.exists():
            raise ImoodError(f"score file or run folder not found: {p}")
        if not p.is_dir():
            raise ImoodError(f"{p} is neither a score file nor a folder")
        in_run = p.name == SCORES and holds_model(p.parent)
        run = p.parent if in_run else p if holds_model(p) else None
        folder = p if in_run else p / SCORES if run is not None or (p / SCORES).is_dir() else p
        files = sorted(f for f in folder.glob("*.safetensors") if not f.name.startswith(".")) if folder.is_dir() else []
        if not files:
            if run is not None:
                raise ImoodError(f"{run} has no scores yet: run `imood score {run}`")
            raise ImoodError(f"no score files (*.safetensors) in {folder}")
        if metrics:
            by_stem = {f.stem: f for f in files}
            absent = [m for m in metrics if m not in by_stem]
            if absent:
                hint = f": run `imood score {run} --ood_metric {','.join(absent)}`" if run is not None else ""
                raise ImoodError(f"{p} has no scores for {', '.join(absent)}{hint}")
            files = [by_stem[m] for m in metrics]
        found.extend(files)
    unique: dict[Path, Path] = {}
    for f in found:  # a file reached twice (a run and its scores folder) is read once
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


class ModelCheck:
    """Whether the scores of a run's score file come from the run's current model (hashed once per run)."""

    def __init__(self) -> None:
        self._sha: dict[Path, str] = {}

    def stale_reason(self, path: Path, ss: ScoreSet) -> str | None:
        run = run_of(Path(path))
        recorded = ss.meta.get("checkpoint_sha256")
        if run is None or recorded is None:  # another tool's scores: nothing to check them against
            return None
        model = (run / MODEL_FILE).resolve()
        if model not in self._sha:
            self._sha[model] = sha256_file(model)
        if recorded == self._sha[model]:
            return None
        return (f"{path} were computed from an older model (its checkpoint_sha256 is not that of "
                f"{run / MODEL_FILE}); run `imood score {run}` again, or pass --allow-stale to show them marked")


# ---- identical scores: one row
PREFERRED = ("msp", "energy", "maxlogit", "bin_disc")  # the name a group of identical scores is shown under


def fingerprint(ss: ScoreSet) -> str:
    """A digest of a score file's scores by value (float64, so a float32 copy of the same scores is the same),
    with its OOD set names: equal digests give identical curves and metrics."""
    h = hashlib.sha256()
    for name, scores in [("id", ss.id_score), *sorted(ss.ood_score.items())]:
        a = np.ascontiguousarray(scores, dtype=np.float64) + 0.0  # -0.0 and 0.0 are the same score
        h.update(f"{name}\0{a.size}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def representative(names: list[str]) -> str:
    """The name a group of identical scores is shown under: msp, energy, maxlogit or bin_disc (or its ada_ form)
    where the group has one, else the first."""
    def key(i: int) -> tuple:
        base = names[i].split(":")[0].removeprefix("ada_")
        return (base not in PREFERRED, PREFERRED.index(base) if base in PREFERRED else 0, i)

    return names[min(range(len(names)), key=key)]


def merge_identical(rows: list[Entry]) -> list[Entry]:
    """One row per distinct scores of one run: `oe`, `oecc` and `opensampling` score with msp's score, so on a
    model their files are msp's, and the report shows `msp (= oe, oecc, opensampling)` once. The row is named
    after msp, energy, maxlogit or bin_disc where the group has one, else its first file."""
    groups: dict[tuple, list[int]] = {}
    for i, e in enumerate(rows):
        key = (e.stale, e.scores.meta.get("checkpoint_sha256"), fingerprint(e.scores))
        groups.setdefault(key, []).append(i)
    keep = []
    for members in groups.values():
        metrics = [rows[i].metric for i in members]
        head = members[metrics.index(representative(metrics))]
        rows[head].aliases = [rows[i].metric for i in members if i != head]
        rows[head].alias_paths = [rows[i].path for i in members if i != head]
        keep.append(head)
    return [rows[i] for i in sorted(keep)]


# ---- a report: rows in argument order, runs told apart, like compared with like
@dataclass(eq=False)  # rows are told apart by identity; their arrays have no single truth value
class Entry:
    """One (run, detector) row of a report; `result` is its `imood eval --json` document."""

    run: str  # how the run is called in the report ("" when the report shows one run)
    metric: str
    scores: ScoreSet
    result: dict
    path: Path | None = None
    run_path: Path | None = None
    stale: bool = False
    aliases: list[str] = field(default_factory=list)  # detectors of the same run with identical scores
    alias_paths: list[Path | None] = field(default_factory=list)  # their score files

    @property
    def label(self) -> str:
        text = f"{self.run} · {self.metric}" if self.run else self.metric
        if self.aliases:
            text += f" (= {', '.join(self.aliases)})"
        return text + " (stale)" if self.stale else text

    @property
    def sets(self) -> list[str]:
        return list(self.scores.ood_score)

    @property
    def model(self) -> tuple[str, str]:
        """Which model made the predictions: accuracy belongs to it, not to the detector."""
        return self.run, str(self.scores.meta.get("checkpoint_sha256") or self.run_path or self.path)


@dataclass
class Report:
    entries: list[Entry]
    runs: list[tuple[str, Path]]  # (label, folder) in argument order
    sets: list[str]  # every OOD set of any row, in order of first appearance
    warnings: list[str] = field(default_factory=list)  # for stderr: what was allowed and why it is marked
    mismatches: dict[str, str] = field(default_factory=dict)  # "ood_sets" | "dataset" | "id_set" -> how rows differ

    @property
    def sets_differ(self) -> bool:
        return any(set(e.sets) != set(self.sets) for e in self.entries)


def distinguishing_suffixes(paths: list[Path]) -> list[str]:
    """For each folder the shortest tail of its path no other folder shares (a/run and b/run -> a/run, b/run)."""
    parts = [p.resolve().parts for p in paths]
    out = []
    for i, mine in enumerate(parts):
        k = 1
        while k < len(mine) and any(j != i and other[-k:] == mine[-k:] for j, other in enumerate(parts)):
            k += 1
        out.append(str(Path(*mine[-k:])))
    return out


def _order_key(metric: str, metrics: list[str] | None) -> tuple:
    if metrics:
        return (metrics.index(metric) if metric in metrics else len(metrics), metric)
    return (metric.removeprefix("ada_"), metric.startswith("ada_"))  # each base detector, then its ada_ form


def collect(args: list[Path], metrics: list[str] | None = None, bootstrap: int = 0, seed: int = 0,
            allow_stale: bool = False, allow_mismatch: bool = False) -> Report:
    """Load and evaluate every score file the arguments name; refuse stale scores and unlike rows
    unless allowed (then the report says so)."""
    roots: dict[Path, Path] = {}  # resolved -> as given
    files_of: dict[Path, list[Path]] = {}
    for arg in map(Path, args):
        files = score_files([arg], metrics)
        root = source_root(arg)
        key = root.resolve()
        roots.setdefault(key, root)
        files_of.setdefault(key, [])
        seen = {f.resolve() for f in files_of[key]}
        files_of[key] += [f for f in files if f.resolve() not in seen]
    labels = distinguishing_suffixes(list(roots.values())) if len(roots) > 1 else [""] * len(roots)
    check = ModelCheck()
    entries, warnings = [], []
    for (key, root), label in zip(roots.items(), labels):
        rows = []
        for f in files_of[key]:
            ss = ScoreSet.load(f)
            reason = check.stale_reason(f, ss)
            if reason and not allow_stale:
                raise ImoodError(reason)
            if reason:
                warnings.append(reason.split(";")[0] + "; shown marked (stale)")
            rows.append(Entry(label, ss.metric, ss, {}, f, root, bool(reason)))
        entries += merge_identical(sorted(rows, key=lambda e: _order_key(e.metric, metrics)))
    sets = list(dict.fromkeys(s for e in entries for s in e.sets))
    report = Report(entries, [(label or root.name, root) for (_, root), label in zip(roots.items(), labels)], sets,
                    warnings)
    problems = mismatches(report)  # from the files' contents, before the evaluation's work
    if problems and not allow_mismatch:
        raise ImoodError(f"{next(iter(problems.values()))}; pass --allow-mismatch to report them side by side, marked")
    report.mismatches = problems
    warnings += [p + "; reported side by side as --allow-mismatch asks" for p in problems.values()]
    for e in entries:
        e.result = evaluate_scoreset(e.scores, bootstrap, seed)
    return report


def _who(entries: list[Entry], report: Report) -> str:
    """Entries named briefly: a whole run by its name, otherwise each row."""
    names = []
    for run, _ in report.runs:
        of_run = [e for e in report.entries if e.run == run or (not e.run and len(report.runs) == 1)]
        mine = [e for e in entries if e in of_run]
        if mine and len(mine) == len(of_run) and len(report.runs) > 1:
            names.append(run)
        else:
            names += [e.label for e in mine]
    return ", ".join(names)


def mismatches(report: Report) -> dict[str, str]:
    """Why the rows are not like with like: different OOD sets, or different ID data."""
    problems = {}
    if report.sets_differ:
        parts = []
        for s in report.sets:
            lacking = [e for e in report.entries if s not in e.sets]
            if lacking:
                parts.append(f"{s!r} is missing from {_who(lacking, report)}")
        problems["ood_sets"] = "the rows cover different OOD sets (" + "; ".join(parts) + ")"
    for key, what in (("dataset", "datasets"), ("id_set", "ID sets")):
        known: dict[str, list[Entry]] = {}
        for e in report.entries:
            value = e.scores.meta.get(key)
            if isinstance(value, str) and value:
                known.setdefault(value, []).append(e)
        if len(known) > 1:
            desc = "; ".join(f"{_who(es, report)}: {value}" for value, es in known.items())
            problems[key] = f"the rows come from different {what} ({desc})"
    return problems


def base_of(entry: Entry, entries: list[Entry]) -> Entry | None:
    """For an ada_<m> entry, the <m> entry of the same run (to show the gain of the correction)."""
    if not entry.metric.startswith("ada_"):
        return None
    base = entry.metric[4:]
    for e in entries:
        if e.run_path == entry.run_path and e.run == entry.run and e.metric == base and e.stale == entry.stale:
            return e
    return None
