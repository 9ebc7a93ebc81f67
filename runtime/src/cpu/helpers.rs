//! Scalar helpers the generated code calls through the helper table (see [`super::abi`]): the
//! C library's transcendentals (under their C names), half-float conversions, integer `pow`.
//!
//! Generated code reaches these Rust functions rather than the process's C library, so
//! compiled code and the reference evaluator use the same math (Rust's `f32`/`f64` methods
//! call the platform's libm; `erf` comes from the `libm` crate, as in the evaluator).

use half::{bf16, f16};

macro_rules! unary {
    ($($name:ident: $t:ty => $body:expr;)*) => {
        $(extern "C" fn $name(x: $t) -> $t { $body(x) })*
        const UNARY: &[&str] = &[$(stringify!($name)),*];
        fn unary_addresses() -> Vec<usize> {
            vec![$($name as *const () as usize),*]
        }
    };
}

unary! {
    expf: f32 => f32::exp; exp: f64 => f64::exp;
    logf: f32 => f32::ln; log: f64 => f64::ln;
    tanhf: f32 => f32::tanh; tanh: f64 => f64::tanh;
    erff: f32 => libm::erff; erf: f64 => libm::erf;
    sinf: f32 => f32::sin; sin: f64 => f64::sin;
    cosf: f32 => f32::cos; cos: f64 => f64::cos;
    tanf: f32 => f32::tan; tan: f64 => f64::tan;
    asinf: f32 => f32::asin; asin: f64 => f64::asin;
    acosf: f32 => f32::acos; acos: f64 => f64::acos;
    atanf: f32 => f32::atan; atan: f64 => f64::atan;
    sinhf: f32 => f32::sinh; sinh: f64 => f64::sinh;
    coshf: f32 => f32::cosh; cosh: f64 => f64::cosh;
    asinhf: f32 => f32::asinh; asinh: f64 => f64::asinh;
    acoshf: f32 => f32::acosh; acosh: f64 => f64::acosh;
    atanhf: f32 => f32::atanh; atanh: f64 => f64::atanh;
    floorf: f32 => f32::floor; floor: f64 => f64::floor;
    ceilf: f32 => f32::ceil; ceil: f64 => f64::ceil;
    truncf: f32 => f32::trunc; trunc: f64 => f64::trunc;
    nearbyintf: f32 => f32::round_ties_even; nearbyint: f64 => f64::round_ties_even;
}

extern "C" fn fmodf(x: f32, y: f32) -> f32 {
    x % y
}
extern "C" fn fmod(x: f64, y: f64) -> f64 {
    x % y
}
extern "C" fn powf(x: f32, y: f32) -> f32 {
    x.powf(y)
}
extern "C" fn pow(x: f64, y: f64) -> f64 {
    x.powf(y)
}
extern "C" fn fmaf(x: f32, y: f32, z: f32) -> f32 {
    x.mul_add(y, z)
}
extern "C" fn fma(x: f64, y: f64, z: f64) -> f64 {
    x.mul_add(y, z)
}

extern "C" fn mlc_f16_to_f32(x: u16) -> f32 {
    f16::from_bits(x).to_f32()
}
extern "C" fn mlc_f32_to_f16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}
extern "C" fn mlc_f32_to_bf16(x: f32) -> u16 {
    bf16::from_f32(x).to_bits()
}
extern "C" fn mlc_round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}
extern "C" fn mlc_round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}
extern "C" fn mlc_round_f16_f64(x: f64) -> f32 {
    f16::from_f64(x).to_f32()
}
extern "C" fn mlc_round_bf16_f64(x: f64) -> f32 {
    bf16::from_f64(x).to_f32()
}

/// Integer `pow` as the evaluator defines it: wrapping, negative exponents give 0.
extern "C" fn mlc_ipow(x: i64, y: i64) -> i64 {
    if y < 0 {
        0
    } else {
        x.wrapping_pow(y.min(u32::MAX as i64) as u32)
    }
}

/// The helpers after the unary ones, in table order.
macro_rules! others {
    ($($name:ident),* $(,)?) => {
        const OTHERS: &[&str] = &[$(stringify!($name)),*];
        fn other_addresses() -> Vec<usize> {
            vec![$($name as *const () as usize),*]
        }
    };
}

others!(
    fmodf,
    fmod,
    powf,
    pow,
    fmaf,
    fma,
    mlc_f16_to_f32,
    mlc_f32_to_f16,
    mlc_f32_to_bf16,
    mlc_round_f16,
    mlc_round_bf16,
    mlc_round_f16_f64,
    mlc_round_bf16_f64,
    mlc_ipow,
);

/// The scalar helpers' names in table order: the unary ones, then the others.
pub(crate) fn names() -> impl Iterator<Item = &'static str> {
    UNARY.iter().chain(OTHERS).copied()
}

/// Their addresses, in the same order.
pub(crate) fn addresses() -> Vec<usize> {
    let mut v = unary_addresses();
    v.extend(other_addresses());
    v
}
