//! `movement.reverse_sequence` and `movement.tensor_scatter` (the KV-cache update), both as
//! gathers over their output: every element finds the one it copies.

use super::{Cx, Fail, KernelBuilder, flat_index, kernel_name, loop_nest, strides, unsupported};
use crate::kernel::*;
use mlc_ir::{DType, Node};

/// `out[m] = x[m with t → l - 1 - t where t < l]`, `l = clamp(lens[m[batch]], 0, T)`.
pub(super) fn reverse_sequence(
    cx: &mut Cx,
    node: &Node,
    batch_axis: usize,
    time_axis: usize,
) -> Result<(), Fail> {
    let (Some(x), Some(lv)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let (xs, ls) = (cx.shape(x)?, cx.shape(lv)?);
    let lty = cx.dtype(lv);
    if batch_axis >= xs.len()
        || time_axis >= xs.len()
        || batch_axis == time_axis
        || ls.iter().product::<usize>() != xs[batch_axis]
    {
        return unsupported(format!("reverse_sequence of {xs:?} with lengths {ls:?}"));
    }
    if !matches!(lty, DType::I64 | DType::I32) {
        return unsupported(format!("sequence lengths of type {}", lty.name()));
    }
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let lp = kb.param(&cx.p, cx.buf(lv)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let st = strides(&xs);
    let t_len = xs[time_axis] as i64;
    let body = loop_nest(&mut kb, &xs, |kb, v| {
        let at = flat_index(&st, v);
        let l = Expr::load(lp, Expr::var(v[batch_axis]));
        let l = if lty == DType::I64 {
            l
        } else {
            Expr::cast(DType::I64, l)
        };
        let lvar = kb.var(DType::I64);
        let clamped = Expr::bin(
            BinOp::Min,
            Expr::bin(BinOp::Max, l, Expr::idx(0)),
            Expr::idx(t_len),
        );
        let t = Expr::var(v[time_axis]);
        let src_t = Expr::select(
            Expr::bin(BinOp::Lt, t.clone(), Expr::var(lvar)),
            Expr::bin(
                BinOp::Sub,
                Expr::bin(BinOp::Sub, Expr::var(lvar), Expr::idx(1)),
                t.clone(),
            ),
            t.clone(),
        );
        // The source differs from `at` only along the time axis.
        let src = Expr::add_idx(
            at.clone(),
            Expr::mul_idx(Expr::bin(BinOp::Sub, src_t, t), st[time_axis]),
        );
        vec![
            Stmt::Let {
                var: lvar,
                value: clamped,
            },
            Stmt::Store {
                param: op_,
                index: at,
                value: Expr::load(xp, src),
            },
        ]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `out[p, c, r] = upd[p, t, r]` where position `c` of the axis is written by update step
/// `t = c - write[p_0]` (modulo the axis length when `circular`), `0 <= t < seq`; otherwise
/// `past[p, c, r]`. Each position is written at most once (`seq` is at most the axis
/// length), so the gather equals the interpreter's scatter.
pub(super) fn tensor_scatter(
    cx: &mut Cx,
    node: &Node,
    axis: usize,
    circular: bool,
) -> Result<(), Fail> {
    let (Some(past), Some(upd)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let write = node.input(2);
    let (ps, us) = (cx.shape(past)?, cx.shape(upd)?);
    let ok = ps.len() == us.len()
        && axis < ps.len()
        && (0..ps.len()).all(|k| {
            if k == axis {
                us[k] <= ps[k]
            } else {
                us[k] == ps[k]
            }
        })
        && cx.dtype(past) == cx.dtype(upd);
    if !ok {
        return unsupported(format!(
            "tensor_scatter of {us:?} into {ps:?} on axis {axis}"
        ));
    }
    let wlen = match write {
        Some(w) => {
            let t = cx.dtype(w);
            if !matches!(t, DType::I64 | DType::I32) {
                return unsupported(format!("write indices of type {}", t.name()));
            }
            cx.shape(w)?.iter().product::<usize>()
        }
        None => 0,
    };
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let (max, seq) = (ps[axis], us[axis]);
    let outer: usize = ps[..axis].iter().product();
    let inner: usize = ps[axis + 1..].iter().product();
    // The batch entry of an outer index: its first coordinate (0 when the axis is the first).
    let per_batch: usize = if axis == 0 {
        outer
    } else {
        ps[1..axis].iter().product()
    };
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let pp = kb.param(&cx.p, cx.buf(past)?, Access::Read);
    let up = kb.param(&cx.p, cx.buf(upd)?, Access::Read);
    let wp = match write {
        Some(w) if wlen > 0 => Some(kb.param(&cx.p, cx.buf(w)?, Access::Read)),
        _ => None,
    };
    let op_ = kb.param(&cx.p, out, Access::Write);
    let body = loop_nest(&mut kb, &[outer, max, inner], |kb, v| {
        let (p, c, r) = (Expr::var(v[0]), Expr::var(v[1]), Expr::var(v[2]));
        let b = if axis == 0 {
            Expr::idx(0)
        } else {
            Expr::bin(BinOp::Div, p.clone(), Expr::idx(per_batch as i64))
        };
        // The interpreter reads 0 for a batch entry past the write indices.
        let w = match wp {
            Some(wp) => {
                let at = Expr::bin(BinOp::Min, b.clone(), Expr::idx(wlen as i64 - 1));
                let mut w = Expr::load(wp, at);
                if kb.k.type_of(&w) != DType::I64 {
                    w = Expr::cast(DType::I64, w);
                }
                if outer.div_ceil(per_batch.max(1)) > wlen {
                    w = Expr::select(
                        Expr::bin(BinOp::Lt, b, Expr::idx(wlen as i64)),
                        w,
                        Expr::idx(0),
                    );
                }
                w
            }
            None => Expr::idx(0),
        };
        let t = kb.var(DType::I64);
        let diff = Expr::bin(BinOp::Sub, c.clone(), w);
        if circular && max > 0 {
            // rem_euclid by the axis length.
            let rem = Expr::bin(BinOp::Rem, diff, Expr::idx(max as i64));
            let rv = kb.var(DType::I64);
            let fixed = Expr::select(
                Expr::bin(BinOp::Lt, Expr::var(rv), Expr::idx(0)),
                Expr::bin(BinOp::Add, Expr::var(rv), Expr::idx(max as i64)),
                Expr::var(rv),
            );
            let stmts = vec![
                Stmt::Let {
                    var: rv,
                    value: rem,
                },
                Stmt::Let {
                    var: t,
                    value: fixed,
                },
            ];
            return finish(stmts, t, (p, c, r), (pp, up, op_), (max, seq, inner));
        }
        let stmts = vec![Stmt::Let {
            var: t,
            value: diff,
        }];
        finish(stmts, t, (p, c, r), (pp, up, op_), (max, seq, inner))
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// The store of [`tensor_scatter`]'s element `(p, c, r)`, given the update step `t`.
fn finish(
    mut stmts: Vec<Stmt>,
    t: VarId,
    (p, c, r): (Expr, Expr, Expr),
    (pp, up, op_): (ParamId, ParamId, ParamId),
    (max, seq, inner): (usize, usize, usize),
) -> Vec<Stmt> {
    let t = Expr::var(t);
    let hit = Expr::bin(
        BinOp::And,
        Expr::bin(BinOp::Ge, t.clone(), Expr::idx(0)),
        Expr::bin(BinOp::Lt, t.clone(), Expr::idx(seq as i64)),
    );
    let at = |len: usize, i: Expr| {
        Expr::add_idx(
            Expr::mul_idx(
                Expr::add_idx(Expr::mul_idx(p.clone(), len as i64), i),
                inner as i64,
            ),
            r.clone(),
        )
    };
    let dst = at(max, c.clone());
    let value = if seq == 0 {
        Expr::load(pp, dst.clone())
    } else {
        let ts = Expr::bin(
            BinOp::Min,
            Expr::bin(BinOp::Max, t, Expr::idx(0)),
            Expr::idx(seq as i64 - 1),
        );
        Expr::select(
            hit,
            Expr::load(up, at(seq, ts)),
            Expr::load(pp, dst.clone()),
        )
    };
    stmts.push(Stmt::Store {
        param: op_,
        index: dst,
        value,
    });
    stmts
}
