//! Normalization layers: inference batch norm as one elementwise pass; layer norm (and RMS
//! norm) as one parallel loop over rows with the mean and variance of each row in registers.
//!
//! Mean-variance normalization reduces over any set of axes: one parallel loop over the kept
//! axes, serial loops over the reduced ones.
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

/// Instance norm (`groups` = channels) and group norm: each `(n, group)` block of
/// `C/groups * spatial` contiguous elements is normalized by its own mean and variance, then
/// scaled per channel (or per group, when the parameters have `groups` elements).
pub(super) fn grouped_norm(
    cx: &mut Cx,
    node: &Node,
    groups: Option<usize>,
    eps: f32,
) -> Result<(), Fail> {
    let (Some(x), Some(scale), Some(bias)) = (node.input(0), node.input(1), node.input(2)) else {
        return unsupported("missing input");
    };
    let xs = cx.shape(x)?;
    let ty = cx.dtype(x);
    if xs.len() < 2 || !ty.is_float() || ty.is_storage_only() {
        return unsupported("instance/group norm needs a float input of rank ≥ 2");
    }
    let c = xs[1];
    let g = groups.unwrap_or(c);
    if g == 0 || c % g != 0 {
        return unsupported("channels that do not split into the groups");
    }
    let inner: usize = xs[2..].iter().product();
    let block = c / g * inner;
    let rows = xs[0] * g;
    let per_group = |v| -> Result<bool, Fail> {
        let n = cx.shape(v)?.iter().product::<usize>();
        if n != c && n != g {
            return unsupported("norm parameters of neither C nor num_groups elements");
        }
        Ok(n == g && g != c)
    };
    let (sg, bg) = (per_group(scale)?, per_group(bias)?);
    let ct = if matches!(ty, DType::F16 | DType::BF16) {
        DType::F32
    } else {
        ty
    };
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let sp = (
        kb.param(&cx.p, cx.buf(scale)?, Access::Read),
        cx.dtype(scale),
        sg,
    );
    let bp = (
        kb.param(&cx.p, cx.buf(bias)?, Access::Read),
        cx.dtype(bias),
        bg,
    );
    let op_ = kb.param(&cx.p, out, Access::Write);
    let widen = |e: Expr, t: DType| if t != ct { Expr::cast(ct, e) } else { e };
    let body = loop_nest(&mut kb, &[rows], |kb, v| {
        let r = Expr::var(v[0]);
        let base = Expr::mul_idx(r.clone(), block as i64);
        let grp = Expr::bin(BinOp::Rem, r, Expr::idx(g as i64));
        let (mean, var, inv) = (kb.var(ct), kb.var(ct), kb.var(ct));
        let (j1, j2, j3) = (kb.var(DType::I64), kb.var(DType::I64), kb.var(DType::I64));
        let xat = |j: VarId| {
            widen(
                Expr::load(xp, Expr::add_idx(base.clone(), Expr::var(j))),
                ty,
            )
        };
        let n = Expr::float(ct, block as f64);
        let serial = |var: VarId, body: Vec<Stmt>| Stmt::For {
            var,
            extent: Expr::idx(block as i64),
            kind: LoopKind::Serial,
            body,
        };
        let d2 = Expr::bin(BinOp::Sub, xat(j2), Expr::var(mean));
        let param = |(p, t, pg): (ParamId, DType, bool)| {
            let ch = Expr::add_idx(
                Expr::mul_idx(grp.clone(), (c / g) as i64),
                Expr::bin(BinOp::Div, Expr::var(j3), Expr::idx(inner.max(1) as i64)),
            );
            widen(Expr::load(p, if pg { grp.clone() } else { ch }), t)
        };
        let y = Expr::bin(
            BinOp::Add,
            Expr::bin(
                BinOp::Mul,
                Expr::bin(
                    BinOp::Mul,
                    Expr::bin(BinOp::Sub, xat(j3), Expr::var(mean)),
                    Expr::var(inv),
                ),
                param(sp),
            ),
            param(bp),
        );
        let y = if ct != ty { Expr::cast(ty, y) } else { y };
        vec![
            Stmt::Let {
                var: mean,
                value: Expr::float(ct, 0.0),
            },
            serial(
                j1,
                vec![Stmt::Assign {
                    var: mean,
                    value: Expr::bin(BinOp::Add, Expr::var(mean), xat(j1)),
                }],
            ),
            Stmt::Assign {
                var: mean,
                value: Expr::bin(BinOp::Div, Expr::var(mean), n.clone()),
            },
            Stmt::Let {
                var,
                value: Expr::float(ct, 0.0),
            },
            serial(
                j2,
                vec![Stmt::Assign {
                    var,
                    value: Expr::bin(
                        BinOp::Add,
                        Expr::var(var),
                        Expr::bin(BinOp::Mul, d2.clone(), d2),
                    ),
                }],
            ),
            Stmt::Let {
                var: inv,
                value: Expr::bin(
                    BinOp::Div,
                    Expr::float(ct, 1.0),
                    Expr::un(
                        UnOp::Sqrt,
                        Expr::bin(
                            BinOp::Add,
                            Expr::bin(BinOp::Div, Expr::var(var), n),
                            Expr::float(ct, eps as f64),
                        ),
                    ),
                ),
            },
            serial(
                j3,
                vec![Stmt::Store {
                    param: op_,
                    index: Expr::add_idx(base.clone(), Expr::var(j3)),
                    value: y,
                }],
            ),
        ]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// Local response normalization across channels, in `f64`:
/// `x / (bias + alpha/size * Σ x²)^beta` over channels `c - ⌊(size-1)/2⌋ ..= c + ⌈(size-1)/2⌉`.
pub(super) fn lrn(
    cx: &mut Cx,
    node: &Node,
    size: usize,
    alpha: f32,
    beta: f32,
    bias: f32,
) -> Result<(), Fail> {
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    let xs = cx.shape(x)?;
    let ty = cx.dtype(x);
    if xs.len() < 2 || size == 0 || !ty.is_float() || ty.is_storage_only() {
        return unsupported("lrn needs a float [N, C, ...] input and a positive size");
    }
    let (n, c) = (xs[0], xs[1]);
    let inner: usize = xs[2..].iter().product();
    let (lo, hi) = ((size - 1) / 2, (size - 1).div_ceil(2));
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let f = |v: f64| Expr::float(DType::F64, v);
    let body = loop_nest(&mut kb, &[n, c, inner], |kb, v| {
        let (ni, ci, i) = (Expr::var(v[0]), Expr::var(v[1]), Expr::var(v[2]));
        let at = |ch: Expr| {
            let e = Expr::load(
                xp,
                Expr::add_idx(
                    Expr::mul_idx(
                        Expr::add_idx(Expr::mul_idx(ni.clone(), c as i64), ch),
                        inner as i64,
                    ),
                    i.clone(),
                ),
            );
            if ty == DType::F64 {
                e
            } else {
                Expr::cast(DType::F64, e)
            }
        };
        let (sq, k) = (kb.var(DType::F64), kb.var(DType::I64));
        // The window's channels, clamped to [0, c); out-of-range taps are skipped.
        let ch = Expr::add_idx(
            Expr::add_idx(ci.clone(), Expr::idx(-(lo as i64))),
            Expr::var(k),
        );
        let inside = Expr::bin(
            BinOp::And,
            Expr::bin(BinOp::Ge, ch.clone(), Expr::idx(0)),
            Expr::bin(BinOp::Lt, ch.clone(), Expr::idx(c as i64)),
        );
        let clamped = Expr::bin(
            BinOp::Max,
            Expr::bin(BinOp::Min, ch, Expr::idx(c as i64 - 1)),
            Expr::idx(0),
        );
        let xv = at(clamped);
        let d = Expr::bin(
            BinOp::Pow,
            Expr::bin(
                BinOp::Add,
                f(bias as f64),
                Expr::bin(BinOp::Mul, f(alpha as f64 / size as f64), Expr::var(sq)),
            ),
            f(beta as f64),
        );
        let y = Expr::bin(BinOp::Div, at(ci.clone()), d);
        vec![
            Stmt::Let {
                var: sq,
                value: f(0.0),
            },
            Stmt::For {
                var: k,
                extent: Expr::idx((lo + hi + 1) as i64),
                kind: LoopKind::Serial,
                body: vec![Stmt::Assign {
                    var: sq,
                    value: Expr::select(
                        inside,
                        Expr::bin(
                            BinOp::Add,
                            Expr::var(sq),
                            Expr::bin(BinOp::Mul, xv.clone(), xv),
                        ),
                        Expr::var(sq),
                    ),
                }],
            },
            Stmt::Store {
                param: op_,
                index: Expr::add_idx(
                    Expr::mul_idx(
                        Expr::add_idx(Expr::mul_idx(ni.clone(), c as i64), ci),
                        inner as i64,
                    ),
                    i.clone(),
                ),
                value: if ty == DType::F64 {
                    y
                } else {
                    Expr::cast(ty, y)
                },
            },
        ]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// Mean-variance normalization over `axes`: `(x - mean) / (sqrt(E[x²] - mean²) + 1e-9)`, with
/// the moments summed in one pass in the interpreter's order (row-major within each group).
pub(super) fn mean_variance_norm(cx: &mut Cx, node: &Node, axes: &[usize]) -> Result<(), Fail> {
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    let xs = cx.shape(x)?;
    let ty = cx.dtype(x);
    if !ty.is_float() || ty.is_storage_only() {
        return unsupported("mean-variance norm needs a float input");
    }
    if axes.iter().any(|&a| a >= xs.len()) {
        return unsupported(format!("mvn axes {axes:?} out of range for {xs:?}"));
    }
    let ct = if ty == DType::F64 { ty } else { DType::F32 };
    let kept: Vec<usize> = (0..xs.len()).filter(|d| !axes.contains(d)).collect();
    let red: Vec<usize> = (0..xs.len()).filter(|d| axes.contains(d)).collect();
    let count: usize = red.iter().map(|&d| xs[d]).product();
    // A full reduction still needs one (trivial) parallel loop to hang the body on.
    let kept_shape: Vec<usize> = if kept.is_empty() {
        vec![1]
    } else {
        kept.iter().map(|&d| xs[d]).collect()
    };
    let st = strides(&xs);
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let widen = |e: Expr| if ct != ty { Expr::cast(ct, e) } else { e };
    let body = loop_nest(&mut kb, &kept_shape, |kb, v| {
        let mut base = Expr::idx(0);
        for (i, &d) in kept.iter().enumerate() {
            base = Expr::add_idx(base, Expr::mul_idx(Expr::var(v[i]), st[d]));
        }
        // Serial loops over the reduced axes, outermost first, around `f(flat index)`.
        let red_nest = |kb: &mut KernelBuilder, f: &dyn Fn(Expr) -> Vec<Stmt>| -> Vec<Stmt> {
            let vars: Vec<VarId> = red.iter().map(|_| kb.var(DType::I64)).collect();
            let mut at = base.clone();
            for (i, &d) in red.iter().enumerate() {
                at = Expr::add_idx(at, Expr::mul_idx(Expr::var(vars[i]), st[d]));
            }
            let mut body = f(at);
            for (i, &d) in red.iter().enumerate().rev() {
                body = vec![Stmt::For {
                    var: vars[i],
                    extent: Expr::idx(xs[d] as i64),
                    kind: LoopKind::Serial,
                    body,
                }];
            }
            body
        };
        let (mean, sq, std) = (kb.var(ct), kb.var(ct), kb.var(ct));
        let n = Expr::float(ct, count as f64);
        let mut stmts = vec![
            Stmt::Let {
                var: mean,
                value: Expr::float(ct, 0.0),
            },
            Stmt::Let {
                var: sq,
                value: Expr::float(ct, 0.0),
            },
        ];
        stmts.extend(red_nest(kb, &|at| {
            let xv = widen(Expr::load(xp, at));
            vec![
                Stmt::Assign {
                    var: mean,
                    value: Expr::bin(BinOp::Add, Expr::var(mean), xv.clone()),
                },
                Stmt::Assign {
                    var: sq,
                    value: Expr::bin(
                        BinOp::Add,
                        Expr::var(sq),
                        Expr::bin(BinOp::Mul, xv.clone(), xv),
                    ),
                },
            ]
        }));
        stmts.push(Stmt::Assign {
            var: mean,
            value: Expr::bin(BinOp::Div, Expr::var(mean), n.clone()),
        });
        let var = Expr::bin(
            BinOp::Sub,
            Expr::bin(BinOp::Div, Expr::var(sq), n),
            Expr::bin(BinOp::Mul, Expr::var(mean), Expr::var(mean)),
        );
        stmts.push(Stmt::Let {
            var: std,
            value: Expr::bin(BinOp::Add, Expr::un(UnOp::Sqrt, var), Expr::float(ct, 1e-9)),
        });
        stmts.extend(red_nest(kb, &|at| {
            let y = Expr::bin(
                BinOp::Div,
                Expr::bin(
                    BinOp::Sub,
                    widen(Expr::load(xp, at.clone())),
                    Expr::var(mean),
                ),
                Expr::var(std),
            );
            vec![Stmt::Store {
                param: op_,
                index: at,
                value: if ct != ty { Expr::cast(ty, y) } else { y },
            }]
        }));
        stmts
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}
