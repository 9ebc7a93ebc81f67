//! Depthwise convolution with 8-bit inputs, integer outputs or per-channel epilogues: the
//! quantized layers of QDQ MobileNets and EfficientNets (`Stmt::Depthwise` with `x_zero`, an
//! `i32`/`u8`/`i8` output, [`Step::Round`], [`Step::Narrow`] or [`Arg::Channel`]).
//!
//! On AVX-512 with VNNI and VBMI, 8-bit inputs with integer `i8` weights convolve as bytes
//! ([`super::vnni`]; a QDQ requantization then runs on the accumulators as they leave the dot
//! products). Otherwise the f32 kernels of [`super::run`] do the convolution; this runs them
//! on a chunk of channels at a time, converting the chunk's 8-bit input planes (less the zero point) into a
//! scratch buffer first and applying the epilogue and the output conversion to the chunk's
//! results after, so the f32 copies of the input and the accumulators stay in the core's
//! cache instead of going through memory (one pass over `x` and one over `out`). Before, a
//! QDQ depthwise layer ran as four kernels over whole tensors: input less zero point, f32
//! convolution, accumulator to i32, requantization.
//!
//! Results are exactly the evaluator's: with 8-bit inputs and integral weights every product
//! and partial sum is an integer below 2^24 (see `Stmt::Depthwise`), and the epilogue runs
//! operation by operation in f32 (no fused multiply-add; `Sigmoid` is the polynomial `exp` of
//! [`crate::kernels::gemm::act::sigmoid`] that the other kernels use, in vectors).
//!
//! ```
//! use mlc_runtime::kernels::depthwise::{run_mixed, Arg, BinKind, Input, Output, Shape, Step};
//! use mlc_runtime::kernels::Isa;
//!
//! // Two 1×2 planes, 1×1 weights 2 and 3, input zero point 1, a per-channel shift.
//! let s = Shape::new(1, 2, 1, [1, 2], [1, 2], [1, 1], [1, 1], [1, 1], [0, 0]);
//! let x = [1u8, 2, 3, 4];
//! let shift = [0.5f32, -0.5];
//! let ep = [Step::Bin { op: BinKind::Add, arg: Arg::Channel(&shift), arg_first: false }, Step::Round];
//! let mut y = [0u8; 4];
//! run_mixed(&s, Input::U8 { x: &x, zero: 1.0 }, &[2.0, 3.0], None, Output::U8(&mut y), &ep, 1,
//!           Isa::detect()).unwrap();
//! assert_eq!(y, [0, 2, 6, 8]); // round(0.5) = 0, round(2.5) = 2, round(5.5) = 6, round(8.5) = 8
//! ```

#![allow(unsafe_code)]

use super::vnni::Dest;
use super::{BinKind, BytePlan, DwError, Isa, Shape};

/// The input of [`run_mixed`]: `f32`, or 8-bit read as `f32(x) - zero`.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    F32(&'a [f32]),
    U8 { x: &'a [u8], zero: f32 },
    I8 { x: &'a [i8], zero: f32 },
}

impl Input<'_> {
    fn len(&self) -> usize {
        match self {
            Input::F32(x) => x.len(),
            Input::U8 { x, .. } => x.len(),
            Input::I8 { x, .. } => x.len(),
        }
    }
}

/// The output of [`run_mixed`]: the epilogue's `f32` value, or that value converted like
/// Rust's `as` (saturating truncation, NaN as 0).
#[derive(Debug)]
pub enum Output<'a> {
    F32(&'a mut [f32]),
    I32(&'a mut [i32]),
    U8(&'a mut [u8]),
    I8(&'a mut [i8]),
}

impl Output<'_> {
    fn len(&self) -> usize {
        match self {
            Output::F32(y) => y.len(),
            Output::I32(y) => y.len(),
            Output::U8(y) => y.len(),
            Output::I8(y) => y.len(),
        }
    }
}

/// An epilogue operand: a constant, or one value per output channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg<'a> {
    Lit(f32),
    /// Element `m` for output channel `m` (at least `in_channels·mult` elements).
    Channel(&'a [f32]),
}

/// The integer types an epilogue value may pass through ([`Step::Narrow`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int {
    U8,
    I8,
    I32,
}

impl Int {
    /// `f32(cast<T>(v))`, the cast saturating with NaN as 0.
    pub fn narrow(self, v: f32) -> f32 {
        match self {
            Int::U8 => v as u8 as f32,
            Int::I8 => v as i8 as f32,
            Int::I32 => v as i32 as f32,
        }
    }

    /// The type's range as f32 (`i32`'s ends rounded to f32, as the cast's results are).
    fn range(self) -> (f32, f32) {
        match self {
            Int::U8 => (0.0, 255.0),
            Int::I8 => (-128.0, 127.0),
            Int::I32 => (-2147483648.0, 2147483648.0),
        }
    }
}

/// [`Int::narrow`] for the range `[lo, hi]`, written with comparisons and a truncation so that
/// it vectorizes (LLVM scalarized the saturating casts): NaN and values below `lo`'s
/// truncation give `lo` or 0, values past `hi` give `hi`, others their truncation (`+ 0.0`
/// turns a truncated `-0.0` into the `0.0` the integer converts back to).
#[inline(always)]
fn narrow(v: f32, lo: f32, hi: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v.trunc() + 0.0
    }
}

