"""torchrun DDP on the CPU with the gloo backend and two processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from imood_cli.data.base import ImageSet
from imood_cli.data.pipeline.batches import InMemoryEpoch
from imood_cli.engine.runs.checkpoint import load_tensors


def test_sharding_is_a_disjoint_split_of_one_permutation():
    n = 103
    train = ImageSet("t", torch.arange(n) % 5, torch.zeros(n, 1, 2, 2, dtype=torch.uint8))
    pixels = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    aux = ImageSet("a", -torch.ones(40, dtype=torch.long), pixels)
    one = InMemoryEpoch(train, aux, 10, 4, seed=3, epoch=2, rank=0, world_size=1)
    ranks = [InMemoryEpoch(train, aux, 5, 2, seed=3, epoch=2, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == n // 10
    seen = []
    for step in range(len(ranks[0])):
        parts = [r.order[(step * 2 + r.rank) * 5:(step * 2 + r.rank + 1) * 5] for r in ranks]
        assert not set(parts[0].tolist()) & set(parts[1].tolist())
        seen += parts[0].tolist() + parts[1].tolist()
        # the two ranks together see what one process with twice the batch sees
        assert sorted(parts[0].tolist() + parts[1].tolist()) == sorted(one.order[step * 10:(step + 1) * 10].tolist())
    assert len(set(seen)) == len(seen)
    oods = [r.batch(0).ood.flatten(1)[:, 0].tolist() for r in ranks]
    assert not set(oods[0]) & set(oods[1])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_training(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "imood_cli", "train",
           "--ds", "digits", "--epochs", "2", "--srp", str(tmp_path), "--name", "ddp", "--device", "cpu",
           "--log-every", "1", "--batch-size", "32"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ddp"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = 296 // (32 * 2)
    # only rank 0 writes: one record per step and one per epoch, never two
    assert [r["step"] for r in records if r["kind"] == "log"] == list(range(1, 2 * steps_per_epoch + 1))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    tensors, meta = load_tensors(run / "model.safetensors")
    assert meta["epochs"] == 2 and all(torch.isfinite(t.float()).all() for t in tensors.values())
    index = json.loads((run / "checkpoint" / "latest.json").read_text())["checkpoints"]
    assert [e["epoch"] for e in index] == [1, 2]


def test_reference_style_ddp_flag_and_sharded_scoring(tmp_path):
    """`imood train --ddp` starts the processes itself; `torchrun ... score` shards and gathers."""
    imood = Path(sys.executable).parent / "imood"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(imood), "train", "--ddp", "--nproc", "2", "--dist_url", f"tcp://127.0.0.1:{_free_port()}",
           "--ds", "digits", "--epochs", "1", "--srp", str(tmp_path), "--name", "d", "--device", "cpu",
           "--batch-size", "32"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "epoch" and records[-1]["step"] == 296 // 64  # two processes × 32 per step
    run = tmp_path / "d"
    single = subprocess.run([str(imood), "score", str(run), "-m", "msp,maha", "--device", "cpu", "--out",
                             str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = Path(sys.executable).parent / "torchrun"
    multi = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m",
                            "imood_cli", "score", str(run), "-m", "msp,maha", "--device", "cpu", "--out",
                            str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=240)
    assert multi.returncode == 0, multi.stderr[-3000:]
    for m in ("msp", "maha"):
        a = load_tensors(tmp_path / "one" / f"{m}.safetensors")[0]
        b = load_tensors(tmp_path / "two" / f"{m}.safetensors")[0]
        assert a.keys() == b.keys()
        for k in a:  # every image scored once, in order, whichever process scored it
            assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-5, atol=1e-5), k
