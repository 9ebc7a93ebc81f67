//! CPU artifacts: the program's kernels compiled to a relocatable object (Cranelift), linked
//! into a shared object by the system linker, and packed with the plan and weights into an
//! `MLCA` container ([`mlc_runtime::artifact`]) that `mlc_runtime::cpu::CpuModel` loads.
//!
//! A model compiled for several input shapes ([`compile_variants`]) gives one artifact with
//! a plan and shared object per variant and one weights section shared by all.
//!
//! The object has no undefined symbols (helpers are reached through a table the loader fills),
//! so it links with `-nostdlib` and depends on no library. Linking is deterministic (no build
//! id, fixed input names), so the same program gives the same artifact bytes.

use crate::plan::WEIGHT_ALIGN;
use crate::{CodegenError, Options};
use mlc_kir::Program;
use mlc_runtime::artifact::{Artifact, Section, fnv1a64};
use mlc_runtime::cpu::model::{CODE_SECTION, TARGET, WEIGHTS_SECTION, code_section};
use mlc_runtime::cpu::plan::{CpuBufferKind, CpuPlan};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Compiles `p` into a CPU artifact.
pub fn compile_artifact(p: &Program, opts: Options) -> Result<Artifact, CodegenError> {
    let (plan, weights, code) = compile_parts(p, opts)?;
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

/// Compiles the variants `ps` of one model (the same graph bound to different input shapes)
/// into one CPU artifact: a plan and a shared object per variant, and one weights section in
/// which every distinct constant is stored once. One variant gives [`compile_artifact`]'s
/// artifact.
pub fn compile_variants(ps: &[Program], opts: Options) -> Result<Artifact, CodegenError> {
    match ps {
        [] => return Err(CodegenError::Invalid("no program to compile".into())),
        [p] => return compile_artifact(p, opts),
        _ => {}
    }
    let mut shared = SharedWeights::default();
    let mut plans = Vec::with_capacity(ps.len());
    let mut codes = Vec::with_capacity(ps.len());
    for p in ps {
        let (mut plan, weights, code) = compile_parts(p, opts)?;
        for b in &mut plan.buffers {
            if let CpuBufferKind::Const { offset, bytes } = &mut b.kind {
                let data = usize::try_from(*offset)
                    .ok()
                    .zip(usize::try_from(*offset + *bytes).ok())
                    .and_then(|(lo, hi)| weights.get(lo..hi))
                    .ok_or_else(|| CodegenError::Invalid("constant out of range".into()))?;
                *offset = shared.place(data);
            }
        }
        plans.push(plan);
        codes.push(code);
    }
    for plan in &plans {
        plan.check(shared.bytes.len() as u64)
            .map_err(|e| CodegenError::Invalid(e.to_string()))?;
    }
    let meta = serde_json::json!({ "variants": plans });
    let mut sections = vec![Section {
        name: WEIGHTS_SECTION.into(),
        kind: "weights".into(),
        data: shared.bytes,
    }];
    for (i, code) in codes.into_iter().enumerate() {
        sections.push(Section {
            name: code_section(i),
            kind: "shared-object".into(),
            data: code,
        });
    }
    Ok(Artifact {
        target: TARGET.to_string(),
        meta,
        sections,
    })
}

/// A weights section built from several, storing equal constants once.
#[derive(Default)]
struct SharedWeights {
    bytes: Vec<u8>,
    /// Offsets of the constants placed so far, by checksum and length.
    placed: HashMap<(u64, usize), Vec<u64>>,
}

impl SharedWeights {
    /// The offset of `data` in the section, appended (aligned) unless equal bytes are there.
    fn place(&mut self, data: &[u8]) -> u64 {
        let key = (fnv1a64(data), data.len());
        let at = self.placed.entry(key).or_default();
        for &o in at.iter() {
            if &self.bytes[o as usize..o as usize + data.len()] == data {
                return o;
            }
        }
        self.bytes
            .resize(self.bytes.len().div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN, 0);
        let o = self.bytes.len() as u64;
        self.bytes.extend_from_slice(data);
        at.push(o);
        o
    }
}

/// A program's plan, weights and linked code.
fn compile_parts(p: &Program, opts: Options) -> Result<(CpuPlan, Vec<u8>, Vec<u8>), CodegenError> {
    let p = &*crate::prepared(p, opts);
    let (plan, weights) = crate::plan::build_plan(p)?;
    let object = crate::module::compile_object(p, opts)?;
    let code = link_shared(&object)?;
    Ok((plan, weights, code))
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
