//! Dense tensors: the values of constants in the IR and of everything the interpreter computes.
//!
//! A `Tensor` is one `ndarray::ArrayD` per element type. Kernels are written once, generically,
//! over the `Elem` (any element) or `NumElem` (numeric) traits, and the `dispatch_*` macros pick
//! the variant. The low-precision storage types (`crate::lowbit`) are `Elem` but not `NumElem`:
//! data movement handles them, arithmetic does not.

use crate::dtype::DType;
use crate::lowbit::{
    self, CastMode, F4E2M1, F8E4M3FN, F8E4M3FNUZ, F8E5M2, F8E5M2FNUZ, F8E8M0, I2, I4, U2, U4,
};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use std::fmt;

/// An element type that a tensor can hold.
pub trait Elem: Clone + fmt::Debug + PartialEq + Default + Send + Sync + 'static {
    const DTYPE: DType;
    fn wrap(a: ArrayD<Self>) -> Tensor;
    fn view(t: &Tensor) -> Option<&ArrayD<Self>>;
    fn take(t: Tensor) -> Result<ArrayD<Self>, Tensor>;
}

/// A numeric (or bool) element: converts to and from the widest types exactly where they can.
pub trait NumElem: Elem + Copy + PartialOrd {
    fn to_f64(self) -> f64;
    fn to_i64(self) -> i64;
    fn to_u64(self) -> u64;
    fn from_f64(v: f64) -> Self;
    fn from_i64(v: i64) -> Self;
    fn from_u64(v: u64) -> Self;
    fn zero() -> Self;
    fn one() -> Self;
}

macro_rules! tensor_enum {
    ($($var:ident($t:ty) = $dt:ident),* $(,)?) => {
        /// A dense tensor of one element type.
        #[derive(Clone, PartialEq)]
        pub enum Tensor {
            $($var(ArrayD<$t>),)*
        }

        $(impl Elem for $t {
            const DTYPE: DType = DType::$dt;
            fn wrap(a: ArrayD<Self>) -> Tensor { Tensor::$var(a) }
            fn view(t: &Tensor) -> Option<&ArrayD<Self>> {
                match t { Tensor::$var(a) => Some(a), _ => None }
            }
            fn take(t: Tensor) -> Result<ArrayD<Self>, Tensor> {
                match t { Tensor::$var(a) => Ok(a), other => Err(other) }
            }
        })*

        impl Tensor {
            pub fn dtype(&self) -> DType {
                match self { $(Tensor::$var(_) => DType::$dt,)* }
            }
            pub fn shape(&self) -> &[usize] {
                match self { $(Tensor::$var(a) => a.shape(),)* }
            }
            /// A tensor of the given type and shape filled with the type's default (zero, false, "").
            pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
                match dtype { $(DType::$dt => Tensor::$var(ArrayD::default(IxDyn(shape))),)* }
            }
        }
    };
}

tensor_enum! {
    F32(f32) = F32,
    F64(f64) = F64,
    F16(f16) = F16,
    BF16(bf16) = BF16,
    I8(i8) = I8,
    U8(u8) = U8,
    I16(i16) = I16,
    U16(u16) = U16,
    I32(i32) = I32,
    U32(u32) = U32,
    I64(i64) = I64,
    U64(u64) = U64,
    Bool(bool) = Bool,
    Str(String) = Str,
    F8E4M3FN(F8E4M3FN) = F8E4M3FN,
    F8E4M3FNUZ(F8E4M3FNUZ) = F8E4M3FNUZ,
    F8E5M2(F8E5M2) = F8E5M2,
    F8E5M2FNUZ(F8E5M2FNUZ) = F8E5M2FNUZ,
    F8E8M0(F8E8M0) = F8E8M0,
    F4E2M1(F4E2M1) = F4E2M1,
    I4(I4) = I4,
    U4(U4) = U4,
    I2(I2) = I2,
    U2(U2) = U2,
}

