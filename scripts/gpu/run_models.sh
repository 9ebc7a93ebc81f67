#!/usr/bin/env bash
# One device call for compiled models: every artifact D/art/<model>.mlca runs on the reference
# inputs in D/ref/<model>/ and is compared with ONNX Runtime's CPU outputs (range-relative
# error), then timed (CUDA events, median); then the PyTorch baselines. D defaults to .gpu;
# logs go to $OUT when set; SKIP_TORCH=1 skips the baselines. Staged by scripts/gpu/stage_models.sh.
set -uo pipefail
D="${1:-.gpu}"
O="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv 2>&1 | tee "$O/smi.txt"
summary=()
for art in "$D"/art/*.mlca; do
    m=$(basename "$art" .mlca)
    r="$D/ref/$m"
    args=$(python3 - "$r" <<'PY'
import json, sys
r = sys.argv[1]
meta = json.load(open(f"{r}/meta.json"))
a = []
for i, n in enumerate(meta["inputs"]):
    a += ["--input", f"{n}={r}/inputs/{i}_{n.replace('/', '_')}.npy"]
for i, n in enumerate(meta["outputs"]):
    a += ["--expect", f"{n}={r}/outputs/{i}_{n.replace('/', '_')}.npy"]
print(" ".join(a))
PY
)
    echo "== $m" | tee -a "$O/models.log"
    timeout 60 "$D/mlc-gpu" run "$art" $args 2>&1 | tee -a "$O/models.log"
    inputs=$(echo "$args" | sed 's/--expect [^ ]*//g')
    line=$(timeout 60 "$D/mlc-gpu" bench "$art" $inputs --warmup 10 --reps 100 2>&1 | tee -a "$O/models.log" | tail -1)
    summary+=("$m: $line")
done
[ -n "${SKIP_TORCH:-}" ] || PYTHONUNBUFFERED=1 timeout 200 python3 "$D/bench_models_torch.py" "$D"/onnx/*.onnx 2>&1 | tee "$O/torch.log"
echo "== summary"
grep -E "^==|range-relative|FAIL|error" "$O/models.log"
printf '%s\n' "${summary[@]}"
