//! Import of ONNX's neural-network ops (opsets 7-23) into the `nn` family.
//!
//! Every opset's spelling is normalized to one IR form: defaults are filled in (strides,
//! dilations, pads, axes), axes become non-negative, `auto_pad` and ConvTranspose's
//! `output_shape` are resolved into explicit pads when the input's spatial dims are static,
//! and Resize's `roi`/`scales`/`sizes` move into attributes when they are constants.

use crate::cx::{NodeCx, NodeError, Registry, invalid};
use mlc_ir::ops::nn::{
    AspectPolicy, AutoPad, CoordMode, GridPadding, NearestMode, NnOp, ResizeMode, Window,
    conv_transpose_dim, window_dim,
};
use mlc_ir::ops::norm_axis;
use mlc_ir::{DType, Op, ValueId};

pub fn register(r: &mut Registry) {
    r.add("", "MatMul", matmul);
    r.add("", "Gemm", gemm);
    r.add("", "Conv", conv);
    r.add("", "ConvTranspose", conv_transpose);
    r.add("", "MaxPool", |cx| pool(cx, PoolKind::Max));
    r.add("", "AveragePool", |cx| pool(cx, PoolKind::Avg));
    r.add("", "LpPool", |cx| pool(cx, PoolKind::Lp));
    r.add("", "GlobalMaxPool", |cx| unary(cx, NnOp::GlobalMaxPool));
    r.add("", "GlobalAveragePool", |cx| unary(cx, NnOp::GlobalAvgPool));
    r.add("", "GlobalLpPool", |cx| {
        let p = cx.attr_float("p", 2.0)?;
        unary(cx, NnOp::GlobalLpPool { p })
    });
    r.add("", "BatchNormalization", batch_norm);
    r.add("", "LayerNormalization", layer_norm);
    r.add("", "InstanceNormalization", |cx| {
        let epsilon = cx.attr_float("epsilon", 1e-5)?;
        inputs_op(cx, NnOp::InstanceNorm { epsilon }, 3)
    });
    r.add("", "GroupNormalization", |cx| {
        let num_groups = positive(cx, "num_groups", None)?;
        let epsilon = cx.attr_float("epsilon", 1e-5)?;
        inputs_op(
            cx,
            NnOp::GroupNorm {
                num_groups,
                epsilon,
            },
            3,
        )
    });
    r.add("", "RMSNormalization", |cx| {
        let rank = cx.input_type(0)?.rank();
        let axis = norm_axis(cx.attr_int("axis", -1)?, rank)?;
        let epsilon = cx.attr_float("epsilon", 1e-5)?;
        inputs_op(cx, NnOp::RmsNorm { axis, epsilon }, 2)
    });
    r.add("", "LRN", |cx| {
        let size = positive(cx, "size", None)?;
        let op = NnOp::Lrn {
            size,
            alpha: cx.attr_float("alpha", 1e-4)?,
            beta: cx.attr_float("beta", 0.75)?,
            bias: cx.attr_float("bias", 1.0)?,
        };
        unary(cx, op)
    });
    r.add("", "MeanVarianceNormalization", |cx| {
        let rank = cx.input_type(0)?.rank();
        let axes = cx.attr_ints("axes")?.unwrap_or_else(|| vec![0, 2, 3]);
        let axes = norm_axes(&axes, rank)?;
        unary(cx, NnOp::MeanVarianceNorm { axes })
    });
    r.add("", "Det", |cx| unary(cx, NnOp::Det));
    r.add("", "Einsum", |cx| {
        let equation: String = cx
            .attr_str("equation", "")?
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let n = cx.n_inputs();
        inputs_op(cx, NnOp::Einsum { equation }, n)
    });
    r.add("", "Resize", resize);
    r.add("", "Upsample", upsample);
    r.add("", "GridSample", grid_sample);
}