/// One step of the epilogue: [`super::EpOp`]'s steps with per-channel operands, rounding and
/// narrowing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step<'a> {
    /// `x = x op arg`, or `arg op x` when `arg_first`.
    Bin {
        op: BinKind,
        arg: Arg<'a>,
        arg_first: bool,
    },
    /// `s = x`.
    Save,
    /// `x = x op s`, or `s op x` when `saved_first`.
    Combine { op: BinKind, saved_first: bool },
    /// `x = 1 / (1 + exp(-x))`.
    Sigmoid,
    /// `x = round_half_even(x)`.
    Round,
    /// `x = f32(cast<T>(x))`.
    Narrow(Int),
    /// `x = table[x]` (`table[x + 128]` when `signed`), after a `Narrow` to `u8` (`i8`): a
    /// function of that byte computed at compile time. An index outside the table (no narrowing
    /// before) is clamped into it.
    Table { table: &'a [f32; 256], signed: bool },
}

/// Element `x` (`x + 128` when `signed`) of `table`, the index clamped into it.
#[inline(always)]
fn lookup(table: &[f32; 256], signed: bool, x: f32) -> f32 {
    let i = x as i32 + if signed { 128 } else { 0 };
    table[i.clamp(0, 255) as usize]
}

/// Scratch bytes a chunk of channels may take (input, accumulators, saved values): well
/// inside a 1 MiB L2 with the weights and the output beside it.
const SCRATCH: usize = 192 << 10;

/// Elements of a plane the epilogue and the store take at a time (4 KiB of f32).
const BLOCK: usize = 1024;

/// A pointer to the output shared by the tasks, each writing its own planes.
#[derive(Clone, Copy)]
struct OutPtr(*mut u8);
// SAFETY: the tasks write disjoint planes through it (see `run_mixed`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum OutKind {
    F32,
    I32,
    U8,
    I8,
}

impl OutKind {
    fn size(self) -> usize {
        match self {
            OutKind::F32 | OutKind::I32 => 4,
            OutKind::U8 | OutKind::I8 => 1,
        }
    }
}

/// `out = cast(ep(depthwise(x, w) + bias))` for the geometry `s` (see the module docs), on up
/// to `threads` threads of the runtime's pool.
#[allow(clippy::too_many_arguments)]
pub fn run_mixed(
    s: &Shape,
    x: Input,
    w: &[f32],
    bias: Option<&[f32]>,
    out: Output,
    ep: &[Step],
    threads: usize,
    isa: Isa,
) -> Result<(), DwError> {
    run_mixed_planned(s, x, w, bias, out, ep, threads, isa, None)
}

