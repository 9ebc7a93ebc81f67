//! Kernels of the signal family: DFT, STFT, window functions and the mel weight matrix.
//!
//! Transforms are naive O(n^2) sums in f64 (the reference interpreter wants obvious
//! correctness, not speed), with twiddle angles reduced modulo the length so that long
//! transforms stay accurate; results are rounded once to the element type.

use crate::{EvalCx, EvalError, invalid};
use mlc_ir::ops::SignalOp;
use mlc_ir::ops::signal::{WindowAttrs, signal_axis};
use mlc_ir::{DType, Tensor};
use std::f64::consts::PI;

pub fn eval(
    op: &SignalOp,
    inputs: &[Option<&Tensor>],
    _cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    match op {
        SignalOp::Dft {
            axis,
            length,
            inverse,
            onesided,
        } => {
            let x = input(inputs, 0)?;
            let axis = match axis {
                Some(a) => *a,
                None => signal_axis(scalar_int(input(inputs, 2)?, "axis")?, x.rank())
                    .map_err(|e| invalid(e.to_string()))?,
            };
            let length = match (length, opt(inputs, 1)) {
                (Some(n), _) => Some(*n),
                (None, Some(t)) => Some(scalar_usize(t, "dft_length")?),
                (None, None) => None,
            };
            Ok(vec![dft(x, axis, length, *inverse, *onesided)?])
        }
        SignalOp::Stft {
            frame_step,
            frame_length,
            onesided,
        } => {
            let step = match frame_step {
                Some(s) => *s,
                None => scalar_usize(input(inputs, 1)?, "frame_step")?,
            };
            let flen = match (frame_length, opt(inputs, 3)) {
                (Some(n), _) => Some(*n),
                (None, Some(t)) => Some(scalar_usize(t, "frame_length")?),
                (None, None) => None,
            };
            Ok(vec![stft(
                input(inputs, 0)?,
                step,
                opt(inputs, 2),
                flen,
                *onesided,
            )?])
        }
        SignalOp::HannWindow(a) => window(a, inputs, |n, d| (PI * n / d).sin().powi(2)),
        SignalOp::HammingWindow(a) => window(a, inputs, |n, d| {
            let alpha = 25.0 / 46.0;
            alpha - (1.0 - alpha) * (2.0 * PI * n / d).cos()
        }),
        SignalOp::BlackmanWindow(a) => window(a, inputs, |n, d| {
            0.42 - 0.5 * (2.0 * PI * n / d).cos() + 0.08 * (4.0 * PI * n / d).cos()
        }),
        SignalOp::MelWeightMatrix { dtype } => mel_weight_matrix(inputs, *dtype),
    }
}

fn opt<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

fn input<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, EvalError> {
    opt(inputs, i).ok_or_else(|| invalid(format!("input {i} is required")))
}

/// The value of a scalar or one-element integer tensor.
fn scalar_int(t: &Tensor, what: &str) -> Result<i64, EvalError> {
    match t.to_i64_vec()?.as_slice() {
        [v] => Ok(*v),
        _ => Err(invalid(format!(
            "{what} must hold one integer, got shape {:?}",
            t.shape()
        ))),
    }
}

fn scalar_usize(t: &Tensor, what: &str) -> Result<usize, EvalError> {
    let v = scalar_int(t, what)?;
    usize::try_from(v).map_err(|_| invalid(format!("{what} must be non-negative, got {v}")))
}

fn scalar_f64(t: &Tensor, what: &str) -> Result<f64, EvalError> {
    match t.to_f64_vec()?.as_slice() {
        [v] => Ok(*v),
        _ => Err(invalid(format!("{what} must hold one number"))),
    }
}

/// `e^{sign * 2 pi i k t / n}` as (re, im), with `k t` reduced modulo `n` first.
fn twiddle(k: usize, t: usize, n: usize, sign: f64) -> (f64, f64) {
    let m = ((k as u128 * t as u128) % n as u128) as f64;
    let ang = sign * 2.0 * PI * m / n as f64;
    (ang.cos(), ang.sin())
}

