//! Resampling: `resize` (nearest/linear/cubic, every coordinate mode, antialias) as separable
//! 1-D passes in f64, following the ONNX reference implementation step by step; and
//! `grid_sample` over N-D inputs.

use super::{Acc, Float, for_each_index, req, strides_of, with_float};
use crate::{EvalError, invalid};
use mlc_ir::Tensor;
use mlc_ir::ops::NnOp;
use mlc_ir::ops::nn::{
    CoordMode, GridPadding, NearestMode, ResizeMode, resize_scaled_dim, resize_sizes,
};

/// The attributes one 1-D pass needs.
struct Pass {
    mode: ResizeMode,
    coord: CoordMode,
    nearest: NearestMode,
    a: f64,
    exclude_outside: bool,
    extrapolation: f64,
    antialias: bool,
}

pub(super) fn resize(op: &NnOp, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>, EvalError> {
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
        unreachable!("the caller routes only resize here")
    };
    let x = req(inputs, 0)?;
    let shape = x.shape();
    let r = shape.len();
    if axes.iter().any(|&a| a >= r) {
        return Err(invalid(format!(
            "resize axes {axes:?} out of range for {shape:?}"
        )));
    }
    // Run-time inputs stand in for attributes the importer could not fold; empty ones are absent.
    let input = |i: usize| inputs.get(i).copied().flatten().filter(|t| !t.is_empty());
    let sizes: Option<Vec<usize>> = match (sizes, input(3)) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(t)) => Some(
            t.to_i64_vec()?
                .into_iter()
                .map(|v| v.max(0) as usize)
                .collect(),
        ),
        _ => None,
    };
    let scales: Option<Vec<f64>> = match (scales, input(2)) {
        (Some(s), _) => Some(s.iter().map(|&v| v as f64).collect()),
        (None, Some(t)) => Some(t.cast(mlc_ir::DType::F32)?.to_f64_vec()?),
        _ => None,
    };
    let roi: Option<Vec<f64>> = match (roi, input(1)) {
        (Some(v), _) => Some(v.iter().map(|&v| v as f64).collect()),
        (None, Some(t)) => Some(t.to_f64_vec()?),
        _ => None,
    };
    let n = axes.len();
    // Per-axis (scale, output size, roi start, roi end).
    let ins: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
    let per_axis: Vec<(f64, usize)> = if let Some(sz) = &sizes {
        if sz.len() != n {
            return Err(invalid(format!(
                "resize sizes {sz:?} do not match axes {axes:?}"
            )));
        }
        resize_sizes(&ins, sz, *aspect_policy)
    } else if let Some(sc) = &scales {
        if sc.len() != n {
            return Err(invalid(format!(
                "resize scales {sc:?} do not match axes {axes:?}"
            )));
        }
        ins.iter()
            .zip(sc)
            .map(|(&i, &s)| (s, resize_scaled_dim(i, s as f32)))
            .collect()
    } else {
        return Err(invalid("resize needs scales or sizes"));
    };
    if let Some(roi) = &roi
        && roi.len() != 2 * n
    {
        return Err(invalid(format!(
            "resize roi has {} values, expected {}",
            roi.len(),
            2 * n
        )));
    }
    let pass = Pass {
        mode: *mode,
        coord: *coord_mode,
        nearest: *nearest_mode,
        a: *cubic_coeff_a as f64,
        exclude_outside: *exclude_outside,
        extrapolation: *extrapolation_value as f64,
        antialias: *antialias,
    };
    let mut data = f64::read(x);
    let mut cur = shape.to_vec();
    for (i, (&axis, &(scale, out))) in axes.iter().zip(&per_axis).enumerate() {
        let rr = roi.as_ref().map(|v| (v[i], v[n + i]));
        let identity = (scale - 1.0).abs() <= 1e-9
            && out == cur[axis]
            && rr.is_none_or(|(a, b)| a.abs() <= 1e-9 && (b - 1.0).abs() <= 1e-9);
        if identity {
            continue;
        }
        data = resize_axis(&data, &cur, axis, out, scale, rr, &pass)?;
        cur[axis] = out;
    }
    Ok(vec![f64::write(data, &cur, x.dtype())?])
}

