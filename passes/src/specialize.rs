//! Value specialization: graph inputs that feed shape-like operands become constants.
//!
//! Some ops take their output's shape from an operand's *values*: `Reshape`'s shape, `Resize`'s
//! scales and sizes, `Range`'s bounds, `Pad`'s pads, a window's length, a loop's trip count and initial condition.
//! When such an operand is computed from a graph input, no static shape exists until that input's
//! value is known, and the compiled engines (which work on static shapes) cannot lower the graph.
//! A caller that knows the values (`mlc run model.onnx --input ...`, the node-test runner,
//! `mlc compile --input ...`) can specialize: the input's uses are replaced by a constant holding
//! the value, the graph is simplified again, and the returned list is the *guard* the compiled
//! program must check on every run (an artifact refuses other values; it never computes with the
//! baked ones silently).
//!
//! Only *shape-like* operands are followed (the table in [`shape_operands`]): data operands are
//! never specialized, even where an op's output shape depends on them (`NonZero`, `Compress`'s
//! condition, `Unique`): baking data in would turn the program into a constant. The inputs
//! bound are those the backward slice of a non-constant shape-like operand reaches (after
//! simplification, shape computations on input *shapes* are constants already, so the slice
//! holds only computations on input *values*), of at most [`MAX_ELEMENTS`] elements.

use crate::{PassError, simplify};
use mlc_ir::ops::{ControlOp, MovementOp, NnOp, ReduceOp, SignalOp, VisionOp};
use mlc_ir::{Graph, Node, Op, Tensor, ValueId};
use std::collections::BTreeSet;

/// Larger inputs are not parameters but data; they are never baked in.
pub const MAX_ELEMENTS: usize = 4096;

/// Rounds of bind-then-simplify: a bound value can expose another shape operand downstream.
const MAX_ROUNDS: usize = 8;

/// The operands of `op` that ONNX defines as shapes, sizes, scales, counts, axes or pads: values
/// an output shape (or, for `Resize`, the compile-time tables of its lowering) depends on.
pub fn shape_operands(op: &Op) -> &'static [usize] {
    use MovementOp as M;
    use ReduceOp as R;
    match op {
        Op::Movement(
            M::Reshape { .. }
            | M::Split { .. }
            | M::Squeeze { .. }
            | M::Unsqueeze { .. }
            | M::Expand { .. }
            | M::Tile { .. }
            | M::OneHot { .. }
            | M::CenterCropPad { .. },
        ) => &[1],
        Op::Movement(M::Slice { .. }) => &[1, 2, 3, 4],
        Op::Movement(M::Range) => &[0, 1, 2],
        Op::Movement(M::ConstantOfShape { .. }) => &[0],
        Op::Movement(M::Pad { .. }) => &[1, 3],
        Op::Reduce(
            R::Sum(_)
            | R::Mean(_)
            | R::Max(_)
            | R::Min(_)
            | R::Prod(_)
            | R::L1(_)
            | R::L2(_)
            | R::LogSum(_)
            | R::LogSumExp(_)
            | R::SumSquare(_)
            | R::TopK { .. },
        ) => &[1],
        // roi, scales, sizes: the lowering tabulates source indices and weights from all three.
        Op::Nn(NnOp::Resize { .. }) => &[1, 2, 3],
        Op::Signal(
            SignalOp::HannWindow(_) | SignalOp::HammingWindow(_) | SignalOp::BlackmanWindow(_),
        ) => &[0],
        Op::Signal(SignalOp::Dft { .. }) => &[1, 2],
        Op::Signal(SignalOp::Stft { .. }) => &[1, 3],
        Op::Signal(SignalOp::MelWeightMatrix { .. }) => &[0, 1, 2, 3, 4],
        Op::Vision(VisionOp::MaxUnpool { .. }) => &[2],
        Op::Vision(VisionOp::Col2Im { .. }) => &[1, 2],
        Op::Vision(VisionOp::AffineGrid { .. }) => &[1],
        // The trip count and the initial condition decide how many times the body runs, so the
        // length of the scan outputs.
        Op::Control(ControlOp::Loop { .. }) => &[0, 1],
        _ => &[],
    }
}

