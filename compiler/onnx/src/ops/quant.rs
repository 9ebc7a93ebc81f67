//! Import of ONNX quantization ops (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear) and
//! integer kernels (MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv) into the `quant`
//! family.
//!
//! Opset differences normalized here: `axis` (opset 13+, default 1), `block_size` (21+),
//! `output_dtype` (21+ for QuantizeLinear, 23+ for DequantizeLinear). The output type is fixed
//! at import (zero point's type, else `output_dtype`, else u8 / the scale's type). `saturate`
//! (opset 19+) only concerns float8 targets; it is kept for them. The 4-, 2-bit and
//! float8/float4 storage types are quantized to and from like the integer types.

use crate::cx::{NodeCx, NodeError, Registry, invalid};
use crate::tensor::dtype_of;
use mlc_ir::ops::quant::{ConvGeom, ConvPad, is_quant_type};
use mlc_ir::ops::{QuantOp, norm_axis};
use mlc_ir::{DType, Dim, Op, ValueId};

pub fn register(r: &mut Registry) {
    r.add("", "QuantizeLinear", quantize);
    r.add("", "DequantizeLinear", dequantize);
    r.add("", "DynamicQuantizeLinear", |cx| {
        let x = cx.input(0)?;
        cx.emit(Op::Quant(QuantOp::DynamicQuantize), vec![Some(x)], 3)
    });
    r.add("", "MatMulInteger", |cx| {
        all_inputs(cx, QuantOp::MatMulInteger, 4)
    });
    r.add("", "QLinearMatMul", |cx| {
        all_inputs(cx, QuantOp::QLinearMatMul, 8)
    });
    r.add("", "ConvInteger", |cx| {
        let g = conv_geom(cx, 0, 1)?;
        all_inputs(cx, QuantOp::ConvInteger(g), 4)
    });
    r.add("", "QLinearConv", |cx| {
        let g = conv_geom(cx, 0, 3)?;
        all_inputs(cx, QuantOp::QLinearConv(g), 9)
    });
}

/// Emits `op` on the node's inputs as they are (absent optional ones stay `None`).
fn all_inputs(cx: &mut NodeCx, op: QuantOp, max: usize) -> Result<Vec<ValueId>, NodeError> {
    if cx.n_inputs() > max {
        return Err(invalid(format!(
            "{} takes at most {max} inputs",
            cx.op_type
        )));
    }
    let inputs = (0..cx.n_inputs()).map(|i| cx.opt_input(i)).collect();
    cx.emit(Op::Quant(op), inputs, 1)
}

/// The `output_dtype` attribute, if set (0 means unset).
fn output_dtype(cx: &NodeCx) -> Result<Option<DType>, NodeError> {
    match cx.attr_int("output_dtype", 0)? {
        0 => Ok(None),
        code => {
            let code =
                i32::try_from(code).map_err(|_| invalid(format!("bad output_dtype {code}")))?;
            dtype_of(code)
                .map(Some)
                .map_err(|e| NodeError::Unsupported(format!("{} to {e}", cx.op_type)))
        }
    }
}

/// The quantization axis, normalized; per-tensor parameters (one element) accept any axis.
fn quant_axis(cx: &NodeCx, block_size: usize) -> Result<usize, NodeError> {
    let rank = cx.input_type(0)?.rank();
    let scale = cx.input_type(1)?;
    let per_tensor = block_size == 0 && scale.shape.iter().all(|d| d == &Dim::Known(1));
    match norm_axis(cx.attr_int("axis", 1)?, rank) {
        Ok(a) => Ok(a),
        Err(_) if per_tensor => Ok(0),
        Err(e) => Err(NodeError::Attr {
            name: "axis".into(),
            reason: e.to_string(),
        }),
    }
}

fn block_size(cx: &NodeCx) -> Result<usize, NodeError> {
    let b = cx.attr_int("block_size", 0)?;
    usize::try_from(b).map_err(|_| NodeError::Attr {
        name: "block_size".into(),
        reason: format!("must be >= 0, got {b}"),
    })
}

