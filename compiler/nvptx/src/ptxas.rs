//! Finding and running NVIDIA's `ptxas`, the PTX assembler: the check that emitted PTX is valid
//! for its target, on machines without a GPU. It comes from the PyPI wheel
//! `nvidia-cuda-nvcc-cu12` (see `scripts/lib.sh`), or from `MLC_PTXAS`.

use crate::{GpuArch, NvptxError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `MLC_PTXAS` if set, else the wheel inside `<repo>/.venv`, else `ptxas` on `PATH`.
pub fn find_ptxas(repo_root: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MLC_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let lib = repo_root.join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        let mut pythons: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        pythons.sort();
        for py in pythons {
            let p = py.join("site-packages/nvidia/cuda_nvcc/bin/ptxas");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("ptxas"))
            .find(|p| p.is_file())
    })
}

/// What `ptxas -v` reports for one kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PtxasReport {
    /// The full `-v` output (registers, shared memory, spills per entry).
    pub info: String,
}

/// Assembles `ptx` for `arch` with `ptxas -v`, writing the cubin into a temporary file.
pub fn assemble(
    ptxas: &Path,
    ptx: &str,
    arch: GpuArch,
    kernel: &str,
) -> Result<PtxasReport, NvptxError> {
    let dir = std::env::temp_dir().join(format!("mlc-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| NvptxError::Io {
        context: format!("creating {}", dir.display()),
        source,
    })?;
    let stem = format!("{kernel}-{}", arch.name());
    let src = dir.join(format!("{stem}.ptx"));
    let out = dir.join(format!("{stem}.cubin"));
    std::fs::write(&src, ptx).map_err(|source| NvptxError::Io {
        context: format!("writing {}", src.display()),
        source,
    })?;
    let output = Command::new(ptxas)
        .arg(format!("-arch={}", arch.name()))
        .arg("-v")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .map_err(|source| NvptxError::Io {
            context: format!("running {}", ptxas.display()),
            source,
        })?;
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&out);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(NvptxError::PtxasFailed {
            ptxas: ptxas.to_path_buf(),
            kernel: kernel.to_string(),
            arch: arch.name().to_string(),
            stderr,
        });
    }
    Ok(PtxasReport { info: stderr })
}