/// Binds the graph inputs among `values` that feed shape-like operands to their values, and
/// simplifies after each round. Returns the inputs bound, in graph-input order, with their
/// values: the guard the compiled program checks. Inputs nothing shape-like depends on are left
/// alone. Fails on a value whose type contradicts its input's.
pub fn specialize(
    graph: &mut Graph,
    values: &[(String, Tensor)],
) -> Result<Vec<(String, Tensor)>, PassError> {
    let mut bound: BTreeSet<usize> = BTreeSet::new();
    for _ in 0..MAX_ROUNDS {
        let wanted: Vec<usize> = feeding_inputs(graph)
            .into_iter()
            .filter(|i| !bound.contains(i))
            .collect();
        let mut changed = false;
        for i in wanted {
            let port = &graph.inputs[i];
            let Some((_, t)) = values.iter().find(|(n, _)| *n == port.name) else {
                continue;
            };
            if t.len() > MAX_ELEMENTS {
                continue;
            }
            let ty = graph.ty(port.value);
            if t.dtype() != ty.dtype || ty.static_shape().as_deref() != Some(t.shape()) {
                return Err(PassError::ValueMismatch {
                    input: port.name.clone(),
                    declared: ty.to_string(),
                    given: format!("{}{:?}", t.dtype(), t.shape()),
                });
            }
            bind_value(graph, port.value, t.clone());
            bound.insert(i);
            changed = true;
        }
        if !changed {
            break;
        }
        simplify(graph, &[])?;
    }
    Ok(bound
        .into_iter()
        .filter_map(|i| {
            let name = &graph.inputs[i].name;
            values.iter().find(|(n, _)| n == name).cloned()
        })
        .collect())
}

/// The names of the graph inputs whose values shape-like operands depend on: what a caller must
/// give values for (to [`specialize`]) before the graph can have static shapes everywhere.
pub fn shape_inputs(graph: &Graph) -> Vec<String> {
    feeding_inputs(graph)
        .into_iter()
        .map(|i| graph.inputs[i].name.clone())
        .collect()
}

/// Indices of the graph inputs reached backwards from the non-constant shape-like operands.
fn feeding_inputs(graph: &Graph) -> BTreeSet<usize> {
    let producers = graph.producers();
    let mut seen = vec![false; graph.values.len()];
    let mut stack: Vec<ValueId> = Vec::new();
    for n in &graph.nodes {
        for &i in shape_operands(&n.op) {
            if let Some(v) = n.input(i) {
                stack.push(v);
            }
        }
    }
    let mut found = BTreeSet::new();
    while let Some(v) = stack.pop() {
        if std::mem::replace(&mut seen[v.0 as usize], true) {
            continue;
        }
        match producers[v.0 as usize] {
            Some(p) => {
                let node: &Node = &graph.nodes[p];
                // A shape or size depends on its input's shape, never its values: binding the
                // data upstream of one (when its shape is not static, say after a NonZero) would
                // bake data in.
                let stops = matches!(
                    node.op,
                    Op::Constant { .. } | Op::Movement(MovementOp::Shape { .. } | MovementOp::Size)
                );
                if !stops {
                    stack.extend(node.inputs.iter().flatten());
                }
            }
            None => {
                if let Some(i) = graph.inputs.iter().position(|p| p.value == v) {
                    found.insert(i);
                }
            }
        }
    }
    found
}

