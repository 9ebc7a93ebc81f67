//! The lossless round trip between a [`Graph`] and a [`RecExpr`] of [`MlcNode`]s.
//!
//! `to_expr` walks the nodes in their (topological) order, so the expression lists them in the
//! same order; the graph's outputs become the root `(graph ...)` node, last. Multi-output ops
//! get one `(out i x)` projection per output. `from_expr` rebuilds a graph from whatever part of
//! an expression the root reaches: the graph inputs as they were, one `constant` node per
//! constant used (the table compacted to the ones used, in first-use order), every op with its
//! recorded types, regions and location. Converting the result again gives the same graph.

use super::analysis::Tables;
use super::lang::{MlcNode, OpInfo, OpRef};
use egg::{Id, Language, RecExpr};
use mlc_ir::{Graph, Node, Op, Port, Tensor, TensorType, ValueId};

/// Why a graph or an expression could not be converted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    #[error("node {node} ({op}) uses {value}, which is not defined before it")]
    Undefined {
        node: usize,
        op: String,
        value: ValueId,
    },
    #[error("node {node} ({op}) has no outputs")]
    NoOutputs { node: usize, op: String },
    #[error("graph output {0:?} is not defined")]
    UndefinedOutput(String),
    #[error("constant @{0} is not in the table")]
    MissingConst(u32),
    #[error("the expression is malformed: {0}")]
    Malformed(String),
}

/// Converts a graph to an expression and the tables its leaves refer to. The graph is consumed
/// so that the constant table moves rather than being copied.
pub fn to_expr(graph: Graph) -> Result<(RecExpr<MlcNode>, Tables), ConvertError> {
    // Every value id must index the value table; checked once here so that the indexing
    // below cannot panic on a graph that was never verified.
    let n_values = graph.values.len();
    let in_range = |v: &ValueId| (v.0 as usize) < n_values;
    let ports_ok = graph
        .inputs
        .iter()
        .chain(&graph.outputs)
        .all(|p| in_range(&p.value));
    let nodes_ok = graph
        .nodes
        .iter()
        .all(|n| n.outputs.iter().all(in_range) && n.inputs.iter().flatten().all(in_range));
    if !(ports_ok && nodes_ok) {
        return Err(ConvertError::Malformed(
            "a value id is outside the value table".into(),
        ));
    }
    let Graph {
        values,
        nodes,
        inputs,
        outputs,
        consts,
    } = graph;
    let mut expr = RecExpr::default();
    let mut ids: Vec<Option<Id>> = vec![None; values.len()];
    let mut tables = Tables {
        inputs: inputs
            .iter()
            .map(|p| (p.clone(), values[p.value.0 as usize].clone()))
            .collect(),
        outputs: outputs.iter().map(|p| p.name.clone()).collect(),
        const_types: consts
            .iter()
            .map(|t| TensorType::fixed(t.dtype(), t.shape()))
            .collect(),
        consts,
        ..Tables::default()
    };
    for (i, p) in inputs.iter().enumerate() {
        ids[p.value.0 as usize] = Some(expr.add(MlcNode::Input(index(i))));
    }
    let mut absent = None;
    for (n, node) in nodes.into_iter().enumerate() {
        let Node {
            op,
            inputs,
            outputs,
            regions,
            loc,
        } = node;
        if let Op::Constant { id } = op {
            let out = outputs.first().ok_or_else(|| ConvertError::NoOutputs {
                node: n,
                op: "constant".into(),
            })?;
            // The constant node's recorded type wins over the table's plain one: it may carry
            // quantization parameters.
            let slot = tables
                .const_types
                .get_mut(id as usize)
                .ok_or(ConvertError::MissingConst(id))?;
            *slot = values[out.0 as usize].clone();
            ids[out.0 as usize] = Some(expr.add(MlcNode::Const(id)));
            continue;
        }
        let mut children = Vec::with_capacity(inputs.len());
        for v in &inputs {
            let id = match v {
                Some(v) => ids.get(v.0 as usize).copied().flatten().ok_or_else(|| {
                    ConvertError::Undefined {
                        node: n,
                        op: op.name(),
                        value: *v,
                    }
                })?,
                None => *absent.get_or_insert_with(|| expr.add(MlcNode::Absent)),
            };
            children.push(id);
        }
        if outputs.is_empty() {
            return Err(ConvertError::NoOutputs {
                node: n,
                op: op.name(),
            });
        }
        let types: Vec<TensorType> = outputs
            .iter()
            .map(|o| values[o.0 as usize].clone())
            .collect();
        let multi = outputs.len() > 1;
        let info = OpInfo::new(op, regions, types, loc, vec![]);
        let id = expr.add(MlcNode::Op(OpRef::new(info), children));
        if multi {
            for (k, o) in outputs.iter().enumerate() {
                ids[o.0 as usize] = Some(expr.add(MlcNode::Out {
                    index: index(k),
                    of: [id],
                }));
            }
        } else {
            ids[outputs[0].0 as usize] = Some(id);
        }
    }
    let mut roots = Vec::with_capacity(outputs.len());
    for p in &outputs {
        roots.push(
            ids.get(p.value.0 as usize)
                .copied()
                .flatten()
                .ok_or_else(|| ConvertError::UndefinedOutput(p.name.clone()))?,
        );
    }
    expr.add(MlcNode::Graph(roots));
    Ok((expr, tables))
}

