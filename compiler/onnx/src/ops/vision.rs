//! Import of ONNX's detection and vision ops into the `vision` family: NonMaxSuppression,
//! RoiAlign, MaxRoiPool, MaxUnpool, Col2Im, DeformConv and AffineGrid.
//!
//! Opset differences normalized here: RoiAlign's `coordinate_transformation_mode` (absent before
//! opset 16, where the only behavior was `output_half_pixel`; default `half_pixel` after).
//! Shape-like inputs (MaxUnpool's output shape, Col2Im's image and block shapes, AffineGrid's
//! size) that are constants become attributes; otherwise they stay inputs.

use crate::cx::{NodeCx, NodeError, Registry, invalid};
use mlc_ir::ops::VisionOp;
use mlc_ir::ops::vision::RoiPoolMode;
use mlc_ir::{Op, ValueId};

pub fn register(r: &mut Registry) {
    r.add("", "NonMaxSuppression", non_max_suppression);
    r.add("", "RoiAlign", roi_align);
    r.add("", "MaxRoiPool", max_roi_pool);
    r.add("", "MaxUnpool", max_unpool);
    r.add("", "Col2Im", col2im);
    r.add("", "DeformConv", deform_conv);
    r.add("", "AffineGrid", affine_grid);
}

fn bad_attr(name: &str, reason: impl Into<String>) -> NodeError {
    NodeError::Attr {
        name: name.into(),
        reason: reason.into(),
    }
}

/// Non-negative integers from an attribute list.
fn sizes(name: &str, v: Vec<i64>) -> Result<Vec<usize>, NodeError> {
    v.into_iter()
        .map(|d| usize::try_from(d).map_err(|_| bad_attr(name, format!("negative entry {d}"))))
        .collect()
}

/// A per-spatial-axis attribute: `len` entries, `default` each when absent.
fn spatial(cx: &NodeCx, name: &str, len: usize, default: usize) -> Result<Vec<usize>, NodeError> {
    match cx.attr_ints(name)? {
        Some(v) if v.len() == len => sizes(name, v),
        Some(v) => Err(bad_attr(
            name,
            format!("expected {len} entries, got {}", v.len()),
        )),
        None => Ok(vec![default; len]),
    }
}

/// Input `i` as a constant shape (attribute form), or `None` when it is only known at run time.
fn const_shape(cx: &NodeCx, i: usize) -> Result<Option<Vec<usize>>, NodeError> {
    match cx.input_const(i) {
        Some(t) => Ok(Some(
            t.to_i64_vec()?
                .into_iter()
                .map(|d| {
                    usize::try_from(d).map_err(|_| NodeError::Input {
                        index: i,
                        reason: format!("negative size {d}"),
                    })
                })
                .collect::<Result<_, _>>()?,
        )),
        None => Ok(None),
    }
}

/// Drops trailing absent inputs, so that arity checks see only the inputs that are there.
fn trim(mut inputs: Vec<Option<ValueId>>) -> Vec<Option<ValueId>> {
    while inputs.last().is_some_and(Option::is_none) {
        inputs.pop();
    }
    inputs
}

fn non_max_suppression(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let center_point_box = match cx.attr_int("center_point_box", 0)? {
        0 => false,
        1 => true,
        v => {
            return Err(bad_attr(
                "center_point_box",
                format!("must be 0 or 1, got {v}"),
            ));
        }
    };
    let inputs = trim((0..5).map(|i| cx.opt_input(i)).collect());
    cx.input(0)?;
    cx.input(1)?;
    cx.emit(
        Op::Vision(VisionOp::NonMaxSuppression { center_point_box }),
        inputs,
        1,
    )
}

fn roi_align(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let (x, rois, batch) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let mode = match cx.attr_str("mode", "avg")?.to_ascii_lowercase().as_str() {
        "avg" => RoiPoolMode::Avg,
        "max" => RoiPoolMode::Max,
        other => return Err(bad_attr("mode", format!("unknown value {other:?}"))),
    };
    // Before opset 16 RoiAlign had no coordinate mode and behaved as `output_half_pixel`.
    let default_ctm = if cx.opset < 16 {
        "output_half_pixel"
    } else {
        "half_pixel"
    };
    let half_pixel = match cx
        .attr_str("coordinate_transformation_mode", default_ctm)?
        .to_ascii_lowercase()
        .as_str()
    {
        "half_pixel" => true,
        "output_half_pixel" => false,
        other => {
            return Err(bad_attr(
                "coordinate_transformation_mode",
                format!("unknown value {other:?}"),
            ));
        }
    };
    let size = |name: &str, default: i64| -> Result<usize, NodeError> {
        let v = cx.attr_int(name, default)?;
        usize::try_from(v).map_err(|_| bad_attr(name, format!("must be non-negative, got {v}")))
    };
    let op = VisionOp::RoiAlign {
        mode,
        output_height: size("output_height", 1)?,
        output_width: size("output_width", 1)?,
        sampling_ratio: size("sampling_ratio", 0)?,
        spatial_scale: cx.attr_float("spatial_scale", 1.0)?,
        half_pixel,
    };
    Ok(vec![cx.emit1(Op::Vision(op), vec![x, rois, batch])?])
}

