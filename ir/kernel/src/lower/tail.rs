//! The elementwise tail of a composite whose body starts with a contraction, as one fused
//! kernel: `conv_integer+cast+mul+quantize` becomes the integer matmul and then a single pass
//! that rescales and requantizes, instead of one kernel (and one trip through memory) per op.
//!
//! What `epilogue.rs` folds into the [`crate::Stmt::Matmul`] itself (a bias, ReLU) is folded
//! first; this takes the rest when all of it is elementwise: `ew` ops, and per-tensor
//! quantize/dequantize to and from 8-bit integers, written out as the `ew` ops they are
//! (`cast(clip(round(x / s) + zp))`, `(cast(q) - zp) * s`, exactly as `quant.rs` lowers them).
//! Views that only add or drop leading unit dimensions may sit between them (GPT-2's
//! `[32, 1024]` → `[1, 32, 1024]` before its GELU); views at the very end stay aliases. Anything else leaves the tail to the op-by-op lowering.

use super::{Cx, Fail, ew};
use crate::kernel::{Access, BufKind, Expr, ParamId, Stmt};
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

/// Whether view node `n` only adds or drops leading unit dimensions: the elements keep their
/// order and every operand broadcast against its input broadcasts the same way against its
/// output (right-aligned), so inside a fused tail it is the identity.
fn leading_units_only(body: &Graph, n: &Node) -> bool {
    let strip = |s: &[usize]| {
        s.iter()
            .skip_while(|&&d| d == 1)
            .copied()
            .collect::<Vec<_>>()
    };
    let shape = |v: Option<ValueId>| v.and_then(|v| body.ty(v).static_shape());
    match (shape(n.input(0)), shape(n.outputs.first().copied())) {
        (Some(a), Some(b)) => is_view(&n.op) && n.outputs.len() == 1 && strip(&a) == strip(&b),
        _ => false,
    }
}

