//! The import driver: walks an ONNX graph in order, resolves names to IR values, decodes
//! attributes and hands each node to its family's import function.
//!
//! Subgraphs (If/Loop/Scan bodies) are closure-converted: before a subgraph is imported, its free
//! names (used inside, defined outside, at any depth) are computed, resolved in the enclosing
//! graph and passed as extra region inputs. So every IR graph is self-contained and the importer
//! needs no scope chain.

use crate::cx::{AttrValue, NodeCx, NodeError, Registry, SubgraphImporter};
use crate::error::{ImportError, UnsupportedOp};
use crate::proto::onnx::{
    GraphProto, ModelProto, NodeProto, ValueInfoProto, attribute_proto::AttributeType, type_proto,
};
use crate::tensor;
use mlc_ir::{Dim, Graph, Tensor, TensorType, ValueId};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// A model imported into mlc IR.
#[derive(Debug, Clone)]
pub struct Model {
    pub graph: Graph,
    /// Opset versions by domain (`""` is the default ONNX domain).
    pub opsets: Vec<(String, i64)>,
    pub producer: String,
    pub ir_version: i64,
}

/// What the driver needs everywhere.
pub(crate) struct Ctx<'a> {
    pub path: &'a Path,
    pub base_dir: Option<&'a Path>,
    pub opsets: HashMap<String, i64>,
    pub registry: &'a Registry,
}

