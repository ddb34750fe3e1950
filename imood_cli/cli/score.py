"""`imood score`: OOD scores of a trained model over the ID test set and every OOD test set."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from imood_cli.cli.common import ScoreProgress, console, progress, split_list
from imood_cli.engine import runtime
from imood_cli.engine.benchmark import load_benchmark
from imood_cli.engine.evaluate import evaluate
from imood_cli.engine.score import ScoreRequest, load_model, model_config, write_scores
from imood_cli.engine.score import score as score_run
from imood_cli.errors import ImoodError
from imood_cli.registry import registry

DEFAULT_METRICS = "msp,energy,ada_msp,ada_energy"


def score(
    run: Optional[Path] = typer.Argument(None, help="Run folder (or a model .safetensors file)."),
    ckpt_path: Optional[Path] = typer.Option(None, "--ckpt-path", "--ckpt_path", help="Same as RUN, in the reference's spelling."),
    ood_metric: Optional[str] = typer.Option(None, "--ood-metric", "--ood_metric", "-m",
                                             help="Detectors, comma-separated: msp energy bin_disc maha gradnorm, their ada_ forms, or a plugin's (imood plugins list). (default: msp,energy,ada_msp,ada_energy (+bin_disc, ada_bin_disc when the model has the extra output))"),
    logit_adjust: float = typer.Option(1.0, "--logit-adjust", "--logit_adjust", help="τ of the prior π̃ ∝ π^τ used by ada_ scores; 0 turns the correction off (ada_x = x)."),
    ada_scale: Optional[float] = typer.Option(None, "--ada-scale", help="Override c in ood = -(g + c·log β̂). (default: the detector's own)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "--ds", help="Benchmark. (default: the one the model was trained on)"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", "--drp", help="Dataset folder. (default: the training run's)"),
    ood_dir: Optional[list[Path]] = typer.Option(None, "--ood-dir", help="Extra OOD test set: any folder of images (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the score files. (default: RUN/scores)"),
    batch_size: int = typer.Option(512, "--batch-size", "--tb", "-b", help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", "--gpu", help="auto | cpu | cuda | cuda:N."),
    workers: int = typer.Option(4, "--workers", help="Data-loader workers for image-file datasets."),
    model_name: Optional[str] = typer.Option(None, "--model", "--md", help="Accepted for the reference's command lines; the architecture comes from the checkpoint."),
) -> None:
    """Score the ID test set and the OOD test sets; one forward pass serves every detector."""
    target = run or ckpt_path
    if target is None:
        raise ImoodError("give a run folder (imood score runs/NAME) or --ckpt_path")
    if batch_size < 1:
        raise ImoodError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ImoodError(f"--workers must be >= 0, got {workers}")
    if not (math.isfinite(logit_adjust) and logit_adjust >= 0):
        raise ImoodError(f"--logit_adjust must be a finite number >= 0, got {logit_adjust}")
    if ada_scale is not None and not math.isfinite(ada_scale):
        raise ImoodError(f"--ada-scale must be a finite number, got {ada_scale}")
    requested = list(dict.fromkeys(split_list(ood_metric)))  # a name given twice is scored once
    for name in requested:  # a typo fails before the model and the data are loaded
        registry().get("detector", name)
    rt = runtime.setup(device)
    loaded = load_model(target, rt.device)
    cfg = model_config(loaded)
    ds = dataset or loaded.meta.get("dataset") or cfg.get("dataset")
    if not isinstance(ds, str) or not ds:
        raise ImoodError(f"{loaded.path} does not say which benchmark it was trained on: pass --ds")
    root = data_root or Path(cfg.get("data_root", "data"))
    metrics = requested or split_list(DEFAULT_METRICS) + (
        ["bin_disc", "ada_bin_disc"] if loaded.model.arch.extra_outputs else [])
    bench = load_benchmark(ds, root, imbalance_ratio=cfg.get("imbalance_ratio"), num_ood_samples=0)
    extra = {}
    for folder in ood_dir or []:
        from imood_cli.data.folder import load_ood_folder

        s = load_ood_folder(folder, bench.image_size, bench.channels)
        extra[s.name] = s
    req = ScoreRequest(metrics, logit_adjust, ada_scale, batch_size, workers, extra)
    run_dir = loaded.path.parent
    with progress() as bar:
        results = score_run(loaded, bench, req, rt, ScoreProgress(bar), cache_dir=run_dir / "fits")
    if not rt.is_main:
        return  # under torchrun every process scored a shard; rank 0 holds them all and writes
    folder = out or run_dir / "scores"
    paths = write_scores(results, folder)
    table = Table(title=f"{bench.name}: mean over {len(bench.ood_tests) + len(extra)} OOD sets", title_justify="left")
    for col in ("detector", "AUROC", "AUPR-in", "AUPR-out", "FPR95", "ID acc", "file"):
        table.add_column(col, justify="right" if col not in ("detector", "file") else "left")
    for name, ss in results.items():
        r = evaluate(ss.id_score.numpy(), {k: v.numpy() for k, v in ss.ood_score.items()},
                     id_labels=ss.id_label.numpy(), id_preds=ss.id_pred.numpy(), class_counts=ss.class_counts)
        m = r["ood"]["mean"]
        table.add_row(name, f"{100 * m['auroc']:.2f}", f"{100 * m['aupr_in']:.2f}", f"{100 * m['aupr_out']:.2f}",
                      f"{100 * m['fpr95']:.2f}", f"{100 * r['id']['acc']:.2f}", str(paths[name]))
    console.print(table)
    console.print(f"next: imood eval {folder}   or   imood report {run_dir}")
