//! Kernels of the vision family: non-max suppression, RoI align and RoI max pooling, max
//! unpooling, col2im, deformable convolution and affine grids.
//!
//! Each kernel follows the loop structure of ONNX's reference implementation (the ground truth
//! of the node tests) over flat row-major buffers. Values are computed in f64 and rounded once
//! to the output type, except non-max suppression's overlap test, which runs in the boxes'
//! own precision so that IoUs on the threshold decide like the reference's f32 arithmetic.

use crate::{EvalCx, EvalError, invalid};
use mlc_ir::ops::VisionOp;
use mlc_ir::ops::vision::{RoiPoolMode, conv_out_len};
use mlc_ir::{DType, Tensor};
use num_traits::Float;

pub fn eval(
    op: &VisionOp,
    inputs: &[Option<&Tensor>],
    _cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    let out = match op {
        VisionOp::NonMaxSuppression { center_point_box } => {
            non_max_suppression(inputs, *center_point_box)?
        }
        VisionOp::RoiAlign {
            mode,
            output_height,
            output_width,
            sampling_ratio,
            spatial_scale,
            half_pixel,
        } => roi_align(
            input(inputs, 0)?,
            input(inputs, 1)?,
            input(inputs, 2)?,
            &RoiAlignParams {
                mode: *mode,
                out_h: *output_height,
                out_w: *output_width,
                sampling_ratio: *sampling_ratio,
                scale: f64::from(*spatial_scale),
                half_pixel: *half_pixel,
            },
        )?,
        VisionOp::MaxRoiPool {
            pooled_shape,
            spatial_scale,
        } => max_roi_pool(
            input(inputs, 0)?,
            input(inputs, 1)?,
            *pooled_shape,
            f64::from(*spatial_scale),
        )?,
        VisionOp::MaxUnpool {
            kernel_shape,
            strides,
            pads,
            output_shape,
        } => {
            let out_shape = match output_shape {
                Some(s) => Some(s.clone()),
                None => opt_input(inputs, 2).map(shape_input).transpose()?,
            };
            max_unpool(
                input(inputs, 0)?,
                input(inputs, 1)?,
                kernel_shape,
                strides,
                pads,
                out_shape,
            )?
        }
        VisionOp::Col2Im {
            image_shape,
            block_shape,
            dilations,
            pads,
            strides,
        } => {
            let image = match image_shape {
                Some(s) => s.clone(),
                None => shape_input(input(inputs, 1)?)?,
            };
            let block = match block_shape {
                Some(s) => s.clone(),
                None => shape_input(input(inputs, 2)?)?,
            };
            col2im(input(inputs, 0)?, &image, &block, dilations, pads, strides)?
        }
        VisionOp::DeformConv {
            strides,
            dilations,
            pads,
            group,
            offset_group,
        } => deform_conv(
            inputs,
            &ConvParams {
                strides,
                dilations,
                pads,
                group: *group,
                offset_group: *offset_group,
            },
        )?,
        VisionOp::AffineGrid {
            align_corners,
            size,
        } => {
            let size = match size {
                Some(s) => s.clone(),
                None => shape_input(input(inputs, 1)?)?,
            };
            affine_grid(input(inputs, 0)?, &size, *align_corners)?
        }
    };
    Ok(vec![out])
}

fn input<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, EvalError> {
    opt_input(inputs, i).ok_or_else(|| invalid(format!("input {i} is required")))
}

fn opt_input<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

/// A shape-like i64 input as sizes.
fn shape_input(t: &Tensor) -> Result<Vec<usize>, EvalError> {
    t.to_i64_vec()?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| invalid(format!("negative size {d}"))))
        .collect()
}

/// The first element of an optional scalar input, if it is present and not empty.
fn first_f64(inputs: &[Option<&Tensor>], i: usize) -> Result<Option<f64>, EvalError> {
    Ok(match opt_input(inputs, i) {
        Some(t) => t.to_f64_vec()?.first().copied(),
        None => None,
    })
}

