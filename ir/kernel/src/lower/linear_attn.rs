//! Recurrent linear attention (`attn.linear_attention`) as one kernel.
//!
//! Every `(batch, kv head)` pair carries its own `d_k × d_v` state through the sequence, so
//! those pairs are the parallel loop; inside, a serial loop walks the time steps. The update
//! rules touch the state column by column (the delta rule's retrieval `Sᵀk` for column `m`
//! reads only column `m`, and column `m` is then updated with that value alone), so each step
//! is a loop over columns with serial loops over `d_k` inside, then the step's outputs for the
//! query heads that share this kv head.
//!
//! The reference recurrence runs in `f32` whatever the input type: every value read is
//! rounded to `f32`, every product and difference is rounded to `f32`, and the dot products
//! accumulate in `f64` and round once, as the interpreter does. The running state lives in an
//! `f64` scratch buffer (its values are always `f32`-exact) and is written to
//! `present_state` at the end.

use super::attn::{f64_of, rd};
use super::{Cx, Fail, KernelBuilder, kernel_name, unsupported};
use crate::kernel::*;
use mlc_ir::ops::attn::UpdateRule;
use mlc_ir::{DType, Node};

fn f(v: f64) -> Expr {
    Expr::float(DType::F64, v)
}

fn r32(e: Expr) -> Expr {
    rd(DType::F32, e)
}

fn var(v: VarId) -> Expr {
    Expr::var(v)
}

fn add(a: Expr, b: Expr) -> Expr {
    Expr::bin(BinOp::Add, a, b)
}

fn mul(a: Expr, b: Expr) -> Expr {
    Expr::bin(BinOp::Mul, a, b)
}

/// `for v in 0..n { body }`, serial.
fn serial(v: VarId, n: usize, body: Vec<Stmt>) -> Stmt {
    Stmt::For {
        var: v,
        extent: Expr::idx(n as i64),
        kind: LoopKind::Serial,
        body,
    }
}

/// The flat index `((a·n1 + b)·n2 + c)` of a row-major 3-D tensor `[_, n1, n2]`.
fn at3(a: Expr, n1: usize, b: Expr, n2: usize, c: Expr) -> Expr {
    Expr::add_idx(
        Expr::mul_idx(Expr::add_idx(Expr::mul_idx(a, n1 as i64), b), n2 as i64),
        c,
    )
}

