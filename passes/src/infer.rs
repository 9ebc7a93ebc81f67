//! Type refinement: re-runs each op's inference, in order, with the current input types and
//! constant inputs, and keeps whatever is more specific than the recorded output types.
//!
//! Types only ever get more specific (Unknown < Sym < Known per dim), so the refinement is
//! monotone and repeated sweeps converge. A recorded type is never made vaguer: an op whose
//! inference is weaker than what the importer recorded (for example from ONNX `value_info`)
//! keeps the recorded dims. A contradiction (two different known sizes, another dtype or rank)
//! is an error: one of the two types is wrong, and nothing downstream could be trusted.

use crate::PassError;
use crate::sweep::{self, ConstIndex, Tally, site};
use mlc_ir::{Dim, Graph, InferCx, Node, Op, Tensor, TensorType, ValueId};

/// Refines the value types of `graph` (and of its regions) in one forward sweep, without
/// folding. Returns how many value types became more specific.
pub fn infer(graph: &mut Graph) -> Result<usize, PassError> {
    let mut tally = Tally::default();
    sweep::sweep(
        graph,
        &sweep::Mode {
            infer: true,
            fold: None,
        },
        true,
        "",
        &mut tally,
    )?;
    Ok(tally.refined)
}

/// Refines operand shapes from result shapes where a result has its operand's shape: along
/// every dim of an `ew` op's result that only one operand gives (the others are 1 there or
/// lack the dim: a single operand, a vector times a scalar). A shape that only the data decides forward (a
/// reduction over axes given at run time) is then taken from what consumes it, ultimately
/// from the graph outputs' recorded shapes: `sqrt(reduce_sum_square(x, axes))`. Only unknown
/// dims are filled; disagreements are left to the forward inference to report. Top level only.
/// Returns how many value types became more specific.
pub fn infer_backward(graph: &mut Graph) -> usize {
    let mut refined = 0;
    for i in (0..graph.nodes.len()).rev() {
        let node = &graph.nodes[i];
        if !matches!(node.op, Op::Ew(_)) || !node.regions.is_empty() {
            continue;
        }
        let [y] = node.outputs.as_slice() else {
            continue;
        };
        let yt = graph.ty(*y).clone();
        let xs: Vec<ValueId> = node.inputs.iter().flatten().copied().collect();
        for (j, &x) in xs.iter().enumerate() {
            let xt = graph.ty(x);
            let Some(lead) = yt.rank().checked_sub(xt.rank()) else {
                continue;
            };
            // Dim `d` of `x` is the result's dim `lead + d` when no other operand has a
            // size other than 1 there: broadcasting took the result's size from `x` alone.
            let shape: Vec<Dim> = (0..xt.rank())
                .map(|d| {
                    let alone = xs.iter().enumerate().all(|(k, &o)| {
                        let ot = graph.ty(o);
                        let at = (lead + d).checked_sub(yt.rank() - ot.rank());
                        k == j || at.is_none_or(|a| ot.shape[a] == Dim::Known(1))
                    });
                    if alone {
                        yt.shape[lead + d].clone()
                    } else {
                        Dim::Unknown
                    }
                })
                .collect();
            if let Refined::More(t) = refine(xt, &TensorType::new(xt.dtype, shape)) {
                graph.values[x.0 as usize] = t;
                refined += 1;
            }
        }
    }
    refined
}

/// How an inferred type compares with the recorded one.
#[derive(Debug, Clone, PartialEq)]
pub enum Refined {
    /// The recorded type is at least as specific.
    Same,
    /// The inferred type makes it more specific: this is the merge of both.
    More(TensorType),
    /// They contradict each other (dtype, rank, or two different known sizes).
    Conflict,
}

/// Merges a recorded and an inferred type, dim by dim, keeping the more specific of each.
pub fn refine(recorded: &TensorType, inferred: &TensorType) -> Refined {
    if recorded.dtype != inferred.dtype || recorded.rank() != inferred.rank() {
        return Refined::Conflict;
    }
    let mut out = recorded.clone();
    let mut changed = false;
    for (d, new) in out.shape.iter_mut().zip(&inferred.shape) {
        match (&*d, new) {
            (Dim::Known(a), Dim::Known(b)) if a != b => return Refined::Conflict,
            (Dim::Known(_), _) | (_, Dim::Unknown) | (Dim::Sym(_), Dim::Sym(_)) => {}
            (Dim::Sym(_) | Dim::Unknown, Dim::Known(_)) | (Dim::Unknown, Dim::Sym(_)) => {
                *d = new.clone();
                changed = true;
            }
        }
    }
    if out.quant.is_none() && inferred.quant.is_some() {
        out.quant.clone_from(&inferred.quant);
        changed = true;
    }
    if changed {
        Refined::More(out)
    } else {
        Refined::Same
    }
}

