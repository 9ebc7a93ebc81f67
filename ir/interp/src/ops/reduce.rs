//! Kernels of the reduce family: reductions, arg-reductions, softmax-likes, scans, top-k, Lp
//! normalization and the classification losses.
//!
//! Every kernel works on *lanes*: the input is permuted so that the axes the op works along come
//! last, each lane (one index of the other axes) is handed to a plain function over a slice, and
//! the results are permuted back. Floats are computed in f64 and rounded once to the element
//! type (f16/bf16 included); integer sums and products wrap in the element type, like numpy's
//! `dtype=x.dtype` reductions that the ONNX reference uses.

use crate::{EvalCx, EvalError, invalid};
use mlc_ir::ops::reduce::{LossReduction, ReduceAttrs, ReduceKind, SoftmaxAttrs, resolve_axes};
use mlc_ir::ops::{ReduceOp, norm_axis};
use mlc_ir::{DType, NumElem, Tensor, dispatch_float, dispatch_num};
use ndarray::{ArrayD, IxDyn};
use std::cmp::Ordering;

pub fn eval(
    op: &ReduceOp,
    inputs: &[Option<&Tensor>],
    cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    let x = input(inputs, 0)?;
    if let Some((kind, attrs)) = op.as_reduction() {
        let axes = reduce_axes(attrs, inputs, x.rank())?;
        return Ok(vec![
            dispatch_num!(x, a => reduce(a, kind, &axes, attrs.keepdims)?,
            _ => return Err(invalid("reductions take numeric tensors"))),
        ]);
    }
    match op {
        ReduceOp::ArgMax(a) | ReduceOp::ArgMin(a) => {
            let max = matches!(op, ReduceOp::ArgMax(_));
            let out = dispatch_num!(x, t => arg_reduce(t, a.axis, max, a.keepdims, a.select_last_index)?,
                _ => return Err(invalid("arg reductions take numeric tensors")));
            Ok(vec![out])
        }
        ReduceOp::Softmax(a) => Ok(vec![float_lanes(
            x,
            &softmax_axes(a, x.rank()),
            |v, out| softmax(v, false, out),
        )?]),
        ReduceOp::LogSoftmax(a) => Ok(vec![float_lanes(
            x,
            &softmax_axes(a, x.rank()),
            |v, out| softmax(v, true, out),
        )?]),
        ReduceOp::Hardmax(a) => Ok(vec![float_lanes(x, &softmax_axes(a, x.rank()), hardmax)?]),
        ReduceOp::CumSum(a) | ReduceOp::CumProd(a) => {
            let axis = match a.axis {
                Some(axis) => axis,
                None => scalar_int(input(inputs, 1)?, "axis")
                    .and_then(|v| norm_axis(v, x.rank()).map_err(|e| invalid(e.to_string())))?,
            };
            let prod = matches!(op, ReduceOp::CumProd(_));
            let out = dispatch_num!(x, t => cumulative(t, axis, prod, a.exclusive, a.reverse)?,
                _ => return Err(invalid("cumulative ops take numeric tensors")));
            Ok(vec![out])
        }
        ReduceOp::TopK {
            axis, k, largest, ..
        } => {
            let k = match k {
                Some(k) => *k,
                None => usize::try_from(scalar_int(input(inputs, 1)?, "k")?)
                    .map_err(|_| invalid("k must be non-negative"))?,
            };
            dispatch_num!(x, t => top_k(t, *axis, k, *largest),
                _ => Err(invalid("top_k takes numeric tensors")))
        }
        ReduceOp::LpNorm { axis, p } => {
            let p = *p;
            Ok(vec![float_lanes(x, &[*axis], |v, out| lp_norm(v, p, out))?])
        }
        ReduceOp::SoftmaxCrossEntropy {
            reduction,
            ignore_index,
        }
        | ReduceOp::NllLoss {
            reduction,
            ignore_index,
        } => {
            let sce = matches!(op, ReduceOp::SoftmaxCrossEntropy { .. });
            let labels = input(inputs, 1)?.to_i64_vec()?;
            let weights = inputs
                .get(2)
                .copied()
                .flatten()
                .map(Tensor::to_f64_vec)
                .transpose()?;
            let (scores, log_prob) = if sce {
                let lp = float_lanes(x, &[1], |v, out| softmax(v, true, out))?;
                (lp.to_f64_vec()?, Some(lp))
            } else {
                (x.to_f64_vec()?, None)
            };
            let loss = nll(
                x.shape(),
                &scores,
                &labels,
                weights.as_deref(),
                *reduction,
                *ignore_index,
            )?;
            let loss_shape: Vec<usize> = if *reduction == LossReduction::None {
                input(inputs, 1)?.shape().to_vec()
            } else {
                vec![]
            };
            let loss = Tensor::from_vec(&loss_shape, loss)?.cast(x.dtype())?;
            let mut out = vec![loss];
            if cx.n_outputs() == 2 {
                out.push(log_prob.ok_or_else(|| invalid("nll_loss has one output"))?);
            }
            Ok(out)
        }
        _ => unreachable!("axis reductions are handled above"),
    }
}

