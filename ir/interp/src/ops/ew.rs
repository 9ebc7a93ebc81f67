//! Kernels of the ew family.
//!
//! Every numeric element is read into a `Num` (f64 for floats, i64/u64 for integers, bool), the
//! op's scalar function runs on those, and the result is converted back to the output dtype.
//! Floats are computed in f64: for `+ - * /` and `sqrt` rounding the f64 result to f32/f16/bf16
//! gives exactly the IEEE result of the narrow type (53 >= 2p + 2), and for transcendental
//! functions it is at least as accurate. Integers stay in integer arithmetic (wrapping like the
//! narrow type), so i64/u64 values are exact.

use crate::{EvalCx, EvalError, invalid};
use mlc_ir::ops::EwOp;
use mlc_ir::ops::ew::GeluApprox;
use mlc_ir::{CastMode, DType, Elem, NumElem, Tensor, dispatch_all, dispatch_num};
use ndarray::{ArrayD, IxDyn};
use std::cmp::Ordering;

/// One element, widened to the domain its dtype computes in.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    F(f64),
    I(i64),
    U(u64),
    B(bool),
}

use Num::{B, F, I, U};

impl Num {
    fn of<T: NumElem>(v: T) -> Num {
        let d = T::DTYPE;
        if d.is_float() {
            F(v.to_f64())
        } else if d.is_signed_int() {
            I(v.to_i64())
        } else if d == DType::Bool {
            B(v.to_i64() != 0)
        } else {
            U(v.to_u64())
        }
    }

    /// Converts to `T`; narrower integers wrap, floats round to nearest, float to int truncates.
    fn to<T: NumElem>(self) -> T {
        match self {
            F(v) => T::from_f64(v),
            I(v) => T::from_i64(v),
            U(v) => T::from_u64(v),
            B(b) => T::from_i64(b as i64),
        }
    }

    fn f64(self) -> f64 {
        match self {
            F(v) => v,
            I(v) => v as f64,
            U(v) => v as f64,
            B(b) => b as u8 as f64,
        }
    }

    fn is_nan(self) -> bool {
        matches!(self, F(v) if v.is_nan())
    }

    /// Numeric order within one domain; `None` when a NaN is involved.
    fn cmp(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (I(a), I(b)) => Some(a.cmp(&b)),
            (U(a), U(b)) => Some(a.cmp(&b)),
            (B(a), B(b)) => Some(a.cmp(&b)),
            (I(a), U(b)) => Some((a as i128).cmp(&(b as i128))),
            (U(a), I(b)) => Some((a as i128).cmp(&(b as i128))),
            (a, b) => a.f64().partial_cmp(&b.f64()),
        }
    }
}

/// The numpy broadcast of several static shapes.
fn broadcast(shapes: &[&[usize]]) -> Result<Vec<usize>, EvalError> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(invalid(format!("cannot broadcast shapes {shapes:?}")));
            }
        }
    }
    Ok(out)
}

/// The elements of `t` broadcast to `shape`, in row-major order.
fn nums(t: &Tensor, shape: &[usize]) -> Result<Vec<Num>, EvalError> {
    dispatch_num!(t, a => {
        let v = a.broadcast(IxDyn(shape))
            .ok_or_else(|| invalid(format!("cannot broadcast {:?} to {shape:?}", a.shape())))?;
        Ok(v.iter().map(|&x| Num::of(x)).collect())
    }, _ => Err(invalid(format!("expected a numeric tensor, found {}", t.dtype()))))
}