/// Emits a one-output op on input 0.
fn unary(cx: &mut NodeCx, op: NnOp) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    Ok(vec![cx.emit1(Op::Nn(op), vec![x])?])
}

/// Emits a one-output op on the first `n` inputs, keeping absent optional ones absent.
fn inputs_op(cx: &mut NodeCx, op: NnOp, n: usize) -> Result<Vec<ValueId>, NodeError> {
    let inputs: Vec<Option<ValueId>> = (0..n).map(|i| cx.opt_input(i)).collect();
    cx.emit(Op::Nn(op), inputs, 1)
}

fn positive(cx: &NodeCx, name: &str, default: Option<i64>) -> Result<usize, NodeError> {
    let v = match (cx.attr_int_opt(name)?, default) {
        (Some(v), _) | (None, Some(v)) => v,
        (None, None) => {
            return Err(NodeError::Attr {
                name: name.into(),
                reason: "is required".into(),
            });
        }
    };
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| NodeError::Attr {
            name: name.into(),
            reason: format!("must be positive, found {v}"),
        })
}

fn norm_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, NodeError> {
    Ok(axes
        .iter()
        .map(|&a| norm_axis(a, rank))
        .collect::<Result<_, _>>()?)
}

/// A list attribute of non-negative ints with `n` entries, or `default` repeated.
fn ints_attr(cx: &NodeCx, name: &str, n: usize, default: usize) -> Result<Vec<usize>, NodeError> {
    match cx.attr_ints(name)? {
        None => Ok(vec![default; n]),
        Some(v) if v.is_empty() => Ok(vec![default; n]),
        Some(v) => {
            if v.len() != n {
                return Err(NodeError::Attr {
                    name: name.into(),
                    reason: format!("expected {n} values, found {v:?}"),
                });
            }
            v.iter()
                .map(|&x| {
                    usize::try_from(x).map_err(|_| NodeError::Attr {
                        name: name.into(),
                        reason: format!("negative value in {v:?}"),
                    })
                })
                .collect()
        }
    }
}

fn auto_pad(cx: &NodeCx) -> Result<AutoPad, NodeError> {
    match cx.attr_str("auto_pad", "NOTSET")?.as_str() {
        "NOTSET" | "" => Ok(AutoPad::NotSet),
        "SAME_UPPER" => Ok(AutoPad::SameUpper),
        "SAME_LOWER" => Ok(AutoPad::SameLower),
        "VALID" => Ok(AutoPad::Valid),
        other => Err(NodeError::Attr {
            name: "auto_pad".into(),
            reason: format!("unknown value {other:?}"),
        }),
    }
}

/// Static spatial dims of input `i`, if all are known.
fn static_spatial(cx: &NodeCx, i: usize) -> Result<Option<Vec<usize>>, NodeError> {
    let t = cx.input_type(i)?;
    Ok(t.static_shape().map(|s| s[2.min(s.len())..].to_vec()))
}

/// Replaces `auto_pad` by the explicit pads it stands for, where the dims allow.
fn resolve_window(
    ins: Option<&[usize]>,
    kernel: Option<&[usize]>,
    strides: &[usize],
    dilations: &[usize],
    pads: &mut [usize],
    auto_pad: &mut AutoPad,
    ceil_mode: bool,
) -> Result<(), NodeError> {
    let (Some(ins), Some(kernel)) = (ins, kernel) else {
        return Ok(());
    };
    if *auto_pad == AutoPad::NotSet {
        return Ok(());
    }
    let k = ins.len();
    for i in 0..k {
        let (_, b, e) = window_dim(
            *auto_pad,
            ins[i],
            kernel[i],
            strides[i],
            dilations[i],
            (0, 0),
            ceil_mode,
        )
        .map_err(invalid)?;
        pads[i] = b;
        pads[k + i] = e;
    }
    *auto_pad = AutoPad::NotSet;
    Ok(())
}

