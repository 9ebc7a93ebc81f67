//! Constant folding: evaluates nodes whose inputs are all constants with the reference
//! interpreter and replaces them by `constant` nodes.
//!
//! `Shape` and `Size` fold as soon as their input's shape is static, constant or not: that is
//! what turns in-graph shape arithmetic into constants once the input shapes are bound. What is
//! *not* folded, on purpose:
//! - results over `FoldPolicy::max_elements` elements (an `Expand` to a large activation-sized
//!   tensor would bloat the model and the compile time for nothing);
//! - the quant family (unless asked): `DequantizeLinear` of int8 weights is how a quantized model
//!   says "this weight is int8"; folding it would store f32 weights and lose that;
//! - nondeterministic ops (random generators), whose value must differ per run;
//! - `Shape`/`Size` of a non-constant value inside a region, whose recorded input types are the
//!   region's declared contract and need not hold for every iteration;
//! - nodes the interpreter cannot evaluate: left alone and counted in `Stats::skipped`.

use crate::infer::{Refined, refine};
use crate::sweep::{self, ConstIndex, Tally, site};
use crate::{EvalFn, PassError};
use mlc_interp::EvalCx;
use mlc_ir::ops::MovementOp;
use mlc_ir::{DType, Graph, Node, Op, Tensor, TensorType};

/// What folding may do.
#[derive(Debug, Clone)]
pub struct FoldPolicy {
    /// The most elements (over all outputs) a folded node may produce.
    pub max_elements: usize,
    /// Whether quant-family ops with constant inputs fold too.
    pub fold_quant: bool,
    /// How to evaluate a node.
    pub eval: EvalFn,
}

impl Default for FoldPolicy {
    fn default() -> Self {
        FoldPolicy {
            max_elements: 1 << 20,
            fold_quant: false,
            eval: mlc_interp::eval_op,
        }
    }
}

/// Folds what can be folded in one forward sweep over `graph` and its regions, without
/// refining types first. Returns how many nodes became constants.
pub fn fold(graph: &mut Graph, policy: &FoldPolicy) -> Result<usize, PassError> {
    let mut tally = Tally::default();
    sweep::sweep(
        graph,
        &sweep::Mode {
            infer: false,
            fold: Some(policy),
        },
        true,
        "",
        &mut tally,
    )?;
    Ok(tally.folded)
}

/// Ops that must not fold because each run draws new values.
fn is_nondeterministic(name: &str) -> bool {
    ["random", "bernoulli", "multinomial"]
        .iter()
        .any(|k| name.contains(k))
}

/// Evaluates `node` if it can and should be folded; returns its output tensors.
pub(crate) fn try_fold(
    node: &Node,
    values: &[TensorType],
    consts: &[Tensor],
    index: &ConstIndex,
    policy: &FoldPolicy,
    top: bool,
    at: &str,
    i: usize,
    tally: &mut Tally,
) -> Result<Option<Vec<Tensor>>, PassError> {
    if matches!(node.op, Op::Constant { .. })
        || matches!(node.op, Op::Quant(_)) && !policy.fold_quant
    {
        return Ok(None);
    }
    let args: Option<Vec<Option<&Tensor>>> = node
        .inputs
        .iter()
        .map(|v| match v {
            None => Some(None),
            Some(v) => index[v.0 as usize].map(|c| Some(&consts[c as usize])),
        })
        .collect();
    let name = node.op.name();
    if is_nondeterministic(&name) {
        return Ok(None);
    }
    let Some(args) = args else {
        if top && let Some(t) = shape_of(node, values) {
            check(node, values, std::slice::from_ref(&t), at, i)?;
            return Ok(Some(vec![t]));
        }
        return Ok(None);
    };
    let output_types: Vec<TensorType> = node
        .outputs
        .iter()
        .map(|v| values[v.0 as usize].clone())
        .collect();
    // Skip before evaluating where the recorded types already tell the result is too big.
    let predicted: Option<usize> = output_types
        .iter()
        .map(|t| t.static_shape().map(|s| s.iter().product::<usize>()))
        .sum();
    if predicted.is_some_and(|n| n > policy.max_elements) {
        return Ok(None);
    }
    let cx = EvalCx {
        regions: &node.regions,
        output_types: &output_types,
    };
    let tensors = match (policy.eval)(&node.op, &args, &cx) {
        Ok(t) => t,
        Err(e) => {
            tally.skip("eval", &node.op, || e.to_string());
            return Ok(None);
        }
    };
    if tensors.iter().map(Tensor::len).sum::<usize>() > policy.max_elements {
        return Ok(None);
    }
    check(node, values, &tensors, at, i)?;
    Ok(Some(tensors))
}

