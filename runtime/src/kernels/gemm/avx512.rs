//! The AVX-512 microkernel: a 12×32 tile of `C` in 24 zmm accumulators.
//!
//! Each step of k loads two vectors of the `B` panel row and broadcasts twelve values of the
//! `A` column, for 24 independent FMAs: enough to cover the 4-cycle FMA latency at two zmm FMAs
//! per cycle (Zen 5, Intel server cores), with 14 loads per 24 FMAs, well within the load
//! ports, and 7 of the 32 registers to spare. Against 8×32 it measured the same at 512³ and
//! 3–5% faster at k = 64, where the fixed cost of each tile counts. Thin tiles (1–2 rows) keep
//! four accumulator sets instead. Column edges use lane masks (a tile of at most 16 columns
//! runs one vector per row), row edges a smaller const-generic row count.
//!
//! The accumulators are a `[[__m512; NV]; R]` array that LLVM must keep in registers, and it
//! does so only while every loop over it is plain `iter_mut`/`zip`/`enumerate` over constant
//! bounds in one function. A `flatten()`, a closure capturing it, or passing it to a function
//! LLVM declines to inline sent it to the stack and made the kernel 3–4× slower (measured). Check
//! `cargo bench -p mlc-benches --bench gemm` after touching these loops.

#![allow(unsafe_code)]

use super::{Activation, Spec, Tile, act};
use std::arch::x86_64::*;

const MR: usize = 12;
const NR: usize = 32;
const NV: usize = NR / 16;

pub(super) static SPEC: Spec = Spec {
    mr: MR,
    nr: NR,
    nr_last: 16,
    kc: 512,
    mc: 120,
    nc: 256,
    tile,
};

/// Dispatches on the tile's row count.
///
/// # Safety
///
/// The CPU must support AVX-512F, and `t` must satisfy the contract of [`Tile`]: `a` holds
/// `kc * MR` floats, `b` holds `kc * NR`, `c` is valid for `rows × cols` with stride `ldc`,
/// and the epilogue pointers are valid for the same tile.
#[target_feature(enable = "avx512f")]
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