/// Builds a tensor of `dtype` from row-major `Num`s.
fn build(dtype: DType, shape: &[usize], v: Vec<Num>) -> Result<Tensor, EvalError> {
    fn go<T: NumElem>(shape: &[usize], v: Vec<Num>) -> Result<Tensor, EvalError> {
        Ok(Tensor::from_vec(
            shape,
            v.into_iter().map(Num::to::<T>).collect(),
        )?)
    }
    use half::{bf16, f16};
    match dtype {
        DType::F32 => go::<f32>(shape, v),
        DType::F64 => go::<f64>(shape, v),
        DType::F16 => go::<f16>(shape, v),
        DType::BF16 => go::<bf16>(shape, v),
        DType::I8 => go::<i8>(shape, v),
        DType::U8 => go::<u8>(shape, v),
        DType::I16 => go::<i16>(shape, v),
        DType::U16 => go::<u16>(shape, v),
        DType::I32 => go::<i32>(shape, v),
        DType::U32 => go::<u32>(shape, v),
        DType::I64 => go::<i64>(shape, v),
        DType::U64 => go::<u64>(shape, v),
        DType::Bool => go::<bool>(shape, v),
        DType::Str => Err(invalid("a numeric op cannot produce strings")),
        d => Err(invalid(format!("a numeric op cannot produce {d}"))),
    }
}

/// Applies `f` to the broadcast elements of `inputs`, producing a tensor of dtype `out`.
fn zip_n(
    inputs: &[&Tensor],
    out: DType,
    f: impl Fn(&[Num]) -> Result<Num, EvalError>,
) -> Result<Tensor, EvalError> {
    let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
    let shape = broadcast(&shapes)?;
    let cols = inputs
        .iter()
        .map(|t| nums(t, &shape))
        .collect::<Result<Vec<_>, _>>()?;
    let n: usize = shape.iter().product();
    let mut row = vec![B(false); cols.len()];
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        for (r, c) in row.iter_mut().zip(&cols) {
            *r = c[i];
        }
        v.push(f(&row)?);
    }
    build(out, &shape, v)
}

fn map_unary(x: &Tensor, out: DType, f: impl Fn(Num) -> Num) -> Result<Tensor, EvalError> {
    zip_n(&[x], out, |v| Ok(f(v[0])))
}

fn zip_binary(
    a: &Tensor,
    b: &Tensor,
    out: DType,
    f: impl Fn(Num, Num) -> Result<Num, EvalError>,
) -> Result<Tensor, EvalError> {
    zip_n(&[a, b], out, |v| f(v[0], v[1]))
}

/// Applies `f` to the broadcast elements of two tensors of one non-numeric-friendly type
/// (strings), generically over the element type.
fn zip_elems<T: Elem, R: Elem>(
    a: &ArrayD<T>,
    b: &Tensor,
    f: impl Fn(&T, &T) -> R,
) -> Result<Tensor, EvalError> {
    let b = b.view::<T>()?;
    let shape = broadcast(&[a.shape(), b.shape()])?;
    let bad = || invalid("broadcast failed");
    let av = a.broadcast(IxDyn(&shape)).ok_or_else(bad)?;
    let bv = b.broadcast(IxDyn(&shape)).ok_or_else(bad)?;
    Ok(Tensor::from_vec(
        &shape,
        av.iter().zip(bv.iter()).map(|(x, y)| f(x, y)).collect(),
    )?)
}

/// `cond ? x : y` for any element type.
fn select<T: Elem>(c: &ArrayD<bool>, x: &ArrayD<T>, y: &Tensor) -> Result<Tensor, EvalError> {
    let y = y.view::<T>()?;
    let shape = broadcast(&[c.shape(), x.shape(), y.shape()])?;
    let bad = || invalid("broadcast failed");
    let cv = c.broadcast(IxDyn(&shape)).ok_or_else(bad)?;
    let xv = x.broadcast(IxDyn(&shape)).ok_or_else(bad)?;
    let yv = y.broadcast(IxDyn(&shape)).ok_or_else(bad)?;
    let v = cv
        .iter()
        .zip(xv.iter().zip(yv.iter()))
        .map(|(&c, (x, y))| if c { x.clone() } else { y.clone() });
    Ok(Tensor::from_vec(&shape, v.collect())?)
}

/// A float function lifted to `Num` (integers are computed through f64 and converted back).
fn fl(x: Num, f: impl Fn(f64) -> f64) -> Num {
    F(f(x.f64()))
}

