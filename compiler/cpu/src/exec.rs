//! Executing a kernel-IR program with compiled kernels: buffers, steps in order, threads.
//!
//! Every non-alias buffer gets its own zeroed storage per run (8-byte aligned); aliases share
//! their target's. Constants are copied in from bytes prepared at compile time. A step whose
//! kernel is one parallel loop is split across threads in contiguous chunks when it has
//! enough work; the others run on the calling thread.

use crate::clif::{self, mem_ty};
use crate::ffi::{Code, Params};
use crate::{CodegenError, Options};
use mlc_ir::{DType, Tensor};
use mlc_kir::{BufKind, Program};
use std::sync::atomic::{AtomicI64, Ordering};

/// Below this estimate of a step's work (see `clif::work_estimate`) it runs on one thread.
const MIN_PARALLEL_WORK: u64 = 1 << 15;

/// Why a run failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RunError {
    #[error("program expects {expected} inputs, got {got}")]
    InputCount { expected: usize, got: usize },
    #[error("input {index} ({name}): expected {expected}, got {got}")]
    InputType {
        index: usize,
        name: String,
        expected: String,
        got: String,
    },
    #[error("step {step} (kernel {kernel}{}): an index read from data is out of bounds", origin.as_ref().map(|o| format!(", node {o}")).unwrap_or_default())]
    OutOfBounds {
        step: usize,
        kernel: String,
        origin: Option<String>,
    },
    #[error("tensor conversion: {0}")]
    Tensor(String),
}

/// Per-kernel facts the executor needs.
#[derive(Clone, Copy, Debug)]
struct KernelInfo {
    split: Option<i64>,
    work: u64,
}

/// A program with its kernels compiled to machine code, ready to run many times.
#[derive(Debug)]
pub struct CompiledProgram {
    prog: Program,
    code: Code,
    info: Vec<KernelInfo>,
    /// Bytes of every buffer's own storage (0 for aliases).
    sizes: Vec<usize>,
    /// Constant buffers' contents as storage words, by buffer; kernels read them in place
    /// (they are only ever bound to read parameters, checked at compile time).
    consts: Vec<Option<Vec<u64>>>,
}

fn bytes_of(dtype: DType, len: usize) -> Option<usize> {
    if dtype == DType::Str {
        return None;
    }
    // Sub-byte types are held one per byte by tensors but packed by `to_le_bytes`: no.
    Some(len * dtype.size()?)
}

impl CompiledProgram {
    /// Compiles every kernel of `p` with default options.
    pub fn new(p: &Program) -> Result<CompiledProgram, CodegenError> {
        CompiledProgram::with_options(p, Options::default())
    }

