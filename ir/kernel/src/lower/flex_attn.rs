//! FlexAttention (`attn.flex_attention`): attention whose scores and probabilities pass
//! through user regions.
//!
//! The regions are whole-tensor graphs on `(batch, q_heads, q_seq, kv_seq)`, so the scores and
//! the probabilities are materialized as buffers of that shape (in the softmax type), and each
//! region's body is lowered in place between the kernels, reading those buffers. Kernels: the
//! scores (a parallel loop over every score, a serial dot product inside), the score region,
//! the softmax (a parallel loop over rows), the probability region, and the weighted sum of
//! values (a parallel loop over every output element).
//!
//! Arithmetic follows the interpreter step for step: `f64` with a rounding to the input type
//! after each step ONNX's reference rounds, and to the softmax type after the others.

use super::attn::{f64_of, rd};
use super::{Cx, Fail, KernelBuilder, kernel_name, loop_nest, unsupported};
use crate::kernel::*;
use mlc_ir::{DType, Graph, Node, ValueId};

fn f(v: f64) -> Expr {
    Expr::float(DType::F64, v)
}

fn var(v: VarId) -> Expr {
    Expr::var(v)
}

/// The flat index of `(a, b, c, d)` in a row-major `[_, n1, n2, n3]` tensor.
fn at4(i: [Expr; 4], n: [usize; 3]) -> Expr {
    let [a, b, c, d] = i;
    let ab = Expr::add_idx(Expr::mul_idx(a, n[0] as i64), b);
    let abc = Expr::add_idx(Expr::mul_idx(ab, n[1] as i64), c);
    Expr::add_idx(Expr::mul_idx(abc, n[2] as i64), d)
}

fn serial(v: VarId, n: usize, body: Vec<Stmt>) -> Stmt {
    Stmt::For {
        var: v,
        extent: Expr::idx(n as i64),
        kind: LoopKind::Serial,
        body,
    }
}

