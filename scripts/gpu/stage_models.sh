#!/usr/bin/env bash
# Stages a device call of scripts/gpu/run_models.sh into DEST (default /work/main/.gpu, the
# folder the device tool carries): the release mlc-gpu, one artifact per model compiled with
# `mlc compile --target sm_90` on the reference input shapes, the reference inputs/outputs,
# and the scripts. usage: stage_models.sh DEST MODEL...  (models by stem; MLC_MODELS_DIR,
# MLC_REFS_DIR as for the tests).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DEST="$1"; shift
MODELS="${MLC_MODELS_DIR:-$ROOT/models-dev}"
REFS="${MLC_REFS_DIR:-$MODELS/ref}"
MLC="${MLC_BIN:-$ROOT/target/debug/mlc}"
mkdir -p "$DEST/art" "$DEST/ref" "$DEST/onnx"
cp "$ROOT/target/release/mlc-gpu" "$ROOT/scripts/gpu/run_models.sh" "$ROOT/scripts/gpu/bench_models_torch.py" "$DEST/"
for m in "$@"; do
    "$MLC" compile "$MODELS/$m.onnx" --target sm_90 -o "$DEST/art/$m.mlca" $(python3 "$ROOT/scripts/gpu/ref_shapes.py" "$REFS/$m")
    rm -rf "$DEST/ref/$m"; cp -r "$REFS/$m" "$DEST/ref/$m"
done
du -sh "$DEST"
