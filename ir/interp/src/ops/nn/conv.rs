//! Convolution and transposed convolution, N-D and grouped, as im2col/col2im around one GEMM.

use super::{Acc, Float, for_each_index, strides_of, with_float};
use crate::{EvalError, invalid};
use mlc_ir::Tensor;
use mlc_ir::ops::NnOp;
use mlc_ir::ops::nn::{AutoPad, conv_transpose_dim, window_dim};

pub(super) fn eval(
    op: &NnOp,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
) -> Result<Tensor, EvalError> {
    if x.rank() < 3 || w.rank() != x.rank() {
        return Err(invalid(format!(
            "conv input {x:?} and weight {w:?} must be [N, C, spatial...] of one rank"
        )));
    }
    with_float!(x.dtype(), F => {
        let (xv, wv) = (F::read(x), F::read(w));
        let bv = b.map(F::read);
        let (shape, out) = match op {
            NnOp::Conv { strides, dilations, pads, group, auto_pad } => {
                let g = Geom { strides, dilations, group: *group };
                conv::<F>(&xv, x.shape(), &wv, w.shape(), bv.as_deref(), &g, pads, *auto_pad)?
            }
            NnOp::ConvTranspose { strides, dilations, pads, output_padding, group, auto_pad, output_shape } => {
                let g = Geom { strides, dilations, group: *group };
                let t = TransposeGeom { pads, output_padding, auto_pad: *auto_pad, output_shape: output_shape.as_deref() };
                conv_transpose::<F>(&xv, x.shape(), &wv, w.shape(), bv.as_deref(), &g, &t)?
            }
            _ => unreachable!("the caller routes only conv ops here"),
        };
        F::write(out, &shape, x.dtype())
    })
}

/// What conv and conv_transpose share.
struct Geom<'a> {
    strides: &'a [usize],
    dilations: &'a [usize],
    group: usize,
}

struct TransposeGeom<'a> {
    pads: &'a [i64],
    output_padding: &'a [usize],
    auto_pad: AutoPad,
    output_shape: Option<&'a [usize]>,
}

fn check_attrs(k: usize, g: &Geom, pads: usize) -> Result<(), EvalError> {
    if g.strides.len() != k || g.dilations.len() != k || pads != 2 * k {
        return Err(invalid(format!(
            "conv attributes do not match {k} spatial dims"
        )));
    }
    if g.group == 0 {
        return Err(invalid("group must be positive"));
    }
    Ok(())
}

fn add_bias<F: Float>(
    out: &mut [F],
    b: Option<&[F]>,
    n: usize,
    m: usize,
    p: usize,
) -> Result<(), EvalError> {
    if let Some(b) = b {
        if b.len() != m {
            return Err(invalid(format!(
                "bias has {} elements, expected {m}",
                b.len()
            )));
        }
        for ni in 0..n {
            for (mi, &bv) in b.iter().enumerate() {
                out[(ni * m + mi) * p..(ni * m + mi + 1) * p]
                    .iter_mut()
                    .for_each(|v| *v += bv);
            }
        }
    }
    Ok(())
}

