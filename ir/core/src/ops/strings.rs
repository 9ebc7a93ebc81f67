//! String and classical-ML ops: string split/normalize/regex, TF-IDF, label encoding. (Stub: filled in by its owner.)

use super::{InferCx, InferError};
use crate::shape::TensorType;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StringsOp {
    /// Placeholder so the enum is inhabited; remove when real ops land.
    Placeholder,
}

impl StringsOp {
    pub fn infer(&self, _cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        Err(InferError::Other("placeholder".into()))
    }
}
