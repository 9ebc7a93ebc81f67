//! `nn.grid_sample`: every output element samples its channel's plane at the grid's point,
//! with nearest, (multi)linear or bicubic taps and zeros, border or reflection padding.
//!
//! The grid coordinate is denormalized in the grid's precision (`f32`, or `f64` for an `f64`
//! grid) and everything after in `f64`, as in the interpreter; the taps along each spatial
//! axis are computed once per grid point (shared by all channels) and their products summed in
//! the interpreter's order (the first axis outermost).

use super::{
    Cx, Fail, KernelBuilder, add, add_if, and, clamp_idx, cmp, div, f64_, float_ok, idx, in_range,
    kernel_name, let_, mul, par_nest, round_to, serial, sub, to_f64, to_i64, unsupported,
};
use crate::kernel::*;
use mlc_ir::ops::NnOp;
use mlc_ir::ops::nn::{GridPadding, ResizeMode};
use mlc_ir::{DType, Node};

pub(in crate::lower) fn grid_sample(cx: &mut Cx, node: &Node, op: &NnOp) -> Result<(), Fail> {
    let NnOp::GridSample {
        mode,
        padding,
        align_corners,
    } = op
    else {
        return unsupported("not grid_sample");
    };
    let (mode, padding, align) = (*mode, *padding, *align_corners);
    let (Some(x), Some(grid)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let (xs, gs) = (cx.shape(x)?, cx.shape(grid)?);
    let (xty, gty) = (cx.dtype(x), cx.dtype(grid));
    let k = xs.len().saturating_sub(2);
    if k == 0 || gs.len() != xs.len() || gs[0] != xs[0] || gs[k + 1] != k {
        return unsupported(format!(
            "grid_sample input {xs:?} and grid {gs:?} do not fit"
        ));
    }
    if !float_ok(xty) || !float_ok(gty) {
        return unsupported("grid_sample of non-float tensors");
    }
    let out_dims = &gs[1..=k];
    let dims = xs[2..].to_vec();
    if dims.contains(&0) && !out_dims.contains(&0) {
        return unsupported("grid_sample cannot sample an empty input");
    }
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let (n, c) = (xs[0], xs[1]);
    let plane: usize = dims.iter().product();
    let points: usize = out_dims.iter().product();
    if n * c * points == 0 {
        return Ok(());
    }
    // The interpreter denormalizes in f64 for an f64 grid, else in f32.
    let fty = if gty == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let mut st = vec![1i64; k];
    for d in (0..k.saturating_sub(1)).rev() {
        st[d] = st[d + 1] * dims[d + 1] as i64;
    }
    let border: Vec<(f64, f64)> = dims
        .iter()
        .map(|&d| {
            if align {
                (0.0, d as f64 - 1.0)
            } else {
                (-0.5, d as f64 - 0.5)
            }
        })
        .collect();
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let gp = kb.param(&cx.p, cx.buf(grid)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let body = par_nest(&mut kb, &[n, points], |kb, v| {
        let (ni, pi) = (Expr::var(v[0]), Expr::var(v[1]));
        let mut s = Vec::new();
        // Per axis: the taps as (in-range flag, clamped index, weight).
        let mut taps: Vec<Vec<(Expr, Expr, Expr)>> = Vec::with_capacity(k);
        for d in 0..k {
            let len = dims[d];
            let at = Expr::add_idx(
                Expr::mul_idx(
                    Expr::add_idx(Expr::mul_idx(ni.clone(), points as i64), pi.clone()),
                    k as i64,
                ),
                idx((k - 1 - d) as i64),
            );
            let g = Expr::load(gp, at);
            let g = if kb.k.type_of(&g) == fty {
                g
            } else {
                Expr::cast(fty, g)
            };
            let g = let_(kb, &mut s, fty, g);
            let (one, two, lf) = (
                Expr::float(fty, 1.0),
                Expr::float(fty, 2.0),
                Expr::float(fty, len as f64),
            );
            let xf = if align {
                mul(div(add(g, one.clone()), two), sub(lf, one))
            } else {
                div(sub(mul(add(g, one.clone()), lf), one), two)
            };
            let mut xv = to_f64(kb, xf);
            if mode == ResizeMode::Nearest {
                xv = Expr::un(UnOp::Round, xv);
            }
            let xv = let_(kb, &mut s, DType::F64, xv);
            let (lo, hi) = border[d];
            let xv = match padding {
                GridPadding::Zeros => xv,
                GridPadding::Border => {
                    let outside = Expr::bin(
                        BinOp::Or,
                        cmp(BinOp::Lt, xv.clone(), f64_(lo)),
                        cmp(BinOp::Gt, xv.clone(), f64_(hi)),
                    );
                    let clamped = Expr::bin(
                        BinOp::Min,
                        Expr::bin(BinOp::Max, xv.clone(), f64_(0.0)),
                        f64_(len as f64 - 1.0),
                    );
                    let e = Expr::select(outside, clamped, xv);
                    let_(kb, &mut s, DType::F64, e)
                }
                GridPadding::Reflection => {
                    let e = reflect(kb, &mut s, xv, lo, hi);
                    let_(kb, &mut s, DType::F64, e)
                }
            };
            // Maps an integer tap index to (in range, an index safe to load).
            let fetch = |kb: &mut KernelBuilder, s: &mut Vec<Stmt>, i: Expr| -> (Expr, Expr) {
                let i = let_(kb, s, DType::I64, i);
                let last = len as i64 - 1;
                match padding {
                    GridPadding::Zeros => (in_range(i.clone(), len as i64), clamp_idx(i, 0, last)),
                    GridPadding::Border => (Expr::Lit(Lit::Bool(true)), clamp_idx(i, 0, last)),
                    GridPadding::Reflection => {
                        let r = reflect(kb, s, Expr::cast(DType::F64, i), lo, hi);
                        let r = let_(kb, s, DType::F64, r);
                        (
                            Expr::Lit(Lit::Bool(true)),
                            clamp_idx(Expr::cast(DType::I64, r), 0, last),
                        )
                    }
                }
            };
            let mut axis = Vec::new();
            match mode {
                ResizeMode::Nearest => {
                    let (ok, i) = fetch(kb, &mut s, to_i64(kb, xv));
                    axis.push((ok, i, f64_(1.0)));
                }
                ResizeMode::Linear => {
                    let x0 = let_(kb, &mut s, DType::F64, Expr::un(UnOp::Floor, xv.clone()));
                    let t = let_(kb, &mut s, DType::F64, sub(xv, x0.clone()));
                    let i0 = let_(kb, &mut s, DType::I64, Expr::cast(DType::I64, x0));
                    let (ok0, j0) = fetch(kb, &mut s, i0.clone());
                    let (ok1, j1) = fetch(kb, &mut s, add(i0, idx(1)));
                    axis.push((ok0, j0, sub(f64_(1.0), t.clone())));
                    axis.push((ok1, j1, t));
                }
                ResizeMode::Cubic => {
                    let x0 = let_(kb, &mut s, DType::F64, Expr::un(UnOp::Floor, xv.clone()));
                    let t = Expr::un(UnOp::Abs, sub(xv, x0.clone()));
                    let t = let_(kb, &mut s, DType::F64, t);
                    let i0 = let_(kb, &mut s, DType::I64, Expr::cast(DType::I64, x0));
                    for (j, w) in cubic_weights(t).into_iter().enumerate() {
                        let w = let_(kb, &mut s, DType::F64, w);
                        let (ok, i) = fetch(kb, &mut s, add(i0.clone(), idx(j as i64 - 1)));
                        axis.push((ok, i, w));
                    }
                }
            }
            // Name the flags and indices once; every tap combination uses them.
            let axis = axis
                .into_iter()
                .map(|(ok, i, w)| {
                    let ok = if matches!(ok, Expr::Lit(_)) {
                        ok
                    } else {
                        let_(kb, &mut s, DType::Bool, ok)
                    };
                    let i = let_(kb, &mut s, DType::I64, i);
                    (ok, i, w)
                })
                .collect();
            taps.push(axis);
        }
        // Every combination of one tap per axis, the first axis outermost: its weight (the
        // product in axis order), whether it is inside, and its offset in the plane; shared
        // by all channels.
        let counts: Vec<usize> = taps.iter().map(Vec::len).collect();
        let total: usize = counts.iter().product();
        let mut combos = Vec::with_capacity(total);
        for flat in 0..total {
            let mut rem = flat;
            let mut pick = vec![0; k];
            for d in (0..k).rev() {
                pick[d] = rem % counts[d];
                rem /= counts[d];
            }
            let (mut ok, mut w, mut at) = (None::<Expr>, f64_(1.0), Expr::idx(0));
            for d in 0..k {
                let (o, i, wd) = &taps[d][pick[d]];
                if !matches!(o, Expr::Lit(Lit::Bool(true))) {
                    ok = Some(match ok {
                        None => o.clone(),
                        Some(prev) => and(prev, o.clone()),
                    });
                }
                w = mul(w, wd.clone());
                at = Expr::add_idx(at, Expr::mul_idx(i.clone(), st[d]));
            }
            let w = let_(kb, &mut s, DType::F64, w);
            let ok = ok.map(|ok| let_(kb, &mut s, DType::Bool, ok));
            let at = let_(kb, &mut s, DType::I64, at);
            combos.push((ok, w, at));
        }
        let channels = serial(kb, idx(c as i64), |kb, ci| {
            let nc = Expr::add_idx(Expr::mul_idx(ni.clone(), c as i64), ci);
            let base = Expr::mul_idx(nc.clone(), plane as i64);
            let acc = kb.var(DType::F64);
            let mut body = vec![Stmt::Let {
                var: acc,
                value: f64_(0.0),
            }];
            for (ok, w, at) in combos {
                let xval = to_f64(kb, Expr::load(xp, Expr::add_idx(base.clone(), at)));
                let term = mul(w, xval);
                body.push(match ok {
                    Some(ok) => add_if(acc, ok, term),
                    None => Stmt::Assign {
                        var: acc,
                        value: add(Expr::var(acc), term),
                    },
                });
            }
            body.push(Stmt::Store {
                param: op_,
                index: Expr::add_idx(Expr::mul_idx(nc, points as i64), pi),
                value: round_to(xty, Expr::var(acc)),
            });
            body
        });
        s.push(channels);
        s
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// The interpreter's `reflect(x, lo, hi)`: folds `x` into `[lo, hi]` at the borders.
fn reflect(kb: &mut KernelBuilder, s: &mut Vec<Stmt>, x: Expr, lo: f64, hi: f64) -> Expr {
    let rng = hi - lo;
    if rng <= 0.0 {
        return f64_(lo);
    }
    let x = let_(kb, s, DType::F64, x);
    // One side: `dx` past the border, `n` whole ranges and `r` the rest.
    let side =
        |kb: &mut KernelBuilder, s: &mut Vec<Stmt>, dx: Expr, even: f64, odd: f64, sign: f64| {
            let dx = let_(kb, s, DType::F64, dx);
            let n = let_(
                kb,
                s,
                DType::I64,
                Expr::cast(DType::I64, div(dx.clone(), f64_(rng))),
            );
            let r = sub(dx, mul(Expr::cast(DType::F64, n.clone()), f64_(rng)));
            let r = let_(kb, s, DType::F64, r);
            let is_even = cmp(BinOp::Eq, Expr::bin(BinOp::Rem, n, idx(2)), idx(0));
            // even: `even + sign·r`; odd: `odd - sign·r`.
            let (a, b) = if sign > 0.0 {
                (add(f64_(even), r.clone()), sub(f64_(odd), r))
            } else {
                (sub(f64_(even), r.clone()), add(f64_(odd), r))
            };
            Expr::select(is_even, a, b)
        };
    let below = side(kb, s, sub(f64_(lo), x.clone()), lo, hi, 1.0);
    let above = side(kb, s, sub(x.clone(), f64_(hi)), hi, lo, -1.0);
    Expr::select(
        cmp(BinOp::Lt, x.clone(), f64_(lo)),
        below,
        Expr::select(cmp(BinOp::Gt, x.clone(), f64_(hi)), above, x),
    )
}

/// The bicubic weights (`a = -0.75`) of the taps at -1, 0, 1, 2 for a fraction `t`, each
/// formula as the interpreter writes it.
fn cubic_weights(t: Expr) -> [Expr; 4] {
    let a = || f64_(-0.75);
    let t1 = add(t.clone(), f64_(1.0));
    let u = sub(f64_(1.0), t.clone());
    let u2 = sub(f64_(2.0), t.clone());
    let far = |y: Expr| {
        // ((a·y - 5a)·y + 8a)·y - 4a
        sub(
            mul(
                add(
                    mul(sub(mul(a(), y.clone()), mul(f64_(5.0), a())), y.clone()),
                    mul(f64_(8.0), a()),
                ),
                y,
            ),
            mul(f64_(4.0), a()),
        )
    };
    let near = |y: Expr| {
        // ((a + 2)·y - (a + 3))·y·y + 1
        add(
            mul(
                mul(
                    sub(mul(add(a(), f64_(2.0)), y.clone()), add(a(), f64_(3.0))),
                    y.clone(),
                ),
                y,
            ),
            f64_(1.0),
        )
    };
    [far(t1), near(t), near(u), far(u2)]
}
