//! Shared helpers of mlc's integration tests.

pub mod node;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repo root")
        .to_path_buf()
}

/// Where the development corpus lives: `$MLC_MODELS_DIR`, else `models-dev/` in the repo root.
pub fn models_dir() -> PathBuf {
    std::env::var_os("MLC_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models-dev"))
}
