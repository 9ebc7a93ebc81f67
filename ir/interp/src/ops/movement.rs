//! Kernels of the movement family. (Stub: filled in by its owner.)

use crate::{EvalCx, EvalError};
use mlc_ir::Tensor;
use mlc_ir::ops::MovementOp;

pub fn eval(
    op: &MovementOp,
    _inputs: &[Option<&Tensor>],
    _cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    Err(EvalError::Unsupported(format!("{op:?}")))
}