fn matmul(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    Ok(vec![cx.emit1(Op::Nn(NnOp::Matmul), vec![a, b])?])
}

fn gemm(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let op = NnOp::Gemm {
        trans_a: cx.attr_int("transA", 0)? != 0,
        trans_b: cx.attr_int("transB", 0)? != 0,
        alpha: cx.attr_float("alpha", 1.0)?,
        beta: cx.attr_float("beta", 1.0)?,
    };
    inputs_op(cx, op, 3)
}

fn conv(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let k = spatial_rank(cx)?;
    let strides = ints_attr(cx, "strides", k, 1)?;
    let dilations = ints_attr(cx, "dilations", k, 1)?;
    let mut pads = ints_attr(cx, "pads", 2 * k, 0)?;
    let mut auto_pad = auto_pad(cx)?;
    let group = positive(cx, "group", Some(1))?;
    let ins = static_spatial(cx, 0)?;
    let kernel = static_spatial(cx, 1)?;
    resolve_window(
        ins.as_deref(),
        kernel.as_deref(),
        &strides,
        &dilations,
        &mut pads,
        &mut auto_pad,
        false,
    )?;
    inputs_op(
        cx,
        NnOp::Conv {
            strides,
            dilations,
            pads,
            group,
            auto_pad,
        },
        3,
    )
}

fn spatial_rank(cx: &NodeCx) -> Result<usize, NodeError> {
    let r = cx.input_type(0)?.rank();
    if r < 3 {
        return Err(NodeError::Input {
            index: 0,
            reason: format!("must be [N, C, spatial...], has rank {r}"),
        });
    }
    Ok(r - 2)
}

fn conv_transpose(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let k = spatial_rank(cx)?;
    let strides = ints_attr(cx, "strides", k, 1)?;
    let dilations = ints_attr(cx, "dilations", k, 1)?;
    let output_padding = ints_attr(cx, "output_padding", k, 0)?;
    let mut pads: Vec<i64> = ints_attr(cx, "pads", 2 * k, 0)?
        .into_iter()
        .map(|v| v as i64)
        .collect();
    let mut auto_pad = auto_pad(cx)?;
    let group = positive(cx, "group", Some(1))?;
    let mut output_shape = match cx.attr_ints("output_shape")? {
        Some(v) if !v.is_empty() => {
            // Some exporters give the full [N, C, spatial...] shape.
            let v = if v.len() == k + 2 { v[2..].to_vec() } else { v };
            if v.len() != k || v.iter().any(|&d| d < 0) {
                return Err(NodeError::Attr {
                    name: "output_shape".into(),
                    reason: format!("expected {k} sizes, found {v:?}"),
                });
            }
            Some(v.into_iter().map(|d| d as usize).collect::<Vec<_>>())
        }
        _ => None,
    };
    // Explicit pads take precedence over SAME auto_pad in the ONNX reference.
    if cx.attr_ints("pads")?.is_some_and(|p| !p.is_empty()) && auto_pad != AutoPad::Valid {
        auto_pad = AutoPad::NotSet;
    }
    if let (Some(ins), Some(ks)) = (static_spatial(cx, 0)?, static_spatial(cx, 1)?)
        && (auto_pad != AutoPad::NotSet || output_shape.is_some())
    {
        for i in 0..k {
            let os = output_shape.as_ref().map(|o| o[i]);
            let (_, b, e) = conv_transpose_dim(
                ins[i],
                ks[i],
                strides[i],
                dilations[i],
                output_padding[i],
                (pads[i], pads[k + i]),
                auto_pad,
                os,
            )
            .map_err(invalid)?;
            pads[i] = b;
            pads[k + i] = e;
        }
        auto_pad = AutoPad::NotSet;
        output_shape = None;
    }
    let op = NnOp::ConvTranspose {
        strides,
        dilations,
        pads,
        output_padding,
        group,
        auto_pad,
        output_shape,
    };
    inputs_op(cx, op, 3)
}

