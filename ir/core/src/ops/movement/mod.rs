//! The movement op family: shape manipulation, indexing and data movement (reshape, transpose,
//! slice, gather/scatter, pad, ...), with shape inference that keeps symbolic dims alive.
//!
//! Shape-like operands (a reshape target, slice bounds, pads, axes) are attributes when the
//! importer saw them as constants and node inputs otherwise, at the same positions as in ONNX.
//! Every such attribute is an `Option`: `Some` means "known at compile time, the input slot is
//! empty"; `None` means "read the input if present, else the op's default". Axes held in
//! attributes are normalized (non-negative) because the rank is always known; values read from
//! inputs at run time keep ONNX conventions (negative axes and indices count from the end).

use super::{InferCx, InferError, norm_axis};
use crate::DType;
use crate::shape::{Dim, Shape, TensorType};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

mod shapes;
#[cfg(test)]
mod tests;

use shapes::{DimProduct, add_dims, offset_dim, sym_ints, unify};
pub use shapes::{
    SymInt, constant_of_shape_shape, expand_shape, range_len, reshape_shape, slice_range,
    slice_shape, split_sizes, tile_shape,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovementOp {
    /// Returns its input unchanged.
    Identity,
    /// Reinterprets the data with a new shape. Target entries: `-1` infers one dim, `0` copies
    /// the input dim at that position unless `allowzero`. Inputs: `x`, `shape?`.
    Reshape {
        shape: Option<Vec<i64>>,
        allowzero: bool,
    },
    /// Reshapes to 2-D: dims before `axis` and dims from `axis` on are multiplied together.
    Flatten { axis: usize },
    /// Output dim `i` is input dim `perm[i]`.
    Transpose { perm: Vec<usize> },
    /// Joins all inputs along `axis`.
    Concat { axis: usize },
    /// Splits `x` along `axis` into the node's outputs. Sizes come from the attribute, else
    /// input 1, else equal parts (the last one smaller when the dim does not divide evenly).
    Split {
        axis: usize,
        sizes: Option<Vec<usize>>,
    },
    /// Strided slicing (numpy semantics, with clamping). Inputs: `x`, `starts?`, `ends?`,
    /// `axes?`, `steps?`; `axes` defaults to `0..len(starts)`, `steps` to ones.
    Slice {
        starts: Option<Vec<i64>>,
        ends: Option<Vec<i64>>,
        axes: Option<Vec<i64>>,
        steps: Option<Vec<i64>>,
    },
    /// Removes the given size-1 axes, or every size-1 axis if none are given.
    /// Inputs: `x`, `axes?`.
    Squeeze { axes: Option<Vec<usize>> },
    /// Inserts size-1 axes at the given positions of the output. Inputs: `x`, `axes?`.
    Unsqueeze { axes: Option<Vec<usize>> },
    /// Broadcasts `x` against `shape` (numpy rules, so the result may be bigger than `shape`).
    /// Inputs: `x`, `shape?`.
    Expand { shape: Option<Vec<usize>> },
    /// `x` indexed along `axis` by an integer tensor (negative indices count from the end).
    Gather { axis: usize },
    /// `out[i] = x[i with i[axis] replaced by indices[i]]`.
    GatherElements { axis: usize },
    /// Gathers slices addressed by the last dim of `indices`, after `batch_dims` shared dims.
    GatherNd { batch_dims: usize },
    /// The inverse of `GatherElements`: a copy of `data` with `updates` written (or combined
    /// with `reduction`) at the addressed elements. Inputs: `data`, `indices`, `updates`.
    ScatterElements {
        axis: usize,
        reduction: ScatterReduction,
    },
    /// The inverse of `GatherNd` (no batch dims). Inputs: `data`, `indices`, `updates`.
    ScatterNd { reduction: ScatterReduction },
    /// The dims `start..end` of the input's shape, as a 1-D `i64` tensor.
    Shape { start: usize, end: usize },
    /// The number of elements of the input, as an `i64` scalar.
    Size,
    /// `start, start + delta, ...` up to (excluding) `limit`. Inputs: three scalars.
    Range,
    /// A tensor of the given shape filled with `value`. Inputs: `shape?`.
    ConstantOfShape {
        shape: Option<Vec<usize>>,
        dtype: DType,
        value: Scalar,
    },
    /// Repeats `x` `repeats[i]` times along each axis. Inputs: `x`, `repeats?`.
    Tile { repeats: Option<Vec<usize>> },
    /// Pads (or, with negative amounts, crops) each axis. `pads` is `[begin_0.., end_0..]` over
    /// `axes` (all axes when `None`). Inputs: `x`, `pads?`, `constant_value?`, `axes?`.
    Pad {
        mode: PadMode,
        pads: Option<Vec<i64>>,
        axes: Option<Vec<usize>>,
    },
    /// Moves `blocksize x blocksize` blocks of channels into space (NCHW).
    DepthToSpace {
        blocksize: usize,
        mode: DepthToSpaceMode,
    },
    /// The inverse of `DepthToSpace` with the same `mode`.
    SpaceToDepth {
        blocksize: usize,
        mode: DepthToSpaceMode,
    },
    /// Keeps the upper (`j - i >= k`) or lower (`j - i <= k`) triangle of the last two dims and
    /// zeroes the rest. Inputs: `x`, `k?` (the attribute wins when `Some`).
    Trilu { upper: bool, k: Option<i64> },
    /// One-hot encoding along output axis `axis`. Inputs: `indices`, `depth?`, `values`
    /// (`[off, on]`).
    OneHot { axis: usize, depth: Option<usize> },
    /// Indices of the non-zero elements, `i64[rank, count]`.
    NonZero,
    /// Elements (or slices along `axis`) whose `condition` entry is true.
    /// Inputs: `x`, `condition`.
    Compress { axis: Option<usize> },
    /// Reverses the first `seq_lens[b]` entries along `time_axis` of each batch entry `b`.
    /// Inputs: `x`, `seq_lens`.
    ReverseSequence { batch_axis: usize, time_axis: usize },
    /// A 2-D tensor shaped like the input with ones on diagonal `k`.
    EyeLike { dtype: DType, k: i64 },
    /// Unique elements (or slices along `axis`); outputs `y`, `indices` (first occurrences),
    /// `inverse_indices`, `counts` (as many as the node has).
    Unique { axis: Option<usize>, sorted: bool },
    /// Center-crops or zero-pads each of `axes` to the target size. Inputs: `x`, `shape?`.
    CenterCropPad {
        shape: Option<Vec<usize>>,
        axes: Vec<usize>,
    },
    /// KV-cache update: writes `update` into `past` along `axis` at offset `write_indices[b]`
    /// for batch entry `b` (modulo the axis length when `circular`).
    /// Inputs: `past`, `update`, `write_indices?`.
    TensorScatter { axis: usize, circular: bool },
}

/// How scatter ops combine an update with the element already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScatterReduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

/// How `Pad` fills the new border.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// Channel order of `DepthToSpace`/`SpaceToDepth`: depth-column-row or column-row-depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepthToSpaceMode {
    Dcr,
    Crd,
}

