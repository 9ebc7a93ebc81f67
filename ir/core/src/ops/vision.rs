//! The vision family: non-max suppression, RoI align and RoI max pooling, max unpooling, col2im,
//! deformable convolution and affine sampling grids.
//!
//! Spatial attributes follow the conv convention of [`super::nn`]: one entry per spatial axis,
//! `pads` as `[begin..., end...]`. Shape-like run-time inputs (col2im's image and block shapes,
//! max_unpool's output shape, affine_grid's size) become attributes when the importer sees a
//! constant; otherwise the attribute is `None` and the kernel reads the input.

use super::{InferCx, InferError};
use crate::DType;
use crate::shape::{Dim, Shape, TensorType};
use serde::{Deserialize, Serialize};

/// How `vision.roi_align` pools the samples of one output bin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoiPoolMode {
    Avg,
    Max,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisionOp {
    /// Greedy per-class non-max suppression. Inputs: `boxes [B, N, 4]`, `scores [B, C, N]`,
    /// then optional scalars `max_output_boxes_per_class` (i64; absent: 0, nothing selected),
    /// `iou_threshold` (absent: 0) and `score_threshold` (absent: no score filter). Output:
    /// the selected `[batch, class, box]` triples, i64 `[?, 3]`, by batch, class, then
    /// descending score (ties: lower box index first).
    NonMaxSuppression {
        /// Boxes are `[x_center, y_center, width, height]` instead of two corners
        /// `[y1, x1, y2, x2]` (the corners in either order).
        center_point_box: bool,
    },
    /// RoI align. Inputs: `x [N, C, H, W]`, `rois [R, 4]` (`x1, y1, x2, y2` in input
    /// coordinates before `spatial_scale`), `batch_indices [R]` (integers). Output
    /// `[R, C, output_height, output_width]`: each bin pools a grid of bilinear samples.
    RoiAlign {
        mode: RoiPoolMode,
        output_height: usize,
        output_width: usize,
        /// Samples per bin along each axis; 0: `ceil(roi_size / output_size)`.
        sampling_ratio: usize,
        spatial_scale: f32,
        /// Shift scaled RoI corners by -0.5 pixel (ONNX `half_pixel`); otherwise
        /// (`output_half_pixel`, the only mode before opset 16) RoIs are at least 1x1.
        half_pixel: bool,
    },
    /// RoI max pooling (Caffe's ROIPooling). Inputs: `x [N, C, H, W]`, `rois [R, 5]`
    /// (`batch, x1, y1, x2, y2`). Output `[R, C, pooled_h, pooled_w]`; empty bins are 0.
    MaxRoiPool {
        pooled_shape: [usize; 2],
        spatial_scale: f32,
    },
    /// The partial inverse of max pooling. Inputs: `x [N, C, D...]`, `indices` (i64, same
    /// shape, flat offsets into the unpooled tensor of the default shape) and, when
    /// `output_shape` is `None` but given, the output shape as an i64 input 2. The unpooled
    /// tensor's default shape is `(in - 1) * stride - pad_begin - pad_end + kernel` per spatial
    /// axis; a larger `output_shape` zero-extends it at the end of each axis (as ONNX's
    /// reference does).
    MaxUnpool {
        kernel_shape: Vec<usize>,
        strides: Vec<usize>,
        pads: Vec<usize>,
        output_shape: Option<Vec<usize>>,
    },
    /// Rearranges column blocks into an image, summing overlaps (the inverse of im2col).
    /// Inputs: `x [N, C * prod(block_shape), L]`, and as i64 inputs 1 and 2 `image_shape` and
    /// `block_shape` where the attributes are `None`. Output `[N, C, image_shape...]`.
    Col2Im {
        image_shape: Option<Vec<usize>>,
        block_shape: Option<Vec<usize>>,
        /// Empty: 1 along every spatial axis.
        dilations: Vec<usize>,
        /// Empty: 0 at both ends of every spatial axis.
        pads: Vec<usize>,
        /// Empty: 1 along every spatial axis.
        strides: Vec<usize>,
    },
    /// Deformable convolution. Inputs: `x [N, C, D...]`, `w [M, C/group, k...]`,
    /// `offset [N, offset_group * prod(k) * rank, O...]` (per kernel tap, one displacement per
    /// spatial axis), optional `b [M]` and `mask [N, offset_group * prod(k), O...]`. Each tap
    /// samples `x` bilinearly (zero outside) at its displaced position.
    DeformConv {
        strides: Vec<usize>,
        dilations: Vec<usize>,
        pads: Vec<usize>,
        group: usize,
        offset_group: usize,
    },
    /// Sampling grid of an affine transform. Inputs: `theta [N, 2, 3]` (or `[N, 3, 4]` for
    /// volumes) and, when `size` is `None`, the i64 size `[N, C, H, W]` (or `[N, C, D, H, W]`)
    /// as input 1. Output `[N, H, W, 2]` (or `[N, D, H, W, 3]`) of `(x, y[, z])` coordinates
    /// in `[-1, 1]`.
    AffineGrid {
        align_corners: bool,
        size: Option<Vec<usize>>,
    },
}

