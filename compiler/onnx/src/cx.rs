//! The interface between the import driver and the per-family import functions.
//!
//! The driver decodes a node's attributes into `AttrValue`s, resolves its inputs to IR values and
//! calls the family's `ImportFn` with a `NodeCx`. The import function reads attributes (with the
//! defaults of the node's opset), emits one or more IR nodes and returns the IR values that
//! stand for the ONNX node's outputs, in order. Errors it returns are node-local; the driver adds
//! file, node name and op type.

use mlc_ir::{Graph, InferCx, Op, Tensor, TensorType, ValueId};
use std::collections::HashMap;

/// A decoded ONNX attribute. Graph attributes are not decoded here: control-flow import
/// functions ask the driver for them through `NodeCx::subgraph`.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Int(i64),
    Float(f32),
    Str(String),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Strs(Vec<String>),
    Tensor(Tensor),
    Graph,
    Graphs,
    /// A kind mlc does not read (sparse tensors, type protos).
    Other,
}

/// A node-local import error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("attribute {name}: {reason}")]
    Attr { name: String, reason: String },
    #[error("input {index}: {reason}")]
    Input { index: usize, reason: String },
    #[error("{0}")]
    Infer(#[from] mlc_ir::InferError),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Tensor(#[from] mlc_ir::TensorError),
}

/// Shorthand for an `Invalid` node error.
pub fn invalid(msg: impl Into<String>) -> NodeError {
    NodeError::Invalid(msg.into())
}

/// Imports the subgraphs of control-flow nodes; implemented by the driver.
pub trait SubgraphImporter {
    /// Imports graph attribute `name` of the current node as a self-contained region.
    /// `input_types` overrides the declared types of the subgraph's inputs where given.
    /// Returns the region and the outer values it captures: the region's inputs are its
    /// declared inputs followed by one input per captured value, in the returned order.
    fn import_subgraph(
        &mut self,
        graph: &Graph,
        name: &str,
        input_types: &[Option<TensorType>],
    ) -> Result<(Graph, Vec<ValueId>), NodeError>;
}

/// One ONNX node being imported.
pub struct NodeCx<'a> {
    /// The IR graph under construction.
    pub graph: &'a mut Graph,
    pub op_type: &'a str,
    pub domain: &'a str,
    /// The ONNX node's name, kept as the IR node's `loc`.
    pub name: &'a str,
    /// The opset version in force for the node's domain.
    pub opset: i64,
    pub attrs: &'a HashMap<String, AttrValue>,
    /// The node's inputs; `None` where the ONNX input name is empty.
    pub inputs: Vec<Option<ValueId>>,
    pub n_outputs: usize,
    pub subgraphs: &'a mut dyn SubgraphImporter,
}

impl std::fmt::Debug for NodeCx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeCx({} {:?})", self.op_type, self.name)
    }
}

/// A family's import function for one ONNX op type.
pub type ImportFn = fn(&mut NodeCx) -> Result<Vec<ValueId>, NodeError>;

/// ONNX `(domain, op_type)` → import function. Domain `""` is the default ONNX domain.
#[derive(Default)]
pub struct Registry {
    map: HashMap<(&'static str, &'static str), ImportFn>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({} ops)", self.map.len())
    }
}

impl Registry {
    pub fn add(&mut self, domain: &'static str, op_type: &'static str, f: ImportFn) {
        self.map.insert((domain, op_type), f);
    }

    pub fn get(&self, domain: &str, op_type: &str) -> Option<ImportFn> {
        let domain = if domain == "ai.onnx" { "" } else { domain };
        self.map.get(&(domain, op_type)).copied()
    }

    /// Every registered op type, sorted, for `mlc inspect` and docs.
    pub fn op_types(&self) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = self.map.keys().copied().collect();
        v.sort();
        v
    }

    /// The registry with every family's import functions.
    pub fn standard() -> Registry {
        let mut r = Registry::default();
        crate::ops::register_all(&mut r);
        r
    }
}

