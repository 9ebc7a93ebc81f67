//! Epilogue fusion inside composite nodes: a bias add and an activation that follow a
//! contraction in the body are folded into its [`Stmt::Matmul`], so they are applied while the
//! output tile is still in registers instead of in another pass over memory.
//!
//! Only what `Matmul` can express is fused: a scale by a one-element constant (`α`), one bias
//! broadcast along the rows or the columns of the product (or a scalar), added after scaling,
//! then ReLU, a constant clip, HardSigmoid or HardSwish. Anything
//! else in the body is lowered as its own kernel, which is always correct.

use super::Cx;
use crate::kernel::*;
use mlc_ir::ops::{EwOp, NnOp};
use mlc_ir::{Graph, Node, Op, ValueId};

/// The contraction whose epilogue is still open: its result value and the step computing it.
#[derive(Clone, Copy)]
pub(super) struct Open {
    pub value: ValueId,
    pub step: usize,
    /// Which output dims are the product's rows (`None` for a vector) and columns; the rest are
    /// batch dims the bias must not vary along.
    rows: Option<usize>,
    cols: usize,
}

/// After `n` was lowered: the open epilogue if `n` is a contraction whose last step holds
/// exactly one matmul with no epilogue yet.
pub(super) fn open_after(cx: &Cx, n: &Node) -> Option<Open> {
    let shape = cx.shape(n.outputs[0]).ok()?;
    let rank = shape.len();
    let (rows, cols) = match &n.op {
        // With a vector operand the output's last dims are not the product's rows and columns.
        Op::Nn(NnOp::Matmul | NnOp::Gemm { .. })
            if rank >= 2
                && n.inputs
                    .iter()
                    .take(2)
                    .flatten()
                    .all(|&v| cx.shape(v).is_ok_and(|s| s.len() >= 2)) =>
        {
            (Some(rank - 2), rank - 1)
        }
        // A convolution's product is (output channels) × (positions): only per-channel biases
        // (dim 1) fit, and only without groups (one product covers all channels).
        Op::Nn(NnOp::Conv { group: 1, .. }) if rank >= 3 => (Some(1), usize::MAX),
        _ => return None,
    };
    let step = cx.p.steps.len().checked_sub(1)?;
    let mm = single_matmul(&cx.p.kernel(cx.p.steps[step].kernel).body)?;
    // A product whose rows span several batch elements (a weight shared by the batch, see
    // `nn::matmul_bufs`) has no rows dim a bias could follow.
    let rows = rows.filter(|&r| shape[r] == mm.m);
    (mm.act == Activation::None && mm.beta == 0.0).then_some(Open {
        value: n.outputs[0],
        step,
        rows,
        cols,
    })
}

/// The one matmul of a kernel that is nothing but loops around it. A kernel doing other work
/// too (the blocked Winograd form: transforms around its 16 products) has no open epilogue:
/// its matmuls compute intermediates, not the node's value.
fn single_matmul(body: &[Stmt]) -> Option<&Matmul> {
    /// `Err` when `body` holds a statement other than loops and matmuls, or several matmuls.
    fn walk<'a>(body: &'a [Stmt], found: &mut Option<&'a Matmul>) -> Result<(), ()> {
        for s in body {
            match s {
                Stmt::Matmul(m) if found.is_none() => *found = Some(m.as_ref()),
                Stmt::For { body, .. } => walk(body, found)?,
                _ => return Err(()),
            }
        }
        Ok(())
    }
    let mut found = None;
    walk(body, &mut found).ok()?;
    found
}

fn for_each_matmul(body: &mut [Stmt], f: &mut dyn FnMut(&mut Matmul)) {
    for s in body {
        match s {
            Stmt::Matmul(m) => f(m),
            Stmt::For { body, .. } => for_each_matmul(body, f),
            _ => {}
        }
    }
}

/// The value of `v` when it is a one-element constant: in the graph being lowered, or (a
/// composite body's input) a constant buffer of the program.
fn const_scalar(cx: &Cx, v: ValueId) -> Option<f64> {
    let t = match cx.g.const_value(v) {
        Some(t) => t,
        None => {
            let b = cx.p.storage_of(cx.buf(v).ok()?);
            let BufKind::Const(ci) = cx.p.buffer(b).kind else {
                return None;
            };
            &cx.p.consts[ci]
        }
    };
    if t.len() != 1 {
        return None;
    }
    match t.to_f64_vec().ok()?.as_slice() {
        [c] => Some(*c),
        _ => None,
    }
}

/// How many times `v` is read in `g` (by nodes or as an output).
fn uses(g: &Graph, v: ValueId) -> usize {
    g.nodes
        .iter()
        .flat_map(|n| n.inputs.iter())
        .filter(|i| **i == Some(v))
        .count()
        + g.outputs.iter().filter(|o| o.value == v).count()
}

