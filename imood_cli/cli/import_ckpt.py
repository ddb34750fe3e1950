"""`imood import-ckpt`: turn a reference-code checkpoint (.pth state dict) into an imood run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from imood_cli.cli.common import console, warn


def import_ckpt(
    file: Path = typer.Argument(..., metavar="FILE", show_default=False,
                                help="The reference code's checkpoint: a .pth state dict (plain or under 'model' / "
                                     "'state_dict'; DDP 'module.' keys are fine)."),
    dataset: str = typer.Option(..., "--dataset", "--ds", metavar="NAME", help="Benchmark it was trained on: "
                                "cifar10, cifar100, digits, ..., or a folder benchmark (sets K and the class "
                                "counts)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", "--drp", metavar="DIR", help="Dataset folder "
                                             "($DATA), read for the class counts of the long-tailed split. "
                                             "[default: data]"),
    imbalance_ratio: Optional[float] = typer.Option(None, "--imbalance-ratio", "--imbalance_ratio", metavar="RHO",
                                                    help="ρ it was trained with. [default: the benchmark's, 0.01 "
                                                         "for CIFAR]"),
    class_counts: Optional[str] = typer.Option(None, "--class-counts", metavar="N,N,...", help="Training images per "
                                               "class, comma-separated, instead of reading the dataset, e.g. "
                                               "5000,2997,1796,1077,645,387,232,139,83,50."),
    ood_metric: Optional[str] = typer.Option(None, "--ood-metric", "--ood_metric", metavar="NAME", help="The "
                                             "--ood_metric it was trained with (recorded in the metadata). [default: "
                                             "bin_disc if linear has K+1 outputs, else oe]"),
    logit_adjust: Optional[float] = typer.Option(None, "--logit-adjust", "--logit_adjust", metavar="TAU",
                                                 help="The τ it was trained with (recorded in the metadata). "
                                                      "[default: 1.0]"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help="Run folder to create. [default: "
                                       "runs/<file name without .pth>]"),
    force: bool = typer.Option(False, "--force", help="Replace the imood run in an existing --out folder (imood's "
                               "own files only; a folder imood did not make is refused)."),
) -> None:
    """Import a checkpoint of the reference ImOOD/PASCL code as an imood run folder (then: imood score OUT).

    The file is read with torch.load(weights_only=True): a pickle that would run code is refused.
    """
    from rich.table import Table

    from imood_cli.engine.imports import import_reference, parse_class_counts

    target = out if out is not None else Path("runs") / file.stem
    result = import_reference(file, target, dataset, data_root=data_root, imbalance_ratio=imbalance_ratio,
                              class_counts=parse_class_counts(class_counts), ood_metric=ood_metric,
                              logit_adjust=logit_adjust, force=force)
    a = result.arch
    table = Table(title=f"imported {file}", title_justify="left", show_header=False)
    table.add_row("architecture", f"{a.backbone} ({'CIFAR stem' if a.cifar_stem else 'ImageNet stem'}, "
                                  f"{a.in_chans} input channels)")
    extra = f" + {a.extra_outputs} extra output (bin_disc)" if a.extra_outputs else ""
    table.add_row("classes", f"{a.num_classes}{extra}")
    table.add_row("class counts", ", ".join(map(str, result.class_counts)))
    where = f"under {result.container!r}" if result.container else "the file itself"
    prefix = f", prefix {result.stripped_prefix!r} removed" if result.stripped_prefix else ""
    table.add_row("state dict", where + prefix)
    if result.epoch is not None:
        table.add_row("epoch", str(result.epoch))
    table.add_row("heads loaded", ", ".join(result.heads_loaded))
    table.add_row("sha256", result.source_sha256)
    table.add_row("model", str(result.model_path))
    console.print(table)
    if result.heads_missing:
        warn(f"no weights for {', '.join(result.heads_missing)} in {file}: kept freshly initialized (scoring uses only "
             "the backbone and classifier; continuing ImOOD training from this model would start these heads anew)")
    console.print(f"next: imood score {result.out}")
