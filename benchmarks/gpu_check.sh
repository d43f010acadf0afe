#!/usr/bin/env bash
# One short check of a lent GPU machine (under 8 minutes): training step time and images/s of
# R50-conv5-GeM at 480x640 in fp32 and bf16, descriptor throughput (R50-GeM, EfficientNet-Lite0),
# the localizer's per-frame rate, exact search at 1M x 1024 (faiss-gpu if this faiss has it).
# Run from the repo root after `make setup` (no internet needed); JSON in $OUT or bench_results/.
#   benchmarks/gpu_check.sh                 # on the GPU box
#   benchmarks/gpu_check.sh --cpu --quick   # a smoke test anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONPATH="$PWD/vgssl_core${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 470 "$PY" benchmarks/gpu_check.py "$@"
