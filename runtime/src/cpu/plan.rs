//! The execution plan of a model compiled for the CPU: which kernels exist (their symbols and
//! parameters), which buffers (inputs, constants in the weights section, slices of one arena,
//! aliases), and the steps in order. The compiler writes it into the artifact header as JSON; the
//! executor ([`super::exec`]) checks it before running anything, so a bad plan is an error, never
//! an out-of-bounds access.
//!
//! Buffers that are written (temporaries and input copies) live in one arena at offsets chosen
//! by [`super::memplan`]: buffers whose lifetimes do not overlap share bytes.

use crate::plan::{PlanIo, dtype_size};
use serde::{Deserialize, Serialize};

/// The CPU plan format's version; bump on any incompatible change. Version 2 added alias
/// offsets (a value placed inside another: a concatenation's part) and zeroing of aliases.
pub const CPU_PLAN_VERSION: u32 = 2;

/// The oldest plan version this runtime still runs: version 1 plans are version 2 plans that
/// use neither addition.
pub const MIN_CPU_PLAN_VERSION: u32 = 1;

/// A whole model's CPU execution plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuPlan {
    pub version: u32,
    /// The ABI the code was generated for ([`super::abi::ABI_VERSION`]).
    pub abi: u32,
    /// The helper table the code indexes, by name, in order ([`super::abi::helpers`]).
    pub helpers: Vec<String>,
    /// CPU features the code needs (`sse4.2`, `fma`, ...), as `is_x86_feature_detected!` spells them.
    pub features: Vec<String>,
    pub kernels: Vec<CpuKernel>,
    pub buffers: Vec<CpuBuffer>,
    pub steps: Vec<CpuStep>,
    pub inputs: Vec<PlanIo>,
    pub outputs: Vec<PlanIo>,
    /// Bytes of the arena holding every `Arena` buffer.
    pub arena_bytes: u64,
}

/// A compiled kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuKernel {
    /// The kernel IR name, for messages.
    pub name: String,
    /// Its entry point's symbol in the code.
    pub symbol: String,
    pub params: Vec<CpuParam>,
    /// When the body is one parallel loop: its extent, which the executor may split over threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<i64>,
    /// An estimate of its work, to decide whether threads pay for themselves.
    pub work: u64,
}

/// A kernel parameter: a flat array of at least `len` elements of `dtype`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuParam {
    pub dtype: String,
    pub len: usize,
    /// Whether the kernel writes it.
    pub writes: bool,
    /// Whether the kernel reads it before writing it (so its previous contents matter).
    pub reads: bool,
}

/// One buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuBuffer {
    pub dtype: String,
    /// Number of elements.
    pub len: usize,
    pub kind: CpuBufferKind,
}

/// Where a buffer's bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CpuBufferKind {
    /// At `offset` in the arena; `input` is the model input copied there before each run.
    Arena {
        offset: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<usize>,
    },
    /// `bytes` bytes at `offset` in the weights section; read only.
    Const { offset: u64, bytes: u64 },
    /// The same storage as buffer `of` (which is not itself an alias), from byte `offset` on.
    Alias {
        of: usize,
        #[serde(default, skip_serializing_if = "is_zero")]
        offset: u64,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One kernel call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStep {
    /// Index in `kernels`.
    pub kernel: usize,
    /// Buffer indices, one per kernel parameter.
    pub args: Vec<usize>,
    /// Buffers to zero before the step (arena buffers, or aliases of one: only the alias's
    /// bytes): those it reads before anything wrote them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zero: Vec<usize>,
    /// The graph node it came from, for diagnostics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// Why a plan cannot run.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CpuPlanError {
    #[error(
        "CPU plan version {found} is not supported (this runtime reads versions {MIN_CPU_PLAN_VERSION} to {CPU_PLAN_VERSION}; recompile the model)"
    )]
    Version { found: u32 },
    #[error("CPU plan: {0}")]
    Invalid(String),
}

impl CpuBuffer {
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.len as u64 * dtype_size(&self.dtype).unwrap_or(1) as u64
    }
}

impl CpuPlan {
    /// The buffer owning the storage of buffer `b` (aliases resolved; `check` guarantees one hop).
    pub fn storage_of(&self, b: usize) -> usize {
        self.location(b).0
    }

    /// The buffer owning the storage of buffer `b` and `b`'s byte offset in it.
    pub fn location(&self, b: usize) -> (usize, u64) {
        match self.buffers.get(b).map(|x| &x.kind) {
            Some(CpuBufferKind::Alias { of, offset }) => (*of, *offset),
            _ => (b, 0),
        }
    }

