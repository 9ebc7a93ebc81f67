//! The contraction library behind `Stmt::Matmul`: `C = act(alpha·A·B + beta·C + bias)` on
//! strided views, as the kernel IR defines it.
//!
//! Generated code calls the `mlc_matmul` helper (see [`super::abi`]) with a block of
//! arguments; it lands in [`run`], which dispatches on the dtypes:
//!
//! * all-`f32` goes to the tuned kernels of [`crate::kernels::gemm`]: operands are read in
//!   place when their strides are non-negative and their bytes aligned (else copied dense
//!   first), a `C` with contiguous columns instead of rows is computed as `Cᵀ = Bᵀ·Aᵀ`, any
//!   other `C` through a dense temporary, and the bias becomes the kernels' scalar, per-row or
//!   per-column bias, or their residual matrix for a full `m×n` one;
//! * integer products (`u8`/`i8`/`i32` operands whose values fit 8 bits after an offset,
//!   `i32` result and bias, no scaling or activation) go to the exact kernels of
//!   [`crate::kernels::igemm`], in the same orientations; an operand that is one of the
//!   executor's weights (a conv's `i8` filter as `A`, a MatMulInteger's `i8` matrix as `B`)
//!   is packed once per executor and reused ([`super::exec::packed_int_weight`]);
//! * everything else takes a generic path accumulating in `f64` and rounding like the
//!   evaluator.
//!
//! An integer contraction may requantize its `i32` result into a `u8`/`i8` C ([`run_requant`],
//! the kernel IR's `Requant`): on the integer kernels that happens tile by tile in their
//! epilogue; any other case computes the `i32` result into a temporary and requantizes it.
//!
//! Activations follow the evaluator exactly, NaN included: ReLU maps NaN to 0 and Clip maps it
//! to `min` (`f64::max` semantics), which is also what the kernels' epilogue does.

use super::abi::{Activation, DType};
use crate::kernels::igemm::{
    AddParams, IAdd, IBias, IGemm, IOut, IRequant, IntElem, IntImage, IntRef, PackedInt, RqMult,
    Slot,
};
use crate::kernels::{bytes, gemm as kg};
pub use image::{Im2col, Image, run_image};
pub use kg::TileHook;
use std::borrow::Cow;

mod image;

/// A strided 2-D view of a buffer's bytes.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub bytes: &'a [u8],
    pub dtype: DType,
    pub offset: i64,
    pub row_stride: i64,
    pub col_stride: i64,
}

/// The problem: sizes, scaling and epilogue.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f64,
    pub beta: f64,
    pub act: Activation,
    /// Threads the call may use (the executor passes 1 when the step is already split).
    pub threads: usize,
}

/// Why a call failed: an element outside its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfBounds;

fn elem_size(d: DType) -> usize {
    d.size()
}

/// Checks that every element `(r, c)`, `r < rows`, `c < cols` of a view with `len` elements
/// is inside it.
fn check(
    off: i64,
    rs: i64,
    cs: i64,
    rows: usize,
    cols: usize,
    len: usize,
) -> Result<(), OutOfBounds> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let ext = |s: i64, n: usize| -> Option<(i64, i64)> {
        let span = s.checked_mul(n as i64 - 1)?;
        Some((span.min(0), span.max(0)))
    };
    let (rlo, rhi) = ext(rs, rows).ok_or(OutOfBounds)?;
    let (clo, chi) = ext(cs, cols).ok_or(OutOfBounds)?;
    let lo = off
        .checked_add(rlo)
        .and_then(|x| x.checked_add(clo))
        .ok_or(OutOfBounds)?;
    let hi = off
        .checked_add(rhi)
        .and_then(|x| x.checked_add(chi))
        .ok_or(OutOfBounds)?;
    if lo < 0 || hi >= len as i64 {
        return Err(OutOfBounds);
    }
    Ok(())
}

impl View<'_> {
    fn len(&self) -> usize {
        self.bytes.len() / elem_size(self.dtype)
    }

    fn index(&self, r: usize, c: usize) -> usize {
        (self.offset + r as i64 * self.row_stride + c as i64 * self.col_stride) as usize
    }

    fn get(&self, i: usize) -> f64 {
        read(self.bytes, self.dtype, i)
    }
}

/// Element `i` of `bytes` holding `d`s, widened to f64.
fn read(bytes: &[u8], d: DType, i: usize) -> f64 {
    let s = elem_size(d);
    let b = &bytes[i * s..(i + 1) * s];
    let mut w = [0u8; 8];
    w[..s].copy_from_slice(b);
    match d {
        DType::F32 => f32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f64,
        DType::F64 => f64::from_le_bytes(w),
        DType::F16 => half::f16::from_le_bytes([w[0], w[1]]).to_f64(),
        DType::BF16 => half::bf16::from_le_bytes([w[0], w[1]]).to_f64(),
        DType::I8 => w[0] as i8 as f64,
        DType::U8 | DType::Bool => w[0] as f64,
        DType::I16 => i16::from_le_bytes([w[0], w[1]]) as f64,
        DType::U16 => u16::from_le_bytes([w[0], w[1]]) as f64,
        DType::I32 => i32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f64,
        DType::U32 => u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f64,
        DType::I64 => i64::from_le_bytes(w) as f64,
        DType::U64 => u64::from_le_bytes(w) as f64,
    }
}

