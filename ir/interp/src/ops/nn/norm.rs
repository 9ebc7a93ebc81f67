//! Normalization layers: batch (inference), layer, instance, group, RMS, LRN and
//! mean-variance normalization. Moments are computed in the kernel's float type in two passes
//! (mean, then squared deviations), as the ONNX reference does.

use super::{Acc, Float, broadcast_to, req, with_float};
use crate::{EvalCx, EvalError, invalid};
use mlc_ir::Tensor;
use mlc_ir::ops::NnOp;

pub(super) fn eval(
    op: &NnOp,
    inputs: &[Option<&Tensor>],
    cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    let x = req(inputs, 0)?;
    let dt = x.dtype();
    let shape = x.shape();
    with_float!(dt, F => {
        let xv = F::read(x);
        let param = |i: usize| req(inputs, i).map(F::read);
        match op {
            NnOp::BatchNorm { epsilon } => {
                if x.rank() < 2 {
                    return Err(invalid("batch_norm input must be [N, C, ...]"));
                }
                let (scale, bias, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
                let c = shape[1];
                if [&scale, &bias, &mean, &var].iter().any(|v| v.len() != c) {
                    return Err(invalid(format!("batch_norm parameters must have {c} elements")));
                }
                let eps = F::from_f64(*epsilon as f64);
                let inner: usize = shape[2..].iter().product();
                let mut y = xv;
                for (i, chunk) in y.chunks_mut(inner.max(1)).enumerate() {
                    let ch = i % c;
                    let a = scale[ch] / (var[ch] + eps).sqrt();
                    let b = bias[ch] - mean[ch] * a;
                    chunk.iter_mut().for_each(|v| *v = *v * a + b);
                }
                Ok(vec![F::write(y, shape, dt)?])
            }
            NnOp::LayerNorm { axis, epsilon, stat_dtype } => {
                let (y, mean, inv) = layer_norm::<F>(&xv, shape, *axis, *epsilon, req(inputs, 1)?, inputs.get(2).copied().flatten(), false)?;
                let mut stat_shape = shape[..*axis].to_vec();
                stat_shape.resize(shape.len(), 1);
                let mut out = vec![F::write(y, shape, dt)?];
                if cx.n_outputs() > 1 {
                    out.push(F::write(mean, &stat_shape, *stat_dtype)?);
                }
                if cx.n_outputs() > 2 {
                    out.push(F::write(inv, &stat_shape, *stat_dtype)?);
                }
                Ok(out)
            }
            NnOp::RmsNorm { axis, epsilon } => {
                let (y, _, _) = layer_norm::<F>(&xv, shape, *axis, *epsilon, req(inputs, 1)?, None, true)?;
                Ok(vec![F::write(y, shape, dt)?])
            }
            NnOp::InstanceNorm { epsilon } => {
                let (scale, bias) = (param(1)?, param(2)?);
                let c = shape[1];
                if scale.len() != c || bias.len() != c {
                    return Err(invalid(format!("instance_norm parameters must have {c} elements")));
                }
                let y = grouped_norm::<F>(&xv, shape, c, *epsilon, &scale, &bias);
                Ok(vec![F::write(y, shape, dt)?])
            }
            NnOp::GroupNorm { num_groups, epsilon } => {
                let (scale, bias) = (param(1)?, param(2)?);
                let (c, g) = (shape[1], *num_groups);
                if g == 0 || c % g != 0 {
                    return Err(invalid(format!("{c} channels do not split into {g} groups")));
                }
                // Per-group parameters (GroupNormalization-18) apply to every channel of a group.
                let expand = |v: Vec<F>, name: &str| -> Result<Vec<F>, EvalError> {
                    if v.len() == c {
                        Ok(v)
                    } else if v.len() == g {
                        Ok((0..c).map(|ch| v[ch / (c / g)]).collect())
                    } else {
                        Err(invalid(format!("group_norm {name} has {} elements, expected {c} or {g}", v.len())))
                    }
                };
                let (scale, bias) = (expand(scale, "scale")?, expand(bias, "bias")?);
                let y = grouped_norm::<F>(&xv, shape, g, *epsilon, &scale, &bias);
                Ok(vec![F::write(y, shape, dt)?])
            }
            NnOp::Lrn { size, alpha, beta, bias } => {
                let y = lrn::<F>(&xv, shape, *size, *alpha as f64, *beta as f64, *bias as f64)?;
                Ok(vec![F::write(y, shape, dt)?])
            }
            NnOp::MeanVarianceNorm { axes } => {
                let y = mvn::<F>(&xv, shape, axes)?;
                Ok(vec![F::write(y, shape, dt)?])
            }
            _ => unreachable!("the caller routes only normalization ops here"),
        }
    })
}

/// Layer (or, with `rms`, RMS) normalization over dims `axis..`; returns `y`, the means and
/// the inverse standard deviations (one per row).
fn layer_norm<F: Float>(
    x: &[F],
    shape: &[usize],
    axis: usize,
    epsilon: f32,
    scale: &Tensor,
    bias: Option<&Tensor>,
    rms: bool,
) -> Result<(Vec<F>, Vec<F>, Vec<F>), EvalError> {
    if axis >= shape.len().max(1) {
        return Err(invalid(format!("axis {axis} out of range for {shape:?}")));
    }
    let cols: usize = shape[axis..].iter().product();
    let rows: usize = shape[..axis].iter().product();
    // Parameters usually cover the normalized dims only; anything wider broadcasts to x.
    let expand = |t: &Tensor| -> Result<(Vec<F>, bool), EvalError> {
        let s = t.shape();
        let lead = s.iter().take_while(|&&d| d == 1).count();
        if s.len() - lead <= shape.len() - axis {
            let trimmed = &s[lead.min(s.len().saturating_sub(shape.len() - axis))..];
            Ok((broadcast_to(&F::read(t), trimmed, &shape[axis..])?, false))
        } else {
            Ok((broadcast_to(&F::read(t), s, shape)?, true))
        }
    };
    let (sv, s_full) = expand(scale)?;
    let bv = bias.map(expand).transpose()?;
    let eps = F::from_f64(epsilon as f64);
    let n = F::from_f64(cols as f64);
    let mut y = vec![F::zero(); x.len()];
    let mut means = Vec::with_capacity(rows);
    let mut invs = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let mean = if rms {
            F::zero()
        } else {
            row.iter().fold(F::zero(), |a, &v| a + v) / n
        };
        let var = row
            .iter()
            .fold(F::zero(), |a, &v| a + (v - mean) * (v - mean))
            / n;
        let inv = F::one() / (var + eps).sqrt();
        means.push(mean);
        invs.push(inv);
        for (j, (o, &v)) in y[r * cols..(r + 1) * cols].iter_mut().zip(row).enumerate() {
            let i = r * cols + j;
            let s = sv[if s_full { i } else { j }];
            *o = (v - mean) * inv * s;
            if let Some((b, b_full)) = &bv {
                *o += b[if *b_full { i } else { j }];
            }
        }
    }
    Ok((y, means, invs))
}

