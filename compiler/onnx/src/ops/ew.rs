//! Import of elementwise ONNX ops into the `ew` family.
//!
//! Each import function normalizes every opset's spelling to one IR form: attributes that later
//! opsets turned into inputs (Clip's bounds, Dropout's ratio) become inputs or are resolved at
//! import; variadic ops (Sum, Mean, Max, Min) become chains of binary ops; ops that only forward
//! their input (Identity, inference-mode Dropout) emit nothing.

use crate::cx::{NodeCx, NodeError, Registry, invalid};
use mlc_ir::ops::EwOp;
use mlc_ir::ops::ew::GeluApprox;
use mlc_ir::{DType, Op, RoundMode, Tensor, ValueId};

/// The SELU constants of the ONNX spec (defaults of its attributes).
const SELU_ALPHA: f32 = 1.673_263_2;
const SELU_GAMMA: f32 = 1.050_701;

pub fn register(r: &mut Registry) {
    macro_rules! plain {
        ($f:ident: $($name:literal => $op:ident),* $(,)?) => {
            $(r.add("", $name, |cx| $f(cx, EwOp::$op));)*
        };
    }
    plain!(unary:
        "Abs" => Abs, "Neg" => Neg, "Exp" => Exp, "Log" => Log, "Sqrt" => Sqrt,
        "Reciprocal" => Reciprocal, "Sin" => Sin, "Cos" => Cos, "Tan" => Tan, "Asin" => Asin,
        "Acos" => Acos, "Atan" => Atan, "Sinh" => Sinh, "Cosh" => Cosh, "Asinh" => Asinh,
        "Acosh" => Acosh, "Atanh" => Atanh, "Erf" => Erf, "Tanh" => Tanh, "Sigmoid" => Sigmoid,
        "Relu" => Relu, "Floor" => Floor, "Ceil" => Ceil, "Round" => Round, "Sign" => Sign,
        "Softplus" => Softplus, "Softsign" => Softsign, "Mish" => Mish, "HardSwish" => HardSwish,
        "IsNaN" => IsNan, "Not" => Not, "BitwiseNot" => BitwiseNot,
    );
    plain!(binary:
        "Add" => Add, "Sub" => Sub, "Mul" => Mul, "Div" => Div, "Pow" => Pow, "PRelu" => Prelu,
        "And" => And, "Or" => Or, "Xor" => Xor, "Equal" => Equal, "Less" => Less,
        "LessOrEqual" => LessOrEqual, "Greater" => Greater, "GreaterOrEqual" => GreaterOrEqual,
        "BitwiseAnd" => BitwiseAnd, "BitwiseOr" => BitwiseOr, "BitwiseXor" => BitwiseXor,
        "StringConcat" => StringConcat,
    );
    r.add("", "Sum", |cx| variadic(cx, EwOp::Add));
    r.add("", "Max", |cx| variadic(cx, EwOp::Max));
    r.add("", "Min", |cx| variadic(cx, EwOp::Min));
    r.add("", "Mean", mean);

    r.add("", "LeakyRelu", |cx| {
        let alpha = cx.attr_float("alpha", 0.01)?;
        unary(cx, EwOp::LeakyRelu { alpha })
    });
    r.add("", "Elu", |cx| {
        let alpha = cx.attr_float("alpha", 1.0)?;
        unary(cx, EwOp::Elu { alpha })
    });
    r.add("", "Selu", |cx| {
        let (alpha, gamma) = (
            cx.attr_float("alpha", SELU_ALPHA)?,
            cx.attr_float("gamma", SELU_GAMMA)?,
        );
        unary(cx, EwOp::Selu { alpha, gamma })
    });
    r.add("", "Celu", |cx| {
        let alpha = cx.attr_float("alpha", 1.0)?;
        unary(cx, EwOp::Celu { alpha })
    });
    r.add("", "HardSigmoid", |cx| {
        let (alpha, beta) = (cx.attr_float("alpha", 0.2)?, cx.attr_float("beta", 0.5)?);
        unary(cx, EwOp::HardSigmoid { alpha, beta })
    });
    r.add("", "ThresholdedRelu", |cx| {
        let alpha = cx.attr_float("alpha", 1.0)?;
        unary(cx, EwOp::ThresholdedRelu { alpha })
    });
    r.add("", "Swish", |cx| {
        let alpha = cx.attr_float("alpha", 1.0)?;
        unary(cx, EwOp::Swish { alpha })
    });
    r.add("", "SwiGLU", swiglu);
    r.add("", "Shrink", |cx| {
        let (bias, lambd) = (cx.attr_float("bias", 0.0)?, cx.attr_float("lambd", 0.5)?);
        unary(cx, EwOp::Shrink { bias, lambd })
    });
    r.add("", "Gelu", |cx| {
        let approximate = match cx.attr_str("approximate", "none")?.as_str() {
            "none" => GeluApprox::None,
            "tanh" => GeluApprox::Tanh,
            other => return Err(bad_attr("approximate", format!("unknown value {other:?}"))),
        };
        unary(cx, EwOp::Gelu { approximate })
    });
    r.add("", "IsInf", |cx| {
        let detect_negative = cx.attr_int("detect_negative", 1)? != 0;
        let detect_positive = cx.attr_int("detect_positive", 1)? != 0;
        unary(
            cx,
            EwOp::IsInf {
                detect_negative,
                detect_positive,
            },
        )
    });
    r.add("", "Mod", |cx| {
        let fmod = cx.attr_int("fmod", 0)? != 0;
        binary(cx, EwOp::Mod { fmod })
    });
    r.add("", "BitShift", |cx| {
        match cx.attr_str_opt("direction")?.as_deref() {
            Some("LEFT") => binary(cx, EwOp::ShiftLeft),
            Some("RIGHT") => binary(cx, EwOp::ShiftRight),
            other => Err(bad_attr(
                "direction",
                format!("expected LEFT or RIGHT, found {other:?}"),
            )),
        }
    });

    r.add("", "Where", |cx| {
        let (c, x, y) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
        Ok(vec![cx.emit1(Op::Ew(EwOp::Where), vec![c, x, y])?])
    });
    r.add("", "Clip", clip);
    r.add("", "Cast", |cx| {
        let code = cx
            .attr_int_opt("to")?
            .ok_or_else(|| bad_attr("to", "required".into()))?;
        let to = onnx_dtype(code)?;
        cast(cx, to)
    });
    r.add("", "CastLike", |cx| {
        let to = cx.input_type(1)?.dtype;
        cast(cx, to)
    });
    r.add("", "BitCast", |cx| {
        let code = cx
            .attr_int_opt("to")?
            .ok_or_else(|| bad_attr("to", "required".into()))?;
        let to = onnx_dtype(code)?;
        unary(cx, EwOp::BitCast { to })
    });
    r.add("", "Identity", |cx| Ok(vec![cx.input(0)?]));
    r.add("", "Dropout", dropout);
    r.add("ai.onnx.ml", "Binarizer", binarizer);
}