/// Writes `v` as a `d` (rounding floats, saturating ints as the evaluator's casts).
fn write(bytes: &mut [u8], d: DType, i: usize, v: f64) {
    let s = elem_size(d);
    let b = &mut bytes[i * s..(i + 1) * s];
    match d {
        DType::F32 => b.copy_from_slice(&(v as f32).to_le_bytes()),
        DType::F64 => b.copy_from_slice(&v.to_le_bytes()),
        DType::F16 => b.copy_from_slice(&half::f16::from_f64(v).to_le_bytes()),
        DType::BF16 => b.copy_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
        DType::I8 => b.copy_from_slice(&(v as i8).to_le_bytes()),
        DType::U8 => b.copy_from_slice(&(v as u8).to_le_bytes()),
        DType::Bool => b[0] = (v != 0.0) as u8,
        DType::I16 => b.copy_from_slice(&(v as i16).to_le_bytes()),
        DType::U16 => b.copy_from_slice(&(v as u16).to_le_bytes()),
        DType::I32 => b.copy_from_slice(&(v as i32).to_le_bytes()),
        DType::U32 => b.copy_from_slice(&(v as u32).to_le_bytes()),
        DType::I64 => b.copy_from_slice(&(v as i64).to_le_bytes()),
        DType::U64 => b.copy_from_slice(&(v as u64).to_le_bytes()),
    }
}

