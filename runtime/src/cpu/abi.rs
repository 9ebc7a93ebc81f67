//! The contract between generated CPU code and this runtime: the kernel signature, the table of
//! helper functions kernels call through, and the argument block of the matmul helper.
//!
//! Every kernel is `extern "C" fn(params: *const *mut u8, start: i64, end: i64)`: `params[i]`
//! is the base pointer of the kernel's `i`-th parameter and `params[n]` (one past them) points
//! to a control block of two `i64`s, a status word the kernel sets to non-zero when an index read
//! from data is out of bounds, then the number of threads a library call may use. `[start, end)`
//! is the part of the kernel's outermost parallel loop that a call runs.
//!
//! Kernels never call a symbol: every helper (libm functions, half-float conversions, matmul)
//! is reached through the data symbol [`TABLE_SYMBOL`], an array of [`helpers`]`().len()` code
//! addresses that the loader fills with [`helper_addresses`] before the first call. So a
//! compiled shared object has no undefined symbols, links without a C library, and calls the
//! same helpers as the JIT. The order of [`helpers`] is part of the ABI: append only, and bump
//! [`ABI_VERSION`] on any other change.
// `mlc_matmul` receives raw pointers from generated code; each use has a SAFETY comment.
#![allow(unsafe_code)]

use super::matmul::{self, Gemm, Requant, View};
use crate::kernels::igemm::AddParams;

/// Version of this contract; an artifact records it and a runtime loads only its own.
pub const ABI_VERSION: u32 = 11;

/// The data symbol holding the helper table in generated code.
pub const TABLE_SYMBOL: &str = "mlc_helpers";

/// The kernel entry point type.
pub type KernelFn = extern "C" fn(*const *mut u8, i64, i64);

/// Element types as the matmul argument block encodes them (the code is the index in [`DType::ALL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    Bool,
}

impl DType {
    pub const ALL: [DType; 13] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I16,
        DType::U16,
        DType::I32,
        DType::U32,
        DType::I64,
        DType::U64,
        DType::Bool,
    ];

    /// mlc's short name (`f32`, `bool`): the compiler maps its types by name.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I16 => "i16",
            DType::U16 => "u16",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::I64 => "i64",
            DType::U64 => "u64",
            DType::Bool => "bool",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The code in the argument block.
    pub fn code(self) -> u64 {
        DType::ALL.iter().position(|&d| d == self).unwrap_or(0) as u64
    }

    pub fn from_code(code: u64) -> Option<DType> {
        DType::ALL.get(code as usize).copied()
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }
}

/// A contraction's fused tail, compiled with the kernel that calls the contraction:
/// `f(params, row0, rows, col0, cols)` runs the tail on the block `rows × cols` of the
/// `m×n` result at `(row0, col0)`, once every element of it is final. `params` is the calling
/// kernel's parameter array (its buffers, then the control block).
pub type TileFn = extern "C" fn(*const *mut u8, i64, i64, i64, i64);

/// The activation a contraction applies last.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    None,
    Relu,
    Clip {
        min: f32,
        max: f32,
    },
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    /// GELU, erf form (code 5; ABI 6).
    Gelu,
    /// GELU, tanh form (code 6; ABI 6).
    GeluTanh,
    /// `1 / (1 + exp(-x))` (code 7; ABI 7).
    Sigmoid,
    /// `x · sigmoid(alpha·x)`, `alpha` in the first activation slot (code 8; ABI 7).
    Swish {
        alpha: f32,
    },
}

impl Activation {
    /// The tuned kernels' form of it.
    pub fn kernel(self) -> crate::kernels::gemm::Activation {
        use crate::kernels::gemm::Activation as K;
        match self {
            Activation::None => K::None,
            Activation::Relu => K::Relu,
            Activation::Clip { min, max } => K::Clip { min, max },
            Activation::HardSigmoid { alpha, beta } => K::HardSigmoid { alpha, beta },
            Activation::HardSwish => K::HardSwish,
            Activation::Gelu => K::Gelu,
            Activation::GeluTanh => K::GeluTanh,
            Activation::Sigmoid => K::Sigmoid,
            Activation::Swish { alpha } => K::Swish { alpha },
        }
    }
}