/// Builds a tensor of `dtype` from f64 values.
fn write(shape: &[usize], v: Vec<f64>, dtype: DType) -> Result<Tensor, EvalError> {
    Ok(Tensor::from_vec(shape, v)?.cast(dtype)?)
}

/// Row-major multi-index of flat index `i` in `dims`.
fn unravel(mut i: usize, dims: &[usize], out: &mut [usize]) {
    for (o, &d) in out.iter_mut().zip(dims).rev() {
        *o = i % d.max(1);
        i /= d.max(1);
    }
}

/// The value at `pos` of a row-major volume of `dims`, 0 outside it.
fn at(data: &[f64], dims: &[usize], pos: &[i64]) -> f64 {
    let mut flat = 0usize;
    for (&p, &d) in pos.iter().zip(dims) {
        if p < 0 || p as usize >= d {
            return 0.0;
        }
        flat = flat * d + p as usize;
    }
    data[flat]
}

// ---------------------------------------------------------------------------------------------
// Non-max suppression

fn non_max_suppression(
    inputs: &[Option<&Tensor>],
    center_point_box: bool,
) -> Result<Tensor, EvalError> {
    let boxes = input(inputs, 0)?;
    let scores = input(inputs, 1)?;
    let (bs, ss) = (boxes.shape(), scores.shape());
    if bs.len() != 3 || bs[2] != 4 || ss.len() != 3 || ss[0] != bs[0] || ss[2] != bs[1] {
        return Err(invalid(format!(
            "non_max_suppression boxes {bs:?} and scores {ss:?} do not fit"
        )));
    }
    let max_out = match opt_input(inputs, 2) {
        Some(t) => t.to_i64_vec()?.first().map_or(0, |&v| v.max(0) as usize),
        None => 0,
    };
    let iou = first_f64(inputs, 3)?.unwrap_or(0.0);
    let score_min = first_f64(inputs, 4)?;
    let (b, c, n) = (ss[0], ss[1], ss[2]);
    let score_v = scores.to_f64_vec()?;
    let box_v = boxes.to_f64_vec()?;
    let mut out: Vec<i64> = Vec::new();
    for bi in 0..b {
        let bx = &box_v[bi * n * 4..(bi + 1) * n * 4];
        let corners = |i: usize| -> [f64; 4] {
            let v = [bx[4 * i], bx[4 * i + 1], bx[4 * i + 2], bx[4 * i + 3]];
            box_corners(v, center_point_box)
        };
        for ci in 0..c {
            let sc = &score_v[(bi * c + ci) * n..(bi * c + ci + 1) * n];
            let mut cand: Vec<usize> = (0..n)
                .filter(|&i| score_min.is_none_or(|t| sc[i] > t))
                .collect();
            // Descending score; the stable sort keeps the lower index first among equals.
            cand.sort_by(|&i, &j| {
                sc[j]
                    .partial_cmp(&sc[i])
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            let mut kept: Vec<usize> = Vec::new();
            for i in cand {
                if kept.len() >= max_out {
                    break;
                }
                let suppressed = kept.iter().any(|&k| {
                    if boxes.dtype() == DType::F64 {
                        overlaps(corners(i), corners(k), iou)
                    } else {
                        overlaps(
                            corners(i).map(|v| v as f32),
                            corners(k).map(|v| v as f32),
                            iou as f32,
                        )
                    }
                });
                if !suppressed {
                    kept.push(i);
                    out.extend([bi as i64, ci as i64, i as i64]);
                }
            }
        }
    }
    Ok(Tensor::from_vec(&[out.len() / 3, 3], out)?)
}

/// A box as `[x_min, x_max, y_min, y_max]`. Corner boxes `[y1, x1, y2, x2]` may name their
/// corners in either order; center boxes are `[x_center, y_center, width, height]`.
fn box_corners(b: [f64; 4], center_point_box: bool) -> [f64; 4] {
    if center_point_box {
        let (hw, hh) = (b[2] / 2.0, b[3] / 2.0);
        [b[0] - hw, b[0] + hw, b[1] - hh, b[1] + hh]
    } else {
        [
            b[1].min(b[3]),
            b[1].max(b[3]),
            b[0].min(b[2]),
            b[0].max(b[2]),
        ]
    }
}

/// Whether the IoU of two boxes (as [`box_corners`]) exceeds `threshold`.
fn overlaps<F: Float>(a: [F; 4], b: [F; 4], threshold: F) -> bool {
    let (x0, x1) = (a[0].max(b[0]), a[1].min(b[1]));
    let (y0, y1) = (a[2].max(b[2]), a[3].min(b[3]));
    if x1 <= x0 || y1 <= y0 {
        return false;
    }
    let inter = (x1 - x0) * (y1 - y0);
    let area_a = (a[1] - a[0]) * (a[3] - a[2]);
    let area_b = (b[1] - b[0]) * (b[3] - b[2]);
    let union = area_a + area_b - inter;
    let zero = F::zero();
    if inter <= zero || area_a <= zero || area_b <= zero || union <= zero {
        return false;
    }
    inter / union > threshold
}

// ---------------------------------------------------------------------------------------------
// RoI align and RoI max pooling

struct RoiAlignParams {
    mode: RoiPoolMode,
    out_h: usize,
    out_w: usize,
    sampling_ratio: usize,
    scale: f64,
    half_pixel: bool,
}

/// The four taps of one bilinear sample: flat offsets into a plane and their weights.
type Taps = [(usize, f64); 4];

/// Bilinear taps at `(y, x)` of an `h x w` plane; all-zero weights outside `[-1, h] x [-1, w]`.
fn bilinear_taps(mut y: f64, mut x: f64, h: usize, w: usize) -> Taps {
    if y < -1.0 || y > h as f64 || x < -1.0 || x > w as f64 || h == 0 || w == 0 {
        return [(0, 0.0); 4];
    }
    y = y.max(0.0);
    x = x.max(0.0);
    let (mut y_lo, mut x_lo) = (y as usize, x as usize);
    let y_hi = if y_lo >= h - 1 {
        y_lo = h - 1;
        y = y_lo as f64;
        y_lo
    } else {
        y_lo + 1
    };
    let x_hi = if x_lo >= w - 1 {
        x_lo = w - 1;
        x = x_lo as f64;
        x_lo
    } else {
        x_lo + 1
    };
    let (ly, lx) = (y - y_lo as f64, x - x_lo as f64);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    [
        (y_lo * w + x_lo, hy * hx),
        (y_lo * w + x_hi, hy * lx),
        (y_hi * w + x_lo, ly * hx),
        (y_hi * w + x_hi, ly * lx),
    ]
}

fn roi_align(
    x: &Tensor,
    rois: &Tensor,
    batch: &Tensor,
    p: &RoiAlignParams,
) -> Result<Tensor, EvalError> {
    let xs = x.shape();
    let (rs, bs) = (rois.shape(), batch.shape());
    if xs.len() != 4 || rs.len() != 2 || rs[1] != 4 || bs.len() != 1 || bs[0] != rs[0] {
        return Err(invalid(format!(
            "roi_align input {xs:?}, rois {rs:?} and batch indices {bs:?} do not fit"
        )));
    }
    let (c, h, w) = (xs[1], xs[2], xs[3]);
    let (oh, ow) = (p.out_h, p.out_w);
    let xv = x.to_f64_vec()?;
    let rv = rois.to_f64_vec()?;
    let bv = batch.to_i64_vec()?;
    let mut out = vec![0.0; rs[0] * c * oh * ow];
    for (r, roi) in rv.chunks_exact(4).enumerate() {
        let bi = usize::try_from(bv[r])
            .ok()
            .filter(|&b| b < xs[0])
            .ok_or_else(|| invalid(format!("batch index {} out of range", bv[r])))?;
        let offset = if p.half_pixel { 0.5 } else { 0.0 };
        let [x0, y0, x1, y1] = [0, 1, 2, 3].map(|i| roi[i] * p.scale - offset);
        let (mut roi_w, mut roi_h) = (x1 - x0, y1 - y0);
        if !p.half_pixel {
            // Malformed RoIs are forced to 1x1.
            roi_w = roi_w.max(1.0);
            roi_h = roi_h.max(1.0);
        }
        let (bin_h, bin_w) = (roi_h / oh as f64, roi_w / ow as f64);
        let grid = |ratio: usize, bin: f64| -> i64 {
            if ratio > 0 {
                ratio as i64
            } else {
                bin.ceil() as i64
            }
        };
        let (gh, gw) = (grid(p.sampling_ratio, bin_h), grid(p.sampling_ratio, bin_w));
        let count = (gh * gw).max(1) as f64;
        let (gh, gw) = (gh.max(0) as usize, gw.max(0) as usize);
        // The sample taps of every bin, shared by all channels.
        let mut taps: Vec<Taps> = Vec::with_capacity(oh * ow * gh * gw);
        for ph in 0..oh {
            for pw in 0..ow {
                for iy in 0..gh {
                    let yy = y0 + ph as f64 * bin_h + (iy as f64 + 0.5) * bin_h / gh as f64;
                    for ix in 0..gw {
                        let xx = x0 + pw as f64 * bin_w + (ix as f64 + 0.5) * bin_w / gw as f64;
                        taps.push(bilinear_taps(yy, xx, h, w));
                    }
                }
            }
        }
        let per_bin = gh * gw;
        for ch in 0..c {
            let plane = &xv[(bi * c + ch) * h * w..(bi * c + ch + 1) * h * w];
            for bin in 0..oh * ow {
                let samples = taps[bin * per_bin..(bin + 1) * per_bin].iter();
                let v = match p.mode {
                    RoiPoolMode::Avg => {
                        samples
                            .map(|t| t.iter().map(|&(i, wt)| wt * plane[i]).sum::<f64>())
                            .sum::<f64>()
                            / count
                    }
                    // Max mode takes the largest weighted tap, as the reference does.
                    RoiPoolMode::Max => samples
                        .map(|t| {
                            t.iter()
                                .map(|&(i, wt)| wt * plane[i])
                                .fold(f64::NEG_INFINITY, f64::max)
                        })
                        .reduce(f64::max)
                        .unwrap_or(0.0),
                };
                out[((r * c + ch) * oh * ow) + bin] = v;
            }
        }
    }
    write(&[rs[0], c, oh, ow], out, x.dtype())
}

fn max_roi_pool(
    x: &Tensor,
    rois: &Tensor,
    pooled: [usize; 2],
    scale: f64,
) -> Result<Tensor, EvalError> {
    let (xs, rs) = (x.shape(), rois.shape());
    if xs.len() != 4 || rs.len() != 2 || rs[1] != 5 {
        return Err(invalid(format!(
            "max_roi_pool input {xs:?} and rois {rs:?} do not fit"
        )));
    }
    let (c, h, w) = (xs[1], xs[2] as i64, xs[3] as i64);
    let [ph_n, pw_n] = pooled;
    let xv = x.to_f64_vec()?;
    let rv = rois.to_f64_vec()?;
    let mut out = vec![0.0; rs[0] * c * ph_n * pw_n];
    for (r, roi) in rv.chunks_exact(5).enumerate() {
        let bi = Some(roi[0])
            .filter(|b| *b >= 0.0 && (*b as usize) < xs[0])
            .ok_or_else(|| invalid(format!("batch index {} out of range", roi[0])))?
            as usize;
        let [x0, y0, x1, y1] = [1, 2, 3, 4].map(|i| (roi[i] * scale).round() as i64);
        let roi_h = (y1 - y0 + 1).max(1) as f64;
        let roi_w = (x1 - x0 + 1).max(1) as f64;
        let (bin_h, bin_w) = (roi_h / ph_n as f64, roi_w / pw_n as f64);
        let clip = |v: i64, hi: i64| v.clamp(0, hi);
        for ch in 0..c {
            let plane = &xv[(bi * c + ch) * (h * w) as usize..];
            for ph in 0..ph_n {
                let hs = clip((ph as f64 * bin_h).floor() as i64 + y0, h);
                let he = clip(((ph + 1) as f64 * bin_h).ceil() as i64 + y0, h);
                for pw in 0..pw_n {
                    let ws = clip((pw as f64 * bin_w).floor() as i64 + x0, w);
                    let we = clip(((pw + 1) as f64 * bin_w).ceil() as i64 + x0, w);
                    let mut v = if he <= hs || we <= ws {
                        0.0
                    } else {
                        f64::NEG_INFINITY
                    };
                    for yy in hs..he {
                        for xx in ws..we {
                            v = v.max(plane[(yy * w + xx) as usize]);
                        }
                    }
                    out[((r * c + ch) * ph_n + ph) * pw_n + pw] = v;
                }
            }
        }
    }
    write(&[rs[0], c, ph_n, pw_n], out, x.dtype())
}

// ---------------------------------------------------------------------------------------------
// Max unpooling and col2im

fn max_unpool(
    x: &Tensor,
    indices: &Tensor,
    kernel: &[usize],
    strides: &[usize],
    pads: &[usize],
    output_shape: Option<Vec<usize>>,
) -> Result<Tensor, EvalError> {
    let xs = x.shape();
    let n = kernel.len();
    if xs.len() != n + 2 || indices.shape() != xs || strides.len() != n || pads.len() != 2 * n {
        return Err(invalid(format!(
            "max_unpool input {xs:?} and indices {:?} do not fit kernel {kernel:?}",
            indices.shape()
        )));
    }
    // The default unpooled shape; indices are flat offsets into it.
    let mut inner = xs[..2].to_vec();
    for i in 0..n {
        let full = xs[i + 2].saturating_sub(1) * strides[i] + kernel[i];
        inner.push(
            full.checked_sub(pads[i] + pads[n + i])
                .ok_or_else(|| invalid("max_unpool pads exceed the output"))?,
        );
    }
    let out_shape = output_shape.unwrap_or_else(|| inner.clone());
    if out_shape.len() != inner.len() || out_shape.iter().zip(&inner).any(|(o, i)| o < i) {
        return Err(invalid(format!(
            "max_unpool output shape {out_shape:?} is smaller than {inner:?}"
        )));
    }
    let total: usize = inner.iter().product();
    let mut y = vec![0.0; total];
    for (v, i) in x.to_f64_vec()?.into_iter().zip(indices.to_i64_vec()?) {
        let slot = usize::try_from(i)
            .ok()
            .filter(|&i| i < total)
            .ok_or_else(|| invalid(format!("max_unpool index {i} out of range")))?;
        y[slot] = v;
    }
    // Zero-extend each axis from the default shape to the requested one.
    let mut out = vec![0.0; out_shape.iter().product()];
    let mut idx = vec![0; inner.len()];
    for (flat, v) in y.into_iter().enumerate() {
        unravel(flat, &inner, &mut idx);
        let dst = idx
            .iter()
            .zip(&out_shape)
            .fold(0, |acc, (&i, &d)| acc * d + i);
        out[dst] = v;
    }
    write(&out_shape, out, x.dtype())
}

fn col2im(
    x: &Tensor,
    image: &[usize],
    block: &[usize],
    dilations: &[usize],
    pads: &[usize],
    strides: &[usize],
) -> Result<Tensor, EvalError> {
    let xs = x.shape();
    let n = image.len();
    let or = |v: &[usize], len: usize, d: usize| -> Vec<usize> {
        if v.is_empty() {
            vec![d; len]
        } else {
            v.to_vec()
        }
    };
    let (dil, pads, strides) = (or(dilations, n, 1), or(pads, 2 * n, 0), or(strides, n, 1));
    let bl: usize = block.iter().product();
    if xs.len() != 3 || block.len() != n || bl == 0 || !xs[1].is_multiple_of(bl) {
        return Err(invalid(format!(
            "col2im input {xs:?} does not fit blocks {block:?} and image {image:?}"
        )));
    }
    if dil.len() != n || pads.len() != 2 * n || strides.len() != n {
        return Err(invalid("col2im attributes do not match the image rank"));
    }
    // The number of block positions along each axis.
    let mut cols = Vec::with_capacity(n);
    for i in 0..n {
        let span = dil[i] * (block[i].max(1) - 1) + 1;
        let padded = image[i] + pads[i] + pads[n + i];
        if padded < span || strides[i] == 0 {
            return Err(invalid("col2im blocks do not fit the image"));
        }
        cols.push((padded - span) / strides[i] + 1);
    }
    let l: usize = cols.iter().product();
    if xs[2] != l {
        return Err(invalid(format!(
            "col2im input {xs:?} has {} blocks, expected {l}",
            xs[2]
        )));
    }
    let (batch, c) = (xs[0], xs[1] / bl);
    let plane: usize = image.iter().product();
    let xv = x.to_f64_vec()?;
    let mut out = vec![0.0; batch * c * plane];
    let (mut off, mut col, mut pos) = (vec![0; n], vec![0; n], vec![0i64; n]);
    for nc in 0..batch * c {
        let img = &mut out[nc * plane..(nc + 1) * plane];
        for k in 0..bl {
            unravel(k, block, &mut off);
            for j in 0..l {
                unravel(j, &cols, &mut col);
                for i in 0..n {
                    pos[i] = (col[i] * strides[i] + off[i] * dil[i]) as i64 - pads[i] as i64;
                }
                if pos
                    .iter()
                    .zip(image)
                    .all(|(&p, &d)| p >= 0 && (p as usize) < d)
                {
                    let dst = pos
                        .iter()
                        .zip(image)
                        .fold(0, |a, (&p, &d)| a * d + p as usize);
                    img[dst] += xv[(nc * bl + k) * l + j];
                }
            }
        }
    }
    let mut shape = vec![batch, c];
    shape.extend_from_slice(image);
    write(&shape, out, x.dtype())
}

// ---------------------------------------------------------------------------------------------
// Deformable convolution and affine grids

struct ConvParams<'a> {
    strides: &'a [usize],
    dilations: &'a [usize],
    pads: &'a [usize],
    group: usize,
    offset_group: usize,
}

/// Multilinear interpolation of a volume at a fractional position; taps outside are 0.
fn sample(data: &[f64], dims: &[usize], pos: &[f64], corner: &mut [i64]) -> f64 {
    let n = dims.len();
    let mut total = 0.0;
    for bits in 0..1usize << n {
        let mut weight = 1.0;
        for d in 0..n {
            let lo = pos[d].floor();
            let frac = pos[d] - lo;
            if bits >> d & 1 == 1 {
                corner[d] = lo as i64 + 1;
                weight *= frac;
            } else {
                corner[d] = lo as i64;
                weight *= 1.0 - frac;
            }
        }
        if weight != 0.0 {
            total += weight * at(data, dims, corner);
        }
    }
    total
}

fn deform_conv(inputs: &[Option<&Tensor>], p: &ConvParams) -> Result<Tensor, EvalError> {
    let x = input(inputs, 0)?;
    let w = input(inputs, 1)?;
    let offset = input(inputs, 2)?;
    let (xs, ws, os) = (x.shape(), w.shape(), offset.shape());
    let r = xs.len();
    let nd = r.saturating_sub(2);
    let bad = || {
        invalid(format!(
            "deform_conv input {xs:?}, weight {ws:?} and offset {os:?} do not fit"
        ))
    };
    if r < 3 || ws.len() != r || os.len() != r || os[0] != xs[0] {
        return Err(bad());
    }
    let (batch, ic, oc) = (xs[0], xs[1], ws[0]);
    let (g, og) = (p.group, p.offset_group);
    if g == 0 || og == 0 || ic != ws[1] * g || oc % g != 0 || ic % og != 0 {
        return Err(bad());
    }
    let kdims = &ws[2..];
    let kn: usize = kdims.iter().product();
    if os[1] != og * kn * nd {
        return Err(bad());
    }
    let odims = &os[2..];
    for i in 0..nd {
        let pad = p.pads[i] + p.pads[nd + i];
        let expect = conv_out_len(xs[i + 2], kdims[i], p.strides[i], p.dilations[i], pad);
        if expect != Some(odims[i]) {
            return Err(bad());
        }
    }
    let on: usize = odims.iter().product();
    let mask = opt_input(inputs, 4);
    if let Some(m) = mask
        && (m.shape().len() != r
            || m.shape()[0] != batch
            || m.shape()[1] != og * kn
            || &m.shape()[2..] != odims)
    {
        return Err(bad());
    }
    let bias = opt_input(inputs, 3).map(Tensor::to_f64_vec).transpose()?;
    if bias.as_ref().is_some_and(|b| b.len() != oc) {
        return Err(bad());
    }
    let xv = x.to_f64_vec()?;
    let wv = w.to_f64_vec()?;
    let ov = offset.to_f64_vec()?;
    let mv = mask.map(Tensor::to_f64_vec).transpose()?;
    let idims = &xs[2..];
    let iplane: usize = idims.iter().product();
    let (icg, ocg, ico) = (ic / g, oc / g, ic / og);
    let mut out = vec![0.0; batch * oc * on];
    let (mut o, mut k) = (vec![0; nd], vec![0; nd]);
    let (mut pos, mut corner) = (vec![0.0; nd], vec![0i64; nd]);
    for b in 0..batch {
        for oi in 0..on {
            unravel(oi, odims, &mut o);
            for ci in 0..ic {
                let grp = ci / icg;
                let ogi = ci / ico;
                let plane = &xv[(b * ic + ci) * iplane..(b * ic + ci + 1) * iplane];
                for ki in 0..kn {
                    unravel(ki, kdims, &mut k);
                    let tap = ogi * kn + ki;
                    for d in 0..nd {
                        let base =
                            (o[d] * p.strides[d] + k[d] * p.dilations[d]) as f64 - p.pads[d] as f64;
                        pos[d] = base + ov[((b * og * kn + tap) * nd + d) * on + oi];
                    }
                    let m = mv
                        .as_ref()
                        .map_or(1.0, |m| m[(b * og * kn + tap) * on + oi]);
                    let v = m * sample(plane, idims, &pos, &mut corner);
                    if v == 0.0 {
                        continue;
                    }
                    for oci in grp * ocg..(grp + 1) * ocg {
                        out[(b * oc + oci) * on + oi] += v * wv[(oci * icg + ci % icg) * kn + ki];
                    }
                }
            }
            if let Some(bias) = &bias {
                for (oci, bv) in bias.iter().enumerate() {
                    out[(b * oc + oci) * on + oi] += bv;
                }
            }
        }
    }
    let mut shape = vec![batch, oc];
    shape.extend_from_slice(odims);
    write(&shape, out, x.dtype())
}

fn affine_grid(theta: &Tensor, size: &[usize], align_corners: bool) -> Result<Tensor, EvalError> {
    let ts = theta.shape();
    let nd = size.len().saturating_sub(2);
    if !(nd == 2 || nd == 3) || ts != [size[0], nd, nd + 1] {
        return Err(invalid(format!(
            "affine_grid theta {ts:?} does not fit size {size:?}"
        )));
    }
    let dims = &size[2..];
    let tv = theta.to_f64_vec()?;
    // Normalized coordinates of sample `i` of `n` along one axis.
    let coord = |i: usize, n: usize| -> f64 {
        if align_corners {
            if n <= 1 {
                -1.0
            } else {
                -1.0 + i as f64 * (2.0 / (n - 1) as f64)
            }
        } else {
            let step = 2.0 / n as f64;
            -1.0 + step / 2.0 + i as f64 * step
        }
    };
    let points: usize = dims.iter().product();
    let mut out = Vec::with_capacity(size[0] * points * nd);
    let mut idx = vec![0; nd];
    // Homogeneous base point (x, y[, z], 1): x runs along the last axis.
    let mut base = vec![1.0; nd + 1];
    for t in tv.chunks_exact(nd * (nd + 1)) {
        for pi in 0..points {
            unravel(pi, dims, &mut idx);
            for d in 0..nd {
                base[d] = coord(idx[nd - 1 - d], dims[nd - 1 - d]);
            }
            for row in t.chunks_exact(nd + 1) {
                out.push(row.iter().zip(&base).map(|(a, b)| a * b).sum());
            }
        }
    }
    let mut shape = vec![size[0]];
    shape.extend_from_slice(dims);
    shape.push(nd);
    write(&shape, out, theta.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_vec(shape, v.to_vec()).expect("fits")
    }

    fn run(op: VisionOp, inputs: &[Option<&Tensor>]) -> Vec<f64> {
        let cx = EvalCx {
            regions: &[],
            output_types: &[],
        };
        eval(&op, inputs, &cx).expect("evaluates")[0]
            .to_f64_vec()
            .expect("numeric")
    }

    #[test]
    fn nms_suppresses_overlaps() {
        // Three unit boxes: the second overlaps the first by 0.9 of its width; the third is apart.
        let boxes = f32s(
            &[1, 3, 4],
            &[0.0, 0.0, 1.0, 1.0, 0.0, 0.1, 1.0, 1.1, 0.0, 10.0, 1.0, 11.0],
        );
        let scores = f32s(&[1, 1, 3], &[0.9, 0.95, 0.3]);
        let max = Tensor::from_vec(&[1], vec![3i64]).expect("fits");
        let iou = f32s(&[1], &[0.5]);
        let op = VisionOp::NonMaxSuppression {
            center_point_box: false,
        };
        let out = run(op, &[Some(&boxes), Some(&scores), Some(&max), Some(&iou)]);
        assert_eq!(out, vec![0.0, 0.0, 1.0, 0.0, 0.0, 2.0]);
    }

    #[test]
    fn col2im_sums_overlaps() {
        // One channel, 2x2 blocks over a 3x3 image with stride 1: 4 block positions.
        let x = f32s(&[1, 4, 4], &[1.0; 16]);
        let op = VisionOp::Col2Im {
            image_shape: Some(vec![3, 3]),
            block_shape: Some(vec![2, 2]),
            dilations: vec![],
            pads: vec![],
            strides: vec![],
        };
        let out = run(op, &[Some(&x)]);
        assert_eq!(out, vec![1.0, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0]);
    }

    #[test]
    fn affine_grid_identity() {
        // The identity transform reproduces the base grid: x along width, y along height.
        let theta = f32s(&[1, 2, 3], &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        let op = VisionOp::AffineGrid {
            align_corners: true,
            size: Some(vec![1, 1, 2, 3]),
        };
        let out = run(op, &[Some(&theta)]);
        let want = [
            -1.0, -1.0, 0.0, -1.0, 1.0, -1.0, //
            -1.0, 1.0, 0.0, 1.0, 1.0, 1.0,
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn roi_align_constant_image() {
        // Average pooling of a constant image inside the image is that constant.
        let x = f32s(&[1, 1, 4, 4], &[2.0; 16]);
        let rois = f32s(&[1, 4], &[0.0, 0.0, 3.0, 3.0]);
        let idx = Tensor::from_vec(&[1], vec![0i64]).expect("fits");
        let op = VisionOp::RoiAlign {
            mode: RoiPoolMode::Avg,
            output_height: 2,
            output_width: 2,
            sampling_ratio: 2,
            spatial_scale: 1.0,
            half_pixel: false,
        };
        let out = run(op, &[Some(&x), Some(&rois), Some(&idx)]);
        assert!(out.iter().all(|&v| (v - 2.0).abs() < 1e-9), "{out:?}");
    }
}