/// A DFT of length `n` of `x` (zero-padded or truncated to `n`), keeping `bins` outputs:
/// `X[k] = sum_t x[t] e^{sign 2 pi i k t / n}`.
fn dft_lane(x: &[(f64, f64)], n: usize, bins: usize, sign: f64) -> Vec<(f64, f64)> {
    (0..bins)
        .map(|k| {
            x.iter()
                .take(n)
                .enumerate()
                .fold((0.0, 0.0), |(ar, ai), (t, &(xr, xi))| {
                    let (c, s) = twiddle(k, t, n, sign);
                    (ar + xr * c - xi * s, ai + xr * s + xi * c)
                })
        })
        .collect()
}

fn dft(
    x: &Tensor,
    axis: usize,
    length: Option<usize>,
    inverse: bool,
    onesided: bool,
) -> Result<Tensor, EvalError> {
    let s = x.shape();
    let r = s.len();
    if r < 2 || !matches!(s[r - 1], 1 | 2) || axis + 1 >= r {
        return Err(invalid(format!(
            "DFT along axis {axis} of a signal shaped {s:?}"
        )));
    }
    let (c, n) = (s[r - 1], s[axis]);
    let len = length.unwrap_or(if inverse && onesided {
        2 * n.saturating_sub(1)
    } else {
        n
    });
    if len == 0 {
        return Err(invalid("the DFT length must be positive"));
    }
    let (out_len, out_c) = match (inverse, onesided) {
        (false, true) => (len / 2 + 1, 2),
        (true, true) => (len, 1),
        _ => (len, 2),
    };
    let outer: usize = s[..axis].iter().product();
    let inner: usize = s[axis + 1..r - 1].iter().product();
    let data = x.to_f64_vec()?;
    let mut out = vec![0.0; outer * out_len * inner * out_c];
    for o in 0..outer {
        for i in 0..inner {
            let lane: Vec<(f64, f64)> = (0..n)
                .map(|t| {
                    let at = ((o * n + t) * inner + i) * c;
                    (data[at], if c == 2 { data[at + 1] } else { 0.0 })
                })
                .collect();
            let res: Vec<(f64, f64)> = if !inverse {
                dft_lane(&lane, len, out_len, -1.0)
            } else {
                let full: Vec<(f64, f64)> = if onesided {
                    // The Hermitian extension of the half spectrum (numpy's irfft): bins past
                    // len / 2 mirror the conjugates of the first half.
                    let half = |k: usize| lane.get(k).copied().unwrap_or((0.0, 0.0));
                    (0..len)
                        .map(|k| {
                            if k <= len / 2 {
                                half(k)
                            } else {
                                let (re, im) = half(len - k);
                                (re, -im)
                            }
                        })
                        .collect()
                } else {
                    lane
                };
                let scale = 1.0 / len as f64;
                dft_lane(&full, len, len, 1.0)
                    .into_iter()
                    .map(|(re, im)| (re * scale, im * scale))
                    .collect()
            };
            for (k, (re, im)) in res.into_iter().enumerate() {
                let at = ((o * out_len + k) * inner + i) * out_c;
                out[at] = re;
                if out_c == 2 {
                    out[at + 1] = im;
                }
            }
        }
    }
    let mut shape = s.to_vec();
    shape[axis] = out_len;
    shape[r - 1] = out_c;
    Ok(Tensor::from_vec(&shape, out)?.cast(x.dtype())?)
}