/// The slots of the argument block passed to `mlc_matmul`, in 8-byte words.
pub mod mm_slot {
    pub const A: usize = 0;
    pub const B: usize = 1;
    pub const C: usize = 2;
    pub const BIAS: usize = 3;
    pub const LEN: usize = 4; // +0..4: a, b, c, bias element counts
    pub const OFF: usize = 8; // +0..4: offsets in elements
    pub const M: usize = 12;
    pub const N: usize = 13;
    pub const K: usize = 14;
    pub const STRIDES: usize = 15; // a rs, a cs, b rs, b cs, c rs, c cs, bias rs, bias cs
    pub const DTYPES: usize = 23; // a | b << 8 | c << 16 | bias << 24 | rq mult << 32 | rq scale << 40 | rq zp << 48 (DType codes)
    pub const ACT: usize = 24; // 0 none, 1 relu, 2 clip, 3 hard sigmoid (alpha, beta in ACT_MIN/ACT_MAX), 4 hard swish
    pub const ALPHA: usize = 25; // f64 bits
    pub const BETA: usize = 26;
    pub const ACT_MIN: usize = 27;
    pub const ACT_MAX: usize = 28;
    pub const STATUS: usize = 29; // the executor's control block: status word, threads
    /// The requantization (`mlc_kir::Requant`) of an integer product into a `u8`/`i8` C:
    /// the multiplier's pointer (null: none), element count, offset, row stride, col stride.
    pub const RQ_MULT: usize = 30;
    pub const RQ_SCALE: usize = 35; // +0..3: the scale's pointer, element count, index
    pub const RQ_ZP: usize = 38; // +0..3: the zero point's pointer, element count, index
    /// The fused elementwise tail (`mlc_kir::TileTail`): a [`super::TileFn`] (null: none),
    /// then the argument it takes (the calling kernel's parameter array).
    pub const TAIL_FN: usize = 41;
    pub const TAIL_ARGS: usize = 42;
    /// The requantization's residual add (`mlc_kir::RequantAdd`): the residual's pointer
    /// (null: none), element count and DType codes (its own | its zero point's << 8), then
    /// four scalars as (pointer, element
    /// count, index): the residual's scale and zero point, the sum's scale and zero point.
    pub const RQ_ADD: usize = 43;
    pub const RQ_ADD_SCALARS: usize = 46;
    /// `B` read from a convolution's image (`mlc_kir::Im2col`): 1 when it is (else 0 and the
    /// rest unused), then channels, ih, iw, oh, ow, kh, kw, sh, sw, dh, dw, pad top, pad left.
    pub const IM2COL: usize = 58;
    /// The padding value's buffer (null: zero), its element count (ABI 8).
    pub const IM2COL_FILL: usize = 72;
    /// The requantization's `f32` shift, added after the multiplication (ABI 9): pointer (null:
    /// none), element count, offset, row stride, col stride.
    pub const RQ_SHIFT: usize = 74;
    /// The requantization's byte table (ABI 10): pointer (null: none), element count (256,
    /// of C's type, indexed by `q` for `u8` and `q + 128` for `i8`).
    pub const RQ_TABLE: usize = 79;
    /// The tail's last operation, an activation the runtime applies (ABI 11): once the tile
    /// function has stored a block, the activation (code as in `ACT`; its two parameters as
    /// f64 bits, as `ACT_MIN`/`ACT_MAX`) on the elements it stored there, in the tail's `f32`
    /// output seen as an `m×n` matrix: pointer (null: none), element count, offset, row
    /// stride, col stride.
    pub const TAIL_ACT: usize = 81;
    pub const TAIL_OUT: usize = 84;
    pub const COUNT: usize = 89;
}