/// Like `fl`, but integers and bools pass through unchanged (rounding ops).
fn fl_or_keep(x: Num, f: impl Fn(f64) -> f64) -> Num {
    match x {
        F(v) => F(f(v)),
        other => other,
    }
}

/// An arithmetic op per domain; integer functions return `None` for division by zero.
fn arith(
    a: Num,
    b: Num,
    ff: impl Fn(f64, f64) -> f64,
    fi: impl Fn(i64, i64) -> Option<i64>,
    fu: impl Fn(u64, u64) -> Option<u64>,
) -> Result<Num, EvalError> {
    let zero = || invalid("integer division by zero");
    match (a, b) {
        (I(x), I(y)) => fi(x, y).map(I).ok_or_else(zero),
        (U(x), U(y)) => fu(x, y).map(U).ok_or_else(zero),
        (B(x), B(y)) => fu(x as u64, y as u64).map(U).ok_or_else(zero),
        _ => Ok(F(ff(a.f64(), b.f64()))),
    }
}

fn max_num(a: Num, b: Num) -> Num {
    if a.is_nan() || b.is_nan() {
        return F(f64::NAN);
    }
    if a.cmp(b) == Some(Ordering::Less) {
        b
    } else {
        a
    }
}

fn min_num(a: Num, b: Num) -> Num {
    if a.is_nan() || b.is_nan() {
        return F(f64::NAN);
    }
    if b.cmp(a) == Some(Ordering::Less) {
        b
    } else {
        a
    }
}

/// Python's `%` on floats: the sign of the divisor (numpy's `npy_divmod`).
fn py_mod_f(a: f64, b: f64) -> f64 {
    let m = a % b;
    if b == 0.0 {
        m
    } else if m != 0.0 {
        if (b < 0.0) != (m < 0.0) { m + b } else { m }
    } else {
        0.0f64.copysign(b)
    }
}

fn py_mod_i(a: i64, b: i64) -> Option<i64> {
    if b == 0 {
        return None;
    }
    let m = a.wrapping_rem(b);
    Some(if m != 0 && ((m < 0) != (b < 0)) {
        m + b
    } else {
        m
    })
}

/// `b^e` with wrapping multiplication (the same bits for signed and unsigned).
fn wrapping_pow(mut b: u64, mut e: u64) -> u64 {
    let mut r = 1u64;
    while e > 0 {
        if e & 1 == 1 {
            r = r.wrapping_mul(b);
        }
        b = b.wrapping_mul(b);
        e >>= 1;
    }
    r
}

fn pow(b: Num, e: Num) -> Num {
    match (b, e) {
        (I(b), I(e)) if e >= 0 => I(wrapping_pow(b as u64, e as u64) as i64),
        (I(b), U(e)) => I(wrapping_pow(b as u64, e) as i64),
        (U(b), I(e)) if e >= 0 => U(wrapping_pow(b, e as u64)),
        (U(b), U(e)) => U(wrapping_pow(b, e)),
        // Negative integer exponents and float operands: numpy's float result, truncated back
        // to an integer base type by the caller's conversion.
        _ => F(b.f64().powf(e.f64())),
    }
}

/// ONNX BitShift: amounts outside `0..bits` shift everything out.
fn shift(a: Num, s: Num, bits: u32, left: bool) -> Num {
    let amount = match s {
        I(v) if (0..bits as i64).contains(&v) => Some(v as u32),
        U(v) if v < bits as u64 => Some(v as u32),
        _ => None,
    };
    match (a, amount) {
        (I(x), Some(n)) => I(if left { x.wrapping_shl(n) } else { x >> n }),
        (U(x), Some(n)) => U(if left { x.wrapping_shl(n) } else { x >> n }),
        (I(x), None) if !left && x < 0 => I(-1),
        (I(_), None) => I(0),
        _ => U(0),
    }
}

