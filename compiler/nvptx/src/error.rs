//! The crate's error type: a bug in a kernel builder (LLVM rejected what we built) is kept apart
//! from a configuration we do not support and from a missing or failing tool.

use std::path::PathBuf;

/// Everything that can go wrong between a kernel description and assembled PTX.
#[derive(Debug, thiserror::Error)]
pub enum NvptxError {
    /// A kernel template was asked for a shape or option it does not implement.
    #[error("unsupported kernel configuration: {0}")]
    Unsupported(String),
    /// LLVM's NVPTX target could not be set up (a build of LLVM without NVPTX, say).
    #[error("LLVM NVPTX target unavailable: {0}")]
    Target(String),
    /// An inkwell builder call failed: a bug in the kernel template.
    #[error("LLVM IR builder error (a bug in the kernel template): {0}")]
    Builder(#[from] inkwell::builder::BuilderError),
    /// The LLVM verifier rejected the module: a bug in the kernel template.
    #[error(
        "LLVM verifier rejected kernel module `{module}` (a bug in the kernel template): {message}"
    )]
    Verify { module: String, message: String },
    /// An intrinsic the template relies on is missing from this LLVM.
    #[error("LLVM intrinsic `{0}` not found")]
    MissingIntrinsic(String),
    /// The optimization pipeline or PTX emission failed.
    #[error("LLVM failed to {stage}: {message}")]
    Llvm {
        stage: &'static str,
        message: String,
    },
    /// `ptxas` was not found: set `MLC_PTXAS` or install `nvidia-cuda-nvcc-cu12` into `.venv`.
    #[error(
        "ptxas not found: set MLC_PTXAS, or `.venv/bin/pip install nvidia-cuda-nvcc-cu12==12.9.86` in the repository"
    )]
    PtxasNotFound,
    /// `ptxas` ran and rejected the PTX.
    #[error("ptxas ({ptxas}) rejected `{kernel}` for {arch}:\n{stderr}")]
    PtxasFailed {
        ptxas: PathBuf,
        kernel: String,
        arch: String,
        stderr: String,
    },
    /// Reading or writing a file, or starting a tool, failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