fn shape_err(msg: impl Into<String>) -> InferError {
    InferError::Shape(msg.into())
}

fn attr_err(name: &'static str, reason: impl Into<String>) -> InferError {
    InferError::Attr {
        name,
        reason: reason.into(),
    }
}

fn float_input(t: &TensorType, index: usize) -> Result<(), InferError> {
    if !t.dtype.is_float() {
        return Err(InferError::DType {
            index,
            expected: "a float type".into(),
            found: t.dtype,
        });
    }
    Ok(())
}

fn int_input(t: &TensorType, index: usize) -> Result<(), InferError> {
    if !t.dtype.is_int() {
        return Err(InferError::DType {
            index,
            expected: "an integer type".into(),
            found: t.dtype,
        });
    }
    Ok(())
}

/// Checks input `index` has the given rank.
fn rank_of<'a>(cx: &InferCx<'a>, index: usize, rank: usize) -> Result<&'a TensorType, InferError> {
    let t = cx.input(index)?;
    if t.rank() != rank {
        return Err(shape_err(format!(
            "input {index} is {t}, expected rank {rank}"
        )));
    }
    Ok(t)
}

/// A shape-like attribute, or the value of the constant i64 input it came from, or `None`.
fn shape_like(attr: &Option<Vec<usize>>, cx: &InferCx, index: usize) -> Option<Vec<usize>> {
    attr.clone().or_else(|| {
        let v = cx.const_input(index)?.to_i64_vec().ok()?;
        v.iter().map(|&d| usize::try_from(d).ok()).collect()
    })
}

/// Checks a per-spatial-axis attribute has `n` entries (or is empty, where `empty_ok`).
fn check_len(name: &'static str, v: &[usize], n: usize, empty_ok: bool) -> Result<(), InferError> {
    if v.len() != n && !(empty_ok && v.is_empty()) {
        return Err(attr_err(
            name,
            format!("expected {n} entries, got {}", v.len()),
        ));
    }
    Ok(())
}

/// Output length of a convolution along one axis, when the input length is known.
pub fn conv_out_len(
    len: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
) -> Option<usize> {
    let span = dilation * (kernel.max(1) - 1) + 1;
    let padded = len + pad;
    (padded >= span && stride > 0).then(|| (padded - span) / stride + 1)
}

