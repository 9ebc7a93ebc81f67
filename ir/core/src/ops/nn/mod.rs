//! The nn op family: contractions (matmul, gemm, einsum), convolutions, pooling, normalization
//! layers and resampling (resize, grid sample), with their shape/dtype inference.
//!
//! Conventions shared by every op here:
//! - Layouts are ONNX's: `x` is `[N, C, D1, ..., Dk]` (channels first), conv weights are
//!   `[M, C/group, k1, ..., kk]`.
//! - Axes are normalized (non-negative) at import: the rank of every value is known in mlc's IR.
//! - `pads` lists the begin pads of every spatial dim, then the end pads (ONNX order).
//! - A window op whose input shape was static at import carries explicit `pads` and
//!   `auto_pad: not_set`; `auto_pad` survives only where the pads depend on run-time dims.
//!   The geometry helpers below are shared by inference and the interpreter so both agree.

use super::{InferCx, InferError};
use crate::DType;
use crate::shape::{Dim, Shape, TensorType, broadcast_shapes};
use serde::{Deserialize, Serialize};

mod einsum;
mod geometry;

pub use einsum::{EinsumSpec, parse_einsum};
pub use geometry::{conv_transpose_dim, resize_scaled_dim, resize_sizes, window_dim};

/// How a window op derives its padding (ONNX `auto_pad`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoPad {
    /// Use the explicit `pads`.
    #[default]
    NotSet,
    /// Output size `ceil(in / stride)`; an odd total pad puts the extra element at the end.
    SameUpper,
    /// Output size `ceil(in / stride)`; an odd total pad puts the extra element at the start.
    SameLower,
    /// No padding.
    Valid,
}

/// The sliding window of a pooling op.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    /// Begin pads then end pads, one per spatial dim each.
    pub pads: Vec<usize>,
    pub auto_pad: AutoPad,
    /// Round the output size up, keeping only windows that start inside the (begin-padded) input.
    pub ceil_mode: bool,
}

/// Resize interpolation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    Nearest,
    Linear,
    Cubic,
}

/// How an output coordinate maps back to an input coordinate (ONNX
/// `coordinate_transformation_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoordMode {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
    TfCropAndResize,
}

/// How `nearest` mode rounds a fractional input coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
    /// Resize-10 and Upsample: floor when upsampling, ceil when downsampling.
    Simple,
}

/// How `sizes` constrain the aspect ratio (ONNX `keep_aspect_ratio_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AspectPolicy {
    Stretch,
    NotLarger,
    NotSmaller,
}

