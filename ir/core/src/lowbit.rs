//! Low-precision storage element types (float8, float4, 4- and 2-bit integers) and their exact
//! conversions, bit packing and codes.
//!
//! These are *storage* types: tensors hold them, data movement moves them, casts and
//! (de)quantization convert them, but no arithmetic kernel takes them. They implement `Elem` and
//! not `NumElem`, so the interpreter's generic numeric kernels are not instantiated for them (a
//! compile-time saving) and `dispatch_num!` sends them to its fallback arm.
//!
//! Conversions reproduce ONNX's reference implementation bit for bit: it converts with
//! `ml_dtypes` (round to nearest, ties to even; NaN, infinity and overflow per format, with
//! ONNX's `saturate` flag clamping to the largest finite value first) except for f8e8m0, which
//! ONNX rounds with its own `round_mode` on the float32 bits (`onnx.numpy_helper.to_float8e8m0`).

use crate::dtype::DType;
use crate::tensor::{Tensor, TensorError};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How f8e8m0 rounds a value that is not a power of two (ONNX `Cast`'s `round_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundMode {
    /// To the next power of two up (in magnitude); ONNX's default.
    #[default]
    Up,
    /// To the power of two below: the exponent is kept.
    Down,
    /// To the nearer power of two, by the guard, round and sticky bits of the float32 mantissa.
    Nearest,
}

/// Options of a conversion to a float8 type; the defaults are ONNX's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CastMode {
    /// Out-of-range values and infinities become the largest finite value of the sign (`true`)
    /// or, for the formats that have them, infinity or NaN (`false`).
    pub saturate: bool,
    /// How values round to f8e8m0.
    pub round: RoundMode,
}

impl Default for CastMode {
    fn default() -> Self {
        CastMode {
            saturate: true,
            round: RoundMode::Up,
        }
    }
}

// ---- float formats ----

/// Which codes of a small float format are special.
#[derive(Clone, Copy, PartialEq)]
enum Special {
    /// IEEE-like: the all-ones exponent holds infinities (mantissa 0) and NaNs.
    Ieee,
    /// "Finite": no infinities; only the all-ones magnitude is NaN (both signs).
    Fn,
    /// "Finite, unsigned zero": no infinities, no negative zero; `1000...0` is the one NaN.
    Fnuz,
    /// Neither infinities nor NaNs (float4).
    Finite,
}

/// A small binary float format: sign, exponent, `man` mantissa bits, `bits` in all.
#[derive(Clone, Copy)]
struct Minifloat {
    bits: u32,
    man: u32,
    bias: i32,
    special: Special,
    /// The largest finite value.
    max: f64,
}

const E4M3FN: Minifloat = Minifloat {
    bits: 8,
    man: 3,
    bias: 7,
    special: Special::Fn,
    max: 448.0,
};
const E4M3FNUZ: Minifloat = Minifloat {
    bits: 8,
    man: 3,
    bias: 8,
    special: Special::Fnuz,
    max: 240.0,
};
const E5M2: Minifloat = Minifloat {
    bits: 8,
    man: 2,
    bias: 15,
    special: Special::Ieee,
    max: 57344.0,
};
const E5M2FNUZ: Minifloat = Minifloat {
    bits: 8,
    man: 2,
    bias: 16,
    special: Special::Fnuz,
    max: 57344.0,
};
const E2M1: Minifloat = Minifloat {
    bits: 4,
    man: 1,
    bias: 1,
    special: Special::Finite,
    max: 6.0,
};

