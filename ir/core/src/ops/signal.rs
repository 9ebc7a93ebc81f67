//! The signal family: discrete Fourier transforms, the short-time Fourier transform, window
//! functions and mel filter banks.
//!
//! Complex tensors use ONNX's representation: a trailing axis of 2 (real, imaginary), or of 1
//! for a real signal. Scalar operands (lengths, axes, window sizes) that the importer finds
//! constant are attributes; otherwise the attribute is `None` and the kernel reads the input at
//! the same position as in ONNX.

use super::{InferCx, InferError, norm_axis};
use crate::DType;
use crate::shape::{Dim, TensorType};
use serde::{Deserialize, Serialize};

/// Attributes of the window generators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowAttrs {
    /// The window length; `None`: read from input 0 (an integer scalar).
    pub size: Option<usize>,
    /// A periodic window (denominator `size`) rather than a symmetric one (`size - 1`).
    pub periodic: bool,
    /// The output element type.
    pub dtype: DType,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalOp {
    /// DFT along `axis` of a real (`[..., 1]`) or complex (`[..., 2]`) signal, zero-padded or
    /// truncated to `length`. Inputs: x, dft_length?, axis? (read when the attribute is `None`;
    /// an absent dft_length input means the default). The default length is the axis length,
    /// or `2 * (n - 1)` for an inverse one-sided transform. Forward one-sided keeps the first
    /// `length / 2 + 1` bins; inverse one-sided is the real inverse of a Hermitian half
    /// spectrum (last dim 1). Inverse transforms are scaled by `1 / length`.
    Dft {
        axis: Option<usize>,
        length: Option<usize>,
        inverse: bool,
        onesided: bool,
    },
    /// STFT of signals `[batch, len, 1 or 2]`: frames of the window's length taken every
    /// `frame_step` samples, multiplied by the window, each through a DFT of `frame_length`.
    /// Inputs: signal, frame_step?, window?, frame_length? (the scalars read when their
    /// attribute is `None`). Output `[batch, frames, bins, 2]`.
    Stft {
        frame_step: Option<usize>,
        frame_length: Option<usize>,
        onesided: bool,
    },
    /// `sin^2(pi n / N)`.
    HannWindow(WindowAttrs),
    /// `25/46 - 21/46 cos(2 pi n / N)`.
    HammingWindow(WindowAttrs),
    /// `0.42 - 0.5 cos(2 pi n / N) + 0.08 cos(4 pi n / N)`.
    BlackmanWindow(WindowAttrs),
    /// Triangular mel filter bank `[dft_length / 2 + 1, num_mel_bins]`. Inputs (scalars):
    /// num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz.
    MelWeightMatrix { dtype: DType },
}

impl SignalOp {
    /// The attributes of the three window generators.
    pub fn window(&self) -> Option<&WindowAttrs> {
        match self {
            SignalOp::HannWindow(a) | SignalOp::HammingWindow(a) | SignalOp::BlackmanWindow(a) => {
                Some(a)
            }
            _ => None,
        }
    }