/// [`run_mixed`] with the byte path's plan made before (for constant weights: once):
/// `Some(None)` when it was refused then, `None` to try making it here. A plan made for
/// another convolution is not used.
#[allow(clippy::too_many_arguments)]
pub fn run_mixed_planned(
    s: &Shape,
    x: Input,
    w: &[f32],
    bias: Option<&[f32]>,
    out: Output,
    ep: &[Step],
    threads: usize,
    isa: Isa,
    plan: Option<Option<&BytePlan>>,
) -> Result<(), DwError> {
    let channel_args: Vec<(&'static str, usize)> = ep
        .iter()
        .filter_map(|st| match st {
            Step::Bin {
                arg: Arg::Channel(c),
                ..
            } => Some(("epilogue operand", c.len())),
            _ => None,
        })
        .collect();
    super::check_operands(
        s,
        (x.len(), w.len(), out.len()),
        bias.map(|b| b.len()),
        &channel_args,
    )?;
    let m = s.out_channels();
    let (ipl, ohw) = (s.in_hw[0] * s.in_hw[1], s.out_hw[0] * s.out_hw[1]);
    if s.batch == 0 || m == 0 || ohw == 0 {
        return Ok(());
    }
    let threads = threads.max(1);
    // Chunks of input channels (each with its `mult` output planes) within one image.
    let c = s.in_channels;
    let per = (ipl + 2 * s.mult * ohw).max(1) * 4;
    let mut chunk = (SCRATCH / per).clamp(1, c);
    if threads > 1 {
        chunk = chunk.min(c.div_ceil(4 * threads));
    }
    // Small maps: a whole group of 16 planes for the channel-vector kernel.
    if ohw <= 64 {
        chunk = chunk.max(16usize.div_ceil(s.mult)).min(c);
    }
    let per_image = c.div_ceil(chunk);
    let chunks = s.batch * per_image;
    let tasks = if threads == 1 {
        1
    } else {
        chunks.min(4 * threads)
    };
    let per_task = chunks.div_ceil(tasks);
    let (kind, out_ptr) = match out {
        Output::F32(y) => (OutKind::F32, OutPtr(y.as_mut_ptr().cast())),
        Output::I32(y) => (OutKind::I32, OutPtr(y.as_mut_ptr().cast())),
        Output::U8(y) => (OutKind::U8, OutPtr(y.as_mut_ptr().cast())),
        Output::I8(y) => (OutKind::I8, OutPtr(y.as_mut_ptr().cast())),
    };
    let isa = if isa.is_supported() {
        isa
    } else {
        Isa::detect()
    };
    // 8-bit inputs convolve as bytes where the CPU and the operands allow.
    let made;
    let bytes = match plan {
        _ if isa != Isa::Avx512 => None,
        Some(Some(p)) if p.fits(s, &x, w, bias) => Some(p),
        Some(None) => None,
        _ => {
            made = BytePlan::new(s, &x, w, bias);
            made.as_ref()
        }
    };
    let failed = std::sync::atomic::AtomicBool::new(false);
    let task = |t: usize| {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        let mut ss = Vec::new();
        let mut ps = Vec::new();
        for k in t * per_task..((t + 1) * per_task).min(chunks) {
            let (n, c0) = (k / per_image, (k % per_image) * chunk);
            let c1 = (c0 + chunk).min(c);
            let cx = Chunk {
                s,
                n,
                c0,
                c1,
                ipl,
                ohw,
            };
            // SAFETY: `out` holds `batch·m·ohw` elements of `kind` (checked above), the chunk
            // writes only its own planes `(n·c + c0)·mult .. (n·c + c1)·mult`, chunks are
            // disjoint and each belongs to one task, and all tasks end before `run_mixed`
            // returns (`parallel_for` joins them).
            let ok = unsafe {
                cx.run(
                    (x, w, bias, ep),
                    (kind, out_ptr),
                    (&mut xs, &mut ys, &mut ss, &mut ps),
                    bytes,
                    isa,
                )
            };
            if !ok {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    };
    if tasks == 1 {
        task(0);
    } else {
        super::super::parallel_for(tasks, &task);
    }
    if failed.into_inner() {
        // Every operand was checked above; a chunk's own checks cannot fail.
        return Err(DwError::Degenerate);
    }
    Ok(())
}

/// Input channels `c0..c1` of image `n`.
struct Chunk<'s> {
    s: &'s Shape,
    n: usize,
    c0: usize,
    c1: usize,
    ipl: usize,
    ohw: usize,
}

type Operands<'a, 'e> = (Input<'a>, &'a [f32], Option<&'a [f32]>, &'a [Step<'e>]);

impl Chunk<'_> {
    /// Converts the chunk's input and convolves it on this thread (as bytes with `bytes`),
    /// then runs the epilogue and stores the planes. False if the f32 kernel refused (it
    /// cannot: `run_mixed` checked).
    ///
    /// # Safety
    ///
    /// `out` must point to `batch·m·ohw` elements of `kind`, of which nothing else accesses
    /// this chunk's planes during the call.
    unsafe fn run(
        &self,
        (x, w, bias, ep): Operands,
        (kind, out): (OutKind, OutPtr),
        (xs, ys, ss, ps): (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>, &mut Vec<u8>),
        bytes: Option<&BytePlan>,
        isa: Isa,
    ) -> bool {
        let s = self.s;
        let (mult, kk) = (s.mult, s.kernel[0] * s.kernel[1]);
        let nc = self.c1 - self.c0;
        let u0 = self.n * s.in_channels + self.c0;
        let (x0, x1) = (u0 * self.ipl, (u0 + nc) * self.ipl);
        // Every element is written below (the input converted, every output computed).
        ys.resize(nc * mult * self.ohw, 0.0);
        let (m0, m1) = (self.c0 * mult, self.c1 * mult);
        let plane0 = self.n * s.out_channels() + m0;
        #[cfg(target_arch = "x86_64")]
        let rq = requant_of(ep).filter(|_| isa == Isa::Avx512 && kind != OutKind::I32);
        let ok = if let Some(plan) = bytes {
            plan.pad(s, x, self.n, (self.c0, self.c1), ps);
            #[cfg(target_arch = "x86_64")]
            if let Some(lanes) = rq.as_ref().and_then(|rq| RqLanes::new(rq, kind)) {
                // The requantization on the accumulators as they leave the dot products.
                // SAFETY: planes `plane0..plane0 + nc·mult` are this chunk's (the caller's
                // contract): `ohw` elements of `kind` each.
                let out = unsafe { out.0.add(plane0 * self.ohw * kind.size()) };
                plan.planes(ps, (m0, m1), Dest::Quant(lanes, out));
                return true;
            }
            plan.planes(ps, (m0, m1), Dest::Acc(ys));
            true
        } else {
            xs.resize(nc * self.ipl, 0.0);
            widen(isa, x, x0..x1, xs);
            let sub = Shape {
                batch: 1,
                in_channels: nc,
                ..*s
            };
            super::run(
                &sub,
                xs,
                &w[m0 * kk..m1 * kk],
                bias.map(|b| &b[m0..m1]),
                ys,
                &[],
                1,
                isa,
            )
            .is_ok()
        };
        for (i, y) in ys.chunks_exact_mut(self.ohw).enumerate() {
            let at = (plane0 + i) * self.ohw;
            #[cfg(target_arch = "x86_64")]
            if let Some(rq) = &rq {
                // SAFETY: AVX-512 is supported (`run_mixed` picked `isa`); plane `plane0 + i`
                // is this chunk's (the caller's contract): `ohw` elements of `kind` from `at`.
                unsafe { requant_avx512(rq, m0 + i, y, kind, out.0.add(at * kind.size())) };
                continue;
            }
            // Blocks that stay in L1 through every step and the store.
            for (b, yb) in y.chunks_mut(BLOCK).enumerate() {
                epilogue(isa, ep, m0 + i, yb, ss);
                // SAFETY: plane `plane0 + i` is this chunk's (the caller's contract), `ohw`
                // elements of `kind` from `at`, of which this block is a part.
                unsafe {
                    let p = out.0.add((at + b * BLOCK) * kind.size());
                    store(isa, kind, yb, p);
                }
            }
        }
        ok
    }
}

/// A QDQ layer's requantization as epilogue steps: `x · mult (+ shift) / scale`, rounded,
/// `+ zp`, clamped to `[lo, hi]` (each a literal, `mult` and `shift` maybe per channel).
#[derive(Clone, Copy, Debug)]
pub(super) struct Rq<'a> {
    mult: Arg<'a>,
    shift: Option<Arg<'a>>,
    scale: f32,
    zp: f32,
    lo: f32,
    hi: f32,
    /// A narrowing to the table's byte type, then the table (`Step::Table`).
    table: Option<(&'a [f32; 256], bool)>,
}

/// `ep` as an [`Rq`], when it is exactly one (in that order, no NaN bounds).
pub(super) fn requant_of<'a>(ep: &[Step<'a>]) -> Option<Rq<'a>> {
    let bin = |st: &Step<'a>, want: BinKind| match *st {
        Step::Bin {
            op,
            arg,
            arg_first: false,
        } if op == want => Some(arg),
        _ => None,
    };
    let lit = |a: Arg| match a {
        Arg::Lit(v) if !v.is_nan() => Some(v),
        _ => None,
    };
    let (mult, shift, rest) = match ep {
        [m, s, rest @ ..] if bin(s, BinKind::Add).is_some() => {
            (bin(m, BinKind::Mul)?, bin(s, BinKind::Add), rest)
        }
        [m, rest @ ..] => (bin(m, BinKind::Mul)?, None, rest),
        [] => return None,
    };
    let (d, z, lo, hi, table) = match rest {
        [d, Step::Round, z, lo, hi] => (d, z, lo, hi, None),
        [
            d,
            Step::Round,
            z,
            lo,
            hi,
            Step::Narrow(t),
            Step::Table { table, signed },
        ] if *t == if *signed { Int::I8 } else { Int::U8 } => {
            (d, z, lo, hi, Some((*table, *signed)))
        }
        _ => return None,
    };
    let rq = Rq {
        mult,
        shift,
        scale: lit(bin(d, BinKind::Div)?)?,
        zp: lit(bin(z, BinKind::Add)?)?,
        lo: lit(bin(lo, BinKind::Max)?)?,
        hi: lit(bin(hi, BinKind::Min)?)?,
        table,
    };
    // With a table the loop computes the byte with `quantize16`: integer bounds inside the
    // narrowing's range, an integer zero point.
    if let Some((_, signed)) = table {
        let range = if signed {
            (-128.0, 127.0)
        } else {
            (0.0, 255.0)
        };
        if !rq.integral(range) {
            return None;
        }
    }
    Some(rq)
}