fn activate(act: Activation, v: f64) -> f64 {
    match act {
        Activation::None => v,
        Activation::Relu => v.max(0.0),
        Activation::Clip { min, max } => v.max(min as f64).min(max as f64),
        Activation::HardSigmoid { alpha, beta } => {
            let e = alpha as f64 * v + beta as f64;
            if e.is_nan() { e } else { e.clamp(0.0, 1.0) }
        }
        Activation::HardSwish => {
            let e = v * (1.0 / 6.0) + 0.5;
            v * if e.is_nan() { e } else { e.clamp(0.0, 1.0) }
        }
        // The definitions, in `f64` like the evaluator; the tuned kernels approximate them
        // (see `kernels::gemm::act`).
        Activation::Gelu => 0.5 * v * (1.0 + libm::erf(v * std::f64::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * v * (1.0 + (k * (v + 0.044715 * v * v * v)).tanh())
        }
        Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        Activation::Swish { alpha } => v / (1.0 + (-(alpha as f64 * v)).exp()),
    }
}

/// Runs the contraction. `c_bytes` is C's whole buffer; `c` describes the view into it.
pub fn run(
    g: &Gemm,
    a: View,
    b: View,
    c_bytes: &mut [u8],
    c: (DType, i64, i64, i64),
    bias: Option<View>,
) -> Result<(), OutOfBounds> {
    run_then(g, a, b, c_bytes, c, bias, None)
}

/// Like [`run`], then `tail` on every block of C once it is final (the kernel IR's
/// `TileTail`): tile by tile on the tuned kernels while the block is in cache (in C's own
/// coordinates whichever orientation they compute in), else once over all of C at the end.
/// `tail` must only read C's elements of its block.
pub fn run_then(
    g: &Gemm,
    a: View,
    b: View,
    c_bytes: &mut [u8],
    c: (DType, i64, i64, i64),
    bias: Option<View>,
    tail: Option<TileHook>,
) -> Result<(), OutOfBounds> {
    let whole = |h: Option<TileHook>| {
        if let Some(h) = h
            && g.m > 0
            && g.n > 0
        {
            (h.0)(0, g.m, 0, g.n);
        }
    };
    let (cty, coff, crs, ccs) = c;
    let clen = c_bytes.len() / elem_size(cty);
    check(a.offset, a.row_stride, a.col_stride, g.m, g.k, a.len())?;
    check(b.offset, b.row_stride, b.col_stride, g.k, g.n, b.len())?;
    check(coff, crs, ccs, g.m, g.n, clen)?;
    if let Some(bv) = &bias {
        check(bv.offset, bv.row_stride, bv.col_stride, g.m, g.n, bv.len())?;
    }
    let all_f32 = a.dtype == DType::F32
        && b.dtype == DType::F32
        && cty == DType::F32
        && bias.is_none_or(|v| v.dtype == DType::F32);
    if all_f32 && f32_kernels(g, &a, &b, c_bytes, c, bias.as_ref(), tail).is_some() {
        #[cfg(test)]
        tests::PATH.set(tests::Path::F32);
        return Ok(());
    }
    if int_kernels(
        g,
        &a,
        BOperand::View(&b),
        c_bytes,
        c,
        bias.as_ref(),
        None,
        tail,
    )
    .is_some()
    {
        #[cfg(test)]
        tests::PATH.set(tests::Path::Int);
        return Ok(());
    }
    #[cfg(test)]
    tests::PATH.set(tests::Path::Generic);
    generic(g, &a, &b, c_bytes, c, bias.as_ref());
    whole(tail);
    Ok(())
}

/// The requantization of an integer contraction's `i32` result (the kernel IR's `Requant`).
#[derive(Clone, Copy, Debug)]
pub struct Requant<'a> {
    /// The `f32` multipliers, broadcast through their strides to `m×n`.
    pub mult: View<'a>,
    /// `f32` values added after the multiplication, broadcast likewise (`None`: nothing).
    pub shift: Option<View<'a>>,
    /// The divisor (the output scale).
    pub scale: f32,
    /// The output zero point.
    pub zero_point: i32,
    /// A quantized residual added and the sum requantized again (the kernel IR's
    /// `RequantAdd`): the residual's whole buffer, read at C's offset and strides, and the
    /// scalars.
    pub add: Option<(&'a [u8], AddParams)>,
    /// A byte table applied last (the kernel IR's `Requant::table`): C stores `table[q]`
    /// (`table[q + 128]` for an `i8` C).
    pub table: Option<&'a [u8; 256]>,
}

/// Runs an integer contraction whose `i32` result `acc` (what [`run`] would store in an `i32`
/// C) is requantized into C (`u8` or `i8`): `C = clamp(round_half_even(f32(acc) · mult /
/// scale) + zp)` in `f32` (see [`IRequant`]). `alpha`, `beta` and the activation must be
/// 1, 0 and none; a C of another type, like an element outside its buffer, is refused.
pub fn run_requant(
    g: &Gemm,
    a: View,
    b: View,
    c_bytes: &mut [u8],
    c: (DType, i64, i64, i64),
    bias: Option<View>,
    rq: &Requant,
) -> Result<(), OutOfBounds> {
    let (cty, coff, crs, ccs) = c;
    let plain = g.alpha == 1.0 && g.beta == 0.0 && g.act == Activation::None;
    if !matches!(cty, DType::U8 | DType::I8) || !plain {
        return Err(OutOfBounds);
    }
    let (m, n) = (g.m, g.n);
    check(a.offset, a.row_stride, a.col_stride, m, g.k, a.len())?;
    check(b.offset, b.row_stride, b.col_stride, g.k, n, b.len())?;
    check(coff, crs, ccs, m, n, c_bytes.len())?;
    if let Some(bv) = &bias {
        check(bv.offset, bv.row_stride, bv.col_stride, m, n, bv.len())?;
    }
    let mv = &rq.mult;
    check(mv.offset, mv.row_stride, mv.col_stride, m, n, mv.len())?;
    if let Some(sv) = &rq.shift {
        check(sv.offset, sv.row_stride, sv.col_stride, m, n, sv.len())?;
    }
    if let Some((r, p)) = &rq.add {
        check(coff, crs, ccs, m, n, r.len() / p.r_size())?;
    }
    if int_kernels(
        g,
        &a,
        BOperand::View(&b),
        c_bytes,
        c,
        bias.as_ref(),
        Some(rq),
        None,
    )
    .is_some()
    {
        #[cfg(test)]
        tests::PATH.set(tests::Path::Int);
        return Ok(());
    }
    // The `i32` result in a dense temporary, then the requantization element by element.
    let mut tmp = vec![0u8; m * n * 4];
    run(g, a, b, &mut tmp, (DType::I32, 0, n as i64, 1), bias)?;
    #[cfg(test)]
    let path = tests::PATH.get();
    let signed = cty == DType::I8;
    for r in 0..m {
        for col in 0..n {
            let acc = read(&tmp, DType::I32, r * n + col) as i32;
            let mult = mv.get(mv.index(r, col)) as f32;
            let shift = rq.shift.as_ref().map(|sv| sv.get(sv.index(r, col)) as f32);
            let mut q = IRequant::value(acc, mult, shift, rq.scale, rq.zero_point as f32, signed);
            let at = (coff + r as i64 * crs + col as i64 * ccs) as usize;
            if let Some((res, p)) = &rq.add {
                let rv = if p.r_f32 {
                    let b = &res[4 * at..4 * at + 4];
                    p.quantize_r(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                } else if p.r_signed {
                    res[at] as i8 as f32
                } else {
                    res[at] as f32
                };
                q = p.value(q, rq.scale, rq.zero_point as f32, rv, signed);
            }
            c_bytes[at] = match rq.table {
                Some(t) => t[(q as u8 ^ if signed { 0x80 } else { 0 }) as usize],
                None => q as u8,
            };
        }
    }
    #[cfg(test)]
    tests::PATH.set(if path == tests::Path::Int {
        tests::Path::IntThenRequant
    } else {
        tests::Path::Generic
    });
    Ok(())
}

/// The definition: every element accumulated in `f64`, then scaled, biased, activated and
/// converted like the evaluator. Views must have been checked.
fn generic(
    g: &Gemm,
    a: &View,
    b: &View,
    c_bytes: &mut [u8],
    (cty, coff, crs, ccs): (DType, i64, i64, i64),
    bias: Option<&View>,
) {
    let cidx = |r: usize, col: usize| (coff + r as i64 * crs + col as i64 * ccs) as usize;
    for r in 0..g.m {
        for col in 0..g.n {
            let mut acc = 0.0f64;
            for kk in 0..g.k {
                acc += a.get(a.index(r, kk)) * b.get(b.index(kk, col));
            }
            let mut v = g.alpha * acc;
            if g.beta != 0.0 {
                v += g.beta * read(c_bytes, cty, cidx(r, col));
            }
            if let Some(bv) = bias {
                v += bv.get(bv.index(r, col));
            }
            write(c_bytes, cty, cidx(r, col), activate(g.act, v));
        }
    }
}

/// Element `(r, c)` of a view through arbitrary (checked) strides, as f32.
fn gather(v: &View, off: i64, rs: i64, cs: i64, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows as i64 {
        for c in 0..cols as i64 {
            out.push(read(v.bytes, v.dtype, (off + r * rs + c * cs) as usize) as f32);
        }
    }
    out
}

/// A bias, residual or multiplier view of an `m×n` product as the kernels take it: none, one
/// value, a vector along the rows or the columns (borrowed when contiguous), or a full matrix
/// (row-major with this leading dimension; borrowed when its rows are contiguous).
enum Broadcast<'a, T: bytes::Pod> {
    None,
    Scalar(T),
    Row(Cow<'a, [T]>),
    Col(Cow<'a, [T]>),
    Full(Cow<'a, [T]>, usize),
}

impl<'a, T: bytes::Pod> Broadcast<'a, T> {
    /// Reads `v` with strides `(rs, cs)`; `of` converts an element read as f64.
    fn new(
        v: Option<&View<'a>>,
        (m, n): (usize, usize),
        (rs, cs): (i64, i64),
        of: fn(f64) -> T,
    ) -> Broadcast<'a, T> {
        let Some(v) = v else {
            return Broadcast::None;
        };
        // A stride along a dimension of one element is never used.
        let rs = if m <= 1 { 0 } else { rs };
        let cs = if n <= 1 { 0 } else { cs };
        let data = bytes::cast::<T>(v.bytes).and_then(|d| d.get(v.offset as usize..));
        let get = |i: i64| of(read(v.bytes, v.dtype, i as usize));
        let gather = |rs: i64, cs: i64, rows: usize, cols: usize| -> Vec<T> {
            let mut out = Vec::with_capacity(rows * cols);
            for r in 0..rows as i64 {
                for c in 0..cols as i64 {
                    out.push(get(v.offset + r * rs + c * cs));
                }
            }
            out
        };
        let vector = |step: i64, len: usize| match data {
            Some(d) if step == 1 => Cow::Borrowed(&d[..len]),
            _ => Cow::Owned(gather(step, 0, len, 1)),
        };
        match (rs, cs) {
            (0, 0) => Broadcast::Scalar(get(v.offset)),
            (rs, 0) => Broadcast::Row(vector(rs, m)),
            (0, cs) => Broadcast::Col(vector(cs, n)),
            (rs, 1) if rs > 0 && data.is_some() => {
                Broadcast::Full(Cow::Borrowed(data.unwrap_or_default()), rs as usize)
            }
            (rs, cs) => Broadcast::Full(Cow::Owned(gather(rs, cs, m, n)), n),
        }
    }
}

/// The f32 bias of a product.
type F32Bias<'a> = Broadcast<'a, f32>;

/// The i32 bias of an integer product.
type IntBias<'a> = Broadcast<'a, i32>;

/// An f32 operand as the kernels take it: in place when its strides are non-negative and its
/// bytes aligned, else copied into a dense row-major matrix.
fn f32_operand<'a>(v: &View<'a>, rows: usize, cols: usize) -> (Cow<'a, [f32]>, usize, usize) {
    // A stride along a dimension of one element is never used: make it 0 so that a negative
    // one there does not force a copy.
    let rs = if rows <= 1 { 0 } else { v.row_stride };
    let cs = if cols <= 1 { 0 } else { v.col_stride };
    if rs >= 0
        && cs >= 0
        && let Some(data) = bytes::cast::<f32>(v.bytes).and_then(|d| d.get(v.offset as usize..))
    {
        return (Cow::Borrowed(data), rs as usize, cs as usize);
    }
    let dense = gather(v, v.offset, v.row_stride, v.col_stride, rows, cols);
    (Cow::Owned(dense), cols, 1)
}

impl F32Bias<'_> {
    fn epilogue(&self, g: &Gemm) -> kg::Epilogue<'_> {
        let ep = kg::Epilogue::new()
            .alpha(g.alpha as f32)
            .beta(g.beta as f32)
            .activation(g.act.kernel());
        match self {
            Broadcast::None => ep,
            Broadcast::Scalar(s) => ep.bias(kg::Bias::Scalar(*s)),
            Broadcast::Row(r) => ep.bias(kg::Bias::PerRow(r)),
            Broadcast::Col(c) => ep.bias(kg::Bias::PerCol(c)),
            Broadcast::Full(d, ld) => ep.residual(d, *ld),
        }
    }
}