/// Dispatches on the tile's width: a tile of at most 16 columns (the last of a row of
/// tiles, such as the 4 columns past 192 of a 14×14 map or the 16 past 96 channels of 112)
/// takes one zmm per row, half the FMAs of the two-vector kernel whose second vector would be
/// all masked.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn rows<const PACKED: bool>(t: &Tile) {
    // SAFETY: forwarded contract; `V` vectors cover the tile's columns.
    unsafe {
        if t.cols <= 16 {
            rows_of::<1, PACKED>(t)
        } else {
            rows_of::<NV, PACKED>(t)
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn rows_of<const V: usize, const PACKED: bool>(t: &Tile) {
    // SAFETY: forwarded contract; `rows` selects an instantiation with exactly that many rows.
    unsafe {
        match t.rows {
            12 => kernel::<12, V, PACKED>(t),
            11 => kernel::<11, V, PACKED>(t),
            10 => kernel::<10, V, PACKED>(t),
            9 => kernel::<9, V, PACKED>(t),
            8 => kernel::<8, V, PACKED>(t),
            7 => kernel::<7, V, PACKED>(t),
            6 => kernel::<6, V, PACKED>(t),
            5 => kernel::<5, V, PACKED>(t),
            4 => kernel::<4, V, PACKED>(t),
            3 => kernel::<3, V, PACKED>(t),
            2 => kernel::<2, V, PACKED>(t),
            _ => kernel::<1, V, PACKED>(t),
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize, const V: usize, const PACKED: bool>(t: &Tile) {
    // Start fetching the tile of C now, so that its rows (which can alias in the L1 sets when
    // `ldc` is a multiple of 1024 floats) arrive while the FMAs run rather than after.
    for r in 0..R {
        let row = t.c.wrapping_add(r * t.ldc);
        _mm_prefetch::<_MM_HINT_T0>(row.cast());
        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(NR - 1).cast());
    }
    // SAFETY: forwarded contract.
    // With one or two rows there are only 2–4 accumulators: each FMA would wait for the
    // previous one on its chain (4 cycles), so thin tiles keep four chains per accumulator.
    let mut acc = unsafe {
        if R <= 2 {
            dot_split::<R, V, PACKED>(t)
        } else {
            dot::<R, V, PACKED>(t)
        }
    };
    // What follows applies `α`, `β·C` and the epilogue and stores the tile. It stays in this
    // function: as a function of its own LLVM would not inline it, and the accumulators would
    // pass through memory. Each step is its own pass over the whole tile behind one test, with
    // small bodies over constant bounds, so that LLVM unrolls every pass and the accumulators
    // stay in registers: one loop over the elements doing every step behind per-element tests
    // stayed a loop over an array on the stack, which cost as much as the products at k = 16
    // (MobileNet's 16→96 pointwise layer, 561 µs with it). The activations that are long
    // polynomials run on the stored tile instead, row by row while it is in L1 ([`act_rows`]).
    let masks: [__mmask16; V] = std::array::from_fn(|v| {
        let lanes = t.cols.saturating_sub(16 * v).min(16);
        ((1u32 << lanes) - 1) as __mmask16
    });
    if t.alpha != 1.0 {
        let alpha = _mm512_set1_ps(t.alpha);
        each!(acc, |x| _mm512_mul_ps(x, alpha));
    }
    // SAFETY (all the loads and stores below): masked loads and stores touch only the tile's
    // `cols` columns of rows `r < R = rows`, inside `C`, the bias and the residual as the
    // caller guarantees; a vector past `cols` has an empty mask and touches nothing.
    if t.beta != 0.0 {
        let beta = _mm512_set1_ps(t.beta);
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, (x, &mask)) in row.iter_mut().zip(&masks).enumerate() {
                let old = unsafe { _mm512_maskz_loadu_ps(mask, t.c.add(r * t.ldc + 16 * v)) };
                *x = if t.beta == 1.0 {
                    _mm512_add_ps(*x, old)
                } else {
                    _mm512_fmadd_ps(beta, old, *x)
                };
            }
        }
    }
    let mut later = None;
    if let Some(ep) = &t.ep {
        if ep.scalar != 0.0 {
            let s = _mm512_set1_ps(ep.scalar);
            each!(acc, |x| _mm512_add_ps(x, s));
        }
        if !ep.row_bias.is_null() {
            for (r, row) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(unsafe { *ep.row_bias.add(r) });
                for x in row.iter_mut() {
                    *x = _mm512_add_ps(*x, b);
                }
            }
        }
        if !ep.col_bias.is_null() {
            let cb: [__m512; V] = std::array::from_fn(|v| unsafe {
                _mm512_maskz_loadu_ps(masks[v], ep.col_bias.add(16 * v))
            });
            for row in acc.iter_mut() {
                for (x, &b) in row.iter_mut().zip(&cb) {
                    *x = _mm512_add_ps(*x, b);
                }
            }
        }
        if !ep.res.is_null() {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, (x, &mask)) in row.iter_mut().zip(&masks).enumerate() {
                    let rp = unsafe { ep.res.add(r * ep.ldr + 16 * v) };
                    *x = _mm512_add_ps(*x, unsafe { _mm512_maskz_loadu_ps(mask, rp) });
                }
            }
        }
        match ep.act {
            Activation::None => {}
            // Each arm names its activation, so that the match inside `activate16` folds away.
            Activation::Relu => each!(acc, |x| activate16(Activation::Relu, x)),
            Activation::Clip { min, max } => {
                each!(acc, |x| activate16(Activation::Clip { min, max }, x))
            }
            Activation::LeakyRelu { alpha } => {
                each!(acc, |x| activate16(Activation::LeakyRelu { alpha }, x))
            }
            Activation::HardSwish => each!(acc, |x| activate16(Activation::HardSwish, x)),
            act => later = Some(act),
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, (&x, &mask)) in row.iter().zip(&masks).enumerate() {
            unsafe { _mm512_mask_storeu_ps(t.c.add(r * t.ldc + 16 * v), mask, x) };
        }
    }
    if let Some(act) = later {
        // SAFETY: the tile's rows and columns, stored just above.
        unsafe { act_rows(act, t.c, t.ldc, R, &masks) };
    }
}

/// `act` on a stored tile of `rows` rows, `ldc` apart, whose 16-column vectors have the lane
/// masks `masks` (the epilogue's long activations, see [`kernel`]).
///
/// # Safety
///
/// The masked lanes of the `rows` rows from `c` are valid for reads and writes.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn act_rows(act: Activation, c: *mut f32, ldc: usize, rows: usize, masks: &[__mmask16]) {
    for r in 0..rows {
        for (v, &mask) in masks.iter().enumerate() {
            // SAFETY: see the function's contract.
            unsafe {
                let p = c.add(r * ldc + 16 * v);
                _mm512_mask_storeu_ps(p, mask, activate16(act, _mm512_maskz_loadu_ps(mask, p)));
            }
        }
    }
}

/// `act` on every element of `x`, 16 at a time (the last ones masked).
///
/// # Safety
///
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn activate_slice(act: Activation, x: &mut [f32]) {
    for c in x.chunks_mut(16) {
        let mask: __mmask16 = if c.len() == 16 {
            !0
        } else {
            (1 << c.len()) - 1
        };
        // SAFETY: the masked lanes are those of `c`.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, c.as_ptr());
            _mm512_mask_storeu_ps(c.as_mut_ptr(), mask, activate16(act, v));
        }
    }
}

