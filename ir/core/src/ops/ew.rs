//! Elementwise ops: unary math and activations, binary arithmetic/comparison/logic with numpy
//! broadcasting, select, clip, casts.
//!
//! Every op here maps each output element from the elements at the same (broadcast) position of
//! its inputs, so passes may fuse, tile and reorder them freely. Variadic ONNX ops (`Sum`, `Max`,
//! `Mean`) are imported as chains of the binary ops.

use super::{InferCx, InferError};
use crate::DType;
use crate::lowbit::RoundMode;
use crate::shape::{Shape, TensorType, broadcast_shapes};
use serde::{Deserialize, Serialize};

/// Which formula `gelu` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeluApprox {
    /// `x/2 * (1 + erf(x/sqrt(2)))`.
    None,
    /// `x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`.
    Tanh,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EwOp {
    // Unary, numeric in, same type out. Float math on integer inputs is computed in floating
    // point and converted back.
    Abs,
    Neg,
    Exp,
    Log,
    Sqrt,
    /// `1 / x`.
    Reciprocal,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    Erf,
    Tanh,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `max(x, 0)`; NaN stays NaN.
    Relu,
    Floor,
    Ceil,
    /// Round to nearest, ties to even.
    Round,
    /// -1, 0 or 1 (NaN stays NaN).
    Sign,
    /// `ln(1 + exp(x))`.
    Softplus,
    /// `x / (1 + |x|)`.
    Softsign,
    /// `x * tanh(softplus(x))`.
    Mish,
    /// `x * max(0, min(1, x/6 + 1/2))`.
    HardSwish,
    /// `x` if `x > 0`, else `alpha * x`.
    LeakyRelu {
        alpha: f32,
    },
    /// `x` if `x > 0`, else `alpha * (exp(x) - 1)`.
    Elu {
        alpha: f32,
    },
    /// `gamma * x` if `x > 0`, else `gamma * alpha * (exp(x) - 1)`.
    Selu {
        alpha: f32,
        gamma: f32,
    },
    /// `max(0, x) + min(0, alpha * (exp(x / alpha) - 1))`.
    Celu {
        alpha: f32,
    },
    /// `max(0, min(1, alpha * x + beta))`.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x` if `x > alpha`, else 0.
    ThresholdedRelu {
        alpha: f32,
    },
    Gelu {
        approximate: GeluApprox,
    },
    /// `x * sigmoid(alpha * x)` (SiLU when `alpha` is 1).
    Swish {
        alpha: f32,
    },
    /// `x + bias` if `x < -lambd`, `x - bias` if `x > lambd`, else 0.
    Shrink {
        bias: f32,
        lambd: f32,
    },

    // Unary predicates: numeric in, bool out.
    IsNan,
    IsInf {
        detect_negative: bool,
        detect_positive: bool,
    },

    // Unary on bool / integers.
    /// Logical not (bool).
    Not,
    /// Bitwise complement (integers).
    BitwiseNot,

    // Binary with numpy broadcasting; both inputs have one dtype (except `pow`).
    Add,
    Sub,
    Mul,
    /// Integer division truncates toward zero (C semantics).
    Div,
    /// Base to the power of the exponent; the exponent may have another numeric dtype, the
    /// output has the base's.
    Pow,
    /// Remainder: with `fmod` the sign of the dividend (C `fmod`), without it the sign of the
    /// divisor (Python `%`).
    Mod {
        fmod: bool,
    },
    /// NaN-propagating maximum.
    Max,
    /// NaN-propagating minimum.
    Min,
    /// `x` if `x >= 0`, else `slope * x`; input 1 is the slope.
    Prelu,
    /// Shift left by input 1 bits; shifts outside `0..bits` give 0.
    ShiftLeft,
    /// Shift right by input 1 bits (arithmetic for signed types); shifts outside `0..bits`
    /// give 0, or -1 for negative signed values.
    ShiftRight,
    BitwiseAnd,
    BitwiseOr,
    BitwiseXor,
    And,
    Or,
    Xor,
    /// Any dtype, strings included; NaN is unequal to itself.
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    /// Concatenation of strings.
    StringConcat,

    // Others.
    /// `cond ? x : y` with three-way broadcasting; inputs `(cond: bool, x, y)`.
    Where,
    /// `min(max(x, lo), hi)` with optional inputs `(x, lo?, hi?)`: scalars of x's dtype.
    Clip,
    /// Converts every element to `to` (ONNX Cast semantics, default options).
    Cast {
        to: DType,
    },
    /// Converts every element to the float8 type `to` with ONNX Cast's options: `saturate`
    /// false lets out-of-range values become infinity or NaN instead of the largest finite
    /// value; `round` is how values round to f8e8m0. With `saturate` true and `round` up this
    /// is `cast`, which the importer emits instead.
    CastF8 {
        to: DType,
        saturate: bool,
        round: RoundMode,
    },
    /// Reinterprets the bits of every element as `to`, of the same size.
    BitCast {
        to: DType,
    },
}