fn input<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, EvalError> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| invalid(format!("input {i} is required")))
}

/// The value of a scalar or one-element integer tensor.
fn scalar_int(t: &Tensor, what: &str) -> Result<i64, EvalError> {
    match t.to_i64_vec()?.as_slice() {
        [v] => Ok(*v),
        _ => Err(invalid(format!(
            "{what} must hold one integer, got shape {:?}",
            t.shape()
        ))),
    }
}

fn reduce_axes(
    a: &ReduceAttrs,
    inputs: &[Option<&Tensor>],
    rank: usize,
) -> Result<Vec<usize>, EvalError> {
    match &a.axes {
        Some(axes) => Ok(axes.clone()),
        None => {
            let v = match inputs.get(1).copied().flatten() {
                Some(t) => t.to_i64_vec()?,
                None => vec![],
            };
            resolve_axes(&v, rank, a.noop_with_empty_axes).map_err(|e| invalid(e.to_string()))
        }
    }
}

fn softmax_axes(a: &SoftmaxAttrs, rank: usize) -> Vec<usize> {
    if a.coerce_2d {
        (a.axis..rank.max(1)).collect()
    } else {
        vec![a.axis]
    }
}

/// The input seen as lanes along `axes` (sorted, distinct): element `j` of lane `i` is the
/// `j`-th element, in row-major order over `axes`, at the `i`-th index of the other axes.
struct Lanes<T> {
    /// Original axis of each permuted axis: the kept axes, then `axes`.
    perm: Vec<usize>,
    /// Sizes of the kept axes, in order.
    kept: Vec<usize>,
    len: usize,
    data: Vec<T>,
}

impl<T: Clone> Lanes<T> {
    fn new(a: &ArrayD<T>, axes: &[usize]) -> Result<Self, EvalError> {
        let rank = a.ndim();
        if let Some(&bad) = axes.iter().find(|&&ax| ax >= rank.max(1)) {
            return Err(invalid(format!(
                "axis {bad} out of range for shape {:?}",
                a.shape()
            )));
        }
        let axes: Vec<usize> = axes.iter().copied().filter(|&ax| ax < rank).collect();
        let kept_axes: Vec<usize> = (0..rank).filter(|i| !axes.contains(i)).collect();
        let perm: Vec<usize> = kept_axes.iter().chain(&axes).copied().collect();
        let kept = kept_axes.iter().map(|&i| a.shape()[i]).collect();
        let len = axes.iter().map(|&i| a.shape()[i]).product();
        let data = a
            .view()
            .permuted_axes(IxDyn(&perm))
            .iter()
            .cloned()
            .collect();
        Ok(Lanes {
            perm,
            kept,
            len,
            data,
        })
    }

    fn count(&self) -> usize {
        self.kept.iter().product()
    }

    fn lane(&self, i: usize) -> &[T] {
        &self.data[i * self.len..(i + 1) * self.len]
    }