#[derive(Clone, Copy, PartialEq)]
enum PoolKind {
    Max,
    Avg,
    Lp,
}

fn pool(cx: &mut NodeCx, kind: PoolKind) -> Result<Vec<ValueId>, NodeError> {
    let k = spatial_rank(cx)?;
    let kernel = ints_attr(cx, "kernel_shape", k, 0)?;
    if kernel.contains(&0) {
        return Err(NodeError::Attr {
            name: "kernel_shape".into(),
            reason: format!("expected {k} positive sizes"),
        });
    }
    let strides = ints_attr(cx, "strides", k, 1)?;
    let dilations = ints_attr(cx, "dilations", k, 1)?;
    let mut pads = ints_attr(cx, "pads", 2 * k, 0)?;
    let mut auto_pad = auto_pad(cx)?;
    let ceil_mode = cx.attr_int("ceil_mode", 0)? != 0;
    let ins = static_spatial(cx, 0)?;
    resolve_window(
        ins.as_deref(),
        Some(&kernel),
        &strides,
        &dilations,
        &mut pads,
        &mut auto_pad,
        ceil_mode,
    )?;
    let window = Window {
        kernel,
        strides,
        dilations,
        pads,
        auto_pad,
        ceil_mode,
    };
    let x = cx.input(0)?;
    match kind {
        PoolKind::Max => {
            let op = NnOp::MaxPool {
                window,
                storage_order_col_major: cx.attr_int("storage_order", 0)? != 0,
            };
            let n = cx.n_outputs.clamp(1, 2);
            cx.emit(Op::Nn(op), vec![Some(x)], n)
        }
        PoolKind::Avg => {
            let op = NnOp::AvgPool {
                window,
                count_include_pad: cx.attr_int("count_include_pad", 0)? != 0,
            };
            Ok(vec![cx.emit1(Op::Nn(op), vec![x])?])
        }
        PoolKind::Lp => {
            let op = NnOp::LpPool {
                window,
                p: cx.attr_float("p", 2.0)?,
            };
            Ok(vec![cx.emit1(Op::Nn(op), vec![x])?])
        }
    }
}

fn batch_norm(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    if cx.opset < 14 && cx.n_outputs > 1 {
        return Err(NodeError::Unsupported(
            "BatchNormalization in training mode before opset 14 (saved mean/var outputs)".into(),
        ));
    }
    if cx.attr_int("training_mode", 0)? != 0 {
        return batch_norm_training(cx);
    }
    if cx.n_outputs > 1 {
        return Err(invalid(
            "BatchNormalization outside training mode has one output",
        ));
    }
    if cx.attr_int("spatial", 1)? == 0 {
        return Err(NodeError::Unsupported(
            "BatchNormalization with spatial=0".into(),
        ));
    }
    let epsilon = cx.attr_float("epsilon", 1e-5)?;
    inputs_op(cx, NnOp::BatchNorm { epsilon }, 5)
}

