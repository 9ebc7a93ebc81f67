//! The AVX-512 depthwise kernel: 16 outputs of a row per zmm.
//!
//! Per vector of 16 outputs the accumulator takes `kh·kw` multiplies and adds (no FMA, to stay
//! bit-exact with the evaluator); the weight is a broadcast. Horizontal padding and the row's
//! last partial vector are lane masks (`vmaskmov` loads never touch a masked lane, so a load
//! may start before the row or run past it); a row outside the input adds `0·w` from a zero
//! vector. Stride 2 loads 32 consecutive inputs in two vectors and keeps the even lanes with one
//! `vpermt2ps`; larger strides gather.

#![allow(unsafe_code)]

use super::{BinKind, EpOp, Task};
use std::arch::x86_64::*;

const L: usize = 16;

/// Lanes `i` of a 16-lane vector starting at column `c0` with `0 <= c0 + i < n`.
fn range_mask(c0: isize, n: isize) -> u16 {
    let lo = (-c0).clamp(0, L as isize) as u32;
    let hi = (n - c0).clamp(0, L as isize) as u32;
    if hi <= lo {
        return 0;
    }
    let upto = |k: u32| if k >= 16 { 0xffffu32 } else { (1u32 << k) - 1 };
    (upto(hi) & !upto(lo)) as u16
}

/// The column tables of a call: per (chunk of 16 outputs, kx) the first input column and the
/// masks of the two 16-lane halves it reads (only the first matters for stride 1); per chunk
/// whether every tap's lanes lie inside the row (no mask needed).
struct Cols {
    cols: Vec<(isize, u16, u16)>,
    full: Vec<bool>,
}

/// Computes the items' rows (see the module docs).
///
/// # Safety
///
/// The CPU must support AVX-512F; every item's `x` must hold the `ih·iw` plane, `w` `kh·kw`
/// weights and `out` whole rows of `ow` outputs, all items sharing one geometry.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn rows(ts: &mut [Task]) {
    let Some(first) = ts.first() else { return };
    let g = *first.g;
    // SAFETY: forwarded contract.
    unsafe {
        match g.sw {
            1 => rows_s::<1>(ts),
            2 => rows_s::<2>(ts),
            _ => rows_s::<0>(ts),
        }
    }
}

/// `S` is the horizontal stride for 1 and 2, and 0 for any other (gathers).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn rows_s<const S: usize>(ts: &mut [Task]) {
    let g = *ts[0].g;
    let chunks = g.ow.div_ceil(L);
    let mut t = Cols {
        cols: Vec::with_capacity(chunks * g.kw),
        full: Vec::with_capacity(chunks),
    };
    for c in 0..chunks {
        let mut all = true;
        for kx in 0..g.kw {
            let c0 = (c * L) as isize * g.sw + kx as isize * g.dw - g.pl;
            let (m0, m1) = (range_mask(c0, g.iw), range_mask(c0 + L as isize, g.iw));
            all &= match S {
                1 => m0 == 0xffff,
                2 => m0 == 0xffff && m1 == 0xffff,
                _ => false,
            };
            t.cols.push((c0, m0, m1));
        }
        t.full.push(all);
    }
    for task in ts.iter_mut() {
        let nrows = task.out.len() / g.ow;
        let obase = task.out.as_mut_ptr();
        for r in 0..nrows {
            let oy = (task.oy0 + r) as isize;
            let dst = obase.wrapping_add(r * g.ow);
            // Blocks of 4 chunks share each weight broadcast and the row bookkeeping; the
            // rest go by 2 and 1.
            let mut c = 0;
            // SAFETY (all three): forwarded contract; `dst` is row `r` of the item's output,
            // and each block covers chunks `[c, c + NB)` with `c + NB <= chunks`.
            while c + 4 <= chunks {
                unsafe { block::<S, 4>(&t, task, oy, c, dst) };
                c += 4;
            }
            if c + 2 <= chunks {
                unsafe { block::<S, 2>(&t, task, oy, c, dst) };
                c += 2;
            }
            if c < chunks {
                unsafe { block::<S, 1>(&t, task, oy, c, dst) };
            }
        }
    }
}