/// `Stmt::Matmul`'s entry point: `desc` points to `mm_slot::COUNT` words laid out as
/// [`mm_slot`] says. Never panics across the FFI boundary: bad arguments set the status.
extern "C" fn mlc_matmul(desc: *const u64) {
    use mm_slot as s;
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
    use mm_slot as s;
    let codes = d[s::DTYPES];
    let ty = |shift: u32| DType::from_code((codes >> shift) & 0xff);
    let (Some(ta), Some(tb), Some(tc)) = (ty(0), ty(8), ty(16)) else {
        return false;
    };
    let tbias = ty(24).unwrap_or(DType::F32);
    let len = |j: usize, t: DType| (d[s::LEN + j] as usize).saturating_mul(t.size());
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
    let rq = if d[s::RQ_MULT] == 0 {
        None
    } else {
        match requant_from_desc(d, tc, &overlaps) {
            Some(rq) => Some(rq),
            None => return false,
        }
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
    let act = activation(d[s::ACT], f(s::ACT_MIN) as f32, f(s::ACT_MAX) as f32);
    let g = Gemm {
        m: d[s::M] as usize,
        n: d[s::N] as usize,
        k: d[s::K] as usize,
        alpha: f(s::ALPHA),
        beta: f(s::BETA),
        act,
        threads,
    };
    let cv = (tc, i(s::OFF + 2), i(s::STRIDES + 4), i(s::STRIDES + 5));
    let biasv = bias.map(|bb| view(bb, tbias, 3));
    let (tail_fn, tail_args) = (d[s::TAIL_FN] as usize, d[s::TAIL_ARGS] as usize);
    let tail_act = if d[s::TAIL_OUT] == 0 {
        None
    } else {
        match TailAct::from_desc(d, g.m, g.n) {
            Some(t) => Some(t),
            None => return false,
        }
    };
    let tail = move |r0: usize, rows: usize, c0: usize, cols: usize| {
        // SAFETY: a non-null `TAIL_FN` is the address of the tile function generated with
        // the calling kernel, whose signature is `TileFn`.
        let f: TileFn = unsafe { std::mem::transmute::<usize, TileFn>(tail_fn) };
        let args = tail_args as *const *mut u8;
        f(args, r0 as i64, rows as i64, c0 as i64, cols as i64);
        if let Some(t) = &tail_act {
            t.apply(r0..r0 + rows, c0..c0 + cols);
        }
    };
    let hook = (tail_fn != 0 && tail_args != 0).then_some(matmul::TileHook(&tail));
    if d[s::IM2COL] == 1 {
        let Some(img) = image_from_desc(d, b, tb, &overlaps) else {
            return false;
        };
        return matmul::run_image(&g, view(a, ta, 0), img, c, cv, biasv, hook, rq.as_ref()).is_ok();
    }
    match rq {
        Some(rq) if hook.is_none() => {
            matmul::run_requant(&g, view(a, ta, 0), view(b, tb, 1), c, cv, biasv, &rq)
        }
        Some(_) => return false,
        None => matmul::run_then(&g, view(a, ta, 0), view(b, tb, 1), c, cv, biasv, hook),
    }
    .is_ok()
}

/// The activation of code `code` (as `mm_slot::ACT`) with its parameters.
fn activation(code: u64, p1: f32, p2: f32) -> Activation {
    match code {
        1 => Activation::Relu,
        2 => Activation::Clip { min: p1, max: p2 },
        3 => Activation::HardSigmoid {
            alpha: p1,
            beta: p2,
        },
        4 => Activation::HardSwish,
        5 => Activation::Gelu,
        6 => Activation::GeluTanh,
        7 => Activation::Sigmoid,
        8 => Activation::Swish { alpha: p1 },
        _ => Activation::None,
    }
}

/// Whether the view `out[off + r·rs + c·cs]` of an `m×n` result, `(len, off, rs, cs)` with
/// `len` the buffer's element count, lies inside the buffer and reaches each element once: what
/// `mm_slot::TAIL_OUT` must describe (the compiler asks before it emits one; the runtime
/// refuses the call otherwise).
pub fn tail_view_ok((m, n): (usize, usize), (len, off, rs, cs): (i64, i64, i64, i64)) -> bool {
    let ok = || -> Option<bool> {
        let u = |v: i64| usize::try_from(v).ok();
        let (len, off, rs, cs) = (u(len)?, u(off)?, u(rs)?, u(cs)?);
        if m == 0 || n == 0 {
            return Some(false);
        }
        let last = off
            .checked_add((m - 1).checked_mul(rs)?)?
            .checked_add((n - 1).checked_mul(cs)?)?;
        // One-to-one: along one dimension the elements step by at least one, and the other
        // dimension's step clears a whole run of them.
        let below = |a: usize, k: usize, b: usize| a.checked_mul(k).is_some_and(|x| x < b);
        let distinct = (m == 1 || rs > 0)
            && (n == 1 || cs > 0)
            && (m == 1 || n == 1 || below(cs, n - 1, rs) || below(rs, m - 1, cs));
        Some(last < len && distinct)
    };
    ok().unwrap_or(false)
}

/// A tail's last activation, applied by the runtime to each block the tile function stored
/// (`mm_slot::TAIL_ACT`): element `(r, c)` of the block is `out[off + r·rs + c·cs]`.
struct TailAct {
    act: crate::kernels::gemm::Activation,
    out: *mut f32,
    off: usize,
    rs: usize,
    cs: usize,
    isa: crate::kernels::Isa,
}

// SAFETY: the blocks the contraction hands its tail are disjoint, and the view is checked
// one-to-one (`from_desc`): concurrent calls write disjoint elements.
unsafe impl Sync for TailAct {}
// SAFETY: as above.
unsafe impl Send for TailAct {}

impl TailAct {
    /// The activation and its output view for an `m×n` result, `None` when the view is not
    /// inside its buffer or reaches an element twice.
    fn from_desc(d: &[u64], m: usize, n: usize) -> Option<TailAct> {
        use mm_slot as s;
        let f = |i: usize| f64::from_bits(d[i]) as f32;
        let act = activation(d[s::TAIL_ACT], f(s::TAIL_ACT + 1), f(s::TAIL_ACT + 2));
        let w = |i: usize| d[s::TAIL_OUT + i] as i64;
        let view = (w(1), w(2), w(3), w(4));
        if !tail_view_ok((m, n), view) || act == Activation::None {
            return None;
        }
        // Non-negative: checked just above.
        let (off, rs, cs) = (view.1 as usize, view.2 as usize, view.3 as usize);
        Some(TailAct {
            act: act.kernel(),
            out: d[s::TAIL_OUT] as *mut f32,
            off,
            rs,
            cs,
            isa: crate::kernels::Isa::detect(),
        })
    }

    /// The activation on the block `rows × cols`, a run along C's contiguous dimension at a
    /// time.
    fn apply(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
        use crate::kernels::gemm::activate_slice;
        let at = |r: usize, c: usize| self.off + r * self.rs + c * self.cs;
        // SAFETY: every element of the `m×n` view lies in the buffer and is reached once
        // (`from_desc`); the block's elements are this call's alone (the contraction's blocks
        // are disjoint), and the tile function that stored them has returned.
        unsafe {
            if self.cs == 1 || cols.len() == 1 {
                for r in rows {
                    let p = self.out.add(at(r, cols.start));
                    let run = if self.cs == 1 { cols.len() } else { 1 };
                    activate_slice(self.act, std::slice::from_raw_parts_mut(p, run), self.isa);
                }
            } else if self.rs == 1 || rows.len() == 1 {
                for c in cols {
                    let p = self.out.add(at(rows.start, c));
                    let run = if self.rs == 1 { rows.len() } else { 1 };
                    activate_slice(self.act, std::slice::from_raw_parts_mut(p, run), self.isa);
                }
            } else {
                for r in rows {
                    for c in cols.clone() {
                        let p = self.out.add(at(r, c));
                        *p = self.act.apply(*p);
                    }
                }
            }
        }
    }
}

/// `B` as a convolution's image (`IM2COL` set): the geometry and the fill's bytes, `None`
/// when the fill is not one element of B's type `tb` apart from C.
fn image_from_desc<'a>(
    d: &[u64],
    b: &'a [u8],
    tb: DType,
    overlaps: &dyn Fn(*const u8, usize) -> bool,
) -> Option<matmul::Image<'a>> {
    use mm_slot as s;
    let w = |i: usize| d[s::IM2COL + 1 + i] as usize;
    let geom = matmul::Im2col {
        channels: w(0),
        ih: w(1),
        iw: w(2),
        oh: w(3),
        ow: w(4),
        kh: w(5),
        kw: w(6),
        sh: w(7),
        sw: w(8),
        dh: w(9),
        dw: w(10),
        pt: w(11),
        pl: w(12),
    };
    let mut fill = [0u8; 8];
    let (pf, nf) = (
        d[s::IM2COL_FILL] as *const u8,
        d[s::IM2COL_FILL + 1] as usize,
    );
    if !pf.is_null() {
        let size = tb.size();
        if nf == 0 || size > 8 || overlaps(pf, size) {
            return None;
        }
        // SAFETY: a kernel parameter buffer of `nf ≥ 1` elements of B's type (checked by the
        // executor before any call), only read.
        fill[..size].copy_from_slice(unsafe { std::slice::from_raw_parts(pf, size) });
    }
    Some(matmul::Image {
        bytes: b,
        dtype: tb,
        offset: d[s::OFF + 1] as i64,
        geom,
        fill,
    })
}