/// Checks folded tensors against the node's recorded output types.
fn check(
    node: &Node,
    values: &[TensorType],
    tensors: &[Tensor],
    at: &str,
    i: usize,
) -> Result<(), PassError> {
    if tensors.len() != node.outputs.len() {
        return Err(PassError::FoldMismatch {
            at: site(at, i, node),
            expected: format!("{} outputs", node.outputs.len()),
            got: format!("{} outputs", tensors.len()),
        });
    }
    for (v, t) in node.outputs.iter().zip(tensors) {
        let recorded = &values[v.0 as usize];
        let exact = TensorType::fixed(t.dtype(), t.shape());
        if refine(recorded, &exact) == Refined::Conflict {
            return Err(PassError::FoldMismatch {
                at: site(at, i, node),
                expected: format!("{v}: {recorded}"),
                got: exact.to_string(),
            });
        }
    }
    Ok(())
}

/// Replaces node `i` by one `constant` node per output, defining the same values so that no use
/// needs rewriting. Returns how many nodes now stand where node `i` was.
pub(crate) fn replace(
    nodes: &mut Vec<Node>,
    i: usize,
    values: &mut [TensorType],
    consts: &mut Vec<Tensor>,
    index: &mut ConstIndex,
    tensors: Vec<Tensor>,
) -> usize {
    let loc = nodes[i].loc.clone();
    let outputs = nodes[i].outputs.clone();
    let n = outputs.len();
    let mut new = Vec::with_capacity(n);
    for (v, t) in outputs.into_iter().zip(tensors) {
        let ty = &mut values[v.0 as usize];
        *ty = TensorType {
            quant: ty.quant.take(),
            ..TensorType::fixed(t.dtype(), t.shape())
        };
        let id = graph_const(consts, t);
        index[v.0 as usize] = Some(id);
        new.push(Node {
            op: Op::Constant { id },
            inputs: vec![],
            outputs: vec![v],
            regions: vec![],
            loc: loc.clone(),
        });
    }
    nodes.splice(i..=i, new);
    n
}

fn graph_const(consts: &mut Vec<Tensor>, t: Tensor) -> u32 {
    let id = u32::try_from(consts.len()).expect("fewer than 2^32 constants");
    consts.push(t);
    id
}

