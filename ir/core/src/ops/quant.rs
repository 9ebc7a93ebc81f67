//! The quant family: affine quantize/dequantize (per-tensor, per-axis, blocked), dynamic
//! quantization, and the integer matmul/convolution kernels of quantized models.
//!
//! Quantization is `q = saturate(round_half_even(x / scale) + zero_point)` and dequantization
//! `x = (q - zero_point) * scale`. The granularity follows the scale's shape: a scalar (or one
//! element) is per-tensor; a vector is per-axis along `axis`; with `block_size > 0`, the scale
//! has the input's shape except along `axis`, where each scale covers `block_size` elements.

use super::{InferCx, InferError};
use crate::DType;
use crate::shape::{Dim, Shape, TensorType, broadcast_shapes};
use serde::{Deserialize, Serialize};

/// How a convolution pads its input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvPad {
    /// Explicit pads, `[begin_0, begin_1, ..., end_0, end_1, ...]` (ONNX order).
    Explicit(Vec<usize>),
    /// Output size `ceil(in / stride)`, the extra padding at the end (ONNX `SAME_UPPER`).
    SameUpper,
    /// Output size `ceil(in / stride)`, the extra padding at the start (ONNX `SAME_LOWER`).
    SameLower,
}

/// The geometry of an N-d convolution over `[N, C, spatial...]` with weights `[M, C/group, k...]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvGeom {
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pad: ConvPad,
    pub group: usize,
}

impl ConvGeom {
    /// Begin and end pads of each spatial axis for an input of the given spatial dims and
    /// kernel dims (which also fixes the SAME_* pads).
    pub fn pads(&self, input: &[usize], kernel: &[usize]) -> (Vec<usize>, Vec<usize>) {
        let n = input.len();
        match &self.pad {
            ConvPad::Explicit(p) => (p[..n].to_vec(), p[n..2 * n].to_vec()),
            ConvPad::SameUpper | ConvPad::SameLower => {
                let (mut head, mut tail) = (vec![0; n], vec![0; n]);
                for i in 0..n {
                    let s = self.strides[i];
                    let target = input[i].div_ceil(s);
                    let eff_k = (kernel[i].max(1) - 1) * self.dilations[i] + 1;
                    let needed = ((target.max(1) - 1) * s + eff_k).saturating_sub(input[i]);
                    head[i] = if self.pad == ConvPad::SameLower {
                        needed.div_ceil(2)
                    } else {
                        needed / 2
                    };
                    tail[i] = needed - head[i];
                }
                (head, tail)
            }
        }
    }

    /// The output length of spatial axis `i`, or `None` when the kernel does not fit.
    pub fn out_len(
        &self,
        i: usize,
        input: usize,
        kernel: usize,
        pad_begin: usize,
        pad_end: usize,
    ) -> Option<usize> {
        let eff_k = (kernel.max(1) - 1) * self.dilations[i] + 1;
        let padded = input + pad_begin + pad_end;
        (padded >= eff_k).then(|| (padded - eff_k) / self.strides[i] + 1)
    }

