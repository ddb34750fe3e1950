"""Scoring throughput: images/s of `imood score`'s inference path (one forward pass, several detectors).

    python bench/bench_score.py                 # CUDA if present: resnet18 CIFAR stem, 100k images
    python bench/bench_score.py --tiny          # the CPU check CI runs
"""

from __future__ import annotations

import argparse

import torch
from common import print_table, sync, timed, write_json

from imood_cli.core.contract import ModelOutputs, ModelView
from imood_cli.core.prior import log_prior
from imood_cli.data.augment import AugmentSpec
from imood_cli.data.base import ImageSet
from imood_cli.engine.model import Architecture, ImOODModel
from imood_cli.engine.runtime import setup
from imood_cli.engine.score import infer
from imood_cli.registry import registry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--metrics", default="msp,energy,bin_disc,ada_msp,ada_energy,ada_bin_disc,gradnorm")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.tiny:
        args.images, args.batch, args.model = 512, 128, "imood_resnet_micro"
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    images = ImageSet("synthetic", torch.full((args.images,), -1),
                      torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8))
    metrics = [registry().detector(m) for m in args.metrics.split(",")]
    rows, results = [], {}
    variants = [("fp32", "off", "off", False), ("bf16 + channels_last", "auto", "auto", False)]
    if args.compile:
        variants.append(("bf16 + channels_last, compiled", "auto", "auto", True))
    for name, amp, cl, comp in variants:
        rt = setup(args.device, amp, cl)
        if name != "fp32" and rt.device.type != "cuda":
            continue  # bf16 and channels_last are CUDA defaults; on the CPU they equal fp32
        model = ImOODModel(Architecture(args.model, 10, 1, 3, True)).to(rt.device).eval()
        if rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        run_model = torch.compile(model) if comp else model
        run_model.arch = model.arch
        on_device = ImageSet("synthetic", images.labels, images.images.to(rt.device))
        lp = log_prior(counts).float().to(rt.device)
        keep: list[torch.Tensor] = []

        def each(out: ModelOutputs) -> None:
            keep.append(torch.stack([m.ood_score(ModelView.of(out), lp) for m in metrics]))

        def go():
            keep.clear()
            infer(run_model, on_device, rt, args.batch, AugmentSpec(), keep_features=True, each=each)

        go()  # warm-up (and compilation)
        seconds = min(timed(go, rt.device) for _ in range(3))
        sync(rt.device)
        results[name] = args.images / seconds
        rows.append([name, results[name], len(metrics)])
    device = "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    print_table(f"scoring throughput on {device} ({args.model}, batch {args.batch}, {len(metrics)} detectors per pass)",
                ["inference", "images/s", "detectors"], rows)
    write_json(args.json, {"benchmark": "score", "args": vars(args), "images_per_s": results})


if __name__ == "__main__":
    main()