/// `2^e`, exactly, for `e` in f64's normal range.
fn pow2(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// The binary exponent of a positive finite f64 (subnormals give -1023: below every format here).
fn exponent(a: f64) -> i32 {
    ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023
}

impl Minifloat {
    fn sign_bit(self) -> u8 {
        1 << (self.bits - 1)
    }

    fn exp_all_ones(self) -> u32 {
        (1 << (self.bits - 1 - self.man)) - 1
    }

    /// The smallest exponent of a normal value.
    fn min_exp(self) -> i32 {
        1 - self.bias
    }

    fn decode(self, code: u8) -> f64 {
        let sb = self.sign_bit();
        let code = code & (sb | (sb - 1));
        let neg = code & sb != 0;
        let mag = code & (sb - 1);
        let e = u32::from(mag >> self.man);
        let m = u32::from(mag) & ((1 << self.man) - 1);
        let signed = |v: f64| if neg { -v } else { v };
        match self.special {
            Special::Fnuz if code == sb => return f64::NAN,
            Special::Fn if mag == sb - 1 => return signed(f64::NAN),
            Special::Ieee if e == self.exp_all_ones() => {
                return signed(if m == 0 { f64::INFINITY } else { f64::NAN });
            }
            _ => {}
        }
        let man = self.man as i32;
        signed(if e == 0 {
            f64::from(m) * pow2(self.min_exp() - man)
        } else {
            f64::from(m + (1 << self.man)) * pow2(e as i32 - self.bias - man)
        })
    }

    /// The code of the value nearest to `v` (ties to even), as `ml_dtypes` converts; with
    /// `saturate`, out-of-range values and infinities give the largest finite value instead.
    fn encode(self, v: f64, saturate: bool) -> u8 {
        let sb = self.sign_bit();
        let s = if v.is_sign_negative() { sb } else { 0 };
        let inf = (self.exp_all_ones() << self.man) as u8;
        if v.is_nan() {
            return match self.special {
                Special::Fn => s | (sb - 1),
                Special::Ieee => s | inf | (1 << (self.man - 1)),
                Special::Fnuz => sb,
                // float4 has no NaN; ml_dtypes gives the zero of the other sign.
                Special::Finite => s ^ sb,
            };
        }
        let a = v.abs();
        // Anything this large rounds past the largest value (and a / q below stays finite).
        let r = if a > 2.0 * self.max {
            f64::INFINITY
        } else {
            let q = pow2(exponent(a).max(self.min_exp()) - self.man as i32);
            (a / q).round_ties_even() * q
        };
        if r > self.max {
            if saturate || self.special == Special::Finite {
                return s | self.magnitude_code(self.max);
            }
            return match self.special {
                Special::Fn => s | (sb - 1),
                Special::Ieee => s | inf,
                Special::Fnuz | Special::Finite => sb,
            };
        }
        if r == 0.0 {
            return if self.special == Special::Fnuz { 0 } else { s };
        }
        s | self.magnitude_code(r)
    }

    /// The code of a positive value of the format.
    fn magnitude_code(self, r: f64) -> u8 {
        let man = self.man as i32;
        let e = exponent(r);
        let (ef, m) = if e < self.min_exp() {
            (0, r / pow2(self.min_exp() - man))
        } else {
            (e + self.bias, r / pow2(e - man) - pow2(man))
        };
        (((ef as u32) << self.man) | m as u32) as u8
    }
}

fn e8m0_decode(code: u8) -> f64 {
    if code == 0xff {
        f64::NAN
    } else {
        pow2(i32::from(code) - 127)
    }
}

/// ONNX's conversion to f8e8m0 (`to_float8e8m0`): the float32 exponent, rounded by `round` on the
/// mantissa; the sign is dropped, zero gives the smallest code, NaN and infinities give NaN.
fn e8m0_encode(v: f64, mode: CastMode) -> u8 {
    let bits = (v as f32).to_bits();
    let exp = (bits >> 23) & 0xff;
    if exp == 0xff {
        return 0xff;
    }
    let up = match mode.round {
        RoundMode::Up => bits & 0x7f_ffff != 0,
        RoundMode::Down => false,
        RoundMode::Nearest => {
            let (g, r, s) = (
                bits & 0x40_0000 != 0,
                bits & 0x20_0000 != 0,
                bits & 0x1f_ffff != 0,
            );
            // The reference takes "exponent > 0" as the least significant bit.
            g && (r || s || exp > 0)
        }
    };
    // Past the largest exponent, rounding up gives NaN (0xff) unless saturating.
    let up = up && !(mode.saturate && exp == 0xfe);
    (exp + u32::from(up)) as u8
}

// ---- the element types ----

macro_rules! small_float {
    ($($(#[$doc:meta])* $name:ident: $decode:expr, $encode:expr;)*) => {$(
        $(#[$doc])*
        ///
        /// The field is the code (the bit pattern, as ONNX stores it); `==` compares codes.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub u8);

        impl $name {
            /// The exact value of the code.
            pub fn to_f64(self) -> f64 {
                let decode: fn(u8) -> f64 = $decode;
                decode(self.0)
            }

            /// The code nearest to `v` under `mode`, as ONNX `Cast` converts.
            pub fn from_f64(v: f64, mode: CastMode) -> Self {
                let encode: fn(f64, CastMode) -> u8 = $encode;
                $name(encode(v, mode))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.to_f64())
            }
        }

        /// By value (so sorting data movement, like `Unique`, orders numerically), consistent
        /// with `==` on codes: a code equals itself (NaNs included), -0 sorts before +0, and
        /// different NaN codes are unordered.
        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                if self.0 == other.0 {
                    return Some(std::cmp::Ordering::Equal);
                }
                let (a, b) = (self.to_f64(), other.to_f64());
                match a.partial_cmp(&b)? {
                    std::cmp::Ordering::Equal => {
                        Some(b.is_sign_negative().cmp(&a.is_sign_negative()))
                    }
                    o => Some(o),
                }
            }
        }
    )*};
}