/// Applies `inferred` to value `v`; returns whether its type changed.
fn apply(
    values: &mut [TensorType],
    v: ValueId,
    inferred: &TensorType,
    at: impl FnOnce() -> String,
) -> Result<bool, PassError> {
    let recorded = &mut values[v.0 as usize];
    match refine(recorded, inferred) {
        Refined::More(t) => {
            *recorded = t;
            Ok(true)
        }
        Refined::Same => Ok(false),
        Refined::Conflict => Err(PassError::TypeConflict {
            at: at(),
            value: v.to_string(),
            recorded: recorded.to_string(),
            inferred: inferred.to_string(),
        }),
    }
}

/// Makes a `constant` node's value type the exact type of its tensor.
pub(crate) fn refine_constant(
    node: &Node,
    t: &Tensor,
    values: &mut [TensorType],
    at: &str,
    i: usize,
    tally: &mut Tally,
) -> Result<bool, PassError> {
    let Some(&v) = node.outputs.first() else {
        return Ok(false);
    };
    let exact = TensorType::fixed(t.dtype(), t.shape());
    let changed = apply(values, v, &exact, || site(at, i, node))?;
    tally.refined += usize::from(changed);
    Ok(changed)
}

/// Re-infers one node; returns whether any output type changed.
pub(crate) fn refine_node(
    node: &Node,
    values: &mut [TensorType],
    consts: &[Tensor],
    index: &ConstIndex,
    at: &str,
    i: usize,
    tally: &mut Tally,
) -> Result<bool, PassError> {
    // Nothing can refine a static type (and a contradiction would show up when folding).
    if node
        .outputs
        .iter()
        .all(|v| values[v.0 as usize].static_shape().is_some())
    {
        return Ok(false);
    }
    let inputs: Vec<Option<TensorType>> = node
        .inputs
        .iter()
        .map(|v| v.map(|v| values[v.0 as usize].clone()))
        .collect();
    let const_inputs: Vec<Option<&Tensor>> = node
        .inputs
        .iter()
        .map(|v| {
            v.and_then(|v| index[v.0 as usize])
                .map(|c| &consts[c as usize])
        })
        .collect();
    let cx = InferCx {
        inputs: &inputs,
        consts: &const_inputs,
        regions: &node.regions,
        n_outputs: node.outputs.len(),
    };
    let inferred = match node.op.infer(&cx) {
        Ok(t) if t.len() == node.outputs.len() => t,
        Ok(t) => {
            let n = t.len();
            tally.skip("infer", &node.op, || {
                format!("inferred {n} outputs for {} values", node.outputs.len())
            });
            return Ok(false);
        }
        Err(e) => {
            tally.skip("infer", &node.op, || e.to_string());
            return Ok(false);
        }
    };
    let mut changed = false;
    for (&v, t) in node.outputs.iter().zip(&inferred) {
        let c = apply(values, v, t, || site(at, i, node))?;
        tally.refined += usize::from(c);
        changed |= c;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{sym, ty};
    use mlc_ir::ops::EwOp;
    use mlc_ir::{DType, Op, Port};

    #[test]
    fn refine_takes_the_more_specific_dim() {
        let r = |a: Vec<Dim>, b: Vec<Dim>| match refine(&ty(DType::F32, a), &ty(DType::F32, b)) {
            Refined::More(t) => t.to_string(),
            other => format!("{other:?}"),
        };
        let (k, u) = (Dim::Known, || Dim::Unknown);
        assert_eq!(
            r(vec![u(), sym("s"), sym("s")], vec![k(3), k(4), u()]),
            "f32[3,4,s]"
        );
        assert_eq!(r(vec![u()], vec![sym("n")]), "f32[n]");
        assert_eq!(r(vec![k(3), sym("a")], vec![u(), sym("b")]), "Same");
        assert_eq!(r(vec![k(3)], vec![k(4)]), "Conflict");
        assert_eq!(r(vec![k(3)], vec![k(3), k(1)]), "Conflict");
        assert_eq!(
            refine(&ty(DType::F32, vec![]), &ty(DType::I64, vec![])),
            Refined::Conflict
        );
    }

    /// `sqrt(reduce_sum_square(x, axes))` with `axes` a graph input: forward inference cannot
    /// tell which dims the reduction keeps, the recorded output type can, through the `sqrt`.
    /// The type of the reduction in `src` after `simplify`.
    fn reduction_type(src: &str) -> String {
        let mut g = mlc_ir::parse_graph(src).expect("test graph");
        crate::simplify(&mut g, &[]).expect("simplify");
        let r = g
            .nodes
            .iter()
            .find(|n| matches!(n.op, Op::Reduce(_)))
            .expect("reduce");
        g.ty(r.outputs[0]).to_string()
    }

    #[test]
    fn operand_shapes_come_back_through_single_operand_elementwise_ops() {
        let src = r#"graph (%0: f32[3,2,2] "x", %1: i64[1] "axes") -> (%3 "y") {
  %2 = reduce.sum_square {"keepdims":true,"noop_with_empty_axes":false} (%0, %1) : f32[?,?,?]
  %3 = ew.sqrt(%2) : f32[3,1,2]
}"#;
        assert_eq!(reduction_type(src), "f32[3,1,2]");
        // A scalar operand broadcasts: the other one has the result's shape.
        let src = r#"graph (%0: f32[3,2,2] "x", %1: i64[1] "axes", %2: f32[] "s") -> (%4 "y") {
  %3 = reduce.sum {"keepdims":true,"noop_with_empty_axes":false} (%0, %1) : f32[?,?,?]
  %4 = ew.mul(%2, %3) : f32[3,1,2]
}"#;
        assert_eq!(reduction_type(src), "f32[3,1,2]");
        // Two full-rank operands: only where `b` has size 1 does the result's size come from
        // the reduction alone.
        let src = r#"graph (%0: f32[3,2,2] "x", %1: i64[1] "axes", %2: f32[3,1,2] "b") -> (%4 "y") {
  %3 = reduce.sum {"keepdims":true,"noop_with_empty_axes":false} (%0, %1) : f32[?,?,?]
  %4 = ew.add(%3, %2) : f32[3,1,2]
}"#;
        assert_eq!(reduction_type(src), "f32[?,1,?]");
    }

    /// `relu(x + y)` with every intermediate type recorded as unknown.
    #[test]
    fn propagates_types_forward_in_one_sweep() {
        let mut g = Graph::new();
        let x = g.add_input("x", ty(DType::F32, vec![Dim::Known(2), Dim::Known(1)]));
        let y = g.add_input("y", ty(DType::F32, vec![sym("n")]));
        let unknown = ty(DType::F32, vec![Dim::Unknown, Dim::Unknown]);
        let s = g.add_node(
            Op::Ew(EwOp::Add),
            vec![Some(x), Some(y)],
            vec![unknown.clone()],
            vec![],
            None,
        )[0];
        let r = g.add_node(
            Op::Ew(EwOp::Relu),
            vec![Some(s)],
            vec![unknown],
            vec![],
            None,
        )[0];
        g.outputs.push(Port {
            value: r,
            name: "r".into(),
        });
        assert_eq!(infer(&mut g), Ok(2));
        assert_eq!(g.ty(r).to_string(), "f32[2,n]");
        assert_eq!(infer(&mut g), Ok(0));
    }

    #[test]
    fn leaves_nodes_it_cannot_infer_and_reports_contradictions() {
        let mut g = Graph::new();
        let x = g.add_input("x", ty(DType::F32, vec![Dim::Known(3), sym("n")]));
        let unknown = ty(DType::F32, vec![Dim::Unknown, Dim::Unknown]);
        // An add with one input fails inference: the node is left alone.
        let a = g.add_node(
            Op::Ew(EwOp::Add),
            vec![Some(x)],
            vec![unknown],
            vec![],
            None,
        )[0];
        // A relu recorded with a size its input contradicts.
        let b5 = ty(DType::F32, vec![Dim::Known(5), Dim::Unknown]);
        let b = g.add_node(Op::Ew(EwOp::Relu), vec![Some(x)], vec![b5], vec![], None)[0];
        g.outputs.push(Port {
            value: a,
            name: "a".into(),
        });
        g.outputs.push(Port {
            value: b,
            name: "b".into(),
        });
        let err = infer(&mut g).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("node 1 (ew.relu): %2 is recorded as f32[5,?] but inferred as f32[3,n]")
        );
        assert_eq!(g.ty(a).to_string(), "f32[?,?]");
    }
}