    pub fn with_options(p: &Program, opts: Options) -> Result<CompiledProgram, CodegenError> {
        let invalid = |m: String| CodegenError::Invalid(m);
        // Storage sizes, following aliases (which must not be bigger than their target).
        let mut sizes = vec![0usize; p.buffers.len()];
        let mut consts = vec![None; p.buffers.len()];
        for (i, b) in p.buffers.iter().enumerate() {
            let Some(n) = bytes_of(b.dtype, b.len()) else {
                return Err(CodegenError::Unsupported {
                    kernel: String::new(),
                    what: format!("buffer %b{i} of type {}", b.dtype.name()),
                });
            };
            match b.kind {
                BufKind::Alias(t) => {
                    if t.0 as usize >= p.buffers.len() {
                        return Err(invalid(format!("buffer %b{i} aliases a missing buffer")));
                    }
                }
                BufKind::Const(c) => {
                    let t = p
                        .consts
                        .get(c)
                        .ok_or_else(|| invalid(format!("buffer %b{i}: no constant {c}")))?;
                    let bytes = t.to_le_bytes().map_err(|e| invalid(e.to_string()))?;
                    if bytes.len() != n || t.dtype() != b.dtype {
                        return Err(invalid(format!("buffer %b{i}: constant does not match")));
                    }
                    let mut words = vec![0u64; n.div_ceil(8).max(1)];
                    copy_into(&mut words, &bytes);
                    consts[i] = Some(words);
                    sizes[i] = n;
                }
                _ => sizes[i] = n,
            }
        }
        for (i, b) in p.buffers.iter().enumerate() {
            if let BufKind::Alias(_) = b.kind {
                let s = p.storage_of(mlc_kir::BufId(i as u32)).0 as usize;
                if bytes_of(b.dtype, b.len()).unwrap_or(usize::MAX) > sizes[s] {
                    return Err(invalid(format!("alias %b{i} is larger than its storage")));
                }
            }
        }
        for (si, st) in p.steps.iter().enumerate() {
            let k = p
                .kernels
                .get(st.kernel.0 as usize)
                .ok_or_else(|| invalid(format!("step {si}: no kernel {}", st.kernel.0)))?;
            if st.args.len() != k.params.len() {
                return Err(invalid(format!(
                    "step {si}: {} arguments for {} parameters",
                    st.args.len(),
                    k.params.len()
                )));
            }
            for (j, (a, prm)) in st.args.iter().zip(&k.params).enumerate() {
                let b = p
                    .buffers
                    .get(a.0 as usize)
                    .ok_or_else(|| invalid(format!("step {si}: no buffer %b{}", a.0)))?;
                let need = mem_ty(prm.dtype).map(|t| t.bytes() as usize * prm.len);
                let have = sizes[p.storage_of(*a).0 as usize];
                let same_size = b.dtype.size() == prm.dtype.size();
                let storage = p.storage_of(*a).0 as usize;
                if prm.access != mlc_kir::Access::Read && consts[storage].is_some() {
                    return Err(invalid(format!(
                        "step {si}: constant %b{} bound to written parameter %p{j}",
                        a.0
                    )));
                }
                if need.is_none_or(|n| n > have) || !same_size {
                    return Err(invalid(format!(
                        "step {si}: argument {j} (%b{}) does not fit parameter %p{j}",
                        a.0
                    )));
                }
            }
        }
        for (_, b) in p.inputs.iter().chain(&p.outputs) {
            if b.0 as usize >= p.buffers.len() {
                return Err(invalid(format!("no buffer %b{}", b.0)));
            }
        }
        let (module, addrs, table) = crate::module::jit(&p.kernels, opts)?;
        let info = p
            .kernels
            .iter()
            .map(|k| KernelInfo {
                split: clif::split_extent(k),
                work: clif::work_estimate(&k.body),
            })
            .collect();
        Ok(CompiledProgram {
            prog: p.clone(),
            code: Code::new(module, &addrs, table),
            info,
            sizes,
            consts,
        })
    }

    /// The program this was compiled from.
    pub fn program(&self) -> &Program {
        &self.prog
    }

