//! Elementwise ops: unary math and activations, binary arithmetic/comparison/logic with numpy
//! broadcasting, select, clip, casts.

use super::{InferCx, InferError};
use crate::DType;
use crate::shape::{TensorType, broadcast_shapes};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EwOp {
    /// `a + b` with numpy broadcasting.
    Add,
    /// `max(x, 0)`.
    Relu,
    /// Converts every element to `to` (ONNX Cast semantics).
    Cast { to: DType },
}

impl EwOp {
    pub fn infer(&self, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        match self {
            EwOp::Add => {
                cx.arity(2, 2)?;
                let (a, b) = (cx.input(0)?, cx.input(1)?);
                let shape = broadcast_shapes(&[&a.shape, &b.shape])
                    .ok_or_else(|| InferError::Shape(format!("cannot broadcast {a} and {b}")))?;
                Ok(vec![TensorType::new(a.dtype, shape)])
            }
            EwOp::Relu => {
                cx.arity(1, 1)?;
                Ok(vec![cx.input(0)?.clone()])
            }
            EwOp::Cast { to } => {
                cx.arity(1, 1)?;
                Ok(vec![TensorType::new(*to, cx.input(0)?.shape.clone())])
            }
        }
    }
}