/// BatchNormalization-14+ with `training_mode=1`: normalizes with the statistics of the batch
/// (mean and population variance over every dim but the channels) and outputs the running
/// statistics `input * momentum + batch * (1 - momentum)` after `Y`. Written as reductions,
/// elementwise ops and inference batch normalization on the batch statistics, which is the
/// spec's definition step by step, so every backend runs it without a kernel of its own.
fn batch_norm_training(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    use mlc_ir::Tensor;
    use mlc_ir::ops::{EwOp, ReduceOp, reduce::ReduceAttrs};
    if cx.n_outputs != 1 && cx.n_outputs != 3 {
        return Err(invalid(format!(
            "BatchNormalization in training mode has 1 or 3 outputs, found {}",
            cx.n_outputs
        )));
    }
    let epsilon = cx.attr_float("epsilon", 1e-5)?;
    let momentum = cx.attr_float("momentum", 0.9)?;
    let x = cx.input(0)?;
    let xt = cx.ty(x).clone();
    if xt.rank() < 2 || !xt.dtype.is_float() {
        return Err(invalid(format!(
            "BatchNormalization needs a float input [N, C, ...], found {xt}"
        )));
    }
    let axes: Vec<usize> = (0..xt.rank()).filter(|&d| d != 1).collect();
    let mean_op = |keepdims| {
        Op::Reduce(ReduceOp::Mean(ReduceAttrs {
            axes: Some(axes.clone()),
            keepdims,
            noop_with_empty_axes: false,
        }))
    };
    let mean_k = cx.emit1(mean_op(true), vec![x])?;
    let centered = cx.emit1(Op::Ew(EwOp::Sub), vec![x, mean_k])?;
    let sq = cx.emit1(Op::Ew(EwOp::Mul), vec![centered, centered])?;
    let var = cx.emit1(mean_op(false), vec![sq])?;
    let mean = cx.emit1(mean_op(false), vec![x])?;
    let (scale, bias) = (cx.input(1)?, cx.input(2)?);
    let y = cx.emit1(
        Op::Nn(NnOp::BatchNorm { epsilon }),
        vec![x, scale, bias, mean, var],
    )?;
    if cx.n_outputs == 1 {
        return Ok(vec![y]);
    }
    let mut outs = vec![y];
    for (running, batch) in [(cx.input(3)?, mean), (cx.input(4)?, var)] {
        let dtype = cx.ty(running).dtype;
        let batch = if cx.ty(batch).dtype == dtype {
            batch
        } else {
            cx.emit1(Op::Ew(EwOp::Cast { to: dtype }), vec![batch])?
        };
        let m = cx.constant(Tensor::scalar(momentum as f64).cast(dtype)?);
        let m1 = cx.constant(Tensor::scalar(1.0 - momentum as f64).cast(dtype)?);
        let kept = cx.emit1(Op::Ew(EwOp::Mul), vec![running, m])?;
        let added = cx.emit1(Op::Ew(EwOp::Mul), vec![batch, m1])?;
        outs.push(cx.emit1(Op::Ew(EwOp::Add), vec![kept, added])?);
    }
    Ok(outs)
}

/// ONNX TensorProto element type codes of the float types `stash_type` may name.
fn stash_dtype(code: i64, x: DType) -> DType {
    match code {
        1 => DType::F32,
        10 => DType::F16,
        11 => DType::F64,
        16 => DType::BF16,
        _ => x,
    }
}

fn layer_norm(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input_type(0)?;
    let axis = norm_axis(cx.attr_int("axis", -1)?, x.rank())?;
    let epsilon = cx.attr_float("epsilon", 1e-5)?;
    let stat_dtype = stash_dtype(cx.attr_int("stash_type", 1)?, x.dtype);
    let inputs = vec![Some(cx.input(0)?), Some(cx.input(1)?), cx.opt_input(2)];
    let n = cx.n_outputs.clamp(1, 3);
    cx.emit(
        Op::Nn(NnOp::LayerNorm {
            axis,
            epsilon,
            stat_dtype,
        }),
        inputs,
        n,
    )
}

/// A Resize input folded into an attribute: its constant value when present and non-empty.
enum Folded<T> {
    Absent,
    Const(T),
    Runtime(ValueId),
}

fn fold<T>(
    cx: &NodeCx,
    i: usize,
    f: impl Fn(&mlc_ir::Tensor) -> Result<T, NodeError>,
) -> Result<Folded<T>, NodeError> {
    let Some(v) = cx.opt_input(i) else {
        return Ok(Folded::Absent);
    };
    match cx.input_const(i) {
        Some(t) if t.is_empty() => Ok(Folded::Absent),
        Some(t) => Ok(Folded::Const(f(t)?)),
        // A run-time input whose type says it is empty is absent too.
        None if cx.ty(v).static_shape().is_some_and(|s| s.contains(&0)) => Ok(Folded::Absent),
        None => Ok(Folded::Runtime(v)),
    }
}

