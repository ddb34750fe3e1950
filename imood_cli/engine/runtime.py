"""Where the work runs: device choice, bf16 autocast, and the torchrun process group."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imood_cli.errors import ImoodError
from imood_cli.fs.safe import human_size, machine_memory


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp: bool = False
    channels_last: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    spec = (spec or "auto").strip()
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec.replace(",", "").isdigit():  # the reference's --gpu 0 / --gpu 0,1
        ids = [int(s) for s in spec.split(",")]
        spec = f"cuda:{ids[local_rank % len(ids)]}"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ImoodError(f"unknown device {spec!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ImoodError(f"device {spec} asked for, but this machine has no CUDA GPU (use --device cpu)")
    return device


def setup(device: str = "auto", amp: str = "auto", channels_last: str = "auto") -> Runtime:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    on_cuda = dev.type == "cuda"
    if on_cuda:
        # Fixed shapes every step: let cuDNN pick the fastest convolution once; TF32 for fp32 matmuls.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    use_amp = {"auto": on_cuda, "bf16": True, "off": False}[amp]
    use_cl = {"auto": on_cuda, "on": True, "off": False}[channels_last]
    return Runtime(dev, rank, world, local_rank, use_amp, use_cl)


# Below this many multiply-accumulates per training step, OpenMP's barriers cost more than a second
# thread gains on the CPU (bench/bench_threads.py measures the crossover).
ONE_THREAD_BELOW = 2e9


def choose_threads(requested: int, macs_per_step: float, device: torch.device) -> int:
    """CPU threads for torch: `requested` if > 0, else one thread for tiny models (the default thread count
    made them several times slower and erratic on small shared machines), else every core."""
    if device.type != "cpu":
        return torch.get_num_threads()
    if requested > 0:
        return requested
    return 1 if macs_per_step < ONE_THREAD_BELOW else (os.cpu_count() or 1)


def set_threads(n: int) -> None:
    if n != torch.get_num_threads():
        torch.set_num_threads(n)


def available_memory(device: torch.device) -> int:
    """Bytes a new allocation can take on `device` now: the GPU's free memory, or the host's MemAvailable
    (its physical memory where the platform does not say; 0 when nothing is known)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return machine_memory()


# Bytes per pixel of one training row before any activation: the uint8 image, its float32 copy, and the
# augmentation's and normalisation's float32 intermediates.
STEP_BYTES_PER_PIXEL = 1 + 4 * 3


def check_step_memory(id_rows: int, ood_rows: int, pixels: int, steps: int, device: torch.device,
                      activation_bytes: int = 0, what: str = "a training step") -> None:
    """Refuse a step that cannot fit in the memory available, before anything is allocated: the kernel's OOM
    killer would otherwise end the process without a word. The estimate is a lower bound (inputs, the aux
    index order, and `activation_bytes` per row: the layer outputs autograd must keep at the least), so a
    step it lets through may still not fit, but one it refuses never would."""
    need = (id_rows + ood_rows) * (pixels * STEP_BYTES_PER_PIXEL + activation_bytes) + steps * ood_rows * 8
    have = available_memory(device)
    if have and need > 0.8 * have:
        raise ImoodError(f"{what} of {id_rows:,} ID + {ood_rows:,} auxiliary OOD images needs at least "
                         f"{human_size(need)} for its inputs and activations, more than the {human_size(have)} "
                         f"available on {device}: lower --batch-size (or --ood-batch-size)")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