/// Grid-sample padding of out-of-range samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GridPadding {
    Zeros,
    Border,
    Reflection,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NnOp {
    /// Numpy `matmul`: batched over broadcast leading dims; a 1-D operand is a vector (its
    /// dim is removed from the result). Inputs: `a`, `b`.
    Matmul,
    /// `alpha * op(a) @ op(b) + beta * c` on 2-D `a`, `b`; `c` is optional and broadcasts to
    /// `[M, N]`. Inputs: `a`, `b`, `c?`.
    Gemm {
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
    },
    /// N-D grouped convolution. Inputs: `x [N, C, D...]`, `w [M, C/group, k...]`, `b? [M]`.
    Conv {
        strides: Vec<usize>,
        dilations: Vec<usize>,
        pads: Vec<usize>,
        group: usize,
        auto_pad: AutoPad,
    },
    /// Transposed convolution. Inputs: `x [N, C, D...]`, `w [C, M/group, k...]`, `b? [M]`.
    /// The full output of a spatial dim has `stride*(in-1) + output_padding + dilation*(k-1)+1`
    /// elements; `pads` crop it at both ends (they are signed: a negative end pad extends the
    /// output with zeros). `output_shape`/`auto_pad` survive import only when the input's
    /// spatial dims were not static; they then decide the pads at run time as ONNX's
    /// reference does.
    ConvTranspose {
        strides: Vec<usize>,
        dilations: Vec<usize>,
        pads: Vec<i64>,
        output_padding: Vec<usize>,
        group: usize,
        auto_pad: AutoPad,
        output_shape: Option<Vec<usize>>,
    },
    /// Max pooling; outputs `y` and optionally `indices` (i64, flat offsets into `x`, spatial
    /// dims in column-major order when `storage_order_col_major`).
    MaxPool {
        #[serde(flatten)]
        window: Window,
        storage_order_col_major: bool,
    },
    /// Average pooling; padding counts in the divisor only with `count_include_pad`.
    AvgPool {
        #[serde(flatten)]
        window: Window,
        count_include_pad: bool,
    },
    /// `(sum |x|^p)^(1/p)` over each window.
    LpPool {
        #[serde(flatten)]
        window: Window,
        p: f32,
    },
    /// Max over all spatial dims, which become 1.
    GlobalMaxPool,
    /// Mean over all spatial dims, which become 1.
    GlobalAvgPool,
    /// `(sum |x|^p)^(1/p)` over all spatial dims, which become 1.
    GlobalLpPool { p: f32 },
    /// Inference batch normalization over channel dim 1. Inputs: `x`, `scale`, `bias`,
    /// `mean`, `var` (each `[C]`).
    BatchNorm { epsilon: f32 },
    /// Normalizes over dims `axis..`; inputs `x`, `scale`, `bias?` (broadcast to `x`'s trailing
    /// dims). Outputs `y` and optionally `mean`, `inv_std_dev` (shape of `x` with dims `axis..`
    /// set to 1, dtype `stat_dtype`).
    LayerNorm {
        axis: usize,
        epsilon: f32,
        stat_dtype: DType,
    },
    /// Per-(n, c) normalization over spatial dims; inputs `x`, `scale [C]`, `bias [C]`.
    InstanceNorm { epsilon: f32 },
    /// Normalizes each group of `C/num_groups` channels over them and the spatial dims; inputs
    /// `x`, `scale`, `bias`, each either `[C]` (per channel) or `[num_groups]` (per group, the
    /// GroupNormalization-18 form).
    GroupNorm { num_groups: usize, epsilon: f32 },
    /// `x / sqrt(mean(x^2 over dims axis..) + epsilon) * scale`; inputs `x`, `scale`.
    RmsNorm { axis: usize, epsilon: f32 },
    /// Local response normalization across channels (dim 1).
    Lrn {
        size: usize,
        alpha: f32,
        beta: f32,
        bias: f32,
    },
    /// `(x - mean) / (std + 1e-9)` with the moments taken over `axes`.
    MeanVarianceNorm { axes: Vec<usize> },
    /// Determinant of each square matrix in the last two dims of `x [*, M, M]`; output `[*]`.
    Det,
    /// Einstein summation (numpy `einsum`), equation without spaces.
    Einsum { equation: String },
    /// N-D resampling. Inputs: `x`, then optional run-time `roi`, `scales`, `sizes` where the
    /// importer could not fold them into the attributes of the same names. `scales`/`sizes`
    /// (attribute or input) list one entry per `axes` entry; other dims are kept.
    Resize {
        mode: ResizeMode,
        coord_mode: CoordMode,
        nearest_mode: NearestMode,
        cubic_coeff_a: f32,
        exclude_outside: bool,
        extrapolation_value: f32,
        antialias: bool,
        axes: Vec<usize>,
        aspect_policy: AspectPolicy,
        roi: Option<Vec<f32>>,
        scales: Option<Vec<f32>>,
        sizes: Option<Vec<usize>>,
    },
    /// Samples `x [N, C, D...]` at the normalized coordinates of `grid [N, O..., k]`
    /// (innermost coordinate first, as ONNX).
    GridSample {
        mode: ResizeMode,
        padding: GridPadding,
        align_corners: bool,
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

/// Requires a float input.
fn float_input<'a>(cx: &InferCx<'a>, i: usize) -> Result<&'a TensorType, InferError> {
    let t = cx.input(i)?;
    if !t.dtype.is_float() {
        return Err(InferError::DType {
            index: i,
            expected: "a float type".into(),
            found: t.dtype,
        });
    }
    Ok(t)
}