fn stft(
    x: &Tensor,
    step: usize,
    window: Option<&Tensor>,
    frame_length: Option<usize>,
    onesided: bool,
) -> Result<Tensor, EvalError> {
    let &[batch, n, c] = x.shape() else {
        return Err(invalid(format!(
            "signal must be [batch, length, 1 or 2], got {:?}",
            x.shape()
        )));
    };
    if !matches!(c, 1 | 2) || step == 0 {
        return Err(invalid("bad signal shape or zero frame step"));
    }
    let window = window.map(Tensor::to_f64_vec).transpose()?;
    let len = frame_length.or(window.as_ref().map(Vec::len)).unwrap_or(n);
    if len == 0 || len > n {
        return Err(invalid(format!(
            "frame length {len} does not fit a signal of length {n}"
        )));
    }
    let window = window.unwrap_or_else(|| vec![1.0; len]);
    let frames = 1 + (n - len) / step;
    let bins = if onesided { len / 2 + 1 } else { len };
    let data = x.to_f64_vec()?;
    let mut out = Vec::with_capacity(batch * frames * bins * 2);
    for b in 0..batch {
        for f in 0..frames {
            // Samples past the end of the signal are zeros (the reference pads short frames).
            let frame: Vec<(f64, f64)> = window
                .iter()
                .enumerate()
                .map(|(j, w)| {
                    let t = f * step + j;
                    if t >= n {
                        return (0.0, 0.0);
                    }
                    let at = (b * n + t) * c;
                    let im = if c == 2 { data[at + 1] } else { 0.0 };
                    (data[at] * w, im * w)
                })
                .collect();
            for (re, im) in dft_lane(&frame, len, bins, -1.0) {
                out.push(re);
                out.push(im);
            }
        }
    }
    Ok(Tensor::from_vec(&[batch, frames, bins, 2], out)?.cast(x.dtype())?)
}

fn window(
    a: &WindowAttrs,
    inputs: &[Option<&Tensor>],
    f: impl Fn(f64, f64) -> f64,
) -> Result<Vec<Tensor>, EvalError> {
    let size = match a.size {
        Some(n) => n,
        None => scalar_usize(input(inputs, 0)?, "size")?,
    };
    let denom = if a.periodic {
        size as f64
    } else {
        size as f64 - 1.0
    };
    let v: Vec<f64> = (0..size).map(|n| f(n as f64, denom)).collect();
    Ok(vec![Tensor::from_vec(&[size], v)?.cast(a.dtype)?])
}

/// numpy's float `//`: the floor of the quotient computed through `fmod`, which is what the
/// reference's bin edges go through (a plain `floor(a / b)` can differ by one at exact ties).
fn floor_divide(a: f64, b: f64) -> f64 {
    let m = a % b;
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    let fl = div.floor();
    if div - fl > 0.5 { fl + 1.0 } else { fl }
}

