//! mlc's ONNX frontend.
//!
//! Reads a `ModelProto` (vendored `onnx.proto`, opsets 7-23, external data, symbolic dims) and
//! lowers it to an `mlc_ir::Graph`. ONNX names do not survive import: op types become mlc ops,
//! value names become SSA ids; only the graph's input/output names (the user's interface) and
//! node names (as diagnostic locations) are kept.
//!
//! Entry points: [`load`] (import a model file), [`inspect`] (describe a model, even one with
//! unsupported ops), [`read_tensor_pb`] (a `TensorProto` file, as the ONNX test data uses).

pub mod cx;
pub mod error;
mod import;
mod inspect;
pub mod ops;
mod proto;
pub mod tensor;

pub use error::{ImportError, UnsupportedOp};
pub use import::Model;
pub use inspect::{ModelInfo, PortInfo, inspect};

use std::path::Path;

fn read(path: &Path) -> Result<Vec<u8>, ImportError> {
    std::fs::read(path).map_err(|error| ImportError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// Imports the ONNX model at `path` (external data files are resolved next to it).
pub fn load(path: &Path) -> Result<Model, ImportError> {
    let bytes = read(path)?;
    load_bytes(path, &bytes)
}

/// Imports a model from bytes; `path` names it in errors and locates external data.
pub fn load_bytes(path: &Path, bytes: &[u8]) -> Result<Model, ImportError> {
    let model = import::decode_model(path, bytes)?;
    let registry = cx::Registry::standard();
    let ctx = import::Ctx {
        path,
        base_dir: path.parent(),
        opsets: import::opsets(&model).into_iter().collect(),
        registry: &registry,
    };
    import::import_model(&ctx, &model)
}

/// Reads a serialized ONNX `TensorProto` (the `.pb` files of the ONNX test data).
pub fn read_tensor_pb(path: &Path) -> Result<mlc_ir::Tensor, ImportError> {
    use protobuf::Message;
    let bytes = read(path)?;
    let decode = |reason: String| ImportError::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let t = proto::onnx::TensorProto::parse_from_bytes(&bytes)
        .map_err(|e| decode(format!("not a TensorProto ({e})")))?;
    tensor::decode(&t, path.parent()).map_err(decode)
}