fn resize_mode(s: &str) -> Result<ResizeMode, NodeError> {
    match s {
        "nearest" => Ok(ResizeMode::Nearest),
        "linear" | "bilinear" | "trilinear" => Ok(ResizeMode::Linear),
        "cubic" | "bicubic" => Ok(ResizeMode::Cubic),
        other => Err(NodeError::Attr {
            name: "mode".into(),
            reason: format!("unknown value {other:?}"),
        }),
    }
}

fn resize(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let rank = cx.input_type(0)?.rank();
    let mode = resize_mode(&cx.attr_str("mode", "nearest")?)?;
    // Resize-10 has only `mode` and behaves like Upsample: asymmetric coordinates.
    let (coord_mode, nearest_mode) = if cx.opset < 11 {
        (CoordMode::Asymmetric, NearestMode::Simple)
    } else {
        let coord = match cx
            .attr_str("coordinate_transformation_mode", "half_pixel")?
            .as_str()
        {
            "half_pixel" => CoordMode::HalfPixel,
            "half_pixel_symmetric" => CoordMode::HalfPixelSymmetric,
            "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
            "align_corners" => CoordMode::AlignCorners,
            "asymmetric" => CoordMode::Asymmetric,
            "tf_half_pixel_for_nn" => CoordMode::TfHalfPixelForNn,
            "tf_crop_and_resize" => CoordMode::TfCropAndResize,
            other => {
                return Err(NodeError::Attr {
                    name: "coordinate_transformation_mode".into(),
                    reason: format!("unknown value {other:?}"),
                });
            }
        };
        let nearest = match cx.attr_str("nearest_mode", "round_prefer_floor")?.as_str() {
            "round_prefer_floor" => NearestMode::RoundPreferFloor,
            "round_prefer_ceil" => NearestMode::RoundPreferCeil,
            "floor" => NearestMode::Floor,
            "ceil" => NearestMode::Ceil,
            other => {
                return Err(NodeError::Attr {
                    name: "nearest_mode".into(),
                    reason: format!("unknown value {other:?}"),
                });
            }
        };
        (coord, nearest)
    };
    let axes = match cx.attr_ints("axes")? {
        Some(a) => norm_axes(&a, rank)?,
        None => (0..rank).collect(),
    };
    let aspect_policy = match cx.attr_str("keep_aspect_ratio_policy", "stretch")?.as_str() {
        "stretch" => AspectPolicy::Stretch,
        "not_larger" => AspectPolicy::NotLarger,
        "not_smaller" => AspectPolicy::NotSmaller,
        other => {
            return Err(NodeError::Attr {
                name: "keep_aspect_ratio_policy".into(),
                reason: format!("unknown value {other:?}"),
            });
        }
    };
    // Input positions: Resize-10 is (X, scales); 11+ is (X, roi, scales, sizes).
    let (roi_i, scales_i, sizes_i) = if cx.opset < 11 {
        (None, 1, None)
    } else {
        (Some(1), 2, Some(3))
    };
    let floats = |t: &mlc_ir::Tensor| -> Result<Vec<f32>, NodeError> {
        Ok(t.cast(DType::F32)?
            .to_f64_vec()?
            .into_iter()
            .map(|v| v as f32)
            .collect())
    };
    let sizes_of = |t: &mlc_ir::Tensor| -> Result<Vec<usize>, NodeError> {
        t.to_i64_vec()?
            .into_iter()
            .map(|v| {
                usize::try_from(v).map_err(|_| NodeError::Input {
                    index: 3,
                    reason: format!("negative size {v}"),
                })
            })
            .collect()
    };
    // roi matters only to tf_crop_and_resize; elsewhere it is dropped.
    let roi = match roi_i {
        Some(i) if coord_mode == CoordMode::TfCropAndResize => fold(cx, i, floats)?,
        _ => Folded::Absent,
    };
    let scales = fold(cx, scales_i, floats)?;
    let sizes = match sizes_i {
        Some(i) => fold(cx, i, sizes_of)?,
        None => Folded::Absent,
    };
    let split = |f: Folded<_>| match f {
        Folded::Absent => (None, None),
        Folded::Const(v) => (Some(v), None),
        Folded::Runtime(v) => (None, Some(v)),
    };
    let (roi, roi_in) = split(roi);
    let (scales, scales_in) = split(scales);
    let (sizes, sizes_in) = match sizes {
        Folded::Absent => (None, None),
        Folded::Const(v) => (Some(v), None),
        Folded::Runtime(v) => (None, Some(v)),
    };
    let op = NnOp::Resize {
        mode,
        coord_mode,
        nearest_mode,
        cubic_coeff_a: cx.attr_float("cubic_coeff_a", -0.75)?,
        exclude_outside: cx.attr_int("exclude_outside", 0)? != 0,
        extrapolation_value: cx.attr_float("extrapolation_value", 0.0)?,
        antialias: cx.attr_int("antialias", 0)? != 0,
        axes,
        aspect_policy,
        roi,
        scales,
        sizes,
    };
    let mut inputs = vec![Some(x), roi_in, scales_in, sizes_in];
    while inputs.len() > 1 && inputs.last() == Some(&None) {
        inputs.pop();
    }
    cx.emit(Op::Nn(op), inputs, 1)
}

