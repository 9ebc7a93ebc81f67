//! Kernels of the nn family. (Stub: filled in by its owner.)

use crate::{EvalCx, EvalError};
use mlc_ir::Tensor;
use mlc_ir::ops::NnOp;

pub fn eval(
    op: &NnOp,
    _inputs: &[Option<&Tensor>],
    _cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    Err(EvalError::Unsupported(format!("{op:?}")))
}