    /// Builds the output from new lanes of dims `lane_dims` (one per lane axis), concatenated in
    /// lane order: each output lane replaces the input lane at the same place.
    fn rebuild<U: Clone>(&self, lane_dims: &[usize], data: Vec<U>) -> Result<ArrayD<U>, EvalError> {
        let shape: Vec<usize> = self.kept.iter().chain(lane_dims).copied().collect();
        let arr =
            ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| invalid(e.to_string()))?;
        let mut inv = vec![0; self.perm.len()];
        for (j, &p) in self.perm.iter().enumerate() {
            inv[p] = j;
        }
        Ok(arr
            .permuted_axes(IxDyn(&inv))
            .as_standard_layout()
            .into_owned())
    }
}

fn reduce<T: NumElem>(
    a: &ArrayD<T>,
    kind: ReduceKind,
    axes: &[usize],
    keepdims: bool,
) -> Result<Tensor, EvalError> {
    let lanes = Lanes::new(a, axes)?;
    let out: Vec<T> = (0..lanes.count())
        .map(|i| reduce_lane(kind, lanes.lane(i)))
        .collect();
    let shape: Vec<usize> = a
        .shape()
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(&i), keepdims) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect();
    Ok(Tensor::from_vec(&shape, out)?)
}

/// `a > b` where NaN counts as larger than everything (numpy's max/argmax propagate NaN).
fn greater<T: NumElem>(a: T, b: T) -> bool {
    match a.partial_cmp(&b) {
        Some(o) => o == Ordering::Greater,
        None => b.partial_cmp(&b).is_some(),
    }
}

/// `a < b` where NaN counts as smaller than everything, so that minima propagate it too.
fn less<T: NumElem>(a: T, b: T) -> bool {
    match a.partial_cmp(&b) {
        Some(o) => o == Ordering::Less,
        None => b.partial_cmp(&b).is_some(),
    }
}

/// Reduces one lane. An empty lane gives the reduction's identity (the ONNX reference's
/// `reduce_constant`): 0 for sums, 1 for products, the type's lowest (highest) value for max
/// (min), -inf for the logarithmic ones, NaN for the mean.
fn reduce_lane<T: NumElem>(kind: ReduceKind, v: &[T]) -> T {
    use ReduceKind::*;
    match kind {
        Max | Min => {
            let pick = if kind == Max { greater::<T> } else { less::<T> };
            match v.split_first() {
                Some((&first, rest)) => rest
                    .iter()
                    .fold(first, |acc, &x| if pick(x, acc) { x } else { acc }),
                None if T::DTYPE == DType::Bool => T::from_i64(i64::from(kind == Min)),
                None => T::from_f64(if kind == Max {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                }),
            }
        }
        _ if T::DTYPE.is_float() => {
            let f = v.iter().map(|x| x.to_f64());
            let r = match kind {
                Sum => f.sum(),
                Mean => f.sum::<f64>() / v.len() as f64,
                Prod => f.product(),
                L1 => f.map(f64::abs).sum(),
                L2 => f.map(|x| x * x).sum::<f64>().sqrt(),
                SumSquare => f.map(|x| x * x).sum(),
                LogSum => f.sum::<f64>().ln(),
                LogSumExp => log_sum_exp(f),
                Max | Min => unreachable!("handled above"),
            };
            T::from_f64(r)
        }
        _ => {
            // Integers (and bool): wrap in i64, which keeps the low bits of every narrower type.
            let signed = T::DTYPE.is_signed_int();
            let i = v.iter().map(|x| x.to_i64());
            let wsum = |it: &mut dyn Iterator<Item = i64>| it.fold(0i64, i64::wrapping_add);
            match kind {
                Sum => T::from_i64(wsum(&mut v.iter().map(|x| x.to_i64()))),
                Prod => T::from_i64(i.fold(1i64, i64::wrapping_mul)),
                L1 => T::from_i64(wsum(
                    &mut i.map(|x| if signed { x.wrapping_abs() } else { x }),
                )),
                SumSquare => T::from_i64(wsum(&mut i.map(|x| x.wrapping_mul(x)))),
                L2 => T::from_f64((wsum(&mut i.map(|x| x.wrapping_mul(x))) as f64).sqrt()),
                Mean => {
                    T::from_f64(wsum(&mut v.iter().map(|x| x.to_i64())) as f64 / v.len() as f64)
                }
                LogSum => T::from_f64((v.iter().map(|x| x.to_f64()).sum::<f64>()).ln()),
                LogSumExp => T::from_f64(log_sum_exp(v.iter().map(|x| x.to_f64()))),
                Max | Min => unreachable!("handled above"),
            }
        }
    }
}