/// Replaces every use of input value `v` (node operands and graph outputs) by a constant `t`.
/// The input port stays: the program's interface does not change, only what it reads.
fn bind_value(graph: &mut Graph, v: ValueId, t: Tensor) {
    let c = graph.add_constant(t);
    // add_constant appends; constants go first so that the node list stays in order.
    if let Some(node) = graph.nodes.pop() {
        graph.nodes.insert(0, node);
    }
    for n in &mut graph.nodes {
        for x in n.inputs.iter_mut().flatten() {
            if *x == v {
                *x = c;
            }
        }
    }
    for o in &mut graph.outputs {
        if o.value == v {
            o.value = c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::{DType, parse_graph};

    fn names(bound: &[(String, Tensor)]) -> Vec<&str> {
        bound.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn a_run_time_reshape_target_is_bound_and_the_data_is_not() {
        let src = r#"graph (%0: f32[2,6] "x", %1: i64[2] "shape") -> (%2 "y") {
  %2 = movement.reshape {"shape":null,"allowzero":false} (%0, %1) : f32[?,?]
}
"#;
        let mut g = parse_graph(src).expect("parses");
        let x = Tensor::from_vec(&[2, 6], (0..12).map(|v| v as f32).collect()).expect("x");
        let shape = Tensor::from_vec(&[2], vec![3i64, 4]).expect("shape");
        simplify(
            &mut g,
            &[("x".into(), vec![2, 6]), ("shape".into(), vec![2])],
        )
        .expect("simplify");
        assert!(crate::non_static_values(&g).len() == 1);
        let values = [("x".to_string(), x), ("shape".to_string(), shape)];
        let bound = specialize(&mut g, &values).expect("specializes");
        assert_eq!(names(&bound), ["shape"]);
        assert!(crate::non_static_values(&g).is_empty());
        let y = g.outputs[0].value;
        assert_eq!(g.ty(y).to_string(), "f32[3,4]");
        // The data still flows from the input: the program did not become a constant.
        assert!(g.const_value(y).is_none());
        assert_eq!(g.inputs.len(), 2, "the interface keeps both inputs");
    }

    #[test]
    fn computed_shape_operands_bind_the_inputs_they_come_from() {
        // The target of an expand is computed in the graph from a run-time input.
        let src = r#"graph (%0: f32[3,1] "x", %1: i64[2] "s") -> (%4 "y") {
  @c0 = const i64[2] [1, 0]
  %2 = constant @c0 : i64[2]
  %3 = ew.add(%1, %2) : i64[2]
  %4 = movement.expand {"shape":null} (%0, %3) : f32[?,?]
}
"#;
        let mut g = parse_graph(src).expect("parses");
        let s = Tensor::from_vec(&[2], vec![2i64, 4]).expect("s");
        let bound = specialize(&mut g, &[("s".into(), s)]).expect("specializes");
        assert_eq!(names(&bound), ["s"]);
        assert_eq!(g.ty(g.outputs[0].value).to_string(), "f32[3,4]");
    }

    #[test]
    fn data_operands_are_never_bound() {
        // NonZero's output shape depends on its operand, which is data: left alone.
        let src = r#"graph (%0: bool[2,2] "c") -> (%1 "y") {
  %1 = movement.non_zero (%0) : i64[2,?]
}
"#;
        let mut g = parse_graph(src).expect("parses");
        let c = Tensor::from_vec(&[2, 2], vec![true, false, true, true]).expect("c");
        let bound = specialize(&mut g, &[("c".into(), c)]).expect("specializes");
        assert!(bound.is_empty());
        assert_eq!(crate::non_static_values(&g).len(), 1);
    }

    #[test]
    fn the_walk_stops_at_shapes_of_data() {
        // The reshape target is the shape of NonZero's output: known only from the data, which
        // must not be baked in.
        let src = r#"graph (%0: bool[4] "c", %1: f32[4] "x") -> (%4 "y") {
  %2 = movement.non_zero (%0) : i64[1,?]
  %3 = movement.shape {"start":1,"end":2} (%2) : i64[1]
  %4 = movement.reshape {"shape":null,"allowzero":false} (%1, %3) : f32[?]
}
"#;
        let mut g = parse_graph(src).expect("parses");
        let c = Tensor::from_vec(&[4], vec![true, false, true, true]).expect("c");
        let bound = specialize(&mut g, &[("c".into(), c)]).expect("specializes");
        assert!(bound.is_empty());
    }

    #[test]
    fn a_value_of_the_wrong_type_is_an_error() {
        let src = r#"graph (%0: f32[6] "x", %1: i64[2] "shape") -> (%2 "y") {
  %2 = movement.reshape {"shape":null,"allowzero":false} (%0, %1) : f32[?,?]
}
"#;
        let mut g = parse_graph(src).expect("parses");
        let wrong = Tensor::from_vec(&[2], vec![2i32, 3]).expect("shape");
        let err = specialize(&mut g, &[("shape".into(), wrong)]).unwrap_err();
        assert!(matches!(err, PassError::ValueMismatch { .. }), "{err}");
        assert_eq!(DType::I64, g.ty(g.inputs[1].value).dtype);
    }
}
