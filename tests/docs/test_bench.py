"""The benchmark scripts run (CPU-sized) and print their tables; their numbers are not checked here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script,args,title", [
    ("bench_metrics.py", ["--sizes", "2e4", "--repeat", "1"], "metric computation"),
    ("bench_score.py", ["--tiny"], "scoring throughput"),
    ("bench_import_score.py", ["--ci"], "scoring an imported timm resnet18"),
    ("bench_train.py", ["--tiny"], "training throughput"),
    ("bench_validation.py", ["--tiny"], "validation while training"),
    ("bench_cli.py", ["--quick"], "command start-up"),
    ("bench_ops.py", ["--model", "imood_resnet_micro"], "dispatched ops per training step"),
    ("bench_threads.py", ["--quick"], "training step on the CPU"),
])
def test_bench_script_runs_and_writes_json(tmp_path, script, args, title):
    out = tmp_path / "r.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args, "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert title in proc.stdout
    data = json.loads(out.read_text())
    assert data["machine"]["torch"] and data["benchmark"] in script
