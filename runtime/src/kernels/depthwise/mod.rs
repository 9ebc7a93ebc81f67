//! f32 2-D depthwise convolution (NCHW, one input channel per group) with a fused epilogue.
//!
//! This is the kernel behind the kernel IR's `Stmt::Depthwise`. Each output row is computed
//! in vectors along the row (16 lanes with AVX-512, 8 with AVX2): the accumulator starts at the
//! channel's bias and takes one tap at a time in (ky, kx) order with a fused multiply-add, so
//! the result is the kernel-IR evaluator's (a multiply, then an add) up to one rounding per
//! tap. (The kernels were bit-exact, with a separate multiply and add; FMA and the register
//! tiles it allowed made the 3×3 stride-1 layers 25–35% faster.) Padding is implicit: a tap
//! outside the input reads 0.0 (and still adds `0·w`, as the evaluator does) through masked
//! loads, so nothing is copied into padded planes. Stride 2 loads two vectors and keeps the
//! even lanes; other strides gather. The epilogue ([`EpOp`]) runs on the accumulator in
//! registers before the row's single store.
//!
//! Threads: the work is cut into (plane, band of rows) items, grouped into a few tasks per
//! thread run on the runtime's pool ([`crate::kernels::parallel_for`]), each writing its own
//! output rows.
//!
//! ```
//! use mlc_runtime::kernels::depthwise::{run, EpOp, BinKind, Shape};
//! use mlc_runtime::kernels::Isa;
//!
//! // One 3×3 plane, a 3×3 box filter, pad 1: every output sums its in-range neighbours.
//! let s = Shape::new(1, 1, 1, [3, 3], [3, 3], [3, 3], [1, 1], [1, 1], [1, 1]);
//! let x = [1.0f32; 9];
//! let w = [1.0f32; 9];
//! let mut y = [0.0f32; 9];
//! let relu_minus_5 = [EpOp::Bin { op: BinKind::Sub, arg: 5.0, arg_first: false },
//!                     EpOp::Bin { op: BinKind::Max, arg: 0.0, arg_first: false }];
//! run(&s, &x, &w, None, &mut y, &relu_minus_5, 1, Isa::detect()).unwrap();
//! assert_eq!(y, [0.0, 1.0, 0.0, 1.0, 4.0, 1.0, 0.0, 1.0, 0.0]);
//! ```

// Output rows of disjoint tasks are written through a raw pointer shared by the pool's threads,
// and the ISA kernels use masked loads; every such use carries a `SAFETY:` comment.
#![allow(unsafe_code)]

