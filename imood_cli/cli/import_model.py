"""`imood import-model`: a timm or torchvision classifier (with its weights) as an imood run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from imood_cli.cli.common import console, warn
from imood_cli.errors import ImoodError


def import_model(
    timm_name: Optional[str] = typer.Option(None, "--timm", metavar="NAME", help="A timm model name "
                                            "(resnet18, convnext_tiny, vit_small_patch16_224, ...)."),
    torchvision_name: Optional[str] = typer.Option(None, "--torchvision", metavar="NAME", help="A torchvision "
                                                   "classifier name (resnet18, mobilenet_v3_small, vit_b_16, ...)."),
    weights: Optional[Path] = typer.Option(None, "--weights", metavar="FILE", help="The model's weights: "
                                           ".safetensors, or a .pth/.pt state dict (read with weights_only=True; "
                                           "under 'state_dict' / 'model' is fine; 'module.', 'model.', '_orig_mod.' "
                                           "prefixes are removed). Its classifier must have one output per class."),
    pretrained: bool = typer.Option(False, "--pretrained", help="The library's pretrained weights, from the local "
                                    "cache only (Hugging Face hub cache for timm, torch hub for torchvision); "
                                    "their classes must be the benchmark's (ImageNet's 1000)."),
    dataset: str = typer.Option(..., "--dataset", "--ds", metavar="NAME", help="The benchmark the model "
                                "classifies: a built-in one or a folder benchmark (sets the classes and their "
                                "training counts, the prior of every ada_ score)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", "--drp", metavar="DIR", help="Dataset folder "
                                             "($DATA). [default: data]"),
    imbalance_ratio: Optional[float] = typer.Option(None, "--imbalance-ratio", "--imbalance_ratio", metavar="RHO",
                                                    help="ρ of the long-tailed split whose counts make the prior. "
                                                         "[default: the benchmark's]"),
    class_counts: Optional[str] = typer.Option(None, "--class-counts", metavar="N,N,...", help="Training images per "
                                               "class, instead of reading the benchmark's."),
    image_size: Optional[int] = typer.Option(None, "--image-size", metavar="N", help="The input size the model sees; "
                                             "images are resized to it when scoring (vision transformers are built "
                                             "for it). [default: the benchmark's image size]"),
    in_chans: int = typer.Option(3, "--in-chans", metavar="C", help="Input channels the model takes, 1 or 3 (grey "
                                 "images are repeated to 3, colour ones turned to luma for 1)."),
    mean: Optional[str] = typer.Option(None, "--mean", metavar="M,M,M", help="Normalization mean the model was "
                                       "trained with. [default: the model's recipe: timm's pretrained_cfg, "
                                       "torchvision's weights transforms]"),
    std: Optional[str] = typer.Option(None, "--std", metavar="S,S,S", help="Normalization std (see --mean); "
                                      "--mean 0 --std 1 for none."),
    cifar_stem: bool = typer.Option(False, "--cifar-stem", help="The model was trained with imood's CIFAR stem "
                                    "(3×3 stride-1 conv1, no max-pool; ResNets)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help="Run folder to create. [default: "
                                       "runs/<NAME>-<dataset>]"),
    force: bool = typer.Option(False, "--force", help="Replace the imood run in an existing --out folder (imood's "
                               "own files only; a folder imood did not make is refused)."),
) -> None:
    """Import a classifier imood did not train, with its weights, as a run folder (then: imood score OUT -m all).

    --timm NAME or --torchvision NAME names the architecture; --weights FILE or --pretrained gives its weights.
    Weights files are read with torch.load(weights_only=True) or as safetensors: a pickle that would run code is
    refused. The model file records the model's preprocessing (mean, std, input size), used when scoring.
    """
    if (timm_name is None) == (torchvision_name is None):
        raise ImoodError("name the model with --timm NAME or --torchvision NAME (one of them)")
    if weights is not None and pretrained:
        raise ImoodError("give --weights FILE or --pretrained, not both")
    from rich.table import Table

    from imood_cli.engine.imports import import_model as run_import
    from imood_cli.engine.imports import parse_class_counts
    from imood_cli.models.preprocess import parse_values

    source, name = ("timm", timm_name) if timm_name is not None else ("torchvision", torchvision_name)
    target = out if out is not None else Path("runs") / f"{name}-{dataset}"
    r = run_import(source, name, target, dataset, weights=weights, pretrained=pretrained, data_root=data_root,
                   imbalance_ratio=imbalance_ratio, class_counts=parse_class_counts(class_counts),
                   image_size=image_size, in_chans=in_chans, mean=parse_values(mean, "--mean"),
                   std=parse_values(std, "--std"), cifar_stem=cifar_stem, force=force)
    a, p = r.arch, r.preprocess
    table = Table(title=f"imported {source} {name}", title_justify="left", show_header=False)
    split = (f"backbone + classifier ({r.classifier} → classifier)" if a.split == "classifier"
             else "kept whole (its head is not one linear layer)")
    table.add_row("family", f"{r.family}: {split}")
    table.add_row("weights", r.weights + (f" (sha256 {r.source_sha256})" if r.source_sha256 else ""))
    if r.container or r.stripped_prefix:
        where = f"under {r.container!r}" if r.container else "the file itself"
        table.add_row("state dict", where + (f", prefix {r.stripped_prefix!r} removed" if r.stripped_prefix else ""))
    table.add_row("classes", f"{a.num_classes} ({', '.join(map(str, r.class_counts))} training images)")
    table.add_row("input", f"{p.in_chans} channel(s), {p.image_size}×{p.image_size} px, mean "
                           f"{', '.join(f'{v:g}' for v in p.mean)}, std {', '.join(f'{v:g}' for v in p.std)} "
                           f"({p.source})")
    table.add_row("stages", ", ".join(s for s in ("feature_map", "features", "classifier")
                                      if s in r.capabilities.provides) or "logits only")
    table.add_row("model", str(r.model_path))
    console.print(table)
    for note in r.notes:
        warn(note)
    if r.unavailable:
        warn(f"{name}: {r.capabilities.why({'feature_map', 'features', 'classifier'})}; unavailable: "
             f"{', '.join(r.unavailable)} (and their ada_ forms); every other detector scores")
    console.print(f"next: imood score {r.out} -m all")
