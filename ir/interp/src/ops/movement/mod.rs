//! Kernels of the movement family: reshapes, transposes, slices, pads and the other ops that
//! only move data.
//!
//! Most kernels work in two steps: compute, without looking at the element type, which input
//! element each output element comes from (a flat "take map"), then copy elements through that
//! map for whatever type the tensor holds. So every kernel handles every dtype, strings
//! included, with one generic copy loop (`take`). Indexing ops (gather/scatter, unique, ...)
//! live in `index.rs`.

mod index;
#[cfg(test)]
mod tests;

use crate::{EvalCx, EvalError, invalid};
use mlc_ir::ops::MovementOp;
use mlc_ir::ops::movement::{DepthToSpaceMode, PadMode, slice_range, split_sizes};
use mlc_ir::{Elem, Tensor, dispatch_all};
use ndarray::{ArrayD, Axis, IxDyn};

pub fn eval(
    op: &MovementOp,
    inputs: &[Option<&Tensor>],
    cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    use MovementOp as M;
    let x = || req(inputs, 0);
    let out = match op {
        M::Identity => x()?.clone(),
        M::Reshape { shape, allowzero } => {
            let x = x()?;
            let target = ints(shape.as_deref(), inputs, 1)?
                .ok_or_else(|| invalid("reshape needs a target shape"))?;
            let dims = reshape_dims(x.shape(), &target, *allowzero)?;
            reshape(x, &dims)?
        }
        M::Flatten { axis } => {
            let x = x()?;
            let s = x.shape();
            if *axis > s.len() {
                return Err(invalid(format!("flatten axis {axis} of rank {}", s.len())));
            }
            let dims = [s[..*axis].iter().product(), s[*axis..].iter().product()];
            reshape(x, &dims)?
        }
        M::Transpose { perm } => {
            let x = x()?;
            if perm.len() != x.rank() {
                return Err(invalid(format!("perm {perm:?} for rank {}", x.rank())));
            }
            let (shape, map) = permute_map(x.shape(), perm);
            take_all(x, &shape, &map)
        }
        M::Concat { axis } => {
            let all: Vec<&Tensor> = (0..inputs.len())
                .map(|i| req(inputs, i))
                .collect::<Result<_, _>>()?;
            dispatch_all!(all[0], a => concat(a, &all, *axis))?
        }
        M::Split { axis, sizes } => {
            return split(
                x()?,
                *axis,
                sizes.as_deref(),
                opt(inputs, 1),
                cx.n_outputs(),
            );
        }
        M::Slice {
            starts,
            ends,
            axes,
            steps,
        } => {
            let x = x()?;
            let starts =
                ints(starts.as_deref(), inputs, 1)?.ok_or_else(|| invalid("slice needs starts"))?;
            let ends =
                ints(ends.as_deref(), inputs, 2)?.ok_or_else(|| invalid("slice needs ends"))?;
            let axes = ints(axes.as_deref(), inputs, 3)?
                .unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = ints(steps.as_deref(), inputs, 4)?.unwrap_or_else(|| vec![1; axes.len()]);
            slice(x, &starts, &ends, &axes, &steps)?
        }
        M::Squeeze { axes } => {
            let x = x()?;
            let s = x.shape();
            let axes = match usize_ints(axes.as_deref(), inputs, 1)? {
                Some(a) => norm_axes(&a, s.len())?,
                None => (0..s.len()).filter(|&i| s[i] == 1).collect(),
            };
            if let Some(&a) = axes.iter().find(|&&a| s[a] != 1) {
                return Err(invalid(format!("squeeze of axis {a} of shape {s:?}")));
            }
            let dims: Vec<usize> = (0..s.len())
                .filter(|i| !axes.contains(i))
                .map(|i| s[i])
                .collect();
            reshape(x, &dims)?
        }
        M::Unsqueeze { axes } => {
            let x = x()?;
            let a = usize_ints(axes.as_deref(), inputs, 1)?
                .ok_or_else(|| invalid("unsqueeze needs axes"))?;
            let out_rank = x.rank() + a.len();
            let a = norm_axes(&a, out_rank)?;
            let mut src = x.shape().iter();
            let dims: Vec<usize> = (0..out_rank)
                .map(|i| {
                    if a.contains(&i) {
                        1
                    } else {
                        src.next().copied().unwrap_or(1)
                    }
                })
                .collect();
            if src.next().is_some() {
                return Err(invalid(format!("unsqueeze axes {a:?} repeat")));
            }
            reshape(x, &dims)?
        }
        M::Expand { shape } => {
            let x = x()?;
            let target = usize_ints(shape.as_deref(), inputs, 1)?
                .ok_or_else(|| invalid("expand needs a shape"))?;
            expand(x, &target)?
        }
        M::Gather { axis } => index::gather(x()?, req(inputs, 1)?, *axis)?,
        M::GatherElements { axis } => index::gather_elements(x()?, req(inputs, 1)?, *axis)?,
        M::GatherNd { batch_dims } => index::gather_nd(x()?, req(inputs, 1)?, *batch_dims)?,
        M::ScatterElements { axis, reduction } => {
            index::scatter_elements(x()?, req(inputs, 1)?, req(inputs, 2)?, *axis, *reduction)?
        }
        M::ScatterNd { reduction } => {
            index::scatter_nd(x()?, req(inputs, 1)?, req(inputs, 2)?, *reduction)?
        }
        M::Shape { start, end } => {
            let s = x()?.shape();
            let v: Vec<i64> = s
                .get(*start..*end)
                .ok_or_else(|| invalid("shape slice out of range"))?
                .iter()
                .map(|&d| d as i64)
                .collect();
            Tensor::from_vec(&[v.len()], v)?
        }
        M::Size => Tensor::scalar(x()?.len() as i64),
        M::Range => range(x()?, req(inputs, 1)?, req(inputs, 2)?)?,
        M::ConstantOfShape {
            shape,
            dtype,
            value,
        } => {
            let dims = match shape {
                Some(s) => s.clone(),
                None => usize_ints(None, inputs, 0)?
                    .ok_or_else(|| invalid("constant_of_shape needs a shape"))?
                    .into_iter()
                    .map(|d| usize::try_from(d).map_err(|_| invalid(format!("negative dim {d}"))))
                    .collect::<Result<_, _>>()?,
            };
            let v = value.to_tensor(*dtype)?;
            dispatch_all!(&v, a => fill(a, &dims))
        }
        M::Tile { repeats } => {
            let x = x()?;
            let reps = usize_ints(repeats.as_deref(), inputs, 1)?
                .ok_or_else(|| invalid("tile needs repeats"))?;
            if reps.len() != x.rank() || reps.iter().any(|&r| r < 0) {
                return Err(invalid(format!(
                    "tile repeats {reps:?} for shape {:?}",
                    x.shape()
                )));
            }
            let per_axis: Vec<Vec<Option<usize>>> = x
                .shape()
                .iter()
                .zip(&reps)
                .map(|(&n, &r)| (0..n * r as usize).map(|j| Some(j % n)).collect())
                .collect();
            axis_take(x, &per_axis, None)?
        }
        M::Pad { mode, pads, axes } => pad(x()?, *mode, pads.as_deref(), axes.as_deref(), inputs)?,
        M::DepthToSpace { blocksize, mode } => depth_to_space(x()?, *blocksize, *mode)?,
        M::SpaceToDepth { blocksize, mode } => space_to_depth(x()?, *blocksize, *mode)?,
        M::Trilu { upper, k } => {
            let x = x()?;
            let k = match (k, opt(inputs, 1)) {
                (Some(k), _) => *k,
                (None, Some(t)) => *t
                    .to_i64_vec()?
                    .first()
                    .ok_or_else(|| invalid("trilu k is empty"))?,
                (None, None) => 0,
            };
            trilu(x, *upper, k)?
        }
        M::OneHot { axis, depth } => {
            let depth = match depth {
                Some(d) => *d as i64,
                None => {
                    let d = req(inputs, 1)?.to_f64_vec()?;
                    *d.first().ok_or_else(|| invalid("one_hot depth is empty"))? as i64
                }
            };
            index::one_hot(x()?, depth, req(inputs, 2)?, *axis)?
        }
        M::NonZero => index::nonzero(x()?)?,
        M::Compress { axis } => index::compress(x()?, req(inputs, 1)?, *axis)?,
        M::ReverseSequence {
            batch_axis,
            time_axis,
        } => index::reverse_sequence(x()?, req(inputs, 1)?, *batch_axis, *time_axis)?,
        M::EyeLike { dtype, k } => {
            let s = x()?.shape();
            if s.len() != 2 {
                return Err(invalid(format!("eye_like of shape {s:?}")));
            }
            let (h, w) = (s[0], s[1]);
            let v: Vec<f64> = (0..h * w)
                .map(|f| f64::from(u8::from((f % w) as i64 - (f / w) as i64 == *k)))
                .collect();
            Tensor::from_vec(&[h, w], v)?.cast(*dtype)?
        }
        M::Unique { axis, sorted } => {
            let mut outs = index::unique(x()?, *axis, *sorted)?;
            outs.truncate(cx.n_outputs().clamp(1, 4));
            return Ok(outs);
        }
        M::CenterCropPad { shape, axes } => {
            let x = x()?;
            let target = usize_ints(shape.as_deref(), inputs, 1)?
                .ok_or_else(|| invalid("center_crop_pad needs a shape"))?;
            center_crop_pad(x, &target, axes)?
        }
        M::TensorScatter { axis, circular } => {
            index::tensor_scatter(x()?, req(inputs, 1)?, opt(inputs, 2), *axis, *circular)?
        }
    };
    Ok(vec![out])
}