/// Runs `$body` with `$t` = 0, 1, … below `$rows` (at most 11), written out step by step;
/// each step first passes every accumulator of `$acc` (an array of arrays of vectors in
/// `$reg` registers) through an empty `asm!`. The square-kernel tiles' input-row loop: LLVM
/// then neither hoists every row's loads above the earlier rows' FMAs (it did, and spilled
/// the loaded rows to the stack) nor moves loads across a step (see the AVX-512 `tile`).
#[cfg(target_arch = "x86_64")]
macro_rules! unrolled_rows {
    ($rows:expr, $acc:ident, $reg:ident, |$t:ident| $body:block) => {
        unrolled_rows!(@steps $rows, $acc, $reg, $t, $body, 0 1 2 3 4 5 6 7 8 9 10)
    };
    (@steps $rows:expr, $acc:ident, $reg:ident, $t:ident, $body:block, $($n:literal)*) => {
        $(
            if $n < $rows {
                // One by one: a `flatten()` over them kept them in memory (half the speed).
                for aj in $acc.iter_mut() {
                    for a in aj.iter_mut() {
                        // SAFETY: an empty template.
                        unsafe { core::arch::asm!("/* {0} */", inout($reg) *a) };
                    }
                }
                let $t: usize = $n;
                $body
            }
        )*
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::range_mask;
#[cfg(target_arch = "x86_64")]
mod channels;
mod mixed;
mod portable;
#[cfg(test)]
mod tests;
mod vnni;

pub use mixed::{Arg, Input, Int, Output, Step, run_mixed, run_mixed_planned};
pub use vnni::BytePlan;

use super::{Isa, SendPtr};

/// The geometry of a depthwise convolution: `batch × (in_channels · mult)` output planes of
/// `out_hw`, output channel `m` reading input channel `m / mult`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub batch: usize,
    pub in_channels: usize,
    /// Output channels per input channel (the channel multiplier).
    pub mult: usize,
    pub in_hw: [usize; 2],
    pub out_hw: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// The top and left pads; the bottom and right ones follow from the sizes.
    pub pad: [usize; 2],
}

impl Shape {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        batch: usize,
        in_channels: usize,
        mult: usize,
        in_hw: [usize; 2],
        out_hw: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        pad: [usize; 2],
    ) -> Shape {
        Shape {
            batch,
            in_channels,
            mult,
            in_hw,
            out_hw,
            kernel,
            stride,
            dilation,
            pad,
        }
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.in_channels * self.mult
    }

    /// Elements of the input, the weights and the output.
    fn lens(&self) -> Option<(usize, usize, usize)> {
        let m = self.in_channels.checked_mul(self.mult)?;
        let x = self
            .batch
            .checked_mul(self.in_channels)?
            .checked_mul(self.in_hw[0])?
            .checked_mul(self.in_hw[1])?;
        let w = m.checked_mul(self.kernel[0])?.checked_mul(self.kernel[1])?;
        let y = self
            .batch
            .checked_mul(m)?
            .checked_mul(self.out_hw[0])?
            .checked_mul(self.out_hw[1])?;
        Some((x, w, y))
    }
}

/// A binary operation of the epilogue, in f32; `Max`/`Min` return NaN when either operand is
/// NaN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinKind {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

impl BinKind {
    /// The operation on scalars, exactly as the vector kernels compute it.
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinKind::Add => a + b,
            BinKind::Sub => a - b,
            BinKind::Mul => a * b,
            BinKind::Div => a / b,
            BinKind::Max if a.is_nan() || b.is_nan() => f32::NAN,
            BinKind::Min if a.is_nan() || b.is_nan() => f32::NAN,
            BinKind::Max => a.max(b),
            BinKind::Min => a.min(b),
        }
    }
}

/// One step of the epilogue, a straight-line program on two registers: the value `x` (the
/// accumulator at the start) and a saved value `s` (also the accumulator at the start).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EpOp {
    /// `x = x op arg`, or `arg op x` when `arg_first`.
    Bin {
        op: BinKind,
        arg: f32,
        arg_first: bool,
    },
    /// `s = x`.
    Save,
    /// `x = x op s`, or `s op x` when `saved_first`: a gate such as `x · clamp(x + 3, 0, 6)`.
    Combine { op: BinKind, saved_first: bool },
    /// `x = 1 / (1 + exp(-x))`, `exp` the polynomial of [`crate::kernels::gemm::act::exp`]
    /// (with `Save` and `Combine`, swish/SiLU).
    Sigmoid,
}

/// Applies `ep` to one value (the portable path and the reference of the vector ones).
pub fn apply_epilogue(ep: &[EpOp], acc: f32) -> f32 {
    let (mut x, mut s) = (acc, acc);
    for op in ep {
        match *op {
            EpOp::Bin { op, arg, arg_first } => {
                x = if arg_first {
                    op.apply(arg, x)
                } else {
                    op.apply(x, arg)
                }
            }
            EpOp::Save => s = x,
            EpOp::Combine { op, saved_first } => {
                x = if saved_first {
                    op.apply(s, x)
                } else {
                    op.apply(x, s)
                }
            }
            EpOp::Sigmoid => x = crate::kernels::gemm::act::sigmoid(x),
        }
    }
    x
}

