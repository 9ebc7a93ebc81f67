//! Element types of tensors, and the quantization parameters a tensor type may carry.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An element type. The set is closed: every backend and the interpreter handle each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    Bool,
    /// Variable-length UTF-8 strings; only data-movement ops accept them.
    Str,
    // Low-precision *storage* types (see `is_storage_only`). The serde names are spelled out
    // because `rename_all` would split them at every capital (`f8_e4_m3_f_n`).
    /// OCP float8 E4M3: no infinities, NaN is `S.1111.111`, max 448.
    #[serde(rename = "f8e4m3fn")]
    F8E4M3FN,
    /// float8 E4M3 with no negative zero: NaN is `0x80`, no infinities, max 240.
    #[serde(rename = "f8e4m3fnuz")]
    F8E4M3FNUZ,
    /// OCP float8 E5M2: IEEE-like, with infinities and NaNs, max 57344.
    #[serde(rename = "f8e5m2")]
    F8E5M2,
    /// float8 E5M2 with no negative zero: NaN is `0x80`, no infinities, max 57344.
    #[serde(rename = "f8e5m2fnuz")]
    F8E5M2FNUZ,
    /// OCP MX scale type: an unsigned power of two `2^(code - 127)`; `0xff` is NaN.
    #[serde(rename = "f8e8m0")]
    F8E8M0,
    /// OCP MX float4 E2M1: values 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives; no inf/NaN.
    #[serde(rename = "f4e2m1")]
    F4E2M1,
    /// 4-bit two's complement integer, -8..=7.
    #[serde(rename = "i4")]
    I4,
    /// 4-bit unsigned integer, 0..=15.
    #[serde(rename = "u4")]
    U4,
    /// 2-bit two's complement integer, -2..=1.
    #[serde(rename = "i2")]
    I2,
    /// 2-bit unsigned integer, 0..=3.
    #[serde(rename = "u2")]
    U2,
}

impl DType {
    pub const ALL: [DType; 24] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I16,
        DType::U16,
        DType::I32,
        DType::U32,
        DType::I64,
        DType::U64,
        DType::Bool,
        DType::Str,
        DType::F8E4M3FN,
        DType::F8E4M3FNUZ,
        DType::F8E5M2,
        DType::F8E5M2FNUZ,
        DType::F8E8M0,
        DType::F4E2M1,
        DType::I4,
        DType::U4,
        DType::I2,
        DType::U2,
    ];

    /// The short name used by the text form (`f32`, `i64`, `bool`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I16 => "i16",
            DType::U16 => "u16",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::I64 => "i64",
            DType::U64 => "u64",
            DType::Bool => "bool",
            DType::Str => "str",
            DType::F8E4M3FN => "f8e4m3fn",
            DType::F8E4M3FNUZ => "f8e4m3fnuz",
            DType::F8E5M2 => "f8e5m2",
            DType::F8E5M2FNUZ => "f8e5m2fnuz",
            DType::F8E8M0 => "f8e8m0",
            DType::F4E2M1 => "f4e2m1",
            DType::I4 => "i4",
            DType::U4 => "u4",
            DType::I2 => "i2",
            DType::U2 => "u2",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Size of one element in bytes; `None` for strings and for the sub-byte types (4- and
    /// 2-bit), which have no whole-byte size: in memory and in files they are packed several to
    /// a byte (see `bits`), while a `Tensor` holds them one per byte.
    pub fn size(self) -> Option<usize> {
        match self.bits()? {
            b if b % 8 == 0 => Some(b / 8),
            _ => None,
        }
    }

    /// Width of one element in bits; `None` for strings.
    pub fn bits(self) -> Option<usize> {
        Some(match self {
            DType::F64 | DType::I64 | DType::U64 => 64,
            DType::F32 | DType::I32 | DType::U32 => 32,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 16,
            DType::I8 | DType::U8 | DType::Bool => 8,
            DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ => 8,
            DType::F8E8M0 => 8,
            DType::F4E2M1 | DType::I4 | DType::U4 => 4,
            DType::I2 | DType::U2 => 2,
            DType::Str => return None,
        })
    }

    /// The low-precision storage types (float8, float4, 4- and 2-bit integers). Tensors hold
    /// them and data movement, casts and (de)quantization accept them, but no arithmetic does:
    /// they are neither `is_float` nor `is_int`, so inference rejects them where it wants numbers.
    pub fn is_storage_only(self) -> bool {
        self.is_small_float() || self.is_small_int()
    }

    /// The storage float types: the float8 variants and float4.
    pub fn is_small_float(self) -> bool {
        matches!(
            self,
            DType::F8E4M3FN
                | DType::F8E4M3FNUZ
                | DType::F8E5M2
                | DType::F8E5M2FNUZ
                | DType::F8E8M0
                | DType::F4E2M1
        )
    }

    /// The 4- and 2-bit integer types.
    pub fn is_small_int(self) -> bool {
        matches!(self, DType::I4 | DType::U4 | DType::I2 | DType::U2)
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }

    pub fn is_int(self) -> bool {
        matches!(
            self,
            DType::I8
                | DType::U8
                | DType::I16
                | DType::U16
                | DType::I32
                | DType::U32
                | DType::I64
                | DType::U64
        )
    }

    pub fn is_signed_int(self) -> bool {
        matches!(self, DType::I8 | DType::I16 | DType::I32 | DType::I64)
    }

    /// Numeric: floats and integers (not bool, not strings).
    pub fn is_numeric(self) -> bool {
        self.is_float() || self.is_int()
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Affine quantization parameters: `real = scale * (q - zero_point)`.
///
/// Per-tensor when `axis` is `None` (one scale, one zero point); per-channel along `axis` otherwise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantParams {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i32>,
    pub axis: Option<usize>,
}