/// A required input.
fn req<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, EvalError> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| invalid(format!("input {i} is required")))
}

/// An optional input.
fn opt<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

/// A shape-like operand: the attribute when set, else input `i` when present.
fn ints(
    attr: Option<&[i64]>,
    inputs: &[Option<&Tensor>],
    i: usize,
) -> Result<Option<Vec<i64>>, EvalError> {
    match (attr, opt(inputs, i)) {
        (Some(a), _) => Ok(Some(a.to_vec())),
        (None, Some(t)) => Ok(Some(t.to_i64_vec()?)),
        (None, None) => Ok(None),
    }
}

/// Like `ints` for attributes held as `usize`.
fn usize_ints(
    attr: Option<&[usize]>,
    inputs: &[Option<&Tensor>],
    i: usize,
) -> Result<Option<Vec<i64>>, EvalError> {
    let attr: Option<Vec<i64>> = attr.map(|a| a.iter().map(|&v| v as i64).collect());
    ints(attr.as_deref(), inputs, i)
}

fn norm_axis(axis: i64, rank: usize) -> Result<usize, EvalError> {
    mlc_ir::ops::norm_axis(axis, rank).map_err(|e| invalid(e.to_string()))
}

fn norm_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, EvalError> {
    axes.iter().map(|&a| norm_axis(a, rank)).collect()
}

