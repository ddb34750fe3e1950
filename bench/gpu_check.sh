#!/usr/bin/env bash
# The device check, in one call: the three benchmarks, then the test suite (CUDA tests included)
# on the GPU machine's own torch. Results go to $OUT (the device tool's folder) or bench/results.
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision, timm, typer; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'typer', typer.__version__)" | tee -a "$OUT/gpu.txt"
timeout ${T_METRICS:-40} python3 bench/bench_metrics.py --sizes 1e6,1e7 --repeat 1 --json "$OUT/metrics.json"
timeout ${T_SCORE:-80} python3 bench/bench_score.py --compile --json "$OUT/score.json"
timeout ${T_TRAIN:-300} python3 bench/bench_train.py --compile --epochs ${EPOCHS:-180} --json "$OUT/train.json"
timeout ${T_TEST:-120} python3 -m pytest -q -p no:cacheprovider --maxfail=5 --ignore=tests/test_kill_resume.py tests 2>&1 | tail -25 | tee "$OUT/tests.txt"
echo "done"
