//! `vision.roi_align` and `vision.max_roi_pool`: every output bin pools samples of its RoI
//! (roi_align: a grid of bilinear samples; max_roi_pool: an integer window).
//!
//! The RoI's corners, bin sizes and sampling grid come from run-time boxes, so each output
//! element computes them and loops over its samples with data-dependent extents, in the
//! interpreter's order and `f64` arithmetic.

use super::{
    Cx, Fail, KernelBuilder, add, clamp_idx, cmp, div, f64_, float_ok, fmax, idx, kernel_name,
    let_, mul, par_nest, round_to, serial, sub, to_f64, to_i64, unsupported,
};
use crate::kernel::*;
use mlc_ir::ops::VisionOp;
use mlc_ir::ops::vision::RoiPoolMode;
use mlc_ir::{DType, Node};

pub(super) fn roi_align(cx: &mut Cx, node: &Node, op: &VisionOp) -> Result<(), Fail> {
    let VisionOp::RoiAlign {
        mode,
        output_height: oh,
        output_width: ow,
        sampling_ratio,
        spatial_scale,
        half_pixel,
    } = op
    else {
        return unsupported("not roi_align");
    };
    let (oh, ow, ratio, half_pixel) = (*oh, *ow, *sampling_ratio, *half_pixel);
    let scale = f64::from(*spatial_scale);
    let (Some(x), Some(rois), Some(batch)) = (node.input(0), node.input(1), node.input(2)) else {
        return unsupported("missing input");
    };
    let (xs, rs, bs) = (cx.shape(x)?, cx.shape(rois)?, cx.shape(batch)?);
    if xs.len() != 4 || rs.len() != 2 || rs[1] != 4 || bs.len() != 1 || bs[0] != rs[0] {
        return unsupported(format!(
            "roi_align input {xs:?}, rois {rs:?} and batch indices {bs:?} do not fit"
        ));
    }
    let (xty, rty, bty) = (cx.dtype(x), cx.dtype(rois), cx.dtype(batch));
    if !float_ok(xty) || !float_ok(rty) || !matches!(bty, DType::I64 | DType::I32) {
        return unsupported("roi_align types");
    }
    let (nb, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    if rs[0] * c * oh * ow == 0 {
        return Ok(());
    }
    if nb * h * w == 0 {
        return unsupported("roi_align of an empty image");
    }
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let rp = kb.param(&cx.p, cx.buf(rois)?, Access::Read);
    let bp = kb.param(&cx.p, cx.buf(batch)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let shape = [rs[0], c, oh, ow];
    let body = par_nest(&mut kb, &shape, |kb, v| {
        let (r, ch, ph, pw) = (
            Expr::var(v[0]),
            Expr::var(v[1]),
            Expr::var(v[2]),
            Expr::var(v[3]),
        );
        let mut s = Vec::new();
        let bi = to_i64(kb, Expr::load(bp, r.clone()));
        let bi = let_(kb, &mut s, DType::I64, clamp_idx(bi, 0, nb as i64 - 1));
        let offset = if half_pixel { 0.5 } else { 0.0 };
        let corner = |kb: &mut KernelBuilder, s: &mut Vec<Stmt>, i: i64| {
            let at = Expr::add_idx(Expr::mul_idx(r.clone(), 4), idx(i));
            let e = sub(
                mul(to_f64(kb, Expr::load(rp, at)), f64_(scale)),
                f64_(offset),
            );
            let_(kb, s, DType::F64, e)
        };
        let (x0, y0) = (corner(kb, &mut s, 0), corner(kb, &mut s, 1));
        let (x1, y1) = (corner(kb, &mut s, 2), corner(kb, &mut s, 3));
        let (mut roi_w, mut roi_h) = (sub(x1, x0.clone()), sub(y1, y0.clone()));
        if !half_pixel {
            // Malformed RoIs are forced to 1x1.
            roi_w = fmax(roi_w, f64_(1.0));
            roi_h = fmax(roi_h, f64_(1.0));
        }
        let roi_w = let_(kb, &mut s, DType::F64, roi_w);
        let roi_h = let_(kb, &mut s, DType::F64, roi_h);
        let bin_h = let_(kb, &mut s, DType::F64, div(roi_h, f64_(oh as f64)));
        let bin_w = let_(kb, &mut s, DType::F64, div(roi_w, f64_(ow as f64)));
        let grid = |bin: &Expr| {
            if ratio > 0 {
                idx(ratio as i64)
            } else {
                Expr::cast(DType::I64, Expr::un(UnOp::Ceil, bin.clone()))
            }
        };
        let gh = let_(kb, &mut s, DType::I64, grid(&bin_h));
        let gw = let_(kb, &mut s, DType::I64, grid(&bin_w));
        let count = Expr::bin(BinOp::Max, mul(gh.clone(), gw.clone()), idx(1));
        let count = let_(kb, &mut s, DType::F64, Expr::cast(DType::F64, count));
        let gh = let_(kb, &mut s, DType::I64, Expr::bin(BinOp::Max, gh, idx(0)));
        let gw = let_(kb, &mut s, DType::I64, Expr::bin(BinOp::Max, gw, idx(0)));
        let (ghf, gwf) = (
            Expr::cast(DType::F64, gh.clone()),
            Expr::cast(DType::F64, gw.clone()),
        );
        let plane = Expr::mul_idx(
            Expr::add_idx(Expr::mul_idx(bi, c as i64), ch.clone()),
            (h * w) as i64,
        );
        let acc = kb.var(DType::F64);
        let start = match mode {
            RoiPoolMode::Avg => 0.0,
            RoiPoolMode::Max => f64::NEG_INFINITY,
        };
        s.push(Stmt::Let {
            var: acc,
            value: f64_(start),
        });
        let mode = *mode;
        let samples = serial(kb, gh.clone(), |kb, iy| {
            // y0 + ph·bin_h + (iy + 0.5)·bin_h / gh
            let yy = add(
                add(y0.clone(), mul(to_f64(kb, ph.clone()), bin_h.clone())),
                div(mul(add(to_f64(kb, iy), f64_(0.5)), bin_h.clone()), ghf),
            );
            let mut s = Vec::new();
            let yy = let_(kb, &mut s, DType::F64, yy);
            s.push(serial(kb, gw.clone(), |kb, ix| {
                let xx = add(
                    add(x0.clone(), mul(to_f64(kb, pw.clone()), bin_w.clone())),
                    div(mul(add(to_f64(kb, ix), f64_(0.5)), bin_w.clone()), gwf),
                );
                let mut s = Vec::new();
                let xx = let_(kb, &mut s, DType::F64, xx);
                let taps = bilinear_taps(kb, &mut s, yy, xx, h, w);
                let vals: Vec<Expr> = taps
                    .into_iter()
                    .map(|(i, wt)| {
                        let x = to_f64(kb, Expr::load(xp, Expr::add_idx(plane.clone(), i)));
                        mul(wt, x)
                    })
                    .collect();
                let value = match mode {
                    RoiPoolMode::Avg => {
                        let sum = vals.into_iter().reduce(add).unwrap_or(f64_(0.0));
                        add(Expr::var(acc), sum)
                    }
                    RoiPoolMode::Max => {
                        let m = vals.into_iter().fold(f64_(f64::NEG_INFINITY), fmax);
                        fmax(Expr::var(acc), m)
                    }
                };
                s.push(Stmt::Assign { var: acc, value });
                s
            }));
            s
        });
        s.push(samples);
        let value = match mode {
            RoiPoolMode::Avg => div(Expr::var(acc), count),
            // No sample at all pools to 0.
            RoiPoolMode::Max => Expr::select(and_gt0(gh, gw), Expr::var(acc), f64_(0.0)),
        };
        s.push(Stmt::Store {
            param: op_,
            index: super::flat(&shape, &v.iter().map(|&x| Expr::var(x)).collect::<Vec<_>>()),
            value: round_to(xty, value),
        });
        s
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

fn and_gt0(a: Expr, b: Expr) -> Expr {
    super::and(cmp(BinOp::Gt, a, idx(0)), cmp(BinOp::Gt, b, idx(0)))
}

/// The interpreter's `bilinear_taps` at `(y, x)` of an `h x w` plane: four (flat offset,
/// weight) pairs, all `(0, 0.0)` outside `[-1, h] x [-1, w]`.
fn bilinear_taps(
    kb: &mut KernelBuilder,
    s: &mut Vec<Stmt>,
    y: Expr,
    x: Expr,
    h: usize,
    w: usize,
) -> [(Expr, Expr); 4] {
    let outside = [
        cmp(BinOp::Lt, y.clone(), f64_(-1.0)),
        cmp(BinOp::Gt, y.clone(), f64_(h as f64)),
        cmp(BinOp::Lt, x.clone(), f64_(-1.0)),
        cmp(BinOp::Gt, x.clone(), f64_(w as f64)),
    ]
    .into_iter()
    .reduce(|a, b| Expr::bin(BinOp::Or, a, b))
    .unwrap_or(Expr::Lit(Lit::Bool(false)));
    let outside = let_(kb, s, DType::Bool, outside);
    // Per axis: (low index, high index, fraction past the low one).
    let axis = |kb: &mut KernelBuilder, s: &mut Vec<Stmt>, v: Expr, n: usize| {
        let v = let_(kb, s, DType::F64, fmax(v, f64_(0.0)));
        let lo = let_(kb, s, DType::I64, Expr::cast(DType::I64, v.clone()));
        let last = n as i64 - 1;
        let big = let_(kb, s, DType::Bool, cmp(BinOp::Ge, lo.clone(), idx(last)));
        let hi = Expr::select(big.clone(), idx(last), add(lo.clone(), idx(1)));
        let lo = Expr::select(big.clone(), idx(last), lo);
        let lo = let_(kb, s, DType::I64, lo);
        let hi = let_(kb, s, DType::I64, hi);
        let v = Expr::select(big, f64_(last as f64), v);
        let l = sub(v, Expr::cast(DType::F64, lo.clone()));
        let l = let_(kb, s, DType::F64, l);
        (lo, hi, l)
    };
    let (y_lo, y_hi, ly) = axis(kb, s, y, h);
    let (x_lo, x_hi, lx) = axis(kb, s, x, w);
    let hy = sub(f64_(1.0), ly.clone());
    let hx = sub(f64_(1.0), lx.clone());
    let at = |yy: &Expr, xx: &Expr| Expr::add_idx(Expr::mul_idx(yy.clone(), w as i64), xx.clone());
    let tap = |i: Expr, wt: Expr| {
        (
            Expr::select(outside.clone(), idx(0), i),
            Expr::select(outside.clone(), f64_(0.0), wt),
        )
    };
    [
        tap(at(&y_lo, &x_lo), mul(hy.clone(), hx.clone())),
        tap(at(&y_lo, &x_hi), mul(hy, lx.clone())),
        tap(at(&y_hi, &x_lo), mul(ly.clone(), hx)),
        tap(at(&y_hi, &x_hi), mul(ly, lx)),
    ]
}

/// `vision.max_roi_pool`: each output bin is the maximum over its integer window of the RoI
/// (0 for an empty window), the RoI rounded half away from zero as the interpreter does.
pub(super) fn max_roi_pool(cx: &mut Cx, node: &Node, op: &VisionOp) -> Result<(), Fail> {
    let VisionOp::MaxRoiPool {
        pooled_shape: [ph_n, pw_n],
        spatial_scale,
    } = op
    else {
        return unsupported("not max_roi_pool");
    };
    let (ph_n, pw_n) = (*ph_n, *pw_n);
    let scale = f64::from(*spatial_scale);
    let (Some(x), Some(rois)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let (xs, rs) = (cx.shape(x)?, cx.shape(rois)?);
    if xs.len() != 4 || rs.len() != 2 || rs[1] != 5 {
        return unsupported(format!(
            "max_roi_pool input {xs:?} and rois {rs:?} do not fit"
        ));
    }
    let (xty, rty) = (cx.dtype(x), cx.dtype(rois));
    if !float_ok(xty) || !float_ok(rty) {
        return unsupported("max_roi_pool types");
    }
    let (nb, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    if rs[0] * c * ph_n * pw_n == 0 {
        return Ok(());
    }
    if nb == 0 {
        return unsupported("max_roi_pool of an empty batch");
    }
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let rp = kb.param(&cx.p, cx.buf(rois)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let shape = [rs[0], c, ph_n, pw_n];
    let body = par_nest(&mut kb, &shape, |kb, v| {
        let (r, ch, ph, pw) = (
            Expr::var(v[0]),
            Expr::var(v[1]),
            Expr::var(v[2]),
            Expr::var(v[3]),
        );
        let mut s = Vec::new();
        let field = |kb: &KernelBuilder, i: i64| {
            to_f64(
                kb,
                Expr::load(rp, Expr::add_idx(Expr::mul_idx(r.clone(), 5), idx(i))),
            )
        };
        let bi = Expr::cast(DType::I64, field(kb, 0));
        let bi = let_(kb, &mut s, DType::I64, clamp_idx(bi, 0, nb as i64 - 1));
        let mut corner = Vec::new();
        for i in 1..5 {
            let e = round_away(kb, &mut s, mul(field(kb, i), f64_(scale)));
            corner.push(let_(kb, &mut s, DType::I64, Expr::cast(DType::I64, e)));
        }
        let (x0, y0, x1, y1) = (&corner[0], &corner[1], &corner[2], &corner[3]);
        let extent = |a: &Expr, b: &Expr| {
            let d = add(sub(b.clone(), a.clone()), idx(1));
            Expr::cast(DType::F64, Expr::bin(BinOp::Max, d, idx(1)))
        };
        let bin_h = div(extent(y0, y1), f64_(ph_n as f64));
        let bin_h = let_(kb, &mut s, DType::F64, bin_h);
        let bin_w = div(extent(x0, x1), f64_(pw_n as f64));
        let bin_w = let_(kb, &mut s, DType::F64, bin_w);
        // clip(round_fn(i·bin) + origin, len)
        let edge = |kb: &mut KernelBuilder,
                    s: &mut Vec<Stmt>,
                    i: Expr,
                    bin: &Expr,
                    up: bool,
                    o: &Expr,
                    len: usize| {
            let p = mul(to_f64(kb, i), bin.clone());
            let p = Expr::un(if up { UnOp::Ceil } else { UnOp::Floor }, p);
            let e = clamp_idx(add(Expr::cast(DType::I64, p), o.clone()), 0, len as i64);
            let_(kb, s, DType::I64, e)
        };
        let hs = edge(kb, &mut s, ph.clone(), &bin_h, false, y0, h);
        let he = edge(kb, &mut s, add(ph, idx(1)), &bin_h, true, y0, h);
        let ws = edge(kb, &mut s, pw.clone(), &bin_w, false, x0, w);
        let we = edge(kb, &mut s, add(pw, idx(1)), &bin_w, true, x0, w);
        let empty = Expr::bin(
            BinOp::Or,
            cmp(BinOp::Le, he.clone(), hs.clone()),
            cmp(BinOp::Le, we.clone(), ws.clone()),
        );
        let acc = kb.var(DType::F64);
        s.push(Stmt::Let {
            var: acc,
            value: Expr::select(empty, f64_(0.0), f64_(f64::NEG_INFINITY)),
        });
        let plane = Expr::mul_idx(
            Expr::add_idx(Expr::mul_idx(bi, c as i64), ch),
            (h * w) as i64,
        );
        let span = |a: &Expr, b: &Expr| Expr::bin(BinOp::Max, sub(b.clone(), a.clone()), idx(0));
        let rows = serial(kb, span(&hs, &he), |kb, iy| {
            vec![serial(kb, span(&ws, &we), |kb, ix| {
                let at = Expr::add_idx(
                    plane.clone(),
                    Expr::add_idx(
                        Expr::mul_idx(add(hs.clone(), iy), w as i64),
                        add(ws.clone(), ix),
                    ),
                );
                let xv = to_f64(kb, Expr::load(xp, at));
                vec![Stmt::Assign {
                    var: acc,
                    value: fmax(Expr::var(acc), xv),
                }]
            })]
        });
        s.push(rows);
        s.push(Stmt::Store {
            param: op_,
            index: super::flat(&shape, &v.iter().map(|&x| Expr::var(x)).collect::<Vec<_>>()),
            value: round_to(xty, Expr::var(acc)),
        });
        s
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// Rust's `f64::round`: half away from zero (`UnOp::Round` rounds half to even).
fn round_away(kb: &mut KernelBuilder, s: &mut Vec<Stmt>, x: Expr) -> Expr {
    let x = let_(kb, s, DType::F64, x);
    let neg = cmp(BinOp::Lt, x.clone(), f64_(0.0));
    let t = Expr::select(
        neg.clone(),
        Expr::un(UnOp::Ceil, x.clone()),
        Expr::un(UnOp::Floor, x.clone()),
    );
    let t = let_(kb, s, DType::F64, t);
    // `x - t` is exact: the dropped fraction.
    let half = cmp(BinOp::Ge, Expr::un(UnOp::Abs, sub(x, t.clone())), f64_(0.5));
    let step = Expr::select(neg, f64_(-1.0), f64_(1.0));
    add(t, Expr::select(half, step, f64_(0.0)))
}
