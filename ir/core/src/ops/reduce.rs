//! The reduce family: reductions over axes, arg-reductions, softmax-like normalizations along an
//! axis, cumulative scans, top-k, Lp normalization and the classification losses.
//!
//! Axes are normalized at import (non-negative, sorted, distinct); where ONNX passes them as a
//! run-time input that is not a constant, the attribute is `None` and the kernel reads input 1.

use super::{InferCx, InferError, norm_axis};
use crate::DType;
use crate::shape::{Dim, Shape, TensorType};
use serde::{Deserialize, Serialize};

/// The reductions that share [`ReduceAttrs`]. Each names the function of a lane of elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    /// `sum(|x|)`.
    L1,
    /// `sqrt(sum(x^2))`.
    L2,
    /// `log(sum(x))`.
    LogSum,
    /// `log(sum(exp(x)))`.
    LogSumExp,
    /// `sum(x^2)`.
    SumSquare,
}

/// Attributes of the axis reductions (`reduce.sum`, `reduce.max`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReduceAttrs {
    /// The axes to reduce, sorted and distinct. An empty list reduces nothing (every lane has one
    /// element, so `reduce.sum_square` is a plain square). `None`: the axes come from input 1 at
    /// run time (an i64 vector, possibly negative).
    pub axes: Option<Vec<usize>>,
    pub keepdims: bool,
    /// Only for run-time axes: an empty axes tensor reduces nothing instead of every axis.
    #[serde(default)]
    pub noop_with_empty_axes: bool,
}

/// Attributes of `reduce.arg_max` / `reduce.arg_min` (output: i64 indices along `axis`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArgAttrs {
    pub axis: usize,
    pub keepdims: bool,
    /// On ties, the last index instead of the first.
    pub select_last_index: bool,
}

/// Attributes of `reduce.softmax`, `reduce.log_softmax` and `reduce.hardmax`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoftmaxAttrs {
    pub axis: usize,
    /// Normalize over all axes from `axis` to the last jointly (the input seen as a 2-D matrix
    /// `[prod(dims[..axis]), prod(dims[axis..])]`, the ONNX semantics before opset 13) rather
    /// than over `axis` alone. The importer clears it when `axis` is the last axis.
    #[serde(default)]
    pub coerce_2d: bool,
}

/// Attributes of `reduce.cum_sum` / `reduce.cum_prod`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CumAttrs {
    /// The scan axis; `None`: read from input 1 (a scalar or 1-element integer tensor).
    pub axis: Option<usize>,
    /// Output `i` excludes element `i` (the first output is the identity).
    pub exclusive: bool,
    /// Scan from the end of the axis towards its start.
    pub reverse: bool,
}

/// How a loss reduces its per-element values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossReduction {
    /// Per-element losses, shaped like the labels.
    None,
    Sum,
    /// Weighted mean: the sum of losses over the sum of the applied weights.
    Mean,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceOp {
    Sum(ReduceAttrs),
    Mean(ReduceAttrs),
    Max(ReduceAttrs),
    Min(ReduceAttrs),
    Prod(ReduceAttrs),
    L1(ReduceAttrs),
    L2(ReduceAttrs),
    LogSum(ReduceAttrs),
    LogSumExp(ReduceAttrs),
    SumSquare(ReduceAttrs),
    /// Index of the largest element along `axis` (i64).
    ArgMax(ArgAttrs),
    /// Index of the smallest element along `axis` (i64).
    ArgMin(ArgAttrs),
    /// `exp(x - max) / sum(exp(x - max))` along the axis.
    Softmax(SoftmaxAttrs),
    /// `log(softmax(x))` along the axis.
    LogSoftmax(SoftmaxAttrs),
    /// 1 at the first maximum along the axis, 0 elsewhere.
    Hardmax(SoftmaxAttrs),
    /// Inclusive or exclusive running sum; inputs: x, axis (when `axis` is `None`).
    CumSum(CumAttrs),
    /// Inclusive or exclusive running product; inputs: x, axis (when `axis` is `None`).
    CumProd(CumAttrs),
    /// The `k` largest (or smallest) elements along `axis` and their i64 indices, sorted, ties
    /// broken by the lower index. Inputs: x, k (when `k` is `None`: a 1-element i64 tensor).
    TopK {
        axis: usize,
        k: Option<usize>,
        largest: bool,
        sorted: bool,
    },
    /// `x / ||x||_p` along `axis` (0 where the norm is 0); `p` is 1 or 2.
    LpNorm {
        axis: usize,
        p: u32,
    },
    /// Softmax cross-entropy of scores `[N, C, d...]` against i32/i64 labels `[N, d...]`, with
    /// optional class weights `[C]`. Outputs: the loss and, optionally, the log-probabilities.
    SoftmaxCrossEntropy {
        reduction: LossReduction,
        ignore_index: Option<i64>,
    },
    /// Negative log-likelihood of log-probabilities `[N, C, d...]` against labels `[N, d...]`,
    /// with optional class weights `[C]`.
    NllLoss {
        reduction: LossReduction,
        ignore_index: Option<i64>,
    },
}