fn conv<F: Float>(
    x: &[F],
    xs: &[usize],
    w: &[F],
    ws: &[usize],
    b: Option<&[F]>,
    g: &Geom,
    pads: &[usize],
    auto_pad: AutoPad,
) -> Result<(Vec<usize>, Vec<F>), EvalError> {
    let k = xs.len() - 2;
    check_attrs(k, g, pads.len())?;
    let (n, c, m, cg) = (xs[0], xs[1], ws[0], ws[1]);
    let group = g.group;
    if cg * group != c || m % group != 0 {
        return Err(invalid(format!(
            "conv input {xs:?} and weight {ws:?} do not fit group {group}"
        )));
    }
    let (ins, ks) = (&xs[2..], &ws[2..]);
    let mut outs = Vec::with_capacity(k);
    let mut pb = Vec::with_capacity(k);
    for i in 0..k {
        let (o, b, _) = window_dim(
            auto_pad,
            ins[i],
            ks[i],
            g.strides[i],
            g.dilations[i],
            (pads[i], pads[k + i]),
            false,
        )
        .map_err(invalid)?;
        outs.push(o);
        pb.push(b);
    }
    let (kk, p, pin, mg) = (
        ks.iter().product::<usize>(),
        outs.iter().product::<usize>(),
        ins.iter().product::<usize>(),
        m / group,
    );
    let rows = cg * kk;
    // A 1x1 kernel with unit strides and no padding reads the input as its own column matrix.
    let direct =
        kk == 1 && g.strides.iter().all(|&s| s == 1) && pb.iter().all(|&v| v == 0) && outs == ins;
    let mut col = vec![F::zero(); if direct { 0 } else { rows * p }];
    let mut out = vec![F::zero(); n * m * p];
    let geo = Im2Col {
        ins,
        outs: &outs,
        ks,
        strides: g.strides,
        dilations: g.dilations,
        pb: &pb,
    };
    for ni in 0..n {
        for gi in 0..group {
            let xg = &x[(ni * c + gi * cg) * pin..(ni * c + (gi + 1) * cg) * pin];
            if !direct {
                im2col(xg, cg, &geo, &mut col);
            }
            let colref: &[F] = if direct { xg } else { &col };
            let wg = &w[gi * mg * rows..(gi + 1) * mg * rows];
            let og = &mut out[(ni * m + gi * mg) * p..(ni * m + (gi + 1) * mg) * p];
            F::gemm(mg, p, rows, (wg, rows, 1), (colref, p, 1), og);
        }
    }
    add_bias(&mut out, b, n, m, p)?;
    let mut shape = vec![n, m];
    shape.extend(outs);
    Ok((shape, out))
}

/// The geometry of one window sweep: input and output spatial dims, kernel, strides, dilations
/// and begin pads.
struct Im2Col<'a> {
    ins: &'a [usize],
    outs: &'a [usize],
    ks: &'a [usize],
    strides: &'a [usize],
    dilations: &'a [usize],
    pb: &'a [usize],
}

/// Fills `col[(c, kernel offset), output position]` with the input element each kernel tap
/// reads (zero in the padding). The innermost loop runs along the last spatial dim.
fn im2col<F: Float>(x: &[F], cg: usize, geo: &Im2Col, col: &mut [F]) {
    let k = geo.ins.len();
    let last = k - 1;
    let (pin, p, kk) = (
        geo.ins.iter().product::<usize>(),
        geo.outs.iter().product::<usize>(),
        geo.ks.iter().product::<usize>(),
    );
    let in_st = strides_of(geo.ins);
    let (in_l, out_l, s_l) = (
        geo.ins[last] as isize,
        geo.outs[last],
        geo.strides[last] as isize,
    );
    for ci in 0..cg {
        let xc = &x[ci * pin..(ci + 1) * pin];
        let mut kidx = 0;
        for_each_index(geo.ks, |koff| {
            let row = &mut col[(ci * kk + kidx) * p..(ci * kk + kidx + 1) * p];
            let mut r = 0;
            for_each_index(&geo.outs[..last], |o| {
                let dst = &mut row[r * out_l..(r + 1) * out_l];
                r += 1;
                let mut base = 0isize;
                for d in 0..last {
                    let pos = (o[d] * geo.strides[d] + koff[d] * geo.dilations[d]) as isize
                        - geo.pb[d] as isize;
                    if pos < 0 || pos >= geo.ins[d] as isize {
                        dst.fill(F::zero());
                        return;
                    }
                    base += pos * in_st[d] as isize;
                }
                let off = (koff[last] * geo.dilations[last]) as isize - geo.pb[last] as isize;
                for (ol, v) in dst.iter_mut().enumerate() {
                    let pos = ol as isize * s_l + off;
                    *v = if pos >= 0 && pos < in_l {
                        xc[(base + pos) as usize]
                    } else {
                        F::zero()
                    };
                }
            });
            kidx += 1;
        });
    }
}