/// A scalar attribute value, kept exact for every element type (an `i64` does not fit an
/// `f64`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scalar {
    /// Non-finite values serialize as `"inf"`, `"-inf"`, `"nan"` (JSON has no number for them,
    /// and `-inf` fills are common: attention masks).
    Float(#[serde(with = "float_json")] f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
}

/// Serde for an `f64` that may be non-finite.
mod float_json {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            v if v.is_finite() => s.serialize_f64(v),
            v if v.is_nan() => s.serialize_str("nan"),
            v if v > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(f64),
            Name(String),
        }
        match Repr::deserialize(d)? {
            Repr::Num(v) => Ok(v),
            Repr::Name(s) => match s.as_str() {
                "nan" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(D::Error::custom(format!("not a float: {other:?}"))),
            },
        }
    }
}

impl Scalar {
    /// Reads the single element of a tensor.
    pub fn from_tensor(t: &Tensor) -> Option<Scalar> {
        if t.len() != 1 {
            return None;
        }
        let d = t.dtype();
        if d == DType::Bool {
            Some(Scalar::Bool(t.to_i64_vec().ok()?[0] != 0))
        } else if d.is_signed_int() {
            Some(Scalar::Int(t.to_i64_vec().ok()?[0]))
        } else if d.is_int() {
            Some(Scalar::UInt(
                t.cast(DType::U64)
                    .ok()?
                    .into_array::<u64>()
                    .ok()?
                    .iter()
                    .next()
                    .copied()?,
            ))
        } else if d.is_float() {
            Some(Scalar::Float(t.to_f64_vec().ok()?[0]))
        } else {
            None
        }
    }

