//! The AVX2+FMA softmax kernel: 8 elements of a row per ymm, the last partial vector through
//! `vmaskmovps`.

#![allow(unsafe_code)]

use super::Row;
use std::arch::x86_64::*;

const L: usize = 8;

/// `exp` on 8 lanes, exactly the Cranelift backend's inline `vexp` (Cephes' `expf`): below the
/// smallest normal result it flushes to 0, above `f32::MAX` it gives +inf, NaN stays NaN.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    const HI: f32 = 88.722_84;
    const LO: f32 = -87.336_55;
    // The clamp keeps NaN (`max`/`min` return their second operand then) and keeps `n` in
    // [-126, 128]; the selects at the end replace what lies outside.
    let xc = _mm256_min_ps(_mm256_set1_ps(HI), _mm256_max_ps(_mm256_set1_ps(LO), x));
    let t = _mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693_359_4), xc);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r);
    let mut y = _mm256_add_ps(y, _mm256_set1_ps(1.0));
    // 2^n from exponent bits, in two halves so that n = 128 needs no exponent out of range.
    let ni = _mm256_cvtps_epi32(n);
    let n1 = _mm256_srai_epi32::<1>(ni);
    let n2 = _mm256_sub_epi32(ni, n1);
    let bias = _mm256_set1_epi32(127);
    for h in [n1, n2] {
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(h, bias));
        y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    }
    // Overflow to +inf, underflow to 0 (ordered compares: false for NaN).
    let big = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(HI));
    let y = _mm256_blendv_ps(y, _mm256_set1_ps(f32::INFINITY), big);
    let small = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(LO));
    _mm256_andnot_ps(small, y)
}

/// The horizontal maximum of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
    _mm_cvtss_f32(m)
}

/// The horizontal sum of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// One row (see the module docs).
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn row(t: &mut Row, scale: Option<f32>) {
    let n = t.x.len();
    assert!(t.out.len() >= n && t.mask.is_none_or(|m| m.len() >= n));
    let (px, po) = (t.x.as_ptr(), t.out.as_mut_ptr());
    let pm = t.mask.map(|m| m.as_ptr());
    let full = n / L * L;
    let rest = n - full;
    let km = super::super::tail_mask8(rest);
    let sc = scale.map(|s| _mm256_set1_ps(s));
    // v = x·scale + mask (a multiply, then an add) from the loaded x and the mask at `c`.
    macro_rules! value {
        ($v:expr, $mask:expr) => {{
            let v = match sc {
                Some(s) => _mm256_mul_ps($v, s),
                None => $v,
            };
            match pm {
                Some(_) => _mm256_add_ps(v, $mask),
                None => v,
            }
        }};
    }
    let pm = pm.unwrap_or(px);
    // SAFETY: x, the mask row and out hold at least `n` elements (asserted above; `pm` is
    // read only when there is a mask); offsets `c < full` address whole vectors inside them,
    // and the tail's `vmaskmovps` touches lanes `< rest` only (masked-off lanes never fault).
    unsafe {
        // Pass 1: v into the output, and its maximum.
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut c = 0;
        while c < full {
            let v = value!(_mm256_loadu_ps(px.add(c)), _mm256_loadu_ps(pm.add(c)));
            _mm256_storeu_ps(po.add(c), v);
            vmax = _mm256_max_ps(vmax, v);
            c += L;
        }
        if rest != 0 {
            let v = value!(
                _mm256_maskload_ps(px.add(c), km),
                _mm256_maskload_ps(pm.add(c), km)
            );
            _mm256_maskstore_ps(po.add(c), km, v);
            // Masked-off lanes stay -inf.
            let v = _mm256_blendv_ps(
                _mm256_set1_ps(f32::NEG_INFINITY),
                v,
                _mm256_castsi256_ps(km),
            );
            vmax = _mm256_max_ps(vmax, v);
        }
        // A NaN that `max` drops here reappears in its exponential, hence in the sum.
        let mx = _mm256_set1_ps(hmax(vmax));
        // Pass 2: e = exp(v - max), stored and summed.
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        c = 0;
        while c + 2 * L <= full {
            let e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(po.add(c)), mx));
            let e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(po.add(c + L)), mx));
            _mm256_storeu_ps(po.add(c), e0);
            _mm256_storeu_ps(po.add(c + L), e1);
            s0 = _mm256_add_ps(s0, e0);
            s1 = _mm256_add_ps(s1, e1);
            c += 2 * L;
        }
        if c < full {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(po.add(c)), mx));
            _mm256_storeu_ps(po.add(c), e);
            s0 = _mm256_add_ps(s0, e);
            c += L;
        }
        if rest != 0 {
            let e = exp8(_mm256_sub_ps(_mm256_maskload_ps(po.add(c), km), mx));
            _mm256_maskstore_ps(po.add(c), km, e);
            s1 = _mm256_add_ps(s1, _mm256_and_ps(e, _mm256_castsi256_ps(km)));
        }
        let sum = hsum(_mm256_add_ps(s0, s1));
        // Pass 3: the rescale.
        let inv = _mm256_set1_ps(1.0 / sum);
        c = 0;
        while c < full {
            _mm256_storeu_ps(po.add(c), _mm256_mul_ps(_mm256_loadu_ps(po.add(c)), inv));
            c += L;
        }
        if rest != 0 {
            let v = _mm256_maskload_ps(po.add(c), km);
            _mm256_maskstore_ps(po.add(c), km, _mm256_mul_ps(v, inv));
        }
    }
}
