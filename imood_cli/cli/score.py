"""`imood score`: OOD scores of a trained model over the ID test set and every OOD test set."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from imood_cli.cli.common import ScoreProgress, console, progress, split_list, warn
from imood_cli.errors import ImoodError

DEFAULT_DETECTORS = "msp,energy,ada_msp,ada_energy"
SORTS = ("auroc", "fpr95", "name")  # report/tables.py SORTS, here so that --help needs no numpy


def reads_extra_outputs(name: str, trained_with: str | None) -> bool:
    """A detector that reads extra classifier outputs fits a model only if that model was trained with it:
    the same column is bin_disc's ID logit, COCL's outlier class or EAT's abstention classes."""
    from imood_cli.registry import parse_spec

    base = parse_spec(trained_with or "")[0].removeprefix("ada_")
    return name.removeprefix("ada_") == base


def default_detectors(extra_outputs: int, trained_with: str | None) -> list[str]:
    """msp and energy with their ada_ forms, and the training detector's own score when it reads extra outputs."""
    from imood_cli.registry import parse_spec, registry

    specs = split_list(DEFAULT_DETECTORS)
    base = parse_spec(trained_with or "")[0].removeprefix("ada_")
    if extra_outputs and base:
        try:
            score = registry().score(base)
        except ImoodError:
            return specs
        if score.extra_outputs:
            specs += [base] + ([f"ada_{base}"] if score.ada_scale is not None else [])
    return specs


def expand_all(requested: list[str], extra_outputs: int, trained_with: str | None) -> list[str]:
    """`all`: every distinct score the model can run, each followed by its ada_ form (a method that scores
    with another's score, outlier exposure with msp's, is that score: it is listed once, under its owner)."""
    from imood_cli.registry import registry

    out = []
    for spec in requested:
        if spec != "all":
            out.append(spec)
            continue
        reg = registry()
        for name in reg.names("method"):
            if name.startswith("ada_") or reg.alias_of(name):
                continue
            score = reg.score(name)
            if score.extra_outputs > extra_outputs:
                continue
            if score.extra_outputs and not reads_extra_outputs(name, trained_with):
                continue
            out.append(name)
            if score.ada_scale is not None:
                out.append(f"ada_{name}")
    return list(dict.fromkeys(out))


def shared_scores(specs: list[str]) -> dict[str, list[str]]:
    """For `-m all`: the methods that score with each scored method's score (msp: oe, oecc, opensampling),
    named in its row though `all` scores the score once."""
    from imood_cli.registry import registry

    reg = registry()
    out: dict[str, list[str]] = {}
    for name in reg.names("method"):
        owner = reg.alias_of(name)
        if owner is not None and owner in specs:
            out.setdefault(owner, []).append(name)
    return out