impl Ctx<'_> {
    pub fn opset(&self, domain: &str) -> i64 {
        let d = if domain == "ai.onnx" { "" } else { domain };
        self.opsets.get(d).copied().unwrap_or(1)
    }

    fn graph_err(&self, reason: impl Into<String>) -> ImportError {
        ImportError::Graph {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn node_err(&self, node: &NodeProto, reason: impl Into<String>) -> ImportError {
        ImportError::Node {
            path: self.path.to_path_buf(),
            node: node.name().to_string(),
            op: qualified(node),
            opset: self.opset(node.domain()),
            reason: reason.into(),
        }
    }
}

fn qualified(node: &NodeProto) -> String {
    match node.domain() {
        "" | "ai.onnx" => node.op_type().to_string(),
        d => format!("{d}:{}", node.op_type()),
    }
}

/// Parses the bytes of an ONNX file and checks it is a model at all.
pub fn decode_model(path: &Path, bytes: &[u8]) -> Result<ModelProto, ImportError> {
    use protobuf::Message;
    let decode = |reason: String| ImportError::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let model = ModelProto::parse_from_bytes(bytes)
        .map_err(|e| decode(format!("protobuf decoding failed ({e})")))?;
    if model.ir_version() <= 0 {
        return Err(decode(
            "no ir_version: this is not an ONNX ModelProto".into(),
        ));
    }
    if model.graph.is_none() {
        return Err(decode("the model has no graph".into()));
    }
    Ok(model)
}

/// Opset versions by domain; `ai.onnx` is folded into `""`.
pub fn opsets(model: &ModelProto) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = model
        .opset_import
        .iter()
        .map(|o| {
            let d = if o.domain() == "ai.onnx" {
                ""
            } else {
                o.domain()
            };
            (d.to_string(), o.version())
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Every op type (recursively, in subgraphs too) that the registry cannot import, with the
/// names of its nodes, in order of first appearance.
pub(crate) fn collect_unsupported(g: &GraphProto, ctx: &Ctx, out: &mut Vec<UnsupportedOp>) {
    for (i, node) in g.node.iter().enumerate() {
        let is_constant = node.op_type() == "Constant" && matches!(node.domain(), "" | "ai.onnx");
        if !is_constant && ctx.registry.get(node.domain(), node.op_type()).is_none() {
            let name = if node.name().is_empty() {
                format!("#{i}")
            } else {
                node.name().to_string()
            };
            match out
                .iter_mut()
                .find(|u| u.op_type == node.op_type() && u.domain == node.domain())
            {
                Some(u) => u.nodes.push(name),
                None => out.push(UnsupportedOp {
                    domain: node.domain().to_string(),
                    op_type: node.op_type().to_string(),
                    opset: ctx.opset(node.domain()),
                    nodes: vec![name],
                }),
            }
        }
        for a in &node.attribute {
            for sub in a.g.as_ref().into_iter().chain(a.graphs.iter()) {
                collect_unsupported(sub, ctx, out);
            }
        }
    }
}

/// Imports a whole model.
pub(crate) fn import_model(ctx: &Ctx, model: &ModelProto) -> Result<Model, ImportError> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| ctx.graph_err("the model has no graph"))?;
    let mut unsupported = Vec::new();
    collect_unsupported(g, ctx, &mut unsupported);
    if !unsupported.is_empty() {
        return Err(ImportError::Unsupported {
            path: ctx.path.to_path_buf(),
            ops: unsupported,
        });
    }
    let init: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let mut inputs = Vec::new();
    for vi in &g.input {
        // Before IR version 4 initializers were also listed as inputs; they are weights, not inputs.
        if init.contains(vi.name()) {
            continue;
        }
        let ty = value_type(vi)
            .map_err(|e| ctx.graph_err(format!("graph input {:?}: {e}", vi.name())))?;
        inputs.push((vi.name().to_string(), ty));
    }
    let graph = import_graph(ctx, g, inputs)?;
    Ok(Model {
        graph,
        opsets: opsets(model),
        producer: format!("{} {}", model.producer_name(), model.producer_version())
            .trim()
            .to_string(),
        ir_version: model.ir_version(),
    })
}

/// The tensor type declared by a `ValueInfoProto`.
pub(crate) fn value_type(vi: &ValueInfoProto) -> Result<TensorType, String> {
    let tp = vi.type_.as_ref().ok_or("no type")?;
    match &tp.value {
        Some(type_proto::Value::TensorType(t)) => {
            let dtype = tensor::dtype_of(t.elem_type())?;
            let shape = t
                .shape
                .as_ref()
                .ok_or("rank unknown (no shape): mlc needs the rank of every input")?;
            let dims = shape.dim.iter().map(|d| {
                if d.has_dim_value() && d.dim_value() >= 0 {
                    Dim::Known(d.dim_value() as usize)
                } else if d.has_dim_param() && !d.dim_param().is_empty() {
                    Dim::Sym(d.dim_param().to_string())
                } else {
                    Dim::Unknown
                }
            });
            Ok(TensorType::new(dtype, dims.collect()))
        }
        Some(type_proto::Value::SequenceType(_)) => Err("sequence types are not supported".into()),
        Some(type_proto::Value::OptionalType(_)) => Err("optional types are not supported".into()),
        Some(type_proto::Value::MapType(_)) => Err("map types are not supported".into()),
        Some(type_proto::Value::SparseTensorType(_)) => {
            Err("sparse tensors are not supported".into())
        }
        Some(type_proto::Value::OpaqueType(_)) => Err("opaque types are not supported".into()),
        None => Err("no type".into()),
    }
}

/// Imports one graph whose inputs (declared inputs, then captured outer values) are given.
pub(crate) fn import_graph(
    ctx: &Ctx,
    g: &GraphProto,
    inputs: Vec<(String, TensorType)>,
) -> Result<Graph, ImportError> {
    let mut graph = Graph::new();
    let mut names: HashMap<String, ValueId> = HashMap::new();
    for (name, ty) in inputs {
        let v = graph.add_input(name.clone(), ty);
        names.insert(name, v);
    }
    for t in &g.initializer {
        if names.contains_key(t.name()) {
            continue;
        }
        let value = tensor::decode(t, ctx.base_dir)
            .map_err(|e| ctx.graph_err(format!("initializer {:?}: {e}", t.name())))?;
        let v = graph.add_constant(value);
        names.insert(t.name().to_string(), v);
    }
    for node in &g.node {
        import_node(ctx, node, &mut graph, &mut names)?;
    }
    for vi in &g.output {
        let v = *names.get(vi.name()).ok_or_else(|| {
            ctx.graph_err(format!("graph output {:?} is never defined", vi.name()))
        })?;
        // Declared output dims refine what inference could not know (data-dependent sizes).
        if let Ok(declared) = value_type(vi) {
            let ty = &mut graph.values[v.0 as usize];
            if declared.rank() == ty.rank() {
                for (d, decl) in ty.shape.iter_mut().zip(declared.shape) {
                    if *d == Dim::Unknown {
                        *d = decl;
                    }
                }
            }
        }
        graph.outputs.push(mlc_ir::Port {
            value: v,
            name: vi.name().to_string(),
        });
    }
    Ok(graph)
}

fn import_node(
    ctx: &Ctx,
    node: &NodeProto,
    graph: &mut Graph,
    names: &mut HashMap<String, ValueId>,
) -> Result<(), ImportError> {
    let mut inputs = Vec::with_capacity(node.input.len());
    for name in &node.input {
        if name.is_empty() {
            inputs.push(None);
        } else {
            let v = names.get(name.as_str()).ok_or_else(|| {
                ctx.node_err(
                    node,
                    format!("input {name:?} is not defined before this node"),
                )
            })?;
            inputs.push(Some(*v));
        }
    }
    let attrs = decode_attrs(ctx, node)?;
    let outputs = if node.op_type() == "Constant" && matches!(node.domain(), "" | "ai.onnx") {
        let t = constant_value(&attrs).map_err(|e| ctx.node_err(node, e))?;
        vec![graph.add_constant(t)]
    } else {
        let f = ctx
            .registry
            .get(node.domain(), node.op_type())
            .ok_or_else(|| ctx.node_err(node, "unsupported op"))?;
        let mut sub = SubImporter { ctx, names, node };
        let mut cx = NodeCx {
            graph,
            op_type: node.op_type(),
            domain: node.domain(),
            name: node.name(),
            opset: ctx.opset(node.domain()),
            attrs: &attrs,
            inputs,
            n_outputs: node.output.len(),
            subgraphs: &mut sub,
        };
        f(&mut cx).map_err(|e| ctx.node_err(node, e.to_string()))?
    };
    for (i, name) in node.output.iter().enumerate() {
        if name.is_empty() {
            continue;
        }
        let v = outputs.get(i).ok_or_else(|| {
            ctx.node_err(
                node,
                format!("output {i} ({name:?}) is not produced by mlc's import of this op"),
            )
        })?;
        names.insert(name.clone(), *v);
    }
    Ok(())
}

fn decode_attrs(ctx: &Ctx, node: &NodeProto) -> Result<HashMap<String, AttrValue>, ImportError> {
    let mut out = HashMap::new();
    for a in &node.attribute {
        let ty = a
            .type_
            .map(|t| t.enum_value_or(AttributeType::UNDEFINED))
            .unwrap_or(AttributeType::UNDEFINED);
        let ty = if ty == AttributeType::UNDEFINED {
            guess_attr_type(a)
        } else {
            ty
        };
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let v =
            match ty {
                AttributeType::INT => AttrValue::Int(a.i()),
                AttributeType::FLOAT => AttrValue::Float(a.f()),
                AttributeType::STRING => AttrValue::Str(s(a.s())),
                AttributeType::INTS => AttrValue::Ints(a.ints.clone()),
                AttributeType::FLOATS => AttrValue::Floats(a.floats.clone()),
                AttributeType::STRINGS => AttrValue::Strs(a.strings.iter().map(|b| s(b)).collect()),
                AttributeType::TENSOR => {
                    let t = a.t.as_ref().ok_or_else(|| {
                        ctx.node_err(node, format!("attribute {:?} has no tensor", a.name()))
                    })?;
                    AttrValue::Tensor(tensor::decode(t, ctx.base_dir).map_err(|e| {
                        ctx.node_err(node, format!("attribute {:?}: {e}", a.name()))
                    })?)
                }
                AttributeType::GRAPH => AttrValue::Graph,
                AttributeType::GRAPHS => AttrValue::Graphs,
                _ => AttrValue::Other,
            };
        out.insert(a.name().to_string(), v);
    }
    Ok(out)
}

/// Old producers leave `type` unset; the field that holds data tells the type.
fn guess_attr_type(a: &crate::proto::onnx::AttributeProto) -> AttributeType {
    if a.f.is_some() {
        AttributeType::FLOAT
    } else if a.i.is_some() {
        AttributeType::INT
    } else if a.s.is_some() {
        AttributeType::STRING
    } else if a.t.is_some() {
        AttributeType::TENSOR
    } else if a.g.is_some() {
        AttributeType::GRAPH
    } else if !a.floats.is_empty() {
        AttributeType::FLOATS
    } else if !a.ints.is_empty() {
        AttributeType::INTS
    } else if !a.strings.is_empty() {
        AttributeType::STRINGS
    } else if !a.graphs.is_empty() {
        AttributeType::GRAPHS
    } else {
        AttributeType::UNDEFINED
    }
}

/// The tensor of an ONNX `Constant` node, whichever of its attributes holds it.
fn constant_value(attrs: &HashMap<String, AttrValue>) -> Result<Tensor, String> {
    let r = match attrs.iter().next() {
        _ if attrs.len() != 1 => {
            return Err(format!(
                "Constant needs exactly one value attribute, found {}",
                attrs.len()
            ));
        }
        Some((name, v)) => match (name.as_str(), v) {
            ("value", AttrValue::Tensor(t)) => Ok(t.clone()),
            ("value_float", AttrValue::Float(f)) => Ok(Tensor::scalar(*f)),
            ("value_floats", AttrValue::Floats(f)) => Tensor::from_vec(&[f.len()], f.clone()),
            ("value_int", AttrValue::Int(i)) => Ok(Tensor::scalar(*i)),
            ("value_ints", AttrValue::Ints(i)) => Tensor::from_vec(&[i.len()], i.clone()),
            ("value_string", AttrValue::Str(s)) => Ok(Tensor::scalar(s.clone())),
            ("value_strings", AttrValue::Strs(s)) => Tensor::from_vec(&[s.len()], s.clone()),
            ("sparse_value", _) => return Err("sparse constants are not supported".into()),
            (other, _) => return Err(format!("unexpected Constant attribute {other:?}")),
        },
        None => unreachable!("len checked above"),
    };
    r.map_err(|e| e.to_string())
}

/// Names used in `g` (at any depth) that `g` does not define, in order of first use.
fn free_names(g: &GraphProto) -> Vec<String> {
    let mut defined: HashSet<&str> = g.input.iter().map(|v| v.name()).collect();
    defined.extend(g.initializer.iter().map(|t| t.name()));
    let mut free = Vec::new();
    let mut seen = HashSet::new();
    for node in &g.node {
        let mut used: Vec<String> = node
            .input
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        for a in &node.attribute {
            for sub in a.g.as_ref().into_iter().chain(a.graphs.iter()) {
                used.extend(free_names(sub));
            }
        }
        for n in used {
            if !defined.contains(n.as_str()) && seen.insert(n.clone()) {
                free.push(n);
            }
        }
        defined.extend(node.output.iter().map(String::as_str));
    }
    // A subgraph may return an outer value directly, with no node in between.
    for o in &g.output {
        if !defined.contains(o.name()) && seen.insert(o.name().to_string()) {
            free.push(o.name().to_string());
        }
    }
    free
}

/// Imports a node's graph attributes for its family's import function.
struct SubImporter<'a> {
    ctx: &'a Ctx<'a>,
    names: &'a HashMap<String, ValueId>,
    node: &'a NodeProto,
}