    /// A 0-D tensor of type `dtype` holding this value.
    pub fn to_tensor(&self, dtype: DType) -> Result<Tensor, crate::TensorError> {
        match self {
            Scalar::Float(v) => Tensor::scalar(*v).cast(dtype),
            Scalar::Int(v) => Tensor::scalar(*v).cast(dtype),
            Scalar::UInt(v) => Tensor::scalar(*v).cast(dtype),
            Scalar::Bool(v) => Tensor::scalar(*v).cast(dtype),
        }
    }
}

/// A shape-like operand: the attribute if set, else the constant value of input `i`.
fn ints_of(attr: Option<&[i64]>, cx: &InferCx, i: usize) -> Option<Vec<i64>> {
    match attr {
        Some(v) => Some(v.to_vec()),
        None => cx.const_input(i).and_then(|t| t.to_i64_vec().ok()),
    }
}

fn usizes_to_i64(v: &Option<Vec<usize>>) -> Option<Vec<i64>> {
    v.as_ref().map(|v| v.iter().map(|&x| x as i64).collect())
}

/// The static length of 1-D (or scalar) shape-like input `i`.
fn operand_len(cx: &InferCx, i: usize) -> Result<usize, InferError> {
    let t = cx.input(i)?;
    match t.shape.as_slice() {
        [] => Ok(1),
        [Dim::Known(n)] => Ok(*n),
        _ => Err(InferError::Shape(format!(
            "input {i} must be a 1-D tensor of static length, found {t}"
        ))),
    }
}

/// Normalizes `axes` against `rank`.
fn norm_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, InferError> {
    axes.iter().map(|&a| norm_axis(a, rank)).collect()
}

