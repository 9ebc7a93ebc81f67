//! Pooling: max (with indices), average, Lp, and their global forms, over N-D windows.

use super::{Acc, Float, for_each_index, strides_of, with_float};
use crate::{EvalError, invalid};
use mlc_ir::Tensor;
use mlc_ir::ops::NnOp;
use mlc_ir::ops::nn::{Window, window_dim};

#[derive(Clone, Copy)]
enum Kind {
    Max,
    Avg { count_include_pad: bool },
    Lp { p: f64 },
}

pub(super) fn eval(op: &NnOp, x: &Tensor, n_outputs: usize) -> Result<Vec<Tensor>, EvalError> {
    if x.rank() < 3 {
        return Err(invalid(format!(
            "pooling input {x:?} must be [N, C, spatial...]"
        )));
    }
    let spatial = &x.shape()[2..];
    let global = |kind| {
        let w = Window {
            kernel: spatial.to_vec(),
            strides: vec![1; spatial.len()],
            dilations: vec![1; spatial.len()],
            pads: vec![0; 2 * spatial.len()],
            auto_pad: Default::default(),
            ceil_mode: false,
        };
        (kind, w, false)
    };
    let (kind, window, col_major) = match op {
        NnOp::MaxPool {
            window,
            storage_order_col_major,
        } => (Kind::Max, window.clone(), *storage_order_col_major),
        NnOp::AvgPool {
            window,
            count_include_pad,
        } => (
            Kind::Avg {
                count_include_pad: *count_include_pad,
            },
            window.clone(),
            false,
        ),
        NnOp::LpPool { window, p } => (Kind::Lp { p: *p as f64 }, window.clone(), false),
        NnOp::GlobalMaxPool => global(Kind::Max),
        NnOp::GlobalAvgPool => global(Kind::Avg {
            count_include_pad: false,
        }),
        NnOp::GlobalLpPool { p } => global(Kind::Lp { p: *p as f64 }),
        _ => unreachable!("the caller routes only pooling ops here"),
    };
    with_float!(x.dtype(), F => {
        let xv = F::read(x);
        let (shape, y, idx) = pool::<F>(&xv, x.shape(), &window, kind, col_major)?;
        let mut out = vec![F::write(y, &shape, x.dtype())?];
        if n_outputs > 1 {
            out.push(Tensor::from_vec(&shape, idx)?);
        }
        Ok(out)
    })
}

