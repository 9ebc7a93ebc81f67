//! GELU for the GEMM epilogue: `erf`, `tanh` and `exp` as polynomial approximations in `f32`,
//! one algorithm for every ISA (this file's scalar code is the definition and the portable
//! kernel's; `avx512.rs` and `avx2.rs` run it 16 and 8 lanes wide).
//!
//! The algorithms are those of the CPU backend's inline math (`mlc-cpu`'s `simd.rs`, `verf` and
//! `vtanh`), which the compiled elementwise GELU uses, so moving a GELU from a compiled tile
//! tail into this epilogue changes its results by rounding only:
//!
//! * `exp`: Cephes' `expf` (range reduction by `ln 2` in two parts, a degree-5 polynomial, the
//!   power of two built in the exponent bits in two halves); below the smallest normal it
//!   flushes to 0, above `88.72` it is `+inf`.
//! * `tanh`: Cephes' `tanhf`, an odd polynomial below `|x| = 0.625`, `1 - 2 / (exp(2|x|) + 1)`
//!   with the sign of `x` above.
//! * `erf`: FreeBSD's `s_erff.c` rational function below `|x| = 0.84375`, Abramowitz & Stegun
//!   7.1.28 (`1 - (1 + a1·|x| + … + a6·|x|⁶)^-16`, absolute error ≤ 3e-7) above.
//!
//! Accuracy (checked by the tests against `f64` libm on a dense sweep): `tanh` within 1e-6
//! relative, `erf` within 1e-6 relative (4e-7 from A&S where `erf ≥ 0.77`, a few ulp below);
//! GELU within `1e-6·|gelu(x)| + 2e-7·|x|` (the absolute part is the A&S error, which
//! `1 + erf(x/√2)` exposes for negative `x`; the kernel IR evaluator's `f64` libm is the
//! reference the compiled code is compared with, at that tolerance). NaN stays NaN.
//!
//! The SIMD versions fuse the polynomial steps' multiply-adds (one rounding instead of two) and
//! the scalar one does not (a software `mul_add` is a slow libm call), so ISAs may differ in the
//! last bits; GELU's own arithmetic (`0.5·x`, `1 + erf`, the product) rounds apart everywhere.

/// `1/√2`, by which the erf form scales its argument.
pub(super) const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `√(2/π)`, the tanh form's scale (rounded to `f32` as the kernel IR lowering rounds it).
pub(super) const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The tanh form's cubic coefficient.
pub(super) const GELU_CUBIC: f32 = 0.044_715;

/// `exp`'s overflow threshold: above it the result is `+inf`.
pub(super) const EXP_HI: f32 = 88.722_84;
/// `exp`'s underflow threshold: below it the result is 0.
pub(super) const EXP_LO: f32 = -87.336_55;
/// `ln 2 = -(EXP_C1 + EXP_C2)`, `EXP_C1` short enough that `n·EXP_C1` is exact.
pub(super) const EXP_C1: f32 = -0.693_359_4;
pub(super) const EXP_C2: f32 = 2.121_944_4e-4;
/// Cephes `expf`'s polynomial, highest coefficient first.
pub(super) const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
/// Cephes `tanhf`'s odd polynomial in `x²`, highest coefficient first.
pub(super) const TANH_P: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_909e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328e-1,
];
/// Below this `|x|` tanh takes the polynomial.
pub(super) const TANH_SMALL: f32 = 0.625;
/// `s_erff`'s numerator in `x²`, highest coefficient first.
pub(super) const ERF_P: [f32; 5] = [
    -2.376_301_7e-5,
    -5.770_270_2e-3,
    -2.848_175e-2,
    -3.250_421e-1,
    1.283_791_7e-1,
];
/// `s_erff`'s denominator in `x²`, highest coefficient first.
pub(super) const ERF_Q: [f32; 6] = [
    -3.960_228_2e-6,
    1.324_947_4e-4,
    5.081_306e-3,
    6.502_225e-2,
    3.979_172e-1,
    1.0,
];
/// Abramowitz & Stegun 7.1.28's polynomial in `|x|`, highest coefficient first.
pub(super) const ERF_AS: [f32; 7] = [
    4.306_38e-5,
    2.765_672e-4,
    1.520_143e-4,
    9.270_527e-3,
    4.228_201e-2,
    7.052_308e-2,
    1.0,
];
/// Below this `|x|` erf takes the rational function.
pub(super) const ERF_SMALL: f32 = 0.843_75;

/// A polynomial in `t` by Horner's rule, `c[0]` the highest coefficient.
fn horner(t: f32, c: &[f32]) -> f32 {
    c[1..].iter().fold(c[0], |y, &k| y * t + k)
}

/// `exp(x)` (see the module docs).
pub fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > EXP_HI {
        return f32::INFINITY;
    }
    if x < EXP_LO {
        return 0.0;
    }
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = n * EXP_C1 + x;
    let r = n * EXP_C2 + r;
    let y = horner(r, &EXP_P) * (r * r) + r + 1.0;
    // n ∈ [-126, 128]: 2^n in two halves keeps each exponent field in range.
    let ni = n as i32;
    let n1 = ni >> 1;
    let pow2 = |h: i32| f32::from_bits(((h + 127) as u32) << 23);
    y * pow2(n1) * pow2(ni - n1)
}

/// `tanh(x)` (see the module docs).
pub fn tanh(x: f32) -> f32 {
    let ax = x.abs();
    if ax < TANH_SMALL {
        let z = x * x;
        horner(z, &TANH_P) * z * x + x
    } else {
        (1.0 - 2.0 / (exp(ax + ax) + 1.0)).copysign(x)
    }
}

/// `erf(x)` (see the module docs).
pub fn erf(x: f32) -> f32 {
    let ax = x.abs();
    if x.is_nan() {
        x
    } else if ax < ERF_SMALL {
        let z = x * x;
        x * (horner(z, &ERF_P) / horner(z, &ERF_Q)) + x
    } else {
        let a = horner(ax, &ERF_AS);
        let a2 = a * a;
        let a4 = a2 * a2;
        let a8 = a4 * a4;
        (1.0 - 1.0 / (a8 * a8)).copysign(x)
    }
}

/// GELU, erf form: `0.5·x · (1 + erf(x·(1/√2)))`, in this order.
pub fn gelu(x: f32) -> f32 {
    (0.5 * x) * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// Sigmoid as the lowering of `ew.sigmoid` writes it: `1 / (1 + exp(-x))`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Swish as the lowering of `ew.swish` writes it: `x · (1 / (1 + exp(-(alpha·x))))`.
pub fn swish(x: f32, alpha: f32) -> f32 {
    x * sigmoid(alpha * x)
}

/// GELU, tanh form: `0.5·x · (1 + tanh(√(2/π)·(x + 0.044715·x·x·x)))`, in this order.
pub fn gelu_tanh(x: f32) -> f32 {
    let x3 = (x * x) * x;
    (0.5 * x) * (1.0 + tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x3)))
}