/// Requires an input of rank >= 3 (`[N, C, spatial...]`).
fn image_input<'a>(
    cx: &InferCx<'a>,
    i: usize,
    floats_only: bool,
) -> Result<&'a TensorType, InferError> {
    let t = if floats_only {
        float_input(cx, i)?
    } else {
        cx.input(i)?
    };
    if t.rank() < 3 {
        return Err(shape_err(format!(
            "input {i} must be [N, C, spatial...], found {t}"
        )));
    }
    Ok(t)
}

fn check_len(name: &'static str, v: &[impl Sized], n: usize) -> Result<(), InferError> {
    if v.len() != n {
        return Err(attr_err(
            name,
            format!("expected {n} values, found {}", v.len()),
        ));
    }
    Ok(())
}

/// Spatial output dims of a window op; unknown input dims give unknown output dims.
fn window_shape(
    spatial: &[Dim],
    kernel: &[Option<usize>],
    strides: &[usize],
    dilations: &[usize],
    pads: &[usize],
    auto_pad: AutoPad,
    ceil_mode: bool,
) -> Result<Shape, InferError> {
    let k = spatial.len();
    check_len("strides", strides, k)?;
    check_len("dilations", dilations, k)?;
    check_len("pads", pads, 2 * k)?;
    let mut out = Vec::with_capacity(k);
    for i in 0..k {
        match (spatial[i].known(), kernel[i]) {
            (Some(n), Some(kk)) => {
                let (o, _, _) = window_dim(
                    auto_pad,
                    n,
                    kk,
                    strides[i],
                    dilations[i],
                    (pads[i], pads[k + i]),
                    ceil_mode,
                )
                .map_err(shape_err)?;
                out.push(Dim::Known(o));
            }
            // SAME output sizes do not depend on the kernel.
            (Some(n), None) if matches!(auto_pad, AutoPad::SameUpper | AutoPad::SameLower) => {
                out.push(Dim::Known(n.div_ceil(strides[i].max(1))));
            }
            _ => out.push(Dim::Unknown),
        }
    }
    Ok(out)
}

fn matmul_shape(a: &TensorType, b: &TensorType) -> Result<Shape, InferError> {
    if a.rank() == 0 || b.rank() == 0 {
        return Err(shape_err("matmul operands must have rank >= 1"));
    }
    let mut sa = a.shape.clone();
    let mut sb = b.shape.clone();
    let a_vec = sa.len() == 1;
    let b_vec = sb.len() == 1;
    if a_vec {
        sa.insert(0, Dim::Known(1));
    }
    if b_vec {
        sb.push(Dim::Known(1));
    }
    let (ra, rb) = (sa.len(), sb.len());
    let (ka, kb) = (&sa[ra - 1], &sb[rb - 2]);
    if let (Some(x), Some(y)) = (ka.known(), kb.known())
        && x != y
    {
        return Err(shape_err(format!("matmul inner dims differ: {a} @ {b}")));
    }
    let mut out = broadcast_shapes(&[&sa[..ra - 2], &sb[..rb - 2]])
        .ok_or_else(|| shape_err(format!("matmul batch dims do not broadcast: {a} @ {b}")))?;
    if !a_vec {
        out.push(sa[ra - 2].clone());
    }
    if !b_vec {
        out.push(sb[rb - 1].clone());
    }
    Ok(out)
}

/// Kernel spatial dims from a weight shape `[_, _, k...]`.
fn kernel_dims(w: &TensorType) -> Vec<Option<usize>> {
    w.shape[2..].iter().map(Dim::known).collect()
}

