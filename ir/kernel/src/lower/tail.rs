//! The elementwise tail of a composite whose body starts with a contraction, as one fused
//! kernel: `conv_integer+cast+mul+quantize` becomes the integer matmul and then a single pass
//! that rescales and requantizes, instead of one kernel (and one trip through memory) per op.
//!
//! What `epilogue.rs` folds into the [`crate::Stmt::Matmul`] itself (a bias, ReLU) is folded
//! first; this takes the rest when all of it is elementwise: `ew` ops, and per-tensor
//! quantize/dequantize to and from 8-bit integers, written out as the `ew` ops they are
//! (`cast(clip(round(x / s) + zp))`, `(cast(q) - zp) * s`, exactly as `quant.rs` lowers them).
//! Views at the very end stay aliases. Anything else leaves the tail to the op-by-op lowering.

use super::{Cx, Fail, ew};
use mlc_ir::ops::{ControlOp, EwOp, QuantOp};
use mlc_ir::{DType, Graph, Node, Op, Port, Tensor, TensorType, ValueId};
use std::collections::HashMap;

fn is_view(op: &Op) -> bool {
    use mlc_ir::ops::MovementOp;
    matches!(
        op,
        Op::Movement(
            MovementOp::Reshape { .. }
                | MovementOp::Flatten { .. }
                | MovementOp::Squeeze { .. }
                | MovementOp::Unsqueeze { .. }
                | MovementOp::Identity
        )
    )
}

/// The saturation range of the 8-bit types the tail quantizes to.
fn range(t: DType) -> Option<(f64, f64)> {
    match t {
        DType::U8 => Some((0.0, 255.0)),
        DType::I8 => Some((-128.0, 127.0)),
        _ => None,
    }
}

/// Whether `v` of `body` holds a single element.
fn one(body: &Graph, v: Option<ValueId>) -> bool {
    v.is_none_or(|v| {
        body.ty(v)
            .static_shape()
            .is_some_and(|s| s.iter().product::<usize>() == 1)
    })
}

fn f32_value(body: &Graph, v: Option<ValueId>) -> bool {
    v.is_some_and(|v| body.ty(v).dtype == DType::F32)
}

/// Whether body node `n` can be part of a fused tail.
fn qualifies(body: &Graph, n: &Node) -> bool {
    match &n.op {
        Op::Constant { .. } | Op::Ew(_) => n.regions.is_empty(),
        Op::Quant(QuantOp::Quantize {
            block_size: 0, to, ..
        }) => {
            range(*to).is_some()
                && f32_value(body, n.input(0))
                && f32_value(body, n.input(1))
                && one(body, n.input(1))
                && one(body, n.input(2))
        }
        Op::Quant(QuantOp::Dequantize {
            block_size: 0,
            to: DType::F32,
            ..
        }) => {
            n.input(0)
                .is_some_and(|q| range(body.ty(q).dtype).is_some())
                && f32_value(body, n.input(1))
                && one(body, n.input(1))
                && one(body, n.input(2))
        }
        _ => false,
    }
}