impl Rq<'_> {
    /// Whether the zero point and the bounds are integers, the bounds ordered and inside
    /// `range`: what `quantize16` needs.
    fn integral(&self, (tlo, thi): (f32, f32)) -> bool {
        let int = |v: f32| v.fract() == 0.0 && v.abs() < 16_777_216.0;
        int(self.zp)
            && int(self.lo)
            && int(self.hi)
            && tlo <= self.lo
            && self.lo <= self.hi
            && self.hi <= thi
    }
}

/// [`Rq`] where the result is computed as a byte by `quantize16` (what the rounding, zero
/// point, bounds and a saturating store compute): with a table (`requant_of` checked its
/// bounds), or for an 8-bit output with an integer zero point and integer bounds inside its
/// range. Its fields are copies: loads through a reference would be repeated after every
/// store.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct RqLanes<'a> {
    mult: Arg<'a>,
    shift: Option<Arg<'a>>,
    scale: f32,
    zp: f32,
    lo: f32,
    hi: f32,
    table: Option<(&'a [f32; 256], bool)>,
    kind: OutKind,
}

#[cfg(target_arch = "x86_64")]
impl<'a> RqLanes<'a> {
    /// The lanes for results stored as `kind`, when the byte path applies.
    pub(super) fn new(rq: &Rq<'a>, kind: OutKind) -> Option<RqLanes<'a>> {
        let to_bytes = match kind {
            OutKind::U8 => rq.integral((0.0, 255.0)),
            OutKind::I8 => rq.integral((-128.0, 127.0)),
            _ => false,
        };
        (rq.table.is_some() || to_bytes).then_some(RqLanes {
            mult: rq.mult,
            shift: rq.shift,
            scale: rq.scale,
            zp: rq.zp,
            lo: rq.lo,
            hi: rq.hi,
            table: rq.table,
            kind,
        })
    }

    /// Output channel `m`'s multiplier and shift (0 without one).
    #[inline(always)]
    pub(super) fn channel(&self, m: usize) -> (f32, f32) {
        let at = |a: Arg| match a {
            Arg::Lit(v) => v,
            Arg::Channel(c) => c[m],
        };
        (at(self.mult), self.shift.map_or(0.0, at))
    }

    /// Lanes `mask` of `x` requantized with a channel's multiplier and shift (from
    /// [`RqLanes::channel`]) and stored at element `i` of `p`.
    ///
    /// # Safety
    ///
    /// The CPU has AVX-512F/BW/VL/DQ; the masked elements from `i` are writable at `p` as
    /// `kind`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    pub(super) unsafe fn store(
        &self,
        x: std::arch::x86_64::__m512,
        (mult, shift): (std::arch::x86_64::__m512, std::arch::x86_64::__m512),
        p: *mut u8,
        i: usize,
        mask: std::arch::x86_64::__mmask16,
    ) {
        use std::arch::x86_64::*;
        let mut x = _mm512_mul_ps(x, mult);
        // Only with a shift: `+ 0.0` would turn `-0.0` into `0.0` (the same byte, but the
        // steps are the evaluator's).
        if self.shift.is_some() {
            x = _mm512_add_ps(x, shift);
        }
        let f = _mm512_div_ps(x, _mm512_set1_ps(self.scale));
        let q = crate::kernels::igemm::quantize16(f, self.zp, self.lo, self.hi);
        // SAFETY: the contract; a table's gathered indices lie in `[0, 256)` (the byte, plus
        // 128 for `i8`).
        unsafe {
            match self.table {
                Some((table, signed)) => {
                    let idx = _mm512_add_epi32(q, _mm512_set1_epi32(128 * signed as i32));
                    let v = _mm512_i32gather_ps::<4>(idx, table.as_ptr());
                    store16(self.kind, v, p, i, mask);
                }
                None => _mm512_mask_cvtepi32_storeu_epi8(p.add(i).cast(), mask, q),
            }
        }
    }
}

