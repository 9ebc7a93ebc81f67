//! f32 softmax over contiguous rows, with an optional scalar pre-scale and an additive operand
//! broadcast to the rows (attention's mask).
//!
//! This is the kernel behind the kernel IR's `Stmt::Softmax`. Each row takes three passes, the
//! row staying in L1 between them: `v = x·scale + mask` written to the output while its
//! maximum is taken, then `e = exp(v - max)` written back and summed, then `e · (1/sum)`. The
//! vector kernels (16 lanes with AVX-512, 8 with AVX2+FMA) use Cephes' `expf` (range reduction
//! by `ln 2` in two parts, a degree-5 polynomial; within a few ulp) and sum in lanes, so they
//! differ from the evaluator's sequential `f32` definition by a few ulp. The pre-scale and the
//! mask are a separate multiply and add (no FMA), rounded as the definition rounds them. A row
//! whose length is not a multiple of the lanes ends in a masked vector.
//!
//! NaN and infinities behave as the definition's: a NaN anywhere in a row, or a `+inf`, makes
//! the whole row NaN (through the sum), `-inf` entries become 0, and a row of `-inf` only is
//! NaN.
//!
//! Threads: rows are cut into a few tasks per thread run on the runtime's pool
//! ([`crate::kernels::parallel_for`]), each writing its own rows.
//!
//! ```
//! use mlc_runtime::kernels::softmax::{run, Mask};
//! use mlc_runtime::kernels::Isa;
//!
//! // Two rows of two, the second column masked out in both.
//! let x = [0.0f32, 5.0, 1.0, 1.0];
//! let m = [0.0f32, f32::NEG_INFINITY];
//! let mask = Mask { data: &m, dims: &[(2, 0)] };
//! let mut y = [0.0f32; 4];
//! run(&x, &mut y, 2, 2, None, Some(mask), 1, Isa::detect()).unwrap();
//! assert_eq!(y, [1.0, 0.0, 1.0, 0.0]);
//! ```

// Rows of disjoint tasks are written through a raw pointer shared by the pool's threads, and
// the ISA kernels use intrinsics; every such use carries a `SAFETY:` comment.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;
#[cfg(test)]
mod tests;

use super::{Isa, SendPtr};

/// The additive operand: row `r`, taken as the mixed-radix number of `dims`' extents
/// (outermost first, their product the row count), starts at `Σ digit_i · stride_i` in `data`
/// and is contiguous along the row. A zero stride broadcasts.
#[derive(Clone, Copy, Debug)]
pub struct Mask<'a> {
    pub data: &'a [f32],
    /// `(extent, stride)` per row dimension, outermost first.
    pub dims: &'a [(usize, usize)],
}

impl Mask<'_> {
    /// Where row `r`'s operand starts.
    fn row_offset(&self, mut r: usize) -> usize {
        let mut off = 0;
        for &(extent, stride) in self.dims.iter().rev() {
            let e = extent.max(1);
            off += (r % e) * stride;
            r /= e;
        }
        off
    }
}

/// Why a softmax was refused (nothing is written then).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SoftmaxError {
    #[error("{operand} needs {needed} elements but has {len}")]
    TooShort {
        operand: &'static str,
        needed: usize,
        len: usize,
    },
    #[error("the mask's row dimensions multiply to {got}, not the {rows} rows")]
    MaskRows { got: usize, rows: usize },
    #[error("the softmax's sizes overflow the address space")]
    Overflow,
}

/// One row's operands: the input, the mask row (if any), the output.
pub(crate) struct Row<'a> {
    pub x: &'a [f32],
    pub mask: Option<&'a [f32]>,
    pub out: &'a mut [f32],
}

/// `out[r] = softmax(x[r] · scale + mask[r])` for the `rows` rows of `len` elements, on up
/// to `threads` threads of the runtime's pool, with the kernels of `isa` (or of the widest
/// level this CPU has, if narrower).
#[allow(clippy::too_many_arguments)]
pub fn run(
    x: &[f32],
    out: &mut [f32],
    rows: usize,
    len: usize,
    scale: Option<f32>,
    mask: Option<Mask>,
    threads: usize,
    isa: Isa,
) -> Result<(), SoftmaxError> {
    let n = rows.checked_mul(len).ok_or(SoftmaxError::Overflow)?;
    for (operand, have) in [("x", x.len()), ("out", out.len())] {
        if have < n {
            return Err(SoftmaxError::TooShort {
                operand,
                needed: n,
                len: have,
            });
        }
    }
    if let Some(m) = &mask {
        let got = m
            .dims
            .iter()
            .try_fold(1usize, |a, &(e, _)| a.checked_mul(e))
            .ok_or(SoftmaxError::Overflow)?;
        if got != rows {
            return Err(SoftmaxError::MaskRows { got, rows });
        }
        // The furthest element a row reads.
        let needed = m
            .dims
            .iter()
            .try_fold(len, |a, &(e, st)| {
                a.checked_add(e.saturating_sub(1).checked_mul(st)?)
            })
            .ok_or(SoftmaxError::Overflow)?;
        if rows > 0 && m.data.len() < needed {
            return Err(SoftmaxError::TooShort {
                operand: "mask",
                needed,
                len: m.data.len(),
            });
        }
    }
    if n == 0 {
        return Ok(());
    }
    let isa = if isa.is_supported() {
        isa
    } else {
        Isa::detect()
    };
    // Threads pay for themselves only on enough work (a row is a few hundred cycles).
    let threads = threads.max(1);
    let tasks = if threads == 1 || n < 8192 {
        1
    } else {
        rows.min(4 * threads)
    };
    let per = rows.div_ceil(tasks);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let task = |t: usize| {
        for r in t * per..((t + 1) * per).min(rows) {
            // SAFETY: `out` holds `rows·len` floats (checked above); row `r` is
            // `[r·len, (r+1)·len)`, each row belongs to exactly one task, so the slices
            // handed out are disjoint, and all of them end before `run` returns
            // (`parallel_for` joins its tasks).
            let out = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(r * len), len) };
            let mut row = Row {
                x: &x[r * len..(r + 1) * len],
                mask: mask.map(|m| {
                    let o = m.row_offset(r);
                    &m.data[o..o + len]
                }),
                out,
            };
            dispatch(isa, &mut row, scale);
        }
    };
    if tasks == 1 {
        task(0);
    } else {
        super::parallel_for(tasks, &task);
    }
    Ok(())
}

/// Runs one row with the kernels of `isa` (which this CPU supports).
fn dispatch(isa: Isa, row: &mut Row, scale: Option<f32>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is supported (checked by `run`), so the CPU has AVX-512F.
        Isa::Avx512 => unsafe { avx512::row(row, scale) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, AVX2 and FMA.
        Isa::Avx2 => unsafe { avx2::row(row, scale) },
        _ => portable::row(row, scale),
    }
}
