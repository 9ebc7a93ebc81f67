//! Kernels of the signal family. (Stub: filled in by its owner.)

use crate::{EvalCx, EvalError};
use mlc_ir::Tensor;
use mlc_ir::ops::SignalOp;

pub fn eval(
    op: &SignalOp,
    _inputs: &[Option<&Tensor>],
    _cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    Err(EvalError::Unsupported(format!("{op:?}")))
}