    pub fn infer(&self, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        if let Some(a) = self.window() {
            cx.arity(0, 1)?;
            if !a.dtype.is_numeric() || a.dtype == DType::Bool {
                return Err(InferError::Attr {
                    name: "dtype",
                    reason: format!("{} is not numeric", a.dtype),
                });
            }
            let size = match a.size {
                Some(n) => Dim::Known(n),
                None => {
                    scalar_int(cx, 0, "size")?;
                    const_usize(cx, 0)
                }
            };
            return Ok(vec![TensorType::new(a.dtype, vec![size])]);
        }
        match self {
            SignalOp::Dft {
                axis,
                length,
                inverse,
                onesided,
            } => {
                cx.arity(1, 3)?;
                let x = cx.input(0)?;
                complex_input(x, 0)?;
                let r = x.rank();
                let length = match (length, cx.opt_input(1)) {
                    (Some(n), _) => Some(Dim::Known(*n)),
                    (None, Some(_)) => {
                        scalar_int(cx, 1, "dft_length")?;
                        Some(const_usize(cx, 1))
                    }
                    (None, None) => None,
                };
                let axis = match axis {
                    Some(a) => Some(*a),
                    None => {
                        scalar_int(cx, 2, "axis")?;
                        match cx.const_input(2).map(|t| t.to_i64_vec()) {
                            Some(Ok(v)) if v.len() == 1 => Some(signal_axis(v[0], r)?),
                            _ => None,
                        }
                    }
                };
                if let Some(a) = axis
                    && a + 1 >= r
                {
                    return Err(InferError::Shape(format!(
                        "axis {a} is not a signal axis of {x}"
                    )));
                }
                let mut shape = x.shape.clone();
                shape[r - 1] = Dim::Known(if *inverse && *onesided { 1 } else { 2 });
                match axis {
                    Some(a) => {
                        let n = &x.shape[a];
                        let len = length.unwrap_or_else(|| match (n, *inverse && *onesided) {
                            (Dim::Known(n), true) => Dim::Known(2 * n.saturating_sub(1)),
                            (_, true) => Dim::Unknown,
                            (d, false) => d.clone(),
                        });
                        shape[a] = match (len, !*inverse && *onesided) {
                            (Dim::Known(l), true) => Dim::Known(l / 2 + 1),
                            (_, true) => Dim::Unknown,
                            (d, false) => d,
                        };
                    }
                    None if length.is_none() && !*onesided => {}
                    None => {
                        for d in &mut shape[..r - 1] {
                            *d = Dim::Unknown;
                        }
                    }
                }
                Ok(vec![TensorType::new(x.dtype, shape)])
            }
            SignalOp::Stft {
                frame_step,
                frame_length,
                onesided,
            } => {
                cx.arity(1, 4)?;
                let x = cx.input(0)?;
                complex_input(x, 0)?;
                if x.rank() != 3 {
                    return Err(InferError::Shape(format!(
                        "signal must be [batch, length, 1 or 2], got {x}"
                    )));
                }
                let step = match frame_step {
                    Some(s) => Dim::Known(*s),
                    None => {
                        scalar_int(cx, 1, "frame_step")?;
                        const_usize(cx, 1)
                    }
                };
                if let Some(w) = cx.opt_input(2)
                    && (w.rank() != 1 || !w.dtype.is_float())
                {
                    return Err(InferError::Shape(format!(
                        "window must be a 1-D float tensor, got {w}"
                    )));
                }
                let flen = match (frame_length, cx.opt_input(3), cx.opt_input(2)) {
                    (Some(n), _, _) => Dim::Known(*n),
                    (None, Some(_), _) => {
                        scalar_int(cx, 3, "frame_length")?;
                        const_usize(cx, 3)
                    }
                    (None, None, Some(w)) => w.shape[0].clone(),
                    (None, None, None) => x.shape[1].clone(),
                };
                let frames = match (&x.shape[1], &flen, &step) {
                    (Dim::Known(n), Dim::Known(l), Dim::Known(s)) if *s > 0 && l <= n => {
                        Dim::Known(1 + (n - l) / s)
                    }
                    (Dim::Known(n), Dim::Known(l), _) if l > n => {
                        return Err(InferError::Shape(format!(
                            "frame length {l} exceeds the signal length {n}"
                        )));
                    }
                    _ => Dim::Unknown,
                };
                let bins = match (flen, onesided) {
                    (Dim::Known(l), true) => Dim::Known(l / 2 + 1),
                    (Dim::Known(l), false) => Dim::Known(l),
                    _ => Dim::Unknown,
                };
                Ok(vec![TensorType::new(
                    x.dtype,
                    vec![x.shape[0].clone(), frames, bins, Dim::Known(2)],
                )])
            }
            SignalOp::MelWeightMatrix { dtype } => {
                cx.arity(5, 5)?;
                for (i, what) in ["num_mel_bins", "dft_length", "sample_rate"]
                    .iter()
                    .enumerate()
                {
                    scalar_int(cx, i, what)?;
                }
                for i in 3..5 {
                    let t = cx.input(i)?;
                    if !t.dtype.is_float() || t.rank() > 1 {
                        return Err(InferError::DType {
                            index: i,
                            expected: "a float scalar".into(),
                            found: t.dtype,
                        });
                    }
                }
                let bins = match const_usize(cx, 1) {
                    Dim::Known(n) => Dim::Known(n / 2 + 1),
                    _ => Dim::Unknown,
                };
                Ok(vec![TensorType::new(
                    *dtype,
                    vec![bins, const_usize(cx, 0)],
                )])
            }
            _ => unreachable!("windows are handled above"),
        }
    }
}