/// Lowers `nodes`, the rest of `body` after its contraction, as one fused kernel (and the
/// trailing views as aliases). `Ok(false)`, with nothing lowered, when they do not qualify.
pub(super) fn lower(cx: &mut Cx, body: &Graph, nodes: &[Node]) -> Result<bool, Fail> {
    let mut end = nodes.len();
    while end > 0 && is_view(&nodes[end - 1].op) && nodes[end - 1].outputs.len() == 1 {
        end -= 1;
    }
    let (fused, views) = nodes.split_at(end);
    let ops = fused
        .iter()
        .filter(|n| !matches!(n.op, Op::Constant { .. }))
        .count();
    let Some(last) = fused.last() else {
        return Ok(false);
    };
    if ops < 2 || last.outputs.len() != 1 || !fused.iter().all(|n| qualifies(body, n)) {
        return Ok(false);
    }
    let out = last.outputs[0];
    // Only the last value may be read after the tail: the others live in registers.
    let inside: Vec<ValueId> = fused.iter().flat_map(|n| n.outputs.clone()).collect();
    let read_after = |v: ValueId| {
        views.iter().any(|n| n.inputs.contains(&Some(v)))
            || body.outputs.iter().any(|p| p.value == v)
    };
    if inside.iter().any(|&v| v != out && read_after(v)) {
        return Ok(false);
    }

    let mut g = Graph::new();
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let mut outer: Vec<Option<ValueId>> = vec![];
    let mut pending_consts: Vec<&Node> = vec![];
    for n in fused {
        if let Op::Constant { id } = n.op {
            let t = &body.consts[id as usize];
            if t.len() == 1 {
                map.insert(n.outputs[0], g.add_constant(t.clone()));
            } else {
                // A tensor constant is read from its buffer, like any outside value.
                pending_consts.push(n);
            }
            continue;
        }
        let mut arg = |v: Option<ValueId>, g: &mut Graph| -> Option<ValueId> {
            let v = v?;
            if let Some(m) = map.get(&v) {
                return Some(*m);
            }
            let m = g.add_input(format!("in{}", outer.len()), body.ty(v).clone());
            outer.push(Some(v));
            map.insert(v, m);
            Some(m)
        };
        let ins: Vec<Option<ValueId>> = n.inputs.iter().map(|v| arg(*v, &mut g)).collect();
        let ty = body.ty(n.outputs[0]).clone();
        let r = match &n.op {
            Op::Quant(QuantOp::Quantize { to, .. }) => quantize(&mut g, &ins, &ty, *to),
            Op::Quant(QuantOp::Dequantize { .. }) => dequantize(&mut g, &ins, &ty),
            op => g.add_node(op.clone(), ins, vec![ty], vec![], n.loc.clone())[0],
        };
        map.insert(n.outputs[0], r);
    }
    g.outputs.push(Port {
        value: map[&out],
        name: "out".into(),
    });
    let node = Node {
        op: Op::Control(ControlOp::Composite {
            kind: "epilogue".into(),
        }),
        inputs: outer,
        outputs: vec![out],
        regions: vec![g],
        loc: last.loc.clone(),
    };
    for c in &pending_consts {
        cx.node(c)?;
    }
    if !ew::fusable_body(cx, &node)? {
        return Ok(false);
    }
    match ew::lower_composite(cx, &node) {
        Ok(()) => {}
        // Nothing was launched: the op-by-op lowering takes over.
        Err(Fail::Unsupported(_)) => return Ok(false),
        Err(e) => return Err(e),
    }
    for v in views {
        cx.node(v)?;
    }
    Ok(true)
}

fn ew(g: &mut Graph, op: EwOp, ins: Vec<ValueId>, ty: TensorType) -> ValueId {
    g.add_node(
        Op::Ew(op),
        ins.into_iter().map(Some).collect(),
        vec![ty],
        vec![],
        None,
    )[0]
}

fn scalar(g: &mut Graph, v: f32) -> ValueId {
    g.add_constant(Tensor::scalar(v))
}

/// `cast_to(clip(round(x / s) + zp, lo, hi))`.
fn quantize(g: &mut Graph, ins: &[Option<ValueId>], ty: &TensorType, to: DType) -> ValueId {
    let f = TensorType::new(DType::F32, ty.shape.clone());
    let (lo, hi) = range(to).unwrap_or((0.0, 0.0));
    let (x, s) = (ins[0].unwrap_or(ValueId(0)), ins[1].unwrap_or(ValueId(0)));
    let d = ew(g, EwOp::Div, vec![x, s], f.clone());
    let mut r = ew(g, EwOp::Round, vec![d], f.clone());
    if let Some(z) = ins.get(2).copied().flatten() {
        let zf = ew(
            g,
            EwOp::Cast { to: DType::F32 },
            vec![z],
            TensorType::new(DType::F32, g.ty(z).shape.clone()),
        );
        r = ew(g, EwOp::Add, vec![r, zf], f.clone());
    }
    let (lo, hi) = (scalar(g, lo as f32), scalar(g, hi as f32));
    let c = ew(g, EwOp::Max, vec![r, lo], f.clone());
    let c = ew(g, EwOp::Min, vec![c, hi], f);
    ew(g, EwOp::Cast { to }, vec![c], ty.clone())
}

/// `(cast_f32(q) - zp) * s`.
fn dequantize(g: &mut Graph, ins: &[Option<ValueId>], ty: &TensorType) -> ValueId {
    let (q, s) = (ins[0].unwrap_or(ValueId(0)), ins[1].unwrap_or(ValueId(0)));
    let mut f = ew(g, EwOp::Cast { to: DType::F32 }, vec![q], ty.clone());
    if let Some(z) = ins.get(2).copied().flatten() {
        let zf = ew(
            g,
            EwOp::Cast { to: DType::F32 },
            vec![z],
            TensorType::new(DType::F32, g.ty(z).shape.clone()),
        );
        f = ew(g, EwOp::Sub, vec![f, zf], ty.clone());
    }
    ew(g, EwOp::Mul, vec![f, s], ty.clone())
}