impl ReduceOp {
    /// The axis-reduction kind and attributes, for the ten ops that share [`ReduceAttrs`].
    pub fn as_reduction(&self) -> Option<(ReduceKind, &ReduceAttrs)> {
        Some(match self {
            ReduceOp::Sum(a) => (ReduceKind::Sum, a),
            ReduceOp::Mean(a) => (ReduceKind::Mean, a),
            ReduceOp::Max(a) => (ReduceKind::Max, a),
            ReduceOp::Min(a) => (ReduceKind::Min, a),
            ReduceOp::Prod(a) => (ReduceKind::Prod, a),
            ReduceOp::L1(a) => (ReduceKind::L1, a),
            ReduceOp::L2(a) => (ReduceKind::L2, a),
            ReduceOp::LogSum(a) => (ReduceKind::LogSum, a),
            ReduceOp::LogSumExp(a) => (ReduceKind::LogSumExp, a),
            ReduceOp::SumSquare(a) => (ReduceKind::SumSquare, a),
            _ => return None,
        })
    }

    /// Builds the axis reduction of the given kind.
    pub fn reduction(kind: ReduceKind, attrs: ReduceAttrs) -> ReduceOp {
        match kind {
            ReduceKind::Sum => ReduceOp::Sum(attrs),
            ReduceKind::Mean => ReduceOp::Mean(attrs),
            ReduceKind::Max => ReduceOp::Max(attrs),
            ReduceKind::Min => ReduceOp::Min(attrs),
            ReduceKind::Prod => ReduceOp::Prod(attrs),
            ReduceKind::L1 => ReduceOp::L1(attrs),
            ReduceKind::L2 => ReduceOp::L2(attrs),
            ReduceKind::LogSum => ReduceOp::LogSum(attrs),
            ReduceKind::LogSumExp => ReduceOp::LogSumExp(attrs),
            ReduceKind::SumSquare => ReduceOp::SumSquare(attrs),
        }
    }