/// The epilogues the ISA kernels run as straight-line code instead of interpreting the
/// [`EpOp`]s (a dispatch per operation per register tile: 35% of a 3×3 layer's time with
/// HardSwish, measured on PP-LCNet's first layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EpKind {
    None,
    /// `x · max(0, min(1, x·(1/6) + 0.5))` exactly as the [`EpOp`] program the lowering makes
    /// of HardSwish: multiply, then add (no FMA), NaN-propagating `min`/`max` with the
    /// constant first.
    HardSwish,
    /// Only binary operations with constants (ReLU, ReLU6, a scale and shift).
    Bins,
    Other,
}

impl EpKind {
    /// The kinds as the const parameter of the kernels that compile their epilogue in (the
    /// accumulators then stay in registers through it; an epilogue call per register tile
    /// passed them through memory, 15–25% of a 3×3 layer's time).
    pub(crate) const NONE: u8 = 0;
    pub(crate) const HARD_SWISH: u8 = 1;
    pub(crate) const BINS: u8 = 2;
    pub(crate) const OTHER: u8 = 3;

    pub(crate) fn of(ep: &[EpOp]) -> EpKind {
        use BinKind::*;
        let bin = |op, arg, arg_first| EpOp::Bin { op, arg, arg_first };
        let hard_swish = [
            EpOp::Save,
            bin(Mul, 1.0 / 6.0, false),
            bin(Add, 0.5, false),
            bin(Min, 1.0, true),
            bin(Max, 0.0, true),
            EpOp::Combine {
                op: Mul,
                saved_first: true,
            },
        ];
        if ep.is_empty() {
            EpKind::None
        } else if ep == hard_swish {
            EpKind::HardSwish
        } else if ep.iter().all(|op| matches!(op, EpOp::Bin { .. })) {
            EpKind::Bins
        } else {
            EpKind::Other
        }
    }
}

/// Why a depthwise convolution was refused (nothing is written then).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DwError {
    #[error("{operand} needs {needed} elements but has {len}")]
    TooShort {
        operand: &'static str,
        needed: usize,
        len: usize,
    },
    #[error("the convolution's sizes overflow the address space")]
    Overflow,
    #[error("a zero stride, dilation, kernel size or channel multiplier")]
    Degenerate,
}

/// The geometry one plane's kernel needs, in `isize` for signed tap arithmetic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plane {
    pub ih: isize,
    pub iw: isize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: isize,
    pub sw: isize,
    pub dh: isize,
    pub dw: isize,
    pub pt: isize,
    pub pl: isize,
}

/// One item of work: one input plane, its weights and bias, a band of output rows. The items
/// of one call share their geometry `g` and epilogue.
pub(crate) struct Task<'a> {
    pub g: &'a Plane,
    /// The input plane (`ih·iw` floats).
    pub x: &'a [f32],
    /// The channel's `kh·kw` weights.
    pub w: &'a [f32],
    pub bias: f32,
    /// Output rows `[oy0, oy0 + rows)`, `rows·ow` floats.
    pub out: &'a mut [f32],
    pub oy0: usize,
    pub ep: &'a [EpOp],
    /// What `ep` is, classified once per call.
    pub kind: EpKind,
}

