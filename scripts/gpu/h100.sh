#!/usr/bin/env bash
# One device call: mlc's PTX kernels through mlc-gpu (correctness + timing), then the torch
# baselines. Expects, under $1 (default .gpu): mlc-gpu (release build), ptx/, bench_torch.py.
# Logs go to $OUT when set. See docs/gpu-notes.md.
set -uo pipefail
D="${1:-.gpu}"
O="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv 2>&1 | tee "$O/smi.txt"
# Portable kernels first, then the sm_90a wgmma ones in a second process, so that a fault in
# the newer kernels cannot cost the other measurements.
timeout 240 "$D/mlc-gpu" "$D/ptx" --arch sm_90 2>&1 | tee "$O/mlc-gpu.log"
echo "mlc-gpu exit status: ${PIPESTATUS[0]}" | tee -a "$O/mlc-gpu.log"
timeout 240 "$D/mlc-gpu" "$D/ptx" --arch sm_90a --only wgmma 2>&1 | tee "$O/mlc-gpu-sm90a.log"
echo "mlc-gpu (sm_90a) exit status: ${PIPESTATUS[0]}" | tee -a "$O/mlc-gpu-sm90a.log"
PYTHONUNBUFFERED=1 python3 "$D/bench_torch.py" 2>&1 | tee "$O/torch.log"
