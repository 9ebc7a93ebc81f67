# Shared setup for scripts/example.sh and scripts/test.sh: every step checks first and only
# installs what is missing, so running a script twice is fast. Source it; do not run it.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
# Pinned to the versions the development corpus (../shared/models/fetch.sh) uses, plus NVIDIA's
# PTX assembler (the nvidia-cuda-nvcc-cu12 wheel ships `ptxas`): the NVPTX tests assemble every
# kernel with it, and fail under CI=true when it is missing.
PY_REQUIREMENTS="onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6 nvidia-cuda-nvcc-cu12==12.9.86"
# Debian 12 packages the build and the scripts need. `python3-venv` gives `python3 -m venv`.
# LLVM 19 (../shared/SETUP.md): `llvm-19-dev` for inkwell/llvm-sys (mlc-nvptx), which links LLVM
# statically and so needs Polly, zstd, zlib and libxml2; the MLIR and libclang packages are for
# the melior bridge SETUP.md describes. `.cargo/config.toml` points the crates at /usr/lib/llvm-19.
APT_PACKAGES="python3 python3-venv ca-certificates llvm-19-dev libpolly-19-dev libmlir-19-dev libclang1-19 libclang-common-19-dev libzstd-dev zlib1g-dev libxml2-dev"

step() { printf '\n== %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

ensure_system_packages() {
  local missing=()
  for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    step "installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}"
  fi
}

ensure_rust() {
  command -v cargo >/dev/null || { echo "cargo is not on PATH: install Rust (https://rustup.rs)" >&2; exit 1; }
  if command -v rustup >/dev/null; then
    for c in rustfmt clippy; do
      rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
  fi
}

# The project venv at .venv with onnx, onnxruntime and numpy; rebuilt when the pins change.
ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  if [ "$(cat "$VENV/.mlc-requirements" 2>/dev/null)" != "$PY_REQUIREMENTS" ]; then
    step "installing $PY_REQUIREMENTS into $VENV"
    # shellcheck disable=SC2086 # the list is meant to split into arguments
    "$VENV/bin/pip" install -q --disable-pip-version-check $PY_REQUIREMENTS
    echo "$PY_REQUIREMENTS" > "$VENV/.mlc-requirements"
  fi
}

# The shared model-corpus scripts (fetch.sh, peers.py): $MLC_SHARED_MODELS, or ../shared/models
# beside the checkout.
shared_models_dir() {
  local d
  for d in "${MLC_SHARED_MODELS:-}" "$ROOT/../shared/models" "$ROOT/../../shared/models"; do
    if [ -n "$d" ] && [ -f "$d/fetch.sh" ]; then (cd "$d" && pwd); return 0; fi
  done
  echo "cannot find the shared model scripts (fetch.sh, peers.py): set MLC_SHARED_MODELS" >&2
  return 1
}
