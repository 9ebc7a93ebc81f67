//! Classification losses: `NegativeLogLikelihoodLoss` and `SoftmaxCrossEntropyLoss`.
//!
//! Softmax cross-entropy first writes the log-probabilities (its optional second output, or a
//! temporary) with one parallel pass per `(n, d…)` lane, then both losses pick the label's
//! score out of each lane. The loss itself is computed in `f64` and rounded once, as the
//! interpreter does: a mean over many lanes is where `f32` accumulation would drift.

use super::{Cx, Fail, KernelBuilder, kernel_name, loop_nest, unsupported};
use crate::kernel::*;
use mlc_ir::ops::reduce::LossReduction;
use mlc_ir::{DType, Node};

pub(super) fn nll(
    cx: &mut Cx,
    node: &Node,
    reduction: LossReduction,
    ignore_index: Option<i64>,
    softmax: bool,
) -> Result<(), Fail> {
    let (Some(x), Some(labels)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let xs = cx.shape(x)?;
    let ty = cx.dtype(x);
    if xs.len() < 2 || !ty.is_float() || ty.is_storage_only() {
        return unsupported("losses need float scores of shape [N, C, ...]");
    }
    let (n, c) = (xs[0], xs[1]);
    let d: usize = xs[2..].iter().product();
    let scores = if softmax {
        let lp = match node.outputs.get(1) {
            Some(&o) => cx.new_buffer(o, BufKind::Temp)?,
            None => cx.p.add_buffer(ty, xs.clone(), BufKind::Temp),
        };
        log_softmax_axis1(cx, node, cx.buf(x)?, lp, ty, (n, c, d));
        lp
    } else {
        cx.buf(x)?
    };
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let lty = cx.dtype(labels);
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let sp = kb.param(&cx.p, scores, Access::Read);
    let lbp = kb.param(&cx.p, cx.buf(labels)?, Access::Read);
    let wp = match node.input(2) {
        Some(w) => Some((kb.param(&cx.p, cx.buf(w)?, Access::Read), cx.dtype(w))),
        None => None,
    };
    let op_ = kb.param(&cx.p, out, Access::Write);
    let f64_ = |e: Expr, t: DType| {
        if t == DType::F64 {
            e
        } else {
            Expr::cast(DType::F64, e)
        }
    };
    // Statements computing one lane's (loss, weight) into two fresh f64 variables.
    let lane = |kb: &mut KernelBuilder, i: Expr, j: Expr| {
        let (t, loss, w) = (kb.var(DType::I64), kb.var(DType::F64), kb.var(DType::F64));
        let lab = Expr::load(
            lbp,
            Expr::add_idx(Expr::mul_idx(i.clone(), d as i64), j.clone()),
        );
        let lab = if lty == DType::I64 {
            lab
        } else {
            Expr::cast(DType::I64, lab)
        };
        let ignored = match ignore_index {
            Some(ig) => Expr::bin(BinOp::Eq, Expr::var(t), Expr::idx(ig)),
            None => Expr::Lit(Lit::Bool(false)),
        };
        // Clamped, so an ignored (or invalid) label never loads out of bounds.
        let tc = Expr::bin(
            BinOp::Max,
            Expr::bin(BinOp::Min, Expr::var(t), Expr::idx(c as i64 - 1)),
            Expr::idx(0),
        );
        let weight = match wp {
            Some((p, wt)) => f64_(Expr::load(p, tc.clone()), wt),
            None => Expr::float(DType::F64, 1.0),
        };
        let at = Expr::add_idx(
            Expr::mul_idx(Expr::add_idx(Expr::mul_idx(i, c as i64), tc), d as i64),
            j,
        );
        let zero = Expr::float(DType::F64, 0.0);
        let stmts = vec![
            Stmt::Let { var: t, value: lab },
            Stmt::Let {
                var: w,
                value: Expr::select(ignored.clone(), zero.clone(), weight),
            },
            Stmt::Let {
                var: loss,
                value: Expr::bin(
                    BinOp::Mul,
                    Expr::un(UnOp::Neg, f64_(Expr::load(sp, at), ty)),
                    Expr::var(w),
                ),
            },
        ];
        (stmts, loss, w)
    };
    let narrow = |e: Expr| {
        if ty == DType::F64 {
            e
        } else {
            Expr::cast(ty, e)
        }
    };
    kb.k.body = match reduction {
        LossReduction::None => loop_nest(&mut kb, &[n, d], |kb, v| {
            let (mut stmts, loss, _) = lane(kb, Expr::var(v[0]), Expr::var(v[1]));
            stmts.push(Stmt::Store {
                param: op_,
                index: Expr::add_idx(Expr::mul_idx(Expr::var(v[0]), d as i64), Expr::var(v[1])),
                value: narrow(Expr::var(loss)),
            });
            stmts
        }),
        LossReduction::Sum | LossReduction::Mean => {
            let (sum, wsum) = (kb.var(DType::F64), kb.var(DType::F64));
            let (i, j) = (kb.var(DType::I64), kb.var(DType::I64));
            let (mut inner, loss, w) = lane(&mut kb, Expr::var(i), Expr::var(j));
            inner.push(Stmt::Assign {
                var: sum,
                value: Expr::bin(BinOp::Add, Expr::var(sum), Expr::var(loss)),
            });
            inner.push(Stmt::Assign {
                var: wsum,
                value: Expr::bin(BinOp::Add, Expr::var(wsum), Expr::var(w)),
            });
            let total = if reduction == LossReduction::Mean {
                Expr::bin(BinOp::Div, Expr::var(sum), Expr::var(wsum))
            } else {
                Expr::var(sum)
            };
            vec![
                Stmt::Let {
                    var: sum,
                    value: Expr::float(DType::F64, 0.0),
                },
                Stmt::Let {
                    var: wsum,
                    value: Expr::float(DType::F64, 0.0),
                },
                Stmt::For {
                    var: i,
                    extent: Expr::idx(n as i64),
                    kind: LoopKind::Serial,
                    body: vec![Stmt::For {
                        var: j,
                        extent: Expr::idx(d as i64),
                        kind: LoopKind::Serial,
                        body: inner,
                    }],
                },
                Stmt::Store {
                    param: op_,
                    index: Expr::idx(0),
                    value: narrow(total),
                },
            ]
        }
    };
    cx.launch(kb, node);
    Ok(())
}

/// `lp = log_softmax(x)` along dim 1 of `[n, c, d]`, computed in `f64` and rounded once.
fn log_softmax_axis1(
    cx: &mut Cx,
    node: &Node,
    x: BufId,
    lp: BufId,
    ty: DType,
    (n, c, d): (usize, usize, usize),
) {
    let mut kb = KernelBuilder::new("log_softmax_axis1");
    let xp = kb.param(&cx.p, x, Access::Read);
    let lpp = kb.param(&cx.p, lp, Access::Write);
    let body = loop_nest(&mut kb, &[n, d], |kb, v| {
        let (mx, sum, lse) = (kb.var(DType::F64), kb.var(DType::F64), kb.var(DType::F64));
        let (k1, k2, k3) = (kb.var(DType::I64), kb.var(DType::I64), kb.var(DType::I64));
        let at = |k: VarId| {
            Expr::add_idx(
                Expr::mul_idx(
                    Expr::add_idx(Expr::mul_idx(Expr::var(v[0]), c as i64), Expr::var(k)),
                    d as i64,
                ),
                Expr::var(v[1]),
            )
        };
        let ld = |k: VarId| {
            let e = Expr::load(xp, at(k));
            if ty == DType::F64 {
                e
            } else {
                Expr::cast(DType::F64, e)
            }
        };
        let serial = |var: VarId, body: Vec<Stmt>| Stmt::For {
            var,
            extent: Expr::idx(c as i64),
            kind: LoopKind::Serial,
            body,
        };
        let y = Expr::bin(
            BinOp::Sub,
            Expr::bin(BinOp::Sub, ld(k3), Expr::var(mx)),
            Expr::var(lse),
        );
        vec![
            Stmt::Let {
                var: mx,
                value: Expr::float(DType::F64, f64::NEG_INFINITY),
            },
            serial(
                k1,
                vec![Stmt::Assign {
                    var: mx,
                    value: Expr::bin(BinOp::Max, Expr::var(mx), ld(k1)),
                }],
            ),
            Stmt::Let {
                var: sum,
                value: Expr::float(DType::F64, 0.0),
            },
            serial(
                k2,
                vec![Stmt::Assign {
                    var: sum,
                    value: Expr::bin(
                        BinOp::Add,
                        Expr::var(sum),
                        Expr::un(UnOp::Exp, Expr::bin(BinOp::Sub, ld(k2), Expr::var(mx))),
                    ),
                }],
            ),
            Stmt::Let {
                var: lse,
                value: Expr::un(UnOp::Log, Expr::var(sum)),
            },
            serial(
                k3,
                vec![Stmt::Store {
                    param: lpp,
                    index: at(k3),
                    value: if ty == DType::F64 {
                        y
                    } else {
                        Expr::cast(ty, y)
                    },
                }],
            ),
        ]
    });
    kb.k.body = body;
    cx.launch(kb, node);
}