/// Source coordinate of output index `y` along one axis; `None` where tf_crop_and_resize
/// extrapolates.
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

/// Interpolation weights for a source coordinate whose distance past its left neighbor is
/// `ratio` in `(0, 1]` (the reference's convention: an exact integer has ratio 1).
fn coeffs(p: &Pass, ratio: f64, scale: f64) -> Vec<f64> {
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
            let c: Vec<f64> = (start..start + footprint)
                .map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0))
                .collect();
            let sum: f64 = c.iter().sum();
            c.into_iter().map(|v| v / sum).collect()
        }
        ResizeMode::Linear => vec![1.0 - ratio, ratio],
        ResizeMode::Cubic if p.antialias => {
            let s = scale.min(1.0);
            let a = p.a;
            let f = |x: f64| {
                let x = x.abs();
                if x <= 1.0 {
                    (a + 2.0) * x * x * x - (a + 3.0) * x * x + 1.0
                } else if x < 2.0 {
                    a * x * x * x - 5.0 * a * x * x + 8.0 * a * x - 4.0 * a
                } else {
                    0.0
                }
            };
            let i_start = (-2.0 / s).floor() as i64 + 1;
            let i_end = 2 - i_start;
            let c: Vec<f64> = (i_start..i_end)
                .map(|i| f(s * (i as f64 - ratio)))
                .collect();
            let sum: f64 = c.iter().sum();
            c.into_iter().map(|v| v / sum).collect()
        }
        ResizeMode::Cubic => {
            let a = p.a;
            let r = ratio;
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

/// One separable pass: resizes dim `axis` of `data` (of `shape`) to `out` elements.
fn resize_axis(
    data: &[f64],
    shape: &[usize],
    axis: usize,
    out: usize,
    scale: f64,
    roi: Option<(f64, f64)>,
    p: &Pass,
) -> Result<Vec<f64>, EvalError> {
    let input = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    if input == 0 && out > 0 {
        return Err(invalid("cannot resize an empty dim"));
    }
    // Taps (clamped input index, weight) of each output index, or None to extrapolate.
    let mut taps: Vec<Option<Vec<(usize, f64)>>> = Vec::with_capacity(out);
    for y in 0..out {
        let Some(x) = source_coord(p, y as f64, scale, input, out, roi) else {
            taps.push(None);
            continue;
        };
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
        taps.push(Some(
            idx.into_iter()
                .map(|i| i.clamp(0, input as i64 - 1) as usize)
                .zip(c)
                .collect(),
        ));
    }
    let mut res = vec![0.0; outer * out * inner];
    for o in 0..outer {
        let src = &data[o * input * inner..(o + 1) * input * inner];
        for (y, t) in taps.iter().enumerate() {
            let dst = &mut res[(o * out + y) * inner..(o * out + y + 1) * inner];
            match t {
                None => dst.fill(p.extrapolation),
                Some(t) => {
                    for &(i, w) in t {
                        for (d, &s) in dst.iter_mut().zip(&src[i * inner..(i + 1) * inner]) {
                            *d += w * s;
                        }
                    }
                }
            }
        }
    }
    Ok(res)
}

pub(super) fn grid_sample(op: &NnOp, x: &Tensor, grid: &Tensor) -> Result<Vec<Tensor>, EvalError> {
    let NnOp::GridSample {
        mode,
        padding,
        align_corners,
    } = op
    else {
        unreachable!("the caller routes only grid_sample here")
    };
    let (xs, gs) = (x.shape(), grid.shape());
    let k = xs.len().saturating_sub(2);
    if k == 0 || gs.len() != xs.len() || gs[0] != xs[0] || gs[gs.len() - 1] != k {
        return Err(invalid(format!(
            "grid_sample input {xs:?} and grid {gs:?} do not fit"
        )));
    }
    // Empty spatial dims have nothing to sample from (an empty grid is fine).
    if xs[2..].contains(&0) && !gs[1..gs.len() - 1].contains(&0) {
        return Err(invalid("grid_sample cannot sample an empty input"));
    }
    with_float!(grid.dtype(), F => {
        let xv = f64::read(x);
        let gv = F::read(grid);
        let y = grid_sample_nd::<F>(&xv, xs, &gv, gs, *mode, *padding, *align_corners);
        let mut shape = xs[..2].to_vec();
        shape.extend_from_slice(&gs[1..gs.len() - 1]);
        Ok(vec![f64::write(y, &shape, x.dtype())?])
    })
}

/// Reflects `x` into `[lo, hi]` by folding at the borders (the ONNX reference's `_gs_reflect`).
fn reflect(x: f64, lo: f64, hi: f64) -> f64 {
    let rng = hi - lo;
    if rng <= 0.0 {
        return lo;
    }
    if x < lo {
        let dx = lo - x;
        let n = (dx / rng) as i64;
        let r = dx - n as f64 * rng;
        if n % 2 == 0 { lo + r } else { hi - r }
    } else if x > hi {
        let dx = x - hi;
        let n = (dx / rng) as i64;
        let r = dx - n as f64 * rng;
        if n % 2 == 0 { hi - r } else { lo + r }
    } else {
        x
    }
}

fn grid_sample_nd<F: Float>(
    x: &[f64],
    xs: &[usize],
    grid: &[F],
    gs: &[usize],
    mode: ResizeMode,
    padding: GridPadding,
    align: bool,
) -> Vec<f64> {
    let k = xs.len() - 2;
    let dims = &xs[2..];
    let (n, c) = (xs[0], xs[1]);
    let plane: usize = dims.iter().product();
    let out_dims = &gs[1..gs.len() - 1];
    let p: usize = out_dims.iter().product();
    let st = strides_of(dims);
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
    // Maps an integer tap index on dim `d` to an in-range index, or None for a zero sample.
    let fetch_index = |d: usize, i: i64| -> Option<usize> {
        let len = dims[d] as i64;
        match padding {
            GridPadding::Zeros => (0..len).contains(&i).then_some(i as usize),
            GridPadding::Border => Some(i.clamp(0, len - 1) as usize),
            GridPadding::Reflection => Some(
                (reflect(i as f64, border[d].0, border[d].1) as i64).clamp(0, len - 1) as usize,
            ),
        }
    };
    let cubic = |t: f64| -> [f64; 4] {
        let a = -0.75;
        let t = t.abs();
        [
            ((a * (t + 1.0) - 5.0 * a) * (t + 1.0) + 8.0 * a) * (t + 1.0) - 4.0 * a,
            ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0,
            ((a + 2.0) * (1.0 - t) - (a + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0,
            ((a * (2.0 - t) - 5.0 * a) * (2.0 - t) + 8.0 * a) * (2.0 - t) - 4.0 * a,
        ]
    };
    let mut y = vec![0.0; n * c * p];
    for ni in 0..n {
        for pi in 0..p {
            let g = &grid[(ni * p + pi) * k..(ni * p + pi + 1) * k];
            // Grid coordinates list the innermost dim first; denormalize in the grid's type.
            let mut coord = vec![0.0f64; k];
            for d in 0..k {
                let v = g[k - 1 - d];
                let len = F::from_f64(dims[d] as f64);
                let (one, two) = (F::one(), F::from_f64(2.0));
                let xf = if align {
                    (v + one) / two * (len - one)
                } else {
                    ((v + one) * len - one) / two
                };
                let mut xv = xf.to_f64();
                if mode == ResizeMode::Nearest {
                    xv = xv.round_ties_even();
                }
                let (lo, hi) = border[d];
                if xv < lo || xv > hi {
                    match padding {
                        GridPadding::Border => xv = xv.clamp(0.0, dims[d] as f64 - 1.0),
                        GridPadding::Reflection => xv = reflect(xv, lo, hi),
                        GridPadding::Zeros => {}
                    }
                }
                coord[d] = xv;
            }
            // The taps along each dim: (index or None, weight).
            let taps: Vec<Vec<(Option<usize>, f64)>> = (0..k)
                .map(|d| {
                    let xv = coord[d];
                    match mode {
                        ResizeMode::Nearest => vec![(fetch_index(d, xv as i64), 1.0)],
                        ResizeMode::Linear => {
                            let x0 = xv.floor();
                            let t = xv - x0;
                            vec![
                                (fetch_index(d, x0 as i64), 1.0 - t),
                                (fetch_index(d, x0 as i64 + 1), t),
                            ]
                        }
                        ResizeMode::Cubic => {
                            let x0 = xv.floor();
                            let w = cubic(xv - x0);
                            (0..4)
                                .map(|j| (fetch_index(d, x0 as i64 - 1 + j as i64), w[j]))
                                .collect()
                        }
                    }
                })
                .collect();
            let counts: Vec<usize> = taps.iter().map(Vec::len).collect();
            for ci in 0..c {
                let xp = &x[(ni * c + ci) * plane..(ni * c + ci + 1) * plane];
                let mut acc = 0.0;
                for_each_index(&counts, |j| {
                    let mut w = 1.0;
                    let mut off = 0;
                    for d in 0..k {
                        let (i, wd) = taps[d][j[d]];
                        match i {
                            Some(i) => off += i * st[d],
                            None => return,
                        }
                        w *= wd;
                    }
                    acc += w * xp[off];
                });
                y[(ni * c + ci) * p + pi] = acc;
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::ops::nn::AspectPolicy;

    fn resize_op(
        mode: ResizeMode,
        coord: CoordMode,
        scales: Option<Vec<f32>>,
        sizes: Option<Vec<usize>>,
    ) -> NnOp {
        NnOp::Resize {
            mode,
            coord_mode: coord,
            nearest_mode: NearestMode::RoundPreferFloor,
            cubic_coeff_a: -0.75,
            exclude_outside: false,
            extrapolation_value: 0.0,
            antialias: false,
            axes: vec![2, 3],
            aspect_policy: AspectPolicy::Stretch,
            roi: None,
            scales,
            sizes,
        }
    }

    fn vals(op: &NnOp, x: &Tensor) -> Vec<f64> {
        resize(op, &[Some(x)]).unwrap()[0].to_f64_vec().unwrap()
    }

    #[test]
    fn resize_nearest_and_linear() {
        // ONNX test_resize_upsample_scales_nearest: [[1,2],[3,4]] by (2, 3).
        let x = Tensor::from_vec(&[1, 1, 2, 2], vec![1f32, 2., 3., 4.]).unwrap();
        let op = resize_op(
            ResizeMode::Nearest,
            CoordMode::HalfPixel,
            Some(vec![2.0, 3.0]),
            None,
        );
        assert_eq!(
            vals(&op, &x),
            vec![
                1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2., 3., 3., 3., 4., 4., 4., 3., 3., 3.,
                4., 4., 4.
            ]
        );
        // test_resize_upsample_scales_linear (half_pixel), first row.
        let op = resize_op(
            ResizeMode::Linear,
            CoordMode::HalfPixel,
            Some(vec![2.0, 2.0]),
            None,
        );
        assert_eq!(&vals(&op, &x)[..4], &[1.0, 1.25, 1.75, 2.0]);
        // test_resize_downsample_sizes_linear_pytorch_half_pixel-like: align_corners to 1x1.
        let op = resize_op(
            ResizeMode::Linear,
            CoordMode::AlignCorners,
            None,
            Some(vec![1, 1]),
        );
        assert_eq!(vals(&op, &x), vec![1.0]);
    }

    #[test]
    fn grid_sample_bilinear() {
        // Sampling the corners and the center of a 2x2 image with align_corners.
        let x = Tensor::from_vec(&[1, 1, 2, 2], vec![1f32, 2., 3., 4.]).unwrap();
        let grid = Tensor::from_vec(&[1, 1, 3, 2], vec![-1f32, -1., 1., -1., 0., 0.]).unwrap();
        let op = NnOp::GridSample {
            mode: ResizeMode::Linear,
            padding: GridPadding::Zeros,
            align_corners: true,
        };
        let y = grid_sample(&op, &x, &grid).unwrap();
        assert_eq!(y[0].shape(), &[1, 1, 1, 3]);
        assert_eq!(y[0].to_f64_vec().unwrap(), vec![1., 2., 2.5]);
    }
}
