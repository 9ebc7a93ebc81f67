//! Data-addressed movement: `GatherElements`, `ScatterElements`, `ScatterNd`, `OneHot`.
//!
//! Indices are loaded at run time, negative ones counting from the end. A scatter is a copy of
//! the data followed by a *serial* loop over the updates, so that duplicate indices combine (or
//! overwrite) in the order the interpreter applies them.

use super::{
    Cx, Fail, KernelBuilder, flat_index, kernel_name, loop_nest, serial_nest, strides, unsupported,
};
use crate::kernel::*;
use mlc_ir::ops::movement::ScatterReduction;
use mlc_ir::{DType, Node, ValueId};

/// An index load widened to `i64` and wrapped into `[0, n)` when negative.
fn wrapped(kb: &mut KernelBuilder, stmts: &mut Vec<Stmt>, load: Expr, ty: DType, n: usize) -> Expr {
    let raw = kb.var(DType::I64);
    let load = if ty == DType::I64 {
        load
    } else {
        Expr::cast(DType::I64, load)
    };
    stmts.push(Stmt::Let {
        var: raw,
        value: load,
    });
    Expr::select(
        Expr::bin(BinOp::Lt, Expr::var(raw), Expr::idx(0)),
        Expr::bin(BinOp::Add, Expr::var(raw), Expr::idx(n as i64)),
        Expr::var(raw),
    )
}

fn index_type(cx: &Cx, v: ValueId) -> Result<DType, Fail> {
    let t = cx.dtype(v);
    if matches!(t, DType::I64 | DType::I32) {
        Ok(t)
    } else {
        unsupported(format!("indices of type {}", t.name()))
    }
}

