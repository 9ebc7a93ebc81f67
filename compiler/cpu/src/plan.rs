//! From a kernel-IR program to the runtime's CPU plan ([`mlc_runtime::cpu::plan::CpuPlan`]) and
//! its weights: the part of compilation that is not code generation, shared by the JIT and
//! by artifacts.

use crate::CodegenError;
use crate::clif::{mem_ty, split_extent, work_estimate};
use mlc_ir::{DType, Tensor, TensorError};
use mlc_kir::{Access, BufId, BufKind, Program};
use mlc_runtime::cpu::abi;
use mlc_runtime::cpu::plan::{
    CPU_PLAN_VERSION, CpuBuffer, CpuBufferKind, CpuKernel, CpuParam, CpuPlan, CpuStep,
};
use mlc_runtime::plan::{PlanIo, dtype_size};

/// The CPU features the code of an artifact needs: the baseline of `module::object_isa`.
pub const FEATURES: &[&str] = &["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "fma"];

/// Alignment of every constant in the weights section.
pub(crate) const WEIGHT_ALIGN: usize = 64;

/// The plan of `p` (memory planned) and its weights section.
pub fn build_plan(p: &Program) -> Result<(CpuPlan, Vec<u8>), CodegenError> {
    let invalid = |m: String| CodegenError::Invalid(m);
    let unsupported = |what: String| CodegenError::Unsupported {
        kernel: String::new(),
        what,
    };
    let mut weights: Vec<u8> = Vec::new();
    let mut buffers = Vec::with_capacity(p.buffers.len());
    for (i, b) in p.buffers.iter().enumerate() {
        let dtype = b.dtype.name().to_string();
        let size = mem_ty(b.dtype).map(|t| t.bytes() as usize);
        if dtype_size(&dtype) != size || size.is_none() {
            return Err(unsupported(format!("buffer %b{i} of type {dtype}")));
        }
        let kind = match b.kind {
            BufKind::Input(n) => CpuBufferKind::Arena {
                offset: 0,
                input: Some(n),
            },
            BufKind::Temp => CpuBufferKind::Arena {
                offset: 0,
                input: None,
            },
            BufKind::Alias { .. } => {
                let (s, at) = p.location(BufId(i as u32));
                let s = s.0 as usize;
                if s >= p.buffers.len() {
                    return Err(invalid(format!("buffer %b{i} aliases a missing buffer")));
                }
                if at != 0 && p.buffers[s].dtype != b.dtype {
                    return Err(invalid(format!(
                        "buffer %b{i} lies at an offset in a buffer of another type"
                    )));
                }
                CpuBufferKind::Alias {
                    of: s,
                    offset: (at * size.unwrap_or(0)) as u64,
                }
            }
            BufKind::Const(c) => {
                let t = p
                    .consts
                    .get(c)
                    .ok_or_else(|| invalid(format!("buffer %b{i}: no constant {c}")))?;
                let bytes = mem_bytes(t).map_err(|e| invalid(e.to_string()))?;
                if t.dtype() != b.dtype || bytes.len() != b.len() * dtype_size(&dtype).unwrap_or(0)
                {
                    return Err(invalid(format!("buffer %b{i}: constant does not match")));
                }
                weights.resize(weights.len().div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN, 0);
                let offset = weights.len() as u64;
                weights.extend_from_slice(&bytes);
                CpuBufferKind::Const {
                    offset,
                    bytes: bytes.len() as u64,
                }
            }
        };
        buffers.push(CpuBuffer {
            dtype,
            len: b.len(),
            kind,
        });
    }
    let mut kernels = Vec::with_capacity(p.kernels.len());
    for (i, k) in p.kernels.iter().enumerate() {
        let mut params = Vec::with_capacity(k.params.len());
        for (j, prm) in k.params.iter().enumerate() {
            if mem_ty(prm.dtype).is_none() {
                return Err(CodegenError::Unsupported {
                    kernel: k.name.clone(),
                    what: format!("parameter %p{j} of type {}", prm.dtype.name()),
                });
            }
            params.push(CpuParam {
                dtype: prm.dtype.name().to_string(),
                len: prm.len,
                writes: prm.access != Access::Read,
                reads: prm.access != Access::Write,
            });
        }
        kernels.push(CpuKernel {
            name: k.name.clone(),
            symbol: crate::module::kernel_symbol(i, k),
            params,
            split: split_extent(k),
            work: work_estimate(&k.body),
        });
    }
    let steps = p
        .steps
        .iter()
        .map(|s| CpuStep {
            kernel: s.kernel.0 as usize,
            args: s.args.iter().map(|a| a.0 as usize).collect(),
            zero: Vec::new(),
            origin: s.origin.clone(),
        })
        .collect();
    let io = |(name, b): &(String, BufId), batch: bool| -> Result<PlanIo, CodegenError> {
        let buf = p
            .buffers
            .get(b.0 as usize)
            .ok_or_else(|| invalid(format!("{name:?} names missing buffer %b{}", b.0)))?;
        Ok(PlanIo {
            name: name.clone(),
            buffer: b.0 as usize,
            dtype: buf.dtype.name().to_string(),
            shape: buf.shape.clone(),
            value: match p.guard(name) {
                Some(t) => Some(t.to_le_bytes().map_err(|e| invalid(e.to_string()))?),
                None => None,
            },
            batch,
            dims: p.dim_names_of(name),
        })
    };
    let mut plan = CpuPlan {
        version: CPU_PLAN_VERSION,
        abi: abi::ABI_VERSION,
        helpers: abi::helpers().into_iter().map(String::from).collect(),
        features: FEATURES.iter().map(|f| f.to_string()).collect(),
        kernels,
        buffers,
        steps,
        inputs: p
            .inputs
            .iter()
            .map(|x| io(x, p.batched.contains(&x.0)))
            .collect::<Result<_, _>>()?,
        outputs: p
            .outputs
            .iter()
            .map(|x| io(x, !p.batched.is_empty()))
            .collect::<Result<_, _>>()?,
        arena_bytes: 0,
    };
    // Outputs the kernels may compute over a dying input (elementwise steps, mostly).
    let pairs: Vec<Vec<(usize, usize)>> = p
        .kernels
        .iter()
        .map(|k| {
            mlc_kir::inplace_pairs(k)
                .into_iter()
                .map(|(i, o)| (i.0 as usize, o.0 as usize))
                .collect()
        })
        .collect();
    let in_place: Vec<Vec<(usize, usize)>> = p
        .steps
        .iter()
        .map(|s| pairs[s.kernel.0 as usize].clone())
        .collect();
    mlc_runtime::cpu::memplan::plan_memory_in_place(&mut plan, &in_place);
    plan.check(weights.len() as u64)
        .map_err(|e| invalid(e.to_string()))?;
    Ok((plan, weights))
}

/// The bytes of `t` as compiled code holds them: its little-endian elements, but the sub-byte
/// storage types one code per byte (unpacked from their file layout).
pub fn mem_bytes(t: &Tensor) -> Result<Vec<u8>, TensorError> {
    let bytes = t.to_le_bytes()?;
    let bits = t.dtype().bits().unwrap_or(8);
    if !t.dtype().is_storage_only() || bits >= 8 {
        return Ok(bytes);
    }
    let per = 8 / bits;
    let m = ((1u16 << bits) - 1) as u8;
    Ok((0..t.len())
        .map(|i| (bytes[i / per] >> ((i % per) * bits)) & m)
        .collect())
}

/// The inverse of [`mem_bytes`]: a tensor of `dtype` and `shape` from compiled code's bytes.
pub fn from_mem_bytes(dtype: DType, shape: &[usize], b: &[u8]) -> Result<Tensor, TensorError> {
    let bits = dtype.bits().unwrap_or(8);
    if !dtype.is_storage_only() || bits >= 8 {
        return Tensor::from_le_bytes(dtype, shape, b);
    }
    let per = 8 / bits;
    let m = ((1u16 << bits) - 1) as u8;
    let mut packed = vec![0u8; b.len().div_ceil(per)];
    for (i, c) in b.iter().enumerate() {
        packed[i / per] |= (c & m) << ((i % per) * bits);
    }
    Tensor::from_le_bytes(dtype, shape, &packed)
}
