#!/usr/bin/env bash
# Everything CI checks: formatting, clippy, and all tests, including the development models
# against ONNX Runtime. Installs what is missing first and fetches the model corpus into
# models-dev/ (pinned and checksummed by ../shared/models/fetch.sh; kept between runs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
start=$SECONDS

ensure_system_packages
ensure_rust
ensure_venv

MODELS="$ROOT/models-dev"
SHARED="$(shared_models_dir)"
# The corpus is rebuilt only when the scripts that make it change.
stamp="$(cat "$SHARED/fetch.sh" "$SHARED/gen_node_tests.py" "$SHARED/peers.py" | sha256sum | cut -c1-16)"
if [ "$(cat "$MODELS/.mlc-stamp" 2>/dev/null)" != "$stamp" ]; then
  step "fetching the development models and ONNX node tests into models-dev/"
  rm -rf "$MODELS"
  # The torch exports (resnet18, bert, mlp and their int8 versions) need a 5.7 GB venv: they are
  # made where that venv already exists (or MLC_TORCH_MODELS=1 asks for it), else skipped.
  if [ -x "${MODELS_VENVS:-$HOME/.cache/mlc-models}/venv-torch/bin/python" ] || [ "${MLC_TORCH_MODELS:-0}" = 1 ]; then
    bash "$SHARED/fetch.sh" "$MODELS" --node-tests
  else
    bash "$SHARED/fetch.sh" "$MODELS" --no-torch --node-tests
  fi
  step "saving ONNX Runtime reference outputs into models-dev/ref/"
  "${MODELS_VENVS:-$HOME/.cache/mlc-models}/venv/bin/python" "$SHARED/peers.py" "$MODELS" \
    --save-ref "$MODELS/ref" --no-tract --threads 1 --runs 1 --warmup 1
  echo "$stamp" > "$MODELS/.mlc-stamp"
fi
export MLC_MODELS_DIR="$MODELS"

step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests run the `mlc` binary, which `cargo test` does not build for another
# package's tests. `--all-targets` resolves features as the test build does (dev-dependencies
# included), so `cargo test` below reuses every artifact instead of rebuilding the deps.
step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets
step "cargo test --workspace"
cargo test --workspace
# The CUDA runtime is an opt-in feature of mlc-runtime (cudarc only, loaded at run time), so the
# workspace build above does not compile it: check it, and its no-driver error path, here.
step "mlc-runtime --features cuda: clippy and tests"
cargo clippy -p mlc-runtime --all-targets --features cuda -- -D warnings
cargo test -p mlc-runtime --features cuda

step "all checks passed in $((SECONDS - start)) s"