impl SubgraphImporter for SubImporter<'_> {
    fn import_subgraph(
        &mut self,
        graph: &Graph,
        name: &str,
        input_types: &[Option<TensorType>],
    ) -> Result<(Graph, Vec<ValueId>), NodeError> {
        let gp = self
            .node
            .attribute
            .iter()
            .find(|a| a.name() == name)
            .and_then(|a| a.g.as_ref())
            .ok_or_else(|| NodeError::Attr {
                name: name.to_string(),
                reason: "missing graph attribute".into(),
            })?;
        let mut inputs = Vec::new();
        for (i, vi) in gp.input.iter().enumerate() {
            let ty = match input_types.get(i).cloned().flatten() {
                Some(t) => t,
                None => value_type(vi).map_err(|e| NodeError::Attr {
                    name: name.to_string(),
                    reason: format!("subgraph input {:?}: {e}", vi.name()),
                })?,
            };
            inputs.push((vi.name().to_string(), ty));
        }
        let mut captures = Vec::new();
        for n in free_names(gp) {
            let v = *self.names.get(&n).ok_or_else(|| NodeError::Attr {
                name: name.to_string(),
                reason: format!("subgraph uses {n:?}, which is not defined in any enclosing graph"),
            })?;
            inputs.push((n, graph.ty(v).clone()));
            captures.push(v);
        }
        let region = import_graph(self.ctx, gp, inputs).map_err(|e| {
            NodeError::Invalid(match e {
                ImportError::Node {
                    node, op, reason, ..
                } => format!("in subgraph {name:?}: node {node:?} ({op}): {reason}"),
                ImportError::Graph { reason, .. } => format!("in subgraph {name:?}: {reason}"),
                other => other.to_string(),
            })
        })?;
        Ok((region, captures))
    }
}
