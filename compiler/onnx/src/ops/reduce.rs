//! Import of ONNX reductions, arg-reductions, softmax-likes, scans, TopK, LpNormalization and
//! the classification losses into the `reduce` family.
//!
//! Opset differences normalized here: reduction axes as an attribute (before opset 18, 13 for
//! ReduceSum) or as an input (after); Softmax/LogSoftmax/Hardmax's 2-D coercion before opset 13
//! (`coerce_2d`) and their default axis (1, then -1); TopK's `k` as an attribute (opset 1) or an
//! input. Axis-like inputs that are constants become attributes; otherwise the IR op keeps them
//! as inputs and the kernel reads them.

use crate::cx::{NodeCx, NodeError, Registry, invalid};
use mlc_ir::ops::reduce::{
    ArgAttrs, CumAttrs, LossReduction, ReduceAttrs, ReduceKind, SoftmaxAttrs, resolve_axes,
};
use mlc_ir::ops::{ReduceOp, norm_axis};
use mlc_ir::{Op, ValueId};

pub fn register(r: &mut Registry) {
    r.add("", "ReduceSum", |cx| reduce(cx, ReduceKind::Sum));
    r.add("", "ReduceMean", |cx| reduce(cx, ReduceKind::Mean));
    r.add("", "ReduceMax", |cx| reduce(cx, ReduceKind::Max));
    r.add("", "ReduceMin", |cx| reduce(cx, ReduceKind::Min));
    r.add("", "ReduceProd", |cx| reduce(cx, ReduceKind::Prod));
    r.add("", "ReduceL1", |cx| reduce(cx, ReduceKind::L1));
    r.add("", "ReduceL2", |cx| reduce(cx, ReduceKind::L2));
    r.add("", "ReduceLogSum", |cx| reduce(cx, ReduceKind::LogSum));
    r.add("", "ReduceLogSumExp", |cx| {
        reduce(cx, ReduceKind::LogSumExp)
    });
    r.add("", "ReduceSumSquare", |cx| {
        reduce(cx, ReduceKind::SumSquare)
    });
    r.add("", "ArgMax", |cx| arg(cx, true));
    r.add("", "ArgMin", |cx| arg(cx, false));
    r.add("", "Softmax", |cx| softmax(cx, ReduceOp::Softmax));
    r.add("", "LogSoftmax", |cx| softmax(cx, ReduceOp::LogSoftmax));
    r.add("", "Hardmax", |cx| softmax(cx, ReduceOp::Hardmax));
    r.add("", "CumSum", |cx| cumulative(cx, ReduceOp::CumSum));
    r.add("", "CumProd", |cx| cumulative(cx, ReduceOp::CumProd));
    r.add("", "TopK", top_k);
    r.add("", "LpNormalization", lp_norm);
    r.add("", "SoftmaxCrossEntropyLoss", |cx| loss(cx, true));
    r.add("", "NegativeLogLikelihoodLoss", |cx| loss(cx, false));
}

fn axis_of(axis: i64, rank: usize) -> Result<usize, NodeError> {
    norm_axis(axis, rank).map_err(|e| NodeError::Attr {
        name: "axis".into(),
        reason: e.to_string(),
    })
}

fn reduce(cx: &mut NodeCx, kind: ReduceKind) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let rank = cx.input_type(0)?.rank();
    let keepdims = cx.attr_int("keepdims", 1)? != 0;
    let noop = cx.attr_int("noop_with_empty_axes", 0)? != 0;
    // Whichever form the node uses: newer opsets pass axes as input 1, older ones as an
    // attribute; both absent means "every axis" (or none, with noop_with_empty_axes).
    let (axes, runtime) = match (cx.opt_input(1), cx.input_const(1)) {
        (Some(_), Some(t)) => (Some(resolve_axes(&t.to_i64_vec()?, rank, noop)?), None),
        (Some(v), None) => (None, Some(v)),
        (None, _) => {
            let attr = cx.attr_ints("axes")?.unwrap_or_default();
            (Some(resolve_axes(&attr, rank, noop)?), None)
        }
    };
    let attrs = ReduceAttrs {
        noop_with_empty_axes: noop && axes.is_none(),
        axes,
        keepdims,
    };
    let mut inputs = vec![Some(x)];
    if runtime.is_some() {
        inputs.push(runtime);
    }
    cx.emit(Op::Reduce(ReduceOp::reduction(kind, attrs)), inputs, 1)
}