/// Normalizes each (n, group) block of `C / groups` channels and all spatial dims, then applies
/// per-channel `scale` and `bias`. Instance norm is the case `groups == C`.
fn grouped_norm<F: Float>(
    x: &[F],
    shape: &[usize],
    groups: usize,
    epsilon: f32,
    scale: &[F],
    bias: &[F],
) -> Vec<F> {
    let c = shape[1];
    if c == 0 || groups == 0 {
        return x.to_vec();
    }
    let inner: usize = shape[2..].iter().product();
    let block = c / groups * inner;
    let eps = F::from_f64(epsilon as f64);
    let n = F::from_f64(block as f64);
    let mut y = vec![F::zero(); x.len()];
    for (bi, (xb, yb)) in x
        .chunks(block.max(1))
        .zip(y.chunks_mut(block.max(1)))
        .enumerate()
    {
        let mean = xb.iter().fold(F::zero(), |a, &v| a + v) / n;
        let var = xb
            .iter()
            .fold(F::zero(), |a, &v| a + (v - mean) * (v - mean))
            / n;
        let inv = F::one() / (var + eps).sqrt();
        let first_ch = (bi % groups) * (c / groups);
        for (j, (o, &v)) in yb.iter_mut().zip(xb).enumerate() {
            let ch = first_ch + j / inner.max(1);
            *o = (v - mean) * inv * scale[ch] + bias[ch];
        }
    }
    y
}

/// `x / (bias + alpha/size * sum of squares over the channel window)^beta`; the window covers
/// channels `c - floor((size-1)/2) ..= c + ceil((size-1)/2)`.
fn lrn<F: Float>(
    x: &[F],
    shape: &[usize],
    size: usize,
    alpha: f64,
    beta: f64,
    bias: f64,
) -> Result<Vec<F>, EvalError> {
    if shape.len() < 2 || size == 0 {
        return Err(invalid(
            "lrn needs an [N, C, ...] input and a positive size",
        ));
    }
    let (n, c) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let (lo, hi) = ((size - 1) / 2, (size - 1).div_ceil(2));
    let mut y = vec![F::zero(); x.len()];
    for ni in 0..n {
        for ci in 0..c {
            let (c0, c1) = (ci.saturating_sub(lo), (ci + hi).min(c - 1));
            for i in 0..inner {
                let at = |ch: usize| x[(ni * c + ch) * inner + i].to_f64();
                let sq: f64 = (c0..=c1).map(|ch| at(ch) * at(ch)).sum();
                let d = (bias + alpha / size as f64 * sq).powf(beta);
                y[(ni * c + ci) * inner + i] = F::from_f64(at(ci) / d);
            }
        }
    }
    Ok(y)
}