/// The requantization operands of a descriptor whose `RQ_MULT` pointer is set: `None` when
/// their types are not `f32` multipliers and scale and a zero point of C's type `tc`, an index
/// is outside its buffer, or one overlaps C.
fn requant_from_desc<'a>(
    d: &[u64],
    tc: DType,
    overlaps: &dyn Fn(*const u8, usize) -> bool,
) -> Option<Requant<'a>> {
    use mm_slot as s;
    let codes = d[s::DTYPES];
    let ty = |shift: u32| DType::from_code((codes >> shift) & 0xff);
    if ty(32)? != DType::F32 || ty(40)? != DType::F32 || ty(48)? != tc {
        return None;
    }
    // One element of a buffer (pointer, element count, index slots from `j`), as bytes.
    let elem = |j: usize, t: DType| -> Option<&'a [u8]> {
        let (p, len, at) = (d[j] as *const u8, d[j + 1] as usize, d[j + 2] as i64);
        if p.is_null() || at < 0 || at as usize >= len || overlaps(p, len.saturating_mul(t.size()))
        {
            return None;
        }
        // SAFETY: `p` is a kernel parameter buffer of `len` elements (checked by the
        // executor before any call), only read, and not overlapping C (checked above).
        Some(unsafe { std::slice::from_raw_parts(p.add(at as usize * t.size()), t.size()) })
    };
    let scale = elem(s::RQ_SCALE, DType::F32)?;
    let zp = elem(s::RQ_ZP, tc)?;
    let scale = f32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]);
    let zero_point = if tc == DType::I8 {
        zp[0] as i8 as i32
    } else {
        zp[0] as i32
    };
    // An `f32` view (pointer, element count, offset, row stride, col stride from `j`).
    let f32_view = |j: usize| -> Option<View<'a>> {
        let (p, l) = (d[j] as *const u8, (d[j + 1] as usize).saturating_mul(4));
        if p.is_null() || overlaps(p, l) {
            return None;
        }
        // SAFETY: as for the scale: a read-only parameter buffer that does not overlap C.
        let bytes = unsafe { std::slice::from_raw_parts(p, l) };
        Some(View {
            bytes,
            dtype: DType::F32,
            offset: d[j + 2] as i64,
            row_stride: d[j + 3] as i64,
            col_stride: d[j + 4] as i64,
        })
    };
    let mult = f32_view(s::RQ_MULT)?;
    let shift = if d[s::RQ_SHIFT] == 0 {
        None
    } else {
        Some(f32_view(s::RQ_SHIFT)?)
    };
    let add = if d[s::RQ_ADD] == 0 {
        None
    } else {
        let lty = DType::from_code(d[s::RQ_ADD + 2] & 0xff)?;
        let rty = DType::from_code((d[s::RQ_ADD + 2] >> 8) & 0xff)?;
        let ok = match lty {
            DType::U8 | DType::I8 => rty == lty,
            DType::F32 => matches!(rty, DType::U8 | DType::I8),
            _ => false,
        };
        if !ok {
            return None;
        }
        let pr = d[s::RQ_ADD] as *const u8;
        let lr = (d[s::RQ_ADD + 1] as usize).saturating_mul(lty.size());
        if overlaps(pr, lr) {
            return None;
        }
        // SAFETY: a read-only kernel parameter buffer of `lr` bytes (checked by the executor
        // before any call) that does not overlap C (checked above).
        let r = unsafe { std::slice::from_raw_parts(pr, lr) };
        let at = |j: usize, t: DType| elem(s::RQ_ADD_SCALARS + 3 * j, t);
        let f = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let z = |b: &[u8], t: DType| {
            if t == DType::I8 {
                b[0] as i8 as f32
            } else {
                b[0] as f32
            }
        };
        let p = AddParams {
            r_f32: lty == DType::F32,
            r_signed: rty == DType::I8,
            r_scale: f(at(0, DType::F32)?),
            r_zp: z(at(1, rty)?, rty),
            out_scale: f(at(2, DType::F32)?),
            out_zp: z(at(3, tc)?, tc),
        };
        Some((r, p))
    };
    let table = if d[s::RQ_TABLE] == 0 {
        None
    } else {
        let p = d[s::RQ_TABLE] as *const u8;
        if d[s::RQ_TABLE + 1] != 256 || overlaps(p, 256) {
            return None;
        }
        // SAFETY: a read-only kernel parameter buffer of 256 one-byte elements (checked by
        // the executor before any call) that does not overlap C (checked above).
        Some(unsafe { &*p.cast::<[u8; 256]>() })
    };
    Some(Requant {
        mult,
        shift,
        scale,
        zero_point,
        add,
        table,
    })
}