/// Row-major strides of `shape`, in elements.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Calls `f` with every multi-index of `shape` in row-major order.
fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut idx = vec![0; shape.len()];
    loop {
        f(&idx);
        let mut k = shape.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

/// The elements of `a` in row-major order, borrowed when `a` already is row-major.
fn flat<T: Elem>(a: &ArrayD<T>) -> ndarray::CowArray<'_, T, IxDyn> {
    a.as_standard_layout()
}

/// Builds an output of `shape` whose element `i` is input element `map[i]` (row-major flat
/// index), or `fill` (the type's zero when `None`) where `map[i]` is `None`.
fn take(
    t: &Tensor,
    shape: &[usize],
    map: &[Option<usize>],
    fill: Option<&Tensor>,
) -> Result<Tensor, EvalError> {
    fn go<T: Elem>(
        a: &ArrayD<T>,
        shape: &[usize],
        map: &[Option<usize>],
        fill: Option<&Tensor>,
    ) -> Result<Tensor, EvalError> {
        let fill: T = match fill {
            Some(f) => f
                .view::<T>()?
                .iter()
                .next()
                .cloned()
                .ok_or_else(|| invalid("fill value is empty"))?,
            None => T::default(),
        };
        let src = flat(a);
        let s = src.as_slice().expect("standard layout is contiguous");
        let v: Vec<T> = map
            .iter()
            .map(|m| m.map_or_else(|| fill.clone(), |i| s[i].clone()))
            .collect();
        Ok(Tensor::from_vec(shape, v)?)
    }
    dispatch_all!(t, a => go(a, shape, map, fill))
}

