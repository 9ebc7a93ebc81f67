//! mlc's graph IR.
//!
//! Architecture invariant: this crate knows nothing of ONNX, LLVM, Cranelift or egg. It defines
//! what a model *is* for mlc: typed values with symbolic shapes, a closed set of typed ops, graphs
//! with regions, and the checks (inference, verifier) and text form that every pass relies on.

pub mod dtype;
pub mod graph;
pub mod lowbit;
pub mod ops;
pub mod shape;
pub mod tensor;
pub mod text;
pub mod verify;

pub use dtype::{DType, QuantParams};
pub use graph::{ConstId, Graph, Node, Port, ValueId};
pub use lowbit::{CastMode, RoundMode};
pub use ops::{InferCx, InferError, Op};
pub use shape::{Dim, Shape, TensorType};
pub use tensor::{Elem, NumElem, Tensor, TensorError};
pub use text::{ParseError, PrintOptions, parse_graph, print_graph, print_graph_with};
pub use verify::{VerifyError, verify};
