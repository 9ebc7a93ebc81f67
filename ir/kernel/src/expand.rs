//! [`Stmt::Depthwise`] written out as plain loops, for backends without a depthwise library
//! kernel (the NVPTX backend) and for lowering steps that rewrite a kernel's stores.
//!
//! Why a function here and not a second lowering: the statement is the one description of the
//! convolution; a backend that cannot call a tuned kernel asks for its loop form, which
//! computes exactly what the evaluator defines (same taps in the same order, padding read as
//! 0.0 through a select on a clamped index, the epilogue as `let`s), so every backend agrees
//! with the oracle.

use crate::kernel::*;
use mlc_ir::DType;

/// `k` with every [`Stmt::Depthwise`] replaced by its loop form; the same kernel when it has
/// none.
pub fn expand_depthwise(k: &Kernel) -> Kernel {
    let mut out = k.clone();
    let body = std::mem::take(&mut out.body);
    out.body = expand_block(&mut out, body);
    out
}

/// Whether `body` holds a [`Stmt::Depthwise`] at any depth.
pub fn has_depthwise(body: &[Stmt]) -> bool {
    body.iter().any(|s| match s {
        Stmt::Depthwise(_) => true,
        Stmt::For { body, .. } => has_depthwise(body),
        _ => false,
    })
}

fn expand_block(k: &mut Kernel, body: Vec<Stmt>) -> Vec<Stmt> {
    let mut out = Vec::with_capacity(body.len());
    for s in body {
        match s {
            Stmt::Depthwise(dw) => out.extend(loops(k, &dw)),
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => {
                let body = expand_block(k, body);
                out.push(Stmt::For {
                    var,
                    extent,
                    kind,
                    body,
                });
            }
            s => out.push(s),
        }
    }
    out
}

fn idx(v: usize) -> Expr {
    Expr::idx(v as i64)
}

fn for_(var: VarId, extent: usize, kind: LoopKind, body: Vec<Stmt>) -> Stmt {
    Stmt::For {
        var,
        extent: idx(extent),
        kind,
        body,
    }
}

/// One input coordinate of a tap: `o·stride + t·dil - pad`, clamped into `[0, n)`, and
/// whether it was inside.
fn coord(o: VarId, t: usize, stride: usize, dil: usize, pad: usize, n: usize) -> (Expr, Expr) {
    let pos = Expr::add_idx(
        Expr::mul_idx(Expr::var(o), stride as i64),
        Expr::idx((t * dil) as i64 - pad as i64),
    );
    let inside = Expr::bin(
        BinOp::And,
        Expr::bin(BinOp::Ge, pos.clone(), Expr::idx(0)),
        Expr::bin(BinOp::Lt, pos.clone(), idx(n)),
    );
    let clamped = Expr::bin(
        BinOp::Max,
        Expr::bin(BinOp::Min, pos, Expr::idx(n as i64 - 1)),
        Expr::idx(0),
    );
    (clamped, inside)
}

fn loops(k: &mut Kernel, dw: &Depthwise) -> Vec<Stmt> {
    let f32_ = DType::F32;
    let m = dw.channels * dw.mult;
    let ([ih, iw], [oh, ow], [kh, kw]) = (dw.in_hw, dw.out_hw, dw.kernel);
    let (p, oy, ox) = (k.var(DType::I64), k.var(DType::I64), k.var(DType::I64));
    let (mo, acc) = (k.var(DType::I64), k.var(f32_));
    // Plane p = n·m + mo reads input plane n·c + mo / mult.
    let in_plane = Expr::mul_idx(
        Expr::add_idx(
            Expr::mul_idx(
                Expr::bin(BinOp::Div, Expr::var(p), idx(m)),
                dw.channels as i64,
            ),
            Expr::bin(BinOp::Div, Expr::var(mo), idx(dw.mult)),
        ),
        (ih * iw) as i64,
    );
    let mut inner = vec![Stmt::Let {
        var: acc,
        value: match dw.bias {
            Some(b) => Expr::load(b, Expr::var(mo)),
            None => Expr::float(f32_, 0.0),
        },
    }];
    for ky in 0..kh {
        let (ry, iny) = coord(oy, ky, dw.stride[0], dw.dilation[0], dw.pad[0], ih);
        for kx in 0..kw {
            let (rx, inx) = coord(ox, kx, dw.stride[1], dw.dilation[1], dw.pad[1], iw);
            let at = Expr::add_idx(
                Expr::add_idx(in_plane.clone(), Expr::mul_idx(ry.clone(), iw as i64)),
                rx,
            );
            let xv = Expr::select(
                Expr::bin(BinOp::And, iny.clone(), inx),
                Expr::load(dw.x, at),
                Expr::float(f32_, 0.0),
            );
            let wv = Expr::load(
                dw.w,
                Expr::add_idx(
                    Expr::mul_idx(Expr::var(mo), (kh * kw) as i64),
                    idx(ky * kw + kx),
                ),
            );
            inner.push(Stmt::Assign {
                var: acc,
                value: Expr::bin(
                    BinOp::Add,
                    Expr::var(acc),
                    Expr::bin(BinOp::Mul, xv, wv),
                ),
            });
        }
    }
    // The epilogue: `x` and `s` start as the accumulator.
    let (x, s) = (k.var(f32_), k.var(f32_));
    inner.push(Stmt::Let {
        var: x,
        value: Expr::var(acc),
    });
    inner.push(Stmt::Let {
        var: s,
        value: Expr::var(acc),
    });
    for e in &dw.epilogue {
        let (var, value) = match e {
            EpOp::Bin { op, arg, arg_first } => {
                let a = match arg {
                    EpArg::Lit(v) => Expr::float(f32_, *v as f64),
                    EpArg::Scalar(q) => Expr::load(*q, Expr::idx(0)),
                };
                let v = if *arg_first {
                    Expr::bin(*op, a, Expr::var(x))
                } else {
                    Expr::bin(*op, Expr::var(x), a)
                };
                (x, v)
            }
            EpOp::Save => (s, Expr::var(x)),
            EpOp::Combine { op, saved_first } => {
                let v = if *saved_first {
                    Expr::bin(*op, Expr::var(s), Expr::var(x))
                } else {
                    Expr::bin(*op, Expr::var(x), Expr::var(s))
                };
                (x, v)
            }
        };
        inner.push(Stmt::Assign { var, value });
    }
    inner.push(Stmt::Store {
        param: dw.out,
        index: Expr::add_idx(
            Expr::mul_idx(Expr::var(p), (oh * ow) as i64),
            Expr::add_idx(Expr::mul_idx(Expr::var(oy), ow as i64), Expr::var(ox)),
        ),
        value: Expr::var(x),
    });
    let per_plane = vec![
        Stmt::Let {
            var: mo,
            value: Expr::bin(BinOp::Rem, Expr::var(p), idx(m)),
        },
        for_(
            oy,
            oh,
            LoopKind::Serial,
            vec![for_(ox, ow, LoopKind::Serial, inner)],
        ),
    ];
    vec![for_(p, dw.batch * m, LoopKind::Parallel, per_plane)]
}
