//! Import of ONNX control flow (`If`, `Loop`, `Scan`) into the `control` family.
//!
//! The driver imports each graph attribute as a closed region (`NodeCx::subgraph`): the region
//! takes its declared inputs followed by the outer values it captures, which become extra node
//! inputs here. Loop-carried and scan-state types are found by a small fixpoint: the body is
//! imported with the initial values' types, and re-imported with joined (less precise) types
//! until the values it yields fit the types it was given, so the body's types hold on every trip.

use crate::cx::{NodeCx, NodeError, Registry};
use mlc_ir::ops::control::join_types;
use mlc_ir::ops::{ControlOp, InferCx};
use mlc_ir::{DType, Dim, Graph, Op, Port, TensorType, ValueId};

pub fn register(r: &mut Registry) {
    r.add("", "If", if_);
    r.add("", "Loop", loop_);
    r.add("", "Scan", scan);
}

fn invalid(msg: impl Into<String>) -> NodeError {
    NodeError::Invalid(msg.into())
}

fn if_(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let cond = cx.input(0)?;
    let (then_g, then_caps) = cx.subgraph("then_branch", &[])?;
    let (else_g, else_caps) = cx.subgraph("else_branch", &[])?;
    let op = ControlOp::If {
        then_captures: then_caps.len(),
        else_captures: else_caps.len(),
    };
    let mut inputs = vec![Some(cond)];
    inputs.extend(then_caps.into_iter().chain(else_caps).map(Some));
    let n = cx.n_outputs;
    cx.emit_with_regions(Op::Control(op), inputs, vec![then_g, else_g], n)
}

fn output_types(g: &Graph) -> Vec<TensorType> {
    g.outputs.iter().map(|p| g.ty(p.value).clone()).collect()
}

/// Imports `body` with `fixed` input types followed by `state` types, joining the state types
/// with what the body yields for them (outputs `out_offset..`) until they agree.
fn import_body(
    cx: &mut NodeCx,
    fixed: &[TensorType],
    mut state: Vec<TensorType>,
    more: &[TensorType],
    out_offset: usize,
) -> Result<(Graph, Vec<ValueId>), NodeError> {
    loop {
        let tys: Vec<Option<TensorType>> = fixed
            .iter()
            .chain(&state)
            .chain(more)
            .cloned()
            .map(Some)
            .collect();
        let (body, caps) = cx.subgraph("body", &tys)?;
        let outs = output_types(&body);
        if outs.len() < out_offset + state.len() {
            return Err(invalid(format!(
                "body yields {} values, fewer than its {} state values",
                outs.len(),
                state.len()
            )));
        }
        let joined: Vec<TensorType> = state
            .iter()
            .zip(&outs[out_offset..])
            .map(|(s, o)| join_types(s, o))
            .collect::<Result<_, _>>()?;
        // Joining only ever forgets dims, so this ends after at most one round per dim.
        if joined == state {
            return Ok((body, caps));
        }
        state = joined;
    }
}

fn loop_(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let (m, cond) = (cx.opt_input(0), cx.opt_input(1));
    let init: Vec<ValueId> = (2..cx.n_inputs())
        .map(|i| cx.input(i))
        .collect::<Result<_, _>>()?;
    let init_types: Vec<TensorType> = init.iter().map(|&v| cx.ty(v).clone()).collect();
    let fixed = [
        TensorType::scalar(DType::I64),
        TensorType::scalar(DType::Bool),
    ];
    let (body, caps) = import_body(cx, &fixed, init_types, &[], 1)?;
    let op = ControlOp::Loop {
        carried: init.len(),
        captures: caps.len(),
    };
    let mut inputs = vec![m, cond];
    inputs.extend(init.into_iter().chain(caps).map(Some));
    let n = cx.n_outputs;
    cx.emit_with_regions(Op::Control(op), inputs, vec![body], n)
}

/// `ty` without dim `axis`: one slice of a scan input.
fn slice_type(ty: &TensorType, axis: usize) -> TensorType {
    let mut shape = ty.shape.clone();
    shape.remove(axis);
    TensorType::new(ty.dtype, shape)
}

/// Normalizes per-input axes (default 0) against the given ranks.
fn axes(cx: &NodeCx, name: &str, ranks: &[usize]) -> Result<Vec<usize>, NodeError> {
    let given = cx.attr_ints(name)?.unwrap_or_default();
    ranks
        .iter()
        .enumerate()
        .map(|(i, &rank)| {
            let a = given.get(i).copied().unwrap_or(0);
            mlc_ir::ops::norm_axis(a, rank).map_err(|e| NodeError::Attr {
                name: name.into(),
                reason: e.to_string(),
            })
        })
        .collect()
}

fn directions(cx: &NodeCx, name: &str, n: usize) -> Result<Vec<bool>, NodeError> {
    let given = cx.attr_ints(name)?.unwrap_or_default();
    (0..n)
        .map(|i| match given.get(i).copied().unwrap_or(0) {
            0 => Ok(false),
            1 => Ok(true),
            d => Err(NodeError::Attr {
                name: name.into(),
                reason: format!("direction {d} is neither 0 nor 1"),
            }),
        })
        .collect()
}

