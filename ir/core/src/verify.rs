//! The IR verifier: checks a graph's structural and type invariants and lists every violation.
//!
//! Passes and importers run it in tests and debug builds; a failure is a bug in whoever built
//! the graph, never a user error. Invariants checked, for the graph and, recursively, for every
//! region of every node (each region is a self-contained graph):
//!
//! 1. Every `ValueId` (graph inputs and outputs, node inputs and outputs) is in range of
//!    `Graph::values`.
//! 2. Every value is defined exactly once: as a graph input or as one output of one node.
//! 3. Every node input is defined before the node (by a graph input or an earlier node), so
//!    `nodes` is in topological order.
//! 4. Every graph output is defined.
//! 5. A `constant` node has no inputs, one output and no regions; its id is in range of
//!    `Graph::consts`; its output's declared dtype and shape are the tensor's (the shape all
//!    known dims; quantization parameters are not compared).
//! 6. For every other node, `Op::infer` succeeds (given the input types, the values of constant
//!    inputs as `Graph::const_value` finds them, and the regions); it yields one type per output;
//!    and each inferred type is *compatible* with the recorded one: same dtype, same rank, and
//!    no recorded known dim contradicts an inferred known dim (symbolic and unknown dims are
//!    compatible with anything, so inference may know less, or other names, than the importer).
//!    Inference is skipped for nodes whose inputs are out of range (already reported).

use crate::graph::{Graph, Node, ValueId};
use crate::ops::{InferCx, InferError, Op};
use crate::shape::{Dim, TensorType};
use crate::tensor::Tensor;
use std::fmt;

/// Where a problem lies: a path of (node, region) steps into nested regions, then the node
/// (if the problem belongs to one).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Location {
    /// `(node index, region index)` for each region entered, outermost first.
    pub regions: Vec<(usize, usize)>,
    /// The node within the innermost graph, with its op name and `loc`.
    pub node: Option<NodeRef>,
}

/// A node named in an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRef {
    pub index: usize,
    pub op: String,
    pub loc: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, r) in &self.regions {
            write!(f, "node {n} region {r}: ")?;
        }
        match &self.node {
            Some(n) => {
                write!(f, "node {} ({}", n.index, n.op)?;
                if let Some(loc) = &n.loc {
                    write!(f, " at {loc:?}")?;
                }
                f.write_str(")")
            }
            None => f.write_str("graph"),
        }
    }
}

/// One violated invariant, and where.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{at}: {kind}")]
pub struct VerifyError {
    pub at: Location,
    pub kind: VerifyErrorKind,
}

/// Which invariant is violated (numbers refer to the list in this module's docs).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum VerifyErrorKind {
    /// 1.
    #[error("{role} is {value}, out of range (the graph has {len} values)")]
    ValueOutOfRange {
        role: String,
        value: ValueId,
        len: usize,
    },
    /// 2.
    #[error("value {0} is never defined")]
    NeverDefined(ValueId),
    /// 2.
    #[error("value {value} is defined {count} times")]
    DefinedTwice { value: ValueId, count: usize },
    /// 3.
    #[error("input {input} uses {value} before its definition")]
    UseBeforeDef { input: usize, value: ValueId },
    /// 3.
    #[error("input {input} uses {value}, which is never defined")]
    UseOfUndefined { input: usize, value: ValueId },
    /// 4.
    #[error("output {name:?} is {value}, which is never defined")]
    OutputUndefined { name: String, value: ValueId },
    /// 5.
    #[error("constant nodes take no inputs, have one output and no regions")]
    ConstantArity,
    /// 5.
    #[error("constant @c{id} is out of range (the graph has {len} constants)")]
    ConstOutOfRange { id: u32, len: usize },
    /// 5.
    #[error("constant @c{id} is {actual}, but its node declares {declared}")]
    ConstType {
        id: u32,
        declared: TensorType,
        actual: TensorType,
    },
    /// 6.
    #[error("inference failed: {0}")]
    Infer(InferError),
    /// 6.
    #[error("inference gives {inferred} outputs, the node has {recorded}")]
    OutputCount { inferred: usize, recorded: usize },
    /// 6.
    #[error("output {output} ({value}) is recorded as {recorded}, but inference gives {inferred}")]
    TypeMismatch {
        output: usize,
        value: ValueId,
        recorded: TensorType,
        inferred: TensorType,
    },
}