/// An all-`f32` contraction on the tuned kernels. `None` when the kernels refused it (nothing
/// was written then, and the caller takes the generic path).
fn f32_kernels(
    g: &Gemm,
    a: &View,
    b: &View,
    c_bytes: &mut [u8],
    (_, coff, crs, ccs): (DType, i64, i64, i64),
    bias: Option<&View>,
    tail: Option<TileHook>,
) -> Option<()> {
    let (m, n, k) = (g.m, g.n, g.k);
    if m == 0 || n == 0 {
        return Some(());
    }
    let gemm = kg::Gemm::new().threads(g.threads);
    // The kernels of the transposed product see Cᵀ's blocks: the tail gets C's coordinates.
    let swapped = move |r0, rows, c0, cols| {
        if let Some(h) = tail {
            (h.0)(c0, cols, r0, rows);
        }
    };
    fn with<'e>(ep: kg::Epilogue<'e>, hook: Option<TileHook<'e>>) -> kg::Epilogue<'e> {
        match hook {
            None => ep,
            Some(h) => ep.tile_hook(h),
        }
    }
    let hook_t = tail.map(|_| TileHook(&swapped));
    let (ad, ars, acs) = f32_operand(a, m, k);
    let (bd, brs, bcs) = f32_operand(b, k, n);
    let (bias_rs, bias_cs) = bias.map_or((0, 0), |v| (v.row_stride, v.col_stride));
    // Rows of C contiguous: C as it is. Columns contiguous: Cᵀ = Bᵀ·Aᵀ, with the bias
    // transposed too. Neither: a dense temporary.
    let rows_ok = (n == 1 || ccs == 1) && (m == 1 || crs >= n as i64);
    let cols_ok = (m == 1 || crs == 1) && (n == 1 || ccs >= m as i64);
    let cf = if rows_ok || cols_ok {
        bytes::cast_mut::<f32>(c_bytes)
    } else {
        None
    };
    match cf {
        Some(cf) if rows_ok => {
            let ldc = if m == 1 { n } else { crs as usize };
            let orig_bias = bias;
            let bias = F32Bias::new(bias, (m, n), (bias_rs, bias_cs), |x| x as f32);
            let (ma, mb) = (
                kg::MatRef::new(&ad, ars, acs),
                kg::MatRef::new(&bd, brs, bcs),
            );
            let c = cf.get_mut(coff as usize..)?;
            if g.beta == 0.0
                && transposed_pays((gemm.tile().1, gemm.tile_last()), m, n, k)
                && let Some(pa) = packed_weight(&gemm, &ad, (k, m), (acs, ars))
            {
                let bias_t = F32Bias::new(orig_bias, (n, m), (bias_cs, bias_rs), |x| x as f32);
                let xt = kg::MatRef::new(&bd, bcs, brs);
                return gemm
                    .run_packed_transposed(n, xt, &pa, c, ldc, &with(bias_t.epilogue(g), tail))
                    .ok();
            }
            // A matrix-vector product keeps its dot products even on a weight: eight rows at a
            // time hide the FMA latency that a one-row tile on packed panels waits on (two
            // accumulators), and they split over threads from a smaller size (the 784-512-512-10
            // MLP: 0.030 ms on two threads, 0.050 with its weights packed).
            if !kg::dot_products(m, n, acs, (brs, bcs))
                && let Some(pb) = packed_weight(&gemm, &bd, (k, n), (brs, bcs))
            {
                return gemm
                    .run_packed(m, ma, &pb, c, ldc, &with(bias.epilogue(g), tail))
                    .ok();
            }
            gemm.run(m, n, k, ma, mb, c, ldc, &with(bias.epilogue(g), tail))
                .ok()
        }
        Some(cf) => {
            let ldc = if n == 1 { m } else { ccs as usize };
            let bias = F32Bias::new(bias, (n, m), (bias_cs, bias_rs), |x| x as f32);
            let (ma, mb) = (
                kg::MatRef::new(&bd, bcs, brs),
                kg::MatRef::new(&ad, acs, ars),
            );
            let c = cf.get_mut(coff as usize..)?;
            let ep = with(bias.epilogue(g), hook_t);
            if !kg::dot_products(n, m, bcs, (acs, ars))
                && let Some(pb) = packed_weight(&gemm, &ad, (k, m), (acs, ars))
            {
                return gemm.run_packed(n, ma, &pb, c, ldc, &ep).ok();
            }
            gemm.run(n, m, k, ma, mb, c, ldc, &ep).ok()
        }
        None => {
            let idx = |r: usize, c: usize| (coff + r as i64 * crs + c as i64 * ccs) as usize;
            let mut tmp = vec![0.0f32; m * n];
            if g.beta != 0.0 {
                for r in 0..m {
                    for c in 0..n {
                        tmp[r * n + c] = read(c_bytes, DType::F32, idx(r, c)) as f32;
                    }
                }
            }
            let bias = F32Bias::new(bias, (m, n), (bias_rs, bias_cs), |x| x as f32);
            let (ma, mb) = (
                kg::MatRef::new(&ad, ars, acs),
                kg::MatRef::new(&bd, brs, bcs),
            );
            gemm.run(m, n, k, ma, mb, &mut tmp, n, &bias.epilogue(g))
                .ok()?;
            for r in 0..m {
                for c in 0..n {
                    write(c_bytes, DType::F32, idx(r, c), f64::from(tmp[r * n + c]));
                }
            }
            if let Some(h) = tail {
                (h.0)(0, m, 0, n);
            }
            Some(())
        }
    }
}