fn quantize(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let (x, scale, zp) = (cx.input(0)?, cx.input(1)?, cx.opt_input(2));
    let attr_to = output_dtype(cx)?;
    let to = match zp {
        Some(z) => {
            let zt = cx.ty(z).dtype;
            if attr_to.is_some_and(|t| t != zt) {
                return Err(invalid(format!(
                    "output_dtype {attr_to:?} differs from the zero point's type {zt}"
                )));
            }
            zt
        }
        None => attr_to.unwrap_or(DType::U8),
    };
    if !is_quant_type(to) || to == DType::I32 {
        return Err(NodeError::Unsupported(format!("QuantizeLinear to {to}")));
    }
    let block_size = block_size(cx)?;
    let axis = quant_axis(cx, block_size)?;
    let saturate = cx.attr_int("saturate", 1)? != 0;
    cx.emit(
        Op::Quant(QuantOp::Quantize {
            axis,
            block_size,
            to,
            saturate,
        }),
        vec![Some(x), Some(scale), zp],
        1,
    )
}

fn dequantize(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let (x, scale, zp) = (cx.input(0)?, cx.input(1)?, cx.opt_input(2));
    let xt = cx.ty(x).dtype;
    if !is_quant_type(xt) {
        return Err(NodeError::Unsupported(format!(
            "DequantizeLinear from {xt}"
        )));
    }
    let to = output_dtype(cx)?.unwrap_or(cx.ty(scale).dtype);
    let block_size = block_size(cx)?;
    let axis = quant_axis(cx, block_size)?;
    cx.emit(
        Op::Quant(QuantOp::Dequantize {
            axis,
            block_size,
            to,
        }),
        vec![Some(x), Some(scale), zp],
        1,
    )
}

/// Reads the convolution attributes; `SAME_*` padding becomes explicit pads when the input's
/// spatial dims are static.
fn conv_geom(cx: &NodeCx, x_index: usize, w_index: usize) -> Result<ConvGeom, NodeError> {
    let (xt, wt) = (cx.input_type(x_index)?, cx.input_type(w_index)?);
    if wt.rank() < 3 {
        return Err(invalid(format!(
            "conv weights must be [M, C/group, k...], got {wt}"
        )));
    }
    let n = wt.rank() - 2;
    let positive = |name: &'static str| -> Result<Vec<usize>, NodeError> {
        let v = cx.attr_ints(name)?.unwrap_or_else(|| vec![1; n]);
        if v.len() != n || v.iter().any(|&s| s < 1) {
            return Err(NodeError::Attr {
                name: name.into(),
                reason: format!("expected {n} positive values, got {v:?}"),
            });
        }
        Ok(v.into_iter().map(|s| s as usize).collect())
    };
    let (strides, dilations) = (positive("strides")?, positive("dilations")?);
    let group = usize::try_from(cx.attr_int("group", 1)?)
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| NodeError::Attr {
            name: "group".into(),
            reason: "must be positive".into(),
        })?;
    let pad = match cx.attr_str("auto_pad", "NOTSET")?.as_str() {
        "NOTSET" | "" => {
            let p = cx.attr_ints("pads")?.unwrap_or_else(|| vec![0; 2 * n]);
            if p.len() != 2 * n || p.iter().any(|&v| v < 0) {
                return Err(NodeError::Attr {
                    name: "pads".into(),
                    reason: format!("expected {} non-negative values, got {p:?}", 2 * n),
                });
            }
            ConvPad::Explicit(p.into_iter().map(|v| v as usize).collect())
        }
        "VALID" => ConvPad::Explicit(vec![0; 2 * n]),
        "SAME_UPPER" => ConvPad::SameUpper,
        "SAME_LOWER" => ConvPad::SameLower,
        other => {
            return Err(NodeError::Attr {
                name: "auto_pad".into(),
                reason: format!("unknown value {other:?}"),
            });
        }
    };
    let mut g = ConvGeom {
        strides,
        dilations,
        pad,
        group,
    };
    if !matches!(g.pad, ConvPad::Explicit(_)) && xt.rank() == n + 2 {
        let sp: Option<Vec<usize>> = xt.shape[2..].iter().map(Dim::known).collect();
        let ks: Option<Vec<usize>> = wt.shape[2..].iter().map(Dim::known).collect();
        if let (Some(sp), Some(ks)) = (sp, ks) {
            let (head, tail) = g.pads(&sp, &ks);
            g.pad = ConvPad::Explicit(head.into_iter().chain(tail).collect());
        }
    }
    Ok(g)
}
