#!/usr/bin/env bash
# The main job: build mlc, make the example model, and run `mlc inspect`, `mlc run` (compiled
# on the fly), `mlc compile --target x86_64` + `mlc inspect`/`mlc run` of the artifact, and `mlc bench` on it.
# Installs what is missing first (Debian packages, rustfmt/clippy, the .venv with onnx).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_system_packages
ensure_rust
ensure_venv

step "building mlc"
cargo build -p mlc-cli
MLC="$ROOT/target/debug/mlc"
OUT="$ROOT/examples/build"

step "making the example model (examples/make_tiny_cnn.py)"
"$VENV/bin/python" examples/make_tiny_cnn.py "$OUT"

step "mlc inspect examples/build/tiny_cnn.onnx"
"$MLC" inspect "$OUT/tiny_cnn.onnx"

step "mlc run examples/build/tiny_cnn.onnx --input image=examples/build/image.npy --output-dir examples/build"
"$MLC" run "$OUT/tiny_cnn.onnx" --input "image=$OUT/image.npy" --output-dir "$OUT"

step "comparing with ONNX Runtime"
"$VENV/bin/python" examples/compare.py "$OUT/expected_probabilities.npy" "$OUT/probabilities.npy"

SHAPE="$("$VENV/bin/python" -c "import numpy as np; print('x'.join(map(str, np.load('$OUT/image.npy').shape)))")"
step "mlc compile examples/build/tiny_cnn.onnx --target x86_64 --shape image=$SHAPE -o examples/build/tiny_cnn.mlca"
"$MLC" compile "$OUT/tiny_cnn.onnx" --target x86_64 --shape "image=$SHAPE" -o "$OUT/tiny_cnn.mlca"

step "mlc inspect examples/build/tiny_cnn.mlca (what the artifact needs and holds)"
"$MLC" inspect "$OUT/tiny_cnn.mlca"

step "mlc run examples/build/tiny_cnn.mlca (the artifact) and compare with ONNX Runtime"
mkdir -p "$OUT/artifact-out"
"$MLC" run "$OUT/tiny_cnn.mlca" --input "image=$OUT/image.npy" --output-dir "$OUT/artifact-out"
"$VENV/bin/python" examples/compare.py "$OUT/expected_probabilities.npy" "$OUT/artifact-out/probabilities.npy"

step "mlc bench examples/build/tiny_cnn.mlca"
"$MLC" bench "$OUT/tiny_cnn.mlca" --input "image=$OUT/image.npy" --iters 20