/// Upsample (opsets 7-9): nearest or (bi)linear with asymmetric coordinates; scales are an
/// attribute in opset 7 and an input from opset 9.
fn upsample(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let rank = cx.input_type(0)?.rank();
    let mode = resize_mode(&cx.attr_str("mode", "nearest")?)?;
    let (scales, scales_in) = match cx.attr_floats("scales")? {
        Some(s) => (Some(s), None),
        None => match fold(cx, 1, |t| {
            Ok(t.cast(DType::F32)?
                .to_f64_vec()?
                .into_iter()
                .map(|v| v as f32)
                .collect())
        })? {
            Folded::Const(s) => (Some(s), None),
            Folded::Runtime(v) => (None, Some(v)),
            Folded::Absent => return Err(invalid("Upsample needs scales")),
        },
    };
    let op = NnOp::Resize {
        mode,
        coord_mode: CoordMode::Asymmetric,
        nearest_mode: NearestMode::Simple,
        cubic_coeff_a: -0.75,
        exclude_outside: false,
        extrapolation_value: 0.0,
        antialias: false,
        axes: (0..rank).collect(),
        aspect_policy: AspectPolicy::Stretch,
        roi: None,
        scales,
        sizes: None,
    };
    let inputs = if scales_in.is_some() {
        vec![Some(x), None, scales_in]
    } else {
        vec![Some(x)]
    };
    cx.emit(Op::Nn(op), inputs, 1)
}

fn grid_sample(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let mode =
        resize_mode(&cx.attr_str("mode", if cx.opset < 20 { "bilinear" } else { "linear" })?)?;
    let padding = match cx.attr_str("padding_mode", "zeros")?.as_str() {
        "zeros" => GridPadding::Zeros,
        "border" => GridPadding::Border,
        "reflection" => GridPadding::Reflection,
        other => {
            return Err(NodeError::Attr {
                name: "padding_mode".into(),
                reason: format!("unknown value {other:?}"),
            });
        }
    };
    let op = NnOp::GridSample {
        mode,
        padding,
        align_corners: cx.attr_int("align_corners", 0)? != 0,
    };
    let (x, g) = (cx.input(0)?, cx.input(1)?);
    Ok(vec![cx.emit1(Op::Nn(op), vec![x, g])?])
}