/// What `from_expr` built besides the graph: for each graph node, the e-node info it came
/// from (`None` for `constant` nodes), for reports.
pub type Origins = Vec<Option<OpRef>>;

/// Rebuilds a graph from the part of `expr` its root (the last node, a `(graph ...)`) reaches.
pub fn from_expr(
    expr: &RecExpr<MlcNode>,
    tables: Tables,
) -> Result<(Graph, Origins), ConvertError> {
    let nodes = expr.as_ref();
    let root = nodes
        .len()
        .checked_sub(1)
        .ok_or_else(|| ConvertError::Malformed("empty expression".into()))?;
    let mut reached = vec![false; nodes.len()];
    reached[root] = true;
    for i in (0..nodes.len()).rev() {
        if reached[i] {
            for c in nodes[i].children() {
                reached[usize::from(*c)] = true;
            }
        }
    }

    let Tables {
        inputs,
        outputs,
        consts,
        const_types,
        ..
    } = tables;
    let mut g = Graph::new();
    let mut origins = Vec::new();
    let input_values: Vec<ValueId> = inputs
        .into_iter()
        .map(|(p, t)| g.add_input(p.name, t))
        .collect();
    let mut consts: Vec<Option<Tensor>> = consts.into_iter().map(Some).collect();
    // Per expression node: its value, or for a multi-output op, all of its values.
    let mut vals: Vec<Vec<Option<ValueId>>> = vec![vec![]; nodes.len()];
    let child = |vals: &[Vec<Option<ValueId>>], c: Id| -> Result<Option<ValueId>, ConvertError> {
        match vals.get(usize::from(c)).map(Vec::as_slice) {
            Some([v]) => Ok(*v),
            _ => Err(ConvertError::Malformed(format!(
                "operand {c} is not a single value"
            ))),
        }
    };
    for (i, node) in nodes.iter().enumerate() {
        if !reached[i] {
            continue;
        }
        vals[i] = match node {
            MlcNode::Input(k) => vec![Some(*input_values.get(*k as usize).ok_or_else(|| {
                ConvertError::Malformed(format!("graph input {k} does not exist"))
            })?)],
            MlcNode::Const(k) => {
                let t = consts
                    .get_mut(*k as usize)
                    .and_then(Option::take)
                    .ok_or(ConvertError::MissingConst(*k))?;
                let ty = const_types
                    .get(*k as usize)
                    .cloned()
                    .unwrap_or_else(|| TensorType::fixed(t.dtype(), t.shape()));
                let id = g.add_const(t);
                let out = g.add_node(Op::Constant { id: id.0 }, vec![], vec![ty], vec![], None);
                origins.push(None);
                vec![Some(out[0])]
            }
            MlcNode::Absent => vec![None],
            MlcNode::Out { index, of } => {
                let v = vals
                    .get(usize::from(of[0]))
                    .and_then(|vs| vs.get(*index as usize))
                    .copied()
                    .flatten()
                    .ok_or_else(|| {
                        ConvertError::Malformed(format!("output {index} of {} missing", of[0]))
                    })?;
                vec![Some(v)]
            }
            MlcNode::Op(info, children) => {
                let inputs = children
                    .iter()
                    .map(|c| child(&vals, *c))
                    .collect::<Result<Vec<_>, _>>()?;
                let outs = g.add_node(
                    info.op.clone(),
                    inputs,
                    info.types.clone(),
                    info.regions.clone(),
                    info.loc.clone(),
                );
                origins.push(Some(info.clone()));
                outs.into_iter().map(Some).collect()
            }
            MlcNode::Graph(children) => {
                if children.len() != outputs.len() {
                    return Err(ConvertError::Malformed(format!(
                        "{} graph outputs for {} names",
                        children.len(),
                        outputs.len()
                    )));
                }
                for (c, name) in children.iter().zip(&outputs) {
                    let value = child(&vals, *c)?.ok_or_else(|| {
                        ConvertError::Malformed(format!("graph output {name:?} is absent"))
                    })?;
                    g.outputs.push(Port {
                        value,
                        name: name.clone(),
                    });
                }
                vec![]
            }
        };
    }
    Ok((g, origins))
}