/// The activation on 16 lanes, exactly as [`Activation::apply`] on each (the GEMM's and the
/// direct convolution's epilogue).
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn activate16(act: Activation, x: __m512) -> __m512 {
    let zero = _mm512_setzero_ps();
    match act {
        Activation::None => x,
        // `max(x, 0)` returns its second operand when one is NaN: a NaN becomes 0 (and `min`
        // under Clip), as `Activation::apply` says.
        Activation::Relu => _mm512_max_ps(x, zero),
        Activation::Clip { min, max } => {
            _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(min)), _mm512_set1_ps(max))
        }
        Activation::LeakyRelu { alpha } => {
            let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, zero);
            _mm512_mask_mul_ps(x, neg, x, _mm512_set1_ps(alpha))
        }
        // `min`/`max` with the bound first return a NaN second operand: NaN stays NaN, as
        // `Activation::apply` says. No FMA: the scalar definition rounds the product and the
        // sum apart.
        Activation::HardSigmoid { alpha, beta } => {
            let e = _mm512_add_ps(
                _mm512_mul_ps(x, _mm512_set1_ps(alpha)),
                _mm512_set1_ps(beta),
            );
            _mm512_max_ps(zero, _mm512_min_ps(_mm512_set1_ps(1.0), e))
        }
        Activation::HardSwish => {
            let e = _mm512_add_ps(
                _mm512_mul_ps(x, _mm512_set1_ps(1.0 / 6.0)),
                _mm512_set1_ps(0.5),
            );
            let g = _mm512_max_ps(zero, _mm512_min_ps(_mm512_set1_ps(1.0), e));
            _mm512_mul_ps(x, g)
        }
        Activation::Gelu => gelu16(x),
        Activation::GeluTanh => gelu_tanh16(x),
        Activation::Sigmoid => sigmoid16(x),
        Activation::Swish { alpha } => {
            _mm512_mul_ps(x, sigmoid16(_mm512_mul_ps(_mm512_set1_ps(alpha), x)))
        }
    }
}

/// `A_panel · B_panel` for one tile, in registers.
///
/// # Safety
///
/// The A panel (packed, or in place with `lda`) holds `kc` steps of `R` values, the B panel
/// (packed, or in place) `kc` rows of `NR` floats, `ldb` apart.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn dot<const R: usize, const V: usize, const PACKED: bool>(t: &Tile) -> [[__m512; V]; R] {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let (mut a, mut b) = (t.a, t.b);
    // A packed: row stride 1, k stride MR; A in place (row-major): row stride lda, k stride 1.
    let (a_rs, a_ks) = if PACKED { (1, MR) } else { (t.lda, 1) };
    // SAFETY: see the function's contract.
    unsafe {
        for _ in 0..t.kc {
            let bv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(b.add(16 * v)));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * a_rs));
                for (x, &bx) in row.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bx, *x);
                }
            }
            a = a.add(a_ks);
            b = b.add(t.ldb);
        }
    }
    acc
}

/// [`dot`] with four independent accumulator sets over consecutive steps of k, summed at the
/// end, for tiles too thin to hide the FMA latency otherwise.
///
/// # Safety
///
/// As for [`dot`].
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn dot_split<const R: usize, const V: usize, const PACKED: bool>(
    t: &Tile,
) -> [[__m512; V]; R] {
    const U: usize = 4;
    let mut acc = [[[_mm512_setzero_ps(); V]; R]; U];
    let (mut a, mut b) = (t.a, t.b);
    let (a_rs, a_ks) = if PACKED { (1, MR) } else { (t.lda, 1) };
    // SAFETY: see the function's contract; the loops take exactly `kc` steps in all.
    unsafe {
        for _ in 0..t.kc / U {
            for set in acc.iter_mut() {
                let bv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(b.add(16 * v)));
                for (r, row) in set.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(r * a_rs));
                    for (x, &bx) in row.iter_mut().zip(&bv) {
                        *x = _mm512_fmadd_ps(av, bx, *x);
                    }
                }
                a = a.add(a_ks);
                b = b.add(t.ldb);
            }
        }
        for _ in 0..t.kc % U {
            let bv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(b.add(16 * v)));
            for (r, row) in acc[0].iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * a_rs));
                for (x, &bx) in row.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bx, *x);
                }
            }
            a = a.add(a_ks);
            b = b.add(t.ldb);
        }
    }
    let [s0, s1, s2, s3] = acc;
    std::array::from_fn(|r| {
        std::array::from_fn(|v| {
            _mm512_add_ps(
                _mm512_add_ps(s0[r][v], s1[r][v]),
                _mm512_add_ps(s2[r][v], s3[r][v]),
            )
        })
    })
}

