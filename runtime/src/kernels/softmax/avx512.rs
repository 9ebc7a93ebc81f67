//! The AVX-512 softmax kernel: 16 elements of a row per zmm, the last partial vector masked.

#![allow(unsafe_code)]

use super::Row;
use std::arch::x86_64::*;

const L: usize = 16;

/// `exp` on 16 lanes (Cephes' `expf`, as the Cranelift backend's inline `vexp`): `n =
/// round(x·log2 e)`, `r = x - n·ln 2` in two parts, a degree-5 polynomial, then `· 2^n` by
/// `vscalefps`, which overflows to +inf and underflows through the subnormals to 0 as the
/// definition does. `x` is clamped first so that `n` stays small (a clamp that keeps NaN,
/// which the polynomial carries through).
#[inline]
#[target_feature(enable = "avx512f")]
fn exp16(x: __m512) -> __m512 {
    // exp(89) overflows f32 and exp(-104) rounds to 0; between, n fits easily.
    let x = _mm512_min_ps(
        _mm512_set1_ps(89.0),
        _mm512_max_ps(_mm512_set1_ps(-104.0), x),
    );
    let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693_359_4), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.121_944_4e-4), r);
    let mut y = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
    }
    let y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r);
    let y = _mm512_add_ps(y, _mm512_set1_ps(1.0));
    _mm512_scalef_ps(y, n)
}

/// Lanes `[0, n)` for `n < 16`.
fn tail_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// One row (see the module docs).
///
/// # Safety
///
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn row(t: &mut Row, scale: Option<f32>) {
    let n = t.x.len();
    assert!(t.out.len() >= n && t.mask.is_none_or(|m| m.len() >= n));
    let (px, po) = (t.x.as_ptr(), t.out.as_mut_ptr());
    let pm = t.mask.map(|m| m.as_ptr());
    let full = n / L * L;
    let k_tail = tail_mask(n - full);
    let sc = scale.map(|s| _mm512_set1_ps(s));
    // v = x·scale + mask (a multiply, then an add) at column `c`, lanes `k`.
    macro_rules! value {
        ($v:expr, $c:expr, $k:expr) => {{
            let v = match sc {
                Some(s) => _mm512_mul_ps($v, s),
                None => $v,
            };
            match pm {
                Some(pm) => _mm512_add_ps(v, _mm512_maskz_loadu_ps($k, pm.add($c))),
                None => v,
            }
        }};
    }
    // SAFETY: x, the mask row and out hold at least `n` elements (asserted above); offsets
    // `c < full` address whole vectors inside them, and the tail's masked loads and stores
    // touch lanes `< n - full` only (masked-off lanes never fault).
    unsafe {
        // Pass 1: v into the output, and its maximum.
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut c = 0;
        while c < full {
            let v = value!(_mm512_loadu_ps(px.add(c)), c, 0xffff);
            _mm512_storeu_ps(po.add(c), v);
            vmax = _mm512_max_ps(vmax, v);
            c += L;
        }
        if k_tail != 0 {
            let v = value!(_mm512_maskz_loadu_ps(k_tail, px.add(c)), c, k_tail);
            _mm512_mask_storeu_ps(po.add(c), k_tail, v);
            vmax = _mm512_mask_max_ps(vmax, k_tail, vmax, v);
        }
        // A NaN that `max` drops here reappears in its exponential, hence in the sum.
        let mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
        // Pass 2: e = exp(v - max), stored and summed (two accumulators for the adds' latency).
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        c = 0;
        while c + 2 * L <= full {
            let e0 = exp16(_mm512_sub_ps(_mm512_loadu_ps(po.add(c)), mx));
            let e1 = exp16(_mm512_sub_ps(_mm512_loadu_ps(po.add(c + L)), mx));
            _mm512_storeu_ps(po.add(c), e0);
            _mm512_storeu_ps(po.add(c + L), e1);
            s0 = _mm512_add_ps(s0, e0);
            s1 = _mm512_add_ps(s1, e1);
            c += 2 * L;
        }
        if c < full {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(po.add(c)), mx));
            _mm512_storeu_ps(po.add(c), e);
            s0 = _mm512_add_ps(s0, e);
            c += L;
        }
        if k_tail != 0 {
            let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k_tail, po.add(c)), mx));
            _mm512_mask_storeu_ps(po.add(c), k_tail, e);
            s1 = _mm512_mask_add_ps(s1, k_tail, s1, e);
        }
        let sum = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
        // Pass 3: the rescale.
        let inv = _mm512_set1_ps(1.0 / sum);
        c = 0;
        while c < full {
            _mm512_storeu_ps(po.add(c), _mm512_mul_ps(_mm512_loadu_ps(po.add(c)), inv));
            c += L;
        }
        if k_tail != 0 {
            let v = _mm512_maskz_loadu_ps(k_tail, po.add(c));
            _mm512_mask_storeu_ps(po.add(c), k_tail, _mm512_mul_ps(v, inv));
        }
    }
}