/// [`epilogue`] then [`store`] of one plane `y` of output channel `m` for the steps of `rq`,
/// 16 lanes at a time in registers (seven passes over the plane otherwise), each operation as
/// there: no fused multiply-add, the division a division, the bounds as selects.
///
/// # Safety
///
/// The CPU has AVX-512F/BW/VL/DQ; `p` is valid for writing `y.len()` elements of `kind` (`F32`,
/// `U8` or `I8`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn requant_avx512(rq: &Rq, m: usize, y: &[f32], kind: OutKind, p: *mut u8) {
    use std::arch::x86_64::*;
    let at = |a: Arg| match a {
        Arg::Lit(v) => v,
        Arg::Channel(c) => c[m],
    };
    let n = y.len();
    if let Some(lanes) = RqLanes::new(rq, kind) {
        let (mult, shift) = lanes.channel(m);
        let ms = (_mm512_set1_ps(mult), _mm512_set1_ps(shift));
        let mut i = 0;
        while i < n {
            let k = (n - i).min(16);
            let mask: __mmask16 = if k == 16 { !0 } else { (1 << k) - 1 };
            // SAFETY: lanes `i..i + k` lie inside `y` and the output (the contract).
            unsafe {
                let x = _mm512_maskz_loadu_ps(mask, y.as_ptr().add(i));
                lanes.store(x, ms, p, i, mask);
            }
            i += 16;
        }
        return;
    }
    let mult = _mm512_set1_ps(at(rq.mult));
    let shift = rq.shift.map(|s| _mm512_set1_ps(at(s)));
    let (scale, zp) = (_mm512_set1_ps(rq.scale), _mm512_set1_ps(rq.zp));
    let (lo, hi) = (_mm512_set1_ps(rq.lo), _mm512_set1_ps(rq.hi));
    let mut i = 0;
    while i < n {
        let lanes = (n - i).min(16);
        let mask: __mmask16 = if lanes == 16 { !0 } else { (1 << lanes) - 1 };
        // SAFETY: lanes `i..i + lanes` lie inside `y`.
        let mut x = unsafe { _mm512_maskz_loadu_ps(mask, y.as_ptr().add(i)) };
        x = _mm512_mul_ps(x, mult);
        if let Some(s) = shift {
            x = _mm512_add_ps(x, s);
        }
        x = _mm512_div_ps(x, scale);
        x = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
        x = _mm512_add_ps(x, zp);
        x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo), x, lo);
        x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, hi), x, hi);
        // SAFETY: lanes `i..i + lanes` of the output (the function's contract).
        unsafe { store16(kind, x, p, i, mask) };
        i += 16;
    }
}

