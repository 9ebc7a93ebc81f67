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

/// Computes the task's rows (see the module docs).
///
/// # Safety
///
/// The CPU must support AVX-512F; `t.x` must hold the `ih·iw` plane, `t.w` `kh·kw` weights and
/// `t.out` whole rows of `ow` outputs.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn rows(t: &mut Task) {
    // SAFETY: forwarded contract.
    unsafe {
        match t.g.sw {
            1 => rows_s::<1>(t),
            2 => rows_s::<2>(t),
            _ => rows_s::<0>(t),
        }
    }
}

/// `S` is the horizontal stride for 1 and 2, and 0 for any other (gathers).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn rows_s<const S: usize>(t: &mut Task) {
    let g = *t.g;
    let ow = g.ow;
    let nrows = t.out.len() / ow;
    let chunks = ow.div_ceil(L);
    // Per (chunk, kx): the first input column and the masks of the two 16-lane halves of the
    // columns a vector reads (only the first matters for stride 1).
    let mut cols: Vec<(isize, u16, u16)> = Vec::with_capacity(chunks * g.kw);
    // Per chunk: whether every tap's lanes lie inside the row (no mask needed).
    let mut full = Vec::with_capacity(chunks);
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
            cols.push((c0, m0, m1));
        }
        full.push(all);
    }
    let zero = _mm512_setzero_ps();
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let lane_cols = _mm512_mullo_epi32(lane, _mm512_set1_epi32(g.sw as i32));
    let iw_v = _mm512_set1_epi32(g.iw as i32);
    let xbase = t.x.as_ptr();
    let w = t.w;
    let obase = t.out.as_mut_ptr();
    for r in 0..nrows {
        let oy = (t.oy0 + r) as isize;
        for c in 0..chunks {
            let mut acc = _mm512_set1_ps(t.bias);
            for ky in 0..g.kh {
                let iy = oy * g.sh + ky as isize * g.dh - g.pt;
                let wrow = &w[ky * g.kw..(ky + 1) * g.kw];
                if iy < 0 || iy >= g.ih {
                    for &wv in wrow {
                        acc = _mm512_add_ps(acc, _mm512_mul_ps(zero, _mm512_set1_ps(wv)));
                    }
                    continue;
                }
                let rowp = xbase.wrapping_offset(iy * g.iw);
                let taps = &cols[c * g.kw..(c + 1) * g.kw];
                for (&(c0, m0, m1), &wv) in taps.iter().zip(wrow) {
                    let p = rowp.wrapping_offset(c0);
                    // SAFETY: row `iy` lies in the plane (tested above); a full chunk's lanes
                    // all lie inside the row, and otherwise the masks enable exactly the lanes
                    // whose columns do (masked-off lanes are never accessed).
                    let xv = unsafe {
                        match S {
                            1 if full[c] => _mm512_loadu_ps(p),
                            1 => _mm512_maskz_loadu_ps(m0, p),
                            2 if full[c] => _mm512_permutex2var_ps(
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
                                let idx = _mm512_add_epi32(lane_cols, _mm512_set1_epi32(c0 as i32));
                                let inside = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512())
                                    & _mm512_cmplt_epi32_mask(idx, iw_v);
                                _mm512_mask_i32gather_ps::<4>(zero, inside, idx, rowp)
                            }
                        }
                    };
                    acc = _mm512_add_ps(acc, _mm512_mul_ps(xv, _mm512_set1_ps(wv)));
                }
            }
            let v = epilogue(t.ep, acc);
            let lanes = (ow - c * L).min(L);
            let store = if lanes == L {
                0xffff
            } else {
                ((1u32 << lanes) - 1) as u16
            };
            // SAFETY: row `r` of the task's output holds `ow` floats; the mask enables the
            // lanes `c·16 + i < ow` only.
            unsafe { _mm512_mask_storeu_ps(obase.add(r * ow + c * L), store, v) };
        }
    }
}

/// The epilogue on 16 lanes, exactly as [`super::apply_epilogue`] on each.
#[inline]
#[target_feature(enable = "avx512f")]
fn epilogue(ep: &[EpOp], acc: __m512) -> __m512 {
    let (mut x, mut s) = (acc, acc);
    for op in ep {
        match *op {
            EpOp::Bin { op, arg, arg_first } => {
                let a = _mm512_set1_ps(arg);
                x = if arg_first {
                    bin(op, a, x)
                } else {
                    bin(op, x, a)
                };
            }
            EpOp::Save => s = x,
            EpOp::Combine { op, saved_first } => {
                x = if saved_first {
                    bin(op, s, x)
                } else {
                    bin(op, x, s)
                };
            }
        }
    }
    x
}

#[inline]
#[target_feature(enable = "avx512f")]
fn bin(op: BinKind, a: __m512, b: __m512) -> __m512 {
    match op {
        BinKind::Add => _mm512_add_ps(a, b),
        BinKind::Sub => _mm512_sub_ps(a, b),
        BinKind::Mul => _mm512_mul_ps(a, b),
        BinKind::Div => _mm512_div_ps(a, b),
        // `vmaxps`/`vminps` return the second operand when either is NaN: a NaN in `a` is put
        // back explicitly so that NaN propagates from both sides.
        BinKind::Max => {
            let r = _mm512_max_ps(a, b);
            _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a), a)
        }
        BinKind::Min => {
            let r = _mm512_min_ps(a, b);
            _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a), a)
        }
    }
}