impl NodeCx<'_> {
    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attrs.get(name)
    }

    fn bad_attr(name: &str, want: &str) -> NodeError {
        NodeError::Attr {
            name: name.to_string(),
            reason: format!("expected {want}"),
        }
    }

    pub fn attr_int_opt(&self, name: &str) -> Result<Option<i64>, NodeError> {
        match self.attr(name) {
            None => Ok(None),
            Some(AttrValue::Int(v)) => Ok(Some(*v)),
            Some(_) => Err(Self::bad_attr(name, "an int")),
        }
    }

    pub fn attr_int(&self, name: &str, default: i64) -> Result<i64, NodeError> {
        Ok(self.attr_int_opt(name)?.unwrap_or(default))
    }

    pub fn attr_float_opt(&self, name: &str) -> Result<Option<f32>, NodeError> {
        match self.attr(name) {
            None => Ok(None),
            Some(AttrValue::Float(v)) => Ok(Some(*v)),
            Some(AttrValue::Int(v)) => Ok(Some(*v as f32)),
            Some(_) => Err(Self::bad_attr(name, "a float")),
        }
    }

    pub fn attr_float(&self, name: &str, default: f32) -> Result<f32, NodeError> {
        Ok(self.attr_float_opt(name)?.unwrap_or(default))
    }

    pub fn attr_str_opt(&self, name: &str) -> Result<Option<String>, NodeError> {
        match self.attr(name) {
            None => Ok(None),
            Some(AttrValue::Str(v)) => Ok(Some(v.clone())),
            Some(_) => Err(Self::bad_attr(name, "a string")),
        }
    }

    pub fn attr_str(&self, name: &str, default: &str) -> Result<String, NodeError> {
        Ok(self
            .attr_str_opt(name)?
            .unwrap_or_else(|| default.to_string()))
    }

    pub fn attr_ints(&self, name: &str) -> Result<Option<Vec<i64>>, NodeError> {
        match self.attr(name) {
            None => Ok(None),
            Some(AttrValue::Ints(v)) => Ok(Some(v.clone())),
            Some(AttrValue::Int(v)) => Ok(Some(vec![*v])),
            Some(_) => Err(Self::bad_attr(name, "a list of ints")),
        }
    }

    pub fn attr_floats(&self, name: &str) -> Result<Option<Vec<f32>>, NodeError> {
        match self.attr(name) {
            None => Ok(None),
            Some(AttrValue::Floats(v)) => Ok(Some(v.clone())),
            Some(AttrValue::Float(v)) => Ok(Some(vec![*v])),
            Some(_) => Err(Self::bad_attr(name, "a list of floats")),
        }
    }

    pub fn attr_strs(&self, name: &str) -> Result<Option<Vec<String>>, NodeError> {
        match self.attr(name) {
            None => Ok(None),
            Some(AttrValue::Strs(v)) => Ok(Some(v.clone())),
            Some(_) => Err(Self::bad_attr(name, "a list of strings")),
        }
    }

    pub fn attr_tensor(&self, name: &str) -> Result<Option<Tensor>, NodeError> {
        match self.attr(name) {
            None => Ok(None),
            Some(AttrValue::Tensor(t)) => Ok(Some(t.clone())),
            Some(_) => Err(Self::bad_attr(name, "a tensor")),
        }
    }

    /// A required input.
    pub fn input(&self, i: usize) -> Result<ValueId, NodeError> {
        self.opt_input(i).ok_or(NodeError::Input {
            index: i,
            reason: "required input is missing".into(),
        })
    }

    /// An optional input (`None` when absent or past the end).
    pub fn opt_input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }

    pub fn n_inputs(&self) -> usize {
        self.inputs.len()
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        self.graph.ty(v)
    }

    /// The type of a required input.
    pub fn input_type(&self, i: usize) -> Result<TensorType, NodeError> {
        Ok(self.graph.ty(self.input(i)?).clone())
    }

    /// The compile-time value of input `i`, when a constant defines it.
    pub fn input_const(&self, i: usize) -> Option<&Tensor> {
        self.opt_input(i).and_then(|v| self.graph.const_value(v))
    }

    /// Adds a constant to the graph.
    pub fn constant(&mut self, t: Tensor) -> ValueId {
        self.graph.add_constant(t)
    }

    /// Emits one IR node, inferring its output types; returns its outputs.
    pub fn emit(
        &mut self,
        op: Op,
        inputs: Vec<Option<ValueId>>,
        n_outputs: usize,
    ) -> Result<Vec<ValueId>, NodeError> {
        self.emit_with_regions(op, inputs, vec![], n_outputs)
    }

    /// Emits a single-output IR node.
    pub fn emit1(&mut self, op: Op, inputs: Vec<ValueId>) -> Result<ValueId, NodeError> {
        Ok(self.emit(op, inputs.into_iter().map(Some).collect(), 1)?[0])
    }

    pub fn emit_with_regions(
        &mut self,
        op: Op,
        inputs: Vec<Option<ValueId>>,
        regions: Vec<Graph>,
        n_outputs: usize,
    ) -> Result<Vec<ValueId>, NodeError> {
        let types: Vec<Option<TensorType>> = inputs
            .iter()
            .map(|v| v.map(|v| self.graph.ty(v).clone()))
            .collect();
        let consts: Vec<Option<&Tensor>> = inputs
            .iter()
            .map(|v| v.and_then(|v| self.graph.const_value(v)))
            .collect();
        let cx = InferCx {
            inputs: &types,
            consts: &consts,
            regions: &regions,
            n_outputs,
        };
        let out_types = op.infer(&cx)?;
        if regions.is_empty()
            && let Some(folded) = fold(&op, &types, &consts, &out_types)
        {
            return Ok(folded
                .into_iter()
                .map(|t| self.graph.add_constant(t))
                .collect());
        }
        let loc = (!self.name.is_empty()).then(|| self.name.to_string());
        Ok(self.graph.add_node(op, inputs, out_types, regions, loc))
    }

    /// Imports graph attribute `name` as a region (see `SubgraphImporter`).
    pub fn subgraph(
        &mut self,
        name: &str,
        input_types: &[Option<TensorType>],
    ) -> Result<(Graph, Vec<ValueId>), NodeError> {
        self.subgraphs
            .import_subgraph(self.graph, name, input_types)
    }
}