pub(super) fn lower(
    cx: &mut Cx,
    node: &Node,
    scale: Option<f32>,
    softmax_precision: Option<DType>,
    score_captures: Option<usize>,
    prob_captures: Option<usize>,
) -> Result<(), Fail> {
    let (Some(qv), Some(kv), Some(vv)) = (node.input(0), node.input(1), node.input(2)) else {
        return unsupported("missing q, k or v");
    };
    let floaty = |t: DType| matches!(t, DType::F16 | DType::BF16 | DType::F32 | DType::F64);
    let (dt, v_dt) = (cx.dtype(qv), cx.dtype(vv));
    let cdt = softmax_precision.unwrap_or(if matches!(dt, DType::F16 | DType::BF16) {
        DType::F32
    } else {
        dt
    });
    if !floaty(dt) || !floaty(cx.dtype(kv)) || !floaty(v_dt) || !floaty(cdt) {
        return unsupported("flex attention computes in float types");
    }
    let (qs, ks, vs) = (cx.shape(qv)?, cx.shape(kv)?, cx.shape(vv)?);
    let (&[nb, hq, sq, e], &[_, hkv, skv, ek], &[_, vh, vsk, dv]) =
        (qs.as_slice(), ks.as_slice(), vs.as_slice())
    else {
        return unsupported("q, k and v must be 4-D");
    };
    if ek != e
        || vh != hkv
        || vsk != skv
        || hkv == 0
        || !hq.is_multiple_of(hkv)
        || ks[0] != nb
        || vs[0] != nb
    {
        return unsupported("flex attention shapes that do not agree");
    }
    let n_score = score_captures.unwrap_or(0);
    let n_regions = usize::from(score_captures.is_some()) + usize::from(prob_captures.is_some());
    if node.regions.len() != n_regions {
        return unsupported("modifier regions that do not match the captures");
    }
    let caps: Vec<ValueId> = match (3..node.inputs.len())
        .map(|i| node.input(i))
        .collect::<Option<Vec<_>>>()
    {
        Some(c) => c,
        None => return unsupported("an absent capture"),
    };
    let group = hq / hkv;
    let grid = vec![nb, hq, sq, skv];
    // The reference takes the square root of the scale in f32, then rounds it to the input type.
    let scale = scale.unwrap_or((1.0 / (e as f64).sqrt()) as f32);
    let ss = round_to(dt, f64::from(scale.sqrt()))?;

    // Scores: (q·√s)(k·√s)ᵀ, the sum rounded to the input type, then to the softmax type.
    let scores = cx.p.add_buffer(cdt, grid.clone(), BufKind::Temp);
    let mut kb = KernelBuilder::new(kernel_name(&node.op) + "_scores");
    let (qp, kp) = (
        kb.param(&cx.p, cx.buf(qv)?, Access::Read),
        kb.param(&cx.p, cx.buf(kv)?, Access::Read),
    );
    let kt = cx.dtype(kv);
    let sp = kb.param(&cx.p, scores, Access::Write);
    let (acc, x) = (kb.var(DType::F64), kb.var(DType::I64));
    let body = loop_nest(&mut kb, &grid, |_, v| {
        let [b, h, i, j] = [0, 1, 2, 3].map(|d| var(v[d]));
        let kh = Expr::bin(BinOp::Div, h.clone(), Expr::idx(group as i64));
        let pre = |p: ParamId, t: DType, idx: Expr| {
            rd(
                dt,
                Expr::bin(BinOp::Mul, f64_of(Expr::load(p, idx), t), f(ss)),
            )
        };
        let qe = pre(
            qp,
            dt,
            at4([b.clone(), h.clone(), i.clone(), var(x)], [hq, sq, e]),
        );
        let ke = pre(
            kp,
            kt,
            at4([b.clone(), kh, j.clone(), var(x)], [hkv, skv, e]),
        );
        vec![
            Stmt::Let {
                var: acc,
                value: f(0.0),
            },
            serial(
                x,
                e,
                vec![Stmt::Assign {
                    var: acc,
                    value: Expr::bin(BinOp::Add, var(acc), Expr::bin(BinOp::Mul, qe, ke)),
                }],
            ),
            Stmt::Store {
                param: sp,
                index: at4([b, h, i, j], [hq, sq, skv]),
                value: Expr::cast(cdt, rd(dt, var(acc))),
            },
        ]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    let scores = match score_captures {
        Some(_) => region(cx, &node.regions[0], scores, &caps[..n_score], cdt, &grid)?,
        None => scores,
    };

    // Softmax along each row, in the softmax type (no guard for fully masked rows: the
    // reference gives NaN there).
    let probs = cx.p.add_buffer(cdt, grid.clone(), BufKind::Temp);
    let s_dt = cx.p.buffer(scores).dtype;
    let mut kb = KernelBuilder::new(kernel_name(&node.op) + "_softmax");
    let sp = kb.param(&cx.p, scores, Access::Read);
    let pp = kb.param(&cx.p, probs, Access::ReadWrite);
    let (mx, sum, tv, j) = (
        kb.var(DType::F64),
        kb.var(DType::F64),
        kb.var(DType::F64),
        kb.var(DType::I64),
    );
    let body = loop_nest(&mut kb, &[nb, hq, sq], |_, v| {
        let row = Expr::mul_idx(
            Expr::add_idx(
                Expr::mul_idx(
                    Expr::add_idx(Expr::mul_idx(var(v[0]), hq as i64), var(v[1])),
                    sq as i64,
                ),
                var(v[2]),
            ),
            skv as i64,
        );
        let at = Expr::add_idx(row, var(j));
        let s_j = rd(cdt, f64_of(Expr::load(sp, at.clone()), s_dt));
        let p_j = f64_of(Expr::load(pp, at.clone()), cdt);
        let add = Expr::bin(BinOp::Add, var(sum), var(tv));
        vec![
            Stmt::Let {
                var: mx,
                value: f(f64::NEG_INFINITY),
            },
            serial(
                j,
                skv,
                vec![Stmt::Assign {
                    var: mx,
                    value: Expr::bin(BinOp::Max, var(mx), s_j.clone()),
                }],
            ),
            Stmt::Let {
                var: sum,
                value: f(0.0),
            },
            serial(
                j,
                skv,
                vec![
                    Stmt::Let {
                        var: tv,
                        value: rd(
                            cdt,
                            Expr::un(UnOp::Exp, rd(cdt, Expr::bin(BinOp::Sub, s_j, var(mx)))),
                        ),
                    },
                    Stmt::Store {
                        param: pp,
                        index: at.clone(),
                        value: Expr::cast(cdt, var(tv)),
                    },
                    // bf16 has no wide accumulator in numpy: every partial sum is rounded.
                    Stmt::Assign {
                        var: sum,
                        value: if cdt == DType::BF16 {
                            rd(cdt, add)
                        } else {
                            add
                        },
                    },
                ],
            ),
            Stmt::Assign {
                var: sum,
                value: rd(cdt, var(sum)),
            },
            serial(
                j,
                skv,
                vec![Stmt::Store {
                    param: pp,
                    index: at,
                    value: Expr::cast(cdt, Expr::bin(BinOp::Div, p_j, var(sum))),
                }],
            ),
        ]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    let probs = match prob_captures {
        Some(_) => {
            let r = usize::from(score_captures.is_some());
            region(cx, &node.regions[r], probs, &caps[n_score..], cdt, &grid)?
        }
        None => probs,
    };

    // The weighted sum of values (rounded to the softmax type), stored in v's type.
    let y = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let p_dt = cx.p.buffer(probs).dtype;
    let mut kb = KernelBuilder::new(kernel_name(&node.op) + "_values");
    let pp = kb.param(&cx.p, probs, Access::Read);
    let vp = kb.param(&cx.p, cx.buf(vv)?, Access::Read);
    let yp = kb.param(&cx.p, y, Access::Write);
    let (acc, j) = (kb.var(DType::F64), kb.var(DType::I64));
    let body = loop_nest(&mut kb, &[nb, hq, sq, dv], |_, v| {
        let [b, h, i, d] = [0, 1, 2, 3].map(|k| var(v[k]));
        let kh = Expr::bin(BinOp::Div, h.clone(), Expr::idx(group as i64));
        let p_j = rd(
            cdt,
            f64_of(
                Expr::load(
                    pp,
                    at4([b.clone(), h.clone(), i.clone(), var(j)], [hq, sq, skv]),
                ),
                p_dt,
            ),
        );
        let v_j = rd(
            cdt,
            f64_of(
                Expr::load(vp, at4([b.clone(), kh, var(j), d.clone()], [hkv, skv, dv])),
                v_dt,
            ),
        );
        vec![
            Stmt::Let {
                var: acc,
                value: f(0.0),
            },
            serial(
                j,
                skv,
                vec![Stmt::Assign {
                    var: acc,
                    value: Expr::bin(BinOp::Add, var(acc), Expr::bin(BinOp::Mul, p_j, v_j)),
                }],
            ),
            Stmt::Store {
                param: yp,
                index: at4([b, h, i, d], [hq, sq, dv]),
                value: Expr::cast(v_dt, rd(cdt, var(acc))),
            },
        ]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `v` rounded to `dt`, as an `f64`.
fn round_to(dt: DType, v: f64) -> Result<f64, Fail> {
    mlc_ir::Tensor::from_vec(&[], vec![v])
        .and_then(|t| t.cast(dt))
        .and_then(|t| t.to_f64_vec())
        .map(|v| v[0])
        .map_err(|e| Fail::Unsupported(e.to_string()))
}

/// Lowers a modifier region's body in place, its first input bound to `x` and the others to
/// the captures; returns the buffer of its first output, which must keep `x`'s shape.
fn region(
    cx: &mut Cx,
    body: &Graph,
    x: BufId,
    caps: &[ValueId],
    cdt: DType,
    grid: &[usize],
) -> Result<BufId, Fail> {
    if body.inputs.len() != 1 + caps.len() || body.outputs.is_empty() {
        return unsupported("a modifier region whose inputs do not match its captures");
    }
    let x_ty = body.ty(body.inputs[0].value);
    let out_ty = body.ty(body.outputs[0].value);
    if x_ty.dtype != cdt
        || x_ty.static_shape().as_deref() != Some(grid)
        || out_ty.static_shape().as_deref() != Some(grid)
        || !out_ty.dtype.is_float()
    {
        return unsupported("a modifier region of another type than the scores'");
    }
    let statics = body.values.iter().all(|t| t.static_shape().is_some());
    if !statics {
        return unsupported("a modifier region without static shapes");
    }
    let mut bound = vec![Some(x)];
    for &c in caps {
        bound.push(Some(cx.buf(c)?));
    }
    let mut sub = Cx {
        g: body,
        p: std::mem::take(&mut cx.p),
        bufs: vec![None; body.values.len()],
    };
    for (port, b) in body.inputs.iter().zip(bound) {
        sub.bufs[port.value.0 as usize] = b;
    }
    let result = (|| -> Result<BufId, Fail> {
        for n in &body.nodes {
            sub.node(n)?;
        }
        Ok(sub.buf(body.outputs[0].value)?)
    })();
    cx.p = std::mem::take(&mut sub.p);
    result
}