/// Runs `$body` with `$a: &ArrayD<T>` bound for whichever variant `$t` holds (all element types).
/// Inside, `T` is not nameable; use `Elem::wrap` to rebuild a tensor.
#[macro_export]
macro_rules! dispatch_all {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            $crate::Tensor::F32($a) => $body,
            $crate::Tensor::F64($a) => $body,
            $crate::Tensor::F16($a) => $body,
            $crate::Tensor::BF16($a) => $body,
            $crate::Tensor::I8($a) => $body,
            $crate::Tensor::U8($a) => $body,
            $crate::Tensor::I16($a) => $body,
            $crate::Tensor::U16($a) => $body,
            $crate::Tensor::I32($a) => $body,
            $crate::Tensor::U32($a) => $body,
            $crate::Tensor::I64($a) => $body,
            $crate::Tensor::U64($a) => $body,
            $crate::Tensor::Bool($a) => $body,
            $crate::Tensor::Str($a) => $body,
            $crate::Tensor::F8E4M3FN($a) => $body,
            $crate::Tensor::F8E4M3FNUZ($a) => $body,
            $crate::Tensor::F8E5M2($a) => $body,
            $crate::Tensor::F8E5M2FNUZ($a) => $body,
            $crate::Tensor::F8E8M0($a) => $body,
            $crate::Tensor::F4E2M1($a) => $body,
            $crate::Tensor::I4($a) => $body,
            $crate::Tensor::U4($a) => $body,
            $crate::Tensor::I2($a) => $body,
            $crate::Tensor::U2($a) => $body,
        }
    };
}

/// Like `dispatch_all!` over numeric and bool element types (`NumElem`); `$else` for strings and
/// the storage-only types (`DType::is_storage_only`), which no arithmetic kernel takes.
#[macro_export]
macro_rules! dispatch_num {
    ($t:expr, $a:ident => $body:expr, _ => $else:expr) => {
        match $t {
            $crate::Tensor::F32($a) => $body,
            $crate::Tensor::F64($a) => $body,
            $crate::Tensor::F16($a) => $body,
            $crate::Tensor::BF16($a) => $body,
            $crate::Tensor::I8($a) => $body,
            $crate::Tensor::U8($a) => $body,
            $crate::Tensor::I16($a) => $body,
            $crate::Tensor::U16($a) => $body,
            $crate::Tensor::I32($a) => $body,
            $crate::Tensor::U32($a) => $body,
            $crate::Tensor::I64($a) => $body,
            $crate::Tensor::U64($a) => $body,
            $crate::Tensor::Bool($a) => $body,
            #[allow(unreachable_patterns)]
            _ => $else,
        }
    };
}

/// Like `dispatch_all!` over the float element types only; `$else` for the rest.
#[macro_export]
macro_rules! dispatch_float {
    ($t:expr, $a:ident => $body:expr, _ => $else:expr) => {
        match $t {
            $crate::Tensor::F32($a) => $body,
            $crate::Tensor::F64($a) => $body,
            $crate::Tensor::F16($a) => $body,
            $crate::Tensor::BF16($a) => $body,
            #[allow(unreachable_patterns)]
            _ => $else,
        }
    };
}

macro_rules! num_int {
    ($($t:ty),*) => {$(
        impl NumElem for $t {
            fn to_f64(self) -> f64 { self as f64 }
            fn to_i64(self) -> i64 { self as i64 }
            fn to_u64(self) -> u64 { self as u64 }
            // `as` saturates float-to-int and maps NaN to 0, which is what ONNX Cast leaves open.
            fn from_f64(v: f64) -> Self { v as $t }
            fn from_i64(v: i64) -> Self { v as $t }
            fn from_u64(v: u64) -> Self { v as $t }
            fn zero() -> Self { 0 }
            fn one() -> Self { 1 }
        }
    )*};
}
num_int!(i8, u8, i16, u16, i32, u32, i64, u64);

macro_rules! num_float {
    ($($t:ty),*) => {$(
        impl NumElem for $t {
            fn to_f64(self) -> f64 { self as f64 }
            fn to_i64(self) -> i64 { self as i64 }
            fn to_u64(self) -> u64 { self as u64 }
            fn from_f64(v: f64) -> Self { v as $t }
            fn from_i64(v: i64) -> Self { v as $t }
            fn from_u64(v: u64) -> Self { v as $t }
            fn zero() -> Self { 0.0 }
            fn one() -> Self { 1.0 }
        }
    )*};
}
num_float!(f32, f64);