/// `Shape`/`Size` of a value whose shape is static, whether or not the value is constant.
fn shape_of(node: &Node, values: &[TensorType]) -> Option<Tensor> {
    let [Some(x)] = node.inputs[..] else {
        return None;
    };
    let dims = values[x.0 as usize].static_shape()?;
    let t = match &node.op {
        Op::Movement(MovementOp::Size) => {
            Tensor::scalar(i64::try_from(dims.iter().product::<usize>()).ok()?)
        }
        Op::Movement(MovementOp::Shape { start, end }) => {
            // The importer normalizes the bounds against the rank; clamping keeps a stale
            // attribute from indexing out of range.
            let end = (*end).min(dims.len());
            let picked: Vec<i64> = dims[(*start).min(end)..end]
                .iter()
                .map(|&d| d as i64)
                .collect();
            Tensor::from_vec(&[picked.len()], picked).ok()?
        }
        _ => return None,
    };
    // The recorded output dtype decides (ONNX says i64; an IR may choose another integer).
    let out = node.outputs.first()?;
    match values[out.0 as usize].dtype {
        DType::I64 => Some(t),
        d if d.is_int() => t.cast(d).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{policy, sym, ty};
    use mlc_ir::ops::{ControlOp, EwOp, QuantOp};
    use mlc_ir::{Dim, Port};

    fn output(g: &mut Graph, v: mlc_ir::ValueId) {
        let name = format!("o{}", g.outputs.len());
        g.outputs.push(Port { value: v, name });
    }

    fn add(
        g: &mut Graph,
        a: mlc_ir::ValueId,
        b: mlc_ir::ValueId,
        t: TensorType,
    ) -> mlc_ir::ValueId {
        g.add_node(
            Op::Ew(EwOp::Add),
            vec![Some(a), Some(b)],
            vec![t],
            vec![],
            None,
        )[0]
    }

    #[test]
    fn folds_constant_subgraphs_and_keeps_the_rest() {
        let mut g = Graph::new();
        let x = g.add_input("x", ty(DType::F32, vec![sym("n")]));
        let a = g.add_constant(Tensor::from_vec(&[3], vec![1f32, -2., 3.]).expect("3 elements"));
        let b = g.add_constant(Tensor::scalar(10f32));
        let s = add(&mut g, a, b, ty(DType::F32, vec![Dim::Unknown]));
        let r = g.add_node(
            Op::Ew(EwOp::Cast { to: DType::I64 }),
            vec![Some(s)],
            vec![ty(DType::I64, vec![Dim::Unknown])],
            vec![],
            None,
        )[0];
        let y = add(&mut g, x, s, ty(DType::F32, vec![sym("n")]));
        output(&mut g, r);
        output(&mut g, y);

        assert_eq!(fold(&mut g, &policy()), Ok(2));
        let r_const = g.const_value(r).expect("cast folded");
        assert_eq!(r_const.to_i64_vec().ok(), Some(vec![11, 8, 13]));
        assert_eq!(g.ty(r).to_string(), "i64[3]");
        assert_eq!(g.ty(s).to_string(), "f32[3]");
        assert!(g.const_value(y).is_none());
        // The sweep is in order, so a second one finds nothing left.
        assert_eq!(fold(&mut g, &policy()), Ok(0));
    }

    #[test]
    fn reports_a_result_that_contradicts_the_recorded_type() {
        let mut g = Graph::new();
        let a = g.add_constant(Tensor::from_vec(&[2], vec![1f32, 2.]).expect("2 elements"));
        let r = g.add_node(
            Op::Ew(EwOp::Relu),
            vec![Some(a)],
            vec![ty(DType::F32, vec![Dim::Known(3)])],
            vec![],
            None,
        )[0];
        output(&mut g, r);
        let e = fold(&mut g, &policy()).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("node 1 (ew.relu): folding gave f32[2] where %1: f32[3] was recorded")
        );
    }

    #[test]
    fn respects_the_size_limit_and_the_quant_family() {
        let mut g = Graph::new();
        let a = g.add_constant(Tensor::from_vec(&[5], vec![1i64; 5]).expect("5 elements"));
        let big = add(&mut g, a, a, ty(DType::I64, vec![Dim::Known(5)]));
        let xq = g.add_constant(Tensor::from_vec(&[2], vec![-2i8, 4]).expect("2 elements"));
        let scale = g.add_constant(Tensor::scalar(0.5f32));
        let dq = Op::Quant(QuantOp::Dequantize {
            axis: 0,
            block_size: 0,
            to: DType::F32,
        });
        let f = g.add_node(
            dq,
            vec![Some(xq), Some(scale)],
            vec![ty(DType::F32, vec![Dim::Known(2)])],
            vec![],
            None,
        )[0];
        output(&mut g, big);
        output(&mut g, f);
        let small = FoldPolicy {
            max_elements: 4,
            ..policy()
        };
        assert_eq!(fold(&mut g, &small), Ok(0));
        let with_quant = FoldPolicy {
            fold_quant: true,
            ..policy()
        };
        assert_eq!(fold(&mut g, &with_quant), Ok(2));
        assert_eq!(
            g.const_value(f).and_then(|t| t.to_f64_vec().ok()),
            Some(vec![-1., 2.])
        );
    }

    #[test]
    fn leaves_nodes_the_evaluator_rejects() {
        let mut g = Graph::new();
        let a = g.add_constant(Tensor::scalar(1i64));
        let b = g.add_constant(Tensor::scalar(1f32));
        let s = add(&mut g, a, b, ty(DType::I64, vec![]));
        output(&mut g, s);
        let mut tally = Tally::default();
        let mode = sweep::Mode {
            infer: false,
            fold: Some(&policy()),
        };
        sweep::sweep(&mut g, &mode, true, "", &mut tally).expect("no contradiction");
        assert_eq!(tally.folded, 0);
        let skipped: Vec<(&String, &str)> = tally
            .skipped
            .iter()
            .map(|(k, s)| (k, s.reason.as_str()))
            .collect();
        assert_eq!(skipped, [(&"eval ew.add".to_string(), "dtype mismatch")]);
    }

    /// `control.if` on a constant condition: a multi-output node with regions.
    #[test]
    fn folds_nodes_with_regions_only_on_constant_inputs() {
        let branch = |v: f32| {
            let mut r = Graph::new();
            let a = r.add_constant(Tensor::scalar(v));
            let b = r.add_constant(Tensor::scalar(v > 0.0));
            r.outputs = vec![
                Port {
                    value: a,
                    name: "a".into(),
                },
                Port {
                    value: b,
                    name: "b".into(),
                },
            ];
            r
        };
        let mut g = Graph::new();
        let x = g.add_input("x", ty(DType::Bool, vec![]));
        let cond = g.add_constant(Tensor::scalar(false));
        let types = || vec![ty(DType::F32, vec![]), ty(DType::Bool, vec![])];
        let op = Op::Control(ControlOp::If {
            then_captures: 0,
            else_captures: 0,
        });
        let outs = g.add_node(
            op.clone(),
            vec![Some(cond)],
            types(),
            vec![branch(1.0), branch(-1.0)],
            None,
        );
        let kept = g.add_node(
            op,
            vec![Some(x)],
            types(),
            vec![branch(1.0), branch(-1.0)],
            None,
        );
        for v in outs.iter().chain(&kept) {
            output(&mut g, *v);
        }
        assert_eq!(fold(&mut g, &policy()), Ok(1));
        let names: Vec<String> = g.nodes.iter().map(|n| n.op.name()).collect();
        assert_eq!(names, ["constant", "constant", "constant", "control.if"]);
        assert_eq!(g.const_value(outs[0]), Some(&Tensor::scalar(-1f32)));
        assert_eq!(g.const_value(outs[1]), Some(&Tensor::scalar(false)));
    }
}