/// Whether `C = W·X` (`m×n`, a weight on the left: a convolution's `W[co, ci]·X[ci, pixel]`)
/// runs faster as `Cᵀ = Xᵀ·Wᵀ` transposed back ([`kg::Gemm::run_packed_transposed`]), with a
/// microkernel tile `nr` columns wide whose last partial tile costs `nr_last` columns when at
/// most that many are left ([`kg::Gemm::tile_last`]), else `nr`. The kernels vectorize along
/// `C`'s columns, so a 7×7 map (`n = 49`) keeps 49 of 64 lanes busy while its 512 channels
/// would keep all of them; the transpose back costs about one cycle per element against
/// `k/32` for the product's multiply-adds, and the weight, now `B`, is packed once instead of
/// read in place as `MR` strided rows (`cargo bench --bench gemm`, Zen 4, one thread:
/// 512×49×512 87 → 113 GFLOP/s, 256×196×256 107 → 115 with the 16-column last tile; in
/// PP-LCNet that layer 0.26 → 0.25 ms, SqueezeNet's 1000×169×512 head 1.73 → 1.65 ms
/// untransposed, hence the threshold). Each element sums its `k` products in the same order
/// either way. A one-column product is left to the kernels' dot products
/// ([`kg::dot_products`]).
pub(crate) fn transposed_pays((nr, nr_last): (usize, usize), m: usize, n: usize, k: usize) -> bool {
    let padded = |x: usize| {
        let full = x / nr * nr;
        match x - full {
            0 => full,
            r if r <= nr_last => full + nr_last,
            _ => full + nr,
        }
    };
    let busy = |x: usize| x as f64 / padded(x) as f64;
    n > 1 && m >= nr && k > 0 && busy(m) / busy(n) > 1.025 + 8.0 / k as f64
}

