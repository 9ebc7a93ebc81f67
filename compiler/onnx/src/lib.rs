//! mlc's ONNX frontend.
//!
//! Reads a `ModelProto` (vendored `onnx.proto`, opsets 7-23, external data, symbolic dims) and
//! lowers it to an `mlc_ir::Graph`. ONNX names do not survive import: op types become mlc ops,
//! value names become SSA ids; only the graph's input/output names (the user's interface) and
//! node names (as diagnostic locations) are kept.

pub mod cx;
pub mod ops;