fn bitwise(a: Num, b: Num, f: impl Fn(u64, u64) -> u64) -> Num {
    match (a, b) {
        // Sign-extended i64 bits combine like the narrow type's bits; the result wraps back.
        (I(x), I(y)) => I(f(x as u64, y as u64) as i64),
        (U(x), U(y)) => U(f(x, y)),
        (B(x), B(y)) => B(f(x as u64, y as u64) != 0),
        _ => F(f64::NAN),
    }
}

fn truth(n: Num) -> bool {
    match n {
        B(b) => b,
        other => other.f64() != 0.0,
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// The scalar function of a one-input op.
fn unary_fn(op: &EwOp) -> Option<Box<dyn Fn(Num) -> Num>> {
    use EwOp::*;
    Some(match *op {
        Abs => Box::new(|x| match x {
            F(v) => F(v.abs()),
            I(v) => I(v.wrapping_abs()),
            other => other,
        }),
        Neg => Box::new(|x| match x {
            F(v) => F(-v),
            I(v) => I(v.wrapping_neg()),
            U(v) => U(v.wrapping_neg()),
            other => other,
        }),
        Exp => Box::new(|x| fl(x, f64::exp)),
        Log => Box::new(|x| fl(x, f64::ln)),
        Sqrt => Box::new(|x| fl(x, f64::sqrt)),
        Reciprocal => Box::new(|x| fl(x, f64::recip)),
        Sin => Box::new(|x| fl(x, f64::sin)),
        Cos => Box::new(|x| fl(x, f64::cos)),
        Tan => Box::new(|x| fl(x, f64::tan)),
        Asin => Box::new(|x| fl(x, f64::asin)),
        Acos => Box::new(|x| fl(x, f64::acos)),
        Atan => Box::new(|x| fl(x, f64::atan)),
        Sinh => Box::new(|x| fl(x, f64::sinh)),
        Cosh => Box::new(|x| fl(x, f64::cosh)),
        Asinh => Box::new(|x| fl(x, f64::asinh)),
        Acosh => Box::new(|x| fl(x, f64::acosh)),
        Atanh => Box::new(|x| fl(x, f64::atanh)),
        Erf => Box::new(|x| fl(x, libm::erf)),
        Tanh => Box::new(|x| fl(x, f64::tanh)),
        Sigmoid => Box::new(|x| fl(x, sigmoid)),
        Relu => Box::new(|x| match x {
            F(v) => F(if v < 0.0 { 0.0 } else { v }),
            I(v) => I(v.max(0)),
            other => other,
        }),
        Floor => Box::new(|x| fl_or_keep(x, f64::floor)),
        Ceil => Box::new(|x| fl_or_keep(x, f64::ceil)),
        Round => Box::new(|x| fl_or_keep(x, f64::round_ties_even)),
        Sign => Box::new(|x| match x {
            F(v) if v.is_nan() => F(v),
            F(v) => F(if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            }),
            I(v) => I(v.signum()),
            U(v) => U(v.min(1)),
            other => other,
        }),
        Softplus => Box::new(|x| fl(x, softplus)),
        Softsign => Box::new(|x| fl(x, |v| v / (1.0 + v.abs()))),
        Mish => Box::new(|x| fl(x, |v| v * softplus(v).tanh())),
        HardSwish => Box::new(|x| fl(x, |v| v * (v * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0))),
        LeakyRelu { alpha } => {
            let a = alpha as f64;
            Box::new(move |x| fl(x, |v| if v > 0.0 { v } else { v * a }))
        }
        Elu { alpha } => {
            let a = alpha as f64;
            Box::new(move |x| fl(x, |v| if v > 0.0 { v } else { a * v.exp_m1() }))
        }
        Selu { alpha, gamma } => {
            let (a, g) = (alpha as f64, gamma as f64);
            Box::new(move |x| {
                fl(x, |v| {
                    if v > 0.0 {
                        g * v
                    } else {
                        g * (a * v.exp() - a)
                    }
                })
            })
        }
        Celu { alpha } => {
            let a = alpha as f64;
            Box::new(move |x| fl(x, |v| v.max(0.0) + (a * (v / a).exp_m1()).min(0.0)))
        }
        HardSigmoid { alpha, beta } => {
            let (a, b) = (alpha as f64, beta as f64);
            Box::new(move |x| fl(x, |v| (a * v + b).clamp(0.0, 1.0)))
        }
        ThresholdedRelu { alpha } => {
            let a = alpha as f64;
            Box::new(move |x| fl(x, |v| if v > a { v } else { 0.0 }))
        }
        Gelu {
            approximate: GeluApprox::None,
        } => Box::new(|x| {
            fl(x, |v| {
                0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))
            })
        }),
        Gelu {
            approximate: GeluApprox::Tanh,
        } => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            Box::new(move |x| {
                fl(x, |v| {
                    0.5 * v * (1.0 + (k * (v + 0.044715 * v * v * v)).tanh())
                })
            })
        }
        Swish { alpha } => {
            let a = alpha as f64;
            Box::new(move |x| fl(x, |v| v * sigmoid(a * v)))
        }
        Shrink { bias, lambd } => {
            let (b, l) = (bias as f64, lambd as f64);
            Box::new(move |x| {
                fl(x, |v| {
                    if v < -l {
                        v + b
                    } else if v > l {
                        v - b
                    } else {
                        0.0
                    }
                })
            })
        }
        IsNan => Box::new(|x| B(x.is_nan())),
        IsInf {
            detect_negative,
            detect_positive,
        } => Box::new(move |x| match x {
            F(v) if v.is_infinite() => B(if v > 0.0 {
                detect_positive
            } else {
                detect_negative
            }),
            _ => B(false),
        }),
        Not => Box::new(|x| B(!truth(x))),
        BitwiseNot => Box::new(|x| match x {
            I(v) => I(!v),
            U(v) => U(!v),
            B(b) => B(!b),
            other => other,
        }),
        _ => return None,
    })
}

