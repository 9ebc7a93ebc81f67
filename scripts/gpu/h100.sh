#!/usr/bin/env bash
# One device call: mlc's PTX kernels through mlc-gpu (correctness + timing), then the torch
# baselines. Expects, under $1 (default .gpu): mlc-gpu (release build), ptx/, bench_torch.py.
# Logs go to $OUT when set. See docs/gpu-notes.md.
set -uo pipefail
D="${1:-.gpu}"
O="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv 2>&1 | tee "$O/smi.txt"
timeout 300 "$D/mlc-gpu" "$D/ptx" --arch sm_90,sm_90a 2>&1 | tee "$O/mlc-gpu.log"
echo "mlc-gpu exit status: ${PIPESTATUS[0]}" | tee -a "$O/mlc-gpu.log"
PYTHONUNBUFFERED=1 python3 "$D/bench_torch.py" 2>&1 | tee "$O/torch.log"