/// The name of the matmul helper.
pub const MATMUL: &str = "mlc_matmul";

// ---- Depthwise convolution (`Stmt::Depthwise`) ----------------------------------------

/// The name of the depthwise convolution helper.
pub const DEPTHWISE: &str = "mlc_depthwise";

/// The slots of the argument block passed to `mlc_depthwise`, in 8-byte words; the block is
/// `EP + 3·(word EP_LEN)` words long (ABI 9).
pub mod dw_slot {
    pub const X: usize = 0;
    pub const W: usize = 1;
    /// Null when there is no bias.
    pub const BIAS: usize = 2;
    pub const OUT: usize = 3;
    pub const LEN: usize = 4; // +0..4: x, w, bias, out element counts
    /// batch, channels, mult, ih, iw, oh, ow, kh, kw, sh, sw, dh, dw, pad top, pad left.
    pub const GEOM: usize = 8;
    pub const STATUS: usize = 23; // the executor's control block: status word, threads
    pub const EP_LEN: usize = 24;
    /// The input's type ([`super::dw_type`]: f32, u8 or i8) and the output's (f32, i32, u8,
    /// i8).
    pub const X_TYPE: usize = 25;
    pub const OUT_TYPE: usize = 26;
    /// The `f32` bits of an 8-bit input's zero point.
    pub const X_ZERO: usize = 27;
    /// Per epilogue operation three words: `kind | op << 8 | first << 16 | channel << 17`
    /// (kind 0 `x = x op a`, 1 save, 2 `x = x op s`, 3 sigmoid, 4 round, 5 narrow to the type
    /// in `op`, 6 a 256-entry table (ABI 10; `first`: indexed by `x + 128`; its `f32`s passed
    /// as a per-channel argument's); op 0 add, 1 sub, 2 mul, 3 div, 4 max, 5 min; `first`: the argument or saved
    /// value is the left operand; `channel`: the argument is per channel), then the argument's
    /// `f32` bits (or, per channel, the address of its `f32`s), then the number of those.
    pub const EP: usize = 28;
}

/// The type codes of `dw_slot::X_TYPE`, `OUT_TYPE` and narrowing.
pub mod dw_type {
    pub const F32: u64 = 0;
    pub const U8: u64 = 1;
    pub const I8: u64 = 2;
    pub const I32: u64 = 3;
}

/// `Stmt::Depthwise`'s entry point: `desc` points to the words [`dw_slot`] lays out. Never
/// panics across the FFI boundary: bad arguments set the status.
extern "C" fn mlc_depthwise(desc: *const u64) {
    use dw_slot as s;
    // SAFETY: generated code passes a stack block of at least `EP` words.
    let head = unsafe { std::slice::from_raw_parts(desc, s::EP) };
    let status = head[s::STATUS] as *mut i64;
    // SAFETY: the status pointer is the executor's control block (status word, threads).
    let threads = unsafe { *status.add(1) }.max(1) as usize;
    let n_ep = head[s::EP_LEN] as usize;
    // SAFETY: the block holds `EP + 3·EP_LEN` words (generated code sizes it so).
    let d = unsafe { std::slice::from_raw_parts(desc, s::EP + 3 * n_ep) };
    let ok = std::panic::catch_unwind(|| depthwise_from_desc(d, n_ep, threads)).unwrap_or(false);
    if !ok {
        // SAFETY: the status word is the executor's `i64`, alive during the call.
        unsafe { *status = 1 };
    }
}