impl NnOp {
    pub fn infer(&self, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        match self {
            NnOp::Matmul => {
                cx.arity(2, 2)?;
                let (a, b) = (cx.input(0)?, cx.input(1)?);
                same_numeric(a, b)?;
                Ok(vec![TensorType::new(a.dtype, matmul_shape(a, b)?)])
            }
            NnOp::Gemm {
                trans_a, trans_b, ..
            } => {
                cx.arity(2, 3)?;
                let (a, b) = (cx.input(0)?, cx.input(1)?);
                same_numeric(a, b)?;
                if a.rank() != 2 || b.rank() != 2 {
                    return Err(shape_err(format!("gemm operands must be 2-D: {a}, {b}")));
                }
                let m = a.shape[usize::from(*trans_a)].clone();
                let n = b.shape[usize::from(!*trans_b)].clone();
                if let Some(c) = cx.opt_input(2)
                    && broadcast_shapes(&[&c.shape, &[m.clone(), n.clone()]])
                        .is_none_or(|s| s.len() != 2)
                {
                    return Err(shape_err(format!(
                        "gemm bias {c} does not broadcast to [{m}, {n}]"
                    )));
                }
                Ok(vec![TensorType::new(a.dtype, vec![m, n])])
            }
            NnOp::Conv {
                strides,
                dilations,
                pads,
                group,
                auto_pad,
            } => {
                cx.arity(2, 3)?;
                let x = image_input(cx, 0, true)?;
                let w = cx.input(1)?;
                if w.rank() != x.rank() {
                    return Err(shape_err(format!(
                        "conv weight {w} does not match input {x}"
                    )));
                }
                if *group == 0 {
                    return Err(attr_err("group", "must be positive"));
                }
                if let (Some(c), Some(wc)) = (x.shape[1].known(), w.shape[1].known())
                    && c != wc * group
                {
                    return Err(shape_err(format!(
                        "conv input has {c} channels, weight {w} with group {group}"
                    )));
                }
                let mut shape = vec![x.shape[0].clone(), w.shape[0].clone()];
                shape.extend(window_shape(
                    &x.shape[2..],
                    &kernel_dims(w),
                    strides,
                    dilations,
                    pads,
                    *auto_pad,
                    false,
                )?);
                Ok(vec![TensorType::new(x.dtype, shape)])
            }
            NnOp::ConvTranspose {
                strides,
                dilations,
                pads,
                output_padding,
                group,
                auto_pad,
                output_shape,
            } => {
                cx.arity(2, 3)?;
                let x = image_input(cx, 0, true)?;
                let w = cx.input(1)?;
                let k = x.rank() - 2;
                if w.rank() != x.rank() {
                    return Err(shape_err(format!(
                        "conv_transpose weight {w} does not match input {x}"
                    )));
                }
                check_len("strides", strides, k)?;
                check_len("dilations", dilations, k)?;
                check_len("pads", pads, 2 * k)?;
                check_len("output_padding", output_padding, k)?;
                if let Some(os) = output_shape {
                    check_len("output_shape", os, k)?;
                }
                let m = match w.shape[1].known() {
                    Some(m) => Dim::Known(m * group),
                    None => Dim::Unknown,
                };
                let mut shape = vec![x.shape[0].clone(), m];
                for i in 0..k {
                    let os = output_shape.as_ref().map(|o| o[i]);
                    let d = match (x.shape[2 + i].known(), w.shape[2 + i].known()) {
                        (Some(n), Some(kk)) => {
                            let (o, _, _) = conv_transpose_dim(
                                n,
                                kk,
                                strides[i],
                                dilations[i],
                                output_padding[i],
                                (pads[i], pads[k + i]),
                                *auto_pad,
                                os,
                            )
                            .map_err(shape_err)?;
                            Dim::Known(o)
                        }
                        _ => os.map(Dim::Known).unwrap_or(Dim::Unknown),
                    };
                    shape.push(d);
                }
                Ok(vec![TensorType::new(x.dtype, shape)])
            }
            NnOp::MaxPool { window, .. } => {
                cx.arity(1, 1)?;
                let x = image_input(cx, 0, false)?;
                let shape = pooled_shape(x, window)?;
                let mut out = vec![TensorType::new(x.dtype, shape.clone())];
                if cx.n_outputs > 1 {
                    out.push(TensorType::new(DType::I64, shape));
                }
                Ok(out)
            }
            NnOp::AvgPool { window, .. } | NnOp::LpPool { window, .. } => {
                cx.arity(1, 1)?;
                let x = image_input(cx, 0, true)?;
                Ok(vec![TensorType::new(x.dtype, pooled_shape(x, window)?)])
            }
            NnOp::GlobalMaxPool | NnOp::GlobalAvgPool | NnOp::GlobalLpPool { .. } => {
                cx.arity(1, 1)?;
                let x = image_input(cx, 0, !matches!(self, NnOp::GlobalMaxPool))?;
                let mut shape = x.shape[..2].to_vec();
                shape.resize(x.rank(), Dim::Known(1));
                Ok(vec![TensorType::new(x.dtype, shape)])
            }
            NnOp::BatchNorm { .. } => {
                cx.arity(5, 5)?;
                let x = float_input(cx, 0)?;
                if x.rank() < 2 {
                    return Err(shape_err(format!(
                        "batch_norm input must be [N, C, ...], found {x}"
                    )));
                }
                for i in 1..5 {
                    channel_vector(cx.input(i)?, &x.shape[1], i)?;
                }
                Ok(vec![x.clone()])
            }
            NnOp::LayerNorm {
                axis, stat_dtype, ..
            } => {
                cx.arity(2, 3)?;
                let x = float_input(cx, 0)?;
                if *axis >= x.rank().max(1) {
                    return Err(attr_err("axis", format!("{axis} out of range for {x}")));
                }
                let mut out = vec![x.clone()];
                let mut stat: Shape = x.shape[..*axis].to_vec();
                stat.resize(x.rank(), Dim::Known(1));
                for _ in 1..cx.n_outputs.min(3) {
                    out.push(TensorType::new(*stat_dtype, stat.clone()));
                }
                Ok(out)
            }
            NnOp::RmsNorm { axis, .. } => {
                cx.arity(2, 2)?;
                let x = float_input(cx, 0)?;
                if *axis >= x.rank().max(1) {
                    return Err(attr_err("axis", format!("{axis} out of range for {x}")));
                }
                Ok(vec![x.clone()])
            }
            NnOp::InstanceNorm { .. } | NnOp::GroupNorm { .. } => {
                cx.arity(3, 3)?;
                let x = image_input(cx, 0, true)?;
                if let NnOp::GroupNorm { num_groups, .. } = self {
                    if *num_groups == 0 {
                        return Err(attr_err("num_groups", "must be positive"));
                    }
                    if let Some(c) = x.shape[1].known()
                        && c % num_groups != 0
                    {
                        return Err(shape_err(format!(
                            "{c} channels do not split into {num_groups} groups"
                        )));
                    }
                }
                Ok(vec![x.clone()])
            }
            NnOp::Lrn { size, .. } => {
                cx.arity(1, 1)?;
                let x = image_input(cx, 0, true)?;
                if *size == 0 {
                    return Err(attr_err("size", "must be positive"));
                }
                Ok(vec![x.clone()])
            }
            NnOp::MeanVarianceNorm { axes } => {
                cx.arity(1, 1)?;
                let x = float_input(cx, 0)?;
                if let Some(a) = axes.iter().find(|&&a| a >= x.rank()) {
                    return Err(attr_err("axes", format!("{a} out of range for {x}")));
                }
                Ok(vec![x.clone()])
            }
            NnOp::Einsum { equation } => {
                let n = cx.inputs.len();
                if n == 0 {
                    return Err(InferError::Arity {
                        expected: "at least 1".into(),
                        found: 0,
                    });
                }
                let types: Vec<&TensorType> =
                    (0..n).map(|i| cx.input(i)).collect::<Result<_, _>>()?;
                for t in &types[1..] {
                    same_numeric(types[0], t)?;
                }
                let ranks: Vec<usize> = types.iter().map(|t| t.rank()).collect();
                let spec = parse_einsum(equation, &ranks).map_err(|e| attr_err("equation", e))?;
                let mut dims: Vec<Option<Dim>> = vec![None; spec.n_labels];
                for (t, labels) in types.iter().zip(&spec.inputs) {
                    for (d, &l) in t.shape.iter().zip(labels) {
                        dims[l] = Some(match &dims[l] {
                            None => d.clone(),
                            Some(prev) => prev.broadcast(d).ok_or_else(|| {
                                shape_err(format!("einsum label dims {prev} and {d} differ"))
                            })?,
                        });
                    }
                }
                let shape = spec
                    .output
                    .iter()
                    .map(|&l| dims[l].clone().unwrap_or(Dim::Known(1)))
                    .collect();
                Ok(vec![TensorType::new(types[0].dtype, shape)])
            }
            NnOp::Resize {
                axes,
                scales,
                sizes,
                aspect_policy,
                ..
            } => {
                cx.arity(1, 4)?;
                let x = cx.input(0)?;
                if !x.dtype.is_numeric() {
                    return Err(InferError::DType {
                        index: 0,
                        expected: "numeric".into(),
                        found: x.dtype,
                    });
                }
                if let Some(a) = axes.iter().find(|&&a| a >= x.rank()) {
                    return Err(attr_err("axes", format!("{a} out of range for {x}")));
                }
                let mut shape = x.shape.clone();
                let const_scales = scales.clone().or_else(|| {
                    cx.const_input(2)
                        .and_then(|t| t.to_f64_vec().ok())
                        .filter(|v| !v.is_empty())
                        .map(|v| v.into_iter().map(|s| s as f32).collect())
                });
                let const_sizes = sizes.clone().or_else(|| {
                    cx.const_input(3)
                        .and_then(|t| t.to_i64_vec().ok())
                        .map(|v| v.into_iter().map(|s| s.max(0) as usize).collect())
                });
                let dynamic = cx.opt_input(2).is_some() || cx.opt_input(3).is_some();
                if let Some(sz) = const_sizes {
                    check_len("sizes", &sz, axes.len())?;
                    let ins: Option<Vec<usize>> =
                        axes.iter().map(|&a| x.shape[a].known()).collect();
                    match (ins, aspect_policy) {
                        (Some(ins), _) => {
                            for (&a, (_, o)) in
                                axes.iter().zip(resize_sizes(&ins, &sz, *aspect_policy))
                            {
                                shape[a] = Dim::Known(o);
                            }
                        }
                        (None, AspectPolicy::Stretch) => {
                            for (&a, &o) in axes.iter().zip(&sz) {
                                shape[a] = Dim::Known(o);
                            }
                        }
                        (None, _) => axes.iter().for_each(|&a| shape[a] = Dim::Unknown),
                    }
                } else if let Some(sc) = const_scales {
                    check_len("scales", &sc, axes.len())?;
                    for (&a, &s) in axes.iter().zip(&sc) {
                        shape[a] = match x.shape[a].known() {
                            Some(n) => Dim::Known(resize_scaled_dim(n, s)),
                            None if s == 1.0 => x.shape[a].clone(),
                            None => Dim::Unknown,
                        };
                    }
                } else if dynamic {
                    axes.iter().for_each(|&a| shape[a] = Dim::Unknown);
                } else {
                    return Err(shape_err("resize needs scales or sizes"));
                }
                Ok(vec![TensorType::new(x.dtype, shape)])
            }
            NnOp::Det => {
                cx.arity(1, 1)?;
                let x = float_input(cx, 0)?;
                let r = x.rank();
                if r < 2 {
                    return Err(shape_err(format!(
                        "det needs square matrices [*, M, M], found {x}"
                    )));
                }
                if let (Some(m), Some(n)) = (x.shape[r - 2].known(), x.shape[r - 1].known())
                    && m != n
                {
                    return Err(shape_err(format!(
                        "det needs square matrices [*, M, M], found {x}"
                    )));
                }
                Ok(vec![TensorType::new(x.dtype, x.shape[..r - 2].to_vec())])
            }
            NnOp::GridSample { .. } => {
                cx.arity(2, 2)?;
                let x = image_input(cx, 0, false)?;
                let g = cx.input(1)?;
                let k = x.rank() - 2;
                if g.rank() != x.rank() {
                    return Err(shape_err(format!(
                        "grid {g} must have the rank of the input {x}"
                    )));
                }
                if let Some(n) = g.shape[g.rank() - 1].known()
                    && n != k
                {
                    return Err(shape_err(format!("grid {g} must end in {k} coordinates")));
                }
                let mut shape = x.shape[..2].to_vec();
                shape.extend_from_slice(&g.shape[1..g.rank() - 1]);
                Ok(vec![TensorType::new(x.dtype, shape)])
            }
        }
    }
}

