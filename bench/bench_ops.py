"""Dispatched operations per training step, by phase (augmentation, forward + losses, backward, optimizer),
for the default eager step: at CIFAR sizes a step is bound by kernel launches, so this count is what a GPU
pays per step before any arithmetic. Counted with a TorchDispatchMode on any device (CPU included).

    python bench/bench_ops.py                  # ResNet18 CIFAR stem, the full ImOOD loss (ada_bin_disc + pascl)
    python bench/bench_ops.py --model imood_resnet_micro
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from common import print_table, synthetic_cifar_lt, write_json
from torch.utils._python_dispatch import TorchDispatchMode

from imood_cli.data.pipeline.augment import draw
from imood_cli.engine.runtime import setup
from imood_cli.engine.training.config import resolve_config
from imood_cli.engine.training.trainer import Trainer


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8, help="the count does not depend on it")
    ap.add_argument("--top", type=int, default=5, help="most frequent ops listed per phase")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    bench = synthetic_cifar_lt(num_aux=4 * args.batch)
    cfg = resolve_config(dict(dataset="cifar10", model=args.model, batch_size=args.batch, ood_metric="ada_bin_disc",
                              aux_ood_loss="pascl", save_root="/tmp/imood-bench-ops", name="ops", device=args.device))
    trainer = Trainer(cfg, setup(cfg.device, cfg.amp, cfg.channels_last), bench=bench)
    epoch, gen = trainer._epoch(0), trainer._generator(0)
    trainer.train_step(epoch.batch(0), gen)  # warm-up: lazy initialisations are not part of a step
    b = epoch.batch(1)
    images = torch.cat([b.view1, b.view2, b.ood])
    counts = {}
    with CountOps() as c:
        x = trainer._apply(images, trainer.spec, draw(trainer.spec, images.shape[0], images.device, gen))
    counts["augmentation"] = c
    with CountOps() as c:
        parts = trainer.loss_on(x, b.labels, b.ood.shape[0])
    counts["forward + losses"] = c
    trainer.opt.zero_grad(set_to_none=True)
    with CountOps() as c:
        parts[0].backward()
    counts["backward"] = c
    with CountOps() as c:
        trainer.opt.step()
        trainer.sched.step()
    counts["optimizer"] = c
    rows = []
    for phase, c in counts.items():
        frequent = ", ".join(f"{k.removeprefix('aten.')} {n}" for k, n in c.ops.most_common(args.top))
        rows.append([phase, sum(c.ops.values()), frequent])
    total = sum(r[1] for r in rows)
    rows.append(["total", total, ""])
    print_table(f"dispatched ops per training step ({args.model}, {trainer.rt.device}, eager)",
                ["phase", "ops", "most frequent"], rows)
    write_json(args.json, {"benchmark": "ops", "args": vars(args), "ops": {r[0]: r[1] for r in rows}})


if __name__ == "__main__":
    main()