/// `log(sum(exp(x)))`, shifted by the largest finite element for range.
fn log_sum_exp(f: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = f
        .clone()
        .filter(|x| x.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    let m = if m.is_finite() { m } else { 0.0 };
    f.map(|x| (x - m).exp()).sum::<f64>().ln() + m
}

fn arg_reduce<T: NumElem>(
    a: &ArrayD<T>,
    axis: usize,
    max: bool,
    keepdims: bool,
    last: bool,
) -> Result<Tensor, EvalError> {
    let lanes = Lanes::new(a, &[axis])?;
    if lanes.len == 0 && lanes.count() > 0 {
        return Err(invalid("arg reduction over an empty axis"));
    }
    let pick = if max { greater::<T> } else { less::<T> };
    let out: Vec<i64> = (0..lanes.count())
        .map(|i| {
            let v = lanes.lane(i);
            let mut best = 0;
            for (j, &x) in v.iter().enumerate().skip(1) {
                if pick(x, v[best]) || (last && x.partial_cmp(&v[best]) == Some(Ordering::Equal)) {
                    best = j;
                }
            }
            best as i64
        })
        .collect();
    let mut shape = a.shape().to_vec();
    if a.ndim() > 0 {
        if keepdims {
            shape[axis] = 1;
        } else {
            shape.remove(axis);
        }
    }
    Ok(Tensor::from_vec(&shape, out)?)
}

/// Maps every lane along `axes` of a float tensor through `f` (in f64), keeping the shape.
fn float_lanes(
    x: &Tensor,
    axes: &[usize],
    f: impl Fn(&[f64], &mut [f64]),
) -> Result<Tensor, EvalError> {
    fn go<T: NumElem>(
        a: &ArrayD<T>,
        axes: &[usize],
        f: impl Fn(&[f64], &mut [f64]),
    ) -> Result<Tensor, EvalError> {
        let lanes = Lanes::new(a, axes)?;
        let mut out = Vec::with_capacity(lanes.data.len());
        let (mut src, mut dst) = (vec![0.0; lanes.len], vec![0.0; lanes.len]);
        for i in 0..lanes.count() {
            for (s, v) in src.iter_mut().zip(lanes.lane(i)) {
                *s = v.to_f64();
            }
            f(&src, &mut dst);
            out.extend(dst.iter().map(|&v| T::from_f64(v)));
        }
        let lane_dims: Vec<usize> = lanes.perm[lanes.kept.len()..]
            .iter()
            .map(|&i| a.shape()[i])
            .collect();
        Ok(T::wrap(lanes.rebuild(&lane_dims, out)?))
    }
    dispatch_float!(x, a => go(a, axes, f), _ => Err(invalid(format!("expected a float tensor, got {}", x.dtype()))))
}

fn softmax(v: &[f64], log: bool, out: &mut [f64]) {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = v.iter().map(|x| (x - m).exp()).sum();
    for (o, x) in out.iter_mut().zip(v) {
        *o = if log {
            (x - m) - sum.ln()
        } else {
            (x - m).exp() / sum
        };
    }
}

fn hardmax(v: &[f64], out: &mut [f64]) {
    let mut best = 0;
    for (j, &x) in v.iter().enumerate() {
        if greater(x, v[best]) {
            best = j;
        }
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o = if j == best { 1.0 } else { 0.0 };
    }
}

fn lp_norm(v: &[f64], p: u32, out: &mut [f64]) {
    let norm = if p == 1 {
        v.iter().map(|x| x.abs()).sum()
    } else {
        v.iter().map(|x| x * x).sum::<f64>().sqrt()
    };
    for (o, x) in out.iter_mut().zip(v) {
        *o = if norm == 0.0 { 0.0 } else { x / norm };
    }
}

fn cumulative<T: NumElem>(
    a: &ArrayD<T>,
    axis: usize,
    prod: bool,
    exclusive: bool,
    reverse: bool,
) -> Result<Tensor, EvalError> {
    let lanes = Lanes::new(a, &[axis])?;
    let n = lanes.len;
    let mut out = Vec::with_capacity(lanes.data.len());
    let mut lane_out = vec![T::zero(); n];
    for i in 0..lanes.count() {
        let v = lanes.lane(i);
        let order: Box<dyn Iterator<Item = usize>> = if reverse {
            Box::new((0..n).rev())
        } else {
            Box::new(0..n)
        };
        if T::DTYPE.is_float() {
            let mut acc = if prod { 1.0 } else { 0.0 };
            for j in order {
                let x = v[j].to_f64();
                if !exclusive {
                    acc = if prod { acc * x } else { acc + x };
                }
                lane_out[j] = T::from_f64(acc);
                if exclusive {
                    acc = if prod { acc * x } else { acc + x };
                }
            }
        } else {
            let mut acc: i64 = i64::from(prod);
            let step = |acc: i64, x: i64| {
                if prod {
                    acc.wrapping_mul(x)
                } else {
                    acc.wrapping_add(x)
                }
            };
            for j in order {
                let x = v[j].to_i64();
                if !exclusive {
                    acc = step(acc, x);
                }
                lane_out[j] = T::from_i64(acc);
                if exclusive {
                    acc = step(acc, x);
                }
            }
        }
        out.extend_from_slice(&lane_out);
    }
    let dims = if a.ndim() == 0 { vec![] } else { vec![n] };
    Ok(T::wrap(lanes.rebuild(&dims, out)?))
}

/// Total order for top-k: NaN above every number (numpy's sort puts NaN last).
fn total_cmp<T: NumElem>(a: T, b: T) -> Ordering {
    a.partial_cmp(&b).unwrap_or_else(|| {
        let (an, bn) = (a.partial_cmp(&a).is_none(), b.partial_cmp(&b).is_none());
        an.cmp(&bn)
    })
}

fn top_k<T: NumElem>(
    a: &ArrayD<T>,
    axis: usize,
    k: usize,
    largest: bool,
) -> Result<Vec<Tensor>, EvalError> {
    let lanes = Lanes::new(a, &[axis])?;
    if k > lanes.len {
        return Err(invalid(format!(
            "k = {k} exceeds axis length {}",
            lanes.len
        )));
    }
    let (mut values, mut indices) = (Vec::new(), Vec::new());
    let mut order: Vec<usize> = Vec::with_capacity(lanes.len);
    for i in 0..lanes.count() {
        let v = lanes.lane(i);
        order.clear();
        order.extend(0..v.len());
        // A stable sort keeps equal elements in index order, the reference's tie-break.
        if largest {
            order.sort_by(|&p, &q| total_cmp(v[q], v[p]));
        } else {
            order.sort_by(|&p, &q| total_cmp(v[p], v[q]));
        }
        for &j in &order[..k] {
            values.push(v[j]);
            indices.push(j as i64);
        }
    }
    Ok(vec![
        T::wrap(lanes.rebuild(&[k], values)?),
        Tensor::I64(lanes.rebuild(&[k], indices)?),
    ])
}

/// Per-element negative log-likelihood of `scores` (`[N, C, d...]`, row-major, already
/// log-probabilities) against `labels` (`[N, d...]`), reduced as asked.
fn nll(
    shape: &[usize],
    scores: &[f64],
    labels: &[i64],
    weights: Option<&[f64]>,
    reduction: LossReduction,
    ignore_index: Option<i64>,
) -> Result<Vec<f64>, EvalError> {
    if shape.len() < 2 {
        return Err(invalid(format!(
            "scores must be [N, C, ...], got {shape:?}"
        )));
    }
    let (n, c) = (shape[0], shape[1]);
    let d: usize = shape[2..].iter().product();
    if labels.len() != n * d {
        return Err(invalid(format!(
            "{} labels for scores of shape {shape:?}",
            labels.len()
        )));
    }
    if let Some(w) = weights
        && w.len() != c
    {
        return Err(invalid(format!("{} weights for {c} classes", w.len())));
    }
    let (mut losses, mut wsum) = (Vec::with_capacity(n * d), 0.0);
    for i in 0..n {
        for j in 0..d {
            let t = labels[i * d + j];
            if Some(t) == ignore_index {
                losses.push(0.0);
                continue;
            }
            let tc = usize::try_from(t)
                .ok()
                .filter(|&t| t < c)
                .ok_or_else(|| invalid(format!("label {t} out of range for {c} classes")))?;
            let w = weights.map_or(1.0, |w| w[tc]);
            wsum += w;
            losses.push(-scores[(i * c + tc) * d + j] * w);
        }
    }
    Ok(match reduction {
        LossReduction::None => losses,
        LossReduction::Sum => vec![losses.iter().sum()],
        LossReduction::Mean => vec![losses.iter().sum::<f64>() / wsum],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::ops::reduce::{ArgAttrs, CumAttrs};
    use mlc_ir::{Elem, TensorType};

    fn run(op: ReduceOp, inputs: &[&Tensor], n_outputs: usize) -> Vec<Tensor> {
        let types = vec![TensorType::scalar(DType::F32); n_outputs];
        let cx = EvalCx {
            regions: &[],
            output_types: &types,
        };
        let args: Vec<Option<&Tensor>> = inputs.iter().map(|t| Some(*t)).collect();
        eval(&op, &args, &cx).unwrap()
    }

    fn t<T: Elem>(shape: &[usize], v: Vec<T>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    fn attrs(axes: Option<Vec<usize>>, keepdims: bool) -> ReduceAttrs {
        ReduceAttrs {
            axes,
            keepdims,
            noop_with_empty_axes: false,
        }
    }

    fn close(got: &Tensor, want: &[f64]) {
        let g = got.to_f64_vec().unwrap();
        assert_eq!(g.len(), want.len(), "{got:?}");
        for (a, b) in g.iter().zip(want) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0) || (a.is_nan() && b.is_nan()),
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn sum_keepdims_and_axes() {
        // numpy: x = arange(12).reshape(3,2,2); x.sum(axis=1, keepdims=True)
        let x = t(&[3, 2, 2], (0..12).map(|v| v as f32).collect());
        let out = run(ReduceOp::Sum(attrs(Some(vec![1]), true)), &[&x], 1);
        assert_eq!(
            out[0],
            t(&[3, 1, 2], vec![2.0f32, 4.0, 10.0, 12.0, 18.0, 20.0])
        );
        let out = run(ReduceOp::Sum(attrs(Some(vec![0, 2]), false)), &[&x], 1);
        assert_eq!(out[0], t(&[2], vec![27.0f32, 39.0]));
        // Run-time axes, negative.
        let axes = t(&[1], vec![-1i64]);
        let out = run(ReduceOp::Max(attrs(None, false)), &[&x, &axes], 1);
        assert_eq!(out[0], t(&[3, 2], vec![1.0f32, 3.0, 5.0, 7.0, 9.0, 11.0]));
    }

    #[test]
    fn empty_axes() {
        let x = t(&[2, 2], vec![1.0f32, -2.0, 3.0, -4.0]);
        let empty = t::<i64>(&[0], vec![]);
        // Empty run-time axes reduce everything...
        let out = run(ReduceOp::Sum(attrs(None, true)), &[&x, &empty], 1);
        assert_eq!(out[0], t(&[1, 1], vec![-2.0f32]));
        // ...unless noop_with_empty_axes, where sum_square is a plain square.
        let noop = ReduceAttrs {
            axes: None,
            keepdims: true,
            noop_with_empty_axes: true,
        };
        let out = run(ReduceOp::SumSquare(noop), &[&x, &empty], 1);
        assert_eq!(out[0], t(&[2, 2], vec![1.0f32, 4.0, 9.0, 16.0]));
    }

    #[test]
    fn empty_set_identities() {
        let x = t::<f32>(&[2, 0, 4], vec![]);
        let a = || attrs(Some(vec![1]), true);
        let val = |op| run(op, &[&x], 1)[0].to_f64_vec().unwrap()[0];
        assert_eq!(val(ReduceOp::Sum(a())), 0.0);
        assert_eq!(val(ReduceOp::Prod(a())), 1.0);
        assert_eq!(val(ReduceOp::Max(a())), f64::NEG_INFINITY);
        assert_eq!(val(ReduceOp::Min(a())), f64::INFINITY);
        assert_eq!(val(ReduceOp::LogSumExp(a())), f64::NEG_INFINITY);
        assert_eq!(val(ReduceOp::LogSum(a())), f64::NEG_INFINITY);
        let xi = t::<i32>(&[0, 3], vec![]);
        let out = run(ReduceOp::Max(attrs(Some(vec![0]), false)), &[&xi], 1);
        assert_eq!(out[0], t(&[3], vec![i32::MIN; 3]));
        let xb = t::<bool>(&[0], vec![]);
        let out = run(ReduceOp::Max(attrs(Some(vec![0]), false)), &[&xb], 1);
        assert_eq!(out[0], Tensor::scalar(false));
    }

    #[test]
    fn other_reductions() {
        let x = t(&[2, 3], vec![1.0f32, 2.0, 3.0, -4.0, 5.0, 6.0]);
        let a = || attrs(Some(vec![1]), false);
        close(&run(ReduceOp::Mean(a()), &[&x], 1)[0], &[2.0, 7.0 / 3.0]);
        close(&run(ReduceOp::L1(a()), &[&x], 1)[0], &[6.0, 15.0]);
        close(
            &run(ReduceOp::L2(a()), &[&x], 1)[0],
            &[14f64.sqrt(), 77f64.sqrt()],
        );
        // numpy: np.log(np.exp(x).sum(1))
        close(
            &run(ReduceOp::LogSumExp(a()), &[&x], 1)[0],
            &[3.40760596, 6.31329488],
        );
        let xi = t(&[3], vec![100i8, 100, -50]);
        // Wraps like numpy's int8 sum: 150 -> -106.
        assert_eq!(
            run(ReduceOp::Sum(attrs(Some(vec![0]), false)), &[&xi], 1)[0],
            Tensor::scalar(-106i8)
        );
    }

    #[test]
    fn argmax_last_index() {
        let x = t(&[2, 3], vec![2.0f32, 5.0, 5.0, 1.0, 1.0, 0.0]);
        let op = |last, max| {
            let a = ArgAttrs {
                axis: 1,
                keepdims: true,
                select_last_index: last,
            };
            if max {
                ReduceOp::ArgMax(a)
            } else {
                ReduceOp::ArgMin(a)
            }
        };
        assert_eq!(run(op(false, true), &[&x], 1)[0], t(&[2, 1], vec![1i64, 0]));
        assert_eq!(run(op(true, true), &[&x], 1)[0], t(&[2, 1], vec![2i64, 1]));
        assert_eq!(run(op(true, false), &[&x], 1)[0], t(&[2, 1], vec![0i64, 2]));
    }

    #[test]
    fn softmax_axis_and_coerce() {
        let x = t(&[1, 2, 2], vec![1.0f32, 2.0, 3.0, 4.0]);
        let out = run(
            ReduceOp::Softmax(SoftmaxAttrs {
                axis: 1,
                coerce_2d: false,
            }),
            &[&x],
            1,
        );
        close(&out[0], &[0.11920292, 0.11920292, 0.88079708, 0.88079708]);
        // Flattened over axes 1 and 2: numpy softmax([1, 2, 3, 4]).
        let out = run(
            ReduceOp::Softmax(SoftmaxAttrs {
                axis: 1,
                coerce_2d: true,
            }),
            &[&x],
            1,
        );
        close(&out[0], &[0.0320586, 0.08714432, 0.23688282, 0.64391426]);
        let out = run(
            ReduceOp::LogSoftmax(SoftmaxAttrs {
                axis: 2,
                coerce_2d: false,
            }),
            &[&x],
            1,
        );
        close(
            &out[0],
            &[-1.31326169, -0.31326169, -1.31326169, -0.31326169],
        );
        let out = run(
            ReduceOp::Hardmax(SoftmaxAttrs {
                axis: 1,
                coerce_2d: true,
            }),
            &[&x],
            1,
        );
        close(&out[0], &[0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn cumsum_variants() {
        let x = t(&[5], vec![1.0f64, 2.0, 3.0, 4.0, 5.0]);
        let axis = Tensor::scalar(0i32);
        let op = |exclusive, reverse| {
            ReduceOp::CumSum(CumAttrs {
                axis: None,
                exclusive,
                reverse,
            })
        };
        close(
            &run(op(false, false), &[&x, &axis], 1)[0],
            &[1.0, 3.0, 6.0, 10.0, 15.0],
        );
        close(
            &run(op(true, false), &[&x, &axis], 1)[0],
            &[0.0, 1.0, 3.0, 6.0, 10.0],
        );
        close(
            &run(op(false, true), &[&x, &axis], 1)[0],
            &[15.0, 14.0, 12.0, 9.0, 5.0],
        );
        close(
            &run(op(true, true), &[&x, &axis], 1)[0],
            &[14.0, 12.0, 9.0, 5.0, 0.0],
        );
        let x = t(&[2, 3], vec![1i32, 2, 3, 4, 5, 6]);
        let out = run(
            ReduceOp::CumProd(CumAttrs {
                axis: Some(0),
                exclusive: false,
                reverse: false,
            }),
            &[&x],
            1,
        );
        assert_eq!(out[0], t(&[2, 3], vec![1i32, 2, 3, 4, 10, 18]));
    }

    #[test]
    fn top_k_ties_by_index() {
        let x = t(&[2, 4], vec![0i64, 1, 1, 0, 3, 3, 2, 3]);
        let k = t(&[1], vec![3i64]);
        let out = run(
            ReduceOp::TopK {
                axis: 1,
                k: None,
                largest: true,
                sorted: true,
            },
            &[&x, &k],
            2,
        );
        assert_eq!(out[0], t(&[2, 3], vec![1i64, 1, 0, 3, 3, 3]));
        assert_eq!(out[1], t(&[2, 3], vec![1i64, 2, 0, 0, 1, 3]));
        let out = run(
            ReduceOp::TopK {
                axis: 0,
                k: Some(1),
                largest: false,
                sorted: true,
            },
            &[&x],
            2,
        );
        assert_eq!(out[1], t(&[1, 4], vec![0i64, 0, 0, 0]));
    }

    #[test]
    fn losses() {
        // torch.nn.functional.cross_entropy(x, y, weight=w, ignore_index=1) = 1.14293...
        let x = t(
            &[3, 3],
            vec![0.1f32, 0.2, 0.3, 1.0, -1.0, 0.5, 2.0, 0.0, -2.0],
        );
        let y = t(&[3], vec![2i64, 1, 0]);
        let w = t(&[3], vec![1.0f32, 2.0, 0.5]);
        let op = ReduceOp::SoftmaxCrossEntropy {
            reduction: LossReduction::Mean,
            ignore_index: Some(1),
        };
        let out = run(op, &[&x, &y, &w], 2);
        // -(0.5*log_softmax(x0)[2] + 1.0*log_softmax(x2)[0]) / 1.5
        let lp0 = 0.3 - (0.1f64.exp() + 0.2f64.exp() + 0.3f64.exp()).ln();
        let lp2 = 2.0 - (2f64.exp() + 1.0 + (-2f64).exp()).ln();
        close(&out[0], &[-(0.5 * lp0 + lp2) / 1.5]);
        assert_eq!(out[1].shape(), &[3, 3]);
        let op = ReduceOp::NllLoss {
            reduction: LossReduction::None,
            ignore_index: None,
        };
        close(&run(op, &[&x, &y], 1)[0], &[-0.3, 1.0, -2.0]);
    }
}
