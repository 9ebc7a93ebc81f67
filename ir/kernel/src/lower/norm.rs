//! Normalization layers: inference batch norm as one elementwise pass; layer norm (and RMS
//! norm) as one parallel loop over rows with the mean and variance of each row in registers.
//!
//! Half-precision inputs compute their statistics in `f32`.

use super::{Cx, Fail, KernelBuilder, kernel_name, loop_nest, strides, unsupported};
use crate::kernel::*;
use mlc_ir::{DType, Node};

pub(super) fn batch_norm(cx: &mut Cx, node: &Node, eps: f32) -> Result<(), Fail> {
    let ins: Vec<_> = (0..5).map(|i| node.input(i)).collect();
    let [Some(x), Some(scale), Some(bias), Some(mean), Some(var)] = ins[..] else {
        return unsupported("missing input");
    };
    if node.outputs.len() > 1 {
        return unsupported("training-mode batch norm");
    }
    let xs = cx.shape(x)?;
    let ty = cx.dtype(x);
    if xs.len() < 2 || !ty.is_float() || ty.is_storage_only() {
        return unsupported("batch norm needs a float input of rank ≥ 2");
    }
    let ct = if matches!(ty, DType::F16 | DType::BF16) {
        DType::F32
    } else {
        ty
    };
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let params: Vec<(ParamId, DType)> = [scale, bias, mean, var]
        .iter()
        .map(|&v| Ok((kb.param(&cx.p, cx.buf(v)?, Access::Read), cx.dtype(v))))
        .collect::<Result<_, Fail>>()?;
    let op_ = kb.param(&cx.p, out, Access::Write);
    let st = strides(&xs);
    let body = loop_nest(&mut kb, &xs, |_, v| {
        let ch = Expr::var(v[1]);
        let ld = |i: usize| {
            let (p, t) = params[i];
            let e = Expr::load(p, ch.clone());
            if t != ct { Expr::cast(ct, e) } else { e }
        };
        let mut idx = Expr::idx(0);
        for (d, s) in st.iter().enumerate() {
            idx = Expr::add_idx(idx, Expr::mul_idx(Expr::var(v[d]), *s));
        }
        let xv = Expr::load(xp, idx.clone());
        let xv = if ct != ty { Expr::cast(ct, xv) } else { xv };
        let inv = Expr::bin(
            BinOp::Div,
            ld(0),
            Expr::un(
                UnOp::Sqrt,
                Expr::bin(BinOp::Add, ld(3), Expr::float(ct, eps as f64)),
            ),
        );
        let y = Expr::bin(
            BinOp::Add,
            Expr::bin(BinOp::Mul, Expr::bin(BinOp::Sub, xv, ld(2)), inv),
            ld(1),
        );
        let y = if ct != ty { Expr::cast(ty, y) } else { y };
        vec![Stmt::Store {
            param: op_,
            index: idx,
            value: y,
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// Layer norm (`rms` false) or RMS norm over dims `axis..`.
pub(super) fn layer_norm(
    cx: &mut Cx,
    node: &Node,
    axis: usize,
    eps: f32,
    rms: bool,
) -> Result<(), Fail> {
    let (Some(x), Some(scale)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let bias = node.input(2).filter(|_| !rms);
    let xs = cx.shape(x)?;
    let ty = cx.dtype(x);
    if axis >= xs.len() || !ty.is_float() || ty.is_storage_only() {
        return unsupported("layer norm needs a float input and an axis inside it");
    }
    let rows: usize = xs[..axis].iter().product();
    let cols: usize = xs[axis..].iter().product();
    let per_col = |v: mlc_ir::ValueId| -> Result<bool, Fail> {
        let s = cx.shape(v)?;
        Ok(s.iter().product::<usize>() == cols)
    };
    if !per_col(scale)? || bias.map(per_col).transpose()?.is_some_and(|ok| !ok) {
        return unsupported("layer norm parameters that do not cover exactly the normalized dims");
    }
    let ct = if matches!(ty, DType::F16 | DType::BF16) {
        DType::F32
    } else {
        ty
    };
    let outs: Vec<BufId> = node
        .outputs
        .iter()
        .map(|&o| cx.new_buffer(o, BufKind::Temp))
        .collect::<Result<_, _>>()?;
    let out_tys: Vec<DType> = node.outputs.iter().map(|&o| cx.dtype(o)).collect();
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let sp = (
        kb.param(&cx.p, cx.buf(scale)?, Access::Read),
        cx.dtype(scale),
    );
    let bp = match bias {
        Some(b) => Some((kb.param(&cx.p, cx.buf(b)?, Access::Read), cx.dtype(b))),
        None => None,
    };
    let ops: Vec<ParamId> = outs
        .iter()
        .map(|&b| kb.param(&cx.p, b, Access::Write))
        .collect();
    let widen = |e: Expr, t: DType| if t != ct { Expr::cast(ct, e) } else { e };
    let body = loop_nest(&mut kb, &[rows], |kb, v| {
        let r = v[0];
        let base = Expr::mul_idx(Expr::var(r), cols as i64);
        let col_loop = |kb: &mut KernelBuilder, f: &dyn Fn(Expr, Expr) -> Stmt| {
            let c = kb.var(DType::I64);
            let at = Expr::add_idx(base.clone(), Expr::var(c));
            Stmt::For {
                var: c,
                extent: Expr::idx(cols as i64),
                kind: LoopKind::Serial,
                body: vec![f(at, Expr::var(c))],
            }
        };
        let n = Expr::float(ct, cols as f64);
        let mut stmts = Vec::new();
        let mean = kb.var(ct);
        stmts.push(Stmt::Let {
            var: mean,
            value: Expr::float(ct, 0.0),
        });
        if !rms {
            stmts.push(col_loop(kb, &|at, _| Stmt::Assign {
                var: mean,
                value: Expr::bin(BinOp::Add, Expr::var(mean), widen(Expr::load(xp, at), ty)),
            }));
            stmts.push(Stmt::Assign {
                var: mean,
                value: Expr::bin(BinOp::Div, Expr::var(mean), n.clone()),
            });
        }
        let var = kb.var(ct);
        stmts.push(Stmt::Let {
            var,
            value: Expr::float(ct, 0.0),
        });
        stmts.push(col_loop(kb, &|at, _| {
            let d = Expr::bin(BinOp::Sub, widen(Expr::load(xp, at), ty), Expr::var(mean));
            Stmt::Assign {
                var,
                value: Expr::bin(
                    BinOp::Add,
                    Expr::var(var),
                    Expr::bin(BinOp::Mul, d.clone(), d),
                ),
            }
        }));
        let inv = kb.var(ct);
        let denom = Expr::un(
            UnOp::Sqrt,
            Expr::bin(
                BinOp::Add,
                Expr::bin(BinOp::Div, Expr::var(var), n),
                Expr::float(ct, eps as f64),
            ),
        );
        stmts.push(Stmt::Let {
            var: inv,
            value: Expr::bin(BinOp::Div, Expr::float(ct, 1.0), denom),
        });
        stmts.push(col_loop(kb, &|at, c| {
            let d = Expr::bin(
                BinOp::Sub,
                widen(Expr::load(xp, at.clone()), ty),
                Expr::var(mean),
            );
            let mut y = Expr::bin(
                BinOp::Mul,
                Expr::bin(BinOp::Mul, d, Expr::var(inv)),
                widen(Expr::load(sp.0, c.clone()), sp.1),
            );
            if let Some((p, t)) = bp {
                y = Expr::bin(BinOp::Add, y, widen(Expr::load(p, c), t));
            }
            let y = if ct != ty { Expr::cast(ty, y) } else { y };
            Stmt::Store {
                param: ops[0],
                index: at,
                value: y,
            }
        }));
        // The optional statistics outputs, one element per row.
        for (i, stat) in [mean, inv].iter().enumerate() {
            if let Some(&p) = ops.get(i + 1) {
                let t = out_tys[i + 1];
                let v = if t != ct {
                    Expr::cast(t, Expr::var(*stat))
                } else {
                    Expr::var(*stat)
                };
                stmts.push(Stmt::Store {
                    param: p,
                    index: Expr::var(r),
                    value: v,
                });
            }
        }
        stmts
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}