/// Refuses a degenerate geometry, sizes that overflow, and operands shorter than `s` needs:
/// the lengths of `x`, `w` and `out`, of the bias if any, and of per-channel operands (each
/// `(name, len)`, one value per output channel).
pub(crate) fn check_operands(
    s: &Shape,
    (x, w, out): (usize, usize, usize),
    bias: Option<usize>,
    per_channel: &[(&'static str, usize)],
) -> Result<(), DwError> {
    if s.mult == 0 || s.kernel.contains(&0) || s.stride.contains(&0) || s.dilation.contains(&0) {
        return Err(DwError::Degenerate);
    }
    let (lx, lw, ly) = s.lens().ok_or(DwError::Overflow)?;
    let m = s.out_channels();
    let fixed = [
        ("x", lx, x),
        ("w", lw, w),
        ("out", ly, out),
        ("bias", bias.map_or(0, |_| m), bias.unwrap_or(0)),
    ];
    let channels = per_channel.iter().map(|&(name, len)| (name, m, len));
    for (operand, needed, len) in fixed.into_iter().chain(channels) {
        if len < needed {
            return Err(DwError::TooShort {
                operand,
                needed,
                len,
            });
        }
    }
    Ok(())
}

/// `out = ep(depthwise(x, w) + bias)` for the geometry `s`, on up to `threads` threads of the
/// runtime's pool, with the kernels of `isa` (or of the widest level this CPU has, if
/// narrower).
#[allow(clippy::too_many_arguments)]
pub fn run(
    s: &Shape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    ep: &[EpOp],
    threads: usize,
    isa: Isa,
) -> Result<(), DwError> {
    check_operands(s, (x.len(), w.len(), out.len()), bias.map(|b| b.len()), &[])?;
    let m = s.out_channels();
    let big = |v: usize| isize::try_from(v).map_err(|_| DwError::Overflow);
    let g = Plane {
        ih: big(s.in_hw[0])?,
        iw: big(s.in_hw[1])?,
        ow: s.out_hw[1],
        kh: s.kernel[0],
        kw: s.kernel[1],
        sh: big(s.stride[0])?,
        sw: big(s.stride[1])?,
        dh: big(s.dilation[0])?,
        dw: big(s.dilation[1])?,
        pt: big(s.pad[0])?,
        pl: big(s.pad[1])?,
    };
    // Every tap offset must fit the signed arithmetic of the kernels.
    let reach = |o: usize, st: usize, k: usize, d: usize| {
        o.checked_mul(st)
            .and_then(|a| (k - 1).checked_mul(d).and_then(|b| a.checked_add(b)))
            .and_then(|r| isize::try_from(r).ok())
    };
    if reach(s.out_hw[0], s.stride[0], s.kernel[0], s.dilation[0]).is_none()
        || reach(s.out_hw[1], s.stride[1], s.kernel[1], s.dilation[1]).is_none()
    {
        return Err(DwError::Overflow);
    }
    let planes = s.batch * m;
    let (oh, ow) = (s.out_hw[0], s.out_hw[1]);
    let (ipl, kk) = (s.in_hw[0] * s.in_hw[1], s.kernel[0] * s.kernel[1]);
    if planes == 0 || oh == 0 || ow == 0 {
        return Ok(());
    }
    let isa = if isa.is_supported() {
        isa
    } else {
        Isa::detect()
    };
    let threads = threads.max(1);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && channels::takes(s, planes) {
        let lay = channels::Layout::new(s);
        let groups = planes.div_ceil(channels::LANES);
        let tasks = if threads == 1 {
            1
        } else {
            groups.min(4 * threads)
        };
        let per = groups.div_ceil(tasks);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let task = |k: usize| {
            let (g0, g1) = (k * per, ((k + 1) * per).min(groups));
            // SAFETY: AVX-512F is supported (checked above); `s` was checked against every
            // operand and by `takes`; tasks cover disjoint groups of planes, and all of them
            // end before `run` returns (`parallel_for` joins its tasks).
            unsafe { channels::groups(s, x, w, bias, out_ptr.get(), ep, &lay, (g0, g1)) };
        };
        if tasks == 1 {
            task(0);
        } else {
            super::parallel_for(tasks, &task);
        }
        return Ok(());
    }
    // Rows of at most 8 outputs fill a ymm but not half a zmm: the AVX2 kernel does the same
    // work in half-width vectors (measured 15% faster on 7×7 maps, 5×5 taps).
    let isa = if isa == Isa::Avx512 && s.out_hw[1] <= 8 && Isa::Avx2.is_supported() {
        Isa::Avx2
    } else {
        isa
    };
    // Bands of rows: whole planes when there are enough of them to share out, else planes
    // cut so that every thread gets several tasks (a preempted thread then holds up little).
    let bands = if threads == 1 || planes >= 4 * threads {
        1
    } else {
        (4 * threads).div_ceil(planes).min(oh)
    };
    let band = oh.div_ceil(bands);
    let bands = oh.div_ceil(band);
    let kind = EpKind::of(ep);
    let out_ptr = SendPtr(out.as_mut_ptr());
    // Item `t` is band `t % bands` of plane `t / bands`.
    let item = |t: usize| {
        let (p, b) = (t / bands, t % bands);
        let (n, mo) = (p / m, p % m);
        let xp = (n * s.in_channels + mo / s.mult) * ipl;
        let oy0 = b * band;
        let rows = band.min(oh - oy0);
        let start = p * oh * ow + oy0 * ow;
        // SAFETY: `out` holds `planes·oh·ow` floats (checked above); item `t` covers rows
        // `[oy0, oy0 + rows)` of plane `p` only, distinct items have distinct (plane, band)
        // pairs and each item belongs to one task, so the slices handed out are disjoint, and
        // all of them end before `run` returns (`parallel_for` joins its tasks).
        let out = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(start), rows * ow) };
        Task {
            g: &g,
            x: &x[xp..xp + ipl],
            w: &w[mo * kk..(mo + 1) * kk],
            bias: bias.map_or(0.0, |b| b[mo]),
            out,
            oy0,
            ep,
            kind,
        }
    };
    let items = planes * bands;
    // Tasks are runs of consecutive items, so a kernel sets up its column tables once per
    // task, not once per (small) plane.
    let tasks = if threads == 1 {
        1
    } else {
        items.min(4 * threads)
    };
    let per = items.div_ceil(tasks);
    let task = |k: usize| {
        let mut ts: Vec<Task> = (k * per..((k + 1) * per).min(items)).map(item).collect();
        dispatch(isa, &mut ts);
    };
    if tasks == 1 {
        task(0);
    } else {
        super::parallel_for(tasks, &task);
    }
    Ok(())
}

