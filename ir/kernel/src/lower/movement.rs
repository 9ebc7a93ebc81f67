//! Data movement. Ops that keep the row-major order of elements (reshape, flatten, squeeze,
//! unsqueeze, identity) become aliases and cost nothing; the rest are copy loops whose load
//! index does the work: transpose, expand, concat, split, slice, gather.

use super::{
    Cx, Fail, KernelBuilder, bcast_index, flat_index, index, kernel_name, loop_nest, strides,
    unsupported,
};
use crate::kernel::*;
use mlc_ir::ops::MovementOp;
use mlc_ir::ops::movement::{DepthToSpaceMode, PadMode, Scalar};
use mlc_ir::{DType, Node, ValueId};

pub(super) fn lower(cx: &mut Cx, node: &Node, op: &MovementOp) -> Result<(), Fail> {
    if let MovementOp::ConstantOfShape { dtype, value, .. } = op {
        return constant_of_shape(cx, node, *dtype, value);
    }
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    let dtype = cx.dtype(x);
    if dtype == DType::Str || dtype.size().is_none() {
        return unsupported(format!("moving {} elements", dtype.name()));
    }
    match op {
        MovementOp::Identity
        | MovementOp::Reshape { .. }
        | MovementOp::Flatten { .. }
        | MovementOp::Squeeze { .. }
        | MovementOp::Unsqueeze { .. } => Ok(cx.alias(node.outputs[0], x)?),
        MovementOp::Transpose { perm } => {
            let perm = perm.clone();
            copy(cx, node, x, node.outputs[0], move |in_shape, _, vars| {
                let st = strides(in_shape);
                let mut idx = Expr::idx(0);
                for (d, &p) in perm.iter().enumerate() {
                    idx = Expr::add_idx(idx, Expr::mul_idx(Expr::var(vars[d]), st[p]));
                }
                idx
            })
        }
        MovementOp::Expand { .. } => {
            copy(cx, node, x, node.outputs[0], |in_shape, out_shape, vars| {
                bcast_index(in_shape, out_shape, vars)
            })
        }
        MovementOp::Slice {
            starts,
            ends,
            axes,
            steps,
        } => {
            let in_shape = cx.shape(x)?;
            let get = |attr: &Option<Vec<i64>>, input: usize| -> Option<Vec<i64>> {
                attr.clone().or_else(|| const_i64(cx, node.input(input)))
            };
            // The output shape already encodes where the slice ends.
            let (Some(starts), Some(_)) = (get(starts, 1), get(ends, 2)) else {
                let known = (get(axes, 3), get(steps, 4));
                return slice_runtime(cx, node, x, known);
            };
            let axes = get(axes, 3).unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = get(steps, 4).unwrap_or_else(|| vec![1; starts.len()]);
            let rank = in_shape.len() as i64;
            let mut start = vec![0i64; in_shape.len()];
            let mut step = vec![1i64; in_shape.len()];
            for (i, &ax) in axes.iter().enumerate() {
                let ax = if ax < 0 { ax + rank } else { ax } as usize;
                let dim = in_shape[ax] as i64;
                let (s, st) = (starts[i], steps[i]);
                let s = if s < 0 { s + dim } else { s };
                start[ax] = if st > 0 {
                    s.clamp(0, dim)
                } else {
                    s.clamp(0, dim - 1)
                };
                step[ax] = st;
            }
            copy(cx, node, x, node.outputs[0], move |in_shape, _, vars| {
                let st = strides(in_shape);
                let mut idx = Expr::idx(start.iter().zip(&st).map(|(a, b)| a * b).sum());
                for d in 0..in_shape.len() {
                    idx = Expr::add_idx(idx, Expr::mul_idx(Expr::var(vars[d]), step[d] * st[d]));
                }
                idx
            })
        }
        MovementOp::Concat { axis } => {
            let axis = *axis;
            let out_v = node.outputs[0];
            let out_shape = cx.shape(out_v)?;
            let out = cx.new_buffer(out_v, BufKind::Temp)?;
            let mut kb = KernelBuilder::new(kernel_name(&node.op));
            let op_ = kb.param(&cx.p, out, Access::Write);
            let ost = strides(&out_shape);
            let mut at = 0usize;
            let mut body = Vec::new();
            for v in node.inputs.iter().flatten() {
                let s = cx.shape(*v)?;
                let p = kb.param(&cx.p, cx.buf(*v)?, Access::Read);
                let base = at as i64 * ost[axis];
                body.extend(loop_nest(&mut kb, &s, |_, vars| {
                    let mut oidx = Expr::idx(base);
                    for d in 0..s.len() {
                        oidx = Expr::add_idx(oidx, Expr::mul_idx(Expr::var(vars[d]), ost[d]));
                    }
                    vec![Stmt::Store {
                        param: op_,
                        index: oidx,
                        value: Expr::load(p, bcast_index(&s, &s, vars)),
                    }]
                }));
                at += s[axis];
            }
            kb.k.body = body;
            cx.launch(kb, node);
            Ok(())
        }
        MovementOp::Split { axis, .. } => {
            let axis = *axis;
            let in_shape = cx.shape(x)?;
            let ist = strides(&in_shape);
            let mut kb = KernelBuilder::new(kernel_name(&node.op));
            let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
            let mut at = 0usize;
            let mut body = Vec::new();
            for &o in &node.outputs {
                let s = cx.shape(o)?;
                let ob = cx.new_buffer(o, BufKind::Temp)?;
                let p = kb.param(&cx.p, ob, Access::Write);
                let base = at as i64 * ist[axis];
                body.extend(loop_nest(&mut kb, &s, |_, vars| {
                    let mut iidx = Expr::idx(base);
                    for d in 0..s.len() {
                        iidx = Expr::add_idx(iidx, Expr::mul_idx(Expr::var(vars[d]), ist[d]));
                    }
                    vec![Stmt::Store {
                        param: p,
                        index: bcast_index(&s, &s, vars),
                        value: Expr::load(xp, iidx),
                    }]
                }));
                at += s[axis];
            }
            kb.k.body = body;
            cx.launch(kb, node);
            Ok(())
        }
        MovementOp::Gather { axis } => gather(cx, node, x, *axis),
        MovementOp::Tile { .. } => copy(cx, node, x, node.outputs[0], |in_shape, _, vars| {
            let st = strides(in_shape);
            let mut idx = Expr::idx(0);
            for (d, &n) in in_shape.iter().enumerate() {
                let wrapped = Expr::bin(BinOp::Rem, Expr::var(vars[d]), Expr::idx(n as i64));
                idx = Expr::add_idx(idx, Expr::mul_idx(wrapped, st[d]));
            }
            idx
        }),
        MovementOp::Pad { mode, pads, axes } => pad(cx, node, x, *mode, pads.clone(), axes.clone()),
        MovementOp::GatherNd { batch_dims } => gather_nd(cx, node, x, *batch_dims),
        MovementOp::GatherElements { axis } => index::gather_elements(cx, node, x, *axis),
        MovementOp::ScatterElements { axis, reduction } => {
            index::scatter_elements(cx, node, *axis, *reduction)
        }
        MovementOp::ScatterNd { reduction } => index::scatter_nd(cx, node, *reduction),
        MovementOp::OneHot { axis, .. } => index::one_hot(cx, node, *axis),
        MovementOp::Trilu { upper, k } => trilu(cx, node, x, *upper, *k),
        MovementOp::DepthToSpace { blocksize, mode } => {
            let (b, crd) = (*blocksize as i64, *mode == DepthToSpaceMode::Crd);
            copy(cx, node, x, node.outputs[0], move |xs, os, v| {
                let c2 = os[1] as i64;
                let (y, xx) = (Expr::var(v[2]), Expr::var(v[3]));
                let (b1, b2) = (rem(y.clone(), b), rem(xx.clone(), b));
                let ch = if crd {
                    Expr::add_idx(
                        Expr::mul_idx(Expr::var(v[1]), b * b),
                        Expr::add_idx(Expr::mul_idx(b1, b), b2),
                    )
                } else {
                    Expr::add_idx(
                        Expr::mul_idx(Expr::add_idx(Expr::mul_idx(b1, b), b2), c2),
                        Expr::var(v[1]),
                    )
                };
                nchw(xs, Expr::var(v[0]), ch, div(y, b), div(xx, b))
            })
        }
        MovementOp::SpaceToDepth { blocksize, mode } => {
            let (b, crd) = (*blocksize as i64, *mode == DepthToSpaceMode::Crd);
            copy(cx, node, x, node.outputs[0], move |xs, _, v| {
                let c = xs[1] as i64;
                let oc = Expr::var(v[1]);
                let (b1, b2, ci) = if crd {
                    (
                        rem(div(oc.clone(), b), b),
                        rem(oc.clone(), b),
                        div(oc, b * b),
                    )
                } else {
                    (
                        div(oc.clone(), b * c),
                        rem(div(oc.clone(), c), b),
                        rem(oc, c),
                    )
                };
                let y = Expr::add_idx(Expr::mul_idx(Expr::var(v[2]), b), b1);
                let xx = Expr::add_idx(Expr::mul_idx(Expr::var(v[3]), b), b2);
                nchw(xs, Expr::var(v[0]), ci, y, xx)
            })
        }
        MovementOp::Range => range(cx, node),
        MovementOp::EyeLike { dtype, k } => eye_like(cx, node, *dtype, *k),
        MovementOp::CenterCropPad { .. } => center_crop_pad(cx, node, x),
        MovementOp::ReverseSequence {
            batch_axis,
            time_axis,
        } => super::scatter::reverse_sequence(cx, node, *batch_axis, *time_axis),
        MovementOp::TensorScatter { axis, circular } => {
            super::scatter::tensor_scatter(cx, node, *axis, *circular)
        }
        _ => unsupported("not lowered to kernels yet"),
    }
}