/// `take` where every output element comes from the input.
fn take_all(t: &Tensor, shape: &[usize], map: &[usize]) -> Tensor {
    fn go<T: Elem>(a: &ArrayD<T>, shape: &[usize], map: &[usize]) -> Tensor {
        let src = flat(a);
        let s = src.as_slice().expect("standard layout is contiguous");
        let v: Vec<T> = map.iter().map(|&i| s[i].clone()).collect();
        T::wrap(ArrayD::from_shape_vec(IxDyn(shape), v).expect("one map entry per output element"))
    }
    dispatch_all!(t, a => go(a, shape, map))
}

/// A take map that picks, along every axis independently, the input positions listed for that
/// axis (`None` = fill): the output has shape `per_axis[k].len()` along axis `k`.
fn axis_map(in_shape: &[usize], per_axis: &[Vec<Option<usize>>]) -> Vec<Option<usize>> {
    let st = strides(in_shape);
    let mut cur = vec![Some(0usize)];
    for (k, pos) in per_axis.iter().enumerate() {
        let mut next = Vec::with_capacity(cur.len() * pos.len());
        for &base in &cur {
            for &p in pos {
                next.push(base.zip(p).map(|(b, p)| b + p * st[k]));
            }
        }
        cur = next;
    }
    cur
}

/// `take` with an `axis_map`.
fn axis_take(
    t: &Tensor,
    per_axis: &[Vec<Option<usize>>],
    fill: Option<&Tensor>,
) -> Result<Tensor, EvalError> {
    let shape: Vec<usize> = per_axis.iter().map(Vec::len).collect();
    take(t, &shape, &axis_map(t.shape(), per_axis), fill)
}

/// The output shape and take map of transposing `shape` by `perm`.
fn permute_map(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let st = strides(shape);
    let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let pst: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let mut map = Vec::with_capacity(out.iter().product());
    for_each_index(&out, |idx| {
        map.push(idx.iter().zip(&pst).map(|(i, s)| i * s).sum())
    });
    (out, map)
}

/// The same elements in row-major order under a new shape of equal size.
fn reshape(t: &Tensor, dims: &[usize]) -> Result<Tensor, EvalError> {
    if dims.iter().product::<usize>() != t.len() {
        return Err(invalid(format!(
            "cannot reshape {:?} to {dims:?}",
            t.shape()
        )));
    }
    fn go<T: Elem>(a: &ArrayD<T>, dims: &[usize]) -> Tensor {
        let owned = flat(a).into_owned();
        T::wrap(
            owned
                .into_shape_with_order(IxDyn(dims))
                .expect("sizes were checked"),
        )
    }
    Ok(dispatch_all!(t, a => go(a, dims)))
}

/// Resolves a reshape target (`0` = copy, `-1` = infer) against the input shape.
fn reshape_dims(input: &[usize], target: &[i64], allowzero: bool) -> Result<Vec<usize>, EvalError> {
    let mut dims = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        dims.push(match t {
            0 if !allowzero => *input
                .get(i)
                .ok_or_else(|| invalid(format!("reshape copies dim {i} of shape {input:?}")))?,
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            t if t >= 0 => t as usize,
            t => return Err(invalid(format!("bad reshape target dim {t}"))),
        });
    }
    let total: usize = input.iter().product();
    if let Some(i) = infer {
        let rest: usize = dims.iter().product();
        if rest == 0 || !total.is_multiple_of(rest) {
            return Err(invalid(format!("cannot reshape {input:?} to {target:?}")));
        }
        dims[i] = total / rest;
    }
    Ok(dims)
}