/// The register tiles of the ISA kernels' `blocked` paths over `nrows` output rows of `chunks`
/// vectors each: rows by four, the last four overlapping the ones before when `nrows` is not
/// a multiple of four (rows computed twice store the same values twice: a one-row tile loads
/// all `K·K` shifted inputs for `K·K` multiply-adds and ran a 7×7 map's last three rows slower
/// than its first four), one by one only below four rows; in each, chunks by `nb`, then one by
/// one. Calls `tile(first row, four rows?, first chunk, nb chunks?)`.
#[cfg(target_arch = "x86_64")]
fn for_tiles(
    nrows: usize,
    chunks: usize,
    nb: usize,
    mut tile: impl FnMut(usize, bool, usize, bool),
) {
    let mut r = 0;
    while r < nrows {
        if nrows >= 4 && r + 4 > nrows {
            r = nrows - 4;
        }
        let four = r + 4 <= nrows;
        let mut c = 0;
        while c + nb <= chunks {
            tile(r, four, c, true);
            c += nb;
        }
        while c < chunks {
            tile(r, four, c, false);
            c += 1;
        }
        r += if four { 4 } else { 1 };
    }
}

/// Runs a task's items with the kernels of `isa` (which this CPU supports).
fn dispatch(isa: Isa, ts: &mut [Task]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is supported (checked by `run`), so the CPU has AVX-512F.
        Isa::Avx512 => unsafe { avx512::rows(ts) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, AVX2 and FMA.
        Isa::Avx2 => unsafe { avx2::rows(ts) },
        _ => ts.iter_mut().for_each(portable::rows),
    }
}