pub(super) fn lower(
    cx: &mut Cx,
    node: &Node,
    hq: usize,
    hkv: usize,
    scale: Option<f32>,
    rule: UpdateRule,
) -> Result<(), Fail> {
    let (Some(qv), Some(kv), Some(vv)) = (node.input(0), node.input(1), node.input(2)) else {
        return unsupported("missing query, key or value");
    };
    let floaty = |t: DType| matches!(t, DType::F16 | DType::BF16 | DType::F32 | DType::F64);
    let ins: Vec<_> = (0..6).map(|i| node.input(i)).collect();
    for v in ins.iter().flatten() {
        if !floaty(cx.dtype(*v)) {
            return unsupported("linear attention computes in float types");
        }
    }
    let (qs, ks, vs) = (cx.shape(qv)?, cx.shape(kv)?, cx.shape(vv)?);
    let (&[nb, nt, qh], &[_, _, _], &[_, _, vh]) = (qs.as_slice(), ks.as_slice(), vs.as_slice())
    else {
        return unsupported("query, key and value must be 3-D");
    };
    if hq == 0 || hkv == 0 || !hq.is_multiple_of(hkv) || !qh.is_multiple_of(hq) {
        return unsupported("head counts that do not divide the hidden sizes");
    }
    let dk = qh / hq;
    if ks != [nb, nt, hkv * dk] || vs[..2] != [nb, nt] || !vh.is_multiple_of(hkv) {
        return unsupported("linear attention shapes that do not agree");
    }
    let dv = vh / hkv;
    let group = hq / hkv;
    let (past, decay, beta) = (ins[3], ins[4], ins[5]);
    if rule.gated() != decay.is_some() || rule.delta() != beta.is_some() {
        return unsupported("update rule and decay/beta inputs that disagree");
    }
    if let Some(p) = past
        && cx.shape(p)? != [nb, hkv, dk, dv]
    {
        return unsupported("past_state not shaped (batch, kv_heads, d_k, d_v)");
    }
    // The last dim of decay (per head, or per head and key feature) and of beta (shared or
    // per head).
    let last = |cx: &Cx, v: Option<mlc_ir::ValueId>, ok: &[usize]| -> Result<usize, Fail> {
        let Some(v) = v else { return Ok(0) };
        match cx.shape(v)?.as_slice() {
            &[b, t, n] if b == nb && t == nt && ok.contains(&n) => Ok(n),
            _ => unsupported("decay or beta of an unexpected shape"),
        }
    };
    let decay_n = last(cx, decay, &[hkv, hkv * dk])?;
    let beta_n = last(cx, beta, &[1, hkv])?;
    let scale = match scale {
        Some(s) if s != 0.0 => f64::from(s),
        _ => 1.0 / (dk as f64).sqrt(),
    };

    let y = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let present = match node.outputs.get(1) {
        Some(&o) => Some(cx.new_buffer(o, BufKind::Temp)?),
        None => None,
    };
    let state =
        cx.p.add_buffer(DType::F64, vec![nb, hkv, dk, dv], BufKind::Temp);
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let load = |kb: &mut KernelBuilder, cx: &Cx, v| -> Result<(ParamId, DType), Fail> {
        Ok((kb.param(&cx.p, cx.buf(v)?, Access::Read), cx.dtype(v)))
    };
    let (qp, qt) = load(&mut kb, cx, qv)?;
    let (kp, kt) = load(&mut kb, cx, kv)?;
    let (vp, vt) = load(&mut kb, cx, vv)?;
    let pp = past.map(|v| load(&mut kb, cx, v)).transpose()?;
    let dp = decay.map(|v| load(&mut kb, cx, v)).transpose()?;
    let bp = beta.map(|v| load(&mut kb, cx, v)).transpose()?;
    let sp = kb.param(&cx.p, state, Access::ReadWrite);
    let yp = kb.param(&cx.p, y, Access::Write);
    let outp = present.map(|b| kb.param(&cx.p, b, Access::Write));
    let out_dt = cx.dtype(qv);
    let state_dt = present.map(|b| cx.p.buffer(b).dtype);

    let [bh, b, h, d, m, t, g] = [DType::I64; 7].map(|ty| kb.var(ty));
    let [acc, vtv, ret] = [DType::F64; 3].map(|ty| kb.var(ty));
    let (bx, hx, tx, dx, mx) = (var(b), var(h), var(t), var(d), var(m));
    let s_at = Expr::add_idx(
        Expr::mul_idx(var(bh), (dk * dv) as i64),
        Expr::add_idx(Expr::mul_idx(dx.clone(), dv as i64), mx.clone()),
    );
    let s_val = Expr::load(sp, s_at.clone());
    // Inputs read at step t, rounded to f32.
    let rd_in = |(p, ty): (ParamId, DType), idx: Expr| r32(f64_of(Expr::load(p, idx), ty));
    let k_d = rd_in(
        (kp, kt),
        at3(
            bx.clone(),
            nt,
            tx.clone(),
            hkv * dk,
            Expr::add_idx(Expr::mul_idx(hx.clone(), dk as i64), dx.clone()),
        ),
    );

    let mut body = vec![
        Stmt::Let {
            var: b,
            value: Expr::bin(BinOp::Div, var(bh), Expr::idx(hkv as i64)),
        },
        Stmt::Let {
            var: h,
            value: Expr::bin(BinOp::Rem, var(bh), Expr::idx(hkv as i64)),
        },
    ];
    // The initial state.
    let init = match pp {
        Some(p) => rd_in(p, s_at.clone()),
        None => f(0.0),
    };
    body.push(serial(
        d,
        dk,
        vec![serial(
            m,
            dv,
            vec![Stmt::Store {
                param: sp,
                index: s_at.clone(),
                value: init,
            }],
        )],
    ));

    // One step: every column of the state, then the outputs.
    let mut col = Vec::new();
    if let Some(dp) = dp {
        let feat = if decay_n == hkv {
            hx.clone()
        } else {
            Expr::add_idx(Expr::mul_idx(hx.clone(), dk as i64), dx.clone())
        };
        let gate = r32(Expr::un(
            UnOp::Exp,
            rd_in(dp, at3(bx.clone(), nt, tx.clone(), decay_n, feat)),
        ));
        col.push(serial(
            d,
            dk,
            vec![Stmt::Store {
                param: sp,
                index: s_at.clone(),
                value: r32(mul(s_val.clone(), gate)),
            }],
        ));
    }
    col.push(Stmt::Let {
        var: vtv,
        value: rd_in(
            (vp, vt),
            at3(
                bx.clone(),
                nt,
                tx.clone(),
                hkv * dv,
                Expr::add_idx(Expr::mul_idx(hx.clone(), dv as i64), mx.clone()),
            ),
        ),
    });
    if let Some(bp) = bp {
        let head = if beta_n == 1 {
            Expr::idx(0)
        } else {
            hx.clone()
        };
        let beta_v = rd_in(bp, at3(bx.clone(), nt, tx.clone(), beta_n, head));
        col.extend([
            Stmt::Let {
                var: acc,
                value: f(0.0),
            },
            serial(
                d,
                dk,
                vec![Stmt::Assign {
                    var: acc,
                    value: add(var(acc), mul(s_val.clone(), k_d.clone())),
                }],
            ),
            Stmt::Let {
                var: ret,
                value: r32(var(acc)),
            },
            Stmt::Assign {
                var: vtv,
                value: r32(mul(beta_v, r32(Expr::bin(BinOp::Sub, var(vtv), var(ret))))),
            },
        ]);
    }
    col.push(serial(
        d,
        dk,
        vec![Stmt::Store {
            param: sp,
            index: s_at.clone(),
            value: r32(add(s_val.clone(), r32(mul(k_d.clone(), var(vtv))))),
        }],
    ));
    let qh_idx = Expr::add_idx(Expr::mul_idx(hx.clone(), group as i64), var(g));
    let q_d = rd_in(
        (qp, qt),
        at3(
            bx.clone(),
            nt,
            tx.clone(),
            hq * dk,
            Expr::add_idx(Expr::mul_idx(qh_idx.clone(), dk as i64), dx.clone()),
        ),
    );
    let out = vec![
        Stmt::Let {
            var: acc,
            value: f(0.0),
        },
        serial(
            d,
            dk,
            vec![Stmt::Assign {
                var: acc,
                value: add(var(acc), mul(q_d, s_val.clone())),
            }],
        ),
        Stmt::Store {
            param: yp,
            index: at3(
                bx.clone(),
                nt,
                tx.clone(),
                hq * dv,
                Expr::add_idx(Expr::mul_idx(qh_idx, dv as i64), mx.clone()),
            ),
            value: Expr::cast(out_dt, r32(mul(f(scale), r32(var(acc))))),
        },
    ];
    body.push(serial(
        t,
        nt,
        vec![
            serial(m, dv, col),
            serial(g, group, vec![serial(m, dv, out)]),
        ],
    ));
    if let (Some(op_), Some(sdt)) = (outp, state_dt) {
        body.push(serial(
            d,
            dk,
            vec![serial(
                m,
                dv,
                vec![Stmt::Store {
                    param: op_,
                    index: s_at,
                    value: Expr::cast(sdt, s_val),
                }],
            )],
        ));
    }
    kb.k.body = vec![Stmt::For {
        var: bh,
        extent: Expr::idx((nb * hkv) as i64),
        kind: LoopKind::Parallel,
        body,
    }];
    cx.launch(kb, node);
    Ok(())
}
