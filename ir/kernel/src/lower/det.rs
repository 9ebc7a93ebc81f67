//! `nn.det`: one kernel, parallel over the matrices, each reduced by the interpreter's Gaussian
//! elimination with partial pivoting in f64 (in an f64 scratch copy, rounded to the output type
//! once), so that both agree to the last bit.
//!
//! Kernel IR has no branches, so the data-dependent steps are selects: the pivot row is chosen
//! by a scan that keeps the first strictly larger magnitude, the row swap always runs (a no-op
//! when the pivot is on the diagonal), and a zero pivot makes every multiplier zero; the
//! determinant then stays zero, as the interpreter's early return gives.

use super::{Cx, Fail, KernelBuilder, kernel_name, unsupported};
use crate::kernel::*;
use mlc_ir::{DType, Node};

pub(super) fn det(cx: &mut Cx, node: &Node) -> Result<(), Fail> {
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    let xs = cx.shape(x)?;
    let ty = cx.dtype(x);
    let r = xs.len();
    if r < 2 || xs[r - 1] != xs[r - 2] || !matches!(ty, DType::F32 | DType::F64) {
        return unsupported(format!("det of {} {xs:?}", ty.name()));
    }
    let m = xs[r - 1];
    let batch: usize = xs[..r - 2].iter().product();
    let mm = (m * m) as i64;
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let scratch =
        cx.p.add_buffer(DType::F64, vec![batch.max(1), m * m], BufKind::Temp);
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let ap = kb.param(&cx.p, scratch, Access::ReadWrite);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let f64c = |v: f64| Expr::float(DType::F64, v);

    let b = kb.var(DType::I64);
    let base = Expr::mul_idx(Expr::var(b), mm);
    // Element (row, col) of this matrix in the scratch copy.
    let at = |row: Expr, col: Expr| {
        Expr::add_idx(
            base.clone(),
            Expr::add_idx(Expr::mul_idx(row, m as i64), col),
        )
    };
    let load = |row: Expr, col: Expr| Expr::load(ap, at(row, col));

    let i = kb.var(DType::I64);
    let copy = Stmt::For {
        var: i,
        extent: Expr::idx(mm),
        kind: LoopKind::Serial,
        body: vec![Stmt::Store {
            param: ap,
            index: Expr::add_idx(base.clone(), Expr::var(i)),
            value: Expr::cast(
                DType::F64,
                Expr::load(xp, Expr::add_idx(base.clone(), Expr::var(i))),
            ),
        }],
    };
    let det = kb.var(DType::F64);
    let col = kb.var(DType::I64);
    let (piv, best) = (kb.var(DType::I64), kb.var(DType::F64));
    let (row, k, tmp) = (kb.var(DType::I64), kb.var(DType::I64), kb.var(DType::F64));
    // The elimination's loops get counters of their own (each loop defines its counter).
    let (row2, k2) = (kb.var(DType::I64), kb.var(DType::I64));
    let (p, f) = (kb.var(DType::F64), kb.var(DType::F64));
    let c = || Expr::var(col);

    // Pivot search: the first row below the diagonal whose magnitude beats every earlier one.
    let mag = Expr::un(UnOp::Abs, load(Expr::var(row), c()));
    let better = Expr::bin(
        BinOp::And,
        Expr::bin(BinOp::Gt, Expr::var(row), c()),
        Expr::bin(BinOp::Gt, mag.clone(), Expr::var(best)),
    );
    let search = Stmt::For {
        var: row,
        extent: Expr::idx(m as i64),
        kind: LoopKind::Serial,
        body: vec![
            Stmt::Assign {
                var: piv,
                value: Expr::select(better.clone(), Expr::var(row), Expr::var(piv)),
            },
            Stmt::Assign {
                var: best,
                value: Expr::select(better, mag, Expr::var(best)),
            },
        ],
    };
    let swap = Stmt::For {
        var: k,
        extent: Expr::idx(m as i64),
        kind: LoopKind::Serial,
        body: vec![
            Stmt::Let {
                var: tmp,
                value: load(c(), Expr::var(k)),
            },
            Stmt::Store {
                param: ap,
                index: at(c(), Expr::var(k)),
                value: load(Expr::var(piv), Expr::var(k)),
            },
            Stmt::Store {
                param: ap,
                index: at(Expr::var(piv), Expr::var(k)),
                value: Expr::var(tmp),
            },
        ],
    };
    let swapped = Expr::bin(BinOp::Ne, Expr::var(piv), c());
    let skip = Expr::bin(
        BinOp::Or,
        Expr::bin(BinOp::Le, Expr::var(row2), c()),
        Expr::bin(BinOp::Eq, Expr::var(p), f64c(0.0)),
    );
    let eliminate = Stmt::For {
        var: row2,
        extent: Expr::idx(m as i64),
        kind: LoopKind::Serial,
        body: vec![
            Stmt::Let {
                var: f,
                value: Expr::select(
                    skip,
                    f64c(0.0),
                    Expr::bin(BinOp::Div, load(Expr::var(row2), c()), Expr::var(p)),
                ),
            },
            Stmt::For {
                var: k2,
                extent: Expr::idx(m as i64),
                kind: LoopKind::Serial,
                body: vec![Stmt::Store {
                    param: ap,
                    index: at(Expr::var(row2), Expr::var(k2)),
                    value: Expr::bin(
                        BinOp::Sub,
                        load(Expr::var(row2), Expr::var(k2)),
                        Expr::bin(BinOp::Mul, Expr::var(f), load(c(), Expr::var(k2))),
                    ),
                }],
            },
        ],
    };
    let step = vec![
        Stmt::Let {
            var: piv,
            value: c(),
        },
        Stmt::Let {
            var: best,
            value: Expr::un(UnOp::Abs, load(c(), c())),
        },
        search,
        swap,
        Stmt::Assign {
            var: det,
            value: Expr::select(swapped, Expr::un(UnOp::Neg, Expr::var(det)), Expr::var(det)),
        },
        Stmt::Let {
            var: p,
            value: load(c(), c()),
        },
        Stmt::Assign {
            var: det,
            value: Expr::bin(BinOp::Mul, Expr::var(det), Expr::var(p)),
        },
        eliminate,
    ];
    let body = vec![
        copy,
        Stmt::Let {
            var: det,
            value: f64c(1.0),
        },
        Stmt::For {
            var: col,
            extent: Expr::idx(m as i64),
            kind: LoopKind::Serial,
            body: step,
        },
        Stmt::Store {
            param: op_,
            index: Expr::var(b),
            value: Expr::cast(ty, Expr::var(det)),
        },
    ];
    kb.k.body = vec![Stmt::For {
        var: b,
        extent: Expr::idx(batch as i64),
        kind: LoopKind::Parallel,
        body,
    }];
    cx.launch(kb, node);
    Ok(())
}
