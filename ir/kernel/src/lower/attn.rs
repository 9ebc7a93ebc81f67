//! Scaled dot-product attention (`attn.attention`) as direct loops.
//!
//! The keys and values are first materialized as 4-D `(batch, kv_heads, total_seq, dim)`
//! buffers (the `present_*` outputs when the node has them, else temporaries), with the past
//! cache prepended: after that every layout question is gone. Then one parallel loop over query
//! rows `(batch, head, i)` computes the row's scores, softmax and weighted sum of values,
//! keeping the row's scores in an `f64` scratch buffer.
//!
//! Arithmetic is in `f64` with an explicit rounding to the input type (or the softmax type)
//! after each step the interpreter rounds, so results match ONNX's reference step for step.

use super::{Cx, Fail, KernelBuilder, flat_index, kernel_name, loop_nest, strides, unsupported};
use crate::kernel::*;
use mlc_ir::ops::attn::{AttnOp, QkOutput};
use mlc_ir::{DType, Node, ValueId};

pub(super) fn lower(cx: &mut Cx, node: &Node, op: &AttnOp) -> Result<(), Fail> {
    match op {
        AttnOp::Attention { .. } => attention(cx, node, op),
        AttnOp::Rotary {
            interleaved,
            rotary_dim,
            num_heads,
        } => rotary(cx, node, *interleaved, *rotary_dim, *num_heads),
        AttnOp::LinearAttention {
            q_num_heads,
            kv_num_heads,
            scale,
            update_rule,
        } => super::linear_attn::lower(cx, node, *q_num_heads, *kv_num_heads, *scale, *update_rule),
        AttnOp::FlexAttention {
            scale,
            softmax_precision,
            score_captures,
            prob_captures,
        } => super::flex_attn::lower(
            cx,
            node,
            *scale,
            *softmax_precision,
            *score_captures,
            *prob_captures,
        ),
    }
}

/// `e` rounded to `ty` and widened back to `f64`.
pub(super) fn rd(ty: DType, e: Expr) -> Expr {
    if ty == DType::F64 {
        e
    } else {
        Expr::cast(DType::F64, Expr::cast(ty, e))
    }
}

/// `e` (of type `ty`) as `f64`.
pub(super) fn f64_of(e: Expr, ty: DType) -> Expr {
    if ty == DType::F64 {
        e
    } else {
        Expr::cast(DType::F64, e)
    }
}

fn f(v: f64) -> Expr {
    Expr::float(DType::F64, v)
}

/// A q/k/v operand: its buffer, its layout, and its head count and head size.
#[derive(Clone, Copy)]
struct Heads {
    v: ValueId,
    three_d: bool,
    heads: usize,
    seq: usize,
    dim: usize,
}

impl Heads {
    fn new(cx: &Cx, v: ValueId, heads: Option<usize>) -> Result<Heads, Fail> {
        let s = cx.shape(v)?;
        match (s.as_slice(), heads) {
            ([_, h, sq, d], _) => Ok(Heads {
                v,
                three_d: false,
                heads: *h,
                seq: *sq,
                dim: *d,
            }),
            ([_, sq, hidden], Some(n)) if n > 0 && hidden % n == 0 => Ok(Heads {
                v,
                three_d: true,
                heads: n,
                seq: *sq,
                dim: hidden / n,
            }),
            _ => unsupported("attention operands must be 4-D, or 3-D with a head count"),
        }
    }

    /// The flat index of `(b, h, s, e)`.
    fn at(&self, b: Expr, h: Expr, s: Expr, e: Expr) -> Expr {
        let (hn, sn, dn) = (self.heads as i64, self.seq as i64, self.dim as i64);
        let (outer, mid, st_mid) = if self.three_d {
            // (b, s, h, e)
            (Expr::add_idx(Expr::mul_idx(b, sn), s), h, dn)
        } else {
            (Expr::add_idx(Expr::mul_idx(b, hn), h), s, dn)
        };
        let mid_n = if self.three_d { hn } else { sn };
        Expr::add_idx(
            Expr::mul_idx(Expr::add_idx(Expr::mul_idx(outer, mid_n), mid), st_mid),
            e,
        )
    }
}