fn max_roi_pool(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let (x, rois) = (cx.input(0)?, cx.input(1)?);
    let shape = cx
        .attr_ints("pooled_shape")?
        .ok_or_else(|| invalid("MaxRoiPool needs pooled_shape"))?;
    let pooled_shape = match sizes("pooled_shape", shape)?.as_slice() {
        &[h, w] => [h, w],
        other => {
            return Err(bad_attr(
                "pooled_shape",
                format!("expected 2 entries, got {other:?}"),
            ));
        }
    };
    let op = VisionOp::MaxRoiPool {
        pooled_shape,
        spatial_scale: cx.attr_float("spatial_scale", 1.0)?,
    };
    Ok(vec![cx.emit1(Op::Vision(op), vec![x, rois])?])
}

fn max_unpool(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let (x, indices) = (cx.input(0)?, cx.input(1)?);
    let kernel_shape = sizes(
        "kernel_shape",
        cx.attr_ints("kernel_shape")?
            .ok_or_else(|| invalid("MaxUnpool needs kernel_shape"))?,
    )?;
    let n = kernel_shape.len();
    let output_shape = const_shape(cx, 2)?;
    let mut inputs = vec![Some(x), Some(indices)];
    if output_shape.is_none() && cx.opt_input(2).is_some() {
        inputs.push(cx.opt_input(2));
    }
    let op = VisionOp::MaxUnpool {
        strides: spatial(cx, "strides", n, 1)?,
        pads: spatial(cx, "pads", 2 * n, 0)?,
        kernel_shape,
        output_shape,
    };
    cx.emit(Op::Vision(op), inputs, 1)
}

fn col2im(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let (image_in, block_in) = (cx.input(1)?, cx.input(2)?);
    let image_shape = const_shape(cx, 1)?;
    let block_shape = const_shape(cx, 2)?;
    // The spatial rank, when the shapes are known, lets the defaults be spelled out.
    let n = image_shape
        .as_ref()
        .map(Vec::len)
        .or(block_shape.as_ref().map(Vec::len))
        .or_else(|| cx.ty(image_in).shape.first().and_then(|d| d.known()));
    let attr = |name: &str, mult: usize, default: usize| -> Result<Vec<usize>, NodeError> {
        match n {
            Some(n) => spatial(cx, name, mult * n, default),
            None => sizes(name, cx.attr_ints(name)?.unwrap_or_default()),
        }
    };
    let op = VisionOp::Col2Im {
        dilations: attr("dilations", 1, 1)?,
        pads: attr("pads", 2, 0)?,
        strides: attr("strides", 1, 1)?,
        image_shape: image_shape.clone(),
        block_shape: block_shape.clone(),
    };
    let inputs = trim(vec![
        Some(x),
        image_shape.is_none().then_some(image_in),
        block_shape.is_none().then_some(block_in),
    ]);
    cx.emit(Op::Vision(op), inputs, 1)
}

fn deform_conv(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let (x, w, offset) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let n = cx.input_type(0)?.rank().saturating_sub(2);
    if let Some(k) = cx.attr_ints("kernel_shape")? {
        let w_ty = cx.input_type(1)?;
        let known: Vec<Option<usize>> = w_ty.shape.iter().skip(2).map(|d| d.known()).collect();
        let matches = k.len() == known.len()
            && k.iter()
                .zip(&known)
                .all(|(&a, b)| b.is_none_or(|b| a == b as i64));
        if !matches {
            return Err(bad_attr(
                "kernel_shape",
                format!("{k:?} does not match weight {w_ty}"),
            ));
        }
    }
    let positive = |name: &str| -> Result<usize, NodeError> {
        let v = cx.attr_int(name, 1)?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| bad_attr(name, format!("must be positive, got {v}")))
    };
    let op = VisionOp::DeformConv {
        strides: spatial(cx, "strides", n, 1)?,
        dilations: spatial(cx, "dilations", n, 1)?,
        pads: spatial(cx, "pads", 2 * n, 0)?,
        group: positive("group")?,
        offset_group: positive("offset_group")?,
    };
    let inputs = trim(vec![
        Some(x),
        Some(w),
        Some(offset),
        cx.opt_input(3),
        cx.opt_input(4),
    ]);
    cx.emit(Op::Vision(op), inputs, 1)
}

fn affine_grid(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let (theta, size_in) = (cx.input(0)?, cx.input(1)?);
    let size = const_shape(cx, 1)?;
    let op = VisionOp::AffineGrid {
        align_corners: cx.attr_int("align_corners", 0)? != 0,
        size: size.clone(),
    };
    let mut inputs = vec![theta];
    if size.is_none() {
        inputs.push(size_in);
    }
    Ok(vec![cx.emit1(Op::Vision(op), inputs)?])
}