macro_rules! num_half {
    ($($t:ty),*) => {$(
        impl NumElem for $t {
            fn to_f64(self) -> f64 { self.to_f64() }
            fn to_i64(self) -> i64 { self.to_f64() as i64 }
            fn to_u64(self) -> u64 { self.to_f64() as u64 }
            fn from_f64(v: f64) -> Self { <$t>::from_f64(v) }
            fn from_i64(v: i64) -> Self { <$t>::from_f64(v as f64) }
            fn from_u64(v: u64) -> Self { <$t>::from_f64(v as f64) }
            fn zero() -> Self { <$t>::ZERO }
            fn one() -> Self { <$t>::ONE }
        }
    )*};
}
num_half!(f16, bf16);

impl NumElem for bool {
    fn to_f64(self) -> f64 {
        self as u8 as f64
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn to_u64(self) -> u64 {
        self as u64
    }
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    fn from_i64(v: i64) -> Self {
        v != 0
    }
    fn from_u64(v: u64) -> Self {
        v != 0
    }
    fn zero() -> Self {
        false
    }
    fn one() -> Self {
        true
    }
}

/// Why a tensor could not be built or converted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error("{len} elements do not fill shape {shape:?}")]
    BadLength { len: usize, shape: Vec<usize> },
    #[error("expected {want} data, found {found}")]
    WrongDType { want: &'static str, found: DType },
    #[error("cannot cast {from} to {to}")]
    BadCast { from: DType, to: DType },
    #[error("string is not a number: {0:?}")]
    BadNumber(String),
}

impl Tensor {
    /// Builds a tensor from a flat row-major vector.
    pub fn from_vec<T: Elem>(shape: &[usize], data: Vec<T>) -> Result<Tensor, TensorError> {
        let len = data.len();
        ArrayD::from_shape_vec(IxDyn(shape), data)
            .map(T::wrap)
            .map_err(|_| TensorError::BadLength {
                len,
                shape: shape.to_vec(),
            })
    }

    pub fn scalar<T: Elem>(v: T) -> Tensor {
        T::wrap(ArrayD::from_elem(IxDyn(&[]), v))
    }

    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn rank(&self) -> usize {
        self.shape().len()
    }

    pub fn view<T: Elem>(&self) -> Result<&ArrayD<T>, TensorError> {
        T::view(self).ok_or(TensorError::WrongDType {
            want: T::DTYPE.name(),
            found: self.dtype(),
        })
    }

    pub fn into_array<T: Elem>(self) -> Result<ArrayD<T>, TensorError> {
        let found = self.dtype();
        T::take(self).map_err(|_| TensorError::WrongDType {
            want: T::DTYPE.name(),
            found,
        })
    }

    /// The elements as i64, for shape-like tensors (axes, shapes, indices, pads) of any integer type.
    pub fn to_i64_vec(&self) -> Result<Vec<i64>, TensorError> {
        if self.dtype().is_small_int() {
            return lowbit::widen(self).expect("a storage type").to_i64_vec();
        }
        if !(self.dtype().is_int() || self.dtype() == DType::Bool) {
            return Err(TensorError::WrongDType {
                want: "integer",
                found: self.dtype(),
            });
        }
        dispatch_num!(self, a => Ok(a.iter().map(|v| v.to_i64()).collect()), _ => unreachable!())
    }

    /// The elements as f64 (numeric, bool and storage-type tensors; all exactly but i64/u64
    /// beyond 2^53).
    pub fn to_f64_vec(&self) -> Result<Vec<f64>, TensorError> {
        dispatch_num!(self, a => Ok(a.iter().map(|v| v.to_f64()).collect()),
        _ => match lowbit::widen(self) {
            Some(w) => w.to_f64_vec(),
            None => Err(TensorError::WrongDType { want: "numeric", found: self.dtype() }),
        })
    }

    /// Element-wise conversion with ONNX `Cast` semantics and its default options: floats
    /// truncate toward zero (saturating on overflow), integers wrap, bool is 0/1, strings parse
    /// and print as numbers; the storage types convert as `crate::lowbit` describes.
    pub fn cast(&self, to: DType) -> Result<Tensor, TensorError> {
        self.cast_with(to, CastMode::default())
    }