fn depthwise_from_desc(d: &[u64], n_ep: usize, threads: usize) -> bool {
    use crate::kernels::depthwise::{self as dwk, Arg, BinKind, EpOp, Input, Int, Output, Step};
    use dw_slot as s;
    let g = |i: usize| d[s::GEOM + i] as usize;
    let shape = dwk::Shape::new(
        g(0),
        g(1),
        g(2),
        [g(3), g(4)],
        [g(5), g(6)],
        [g(7), g(8)],
        [g(9), g(10)],
        [g(11), g(12)],
        [g(13), g(14)],
    );
    let (x_ty, out_ty) = (d[s::X_TYPE], d[s::OUT_TYPE]);
    let size = |t: u64| match t {
        dw_type::F32 | dw_type::I32 => 4usize,
        _ => 1,
    };
    if x_ty > dw_type::I8 || out_ty > dw_type::I32 {
        return false;
    }
    let len = |j: usize| d[s::LEN + j] as usize;
    let bytes = |j: usize, t: u64| len(j).saturating_mul(size(t));
    let (px, pw, pb, po) = (
        d[s::X] as *const u8,
        d[s::W] as *const f32,
        d[s::BIAS] as *const f32,
        d[s::OUT] as *mut u8,
    );
    if px.is_null() || pw.is_null() || po.is_null() {
        return false;
    }
    // The output is written; it must not overlap an operand (lowering never makes it).
    let out_bytes = bytes(3, out_ty);
    let overlaps = |p: *const u8, l: usize| {
        let (a0, a1) = (p as usize, p as usize + l);
        let (c0, c1) = (po as usize, po as usize + out_bytes);
        a0 < c1 && c0 < a1
    };
    if overlaps(px, bytes(0, x_ty))
        || overlaps(pw.cast(), bytes(1, dw_type::F32))
        || (!pb.is_null() && overlaps(pb.cast(), bytes(2, dw_type::F32)))
    {
        return false;
    }
    let mut steps = Vec::with_capacity(n_ep);
    for i in 0..n_ep {
        let (code, arg, arg_len) = (d[s::EP + 3 * i], d[s::EP + 3 * i + 1], d[s::EP + 3 * i + 2]);
        let op = match (code >> 8) & 0xff {
            0 => BinKind::Add,
            1 => BinKind::Sub,
            2 => BinKind::Mul,
            3 => BinKind::Div,
            4 => BinKind::Max,
            5 => BinKind::Min,
            _ => BinKind::Add,
        };
        let first = (code >> 16) & 1 == 1;
        let arg = if (code >> 17) & 1 == 1 {
            let p = arg as *const f32;
            if p.is_null() || overlaps(p.cast(), (arg_len as usize).saturating_mul(4)) {
                return false;
            }
            // SAFETY: generated code passes a parameter buffer of `f32` and its element count
            // (checked by the executor before any call); it is only read and the output
            // overlaps it nowhere (above).
            Arg::Channel(unsafe { std::slice::from_raw_parts(p, arg_len as usize) })
        } else {
            Arg::Lit(f32::from_bits(arg as u32))
        };
        steps.push(match code & 0xff {
            0 => Step::Bin {
                op,
                arg,
                arg_first: first,
            },
            1 => Step::Save,
            2 => Step::Combine {
                op,
                saved_first: first,
            },
            3 => Step::Sigmoid,
            4 => Step::Round,
            5 => Step::Narrow(match (code >> 8) & 0xff {
                dw_type::U8 => Int::U8,
                dw_type::I8 => Int::I8,
                dw_type::I32 => Int::I32,
                _ => return false,
            }),
            // The table travels as a per-channel operand would: pointer and element count.
            6 => match arg {
                Arg::Channel(t) => match <&[f32; 256]>::try_from(t) {
                    Ok(table) => Step::Table {
                        table,
                        signed: first,
                    },
                    Err(_) => return false,
                },
                Arg::Lit(_) => return false,
            },
            _ => return false,
        });
    }
    // SAFETY: the pointers are the kernel's parameter buffers, of the types the block names,
    // each holding at least its parameter's `len` elements (checked by the executor before
    // any call); x, w and the bias are only read, and the output, which is written, overlaps
    // none of them (above).
    let (w, out) = unsafe {
        (
            std::slice::from_raw_parts(pw, len(1)),
            std::slice::from_raw_parts_mut(po, out_bytes),
        )
    };
    let bias = if pb.is_null() {
        None
    } else {
        // SAFETY: as for w.
        Some(unsafe { std::slice::from_raw_parts(pb, len(2)) })
    };
    let isa = crate::kernels::Isa::detect();
    // All-f32 with constant operands: the fused kernels of `run`.
    let plain: Option<Vec<EpOp>> = steps
        .iter()
        .map(|st| match *st {
            Step::Bin {
                op,
                arg: Arg::Lit(arg),
                arg_first,
            } => Some(EpOp::Bin { op, arg, arg_first }),
            Step::Save => Some(EpOp::Save),
            Step::Combine { op, saved_first } => Some(EpOp::Combine { op, saved_first }),
            Step::Sigmoid => Some(EpOp::Sigmoid),
            _ => None,
        })
        .collect();
    // SAFETY (for the casts below): the buffers are of the types the block names (the
    // executor allocates each parameter with its type's alignment).
    let as_f32 =
        |b: &[u8], n: usize| unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), n) };
    // SAFETY: as above, for `x` of `len(0)` elements of its type.
    let xb = unsafe { std::slice::from_raw_parts(px, bytes(0, x_ty)) };
    let zero = f32::from_bits(d[s::X_ZERO] as u32);
    let x = match x_ty {
        dw_type::F32 => Input::F32(as_f32(xb, len(0))),
        dw_type::U8 => Input::U8 { x: xb, zero },
        // SAFETY: i8 and u8 have one layout.
        _ => Input::I8 {
            x: unsafe { std::slice::from_raw_parts(px.cast::<i8>(), len(0)) },
            zero,
        },
    };
    let n_out = len(3);
    if let (Input::F32(x), dw_type::F32, Some(ep)) = (x, out_ty, &plain) {
        // SAFETY: an f32 output of `n_out` elements.
        let out = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), n_out) };
        return dwk::run(&shape, x, w, bias, out, ep, threads, isa).is_ok();
    }
    // SAFETY: the output is of `out_ty`, `n_out` elements.
    let out = unsafe {
        match out_ty {
            dw_type::F32 => Output::F32(std::slice::from_raw_parts_mut(
                out.as_mut_ptr().cast(),
                n_out,
            )),
            dw_type::U8 => Output::U8(out),
            dw_type::I8 => Output::I8(std::slice::from_raw_parts_mut(
                out.as_mut_ptr().cast(),
                n_out,
            )),
            _ => Output::I32(std::slice::from_raw_parts_mut(
                out.as_mut_ptr().cast(),
                n_out,
            )),
        }
    };
    // The byte path's plan (the weights packed, the blocks laid out) once per executor.
    let (zero_bits, signed) = match x {
        Input::U8 { zero, .. } => (zero.to_bits(), 0),
        Input::I8 { zero, .. } => (zero.to_bits(), 1),
        Input::F32(_) => (0, 2),
    };
    let key = [
        shape.in_channels,
        shape.mult,
        shape.in_hw[0],
        shape.in_hw[1],
        shape.out_hw[0],
        shape.out_hw[1],
        shape.kernel[0],
        shape.kernel[1],
        shape.stride[0],
        shape.stride[1],
        shape.dilation[0],
        shape.dilation[1],
        shape.pad[0],
        shape.pad[1],
        bias.map_or(0, |b| b.as_ptr() as usize),
    ]
    .map(|v| v as u64);
    let key = [&key[..], &[u64::from(zero_bits), signed]].concat();
    // Cached only when the bias is a weight too: the plan holds its values.
    let constant_bias = bias.is_none_or(super::exec::is_weight);
    let plan = if isa == crate::kernels::Isa::Avx512 && signed < 2 && constant_bias {
        super::exec::derived_weight(w, &key, || dwk::BytePlan::new(&shape, &x, w, bias))
    } else if signed < 2 {
        // Made for this call.
        None
    } else {
        Some(None)
    };
    dwk::run_mixed_planned(
        &shape,
        x,
        w,
        bias,
        out,
        &steps,
        threads,
        isa,
        plan.as_ref().map(|p| p.as_deref()),
    )
    .is_ok()
}