/// The scalar function of a two-input op; `bits` is the width of the first input's dtype.
fn binary_fn(op: &EwOp, bits: u32) -> Option<Box<dyn Fn(Num, Num) -> Result<Num, EvalError>>> {
    use EwOp::*;
    let cmp = |want: fn(Ordering) -> bool| -> Box<dyn Fn(Num, Num) -> Result<Num, EvalError>> {
        Box::new(move |a, b| Ok(B(a.cmp(b).is_some_and(want))))
    };
    Some(match *op {
        Add => Box::new(|a, b| {
            arith(
                a,
                b,
                |x, y| x + y,
                |x, y| Some(x.wrapping_add(y)),
                |x, y| Some(x.wrapping_add(y)),
            )
        }),
        Sub => Box::new(|a, b| {
            arith(
                a,
                b,
                |x, y| x - y,
                |x, y| Some(x.wrapping_sub(y)),
                |x, y| Some(x.wrapping_sub(y)),
            )
        }),
        Mul => Box::new(|a, b| {
            arith(
                a,
                b,
                |x, y| x * y,
                |x, y| Some(x.wrapping_mul(y)),
                |x, y| Some(x.wrapping_mul(y)),
            )
        }),
        Div => Box::new(|a, b| {
            arith(
                a,
                b,
                |x, y| x / y,
                |x, y| (y != 0).then(|| x.wrapping_div(y)),
                |x, y| x.checked_div(y),
            )
        }),
        Mod { fmod: true } => Box::new(|a, b| {
            arith(
                a,
                b,
                |x, y| x % y,
                |x, y| (y != 0).then(|| x.wrapping_rem(y)),
                |x, y| x.checked_rem(y),
            )
        }),
        Mod { fmod: false } => {
            Box::new(|a, b| arith(a, b, py_mod_f, py_mod_i, |x, y| x.checked_rem(y)))
        }
        Pow => Box::new(|a, b| Ok(pow(a, b))),
        Max => Box::new(|a, b| Ok(max_num(a, b))),
        Min => Box::new(|a, b| Ok(min_num(a, b))),
        Prelu => Box::new(|x, s| {
            if x.cmp(I(0)) == Some(Ordering::Less) {
                arith(
                    x,
                    s,
                    |x, y| x * y,
                    |x, y| Some(x.wrapping_mul(y)),
                    |x, y| Some(x.wrapping_mul(y)),
                )
            } else {
                Ok(x)
            }
        }),
        ShiftLeft => Box::new(move |a, s| Ok(shift(a, s, bits, true))),
        ShiftRight => Box::new(move |a, s| Ok(shift(a, s, bits, false))),
        BitwiseAnd => Box::new(|a, b| Ok(bitwise(a, b, |x, y| x & y))),
        BitwiseOr => Box::new(|a, b| Ok(bitwise(a, b, |x, y| x | y))),
        BitwiseXor => Box::new(|a, b| Ok(bitwise(a, b, |x, y| x ^ y))),
        And => Box::new(|a, b| Ok(B(truth(a) && truth(b)))),
        Or => Box::new(|a, b| Ok(B(truth(a) || truth(b)))),
        Xor => Box::new(|a, b| Ok(B(truth(a) != truth(b)))),
        Equal => cmp(|o| o == Ordering::Equal),
        Less => cmp(|o| o == Ordering::Less),
        LessOrEqual => cmp(|o| o != Ordering::Greater),
        Greater => cmp(|o| o == Ordering::Greater),
        GreaterOrEqual => cmp(|o| o != Ordering::Less),
        _ => return None,
    })
}

