//! A whole kernel-IR program → PTX modules, an execution [`Plan`] and an artifact.
//!
//! Every distinct kernel becomes one PTX module with one entry, named `k<index>_<name>` so
//! entries are unique even where two kernels share a readable name. Constants are packed into
//! one `weights` blob, each 64-byte aligned; buffers keep the program's numbering.

use crate::lower::{LaunchShape, lower_kernel};
use crate::{GpuArch, NvptxError, PtxTarget};
use inkwell::context::Context;
use mlc_kir::{BufKind, Program};
use mlc_runtime::artifact::{Artifact, Section};
use mlc_runtime::plan::{BufferKind, PLAN_VERSION, Plan, PlanBuffer, PlanIo, PlanStep};

/// What `compile_program` produces.
#[derive(Debug, Clone)]
pub struct CompiledProgram {
    pub arch: GpuArch,
    pub plan: Plan,
    /// `(entry name, PTX text)` per distinct kernel.
    pub kernels: Vec<(String, String)>,
    /// Every constant's bytes, at the offsets the plan names.
    pub weights: Vec<u8>,
}

/// The entry name of kernel `i`: `k<i>_` plus its name with non-identifier characters as `_`.
pub fn entry_name(i: usize, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("k{i}_{clean}")
}

/// Lowers every kernel of `p` to LLVM IR (unoptimized, target-prepared), for `--emit llvm`.
pub fn emit_program_llvm(p: &Program, arch: GpuArch) -> Result<Vec<(String, String)>, NvptxError> {
    let target = PtxTarget::new(arch)?;
    p.kernels
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let ctx = Context::create();
            let entry = entry_name(i, &k.name);
            let (cg, _) = lower_kernel(&ctx, k, &entry)?;
            target.prepare(&cg.module);
            Ok((entry, cg.module.print_to_string().to_string()))
        })
        .collect()
}

/// Compiles every kernel of `p` to PTX for `arch` and builds the plan.
pub fn compile_program(p: &Program, arch: GpuArch) -> Result<CompiledProgram, NvptxError> {
    let target = PtxTarget::new(arch)?;
    // The GPU plan's aliases have no offset; `mlc_kir::place_concat_parts` (a CPU pass) makes
    // them.
    if let Some(i) = (0..p.buffers.len()).find(|&i| p.location(mlc_kir::BufId(i as u32)).1 != 0) {
        return Err(NvptxError::Unsupported(format!(
            "buffer %b{i} lies at an offset inside another buffer"
        )));
    }
    let mut kernels = Vec::with_capacity(p.kernels.len());
    let mut launches: Vec<LaunchShape> = Vec::with_capacity(p.kernels.len());
    for (i, k) in p.kernels.iter().enumerate() {
        let ctx = Context::create();
        let entry = entry_name(i, &k.name);
        let (cg, launch) = lower_kernel(&ctx, k, &entry)?;
        let ptx = target.compile(&cg.module)?;
        kernels.push((entry, ptx));
        launches.push(launch);
    }
    let mut weights = Vec::new();
    let mut const_at = vec![(0u64, 0u64); p.consts.len()];
    for (c, t) in p.consts.iter().enumerate() {
        let bytes = t.to_le_bytes().map_err(|e| {
            NvptxError::Unsupported(format!("constant {c} of type {}: {e}", t.dtype().name()))
        })?;
        weights.resize(weights.len().div_ceil(64) * 64, 0);
        const_at[c] = (weights.len() as u64, bytes.len() as u64);
        weights.extend_from_slice(&bytes);
    }
    let buffers = p
        .buffers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let kind = match b.kind {
                BufKind::Input(index) => BufferKind::Input { index },
                BufKind::Const(c) => BufferKind::Const {
                    offset: const_at[c].0,
                    bytes: const_at[c].1,
                },
                BufKind::Temp => BufferKind::Temp,
                BufKind::Alias { .. } => BufferKind::Alias {
                    of: p.storage_of(mlc_kir::BufId(i as u32)).0 as usize,
                },
            };
            PlanBuffer {
                dtype: b.dtype.name().to_string(),
                len: b.len(),
                kind,
            }
        })
        .collect();
    let steps = p
        .steps
        .iter()
        .map(|s| {
            let (grid, block) = launches[s.kernel.0 as usize].dims();
            PlanStep {
                kernel: kernels[s.kernel.0 as usize].0.clone(),
                args: s.args.iter().map(|b| b.0 as usize).collect(),
                grid,
                block,
                shared_bytes: 0,
                origin: s.origin.clone(),
            }
        })
        .collect();
    let io = |list: &[(String, mlc_kir::BufId)]| -> Vec<PlanIo> {
        list.iter()
            .map(|(name, b)| {
                let buf = p.buffer(*b);
                PlanIo {
                    name: name.clone(),
                    buffer: b.0 as usize,
                    dtype: buf.dtype.name().to_string(),
                    shape: buf.shape.clone(),
                    // Guard values are small integers or floats, which always have bytes.
                    value: p.guard(name).and_then(|t| t.to_le_bytes().ok()),
                    // The CUDA runtime runs the compiled shapes only.
                    batch: false,
                    dims: p.dim_names_of(name),
                }
            })
            .collect()
    };
    let plan = Plan {
        version: PLAN_VERSION,
        buffers,
        steps,
        inputs: io(&p.inputs),
        outputs: io(&p.outputs),
    };
    Ok(CompiledProgram {
        arch,
        plan,
        kernels,
        weights,
    })
}

impl CompiledProgram {
    /// The artifact: target `nvptx:<arch>`, the plan as header meta, a `weights` section and
    /// one `ptx` section per kernel, named by its entry.
    pub fn artifact(&self) -> Result<Artifact, NvptxError> {
        let meta = serde_json::to_value(&self.plan)
            .map_err(|e| NvptxError::Unsupported(format!("serializing the plan: {e}")))?;
        let mut sections = vec![Section {
            name: "weights".into(),
            kind: "weights".into(),
            data: self.weights.clone(),
        }];
        for (name, ptx) in &self.kernels {
            sections.push(Section {
                name: name.clone(),
                kind: "ptx".into(),
                data: ptx.as_bytes().to_vec(),
            });
        }
        Ok(Artifact {
            target: format!("nvptx:{}", self.arch.name()),
            meta,
            sections,
        })
    }
}