/// Whether body node `n` can be part of a fused tail.
fn qualifies(body: &Graph, n: &Node) -> bool {
    if leading_units_only(body, n) {
        return true;
    }
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
/// The loop kernel that just computed a body value, whose stores a tail may take over.
#[derive(Clone, Copy, Debug)]
pub(super) struct Producer {
    /// The value it computed.
    pub value: ValueId,
    /// The first step its lowering launched (the last launched step is the kernel).
    pub first_step: usize,
}

pub(super) fn lower(
    cx: &mut Cx,
    body: &Graph,
    nodes: &[Node],
    producer: Option<Producer>,
) -> Result<bool, Fail> {
    let mut end = nodes.len();
    while end > 0 && is_view(&nodes[end - 1].op) && nodes[end - 1].outputs.len() == 1 {
        end -= 1;
    }
    let (fused, views) = nodes.split_at(end);
    let ops = fused
        .iter()
        .filter(|n| !matches!(n.op, Op::Constant { .. }) && !is_view(&n.op))
        .count();
    let Some(last) = fused.last() else {
        return Ok(false);
    };
    // One op is worth fusing only into the producer's stores (no pass is saved otherwise).
    let min_ops = if producer.is_some() { 1 } else { 2 };
    if ops < min_ops || last.outputs.len() != 1 || !fused.iter().all(|n| qualifies(body, n)) {
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
        if is_view(&n.op) {
            // Leading unit dimensions only (`qualifies`): the same elements.
            if let Some(Some(x)) = ins.first() {
                map.insert(n.outputs[0], *x);
            }
            continue;
        }
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
    if let Some(p) = producer
        && pending_consts.is_empty()
        && into_stores(cx, &node, p)?
    {
        for v in views {
            cx.node(v)?;
        }
        return Ok(true);
    }
    if ops < 2 {
        return Ok(false);
    }
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

/// Applies the tail `node` (an elementwise composite: the producer's value and one-element
/// values in, one value out) to every value the producer's kernel stores into its output, so
/// the tail costs no pass over memory. The kernel must be the last step the producer
/// launched, the only one of them touching its output, which it writes and never reads; then
/// the last store of every element is the element's value, and storing `tail(v)` at every
/// store leaves `tail(last value)` everywhere. Returns whether it fused (nothing changed if
/// not).
fn into_stores(cx: &mut Cx, node: &Node, p: Producer) -> Result<bool, Fail> {
    let Some(region) = node.regions.first() else {
        return Ok(false);
    };
    let Some(&last) = cx.p.steps.len().checked_sub(1).as_ref() else {
        return Ok(false);
    };
    if last < p.first_step {
        return Ok(false);
    }
    let Ok(out_buf) = cx.buf(p.value) else {
        return Ok(false);
    };
    if !matches!(cx.p.buffer(out_buf).kind, BufKind::Temp)
        || cx.p.steps[p.first_step..last]
            .iter()
            .any(|s| s.args.contains(&out_buf))
    {
        return Ok(false);
    }
    let out_shape = cx.shape(p.value)?;
    let tail_out = node.outputs[0];
    if cx.shape(tail_out)? != out_shape {
        return Ok(false);
    }
    // The tail's inputs: the producer's value, and one-element values read at index 0.
    let step = cx.p.steps[last].clone();
    let mut k = cx.p.kernel(step.kernel).clone();
    let mut args = step.args.clone();
    let Some(pout) = args
        .iter()
        .position(|&a| a == out_buf)
        .map(|i| ParamId(i as u32))
    else {
        return Ok(false);
    };
    let depthwise = crate::expand::has_depthwise(&k.body);
    let mut env_in: Vec<(ValueId, Option<Expr>)> = Vec::new();
    for (port, v) in region.inputs.iter().zip(&node.inputs) {
        let Some(v) = *v else { return Ok(false) };
        if v == p.value {
            env_in.push((port.value, None));
            continue;
        }
        let shape = cx.shape(v)?;
        // A depthwise epilogue also takes per-channel operands (`[M, 1, 1]` against an NCHW
        // output), read at the channel.
        let index = if shape.iter().product::<usize>() == 1 {
            Expr::idx(0)
        } else if depthwise && per_channel(&shape, &out_shape) {
            Expr::var(super::conv::CHANNEL)
        } else {
            return Ok(false);
        };
        let b = cx.buf(v)?;
        let param = match args.iter().position(|&a| a == b) {
            Some(i) => ParamId(i as u32),
            None => {
                let bb = cx.p.buffer(b);
                args.push(b);
                k.param(bb.dtype, bb.len(), Access::Read)
            }
        };
        env_in.push((port.value, Some(Expr::load(param, index))));
    }
    if env_in.iter().filter(|(_, e)| e.is_none()).count() != 1 {
        return Ok(false);
    }
    // A depthwise convolution statement takes the tail into its epilogue, or else stays as
    // it is and the tail runs as its own elementwise kernel: expanding the statement into
    // loops whose stores take the tail would trade the library's vector kernel for scalar
    // loops with a bounds test per tap (20× slower on MNASNet's 112×112 maps) to save one
    // pass over the output.
    let in_ty = cx.dtype(p.value);
    if depthwise {
        if super::conv::depthwise_tail(&mut k, region, &env_in)? {
            return finish(cx, node, k, args, pout, step, last).map(|()| true);
        }
        return Ok(false);
    }
    if k.params[pout.0 as usize].access != Access::Write || !writes_only(&k.body, pout) {
        return Ok(false);
    }
    // Rewrite every store; a failure (an op the scalar lowering lacks) leaves all as it was.
    let mut failed = None;
    let body = std::mem::take(&mut k.body);
    let body = rewrite_stores(body, pout, &mut |value, stmts| {
        let tmp = k.var(in_ty);
        stmts.push(Stmt::Let { var: tmp, value });
        let mut env: Vec<Option<Expr>> = vec![None; region.values.len()];
        for (v, e) in &env_in {
            env[v.0 as usize] = Some(e.clone().unwrap_or(Expr::var(tmp)));
        }
        if let Err(e) = ew::body_lets(region, &mut env, &mut |t| k.var(t), stmts) {
            failed = Some(e);
            return Expr::var(tmp);
        }
        region
            .outputs
            .first()
            .and_then(|o| env[o.value.0 as usize].clone())
            .unwrap_or(Expr::var(tmp))
    });
    if let Some(e) = failed {
        return match e {
            Fail::Unsupported(_) => Ok(false),
            e => Err(e),
        };
    }
    k.body = body;
    finish(cx, node, k, args, pout, step, last)?;
    Ok(true)
}

/// Replaces step `last` by `k` (as rewritten by the fused tail `node`) writing the tail's
/// output buffer, a new temporary, through `pout`.
fn finish(
    cx: &mut Cx,
    node: &Node,
    mut k: crate::kernel::Kernel,
    mut args: Vec<crate::kernel::BufId>,
    pout: ParamId,
    step: crate::kernel::Step,
    last: usize,
) -> Result<(), Fail> {
    let tail_out = node.outputs[0];
    let new_buf = cx.new_buffer(tail_out, BufKind::Temp)?;
    let nb = cx.p.buffer(new_buf);
    k.params[pout.0 as usize].dtype = nb.dtype;
    k.params[pout.0 as usize].len = nb.len();
    args[pout.0 as usize] = new_buf;
    k.name = format!("{}_{}", k.name, node_kind(node));
    let id = cx.p.intern_kernel(k);
    cx.p.steps[last] = crate::kernel::Step {
        kernel: id,
        args,
        origin: step.origin,
    };
    Ok(())
}

fn node_kind(node: &Node) -> String {
    node.regions
        .first()
        .and_then(|r| {
            r.nodes
                .iter()
                .rev()
                .find(|n| !matches!(n.op, Op::Constant { .. }))
        })
        .map(|n| {
            let name = n.op.name();
            let short = name.rsplit('.').next().unwrap_or(&name);
            short.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        })
        .unwrap_or_default()
}

/// Whether a value of `shape` broadcast to the NCHW `out` varies along the channels alone,
/// all of them (`[M, 1, 1]`, `[1, M, 1, 1]`).
fn per_channel(shape: &[usize], out: &[usize]) -> bool {
    let [_, m, _, _] = out else { return false };
    if shape.len() < 3 || shape.len() > 4 {
        return false;
    }
    let c = shape.len() - 3;
    shape
        .iter()
        .enumerate()
        .all(|(i, &d)| if i == c { d == *m } else { d == 1 })
}

/// Whether `body` only stores to `p` (no load of it, no contraction touching it).
fn writes_only(body: &[Stmt], p: ParamId) -> bool {
    fn expr_reads(e: &Expr, p: ParamId) -> bool {
        match e {
            Expr::Var(_) | Expr::Lit(_) => false,
            Expr::Load { param, index } => *param == p || expr_reads(index, p),
            Expr::Unary(_, a) | Expr::Cast(_, a) => expr_reads(a, p),
            Expr::Binary(_, a, b) => expr_reads(a, p) || expr_reads(b, p),
            Expr::Select { cond, then, els } => {
                expr_reads(cond, p) || expr_reads(then, p) || expr_reads(els, p)
            }
        }
    }
    body.iter().all(|s| match s {
        Stmt::Let { value, .. } | Stmt::Assign { value, .. } => !expr_reads(value, p),
        Stmt::Store { index, value, .. } => !expr_reads(index, p) && !expr_reads(value, p),
        Stmt::For { extent, body, .. } => !expr_reads(extent, p) && writes_only(body, p),
        Stmt::Matmul(_) | Stmt::Depthwise(_) | Stmt::Softmax(_) => false,
    })
}

/// `body` with every `store p[i] = v` replaced by the statements `f` emits for `v` followed
/// by `store p[i] = f(v)`.
fn rewrite_stores(
    body: Vec<Stmt>,
    p: ParamId,
    f: &mut dyn FnMut(Expr, &mut Vec<Stmt>) -> Expr,
) -> Vec<Stmt> {
    let mut out = Vec::with_capacity(body.len());
    for s in body {
        match s {
            Stmt::Store {
                param,
                index,
                value,
            } if param == p => {
                let v = f(value, &mut out);
                out.push(Stmt::Store {
                    param,
                    index,
                    value: v,
                });
            }
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => out.push(Stmt::For {
                var,
                extent,
                kind,
                body: rewrite_stores(body, p, f),
            }),
            s => out.push(s),
        }
    }
    out
}