/// The packed form of the `k×n` right operand `b` (strides `rs`, `cs`) when it is a weight of
/// the running executor: packed on first use, then reused by every call. Without it the
/// kernels pack a weight on every call (above 64 rows, or a transposed one), or read it in
/// place as strided panels, up to 2× slower than packed ones at a few dozen rows (GPT-2's
/// tied lm_head, 32×256×5000).
// The `Cow` itself is the point: only a borrowed operand can lie in the weights.
#[allow(clippy::ptr_arg)]
fn packed_weight(
    gemm: &kg::Gemm,
    b: &Cow<'_, [f32]>,
    (k, n): (usize, usize),
    (rs, cs): (usize, usize),
) -> Option<std::sync::Arc<kg::PackedB>> {
    let Cow::Borrowed(w) = b else {
        return None;
    };
    super::exec::packed_weight(w, k, n, rs, cs, || {
        gemm.pack_b(k, n, kg::MatRef::new(w, rs, cs)).ok()
    })
}

/// An integer operand the integer kernels take in place.
enum IntView<'a> {
    U8(IntRef<'a, u8>),
    I8(IntRef<'a, i8>),
    I32(IntRef<'a, i32>),
}

/// Runs `$body` with `$x` bound to the typed view inside an [`IntView`].
macro_rules! with_int {
    ($v:expr, $x:ident => $body:expr) => {
        match $v {
            IntView::U8($x) => $body,
            IntView::I8($x) => $body,
            IntView::I32($x) => $body,
        }
    };
}

impl<'a> IntView<'a> {
    /// The view in place, if its type is one the kernels take, its strides are non-negative
    /// and its bytes aligned.
    fn new(v: &View<'a>, rows: usize, cols: usize) -> Option<IntView<'a>> {
        let rs = if rows <= 1 { 0 } else { v.row_stride };
        let cs = if cols <= 1 { 0 } else { v.col_stride };
        if rs < 0 || cs < 0 {
            return None;
        }
        let (rs, cs, off) = (rs as usize, cs as usize, v.offset as usize);
        Some(match v.dtype {
            DType::U8 => IntView::U8(IntRef::new(bytes::cast(v.bytes)?.get(off..)?, rs, cs)),
            DType::I8 => IntView::I8(IntRef::new(bytes::cast(v.bytes)?.get(off..)?, rs, cs)),
            DType::I32 => IntView::I32(IntRef::new(bytes::cast(v.bytes)?.get(off..)?, rs, cs)),
            _ => return None,
        })
    }

    fn t(self) -> Self {
        match self {
            IntView::U8(x) => IntView::U8(x.t()),
            IntView::I8(x) => IntView::I8(x.t()),
            IntView::I32(x) => IntView::I32(x.t()),
        }
    }
}

impl IntBias<'_> {
    fn get(&self) -> IBias<'_> {
        match self {
            Broadcast::None => IBias::None,
            Broadcast::Scalar(s) => IBias::Scalar(*s),
            Broadcast::Row(r) => IBias::PerRow(r),
            Broadcast::Col(c) => IBias::PerCol(c),
            Broadcast::Full(d, ld) => IBias::Full(d, *ld),
        }
    }
}

/// The requantization's multipliers as the integer kernels take them, for an `m×n` product
/// whose multiplier view has strides `(rs, cs)`: `None` for a full matrix of them.
fn rq_mult<'a>(v: &View<'a>, m: usize, n: usize, rs: i64, cs: i64) -> Option<Cow<'a, [f32]>> {
    match Broadcast::<f32>::new(Some(v), (m, n), (rs, cs), |x| x as f32) {
        Broadcast::Scalar(x) => Some(Cow::Owned(vec![x])),
        Broadcast::Row(r) => Some(r),
        Broadcast::Col(c) => Some(c),
        Broadcast::None | Broadcast::Full(..) => None,
    }
}

