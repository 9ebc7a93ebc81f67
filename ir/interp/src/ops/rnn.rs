//! Kernels of the rnn family. (Stub: filled in by its owner.)

use crate::{EvalCx, EvalError};
use mlc_ir::Tensor;
use mlc_ir::ops::RnnOp;

pub fn eval(
    op: &RnnOp,
    _inputs: &[Option<&Tensor>],
    _cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    Err(EvalError::Unsupported(format!("{op:?}")))
}