    pub fn infer(&self, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        if let Some((_, attrs)) = self.as_reduction() {
            return infer_reduce(attrs, cx);
        }
        match self {
            ReduceOp::ArgMax(a) | ReduceOp::ArgMin(a) => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                check_axis(a.axis, x.rank())?;
                let shape = reduced_shape(&x.shape, &[a.axis], a.keepdims);
                Ok(vec![TensorType::new(DType::I64, shape)])
            }
            ReduceOp::Softmax(a) | ReduceOp::LogSoftmax(a) | ReduceOp::Hardmax(a) => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                check_axis(a.axis, x.rank())?;
                float_input(x, 0)?;
                Ok(vec![x.clone()])
            }
            ReduceOp::CumSum(a) | ReduceOp::CumProd(a) => {
                cx.arity(1, 2)?;
                let x = cx.input(0)?;
                match a.axis {
                    Some(axis) => check_axis(axis, x.rank())?,
                    None => {
                        let ax = cx.input(1)?;
                        int_input(ax, 1)?;
                    }
                }
                Ok(vec![TensorType::new(x.dtype, x.shape.clone())])
            }
            ReduceOp::TopK { axis, k, .. } => {
                cx.arity(1, 2)?;
                let x = cx.input(0)?;
                check_axis(*axis, x.rank())?;
                let k = match k {
                    Some(k) => Some(*k),
                    None => {
                        int_input(cx.input(1)?, 1)?;
                        match cx.const_input(1) {
                            Some(t) => match t.to_i64_vec().ok().as_deref() {
                                Some([k]) if *k >= 0 => Some(*k as usize),
                                _ => {
                                    return Err(InferError::Other(
                                        "k must be one non-negative integer".into(),
                                    ));
                                }
                            },
                            None => None,
                        }
                    }
                };
                if let (Some(k), Dim::Known(n)) = (k, &x.shape[*axis])
                    && k > *n
                {
                    return Err(InferError::Shape(format!(
                        "k = {k} exceeds axis length {n}"
                    )));
                }
                let mut shape = x.shape.clone();
                shape[*axis] = k.map_or(Dim::Unknown, Dim::Known);
                Ok(vec![
                    TensorType::new(x.dtype, shape.clone()),
                    TensorType::new(DType::I64, shape),
                ])
            }
            ReduceOp::LpNorm { axis, p } => {
                cx.arity(1, 1)?;
                let x = cx.input(0)?;
                check_axis(*axis, x.rank())?;
                float_input(x, 0)?;
                if !matches!(p, 1 | 2) {
                    return Err(InferError::Attr {
                        name: "p",
                        reason: format!("must be 1 or 2, got {p}"),
                    });
                }
                Ok(vec![x.clone()])
            }
            ReduceOp::SoftmaxCrossEntropy { reduction, .. }
            | ReduceOp::NllLoss { reduction, .. } => {
                cx.arity(2, 3)?;
                let (x, labels) = (cx.input(0)?, cx.input(1)?);
                float_input(x, 0)?;
                if !matches!(labels.dtype, DType::I32 | DType::I64) {
                    return Err(InferError::DType {
                        index: 1,
                        expected: "i32 or i64".into(),
                        found: labels.dtype,
                    });
                }
                if x.rank() < 2 || labels.rank() + 1 != x.rank() {
                    return Err(InferError::Shape(format!(
                        "scores {x} and labels {labels} do not fit [N,C,d...] / [N,d...]"
                    )));
                }
                if let Some(w) = cx.opt_input(2)
                    && w.rank() != 1
                {
                    return Err(InferError::Shape(format!("weights must be 1-D, got {w}")));
                }
                let loss_shape = match reduction {
                    LossReduction::None => {
                        let mut s = labels.shape.clone();
                        // The labels' dims equal the scores' where the scores know them better.
                        for (i, d) in s.iter_mut().enumerate() {
                            let xd = &x.shape[if i == 0 { 0 } else { i + 1 }];
                            if d.known().is_none() && xd.known().is_some() {
                                *d = xd.clone();
                            }
                        }
                        s
                    }
                    _ => vec![],
                };
                let mut out = vec![TensorType::new(x.dtype, loss_shape)];
                let is_sce = matches!(self, ReduceOp::SoftmaxCrossEntropy { .. });
                match (is_sce, cx.n_outputs) {
                    (_, 1) => {}
                    (true, 2) => out.push(TensorType::new(x.dtype, x.shape.clone())),
                    (_, n) => return Err(InferError::Other(format!("{n} outputs requested"))),
                }
                Ok(out)
            }
            _ => unreachable!("axis reductions are handled above"),
        }
    }
}

fn check_axis(axis: usize, rank: usize) -> Result<(), InferError> {
    if axis >= rank.max(1) {
        return Err(InferError::Shape(format!(
            "axis {axis} out of range for rank {rank}"
        )));
    }
    Ok(())
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

/// The shape after reducing `axes` (sorted, distinct, in range).
fn reduced_shape(shape: &[Dim], axes: &[usize], keepdims: bool) -> Shape {
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match (axes.contains(&i), keepdims) {
            (false, _) => Some(d.clone()),
            (true, true) => Some(Dim::Known(1)),
            (true, false) => None,
        })
        .collect()
}