/// An integer contraction (`u8`/`i8`/`i32` operands, `i32` bias, no scaling, no activation)
/// on the exact integer kernels: an `i32` result, or with `rq` one requantized into a `u8`/`i8`
/// C in their epilogue. `None` when they refuse it (operands whose values span more than 256
/// integers, a result that could leave `i32`, views they cannot read in place, multipliers
/// that vary along both dimensions); nothing was written then, and the caller takes the
/// generic path.
pub(super) fn int_kernels(
    g: &Gemm,
    a: &View,
    b: BOperand,
    c_bytes: &mut [u8],
    (cty, coff, crs, ccs): (DType, i64, i64, i64),
    bias: Option<&View>,
    rq: Option<&Requant>,
    tail: Option<TileHook>,
) -> Option<()> {
    let (m, n, k) = (g.m, g.n, g.k);
    if rq.is_some() && tail.is_some() {
        return None;
    }
    let plain = g.alpha == 1.0 && g.beta == 0.0 && g.act == Activation::None;
    let cty_ok = match rq {
        None => cty == DType::I32,
        Some(_) => matches!(cty, DType::U8 | DType::I8),
    };
    if !cty_ok || !plain || bias.is_some_and(|v| v.dtype != DType::I32) {
        return None;
    }
    if rq.is_some_and(|r| r.mult.dtype != DType::F32) {
        return None;
    }
    let av = IntView::new(a, m, k)?;
    let bv = match b {
        BOperand::View(v) => IntB::View(IntView::new(v, k, n)?),
        BOperand::Image(img) => IntB::Image(IntImg::new(img)?),
    };
    if m == 0 || n == 0 {
        return Some(());
    }
    let ig = IGemm::new().threads(g.threads);
    let (bias_rs, bias_cs) = bias.map_or((0, 0), |v| (v.row_stride, v.col_stride));
    // C's orientation as in `f32_kernels`.
    let rows_ok = (n == 1 || ccs == 1) && (m == 1 || crs >= n as i64);
    let cols_ok = (m == 1 || crs == 1) && (n == 1 || ccs >= m as i64);
    if let Some(rq) = rq {
        // Requantized: C's bytes in place in either orientation (the multipliers transposed
        // with it), else the caller's temporary.
        if !(rows_ok || cols_ok) {
            return None;
        }
        // A multiplier (or shift) view as one value, per row or per column of C.
        fn vector<'v>(v: &View<'v>, m: usize, n: usize) -> Option<(Cow<'v, [f32]>, bool, bool)> {
            let (rs, cs) = (v.row_stride, v.col_stride);
            let vals = rq_mult(v, m, n, rs, cs)?;
            let per_row = (if m <= 1 { 0 } else { rs }) != 0;
            let per_col = (if n <= 1 { 0 } else { cs }) != 0;
            Some((vals, per_row, per_col))
        }
        fn oriented<'v>(
            (vals, per_row, per_col): &'v (Cow<'_, [f32]>, bool, bool),
            transposed: bool,
        ) -> RqMult<'v> {
            match (per_row, per_col) {
                (false, false) => RqMult::Scalar(vals[0]),
                (true, _) if !transposed => RqMult::PerRow(vals),
                (true, _) => RqMult::PerCol(vals),
                (_, true) if !transposed => RqMult::PerCol(vals),
                (_, true) => RqMult::PerRow(vals),
            }
        }
        let mult = vector(&rq.mult, m, n)?;
        let shift = match &rq.shift {
            Some(sv) => Some(vector(sv, m, n)?),
            None => None,
        };
        let mult_of = |transposed: bool| oriented(&mult, transposed);
        let shift_of = |transposed: bool| shift.as_ref().map(|s| oriented(s, transposed));
        fn q_out<'c>(c: &'c mut [u8], irq: IRequant<'c>, signed: bool) -> IOut<'c> {
            if signed {
                IOut::I8(bytes::cast_mut::<i8>(c).unwrap_or_default(), irq)
            } else {
                IOut::U8(c, irq)
            }
        }
        // The residual is laid out as C: from C's first element, with C's leading dimension
        // in either orientation.
        let add = match &rq.add {
            Some((r, p)) => Some(IAdd {
                r: r.get(coff as usize * p.r_size()..)?,
                p: *p,
            }),
            None => None,
        };
        let irq = |mult, shift| IRequant {
            mult,
            shift,
            scale: rq.scale,
            zero_point: rq.zero_point,
            add,
            table: rq.table,
        };
        let signed = cty == DType::I8;
        let c = c_bytes.get_mut(coff as usize..)?;
        return if rows_ok {
            let ldc = if m == 1 { n } else { crs as usize };
            let bias = IntBias::new(bias, (m, n), (bias_rs, bias_cs), |x| x as i32);
            let o = q_out(c, irq(mult_of(false), shift_of(false)), signed);
            int_product(&ig, (m, n, k), av, bv, o, ldc, bias.get())
        } else {
            let ldc = if n == 1 { m } else { ccs as usize };
            let bias = IntBias::new(bias, (n, m), (bias_cs, bias_rs), |x| x as i32);
            let o = q_out(c, irq(mult_of(true), shift_of(true)), signed);
            int_product(
                &ig,
                (n, m, k),
                bv.view()?.t(),
                IntB::View(av.t()),
                o,
                ldc,
                bias.get(),
            )
        };
    }
    let cf = if rows_ok || cols_ok {
        bytes::cast_mut::<i32>(c_bytes)
    } else {
        None
    };
    // As in `f32_kernels`: the transposed product's blocks in C's coordinates.
    let swapped = move |r0, rows, c0, cols| {
        if let Some(h) = tail {
            (h.0)(c0, cols, r0, rows);
        }
    };
    let out = |c, transposed: bool| match tail {
        None => IOut::I32(c),
        Some(_) if transposed => IOut::I32Then(c, TileHook(&swapped)),
        Some(h) => IOut::I32Then(c, h),
    };
    match cf {
        Some(cf) if rows_ok => {
            let ldc = if m == 1 { n } else { crs as usize };
            let bias = IntBias::new(bias, (m, n), (bias_rs, bias_cs), |x| x as i32);
            let c = cf.get_mut(coff as usize..)?;
            int_product(&ig, (m, n, k), av, bv, out(c, false), ldc, bias.get())
        }
        Some(cf) => {
            let ldc = if n == 1 { m } else { ccs as usize };
            let bias = IntBias::new(bias, (n, m), (bias_cs, bias_rs), |x| x as i32);
            let c = cf.get_mut(coff as usize..)?;
            int_product(
                &ig,
                (n, m, k),
                bv.view()?.t(),
                IntB::View(av.t()),
                out(c, true),
                ldc,
                bias.get(),
            )
        }
        None => {
            let bias = IntBias::new(bias, (m, n), (bias_rs, bias_cs), |x| x as i32);
            let mut tmp = vec![0i32; m * n];
            int_product(&ig, (m, n, k), av, bv, IOut::I32(&mut tmp), n, bias.get())?;
            for r in 0..m {
                for c in 0..n {
                    let i = (coff + r as i64 * crs + c as i64 * ccs) as usize;
                    write(c_bytes, DType::I32, i, f64::from(tmp[r * n + c]));
                }
            }
            if let Some(h) = tail {
                (h.0)(0, m, 0, n);
            }
            Some(())
        }
    }
}

