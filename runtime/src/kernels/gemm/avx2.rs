//! The AVX2+FMA microkernel: a 6×16 tile of `C` in 12 ymm accumulators.
//!
//! The classic Haswell shape: two vectors of the `B` panel row, six broadcasts of the `A`
//! column, twelve independent FMAs per step of k, leaving 4 of the 16 ymm registers for
//! operands; 1- and 2-row tiles keep 4 or 2 accumulator sets instead. Column edges use
//! `vmaskmov` loads and stores (a tile of at most 8 columns runs one vector per row, with more
//! accumulator sets), row edges a smaller const-generic row count.

#![allow(unsafe_code)]

use super::{Activation, Spec, Tile, act};
use std::arch::x86_64::*;

const MR: usize = 6;
const NR: usize = 16;
const NV: usize = NR / 8;

pub(super) static SPEC: Spec = Spec {
    mr: MR,
    nr: NR,
    nr_last: 8,
    kc: 256,
    mc: 72,
    nc: 512,
    tile,
};

/// Dispatches on the tile's row count.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA, and `t` must satisfy the contract of [`Tile`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile(t: &Tile) {
    // SAFETY: forwarded contract.
    unsafe {
        if t.lda == 0 {
            rows::<true>(t)
        } else {
            rows::<false>(t)
        }
    }
}

/// Dispatches on the tile's width: a tile of at most 8 columns (the last of a row of tiles)
/// takes one ymm per row instead of a second vector of masked-off lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows<const PACKED: bool>(t: &Tile) {
    // SAFETY: forwarded contract; `V` vectors cover the tile's columns.
    unsafe {
        if t.cols <= 8 {
            rows_of::<1, PACKED>(t)
        } else {
            rows_of::<NV, PACKED>(t)
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_of<const V: usize, const PACKED: bool>(t: &Tile) {
    // SAFETY: forwarded contract; `rows` selects an instantiation with exactly that many rows.
    unsafe {
        match t.rows {
            6 => kernel::<6, V, PACKED>(t),
            5 => kernel::<5, V, PACKED>(t),
            4 => kernel::<4, V, PACKED>(t),
            3 => kernel::<3, V, PACKED>(t),
            2 => kernel::<2, V, PACKED>(t),
            _ => kernel::<1, V, PACKED>(t),
        }
    }
}

/// Loads lanes `0..lanes` (of 8); the rest read as zero and are never touched in memory.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load(p: *const f32, lanes: usize, mask: __m256i) -> __m256 {
    // SAFETY: the caller guarantees `lanes` floats at `p`; masked-off lanes do not fault.
    unsafe {
        if lanes == 8 {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, mask)
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const R: usize, const V: usize, const PACKED: bool>(t: &Tile) {
    // SAFETY: forwarded contract.
    unsafe {
        // Thin tiles have too few accumulators to hide the 4-cycle FMA latency: give them
        // independent chains over consecutive steps of k (8 or more accumulators, at most 12).
        let acc = if V == 1 {
            match R {
                1 => dot_split::<R, V, PACKED, 8>(t),
                2 => dot_split::<R, V, PACKED, 4>(t),
                3 => dot_split::<R, V, PACKED, 3>(t),
                _ => dot_split::<R, V, PACKED, 2>(t),
            }
        } else {
            match R {
                1 => dot_split::<R, V, PACKED, 4>(t),
                2 => dot_split::<R, V, PACKED, 2>(t),
                _ => dot_split::<R, V, PACKED, 1>(t),
            }
        };
        store::<R, V>(t, acc);
    }
}

/// `A_panel · B_panel` for one tile, in registers, with `U` independent accumulator sets over
/// consecutive steps of k, summed at the end.
///
/// # Safety
///
/// The A panel (packed, or in place with `lda`) holds `kc` steps of `R` values, the B panel
/// (packed, or in place) `kc` rows of `NR` floats, `ldb` apart.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_split<const R: usize, const V: usize, const PACKED: bool, const U: usize>(
    t: &Tile,
) -> [[__m256; V]; R] {
    let mut acc = [[[_mm256_setzero_ps(); V]; R]; U];
    let (mut a, mut b) = (t.a, t.b);
    // A packed: row stride 1, k stride MR; A in place (row-major): row stride lda, k stride 1.
    let (a_rs, a_ks) = if PACKED { (1, MR) } else { (t.lda, 1) };
    // SAFETY: see the function's contract; the loops take exactly `kc` steps in all.
    unsafe {
        for _ in 0..t.kc / U {
            for set in acc.iter_mut() {
                let bv: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(b.add(8 * v)));
                for (r, row) in set.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(r * a_rs));
                    for (x, &bx) in row.iter_mut().zip(&bv) {
                        *x = _mm256_fmadd_ps(av, bx, *x);
                    }
                }
                a = a.add(a_ks);
                b = b.add(t.ldb);
            }
        }
        for _ in 0..t.kc % U {
            let bv: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(b.add(8 * v)));
            for (r, row) in acc[0].iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(r * a_rs));
                for (x, &bx) in row.iter_mut().zip(&bv) {
                    *x = _mm256_fmadd_ps(av, bx, *x);
                }
            }
            a = a.add(a_ks);
            b = b.add(t.ldb);
        }
    }
    let mut sum = acc[0];
    for set in &acc[1..] {
        for (srow, row) in sum.iter_mut().zip(set) {
            for (x, &y) in srow.iter_mut().zip(row) {
                *x = _mm256_add_ps(*x, y);
            }
        }
    }
    sum
}