impl VisionOp {
    pub fn infer(&self, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        match self {
            VisionOp::NonMaxSuppression { .. } => {
                cx.arity(2, 5)?;
                let boxes = rank_of(cx, 0, 3)?;
                let scores = rank_of(cx, 1, 3)?;
                float_input(boxes, 0)?;
                float_input(scores, 1)?;
                if boxes.shape[2].known().is_some_and(|d| d != 4) {
                    return Err(shape_err(format!("boxes {boxes} must end in 4")));
                }
                if let Some(t) = cx.opt_input(2) {
                    int_input(t, 2)?;
                }
                for i in 3..5 {
                    if let Some(t) = cx.opt_input(i) {
                        float_input(t, i)?;
                    }
                }
                Ok(vec![TensorType::new(
                    DType::I64,
                    vec![Dim::Unknown, Dim::Known(3)],
                )])
            }
            VisionOp::RoiAlign {
                output_height,
                output_width,
                ..
            } => {
                cx.arity(3, 3)?;
                let x = rank_of(cx, 0, 4)?;
                let rois = rank_of(cx, 1, 2)?;
                let idx = rank_of(cx, 2, 1)?;
                float_input(x, 0)?;
                float_input(rois, 1)?;
                int_input(idx, 2)?;
                if rois.shape[1].known().is_some_and(|d| d != 4) {
                    return Err(shape_err(format!("rois {rois} must be [R, 4]")));
                }
                let r = match (&rois.shape[0], &idx.shape[0]) {
                    (Dim::Known(a), Dim::Known(b)) if a != b => {
                        return Err(shape_err(format!("{a} rois but {b} batch indices")));
                    }
                    (Dim::Known(a), _) | (_, Dim::Known(a)) => Dim::Known(*a),
                    (d, _) => d.clone(),
                };
                Ok(vec![TensorType::new(
                    x.dtype,
                    vec![
                        r,
                        x.shape[1].clone(),
                        Dim::Known(*output_height),
                        Dim::Known(*output_width),
                    ],
                )])
            }
            VisionOp::MaxRoiPool { pooled_shape, .. } => {
                cx.arity(2, 2)?;
                let x = rank_of(cx, 0, 4)?;
                let rois = rank_of(cx, 1, 2)?;
                float_input(x, 0)?;
                float_input(rois, 1)?;
                if rois.shape[1].known().is_some_and(|d| d != 5) {
                    return Err(shape_err(format!("rois {rois} must be [R, 5]")));
                }
                Ok(vec![TensorType::new(
                    x.dtype,
                    vec![
                        rois.shape[0].clone(),
                        x.shape[1].clone(),
                        Dim::Known(pooled_shape[0]),
                        Dim::Known(pooled_shape[1]),
                    ],
                )])
            }
            VisionOp::MaxUnpool {
                kernel_shape,
                strides,
                pads,
                output_shape,
            } => {
                cx.arity(2, 3)?;
                let x = cx.input(0)?;
                let idx = cx.input(1)?;
                float_input(x, 0)?;
                int_input(idx, 1)?;
                let n = kernel_shape.len();
                if x.rank() != n + 2 || idx.rank() != x.rank() {
                    return Err(shape_err(format!(
                        "max_unpool input {x} and indices {idx} do not fit kernel {kernel_shape:?}"
                    )));
                }
                check_len("strides", strides, n, false)?;
                check_len("pads", pads, 2 * n, false)?;
                if output_shape.is_none() && cx.opt_input(2).is_some() {
                    int_input(cx.input(2)?, 2)?;
                }
                let shape: Shape = match shape_like(output_shape, cx, 2) {
                    Some(s) if s.len() == x.rank() => s.into_iter().map(Dim::Known).collect(),
                    Some(s) => {
                        return Err(shape_err(format!(
                            "output shape {s:?} does not fit input {x}"
                        )));
                    }
                    None if cx.opt_input(2).is_some() => vec![Dim::Unknown; x.rank()],
                    None => {
                        let mut s = x.shape[..2].to_vec();
                        for i in 0..n {
                            s.push(match x.shape[i + 2].known() {
                                Some(d) => Dim::Known(
                                    (d.saturating_sub(1) * strides[i] + kernel_shape[i])
                                        .saturating_sub(pads[i] + pads[n + i]),
                                ),
                                None => Dim::Unknown,
                            });
                        }
                        s
                    }
                };
                Ok(vec![TensorType::new(x.dtype, shape)])
            }
            VisionOp::Col2Im {
                image_shape,
                block_shape,
                dilations,
                pads,
                strides,
            } => {
                cx.arity(1, 3)?;
                let x = rank_of(cx, 0, 3)?;
                for (i, attr) in [(1, image_shape), (2, block_shape)] {
                    if attr.is_none() {
                        int_input(cx.input(i)?, i)?;
                    }
                }
                let image = shape_like(image_shape, cx, 1);
                let block = shape_like(block_shape, cx, 2);
                // The spatial rank: from whichever shape is known, or the inputs' lengths.
                let n = image
                    .as_ref()
                    .map(Vec::len)
                    .or(block.as_ref().map(Vec::len));
                let n = n.or_else(|| {
                    [1, 2]
                        .iter()
                        .find_map(|&i| cx.opt_input(i).and_then(|t| t.shape.first()?.known()))
                });
                let Some(n) = n else {
                    return Err(shape_err("col2im needs the length of image_shape"));
                };
                if let (Some(i), Some(b)) = (&image, &block)
                    && i.len() != b.len()
                {
                    return Err(shape_err(format!(
                        "image shape {i:?} and block shape {b:?} differ in rank"
                    )));
                }
                check_len("dilations", dilations, n, true)?;
                check_len("strides", strides, n, true)?;
                check_len("pads", pads, 2 * n, true)?;
                let c = match (&block, x.shape[1].known()) {
                    (Some(b), Some(cb)) => {
                        let bl: usize = b.iter().product();
                        if bl == 0 || cb % bl != 0 {
                            return Err(shape_err(format!(
                                "col2im input {x} does not divide into blocks {b:?}"
                            )));
                        }
                        Dim::Known(cb / bl)
                    }
                    _ => Dim::Unknown,
                };
                let mut shape = vec![x.shape[0].clone(), c];
                match image {
                    Some(i) => shape.extend(i.into_iter().map(Dim::Known)),
                    None => shape.extend(std::iter::repeat_n(Dim::Unknown, n)),
                }
                Ok(vec![TensorType::new(x.dtype, shape)])
            }
            VisionOp::DeformConv {
                strides,
                dilations,
                pads,
                group,
                offset_group,
            } => {
                cx.arity(3, 5)?;
                let x = cx.input(0)?;
                let w = cx.input(1)?;
                let off = cx.input(2)?;
                float_input(x, 0)?;
                let r = x.rank();
                if r < 3 || w.rank() != r || off.rank() != r {
                    return Err(shape_err(format!(
                        "deform_conv input {x}, weight {w} and offset {off} do not fit"
                    )));
                }
                let n = r - 2;
                check_len("strides", strides, n, false)?;
                check_len("dilations", dilations, n, false)?;
                check_len("pads", pads, 2 * n, false)?;
                if *group == 0 || *offset_group == 0 {
                    return Err(attr_err("group", "groups must be positive"));
                }
                if let (Some(c), Some(wc)) = (x.shape[1].known(), w.shape[1].known())
                    && (c != wc * group || c % offset_group != 0)
                {
                    return Err(shape_err(format!(
                        "deform_conv input {x} does not fit weight {w} with group {group} \
                         and offset group {offset_group}"
                    )));
                }
                let mut shape = vec![x.shape[0].clone(), w.shape[0].clone()];
                for i in 0..n {
                    let computed = match (x.shape[i + 2].known(), w.shape[i + 2].known()) {
                        (Some(len), Some(k)) => {
                            conv_out_len(len, k, strides[i], dilations[i], pads[i] + pads[n + i])
                        }
                        _ => None,
                    };
                    shape.push(match computed {
                        Some(d) => Dim::Known(d),
                        None => off.shape[i + 2].clone(),
                    });
                }
                Ok(vec![TensorType::new(x.dtype, shape)])
            }
            VisionOp::AffineGrid { size, .. } => {
                cx.arity(1, 2)?;
                let theta = rank_of(cx, 0, 3)?;
                float_input(theta, 0)?;
                // theta [N, 2, 3] (planar) or [N, 3, 4] (volumetric); the size has 2 + dims.
                let dims = match (theta.shape[1].known(), theta.shape[2].known()) {
                    (Some(2), _) | (_, Some(3)) => 2,
                    (Some(3), _) | (_, Some(4)) => 3,
                    _ => match size
                        .as_ref()
                        .map(Vec::len)
                        .or_else(|| cx.opt_input(1).and_then(|t| t.shape.first()?.known()))
                    {
                        Some(l) => l.saturating_sub(2),
                        None => return Err(shape_err("affine_grid needs theta's shape")),
                    },
                };
                if size.is_none() {
                    int_input(cx.input(1)?, 1)?;
                }
                let mut shape = vec![theta.shape[0].clone()];
                match shape_like(size, cx, 1) {
                    Some(s) if s.len() == dims + 2 => {
                        shape.extend(s[2..].iter().map(|&d| Dim::Known(d)))
                    }
                    Some(s) => {
                        return Err(shape_err(format!(
                            "affine_grid size {s:?} does not fit theta {theta}"
                        )));
                    }
                    None => shape.extend(std::iter::repeat_n(Dim::Unknown, dims)),
                }
                shape.push(Dim::Known(dims));
                Ok(vec![TensorType::new(theta.dtype, shape)])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    fn f32s(d: &[usize]) -> TensorType {
        TensorType::fixed(DType::F32, d)
    }

    fn infer(op: VisionOp, inputs: Vec<TensorType>, consts: &[Option<&Tensor>]) -> TensorType {
        let inputs: Vec<Option<TensorType>> = inputs.into_iter().map(Some).collect();
        let cx = InferCx {
            inputs: &inputs,
            consts,
            regions: &[],
            n_outputs: 1,
        };
        op.infer(&cx).expect("infers").remove(0)
    }

    #[test]
    fn shapes() {
        let nms = VisionOp::NonMaxSuppression {
            center_point_box: false,
        };
        let out = infer(nms, vec![f32s(&[1, 6, 4]), f32s(&[1, 1, 6])], &[]);
        assert_eq!(out.shape, vec![Dim::Unknown, Dim::Known(3)]);

        let col = VisionOp::Col2Im {
            image_shape: None,
            block_shape: Some(vec![1, 5]),
            dilations: vec![],
            pads: vec![],
            strides: vec![],
        };
        let image = Tensor::from_vec(&[2], vec![5i64, 5]).expect("fits");
        let out = infer(
            col,
            vec![
                f32s(&[1, 5, 5]),
                TensorType::fixed(DType::I64, &[2]),
                TensorType::fixed(DType::I64, &[2]),
            ],
            &[None, Some(&image)],
        );
        assert_eq!(out, f32s(&[1, 1, 5, 5]));

        let unpool = VisionOp::MaxUnpool {
            kernel_shape: vec![2, 2],
            strides: vec![2, 2],
            pads: vec![0; 4],
            output_shape: None,
        };
        let out = infer(
            unpool,
            vec![
                f32s(&[1, 1, 2, 2]),
                TensorType::fixed(DType::I64, &[1, 1, 2, 2]),
            ],
            &[],
        );
        assert_eq!(out, f32s(&[1, 1, 4, 4]));

        let grid = VisionOp::AffineGrid {
            align_corners: false,
            size: Some(vec![2, 3, 4, 5, 6]),
        };
        assert_eq!(
            infer(grid, vec![f32s(&[2, 3, 4])], &[]),
            f32s(&[2, 4, 5, 6, 3])
        );
    }
}