/// Lanes `mask` of `x` stored as `kind` (`F32`, `U8` or `I8`) at element `i` of `p`; 8-bit ones
/// with NaN as 0, clamped to the range in f32, truncated and narrowed (what the saturating cast
/// computes; LLVM's own lowering of it ran at a third of the speed).
///
/// # Safety
///
/// The CPU has AVX-512F/BW; the masked elements from `i` are writable at `p` as `kind`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn store16(
    kind: OutKind,
    x: std::arch::x86_64::__m512,
    p: *mut u8,
    i: usize,
    mask: std::arch::x86_64::__mmask16,
) {
    use std::arch::x86_64::*;
    let (lo, hi) = match kind {
        OutKind::I8 => (-128.0, 127.0),
        _ => (0.0, 255.0),
    };
    // SAFETY: the function's contract.
    unsafe {
        if kind == OutKind::F32 {
            _mm512_mask_storeu_ps(p.cast::<f32>().add(i), mask, x);
        } else {
            let v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(x, x), x);
            let v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(lo)), _mm512_set1_ps(hi));
            _mm512_mask_cvtepi32_storeu_epi8(p.add(i).cast(), mask, _mm512_cvttps_epi32(v));
        }
    }
}

/// `xs = x[range]` as f32, less the zero point.
fn widen(isa: Isa, x: Input, range: std::ops::Range<usize>, xs: &mut [f32]) {
    #[inline(always)]
    fn body(x: Input, range: std::ops::Range<usize>, xs: &mut [f32]) {
        match x {
            Input::F32(x) => xs.copy_from_slice(&x[range]),
            Input::U8 { x, zero } => {
                for (d, &v) in xs.iter_mut().zip(&x[range]) {
                    *d = v as f32 - zero;
                }
            }
            Input::I8 { x, zero } => {
                for (d, &v) in xs.iter_mut().zip(&x[range]) {
                    *d = v as f32 - zero;
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn avx2(x: Input, range: std::ops::Range<usize>, xs: &mut [f32]) {
        body(x, range, xs)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn avx512(x: Input, range: std::ops::Range<usize>, xs: &mut [f32]) {
        body(x, range, xs)
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `run_mixed` picked a supported `isa`.
        Isa::Avx512 => unsafe { avx512(x, range, xs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2(x, range, xs) },
        _ => body(x, range, xs),
    }
}

/// Runs `ep` on the plane `y` of output channel `m`, step by step over the whole plane (each
/// a vector loop; the plane is in cache), `s` holding the saved values.
fn epilogue(isa: Isa, ep: &[Step], m: usize, y: &mut [f32], s: &mut Vec<f32>) {
    #[inline(always)]
    fn body(ep: &[Step], m: usize, y: &mut [f32], s: &mut Vec<f32>, sigmoid: impl Fn(&mut [f32])) {
        s.resize(y.len(), 0.0);
        if ep.iter().any(|st| matches!(st, Step::Combine { .. })) {
            s.copy_from_slice(y);
        }
        for st in ep {
            match *st {
                Step::Bin { op, arg, arg_first } => {
                    let a = match arg {
                        Arg::Lit(v) => v,
                        Arg::Channel(c) => c[m],
                    };
                    bin(op, a, arg_first, y);
                }
                Step::Save => s.copy_from_slice(y),
                Step::Combine { op, saved_first } => combine(op, saved_first, y, s),
                Step::Sigmoid => sigmoid(y),
                Step::Round => y.iter_mut().for_each(|v| *v = v.round_ties_even()),
                Step::Narrow(t) => {
                    let (lo, hi) = t.range();
                    y.iter_mut().for_each(|v| *v = narrow(*v, lo, hi));
                }
                Step::Table { table, signed } => {
                    y.iter_mut().for_each(|v| *v = lookup(table, signed, *v));
                }
            }
        }
    }
    if ep.is_empty() {
        return;
    }
    // The sigmoid with the vector `exp` of the GEMM activations (the polynomial the other
    // depthwise kernels use), the scalar form of it on the portable path.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn avx2(ep: &[Step], m: usize, y: &mut [f32], s: &mut Vec<f32>) {
        use std::arch::x86_64::*;
        body(ep, m, y, s, |y| {
            let mut chunks = y.chunks_exact_mut(8);
            for c in &mut chunks {
                // SAFETY: eight floats of `c`.
                unsafe {
                    let v = _mm256_loadu_ps(c.as_ptr());
                    _mm256_storeu_ps(c.as_mut_ptr(), crate::kernels::gemm::avx2::sigmoid8(v));
                }
            }
            for v in chunks.into_remainder() {
                *v = crate::kernels::gemm::act::sigmoid(*v);
            }
        })
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    fn avx512(ep: &[Step], m: usize, y: &mut [f32], s: &mut Vec<f32>) {
        body(ep, m, y, s, |y| {
            use crate::kernels::gemm::{Activation, avx512};
            // SAFETY: AVX-512F is enabled here.
            unsafe { avx512::activate_slice(Activation::Sigmoid, y) }
        })
    }
    let scalar = |y: &mut [f32]| {
        y.iter_mut()
            .for_each(|v| *v = crate::kernels::gemm::act::sigmoid(*v))
    };
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `run_mixed` picked a supported `isa`.
        Isa::Avx512 => unsafe { avx512(ep, m, y, s) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2(ep, m, y, s) },
        _ => body(ep, m, y, s, scalar),
    }
}

/// `y = y op a` (`a op y` when `first`) over the plane, one loop per operation so that each
/// vectorizes; `Max`/`Min` NaN-propagating as [`BinKind::apply`].
#[inline(always)]
fn bin(op: BinKind, a: f32, first: bool, y: &mut [f32]) {
    macro_rules! each {
        ($v:ident => $e:expr) => {
            y.iter_mut().for_each(|$v| *$v = $e)
        };
    }
    match (op, first) {
        (BinKind::Add, false) => each!(v => *v + a),
        (BinKind::Add, true) => each!(v => a + *v),
        (BinKind::Sub, false) => each!(v => *v - a),
        (BinKind::Sub, true) => each!(v => a - *v),
        (BinKind::Mul, false) => each!(v => *v * a),
        (BinKind::Mul, true) => each!(v => a * *v),
        (BinKind::Div, false) => each!(v => *v / a),
        (BinKind::Div, true) => each!(v => a / *v),
        // NaN-propagating with a number `a` (a NaN `a` makes every result NaN): the value
        // unless `a` wins the comparison, written as a select so that it vectorizes
        // (`apply`'s NaN tests kept it scalar).
        (BinKind::Max | BinKind::Min, _) if a.is_nan() => each!(v => f32::NAN),
        (BinKind::Max, _) => each!(v => if *v < a { a } else { *v }),
        (BinKind::Min, _) => each!(v => if *v > a { a } else { *v }),
    }
}

/// `y = y op s` (`s op y` when `saved_first`) over the plane.
#[inline(always)]
fn combine(op: BinKind, saved_first: bool, y: &mut [f32], s: &[f32]) {
    macro_rules! each {
        ($v:ident, $s:ident => $e:expr) => {
            y.iter_mut().zip(s).for_each(|($v, &$s)| *$v = $e)
        };
    }
    match (op, saved_first) {
        (BinKind::Add, _) => each!(v, s => s + *v),
        (BinKind::Mul, _) => each!(v, s => s * *v),
        (BinKind::Sub, false) => each!(v, s => *v - s),
        (BinKind::Sub, true) => each!(v, s => s - *v),
        (BinKind::Div, false) => each!(v, s => *v / s),
        (BinKind::Div, true) => each!(v, s => s / *v),
        (op, false) => each!(v, s => op.apply(*v, s)),
        (op, true) => each!(v, s => op.apply(s, *v)),
    }
}

/// Stores the plane `y` at `p` as `kind`.
///
/// # Safety
///
/// `p` must be valid for writing `y.len()` elements of `kind`, aligned for it.
unsafe fn store(isa: Isa, kind: OutKind, y: &[f32], p: *mut u8) {
    #[inline(always)]
    unsafe fn body(kind: OutKind, y: &[f32], p: *mut u8) {
        let n = y.len();
        // SAFETY: the caller's contract.
        unsafe {
            match kind {
                OutKind::F32 => std::ptr::copy_nonoverlapping(y.as_ptr(), p.cast::<f32>(), n),
                OutKind::I32 => {
                    let d = std::slice::from_raw_parts_mut(p.cast::<i32>(), n);
                    d.iter_mut().zip(y).for_each(|(d, &v)| *d = v as i32);
                }
                OutKind::U8 => {
                    let d = std::slice::from_raw_parts_mut(p, n);
                    d.iter_mut().zip(y).for_each(|(d, &v)| *d = v as u8);
                }
                OutKind::I8 => {
                    let d = std::slice::from_raw_parts_mut(p.cast::<i8>(), n);
                    d.iter_mut().zip(y).for_each(|(d, &v)| *d = v as i8);
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(kind: OutKind, y: &[f32], p: *mut u8) {
        // SAFETY: the caller's contract.
        unsafe { body(kind, y, p) }
    }
    /// 8-bit outputs 16 at a time ([`store16`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    unsafe fn avx512(kind: OutKind, y: &[f32], p: *mut u8) {
        use std::arch::x86_64::*;
        if !matches!(kind, OutKind::U8 | OutKind::I8) {
            // SAFETY: the caller's contract.
            return unsafe { body(kind, y, p) };
        }
        let n = y.len();
        let mut i = 0;
        while i < n {
            let lanes = (n - i).min(16);
            let mask: __mmask16 = if lanes == 16 { !0 } else { (1 << lanes) - 1 };
            // SAFETY: lanes `i..i + lanes` are inside `y` and the output (caller's contract);
            // masked lanes are neither read nor written.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, y.as_ptr().add(i));
                store16(kind, v, p, i, mask);
            }
            i += 16;
        }
    }
    // SAFETY: `run_mixed` picked a supported `isa`; the rest is the caller's contract.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512(kind, y, p),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2(kind, y, p),
            _ => body(kind, y, p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorizable narrowing is the saturating cast, bit for bit (the sign of zero too).
    #[test]
    fn narrow_is_the_saturating_cast() {
        let vals = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            -0.5,
            0.99,
            -1.5,
            127.9,
            128.0,
            -128.9,
            -129.0,
            254.5,
            255.7,
            256.0,
            1e10,
            -1e10,
            2147483520.0,
            2147483648.0,
            -2147483648.0,
            -2147483904.0,
        ];
        for t in [Int::U8, Int::I8, Int::I32] {
            let (lo, hi) = t.range();
            for v in vals {
                assert_eq!(
                    narrow(v, lo, hi).to_bits(),
                    t.narrow(v).to_bits(),
                    "{t:?} {v}"
                );
            }
        }
    }
}
