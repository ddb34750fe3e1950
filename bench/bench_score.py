"""Scoring throughput: images/s of `engine.score` (the path `imood score` runs) for one forward pass serving
every single-pass detector, for -m all, and for each expensive detector alone (ODIN's extra passes, fits of
ViM and KNN), on synthetic CIFAR10-LT-shaped data.

    python bench/bench_score.py                      # ResNet18, 10,000 test images, on the GPU if there is one
    python bench/bench_score.py --tiny               # a CPU-sized run (CI)
"""

from __future__ import annotations

import argparse
import time

import torch
from common import print_table, sync, synthetic_cifar_lt, write_json

from imood_cli.cli.score import expand_all
from imood_cli.data.base import ImageSet
from imood_cli.engine.runtime import setup
from imood_cli.engine.scoring.loading import LoadedModel
from imood_cli.engine.scoring.request import ScoreRequest
from imood_cli.engine.scoring.score import score
from imood_cli.models.imood_model import Architecture, ImOODModel
from imood_cli.registry import registry

ONE_PASS = "msp,energy,maxlogit,entropy,gen,gradnorm,ada_msp,ada_energy,ada_maxlogit,react,ash,scale,dice"
EXPENSIVE = ("odin", "vim", "knn", "maha")


def bench_once(loaded, bench, specs, rt, batch) -> float:
    """Seconds to score the benchmark's test and OOD sets with these detectors (fits included)."""
    req = ScoreRequest(specs, batch_size=batch)
    sync(rt.device)
    t = time.perf_counter()
    score(loaded, bench, req, rt)
    sync(rt.device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--images", type=int, default=10000, help="ID test images (the OOD set has as many)")
    ap.add_argument("--train", type=int, default=12406, help="training images (what fits run over)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.tiny:
        args.images, args.train, args.batch, args.model = 128, 256, 128, "imood_resnet_micro"
    rt = setup(args.device)
    bench = synthetic_cifar_lt(num_aux=0)
    g = torch.Generator().manual_seed(1)
    test = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    bench.test = ImageSet("test", torch.arange(args.images) % 10, test)
    bench.ood_tests = {"noise": ImageSet("noise", torch.full((args.images,), -1), test.flip(0).clone())}
    keep = torch.randperm(len(bench.train), generator=g)[:args.train]
    bench.train = bench.train.subset(keep)
    model = ImOODModel(Architecture(args.model, 10, 0, 3, True)).to(rt.device).eval()
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loaded = LoadedModel(model, {"class_counts": bench.class_counts, "metric": "oe"}, None, "0" * 64)
    scored = 2 * args.images
    known = set(registry().names("method"))
    rows, results = [], {}
    every = expand_all(["all"], extra_outputs=0, trained_with="oe")  # what `imood score -m all` scores
    runs = [("msp alone", ["msp"]), ("one pass: " + ONE_PASS.replace(",", " "), ONE_PASS.split(","))]
    if not args.tiny:  # the CI check runs the script, it does not measure -m all
        runs.append((f"-m all ({len(every)} detectors)", every))
    runs += [(f"{name} alone (fit included)" if registry().score(name).needs_fit else f"{name} alone", [name])
             for name in (EXPENSIVE[:2] if args.tiny else EXPENSIVE) if name in known]
    bench_once(loaded, bench, ["msp"], rt, args.batch)  # warm-up
    base = None
    for label, specs in runs:
        seconds = bench_once(loaded, bench, specs, rt, args.batch)
        base = base or seconds
        results[label] = scored / seconds
        rows.append([label, scored / seconds, f"{seconds / base:.2f}x"])
    device = f"CUDA {torch.cuda.get_device_name(0)}" if rt.device.type == "cuda" else "CPU"
    print_table(f"scoring throughput on {device} ({args.model}, batch {args.batch}, {scored:,} test images, "
                f"{args.train:,} training images for fits)", ["detectors", "images/s", "time vs msp"], rows)
    write_json(args.json, {"benchmark": "score", "args": vars(args), "images_per_s": results})


if __name__ == "__main__":
    main()
