//! Window geometry shared by inference and the interpreter: output sizes and pads of conv and
//! pooling windows, transposed-conv crops, and resize output sizes.

use super::{AspectPolicy, AutoPad};

/// Output size and `(begin, end)` pads of one spatial dim of a conv or pooling window.
///
/// `pads` are the explicit pads (used only with `AutoPad::NotSet`). SAME modes give
/// `ceil(in / stride)` outputs with the total pad `max(0, (out-1)*stride + dilated_k - in)`
/// split as ONNX says; `ceil_mode` rounds up but drops a last window that would start in the
/// end padding (ONNX reference and ORT agree on this).
pub fn window_dim(
    auto_pad: AutoPad,
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pads: (usize, usize),
    ceil_mode: bool,
) -> Result<(usize, usize, usize), String> {
    if stride == 0 || dilation == 0 || kernel == 0 {
        return Err("kernel, strides and dilations must be positive".into());
    }
    let span = dilation * (kernel - 1) + 1;
    let (pb, pe) = match auto_pad {
        AutoPad::NotSet => pads,
        AutoPad::Valid => (0, 0),
        AutoPad::SameUpper | AutoPad::SameLower => {
            let out = input.div_ceil(stride);
            let total = ((out.max(1) - 1) * stride + span).saturating_sub(input);
            let small = total / 2;
            if auto_pad == AutoPad::SameUpper {
                (small, total - small)
            } else {
                (total - small, small)
            }
        }
    };
    let padded = input + pb + pe;
    if padded < span {
        return Err(format!(
            "window of {span} does not fit in padded input of {padded}"
        ));
    }
    let mut out = if ceil_mode {
        (padded - span).div_ceil(stride) + 1
    } else {
        (padded - span) / stride + 1
    };
    if ceil_mode && out > 1 && (out - 1) * stride >= input + pb {
        out -= 1;
    }
    Ok((out, pb, pe))
}

/// Output size and signed `(begin, end)` crop of one spatial dim of a transposed convolution,
/// following the ONNX reference: `output_shape` or a SAME `auto_pad` (whose default output is
/// `in * stride`) fixes the output size, and the total crop is split with the extra element at
/// the end for SAME_UPPER and at the start otherwise. Without them the explicit pads apply.
pub fn conv_transpose_dim(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    output_padding: usize,
    pads: (i64, i64),
    auto_pad: AutoPad,
    output_shape: Option<usize>,
) -> Result<(usize, i64, i64), String> {
    if stride == 0 || dilation == 0 || kernel == 0 {
        return Err("kernel, strides and dilations must be positive".into());
    }
    let full =
        (stride * input.saturating_sub(1) + output_padding + dilation * (kernel - 1) + 1) as i64;
    let same = matches!(auto_pad, AutoPad::SameUpper | AutoPad::SameLower);
    if same {
        let out = output_shape.unwrap_or(input * stride) as i64;
        let total = full - out;
        let small = total.div_euclid(2);
        let (pb, pe) = if auto_pad == AutoPad::SameUpper {
            (small, total - small)
        } else {
            (total - small, small)
        };
        return Ok((out as usize, pb, pe));
    }
    let (pb, pe) = if auto_pad == AutoPad::Valid {
        (0, 0)
    } else {
        pads
    };
    match output_shape {
        // The reference keeps the given begin pad and sizes the output as asked.
        Some(out) => Ok((out, pb, full - pb - out as i64)),
        None => {
            let out = full - pb - pe;
            if out < 0 {
                return Err(format!("pads {pb}+{pe} exceed the full output size {full}"));
            }
            Ok((out as usize, pb, pe))
        }
    }
}

/// The output size of one resized dim from its scale (`floor(in * scale)`, as the ONNX
/// reference computes it in double precision).
pub fn resize_scaled_dim(input: usize, scale: f32) -> usize {
    (input as f64 * scale as f64).floor().max(0.0) as usize
}

/// Resolves `sizes` under an aspect policy: returns the per-axis `(scale, out)` for the given
/// input sizes of the resized axes.
pub fn resize_sizes(input: &[usize], sizes: &[usize], policy: AspectPolicy) -> Vec<(f64, usize)> {
    let raw: Vec<f64> = input
        .iter()
        .zip(sizes)
        .map(|(&i, &o)| o as f64 / i as f64)
        .collect();
    match policy {
        AspectPolicy::Stretch => raw.into_iter().zip(sizes).map(|(s, &o)| (s, o)).collect(),
        AspectPolicy::NotLarger | AspectPolicy::NotSmaller => {
            let pick = if policy == AspectPolicy::NotLarger {
                f64::min
            } else {
                f64::max
            };
            let s = raw.iter().copied().reduce(pick).unwrap_or(1.0);
            input
                .iter()
                .map(|&i| (s, (s * i as f64 + 0.5) as usize))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_geometry() {
        // ceil_mode: 4 + 0 - 3 = 1, /2 -> ceil 1 + 1 = 2 windows.
        assert_eq!(
            window_dim(AutoPad::NotSet, 4, 3, 2, 1, (0, 0), true).unwrap(),
            (2, 0, 0)
        );
        assert_eq!(
            window_dim(AutoPad::NotSet, 4, 3, 2, 1, (0, 0), false).unwrap(),
            (1, 0, 0)
        );
        assert_eq!(
            window_dim(AutoPad::NotSet, 5, 2, 2, 1, (0, 1), true).unwrap(),
            (3, 0, 1)
        );
        // A third window would start in the end padding: dropped.
        assert_eq!(
            window_dim(AutoPad::NotSet, 4, 1, 2, 1, (0, 1), true).unwrap(),
            (2, 0, 1)
        );
        assert_eq!(
            window_dim(AutoPad::SameUpper, 5, 3, 2, 1, (9, 9), false).unwrap(),
            (3, 1, 1)
        );
        assert_eq!(
            window_dim(AutoPad::SameUpper, 4, 2, 1, 1, (0, 0), false).unwrap(),
            (4, 0, 1)
        );
        assert_eq!(
            window_dim(AutoPad::SameLower, 4, 2, 1, 1, (0, 0), false).unwrap(),
            (4, 1, 0)
        );
        assert_eq!(
            window_dim(AutoPad::Valid, 7, 3, 2, 1, (1, 1), false).unwrap(),
            (3, 0, 0)
        );
    }
}