/// Normalizes reduction axes as the kernel does: negative axes count from the end; the list is
/// sorted and deduplicated; an empty list means every axis unless `noop` is set.
pub fn resolve_axes(axes: &[i64], rank: usize, noop: bool) -> Result<Vec<usize>, InferError> {
    if axes.is_empty() {
        return Ok(if noop { vec![] } else { (0..rank).collect() });
    }
    let mut v = axes
        .iter()
        .map(|&a| norm_axis(a, rank))
        .collect::<Result<Vec<_>, _>>()?;
    if rank == 0 {
        // A scalar has no axis to reduce; `norm_axis` accepts 0 and -1 for it.
        v.clear();
    }
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

fn infer_reduce(a: &ReduceAttrs, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
    cx.arity(1, 2)?;
    let x = cx.input(0)?;
    if x.dtype == DType::Str {
        return Err(InferError::DType {
            index: 0,
            expected: "a numeric type".into(),
            found: x.dtype,
        });
    }
    let rank = x.rank();
    let shape = match &a.axes {
        Some(axes) => {
            if let Some(&bad) = axes.iter().find(|&&ax| ax >= rank) {
                return Err(InferError::Shape(format!(
                    "axis {bad} out of range for rank {rank}"
                )));
            }
            reduced_shape(&x.shape, axes, a.keepdims)
        }
        None => {
            let ax = cx.input(1)?;
            int_input(ax, 1)?;
            if let Some(t) = cx.const_input(1) {
                let v = t
                    .to_i64_vec()
                    .map_err(|e| InferError::Other(e.to_string()))?;
                let axes = resolve_axes(&v, rank, a.noop_with_empty_axes)?;
                reduced_shape(&x.shape, &axes, a.keepdims)
            } else if a.keepdims {
                x.shape
                    .iter()
                    .map(|d| {
                        if d == &Dim::Known(1) {
                            d.clone()
                        } else {
                            Dim::Unknown
                        }
                    })
                    .collect()
            } else {
                match ax.shape.as_slice() {
                    [Dim::Known(0)] if a.noop_with_empty_axes => x.shape.clone(),
                    [Dim::Known(0)] => vec![],
                    [Dim::Known(n)] if *n <= rank => vec![Dim::Unknown; rank - n],
                    _ => {
                        return Err(InferError::Shape(
                            "the output rank depends on run-time axes of unknown length".into(),
                        ));
                    }
                }
            }
        }
    };
    Ok(vec![TensorType::new(x.dtype, shape)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    fn infer(
        op: &ReduceOp,
        inputs: &[Option<TensorType>],
        consts: &[Option<&Tensor>],
    ) -> Result<Vec<TensorType>, InferError> {
        op.infer(&InferCx {
            inputs,
            consts,
            regions: &[],
            n_outputs: 1,
        })
    }

    #[test]
    fn reduce_shapes() {
        let x = TensorType::new(
            DType::F32,
            vec![Dim::Sym("n".into()), Dim::Known(3), Dim::Known(4)],
        );
        let op = |axes: Option<Vec<usize>>, keepdims| {
            ReduceOp::Sum(ReduceAttrs {
                axes,
                keepdims,
                noop_with_empty_axes: false,
            })
        };
        let got = infer(&op(Some(vec![1]), true), &[Some(x.clone())], &[]).unwrap();
        assert_eq!(got[0].to_string(), "f32[n,1,4]");
        let got = infer(&op(Some(vec![0, 2]), false), &[Some(x.clone())], &[]).unwrap();
        assert_eq!(got[0].to_string(), "f32[3]");
        let axes = TensorType::fixed(DType::I64, &[2]);
        let got = infer(
            &op(None, false),
            &[Some(x.clone()), Some(axes.clone())],
            &[],
        )
        .unwrap();
        assert_eq!(got[0].to_string(), "f32[?]");
        let c = Tensor::from_vec(&[2], vec![-1i64, 0]).unwrap();
        let got = infer(&op(None, false), &[Some(x), Some(axes)], &[None, Some(&c)]).unwrap();
        assert_eq!(got[0].to_string(), "f32[3]");
    }

    #[test]
    fn resolve_axes_rules() {
        assert_eq!(resolve_axes(&[], 3, false).unwrap(), vec![0, 1, 2]);
        assert_eq!(resolve_axes(&[], 3, true).unwrap(), Vec::<usize>::new());
        assert_eq!(resolve_axes(&[-1, 0, 2], 3, false).unwrap(), vec![0, 2]);
        assert!(resolve_axes(&[3], 3, false).is_err());
    }

    #[test]
    fn op_names() {
        let op = crate::Op::Reduce(ReduceOp::LogSumExp(ReduceAttrs {
            axes: Some(vec![]),
            keepdims: true,
            noop_with_empty_axes: false,
        }));
        assert_eq!(op.name(), "reduce.log_sum_exp");
        let op = crate::Op::Reduce(ReduceOp::TopK {
            axis: 0,
            k: None,
            largest: true,
            sorted: true,
        });
        assert_eq!(op.name(), "reduce.top_k");
    }
}
