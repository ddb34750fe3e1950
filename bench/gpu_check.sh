#!/usr/bin/env bash
# The device check, in one call (bench/RESULTS.md says how its output was used): the GPU, the training
# throughput against the reference-style loop (default and compiled) with the 180-epoch recipe's wall time,
# a torch.profiler trace of 20 steady-state default steps, dispatched ops per step on the GPU, scoring
# throughput per detector, an imported timm model scored by imood against a plain torch loop, the metrics,
# then the CUDA tests and the contract tests on the GPU machine's own torch. Results go to $OUT (the device
# tool's folder) or bench/results/gpu.
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision, timm, typer; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'typer', typer.__version__)" | tee -a "$OUT/gpu.txt"
timeout ${T_TRAIN:-300} python3 bench/bench_train.py --compile --epochs ${EPOCHS:-180} --profile "$OUT/profile" --json "$OUT/train.json"
timeout ${T_OPS:-60} python3 bench/bench_ops.py --device cuda --json "$OUT/ops.json"
timeout ${T_SCORE:-120} python3 bench/bench_score.py --json "$OUT/score.json"
timeout ${T_IMPORT:-120} python3 bench/bench_import_score.py --json "$OUT/import_score.json"
timeout ${T_METRICS:-60} python3 bench/bench_metrics.py --sizes 1e6,1e7 --repeat 1 --json "$OUT/metrics.json"
timeout ${T_TEST:-180} python3 -m pytest -q -p no:cacheprovider --maxfail=5 tests/training/test_cuda.py tests/core/test_contract.py tests/training/test_train.py 2>&1 | tail -25 | tee "$OUT/tests.txt"
echo "done"