/// Folding at import: nodes whose inputs are all constants, and `Shape`/`Size` of values whose
/// shape is static, become constants right away. Shape arithmetic (Shape -> Slice -> Concat ->
/// Reshape) on static shapes thus reaches the ops that need its value (Reshape's rank comes from
/// its shape input) already folded. Quantization ops are kept, so that the optimizer still sees
/// which weights are quantized; big results are kept too, so that import never multiplies the
/// size of a model.
fn fold(
    op: &Op,
    types: &[Option<TensorType>],
    consts: &[Option<&Tensor>],
    out_types: &[TensorType],
) -> Option<Vec<Tensor>> {
    use mlc_ir::ops::MovementOp;
    const MAX_ELEMENTS: usize = 1 << 20;
    match op {
        Op::Movement(MovementOp::Size) => {
            let dims = types.first()?.as_ref()?.static_shape()?;
            let n = i64::try_from(dims.iter().product::<usize>()).ok()?;
            return Some(vec![Tensor::scalar(n).cast(out_types.first()?.dtype).ok()?]);
        }
        Op::Movement(MovementOp::Shape { start, end }) => {
            let dims = types.first()?.as_ref()?.static_shape()?;
            let end = (*end).min(dims.len());
            let picked: Vec<i64> = dims[(*start).min(end)..end]
                .iter()
                .map(|&d| d as i64)
                .collect();
            let t = Tensor::from_vec(&[picked.len()], picked).ok()?;
            return Some(vec![t.cast(out_types.first()?.dtype).ok()?]);
        }
        Op::Quant(_) | Op::Constant { .. } => return None,
        _ => {}
    }
    let all_const = types
        .iter()
        .zip(consts)
        .all(|(t, c)| t.is_none() || c.is_some());
    if !all_const {
        return None;
    }
    let small = |t: &TensorType| {
        t.static_shape()
            .is_some_and(|s| s.iter().product::<usize>() <= MAX_ELEMENTS)
    };
    if !out_types.iter().all(small) || consts.iter().flatten().any(|c| c.len() > MAX_ELEMENTS) {
        return None;
    }
    let cx = mlc_interp::EvalCx {
        regions: &[],
        output_types: out_types,
    };
    let outs = mlc_interp::eval_op(op, consts, &cx).ok()?;
    // Folding must not change types: a kernel whose result disagrees with inference is left
    // for the interpreter to report at run time.
    let same = outs.len() == out_types.len()
        && outs.iter().zip(out_types).all(|(t, ty)| {
            t.dtype() == ty.dtype
                && t.rank() == ty.rank()
                && ty
                    .shape
                    .iter()
                    .zip(t.shape())
                    .all(|(d, &n)| d.known().is_none_or(|k| k == n))
        });
    same.then_some(outs)
}