/// Applies `α`, `β·C` and the epilogue to the accumulated tile and stores it.
///
/// As in the AVX-512 kernel, each step is its own pass over the whole tile behind one test, so
/// that LLVM unrolls them and the accumulators stay in registers, and the long activations run
/// on the stored tile ([`act_rows`]).
///
/// # Safety
///
/// `t.c` is valid for `rows × cols` with stride `ldc`, and the epilogue pointers for the same
/// tile.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store<const R: usize, const V: usize>(t: &Tile, mut acc: [[__m256; V]; R]) {
    let lanes: [usize; V] = std::array::from_fn(|v| t.cols.saturating_sub(8 * v).min(8));
    let masks: [__m256i; V] = std::array::from_fn(|v| super::super::tail_mask8(lanes[v]));
    if t.alpha != 1.0 {
        let alpha = _mm256_set1_ps(t.alpha);
        each!(acc, |x| _mm256_mul_ps(x, alpha));
    }
    // SAFETY (all the loads and stores below): `load` and `put` touch only the tile's `cols`
    // columns of rows `r < R = rows`, inside `C`, the bias and the residual as the caller
    // guarantees; a vector past `cols` (no lanes) touches nothing.
    if t.beta != 0.0 {
        let beta = _mm256_set1_ps(t.beta);
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                let old = unsafe { load(t.c.add(r * t.ldc + 8 * v), lanes[v], masks[v]) };
                *x = if t.beta == 1.0 {
                    _mm256_add_ps(*x, old)
                } else {
                    _mm256_fmadd_ps(beta, old, *x)
                };
            }
        }
    }
    let mut later = None;
    if let Some(ep) = &t.ep {
        if ep.scalar != 0.0 {
            let s = _mm256_set1_ps(ep.scalar);
            each!(acc, |x| _mm256_add_ps(x, s));
        }
        if !ep.row_bias.is_null() {
            for (r, row) in acc.iter_mut().enumerate() {
                let b = _mm256_set1_ps(unsafe { *ep.row_bias.add(r) });
                for x in row.iter_mut() {
                    *x = _mm256_add_ps(*x, b);
                }
            }
        }
        if !ep.col_bias.is_null() {
            let cb: [__m256; V] = std::array::from_fn(|v| unsafe {
                load(ep.col_bias.add(8 * v), lanes[v], masks[v])
            });
            for row in acc.iter_mut() {
                for (x, &b) in row.iter_mut().zip(&cb) {
                    *x = _mm256_add_ps(*x, b);
                }
            }
        }
        if !ep.res.is_null() {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    let rp = unsafe { ep.res.add(r * ep.ldr + 8 * v) };
                    *x = _mm256_add_ps(*x, unsafe { load(rp, lanes[v], masks[v]) });
                }
            }
        }
        match ep.act {
            Activation::None => {}
            // Each arm names its activation, so that the match inside `activate8` folds away.
            Activation::Relu => each!(acc, |x| activate8(Activation::Relu, x)),
            Activation::Clip { min, max } => {
                each!(acc, |x| activate8(Activation::Clip { min, max }, x))
            }
            Activation::LeakyRelu { alpha } => {
                each!(acc, |x| activate8(Activation::LeakyRelu { alpha }, x))
            }
            Activation::HardSwish => each!(acc, |x| activate8(Activation::HardSwish, x)),
            act => later = Some(act),
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, &x) in row.iter().enumerate() {
            unsafe { put(t.c.add(r * t.ldc + 8 * v), lanes[v], masks[v], x) };
        }
    }
    if let Some(act) = later {
        // SAFETY: the tile's rows and columns, stored just above.
        unsafe { act_rows(act, t.c, t.ldc, R, &lanes, &masks) };
    }
}