/// Tries to fold body node `n` into the open epilogue; on success `n`'s output shares the
/// contraction's buffer and the epilogue stays open for the next node.
pub(super) fn try_fuse(cx: &mut Cx, n: &Node, open: Open) -> Option<Open> {
    let Op::Ew(op) = &n.op else { return None };
    // The other operand of a binary op. `b + C` and `s · C` are `C + b` and `C · s` exactly
    // (IEEE addition and multiplication commute), as exporters often write a bias first.
    let other = if n.input(0) == Some(open.value) {
        1
    } else if matches!(op, EwOp::Add | EwOp::Mul)
        && n.inputs.len() == 2
        && n.input(1) == Some(open.value)
    {
        0
    } else {
        return None;
    };
    if uses(cx.g, open.value) != 1 {
        return None;
    }
    let out_shape = cx.shape(n.outputs[0]).ok()?;
    if cx.shape(open.value).ok()? != out_shape || cx.dtype(n.outputs[0]) != cx.dtype(open.value) {
        return None;
    }
    let step = cx.p.steps[open.step].clone();
    let mut k = cx.p.kernel(step.kernel).clone();
    let mut args = step.args.clone();
    let current = single_matmul(&k.body)?.clone();
    let edit: Box<dyn Fn(&mut Matmul)> = match op {
        EwOp::Relu if current.act == Activation::None => Box::new(|m| m.act = Activation::Relu),
        EwOp::HardSwish if current.act == Activation::None => {
            Box::new(|m| m.act = Activation::HardSwish)
        }
        &EwOp::HardSigmoid { alpha, beta } if current.act == Activation::None => {
            Box::new(move |m| m.act = Activation::HardSigmoid { alpha, beta })
        }
        EwOp::Clip if current.act == Activation::None => {
            // Constants of the graph, or (ReLU6 in a fused body) inputs bound to constants.
            let bound = |i: usize| -> Option<Option<f32>> {
                match n.input(i) {
                    None => Some(None),
                    Some(v) => Some(Some(const_scalar(cx, v)? as f32)),
                }
            };
            let (lo, hi) = (bound(1)?, bound(2)?);
            let (min, max) = (lo.unwrap_or(f32::NEG_INFINITY), hi.unwrap_or(f32::INFINITY));
            Box::new(move |m| m.act = Activation::Clip { min, max })
        }
        // A scale by a one-element constant (attention's `· 1/√d`) is `α`: the runtime
        // multiplies the finished f32 sum by `α`, the same single rounding as the separate
        // multiplication.
        EwOp::Mul
            if current.act == Activation::None
                && current.bias.is_none()
                && current.alpha == 1.0
                && cx.dtype(open.value) == mlc_ir::DType::F32 =>
        {
            let alpha = const_scalar(cx, n.input(other)?)? as f32;
            Box::new(move |m| m.alpha = alpha)
        }
        EwOp::Add if current.act == Activation::None && current.bias.is_none() => {
            let b = n.input(other)?;
            if cx.dtype(b) != cx.dtype(open.value) {
                return None;
            }
            let bs = cx.shape(b).ok()?;
            let rank = out_shape.len();
            if bs.len() > rank {
                return None;
            }
            // Which product axis the bias varies along, if any.
            let (mut along_rows, mut along_cols) = (false, false);
            for (i, &d) in bs.iter().enumerate() {
                let dim = rank - bs.len() + i;
                if d == 1 {
                    continue;
                }
                if Some(dim) == open.rows {
                    along_rows = true;
                } else if dim == open.cols {
                    along_cols = true;
                } else {
                    return None;
                }
            }
            if along_rows && along_cols {
                return None;
            }
            let buf = cx.buf(b).ok()?;
            let param = match args.iter().position(|&a| a == buf) {
                Some(i) => ParamId(i as u32),
                None => {
                    let bb = cx.p.buffer(buf);
                    args.push(buf);
                    k.param(bb.dtype, bb.len(), Access::Read)
                }
            };
            let view = MatRef {
                param,
                offset: Expr::idx(0),
                row_stride: along_rows as i64,
                col_stride: along_cols as i64,
            };
            Box::new(move |m| m.bias = Some(view.clone()))
        }
        _ => return None,
    };
    for_each_matmul(&mut k.body, &mut |m| edit(m));
    let id = cx.p.intern_kernel(k);
    cx.p.steps[open.step] = Step {
        kernel: id,
        args,
        origin: step.origin,
    };
    let buf = cx.buf(open.value).ok()?;
    cx.set_buf(n.outputs[0], buf);
    Some(Open {
        value: n.outputs[0],
        ..open
    })
}
