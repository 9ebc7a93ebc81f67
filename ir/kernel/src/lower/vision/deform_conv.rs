//! `vision.deform_conv`: deformable convolution as two kernels.
//!
//! The first samples the input once per (batch, input channel, kernel tap, output position)
//! at the tap's displaced position, multilinearly with zeros outside, times the mask: the
//! interpreter's `v`, kept in an `f64` buffer. The second contracts those samples with the
//! weights per output element, adding over the group's input channels and then the taps as
//! the interpreter does (skipping zero samples, as it does), and adds the bias last.

use super::{
    Cx, Fail, KernelBuilder, add, add_if, and, clamp_idx, cmp, f64_, flat, float_ok, idx, in_range,
    kernel_name, let_, mul, par_nest, round_to, sub, to_f64, unravel, unsupported,
};
use crate::kernel::*;
use mlc_ir::ops::VisionOp;
use mlc_ir::ops::vision::conv_out_len;
use mlc_ir::{DType, Node};

pub(super) fn deform_conv(cx: &mut Cx, node: &Node, op: &VisionOp) -> Result<(), Fail> {
    let VisionOp::DeformConv {
        strides,
        dilations,
        pads,
        group,
        offset_group,
    } = op
    else {
        return unsupported("not deform_conv");
    };
    let (Some(x), Some(wv), Some(ov)) = (node.input(0), node.input(1), node.input(2)) else {
        return unsupported("missing input");
    };
    let (bias, mask) = (node.input(3), node.input(4));
    let (xs, ws, os) = (cx.shape(x)?, cx.shape(wv)?, cx.shape(ov)?);
    let r = xs.len();
    let nd = r.saturating_sub(2);
    let bad = || {
        unsupported(format!(
            "deform_conv input {xs:?}, weight {ws:?} and offset {os:?} do not fit"
        ))
    };
    if r < 3 || ws.len() != r || os.len() != r || os[0] != xs[0] {
        return bad();
    }
    let (batch, ic, oc) = (xs[0], xs[1], ws[0]);
    let (g, og) = (*group, *offset_group);
    if g == 0 || og == 0 || ic != ws[1] * g || oc % g != 0 || ic % og != 0 {
        return bad();
    }
    let kdims = ws[2..].to_vec();
    let kn: usize = kdims.iter().product();
    if os[1] != og * kn * nd || strides.len() != nd || dilations.len() != nd || pads.len() != 2 * nd
    {
        return bad();
    }
    let odims = os[2..].to_vec();
    for i in 0..nd {
        let pad = pads[i] + pads[nd + i];
        if conv_out_len(xs[i + 2], kdims[i], strides[i], dilations[i], pad) != Some(odims[i]) {
            return bad();
        }
    }
    let on: usize = odims.iter().product();
    if let Some(m) = mask {
        let ms = cx.shape(m)?;
        if ms.len() != r || ms[0] != batch || ms[1] != og * kn || ms[2..] != odims[..] {
            return bad();
        }
    }
    if let Some(b) = bias
        && cx.shape(b)?.iter().product::<usize>() != oc
    {
        return bad();
    }
    let ty = cx.dtype(x);
    let inputs = [Some(x), Some(wv), Some(ov), bias, mask];
    if inputs.iter().flatten().any(|&v| !float_ok(cx.dtype(v))) {
        return unsupported("deform_conv of non-float tensors");
    }
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    if batch * oc * on == 0 {
        return Ok(());
    }
    let idims = xs[2..].to_vec();
    let iplane: usize = idims.iter().product();
    let (icg, ocg, ico) = (ic / g, oc / g, ic / og);
    // The samples `v[b, ci, ki, oi]`.
    let vb =
        cx.p.add_buffer(DType::F64, vec![batch, ic, kn, on], BufKind::Temp);
    if ic * kn > 0 {
        let mut kb = KernelBuilder::new(format!("{}_sample", kernel_name(&node.op)));
        let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
        let op_ = kb.param(&cx.p, cx.buf(ov)?, Access::Read);
        let mp = cx.opt_param(&mut kb, mask, Access::Read)?;
        let vp = kb.param(&cx.p, vb, Access::Write);
        let shape = [batch, ic, kn, on];
        let body = par_nest(&mut kb, &shape, |kb, v| {
            let (b, ci, ki, oi) = (
                Expr::var(v[0]),
                Expr::var(v[1]),
                Expr::var(v[2]),
                Expr::var(v[3]),
            );
            let mut s = Vec::new();
            let o = unravel(oi.clone(), &odims);
            let k = unravel(ki.clone(), &kdims);
            // tap = (ci / ico)·kn + ki; row = b·og·kn + tap.
            let tap = Expr::add_idx(
                Expr::mul_idx(
                    Expr::bin(BinOp::Div, ci.clone(), idx(ico as i64)),
                    kn as i64,
                ),
                ki,
            );
            let row = let_(
                kb,
                &mut s,
                DType::I64,
                Expr::add_idx(Expr::mul_idx(b.clone(), (og * kn) as i64), tap),
            );
            let mut pos = Vec::with_capacity(nd);
            for d in 0..nd {
                let base = Expr::bin(
                    BinOp::Sub,
                    Expr::add_idx(
                        Expr::mul_idx(o[d].clone(), strides[d] as i64),
                        Expr::mul_idx(k[d].clone(), dilations[d] as i64),
                    ),
                    idx(pads[d] as i64),
                );
                let at = Expr::add_idx(
                    Expr::mul_idx(
                        Expr::add_idx(Expr::mul_idx(row.clone(), nd as i64), idx(d as i64)),
                        on as i64,
                    ),
                    oi.clone(),
                );
                let p = add(
                    Expr::cast(DType::F64, base),
                    to_f64(kb, Expr::load(op_, at)),
                );
                let p = let_(kb, &mut s, DType::F64, p);
                let lo = let_(kb, &mut s, DType::F64, Expr::un(UnOp::Floor, p.clone()));
                let frac = let_(kb, &mut s, DType::F64, sub(p, lo.clone()));
                let lo = let_(kb, &mut s, DType::I64, Expr::cast(DType::I64, lo));
                pos.push((lo, frac));
            }
            let plane = Expr::mul_idx(
                Expr::add_idx(Expr::mul_idx(b, ic as i64), ci),
                iplane as i64,
            );
            let total = kb.var(DType::F64);
            s.push(Stmt::Let {
                var: total,
                value: f64_(0.0),
            });
            for bits in 0..1usize << nd {
                let mut weight = f64_(1.0);
                let mut inside: Option<Expr> = None;
                let mut corner = Vec::with_capacity(nd);
                for (d, (lo, frac)) in pos.iter().enumerate() {
                    let (c, wd) = if bits >> d & 1 == 1 {
                        (add(lo.clone(), idx(1)), frac.clone())
                    } else {
                        (lo.clone(), sub(f64_(1.0), frac.clone()))
                    };
                    weight = mul(weight, wd);
                    let c = let_(kb, &mut s, DType::I64, c);
                    let here = in_range(c.clone(), idims[d] as i64);
                    inside = Some(match inside {
                        None => here,
                        Some(prev) => and(prev, here),
                    });
                    corner.push(clamp_idx(c, 0, idims[d] as i64 - 1));
                }
                let weight = let_(kb, &mut s, DType::F64, weight);
                let inside = inside.unwrap_or(Expr::Lit(Lit::Bool(true)));
                let xval = to_f64(
                    kb,
                    Expr::load(xp, Expr::add_idx(plane.clone(), flat(&idims, &corner))),
                );
                let value = Expr::select(inside, xval, f64_(0.0));
                s.push(add_if(
                    total,
                    cmp(BinOp::Ne, weight.clone(), f64_(0.0)),
                    mul(weight, value),
                ));
            }
            let m = match mp {
                Some(mp) => {
                    let at = Expr::add_idx(Expr::mul_idx(row, on as i64), oi);
                    to_f64(kb, Expr::load(mp, at))
                }
                None => f64_(1.0),
            };
            s.push(Stmt::Store {
                param: vp,
                index: flat(&shape, &v.iter().map(|&x| Expr::var(x)).collect::<Vec<_>>()),
                value: mul(m, Expr::var(total)),
            });
            s
        });
        kb.k.body = body;
        cx.launch(kb, node);
    }
    // out[b, m, oi] = Σ_{ci in m's group} Σ_ki v[b, ci, ki, oi] · w[m, ci % icg, ki] (+ bias[m]).
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let vp = kb.param(&cx.p, vb, Access::Read);
    let wp = kb.param(&cx.p, cx.buf(wv)?, Access::Read);
    let bp = cx.opt_param(&mut kb, bias, Access::Read)?;
    let outp = kb.param(&cx.p, out, Access::Write);
    let shape = [batch, oc, on];
    let body = par_nest(&mut kb, &shape, |kb, v| {
        let (b, m, oi) = (Expr::var(v[0]), Expr::var(v[1]), Expr::var(v[2]));
        let mut s = Vec::new();
        let acc = kb.var(DType::F64);
        s.push(Stmt::Let {
            var: acc,
            value: f64_(0.0),
        });
        let grp = Expr::bin(BinOp::Div, m.clone(), idx(ocg as i64));
        let (cj, kj) = (kb.var(DType::I64), kb.var(DType::I64));
        let ci = Expr::add_idx(Expr::mul_idx(grp, icg as i64), Expr::var(cj));
        let vat = Expr::add_idx(
            Expr::mul_idx(
                Expr::add_idx(
                    Expr::mul_idx(
                        Expr::add_idx(Expr::mul_idx(b.clone(), ic as i64), ci),
                        kn as i64,
                    ),
                    Expr::var(kj),
                ),
                on as i64,
            ),
            oi.clone(),
        );
        let wat = Expr::add_idx(
            Expr::mul_idx(
                Expr::add_idx(Expr::mul_idx(m.clone(), icg as i64), Expr::var(cj)),
                kn as i64,
            ),
            Expr::var(kj),
        );
        let mut inner = Vec::new();
        let val = let_(kb, &mut inner, DType::F64, Expr::load(vp, vat));
        let wval = to_f64(kb, Expr::load(wp, wat));
        inner.push(add_if(
            acc,
            cmp(BinOp::Ne, val.clone(), f64_(0.0)),
            mul(val, wval),
        ));
        s.push(Stmt::For {
            var: cj,
            extent: idx(icg as i64),
            kind: LoopKind::Serial,
            body: vec![Stmt::For {
                var: kj,
                extent: idx(kn as i64),
                kind: LoopKind::Serial,
                body: inner,
            }],
        });
        let mut value = Expr::var(acc);
        if let Some(bp) = bp {
            value = add(value, to_f64(kb, Expr::load(bp, m.clone())));
        }
        s.push(Stmt::Store {
            param: outp,
            index: flat(&shape, &[b, m, oi]),
            value: round_to(ty, value),
        });
        s
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}
