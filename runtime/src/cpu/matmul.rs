//! The contraction library behind `Stmt::Matmul`: `C = act(alpha·A·B + beta·C + bias)` on
//! strided views, as the kernel IR defines it.
//!
//! Generated code calls the `mlc_matmul` helper (see [`super::abi`]) with a block of
//! arguments; it lands in [`run`], which dispatches on the dtypes: all-`f32` takes a packed,
//! row-blocked `f32` path; everything else a generic path accumulating in `f64` and rounding
//! like the evaluator.

use super::abi::{Activation, DType};

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

/// Below this many multiply-adds a call stays on one thread.
const MIN_THREADED_MACS: usize = 1 << 18;

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
    let (cty, coff, crs, ccs) = c;
    let clen = c_bytes.len() / elem_size(cty);
    check(a.offset, a.row_stride, a.col_stride, g.m, g.k, a.len())?;
    check(b.offset, b.row_stride, b.col_stride, g.k, g.n, b.len())?;
    check(coff, crs, ccs, g.m, g.n, clen)?;
    if let Some(bv) = &bias {
        check(bv.offset, bv.row_stride, bv.col_stride, g.m, g.n, bv.len())?;
    }
    let cidx = |r: usize, col: usize| (coff + r as i64 * crs + col as i64 * ccs) as usize;
    let all_f32 = a.dtype == DType::F32
        && b.dtype == DType::F32
        && cty == DType::F32
        && bias.is_none_or(|v| v.dtype == DType::F32);
    if all_f32 {
        let acc = f32_product_threaded(g, &a, &b);
        for r in 0..g.m {
            for col in 0..g.n {
                let mut v = g.alpha as f32 * acc[r * g.n + col];
                if g.beta != 0.0 {
                    v += g.beta as f32 * read(c_bytes, cty, cidx(r, col)) as f32;
                }
                if let Some(bv) = &bias {
                    v += bv.get(bv.index(r, col)) as f32;
                }
                let v = activate(g.act, v as f64);
                write(c_bytes, cty, cidx(r, col), v);
            }
        }
        return Ok(());
    }
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
            if let Some(bv) = &bias {
                v += bv.get(bv.index(r, col));
            }
            write(c_bytes, cty, cidx(r, col), activate(g.act, v));
        }
    }
    Ok(())
}

/// The f32s of `bytes` from element `start`, `n` of them, contiguous.
fn f32_run(bytes: &[u8], start: usize, n: usize) -> impl Iterator<Item = f32> + '_ {
    bytes[start * 4..(start + n) * 4]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// A `rows×cols` f32 view packed dense and row-major (contiguous rows copied as runs).
fn pack_f32(v: &View, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        if v.col_stride == 1 || cols == 1 {
            out.extend(f32_run(v.bytes, v.index(r, 0), cols));
        } else {
            out.extend((0..cols).map(|c| v.get(v.index(r, c)) as f32));
        }
    }
    out
}

/// `A·B` in f32 as a dense row-major `m×n`, columns split across `g.threads` threads when
/// the problem is big enough.
fn f32_product_threaded(g: &Gemm, a: &View, b: &View) -> Vec<f32> {
    let (m, n, k) = (g.m, g.n, g.k);
    let ap = pack_f32(a, m, k);
    let bp = if b.row_stride == 1 && k > 1 {
        None
    } else {
        Some(pack_f32(b, k, n))
    };
    let t = g.threads.clamp(1, n.max(1));
    if t == 1 || m * n * k < MIN_THREADED_MACS {
        return f32_cols(g, &ap, b, bp.as_deref(), 0, n);
    }
    let per = n.div_ceil(t);
    let blocks: Vec<(usize, Vec<f32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..t)
            .map(|i| (i * per, ((i + 1) * per).min(n)))
            .filter(|(c0, c1)| c0 < c1)
            .map(|(c0, c1)| {
                let (ap, bp) = (&ap, bp.as_deref());
                s.spawn(move || (c0, f32_cols(g, ap, b, bp, c0, c1)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut out = vec![0f32; m * n];
    for (c0, blk) in blocks {
        let w = blk.len() / m.max(1);
        for r in 0..m {
            out[r * n + c0..r * n + c0 + w].copy_from_slice(&blk[r * w..(r + 1) * w]);
        }
    }
    out
}

/// Columns `c0..c1` of `A·B` (A packed `m×k`) as a dense row-major `m×(c1-c0)`. With `bp`
/// (B packed `k×n`), four rows of C are accumulated at a time against each row of B; without,
/// B's columns are contiguous (B stored transposed, as Gemm weights usually are) and each
/// element is a dot product read in place.
fn f32_cols(g: &Gemm, ap: &[f32], b: &View, bp: Option<&[f32]>, c0: usize, c1: usize) -> Vec<f32> {
    let (m, k) = (g.m, g.k);
    let (n, w) = (g.n, c1 - c0);
    let mut out = vec![0f32; m * w];
    let Some(bp) = bp else {
        for col in c0..c1 {
            let start = b.index(0, col);
            for r in 0..m {
                let arow = &ap[r * k..(r + 1) * k];
                out[r * w + col - c0] = arow
                    .iter()
                    .zip(f32_run(b.bytes, start, k))
                    .map(|(x, y)| x * y)
                    .sum();
            }
        }
        return out;
    };
    let mut r = 0;
    while r + 4 <= m {
        let (o0, rest) = out[r * w..(r + 4) * w].split_at_mut(w);
        let (o1, rest) = rest.split_at_mut(w);
        let (o2, o3) = rest.split_at_mut(w);
        for kk in 0..k {
            let brow = &bp[kk * n + c0..kk * n + c1];
            let (a0, a1, a2, a3) = (
                ap[r * k + kk],
                ap[(r + 1) * k + kk],
                ap[(r + 2) * k + kk],
                ap[(r + 3) * k + kk],
            );
            for j in 0..w {
                let bv = brow[j];
                o0[j] += a0 * bv;
                o1[j] += a1 * bv;
                o2[j] += a2 * bv;
                o3[j] += a3 * bv;
            }
        }
        r += 4;
    }
    for r in r..m {
        let orow = &mut out[r * w..(r + 1) * w];
        for kk in 0..k {
            let av = ap[r * k + kk];
            for (ov, bv) in orow.iter_mut().zip(&bp[kk * n + c0..kk * n + c1]) {
                *ov += av * bv;
            }
        }
    }
    out
}
