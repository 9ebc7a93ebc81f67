//! Reductions and softmax-like normalizations: a parallel loop nest over the kept dims, serial
//! loops over the reduced ones, one accumulator in a register.
//!
//! Half-precision inputs accumulate in `f32`.

use super::{Cx, Fail, KernelBuilder, kernel_name, loop_nest, strides, unsupported};
use crate::kernel::*;
use mlc_ir::ops::ReduceOp;
use mlc_ir::ops::reduce::{CumAttrs, ReduceAttrs, ReduceKind, resolve_axes};
use mlc_ir::{DType, Node};

pub(super) fn lower(cx: &mut Cx, node: &Node, op: &ReduceOp) -> Result<(), Fail> {
    lower_with(cx, node, op, None)
}

/// `softmax(a + m)` (`node` the softmax, `(a, m)` the operands of the `ew.add` that fed it) as
/// one kernel: each pass over a row reads `a[i] + m[i']` (`m` broadcast) instead of a summed
/// buffer, which then never exists. Attention's scores plus mask. The sum is rounded to the
/// input type as the separate `add` would. `false`: not this case, nothing launched.
pub(super) fn softmax_of_sum(
    cx: &mut Cx,
    node: &Node,
    op: &ReduceOp,
    (a, m): (mlc_ir::ValueId, mlc_ir::ValueId),
) -> Result<bool, Fail> {
    let (Some(x), ReduceOp::Softmax(_) | ReduceOp::LogSoftmax(_)) = (node.input(0), op) else {
        return Ok(false);
    };
    let (shape, ty) = (cx.shape(x)?, cx.dtype(x));
    let ok = cx.shape(a)? == shape
        && cx.dtype(a) == ty
        && cx.dtype(m) == ty
        && matches!(ty, DType::F32 | DType::F64)
        && broadcast_strides(&cx.shape(m)?, &shape).is_some();
    if !ok {
        return Ok(false);
    }
    lower_with(cx, node, op, Some((a, m)))?;
    Ok(true)
}

/// The strides that index `small` (broadcast numpy-style, right-aligned) by the coordinates
/// of `full`: 0 along broadcast dims. `None` when `small` does not broadcast to `full`.
fn broadcast_strides(small: &[usize], full: &[usize]) -> Option<Vec<i64>> {
    let lead = full.len().checked_sub(small.len())?;
    let own = strides(small);
    (0..full.len())
        .map(|d| match d.checked_sub(lead) {
            None => Some(0),
            Some(j) if small[j] == full[d] => Some(own[j]),
            Some(j) if small[j] == 1 => Some(0),
            Some(_) => None,
        })
        .collect()
}

/// The [`Softmax`] statement for a softmax of `shape` over the `reduced` dims, if they are
/// the innermost ones (so each row is contiguous) and the addend `(param, strides)`, if any,
/// is contiguous along them too; `None` otherwise (the loop form then).
fn softmax_stmt(
    shape: &[usize],
    reduced: &[bool],
    x: ParamId,
    mask: Option<(ParamId, &[i64])>,
    out: ParamId,
) -> Option<Softmax> {
    let first = reduced.iter().position(|&r| r)?;
    if !reduced[first..].iter().all(|&r| r) {
        return None;
    }
    let len: usize = shape[first..].iter().product();
    let rows: usize = shape[..first].iter().product();
    if len == 0 || rows == 0 {
        return None;
    }
    let mask = match mask {
        None => None,
        Some((param, ms)) => {
            // Along a row the addend must step like the row itself (unit dims aside).
            let own = strides(&shape[first..]);
            let contiguous = (first..shape.len()).all(|d| shape[d] == 1 || ms[d] == own[d - first]);
            if !contiguous || ms.iter().any(|&s| s < 0) {
                return None;
            }
            let dims = (0..first).map(|d| (shape[d], ms[d])).collect();
            Some(SoftmaxMask { param, dims })
        }
    };
    Some(Softmax {
        rows,
        len,
        x,
        scale: None,
        mask,
        out,
    })
}