/// What inference checks and produces for a class of ops.
enum Sig {
    /// One numeric input, same type out.
    Unary,
    /// One numeric input, bool out.
    Predicate,
    /// One input of the given class, same type out.
    UnaryOf(Class),
    /// Two inputs of one dtype and the given class, broadcast; same type out.
    Binary(Class),
    /// Two inputs of one dtype and the given class, broadcast; bool out.
    Compare(Class),
}

#[derive(Clone, Copy)]
enum Class {
    Numeric,
    Int,
    Bool,
    Str,
    Any,
    NotStr,
}

impl Class {
    fn admits(self, d: DType) -> bool {
        match self {
            Class::Numeric => d.is_numeric(),
            Class::Int => d.is_int(),
            Class::Bool => d == DType::Bool,
            Class::Str => d == DType::Str,
            Class::Any => true,
            Class::NotStr => d != DType::Str,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Class::Numeric => "a numeric type",
            Class::Int => "an integer type",
            Class::Bool => "bool",
            Class::Str => "str",
            Class::Any => "any type",
            Class::NotStr => "a non-string type",
        }
    }
}

impl EwOp {
    /// Whether the op produces bool regardless of its input types.
    pub fn returns_bool(&self) -> bool {
        use EwOp::*;
        matches!(
            self,
            IsNan
                | IsInf { .. }
                | Not
                | And
                | Or
                | Xor
                | Equal
                | Less
                | LessOrEqual
                | Greater
                | GreaterOrEqual
        )
    }

    fn sig(&self) -> Option<Sig> {
        use EwOp::*;
        Some(match self {
            IsNan | IsInf { .. } => Sig::Predicate,
            Not => Sig::UnaryOf(Class::Bool),
            BitwiseNot => Sig::UnaryOf(Class::Int),
            Add | Sub | Mul | Div | Mod { .. } | Max | Min | Prelu => Sig::Binary(Class::Numeric),
            ShiftLeft | ShiftRight | BitwiseAnd | BitwiseOr | BitwiseXor => Sig::Binary(Class::Int),
            StringConcat => Sig::Binary(Class::Str),
            And | Or | Xor => Sig::Compare(Class::Bool),
            Equal => Sig::Compare(Class::Any),
            Less | LessOrEqual | Greater | GreaterOrEqual => Sig::Compare(Class::NotStr),
            Pow | Where | Clip | Cast { .. } | CastF8 { .. } | BitCast { .. } => return None,
            _ => Sig::Unary,
        })
    }

    pub fn infer(&self, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        if let Some(sig) = self.sig() {
            return Ok(vec![match sig {
                Sig::Unary => unary(cx, Class::Numeric, None)?,
                Sig::Predicate => unary(cx, Class::Numeric, Some(DType::Bool))?,
                Sig::UnaryOf(c) => unary(cx, c, None)?,
                Sig::Binary(c) => binary(cx, c, None)?,
                Sig::Compare(c) => binary(cx, c, Some(DType::Bool))?,
            }]);
        }
        match self {
            EwOp::Pow => {
                cx.arity(2, 2)?;
                let (a, b) = (cx.input(0)?, cx.input(1)?);
                check(0, a.dtype, Class::Numeric)?;
                check(1, b.dtype, Class::Numeric)?;
                Ok(vec![TensorType::new(a.dtype, bcast(&[a, b])?)])
            }
            EwOp::Where => {
                cx.arity(3, 3)?;
                let (c, x, y) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
                check(0, c.dtype, Class::Bool)?;
                same(2, x.dtype, y.dtype)?;
                Ok(vec![TensorType::new(x.dtype, bcast(&[c, x, y])?)])
            }
            EwOp::Clip => {
                cx.arity(1, 3)?;
                let x = cx.input(0)?;
                check(0, x.dtype, Class::Numeric)?;
                let mut shapes = vec![x];
                for i in 1..3 {
                    if let Some(b) = cx.opt_input(i) {
                        same(i, x.dtype, b.dtype)?;
                        shapes.push(b);
                    }
                }
                Ok(vec![TensorType::new(x.dtype, bcast(&shapes)?)])
            }
            EwOp::Cast { to } => {
                cx.arity(1, 1)?;
                Ok(vec![TensorType::new(*to, cx.input(0)?.shape.clone())])
            }
            EwOp::CastF8 { to, .. } => {
                cx.arity(1, 1)?;
                if !to.is_small_float() || *to == DType::F4E2M1 {
                    return Err(InferError::Attr {
                        name: "to",
                        reason: format!("cast options apply to float8 types, not {to}"),
                    });
                }
                Ok(vec![TensorType::new(*to, cx.input(0)?.shape.clone())])
            }
            EwOp::BitCast { to } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                match (x.dtype.size(), to.size()) {
                    (Some(a), Some(b)) if a == b => Ok(vec![TensorType::new(*to, x.shape.clone())]),
                    _ => Err(InferError::Attr {
                        name: "to",
                        reason: format!("cannot reinterpret {} as {to}: sizes differ", x.dtype),
                    }),
                }
            }
            _ => unreachable!("every other op has a signature"),
        }
    }
}