/// A constant input's values as i64s.
fn const_i64(cx: &Cx, v: Option<ValueId>) -> Option<Vec<i64>> {
    cx.g.const_value(v?)?.to_i64_vec().ok()
}

/// `out[i] = x[index(i)]` over the output's shape.
fn copy(
    cx: &mut Cx,
    node: &Node,
    x: ValueId,
    out_v: ValueId,
    index: impl FnOnce(&[usize], &[usize], &[VarId]) -> Expr,
) -> Result<(), Fail> {
    let in_shape = cx.shape(x)?;
    let out_shape = cx.shape(out_v)?;
    let out = cx.new_buffer(out_v, BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let body = loop_nest(&mut kb, &out_shape, |_, vars| {
        let src = index(&in_shape, &out_shape, vars);
        vec![Stmt::Store {
            param: op_,
            index: bcast_index(&out_shape, &out_shape, vars),
            value: Expr::load(xp, src),
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `out[a.., i.., b..] = x[a.., idx[i..], b..]`, negative indices counting from the end.
fn gather(cx: &mut Cx, node: &Node, x: ValueId, axis: usize) -> Result<(), Fail> {
    let Some(iv) = node.input(1) else {
        return unsupported("missing indices");
    };
    let in_shape = cx.shape(x)?;
    let idx_shape = cx.shape(iv)?;
    let ity = cx.dtype(iv);
    if !matches!(ity, DType::I64 | DType::I32) {
        return unsupported(format!("gather indices of type {}", ity.name()));
    }
    let out_v = node.outputs[0];
    // One constant index in range (a `select` of Q, K or V, a class token): a slice with a
    // literal offset, which needs no index load per element, and which the CPU backend can
    // turn into a view when it is contiguous.
    let dim = in_shape[axis] as i64;
    let known = match cx.p.buffer(cx.p.storage_of(cx.buf(iv)?)).kind {
        BufKind::Const(c) if idx_shape.iter().product::<usize>() == 1 => cx.p.consts[c]
            .to_i64_vec()
            .ok()
            .and_then(|v| v.first().copied()),
        _ => None,
    };
    if let Some(k) = known.map(|k| if k < 0 { k + dim } else { k })
        && (0..dim).contains(&k)
    {
        let q = idx_shape.len();
        return copy(cx, node, x, out_v, move |in_shape, _, vars| {
            let ist = strides(in_shape);
            let mut src = Expr::idx(k * ist[axis]);
            for d in 0..axis {
                src = Expr::add_idx(src, Expr::mul_idx(Expr::var(vars[d]), ist[d]));
            }
            for d in axis + 1..in_shape.len() {
                src = Expr::add_idx(src, Expr::mul_idx(Expr::var(vars[d - 1 + q]), ist[d]));
            }
            src
        });
    }
    let out_shape = cx.shape(out_v)?;
    let out = cx.new_buffer(out_v, BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let ip = kb.param(&cx.p, cx.buf(iv)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let ist = strides(&in_shape);
    let idst = strides(&idx_shape);
    let body = loop_nest(&mut kb, &out_shape, |kb, vars| {
        let q = idx_shape.len();
        let mut iidx = Expr::idx(0);
        for d in 0..q {
            iidx = Expr::add_idx(iidx, Expr::mul_idx(Expr::var(vars[axis + d]), idst[d]));
        }
        let raw = kb.var(DType::I64);
        let mut load = Expr::load(ip, iidx);
        if ity != DType::I64 {
            load = Expr::cast(DType::I64, load);
        }
        let fixed = kb.var(DType::I64);
        let dim = in_shape[axis] as i64;
        let neg = Expr::bin(BinOp::Lt, Expr::var(raw), Expr::idx(0));
        let wrapped = Expr::select(
            neg,
            Expr::bin(BinOp::Add, Expr::var(raw), Expr::idx(dim)),
            Expr::var(raw),
        );
        let mut src = Expr::mul_idx(Expr::var(fixed), ist[axis]);
        for d in 0..axis {
            src = Expr::add_idx(src, Expr::mul_idx(Expr::var(vars[d]), ist[d]));
        }
        for d in axis + 1..in_shape.len() {
            src = Expr::add_idx(src, Expr::mul_idx(Expr::var(vars[d - 1 + q]), ist[d]));
        }
        vec![
            Stmt::Let {
                var: raw,
                value: load,
            },
            Stmt::Let {
                var: fixed,
                value: wrapped,
            },
            Stmt::Store {
                param: op_,
                index: bcast_index(&out_shape, &out_shape, vars),
                value: Expr::load(xp, src),
            },
        ]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `GatherNd`: `out[b.., i.., j..] = x[b.., idx[b.., i.., 0], …, idx[b.., i.., q-1], j..]`,
/// where the first `batch_dims` axes of the data and the indices walk together.
fn gather_nd(cx: &mut Cx, node: &Node, x: ValueId, batch_dims: usize) -> Result<(), Fail> {
    let Some(iv) = node.input(1) else {
        return unsupported("missing indices");
    };
    let (xs, is) = (cx.shape(x)?, cx.shape(iv)?);
    let ity = cx.dtype(iv);
    let Some(&q) = is.last() else {
        return unsupported("scalar indices");
    };
    let b = batch_dims;
    if !matches!(ity, DType::I64 | DType::I32) {
        return unsupported(format!("gather_nd indices of type {}", ity.name()));
    }
    if b >= is.len() || b + q > xs.len() || xs[..b] != is[..b] {
        return unsupported(format!("gather_nd of {xs:?} by {is:?} with {b} batch dims"));
    }
    let out_v = node.outputs[0];
    let out_shape = cx.shape(out_v)?;
    let out = cx.new_buffer(out_v, BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let ip = kb.param(&cx.p, cx.buf(iv)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let xst = strides(&xs);
    // The output's leading axes are the indices' leading axes (batch axes included).
    let outer = is.len() - 1;
    let outer_st = strides(&is[..outer]);
    let body = loop_nest(&mut kb, &out_shape, |kb, vars| {
        let mut row = Expr::idx(0);
        for d in 0..outer {
            row = Expr::add_idx(row, Expr::mul_idx(Expr::var(vars[d]), outer_st[d]));
        }
        let mut stmts = Vec::new();
        let mut src = Expr::idx(0);
        for d in 0..b {
            src = Expr::add_idx(src, Expr::mul_idx(Expr::var(vars[d]), xst[d]));
        }
        for j in 0..q {
            let raw = kb.var(DType::I64);
            let at = Expr::add_idx(Expr::mul_idx(row.clone(), q as i64), Expr::idx(j as i64));
            let mut load = Expr::load(ip, at);
            if ity != DType::I64 {
                load = Expr::cast(DType::I64, load);
            }
            stmts.push(Stmt::Let {
                var: raw,
                value: load,
            });
            let neg = Expr::bin(BinOp::Lt, Expr::var(raw), Expr::idx(0));
            let fixed = Expr::select(
                neg,
                Expr::bin(BinOp::Add, Expr::var(raw), Expr::idx(xs[b + j] as i64)),
                Expr::var(raw),
            );
            src = Expr::add_idx(src, Expr::mul_idx(fixed, xst[b + j]));
        }
        for d in b + q..xs.len() {
            src = Expr::add_idx(
                src,
                Expr::mul_idx(Expr::var(vars[outer + d - b - q]), xst[d]),
            );
        }
        stmts.push(Stmt::Store {
            param: op_,
            index: bcast_index(&out_shape, &out_shape, vars),
            value: Expr::load(xp, src),
        });
        stmts
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `Pad`: each output coordinate minus its begin pad, then constant fill, clamping (edge),
/// mirroring (reflect) or wrapping where it falls outside the input.
fn pad(
    cx: &mut Cx,
    node: &Node,
    x: ValueId,
    mode: PadMode,
    pads: Option<Vec<i64>>,
    axes: Option<Vec<usize>>,
) -> Result<(), Fail> {
    let xs = cx.shape(x)?;
    let rank = xs.len();
    let pads = pads.or_else(|| const_i64(cx, node.input(1)));
    // Pads known only at run time are read by the kernel (only the begin pads matter: the
    // static output shape fixes the rest).
    let runtime_pads = match (&pads, node.input(1)) {
        (None, Some(v)) if matches!(cx.dtype(v), DType::I64 | DType::I32) => Some(v),
        (None, _) => return unsupported("pads are neither attributes nor integers"),
        _ => None,
    };
    let axes: Vec<usize> = match axes {
        Some(a) => a,
        None => match const_i64(cx, node.input(3)) {
            Some(a) => a
                .iter()
                .map(|&v| {
                    if v < 0 {
                        (v + rank as i64) as usize
                    } else {
                        v as usize
                    }
                })
                .collect(),
            None if node.input(3).is_some() => return unsupported("pad axes are not constants"),
            None => (0..rank).collect(),
        },
    };
    // Each dim's begin pad: a literal, or the pads entry the kernel loads.
    let mut begin: Vec<Expr> = vec![Expr::idx(0); rank];
    let mut pad_entry: Vec<Option<usize>> = vec![None; rank];
    for (i, &a) in axes.iter().enumerate() {
        match &pads {
            Some(p) => begin[a] = Expr::idx(p[i]),
            None => pad_entry[a] = Some(i),
        }
    }
    let ty = cx.dtype(x);
    // A fill value known only at run time is loaded by the kernel.
    let mut runtime_fill = None;
    let fill = match node.input(2) {
        Some(v) => match cx.g.const_value(v) {
            Some(t) if t.len() == 1 => Some(t.clone()),
            None if cx.dtype(v) == ty && cx.shape(v)?.iter().product::<usize>() == 1 => {
                runtime_fill = Some(v);
                None
            }
            _ => return unsupported("pad value is not a scalar of the data's type"),
        },
        None => None,
    };
    let mut fill = match fill {
        Some(t) => scalar_lit(&t).ok_or_else(|| Fail::Unsupported("pad value type".into()))?,
        None if ty == DType::Bool => Expr::Lit(Lit::Bool(false)),
        None if ty.is_float() => Expr::float(ty, 0.0),
        None => Expr::Lit(Lit::Int(ty, 0)),
    };
    let out_v = node.outputs[0];
    let out_shape = cx.shape(out_v)?;
    let out = cx.new_buffer(out_v, BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    if let Some(v) = runtime_fill {
        fill = Expr::load(kb.param(&cx.p, cx.buf(v)?, Access::Read), Expr::idx(0));
    }
    let mut stmts = Vec::new();
    if let Some(pv) = runtime_pads {
        let (pp, t) = (kb.param(&cx.p, cx.buf(pv)?, Access::Read), cx.dtype(pv));
        for d in 0..rank {
            if let Some(i) = pad_entry[d] {
                let var = kb.var(DType::I64);
                stmts.push(Stmt::Let {
                    var,
                    value: load_i64(pp, t, i as i64),
                });
                begin[d] = Expr::var(var);
            }
        }
    }
    let op_ = kb.param(&cx.p, out, Access::Write);
    let st = strides(&xs);
    let body = loop_nest(&mut kb, &out_shape, |_, vars| {
        let mut src = Expr::idx(0);
        let mut inside = Expr::Lit(Lit::Bool(true));
        for d in 0..rank {
            let n = xs[d] as i64;
            let i = match &begin[d] {
                Expr::Lit(Lit::Int(_, b)) => Expr::add_idx(Expr::var(vars[d]), Expr::idx(-b)),
                b => Expr::bin(BinOp::Sub, Expr::var(vars[d]), b.clone()),
            };
            let coord = match mode {
                PadMode::Constant => {
                    if begin[d] != Expr::idx(0) || out_shape[d] as i64 != n {
                        let ok = Expr::bin(
                            BinOp::And,
                            Expr::bin(BinOp::Ge, i.clone(), Expr::idx(0)),
                            Expr::bin(BinOp::Lt, i.clone(), Expr::idx(n)),
                        );
                        inside = match inside {
                            Expr::Lit(Lit::Bool(true)) => ok,
                            prev => Expr::bin(BinOp::And, prev, ok),
                        };
                    }
                    Expr::bin(
                        BinOp::Max,
                        Expr::bin(BinOp::Min, i, Expr::idx(n - 1)),
                        Expr::idx(0),
                    )
                }
                PadMode::Edge => Expr::bin(
                    BinOp::Max,
                    Expr::bin(BinOp::Min, i, Expr::idx(n - 1)),
                    Expr::idx(0),
                ),
                PadMode::Wrap => {
                    let r = Expr::bin(BinOp::Rem, i, Expr::idx(n));
                    Expr::bin(
                        BinOp::Rem,
                        Expr::bin(BinOp::Add, r, Expr::idx(n)),
                        Expr::idx(n),
                    )
                }
                PadMode::Reflect => {
                    // Period 2(n-1): fold into [0, 2n-2), then mirror the upper half.
                    let p = (2 * (n - 1)).max(1);
                    let r = Expr::bin(
                        BinOp::Rem,
                        Expr::bin(
                            BinOp::Add,
                            Expr::bin(BinOp::Rem, i, Expr::idx(p)),
                            Expr::idx(p),
                        ),
                        Expr::idx(p),
                    );
                    Expr::select(
                        Expr::bin(BinOp::Lt, r.clone(), Expr::idx(n)),
                        r.clone(),
                        Expr::bin(BinOp::Sub, Expr::idx(p), r),
                    )
                }
            };
            src = Expr::add_idx(src, Expr::mul_idx(coord, st[d]));
        }
        let v = match inside {
            Expr::Lit(Lit::Bool(true)) => Expr::load(xp, src),
            ok => Expr::select(ok, Expr::load(xp, src), fill.clone()),
        };
        vec![Stmt::Store {
            param: op_,
            index: bcast_index(&out_shape, &out_shape, vars),
            value: v,
        }]
    });
    stmts.extend(body);
    kb.k.body = stmts;
    cx.launch(kb, node);
    Ok(())
}

/// `CenterCropPad`: output dim `d` reads `x` at `o + (in - out) / 2` where it crops and at
/// `o - (out - in) / 2` where it pads (zero outside `x`); the static shapes fix both offsets.
fn center_crop_pad(cx: &mut Cx, node: &Node, x: ValueId) -> Result<(), Fail> {
    let (xs, ty) = (cx.shape(x)?, cx.dtype(x));
    let os = cx.shape(node.outputs[0])?;
    if xs.len() != os.len() || ty == DType::Str || ty.is_storage_only() {
        return unsupported("center_crop_pad of this type or rank");
    }
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let st = strides(&xs);
    let body = loop_nest(&mut kb, &os, |_, vars| {
        let mut src = Expr::idx(0);
        let mut inside: Option<Expr> = None;
        for d in 0..xs.len() {
            let (n, m) = (xs[d] as i64, os[d] as i64);
            let delta = if m <= n { (n - m) / 2 } else { -((m - n) / 2) };
            let mut i = Expr::add_idx(Expr::var(vars[d]), Expr::idx(delta));
            if m > n {
                let ok = Expr::bin(
                    BinOp::And,
                    Expr::bin(BinOp::Ge, i.clone(), Expr::idx(0)),
                    Expr::bin(BinOp::Lt, i.clone(), Expr::idx(n)),
                );
                inside = Some(match inside {
                    None => ok,
                    Some(prev) => Expr::bin(BinOp::And, prev, ok),
                });
                // Clamped, so the load stays in bounds whatever the condition.
                i = Expr::bin(
                    BinOp::Max,
                    Expr::bin(BinOp::Min, i, Expr::idx(n - 1)),
                    Expr::idx(0),
                );
            }
            src = Expr::add_idx(src, Expr::mul_idx(i, st[d]));
        }
        let v = match inside {
            None => Expr::load(xp, src),
            Some(ok) => Expr::select(ok, Expr::load(xp, src), zero_one(ty, false)),
        };
        vec![Stmt::Store {
            param: op_,
            index: bcast_index(&os, &os, vars),
            value: v,
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// A one-element tensor as a literal of its type.
fn scalar_lit(t: &mlc_ir::Tensor) -> Option<Expr> {
    let ty = t.dtype();
    Some(Expr::Lit(if ty.is_float() && !ty.is_storage_only() {
        Lit::Float(ty, t.to_f64_vec().ok()?[0])
    } else if ty == DType::Bool {
        Lit::Bool(t.to_i64_vec().ok()?[0] != 0)
    } else if ty.is_int() && !ty.is_storage_only() {
        Lit::Int(ty, t.to_i64_vec().ok()?[0])
    } else {
        return None;
    }))
}

fn div(a: Expr, b: i64) -> Expr {
    if b == 1 {
        a
    } else {
        Expr::bin(BinOp::Div, a, Expr::idx(b))
    }
}

fn rem(a: Expr, b: i64) -> Expr {
    Expr::bin(BinOp::Rem, a, Expr::idx(b))
}

/// The flat index of `(n, c, h, w)` in an NCHW tensor of shape `xs`.
fn nchw(xs: &[usize], n: Expr, c: Expr, h: Expr, w: Expr) -> Expr {
    let st = strides(xs);
    let mut idx = Expr::mul_idx(n, st[0]);
    for (e, s) in [(c, st[1]), (h, st[2]), (w, st[3])] {
        idx = Expr::add_idx(idx, Expr::mul_idx(e, s));
    }
    idx
}

/// 0 or 1 as a literal of `ty`.
fn zero_one(ty: DType, one: bool) -> Expr {
    let v = i64::from(one);
    Expr::Lit(if ty == DType::Bool {
        Lit::Bool(one)
    } else if ty.is_float() {
        Lit::Float(ty, v as f64)
    } else {
        Lit::Int(ty, v)
    })
}

/// `Trilu`: keeps `j - i >= k` (upper) or `j - i <= k` (lower) of the last two dims; `k` is
/// the attribute, or read from input 1 at run time.
fn trilu(cx: &mut Cx, node: &Node, x: ValueId, upper: bool, k: Option<i64>) -> Result<(), Fail> {
    let xs = cx.shape(x)?;
    let ty = cx.dtype(x);
    let r = xs.len();
    if r < 2 || ty.is_storage_only() {
        return unsupported("trilu needs a matrix of a computable type");
    }
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let kp = match (k, node.input(1)) {
        (None, Some(kv)) => Some((kb.param(&cx.p, cx.buf(kv)?, Access::Read), cx.dtype(kv))),
        _ => None,
    };
    let op_ = kb.param(&cx.p, out, Access::Write);
    let st = strides(&xs);
    let body = loop_nest(&mut kb, &xs, |_, v| {
        let kk = match kp {
            Some((p, t)) => {
                let e = Expr::load(p, Expr::idx(0));
                if t == DType::I64 {
                    e
                } else {
                    Expr::cast(DType::I64, e)
                }
            }
            None => Expr::idx(k.unwrap_or(0)),
        };
        let diff = Expr::bin(BinOp::Sub, Expr::var(v[r - 1]), Expr::var(v[r - 2]));
        let keep = Expr::bin(if upper { BinOp::Ge } else { BinOp::Le }, diff, kk);
        let at = flat_index(&st, v);
        vec![Stmt::Store {
            param: op_,
            index: at.clone(),
            value: Expr::select(keep, Expr::load(xp, at), zero_one(ty, false)),
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `Range`: `start + i * delta` for integers; for floats numpy's `start + i * step` with
/// `step = (start + delta) - start`, in `f64`, as the interpreter computes it.
fn range(cx: &mut Cx, node: &Node) -> Result<(), Fail> {
    let (Some(s), Some(d)) = (node.input(0), node.input(2)) else {
        return unsupported("missing input");
    };
    let ty = cx.dtype(s);
    if !ty.is_numeric() || ty.is_storage_only() || ty == DType::Bool {
        return unsupported(format!("range of {}", ty.name()));
    }
    let n = cx.shape(node.outputs[0])?.iter().product::<usize>();
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let sp = kb.param(&cx.p, cx.buf(s)?, Access::Read);
    let dp = kb.param(&cx.p, cx.buf(d)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let wt = if ty.is_float() {
        DType::F64
    } else {
        DType::I64
    };
    let wide = |p: ParamId| Expr::cast(wt, Expr::load(p, Expr::idx(0)));
    let body = loop_nest(&mut kb, &[n], |_, v| {
        let i = Expr::cast(wt, Expr::var(v[0]));
        let step = if ty.is_float() {
            Expr::bin(
                BinOp::Sub,
                Expr::bin(BinOp::Add, wide(sp), wide(dp)),
                wide(sp),
            )
        } else {
            wide(dp)
        };
        let y = Expr::bin(BinOp::Add, wide(sp), Expr::bin(BinOp::Mul, i, step));
        vec![Stmt::Store {
            param: op_,
            index: Expr::var(v[0]),
            value: Expr::cast(ty, y),
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `EyeLike`: ones on diagonal `k` of a 2-D output.
fn eye_like(cx: &mut Cx, node: &Node, ty: DType, k: i64) -> Result<(), Fail> {
    let os = cx.shape(node.outputs[0])?;
    if os.len() != 2 || ty.is_storage_only() || ty == DType::Str {
        return unsupported("eye_like needs a 2-D output of a computable type");
    }
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let op_ = kb.param(&cx.p, out, Access::Write);
    let st = strides(&os);
    let body = loop_nest(&mut kb, &os, |_, v| {
        let diag = Expr::bin(
            BinOp::Eq,
            Expr::bin(BinOp::Sub, Expr::var(v[1]), Expr::var(v[0])),
            Expr::idx(k),
        );
        vec![Stmt::Store {
            param: op_,
            index: flat_index(&st, v),
            value: Expr::select(diag, zero_one(ty, true), zero_one(ty, false)),
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `ConstantOfShape`: the output filled with one value.
fn constant_of_shape(cx: &mut Cx, node: &Node, ty: DType, value: &Scalar) -> Result<(), Fail> {
    let os = cx.shape(node.outputs[0])?;
    let t = match value {
        Scalar::Float(f) => mlc_ir::Tensor::from_vec(&[], vec![*f]),
        Scalar::Int(i) => mlc_ir::Tensor::from_vec(&[], vec![*i]),
        Scalar::UInt(u) => mlc_ir::Tensor::from_vec(&[], vec![*u as i64]),
        Scalar::Bool(b) => mlc_ir::Tensor::from_vec(&[], vec![*b]),
    };
    let Some(fill) = t.and_then(|t| t.cast(ty)).ok().and_then(|t| scalar_lit(&t)) else {
        return unsupported(format!("constant of type {}", ty.name()));
    };
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let op_ = kb.param(&cx.p, out, Access::Write);
    let st = strides(&os);
    let body = loop_nest(&mut kb, &os, |_, v| {
        vec![Stmt::Store {
            param: op_,
            index: flat_index(&st, v),
            value: fill.clone(),
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// An integer load widened to `i64`.
fn load_i64(p: ParamId, ty: DType, at: i64) -> Expr {
    let e = Expr::load(p, Expr::idx(at));
    if ty == DType::I64 {
        e
    } else {
        Expr::cast(DType::I64, e)
    }
}

/// `Slice` whose starts (and maybe axes and steps) are only known at run time: the kernel
/// reads them first and derives each dim's start and step, clamped as the interpreter does;
/// the static output shape already fixes how many elements each dim keeps.
fn slice_runtime(
    cx: &mut Cx,
    node: &Node,
    x: ValueId,
    (axes, steps): (Option<Vec<i64>>, Option<Vec<i64>>),
) -> Result<(), Fail> {
    let Some(sv) = node.input(1) else {
        return unsupported("slice without starts");
    };
    let xs = cx.shape(x)?;
    let rank = xs.len();
    let l = cx.shape(sv)?.iter().product::<usize>();
    let out_v = node.outputs[0];
    let out_shape = cx.shape(out_v)?;
    let out = cx.new_buffer(out_v, BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let mut int_param = |i: usize| -> Result<Option<(ParamId, DType)>, Fail> {
        match node.input(i) {
            Some(v) => {
                let t = cx.dtype(v);
                if !matches!(t, DType::I64 | DType::I32) {
                    return unsupported("slice bounds of a non-integer type");
                }
                Ok(Some((kb.param(&cx.p, cx.buf(v)?, Access::Read), t)))
            }
            None => Ok(None),
        }
    };
    let sp = int_param(1)?;
    let ap = if axes.is_none() { int_param(3)? } else { None };
    let stp = if steps.is_none() { int_param(4)? } else { None };
    let op_ = kb.param(&cx.p, out, Access::Write);
    let Some((sp, st_ty)) = sp else {
        return unsupported("slice without starts");
    };
    let mut stmts = Vec::new();
    let mut start = Vec::new();
    let mut step = Vec::new();
    for (d, &dim) in xs.iter().enumerate() {
        let dim = dim as i64;
        let (mut s_e, mut st_e) = (Expr::idx(0), Expr::idx(1));
        for i in 0..l {
            let ax = match (&axes, ap) {
                (Some(a), _) => Expr::idx(if a[i] < 0 { a[i] + rank as i64 } else { a[i] }),
                (None, Some((p, t))) => {
                    let a = load_i64(p, t, i as i64);
                    Expr::select(
                        Expr::bin(BinOp::Lt, a.clone(), Expr::idx(0)),
                        Expr::bin(BinOp::Add, a.clone(), Expr::idx(rank as i64)),
                        a,
                    )
                }
                (None, None) => Expr::idx(i as i64),
            };
            let stv = match (&steps, stp) {
                (Some(s), _) => Expr::idx(s[i]),
                (None, Some((p, t))) => load_i64(p, t, i as i64),
                (None, None) => Expr::idx(1),
            };
            let raw = load_i64(sp, st_ty, i as i64);
            let s = Expr::select(
                Expr::bin(BinOp::Lt, raw.clone(), Expr::idx(0)),
                Expr::bin(BinOp::Add, raw.clone(), Expr::idx(dim)),
                raw,
            );
            let hi = Expr::select(
                Expr::bin(BinOp::Gt, stv.clone(), Expr::idx(0)),
                Expr::idx(dim),
                Expr::idx(dim - 1),
            );
            let clamped = Expr::bin(BinOp::Max, Expr::bin(BinOp::Min, s, hi), Expr::idx(0));
            let hit = Expr::bin(BinOp::Eq, ax, Expr::idx(d as i64));
            s_e = Expr::select(hit.clone(), clamped, s_e);
            st_e = Expr::select(hit, stv, st_e);
        }
        let (sv_, stv_) = (kb.var(DType::I64), kb.var(DType::I64));
        stmts.push(Stmt::Let {
            var: sv_,
            value: s_e,
        });
        stmts.push(Stmt::Let {
            var: stv_,
            value: st_e,
        });
        start.push(sv_);
        step.push(stv_);
    }
    let st = strides(&xs);
    let ost = strides(&out_shape);
    stmts.extend(loop_nest(&mut kb, &out_shape, |_, v| {
        let mut src = Expr::idx(0);
        for d in 0..rank {
            let c = Expr::add_idx(
                Expr::var(start[d]),
                Expr::bin(BinOp::Mul, Expr::var(v[d]), Expr::var(step[d])),
            );
            src = Expr::add_idx(src, Expr::mul_idx(c, st[d]));
        }
        vec![Stmt::Store {
            param: op_,
            index: flat_index(&ost, v),
            value: Expr::load(xp, src),
        }]
    }));
    kb.k.body = stmts;
    cx.launch(kb, node);
    Ok(())
}