    /// `cast` with ONNX `Cast`'s options for float8 targets (`saturate`, `round_mode`).
    pub fn cast_with(&self, to: DType, mode: CastMode) -> Result<Tensor, TensorError> {
        if self.dtype() == to {
            return Ok(self.clone());
        }
        // Storage types go through an ordinary type that holds their values exactly.
        if let Some(wide) = lowbit::widen(self) {
            return wide.cast_with(to, mode);
        }
        if let Tensor::Str(a) = self {
            return cast_from_str(a, to, mode);
        }
        if to.is_storage_only() {
            return lowbit::narrow(self, to, mode);
        }
        if to == DType::Str {
            return dispatch_num!(self, a => Ok(Tensor::Str(a.map(|v| format_num(v.to_f64(), self.dtype())))),
                _ => unreachable!());
        }
        let from = self.dtype();
        dispatch_num!(self, a => Ok(cast_array(a, from, to)), _ => unreachable!())
    }

    /// Little-endian bytes of the elements (not for strings). The storage types give their codes,
    /// the sub-byte ones packed (see `lowbit`), as ONNX's `raw_data` holds them.
    pub fn to_le_bytes(&self) -> Result<Vec<u8>, TensorError> {
        fn le<T: Copy, const N: usize>(a: &ArrayD<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            a.iter().flat_map(|&v| f(v)).collect()
        }
        if let Some(b) = lowbit::to_bytes(self) {
            return Ok(b);
        }
        Ok(match self {
            Tensor::F32(a) => le(a, f32::to_le_bytes),
            Tensor::F64(a) => le(a, f64::to_le_bytes),
            Tensor::F16(a) => le(a, f16::to_le_bytes),
            Tensor::BF16(a) => le(a, bf16::to_le_bytes),
            Tensor::I8(a) => le(a, i8::to_le_bytes),
            Tensor::U8(a) => le(a, u8::to_le_bytes),
            Tensor::I16(a) => le(a, i16::to_le_bytes),
            Tensor::U16(a) => le(a, u16::to_le_bytes),
            Tensor::I32(a) => le(a, i32::to_le_bytes),
            Tensor::U32(a) => le(a, u32::to_le_bytes),
            Tensor::I64(a) => le(a, i64::to_le_bytes),
            Tensor::U64(a) => le(a, u64::to_le_bytes),
            Tensor::Bool(a) => le(a, |b: bool| [b as u8]),
            _ => {
                return Err(TensorError::WrongDType {
                    want: "fixed-size",
                    found: self.dtype(),
                });
            }
        })
    }

