#!/usr/bin/env bash
# The main job: build mlc, make the example model, and run `mlc inspect` and `mlc run` on it.
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