fn index(i: usize) -> u32 {
    u32::try_from(i).expect("fewer than 2^32 inputs or outputs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::{parse_graph, print_graph, verify};

    fn round_trip(g: Graph) -> Graph {
        let (expr, tables) = to_expr(g).expect("converts");
        from_expr(&expr, tables).expect("converts back").0
    }

    fn check(src: &str) {
        let g = parse_graph(src).expect("parses");
        let once = round_trip(g.clone());
        assert!(verify(&once).is_ok(), "{once}");
        assert_eq!(once.op_count(), g.op_count());
        let twice = round_trip(once.clone());
        assert_eq!(print_graph(&twice), print_graph(&once));
    }

    #[test]
    fn single_and_multi_output_ops_constants_and_absent_operands() {
        check(
            r#"graph (%0: f32[2,6] "x") -> (%5 "a", %4 "b", %0 "x") {
  @c0 = const f32[] [0.0]
  %1 = constant @c0 : f32[]
  %2 = ew.clip(%0, %1, _) : f32[2,6]
  %3, %4 = movement.split {"axis":1,"sizes":[2,4]} (%2) : f32[2,2], f32[2,4]
  %5 = ew.relu(%3) : f32[2,2] loc("Relu_7")
}
"#,
        );
    }

    #[test]
    fn composite_bodies_are_kept() {
        check(
            r#"graph (%0: f32[3] "x") -> (%1 "y") {
  %1 = control.composite {"kind":"neg+relu"} (%0) : f32[3] {
    graph (%0: f32[3] "a") -> (%2 "r") {
      %1 = ew.neg(%0) : f32[3]
      %2 = ew.relu(%1) : f32[3]
    }
  }
}
"#,
        );
    }

    #[test]
    fn a_graph_is_printed_the_same_after_a_round_trip() {
        // Inputs first, nodes in order, constants in first-use order: the canonical numbering.
        let src = r#"graph (%0: f32[2] "x") -> (%3 "y") {
  @c0 = const f32[2] [1.0, 2.0]
  %1 = constant @c0 : f32[2]
  %2 = ew.add(%0, %1) : f32[2]
  %3 = ew.exp(%2) : f32[2]
}
"#;
        let g = round_trip(parse_graph(src).expect("parses"));
        assert_eq!(print_graph(&g), src);
    }

    #[test]
    fn use_before_definition_is_an_error() {
        let mut g = Graph::new();
        let t = TensorType::fixed(mlc_ir::DType::F32, &[1]);
        let x = g.add_input("x", t.clone());
        let later = g.add_value(t.clone());
        let y = g.add_node(
            Op::Ew(mlc_ir::ops::EwOp::Add),
            vec![Some(x), Some(later)],
            vec![t],
            vec![],
            None,
        )[0];
        g.outputs.push(Port {
            value: y,
            name: "y".into(),
        });
        assert!(matches!(to_expr(g), Err(ConvertError::Undefined { .. })));
    }
}