fn conv_transpose<F: Float>(
    x: &[F],
    xs: &[usize],
    w: &[F],
    ws: &[usize],
    b: Option<&[F]>,
    g: &Geom,
    t: &TransposeGeom,
) -> Result<(Vec<usize>, Vec<F>), EvalError> {
    let k = xs.len() - 2;
    check_attrs(k, g, t.pads.len())?;
    if t.output_padding.len() != k || t.output_shape.is_some_and(|o| o.len() != k) {
        return Err(invalid(format!(
            "conv_transpose attributes do not match {k} spatial dims"
        )));
    }
    let (n, c, mg) = (xs[0], xs[1], ws[1]);
    let group = g.group;
    if ws[0] != c || c % group != 0 {
        return Err(invalid(format!(
            "conv_transpose input {xs:?} and weight {ws:?} do not fit group {group}"
        )));
    }
    let (cg, m) = (c / group, mg * group);
    let (ins, ks) = (&xs[2..], &ws[2..]);
    let mut outs = Vec::with_capacity(k);
    let mut pb = Vec::with_capacity(k);
    for i in 0..k {
        let (o, b, _) = conv_transpose_dim(
            ins[i],
            ks[i],
            g.strides[i],
            g.dilations[i],
            t.output_padding[i],
            (t.pads[i], t.pads[k + i]),
            t.auto_pad,
            t.output_shape.map(|s| s[i]),
        )
        .map_err(invalid)?;
        outs.push(o);
        pb.push(b);
    }
    let (kk, p, pin) = (
        ks.iter().product::<usize>(),
        outs.iter().product::<usize>(),
        ins.iter().product::<usize>(),
    );
    let rows = mg * kk;
    let mut col = vec![F::zero(); rows * pin];
    let mut out = vec![F::zero(); n * m * p];
    let out_st = strides_of(&outs);
    for ni in 0..n {
        for gi in 0..group {
            let xg = &x[(ni * c + gi * cg) * pin..(ni * c + (gi + 1) * cg) * pin];
            let wg = &w[gi * cg * rows..(gi + 1) * cg * rows];
            col.fill(F::zero());
            // col[(m, kernel offset), input position] = sum_c w[c, (m, offset)] * x[c, position].
            F::gemm(rows, pin, cg, (wg, 1, rows), (xg, pin, 1), &mut col);
            for mi in 0..mg {
                let plane = &mut out[(ni * m + gi * mg + mi) * p..(ni * m + gi * mg + mi + 1) * p];
                let mut kidx = 0;
                for_each_index(ks, |koff| {
                    let row = &col[(mi * kk + kidx) * pin..(mi * kk + kidx + 1) * pin];
                    kidx += 1;
                    let mut ii = 0;
                    for_each_index(ins, |i| {
                        let v = row[ii];
                        ii += 1;
                        let mut o = 0usize;
                        for d in 0..k {
                            let pos =
                                (i[d] * g.strides[d] + koff[d] * g.dilations[d]) as i64 - pb[d];
                            if pos < 0 || pos >= outs[d] as i64 {
                                return;
                            }
                            o += pos as usize * out_st[d];
                        }
                        plane[o] += v;
                    });
                });
            }
        }
    }
    add_bias(&mut out, b, n, m, p)?;
    let mut shape = vec![n, m];
    shape.extend(outs);
    Ok((shape, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    fn iota(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32).collect()
    }

    fn conv_op(strides: &[usize], pads: &[usize], group: usize) -> NnOp {
        NnOp::Conv {
            strides: strides.to_vec(),
            dilations: vec![1; strides.len()],
            pads: pads.to_vec(),
            group,
            auto_pad: AutoPad::NotSet,
        }
    }

    #[test]
    fn conv_pads_strides() {
        // ONNX test_conv_with_strides_padding: 5x7 input 0..35, 3x3 ones kernel, stride 2, pad 1.
        let x = t(&[1, 1, 7, 5], iota(35));
        let w = t(&[1, 1, 3, 3], vec![1.0; 9]);
        let y = eval(&conv_op(&[2, 2], &[1, 1, 1, 1], 1), &x, &w, None).unwrap();
        assert_eq!(y.shape(), &[1, 1, 4, 3]);
        let want = [
            12., 27., 24., 63., 108., 81., 123., 198., 141., 112., 177., 124.,
        ];
        assert_eq!(y.to_f64_vec().unwrap(), want);
    }

    #[test]
    fn conv_groups_bias_1d() {
        // Depthwise 1-D: 2 channels, kernel [1, -1] per channel, bias [10, 20].
        let x = t(&[1, 2, 4], vec![1., 2., 4., 8., 1., 3., 6., 10.]);
        let w = t(&[2, 1, 2], vec![1., -1., 1., -1.]);
        let b = t(&[2], vec![10., 20.]);
        let y = eval(&conv_op(&[1], &[0, 0], 2), &x, &w, Some(&b)).unwrap();
        assert_eq!(y.shape(), &[1, 2, 3]);
        assert_eq!(y.to_f64_vec().unwrap(), vec![9., 8., 6., 18., 17., 16.]);
        // 1x1 grouped conv takes the direct path: group 1 sums the channels.
        let w = t(&[1, 2, 1], vec![1., 1.]);
        let y = eval(&conv_op(&[1], &[0, 0], 1), &x, &w, None).unwrap();
        assert_eq!(y.to_f64_vec().unwrap(), vec![2., 5., 10., 18.]);
    }

    #[test]
    fn conv_same_and_dilation() {
        // SAME_UPPER, 4-long input, kernel 2: pads (0, 1).
        let op = NnOp::Conv {
            strides: vec![1],
            dilations: vec![1],
            pads: vec![0, 0],
            group: 1,
            auto_pad: AutoPad::SameUpper,
        };
        let x = t(&[1, 1, 4], vec![1., 2., 3., 4.]);
        let w = t(&[1, 1, 2], vec![1., 10.]);
        assert_eq!(
            eval(&op, &x, &w, None).unwrap().to_f64_vec().unwrap(),
            vec![21., 32., 43., 4.]
        );
        let op = NnOp::Conv {
            strides: vec![1],
            dilations: vec![2],
            pads: vec![0, 0],
            group: 1,
            auto_pad: AutoPad::NotSet,
        };
        assert_eq!(
            eval(&op, &x, &w, None).unwrap().to_f64_vec().unwrap(),
            vec![31., 42.]
        );
    }

    #[test]
    fn conv_transpose_basic() {
        // ONNX test_convtranspose_1d: x [0,1,2], w ones [1,2,3] -> [[0,1,3,3,2],[0,1,3,3,2]].
        let op = NnOp::ConvTranspose {
            strides: vec![1],
            dilations: vec![1],
            pads: vec![0, 0],
            output_padding: vec![0],
            group: 1,
            auto_pad: AutoPad::NotSet,
            output_shape: None,
        };
        let x = t(&[1, 1, 3], iota(3));
        let w = t(&[1, 2, 3], vec![1.0; 6]);
        let y = eval(&op, &x, &w, None).unwrap();
        assert_eq!(y.shape(), &[1, 2, 5]);
        assert_eq!(
            y.to_f64_vec().unwrap(),
            vec![0., 1., 3., 3., 2., 0., 1., 3., 3., 2.]
        );
        // Stride 2 with output_shape 8: full output is 7, extended by one zero at the end.
        let op = NnOp::ConvTranspose {
            strides: vec![2],
            dilations: vec![1],
            pads: vec![0, 0],
            output_padding: vec![0],
            group: 1,
            auto_pad: AutoPad::NotSet,
            output_shape: Some(vec![8]),
        };
        let w = t(&[1, 1, 3], vec![1., 2., 3.]);
        let y = eval(&op, &x, &w, None).unwrap();
        assert_eq!(
            y.to_f64_vec().unwrap(),
            vec![0., 0., 1., 2., 5., 4., 6., 0.]
        );
    }
}