/// `act` on a stored tile of `rows` rows, `ldc` apart, whose 8-column vectors have `lanes`
/// columns under `masks` (the epilogue's long activations, see [`store`]).
///
/// # Safety
///
/// The first `lanes[v]` columns of each vector of the `rows` rows from `c` are valid for reads
/// and writes.
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn act_rows(
    act: Activation,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    lanes: &[usize],
    masks: &[__m256i],
) {
    for r in 0..rows {
        for (v, (&n, &mask)) in lanes.iter().zip(masks).enumerate() {
            // SAFETY: see the function's contract.
            unsafe {
                let p = c.add(r * ldc + 8 * v);
                put(p, n, mask, activate8(act, load(p, n, mask)));
            }
        }
    }
}

/// Stores the first `n` lanes of `x` at `p` (`mask` enables them); none when `n` is 0.
///
/// # Safety
///
/// The `n` floats from `p` are valid for writes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn put(p: *mut f32, n: usize, mask: __m256i, x: __m256) {
    // SAFETY: see the function's contract; a masked store never touches a masked-off lane.
    unsafe {
        if n == 8 {
            _mm256_storeu_ps(p, x);
        } else {
            _mm256_maskstore_ps(p, mask, x);
        }
    }
}

/// `act` on every element of `x`, 8 at a time (the last ones one by one).
///
/// # Safety
///
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn activate_slice(act: Activation, x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: eight floats of `c`.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), activate8(act, _mm256_loadu_ps(c.as_ptr()))) };
    }
    for v in chunks.into_remainder() {
        *v = act.apply(*v);
    }
}

/// The activation on 8 lanes, exactly as [`Activation::apply`] on each.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn activate8(act: Activation, x: __m256) -> __m256 {
    let zero = _mm256_setzero_ps();
    match act {
        Activation::None => x,
        // `max(x, 0)` returns its second operand when one is NaN: a NaN becomes 0 (and `min`
        // under Clip), as `Activation::apply` says.
        Activation::Relu => _mm256_max_ps(x, zero),
        Activation::Clip { min, max } => {
            _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(min)), _mm256_set1_ps(max))
        }
        Activation::LeakyRelu { alpha } => {
            let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(x, zero);
            _mm256_blendv_ps(x, _mm256_mul_ps(x, _mm256_set1_ps(alpha)), neg)
        }
        // As in the AVX-512 kernel: NaN stays NaN, no FMA.
        Activation::HardSigmoid { alpha, beta } => {
            let e = _mm256_add_ps(
                _mm256_mul_ps(x, _mm256_set1_ps(alpha)),
                _mm256_set1_ps(beta),
            );
            _mm256_max_ps(zero, _mm256_min_ps(_mm256_set1_ps(1.0), e))
        }
        Activation::HardSwish => {
            let e = _mm256_add_ps(
                _mm256_mul_ps(x, _mm256_set1_ps(1.0 / 6.0)),
                _mm256_set1_ps(0.5),
            );
            let g = _mm256_max_ps(zero, _mm256_min_ps(_mm256_set1_ps(1.0), e));
            _mm256_mul_ps(x, g)
        }
        Activation::Gelu => gelu8(x),
        Activation::GeluTanh => gelu_tanh8(x),
        Activation::Sigmoid => sigmoid8(x),
        Activation::Swish { alpha } => {
            _mm256_mul_ps(x, sigmoid8(_mm256_mul_ps(_mm256_set1_ps(alpha), x)))
        }
    }
}

// ---- GELU, 8 lanes: `act.rs`'s algorithms (see there), with fused multiply-adds -----------