def shown_path(path: Path) -> str:
    """A path as the tables print it: relative to the working folder when inside it, else as it is."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path)


def extra_sets(folders: list[Path], taken: set[str], image_size: int, channels: int) -> dict:
    """--ood-dir folders as OOD sets; a name that is already taken is an error, never a silent replacement."""
    out: dict = {}
    seen: dict[str, Path] = {}
    for folder in folders:
        from imood_cli.data.pipeline.folder import load_ood_folder

        s = load_ood_folder(folder, image_size, channels)
        if s.name in taken:
            raise ImoodError(f"--ood-dir {folder}: the benchmark already has an OOD set named {s.name!r}; "
                             "rename the folder")
        if s.name in seen:
            raise ImoodError(f"--ood-dir {seen[s.name]} and {folder} would both be named {s.name!r}; rename one")
        seen[s.name] = folder
        out[s.name] = s
    return out


def score(
    run: Optional[Path] = typer.Argument(None, metavar="RUN", help="Run folder (or a model .safetensors file).",
                                         show_default=False),
    ckpt_path: Optional[Path] = typer.Option(None, "--ckpt-path", "--ckpt_path", metavar="RUN",
                                             help="Same as RUN, in the reference's spelling."),
    ood_metric: Optional[str] = typer.Option(
        None, "--ood-metric", "--ood_metric", "-m", metavar="NAMES",
        help="Detectors, comma-separated: msp energy bin_disc maha gradnorm ..., their ada_ forms, a plugin's, "
             "or all; name:key=value sets a detector's option (-m react:p=95). See imood plugins list. "
             f"[default: {DEFAULT_DETECTORS}, plus the training detector and its ada_ form when it reads "
             "extra outputs (bin_disc, cocl, eat)]"),
    logit_adjust: float = typer.Option(1.0, "--logit-adjust", "--logit_adjust", metavar="TAU",
                                       help="τ of the prior π̃ ∝ π^τ used by ada_ scores; 0 turns the correction "
                                            "off (ada_x = x)."),
    ada_scale: Optional[str] = typer.Option(None, "--ada-c", "--ada-scale", metavar="C|auto",
                                            help="c in ood = -(g + c·log β̂) for every ada_ detector (not the "
                                                 "method ada_scale, the ImOOD form of scale): a number, or "
                                                 "auto: the c that makes each class's mean ID score uncorrelated "
                                                 "with its log prior on the ID training set (imood's heuristic, "
                                                 "not the paper's). [default: each detector's own c]"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "--ds", metavar="NAME",
                                          help="Benchmark. [default: the one the model was trained on]"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", "--drp", metavar="DIR",
                                             help="Dataset folder. [default: the training run's]"),
    ood_dir: Optional[list[Path]] = typer.Option(None, "--ood-dir", metavar="DIR",
                                                 help="Extra OOD test set: any folder of images (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help="Folder for the score files. "
                                       "[default: RUN/scores]"),
    batch_size: int = typer.Option(512, "--batch-size", "--tb", "-b", metavar="N", help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", "--gpu", metavar="DEV", help="auto, cpu, cuda or cuda:N."),
    workers: int = typer.Option(4, "--workers", metavar="N", help="Data-loader workers for image-file datasets."),
    model_name: Optional[str] = typer.Option(None, "--model", "--md", metavar="NAME",
                                             help="Accepted for the reference's command lines; the architecture "
                                                  "comes from the model file."),
    sort: Optional[str] = typer.Option(None, "--sort", metavar="KEY",
                                       help="Order the results table: auroc (highest mean first), fpr95 (lowest "
                                            "first) or name. [default: the order of -m]"),
    refit: bool = typer.Option(False, "--refit",
                               help="Refit every detector that needs a fit (maha, knn, vim, ...) on the ID training "
                                    "set, ignoring and replacing its cache in RUN/fits/."),
) -> None:
    """Score the ID test set and the OOD test sets; one forward pass serves every detector."""
    target = run or ckpt_path
    if target is None:
        raise ImoodError("give a run folder (imood score runs/NAME) or --ckpt_path")
    if batch_size < 1:
        raise ImoodError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ImoodError(f"--workers must be >= 0, got {workers}")
    if sort is not None and sort not in SORTS:
        from imood_cli.errors import unknown_name

        raise unknown_name("--sort key", sort, SORTS)
    if not (math.isfinite(logit_adjust) and logit_adjust >= 0):
        raise ImoodError(f"--logit_adjust must be a finite number >= 0, got {logit_adjust}")
    if ada_scale is not None and ada_scale != "auto":
        try:
            ada_scale = float(ada_scale)
        except ValueError:
            raise ImoodError(f"--ada-scale takes a number >= 0 or auto, got {ada_scale!r}") from None
        if not (math.isfinite(ada_scale) and ada_scale >= 0):
            raise ImoodError(f"--ada-scale must be a finite number >= 0, got {ada_scale}")

    from imood_cli.engine import runtime
    from imood_cli.engine.benchmarks import load_benchmark
    from imood_cli.engine.metrics.evaluate import evaluate
    from imood_cli.engine.runs.layout import detector_label
    from imood_cli.engine.scoring.loading import load_model, model_config
    from imood_cli.engine.scoring.request import ScoreRequest
    from imood_cli.engine.scoring.score import score as score_run
    from imood_cli.engine.scoring.score import write_scores
    from imood_cli.registry import parse_spec, registry

    requested = list(dict.fromkeys(split_list(ood_metric)))  # a name given twice is scored once
    for spec in requested:  # a typo fails before the model and the data are loaded
        if spec != "all":
            registry().get("method", parse_spec(spec)[0])
    rt = runtime.setup(device)
    loaded = load_model(target, rt.device)
    cfg = model_config(loaded)
    ds = dataset or loaded.meta.get("dataset") or cfg.get("dataset")
    if not isinstance(ds, str) or not ds:
        raise ImoodError(f"{loaded.path} does not say which benchmark it was trained on: pass --ds")
    root = data_root or Path(cfg.get("data_root") or "data")
    extra_outputs, trained_with = loaded.model.arch.extra_outputs, loaded.meta.get("metric")
    specs = expand_all(requested, extra_outputs, trained_with) if requested else default_detectors(
        extra_outputs, trained_with)
    bench = load_benchmark(ds, root, imbalance_ratio=cfg.get("imbalance_ratio"), num_ood_samples=0)
    extra = extra_sets(ood_dir or [], set(bench.ood_tests), bench.image_size, bench.channels)
    for name, how in (getattr(bench, "missing", None) or {}).items():
        warn(f"{name} is missing, scored without it ({how})")
    # -m all: detectors this model cannot run (no feature map, no linear classifier) are left out with a note
    req = ScoreRequest(specs, logit_adjust, ada_scale, batch_size, workers, extra,
                       skip_unavailable="all" in requested, refit=refit)
    run_dir = loaded.path.parent
    folder = out or run_dir / "scores"
    notes: list[str] = []
    failed: dict = {}  # a detector whose fit or scores fail is named at the end; the others are written
    with progress() as bar:
        results = score_run(loaded, bench, req, rt, ScoreProgress(bar), cache_dir=run_dir / "fits", notes=notes,
                            failed=failed)
    if not rt.is_main:
        return  # under torchrun every process scored a shard; rank 0 holds them all and writes
    paths = write_scores(results, folder)
    for note in notes:
        warn(note)
    from imood_cli.cli.tables import print_table
    from imood_cli.report.results import fingerprint, representative
    from imood_cli.report.tables import summary_table

    n_sets = len(bench.ood_tests) + len(extra)
    same: dict[str, list[str]] = {}  # identical scores (oe scores as msp): one row naming them all
    for spec in specs:
        label = detector_label(spec)
        if label in results:  # else left out by -m all (named in the note above)
            same.setdefault(fingerprint(results[label]), []).append(label)
    shared = shared_scores(specs) if "all" in requested else {}
    rows = []
    for labels in same.values():
        head = representative(labels)
        ss = results[head]
        others = list(dict.fromkeys([x for x in labels if x != head] + shared.get(head, [])))
        rows.append((head + (f" (= {', '.join(others)})" if others else ""),
                     evaluate(ss.id_score, ss.ood_score, id_labels=ss.id_label, id_preds=ss.id_pred,
                              class_counts=ss.class_counts)))
    table = summary_table("score", f"{bench.name}: mean over {n_sets} OOD set{'s' if n_sets != 1 else ''} (%)", rows,
                          sort=sort)
    print_table(table)
    # the files share one folder: named once, on a line of its own that is never cut or wrapped (a column of
    # paths showed `runs…` at 80 columns)
    renamed = any(path.stem != label for label, path in paths.items())
    console.print(f"score files: {shown_path(folder)}/<detector>.safetensors"
                  + (" (a ':' in a detector's name is '-' in its file's)" if renamed else ""), soft_wrap=True,
                  markup=False)
    console.print(f"next: imood eval {shown_path(folder)}   or   imood report "
                  f"{shown_path(run_dir if out is None else folder)}", soft_wrap=True, markup=False)
    if failed:
        from imood_cli.engine.scoring.fits import failure_summary

        raise ImoodError(failure_summary(failed, len(results) + len(failed), written=True))