small_float! {
    /// An OCP float8 E4M3 element (`f8e4m3fn`).
    F8E4M3FN: |c| E4M3FN.decode(c), |v, m| E4M3FN.encode(v, m.saturate);
    /// A float8 E4M3 element with unsigned zero (`f8e4m3fnuz`).
    F8E4M3FNUZ: |c| E4M3FNUZ.decode(c), |v, m| E4M3FNUZ.encode(v, m.saturate);
    /// An OCP float8 E5M2 element (`f8e5m2`).
    F8E5M2: |c| E5M2.decode(c), |v, m| E5M2.encode(v, m.saturate);
    /// A float8 E5M2 element with unsigned zero (`f8e5m2fnuz`).
    F8E5M2FNUZ: |c| E5M2FNUZ.decode(c), |v, m| E5M2FNUZ.encode(v, m.saturate);
    /// An OCP MX scale element, `2^(code - 127)` (`f8e8m0`).
    F8E8M0: e8m0_decode, e8m0_encode;
    /// An OCP MX float4 E2M1 element (`f4e2m1`); the code is in the low 4 bits.
    F4E2M1: |c| E2M1.decode(c), |v, _| E2M1.encode(v, true);
}

/// `v` modulo `2^bits`, as a two's complement (`signed`) or unsigned `bits`-bit integer.
fn wrap(v: i64, bits: u32, signed: bool) -> i64 {
    let shift = 64 - bits;
    if signed {
        (v << shift) >> shift
    } else {
        (((v as u64) << shift) >> shift) as i64
    }
}

