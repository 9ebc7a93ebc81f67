//! `mlc inspect`: a description of a model that works even when mlc cannot import all of it.

use crate::error::ImportError;
use crate::import::{self, Ctx};
use crate::proto::onnx::GraphProto;
use crate::{cx::Registry, tensor};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// A graph input or output as declared in the model.
#[derive(Debug, Clone, Serialize)]
pub struct PortInfo {
    pub name: String,
    /// The element type (`f32`, ...), or the ONNX description of a type mlc lacks.
    pub dtype: String,
    /// Dims as written: numbers, symbols, `?` for unknown; `None` if the rank is not declared.
    pub shape: Option<Vec<String>>,
}

/// An unsupported op type and the nodes that use it.
#[derive(Debug, Clone, Serialize)]
pub struct UnsupportedInfo {
    pub op: String,
    pub opset: i64,
    pub nodes: Vec<String>,
}

/// What `mlc inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: String,
    pub ir_version: i64,
    pub producer: String,
    pub opsets: Vec<(String, i64)>,
    pub inputs: Vec<PortInfo>,
    pub outputs: Vec<PortInfo>,
    /// ONNX op type -> number of nodes (subgraphs included), sorted by op type.
    pub ops: BTreeMap<String, usize>,
    pub nodes: usize,
    /// Elements in initializers and in `Constant` nodes with more than one element (some
    /// exporters keep weights in Constant nodes).
    pub parameters: u64,
    pub unsupported: Vec<UnsupportedInfo>,
}

/// Describes the model at `path`.
pub fn inspect(path: &Path) -> Result<ModelInfo, ImportError> {
    let bytes = std::fs::read(path).map_err(|error| ImportError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let model = import::decode_model(path, &bytes)?;
    let g = model.graph.as_ref().ok_or_else(|| ImportError::Decode {
        path: path.to_path_buf(),
        reason: "no graph".into(),
    })?;
    let registry = Registry::standard();
    let ctx = Ctx {
        path,
        base_dir: path.parent(),
        opsets: import::opsets(&model).into_iter().collect(),
        registry: &registry,
    };
    let mut unsupported = Vec::new();
    import::collect_unsupported(g, &ctx, &mut unsupported);

    let init: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let port = |vi: &crate::proto::onnx::ValueInfoProto| match import::value_type(vi) {
        Ok(t) => PortInfo {
            name: vi.name().to_string(),
            dtype: t.dtype.to_string(),
            shape: Some(t.shape.iter().map(|d| d.to_string()).collect()),
        },
        Err(e) => PortInfo {
            name: vi.name().to_string(),
            dtype: e,
            shape: None,
        },
    };
    let mut ops = BTreeMap::new();
    let mut nodes = 0;
    let mut parameters: u64 = g
        .initializer
        .iter()
        .map(|t| t.dims.iter().product::<i64>().max(0) as u64)
        .sum();
    count_ops(g, &mut ops, &mut nodes, &mut parameters);
    Ok(ModelInfo {
        path: path.display().to_string(),
        ir_version: model.ir_version(),
        producer: format!("{} {}", model.producer_name(), model.producer_version())
            .trim()
            .to_string(),
        opsets: import::opsets(&model),
        inputs: g
            .input
            .iter()
            .filter(|vi| !init.contains(vi.name()))
            .map(port)
            .collect(),
        outputs: g.output.iter().map(port).collect(),
        ops,
        nodes,
        parameters,
        unsupported: unsupported
            .into_iter()
            .map(|u| UnsupportedInfo {
                op: u.qualified(),
                opset: u.opset,
                nodes: u.nodes,
            })
            .collect(),
    })
}

fn count_ops(
    g: &GraphProto,
    ops: &mut BTreeMap<String, usize>,
    nodes: &mut usize,
    params: &mut u64,
) {
    for n in &g.node {
        let key = match n.domain() {
            "" | "ai.onnx" => n.op_type().to_string(),
            d => format!("{d}:{}", n.op_type()),
        };
        *ops.entry(key).or_default() += 1;
        *nodes += 1;
        for a in &n.attribute {
            if let Some(t) = a.t.as_ref().filter(|_| n.op_type() == "Constant") {
                let elems = t.dims.iter().product::<i64>().max(0) as u64;
                if elems > 1 && tensor::dtype_of(t.data_type()).is_ok() {
                    *params += elems;
                }
            }
            for sub in a.g.as_ref().into_iter().chain(a.graphs.iter()) {
                count_ops(sub, ops, nodes, params);
            }
        }
    }
}