    /// Builds a tensor from little-endian bytes (not for strings); the inverse of `to_le_bytes`.
    pub fn from_le_bytes(
        dtype: DType,
        shape: &[usize],
        bytes: &[u8],
    ) -> Result<Tensor, TensorError> {
        if dtype.is_storage_only() {
            return lowbit::from_bytes(dtype, shape, bytes);
        }
        let n: usize = shape.iter().product();
        let size = dtype.size().ok_or(TensorError::WrongDType {
            want: "fixed-size",
            found: dtype,
        })?;
        if bytes.len() != n * size {
            return Err(TensorError::BadLength {
                len: bytes.len() / size,
                shape: shape.to_vec(),
            });
        }
        fn de<T: Elem, const N: usize>(
            shape: &[usize],
            b: &[u8],
            f: impl Fn([u8; N]) -> T,
        ) -> Result<Tensor, TensorError> {
            let v = b
                .chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunk of N bytes")))
                .collect();
            Tensor::from_vec(shape, v)
        }
        match dtype {
            DType::F32 => de(shape, bytes, f32::from_le_bytes),
            DType::F64 => de(shape, bytes, f64::from_le_bytes),
            DType::F16 => de(shape, bytes, f16::from_le_bytes),
            DType::BF16 => de(shape, bytes, bf16::from_le_bytes),
            DType::I8 => de(shape, bytes, i8::from_le_bytes),
            DType::U8 => de(shape, bytes, u8::from_le_bytes),
            DType::I16 => de(shape, bytes, i16::from_le_bytes),
            DType::U16 => de(shape, bytes, u16::from_le_bytes),
            DType::I32 => de(shape, bytes, i32::from_le_bytes),
            DType::U32 => de(shape, bytes, u32::from_le_bytes),
            DType::I64 => de(shape, bytes, i64::from_le_bytes),
            DType::U64 => de(shape, bytes, u64::from_le_bytes),
            DType::Bool => de(shape, bytes, |[b]: [u8; 1]| b != 0),
            _ => unreachable!("strings have no fixed size; storage types returned above"),
        }
    }
}

fn cast_array<S: NumElem>(a: &ArrayD<S>, from: DType, to: DType) -> Tensor {
    fn go<S: NumElem, D: NumElem>(a: &ArrayD<S>, from: DType) -> Tensor {
        // Pick the exact path: integers must not pass through f64 (i64 has 64 significant bits).
        if from.is_float() {
            D::wrap(a.mapv(|v| D::from_f64(v.to_f64())))
        } else if from.is_signed_int() {
            D::wrap(a.mapv(|v| D::from_i64(v.to_i64())))
        } else {
            D::wrap(a.mapv(|v| D::from_u64(v.to_u64())))
        }
    }
    match to {
        DType::F32 => go::<S, f32>(a, from),
        DType::F64 => go::<S, f64>(a, from),
        DType::F16 => go::<S, f16>(a, from),
        DType::BF16 => go::<S, bf16>(a, from),
        DType::I8 => go::<S, i8>(a, from),
        DType::U8 => go::<S, u8>(a, from),
        DType::I16 => go::<S, i16>(a, from),
        DType::U16 => go::<S, u16>(a, from),
        DType::I32 => go::<S, i32>(a, from),
        DType::U32 => go::<S, u32>(a, from),
        DType::I64 => go::<S, i64>(a, from),
        DType::U64 => go::<S, u64>(a, from),
        DType::Bool => go::<S, bool>(a, from),
        _ => unreachable!("strings and storage types are handled by the caller"),
    }
}

fn cast_from_str(a: &ArrayD<String>, to: DType, mode: CastMode) -> Result<Tensor, TensorError> {
    let parsed: Result<Vec<f64>, TensorError> = a
        .iter()
        .map(|s| {
            let t = s.trim();
            match t.to_ascii_lowercase().as_str() {
                "nan" | "+nan" | "-nan" => Ok(f64::NAN),
                "inf" | "+inf" | "infinity" | "+infinity" => Ok(f64::INFINITY),
                "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
                _ => t
                    .parse::<f64>()
                    .map_err(|_| TensorError::BadNumber(s.clone())),
            }
        })
        .collect();
    let f = Tensor::F64(ArrayD::from_shape_vec(a.raw_dim(), parsed?).expect("same length"));
    f.cast_with(to, mode)
}

fn format_num(v: f64, from: DType) -> String {
    if from.is_float() {
        if v.is_nan() {
            "NaN".into()
        } else if v.is_infinite() {
            if v > 0.0 { "INF".into() } else { "-INF".into() }
        } else {
            format!("{}", v as f32)
        }
    } else {
        format!("{v}")
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor<{}{:?}>", self.dtype(), self.shape())?;
        if self.len() <= 16 {
            dispatch_all!(self, a => write!(f, " {:?}", a.iter().collect::<Vec<_>>()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cast_is_exact_for_wide_ints() {
        let t = Tensor::from_vec(&[1], vec![i64::MAX - 1]).unwrap();
        assert_eq!(
            t.cast(DType::U64).unwrap().to_i64_vec().unwrap(),
            vec![i64::MAX - 1]
        );
    }

    #[test]
    fn le_bytes_round_trip() {
        let t = Tensor::from_vec(&[2, 2], vec![1.5f32, -2.0, 0.0, 7.25]).unwrap();
        let b = t.to_le_bytes().unwrap();
        assert_eq!(Tensor::from_le_bytes(DType::F32, &[2, 2], &b).unwrap(), t);
    }
}