fn bad_attr(name: &str, reason: String) -> NodeError {
    NodeError::Attr {
        name: name.to_string(),
        reason,
    }
}

fn ew(cx: &mut NodeCx, op: EwOp, inputs: Vec<ValueId>) -> Result<ValueId, NodeError> {
    cx.emit1(Op::Ew(op), inputs)
}

fn unary(cx: &mut NodeCx, op: EwOp) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    Ok(vec![ew(cx, op, vec![x])?])
}

fn binary(cx: &mut NodeCx, op: EwOp) -> Result<Vec<ValueId>, NodeError> {
    // Opsets before 7 broadcast only on request and could align the smaller operand at `axis`;
    // numpy broadcasting covers the default (trailing) alignment only.
    if cx.opset < 7 && cx.attr("axis").is_some() {
        return Err(NodeError::Unsupported(
            "legacy broadcasting with an explicit axis (opset < 7)".into(),
        ));
    }
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    Ok(vec![ew(cx, op, vec![a, b])?])
}

/// A left fold of the present inputs with a binary op.
fn fold(cx: &mut NodeCx, op: EwOp) -> Result<ValueId, NodeError> {
    let mut args = cx.inputs.iter().flatten().copied();
    let mut acc = args
        .next()
        .ok_or_else(|| invalid("variadic op without inputs"))?;
    for v in args.collect::<Vec<_>>() {
        acc = ew(cx, op.clone(), vec![acc, v])?;
    }
    Ok(acc)
}

