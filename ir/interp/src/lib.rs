//! mlc's reference interpreter.
//!
//! It runs any IR graph exactly and simply: kernels are naive loops over `ndarray`s, written for
//! obvious correctness, never for speed. Every pass and backend is checked against it.
//! One op family = one file under `ops/`, mirroring `mlc_ir::ops`.

pub mod ops;

use mlc_ir::{Graph, Op, Tensor, TensorType};

/// Why evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("graph input {name:?} is missing")]
    MissingInput { name: String },
    #[error("graph input {name:?}: expected {expected}, got {got}")]
    InputMismatch {
        name: String,
        expected: String,
        got: String,
    },
    #[error("node {index} ({op}{loc}): {reason}")]
    Node {
        index: usize,
        op: String,
        loc: String,
        reason: String,
    },
    #[error("op {0} is not supported by the interpreter")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tensor(#[from] mlc_ir::TensorError),
}

/// Shorthand for kernel errors.
pub fn invalid(msg: impl Into<String>) -> EvalError {
    EvalError::Invalid(msg.into())
}

/// What a kernel sees besides its inputs.
#[derive(Debug)]
pub struct EvalCx<'a> {
    /// The node's regions (bodies of `control.*` ops).
    pub regions: &'a [Graph],
    /// The output types recorded on the node (shapes may be symbolic).
    pub output_types: &'a [TensorType],
}

impl EvalCx<'_> {
    pub fn n_outputs(&self) -> usize {
        self.output_types.len()
    }

    /// Runs region `i` on the given inputs.
    pub fn run_region(&self, i: usize, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EvalError> {
        let g = self
            .regions
            .get(i)
            .ok_or_else(|| invalid(format!("node has no region {i}")))?;
        run_positional(g, inputs)
    }
}

/// Evaluates one op on its inputs (`None` = absent optional input).
pub fn eval_op(op: &Op, inputs: &[Option<&Tensor>], cx: &EvalCx) -> Result<Vec<Tensor>, EvalError> {
    match op {
        Op::Constant { .. } => Err(invalid("constant nodes are resolved by the graph runner")),
        Op::Ew(o) => ops::ew::eval(o, inputs, cx),
        Op::Reduce(o) => ops::reduce::eval(o, inputs, cx),
        Op::Nn(o) => ops::nn::eval(o, inputs, cx),
        Op::Movement(o) => ops::movement::eval(o, inputs, cx),
        Op::Quant(o) => ops::quant::eval(o, inputs, cx),
        Op::Attn(o) => ops::attn::eval(o, inputs, cx),
        Op::Rnn(o) => ops::rnn::eval(o, inputs, cx),
        Op::Signal(o) => ops::signal::eval(o, inputs, cx),
        Op::Vision(o) => ops::vision::eval(o, inputs, cx),
        Op::Strings(o) => ops::strings::eval(o, inputs, cx),
        Op::Control(o) => ops::control::eval(o, inputs, cx),
    }
}

/// Runs a graph on inputs given in the order of `graph.inputs`; returns outputs in order.
pub fn run_positional(graph: &Graph, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EvalError> {
    if inputs.len() != graph.inputs.len() {
        return Err(invalid(format!(
            "graph takes {} inputs, {} given",
            graph.inputs.len(),
            inputs.len()
        )));
    }
    let mut env: Vec<Option<Tensor>> = vec![None; graph.values.len()];
    for (port, t) in graph.inputs.iter().zip(inputs) {
        env[port.value.0 as usize] = Some(t);
    }
    // Free each value after its last use, so that big models run in bounded memory.
    let mut last_use = vec![usize::MAX; graph.values.len()];
    for (i, n) in graph.nodes.iter().enumerate() {
        for v in n.inputs.iter().flatten() {
            last_use[v.0 as usize] = i;
        }
    }
    for p in &graph.outputs {
        last_use[p.value.0 as usize] = usize::MAX;
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        let results = if let Op::Constant { id } = node.op {
            let t = graph
                .consts
                .get(id as usize)
                .ok_or_else(|| invalid(format!("constant @{id} does not exist")))?;
            vec![t.clone()]
        } else {
            let args: Vec<Option<&Tensor>> = node
                .inputs
                .iter()
                .map(|v| {
                    v.map(|v| {
                        env[v.0 as usize]
                            .as_ref()
                            .expect("verified graphs define values before use")
                    })
                })
                .collect();
            let output_types: Vec<TensorType> =
                node.outputs.iter().map(|v| graph.ty(*v).clone()).collect();
            let cx = EvalCx {
                regions: &node.regions,
                output_types: &output_types,
            };
            eval_op(&node.op, &args, &cx).map_err(|e| EvalError::Node {
                index: i,
                op: node.op.name(),
                loc: node
                    .loc
                    .as_ref()
                    .map(|l| format!(" at {l}"))
                    .unwrap_or_default(),
                reason: e.to_string(),
            })?
        };
        if results.len() != node.outputs.len() {
            return Err(invalid(format!(
                "node {i} ({}) produced {} outputs, expected {}",
                node.op.name(),
                results.len(),
                node.outputs.len()
            )));
        }
        for (v, t) in node.outputs.iter().zip(results) {
            env[v.0 as usize] = Some(t);
        }
        for v in node.inputs.iter().flatten() {
            if last_use[v.0 as usize] == i {
                env[v.0 as usize] = None;
            }
        }
    }
    graph
        .outputs
        .iter()
        .map(|p| {
            env[p.value.0 as usize]
                .clone()
                .ok_or_else(|| invalid(format!("output {} was never computed", p.value)))
        })
        .collect()
}

/// Runs a graph on named inputs; checks dtypes and static dims against the declared types.
pub fn run(graph: &Graph, inputs: &[(String, Tensor)]) -> Result<Vec<Tensor>, EvalError> {
    let mut ordered = Vec::with_capacity(graph.inputs.len());
    for port in &graph.inputs {
        let t = inputs
            .iter()
            .find(|(n, _)| n == &port.name)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| EvalError::MissingInput {
                name: port.name.clone(),
            })?;
        check_input(&port.name, graph.ty(port.value), &t)?;
        ordered.push(t);
    }
    run_positional(graph, ordered)
}

fn check_input(name: &str, ty: &TensorType, t: &Tensor) -> Result<(), EvalError> {
    let fits = t.dtype() == ty.dtype
        && t.rank() == ty.rank()
        && ty
            .shape
            .iter()
            .zip(t.shape())
            .all(|(d, &n)| d.known().is_none_or(|k| k == n));
    if fits {
        Ok(())
    } else {
        Err(EvalError::InputMismatch {
            name: name.to_string(),
            expected: ty.to_string(),
            got: format!("{}{:?}", t.dtype(), t.shape()),
        })
    }
}