/// `out[m] = x[m with m[axis] = idx[m]]`, shaped like the indices.
pub(super) fn gather_elements(
    cx: &mut Cx,
    node: &Node,
    x: ValueId,
    axis: usize,
) -> Result<(), Fail> {
    let Some(iv) = node.input(1) else {
        return unsupported("missing indices");
    };
    let ity = index_type(cx, iv)?;
    let (xs, is) = (cx.shape(x)?, cx.shape(iv)?);
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let ip = kb.param(&cx.p, cx.buf(iv)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let (xst, ist) = (strides(&xs), strides(&is));
    let body = loop_nest(&mut kb, &is, |kb, v| {
        let at = flat_index(&ist, v);
        let mut stmts = Vec::new();
        let j = wrapped(kb, &mut stmts, Expr::load(ip, at.clone()), ity, xs[axis]);
        let mut src = Expr::mul_idx(j, xst[axis]);
        for d in (0..xs.len()).filter(|&d| d != axis) {
            src = Expr::add_idx(src, Expr::mul_idx(Expr::var(v[d]), xst[d]));
        }
        stmts.push(Stmt::Store {
            param: op_,
            index: at,
            value: Expr::load(xp, src),
        });
        stmts
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// The scatter's combination of the element already there (`x`) with an update (`u`).
fn combine(red: ScatterReduction, x: Expr, u: Expr, ty: DType) -> Expr {
    let half = matches!(ty, DType::F16 | DType::BF16);
    let arith = |op: BinOp| {
        if half {
            Expr::cast(
                ty,
                Expr::bin(
                    op,
                    Expr::cast(DType::F32, x.clone()),
                    Expr::cast(DType::F32, u.clone()),
                ),
            )
        } else {
            Expr::bin(op, x.clone(), u.clone())
        }
    };
    match red {
        ScatterReduction::None => u,
        ScatterReduction::Add => arith(BinOp::Add),
        ScatterReduction::Mul => arith(BinOp::Mul),
        // The update wins only when strictly better, so NaN updates lose.
        ScatterReduction::Max => Expr::select(Expr::bin(BinOp::Gt, u.clone(), x.clone()), u, x),
        ScatterReduction::Min => Expr::select(Expr::bin(BinOp::Lt, u.clone(), x.clone()), u, x),
    }
}

/// The copy of `data` into `out` that every scatter starts from.
fn copy_into(kb: &mut KernelBuilder, src: ParamId, dst: ParamId, shape: &[usize]) -> Vec<Stmt> {
    let st = strides(shape);
    loop_nest(kb, shape, |_, v| {
        let at = flat_index(&st, v);
        vec![Stmt::Store {
            param: dst,
            index: at.clone(),
            value: Expr::load(src, at),
        }]
    })
}

fn scatter_types(cx: &Cx, node: &Node) -> Result<(ValueId, ValueId, ValueId, DType), Fail> {
    let (Some(x), Some(iv), Some(uv)) = (node.input(0), node.input(1), node.input(2)) else {
        return unsupported("missing input");
    };
    Ok((x, iv, uv, index_type(cx, iv)?))
}

pub(super) fn scatter_elements(
    cx: &mut Cx,
    node: &Node,
    axis: usize,
    red: ScatterReduction,
) -> Result<(), Fail> {
    let (x, iv, uv, ity) = scatter_types(cx, node)?;
    let ty = cx.dtype(x);
    if red != ScatterReduction::None && (!ty.is_numeric() || ty == DType::Bool) {
        return unsupported(format!("scatter reduction on {}", ty.name()));
    }
    let (xs, is) = (cx.shape(x)?, cx.shape(iv)?);
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let ip = kb.param(&cx.p, cx.buf(iv)?, Access::Read);
    let up = kb.param(&cx.p, cx.buf(uv)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::ReadWrite);
    let mut body = copy_into(&mut kb, xp, op_, &xs);
    let (xst, ist) = (strides(&xs), strides(&is));
    body.extend(serial_nest(&mut kb, &is, |kb, v| {
        let at = flat_index(&ist, v);
        let mut stmts = Vec::new();
        let j = wrapped(kb, &mut stmts, Expr::load(ip, at.clone()), ity, xs[axis]);
        let mut dst = Expr::mul_idx(j, xst[axis]);
        for d in (0..xs.len()).filter(|&d| d != axis) {
            dst = Expr::add_idx(dst, Expr::mul_idx(Expr::var(v[d]), xst[d]));
        }
        let value = combine(red, Expr::load(op_, dst.clone()), Expr::load(up, at), ty);
        stmts.push(Stmt::Store {
            param: op_,
            index: dst,
            value,
        });
        stmts
    }));
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `ScatterNd`: update row `t` (of `prod(idx.shape[..q-1])`) goes to the slice of `out`
/// addressed by `idx[t, ..k]`.
pub(super) fn scatter_nd(cx: &mut Cx, node: &Node, red: ScatterReduction) -> Result<(), Fail> {
    let (x, iv, uv, ity) = scatter_types(cx, node)?;
    let ty = cx.dtype(x);
    if red != ScatterReduction::None && (!ty.is_numeric() || ty == DType::Bool) {
        return unsupported(format!("scatter reduction on {}", ty.name()));
    }
    let (xs, is) = (cx.shape(x)?, cx.shape(iv)?);
    let Some(&k) = is.last() else {
        return unsupported("scalar indices");
    };
    if k > xs.len() {
        return unsupported("index depth beyond the data's rank");
    }
    let rows: usize = is[..is.len() - 1].iter().product();
    let inner: usize = xs[k..].iter().product();
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let ip = kb.param(&cx.p, cx.buf(iv)?, Access::Read);
    let up = kb.param(&cx.p, cx.buf(uv)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::ReadWrite);
    let mut body = copy_into(&mut kb, xp, op_, &xs);
    let xst = strides(&xs);
    body.extend(serial_nest(&mut kb, &[rows, inner], |kb, v| {
        let (t, r) = (Expr::var(v[0]), Expr::var(v[1]));
        let mut stmts = Vec::new();
        let mut dst = r.clone();
        for (j, &st) in xst.iter().enumerate().take(k) {
            let at = Expr::add_idx(Expr::mul_idx(t.clone(), k as i64), Expr::idx(j as i64));
            let ij = wrapped(kb, &mut stmts, Expr::load(ip, at), ity, xs[j]);
            dst = Expr::add_idx(dst, Expr::mul_idx(ij, st));
        }
        let u = Expr::load(up, Expr::add_idx(Expr::mul_idx(t, inner as i64), r));
        let value = combine(red, Expr::load(op_, dst.clone()), u, ty);
        stmts.push(Stmt::Store {
            param: op_,
            index: dst,
            value,
        });
        stmts
    }));
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `OneHot`: `out[o, c, r] = values[idx[o, r] == c]`, indices truncated to integers and
/// negative ones counting from the depth, which the static output shape gives.
pub(super) fn one_hot(cx: &mut Cx, node: &Node, axis: usize) -> Result<(), Fail> {
    let (Some(iv), Some(vv)) = (node.input(0), node.input(2)) else {
        return unsupported("missing input");
    };
    let (is, os) = (cx.shape(iv)?, cx.shape(node.outputs[0])?);
    let ity = cx.dtype(iv);
    if axis > is.len() || !ity.is_numeric() || ity.is_storage_only() || ity == DType::Bool {
        return unsupported("one_hot indices must be numeric");
    }
    let depth = os[axis];
    let outer: usize = is[..axis].iter().product();
    let inner: usize = is[axis..].iter().product();
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let ip = kb.param(&cx.p, cx.buf(iv)?, Access::Read);
    let vp = kb.param(&cx.p, cx.buf(vv)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let body = loop_nest(&mut kb, &[outer, depth, inner], |kb, v| {
        let (o, c, r) = (Expr::var(v[0]), Expr::var(v[1]), Expr::var(v[2]));
        let mut stmts = Vec::new();
        let at = Expr::add_idx(Expr::mul_idx(o.clone(), inner as i64), r.clone());
        let i = wrapped(kb, &mut stmts, Expr::load(ip, at), ity, depth);
        let on = Expr::select(
            Expr::bin(BinOp::Eq, i, c.clone()),
            Expr::idx(1),
            Expr::idx(0),
        );
        let dst = Expr::add_idx(
            Expr::mul_idx(
                Expr::add_idx(Expr::mul_idx(o, depth as i64), c),
                inner as i64,
            ),
            r,
        );
        stmts.push(Stmt::Store {
            param: op_,
            index: dst,
            value: Expr::load(vp, on),
        });
        stmts
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}
