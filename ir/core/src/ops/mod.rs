//! mlc's op set: one sub-enum per op family, each in its own file with its typed attributes and
//! its shape/dtype inference.
//!
//! Ops are versionless: the importer normalizes every opset's spelling of an operation (an
//! attribute in one opset, an input in the next) to one form here. The text form names an op
//! `family.op` (`nn.conv`, `ew.add`) and prints its attributes as a JSON object, produced by
//! serde, so every attribute round-trips without per-op printing code.

pub mod attn;
pub mod control;
pub mod ew;
pub mod movement;
pub mod nn;
pub mod quant;
pub mod reduce;
pub mod rnn;
pub mod signal;
pub mod strings;
pub mod vision;

use crate::graph::Graph;
use crate::shape::TensorType;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

pub use attn::AttnOp;
pub use control::ControlOp;
pub use ew::EwOp;
pub use movement::MovementOp;
pub use nn::NnOp;
pub use quant::QuantOp;
pub use reduce::ReduceOp;
pub use rnn::RnnOp;
pub use signal::SignalOp;
pub use strings::StringsOp;
pub use vision::VisionOp;

/// An operation of mlc's IR.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Produces `consts[id]` of the enclosing graph.
    Constant { id: u32 },
    /// Elementwise math, comparisons, logic, activations, casts.
    Ew(EwOp),
    /// Reductions along axes, arg-reductions, softmax-like normalizations, scans.
    Reduce(ReduceOp),
    /// Contractions, convolutions, pooling, normalization layers, resampling.
    Nn(NnOp),
    /// Shape manipulation, indexing and data movement.
    Movement(MovementOp),
    /// Quantize/dequantize and integer kernels.
    Quant(QuantOp),
    /// Attention and rotary embeddings.
    Attn(AttnOp),
    /// Recurrent and stateful sequence ops (RNN, GRU, LSTM, causal convolution with state).
    Rnn(RnnOp),
    /// Signal processing: DFT, STFT, window functions, mel filter banks.
    Signal(SignalOp),
    /// Detection and vision ops: non-max suppression, RoI pooling/align, unpooling, col2im, deformable convolution, affine grids.
    Vision(VisionOp),
    /// String and classical-ML ops: string split/normalize/regex, TF-IDF, label encoding.
    Strings(StringsOp),
    /// Ops with regions: conditionals, loops, scans, composite (fused) nodes.
    Control(ControlOp),
}

/// Why inference rejected a node.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    #[error("expected {expected} inputs, found {found}")]
    Arity { expected: String, found: usize },
    #[error("input {index} is required")]
    MissingInput { index: usize },
    #[error("input {index} has type {found}, expected {expected}")]
    DType {
        index: usize,
        expected: String,
        found: crate::DType,
    },
    #[error("{0}")]
    Shape(String),
    #[error("bad attribute {name}: {reason}")]
    Attr { name: &'static str, reason: String },
    #[error("{0}")]
    Other(String),
}

/// What inference of one node can look at.
#[derive(Debug)]
pub struct InferCx<'a> {
    /// Types of the inputs, `None` for absent optional inputs.
    pub inputs: &'a [Option<TensorType>],
    /// Values of inputs known at compile time (constants), where the caller knows them.
    pub consts: &'a [Option<&'a Tensor>],
    /// The node's regions.
    pub regions: &'a [Graph],
    /// How many outputs the node has.
    pub n_outputs: usize,
}

impl<'a> InferCx<'a> {
    /// The type of a required input.
    pub fn input(&self, i: usize) -> Result<&'a TensorType, InferError> {
        self.inputs
            .get(i)
            .and_then(Option::as_ref)
            .ok_or(InferError::MissingInput { index: i })
    }

    /// The type of an optional input.
    pub fn opt_input(&self, i: usize) -> Option<&'a TensorType> {
        self.inputs.get(i).and_then(Option::as_ref)
    }

    /// The compile-time value of an input, if known.
    pub fn const_input(&self, i: usize) -> Option<&'a Tensor> {
        self.consts.get(i).copied().flatten()
    }

    /// Checks the input count lies in `min..=max`.
    pub fn arity(&self, min: usize, max: usize) -> Result<(), InferError> {
        let n = self.inputs.len();
        if n < min || n > max {
            let expected = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(InferError::Arity { expected, found: n });
        }
        Ok(())
    }
}

impl Op {
    /// The op's text-form name, `family.op` (or `constant`).
    pub fn name(&self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => {
                let (family, inner) = m.into_iter().next().expect("one variant");
                match inner {
                    serde_json::Value::String(op) => format!("{family}.{op}"),
                    serde_json::Value::Object(m2) if family != "constant" => {
                        let op = m2.keys().next().cloned().unwrap_or_default();
                        format!("{family}.{op}")
                    }
                    _ => family,
                }
            }
            _ => unreachable!("ops serialize to externally tagged objects"),
        }
    }

    /// Infers the output types of a node of this op.
    pub fn infer(&self, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        match self {
            Op::Constant { .. } => Err(InferError::Other(
                "constant types come from the constant table".into(),
            )),
            Op::Ew(o) => o.infer(cx),
            Op::Reduce(o) => o.infer(cx),
            Op::Nn(o) => o.infer(cx),
            Op::Movement(o) => o.infer(cx),
            Op::Quant(o) => o.infer(cx),
            Op::Attn(o) => o.infer(cx),
            Op::Rnn(o) => o.infer(cx),
            Op::Signal(o) => o.infer(cx),
            Op::Vision(o) => o.infer(cx),
            Op::Strings(o) => o.infer(cx),
            Op::Control(o) => o.infer(cx),
        }
    }
}

/// Normalizes a possibly negative axis against `rank` (ONNX convention).
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize, InferError> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) && !(r == 0 && a == 0) {
        return Err(InferError::Shape(format!(
            "axis {axis} out of range for rank {rank}"
        )));
    }
    Ok(a as usize)
}