// ---- end depthwise ---------------------------------------------------------------------

// ---- Softmax (`Stmt::Softmax`) ---------------------------------------------------------

/// The name of the softmax helper.
pub const SOFTMAX: &str = "mlc_softmax";

/// The slots of the argument block passed to `mlc_softmax`, in 8-byte words; the block is
/// `DIMS + 2·(word NDIMS)` words long.
pub mod sm_slot {
    pub const X: usize = 0;
    pub const OUT: usize = 1;
    /// Null when there is no mask.
    pub const MASK: usize = 2;
    pub const LEN: usize = 3; // +0..3: x, out, mask element counts
    pub const ROWS: usize = 6;
    pub const ROW_LEN: usize = 7;
    /// The pre-scale: `1 << 32 | f32 bits`, or 0 when there is none.
    pub const SCALE: usize = 8;
    pub const STATUS: usize = 9; // the executor's control block: status word, threads
    pub const NDIMS: usize = 10;
    /// Per mask row dimension, outermost first, two words: extent, stride.
    pub const DIMS: usize = 11;
}

/// `Stmt::Softmax`'s entry point: `desc` points to the words [`sm_slot`] lays out. Never
/// panics across the FFI boundary: bad arguments set the status.
extern "C" fn mlc_softmax(desc: *const u64) {
    use sm_slot as s;
    // SAFETY: generated code passes a stack block of at least `DIMS` words.
    let head = unsafe { std::slice::from_raw_parts(desc, s::DIMS) };
    let status = head[s::STATUS] as *mut i64;
    // SAFETY: the status pointer is the executor's control block (status word, threads).
    let threads = unsafe { *status.add(1) }.max(1) as usize;
    let nd = head[s::NDIMS] as usize;
    // SAFETY: the block holds `DIMS + 2·NDIMS` words (generated code sizes it so).
    let d = unsafe { std::slice::from_raw_parts(desc, s::DIMS + 2 * nd) };
    let ok = std::panic::catch_unwind(|| softmax_from_desc(d, nd, threads)).unwrap_or(false);
    if !ok {
        // SAFETY: the status word is the executor's `i64`, alive during the call.
        unsafe { *status = 1 };
    }
}

