//! `Resize` as separable 1-D passes, one kernel per resized axis.
//!
//! Shapes, scales and the region of interest are static here, so every output index's taps
//! (input indices and weights) are computed at compile time, exactly as the ONNX reference
//! computes them, and stored as constant tables: a pass is then a short weighted sum per output
//! element, the same code for nearest, linear and cubic, with or without antialiasing.
//! Intermediate passes are `f64`, as in the interpreter; the last rounds to the output type.

use super::{Cx, Fail, KernelBuilder, kernel_name, loop_nest, unsupported};
use crate::kernel::*;
use mlc_ir::ops::NnOp;
use mlc_ir::ops::nn::{
    AspectPolicy, CoordMode, NearestMode, ResizeMode, resize_scaled_dim, resize_sizes,
};
use mlc_ir::{DType, Node, Tensor};

/// The attributes one 1-D pass needs.
struct Pass {
    mode: ResizeMode,
    coord: CoordMode,
    nearest: NearestMode,
    a: f64,
    exclude_outside: bool,
    antialias: bool,
}

pub(super) fn resize(cx: &mut Cx, node: &Node, op: &NnOp) -> Result<(), Fail> {
    let NnOp::Resize {
        mode,
        coord_mode,
        nearest_mode,
        cubic_coeff_a,
        exclude_outside,
        extrapolation_value,
        antialias,
        axes,
        aspect_policy,
        roi,
        scales,
        sizes,
    } = op
    else {
        return unsupported("not resize");
    };
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    let shape = cx.shape(x)?;
    let ty = cx.dtype(x);
    if !ty.is_numeric() || ty.is_storage_only() || ty == DType::Bool {
        return unsupported(format!("resize of {}", ty.name()));
    }
    let bad = |e: mlc_ir::TensorError| Fail::Unsupported(e.to_string());
    // Empty inputs are absent. Other run-time inputs cannot be tabulated, except stretched
    // sizes: the static output shape then holds them.
    let out_shape = cx.shape(node.outputs[0])?;
    let input = |i: usize| -> Result<Option<Tensor>, Fail> {
        match node.input(i) {
            None => Ok(None),
            Some(v) if cx.shape(v)?.contains(&0) => Ok(None),
            Some(v) => match cx.g.const_value(v) {
                Some(t) => Ok(Some(t.clone())),
                None if i == 3 && *aspect_policy == AspectPolicy::Stretch => {
                    let s: Vec<i64> = axes.iter().map(|&a| out_shape[a] as i64).collect();
                    Ok(Some(Tensor::from_vec(&[s.len()], s).map_err(bad)?))
                }
                None => unsupported("resize scales, sizes or roi given at run time"),
            },
        }
    };
    let sizes: Option<Vec<usize>> = match (sizes, input(3)?) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(t)) => Some(
            t.to_i64_vec()
                .map_err(bad)?
                .iter()
                .map(|&v| v.max(0) as usize)
                .collect(),
        ),
        _ => None,
    };
    let scales: Option<Vec<f64>> = match (scales, input(2)?) {
        (Some(s), _) => Some(s.iter().map(|&v| v as f64).collect()),
        (None, Some(t)) => Some(
            t.cast(DType::F32)
                .and_then(|t| t.to_f64_vec())
                .map_err(bad)?,
        ),
        _ => None,
    };
    let roi: Option<Vec<f64>> = match (roi, input(1)?) {
        (Some(v), _) => Some(v.iter().map(|&v| v as f64).collect()),
        (None, Some(t)) => Some(t.to_f64_vec().map_err(bad)?),
        _ => None,
    };
    let n = axes.len();
    let ins: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
    let per_axis: Vec<(f64, usize)> = match (&sizes, &scales) {
        (Some(sz), _) if sz.len() == n => resize_sizes(&ins, sz, *aspect_policy),
        (None, Some(sc)) if sc.len() == n => ins
            .iter()
            .zip(sc)
            .map(|(&i, &s)| (s, resize_scaled_dim(i, s as f32)))
            .collect(),
        _ => return unsupported("resize needs scales or sizes matching its axes"),
    };
    if roi.as_ref().is_some_and(|r| r.len() != 2 * n) {
        return unsupported("resize roi of the wrong length");
    }
    let pass = Pass {
        mode: *mode,
        coord: *coord_mode,
        nearest: *nearest_mode,
        a: *cubic_coeff_a as f64,
        exclude_outside: *exclude_outside,
        antialias: *antialias,
    };
    // The passes that do something; identity passes are skipped, as in the interpreter.
    let mut cur = shape.clone();
    let mut plan = Vec::new();
    for (i, (&axis, &(scale, out))) in axes.iter().zip(&per_axis).enumerate() {
        let rr = roi.as_ref().map(|v| (v[i], v[n + i]));
        let identity = (scale - 1.0).abs() <= 1e-9
            && out == cur[axis]
            && rr.is_none_or(|(a, b)| a.abs() <= 1e-9 && (b - 1.0).abs() <= 1e-9);
        if identity {
            continue;
        }
        if cur[axis] == 0 && out > 0 {
            return unsupported("cannot resize an empty dim");
        }
        let taps = taps(&pass, cur[axis], out, scale, rr);
        plan.push((axis, cur.clone(), out, taps));
        cur[axis] = out;
    }
    if plan.is_empty() {
        return Ok(cx.alias(node.outputs[0], x)?);
    }
    let mut src = cx.buf(x)?;
    let last = plan.len() - 1;
    for (p, (axis, shape, out, taps)) in plan.into_iter().enumerate() {
        let mut out_shape = shape.clone();
        out_shape[axis] = out;
        let dst = if p == last {
            cx.new_buffer(node.outputs[0], BufKind::Temp)?
        } else {
            cx.p.add_buffer(DType::F64, out_shape, BufKind::Temp)
        };
        resize_pass(
            cx,
            node,
            src,
            dst,
            &shape,
            axis,
            out,
            &taps,
            *extrapolation_value as f64,
        )?;
        src = dst;
    }
    Ok(())
}