/// `(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9)` with moments over `axes` (ONNX's function body).
fn mvn<F: Float>(x: &[F], shape: &[usize], axes: &[usize]) -> Result<Vec<F>, EvalError> {
    if axes.iter().any(|&a| a >= shape.len()) {
        return Err(invalid(format!("axes {axes:?} out of range for {shape:?}")));
    }
    // Map each element to its reduction group: the index over the kept dims.
    let kept: Vec<usize> = (0..shape.len())
        .map(|d| if axes.contains(&d) { 1 } else { shape[d] })
        .collect();
    let kst = super::strides_of(&kept);
    let n_groups: usize = kept.iter().product();
    let count = F::from_f64((x.len() / n_groups.max(1)) as f64);
    let mut group = Vec::with_capacity(x.len());
    super::for_each_index(shape, |idx| {
        group.push(
            idx.iter()
                .zip(&kept)
                .zip(&kst)
                .map(|((&i, &k), &s)| if k == 1 { 0 } else { i * s })
                .sum::<usize>(),
        );
    });
    let mut mean = vec![F::zero(); n_groups];
    let mut sq = vec![F::zero(); n_groups];
    for (&v, &g) in x.iter().zip(&group) {
        mean[g] += v;
        sq[g] += v * v;
    }
    let eps = F::from_f64(1e-9);
    let std: Vec<F> = mean
        .iter_mut()
        .zip(&sq)
        .map(|(m, &s)| {
            *m /= count;
            (s / count - *m * *m).sqrt() + eps
        })
        .collect();
    Ok(x.iter()
        .zip(&group)
        .map(|(&v, &g)| (v - mean[g]) / std[g])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::DType;

    fn run(op: NnOp, inputs: &[&Tensor], n_out: usize) -> Vec<Tensor> {
        let inputs: Vec<Option<&Tensor>> = inputs.iter().copied().map(Some).collect();
        let types = vec![mlc_ir::TensorType::scalar(DType::F32); n_out];
        eval(
            &op,
            &inputs,
            &EvalCx {
                regions: &[],
                output_types: &types,
            },
        )
        .unwrap()
    }

    fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    fn close(a: &Tensor, b: &[f64]) {
        let a = a.to_f64_vec().unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn batch_norm_example() {
        // ONNX test_batchnorm_example's first channel: x [-1, 0, 1], scale 1, bias 0, mean 0, var 1.
        let x = t(&[1, 2, 3], vec![-1., 0., 1., 2., 3., 4.]);
        let (s, b, m, v) = (
            t(&[2], vec![1., 1.5]),
            t(&[2], vec![0., 1.]),
            t(&[2], vec![0., 3.]),
            t(&[2], vec![1., 1.5]),
        );
        let y = run(NnOp::BatchNorm { epsilon: 1e-5 }, &[&x, &s, &b, &m, &v], 1);
        let k = 1.0 / (1.0f64 + 1e-5).sqrt();
        let k2 = 1.5 / (1.5f64 + 1e-5).sqrt();
        close(&y[0], &[-k, 0., k, 1. - k2, 1., 1. + k2]);
    }

    #[test]
    fn layer_norm_stats() {
        let x = t(&[2, 2], vec![1., 3., 0., 4.]);
        let s = t(&[2], vec![1., 2.]);
        let b = t(&[2], vec![0., 1.]);
        let op = NnOp::LayerNorm {
            axis: 1,
            epsilon: 0.0,
            stat_dtype: DType::F32,
        };
        let y = run(op, &[&x, &s, &b], 3);
        close(&y[0], &[-1., 3., -1., 3.]);
        close(&y[1], &[2., 2.]);
        assert_eq!(y[1].shape(), &[2, 1]);
        close(&y[2], &[1., 0.5]);
        let y = run(
            NnOp::RmsNorm {
                axis: 1,
                epsilon: 0.0,
            },
            &[&t(&[1, 2], vec![3., 4.]), &s],
            1,
        );
        let r = (12.5f64).sqrt();
        close(&y[0], &[3. / r, 8. / r]);
    }

    #[test]
    fn group_and_instance_norm() {
        let x = t(&[1, 2, 2], vec![0., 2., 4., 8.]);
        let y = run(
            NnOp::InstanceNorm { epsilon: 0.0 },
            &[&x, &t(&[2], vec![1., 2.]), &t(&[2], vec![0., 1.])],
            1,
        );
        close(&y[0], &[-1., 1., -1., 3.]);
        // One group over all 4 values: mean 3.5, var 8.75; per-group scale/bias (length 1).
        let y = run(
            NnOp::GroupNorm {
                num_groups: 1,
                epsilon: 0.0,
            },
            &[&x, &t(&[1], vec![1.]), &t(&[1], vec![0.])],
            1,
        );
        let sd = 8.75f64.sqrt();
        close(&y[0], &[-3.5 / sd, -1.5 / sd, 0.5 / sd, 4.5 / sd]);
    }

    #[test]
    fn lrn_and_mvn() {
        // size 2 windows: channel c sums c and c+1.
        let x = t(&[1, 2, 1], vec![1., 2.]);
        let y = run(
            NnOp::Lrn {
                size: 2,
                alpha: 2.0,
                beta: 1.0,
                bias: 1.0,
            },
            &[&x],
            1,
        );
        close(&y[0], &[1. / 6., 2. / 5.]);
        let y = run(
            NnOp::MeanVarianceNorm { axes: vec![1] },
            &[&t(&[1, 2], vec![1., 3.])],
            1,
        );
        close(&y[0], &[-1., 1.]);
    }
}