fn concat<T: Elem>(_first: &ArrayD<T>, all: &[&Tensor], axis: usize) -> Result<Tensor, EvalError> {
    let views: Vec<_> = all
        .iter()
        .map(|t| t.view::<T>().map(ArrayD::view))
        .collect::<Result<_, _>>()?;
    let out =
        ndarray::concatenate(Axis(axis), &views).map_err(|e| invalid(format!("concat: {e}")))?;
    Ok(T::wrap(out))
}

fn split(
    x: &Tensor,
    axis: usize,
    sizes: Option<&[usize]>,
    sizes_in: Option<&Tensor>,
    n: usize,
) -> Result<Vec<Tensor>, EvalError> {
    let d = *x
        .shape()
        .get(axis)
        .ok_or_else(|| invalid(format!("split axis {axis} of shape {:?}", x.shape())))?;
    let sizes: Vec<usize> = match (sizes, sizes_in) {
        (Some(s), _) => s.to_vec(),
        (None, Some(t)) => t
            .to_i64_vec()?
            .into_iter()
            .map(|v| usize::try_from(v).map_err(|_| invalid(format!("negative split size {v}"))))
            .collect::<Result<_, _>>()?,
        (None, None) => split_sizes(d, n),
    };
    if sizes.len() != n || sizes.iter().sum::<usize>() != d {
        return Err(invalid(format!(
            "split sizes {sizes:?} for dim {d} into {n} outputs"
        )));
    }
    let mut pos = 0;
    let mut outs = Vec::with_capacity(n);
    for s in sizes {
        let r = pos..pos + s;
        outs.push(dispatch_all!(x, a => T_wrap(a.slice_axis(Axis(axis), ndarray::Slice::from(r.clone())).to_owned())));
        pos += s;
    }
    Ok(outs)
}

/// `Elem::wrap` with the element type inferred from the argument (inside `dispatch_all!` the
/// type has no name).
#[allow(non_snake_case)]
fn T_wrap<T: Elem>(a: ArrayD<T>) -> Tensor {
    T::wrap(a)
}

fn slice(
    x: &Tensor,
    starts: &[i64],
    ends: &[i64],
    axes: &[i64],
    steps: &[i64],
) -> Result<Tensor, EvalError> {
    let s = x.shape();
    if starts.len() != axes.len() || ends.len() != axes.len() || steps.len() != axes.len() {
        return Err(invalid("slice starts/ends/axes/steps differ in length"));
    }
    let mut per_axis: Vec<Vec<Option<usize>>> =
        s.iter().map(|&n| (0..n).map(Some).collect()).collect();
    for i in 0..axes.len() {
        let a = norm_axis(axes[i], s.len())?;
        if steps[i] == 0 {
            return Err(invalid("slice step 0"));
        }
        let (start, len) = slice_range(s[a] as i64, starts[i], ends[i], steps[i]);
        per_axis[a] = (0..len)
            .map(|k| Some((start + k * steps[i]) as usize))
            .collect();
    }
    axis_take(x, &per_axis, None)
}

fn expand(x: &Tensor, target: &[i64]) -> Result<Tensor, EvalError> {
    let rank = x.rank().max(target.len());
    let pad = |v: &[usize]| -> Vec<usize> {
        std::iter::repeat_n(1, rank - v.len())
            .chain(v.iter().copied())
            .collect()
    };
    let target: Vec<usize> = target
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| invalid(format!("negative expand dim {d}"))))
        .collect::<Result<_, _>>()?;
    let (xs, ts) = (pad(x.shape()), pad(&target));
    let mut per_axis = Vec::with_capacity(rank);
    for (&n, &t) in xs.iter().zip(&ts) {
        let out = if n == 1 { t } else { n };
        if t != 1 && t != n && n != 1 {
            return Err(invalid(format!(
                "cannot expand {:?} to {target:?}",
                x.shape()
            )));
        }
        per_axis.push(
            (0..out)
                .map(|j| Some(if n == 1 { 0 } else { j }))
                .collect::<Vec<_>>(),
        );
    }
    let shape: Vec<usize> = per_axis.iter().map(Vec::len).collect();
    take(x, &shape, &axis_map(&xs, &per_axis), None)
}

