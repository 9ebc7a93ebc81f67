//! The one module with unsafe code: it turns JIT'd code addresses into function pointers and
//! calls them, frees the JIT's memory, and receives raw pointers from generated code (the
//! matmul helper). Everything here is a thin shim; the logic lives in safe modules.
#![allow(unsafe_code)]

use crate::clif::mm_slot as s;
use crate::matmul::{self, Gemm, View};
use cranelift_jit::JITModule;
use mlc_ir::DType;
use mlc_kir::Activation;

/// The ABI of every compiled kernel (see the crate docs).
pub(crate) type KernelFn = extern "C" fn(*const *mut u8, i64, i64);

/// Finalized JIT code and the kernels' entry points. Dropping it frees the code.
pub(crate) struct Code {
    module: Option<JITModule>,
    fns: Vec<KernelFn>,
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Code({} kernels)", self.fns.len())
    }
}

impl Code {
    /// `addrs[i]` must be the finalized address of a function of `module` with the kernel
    /// signature; `module` must have been finalized.
    pub(crate) fn new(module: JITModule, addrs: &[*const u8]) -> Code {
        let fns = addrs
            .iter()
            .map(|&p| {
                // SAFETY: each address is a function that `module` compiled with
                // `clif::kernel_signature`, i.e. `extern "C" fn(*const *mut u8, i64, i64)`
                // under the host's default calling convention, and `module` has been finalized,
                // so the code is executable. `module` lives as long as `fns` (same struct).
                unsafe { std::mem::transmute::<*const u8, KernelFn>(p) }
            })
            .collect();
        Code {
            module: Some(module),
            fns,
        }
    }

    /// Kernel `i`'s entry point, valid while `self` lives.
    pub(crate) fn entry(&self, i: usize) -> Entry<'_> {
        Entry(self.fns[i], std::marker::PhantomData)
    }
}

/// A kernel's entry point, borrowed from its [`Code`] (so it cannot outlive the code).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry<'a>(KernelFn, std::marker::PhantomData<&'a ()>);

impl Entry<'_> {
    /// Runs the kernel on the parameter pointers in `params` (its parameters, then the
    /// status word) over the sub-range `start..end` of its parallel loop.
    pub(crate) fn call(self, params: &Params, start: i64, end: i64) {
        (self.0)(params.0.as_ptr(), start, end);
    }
}

impl Drop for Code {
    fn drop(&mut self) {
        self.fns.clear();
        if let Some(m) = self.module.take() {
            // SAFETY: the function pointers into this module were just dropped, and none
            // escaped `Code` (calls go through `Code::call`, which borrows it).
            unsafe { m.free_memory() };
        }
    }
}

/// The pointer array handed to a kernel: the executor checked at compile time that each
/// buffer holds at least the kernel parameter's `len` elements of its dtype, and threads
/// write disjoint elements (the parallel loop's contract), so sharing it is sound.
#[derive(Debug)]
pub(crate) struct Params(pub Vec<*mut u8>);

// SAFETY: the pointers refer to buffers owned by the executor for the duration of the
// scoped threads that use them; see `Params`.
unsafe impl Send for Params {}
// SAFETY: as above; the kernels only read the array.
unsafe impl Sync for Params {}

fn dtype(code: u64) -> DType {
    DType::ALL
        .get(code as usize & 0xff)
        .copied()
        .unwrap_or(DType::Str)
}

/// `Stmt::Matmul`'s entry point: `desc` points to `mm_slot::COUNT` words laid out as
/// `clif::mm_slot` says. Never panics across the FFI boundary: bad arguments set the status.
extern "C" fn mlc_matmul(desc: *const u64) {
    // SAFETY: generated code passes the address of a stack slot of `mm_slot::COUNT` u64s.
    let d = unsafe { std::slice::from_raw_parts(desc, s::COUNT) };
    let status = d[s::STATUS] as *mut i64;
    // SAFETY: the status pointer is the executor's control block of two i64s: the status
    // word, then the number of threads this call may use.
    let threads = unsafe { *status.add(1) }.max(1) as usize;
    let ok = std::panic::catch_unwind(|| matmul_from_desc(d, threads)).unwrap_or(false);
    if !ok {
        // SAFETY: the status word is the executor's `i64`, alive during the call.
        unsafe { *status = 1 };
    }
}

fn matmul_from_desc(d: &[u64], threads: usize) -> bool {
    let codes = d[s::DTYPES];
    let (ta, tb, tc, tbias) = (
        dtype(codes),
        dtype(codes >> 8),
        dtype(codes >> 16),
        dtype(codes >> 24),
    );
    let size = |t: DType| t.size().unwrap_or(0);
    if [ta, tb, tc].iter().any(|&t| size(t) == 0) {
        return false;
    }
    let len = |j: usize, t: DType| (d[s::LEN + j] as usize).saturating_mul(size(t));
    let (pa, pb, pc, pbias) = (
        d[s::A] as *const u8,
        d[s::B] as *const u8,
        d[s::C] as *mut u8,
        d[s::BIAS] as *const u8,
    );
    let (la, lb, lc) = (len(0, ta), len(1, tb), len(2, tc));
    // C is written; it must not overlap an operand (lowering never makes it).
    let overlaps = |p: *const u8, l: usize| {
        let (a0, a1) = (p as usize, p as usize + l);
        let (c0, c1) = (pc as usize, pc as usize + lc);
        a0 < c1 && c0 < a1
    };
    if overlaps(pa, la) || overlaps(pb, lb) || (!pbias.is_null() && overlaps(pbias, len(3, tbias)))
    {
        return false;
    }
    // SAFETY: the pointers are the kernel's parameter buffers, each holding at least its
    // parameter's `len` elements (checked by the executor before any call); A, B and bias
    // are only read, and C, which is written, overlaps none of them (checked above).
    let (a, b, c) = unsafe {
        (
            std::slice::from_raw_parts(pa, la),
            std::slice::from_raw_parts(pb, lb),
            std::slice::from_raw_parts_mut(pc, lc),
        )
    };
    let bias = if pbias.is_null() {
        None
    } else {
        // SAFETY: as for A and B.
        Some(unsafe { std::slice::from_raw_parts(pbias, len(3, tbias)) })
    };
    let f = |i: usize| f64::from_bits(d[i]);
    let i = |j: usize| d[j] as i64;
    let view = |bytes, dtype, j: usize| View {
        bytes,
        dtype,
        offset: i(s::OFF + j),
        row_stride: i(s::STRIDES + 2 * j),
        col_stride: i(s::STRIDES + 2 * j + 1),
    };
    let act = match d[s::ACT] {
        1 => Activation::Relu,
        2 => Activation::Clip {
            min: f(s::ACT_MIN) as f32,
            max: f(s::ACT_MAX) as f32,
        },
        _ => Activation::None,
    };
    let g = Gemm {
        m: d[s::M] as usize,
        n: d[s::N] as usize,
        k: d[s::K] as usize,
        alpha: f(s::ALPHA),
        beta: f(s::BETA),
        act,
        threads,
    };
    matmul::run(
        &g,
        view(a, ta, 0),
        view(b, tb, 1),
        c,
        (tc, i(s::OFF + 2), i(s::STRIDES + 4), i(s::STRIDES + 5)),
        bias.map(|bb| view(bb, tbias, 3)),
    )
    .is_ok()
}

/// The helpers defined here, for the JIT's symbol table.
pub(crate) fn symbols() -> Vec<(&'static str, *const u8)> {
    vec![("mlc_matmul", mlc_matmul as *const u8)]
}
