//! Detection and vision ops: non-max suppression, RoI pooling/align, unpooling, col2im, deformable convolution, affine grids. (Stub: filled in by its owner.)

use super::{InferCx, InferError};
use crate::shape::TensorType;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisionOp {
    /// Placeholder so the enum is inhabited; remove when real ops land.
    Placeholder,
}

impl VisionOp {
    pub fn infer(&self, _cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        Err(InferError::Other("placeholder".into()))
    }
}