    /// Runs the program on `inputs` (in the program's input order) with up to `threads`
    /// threads, and returns its outputs in order.
    pub fn run(&self, inputs: &[Tensor], threads: usize) -> Result<Vec<Tensor>, RunError> {
        let p = &self.prog;
        if inputs.len() != p.inputs.len() {
            return Err(RunError::InputCount {
                expected: p.inputs.len(),
                got: inputs.len(),
            });
        }
        // Storage as u64 words: 8-byte aligned, at least one word so pointers are valid.
        // Constants are not copied: kernels read them where they are.
        let mut store: Vec<Vec<u64>> = self
            .sizes
            .iter()
            .zip(&self.consts)
            .map(|(&n, c)| match c {
                Some(_) => Vec::new(),
                None => vec![0u64; n.div_ceil(8).max(1)],
            })
            .collect();
        for (i, b) in p.buffers.iter().enumerate() {
            let bytes = match b.kind {
                BufKind::Input(n) => {
                    let t = inputs.get(n).ok_or(RunError::InputCount {
                        expected: p.inputs.len(),
                        got: inputs.len(),
                    })?;
                    if t.dtype() != b.dtype || t.shape() != b.shape.as_slice() {
                        return Err(RunError::InputType {
                            index: n,
                            name: p.inputs.get(n).map(|x| x.0.clone()).unwrap_or_default(),
                            expected: format!("{}{:?}", b.dtype.name(), b.shape),
                            got: format!("{}{:?}", t.dtype().name(), t.shape()),
                        });
                    }
                    if copy_in(&mut store[i], t) {
                        continue;
                    }
                    t.to_le_bytes()
                        .map_err(|e| RunError::Tensor(e.to_string()))?
                }
                _ => continue,
            };
            copy_into(&mut store[i], &bytes);
        }
        let ptrs: Vec<*mut u8> = store
            .iter_mut()
            .zip(&self.consts)
            .map(|(w, c)| match c {
                // Bound only to read parameters: the kernels never write through it.
                Some(c) => c.as_ptr() as *mut u8,
                None => w.as_mut_ptr() as *mut u8,
            })
            .collect();
        // Kernels set the status word through the pointer they get; it is read only after they
        // returned (threads joined).
        // After it, the number of threads a library call (matmul) in the step may use.
        let ctl = [AtomicI64::new(0), AtomicI64::new(threads.max(1) as i64)];
        let status = &ctl[0];
        for (si, st) in p.steps.iter().enumerate() {
            let ki = st.kernel.0 as usize;
            let mut params: Vec<*mut u8> = st
                .args
                .iter()
                .map(|a| ptrs[p.storage_of(*a).0 as usize])
                .collect();
            params.push(status.as_ptr() as *mut u8);
            let info = self.info[ki];
            let split = matches!(info.split, Some(n) if threads > 1 && n > 1 && info.work >= MIN_PARALLEL_WORK);
            // A step split across threads keeps its library calls on their thread.
            ctl[1].store(
                if split { 1 } else { threads.max(1) as i64 },
                Ordering::SeqCst,
            );
            let params = Params(params);
            match info.split {
                Some(n) if split => {
                    let t = (threads as i64).min(n);
                    let chunk = (n + t - 1) / t;
                    let entry = self.code.entry(ki);
                    let params = &params;
                    std::thread::scope(|s| {
                        for c in 1..t {
                            let (lo, hi) = (c * chunk, ((c + 1) * chunk).min(n));
                            if lo < hi {
                                s.spawn(move || entry.call(params, lo, hi));
                            }
                        }
                        entry.call(params, 0, chunk.min(n));
                    });
                }
                Some(n) => self.code.entry(ki).call(&params, 0, n),
                None => self.code.entry(ki).call(&params, 0, 1),
            }
            let failed = status.load(Ordering::SeqCst);
            if failed != 0 {
                return Err(RunError::OutOfBounds {
                    step: si,
                    kernel: p.kernels[ki].name.clone(),
                    origin: st.origin.clone(),
                });
            }
        }
        p.outputs
            .iter()
            .map(|(_, b)| {
                let buf = p.buffer(*b);
                let s = p.storage_of(*b).0 as usize;
                let words = match &self.consts[s] {
                    Some(c) => c.as_slice(),
                    None => store[s].as_slice(),
                };
                if let Some(t) = copy_out(words, buf.dtype, &buf.shape) {
                    return t.map_err(|e| RunError::Tensor(e.to_string()));
                }
                let n = bytes_of(buf.dtype, buf.len()).unwrap_or(0);
                let bytes = words_as_bytes(words, n);
                Tensor::from_le_bytes(buf.dtype, &buf.shape, &bytes)
                    .map_err(|e| RunError::Tensor(e.to_string()))
            })
            .collect()
    }
}

fn copy_into(words: &mut [u64], bytes: &[u8]) {
    for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
}