fn same_numeric(a: &TensorType, b: &TensorType) -> Result<(), InferError> {
    if !a.dtype.is_numeric() {
        return Err(InferError::DType {
            index: 0,
            expected: "numeric".into(),
            found: a.dtype,
        });
    }
    if a.dtype != b.dtype {
        return Err(InferError::DType {
            index: 1,
            expected: a.dtype.to_string(),
            found: b.dtype,
        });
    }
    Ok(())
}

/// Checks a per-channel parameter is 1-D of the channel count (where both are known).
fn channel_vector(t: &TensorType, c: &Dim, index: usize) -> Result<(), InferError> {
    if t.rank() != 1 {
        return Err(shape_err(format!(
            "input {index} must be 1-D [C], found {t}"
        )));
    }
    if let (Some(a), Some(b)) = (t.shape[0].known(), c.known())
        && a != b
    {
        return Err(shape_err(format!("input {index} is {t}, expected [{b}]")));
    }
    Ok(())
}

fn pooled_shape(x: &TensorType, w: &Window) -> Result<Shape, InferError> {
    let k = x.rank() - 2;
    check_len("kernel", &w.kernel, k)?;
    let kernel: Vec<Option<usize>> = w.kernel.iter().map(|&k| Some(k)).collect();
    let mut shape = x.shape[..2].to_vec();
    shape.extend(window_shape(
        &x.shape[2..],
        &kernel,
        &w.strides,
        &w.dilations,
        &w.pads,
        w.auto_pad,
        w.ceil_mode,
    )?);
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(
        op: NnOp,
        inputs: Vec<TensorType>,
        n_outputs: usize,
    ) -> Result<Vec<TensorType>, InferError> {
        let inputs: Vec<Option<TensorType>> = inputs.into_iter().map(Some).collect();
        let consts = vec![None; inputs.len()];
        op.infer(&InferCx {
            inputs: &inputs,
            consts: &consts,
            regions: &[],
            n_outputs,
        })
    }

    fn f32s(d: &[usize]) -> TensorType {
        TensorType::fixed(DType::F32, d)
    }

    #[test]
    fn matmul_shapes() {
        let out = |a: &[usize], b: &[usize]| {
            infer(NnOp::Matmul, vec![f32s(a), f32s(b)], 1).map(|t| t[0].clone())
        };
        assert_eq!(out(&[2, 1, 3, 4], &[5, 4, 6]).unwrap(), f32s(&[2, 5, 3, 6]));
        assert_eq!(out(&[4], &[2, 4, 6]).unwrap(), f32s(&[2, 6]));
        assert_eq!(out(&[3, 4], &[4]).unwrap(), f32s(&[3]));
        assert_eq!(out(&[4], &[4]).unwrap(), f32s(&[]));
        assert!(out(&[3, 4], &[5, 6]).is_err());
    }

    #[test]
    fn conv_shapes() {
        let op = NnOp::Conv {
            strides: vec![2, 2],
            dilations: vec![1, 1],
            pads: vec![3, 3, 3, 3],
            group: 1,
            auto_pad: AutoPad::NotSet,
        };
        let out = infer(op, vec![f32s(&[1, 3, 224, 224]), f32s(&[64, 3, 7, 7])], 1).unwrap();
        assert_eq!(out[0], f32s(&[1, 64, 112, 112]));
        let op = NnOp::ConvTranspose {
            strides: vec![3, 2],
            dilations: vec![1, 1],
            pads: vec![0; 4],
            output_padding: vec![0, 0],
            group: 1,
            auto_pad: AutoPad::NotSet,
            output_shape: Some(vec![10, 8]),
        };
        let out = infer(op, vec![f32s(&[1, 1, 3, 3]), f32s(&[1, 2, 3, 3])], 1).unwrap();
        assert_eq!(out[0], f32s(&[1, 2, 10, 8]));
    }

    #[test]
    fn einsum_shapes() {
        let out = infer(
            NnOp::Einsum {
                equation: "bij,bjk->bik".into(),
            },
            vec![f32s(&[2, 3, 4]), f32s(&[2, 4, 5])],
            1,
        );
        assert_eq!(out.unwrap()[0], f32s(&[2, 3, 5]));
    }

    #[test]
    fn symbolic_pool_and_resize() {
        let x = TensorType::new(
            DType::F32,
            vec![
                Dim::Sym("n".into()),
                Dim::Known(3),
                Dim::Unknown,
                Dim::Known(9),
            ],
        );
        let window = Window {
            kernel: vec![3, 3],
            strides: vec![2, 2],
            dilations: vec![1, 1],
            pads: vec![0; 4],
            auto_pad: AutoPad::NotSet,
            ceil_mode: true,
        };
        let op = NnOp::MaxPool {
            window,
            storage_order_col_major: false,
        };
        let out = infer(op, vec![x.clone()], 2).unwrap();
        let want = vec![
            Dim::Sym("n".into()),
            Dim::Known(3),
            Dim::Unknown,
            Dim::Known(4),
        ];
        assert_eq!(out[0], TensorType::new(DType::F32, want.clone()));
        assert_eq!(out[1], TensorType::new(DType::I64, want));
        let op = NnOp::Resize {
            mode: ResizeMode::Nearest,
            coord_mode: CoordMode::HalfPixel,
            nearest_mode: NearestMode::RoundPreferFloor,
            cubic_coeff_a: -0.75,
            exclude_outside: false,
            extrapolation_value: 0.0,
            antialias: false,
            axes: vec![2, 3],
            aspect_policy: AspectPolicy::Stretch,
            roi: None,
            scales: Some(vec![1.0, 1.5]),
            sizes: None,
        };
        let out = infer(op, vec![x], 1).unwrap();
        let want = vec![
            Dim::Sym("n".into()),
            Dim::Known(3),
            Dim::Unknown,
            Dim::Known(13),
        ];
        assert_eq!(out[0], TensorType::new(DType::F32, want));
    }

    #[test]
    fn det_drops_the_matrix_dims() {
        let x = TensorType::new(
            DType::F64,
            vec![
                Dim::Sym("b".into()),
                Dim::Known(2),
                Dim::Known(3),
                Dim::Known(3),
            ],
        );
        let out = infer(NnOp::Det, vec![x], 1).unwrap();
        let want = vec![Dim::Sym("b".into()), Dim::Known(2)];
        assert_eq!(out[0], TensorType::new(DType::F64, want));
        let m = TensorType::fixed(DType::F32, &[4, 4]);
        assert_eq!(infer(NnOp::Det, vec![m], 1).unwrap()[0].rank(), 0);
        let rect = TensorType::fixed(DType::F32, &[2, 3]);
        assert!(infer(NnOp::Det, vec![rect], 1).is_err());
        let ints = TensorType::fixed(DType::I32, &[2, 2]);
        assert!(infer(NnOp::Det, vec![ints], 1).is_err());
        let vector = TensorType::fixed(DType::F32, &[3]);
        assert!(infer(NnOp::Det, vec![vector], 1).is_err());
    }

    #[test]
    fn attributes_round_trip_through_json() {
        let window = Window {
            kernel: vec![2],
            strides: vec![1],
            dilations: vec![1],
            pads: vec![0, 1],
            auto_pad: AutoPad::SameLower,
            ceil_mode: false,
        };
        let ops = [
            (NnOp::Matmul, "nn.matmul"),
            (NnOp::Det, "nn.det"),
            (
                NnOp::AvgPool {
                    window: window.clone(),
                    count_include_pad: true,
                },
                "nn.avg_pool",
            ),
            (
                NnOp::MaxPool {
                    window,
                    storage_order_col_major: true,
                },
                "nn.max_pool",
            ),
            (
                NnOp::LayerNorm {
                    axis: 2,
                    epsilon: 1e-5,
                    stat_dtype: DType::F32,
                },
                "nn.layer_norm",
            ),
            (
                NnOp::GridSample {
                    mode: ResizeMode::Cubic,
                    padding: GridPadding::Reflection,
                    align_corners: true,
                },
                "nn.grid_sample",
            ),
        ];
        for (op, name) in ops {
            let op = crate::Op::Nn(op);
            assert_eq!(op.name(), name);
            let json = serde_json::to_value(&op).unwrap();
            assert_eq!(serde_json::from_value::<crate::Op>(json).unwrap(), op);
        }
    }
}