/// Normalizes a DFT axis: negative values count from the end of x's shape, which includes the
/// trailing complex axis (so -2 is the last signal axis).
pub fn signal_axis(axis: i64, rank: usize) -> Result<usize, InferError> {
    let a = norm_axis(axis, rank)?;
    if a + 1 >= rank {
        return Err(InferError::Shape(format!(
            "axis {axis} is the complex axis of a rank-{rank} signal"
        )));
    }
    Ok(a)
}

fn complex_input(x: &TensorType, index: usize) -> Result<(), InferError> {
    if !x.dtype.is_float() {
        return Err(InferError::DType {
            index,
            expected: "a float type".into(),
            found: x.dtype,
        });
    }
    match x.shape.last() {
        Some(Dim::Known(1 | 2)) | Some(Dim::Sym(_) | Dim::Unknown) if x.rank() >= 2 => Ok(()),
        _ => Err(InferError::Shape(format!(
            "a signal needs a trailing axis of 1 (real) or 2 (complex), got {x}"
        ))),
    }
}

/// Checks input `i` is an integer scalar (or one-element vector).
fn scalar_int(cx: &InferCx, i: usize, what: &str) -> Result<(), InferError> {
    let t = cx.input(i)?;
    if !t.dtype.is_int() || t.rank() > 1 {
        return Err(InferError::Shape(format!(
            "{what} must be an integer scalar, got {t}"
        )));
    }
    Ok(())
}

/// The value of constant scalar input `i` as a dim, `Unknown` when not constant.
fn const_usize(cx: &InferCx, i: usize) -> Dim {
    match cx.const_input(i).map(|t| t.to_i64_vec()) {
        Some(Ok(v)) if v.len() == 1 && v[0] >= 0 => Dim::Known(v[0] as usize),
        _ => Dim::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    fn infer(
        op: &SignalOp,
        inputs: &[Option<TensorType>],
        consts: &[Option<&Tensor>],
    ) -> Result<String, InferError> {
        let out = op.infer(&InferCx {
            inputs,
            consts,
            regions: &[],
            n_outputs: 1,
        })?;
        Ok(out[0].to_string())
    }

    #[test]
    fn dft_shapes() {
        let x = TensorType::fixed(DType::F32, &[1, 10, 10, 1]);
        let op = |axis, inverse, onesided| SignalOp::Dft {
            axis,
            length: None,
            inverse,
            onesided,
        };
        let one = [Some(x.clone())];
        assert_eq!(
            infer(&op(Some(1), false, true), &one, &[]).unwrap(),
            "f32[1,6,10,2]"
        );
        let half = TensorType::fixed(DType::F32, &[1, 6, 10, 2]);
        assert_eq!(
            infer(&op(Some(1), true, true), &[Some(half)], &[]).unwrap(),
            "f32[1,10,10,1]"
        );
        // A run-time axis: only a full-length transform keeps the dims.
        let axis = TensorType::scalar(DType::I64);
        let ins = [Some(x.clone()), None, Some(axis)];
        assert_eq!(
            infer(&op(None, false, false), &ins, &[]).unwrap(),
            "f32[1,10,10,2]"
        );
        assert_eq!(
            infer(&op(None, false, true), &ins, &[]).unwrap(),
            "f32[?,?,?,2]"
        );
        let c = Tensor::scalar(-2i64);
        assert_eq!(
            infer(&op(None, false, true), &ins, &[None, None, Some(&c)]).unwrap(),
            "f32[1,10,6,2]"
        );
        assert!(infer(&op(Some(3), false, false), &one, &[]).is_err());
    }

    #[test]
    fn stft_and_window_shapes() {
        let x = TensorType::fixed(DType::F32, &[1, 128, 1]);
        let op = SignalOp::Stft {
            frame_step: Some(8),
            frame_length: None,
            onesided: true,
        };
        let w = TensorType::fixed(DType::F32, &[16]);
        assert_eq!(
            infer(&op, &[Some(x), None, Some(w)], &[]).unwrap(),
            "f32[1,15,9,2]"
        );
        let op = SignalOp::HannWindow(WindowAttrs {
            size: None,
            periodic: true,
            dtype: DType::F64,
        });
        let n = TensorType::scalar(DType::I32);
        assert_eq!(infer(&op, &[Some(n)], &[]).unwrap(), "f64[?]");
    }
}