fn mel_weight_matrix(inputs: &[Option<&Tensor>], dtype: DType) -> Result<Vec<Tensor>, EvalError> {
    let mel_bins = scalar_usize(input(inputs, 0)?, "num_mel_bins")?;
    let dft_length = scalar_int(input(inputs, 1)?, "dft_length")?;
    let sample_rate = scalar_int(input(inputs, 2)?, "sample_rate")?;
    let lower = scalar_f64(input(inputs, 3)?, "lower_edge_hertz")?;
    let upper = scalar_f64(input(inputs, 4)?, "upper_edge_hertz")?;
    if dft_length <= 0 || sample_rate <= 0 {
        return Err(invalid("dft_length and sample_rate must be positive"));
    }
    let spec_bins = dft_length as usize / 2 + 1;
    // The reference computes the edges' mel values in the inputs' f32 before widening.
    let to_mel = |hz: f64| {
        let hz = hz as f32;
        f64::from(2595.0f32 * (hz / 700.0).ln_1p()) / 10f64.ln()
    };
    let (lo, hi) = (to_mel(lower), to_mel(upper));
    let step = (hi - lo) / (mel_bins + 2) as f64;
    let edges: Vec<i64> = (0..mel_bins + 2)
        .map(|i| {
            let mel = i as f64 * step + lo;
            let hz = 700.0 * (mel / 2595.0 * 10f64.ln()).exp_m1();
            floor_divide((dft_length + 1) as f64 * hz, sample_rate as f64) as i64
        })
        .collect();
    let mut out = vec![0.0; spec_bins * mel_bins];
    let mut set = |j: i64, i: usize, v: f64| -> Result<(), EvalError> {
        let j = usize::try_from(j)
            .ok()
            .filter(|&j| j < spec_bins)
            .ok_or_else(|| invalid(format!("mel bin edge {j} outside 0..{spec_bins}")))?;
        out[j * mel_bins + i] = v;
        Ok(())
    };
    for i in 0..mel_bins {
        let (left, center, right) = (edges[i], edges[i + 1], edges[i + 2]);
        let up = center - left;
        if up == 0 {
            set(center, i, 1.0)?;
        } else {
            for j in left..=center {
                set(j, i, (j - left) as f64 / up as f64)?;
            }
        }
        let down = right - center;
        if down > 0 {
            for j in center..right {
                set(j, i, (right - j) as f64 / down as f64)?;
            }
        }
    }
    Ok(vec![
        Tensor::from_vec(&[spec_bins, mel_bins], out)?.cast(dtype)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: &Tensor, want: &[f64]) {
        let g = got.to_f64_vec().unwrap();
        assert_eq!(g.len(), want.len(), "{g:?} vs {want:?}");
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{g:?} vs {want:?}");
        }
    }

    fn run(op: SignalOp, inputs: &[Option<&Tensor>]) -> Tensor {
        let cx = EvalCx {
            regions: &[],
            output_types: &[],
        };
        eval(&op, inputs, &cx).unwrap().remove(0)
    }

    #[test]
    fn dft_round_trip() {
        // np.fft.fft([1, 2, 0, -1]) = [2, 1-3j, 0, 1+3j]; rfft keeps the first 3 bins.
        let x = Tensor::from_vec(&[1, 4, 1], vec![1.0f32, 2.0, 0.0, -1.0]).unwrap();
        let op = |inverse, onesided| SignalOp::Dft {
            axis: Some(1),
            length: None,
            inverse,
            onesided,
        };
        let spec = run(op(false, false), &[Some(&x)]);
        close(&spec, &[2.0, 0.0, 1.0, -3.0, 0.0, 0.0, 1.0, 3.0]);
        let half = run(op(false, true), &[Some(&x)]);
        assert_eq!(half.shape(), &[1, 3, 2]);
        let back = run(op(true, false), &[Some(&spec)]);
        close(&back, &[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, -1.0, 0.0]);
        let back = run(op(true, true), &[Some(&half)]);
        close(&back, &[1.0, 2.0, 0.0, -1.0]);
        // A run-time axis (-2) and length (2: truncation).
        let axis = Tensor::scalar(-2i64);
        let n = Tensor::scalar(2i64);
        let op = SignalOp::Dft {
            axis: None,
            length: None,
            inverse: false,
            onesided: false,
        };
        let got = run(op, &[Some(&x), Some(&n), Some(&axis)]);
        close(&got, &[3.0, 0.0, -1.0, 0.0]);
    }

    #[test]
    fn windows_and_mel() {
        let a = WindowAttrs {
            size: Some(4),
            periodic: true,
            dtype: DType::F32,
        };
        close(
            &run(SignalOp::HannWindow(a.clone()), &[]),
            &[0.0, 0.5, 1.0, 0.5],
        );
        let b = WindowAttrs {
            periodic: false,
            ..a
        };
        // Symmetric Blackman of 4: n / 3 of the period.
        let bl =
            |n: f64| 0.42 - 0.5 * (2.0 * PI * n / 3.0).cos() + 0.08 * (4.0 * PI * n / 3.0).cos();
        close(
            &run(SignalOp::BlackmanWindow(b), &[]),
            &[bl(0.0), bl(1.0), bl(2.0), bl(3.0)],
        );
        // onnx.reference MelWeightMatrix(2, 8, 8000, 0, 4000): 5 x 2.
        let i = |v: i32| Tensor::scalar(v);
        let f = |v: f32| Tensor::scalar(v);
        let (m, d, s, lo, hi) = (i(2), i(8), i(8000), f(0.0), f(4000.0));
        let got = run(
            SignalOp::MelWeightMatrix { dtype: DType::F32 },
            &[Some(&m), Some(&d), Some(&s), Some(&lo), Some(&hi)],
        );
        assert_eq!(got.shape(), &[5, 2]);
        close(&got, &[1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