/// `B` as the contraction library receives it: a strided view, or a convolution's image.
#[derive(Clone, Copy)]
pub(super) enum BOperand<'v, 'a> {
    View(&'v View<'a>),
    Image(&'v Image<'a>),
}

/// An integer `B`: a view in place, or an 8-bit image the kernels pack from.
enum IntB<'a> {
    View(IntView<'a>),
    Image(IntImg<'a>),
}

#[derive(Clone, Copy)]
enum IntImg<'a> {
    U8(IntImage<'a, u8>),
    I8(IntImage<'a, i8>),
}

impl<'a> IntB<'a> {
    /// The view, or `None` for an image (which only the kernels' `B` takes).
    fn view(self) -> Option<IntView<'a>> {
        match self {
            IntB::View(v) => Some(v),
            IntB::Image(_) => None,
        }
    }
}

impl<'a> IntImg<'a> {
    /// The image in place, if it is 8-bit and aligned (always, for one byte).
    fn new(img: &Image<'a>) -> Option<IntImg<'a>> {
        let off = usize::try_from(img.offset).ok()?;
        Some(match img.dtype {
            DType::U8 => IntImg::U8(IntImage {
                data: img.bytes.get(off..)?,
                geom: img.geom,
                fill: img.fill[0],
            }),
            DType::I8 => IntImg::I8(IntImage {
                data: bytes::cast::<i8>(img.bytes)?.get(off..)?,
                geom: img.geom,
                fill: img.fill[0] as i8,
            }),
            _ => return None,
        })
    }
}

/// `C (m×n) = A·B + bias` (or its requantization) on the integer kernels (views in place), with an operand that is one
/// of the executor's weights packed once and reused by every later call (the other is packed
/// on the call: an `i8` conv weight as `A`, an `i8` MatMulInteger weight as `B`). `None` when
/// the kernels refuse the product.
fn int_product(
    ig: &IGemm,
    (m, n, k): (usize, usize, usize),
    a: IntView,
    b: IntB,
    c: IOut,
    ldc: usize,
    bias: IBias,
) -> Option<()> {
    let b = match b {
        IntB::View(b) => b,
        IntB::Image(img) => {
            // The image is packed from block by block; A is the weight, packed once (or here,
            // when it is not one of the executor's weights).
            let pa = with_int!(a, x => packed_int(ig, Slot::A, (m, k), x))
                .or_else(|| with_int!(a, x => ig.pack_a(m, k, x).ok().map(std::sync::Arc::new)))?;
            return match img {
                IntImg::U8(i) => ig.run_packed_a_image_into(&pa, i, c, ldc, bias),
                IntImg::I8(i) => ig.run_packed_a_image_into(&pa, i, c, ldc, bias),
            }
            .ok();
        }
    };
    if let Some(pa) = with_int!(a, x => packed_int(ig, Slot::A, (m, k), x)) {
        return with_int!(b, y => ig.run_packed_a_into(&pa, n, y, c, ldc, bias)).ok();
    }
    if let Some(pb) = with_int!(b, y => packed_int(ig, Slot::B, (k, n), y)) {
        return with_int!(a, x => ig.run_packed_b_into(m, x, &pb, c, ldc, bias)).ok();
    }
    with_int!(a, x => with_int!(b, y => ig.run_into(m, n, k, x, y, c, ldc, bias))).ok()
}

/// The `rows×cols` operand `v` for `slot`, packed once per executor when it is one of its
/// weights (see [`super::exec::packed_int_weight`]).
fn packed_int<T: IntElem>(
    ig: &IGemm,
    slot: Slot,
    (rows, cols): (usize, usize),
    v: IntRef<'_, T>,
) -> Option<std::sync::Arc<PackedInt>> {
    super::exec::packed_int_weight(v.data, slot, (rows, cols), (v.rs, v.cs), || match slot {
        Slot::A => ig.pack_a(rows, cols, v).ok(),
        Slot::B => ig.pack_b(rows, cols, v).ok(),
    })
}

#[cfg(test)]
mod tests;
