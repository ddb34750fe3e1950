"""Start-up of the command line: each command's wall time against `python -c "import typer, rich"`, measured
side by side in one run, and whether it imported torch, timm or matplotlib.

Rounds are interleaved (each round runs the baseline and every command once) and each takes its best
round, so a busy moment of a shared machine slows all of them alike. Python's bytecode caches are on, as
after a normal install: a first untimed run of each command writes imood's, if missing (with
PYTHONDONTWRITEBYTECODE set, every imood module would be compiled from source at each start while typer
and rich load theirs from the caches pip wrote).

    python bench/bench_cli.py            # 11 rounds
    python bench/bench_cli.py --quick    # 1 round (CI)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import print_table, write_json
from safetensors.numpy import save_file

HEAVY = ("torch", "timm", "matplotlib")


def wall(cmd: list[str], env: dict, cwd: str) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t


def heavy_imports(args: list[str], env: dict, cwd: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "imood_cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)
    loaded = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    return [m for m in HEAVY if m in loaded]


def score_file(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    path = folder / "msp.safetensors"
    save_file({"id.score": rng.random(2000).astype(np.float32), "ood.noise.score": rng.random(2000).astype(np.float32)},
              str(path), metadata={"imood": '{"metric": "msp", "score_direction": "higher_is_ood"}'})
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=11, help="rounds")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    repeat = 1 if args.quick else args.repeat
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as tmp:
        scores = score_file(Path(tmp))
        commands = {
            "--help": ["--help"], "--version": ["--version"], "train --help": ["train", "--help"],
            "score --help": ["score", "--help"], "plugins list": ["plugins", "list"],
            "data list": ["data", "list", "--drp", tmp], "eval FILE": ["eval", str(scores), "--no-save"],
        }
        # numpy alone: the floor of any command that reads a score file
        runs = {"baseline": [sys.executable, "-c", "import typer, rich"],
                "numpy": [sys.executable, "-c", "import typer, rich, numpy"]}
        runs.update({label: [sys.executable, "-m", "imood_cli", *argv] for label, argv in commands.items()})
        for cmd in runs.values():
            wall(cmd, env, tmp)  # untimed: writes missing bytecode caches
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(repeat):
            for label, cmd in runs.items():
                best[label] = min(best[label], wall(cmd, env, tmp))
        base = best["baseline"]
        rows = [["python -c 'import typer, rich'", f"{base:.3f}", "1.00x", "-"],
                ["python -c 'import typer, rich, numpy'", f"{best['numpy']:.3f}", f"{best['numpy'] / base:.2f}x", "-"]]
        results = {"baseline": base, "typer, rich and numpy": best["numpy"]}
        for label, argv in commands.items():
            t = best[label]
            heavy = heavy_imports(argv, env, tmp)
            results[label] = {"seconds": t, "ratio": t / base, "heavy_imports": heavy}
            rows.append([f"imood {label}", f"{t:.3f}", f"{t / base:.2f}x", ", ".join(heavy) or "none"])
    print_table(f"command start-up (best of {repeat} interleaved rounds; ratio to the typer + rich import)",
                ["command", "seconds", "ratio", "imports torch/timm/matplotlib"], rows)
    write_json(args.json, {"benchmark": "cli", "repeat": repeat, "results": results})


if __name__ == "__main__":
    main()