// ---- GELU, 16 lanes: `act.rs`'s algorithms (see there), with fused multiply-adds ----------

/// A polynomial in `t` by Horner's rule, `c[0]` the highest coefficient.
#[inline]
#[target_feature(enable = "avx512f")]
fn horner(t: __m512, c: &[f32]) -> __m512 {
    let mut y = _mm512_set1_ps(c[0]);
    for &k in &c[1..] {
        y = _mm512_fmadd_ps(y, t, _mm512_set1_ps(k));
    }
    y
}

/// `x` with the sign bit of `s` or-ed in (AVX-512F has no float `or`).
#[inline]
#[target_feature(enable = "avx512f")]
fn or_sign(x: __m512, s: __m512) -> __m512 {
    let sign = _mm512_and_si512(_mm512_castps_si512(s), _mm512_set1_epi32(i32::MIN));
    _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x), sign))
}

/// `act::exp` on 16 lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn exp16(x: __m512) -> __m512 {
    let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(act::EXP_C1), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(act::EXP_C2), r);
    let y = horner(r, &act::EXP_P);
    let y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r);
    let y = _mm512_add_ps(y, _mm512_set1_ps(1.0));
    // `y · 2ⁿ` in one `vscalefps`, rounded once as the scalar code's two exact power-of-two
    // products are (n ∈ [-126, 128] where the result is not replaced below); it replaced eight
    // integer instructions building the two powers.
    let y = _mm512_scalef_ps(y, n);
    let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(act::EXP_HI));
    let y = _mm512_mask_blend_ps(big, y, _mm512_set1_ps(f32::INFINITY));
    let small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(act::EXP_LO));
    _mm512_mask_blend_ps(small, y, _mm512_setzero_ps())
}

/// `act::sigmoid` on 16 lanes (also the depthwise kernels' epilogue).
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn sigmoid16(x: __m512) -> __m512 {
    let one = _mm512_set1_ps(1.0);
    let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
    _mm512_div_ps(one, _mm512_add_ps(one, e))
}

/// `act::tanh` on 16 lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn tanh16(x: __m512) -> __m512 {
    let one = _mm512_set1_ps(1.0);
    let ax = _mm512_abs_ps(x);
    let z = _mm512_mul_ps(x, x);
    let p = _mm512_mul_ps(horner(z, &act::TANH_P), z);
    let small = _mm512_fmadd_ps(p, x, x);
    let e = exp16(_mm512_add_ps(ax, ax));
    let q = _mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(e, one));
    let big = or_sign(_mm512_sub_ps(one, q), x);
    let is_small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(ax, _mm512_set1_ps(act::TANH_SMALL));
    _mm512_mask_blend_ps(is_small, big, small)
}

/// `act::erf` on 16 lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn erf16(x: __m512) -> __m512 {
    let one = _mm512_set1_ps(1.0);
    let ax = _mm512_abs_ps(x);
    let z = _mm512_mul_ps(x, x);
    let r = _mm512_div_ps(horner(z, &act::ERF_P), horner(z, &act::ERF_Q));
    let small = _mm512_fmadd_ps(x, r, x);
    let a = horner(ax, &act::ERF_AS);
    let a2 = _mm512_mul_ps(a, a);
    let a4 = _mm512_mul_ps(a2, a2);
    let a8 = _mm512_mul_ps(a4, a4);
    let a16 = _mm512_mul_ps(a8, a8);
    let big = or_sign(_mm512_sub_ps(one, _mm512_div_ps(one, a16)), x);
    let is_small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(ax, _mm512_set1_ps(act::ERF_SMALL));
    let y = _mm512_mask_blend_ps(is_small, big, small);
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    _mm512_mask_blend_ps(nan, y, x)
}

/// `act::gelu` on 16 lanes.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn gelu16(x: __m512) -> __m512 {
    let e = erf16(_mm512_mul_ps(x, _mm512_set1_ps(act::FRAC_1_SQRT_2)));
    let h = _mm512_mul_ps(_mm512_set1_ps(0.5), x);
    _mm512_mul_ps(h, _mm512_add_ps(_mm512_set1_ps(1.0), e))
}

/// `act::gelu_tanh` on 16 lanes.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn gelu_tanh16(x: __m512) -> __m512 {
    let x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    let u = _mm512_add_ps(x, _mm512_mul_ps(_mm512_set1_ps(act::GELU_CUBIC), x3));
    let t = tanh16(_mm512_mul_ps(_mm512_set1_ps(act::SQRT_2_OVER_PI), u));
    let h = _mm512_mul_ps(_mm512_set1_ps(0.5), x);
    _mm512_mul_ps(h, _mm512_add_ps(_mm512_set1_ps(1.0), t))
}