fn softmax_from_desc(d: &[u64], nd: usize, threads: usize) -> bool {
    use crate::kernels::softmax::{self as smk, Mask};
    use sm_slot as s;
    let len = |j: usize| d[s::LEN + j] as usize;
    let (px, po, pm) = (
        d[s::X] as *const f32,
        d[s::OUT] as *mut f32,
        d[s::MASK] as *const f32,
    );
    if px.is_null() || po.is_null() {
        return false;
    }
    // The output is written; it must not overlap an operand (lowering never makes it).
    let overlaps = |p: *const f32, l: usize| {
        let (a0, a1) = (p as usize, p as usize + l.saturating_mul(4));
        let (c0, c1) = (po as usize, po as usize + len(1).saturating_mul(4));
        a0 < c1 && c0 < a1
    };
    if overlaps(px, len(0)) || (!pm.is_null() && overlaps(pm, len(2))) {
        return false;
    }
    let dims: Vec<(usize, usize)> = (0..nd)
        .map(|i| (d[s::DIMS + 2 * i] as usize, d[s::DIMS + 2 * i + 1] as usize))
        .collect();
    // SAFETY: the pointers are the kernel's parameter buffers of `f32`, each holding at least
    // its parameter's `len` elements (checked by the executor before any call); x and the
    // mask are only read, and the output, which is written, overlaps neither (above).
    let (x, out) = unsafe {
        (
            std::slice::from_raw_parts(px, len(0)),
            std::slice::from_raw_parts_mut(po, len(1)),
        )
    };
    let mask = if pm.is_null() {
        None
    } else {
        Some(Mask {
            // SAFETY: as for x.
            data: unsafe { std::slice::from_raw_parts(pm, len(2)) },
            dims: &dims,
        })
    };
    let scale = (d[s::SCALE] >> 32 == 1).then(|| f32::from_bits(d[s::SCALE] as u32));
    let (rows, row_len) = (d[s::ROWS] as usize, d[s::ROW_LEN] as usize);
    let isa = crate::kernels::Isa::detect();
    smk::run(x, out, rows, row_len, scale, mask, threads, isa).is_ok()
}

// ---- end softmax -----------------------------------------------------------------------

/// Every helper kernels may call, in table order (the index is what generated code loads).
pub fn helpers() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = super::helpers::names().collect();
    v.push(MATMUL);
    v.push(DEPTHWISE);
    v.push(SOFTMAX);
    v
}

/// The index of helper `name` in the table.
pub fn helper_index(name: &str) -> Option<usize> {
    helpers().iter().position(|h| *h == name)
}

/// The code addresses of [`helpers`], in order: what the loader writes into the table.
pub fn helper_addresses() -> Vec<usize> {
    let mut v = super::helpers::addresses();
    v.push(mlc_matmul as *const () as usize);
    v.push(mlc_depthwise as *const () as usize);
    v.push(mlc_softmax as *const () as usize);
    v
}

#[cfg(test)]
mod tail_act_tests {
    use super::*;

    /// A descriptor with the tail activation `code` over `(len, off, rs, cs)` of a live
    /// buffer.
    fn desc(buf: &mut [f32], code: u64, (len, off, rs, cs): (i64, i64, i64, i64)) -> Vec<u64> {
        let mut d = vec![0u64; mm_slot::COUNT];
        d[mm_slot::TAIL_ACT] = code;
        d[mm_slot::TAIL_OUT] = buf.as_mut_ptr() as u64;
        for (i, v) in [len, off, rs, cs].into_iter().enumerate() {
            d[mm_slot::TAIL_OUT + 1 + i] = v as u64;
        }
        d
    }

    /// Views outside the buffer, reaching an element twice, or with negative strides are
    /// refused (the call then fails); a valid one activates exactly the block's elements.
    #[test]
    fn the_tail_activation_checks_its_view() {
        let mut buf = vec![-1.0f32; 12];
        let (m, n) = (3, 4);
        for bad in [
            (12, 1, 4, 1),  // one past the end
            (11, 0, 4, 1),  // a short buffer
            (12, 0, 2, 1),  // rows overlapping
            (12, 0, 0, 1),  // every row the same
            (12, 0, -4, 1), // backwards
        ] {
            let d = desc(&mut buf, 1, bad);
            assert!(TailAct::from_desc(&d, m, n).is_none(), "{bad:?}");
        }
        assert!(TailAct::from_desc(&desc(&mut buf, 0, (12, 0, 4, 1)), m, n).is_none());
        for view in [(12, 0, 4, 1), (12, 0, 1, 3)] {
            buf.iter_mut().for_each(|v| *v = -1.0);
            let d = desc(&mut buf, 1, view);
            let t = TailAct::from_desc(&d, m, n).expect("a valid view");
            t.apply(1..3, 1..3);
            let at = |r: i64, c: i64| (view.1 + r * view.2 + c * view.3) as usize;
            for r in 0..3 {
                for c in 0..4 {
                    let inside = (1..3).contains(&r) && (1..3).contains(&c);
                    let want = if inside { 0.0 } else { -1.0 };
                    assert_eq!(buf[at(r, c)], want, "{view:?} ({r}, {c})");
                }
            }
        }
    }
}
