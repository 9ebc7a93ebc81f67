//! CPU artifacts: the program's kernels compiled to a relocatable object (Cranelift), linked
//! into a shared object by the system linker, and packed with the plan and weights into an
//! `MLCA` container ([`mlc_runtime::artifact`]) that `mlc_runtime::cpu::CpuModel` loads.
//!
//! The object has no undefined symbols (helpers are reached through a table the loader fills),
//! so it links with `-nostdlib` and depends on no library. Linking is deterministic (no build
//! id, fixed input names), so the same program gives the same artifact bytes.

use crate::{CodegenError, Options};
use mlc_kir::Program;
use mlc_runtime::artifact::{Artifact, Section};
use mlc_runtime::cpu::model::{CODE_SECTION, TARGET, WEIGHTS_SECTION};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Compiles `p` into a CPU artifact.
pub fn compile_artifact(p: &Program, opts: Options) -> Result<Artifact, CodegenError> {
    let fused = if opts.fuse_epilogues {
        Some(crate::requant::fuse_epilogues(p).0)
    } else {
        None
    };
    let p = fused.as_ref().unwrap_or(p);
    let (plan, weights) = crate::plan::build_plan(p)?;
    let object = crate::module::compile_object(p, opts)?;
    let code = link_shared(&object)?;
    let meta = serde_json::to_value(&plan).map_err(|e| CodegenError::Invalid(e.to_string()))?;
    Ok(Artifact {
        target: TARGET.to_string(),
        meta,
        sections: vec![
            Section {
                name: WEIGHTS_SECTION.into(),
                kind: "weights".into(),
                data: weights,
            },
            Section {
                name: CODE_SECTION.into(),
                kind: "shared-object".into(),
                data: code,
            },
        ],
    })
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch() -> Result<Scratch, CodegenError> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mlc-link-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| link_error(&dir, e.to_string()))?;
    Ok(Scratch(dir))
}

fn link_error(at: &Path, what: String) -> CodegenError {
    CodegenError::Link(format!("{}: {what}", at.display()))
}

/// Links a relocatable object into a shared object with the system's C compiler driver
/// (`$MLC_LINKER`, else `cc`): `-nostdlib` (nothing to link against), `-Bsymbolic` (our own
/// symbols bind locally), `-z defs` (an undefined symbol is an error here, not at load time).
pub fn link_shared(object: &[u8]) -> Result<Vec<u8>, CodegenError> {
    let dir = scratch()?;
    let (obj, out) = (dir.0.join("kernels.o"), dir.0.join("kernels.so"));
    std::fs::write(&obj, object).map_err(|e| link_error(&obj, e.to_string()))?;
    let linker = std::env::var("MLC_LINKER").unwrap_or_else(|_| "cc".into());
    let result = Command::new(&linker)
        .args([
            "-shared",
            "-nostdlib",
            "-Wl,-Bsymbolic",
            "-Wl,--build-id=none",
            "-Wl,-z,defs",
            "-Wl,--hash-style=gnu",
            "-o",
        ])
        .arg(&out)
        .arg(&obj)
        .current_dir(&dir.0)
        .output()
        .map_err(|e| {
            CodegenError::Link(format!(
                "cannot run the linker {linker:?} ({e}); CPU artifacts need a C compiler driver (install gcc, or set MLC_LINKER)"
            ))
        })?;
    if !result.status.success() {
        return Err(CodegenError::Link(format!(
            "{linker} failed: {}",
            String::from_utf8_lossy(&result.stderr).trim()
        )));
    }
    std::fs::read(&out).map_err(|e| link_error(&out, e.to_string()))
}