macro_rules! small_int {
    ($($(#[$doc:meta])* $name:ident($inner:ty): $bits:expr, $signed:expr;)*) => {$(
        $(#[$doc])*
        ///
        /// The field is the value and must lie in the type's range.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
        pub struct $name(pub $inner);

        impl $name {
            pub const BITS: u32 = $bits;

            /// `v` wrapped into the type's range (two's complement wraparound).
            pub fn wrapping(v: i64) -> Self {
                $name(wrap(v, $bits, $signed) as $inner)
            }

            fn code(self) -> u8 {
                (self.0 as u8) & ((1 << $bits) - 1)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    )*};
}

small_int! {
    /// A 4-bit signed integer element (`i4`).
    I4(i8): 4, true;
    /// A 4-bit unsigned integer element (`u4`).
    U4(u8): 4, false;
    /// A 2-bit signed integer element (`i2`).
    I2(i8): 2, true;
    /// A 2-bit unsigned integer element (`u2`).
    U2(u8): 2, false;
}

/// A float converted to a small integer as `ml_dtypes` does: truncated through i32, where NaN and
/// out-of-range values give `i32::MIN`, whose low bits are 0.
fn float_to_int(v: f64) -> i64 {
    let t = v.trunc();
    if t >= f64::from(i32::MIN) && t <= f64::from(i32::MAX) {
        t as i64
    } else {
        0
    }
}

// ---- tensors ----

/// A storage tensor's values in the narrowest ordinary type that holds them exactly: f32 for
/// the small floats, i8/u8 for the small integers. `None` for the other tensors.
pub(crate) fn widen(t: &Tensor) -> Option<Tensor> {
    Some(match t {
        Tensor::F8E4M3FN(a) => Tensor::F32(a.mapv(|v| v.to_f64() as f32)),
        Tensor::F8E4M3FNUZ(a) => Tensor::F32(a.mapv(|v| v.to_f64() as f32)),
        Tensor::F8E5M2(a) => Tensor::F32(a.mapv(|v| v.to_f64() as f32)),
        Tensor::F8E5M2FNUZ(a) => Tensor::F32(a.mapv(|v| v.to_f64() as f32)),
        Tensor::F8E8M0(a) => Tensor::F32(a.mapv(|v| v.to_f64() as f32)),
        Tensor::F4E2M1(a) => Tensor::F32(a.mapv(|v| v.to_f64() as f32)),
        Tensor::I4(a) => Tensor::I8(a.mapv(|v| v.0)),
        Tensor::U4(a) => Tensor::U8(a.mapv(|v| v.0)),
        Tensor::I2(a) => Tensor::I8(a.mapv(|v| v.0)),
        Tensor::U2(a) => Tensor::U8(a.mapv(|v| v.0)),
        _ => return None,
    })
}

/// Converts a numeric or bool tensor to the storage type `to`.
pub(crate) fn narrow(t: &Tensor, to: DType, mode: CastMode) -> Result<Tensor, TensorError> {
    let shape = t.shape();
    if to.is_small_int() {
        let v: Vec<i64> = if t.dtype().is_float() {
            t.to_f64_vec()?.into_iter().map(float_to_int).collect()
        } else {
            // Unsigned 64-bit values wrap into i64 here, which keeps the low bits.
            t.to_i64_vec()?
        };
        let it = v.into_iter();
        return match to {
            DType::I4 => Tensor::from_vec(shape, it.map(I4::wrapping).collect()),
            DType::U4 => Tensor::from_vec(shape, it.map(U4::wrapping).collect()),
            DType::I2 => Tensor::from_vec(shape, it.map(I2::wrapping).collect()),
            DType::U2 => Tensor::from_vec(shape, it.map(U2::wrapping).collect()),
            _ => unreachable!("is_small_int"),
        };
    }
    let v = t.to_f64_vec()?;
    fn enc<T: crate::Elem>(
        shape: &[usize],
        v: &[f64],
        f: impl Fn(f64) -> T,
    ) -> Result<Tensor, TensorError> {
        Tensor::from_vec(shape, v.iter().map(|&x| f(x)).collect())
    }
    match to {
        DType::F8E4M3FN => enc(shape, &v, |x| F8E4M3FN::from_f64(x, mode)),
        DType::F8E4M3FNUZ => enc(shape, &v, |x| F8E4M3FNUZ::from_f64(x, mode)),
        DType::F8E5M2 => enc(shape, &v, |x| F8E5M2::from_f64(x, mode)),
        DType::F8E5M2FNUZ => enc(shape, &v, |x| F8E5M2FNUZ::from_f64(x, mode)),
        DType::F8E8M0 => enc(shape, &v, |x| F8E8M0::from_f64(x, mode)),
        DType::F4E2M1 => enc(shape, &v, |x| F4E2M1::from_f64(x, mode)),
        _ => Err(TensorError::BadCast {
            from: t.dtype(),
            to,
        }),
    }
}

/// The code of every element of a storage tensor (in the low `bits` bits); `None` for others.
pub(crate) fn codes(t: &Tensor) -> Option<Vec<u8>> {
    Some(match t {
        Tensor::F8E4M3FN(a) => a.iter().map(|v| v.0).collect(),
        Tensor::F8E4M3FNUZ(a) => a.iter().map(|v| v.0).collect(),
        Tensor::F8E5M2(a) => a.iter().map(|v| v.0).collect(),
        Tensor::F8E5M2FNUZ(a) => a.iter().map(|v| v.0).collect(),
        Tensor::F8E8M0(a) => a.iter().map(|v| v.0).collect(),
        Tensor::F4E2M1(a) => a.iter().map(|v| v.0 & 0xf).collect(),
        Tensor::I4(a) => a.iter().map(|v| v.code()).collect(),
        Tensor::U4(a) => a.iter().map(|v| v.code()).collect(),
        Tensor::I2(a) => a.iter().map(|v| v.code()).collect(),
        Tensor::U2(a) => a.iter().map(|v| v.code()).collect(),
        _ => return None,
    })
}

/// A storage tensor of `dtype` from one code per element (bits above the width are ignored).
pub(crate) fn from_codes(
    dtype: DType,
    shape: &[usize],
    codes: impl Iterator<Item = u8>,
) -> Result<Tensor, TensorError> {
    let c = codes;
    match dtype {
        DType::F8E4M3FN => Tensor::from_vec(shape, c.map(F8E4M3FN).collect()),
        DType::F8E4M3FNUZ => Tensor::from_vec(shape, c.map(F8E4M3FNUZ).collect()),
        DType::F8E5M2 => Tensor::from_vec(shape, c.map(F8E5M2).collect()),
        DType::F8E5M2FNUZ => Tensor::from_vec(shape, c.map(F8E5M2FNUZ).collect()),
        DType::F8E8M0 => Tensor::from_vec(shape, c.map(F8E8M0).collect()),
        DType::F4E2M1 => Tensor::from_vec(shape, c.map(|b| F4E2M1(b & 0xf)).collect()),
        DType::I4 => Tensor::from_vec(shape, c.map(|b| I4::wrapping(b.into())).collect()),
        DType::U4 => Tensor::from_vec(shape, c.map(|b| U4::wrapping(b.into())).collect()),
        DType::I2 => Tensor::from_vec(shape, c.map(|b| I2::wrapping(b.into())).collect()),
        DType::U2 => Tensor::from_vec(shape, c.map(|b| U2::wrapping(b.into())).collect()),
        _ => Err(TensorError::WrongDType {
            want: "a storage type",
            found: dtype,
        }),
    }
}

/// The bytes of a storage tensor: one code per byte for the 8-bit types; for the sub-byte
/// types, as many codes per byte as fit, the first in the lowest bits, the last byte padded
/// with zero bits (ONNX's `raw_data` layout). `None` for other tensors.
pub(crate) fn to_bytes(t: &Tensor) -> Option<Vec<u8>> {
    let bits = t.dtype().bits()?;
    let codes = codes(t)?;
    if bits == 8 {
        return Some(codes);
    }
    let per = 8 / bits;
    let mut out = vec![0u8; codes.len().div_ceil(per)];
    for (i, c) in codes.into_iter().enumerate() {
        out[i / per] |= c << ((i % per) * bits);
    }
    Some(out)
}

/// The inverse of `to_bytes`: exactly `ceil(n * bits / 8)` bytes for `n` elements.
pub(crate) fn from_bytes(
    dtype: DType,
    shape: &[usize],
    bytes: &[u8],
) -> Result<Tensor, TensorError> {
    let bits = dtype
        .bits()
        .filter(|_| dtype.is_storage_only())
        .ok_or(TensorError::WrongDType {
            want: "a storage type",
            found: dtype,
        })?;
    let n: usize = shape.iter().product();
    let per = 8 / bits;
    if bytes.len() != n.div_ceil(per) {
        return Err(TensorError::BadLength {
            len: bytes.len() * per,
            shape: shape.to_vec(),
        });
    }
    let mask = ((1u16 << bits) - 1) as u8;
    let codes = (0..n).map(|i| (bytes[i / per] >> ((i % per) * bits)) & mask);
    from_codes(dtype, shape, codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs of the conversion tables below, which were computed with ONNX's reference
    /// (`onnx.reference.ops.op_cast.cast_to` and `onnx.numpy_helper.to_float8e8m0`).
    const VALS: [f32; 39] = [
        0.0,
        -0.0,
        1e-10,
        -1e-10,
        0.000_976_562_5,
        0.000_488_281_25,
        3.0 / 4096.0,
        -0.002_929_687_5,
        3.0 / 2048.0,
        0.3,
        -2.5,
        7.5,
        8.5,
        17.0,
        250.0,
        -250.0,
        260.0,
        300.0,
        460.0,
        464.0,
        470.0,
        -500.0,
        57000.0,
        61440.0,
        -61441.0,
        1_000_000.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1.5e-5,
        7.7e-6,
        3e-6,
        0.25,
        0.75,
        2.5,
        3.5,
        5.0,
        -5.5,
        1e-39,
    ];

    #[rustfmt::skip]
    const TABLES: [(DType, bool, [u8; 39]); 10] = [
        (DType::F8E4M3FN, true, [0x0, 0x80, 0x0, 0x80, 0x0, 0x0, 0x0, 0x82, 0x1, 0x2a, 0xc2, 0x4f, 0x50, 0x58, 0x78, 0xf8, 0x78, 0x79, 0x7e, 0x7e, 0x7e, 0xfe, 0x7e, 0x7e, 0xfe, 0x7e, 0x7e, 0xfe, 0x7f, 0x0, 0x0, 0x0, 0x28, 0x34, 0x42, 0x46, 0x4a, 0xcb, 0x0]),
        (DType::F8E4M3FN, false, [0x0, 0x80, 0x0, 0x80, 0x0, 0x0, 0x0, 0x82, 0x1, 0x2a, 0xc2, 0x4f, 0x50, 0x58, 0x78, 0xf8, 0x78, 0x79, 0x7e, 0x7e, 0x7f, 0xff, 0x7f, 0x7f, 0xff, 0x7f, 0x7f, 0xff, 0x7f, 0x0, 0x0, 0x0, 0x28, 0x34, 0x42, 0x46, 0x4a, 0xcb, 0x0]),
        (DType::F8E4M3FNUZ, true, [0x0, 0x0, 0x0, 0x0, 0x1, 0x0, 0x1, 0x83, 0x2, 0x32, 0xca, 0x57, 0x58, 0x60, 0x7f, 0xff, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0xff, 0x7f, 0x7f, 0xff, 0x7f, 0x7f, 0xff, 0x80, 0x0, 0x0, 0x0, 0x30, 0x3c, 0x4a, 0x4e, 0x52, 0xd3, 0x0]),
        (DType::F8E4M3FNUZ, false, [0x0, 0x0, 0x0, 0x0, 0x1, 0x0, 0x1, 0x83, 0x2, 0x32, 0xca, 0x57, 0x58, 0x60, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x0, 0x0, 0x0, 0x30, 0x3c, 0x4a, 0x4e, 0x52, 0xd3, 0x0]),
        (DType::F8E5M2, true, [0x0, 0x80, 0x0, 0x80, 0x14, 0x10, 0x12, 0x9a, 0x16, 0x35, 0xc1, 0x48, 0x48, 0x4c, 0x5c, 0xdc, 0x5c, 0x5d, 0x5f, 0x5f, 0x5f, 0xe0, 0x7b, 0x7b, 0xfb, 0x7b, 0x7b, 0xfb, 0x7e, 0x1, 0x1, 0x0, 0x34, 0x3a, 0x41, 0x43, 0x45, 0xc6, 0x0]),
        (DType::F8E5M2, false, [0x0, 0x80, 0x0, 0x80, 0x14, 0x10, 0x12, 0x9a, 0x16, 0x35, 0xc1, 0x48, 0x48, 0x4c, 0x5c, 0xdc, 0x5c, 0x5d, 0x5f, 0x5f, 0x5f, 0xe0, 0x7b, 0x7c, 0xfc, 0x7c, 0x7c, 0xfc, 0x7e, 0x1, 0x1, 0x0, 0x34, 0x3a, 0x41, 0x43, 0x45, 0xc6, 0x0]),
        (DType::F8E5M2FNUZ, true, [0x0, 0x0, 0x0, 0x0, 0x18, 0x14, 0x16, 0x9e, 0x1a, 0x39, 0xc5, 0x4c, 0x4c, 0x50, 0x60, 0xe0, 0x60, 0x61, 0x63, 0x63, 0x63, 0xe4, 0x7f, 0x7f, 0xff, 0x7f, 0x7f, 0xff, 0x80, 0x2, 0x1, 0x0, 0x38, 0x3e, 0x45, 0x47, 0x49, 0xca, 0x0]),
        (DType::F8E5M2FNUZ, false, [0x0, 0x0, 0x0, 0x0, 0x18, 0x14, 0x16, 0x9e, 0x1a, 0x39, 0xc5, 0x4c, 0x4c, 0x50, 0x60, 0xe0, 0x60, 0x61, 0x63, 0x63, 0x63, 0xe4, 0x7f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x2, 0x1, 0x0, 0x38, 0x3e, 0x45, 0x47, 0x49, 0xca, 0x0]),
        (DType::F4E2M1, true, [0x0, 0x8, 0x0, 0x8, 0x0, 0x0, 0x0, 0x8, 0x0, 0x1, 0xc, 0x7, 0x7, 0x7, 0x7, 0xf, 0x7, 0x7, 0x7, 0x7, 0x7, 0xf, 0x7, 0x7, 0xf, 0x7, 0x7, 0xf, 0x8, 0x0, 0x0, 0x0, 0x0, 0x2, 0x4, 0x6, 0x6, 0xf, 0x0]),
        (DType::F4E2M1, false, [0x0, 0x8, 0x0, 0x8, 0x0, 0x0, 0x0, 0x8, 0x0, 0x1, 0xc, 0x7, 0x7, 0x7, 0x7, 0xf, 0x7, 0x7, 0x7, 0x7, 0x7, 0xf, 0x7, 0x7, 0xf, 0x7, 0x7, 0xf, 0x8, 0x0, 0x0, 0x0, 0x0, 0x2, 0x4, 0x6, 0x6, 0xf, 0x0]),
    ];

    #[rustfmt::skip]
    const E8M0_TABLES: [(RoundMode, bool, [u8; 39]); 3] = [
        (RoundMode::Up, true, [0x0, 0x0, 0x5e, 0x5e, 0x75, 0x74, 0x75, 0x77, 0x76, 0x7e, 0x81, 0x82, 0x83, 0x84, 0x87, 0x87, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x8f, 0x8f, 0x8f, 0x93, 0xff, 0xff, 0xff, 0x6f, 0x6f, 0x6d, 0x7d, 0x7f, 0x81, 0x81, 0x82, 0x82, 0x1]),
        (RoundMode::Down, true, [0x0, 0x0, 0x5d, 0x5d, 0x75, 0x74, 0x74, 0x76, 0x75, 0x7d, 0x80, 0x81, 0x82, 0x83, 0x86, 0x86, 0x87, 0x87, 0x87, 0x87, 0x87, 0x87, 0x8e, 0x8e, 0x8e, 0x92, 0xff, 0xff, 0xff, 0x6e, 0x6e, 0x6c, 0x7d, 0x7e, 0x80, 0x80, 0x81, 0x81, 0x0]),
        (RoundMode::Nearest, true, [0x0, 0x0, 0x5e, 0x5e, 0x75, 0x74, 0x75, 0x77, 0x76, 0x7d, 0x80, 0x82, 0x82, 0x83, 0x87, 0x87, 0x87, 0x87, 0x88, 0x88, 0x88, 0x88, 0x8f, 0x8f, 0x8f, 0x93, 0xff, 0xff, 0xff, 0x6f, 0x6e, 0x6d, 0x7d, 0x7f, 0x80, 0x81, 0x81, 0x81, 0x0]),
    ];

    fn cast_codes(v: &[f32], to: DType, mode: CastMode) -> Vec<u8> {
        let t = Tensor::from_vec(&[v.len()], v.to_vec()).unwrap();
        codes(&t.cast_with(to, mode).unwrap()).unwrap()
    }

    #[test]
    fn float_casts_match_the_reference() {
        for (to, saturate, want) in TABLES {
            let mode = CastMode {
                saturate,
                ..CastMode::default()
            };
            assert_eq!(
                cast_codes(&VALS, to, mode),
                want,
                "{to} saturate={saturate}"
            );
        }
        for (round, saturate, want) in E8M0_TABLES {
            let mode = CastMode { saturate, round };
            assert_eq!(cast_codes(&VALS, DType::F8E8M0, mode), want, "{round:?}");
        }
        // Rounding up past the largest exponent: NaN unless saturating.
        let big = [3.4e38f32, 1.7e38];
        let up = |saturate| CastMode {
            saturate,
            round: RoundMode::Up,
        };
        assert_eq!(cast_codes(&big, DType::F8E8M0, up(true)), [0xfe, 0xfe]);
        assert_eq!(cast_codes(&big, DType::F8E8M0, up(false)), [0xff, 0xfe]);
    }

    #[test]
    fn every_code_decodes_and_encodes_back() {
        for to in [
            DType::F8E4M3FN,
            DType::F8E4M3FNUZ,
            DType::F8E5M2,
            DType::F8E5M2FNUZ,
            DType::F8E8M0,
        ] {
            let t = from_codes(to, &[256], 0..=255u8).unwrap();
            let wide = widen(&t).unwrap();
            // Infinities come back only without saturation; Down keeps f8e8m0's smallest code,
            // 2^-127, which is not a normal f32.
            let mode = CastMode {
                saturate: false,
                round: RoundMode::Down,
            };
            let back = wide.cast_with(to, mode).unwrap();
            let (a, b) = (codes(&t).unwrap(), codes(&back).unwrap());
            for (x, y) in a.iter().zip(&b) {
                // Each NaN code maps to its format's canonical NaN (per sign); others return.
                let nan = wide.to_f64_vec().unwrap()[*x as usize].is_nan();
                assert!(x == y || nan, "{to}: {x:#04x} came back as {y:#04x}");
            }
        }
        let t = from_codes(DType::F4E2M1, &[16], 0..16u8).unwrap();
        let v = widen(&t).unwrap();
        assert_eq!(
            v.to_f64_vec().unwrap(),
            [
                0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0,
                -6.0
            ]
        );
        assert_eq!(v.cast(DType::F4E2M1).unwrap(), t);
    }

    #[test]
    fn small_ints_wrap_like_ml_dtypes() {
        let v = [
            0.3f32,
            7.6,
            8.0,
            -9.0,
            15.5,
            -2.5,
            100.0,
            -100.0,
            1e10,
            f32::NAN,
            f32::INFINITY,
        ];
        let t = Tensor::from_vec(&[v.len()], v.to_vec()).unwrap();
        let i4 = t.cast(DType::I4).unwrap().to_i64_vec().unwrap();
        assert_eq!(i4, [0, 7, -8, 7, -1, -2, 4, -4, 0, 0, 0]);
        let u4 = t.cast(DType::U4).unwrap().to_i64_vec().unwrap();
        assert_eq!(u4, [0, 7, 8, 7, 15, 14, 4, 12, 0, 0, 0]);
        let i2 = t.cast(DType::I2).unwrap().to_i64_vec().unwrap();
        assert_eq!(i2, [0, -1, 0, -1, -1, -2, 0, 0, 0, 0, 0]);
        let u2 = t.cast(DType::U2).unwrap().to_i64_vec().unwrap();
        assert_eq!(u2, [0, 3, 0, 3, 3, 2, 0, 0, 0, 0, 0]);
        let ints = Tensor::from_vec(&[3], vec![300i64, -100, (1 << 40) + 5]).unwrap();
        assert_eq!(
            ints.cast(DType::I4).unwrap().to_i64_vec().unwrap(),
            [-4, -4, 5]
        );
    }

    #[test]
    fn sub_byte_packing_is_low_bits_first() {
        let t = Tensor::from_vec(&[3], vec![I4(-1), I4(2), I4(-8)]).unwrap();
        let b = to_bytes(&t).unwrap();
        assert_eq!(b, [0x2f, 0x08]);
        assert_eq!(from_bytes(DType::I4, &[3], &b).unwrap(), t);
        let u = Tensor::from_vec(&[5], vec![U2(1), U2(2), U2(3), U2(0), U2(3)]).unwrap();
        let b = to_bytes(&u).unwrap();
        assert_eq!(b, [0b00_11_10_01, 0b11]);
        assert_eq!(from_bytes(DType::U2, &[5], &b).unwrap(), u);
        assert!(from_bytes(DType::U2, &[5], &[0]).is_err());
    }
}