    /// The output type's spatial dims for symbolic input dims.
    fn out_dims(&self, input: &[Dim], kernel: &[Dim]) -> Result<Shape, InferError> {
        let n = input.len();
        if self.strides.len() != n || self.dilations.len() != n {
            return Err(InferError::Attr {
                name: "strides",
                reason: format!("expected {n} spatial axes"),
            });
        }
        if let ConvPad::Explicit(p) = &self.pad
            && p.len() != 2 * n
        {
            return Err(InferError::Attr {
                name: "pads",
                reason: format!("expected {} values", 2 * n),
            });
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let d = match (&self.pad, input[i].known(), kernel[i].known()) {
                (ConvPad::SameUpper | ConvPad::SameLower, Some(x), _) => {
                    Dim::Known(x.div_ceil(self.strides[i]))
                }
                (ConvPad::Explicit(p), Some(x), Some(k)) => {
                    let o = self.out_len(i, x, k, p[i], p[n + i]).ok_or_else(|| {
                        InferError::Shape(format!("kernel {k} does not fit spatial dim {x}"))
                    })?;
                    Dim::Known(o)
                }
                _ => Dim::Unknown,
            };
            out.push(d);
        }
        Ok(out)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantOp {
    /// Inputs: x (float or i32), scale, zero_point (optional, of type `to`). Output: `to`
    /// (`is_quant_type`). Integers saturate to their range. Float targets take `x / scale`
    /// converted as `Cast` does (float8 with `saturate`), ignoring the zero point, except f4e2m1,
    /// which adds the zero point's value first (as ONNX's reference does).
    Quantize {
        axis: usize,
        block_size: usize,
        to: DType,
        /// Only for float8 targets (ONNX's `saturate`): out-of-range values become the largest
        /// finite value rather than infinity or NaN.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        saturate: bool,
    },
    /// Inputs: x (`is_quant_type`), scale, zero_point (optional, x's type; ignored for the
    /// float8 types, where it must be zero, and for f4e2m1). Output: `to` (a float type).
    Dequantize {
        axis: usize,
        block_size: usize,
        to: DType,
    },
    /// Quantizes a float tensor to u8 with scale and zero point computed from its range.
    /// Outputs: y (u8), scale (f32 scalar), zero_point (u8 scalar).
    DynamicQuantize,
    /// numpy-style matmul of 8-bit integers into i32. Inputs: a, b, a_zero_point (scalar or per
    /// row: `[M]` or `[..., M, 1]`), b_zero_point (scalar or per column: `[N]` or `[..., 1, N]`).
    #[serde(rename = "matmul_integer")]
    MatMulInteger,
    /// Convolution of 8-bit integers into i32. Inputs: x, w, x_zero_point (scalar),
    /// w_zero_point (scalar or per output channel `[M]`).
    ConvInteger(ConvGeom),
    /// Quantized matmul. Inputs: a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale,
    /// y_zero_point; output in y_zero_point's type.
    #[serde(rename = "qlinear_matmul")]
    QLinearMatMul,
    /// Quantized convolution. Inputs: x, x_scale, x_zero_point, w, w_scale, w_zero_point,
    /// y_scale, y_zero_point, bias (optional i32 `[M]`); output in y_zero_point's type.
    #[serde(rename = "qlinear_conv")]
    QLinearConv(ConvGeom),
}

/// The integer types mlc quantizes to.
pub fn is_quant_int(d: DType) -> bool {
    matches!(
        d,
        DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::I32
    )
}

/// Every type `quantize` produces and `dequantize` takes: the quantized integers and the
/// storage types but f8e8m0 (a scale type, not a value type).
pub fn is_quant_type(d: DType) -> bool {
    is_quant_int(d) || (d.is_storage_only() && d != DType::F8E8M0)
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl QuantOp {
    pub fn infer(&self, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        match self {
            QuantOp::Quantize {
                axis,
                block_size,
                to,
                ..
            } => {
                cx.arity(2, 3)?;
                let x = cx.input(0)?;
                if !(x.dtype.is_float() || x.dtype == DType::I32) {
                    return Err(InferError::DType {
                        index: 0,
                        expected: "a float type or i32".into(),
                        found: x.dtype,
                    });
                }
                if !is_quant_type(*to) {
                    return Err(InferError::Attr {
                        name: "to",
                        reason: format!("cannot quantize to {to}"),
                    });
                }
                if let Some(zp) = cx.opt_input(2)
                    && zp.dtype != *to
                {
                    return Err(InferError::DType {
                        index: 2,
                        expected: to.to_string(),
                        found: zp.dtype,
                    });
                }
                check_granularity(x, cx.input(1)?, *axis, *block_size)?;
                Ok(vec![TensorType::new(*to, x.shape.clone())])
            }
            QuantOp::Dequantize {
                axis,
                block_size,
                to,
            } => {
                cx.arity(2, 3)?;
                let x = cx.input(0)?;
                if !is_quant_type(x.dtype) {
                    return Err(InferError::DType {
                        index: 0,
                        expected: "a quantized type".into(),
                        found: x.dtype,
                    });
                }
                if !to.is_float() {
                    return Err(InferError::Attr {
                        name: "to",
                        reason: format!("cannot dequantize to {to}"),
                    });
                }
                if let Some(zp) = cx.opt_input(2)
                    && zp.dtype != x.dtype
                {
                    return Err(InferError::DType {
                        index: 2,
                        expected: x.dtype.to_string(),
                        found: zp.dtype,
                    });
                }
                check_granularity(x, cx.input(1)?, *axis, *block_size)?;
                Ok(vec![TensorType::new(*to, x.shape.clone())])
            }
            QuantOp::DynamicQuantize => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                if !x.dtype.is_float() {
                    return Err(InferError::DType {
                        index: 0,
                        expected: "a float type".into(),
                        found: x.dtype,
                    });
                }
                Ok(vec![
                    TensorType::new(DType::U8, x.shape.clone()),
                    TensorType::scalar(DType::F32),
                    TensorType::scalar(DType::U8),
                ])
            }
            QuantOp::MatMulInteger => {
                cx.arity(2, 4)?;
                let (a, b) = (cx.input(0)?, cx.input(1)?);
                int8_input(a, 0)?;
                int8_input(b, 1)?;
                zero_point_type(cx, 2, a.dtype)?;
                zero_point_type(cx, 3, b.dtype)?;
                Ok(vec![TensorType::new(
                    DType::I32,
                    matmul_shape(&a.shape, &b.shape)?,
                )])
            }
            QuantOp::QLinearMatMul => {
                cx.arity(8, 8)?;
                let (a, b) = (cx.input(0)?, cx.input(3)?);
                int8_input(a, 0)?;
                int8_input(b, 3)?;
                zero_point_type(cx, 2, a.dtype)?;
                zero_point_type(cx, 5, b.dtype)?;
                let out = cx.opt_input(7).map_or(a.dtype, |t| t.dtype);
                int8_input(&TensorType::scalar(out), 7)?;
                Ok(vec![TensorType::new(
                    out,
                    matmul_shape(&a.shape, &b.shape)?,
                )])
            }
            QuantOp::ConvInteger(g) => {
                cx.arity(2, 4)?;
                let (x, w) = (cx.input(0)?, cx.input(1)?);
                int8_input(x, 0)?;
                int8_input(w, 1)?;
                zero_point_type(cx, 2, x.dtype)?;
                zero_point_type(cx, 3, w.dtype)?;
                Ok(vec![TensorType::new(DType::I32, conv_shape(g, x, w)?)])
            }
            QuantOp::QLinearConv(g) => {
                cx.arity(8, 9)?;
                let (x, w) = (cx.input(0)?, cx.input(3)?);
                int8_input(x, 0)?;
                int8_input(w, 3)?;
                zero_point_type(cx, 2, x.dtype)?;
                zero_point_type(cx, 5, w.dtype)?;
                if let Some(b) = cx.opt_input(8)
                    && b.dtype != DType::I32
                {
                    return Err(InferError::DType {
                        index: 8,
                        expected: "i32".into(),
                        found: b.dtype,
                    });
                }
                let out = cx.opt_input(7).map_or(x.dtype, |t| t.dtype);
                int8_input(&TensorType::scalar(out), 7)?;
                Ok(vec![TensorType::new(out, conv_shape(g, x, w)?)])
            }
        }
    }
}

fn int8_input(t: &TensorType, index: usize) -> Result<(), InferError> {
    if !matches!(t.dtype, DType::I8 | DType::U8) {
        return Err(InferError::DType {
            index,
            expected: "i8 or u8".into(),
            found: t.dtype,
        });
    }
    Ok(())
}

fn zero_point_type(cx: &InferCx, index: usize, want: DType) -> Result<(), InferError> {
    match cx.opt_input(index) {
        Some(t) if t.dtype != want => Err(InferError::DType {
            index,
            expected: want.to_string(),
            found: t.dtype,
        }),
        _ => Ok(()),
    }
}

/// Checks the scale's shape against the granularity it implies.
fn check_granularity(
    x: &TensorType,
    scale: &TensorType,
    axis: usize,
    block_size: usize,
) -> Result<(), InferError> {
    let one = scale.shape.iter().all(|d| d == &Dim::Known(1));
    if block_size == 0 && (scale.rank() == 0 || one) {
        return Ok(());
    }
    if axis >= x.rank() {
        return Err(InferError::Shape(format!(
            "axis {axis} out of range for {x}"
        )));
    }
    if block_size == 0 {
        if scale.rank() != 1 {
            return Err(InferError::Shape(format!(
                "per-axis scale must be 1-D, got {scale}"
            )));
        }
        if let (Some(s), Some(n)) = (scale.shape[0].known(), x.shape[axis].known())
            && s != n
        {
            return Err(InferError::Shape(format!(
                "scale has {s} elements for axis length {n}"
            )));
        }
        return Ok(());
    }
    if scale.rank() != x.rank() {
        return Err(InferError::Shape(format!(
            "blocked scale {scale} must have the rank of {x}"
        )));
    }
    for (i, (s, d)) in scale.shape.iter().zip(&x.shape).enumerate() {
        if let (Some(s), Some(d)) = (s.known(), d.known()) {
            let want = if i == axis { d.div_ceil(block_size) } else { d };
            if s != want {
                return Err(InferError::Shape(format!(
                    "blocked scale {scale} does not fit {x} with block size {block_size}"
                )));
            }
        }
    }
    Ok(())
}

/// The output shape of a numpy-style matmul.
fn matmul_shape(a: &[Dim], b: &[Dim]) -> Result<Shape, InferError> {
    if a.is_empty() || b.is_empty() {
        return Err(InferError::Shape(
            "matmul operands must have rank >= 1".into(),
        ));
    }
    let (ab, bb) = (
        &a[..a.len().saturating_sub(2)],
        &b[..b.len().saturating_sub(2)],
    );
    let k_a = &a[a.len() - 1];
    let k_b = if b.len() == 1 { &b[0] } else { &b[b.len() - 2] };
    if let (Some(x), Some(y)) = (k_a.known(), k_b.known())
        && x != y
    {
        return Err(InferError::Shape(format!(
            "contraction dims {x} and {y} differ"
        )));
    }
    let mut out = broadcast_shapes(&[ab, bb])
        .ok_or_else(|| InferError::Shape("batch dims do not broadcast".into()))?;
    if a.len() >= 2 {
        out.push(a[a.len() - 2].clone());
    }
    if b.len() >= 2 {
        out.push(b[b.len() - 1].clone());
    }
    Ok(out)
}

fn conv_shape(g: &ConvGeom, x: &TensorType, w: &TensorType) -> Result<Shape, InferError> {
    if x.rank() < 3 || w.rank() != x.rank() {
        return Err(InferError::Shape(format!(
            "conv input {x} and weights {w} must be [N,C,...] and [M,C/group,...]"
        )));
    }
    if g.group == 0 {
        return Err(InferError::Attr {
            name: "group",
            reason: "must be positive".into(),
        });
    }
    if let (Some(c), Some(wc)) = (x.shape[1].known(), w.shape[1].known())
        && c != wc * g.group
    {
        return Err(InferError::Shape(format!(
            "{c} input channels do not match weights {w} with group {}",
            g.group
        )));
    }
    let mut out = vec![x.shape[0].clone(), w.shape[0].clone()];
    out.extend(g.out_dims(&x.shape[2..], &w.shape[2..])?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_geometry() {
        let g = ConvGeom {
            strides: vec![2, 2],
            dilations: vec![1, 1],
            pad: ConvPad::SameUpper,
            group: 1,
        };
        assert_eq!(g.pads(&[5, 6], &[3, 3]), (vec![1, 0], vec![1, 1]));
        let g = ConvGeom {
            pad: ConvPad::SameLower,
            ..g
        };
        assert_eq!(g.pads(&[5, 6], &[3, 3]), (vec![1, 1], vec![1, 0]));
        let x = TensorType::new(
            DType::U8,
            vec![
                Dim::Sym("n".into()),
                Dim::Known(4),
                Dim::Known(7),
                Dim::Known(7),
            ],
        );
        let w = TensorType::fixed(DType::U8, &[8, 4, 3, 3]);
        let g = ConvGeom {
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pad: ConvPad::Explicit(vec![1, 1, 1, 1]),
            group: 1,
        };
        assert_eq!(
            conv_shape(&g, &x, &w).unwrap(),
            vec![
                Dim::Sym("n".into()),
                Dim::Known(8),
                Dim::Known(7),
                Dim::Known(7)
            ]
        );
    }

    #[test]
    fn matmul_shapes() {
        let s = |d: &[usize]| d.iter().map(|&n| Dim::Known(n)).collect::<Shape>();
        assert_eq!(
            matmul_shape(&s(&[2, 1, 3, 4]), &s(&[5, 4, 6])).unwrap(),
            s(&[2, 5, 3, 6])
        );
        assert_eq!(matmul_shape(&s(&[4]), &s(&[4, 6])).unwrap(), s(&[6]));
        assert!(matmul_shape(&s(&[3, 4]), &s(&[5, 6])).is_err());
    }

    #[test]
    fn op_names() {
        assert_eq!(
            crate::Op::Quant(QuantOp::DynamicQuantize).name(),
            "quant.dynamic_quantize"
        );
        let q = QuantOp::Quantize {
            axis: 1,
            block_size: 0,
            to: DType::U8,
            saturate: true,
        };
        assert_eq!(crate::Op::Quant(q).name(), "quant.quantize");
        assert_eq!(
            crate::Op::Quant(QuantOp::QLinearMatMul).name(),
            "quant.qlinear_matmul"
        );
    }
}