/// The reduction lowering; `addend`: the input is `a + m` of two buffers (see
/// [`softmax_of_sum`]).
fn lower_with(
    cx: &mut Cx,
    node: &Node,
    op: &ReduceOp,
    addend: Option<(mlc_ir::ValueId, mlc_ir::ValueId)>,
) -> Result<(), Fail> {
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    let shape = cx.shape(x)?;
    let rank = shape.len();
    let (kind, softmax) = match op {
        ReduceOp::Softmax(a) => (ReduceKind::Sum, Some((a.axis, a.coerce_2d, false))),
        ReduceOp::LogSoftmax(a) => (ReduceKind::Sum, Some((a.axis, a.coerce_2d, true))),
        ReduceOp::ArgMax(a) => return arg(cx, node, a.axis, true, a.select_last_index),
        ReduceOp::ArgMin(a) => return arg(cx, node, a.axis, false, a.select_last_index),
        ReduceOp::CumSum(a) => return cumulative(cx, node, a, false),
        ReduceOp::CumProd(a) => return cumulative(cx, node, a, true),
        ReduceOp::Hardmax(a) => return hardmax(cx, node, a.axis, a.coerce_2d),
        ReduceOp::TopK { axis, largest, .. } => return top_k(cx, node, *axis, *largest),
        ReduceOp::LpNorm { axis, p } => return lp_norm(cx, node, *axis, *p),
        ReduceOp::NllLoss {
            reduction,
            ignore_index,
        } => return super::loss::nll(cx, node, *reduction, *ignore_index, false),
        ReduceOp::SoftmaxCrossEntropy {
            reduction,
            ignore_index,
        } => return super::loss::nll(cx, node, *reduction, *ignore_index, true),
        _ => match op.as_reduction() {
            Some((kind, _)) => (kind, None),
            None => return unsupported("not lowered to kernels yet"),
        },
    };
    let ty = cx.dtype(x);
    // Bools reduce by max (any) and min (all) only.
    let bool_ok = ty == DType::Bool && matches!(kind, ReduceKind::Max | ReduceKind::Min);
    if (!ty.is_numeric() || ty.is_storage_only()) && !bool_ok {
        return unsupported(format!("reduction over {}", ty.name()));
    }
    let candidates: Vec<Vec<bool>> = match softmax {
        Some((axis, true, _)) => vec![(0..rank).map(|d| d >= axis).collect()],
        Some((axis, false, _)) => vec![(0..rank).map(|d| d == axis).collect()],
        None => {
            let Some((_, attrs)) = op.as_reduction() else {
                return unsupported("not a reduction");
            };
            reduced_dims(cx, node, attrs, &shape)?
        }
    };
    if softmax.is_none()
        && addend.is_none()
        && let [reduced] = candidates.as_slice()
        && let Some(split) = column_split(&shape, reduced)
        && column_kind(kind)
        && ty.is_float()
        && !ty.is_storage_only()
        && !matches!(ty, DType::F16 | DType::BF16)
    {
        return columns(cx, node, x, kind, split);
    }
    let out_v = node.outputs[0];
    let out = cx.new_buffer(out_v, BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let (xp, mp, m_strides) = match addend {
        Some((a, m)) => {
            let xp = kb.param(&cx.p, cx.buf(a)?, Access::Read);
            let mp = kb.param(&cx.p, cx.buf(m)?, Access::Read);
            let Some(ms) = broadcast_strides(&cx.shape(m)?, &shape) else {
                return unsupported("addend does not broadcast");
            };
            (xp, Some(mp), ms)
        }
        None => (
            kb.param(&cx.p, cx.buf(x)?, Access::Read),
            None,
            vec![0; rank],
        ),
    };
    // Softmax (not log-softmax) in f32/f64 scales the stored exponentials in place.
    let rescale_in_place =
        matches!(softmax, Some((_, _, false))) && matches!(ty, DType::F32 | DType::F64);
    let op_ = kb.param(
        &cx.p,
        out,
        if rescale_in_place {
            Access::ReadWrite
        } else {
            Access::Write
        },
    );
    // An `f32` softmax over the innermost dims is one `Stmt::Softmax`, the backend's library
    // kernel ([`crate::expand_softmax`] gives its loop form to backends without one).
    if let (Some((_, _, false)), DType::F32, [reduced]) = (softmax, ty, candidates.as_slice())
        && let Some(sm) = softmax_stmt(&shape, reduced, xp, mp.map(|p| (p, &m_strides[..])), op_)
    {
        kb.k.body = vec![Stmt::Softmax(Box::new(sm))];
        cx.launch(kb, node);
        return Ok(());
    }
    let acc_ty = if matches!(ty, DType::F16 | DType::BF16) {
        DType::F32
    } else {
        ty
    };
    // Axes read at run time that the output shape leaves ambiguous: one nest per candidate
    // set of axes, each inside a loop that runs once if the run-time axes are that set and
    // not at all otherwise (the kernel IR's conditional).
    let mut flags = Vec::new();
    if candidates.len() > 1 {
        let Some(av) = node.input(1).filter(|&v| cx.dtype(v) == DType::I64) else {
            return unsupported("ambiguous reduction axes that are not an i64 input");
        };
        let l = cx.shape(av)?.iter().product::<usize>();
        let ap = kb.param(&cx.p, cx.buf(av)?, Access::Read);
        let axis = |i: usize| {
            Expr::bin(
                BinOp::Rem,
                Expr::bin(
                    BinOp::Add,
                    Expr::load(ap, Expr::idx(i as i64)),
                    Expr::idx(rank as i64),
                ),
                Expr::idx(rank as i64),
            )
        };
        let any = |items: Vec<Expr>| {
            items
                .into_iter()
                .reduce(|p, q| Expr::bin(BinOp::Or, p, q))
                .unwrap_or(Expr::Lit(Lit::Bool(false)))
        };
        for reduced in &candidates {
            let dims: Vec<usize> = (0..rank).filter(|&d| reduced[d]).collect();
            let mut ok = Expr::Lit(Lit::Bool(true));
            for i in 0..l {
                let hit = any(dims
                    .iter()
                    .map(|&d| Expr::bin(BinOp::Eq, axis(i), Expr::idx(d as i64)))
                    .collect());
                ok = Expr::bin(BinOp::And, ok, hit);
            }
            for &d in &dims {
                let hit = any((0..l)
                    .map(|i| Expr::bin(BinOp::Eq, axis(i), Expr::idx(d as i64)))
                    .collect());
                ok = Expr::bin(BinOp::And, ok, hit);
            }
            let f = kb.var(DType::Bool);
            flags.push(Stmt::Let { var: f, value: ok });
        }
    }
    let mut bodies = Vec::new();
    for reduced in &candidates {
        let kept: Vec<usize> = (0..rank)
            .filter(|&d| !reduced[d])
            .map(|d| shape[d])
            .collect();
        let red: Vec<usize> = (0..rank)
            .filter(|&d| reduced[d])
            .map(|d| shape[d])
            .collect();
        let count: usize = red.iter().product();
        let in_strides = strides(&shape);
        let kept_strides = strides(&kept);
        let body = loop_nest(&mut kb, &kept, |kb, kvars| {
            // Map kept loop counters back to input dims, and index the output by them.
            let mut kept_idx = Expr::idx(0);
            let mut kept_m = Expr::idx(0);
            let mut out_idx = Expr::idx(0);
            let (mut k, mut dims_red) = (0, Vec::new());
            for d in 0..rank {
                if reduced[d] {
                    dims_red.push(d);
                } else {
                    kept_idx =
                        Expr::add_idx(kept_idx, Expr::mul_idx(Expr::var(kvars[k]), in_strides[d]));
                    kept_m =
                        Expr::add_idx(kept_m, Expr::mul_idx(Expr::var(kvars[k]), m_strides[d]));
                    out_idx =
                        Expr::add_idx(out_idx, Expr::mul_idx(Expr::var(kvars[k]), kept_strides[k]));
                    k += 1;
                }
            }
            // A serial nest over the reduced dims; `f` builds the innermost statements from the
            // input element's index (and the addend's).
            let red_nest =
                |kb: &mut KernelBuilder,
                 f: &mut dyn FnMut(&mut KernelBuilder, Expr, Expr) -> Vec<Stmt>| {
                    let rvars: Vec<VarId> = dims_red.iter().map(|_| kb.var(DType::I64)).collect();
                    let (mut idx, mut midx) = (kept_idx.clone(), kept_m.clone());
                    for (i, &d) in dims_red.iter().enumerate() {
                        idx = Expr::add_idx(idx, Expr::mul_idx(Expr::var(rvars[i]), in_strides[d]));
                        midx =
                            Expr::add_idx(midx, Expr::mul_idx(Expr::var(rvars[i]), m_strides[d]));
                    }
                    let mut body = f(kb, idx, midx);
                    for (i, &d) in dims_red.iter().enumerate().rev() {
                        // The innermost reduced dim is a SIMD loop: its body is one reduction
                        // step or one store, which backends may reassociate / run in lanes.
                        let kind = if i + 1 == dims_red.len() {
                            LoopKind::Vector
                        } else {
                            LoopKind::Serial
                        };
                        body = vec![Stmt::For {
                            var: rvars[i],
                            extent: Expr::idx(shape[d] as i64),
                            kind,
                            body,
                        }];
                    }
                    body
                };
            let load = |idx: Expr, midx: Expr| {
                let e = Expr::load(xp, idx);
                let e = match mp {
                    Some(mp) => Expr::bin(BinOp::Add, e, Expr::load(mp, midx)),
                    None => e,
                };
                if acc_ty != ty {
                    Expr::cast(acc_ty, e)
                } else {
                    e
                }
            };
            let c = |v: f64| lit(acc_ty, v);
            let mut stmts = Vec::new();
            match softmax {
                Some((_, _, log)) => {
                    let mx = kb.var(acc_ty);
                    stmts.push(Stmt::Let {
                        var: mx,
                        value: c(f64::NEG_INFINITY),
                    });
                    stmts.extend(red_nest(kb, &mut |_, idx, midx| {
                        vec![Stmt::Assign {
                            var: mx,
                            value: Expr::bin(BinOp::Max, Expr::var(mx), load(idx, midx)),
                        }]
                    }));
                    let sum = kb.var(acc_ty);
                    stmts.push(Stmt::Let {
                        var: sum,
                        value: c(0.0),
                    });
                    // Softmax in the accumulation type stores the exponentials as it sums them
                    // and scales them in place after, so each element takes one `exp`.
                    let store_exp = !log && acc_ty == ty;
                    stmts.extend(red_nest(kb, &mut |kb, idx, midx| {
                        let e = Expr::un(
                            UnOp::Exp,
                            Expr::bin(BinOp::Sub, load(idx.clone(), midx.clone()), Expr::var(mx)),
                        );
                        if store_exp {
                            let ev = kb.var(acc_ty);
                            return vec![
                                Stmt::Let { var: ev, value: e },
                                Stmt::Store {
                                    param: op_,
                                    index: idx,
                                    value: Expr::var(ev),
                                },
                                Stmt::Assign {
                                    var: sum,
                                    value: Expr::bin(BinOp::Add, Expr::var(sum), Expr::var(ev)),
                                },
                            ];
                        }
                        vec![Stmt::Assign {
                            var: sum,
                            value: Expr::bin(BinOp::Add, Expr::var(sum), e),
                        }]
                    }));
                    let scale = kb.var(acc_ty);
                    let sv = if log {
                        Expr::un(UnOp::Log, Expr::var(sum))
                    } else {
                        Expr::bin(BinOp::Div, c(1.0), Expr::var(sum))
                    };
                    stmts.push(Stmt::Let {
                        var: scale,
                        value: sv,
                    });
                    stmts.extend(red_nest(kb, &mut |_, idx, midx| {
                        if store_exp {
                            let y = Expr::load(op_, idx.clone());
                            return vec![Stmt::Store {
                                param: op_,
                                index: idx,
                                value: Expr::bin(BinOp::Mul, y, Expr::var(scale)),
                            }];
                        }
                        let shifted =
                            Expr::bin(BinOp::Sub, load(idx.clone(), midx.clone()), Expr::var(mx));
                        let v = if log {
                            Expr::bin(BinOp::Sub, shifted, Expr::var(scale))
                        } else {
                            Expr::bin(BinOp::Mul, Expr::un(UnOp::Exp, shifted), Expr::var(scale))
                        };
                        let v = if acc_ty != ty { Expr::cast(ty, v) } else { v };
                        vec![Stmt::Store {
                            param: op_,
                            index: idx,
                            value: v,
                        }]
                    }));
                }
                None => {
                    let acc = kb.var(acc_ty);
                    let init = match kind {
                        ReduceKind::Max => min_of(acc_ty),
                        ReduceKind::Min => max_of(acc_ty),
                        ReduceKind::Prod => c(1.0),
                        _ => c(0.0),
                    };
                    stmts.push(Stmt::Let {
                        var: acc,
                        value: init,
                    });
                    // LogSumExp subtracts the maximum first, so exp cannot overflow.
                    let mx = if kind == ReduceKind::LogSumExp {
                        let mx = kb.var(acc_ty);
                        stmts.push(Stmt::Let {
                            var: mx,
                            value: c(f64::NEG_INFINITY),
                        });
                        stmts.extend(red_nest(kb, &mut |_, idx, midx| {
                            vec![Stmt::Assign {
                                var: mx,
                                value: Expr::bin(BinOp::Max, Expr::var(mx), load(idx, midx)),
                            }]
                        }));
                        Some(mx)
                    } else {
                        None
                    };
                    stmts.extend(red_nest(kb, &mut |_, idx, midx| {
                        let x = load(idx, midx);
                        let a = Expr::var(acc);
                        let v = match kind {
                            ReduceKind::Sum | ReduceKind::Mean | ReduceKind::LogSum => {
                                Expr::bin(BinOp::Add, a, x)
                            }
                            ReduceKind::Max if bool_ok => Expr::bin(BinOp::Or, a, x),
                            ReduceKind::Min if bool_ok => Expr::bin(BinOp::And, a, x),
                            ReduceKind::Max => Expr::bin(BinOp::Max, a, x),
                            ReduceKind::Min => Expr::bin(BinOp::Min, a, x),
                            ReduceKind::Prod => Expr::bin(BinOp::Mul, a, x),
                            ReduceKind::L1 => Expr::bin(BinOp::Add, a, Expr::un(UnOp::Abs, x)),
                            ReduceKind::L2 | ReduceKind::SumSquare => {
                                Expr::bin(BinOp::Add, a, Expr::bin(BinOp::Mul, x.clone(), x))
                            }
                            ReduceKind::LogSumExp => {
                                let m = Expr::var(mx.unwrap_or(acc));
                                Expr::bin(
                                    BinOp::Add,
                                    a,
                                    Expr::un(UnOp::Exp, Expr::bin(BinOp::Sub, x, m)),
                                )
                            }
                        };
                        vec![Stmt::Assign { var: acc, value: v }]
                    }));
                    let a = Expr::var(acc);
                    let fin = match kind {
                        ReduceKind::Mean if acc_ty.is_float() => {
                            Expr::bin(BinOp::Div, a, c(count as f64))
                        }
                        ReduceKind::Mean => {
                            Expr::bin(BinOp::Div, a, Expr::Lit(Lit::Int(acc_ty, count as i64)))
                        }
                        ReduceKind::L2 => Expr::un(UnOp::Sqrt, a),
                        ReduceKind::LogSum => Expr::un(UnOp::Log, a),
                        ReduceKind::LogSumExp => {
                            let m = Expr::var(mx.unwrap_or(acc));
                            Expr::bin(BinOp::Add, Expr::un(UnOp::Log, a), m)
                        }
                        _ => a,
                    };
                    let fin = if acc_ty != ty {
                        Expr::cast(ty, fin)
                    } else {
                        fin
                    };
                    stmts.push(Stmt::Store {
                        param: op_,
                        index: out_idx.clone(),
                        value: fin,
                    });
                }
            }
            stmts
        });
        if count == 0 && (kind == ReduceKind::Mean || !(ty.is_float() || bool_ok)) {
            return unsupported("mean or integer reduction over an empty dimension");
        }
        bodies.push(body);
    }
    kb.k.body = if candidates.len() == 1 {
        bodies.pop().unwrap_or_default()
    } else {
        let mut stmts = flags.clone();
        for (flag, body) in flags.iter().zip(bodies) {
            let Stmt::Let { var: f, .. } = flag else {
                continue;
            };
            let once = kb.var(DType::I64);
            stmts.push(Stmt::For {
                var: once,
                extent: Expr::select(Expr::var(*f), Expr::idx(1), Expr::idx(0)),
                kind: LoopKind::Serial,
                body,
            });
        }
        stmts
    };
    cx.launch(kb, node);
    Ok(())
}

/// `(outer, reduced, inner)` extents when the reduced dims are one contiguous block followed
/// by kept dims (`inner` > 1): the input is then `outer` stacks of `reduced` rows of `inner`
/// contiguous elements, and each output element is a column sum of one stack.
fn column_split(shape: &[usize], reduced: &[bool]) -> Option<(usize, usize, usize)> {
    let first = reduced.iter().position(|&r| r)?;
    let end = first + reduced[first..].iter().take_while(|&&r| r).count();
    if reduced[end..].iter().any(|&r| r) {
        return None;
    }
    let prod = |d: &[usize]| d.iter().product::<usize>();
    let (outer, red, inner) = (
        prod(&shape[..first]),
        prod(&shape[first..end]),
        prod(&shape[end..]),
    );
    (inner > 1 && red > 1).then_some((outer, red, inner))
}

/// Reductions whose running value is one element of the output type (no second pass, no
/// wider accumulator), so they can accumulate in the output itself.
fn column_kind(kind: ReduceKind) -> bool {
    !matches!(kind, ReduceKind::LogSumExp)
}

/// Columns of `inner` contiguous elements per output, at least this many to split a stack
/// across threads.
const COLUMN_BLOCK: usize = 64;

/// A reduction over dims that are not innermost in memory (LayerNorm statistics over the
/// channel dim of a channels-last tensor, column sums): the row-by-row form would read each
/// output's elements `inner` apart, one scalar at a time. Instead each output row accumulates
/// in place over the reduced rows, a contiguous vector loop per row:
///
/// ```text
/// out[o, :] = init;  for r { out[o, :] = out[o, :] ⊕ f(x[o, r, :]) };  out[o, :] = fin(out[o, :])
/// ```
///
/// Each output element still sums its inputs in order `r` = 0, 1, ... (no reassociation).
/// A lone stack splits its columns into blocks, so threads share the work.
fn columns(
    cx: &mut Cx,
    node: &Node,
    x: mlc_ir::ValueId,
    kind: ReduceKind,
    (outer, red, inner): (usize, usize, usize),
) -> Result<(), Fail> {
    let ty = cx.dtype(x);
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    // Read too: the output holds the running values.
    let op_ = kb.param(&cx.p, out, Access::ReadWrite);
    let c = |v: f64| lit(ty, v);
    let (o, r, i) = (kb.var(DType::I64), kb.var(DType::I64), kb.var(DType::I64));
    // Column blocks: a lone stack of wide rows splits across threads.
    let (blocks, width) = if outer == 1 && inner % COLUMN_BLOCK == 0 && inner > COLUMN_BLOCK {
        (inner / COLUMN_BLOCK, COLUMN_BLOCK)
    } else {
        (1, inner)
    };
    let b = kb.var(DType::I64);
    // Column `i` of block `b` of stack `o`.
    let col = Expr::add_idx(Expr::mul_idx(Expr::var(b), width as i64), Expr::var(i));
    let out_idx = Expr::add_idx(Expr::mul_idx(Expr::var(o), inner as i64), col.clone());
    let in_idx = Expr::add_idx(
        Expr::mul_idx(
            Expr::add_idx(Expr::mul_idx(Expr::var(o), red as i64), Expr::var(r)),
            inner as i64,
        ),
        col,
    );
    let init = match kind {
        ReduceKind::Max => min_of(ty),
        ReduceKind::Min => max_of(ty),
        ReduceKind::Prod => c(1.0),
        _ => c(0.0),
    };
    let a = Expr::load(op_, out_idx.clone());
    let xv = Expr::load(xp, in_idx);
    let step = match kind {
        ReduceKind::Max => Expr::bin(BinOp::Max, a, xv),
        ReduceKind::Min => Expr::bin(BinOp::Min, a, xv),
        ReduceKind::Prod => Expr::bin(BinOp::Mul, a, xv),
        ReduceKind::L1 => Expr::bin(BinOp::Add, a, Expr::un(UnOp::Abs, xv)),
        ReduceKind::L2 | ReduceKind::SumSquare => {
            Expr::bin(BinOp::Add, a, Expr::bin(BinOp::Mul, xv.clone(), xv))
        }
        _ => Expr::bin(BinOp::Add, a, xv),
    };
    let a = Expr::load(op_, out_idx.clone());
    let fin = match kind {
        ReduceKind::Mean => Some(Expr::bin(BinOp::Div, a, c(red as f64))),
        ReduceKind::L2 => Some(Expr::un(UnOp::Sqrt, a)),
        ReduceKind::LogSum => Some(Expr::un(UnOp::Log, a)),
        _ => None,
    };
    let row = |value: Expr| Stmt::For {
        var: i,
        extent: Expr::idx(width as i64),
        kind: LoopKind::Vector,
        body: vec![Stmt::Store {
            param: op_,
            index: out_idx.clone(),
            value,
        }],
    };
    let mut body = vec![
        row(init),
        Stmt::For {
            var: r,
            extent: Expr::idx(red as i64),
            kind: LoopKind::Serial,
            body: vec![row(step)],
        },
    ];
    body.extend(fin.map(row));
    let (vars, extents) = if blocks > 1 {
        ([b, o], [blocks, outer])
    } else {
        ([o, b], [outer, 1])
    };
    kb.k.body = super::wrap_loops(
        &vars,
        &extents,
        &[LoopKind::Parallel, LoopKind::Serial],
        body,
    );
    cx.launch(kb, node);
    Ok(())
}

/// `GlobalMaxPool`/`GlobalAveragePool` of `f32`/`f64` planes: one contiguous plane per
/// (batch, channel), reduced by one vector loop (max, or sum then divided by the plane size),
/// as `reduce.max`/`reduce.mean` over the spatial dims would. Pooling's window form (a serial
/// tap loop with a counter) cannot vectorize. `false`: not this case, nothing launched.
pub(super) fn global_pool(cx: &mut Cx, node: &Node, max: bool) -> Result<bool, Fail> {
    let Some(x) = node.input(0) else {
        return Ok(false);
    };
    let (shape, ty) = (cx.shape(x)?, cx.dtype(x));
    if !matches!(ty, DType::F32 | DType::F64) || shape.len() < 2 || node.outputs.len() != 1 {
        return Ok(false);
    }
    let planes = shape[0] * shape[1];
    let hw: usize = shape[2..].iter().product();
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let (p, i, acc) = (kb.var(DType::I64), kb.var(DType::I64), kb.var(ty));
    let xv = Expr::load(
        xp,
        Expr::add_idx(Expr::mul_idx(Expr::var(p), hw as i64), Expr::var(i)),
    );
    let (init, step, fin) = if max {
        let step = Expr::bin(BinOp::Max, Expr::var(acc), xv);
        (lit(ty, f64::NEG_INFINITY), step, Expr::var(acc))
    } else {
        let step = Expr::bin(BinOp::Add, Expr::var(acc), xv);
        let fin = Expr::bin(BinOp::Div, Expr::var(acc), lit(ty, hw as f64));
        (lit(ty, 0.0), step, fin)
    };
    let body = vec![
        Stmt::Let {
            var: acc,
            value: init,
        },
        Stmt::For {
            var: i,
            extent: Expr::idx(hw as i64),
            kind: LoopKind::Vector,
            body: vec![Stmt::Assign {
                var: acc,
                value: step,
            }],
        },
        Stmt::Store {
            param: op_,
            index: Expr::var(p),
            value: fin,
        },
    ];
    kb.k.body = super::wrap_loops(&[p], &[planes], &[LoopKind::Parallel], body);
    cx.launch(kb, node);
    Ok(true)
}

/// Which dims a reduction reduces. Axes come from the attribute, a constant input, or, when
/// the input is only known at run time, from the static output shape: with `keepdims` the
/// reduced dims are those that shrank to 1 (reducing a dim that already is 1 changes nothing);
/// without, every set of dims whose removal gives the output shape (the caller picks among
/// several at run time).
fn reduced_dims(
    cx: &Cx,
    node: &Node,
    attrs: &ReduceAttrs,
    shape: &[usize],
) -> Result<Vec<Vec<bool>>, Fail> {
    let rank = shape.len();
    let mark = |axes: &[usize]| vec![(0..rank).map(|d| axes.contains(&d)).collect()];
    if let Some(ax) = &attrs.axes {
        return Ok(mark(ax));
    }
    let Some(av) = node.input(1) else {
        let all: Vec<usize> = (0..rank).collect();
        return Ok(mark(if attrs.noop_with_empty_axes {
            &[]
        } else {
            &all
        }));
    };
    if let Some(vals) = cx.g.const_value(av).and_then(|t| t.to_i64_vec().ok()) {
        let axes = resolve_axes(&vals, rank, attrs.noop_with_empty_axes)
            .map_err(|e| Fail::Unsupported(e.to_string()))?;
        return Ok(mark(&axes));
    }
    let out = cx.shape(node.outputs[0])?;
    if attrs.keepdims {
        if out.len() != rank {
            return unsupported("reduction output rank differs from its input's");
        }
        return Ok(vec![(0..rank).map(|d| shape[d] != out[d]).collect()]);
    }
    let drop = rank.checked_sub(out.len()).unwrap_or(usize::MAX);
    if drop > rank || rank > 16 {
        return unsupported("reduction output of higher rank than its input");
    }
    let mut found: Vec<Vec<bool>> = Vec::new();
    for set in 0u32..(1 << rank) {
        if set.count_ones() as usize != drop {
            continue;
        }
        let kept: Vec<usize> = (0..rank)
            .filter(|d| set & (1 << d) == 0)
            .map(|d| shape[d])
            .collect();
        if kept == out {
            found.push((0..rank).map(|d| set & (1 << d) != 0).collect());
        }
    }
    if found.is_empty() || found.len() > 8 {
        return unsupported("run-time reduction axes that the output shape does not determine");
    }
    Ok(found)
}

fn lit(ty: DType, v: f64) -> Expr {
    if ty.is_float() {
        Expr::float(ty, v)
    } else if v.is_infinite() {
        if v > 0.0 { max_of(ty) } else { min_of(ty) }
    } else {
        Expr::Lit(Lit::Int(ty, v as i64))
    }
}

pub(super) fn min_of(ty: DType) -> Expr {
    match ty {
        DType::Bool => Expr::Lit(Lit::Bool(false)),
        t if t.is_float() => Expr::float(t, f64::NEG_INFINITY),
        DType::I8 => Expr::Lit(Lit::Int(ty, i8::MIN as i64)),
        DType::I16 => Expr::Lit(Lit::Int(ty, i16::MIN as i64)),
        DType::I32 => Expr::Lit(Lit::Int(ty, i32::MIN as i64)),
        DType::I64 => Expr::Lit(Lit::Int(ty, i64::MIN)),
        _ => Expr::Lit(Lit::Int(ty, 0)),
    }
}

fn max_of(ty: DType) -> Expr {
    match ty {
        DType::Bool => Expr::Lit(Lit::Bool(true)),
        t if t.is_float() => Expr::float(t, f64::INFINITY),
        DType::I8 => Expr::Lit(Lit::Int(ty, i8::MAX as i64)),
        DType::U8 => Expr::Lit(Lit::Int(ty, u8::MAX as i64)),
        DType::I16 => Expr::Lit(Lit::Int(ty, i16::MAX as i64)),
        DType::U16 => Expr::Lit(Lit::Int(ty, u16::MAX as i64)),
        DType::I32 => Expr::Lit(Lit::Int(ty, i32::MAX as i64)),
        DType::U32 => Expr::Lit(Lit::Int(ty, u32::MAX as i64)),
        _ => Expr::Lit(Lit::Int(ty, i64::MAX)),
    }
}

/// Splits `shape` around `axis`: (outer extent, axis extent, inner extent).
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// `ArgMax`/`ArgMin` along `axis`: the first (or last) index of the extreme value, as i64.
fn arg(cx: &mut Cx, node: &Node, axis: usize, max: bool, last: bool) -> Result<(), Fail> {
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    let shape = cx.shape(x)?;
    let ty = cx.dtype(x);
    if axis >= shape.len() || shape[axis] == 0 || !ty.is_numeric() || ty.is_storage_only() {
        return unsupported("arg-reduction over an empty or non-numeric axis");
    }
    let (outer, n, inner) = around(&shape, axis);
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let body = loop_nest(&mut kb, &[outer, inner], |kb, v| {
        let (o, i) = (Expr::var(v[0]), Expr::var(v[1]));
        let base = Expr::add_idx(Expr::mul_idx(o.clone(), (n * inner) as i64), i.clone());
        let (best, at, k) = (kb.var(ty), kb.var(DType::I64), kb.var(DType::I64));
        let cmp = match (max, last) {
            (true, false) => BinOp::Gt,
            (true, true) => BinOp::Ge,
            (false, false) => BinOp::Lt,
            (false, true) => BinOp::Le,
        };
        let xv = Expr::load(
            xp,
            Expr::add_idx(base.clone(), Expr::mul_idx(Expr::var(k), inner as i64)),
        );
        let better = Expr::bin(cmp, xv.clone(), Expr::var(best));
        vec![
            Stmt::Let {
                var: best,
                value: Expr::load(xp, base),
            },
            Stmt::Let {
                var: at,
                value: Expr::idx(0),
            },
            best_scan(k, n, at, best, better, xv),
            Stmt::Store {
                param: op_,
                index: Expr::add_idx(Expr::mul_idx(o, inner as i64), i),
                value: Expr::var(at),
            },
        ]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `CumSum` (or `CumProd`) along `axis`, inclusive or exclusive, forward or reversed. An axis
/// given at run time is read by the kernel: the lane geometry (outer, axis, inner extents)
/// then comes from a select over the possible axes.
fn cumulative(cx: &mut Cx, node: &Node, a: &CumAttrs, prod: bool) -> Result<(), Fail> {
    let (exclusive, reverse) = (a.exclusive, a.reverse);
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    let shape = cx.shape(x)?;
    let rank = shape.len();
    let axis = match a.axis {
        Some(a) => Some(a),
        // A vector has one axis, whatever the run-time input says.
        None if rank == 1 => Some(0),
        None => match node
            .input(1)
            .and_then(|v| cx.g.const_value(v))
            .and_then(|t| t.to_i64_vec().ok())
        {
            Some(a) if a.len() == 1 => {
                Some((if a[0] < 0 { a[0] + rank as i64 } else { a[0] }) as usize)
            }
            _ => None,
        },
    };
    let ty = cx.dtype(x);
    if axis.is_some_and(|a| a >= rank) || rank == 0 || !ty.is_numeric() || ty.is_storage_only() {
        return unsupported("cumulative op over a non-numeric input or outside its rank");
    }
    let runtime_axis = match (axis, node.input(1)) {
        (Some(_), _) => None,
        (None, Some(v)) => Some((v, cx.dtype(v))),
        (None, None) => return unsupported("cumulative op without an axis"),
    };
    let acc_ty = if matches!(ty, DType::F16 | DType::BF16) {
        DType::F32
    } else {
        ty
    };
    let total: usize = shape.iter().product();
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let ap = match runtime_axis {
        Some((v, t)) => Some((kb.param(&cx.p, cx.buf(v)?, Access::Read), t)),
        None => None,
    };
    let op_ = kb.param(&cx.p, out, Access::Write);
    let (ax, q, k, acc) = (
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(acc_ty),
    );
    let (nv, iv) = (kb.var(DType::I64), kb.var(DType::I64));
    // The axis, then the axis length and the inner extent as functions of it.
    let axis_value = match (axis, ap) {
        (Some(a), _) => Expr::idx(a as i64),
        (None, Some((p, t))) => {
            let raw = Expr::load(p, Expr::idx(0));
            let raw = if t == DType::I64 {
                raw
            } else {
                Expr::cast(DType::I64, raw)
            };
            Expr::bin(
                BinOp::Rem,
                Expr::bin(BinOp::Add, raw, Expr::idx(rank as i64)),
                Expr::idx(rank as i64),
            )
        }
        (None, None) => Expr::idx(0),
    };
    let by_axis = |f: &dyn Fn(usize) -> usize| {
        (0..rank).rev().fold(Expr::idx(f(rank - 1) as i64), |e, d| {
            Expr::select(
                Expr::bin(BinOp::Eq, Expr::var(ax), Expr::idx(d as i64)),
                Expr::idx(f(d) as i64),
                e,
            )
        })
    };
    let n_of = by_axis(&|d| shape[d]);
    let inner_of = by_axis(&|d| shape[d + 1..].iter().product());
    let (n, inner) = (Expr::var(nv), Expr::var(iv));
    let o = Expr::bin(BinOp::Div, Expr::var(q), inner.clone());
    let i = Expr::bin(BinOp::Rem, Expr::var(q), inner.clone());
    let base = Expr::add_idx(
        Expr::bin(
            BinOp::Mul,
            Expr::bin(BinOp::Mul, o, n.clone()),
            inner.clone(),
        ),
        i,
    );
    let pos = if reverse {
        Expr::bin(
            BinOp::Sub,
            Expr::bin(BinOp::Sub, n.clone(), Expr::idx(1)),
            Expr::var(k),
        )
    } else {
        Expr::var(k)
    };
    let at = Expr::add_idx(base, Expr::bin(BinOp::Mul, pos, inner.clone()));
    let xv = Expr::load(xp, at.clone());
    let xv = if acc_ty != ty {
        Expr::cast(acc_ty, xv)
    } else {
        xv
    };
    let add = Stmt::Assign {
        var: acc,
        value: Expr::bin(
            if prod { BinOp::Mul } else { BinOp::Add },
            Expr::var(acc),
            xv,
        ),
    };
    let narrow = |e: Expr| if acc_ty != ty { Expr::cast(ty, e) } else { e };
    let store = Stmt::Store {
        param: op_,
        index: at,
        value: narrow(Expr::var(acc)),
    };
    let lanes = if total == 0 {
        Expr::idx(0)
    } else {
        Expr::bin(BinOp::Div, Expr::idx(total as i64), n.clone())
    };
    kb.k.body = vec![
        Stmt::Let {
            var: ax,
            value: axis_value,
        },
        Stmt::Let {
            var: nv,
            value: n_of,
        },
        Stmt::Let {
            var: iv,
            value: inner_of,
        },
        Stmt::For {
            var: q,
            extent: lanes,
            kind: LoopKind::Parallel,
            body: vec![
                Stmt::Let {
                    var: acc,
                    value: lit(acc_ty, if prod { 1.0 } else { 0.0 }),
                },
                Stmt::For {
                    var: k,
                    extent: n,
                    kind: LoopKind::Serial,
                    body: if exclusive {
                        vec![store, add]
                    } else {
                        vec![add, store]
                    },
                },
            ],
        },
    ];
    cx.launch(kb, node);
    Ok(())
}

/// `Hardmax`: 1 at the first maximum of each lane, 0 elsewhere; a lane is `axis` alone, or
/// every dim from `axis` on (`coerce_2d`).
fn hardmax(cx: &mut Cx, node: &Node, axis: usize, coerce_2d: bool) -> Result<(), Fail> {
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    let shape = cx.shape(x)?;
    let ty = cx.dtype(x);
    if axis >= shape.len() || !ty.is_float() || ty.is_storage_only() {
        return unsupported("hardmax needs a float input and an axis inside it");
    }
    let (outer, n, inner) = if coerce_2d {
        (
            shape[..axis].iter().product(),
            shape[axis..].iter().product(),
            1,
        )
    } else {
        around(&shape, axis)
    };
    if n == 0 {
        return unsupported("hardmax over an empty axis");
    }
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let body = loop_nest(&mut kb, &[outer, inner], |kb, v| {
        let base = Expr::add_idx(
            Expr::mul_idx(Expr::var(v[0]), (n * inner) as i64),
            Expr::var(v[1]),
        );
        let at = |k: VarId| Expr::add_idx(base.clone(), Expr::mul_idx(Expr::var(k), inner as i64));
        let (best, pos, k, j) = (
            kb.var(ty),
            kb.var(DType::I64),
            kb.var(DType::I64),
            kb.var(DType::I64),
        );
        // NaN beats everything, and the first NaN wins, as in the interpreter's `greater`.
        let xv = Expr::load(xp, at(k));
        let better = Expr::bin(
            BinOp::Or,
            Expr::bin(BinOp::Gt, xv.clone(), Expr::var(best)),
            Expr::bin(
                BinOp::And,
                Expr::un(UnOp::IsNan, xv.clone()),
                Expr::un(UnOp::Not, Expr::un(UnOp::IsNan, Expr::var(best))),
            ),
        );
        let hit = Expr::bin(BinOp::Eq, Expr::var(j), Expr::var(pos));
        vec![
            Stmt::Let {
                var: best,
                value: Expr::load(xp, base.clone()),
            },
            Stmt::Let {
                var: pos,
                value: Expr::idx(0),
            },
            best_scan(k, n, pos, best, better, xv),
            Stmt::For {
                var: j,
                extent: Expr::idx(n as i64),
                kind: LoopKind::Serial,
                body: vec![Stmt::Store {
                    param: op_,
                    index: at(j),
                    value: Expr::select(hit, lit(ty, 1.0), lit(ty, 0.0)),
                }],
            },
        ]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `LpNormalization`: `x / ||x||_p` along `axis` (`p` 1 or 2), 0 where the norm is 0.
fn lp_norm(cx: &mut Cx, node: &Node, axis: usize, p: u32) -> Result<(), Fail> {
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    let shape = cx.shape(x)?;
    let ty = cx.dtype(x);
    if axis >= shape.len() || !ty.is_float() || ty.is_storage_only() || !(p == 1 || p == 2) {
        return unsupported("lp-norm needs a float input, an axis inside it and p of 1 or 2");
    }
    let ct = if matches!(ty, DType::F16 | DType::BF16) {
        DType::F32
    } else {
        ty
    };
    let (outer, n, inner) = around(&shape, axis);
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let widen = |e: Expr| if ct != ty { Expr::cast(ct, e) } else { e };
    let body = loop_nest(&mut kb, &[outer, inner], |kb, v| {
        let base = Expr::add_idx(
            Expr::mul_idx(Expr::var(v[0]), (n * inner) as i64),
            Expr::var(v[1]),
        );
        let at = |k: VarId| Expr::add_idx(base.clone(), Expr::mul_idx(Expr::var(k), inner as i64));
        let (acc, k, j) = (kb.var(ct), kb.var(DType::I64), kb.var(DType::I64));
        let xk = widen(Expr::load(xp, at(k)));
        let term = if p == 1 {
            Expr::un(UnOp::Abs, xk)
        } else {
            Expr::bin(BinOp::Mul, xk.clone(), xk)
        };
        let norm = if p == 1 {
            Expr::var(acc)
        } else {
            Expr::un(UnOp::Sqrt, Expr::var(acc))
        };
        let zero = Expr::bin(BinOp::Eq, Expr::var(acc), lit(ct, 0.0));
        let y = Expr::select(
            zero,
            lit(ct, 0.0),
            Expr::bin(BinOp::Div, widen(Expr::load(xp, at(j))), norm),
        );
        let y = if ct != ty { Expr::cast(ty, y) } else { y };
        vec![
            Stmt::Let {
                var: acc,
                value: lit(ct, 0.0),
            },
            Stmt::For {
                var: k,
                extent: Expr::idx(n as i64),
                kind: LoopKind::Serial,
                body: vec![Stmt::Assign {
                    var: acc,
                    value: Expr::bin(BinOp::Add, Expr::var(acc), term),
                }],
            },
            Stmt::For {
                var: j,
                extent: Expr::idx(n as i64),
                kind: LoopKind::Serial,
                body: vec![Stmt::Store {
                    param: op_,
                    index: at(j),
                    value: y,
                }],
            },
        ]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `TopK` with `k` fixed by the static output shape: `k` selection scans per lane, each picking
/// the best element that comes after the previous pick in the order (value, then lower index
/// first), so the output is sorted and ties keep index order, as in the interpreter.
fn top_k(cx: &mut Cx, node: &Node, axis: usize, largest: bool) -> Result<(), Fail> {
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    let shape = cx.shape(x)?;
    let ty = cx.dtype(x);
    if axis >= shape.len() || !ty.is_numeric() || ty.is_storage_only() || node.outputs.len() != 2 {
        return unsupported("top_k needs a numeric input, an axis inside it and two outputs");
    }
    let (outer, n, inner) = around(&shape, axis);
    let k = cx.shape(node.outputs[0])?[axis];
    let vals = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let idxs = cx.new_buffer(node.outputs[1], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let vp = kb.param(&cx.p, vals, Access::Write);
    let ip = kb.param(&cx.p, idxs, Access::Write);
    // `better(a, b)`: a comes strictly before b in value order.
    let better = |a: Expr, b: Expr| Expr::bin(if largest { BinOp::Gt } else { BinOp::Lt }, a, b);
    let body = loop_nest(&mut kb, &[outer, inner], |kb, v| {
        let (o, i) = (Expr::var(v[0]), Expr::var(v[1]));
        let (pv, pi, r) = (kb.var(ty), kb.var(DType::I64), kb.var(DType::I64));
        let (bv, bi, j) = (kb.var(ty), kb.var(DType::I64), kb.var(DType::I64));
        let t = kb.var(DType::Bool);
        let xj = Expr::load(
            xp,
            Expr::add_idx(
                Expr::add_idx(Expr::mul_idx(o.clone(), (n * inner) as i64), i.clone()),
                Expr::mul_idx(Expr::var(j), inner as i64),
            ),
        );
        let after_prev = Expr::bin(
            BinOp::Or,
            Expr::bin(BinOp::Lt, Expr::var(pi), Expr::idx(0)),
            Expr::bin(
                BinOp::Or,
                better(Expr::var(pv), xj.clone()),
                Expr::bin(
                    BinOp::And,
                    Expr::bin(BinOp::Eq, Expr::var(pv), xj.clone()),
                    Expr::bin(BinOp::Gt, Expr::var(j), Expr::var(pi)),
                ),
            ),
        );
        let beats_best = Expr::bin(
            BinOp::Or,
            Expr::bin(BinOp::Lt, Expr::var(bi), Expr::idx(0)),
            better(xj.clone(), Expr::var(bv)),
        );
        let take = Expr::bin(BinOp::And, after_prev, beats_best);
        let dst = Expr::add_idx(
            Expr::add_idx(Expr::mul_idx(o, (k * inner) as i64), i),
            Expr::mul_idx(Expr::var(r), inner as i64),
        );
        vec![
            Stmt::Let {
                var: pv,
                value: lit(ty, 0.0),
            },
            Stmt::Let {
                var: pi,
                value: Expr::idx(-1),
            },
            Stmt::For {
                var: r,
                extent: Expr::idx(k as i64),
                kind: LoopKind::Serial,
                body: vec![
                    Stmt::Let {
                        var: bv,
                        value: lit(ty, 0.0),
                    },
                    Stmt::Let {
                        var: bi,
                        value: Expr::idx(-1),
                    },
                    Stmt::For {
                        var: j,
                        extent: Expr::idx(n as i64),
                        kind: LoopKind::Serial,
                        body: vec![
                            // Decided once, before either assignment changes `bv`.
                            Stmt::Let {
                                var: t,
                                value: take,
                            },
                            Stmt::Assign {
                                var: bv,
                                value: Expr::select(Expr::var(t), xj, Expr::var(bv)),
                            },
                            Stmt::Assign {
                                var: bi,
                                value: Expr::select(Expr::var(t), Expr::var(j), Expr::var(bi)),
                            },
                        ],
                    },
                    Stmt::Store {
                        param: vp,
                        index: dst.clone(),
                        value: Expr::var(bv),
                    },
                    Stmt::Store {
                        param: ip,
                        index: dst,
                        value: Expr::var(bi),
                    },
                    Stmt::Assign {
                        var: pv,
                        value: Expr::var(bv),
                    },
                    Stmt::Assign {
                        var: pi,
                        value: Expr::var(bi),
                    },
                ],
            },
        ]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `for k in 0..n`: where `better` (which reads element `k` as `xv`) holds, `best = xv` and
/// `at = k`. The scan of arg-reductions and Hardmax.
fn best_scan(k: VarId, n: usize, at: VarId, best: VarId, better: Expr, xv: Expr) -> Stmt {
    Stmt::For {
        var: k,
        extent: Expr::idx(n as i64),
        kind: LoopKind::Serial,
        body: vec![
            Stmt::Assign {
                var: at,
                value: Expr::select(better.clone(), Expr::var(k), Expr::var(at)),
            },
            Stmt::Assign {
                var: best,
                value: Expr::select(better, xv, Expr::var(best)),
            },
        ],
    }
}