fn fill<T: Elem>(v: &ArrayD<T>, dims: &[usize]) -> Tensor {
    let e = v.iter().next().cloned().unwrap_or_default();
    T::wrap(ArrayD::from_elem(IxDyn(dims), e))
}

fn range(start: &Tensor, limit: &Tensor, delta: &Tensor) -> Result<Tensor, EvalError> {
    let dtype = start.dtype();
    let first = |t: &Tensor| -> Result<f64, EvalError> {
        t.to_f64_vec()?
            .first()
            .copied()
            .ok_or_else(|| invalid("range operand is empty"))
    };
    if dtype.is_int() {
        let one = |t: &Tensor| -> Result<i64, EvalError> {
            t.to_i64_vec()?
                .first()
                .copied()
                .ok_or_else(|| invalid("range operand is empty"))
        };
        let (s, l, d) = (one(start)?, one(limit)?, one(delta)?);
        if d == 0 {
            return Err(invalid("range delta 0"));
        }
        let n = ((l - s + d - d.signum()) / d).max(0) as usize;
        let v: Vec<i64> = (0..n as i64).map(|i| s + i * d).collect();
        return Ok(Tensor::from_vec(&[n], v)?.cast(dtype)?);
    }
    let (s, l, d) = (first(start)?, first(limit)?, first(delta)?);
    if d == 0.0 || !d.is_finite() {
        return Err(invalid(format!("range delta {d}")));
    }
    let n = ((l - s) / d).ceil().max(0.0) as usize;
    // numpy's arange steps by the delta as rounded through the first step, computed in f64.
    let step = (s + d) - s;
    let v: Vec<f64> = (0..n).map(|i| s + i as f64 * step).collect();
    Ok(Tensor::from_vec(&[n], v)?.cast(dtype)?)
}

/// Where output position `o` along an axis of length `n` padded by `begin` reads from.
fn pad_source(o: usize, n: usize, begin: i64, mode: PadMode) -> Option<usize> {
    let i = o as i64 - begin;
    let n = n as i64;
    if (0..n).contains(&i) {
        return Some(i as usize);
    }
    let j = match mode {
        PadMode::Constant => return None,
        PadMode::Edge => i.clamp(0, n - 1),
        PadMode::Wrap => i.rem_euclid(n),
        PadMode::Reflect if n == 1 => 0,
        PadMode::Reflect => {
            let period = 2 * (n - 1);
            let m = i.rem_euclid(period);
            if m >= n { period - m } else { m }
        }
    };
    Some(j as usize)
}

fn pad(
    x: &Tensor,
    mode: PadMode,
    pads: Option<&[i64]>,
    axes: Option<&[usize]>,
    inputs: &[Option<&Tensor>],
) -> Result<Tensor, EvalError> {
    let s = x.shape();
    let pads = ints(pads, inputs, 1)?.ok_or_else(|| invalid("pad needs pads"))?;
    let axes: Vec<usize> = match (axes, opt(inputs, 3)) {
        (Some(a), _) => a.to_vec(),
        (None, Some(t)) => norm_axes(&t.to_i64_vec()?, s.len())?,
        (None, None) => (0..s.len()).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(invalid(format!(
            "{} pads for {} axes",
            pads.len(),
            axes.len()
        )));
    }
    let mut begin = vec![0i64; s.len()];
    let mut end = vec![0i64; s.len()];
    for (i, &a) in axes.iter().enumerate() {
        begin[a] = pads[i];
        end[a] = pads[axes.len() + i];
    }
    let mut per_axis = Vec::with_capacity(s.len());
    for (k, &n) in s.iter().enumerate() {
        let len = n as i64 + begin[k] + end[k];
        if len < 0 {
            return Err(invalid(format!(
                "pads {pads:?} crop axis {k} of shape {s:?} below zero"
            )));
        }
        if n == 0 && len > 0 && mode != PadMode::Constant {
            return Err(invalid(format!("cannot {mode:?}-pad an empty axis")));
        }
        per_axis.push(
            (0..len as usize)
                .map(|o| pad_source(o, n, begin[k], mode))
                .collect::<Vec<_>>(),
        );
    }
    let value = opt(inputs, 2).filter(|v| !v.is_empty());
    if let Some(v) = value
        && v.dtype() != x.dtype()
    {
        return Err(invalid(format!(
            "pad value is {}, data is {}",
            v.dtype(),
            x.dtype()
        )));
    }
    axis_take(x, &per_axis, value)
}