fn scan(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    if cx.opset < 9 {
        return scan8(cx);
    }
    let n_scan = cx
        .attr_int_opt("num_scan_inputs")?
        .ok_or_else(|| NodeError::Attr {
            name: "num_scan_inputs".into(),
            reason: "required".into(),
        })?;
    let vals: Vec<ValueId> = (0..cx.n_inputs())
        .map(|i| cx.input(i))
        .collect::<Result<_, _>>()?;
    let n_scan = usize::try_from(n_scan)
        .ok()
        .filter(|&n| n >= 1 && n <= vals.len())
        .ok_or_else(|| NodeError::Attr {
            name: "num_scan_inputs".into(),
            reason: format!("{n_scan} does not fit {} inputs", vals.len()),
        })?;
    let states = vals.len() - n_scan;
    let types: Vec<TensorType> = vals.iter().map(|&v| cx.ty(v).clone()).collect();
    let ranks: Vec<usize> = types[states..].iter().map(TensorType::rank).collect();
    let input_axes = axes(cx, "scan_input_axes", &ranks)?;
    let input_reverse = directions(cx, "scan_input_directions", n_scan)?;
    let slices: Vec<TensorType> = types[states..]
        .iter()
        .zip(&input_axes)
        .map(|(t, &a)| slice_type(t, a))
        .collect();
    let (body, caps) = import_body(cx, &[], types[..states].to_vec(), &slices, 0)?;
    let outs = output_types(&body);
    let out_ranks: Vec<usize> = outs[states..].iter().map(|t| t.rank() + 1).collect();
    let output_axes = axes(cx, "scan_output_axes", &out_ranks)?;
    let output_reverse = directions(cx, "scan_output_directions", out_ranks.len())?;
    let op = ControlOp::Scan {
        states,
        captures: caps.len(),
        input_axes,
        input_reverse,
        output_axes,
        output_reverse,
    };
    let inputs: Vec<Option<ValueId>> = vals.into_iter().chain(caps).map(Some).collect();
    let n = cx.n_outputs;
    cx.emit_with_regions(Op::Control(op), inputs, vec![body], n)
}

/// Opset-8 `Scan`: every input has a leading batch dim and scan inputs are scanned along
/// axis 1. It becomes an outer scan over the batch (no states; every input sliced along
/// axis 0) whose body runs the opset-9 scan on one batch element.
fn scan8(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    if let Some(lens) = cx.opt_input(0) {
        // Per-batch lengths are only supported when they cannot cut any sequence short.
        let full = cx
            .input_type(cx.n_inputs() - 1)?
            .shape
            .get(1)
            .and_then(Dim::known);
        let ok = match (cx.graph.const_value(lens), full) {
            (Some(t), Some(n)) => t.to_i64_vec()?.iter().all(|&l| l == n as i64),
            _ => false,
        };
        if !ok {
            return Err(NodeError::Unsupported(
                "opset-8 Scan with sequence_lens".into(),
            ));
        }
    }
    let n_scan = cx.attr_int_opt("num_scan_inputs")?.unwrap_or(0);
    let vals: Vec<ValueId> = (1..cx.n_inputs())
        .map(|i| cx.input(i))
        .collect::<Result<_, _>>()?;
    let n_scan = usize::try_from(n_scan)
        .ok()
        .filter(|&n| n >= 1 && n <= vals.len())
        .ok_or_else(|| {
            invalid(format!(
                "num_scan_inputs {n_scan} does not fit {} inputs",
                vals.len()
            ))
        })?;
    let states = vals.len() - n_scan;
    let types: Vec<TensorType> = vals.iter().map(|&v| cx.ty(v).clone()).collect();
    if types.iter().any(|t| t.rank() == 0) || types[states..].iter().any(|t| t.rank() < 2) {
        return Err(invalid(
            "opset-8 Scan inputs need a batch dim (and scan inputs a sequence dim)",
        ));
    }
    // Per batch element: states lose the batch dim, scan inputs the batch and sequence dims.
    let per_batch: Vec<TensorType> = types.iter().map(|t| slice_type(t, 0)).collect();
    let slices: Vec<TensorType> = per_batch[states..]
        .iter()
        .map(|t| slice_type(t, 0))
        .collect();
    let (body, caps) = import_body(cx, &[], per_batch[..states].to_vec(), &slices, 0)?;
    let n_out = body.outputs.len() - states;
    let inner = ControlOp::Scan {
        states,
        captures: caps.len(),
        input_axes: vec![0; n_scan],
        input_reverse: directions(cx, "directions", n_scan)?,
        output_axes: vec![0; n_out],
        output_reverse: vec![false; n_out],
    };
    // The outer body: one batch element of every input, then the captures.
    let mut outer_body = Graph::new();
    let mut args = Vec::new();
    for (i, t) in per_batch.iter().enumerate() {
        args.push(Some(outer_body.add_input(format!("in{i}"), t.clone())));
    }
    for (i, &c) in caps.iter().enumerate() {
        args.push(Some(
            outer_body.add_input(format!("capture{i}"), cx.ty(c).clone()),
        ));
    }
    let arg_types: Vec<Option<TensorType>> = args
        .iter()
        .map(|v| v.map(|v| outer_body.ty(v).clone()))
        .collect();
    let consts = vec![None; args.len()];
    let regions = vec![body];
    let inner_cx = InferCx {
        inputs: &arg_types,
        consts: &consts,
        regions: &regions,
        n_outputs: states + n_out,
    };
    let out_types = Op::Control(inner.clone()).infer(&inner_cx)?;
    let outs = outer_body.add_node(Op::Control(inner), args, out_types, regions, None);
    outer_body.outputs = outs
        .iter()
        .enumerate()
        .map(|(i, &v)| Port {
            value: v,
            name: format!("out{i}"),
        })
        .collect();
    let outer = ControlOp::Scan {
        states: 0,
        captures: caps.len(),
        input_axes: vec![0; vals.len()],
        input_reverse: vec![false; vals.len()],
        output_axes: vec![0; states + n_out],
        output_reverse: vec![false; states + n_out],
    };
    let inputs: Vec<Option<ValueId>> = vals.into_iter().chain(caps).map(Some).collect();
    let n = cx.n_outputs;
    cx.emit_with_regions(Op::Control(outer), inputs, vec![outer_body], n)
}
