//! The AVX2 depthwise kernel: 8 outputs of a row per ymm, as the AVX-512 one (see there) with
//! `vmaskmovps` lane masks, a shuffle and a cross-lane permute to keep the even lanes of stride
//! 2, and gathers for larger strides. No FMA, to stay bit-exact with the evaluator.

#![allow(unsafe_code)]

use super::{BinKind, EpOp, Task};
use std::arch::x86_64::*;

const L: usize = 8;

/// The lanes `i` of an 8-lane vector starting at column `c0` with `0 <= c0 + i < n`, as a
/// `vmaskmovps` mask, and whether all are.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn range_mask(c0: isize, n: isize) -> (__m256i, bool) {
    let lo = (-c0).clamp(0, L as isize) as i32;
    let hi = (n - c0).clamp(0, L as isize) as i32;
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // lo <= lane < hi
    let ge = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(lo - 1));
    let lt = _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), lane);
    (_mm256_and_si256(ge, lt), lo == 0 && hi == L as i32)
}

/// Computes the task's rows.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA; `t.x` must hold the `ih·iw` plane, `t.w` `kh·kw`
/// weights and `t.out` whole rows of `ow` outputs.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn rows(ts: &mut [Task]) {
    for t in ts {
        // SAFETY: forwarded contract.
        unsafe {
            match t.g.sw {
                1 => rows_s::<1>(t),
                2 => rows_s::<2>(t),
                _ => rows_s::<0>(t),
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_s<const S: usize>(t: &mut Task) {
    let g = *t.g;
    let ow = g.ow;
    let nrows = t.out.len() / ow;
    let chunks = ow.div_ceil(L);
    let mut cols: Vec<(isize, __m256i, __m256i)> = Vec::with_capacity(chunks * g.kw);
    let mut full = Vec::with_capacity(chunks);
    for c in 0..chunks {
        let mut all = true;
        for kx in 0..g.kw {
            let c0 = (c * L) as isize * g.sw + kx as isize * g.dw - g.pl;
            let (m0, f0) = range_mask(c0, g.iw);
            let (m1, f1) = range_mask(c0 + L as isize, g.iw);
            all &= match S {
                1 => f0,
                2 => f0 && f1,
                _ => false,
            };
            cols.push((c0, m0, m1));
        }
        full.push(all);
    }
    let zero = _mm256_setzero_ps();
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let lane_cols = _mm256_mullo_epi32(lane, _mm256_set1_epi32(g.sw as i32));
    let iw_v = _mm256_set1_epi32(g.iw as i32);
    let xbase = t.x.as_ptr();
    let w = t.w;
    let obase = t.out.as_mut_ptr();
    for r in 0..nrows {
        let oy = (t.oy0 + r) as isize;
        for c in 0..chunks {
            let mut acc = _mm256_set1_ps(t.bias);
            for ky in 0..g.kh {
                let iy = oy * g.sh + ky as isize * g.dh - g.pt;
                let wrow = &w[ky * g.kw..(ky + 1) * g.kw];
                if iy < 0 || iy >= g.ih {
                    for &wv in wrow {
                        acc = _mm256_add_ps(acc, _mm256_mul_ps(zero, _mm256_set1_ps(wv)));
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
                            1 if full[c] => _mm256_loadu_ps(p),
                            1 => _mm256_maskload_ps(p, m0),
                            2 => {
                                let (a, b) = if full[c] {
                                    (_mm256_loadu_ps(p), _mm256_loadu_ps(p.wrapping_add(L)))
                                } else {
                                    (
                                        _mm256_maskload_ps(p, m0),
                                        _mm256_maskload_ps(p.wrapping_add(L), m1),
                                    )
                                };
                                // [a0 a2 b0 b2 | a4 a6 b4 b6] → [a0 a2 a4 a6 | b0 b2 b4 b6]
                                let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
                                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(
                                    _mm256_castps_pd(e),
                                ))
                            }
                            _ => {
                                let idx = _mm256_add_epi32(lane_cols, _mm256_set1_epi32(c0 as i32));
                                let inside = _mm256_and_si256(
                                    _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(-1)),
                                    _mm256_cmpgt_epi32(iw_v, idx),
                                );
                                _mm256_mask_i32gather_ps::<4>(
                                    zero,
                                    rowp,
                                    idx,
                                    _mm256_castsi256_ps(inside),
                                )
                            }
                        }
                    };
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(xv, _mm256_set1_ps(wv)));
                }
            }
            let v = epilogue(t.ep, acc);
            let lanes = (ow - c * L).min(L);
            let dst = obase.wrapping_add(r * ow + c * L);
            // SAFETY: row `r` of the task's output holds `ow` floats; a full vector lies inside
            // it, and the mask of a partial one enables the lanes `c·8 + i < ow` only.
            unsafe {
                if lanes == L {
                    _mm256_storeu_ps(dst, v)
                } else {
                    _mm256_maskstore_ps(dst, range_mask(0, lanes as isize).0, v)
                }
            };
        }
    }
}

/// The epilogue on 8 lanes, exactly as [`super::apply_epilogue`] on each.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn epilogue(ep: &[EpOp], acc: __m256) -> __m256 {
    let (mut x, mut s) = (acc, acc);
    for op in ep {
        match *op {
            EpOp::Bin { op, arg, arg_first } => {
                let a = _mm256_set1_ps(arg);
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
#[target_feature(enable = "avx2,fma")]
fn bin(op: BinKind, a: __m256, b: __m256) -> __m256 {
    match op {
        BinKind::Add => _mm256_add_ps(a, b),
        BinKind::Sub => _mm256_sub_ps(a, b),
        BinKind::Mul => _mm256_mul_ps(a, b),
        BinKind::Div => _mm256_div_ps(a, b),
        // `vmaxps`/`vminps` return the second operand when either is NaN: a NaN in `a` is put
        // back explicitly so that NaN propagates from both sides.
        BinKind::Max => {
            let r = _mm256_max_ps(a, b);
            _mm256_blendv_ps(r, a, _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a))
        }
        BinKind::Min => {
            let r = _mm256_min_ps(a, b);
            _mm256_blendv_ps(r, a, _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a))
        }
    }
}