fn check(index: usize, d: DType, class: Class) -> Result<(), InferError> {
    if class.admits(d) {
        Ok(())
    } else {
        Err(InferError::DType {
            index,
            expected: class.name().into(),
            found: d,
        })
    }
}

fn same(index: usize, want: DType, found: DType) -> Result<(), InferError> {
    if want == found {
        Ok(())
    } else {
        Err(InferError::DType {
            index,
            expected: want.name().into(),
            found,
        })
    }
}

fn bcast(types: &[&TensorType]) -> Result<Shape, InferError> {
    let shapes: Vec<&[crate::Dim]> = types.iter().map(|t| t.shape.as_slice()).collect();
    broadcast_shapes(&shapes).ok_or_else(|| {
        let names: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        InferError::Shape(format!("cannot broadcast {}", names.join(" and ")))
    })
}

fn unary(cx: &InferCx, class: Class, out: Option<DType>) -> Result<TensorType, InferError> {
    cx.arity(1, 1)?;
    let x = cx.input(0)?;
    check(0, x.dtype, class)?;
    Ok(TensorType::new(out.unwrap_or(x.dtype), x.shape.clone()))
}

fn binary(cx: &InferCx, class: Class, out: Option<DType>) -> Result<TensorType, InferError> {
    cx.arity(2, 2)?;
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    check(0, a.dtype, class)?;
    same(1, a.dtype, b.dtype)?;
    Ok(TensorType::new(out.unwrap_or(a.dtype), bcast(&[a, b])?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Dim;

    fn infer(op: EwOp, inputs: &[TensorType]) -> Result<Vec<TensorType>, InferError> {
        let inputs: Vec<Option<TensorType>> = inputs.iter().cloned().map(Some).collect();
        op.infer(&InferCx {
            inputs: &inputs,
            consts: &[],
            regions: &[],
            n_outputs: 1,
        })
    }

    #[test]
    fn binary_broadcasts_symbolic_dims() {
        let a = TensorType::new(DType::F32, vec![Dim::Sym("n".into()), Dim::Known(1)]);
        let b = TensorType::fixed(DType::F32, &[4]);
        let out = infer(EwOp::Less, &[a, b]).unwrap();
        assert_eq!(
            out[0],
            TensorType::new(DType::Bool, vec![Dim::Sym("n".into()), Dim::Known(4)])
        );
    }

    #[test]
    fn rejects_mismatched_dtypes_and_shapes() {
        let a = TensorType::fixed(DType::F32, &[2]);
        assert!(infer(EwOp::Add, &[a.clone(), TensorType::fixed(DType::I32, &[2])]).is_err());
        assert!(infer(EwOp::Add, &[a.clone(), TensorType::fixed(DType::F32, &[3])]).is_err());
        assert!(infer(EwOp::Not, std::slice::from_ref(&a)).is_err());
        assert!(infer(EwOp::BitCast { to: DType::I64 }, &[a]).is_err());
    }

    #[test]
    fn pow_keeps_base_dtype() {
        let out = infer(
            EwOp::Pow,
            &[
                TensorType::fixed(DType::I32, &[3]),
                TensorType::fixed(DType::F32, &[]),
            ],
        )
        .unwrap();
        assert_eq!(out[0], TensorType::fixed(DType::I32, &[3]));
    }

    #[test]
    fn serde_names() {
        let op = crate::Op::Ew(EwOp::Gelu {
            approximate: GeluApprox::Tanh,
        });
        assert_eq!(op.name(), "ew.gelu");
        assert_eq!(
            serde_json::to_string(&op).unwrap(),
            r#"{"ew":{"gelu":{"approximate":"tanh"}}}"#
        );
        assert_eq!(crate::Op::Ew(EwOp::IsNan).name(), "ew.is_nan");
    }
}