/// Output chunks `[c, c + NB)` of row `oy`, stored at `dst + 16·c`.
///
/// # Safety
///
/// As [`rows`]; `dst` is an output row of `ow` floats and `c + NB` is at most the row's
/// chunk count.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block<const S: usize, const NB: usize>(
    t: &Cols,
    task: &Task,
    oy: isize,
    c: usize,
    dst: *mut f32,
) {
    let g = task.g;
    let zero = _mm512_setzero_ps();
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let mut acc = [_mm512_set1_ps(task.bias); NB];
    let all_full = t.full[c..c + NB].iter().all(|&f| f);
    for ky in 0..g.kh {
        let iy = oy * g.sh + ky as isize * g.dh - g.pt;
        let wrow = &task.w[ky * g.kw..(ky + 1) * g.kw];
        if iy < 0 || iy >= g.ih {
            // A padding row adds 0·w to every lane, as the definition says.
            for &wv in wrow {
                let z = _mm512_mul_ps(zero, _mm512_set1_ps(wv));
                for a in acc.iter_mut() {
                    *a = _mm512_add_ps(*a, z);
                }
            }
            continue;
        }
        let rowp = task.x.as_ptr().wrapping_offset(iy * g.iw);
        for (kx, &wv) in wrow.iter().enumerate() {
            let wv = _mm512_set1_ps(wv);
            for (j, a) in acc.iter_mut().enumerate() {
                let (c0, m0, m1) = t.cols[(c + j) * g.kw + kx];
                let p = rowp.wrapping_offset(c0);
                // SAFETY: row `iy` lies in the plane (tested above); in a block of full
                // chunks every lane lies inside the row, and otherwise the masks enable
                // exactly the lanes whose columns do (masked-off lanes are never accessed).
                let xv = unsafe {
                    match S {
                        1 if all_full => _mm512_loadu_ps(p),
                        1 => _mm512_maskz_loadu_ps(m0, p),
                        2 if all_full => _mm512_permutex2var_ps(
                            _mm512_loadu_ps(p),
                            even,
                            _mm512_loadu_ps(p.wrapping_add(L)),
                        ),
                        2 => _mm512_permutex2var_ps(
                            _mm512_maskz_loadu_ps(m0, p),
                            even,
                            _mm512_maskz_loadu_ps(m1, p.wrapping_add(L)),
                        ),
                        _ => {
                            let lane = _mm512_setr_epi32(
                                0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                            );
                            let idx = _mm512_add_epi32(
                                _mm512_mullo_epi32(lane, _mm512_set1_epi32(g.sw as i32)),
                                _mm512_set1_epi32(c0 as i32),
                            );
                            let inside = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512())
                                & _mm512_cmplt_epi32_mask(idx, _mm512_set1_epi32(g.iw as i32));
                            _mm512_mask_i32gather_ps::<4>(zero, inside, idx, rowp)
                        }
                    }
                };
                *a = _mm512_add_ps(*a, _mm512_mul_ps(xv, wv));
            }
        }
    }
    epilogue(task.ep, &mut acc);
    for (j, v) in acc.iter().enumerate() {
        let lanes = (g.ow - (c + j) * L).min(L);
        let store = if lanes == L {
            0xffff
        } else {
            ((1u32 << lanes) - 1) as u16
        };
        // SAFETY: the row holds `ow` floats; the mask enables the lanes `16·(c + j) + i < ow`.
        unsafe { _mm512_mask_storeu_ps(dst.add((c + j) * L), store, *v) };
    }
}

/// The epilogue on `NB` vectors, exactly as [`super::apply_epilogue`] on each lane; each
/// operation is chosen once for all `NB`.
#[inline]
#[target_feature(enable = "avx512f")]
fn epilogue<const NB: usize>(ep: &[EpOp], x: &mut [__m512; NB]) {
    let mut s = *x;
    for op in ep {
        match *op {
            EpOp::Bin { op, arg, arg_first } => {
                let a = [_mm512_set1_ps(arg); NB];
                *x = if arg_first {
                    bin(op, &a, x)
                } else {
                    bin(op, x, &a)
                };
            }
            EpOp::Save => s = *x,
            EpOp::Combine { op, saved_first } => {
                *x = if saved_first {
                    bin(op, &s, x)
                } else {
                    bin(op, x, &s)
                };
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn bin<const NB: usize>(op: BinKind, a: &[__m512; NB], b: &[__m512; NB]) -> [__m512; NB] {
    let mut r = *a;
    match op {
        BinKind::Add => (0..NB).for_each(|j| r[j] = _mm512_add_ps(a[j], b[j])),
        BinKind::Sub => (0..NB).for_each(|j| r[j] = _mm512_sub_ps(a[j], b[j])),
        BinKind::Mul => (0..NB).for_each(|j| r[j] = _mm512_mul_ps(a[j], b[j])),
        BinKind::Div => (0..NB).for_each(|j| r[j] = _mm512_div_ps(a[j], b[j])),
        // `vmaxps`/`vminps` return the second operand when either is NaN: a NaN in `a` is put
        // back explicitly so that NaN propagates from both sides.
        BinKind::Max => (0..NB).for_each(|j| {
            let m = _mm512_max_ps(a[j], b[j]);
            r[j] = _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a[j], a[j]), a[j]);
        }),
        BinKind::Min => (0..NB).for_each(|j| {
            let m = _mm512_min_ps(a[j], b[j]);
            r[j] = _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a[j], a[j]), a[j]);
        }),
    }
    r
}