/// SwiGLU-28 is defined by its function body, `Swish<alpha>(A) * B`; importing that body keeps
/// the op inside the elementwise family, so the optimizer fuses it and every backend runs it.
/// Unlike `Mul`, the op does not broadcast: `A` and `B` must have one shape.
fn swiglu(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let alpha = cx.attr_float("alpha", 1.0)?;
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    let (ta, tb) = (cx.ty(a), cx.ty(b));
    let dims_differ = ta
        .shape
        .iter()
        .zip(&tb.shape)
        .any(|(x, y)| matches!((x.known(), y.known()), (Some(m), Some(n)) if m != n));
    if ta.rank() != tb.rank() || dims_differ || ta.dtype != tb.dtype {
        return Err(invalid(format!(
            "SwiGLU needs A and B of one type and shape, found {ta} and {tb}"
        )));
    }
    let gate = ew(cx, EwOp::Swish { alpha }, vec![a])?;
    Ok(vec![ew(cx, EwOp::Mul, vec![gate, b])?])
}

fn variadic(cx: &mut NodeCx, op: EwOp) -> Result<Vec<ValueId>, NodeError> {
    Ok(vec![fold(cx, op)?])
}

fn mean(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let n = cx.inputs.iter().flatten().count();
    let sum = fold(cx, EwOp::Add)?;
    if n == 1 {
        return Ok(vec![sum]);
    }
    let dtype = cx.ty(sum).dtype;
    let count = cx.constant(Tensor::scalar(n as f64).cast(dtype)?);
    Ok(vec![ew(cx, EwOp::Div, vec![sum, count])?])
}

/// A scalar constant of `dtype` holding `v`.
fn scalar(cx: &mut NodeCx, v: f64, dtype: DType) -> Result<ValueId, NodeError> {
    Ok(cx.constant(Tensor::scalar(v).cast(dtype)?))
}

fn clip(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let dtype = cx.ty(x).dtype;
    let (lo, hi) = if cx.opset < 11 {
        // Bounds were float attributes; an absent one means no bound.
        let lo = cx.attr_float_opt("min")?;
        let hi = cx.attr_float_opt("max")?;
        (
            lo.map(|v| scalar(cx, v as f64, dtype)).transpose()?,
            hi.map(|v| scalar(cx, v as f64, dtype)).transpose()?,
        )
    } else {
        (cx.opt_input(1), cx.opt_input(2))
    };
    if lo.is_none() && hi.is_none() {
        return Ok(vec![x]);
    }
    cx.emit(Op::Ew(EwOp::Clip), vec![Some(x), lo, hi], 1)
}

/// `Cast`/`CastLike` to `to`, with their float8 options `saturate` (opset 19+, default 1) and
/// `round_mode` (opset 24+, default "up"; only f8e8m0 rounds by it).
fn cast(cx: &mut NodeCx, to: DType) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    if cx.ty(x).dtype == to {
        return Ok(vec![x]);
    }
    let saturate = cx.attr_int("saturate", 1)? != 0;
    let round = match cx.attr_str("round_mode", "up")?.as_str() {
        "up" => RoundMode::Up,
        "down" => RoundMode::Down,
        "nearest" => RoundMode::Nearest,
        other => return Err(bad_attr("round_mode", format!("unknown value {other:?}"))),
    };
    let float8 = to.is_small_float() && to != DType::F4E2M1;
    let op = if float8 && (!saturate || round != RoundMode::Up) {
        EwOp::CastF8 {
            to,
            saturate,
            round,
        }
    } else {
        EwOp::Cast { to }
    };
    Ok(vec![ew(cx, op, vec![x])?])
}