impl MovementOp {
    pub fn infer(&self, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        use MovementOp as M;
        let one = |dtype: DType, shape: Shape| Ok(vec![TensorType::new(dtype, shape)]);
        match self {
            M::Identity => {
                cx.arity(1, 1)?;
                Ok(vec![cx.input(0)?.clone()])
            }
            M::Reshape { shape, allowzero } => {
                cx.arity(1, 2)?;
                let x = cx.input(0)?;
                let target = match ints_of(shape.as_deref(), cx, 1) {
                    Some(v) => v.into_iter().map(SymInt::Int).collect(),
                    None => vec![SymInt::Unknown; operand_len(cx, 1)?],
                };
                one(x.dtype, reshape_shape(&x.shape, &target, *allowzero)?)
            }
            M::Flatten { axis } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                if *axis > x.rank() {
                    return Err(InferError::Shape(format!(
                        "flatten axis {axis} for rank {}",
                        x.rank()
                    )));
                }
                let prod = |ds: &[Dim], base: usize| {
                    let mut p = DimProduct::new();
                    for (i, d) in ds.iter().enumerate() {
                        p.mul(d, base + i);
                    }
                    p.div(DimProduct::new())
                };
                one(
                    x.dtype,
                    vec![prod(&x.shape[..*axis], 0), prod(&x.shape[*axis..], *axis)],
                )
            }
            M::Transpose { perm } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                let mut seen = vec![false; x.rank()];
                if perm.len() != x.rank()
                    || perm
                        .iter()
                        .any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true))
                {
                    return Err(InferError::Attr {
                        name: "perm",
                        reason: format!("{perm:?} is not a permutation of rank {}", x.rank()),
                    });
                }
                one(x.dtype, perm.iter().map(|&p| x.shape[p].clone()).collect())
            }
            M::Concat { axis } => {
                if cx.inputs.is_empty() {
                    return Err(InferError::Arity {
                        expected: "at least 1".into(),
                        found: 0,
                    });
                }
                let first = cx.input(0)?;
                if *axis >= first.rank() {
                    return Err(InferError::Shape(format!(
                        "concat axis {axis} for rank {}",
                        first.rank()
                    )));
                }
                let mut shape = first.shape.clone();
                for i in 1..cx.inputs.len() {
                    let t = cx.input(i)?;
                    if t.rank() != first.rank() || t.dtype != first.dtype {
                        return Err(InferError::Shape(format!("concat of {first} and {t}")));
                    }
                    for (k, d) in t.shape.iter().enumerate() {
                        shape[k] = if k == *axis {
                            add_dims(&shape[k], d)
                        } else {
                            unify(&shape[k], d)
                        };
                    }
                }
                one(first.dtype, shape)
            }
            M::Split { axis, sizes } => {
                cx.arity(1, 2)?;
                let x = cx.input(0)?;
                if *axis >= x.rank() {
                    return Err(InferError::Shape(format!(
                        "split axis {axis} for rank {}",
                        x.rank()
                    )));
                }
                let n = cx.n_outputs;
                let sizes: Option<Vec<usize>> = match (sizes, cx.opt_input(1)) {
                    (Some(s), _) => Some(s.clone()),
                    (None, Some(_)) => match cx.const_input(1) {
                        Some(t) => Some(
                            t.to_i64_vec()
                                .map_err(|e| InferError::Other(e.to_string()))?
                                .into_iter()
                                .map(|v| v.max(0) as usize)
                                .collect(),
                        ),
                        None => None,
                    },
                    (None, None) => x.shape[*axis].known().map(|d| split_sizes(d, n)),
                };
                // Sizes that do not add up are left to the kernel to reject: the node may sit in
                // an `If` branch that never runs for these shapes.
                let sizes = sizes.filter(|s| {
                    s.len() == n
                        && x.shape[*axis]
                            .known()
                            .is_none_or(|d| s.iter().sum::<usize>() == d)
                });
                Ok((0..n)
                    .map(|i| {
                        let mut shape = x.shape.clone();
                        shape[*axis] = match &sizes {
                            Some(s) => Dim::Known(s[i]),
                            None if n == 1 => x.shape[*axis].clone(),
                            None => Dim::Unknown,
                        };
                        TensorType::new(x.dtype, shape)
                    })
                    .collect())
            }
            M::Slice {
                starts,
                ends,
                axes,
                steps,
            } => {
                cx.arity(1, 5)?;
                let x = cx.input(0)?;
                let rank = x.rank();
                let starts_v = ints_of(starts.as_deref(), cx, 1);
                let ends_v = ints_of(ends.as_deref(), cx, 2);
                let axes_v = match (axes, cx.opt_input(3)) {
                    (Some(a), _) => Some(a.clone()),
                    (None, Some(_)) => cx.const_input(3).and_then(|t| t.to_i64_vec().ok()),
                    (None, None) => {
                        let n = match (&starts_v, cx.opt_input(1)) {
                            (Some(s), _) => Some(s.len()),
                            (None, Some(_)) => Some(operand_len(cx, 1)?),
                            (None, None) => None,
                        };
                        n.map(|n| (0..n as i64).collect())
                    }
                };
                let steps_v = match (steps, cx.opt_input(4)) {
                    (Some(s), _) => Some(s.clone()),
                    (None, Some(_)) => cx.const_input(4).and_then(|t| t.to_i64_vec().ok()),
                    (None, None) => axes_v.as_ref().map(|a| vec![1; a.len()]),
                };
                let mut shape = x.shape.clone();
                match (&starts_v, &ends_v, &axes_v, &steps_v) {
                    (Some(s), Some(e), Some(a), Some(st)) => {
                        let int = |v: &[i64]| v.iter().map(|&x| SymInt::Int(x)).collect::<Vec<_>>();
                        shape = slice_shape(&x.shape, &int(s), &int(e), a, &int(st))?;
                    }
                    (_, _, Some(a), _) => {
                        for &ax in a {
                            shape[norm_axis(ax, rank)?] = Dim::Unknown;
                        }
                    }
                    _ => shape = vec![Dim::Unknown; rank],
                }
                one(x.dtype, shape)
            }
            M::Squeeze { axes } => {
                cx.arity(1, 2)?;
                let x = cx.input(0)?;
                let axes = match ints_of(usizes_to_i64(axes).as_deref(), cx, 1) {
                    Some(a) => Some(norm_axes(&a, x.rank())?),
                    None if cx.opt_input(1).is_some() => {
                        let k = operand_len(cx, 1)?;
                        if k > x.rank() {
                            return Err(InferError::Shape(format!(
                                "squeeze of {k} axes of rank {}",
                                x.rank()
                            )));
                        }
                        // Which axes go is only known at run time; the rank is not.
                        return one(x.dtype, vec![Dim::Unknown; x.rank() - k]);
                    }
                    None => None,
                };
                let shape = match axes {
                    Some(a) => {
                        for &ax in &a {
                            if matches!(x.shape[ax], Dim::Known(n) if n != 1) {
                                return Err(InferError::Shape(format!(
                                    "squeeze of axis {ax} of {x}"
                                )));
                            }
                        }
                        x.shape
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !a.contains(i))
                            .map(|(_, d)| d.clone())
                            .collect()
                    }
                    // Without axes every size-1 dim goes; symbolic dims are taken as not 1.
                    None => x
                        .shape
                        .iter()
                        .filter(|d| **d != Dim::Known(1))
                        .cloned()
                        .collect(),
                };
                one(x.dtype, shape)
            }
            M::Unsqueeze { axes } => {
                cx.arity(1, 2)?;
                let x = cx.input(0)?;
                match ints_of(usizes_to_i64(axes).as_deref(), cx, 1) {
                    Some(a) => {
                        let out_rank = x.rank() + a.len();
                        let mut a = norm_axes(&a, out_rank)?;
                        a.sort_unstable();
                        if a.windows(2).any(|w| w[0] == w[1]) {
                            return Err(InferError::Shape(format!("unsqueeze axes {a:?} repeat")));
                        }
                        let mut src = x.shape.iter();
                        let shape = (0..out_rank)
                            .map(|i| {
                                if a.contains(&i) {
                                    Dim::Known(1)
                                } else {
                                    src.next().cloned().unwrap_or(Dim::Unknown)
                                }
                            })
                            .collect();
                        one(x.dtype, shape)
                    }
                    None => one(x.dtype, vec![Dim::Unknown; x.rank() + operand_len(cx, 1)?]),
                }
            }
            M::Expand { shape } => {
                cx.arity(1, 2)?;
                let x = cx.input(0)?;
                let target = match ints_of(usizes_to_i64(shape).as_deref(), cx, 1) {
                    Some(v) => v.into_iter().map(SymInt::Int).collect(),
                    None => vec![SymInt::Unknown; operand_len(cx, 1)?],
                };
                one(x.dtype, expand_shape(&x.shape, &target)?)
            }
            M::Gather { axis } => {
                cx.arity(2, 2)?;
                let (x, idx) = (cx.input(0)?, cx.input(1)?);
                check_index_type(idx, 1)?;
                if *axis >= x.rank() {
                    return Err(InferError::Shape(format!(
                        "gather axis {axis} for rank {}",
                        x.rank()
                    )));
                }
                let mut shape = x.shape[..*axis].to_vec();
                shape.extend(idx.shape.iter().cloned());
                shape.extend(x.shape[*axis + 1..].iter().cloned());
                one(x.dtype, shape)
            }
            M::GatherElements { axis } => {
                cx.arity(2, 2)?;
                let (x, idx) = (cx.input(0)?, cx.input(1)?);
                check_index_type(idx, 1)?;
                if *axis >= x.rank() || idx.rank() != x.rank() {
                    return Err(InferError::Shape(format!(
                        "gather_elements of {x} by {idx} on axis {axis}"
                    )));
                }
                one(x.dtype, idx.shape.clone())
            }
            M::GatherNd { batch_dims } => {
                cx.arity(2, 2)?;
                let (x, idx) = (cx.input(0)?, cx.input(1)?);
                check_index_type(idx, 1)?;
                let b = *batch_dims;
                let q = idx.rank();
                if q == 0 || b >= q || b > x.rank() {
                    return Err(InferError::Shape(format!(
                        "gather_nd of {x} by {idx} with {b} batch dims"
                    )));
                }
                let k = idx.shape[q - 1].known().ok_or_else(|| {
                    InferError::Shape(format!("gather_nd index depth of {idx} must be static"))
                })?;
                if b + k > x.rank() {
                    return Err(InferError::Shape(format!(
                        "gather_nd index depth {k} too deep for {x}"
                    )));
                }
                let mut shape = idx.shape[..q - 1].to_vec();
                shape.extend(x.shape[b + k..].iter().cloned());
                one(x.dtype, shape)
            }
            M::ScatterElements { axis, .. } => {
                cx.arity(3, 3)?;
                let (x, idx, upd) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
                check_index_type(idx, 1)?;
                if *axis >= x.rank()
                    || idx.rank() != x.rank()
                    || upd.rank() != x.rank()
                    || upd.dtype != x.dtype
                {
                    return Err(InferError::Shape(format!(
                        "scatter_elements of {upd} into {x} by {idx}"
                    )));
                }
                Ok(vec![x.clone()])
            }
            M::ScatterNd { .. } => {
                cx.arity(3, 3)?;
                let (x, idx, upd) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
                check_index_type(idx, 1)?;
                if idx.rank() == 0 || upd.dtype != x.dtype {
                    return Err(InferError::Shape(format!(
                        "scatter_nd of {upd} into {x} by {idx}"
                    )));
                }
                Ok(vec![x.clone()])
            }
            M::Shape { start, end } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                if start > end || *end > x.rank() {
                    return Err(InferError::Shape(format!(
                        "shape slice {start}..{end} of rank {}",
                        x.rank()
                    )));
                }
                one(DType::I64, vec![Dim::Known(end - start)])
            }
            M::Size => {
                cx.arity(1, 1)?;
                cx.input(0)?;
                one(DType::I64, vec![])
            }
            M::Range => {
                cx.arity(3, 3)?;
                let x = cx.input(0)?;
                for i in 0..3 {
                    let t = cx.input(i)?;
                    if t.dtype != x.dtype || t.rank() > 1 {
                        return Err(InferError::Shape(format!(
                            "range operand {i} is {t}, expected a scalar {}",
                            x.dtype
                        )));
                    }
                }
                let len = if x.dtype.is_int() {
                    let v: Vec<SymInt> = (0..3)
                        .map(|i| {
                            cx.const_input(i)
                                .and_then(|t| t.to_i64_vec().ok())
                                .and_then(|v| v.first().copied())
                                .map_or(SymInt::Unknown, SymInt::Int)
                        })
                        .collect();
                    range_len(&v[0], &v[1], &v[2])
                } else {
                    let v: Option<Vec<f64>> = (0..3)
                        .map(|i| {
                            cx.const_input(i)
                                .and_then(|t| t.to_f64_vec().ok())
                                .and_then(|v| v.first().copied())
                        })
                        .collect();
                    match v.as_deref() {
                        Some(&[s, l, d]) if d != 0.0 => {
                            Dim::Known(((l - s) / d).ceil().max(0.0) as usize)
                        }
                        _ => Dim::Unknown,
                    }
                };
                one(x.dtype, vec![len])
            }
            M::ConstantOfShape { shape, dtype, .. } => {
                cx.arity(0, 1)?;
                let shape = match (shape, cx.const_input(0)) {
                    (Some(s), _) => s.iter().map(|&d| Dim::Known(d)).collect(),
                    (None, Some(t)) => constant_of_shape_shape(
                        &sym_ints(t)
                            .ok_or_else(|| InferError::Shape("shape must be integers".into()))?,
                    ),
                    (None, None) => vec![Dim::Unknown; operand_len(cx, 0)?],
                };
                one(*dtype, shape)
            }
            M::Tile { repeats } => {
                cx.arity(1, 2)?;
                let x = cx.input(0)?;
                let reps = match ints_of(usizes_to_i64(repeats).as_deref(), cx, 1) {
                    Some(v) => v.into_iter().map(SymInt::Int).collect(),
                    None => vec![SymInt::Unknown; x.rank()],
                };
                one(x.dtype, tile_shape(&x.shape, &reps)?)
            }
            M::Pad { pads, axes, .. } => {
                cx.arity(1, 4)?;
                let x = cx.input(0)?;
                let rank = x.rank();
                if let Some(v) = cx.opt_input(2)
                    && v.dtype != x.dtype
                {
                    return Err(InferError::DType {
                        index: 2,
                        expected: x.dtype.to_string(),
                        found: v.dtype,
                    });
                }
                let axes = match (axes, cx.opt_input(3)) {
                    (Some(a), _) => Some(a.clone()),
                    (None, Some(_)) => match cx.const_input(3) {
                        Some(t) => Some(norm_axes(
                            &t.to_i64_vec()
                                .map_err(|e| InferError::Other(e.to_string()))?,
                            rank,
                        )?),
                        None => None,
                    },
                    (None, None) => Some((0..rank).collect()),
                };
                let pads = ints_of(pads.as_deref(), cx, 1);
                let mut shape = x.shape.clone();
                match (axes, pads) {
                    (Some(a), Some(p)) => {
                        if p.len() != 2 * a.len() {
                            return Err(InferError::Shape(format!(
                                "{} pads for {} axes",
                                p.len(),
                                a.len()
                            )));
                        }
                        for (i, &ax) in a.iter().enumerate() {
                            shape[ax] = offset_dim(&x.shape[ax], p[i] + p[a.len() + i])?;
                        }
                    }
                    (Some(a), None) => a.iter().for_each(|&ax| shape[ax] = Dim::Unknown),
                    _ => shape = vec![Dim::Unknown; rank],
                }
                one(x.dtype, shape)
            }
            M::DepthToSpace { blocksize: b, .. } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                if x.rank() != 4 || *b == 0 {
                    return Err(InferError::Shape(format!(
                        "depth_to_space of {x} with blocksize {b}"
                    )));
                }
                let c = match &x.shape[1] {
                    Dim::Known(c) if c % (b * b) == 0 => Dim::Known(c / (b * b)),
                    Dim::Known(c) => {
                        return Err(InferError::Shape(format!(
                            "{c} channels do not divide into {b}x{b} blocks"
                        )));
                    }
                    _ => Dim::Unknown,
                };
                let scale = |d: &Dim| d.known().map_or(Dim::Unknown, |n| Dim::Known(n * b));
                one(
                    x.dtype,
                    vec![
                        x.shape[0].clone(),
                        c,
                        scale(&x.shape[2]),
                        scale(&x.shape[3]),
                    ],
                )
            }
            M::SpaceToDepth { blocksize: b, .. } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                if x.rank() != 4 || *b == 0 {
                    return Err(InferError::Shape(format!(
                        "space_to_depth of {x} with blocksize {b}"
                    )));
                }
                let shrink = |d: &Dim| match d {
                    Dim::Known(n) if n % b == 0 => Ok(Dim::Known(n / b)),
                    Dim::Known(n) => Err(InferError::Shape(format!(
                        "dim {n} does not divide into blocks of {b}"
                    ))),
                    _ => Ok(Dim::Unknown),
                };
                let c = x.shape[1]
                    .known()
                    .map_or(Dim::Unknown, |c| Dim::Known(c * b * b));
                one(
                    x.dtype,
                    vec![
                        x.shape[0].clone(),
                        c,
                        shrink(&x.shape[2])?,
                        shrink(&x.shape[3])?,
                    ],
                )
            }
            M::Trilu { .. } => {
                cx.arity(1, 2)?;
                let x = cx.input(0)?;
                if x.rank() < 2 {
                    return Err(InferError::Shape(format!("trilu of rank-{} {x}", x.rank())));
                }
                Ok(vec![x.clone()])
            }
            M::OneHot { axis, depth } => {
                cx.arity(3, 3)?;
                let (idx, vals) = (cx.input(0)?, cx.input(2)?);
                if *axis > idx.rank() {
                    return Err(InferError::Shape(format!(
                        "one_hot axis {axis} for indices {idx}"
                    )));
                }
                let d = match (depth, cx.const_input(1)) {
                    (Some(d), _) => Dim::Known(*d),
                    (None, Some(t)) => t
                        .to_f64_vec()
                        .ok()
                        .and_then(|v| v.first().copied())
                        .map_or(Dim::Unknown, |v| Dim::Known(v.max(0.0) as usize)),
                    (None, None) => Dim::Unknown,
                };
                let mut shape = idx.shape.clone();
                shape.insert(*axis, d);
                one(vals.dtype, shape)
            }
            M::NonZero => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                one(DType::I64, vec![Dim::Known(x.rank()), Dim::Unknown])
            }
            M::Compress { axis } => {
                cx.arity(2, 2)?;
                let (x, cond) = (cx.input(0)?, cx.input(1)?);
                if cond.rank() != 1 {
                    return Err(InferError::Shape(format!(
                        "compress condition {cond} must be 1-D"
                    )));
                }
                let count = cx
                    .const_input(1)
                    .and_then(|t| t.to_i64_vec().ok())
                    .map(|v| v.iter().filter(|&&c| c != 0).count());
                let n = count.map_or(Dim::Unknown, Dim::Known);
                match axis {
                    Some(a) => {
                        let mut shape = x.shape.clone();
                        *shape.get_mut(*a).ok_or_else(|| {
                            InferError::Shape(format!("compress axis {a} of {x}"))
                        })? = n;
                        one(x.dtype, shape)
                    }
                    None => one(x.dtype, vec![n]),
                }
            }
            M::ReverseSequence {
                batch_axis,
                time_axis,
            } => {
                cx.arity(2, 2)?;
                let x = cx.input(0)?;
                if *batch_axis >= x.rank() || *time_axis >= x.rank() || batch_axis == time_axis {
                    return Err(InferError::Shape(format!(
                        "reverse_sequence axes {batch_axis}, {time_axis} of {x}"
                    )));
                }
                Ok(vec![x.clone()])
            }
            M::EyeLike { dtype, .. } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                if x.rank() != 2 {
                    return Err(InferError::Shape(format!("eye_like of {x}: expected 2-D")));
                }
                one(*dtype, x.shape.clone())
            }
            M::Unique { axis, .. } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                let (y, len) = match axis {
                    Some(a) => {
                        if *a >= x.rank() {
                            return Err(InferError::Shape(format!("unique axis {a} of {x}")));
                        }
                        let mut s = x.shape.clone();
                        s[*a] = Dim::Unknown;
                        (s, x.shape[*a].clone())
                    }
                    None => {
                        let mut p = DimProduct::new();
                        x.shape.iter().enumerate().for_each(|(i, d)| p.mul(d, i));
                        (vec![Dim::Unknown], p.div(DimProduct::new()))
                    }
                };
                let mut out = vec![
                    TensorType::new(x.dtype, y),
                    TensorType::new(DType::I64, vec![Dim::Unknown]),
                    TensorType::new(DType::I64, vec![len]),
                    TensorType::new(DType::I64, vec![Dim::Unknown]),
                ];
                out.truncate(cx.n_outputs.clamp(1, 4));
                Ok(out)
            }
            M::CenterCropPad { shape, axes } => {
                cx.arity(1, 2)?;
                let x = cx.input(0)?;
                let target = ints_of(usizes_to_i64(shape).as_deref(), cx, 1);
                let mut out = x.shape.clone();
                for (i, &a) in axes.iter().enumerate() {
                    let d = out.get_mut(a).ok_or_else(|| {
                        InferError::Shape(format!("center_crop_pad axis {a} of {x}"))
                    })?;
                    *d = match &target {
                        Some(t) => Dim::Known(
                            t.get(i)
                                .copied()
                                .ok_or_else(|| {
                                    InferError::Shape(
                                        "center_crop_pad shape shorter than axes".into(),
                                    )
                                })?
                                .max(0) as usize,
                        ),
                        None => Dim::Unknown,
                    };
                }
                one(x.dtype, out)
            }
            M::TensorScatter { axis, .. } => {
                cx.arity(2, 3)?;
                let (past, upd) = (cx.input(0)?, cx.input(1)?);
                if *axis >= past.rank() || upd.rank() != past.rank() || upd.dtype != past.dtype {
                    return Err(InferError::Shape(format!(
                        "tensor_scatter of {upd} into {past} on axis {axis}"
                    )));
                }
                Ok(vec![past.clone()])
            }
        }
    }
}

fn check_index_type(t: &TensorType, index: usize) -> Result<(), InferError> {
    if matches!(t.dtype, DType::I32 | DType::I64) {
        Ok(())
    } else {
        Err(InferError::DType {
            index,
            expected: "i32 or i64".into(),
            found: t.dtype,
        })
    }
}