fn attention(cx: &mut Cx, node: &Node, op: &AttnOp) -> Result<(), Fail> {
    let AttnOp::Attention {
        q_num_heads,
        kv_num_heads,
        scale,
        is_causal,
        softcap,
        softmax_precision,
        qk_output,
        left_window,
        right_window,
    } = op
    else {
        return unsupported("not attention");
    };
    let (Some(qv), Some(kv), Some(vv)) = (node.input(0), node.input(1), node.input(2)) else {
        return unsupported("missing input");
    };
    let dt = cx.dtype(qv);
    let pdt = softmax_precision.unwrap_or(dt);
    let floaty = |t: DType| matches!(t, DType::F16 | DType::BF16 | DType::F32 | DType::F64);
    if !floaty(dt) || !floaty(pdt) {
        return unsupported("attention computes in float types");
    }
    let q = Heads::new(cx, qv, *q_num_heads)?;
    let k = Heads::new(cx, kv, *kv_num_heads)?;
    let v = Heads::new(cx, vv, *kv_num_heads)?;
    let nb = cx.shape(qv)?[0];
    let past = match (node.input(4), node.input(5)) {
        (Some(pk), Some(pv)) => Some((Heads::new(cx, pk, None)?, Heads::new(cx, pv, None)?)),
        (None, None) => None,
        _ => return unsupported("past_key and past_value go together"),
    };
    let past_len = past.map_or(0, |(p, _)| p.seq);
    let total = past_len + k.seq;
    let (hq, hkv) = (q.heads, k.heads);
    if hkv == 0 || hq % hkv != 0 || q.dim != k.dim || v.heads != hkv || v.seq != k.seq {
        return unsupported("attention shapes that do not agree");
    }
    let present_k = present(cx, node, 1, k, past.map(|p| p.0), nb, total, dt)?;
    let present_v = present(cx, node, 2, v, past.map(|p| p.1), nb, total, dt)?;

    let y = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let qk = match node.outputs.get(3) {
        Some(&o) => Some(cx.new_buffer(o, BufKind::Temp)?),
        None => None,
    };
    let (sq, skv, dk, dv) = (q.seq, total, q.dim, v.dim);
    let scratch =
        cx.p.add_buffer(DType::F64, vec![nb, hq, sq, skv.max(1)], BufKind::Temp);
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let qp = kb.param(&cx.p, cx.buf(qv)?, Access::Read);
    let kp = kb.param(&cx.p, present_k, Access::Read);
    let vp = kb.param(&cx.p, present_v, Access::Read);
    if let Some(m) = node.input(3)
        && cx.shape(m)?.len() > 4
    {
        return unsupported("attention mask of rank above 4");
    }
    let mask = match node.input(3) {
        Some(m) => Some((
            kb.param(&cx.p, cx.buf(m)?, Access::Read),
            cx.shape(m)?,
            cx.dtype(m),
        )),
        None => None,
    };
    let nonpad = match node.input(6) {
        Some(n) => Some((kb.param(&cx.p, cx.buf(n)?, Access::Read), cx.dtype(n))),
        None => None,
    };
    let sp = kb.param(&cx.p, scratch, Access::ReadWrite);
    let yp = kb.param(&cx.p, y, Access::Write);
    let qkp = qk.map(|b| kb.param(&cx.p, b, Access::Write));
    let group = hq / hkv;
    let scale = scale.map_or(1.0 / (dk as f64).sqrt(), f64::from);
    let sc = if dt == DType::F64 {
        scale.sqrt()
    } else {
        // The square root rounded to the input type, as the reference does.
        mlc_ir::Tensor::from_vec(&[], vec![scale.sqrt()])
            .and_then(|t| t.cast(dt))
            .and_then(|t| t.to_f64_vec())
            .map_err(|e| Fail::Unsupported(e.to_string()))?[0]
    };
    let kv4 = |h: usize| Heads {
        v: kv,
        three_d: false,
        heads: hkv,
        seq: total,
        dim: h,
    };
    let (k4, v4) = (kv4(dk), kv4(dv));
    let yh = Heads {
        v: qv,
        three_d: q.three_d,
        heads: hq,
        seq: sq,
        dim: dv,
    };
    let inf = f64::INFINITY;
    let body = loop_nest(&mut kb, &[nb, hq, sq], |kb, r| {
        let (b, h, i) = (Expr::var(r[0]), Expr::var(r[1]), Expr::var(r[2]));
        let kh = Expr::bin(BinOp::Div, h.clone(), Expr::idx(group as i64));
        let row = Expr::mul_idx(
            Expr::add_idx(
                Expr::mul_idx(
                    Expr::add_idx(Expr::mul_idx(b.clone(), hq as i64), h.clone()),
                    sq as i64,
                ),
                i.clone(),
            ),
            skv as i64,
        );
        let mut s = Vec::new();
        let (mx, masked_all) = (kb.var(DType::F64), kb.var(DType::Bool));
        s.push(Stmt::Let {
            var: mx,
            value: f(-inf),
        });
        s.push(Stmt::Let {
            var: masked_all,
            value: Expr::Lit(Lit::Bool(true)),
        });
        // Pass 1: scores, soft cap, bias; the softmax input goes to the scratch row.
        let j = kb.var(DType::I64);
        let (acc, e) = (kb.var(DType::F64), kb.var(DType::I64));
        let qe = rd(
            dt,
            Expr::bin(
                BinOp::Mul,
                f64_of(
                    Expr::load(qp, q.at(b.clone(), h.clone(), i.clone(), Expr::var(e))),
                    dt,
                ),
                f(sc),
            ),
        );
        let ke = rd(
            dt,
            Expr::bin(
                BinOp::Mul,
                f64_of(
                    Expr::load(kp, k4.at(b.clone(), kh.clone(), Expr::var(j), Expr::var(e))),
                    dt,
                ),
                f(sc),
            ),
        );
        let (raw, capped, bias, biased) = (
            kb.var(DType::F64),
            kb.var(DType::F64),
            kb.var(DType::F64),
            kb.var(DType::F64),
        );
        let mut p1 = vec![
            Stmt::Let {
                var: acc,
                value: f(0.0),
            },
            Stmt::For {
                var: e,
                extent: Expr::idx(dk as i64),
                kind: LoopKind::Serial,
                body: vec![Stmt::Assign {
                    var: acc,
                    value: Expr::bin(BinOp::Add, Expr::var(acc), Expr::bin(BinOp::Mul, qe, ke)),
                }],
            },
            Stmt::Let {
                var: raw,
                value: rd(dt, Expr::var(acc)),
            },
        ];
        let cap = match softcap {
            Some(c) if *c > 0.0 => {
                let c = f64::from(*c);
                let t = rd(
                    dt,
                    Expr::un(
                        UnOp::Tanh,
                        rd(dt, Expr::bin(BinOp::Div, Expr::var(raw), f(c))),
                    ),
                );
                rd(dt, Expr::bin(BinOp::Mul, t, f(c)))
            }
            _ => Expr::var(raw),
        };
        p1.push(Stmt::Let {
            var: capped,
            value: cap,
        });
        // The additive bias: mask, causality, window, padding.
        let mut bias_e = match &mask {
            Some(m) => mask_bias(m, [b.clone(), h.clone(), i.clone(), Expr::var(j)], skv),
            None => f(0.0),
        };
        let np_b = nonpad.map(|(p, t)| {
            let e = Expr::load(p, b.clone());
            if t == DType::I64 {
                e
            } else {
                Expr::cast(DType::I64, e)
            }
        });
        let offset = match (&past, &np_b) {
            (Some(_), _) => Expr::idx(past_len as i64),
            (None, Some(n)) => Expr::bin(BinOp::Sub, n.clone(), Expr::idx(sq as i64)),
            (None, None) => Expr::idx(0),
        };
        let diff = Expr::bin(
            BinOp::Sub,
            Expr::bin(BinOp::Add, i.clone(), offset),
            Expr::var(j),
        );
        let minus_inf = |cond: Expr, bias_e: Expr| {
            Expr::bin(BinOp::Add, bias_e, Expr::select(cond, f(-inf), f(0.0)))
        };
        if *is_causal {
            bias_e = minus_inf(Expr::bin(BinOp::Lt, diff.clone(), Expr::idx(0)), bias_e);
        }
        if let Some(l) = left_window {
            bias_e = minus_inf(
                Expr::bin(BinOp::Gt, diff.clone(), Expr::idx(*l as i64)),
                bias_e,
            );
        }
        if let Some(rw) = right_window {
            let neg = Expr::bin(BinOp::Sub, Expr::idx(0), diff.clone());
            bias_e = minus_inf(Expr::bin(BinOp::Gt, neg, Expr::idx(*rw as i64)), bias_e);
        }
        if let Some(n) = &np_b {
            bias_e = minus_inf(Expr::bin(BinOp::Ge, Expr::var(j), n.clone()), bias_e);
        }
        p1.push(Stmt::Let {
            var: bias,
            value: bias_e,
        });
        p1.push(Stmt::Let {
            var: biased,
            value: rd(
                dt,
                Expr::bin(BinOp::Add, Expr::var(capped), Expr::var(bias)),
            ),
        });
        let at_j = Expr::add_idx(row.clone(), Expr::var(j));
        let in_p = rd(pdt, Expr::var(biased));
        p1.push(Stmt::Store {
            param: sp,
            index: at_j.clone(),
            value: in_p.clone(),
        });
        p1.push(Stmt::Assign {
            var: mx,
            value: Expr::bin(BinOp::Max, Expr::var(mx), in_p),
        });
        p1.push(Stmt::Assign {
            var: masked_all,
            value: Expr::bin(
                BinOp::And,
                Expr::var(masked_all),
                Expr::bin(BinOp::Eq, Expr::var(bias), f(-inf)),
            ),
        });
        let exposed = match qk_output {
            QkOutput::Scores => Some(raw),
            QkOutput::Softcapped => Some(capped),
            QkOutput::Biased => Some(biased),
            QkOutput::Probs => None,
        };
        if let (Some(p), Some(x)) = (qkp, exposed) {
            p1.push(Stmt::Store {
                param: p,
                index: at_j.clone(),
                value: Expr::cast(dt, Expr::var(x)),
            });
        }
        s.push(Stmt::For {
            var: j,
            extent: Expr::idx(skv as i64),
            kind: LoopKind::Serial,
            body: p1,
        });
        // Pass 2: exponentials and their sum, in the softmax type.
        let (safe, sum, j2) = (kb.var(DType::F64), kb.var(DType::F64), kb.var(DType::I64));
        s.push(Stmt::Let {
            var: safe,
            value: Expr::select(
                Expr::bin(BinOp::Eq, Expr::var(mx), f(-inf)),
                f(0.0),
                Expr::var(mx),
            ),
        });
        s.push(Stmt::Let {
            var: sum,
            value: f(0.0),
        });
        let at2 = Expr::add_idx(row.clone(), Expr::var(j2));
        let t = rd(
            pdt,
            Expr::un(
                UnOp::Exp,
                rd(
                    pdt,
                    Expr::bin(BinOp::Sub, Expr::load(sp, at2.clone()), Expr::var(safe)),
                ),
            ),
        );
        let tv = kb.var(DType::F64);
        let add = Expr::bin(BinOp::Add, Expr::var(sum), Expr::var(tv));
        s.push(Stmt::For {
            var: j2,
            extent: Expr::idx(skv as i64),
            kind: LoopKind::Serial,
            body: vec![
                Stmt::Let { var: tv, value: t },
                Stmt::Store {
                    param: sp,
                    index: at2,
                    value: Expr::var(tv),
                },
                // bf16 has no wide accumulator in numpy: every partial sum is rounded.
                Stmt::Assign {
                    var: sum,
                    value: if pdt == DType::BF16 {
                        rd(pdt, add)
                    } else {
                        add
                    },
                },
            ],
        });
        s.push(Stmt::Assign {
            var: sum,
            value: rd(pdt, Expr::var(sum)),
        });
        s.push(Stmt::Assign {
            var: sum,
            value: Expr::select(
                Expr::bin(BinOp::Eq, Expr::var(sum), f(0.0)),
                f(1.0),
                Expr::var(sum),
            ),
        });
        // Pass 3: probabilities (zero for a fully masked row).
        let j3 = kb.var(DType::I64);
        let at3 = Expr::add_idx(row.clone(), Expr::var(j3));
        let p = rd(
            dt,
            Expr::select(
                Expr::var(masked_all),
                f(0.0),
                rd(
                    pdt,
                    Expr::bin(BinOp::Div, Expr::load(sp, at3.clone()), Expr::var(sum)),
                ),
            ),
        );
        let pv = kb.var(DType::F64);
        let mut p3 = vec![
            Stmt::Let { var: pv, value: p },
            Stmt::Store {
                param: sp,
                index: at3.clone(),
                value: Expr::var(pv),
            },
        ];
        if let (Some(qp_), QkOutput::Probs) = (qkp, qk_output) {
            p3.push(Stmt::Store {
                param: qp_,
                index: at3,
                value: Expr::cast(dt, Expr::var(pv)),
            });
        }
        s.push(Stmt::For {
            var: j3,
            extent: Expr::idx(skv as i64),
            kind: LoopKind::Serial,
            body: p3,
        });
        // Pass 4: the weighted sum of values.
        let (e4, j4, acc4) = (kb.var(DType::I64), kb.var(DType::I64), kb.var(DType::F64));
        let pj = Expr::load(sp, Expr::add_idx(row.clone(), Expr::var(j4)));
        let vj = f64_of(
            Expr::load(
                vp,
                v4.at(b.clone(), kh.clone(), Expr::var(j4), Expr::var(e4)),
            ),
            dt,
        );
        s.push(Stmt::For {
            var: e4,
            extent: Expr::idx(dv as i64),
            kind: LoopKind::Serial,
            body: vec![
                Stmt::Let {
                    var: acc4,
                    value: f(0.0),
                },
                Stmt::For {
                    var: j4,
                    extent: Expr::idx(skv as i64),
                    kind: LoopKind::Serial,
                    body: vec![Stmt::Assign {
                        var: acc4,
                        value: Expr::bin(
                            BinOp::Add,
                            Expr::var(acc4),
                            Expr::bin(BinOp::Mul, pj, vj),
                        ),
                    }],
                },
                Stmt::Store {
                    param: yp,
                    index: yh.at(b.clone(), h.clone(), i.clone(), Expr::var(e4)),
                    value: Expr::cast(dt, Expr::var(acc4)),
                },
            ],
        });
        s
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// The 4-D cache `(batch, kv_heads, total, dim)`: `past` (if any) then the new keys or values,
/// written to output `out` of the node when it has one, else to a temporary.
#[allow(clippy::too_many_arguments)]
fn present(
    cx: &mut Cx,
    node: &Node,
    out: usize,
    new: Heads,
    past: Option<Heads>,
    nb: usize,
    total: usize,
    dt: DType,
) -> Result<BufId, Fail> {
    let shape = vec![nb, new.heads, total, new.dim];
    if past.is_some_and(|p| p.heads != new.heads || p.dim != new.dim) {
        return unsupported("past cache shape differs from the new keys'");
    }
    let buf = match node.outputs.get(out) {
        Some(&o) => cx.new_buffer(o, BufKind::Temp)?,
        None => cx.p.add_buffer(dt, shape.clone(), BufKind::Temp),
    };
    let mut kb = KernelBuilder::new("attn_present");
    let np = kb.param(&cx.p, cx.buf(new.v)?, Access::Read);
    let pp = match past {
        Some(p) => Some((kb.param(&cx.p, cx.buf(p.v)?, Access::Read), p)),
        None => None,
    };
    let op_ = kb.param(&cx.p, buf, Access::Write);
    let st = strides(&shape);
    let body = loop_nest(&mut kb, &shape, |_, v| {
        let (b, h, j, e) = (
            Expr::var(v[0]),
            Expr::var(v[1]),
            Expr::var(v[2]),
            Expr::var(v[3]),
        );
        let value = match pp {
            None => Expr::load(np, new.at(b, h, j, e)),
            Some((p, ph)) => {
                let pl = ph.seq as i64;
                // Both indices are clamped, so neither load leaves its buffer.
                let from_past = Expr::load(
                    p,
                    ph.at(
                        b.clone(),
                        h.clone(),
                        Expr::bin(BinOp::Min, j.clone(), Expr::idx((pl - 1).max(0))),
                        e.clone(),
                    ),
                );
                let from_new = Expr::load(
                    np,
                    new.at(
                        b,
                        h,
                        Expr::bin(
                            BinOp::Max,
                            Expr::bin(BinOp::Sub, j.clone(), Expr::idx(pl)),
                            Expr::idx(0),
                        ),
                        e,
                    ),
                );
                if pl == 0 {
                    from_new
                } else {
                    Expr::select(Expr::bin(BinOp::Lt, j, Expr::idx(pl)), from_past, from_new)
                }
            }
        };
        vec![Stmt::Store {
            param: op_,
            index: flat_index(&st, v),
            value,
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(buf)
}

/// Rotary position embedding: each pair `(x1, x2)` of a head's first `rot` features (halves,
/// or neighbors when `interleaved`) is rotated by the cache's `(cos, sin)` for its position;
/// the other features are copied. One output element per loop iteration, so the loop is
/// parallel; the partner element is loaded again rather than shared.
fn rotary(
    cx: &mut Cx,
    node: &Node,
    interleaved: bool,
    rotary_dim: Option<usize>,
    num_heads: Option<usize>,
) -> Result<(), Fail> {
    let (Some(xv), Some(cv), Some(sv)) = (node.input(0), node.input(1), node.input(2)) else {
        return unsupported("missing input");
    };
    let dt = cx.dtype(xv);
    if !matches!(dt, DType::F16 | DType::BF16 | DType::F32 | DType::F64) {
        return unsupported("rotary embedding of a non-float input");
    }
    let x = Heads::new(cx, xv, num_heads)?;
    let nb = cx.shape(xv)?[0];
    let (nh, ns, d) = (x.heads, x.seq, x.dim);
    let rot = rotary_dim.filter(|&r| r > 0).unwrap_or(d);
    if rot > d || !rot.is_multiple_of(2) {
        return unsupported("rotary dim that does not fit the head");
    }
    let half = rot / 2;
    let cs = cx.shape(cv)?;
    let pos = node.input(3);
    let rows = match (pos, cs.as_slice()) {
        (Some(_), [r, h]) if *h == half => *r,
        (None, [b, s_, h]) if (*b, *s_, *h) == (nb, ns, half) => 0,
        _ => return unsupported("cos/sin caches that do not match the input"),
    };
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let (ct, st) = (cx.dtype(cv), cx.dtype(sv));
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(xv)?, Access::Read);
    let cp = kb.param(&cx.p, cx.buf(cv)?, Access::Read);
    let sp = kb.param(&cx.p, cx.buf(sv)?, Access::Read);
    let pp = match pos {
        Some(p) => Some((kb.param(&cx.p, cx.buf(p)?, Access::Read), cx.dtype(p))),
        None => None,
    };
    let op_ = kb.param(&cx.p, out, Access::Write);
    let body = loop_nest(&mut kb, &[nb, nh, ns, d], |_, v| {
        let (b, h, sq, e) = (
            Expr::var(v[0]),
            Expr::var(v[1]),
            Expr::var(v[2]),
            Expr::var(v[3]),
        );
        let at = |e: Expr| x.at(b.clone(), h.clone(), sq.clone(), e);
        let xe = |e: Expr| f64_of(Expr::load(xp, at(e)), dt);
        // This element's pair index, whether it is the pair's first, and its partner.
        let (i, first, partner) = if interleaved {
            let first = Expr::bin(
                BinOp::Eq,
                Expr::bin(BinOp::Rem, e.clone(), Expr::idx(2)),
                Expr::idx(0),
            );
            let partner = Expr::select(
                first.clone(),
                Expr::add_idx(e.clone(), Expr::idx(1)),
                Expr::add_idx(e.clone(), Expr::idx(-1)),
            );
            (
                Expr::bin(BinOp::Div, e.clone(), Expr::idx(2)),
                first,
                partner,
            )
        } else {
            let first = Expr::bin(BinOp::Lt, e.clone(), Expr::idx(half as i64));
            let i = Expr::select(
                first.clone(),
                e.clone(),
                Expr::add_idx(e.clone(), Expr::idx(-(half as i64))),
            );
            let partner = Expr::select(
                first.clone(),
                Expr::add_idx(e.clone(), Expr::idx(half as i64)),
                Expr::add_idx(e.clone(), Expr::idx(-(half as i64))),
            );
            (i, first, partner)
        };
        let in_rot = Expr::bin(BinOp::Lt, e.clone(), Expr::idx(rot as i64));
        // Clamped, so the copy lanes (e >= rot) never index past the cache.
        let i = Expr::bin(BinOp::Min, i, Expr::idx(half.max(1) as i64 - 1));
        let partner = Expr::bin(BinOp::Min, partner, Expr::idx(d as i64 - 1));
        let row = match pp {
            Some((p, t)) => {
                let id = Expr::load(
                    p,
                    Expr::add_idx(Expr::mul_idx(b.clone(), ns as i64), sq.clone()),
                );
                let id = if t == DType::I64 {
                    id
                } else {
                    Expr::cast(DType::I64, id)
                };
                Expr::bin(
                    BinOp::Max,
                    Expr::bin(BinOp::Min, id, Expr::idx(rows as i64 - 1)),
                    Expr::idx(0),
                )
            }
            None => Expr::add_idx(Expr::mul_idx(b.clone(), ns as i64), sq.clone()),
        };
        let ci = Expr::add_idx(Expr::mul_idx(row, half as i64), i);
        let (c, s) = (
            f64_of(Expr::load(cp, ci.clone()), ct),
            f64_of(Expr::load(sp, ci), st),
        );
        let (me, other) = (xe(e.clone()), xe(partner));
        let mul = |a: Expr, b: Expr| rd(dt, Expr::bin(BinOp::Mul, a, b));
        // First of a pair: c*x1 - s*x2; second: s*x1 + c*x2 (x1 is then the partner).
        let y = Expr::select(
            first,
            rd(
                dt,
                Expr::bin(
                    BinOp::Sub,
                    mul(c.clone(), me.clone()),
                    mul(s.clone(), other.clone()),
                ),
            ),
            rd(dt, Expr::bin(BinOp::Add, mul(s, other), mul(c, me.clone()))),
        );
        let y = Expr::select(in_rot, y, me);
        vec![Stmt::Store {
            param: op_,
            index: at(e),
            value: Expr::cast(dt, y),
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// The mask's additive bias for element `(b, h, i, j)` of the scores: the mask broadcast from
/// the right (a bool mask is 0 where true, -∞ where false), -∞ for keys past a mask whose last
/// dim is shorter than the keys.
fn mask_bias((mp, ms, mt): &(ParamId, Vec<usize>, DType), vars: [Expr; 4], skv: usize) -> Expr {
    let inf = f64::INFINITY;
    let ml = ms.last().copied().unwrap_or(1);
    let mst = strides(ms);
    let off = 4 - ms.len().min(4);
    let mut idx = Expr::idx(0);
    for (d, &n) in ms.iter().enumerate() {
        let var = vars[off + d].clone();
        let term = if d + 1 == ms.len() {
            // Clamped: keys past a short mask are masked below, never loaded.
            Expr::bin(BinOp::Min, var, Expr::idx(ml as i64 - 1))
        } else if n == 1 {
            continue;
        } else {
            var
        };
        idx = Expr::add_idx(idx, Expr::mul_idx(term, mst[d]));
    }
    let m = Expr::load(*mp, idx);
    let mv = if *mt == DType::Bool {
        Expr::select(m, f(0.0), f(-inf))
    } else {
        f64_of(m, *mt)
    };
    if !ms.is_empty() && ml < skv {
        Expr::select(
            Expr::bin(BinOp::Lt, vars[3].clone(), Expr::idx(ml as i64)),
            mv,
            f(-inf),
        )
    } else {
        mv
    }
}