/// Checks every invariant listed in this module's docs; `Err` lists every violation found.
pub fn verify(g: &Graph) -> Result<(), Vec<VerifyError>> {
    let mut errors = Vec::new();
    verify_graph(g, &mut Vec::new(), &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Whether a recorded type agrees with an inferred one (invariant 6).
pub fn compatible(recorded: &TensorType, inferred: &TensorType) -> bool {
    recorded.dtype == inferred.dtype
        && recorded.rank() == inferred.rank()
        && recorded
            .shape
            .iter()
            .zip(&inferred.shape)
            .all(|(r, i)| match (r, i) {
                (Dim::Known(a), Dim::Known(b)) => a == b,
                _ => true,
            })
}

fn verify_graph(g: &Graph, path: &mut Vec<(usize, usize)>, errors: &mut Vec<VerifyError>) {
    let n = g.values.len();
    let in_range = |v: ValueId| (v.0 as usize) < n;
    let graph_at = |path: &[(usize, usize)]| Location {
        regions: path.to_vec(),
        node: None,
    };
    let node_at = |path: &[(usize, usize)], i: usize, node: &Node| Location {
        regions: path.to_vec(),
        node: Some(NodeRef {
            index: i,
            op: node.op.name(),
            loc: node.loc.clone(),
        }),
    };

    // How often each value is defined, over the whole graph, to tell "later" from "never".
    let mut def_count = vec![0usize; n];
    for v in g
        .inputs
        .iter()
        .map(|p| p.value)
        .chain(g.nodes.iter().flat_map(|nd| nd.outputs.iter().copied()))
    {
        if in_range(v) {
            def_count[v.0 as usize] += 1;
        }
    }
    // The tensor behind each value a constant node defines, as `Graph::const_value` finds it
    // (the first such node), computed once rather than by a search per input.
    let mut const_of: Vec<Option<&Tensor>> = vec![None; n];
    for nd in &g.nodes {
        if let (Op::Constant { id }, Some(&v)) = (&nd.op, nd.outputs.first())
            && in_range(v)
            && const_of[v.0 as usize].is_none()
        {
            const_of[v.0 as usize] = g.consts.get(*id as usize);
        }
    }

    let mut defined = vec![false; n];
    for (i, p) in g.inputs.iter().enumerate() {
        if in_range(p.value) {
            defined[p.value.0 as usize] = true;
        } else {
            errors.push(VerifyError {
                at: graph_at(path),
                kind: VerifyErrorKind::ValueOutOfRange {
                    role: format!("graph input {i} ({:?})", p.name),
                    value: p.value,
                    len: n,
                },
            });
        }
    }

    for (ni, node) in g.nodes.iter().enumerate() {
        let mut push = |kind| {
            errors.push(VerifyError {
                at: node_at(path, ni, node),
                kind,
            })
        };
        let mut inputs_ok = true;
        for (i, v) in node.inputs.iter().enumerate() {
            let Some(v) = *v else { continue };
            if !in_range(v) {
                inputs_ok = false;
                push(VerifyErrorKind::ValueOutOfRange {
                    role: format!("input {i}"),
                    value: v,
                    len: n,
                });
            } else if !defined[v.0 as usize] {
                push(if def_count[v.0 as usize] > 0 {
                    VerifyErrorKind::UseBeforeDef { input: i, value: v }
                } else {
                    VerifyErrorKind::UseOfUndefined { input: i, value: v }
                });
            }
        }
        for (i, &v) in node.outputs.iter().enumerate() {
            if !in_range(v) {
                push(VerifyErrorKind::ValueOutOfRange {
                    role: format!("output {i}"),
                    value: v,
                    len: n,
                });
            }
        }

        match node.op {
            Op::Constant { id } => {
                if !node.inputs.is_empty() || node.outputs.len() != 1 || !node.regions.is_empty() {
                    push(VerifyErrorKind::ConstantArity);
                }
                match g.consts.get(id as usize) {
                    None => push(VerifyErrorKind::ConstOutOfRange {
                        id,
                        len: g.consts.len(),
                    }),
                    Some(t) => {
                        let actual = TensorType::fixed(t.dtype(), t.shape());
                        if let Some(declared) = node
                            .outputs
                            .first()
                            .and_then(|v| g.values.get(v.0 as usize))
                            && (declared.dtype != actual.dtype || declared.shape != actual.shape)
                        {
                            push(VerifyErrorKind::ConstType {
                                id,
                                declared: declared.clone(),
                                actual,
                            });
                        }
                    }
                }
            }
            ref op if inputs_ok => {
                let types: Vec<Option<TensorType>> = node
                    .inputs
                    .iter()
                    .map(|v| v.map(|v| g.values[v.0 as usize].clone()))
                    .collect();
                let consts: Vec<Option<&Tensor>> = node
                    .inputs
                    .iter()
                    .map(|v| v.and_then(|v| const_of[v.0 as usize]))
                    .collect();
                let cx = InferCx {
                    inputs: &types,
                    consts: &consts,
                    regions: &node.regions,
                    n_outputs: node.outputs.len(),
                };
                match op.infer(&cx) {
                    Err(e) => push(VerifyErrorKind::Infer(e)),
                    Ok(inferred) if inferred.len() != node.outputs.len() => {
                        push(VerifyErrorKind::OutputCount {
                            inferred: inferred.len(),
                            recorded: node.outputs.len(),
                        })
                    }
                    Ok(inferred) => {
                        for (i, (&v, inf)) in node.outputs.iter().zip(&inferred).enumerate() {
                            if let Some(rec) = g.values.get(v.0 as usize)
                                && !compatible(rec, inf)
                            {
                                push(VerifyErrorKind::TypeMismatch {
                                    output: i,
                                    value: v,
                                    recorded: rec.clone(),
                                    inferred: inf.clone(),
                                });
                            }
                        }
                    }
                }
            }
            _ => {}
        }

        for &v in &node.outputs {
            if in_range(v) {
                defined[v.0 as usize] = true;
            }
        }
        for (ri, region) in node.regions.iter().enumerate() {
            path.push((ni, ri));
            verify_graph(region, path, errors);
            path.pop();
        }
    }

    for (i, p) in g.outputs.iter().enumerate() {
        let kind = if !in_range(p.value) {
            VerifyErrorKind::ValueOutOfRange {
                role: format!("graph output {i} ({:?})", p.name),
                value: p.value,
                len: n,
            }
        } else if def_count[p.value.0 as usize] == 0 {
            VerifyErrorKind::OutputUndefined {
                name: p.name.clone(),
                value: p.value,
            }
        } else {
            continue;
        };
        errors.push(VerifyError {
            at: graph_at(path),
            kind,
        });
    }
    for (v, &count) in def_count.iter().enumerate() {
        let value = ValueId(u32::try_from(v).expect("value tables hold fewer than 2^32 values"));
        let kind = match count {
            0 => VerifyErrorKind::NeverDefined(value),
            1 => continue,
            count => VerifyErrorKind::DefinedTwice { value, count },
        };
        errors.push(VerifyError {
            at: graph_at(path),
            kind,
        });
    }
}
