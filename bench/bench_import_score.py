"""Scoring an imported model: imood's engine against a plain torch loop computing the same detectors, side by side.

An imported timm ResNet18 (random weights, 10 classes, ImageNet normalization recorded as its recipe) scores
synthetic CIFAR10-LT-shaped data with msp, energy, react and maha, fits included (react's clipping threshold
and maha's class means and covariance come from the training set), two ways:

- imood: `engine.score` on the imported model (the path of `imood score`): uint8 batches normalized by the
  model's recorded preprocessing, one forward pass through the family adapter serving every detector;
- plain: a hand-written loop over the same uint8 tensors and the same timm module: normalize, forward_features,
  forward_head(pre_logits=True), the classifier, and the four formulas; the same fits.

Both run with the same device settings (bf16 autocast and channels_last on CUDA, fp32 on the CPU). The rounds
alternate (plain, imood, plain, imood, ...) after a warm-up of each; the table shows the median of each side.

    python bench/bench_import_score.py            # 10,000 + 10,000 test images on CUDA, 2,000 + 2,000 on the CPU
    python bench/bench_import_score.py --ci       # a CPU-sized check (CI)
    python bench/bench_import_score.py --threads 1   # on a shared CPU, where a second OpenMP thread waits
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import print_table, sync, synthetic_cifar_lt, write_json
from safetensors.torch import save_file

from imood_cli.data.base import ImageSet
from imood_cli.engine.runtime import setup
from imood_cli.engine.scoring.loading import LoadedModel
from imood_cli.engine.scoring.request import ScoreRequest
from imood_cli.engine.scoring.score import score
from imood_cli.models.importer import import_classifier

DETECTORS = ["msp", "energy", "react", "maha"]
REACT_P = 90.0
RIDGE = 1e-4


def imood_round(loaded, bench, rt, batch) -> float:
    sync(rt.device)
    t = time.perf_counter()
    sets = score(loaded, bench, ScoreRequest(DETECTORS, batch_size=batch, threads=torch.get_num_threads()), rt)
    sync(rt.device)
    assert set(sets) == set(DETECTORS)
    return time.perf_counter() - t


@torch.no_grad()
def plain_round(model, bench, rt, batch, mean, std) -> float:
    """The four detectors written out in torch, over the benchmark's uint8 tensors."""
    dev = rt.device
    m = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
    s = torch.tensor(std, device=dev).view(1, 3, 1, 1)
    fc = model.get_classifier()

    def batches(images):
        for i in range(0, len(images), batch):
            x = (images[i:i + batch].to(dev, non_blocking=True).float() / 255 - m) / s
            yield x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x

    def features(x):
        with rt.autocast():
            f = model.forward_head(model.forward_features(x), pre_logits=True)
        return f.float()

    sync(dev)
    t = time.perf_counter()
    train = torch.cat([features(x) for x in batches(bench.train.images)])
    labels = bench.train.labels.to(dev)
    flat = train.flatten()
    threshold = flat.kthvalue(max(1, round(REACT_P / 100 * flat.numel()))).values  # react's clipping value
    k = bench.num_classes
    f64 = train.double()
    means = torch.zeros(k, f64.shape[1], dtype=torch.float64, device=dev).index_add_(0, labels, f64)
    means /= torch.bincount(labels, minlength=k)[:, None].double()
    centred = f64 - means[labels]
    cov = centred.T @ centred / len(f64) + RIDGE * torch.eye(f64.shape[1], dtype=torch.float64, device=dev)
    whiten = torch.linalg.cholesky(torch.linalg.inv(cov))
    mw = means @ whiten
    out = []
    for images in (bench.test.images, *(o.images for o in bench.ood_tests.values())):
        for x in batches(images):
            f = features(x)
            with rt.autocast():
                z = fc(f).float()
                z_clip = fc(f.clamp(max=threshold)).float()
            out.append(torch.stack([-torch.softmax(z, 1).amax(1), -torch.logsumexp(z, 1),
                                    -torch.logsumexp(z_clip, 1),
                                    torch.cdist(f.double() @ whiten, mw).pow(2).amin(1).float()]))
    torch.cat(out, dim=1).cpu()
    sync(dev)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=None, help="ID test images (the OOD set has as many) "
                    "[default: 10,000 on CUDA, 2,000 on the CPU]")
    ap.add_argument("--train", type=int, default=None, help="training images for the fits, about (a long-tailed "
                    "subset) [default: 12,406 on CUDA, 2,000 on the CPU]")
    ap.add_argument("--batch", type=int, default=None, help="[default: 1,024 on CUDA, 256 on the CPU]")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per side")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for both sides [default: torch's]")
    ap.add_argument("--ci", action="store_true", help="a small CPU-sized run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rt = setup(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cuda = rt.device.type == "cuda"
    if args.ci:
        args.images, args.train, args.batch, args.rounds = 64, 128, 64, 1
        torch.set_num_threads(1)  # a check that it runs, on a shared machine
    args.images = args.images or (10000 if cuda else 2000)
    args.train = args.train or (12406 if cuda else 2000)
    args.batch = args.batch or (1024 if cuda else 256)

    bench = synthetic_cifar_lt(num_aux=0)
    g = torch.Generator().manual_seed(1)
    test = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    bench.test = ImageSet("test", torch.arange(args.images) % 10, test)
    bench.ood_tests = {"noise": ImageSet("noise", torch.full((args.images,), -1), test.flip(0).clone())}
    labels = bench.train.labels  # a long-tailed subset with every class (maha fits a mean per class)
    share = args.train / len(labels)
    keep = torch.cat([torch.nonzero(labels == k).flatten()[:max(2, round(int((labels == k).sum()) * share))]
                      for k in range(10)])
    bench.train = bench.train.subset(keep)
    bench.class_counts = torch.bincount(bench.train.labels, minlength=10).tolist()

    import tempfile
    from pathlib import Path

    import timm

    torch.manual_seed(0)
    source = timm.create_model("resnet18", num_classes=10).eval()
    with tempfile.TemporaryDirectory() as tmp:  # imported as `imood import-model --weights` does
        weights = Path(tmp) / "resnet18.safetensors"
        save_file(source.state_dict(), weights)
        imported = import_classifier("timm", "resnet18", 10, image_size=32, weights=weights)
    model = imported.model.to(rt.device).eval()
    source = source.to(rt.device).eval()
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
        source = source.to(memory_format=torch.channels_last)
    prep = imported.preprocess
    loaded = LoadedModel(model, {"class_counts": bench.class_counts, "metric": "msp",
                                 "preprocess": prep.to_dict()}, Path("bench"), "0" * 64)
    plain = lambda: plain_round(source, bench, rt, args.batch, prep.mean, prep.std)
    ours = lambda: imood_round(loaded, bench, rt, args.batch)
    plain(), ours()  # warm-up (cuDNN autotuning, allocator)
    times = {"plain": [], "imood": []}
    for _ in range(args.rounds):
        times["plain"].append(plain())
        times["imood"].append(ours())
    scored = 2 * args.images
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: scored / v for k, v in med.items()}
    ratio = ips["imood"] / ips["plain"]
    device = f"CUDA {torch.cuda.get_device_name(0)}" if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    rows = [["plain torch loop", ips["plain"], f"{med['plain']:.2f}", "1.00"],
            ["imood (engine.score)", ips["imood"], f"{med['imood']:.2f}", f"{ratio:.2f}"]]
    print_table(f"scoring an imported timm resnet18 on {device}: {', '.join(DETECTORS)} with fits "
                f"({scored:,} test images, {args.train:,} training images, batch {args.batch}, "
                f"median of {args.rounds})", ["loop", "images/s", "seconds", "vs plain"], rows)
    write_json(args.json, {"benchmark": "import_score", "args": vars(args), "images_per_s": ips,
                           "seconds": times, "ratio": ratio})


if __name__ == "__main__":
    main()