    /// Checks that running the plan touches only memory it owns: indices in range, known
    /// dtypes, arena buffers inside the arena, constants inside the weights (`weights_len`
    /// bytes), every argument at least as large as its parameter with the same element size,
    /// constants never written, inputs and outputs matching their buffers.
    pub fn check(&self, weights_len: u64) -> Result<(), CpuPlanError> {
        let bad = |m: String| Err(CpuPlanError::Invalid(m));
        if !(MIN_CPU_PLAN_VERSION..=CPU_PLAN_VERSION).contains(&self.version) {
            return Err(CpuPlanError::Version {
                found: self.version,
            });
        }
        let nb = self.buffers.len();
        for (i, b) in self.buffers.iter().enumerate() {
            if dtype_size(&b.dtype).is_none() {
                return bad(format!("buffer {i} has unknown dtype {:?}", b.dtype));
            }
            match b.kind {
                CpuBufferKind::Alias { of, offset } => {
                    let Some(t) = self.buffers.get(of) else {
                        return bad(format!("buffer {i} aliases missing buffer {of}"));
                    };
                    if matches!(t.kind, CpuBufferKind::Alias { .. }) {
                        return bad(format!("buffer {i} aliases alias {of}"));
                    }
                    let size = dtype_size(&b.dtype).unwrap_or(1) as u64;
                    if offset.checked_add(b.bytes()).is_none_or(|e| e > t.bytes())
                        || !offset.is_multiple_of(size)
                    {
                        return bad(format!("buffer {i} lies outside the buffer it aliases"));
                    }
                }
                CpuBufferKind::Const { offset, bytes } => {
                    if offset.checked_add(bytes).is_none_or(|e| e > weights_len)
                        || bytes != b.bytes()
                    {
                        return bad(format!("buffer {i}'s constant data is out of range"));
                    }
                }
                CpuBufferKind::Arena { offset, input } => {
                    if offset
                        .checked_add(b.bytes())
                        .is_none_or(|e| e > self.arena_bytes)
                    {
                        return bad(format!("buffer {i} lies outside the arena"));
                    }
                    if input.is_some_and(|n| n >= self.inputs.len()) {
                        return bad(format!("buffer {i} is an undeclared input"));
                    }
                }
            }
        }
        for (si, s) in self.steps.iter().enumerate() {
            let Some(k) = self.kernels.get(s.kernel) else {
                return bad(format!("step {si} calls missing kernel {}", s.kernel));
            };
            if s.args.len() != k.params.len() {
                return bad(format!(
                    "step {si} ({}): {} arguments for {} parameters",
                    k.name,
                    s.args.len(),
                    k.params.len()
                ));
            }
            for (j, (&a, p)) in s.args.iter().zip(&k.params).enumerate() {
                let Some(b) = self.buffers.get(a) else {
                    return bad(format!("step {si} ({}) uses missing buffer {a}", k.name));
                };
                let storage = &self.buffers[self.storage_of(a)];
                let (Some(ps), Some(bs)) = (dtype_size(&p.dtype), dtype_size(&b.dtype)) else {
                    return bad(format!("step {si} ({}): unknown dtype", k.name));
                };
                if ps != bs || (p.len as u64) * ps as u64 > storage.bytes().min(b.bytes()) {
                    return bad(format!(
                        "step {si} ({}): buffer {a} does not fit parameter {j}",
                        k.name
                    ));
                }
                if p.writes && matches!(storage.kind, CpuBufferKind::Const { .. }) {
                    return bad(format!("step {si} ({}) writes constant buffer {a}", k.name));
                }
            }
            for &z in &s.zero {
                if z >= nb
                    || !matches!(
                        self.buffers[self.storage_of(z)].kind,
                        CpuBufferKind::Arena { .. }
                    )
                {
                    return bad(format!("step {si} zeroes buffer {z}, not an arena buffer"));
                }
            }
        }
        for (idx, io) in self.inputs.iter().enumerate() {
            match self.buffers.get(io.buffer).map(|b| &b.kind) {
                Some(CpuBufferKind::Arena { input: Some(n), .. }) if *n == idx => {}
                _ => return bad(format!("input {:?} has no arena buffer", io.name)),
            }
        }
        for io in self.inputs.iter().chain(&self.outputs) {
            let Some(b) = self.buffers.get(io.buffer) else {
                return bad(format!("{:?} names missing buffer {}", io.name, io.buffer));
            };
            if b.dtype != io.dtype || b.len != io.shape.iter().product::<usize>() {
                return bad(format!("{:?} does not match its buffer", io.name));
            }
        }
        Ok(())
    }
}