fn arg(cx: &mut NodeCx, max: bool) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let rank = cx.input_type(0)?.rank();
    let a = ArgAttrs {
        axis: axis_of(cx.attr_int("axis", 0)?, rank)?,
        keepdims: cx.attr_int("keepdims", 1)? != 0,
        select_last_index: cx.attr_int("select_last_index", 0)? != 0,
    };
    let op = if max {
        ReduceOp::ArgMax(a)
    } else {
        ReduceOp::ArgMin(a)
    };
    Ok(vec![cx.emit1(Op::Reduce(op), vec![x])?])
}

fn softmax(cx: &mut NodeCx, make: fn(SoftmaxAttrs) -> ReduceOp) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let rank = cx.input_type(0)?.rank();
    // Before opset 13 the input is coerced to 2-D at `axis` (default 1); from 13 on the op works
    // along one axis (default -1). The two agree when the axis is the last one.
    let old = cx.opset < 13;
    let axis = axis_of(cx.attr_int("axis", if old { 1 } else { -1 })?, rank)?;
    let coerce_2d = old && axis + 1 < rank;
    Ok(vec![cx.emit1(
        Op::Reduce(make(SoftmaxAttrs { axis, coerce_2d })),
        vec![x],
    )?])
}

fn cumulative(cx: &mut NodeCx, make: fn(CumAttrs) -> ReduceOp) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let rank = cx.input_type(0)?.rank();
    let axis_in = cx.input(1)?;
    let axis = match cx.input_const(1) {
        Some(t) => match t.to_i64_vec()?.as_slice() {
            [a] => Some(axis_of(*a, rank)?),
            _ => return Err(invalid("axis must hold one integer")),
        },
        None => None,
    };
    let attrs = CumAttrs {
        axis,
        exclusive: cx.attr_int("exclusive", 0)? != 0,
        reverse: cx.attr_int("reverse", 0)? != 0,
    };
    let inputs = if axis.is_some() {
        vec![Some(x)]
    } else {
        vec![Some(x), Some(axis_in)]
    };
    cx.emit(Op::Reduce(make(attrs)), inputs, 1)
}

fn top_k(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let rank = cx.input_type(0)?.rank();
    let axis = axis_of(cx.attr_int("axis", -1)?, rank)?;
    let bad_k = || invalid("k must be one non-negative integer");
    // Opset 1 has `k` as an attribute; from opset 10 it is input 1.
    let (k, k_in) = match (cx.opt_input(1), cx.input_const(1)) {
        (Some(_), Some(t)) => match t.to_i64_vec()?.as_slice() {
            [k] => (Some(usize::try_from(*k).map_err(|_| bad_k())?), None),
            _ => return Err(bad_k()),
        },
        (Some(v), None) => (None, Some(v)),
        (None, _) => {
            let k = cx
                .attr_int_opt("k")?
                .ok_or_else(|| invalid("TopK needs k"))?;
            (Some(usize::try_from(k).map_err(|_| bad_k())?), None)
        }
    };
    let op = ReduceOp::TopK {
        axis,
        k,
        largest: cx.attr_int("largest", 1)? != 0,
        sorted: cx.attr_int("sorted", 1)? != 0,
    };
    let mut inputs = vec![Some(x)];
    if k_in.is_some() {
        inputs.push(k_in);
    }
    cx.emit(Op::Reduce(op), inputs, 2)
}

fn lp_norm(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let rank = cx.input_type(0)?.rank();
    let axis = axis_of(cx.attr_int("axis", -1)?, rank)?;
    let p = match cx.attr_int("p", 2)? {
        1 => 1,
        2 => 2,
        p => {
            return Err(NodeError::Attr {
                name: "p".into(),
                reason: format!("must be 1 or 2, got {p}"),
            });
        }
    };
    Ok(vec![cx.emit1(
        Op::Reduce(ReduceOp::LpNorm { axis, p }),
        vec![x],
    )?])
}

fn loss(cx: &mut NodeCx, sce: bool) -> Result<Vec<ValueId>, NodeError> {
    let (x, labels, weights) = (cx.input(0)?, cx.input(1)?, cx.opt_input(2));
    let reduction = match cx.attr_str("reduction", "mean")?.as_str() {
        "none" => LossReduction::None,
        "sum" => LossReduction::Sum,
        "mean" => LossReduction::Mean,
        other => {
            return Err(NodeError::Attr {
                name: "reduction".into(),
                reason: format!("unknown value {other:?}"),
            });
        }
    };
    let ignore_index = cx.attr_int_opt("ignore_index")?;
    let op = if sce {
        ReduceOp::SoftmaxCrossEntropy {
            reduction,
            ignore_index,
        }
    } else {
        ReduceOp::NllLoss {
            reduction,
            ignore_index,
        }
    };
    let n_outputs = if sce { cx.n_outputs.clamp(1, 2) } else { 1 };
    cx.emit(
        Op::Reduce(op),
        vec![Some(x), Some(labels), weights],
        n_outputs,
    )
}
