//! Test helpers: type shorthands and a tiny evaluator, so that the passes' mechanics are tested
//! apart from the interpreter's kernels.

use crate::FoldPolicy;
use mlc_interp::{EvalCx, EvalError, invalid};
use mlc_ir::ops::EwOp;
use mlc_ir::{DType, Dim, Op, Tensor, TensorType};

pub fn sym(s: &str) -> Dim {
    Dim::Sym(s.into())
}

pub fn ty(dtype: DType, shape: Vec<Dim>) -> TensorType {
    TensorType::new(dtype, shape)
}

/// The default policy with [`tiny_eval`] as the evaluator.
pub fn policy() -> FoldPolicy {
    FoldPolicy {
        eval: tiny_eval,
        ..FoldPolicy::default()
    }
}

/// `ew.add` (same dtype, broadcasting through f64: it rejects mixed dtypes, which the tests use
/// to see evaluation fail), `ew.relu`, `ew.cast`. Anything else defers to the interpreter.
pub fn tiny_eval(
    op: &Op,
    inputs: &[Option<&Tensor>],
    cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    let arg = |i: usize| {
        inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| invalid(format!("input {i} missing")))
    };
    match op {
        Op::Ew(EwOp::Add) => {
            let (a, b) = (arg(0)?, arg(1)?);
            if a.dtype() != b.dtype() {
                return Err(invalid("dtype mismatch"));
            }
            let fa = ndarray::ArrayD::from_shape_vec(a.shape(), a.to_f64_vec()?)
                .map_err(|e| invalid(e.to_string()))?;
            let fb = ndarray::ArrayD::from_shape_vec(b.shape(), b.to_f64_vec()?)
                .map_err(|e| invalid(e.to_string()))?;
            let s = &fa + &fb;
            let shape = s.shape().to_vec();
            Ok(vec![
                Tensor::from_vec(&shape, s.into_raw_vec_and_offset().0)?.cast(a.dtype())?,
            ])
        }
        Op::Ew(EwOp::Relu) => {
            let a = arg(0)?;
            let v: Vec<f64> = a.to_f64_vec()?.into_iter().map(|x| x.max(0.0)).collect();
            Ok(vec![Tensor::from_vec(a.shape(), v)?.cast(a.dtype())?])
        }
        Op::Ew(EwOp::Cast { to }) => Ok(vec![arg(0)?.cast(*to)?]),
        _ => mlc_interp::eval_op(op, inputs, cx),
    }
}