/// Per output index: the (clamped input index, weight) taps, or `None` to extrapolate.
type Taps = Vec<Option<Vec<(usize, f64)>>>;

/// One pass: `dst[o, y, i] = Σ w[y, t] * src[o, idx[y, t], i]` (or the extrapolation value).
#[allow(clippy::too_many_arguments)]
fn resize_pass(
    cx: &mut Cx,
    node: &Node,
    src: BufId,
    dst: BufId,
    shape: &[usize],
    axis: usize,
    out: usize,
    taps: &Taps,
    extrapolation: f64,
) -> Result<(), Fail> {
    let input = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let width = taps
        .iter()
        .flatten()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(1);
    // Tables padded to `width` taps with weight 0; a row of extrapolation has flag 1.
    let (mut idx, mut w, mut extra) = (Vec::new(), Vec::new(), Vec::new());
    for t in taps {
        extra.push(i64::from(t.is_none()));
        for k in 0..width {
            let (i, wt) = t
                .as_ref()
                .and_then(|t| t.get(k))
                .copied()
                .unwrap_or((0, 0.0));
            idx.push(i as i64);
            w.push(wt);
        }
    }
    let bad = |e: mlc_ir::TensorError| Fail::Unsupported(e.to_string());
    let mut table = |t: Tensor| {
        let c = cx.p.consts.len();
        let shape = t.shape().to_vec();
        let dtype = t.dtype();
        cx.p.consts.push(t);
        cx.p.add_buffer(dtype, shape, BufKind::Const(c))
    };
    let ib = table(Tensor::from_vec(&[out, width], idx).map_err(bad)?);
    let wb = table(Tensor::from_vec(&[out, width], w).map_err(bad)?);
    let eb = table(Tensor::from_vec(&[out], extra).map_err(bad)?);
    let (sty, dty) = (cx.p.buffer(src).dtype, cx.p.buffer(dst).dtype);
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let sp = kb.param(&cx.p, src, Access::Read);
    let ip = kb.param(&cx.p, ib, Access::Read);
    let wp = kb.param(&cx.p, wb, Access::Read);
    let ep = kb.param(&cx.p, eb, Access::Read);
    let dp = kb.param(&cx.p, dst, Access::Write);
    let body = loop_nest(&mut kb, &[outer, out, inner], |kb, v| {
        let (o, y, i) = (Expr::var(v[0]), Expr::var(v[1]), Expr::var(v[2]));
        let (acc, t) = (kb.var(DType::F64), kb.var(DType::I64));
        let tap = Expr::add_idx(Expr::mul_idx(y.clone(), width as i64), Expr::var(t));
        let at = Expr::add_idx(
            Expr::mul_idx(
                Expr::add_idx(
                    Expr::mul_idx(o.clone(), input as i64),
                    Expr::load(ip, tap.clone()),
                ),
                inner as i64,
            ),
            i.clone(),
        );
        let s = Expr::load(sp, at);
        let s = if sty == DType::F64 {
            s
        } else {
            Expr::cast(DType::F64, s)
        };
        let value = Expr::select(
            Expr::bin(
                BinOp::Ne,
                Expr::load(ep, y.clone()),
                Expr::Lit(Lit::Int(DType::I64, 0)),
            ),
            Expr::float(DType::F64, extrapolation),
            Expr::var(acc),
        );
        // Integers round half to even, then saturate, as the reference's `saturate_cast`.
        let value = if dty == DType::F64 {
            value
        } else if dty.is_int() {
            Expr::cast(dty, Expr::un(UnOp::Round, value))
        } else {
            Expr::cast(dty, value)
        };
        let dst_at = Expr::add_idx(
            Expr::mul_idx(Expr::add_idx(Expr::mul_idx(o, out as i64), y), inner as i64),
            i,
        );
        vec![
            Stmt::Let {
                var: acc,
                value: Expr::float(DType::F64, 0.0),
            },
            Stmt::For {
                var: t,
                extent: Expr::idx(width as i64),
                kind: LoopKind::Serial,
                body: vec![Stmt::Assign {
                    var: acc,
                    value: Expr::bin(
                        BinOp::Add,
                        Expr::var(acc),
                        Expr::bin(BinOp::Mul, Expr::load(wp, tap), s),
                    ),
                }],
            },
            Stmt::Store {
                param: dp,
                index: dst_at,
                value,
            },
        ]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// The taps of every output index along one axis, as the ONNX reference computes them.
fn taps(p: &Pass, input: usize, out: usize, scale: f64, roi: Option<(f64, f64)>) -> Taps {
    (0..out)
        .map(|y| {
            let x = source_coord(p, y as f64, scale, input, out, roi)?;
            let xi = x.floor();
            let ratio = if x == xi { 1.0 } else { x - xi };
            let mut c = coeffs(p, ratio, scale);
            let n = c.len() as i64;
            // The n nearest indices to x in the edge-padded input, ties to the smaller index.
            let pad = (n + 1) / 2;
            let xp = x + pad as f64;
            let pf = xp.floor();
            let frac = xp - pf;
            let offset = if n % 2 == 0 {
                if frac == 0.0 { -(n / 2) } else { -(n / 2) + 1 }
            } else {
                let base = -((n - 1) / 2);
                if frac <= 0.5 { base } else { base + 1 }
            };
            let start = pf as i64 + offset - pad;
            let idx: Vec<i64> = (start..start + n).collect();
            if p.exclude_outside {
                for (w, &i) in c.iter_mut().zip(&idx) {
                    if i < 0 || i >= input as i64 {
                        *w = 0.0;
                    }
                }
                let sum: f64 = c.iter().sum();
                let sum = if sum == 0.0 { 1.0 } else { sum };
                c.iter_mut().for_each(|w| *w /= sum);
            }
            Some(
                idx.into_iter()
                    .map(|i| i.clamp(0, input as i64 - 1) as usize)
                    .zip(c)
                    .collect(),
            )
        })
        .collect()
}

/// Source coordinate of output index `y`; `None` where tf_crop_and_resize extrapolates.
fn source_coord(
    p: &Pass,
    y: f64,
    scale: f64,
    input: usize,
    out: usize,
    roi: Option<(f64, f64)>,
) -> Option<f64> {
    let (iw, ow) = (input as f64, scale * input as f64);
    Some(match p.coord {
        CoordMode::AlignCorners => {
            if ow == 1.0 {
                0.0
            } else {
                y * (iw - 1.0) / (ow - 1.0)
            }
        }
        CoordMode::Asymmetric => y / scale,
        CoordMode::TfHalfPixelForNn => (y + 0.5) / scale,
        CoordMode::TfCropAndResize => {
            let (r0, r1) = roi.unwrap_or((0.0, 1.0));
            let x = if ow == 1.0 {
                (r1 - r0) * (iw - 1.0) / 2.0
            } else {
                y * (r1 - r0) * (iw - 1.0) / (ow - 1.0)
            };
            let x = x + r0 * (iw - 1.0);
            if x < 0.0 || x > iw - 1.0 {
                return None;
            }
            x
        }
        CoordMode::PytorchHalfPixel => {
            if ow == 1.0 {
                -0.5
            } else {
                (y + 0.5) / scale - 0.5
            }
        }
        CoordMode::HalfPixel => (y + 0.5) / scale - 0.5,
        CoordMode::HalfPixelSymmetric => {
            let adjustment = out as f64 / ow;
            let offset = iw / 2.0 * (1.0 - adjustment);
            offset + (y + 0.5) / scale - 0.5
        }
    })
}

/// Cubic convolution kernel with parameter `a`.
fn cubic(a: f64, x: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        (a + 2.0) * x * x * x - (a + 3.0) * x * x + 1.0
    } else if x < 2.0 {
        a * x * x * x - 5.0 * a * x * x + 8.0 * a * x - 4.0 * a
    } else {
        0.0
    }
}

/// Interpolation weights for a coordinate `ratio` in `(0, 1]` past its left neighbor (an
/// exact integer has ratio 1, the reference's convention).
fn coeffs(p: &Pass, ratio: f64, scale: f64) -> Vec<f64> {
    let normalized = |c: Vec<f64>| {
        let sum: f64 = c.iter().sum();
        c.into_iter().map(|v| v / sum).collect()
    };
    match p.mode {
        ResizeMode::Nearest => {
            if ratio == 1.0 {
                return vec![0.0, 1.0];
            }
            let right = match p.nearest {
                NearestMode::RoundPreferFloor => ratio > 0.5,
                NearestMode::RoundPreferCeil => ratio >= 0.5,
                NearestMode::Floor => false,
                NearestMode::Ceil => true,
                NearestMode::Simple => scale < 1.0,
            };
            if right {
                vec![0.0, 1.0]
            } else {
                vec![1.0, 0.0]
            }
        }
        ResizeMode::Linear if p.antialias => {
            let s = scale.min(1.0);
            let start = (-1.0 / s).floor() as i64 + 1;
            let footprint = 2 - 2 * start;
            normalized(
                (start..start + footprint)
                    .map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0))
                    .collect(),
            )
        }
        ResizeMode::Linear => vec![1.0 - ratio, ratio],
        ResizeMode::Cubic if p.antialias => {
            let s = scale.min(1.0);
            let i_start = (-2.0 / s).floor() as i64 + 1;
            let i_end = 2 - i_start;
            normalized(
                (i_start..i_end)
                    .map(|i| cubic(p.a, s * (i as f64 - ratio)))
                    .collect(),
            )
        }
        ResizeMode::Cubic => {
            let (a, r) = (p.a, ratio);
            let q = 1.0 - r;
            vec![
                ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
                ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
                ((a + 2.0) * q - (a + 3.0)) * q * q + 1.0,
                ((a * (q + 1.0) - 5.0 * a) * (q + 1.0) + 8.0 * a) * (q + 1.0) - 4.0 * a,
            ]
        }
    }
}