fn depth_to_space(x: &Tensor, b: usize, mode: DepthToSpaceMode) -> Result<Tensor, EvalError> {
    let [n, c, h, w] = *x.shape() else {
        return Err(invalid(format!("depth_to_space of shape {:?}", x.shape())));
    };
    if b == 0 || c % (b * b) != 0 {
        return Err(invalid(format!(
            "{c} channels do not divide into {b}x{b} blocks"
        )));
    }
    let c2 = c / (b * b);
    let (shape6, perm) = match mode {
        DepthToSpaceMode::Dcr => ([n, b, b, c2, h, w], [0, 3, 4, 1, 5, 2]),
        DepthToSpaceMode::Crd => ([n, c2, b, b, h, w], [0, 1, 4, 2, 5, 3]),
    };
    let (_, map) = permute_map(&shape6, &perm);
    Ok(take_all(x, &[n, c2, h * b, w * b], &map))
}

fn space_to_depth(x: &Tensor, b: usize, mode: DepthToSpaceMode) -> Result<Tensor, EvalError> {
    let [n, c, h, w] = *x.shape() else {
        return Err(invalid(format!("space_to_depth of shape {:?}", x.shape())));
    };
    if b == 0 || h % b != 0 || w % b != 0 {
        return Err(invalid(format!(
            "{h}x{w} does not divide into {b}x{b} blocks"
        )));
    }
    let perm = match mode {
        DepthToSpaceMode::Dcr => [0, 3, 5, 1, 2, 4],
        DepthToSpaceMode::Crd => [0, 1, 3, 5, 2, 4],
    };
    let (_, map) = permute_map(&[n, c, h / b, b, w / b, b], &perm);
    Ok(take_all(x, &[n, c * b * b, h / b, w / b], &map))
}

fn trilu(x: &Tensor, upper: bool, k: i64) -> Result<Tensor, EvalError> {
    let s = x.shape();
    if s.len() < 2 {
        return Err(invalid(format!("trilu of shape {s:?}")));
    }
    let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
    let map: Vec<Option<usize>> = (0..x.len())
        .map(|f| {
            let (i, j) = (((f / w.max(1)) % h.max(1)) as i64, (f % w.max(1)) as i64);
            let keep = if upper { j - i >= k } else { j - i <= k };
            keep.then_some(f)
        })
        .collect();
    take(x, s, &map, None)
}

fn center_crop_pad(x: &Tensor, target: &[i64], axes: &[usize]) -> Result<Tensor, EvalError> {
    let s = x.shape();
    if target.len() != axes.len() {
        return Err(invalid(format!(
            "center_crop_pad: {} sizes for {} axes",
            target.len(),
            axes.len()
        )));
    }
    let mut per_axis: Vec<Vec<Option<usize>>> =
        s.iter().map(|&n| (0..n).map(Some).collect()).collect();
    for (&a, &t) in axes.iter().zip(target) {
        let dim = *s
            .get(a)
            .ok_or_else(|| invalid(format!("axis {a} of shape {s:?}")))?;
        let t = usize::try_from(t).map_err(|_| invalid(format!("negative size {t}")))?;
        per_axis[a] = if t <= dim {
            let off = (dim - t) / 2;
            (0..t).map(|o| Some(o + off)).collect()
        } else {
            let off = (t - dim) / 2;
            (0..t)
                .map(|o| o.checked_sub(off).filter(|&i| i < dim))
                .collect()
        };
    }
    axis_take(x, &per_axis, None)
}