/// Inference-mode Dropout forwards its input; the optional mask is all ones.
fn dropout(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    if cx.opset >= 12 {
        // Training mode is an input; only a constant `true` with a non-zero ratio is random.
        // A non-constant training flag is taken to be false, as in inference.
        let training = cx
            .input_const(2)
            .and_then(|t| t.to_f64_vec().ok())
            .is_some_and(|v| v.iter().any(|&b| b != 0.0));
        let ratio = match cx.opt_input(1) {
            None => Some(0.5),
            Some(_) => cx
                .input_const(1)
                .and_then(|t| t.to_f64_vec().ok())
                .and_then(|v| v.first().copied()),
        };
        if training && ratio != Some(0.0) {
            return Err(NodeError::Unsupported(
                "Dropout in training mode is random".into(),
            ));
        }
    }
    let mut outs = vec![x];
    if cx.n_outputs > 1 {
        // The mask is bool from opset 10 on, of the input's type before.
        let dtype = if cx.opset >= 10 {
            DType::Bool
        } else {
            cx.ty(x).dtype
        };
        outs.push(ones_like(cx, x, dtype)?);
    }
    Ok(outs)
}

/// A tensor of ones of `x`'s shape: a constant when the shape is static, otherwise computed
/// from `x` so that symbolic dims carry through.
fn ones_like(cx: &mut NodeCx, x: ValueId, dtype: DType) -> Result<ValueId, NodeError> {
    let ty = cx.ty(x).clone();
    if let Some(shape) = ty.static_shape() {
        let n = shape.iter().product();
        return Ok(cx.constant(Tensor::from_vec(&shape, vec![true; n])?.cast(dtype)?));
    }
    // `isnan(x) or true` is true everywhere and has x's shape (Dropout's inputs are floats).
    let nan = ew(cx, EwOp::IsNan, vec![x])?;
    let t = cx.constant(Tensor::scalar(true));
    let ones = ew(cx, EwOp::Or, vec![nan, t])?;
    if dtype == DType::Bool {
        Ok(ones)
    } else {
        ew(cx, EwOp::Cast { to: dtype }, vec![ones])
    }
}

/// `x > threshold ? 1 : 0` in x's type.
fn binarizer(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let dtype = cx.ty(x).dtype;
    let thr = scalar(cx, cx.attr_float("threshold", 0.0)? as f64, dtype)?;
    let gt = ew(cx, EwOp::Greater, vec![x, thr])?;
    Ok(vec![ew(cx, EwOp::Cast { to: dtype }, vec![gt])?])
}

/// mlc's dtype for an ONNX `TensorProto.DataType` code.
fn onnx_dtype(code: i64) -> Result<DType, NodeError> {
    Ok(match code {
        1 => DType::F32,
        2 => DType::U8,
        3 => DType::I8,
        4 => DType::U16,
        5 => DType::I16,
        6 => DType::I32,
        7 => DType::I64,
        8 => DType::Str,
        9 => DType::Bool,
        10 => DType::F16,
        11 => DType::F64,
        12 => DType::U32,
        13 => DType::U64,
        16 => DType::BF16,
        17 => DType::F8E4M3FN,
        18 => DType::F8E4M3FNUZ,
        19 => DType::F8E5M2,
        20 => DType::F8E5M2FNUZ,
        21 => DType::U4,
        22 => DType::I4,
        23 => DType::F4E2M1,
        24 => DType::F8E8M0,
        25 => DType::U2,
        26 => DType::I2,
        14 | 15 => return Err(NodeError::Unsupported("complex element types".into())),
        other => return Err(bad_attr("to", format!("unknown ONNX data type {other}"))),
    })
}