fn words_as_bytes(words: &[u64], n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A fixed-size element and its little-endian bit pattern, for copying tensors in and out of
/// word storage without a byte vector in between.
trait Raw: mlc_ir::Elem + Copy {
    const BITS: usize;
    fn to_raw(self) -> u64;
    fn from_raw(b: u64) -> Self;
}

macro_rules! raw_int {
    ($($t:ty => $u:ty),*) => {$(
        impl Raw for $t {
            const BITS: usize = <$u>::BITS as usize;
            fn to_raw(self) -> u64 { self as $u as u64 }
            fn from_raw(b: u64) -> Self { b as $u as $t }
        }
    )*};
}
raw_int!(i8 => u8, u8 => u8, i16 => u16, u16 => u16, i32 => u32, u32 => u32, i64 => u64, u64 => u64);

impl Raw for f32 {
    const BITS: usize = 32;
    fn to_raw(self) -> u64 {
        self.to_bits() as u64
    }
    fn from_raw(b: u64) -> Self {
        f32::from_bits(b as u32)
    }
}
impl Raw for f64 {
    const BITS: usize = 64;
    fn to_raw(self) -> u64 {
        self.to_bits()
    }
    fn from_raw(b: u64) -> Self {
        f64::from_bits(b)
    }
}
impl Raw for half::f16 {
    const BITS: usize = 16;
    fn to_raw(self) -> u64 {
        self.to_bits() as u64
    }
    fn from_raw(b: u64) -> Self {
        half::f16::from_bits(b as u16)
    }
}
impl Raw for half::bf16 {
    const BITS: usize = 16;
    fn to_raw(self) -> u64 {
        self.to_bits() as u64
    }
    fn from_raw(b: u64) -> Self {
        half::bf16::from_bits(b as u16)
    }
}
impl Raw for bool {
    const BITS: usize = 8;
    fn to_raw(self) -> u64 {
        self as u64
    }
    fn from_raw(b: u64) -> Self {
        b & 0xff != 0
    }
}

fn put<T: Raw>(words: &mut [u64], i: usize, x: T) {
    let bit = i * T::BITS;
    if let Some(w) = words.get_mut(bit / 64) {
        *w |= x.to_raw() << (bit % 64);
    }
}

fn copy_in_t<T: Raw>(words: &mut [u64], t: &Tensor) -> bool {
    let Ok(a) = t.view::<T>() else {
        return false;
    };
    match a.as_slice() {
        Some(s) => s.iter().enumerate().for_each(|(i, &x)| put(words, i, x)),
        None => a.iter().enumerate().for_each(|(i, &x)| put(words, i, x)),
    }
    true
}

/// Copies `t`'s elements into zeroed `words`; false for types without a fast path.
fn copy_in(words: &mut [u64], t: &Tensor) -> bool {
    match t.dtype() {
        DType::F32 => copy_in_t::<f32>(words, t),
        DType::F64 => copy_in_t::<f64>(words, t),
        DType::F16 => copy_in_t::<half::f16>(words, t),
        DType::BF16 => copy_in_t::<half::bf16>(words, t),
        DType::I8 => copy_in_t::<i8>(words, t),
        DType::U8 => copy_in_t::<u8>(words, t),
        DType::I16 => copy_in_t::<i16>(words, t),
        DType::U16 => copy_in_t::<u16>(words, t),
        DType::I32 => copy_in_t::<i32>(words, t),
        DType::U32 => copy_in_t::<u32>(words, t),
        DType::I64 => copy_in_t::<i64>(words, t),
        DType::U64 => copy_in_t::<u64>(words, t),
        DType::Bool => copy_in_t::<bool>(words, t),
        _ => false,
    }
}

fn copy_out_t<T: Raw>(words: &[u64], shape: &[usize]) -> Result<Tensor, mlc_ir::TensorError> {
    let n: usize = shape.iter().product();
    let mask = if T::BITS >= 64 {
        u64::MAX
    } else {
        (1u64 << T::BITS) - 1
    };
    let v: Vec<T> = (0..n)
        .map(|i| {
            let bit = i * T::BITS;
            let w = words.get(bit / 64).copied().unwrap_or(0);
            T::from_raw((w >> (bit % 64)) & mask)
        })
        .collect();
    Tensor::from_vec(shape, v)
}

/// A tensor of `dtype` and `shape` from `words`; `None` for types without a fast path.
fn copy_out(
    words: &[u64],
    dtype: DType,
    shape: &[usize],
) -> Option<Result<Tensor, mlc_ir::TensorError>> {
    Some(match dtype {
        DType::F32 => copy_out_t::<f32>(words, shape),
        DType::F64 => copy_out_t::<f64>(words, shape),
        DType::F16 => copy_out_t::<half::f16>(words, shape),
        DType::BF16 => copy_out_t::<half::bf16>(words, shape),
        DType::I8 => copy_out_t::<i8>(words, shape),
        DType::U8 => copy_out_t::<u8>(words, shape),
        DType::I16 => copy_out_t::<i16>(words, shape),
        DType::U16 => copy_out_t::<u16>(words, shape),
        DType::I32 => copy_out_t::<i32>(words, shape),
        DType::U32 => copy_out_t::<u32>(words, shape),
        DType::I64 => copy_out_t::<i64>(words, shape),
        DType::U64 => copy_out_t::<u64>(words, shape),
        DType::Bool => copy_out_t::<bool>(words, shape),
        _ => return None,
    })
}
