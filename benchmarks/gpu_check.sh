#!/usr/bin/env bash
# One GPU check at the paper's scale (issue 17): explain benchmark of every method beside the paper's
# efficiency column, peak GPU memory, the metrics benchmark and the GPU-vs-CPU equality tests, as one
# table (benchmarks/results/gpu_check.md). Needs a CUDA build of torch in .venv, e.g.
#   make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# Without a CUDA device it says so and exits 0. Extra arguments go to benchmarks/gpu_check.py
# (e.g. --tiny --device cpu for a dry run). Hard limit: 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then PY=python3; fi
export WANDB_MODE=disabled
exec timeout --signal=INT --kill-after=10 "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py "$@"