fn arg<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, EvalError> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| invalid(format!("input {i} is required")))
}

pub fn eval(op: &EwOp, inputs: &[Option<&Tensor>], _cx: &EvalCx) -> Result<Vec<Tensor>, EvalError> {
    let x = arg(inputs, 0)?;
    let out = if op.returns_bool() {
        DType::Bool
    } else {
        x.dtype()
    };
    if let Some(f) = unary_fn(op) {
        return Ok(vec![map_unary(x, out, f)?]);
    }
    let bits = x.dtype().size().map_or(0, |s| 8 * s as u32);
    if let Some(f) = binary_fn(op, bits) {
        let y = arg(inputs, 1)?;
        if let (EwOp::Equal, Tensor::Str(a)) = (op, x) {
            return Ok(vec![zip_elems(a, y, |p, q| p == q)?]);
        }
        return Ok(vec![zip_binary(x, y, out, f)?]);
    }
    Ok(vec![match op {
        EwOp::StringConcat => match x {
            Tensor::Str(a) => zip_elems(a, arg(inputs, 1)?, |p: &String, q| format!("{p}{q}"))?,
            _ => return Err(invalid("string_concat takes strings")),
        },
        EwOp::Where => {
            let c = x.view::<bool>()?;
            let (a, b) = (arg(inputs, 1)?, arg(inputs, 2)?);
            dispatch_all!(a, a => select(c, a, b)?)
        }
        EwOp::Clip => {
            let mut r = x.clone();
            if let Some(lo) = inputs.get(1).copied().flatten() {
                r = zip_binary(&r, lo, out, |a, b| Ok(max_num(a, b)))?;
            }
            if let Some(hi) = inputs.get(2).copied().flatten() {
                r = zip_binary(&r, hi, out, |a, b| Ok(min_num(a, b)))?;
            }
            r
        }
        EwOp::Cast { to } => x.cast(*to)?,
        EwOp::CastF8 {
            to,
            saturate,
            round,
        } => x.cast_with(
            *to,
            CastMode {
                saturate: *saturate,
                round: *round,
            },
        )?,
        EwOp::BitCast { to } => Tensor::from_le_bytes(*to, x.shape(), &x.to_le_bytes()?)?,
        _ => return Err(EvalError::Unsupported(format!("ew op {op:?}"))),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(op: EwOp, inputs: &[&Tensor]) -> Tensor {
        let args: Vec<Option<&Tensor>> = inputs.iter().copied().map(Some).collect();
        let cx = EvalCx {
            regions: &[],
            output_types: &[],
        };
        eval(&op, &args, &cx).unwrap().remove(0)
    }

    fn t<T: Elem>(shape: &[usize], v: Vec<T>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    #[test]
    fn add_broadcasts() {
        let a = t(&[2, 1], vec![1i32, 2]);
        let b = t(&[3], vec![10i32, 20, 30]);
        assert_eq!(
            run(EwOp::Add, &[&a, &b]),
            t(&[2, 3], vec![11i32, 21, 31, 12, 22, 32])
        );
    }

    #[test]
    fn integer_div_and_mod_signs() {
        let a = t(&[4], vec![7i32, -7, 7, -7]);
        let b = t(&[4], vec![2i32, 2, -2, -2]);
        // numpy: trunc division; np.mod / np.fmod.
        assert_eq!(run(EwOp::Div, &[&a, &b]), t(&[4], vec![3i32, -3, -3, 3]));
        assert_eq!(
            run(EwOp::Mod { fmod: false }, &[&a, &b]),
            t(&[4], vec![1i32, 1, -1, -1])
        );
        assert_eq!(
            run(EwOp::Mod { fmod: true }, &[&a, &b]),
            t(&[4], vec![1i32, -1, 1, -1])
        );
        let u = t(&[1], vec![u64::MAX]);
        assert_eq!(
            run(EwOp::Div, &[&u, &t(&[1], vec![3u64])]),
            t(&[1], vec![u64::MAX / 3])
        );
        let args = [Some(&a), Some(&t(&[1], vec![0i32]))];
        assert!(
            eval(
                &EwOp::Div,
                &args,
                &EvalCx {
                    regions: &[],
                    output_types: &[]
                }
            )
            .is_err()
        );
    }

    #[test]
    fn float_mod_takes_divisor_sign() {
        let a = t(&[4], vec![-3.0f32, 3.0, 0.0, 5.5]);
        let b = t(&[4], vec![f32::INFINITY, f32::NEG_INFINITY, -2.0, 2.0]);
        let r = run(EwOp::Mod { fmod: false }, &[&a, &b]);
        let v: Vec<f32> = r.view::<f32>().unwrap().iter().copied().collect();
        assert_eq!(v[0], f32::INFINITY);
        assert_eq!(v[1], f32::NEG_INFINITY);
        assert!(v[2] == 0.0 && v[2].is_sign_negative());
        assert_eq!(v[3], 1.5);
    }

    #[test]
    fn round_half_to_even() {
        let x = t(&[6], vec![0.5f32, 1.5, 2.5, -0.5, -1.5, 2.4]);
        assert_eq!(
            run(EwOp::Round, &[&x]),
            t(&[6], vec![0.0f32, 2.0, 2.0, -0.0, -2.0, 2.0])
        );
        let h = t(
            &[2],
            vec![half::f16::from_f32(2.5), half::f16::from_f32(3.5)],
        );
        assert_eq!(
            run(EwOp::Round, &[&h]),
            t(
                &[2],
                vec![half::f16::from_f32(2.0), half::f16::from_f32(4.0)]
            )
        );
    }

    #[test]
    fn clip_with_missing_bounds() {
        let x = t(&[4], vec![-5i8, 0, 5, 127]);
        let lo = Tensor::scalar(-1i8);
        let hi = Tensor::scalar(4i8);
        let cx = EvalCx {
            regions: &[],
            output_types: &[],
        };
        let only_hi = eval(&EwOp::Clip, &[Some(&x), None, Some(&hi)], &cx).unwrap();
        assert_eq!(only_hi[0], t(&[4], vec![-5i8, 0, 4, 4]));
        let only_lo = eval(&EwOp::Clip, &[Some(&x), Some(&lo)], &cx).unwrap();
        assert_eq!(only_lo[0], t(&[4], vec![-1i8, 0, 5, 127]));
        let none = eval(&EwOp::Clip, &[Some(&x)], &cx).unwrap();
        assert_eq!(none[0], x);
    }

    #[test]
    fn cast_strings() {
        let s = t(&[3], vec!["1.5".to_string(), "-2".into(), "NaN".into()]);
        let f = run(EwOp::Cast { to: DType::F32 }, &[&s]);
        let v: Vec<f32> = f.view::<f32>().unwrap().iter().copied().collect();
        assert_eq!(&v[..2], &[1.5, -2.0]);
        assert!(v[2].is_nan());
        let back = run(
            EwOp::Cast { to: DType::Str },
            &[&t(&[2], vec![1.5f32, -2.0])],
        );
        assert_eq!(back, t(&[2], vec!["1.5".to_string(), "-2".into()]));
    }

    #[test]
    fn cast_f8_options() {
        use mlc_ir::RoundMode;
        use mlc_ir::lowbit::{F8E5M2, F8E8M0};
        let x = t(&[3], vec![1e6f32, -1e6, 3.0]);
        let op = |saturate| EwOp::CastF8 {
            to: DType::F8E5M2,
            saturate,
            round: RoundMode::Up,
        };
        let codes = |v: [u8; 3]| t(&[3], v.map(F8E5M2).to_vec());
        assert_eq!(run(op(false), &[&x]), codes([0x7c, 0xfc, 0x42]));
        assert_eq!(run(op(true), &[&x]), codes([0x7b, 0xfb, 0x42]));
        // 3.0 rounds to 2 (down) or 4 (up, nearest); the sign is dropped.
        let e8 = |round| EwOp::CastF8 {
            to: DType::F8E8M0,
            saturate: true,
            round,
        };
        let codes = |v: [u8; 3]| t(&[3], v.map(F8E8M0).to_vec());
        assert_eq!(run(e8(RoundMode::Down), &[&x]), codes([0x92, 0x92, 0x80]));
        assert_eq!(
            run(e8(RoundMode::Nearest), &[&x]),
            codes([0x93, 0x93, 0x81])
        );
    }

    #[test]
    fn pow_mixed_types_and_wide_ints() {
        let b = t(&[3], vec![2i64, 3, 1 << 31]);
        let e = t(&[3], vec![2.0f32, 0.5, 2.0]);
        assert_eq!(run(EwOp::Pow, &[&b, &e]), t(&[3], vec![4i64, 1, 1 << 62]));
        let big = t(&[1], vec![3i64]);
        assert_eq!(
            run(EwOp::Pow, &[&big, &t(&[1], vec![39i64])]),
            t(&[1], vec![3i64.pow(39)])
        );
    }

    #[test]
    fn shifts_follow_onnx_edge_cases() {
        let a = t(&[4], vec![-8i8, 1, -1, 64]);
        let s = t(&[4], vec![1i8, 8, -1, 1]);
        assert_eq!(
            run(EwOp::ShiftRight, &[&a, &s]),
            t(&[4], vec![-4i8, 0, -1, 32])
        );
        assert_eq!(
            run(EwOp::ShiftLeft, &[&a, &s]),
            t(&[4], vec![-16i8, 0, 0, -128])
        );
    }

    #[test]
    fn where_selects_strings_with_broadcast() {
        let c = t(&[2, 1], vec![true, false]);
        let x = t(&[2], vec!["a".to_string(), "b".into()]);
        let y = Tensor::scalar("z".to_string());
        let r = run(EwOp::Where, &[&c, &x, &y]);
        assert_eq!(
            r,
            t(
                &[2, 2],
                vec!["a".to_string(), "b".into(), "z".into(), "z".into()]
            )
        );
    }

    #[test]
    fn max_propagates_nan_and_compares_exactly() {
        let a = t(&[2], vec![f64::NAN, 1.0]);
        let b = t(&[2], vec![0.0f64, 2.0]);
        let r = run(EwOp::Max, &[&a, &b]);
        let v: Vec<f64> = r.view::<f64>().unwrap().iter().copied().collect();
        assert!(v[0].is_nan() && v[1] == 2.0);
        let big = t(&[1], vec![i64::MAX]);
        let less = t(&[1], vec![i64::MAX - 1]);
        assert_eq!(run(EwOp::Greater, &[&big, &less]), t(&[1], vec![true]));
    }
}