/// A polynomial in `t` by Horner's rule, `c[0]` the highest coefficient.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn horner(t: __m256, c: &[f32]) -> __m256 {
    let mut y = _mm256_set1_ps(c[0]);
    for &k in &c[1..] {
        y = _mm256_fmadd_ps(y, t, _mm256_set1_ps(k));
    }
    y
}

/// `x` with the sign bit of `s` or-ed in.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn or_sign(x: __m256, s: __m256) -> __m256 {
    _mm256_or_ps(x, _mm256_and_ps(s, _mm256_set1_ps(-0.0)))
}

/// `act::exp` on 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    let t = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(act::EXP_C1), x);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(act::EXP_C2), r);
    let y = horner(r, &act::EXP_P);
    let y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r);
    let mut y = _mm256_add_ps(y, _mm256_set1_ps(1.0));
    // n ∈ [-126, 128] where the result is not replaced below; elsewhere the conversion may
    // give anything.
    let ni = _mm256_cvttps_epi32(n);
    let n1 = _mm256_srai_epi32::<1>(ni);
    let n2 = _mm256_sub_epi32(ni, n1);
    for h in [n1, n2] {
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(h, _mm256_set1_epi32(127)));
        y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    }
    let big = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(act::EXP_HI));
    let y = _mm256_blendv_ps(y, _mm256_set1_ps(f32::INFINITY), big);
    let small = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(act::EXP_LO));
    _mm256_andnot_ps(small, y)
}

/// `act::tanh` on 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn tanh8(x: __m256) -> __m256 {
    let one = _mm256_set1_ps(1.0);
    let ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
    let z = _mm256_mul_ps(x, x);
    let p = _mm256_mul_ps(horner(z, &act::TANH_P), z);
    let small = _mm256_fmadd_ps(p, x, x);
    let e = exp8(_mm256_add_ps(ax, ax));
    let q = _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one));
    let big = or_sign(_mm256_sub_ps(one, q), x);
    let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(ax, _mm256_set1_ps(act::TANH_SMALL));
    _mm256_blendv_ps(big, small, is_small)
}

/// `act::erf` on 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn erf8(x: __m256) -> __m256 {
    let one = _mm256_set1_ps(1.0);
    let ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
    let z = _mm256_mul_ps(x, x);
    let r = _mm256_div_ps(horner(z, &act::ERF_P), horner(z, &act::ERF_Q));
    let small = _mm256_fmadd_ps(x, r, x);
    let a = horner(ax, &act::ERF_AS);
    let a2 = _mm256_mul_ps(a, a);
    let a4 = _mm256_mul_ps(a2, a2);
    let a8 = _mm256_mul_ps(a4, a4);
    let a16 = _mm256_mul_ps(a8, a8);
    let big = or_sign(_mm256_sub_ps(one, _mm256_div_ps(one, a16)), x);
    let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(ax, _mm256_set1_ps(act::ERF_SMALL));
    let y = _mm256_blendv_ps(big, small, is_small);
    let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
    _mm256_blendv_ps(y, x, nan)
}

/// `act::sigmoid` on 8 lanes (also the depthwise kernels' epilogue).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn sigmoid8(x: __m256) -> __m256 {
    let one = _mm256_set1_ps(1.0);
    let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
    _mm256_div_ps(one, _mm256_add_ps(one, e))
}

/// `act::gelu` on 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn gelu8(x: __m256) -> __m256 {
    let e = erf8(_mm256_mul_ps(x, _mm256_set1_ps(act::FRAC_1_SQRT_2)));
    let h = _mm256_mul_ps(_mm256_set1_ps(0.5), x);
    _mm256_mul_ps(h, _mm256_add_ps(_mm256_set1_ps(1.0), e))
}

/// `act::gelu_tanh` on 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn gelu_tanh8(x: __m256) -> __m256 {
    let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
    let u = _mm256_add_ps(x, _mm256_mul_ps(_mm256_set1_ps(act::GELU_CUBIC), x3));
    let t = tanh8(_mm256_mul_ps(_mm256_set1_ps(act::SQRT_2_OVER_PI), u));
    let h = _mm256_mul_ps(_mm256_set1_ps(0.5), x);
    _mm256_mul_ps(h, _mm256_add_ps(_mm256_set1_ps(1.0), t))
}