/// Returns the output shape, values, and (for max) the flat input index of each maximum.
fn pool<F: Float>(
    x: &[F],
    xs: &[usize],
    w: &Window,
    kind: Kind,
    col_major: bool,
) -> Result<(Vec<usize>, Vec<F>, Vec<i64>), EvalError> {
    let k = xs.len() - 2;
    if w.kernel.len() != k
        || w.strides.len() != k
        || w.dilations.len() != k
        || w.pads.len() != 2 * k
    {
        return Err(invalid(format!(
            "pooling attributes do not match {k} spatial dims"
        )));
    }
    let ins = &xs[2..];
    let mut outs = vec![];
    let mut pb = vec![];
    let mut pe = vec![];
    for (i, &input) in ins.iter().enumerate() {
        let (o, b, e) = window_dim(
            w.auto_pad,
            input,
            w.kernel[i],
            w.strides[i],
            w.dilations[i],
            (w.pads[i], w.pads[k + i]),
            w.ceil_mode,
        )
        .map_err(invalid)?;
        outs.push(o);
        pb.push(b as isize);
        pe.push(e as isize);
    }
    let planes = xs[0] * xs[1];
    let (pin, p) = (
        ins.iter().product::<usize>(),
        outs.iter().product::<usize>(),
    );
    let in_st = strides_of(ins);
    // Indices count spatial dims column-major under storage_order 1.
    let idx_st: Vec<usize> = if col_major {
        let mut s = vec![1; k];
        for d in 1..k {
            s[d] = s[d - 1] * ins[d - 1];
        }
        s
    } else {
        in_st.clone()
    };
    let mut y = Vec::with_capacity(planes * p);
    let mut indices = Vec::with_capacity(if matches!(kind, Kind::Max) {
        planes * p
    } else {
        0
    });
    let mut pos = vec![0isize; k];
    for plane in 0..planes {
        let xp = &x[plane * pin..(plane + 1) * pin];
        for_each_index(&outs, |o| {
            let start: Vec<isize> = (0..k)
                .map(|d| (o[d] * w.strides[d]) as isize - pb[d])
                .collect();
            let mut best: Option<(F, usize)> = None;
            let mut sum = F::zero();
            let (mut valid, mut padded) = (0usize, 0usize);
            for_each_index(&w.kernel, |j| {
                let mut off = 0usize;
                let mut inside = true;
                let mut in_pads = true;
                for d in 0..k {
                    pos[d] = start[d] + (j[d] * w.dilations[d]) as isize;
                    if pos[d] < 0 || pos[d] >= ins[d] as isize {
                        inside = false;
                    }
                    // Taps in ceil_mode's extra padding, past the end pad, never count.
                    if pos[d] >= ins[d] as isize + pe[d] {
                        in_pads = false;
                    }
                }
                if in_pads {
                    padded += 1;
                }
                if !inside {
                    return;
                }
                for d in 0..k {
                    off += pos[d] as usize * in_st[d];
                }
                let v = xp[off];
                valid += 1;
                match kind {
                    Kind::Max => {
                        if best.is_none_or(|(b, _)| v > b) {
                            let flat = (0..k).map(|d| pos[d] as usize * idx_st[d]).sum();
                            best = Some((v, flat));
                        }
                    }
                    Kind::Avg { .. } => sum += v,
                    Kind::Lp { p } => sum += F::from_f64(v.to_f64().abs().powf(p)),
                }
            });
            match kind {
                Kind::Max => {
                    let (v, i) = best.unwrap_or((F::zero(), 0));
                    y.push(v);
                    indices.push((plane * pin + i) as i64);
                }
                Kind::Avg { count_include_pad } => {
                    let n = if count_include_pad { padded } else { valid };
                    y.push(if n == 0 {
                        F::zero()
                    } else {
                        sum / F::from_f64(n as f64)
                    });
                }
                Kind::Lp { p } => y.push(F::from_f64(sum.to_f64().powf(1.0 / p))),
            }
        });
    }
    let mut shape = xs[..2].to_vec();
    shape.extend(outs);
    Ok((shape, y, indices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::ops::nn::AutoPad;

    fn window(kernel: &[usize], strides: &[usize], pads: &[usize], ceil_mode: bool) -> Window {
        Window {
            kernel: kernel.to_vec(),
            strides: strides.to_vec(),
            dilations: vec![1; kernel.len()],
            pads: pads.to_vec(),
            auto_pad: AutoPad::NotSet,
            ceil_mode,
        }
    }

    fn iota(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32).collect()
    }

    #[test]
    fn maxpool_ceil_and_indices() {
        // ONNX test_maxpool_2d_ceil: 4x4 input 1..16, kernel 3, stride 2, ceil -> [[11,12],[15,16]].
        let x = Tensor::from_vec(&[1, 1, 4, 4], (1..=16).map(|v| v as f32).collect()).unwrap();
        let op = NnOp::MaxPool {
            window: window(&[3, 3], &[2, 2], &[0; 4], true),
            storage_order_col_major: false,
        };
        let out = eval(&op, &x, 2).unwrap();
        assert_eq!(out[0].shape(), &[1, 1, 2, 2]);
        assert_eq!(out[0].to_f64_vec().unwrap(), vec![11., 12., 15., 16.]);
        assert_eq!(out[1].to_i64_vec().unwrap(), vec![10, 11, 14, 15]);
        let op = NnOp::MaxPool {
            window: window(&[3, 3], &[2, 2], &[0; 4], true),
            storage_order_col_major: true,
        };
        assert_eq!(
            eval(&op, &x, 2).unwrap()[1].to_i64_vec().unwrap(),
            vec![10, 14, 11, 15]
        );
    }

    #[test]
    fn avgpool_pads_count() {
        // 1-D [0,1,2,3], kernel 2, stride 2, pads (1,1): windows [-1,0], [1,2], [3,4].
        let x = Tensor::from_vec(&[1, 1, 4], iota(4)).unwrap();
        let op = NnOp::AvgPool {
            window: window(&[2], &[2], &[1, 1], false),
            count_include_pad: false,
        };
        assert_eq!(
            eval(&op, &x, 1).unwrap()[0].to_f64_vec().unwrap(),
            vec![0., 1.5, 3.]
        );
        let op = NnOp::AvgPool {
            window: window(&[2], &[2], &[1, 1], false),
            count_include_pad: true,
        };
        assert_eq!(
            eval(&op, &x, 1).unwrap()[0].to_f64_vec().unwrap(),
            vec![0., 1.5, 1.5]
        );
        // ceil_mode on 5 elements, kernel 2 stride 2: the last window holds one element and
        // its tap past the input is not padding, so it is not counted.
        let x = Tensor::from_vec(&[1, 1, 5], iota(5)).unwrap();
        let op = NnOp::AvgPool {
            window: window(&[2], &[2], &[0, 0], true),
            count_include_pad: true,
        };
        assert_eq!(
            eval(&op, &x, 1).unwrap()[0].to_f64_vec().unwrap(),
            vec![0.5, 2.5, 4.]
        );
    }

    #[test]
    fn global_and_lp() {
        let x = Tensor::from_vec(&[1, 2, 2], vec![3., -4., 1., 2.]).unwrap();
        assert_eq!(
            eval(&NnOp::GlobalLpPool { p: 2.0 }, &x, 1).unwrap()[0]
                .to_f64_vec()
                .unwrap(),
            vec![5., 5f64.sqrt()]
        );
        assert_eq!(
            eval(&NnOp::GlobalMaxPool, &x, 1).unwrap()[0]
                .to_f64_vec()
                .unwrap(),
            vec![3., 2.]
        );
        let y = eval(&NnOp::GlobalAvgPool, &x, 1).unwrap();
        assert_eq!(y[0].shape(), &[1, 2, 1]);
        assert_eq!(y[0].to_f64_vec().unwrap(), vec![-0.5, 1.5]);
    }
}
