//! Indexing kernels of the movement family: gathers, scatters, one-hot, non-zero, compress,
//! reverse-sequence, unique and the KV-cache scatter.
//!
//! Gathers build a take map (see `mod.rs`); scatters build a list of `(output, update)` flat
//! index pairs and apply it in order, so that duplicate indices behave as in the ONNX reference
//! (later updates win, or combine under a reduction).

use super::{axis_take, flat, for_each_index, strides, take, take_all};
use crate::{EvalError, invalid};
use mlc_ir::ops::movement::ScatterReduction;
use mlc_ir::{Elem, NumElem, Tensor, dispatch_all, dispatch_num};
use ndarray::ArrayD;
use std::cmp::Ordering;

/// Normalizes index `i` into `0..n` (negative indices count from the end).
fn norm_index(i: i64, n: usize) -> Result<usize, EvalError> {
    let j = if i < 0 { i + n as i64 } else { i };
    if j < 0 || j >= n as i64 {
        return Err(invalid(format!("index {i} out of range for a dim of {n}")));
    }
    Ok(j as usize)
}

pub(super) fn gather(x: &Tensor, idx: &Tensor, axis: usize) -> Result<Tensor, EvalError> {
    let s = x.shape();
    let d = *s
        .get(axis)
        .ok_or_else(|| invalid(format!("gather axis {axis} of shape {s:?}")))?;
    let ids: Vec<usize> = idx
        .to_i64_vec()?
        .into_iter()
        .map(|i| norm_index(i, d))
        .collect::<Result<_, _>>()?;
    let outer: usize = s[..axis].iter().product();
    let inner: usize = s[axis + 1..].iter().product();
    let mut shape = s[..axis].to_vec();
    shape.extend_from_slice(idx.shape());
    shape.extend_from_slice(&s[axis + 1..]);
    let mut map = Vec::with_capacity(outer * ids.len() * inner);
    for o in 0..outer {
        for &j in &ids {
            map.extend((0..inner).map(|r| (o * d + j) * inner + r));
        }
    }
    Ok(take_all(x, &shape, &map))
}

pub(super) fn gather_elements(x: &Tensor, idx: &Tensor, axis: usize) -> Result<Tensor, EvalError> {
    let s = x.shape();
    let is = idx.shape();
    if is.len() != s.len()
        || axis >= s.len()
        || is
            .iter()
            .zip(s)
            .enumerate()
            .any(|(k, (i, d))| k != axis && i > d)
    {
        return Err(invalid(format!(
            "gather_elements of {s:?} by {is:?} on axis {axis}"
        )));
    }
    let ids = idx.to_i64_vec()?;
    let st = strides(s);
    let mut map = Vec::with_capacity(ids.len());
    let mut err = None;
    let mut n = 0;
    for_each_index(is, |m| {
        let j = match norm_index(ids[n], s[axis]) {
            Ok(j) => j,
            Err(e) => {
                err.get_or_insert(e);
                0
            }
        };
        n += 1;
        map.push(
            m.iter()
                .enumerate()
                .map(|(k, &i)| if k == axis { j } else { i } * st[k])
                .sum(),
        );
    });
    if let Some(e) = err {
        return Err(e);
    }
    Ok(take_all(x, is, &map))
}

pub(super) fn gather_nd(x: &Tensor, idx: &Tensor, b: usize) -> Result<Tensor, EvalError> {
    let xs = x.shape();
    let is = idx.shape();
    let q = is.len();
    let bad = || invalid(format!("gather_nd of {xs:?} by {is:?} with {b} batch dims"));
    if q == 0 || b >= q || xs.get(..b) != is.get(..b) {
        return Err(bad());
    }
    let k = is[q - 1];
    if b + k > xs.len() {
        return Err(bad());
    }
    let ids = idx.to_i64_vec()?;
    let batch: usize = is[..b].iter().product();
    let tuples: usize = is[b..q - 1].iter().product();
    let inner: usize = xs[b + k..].iter().product();
    let batch_stride: usize = xs[b..].iter().product();
    let st = strides(xs);
    let mut map = Vec::with_capacity(batch * tuples * inner);
    for bi in 0..batch {
        for t in 0..tuples {
            let tuple = &ids[(bi * tuples + t) * k..][..k];
            let mut base = bi * batch_stride;
            for (j, &i) in tuple.iter().enumerate() {
                base += norm_index(i, xs[b + j])? * st[b + j];
            }
            map.extend(base..base + inner);
        }
    }
    let mut shape = is[..q - 1].to_vec();
    shape.extend_from_slice(&xs[b + k..]);
    Ok(take_all(x, &shape, &map))
}

pub(super) fn scatter_elements(
    data: &Tensor,
    idx: &Tensor,
    upd: &Tensor,
    axis: usize,
    red: ScatterReduction,
) -> Result<Tensor, EvalError> {
    let s = data.shape();
    let is = idx.shape();
    if is != upd.shape()
        || is.len() != s.len()
        || axis >= s.len()
        || is
            .iter()
            .zip(s)
            .enumerate()
            .any(|(k, (i, d))| k != axis && i > d)
    {
        return Err(invalid(format!(
            "scatter_elements of {:?} into {s:?} by {is:?}",
            upd.shape()
        )));
    }
    let ids = idx.to_i64_vec()?;
    let st = strides(s);
    let mut pairs = Vec::with_capacity(ids.len());
    let mut err = None;
    for_each_index(is, |m| {
        let n = pairs.len();
        let j = norm_index(ids[n], s[axis]).unwrap_or_else(|e| {
            err.get_or_insert(e);
            0
        });
        let o = m
            .iter()
            .enumerate()
            .map(|(k, &i)| if k == axis { j } else { i } * st[k])
            .sum();
        pairs.push((o, n));
    });
    if let Some(e) = err {
        return Err(e);
    }
    scatter(data, upd, &pairs, red)
}

pub(super) fn scatter_nd(
    data: &Tensor,
    idx: &Tensor,
    upd: &Tensor,
    red: ScatterReduction,
) -> Result<Tensor, EvalError> {
    let ds = data.shape();
    let is = idx.shape();
    let q = is.len();
    let k = *is
        .last()
        .ok_or_else(|| invalid("scatter_nd indices must have rank >= 1"))?;
    if k > ds.len() {
        return Err(invalid(format!(
            "scatter_nd index depth {k} for shape {ds:?}"
        )));
    }
    let mut want = is[..q - 1].to_vec();
    want.extend_from_slice(&ds[k..]);
    if upd.shape() != want.as_slice() {
        return Err(invalid(format!(
            "scatter_nd updates {:?}, expected {want:?}",
            upd.shape()
        )));
    }
    let ids = idx.to_i64_vec()?;
    let st = strides(ds);
    let inner: usize = ds[k..].iter().product();
    let n: usize = is[..q - 1].iter().product();
    let mut pairs = Vec::with_capacity(n * inner);
    for t in 0..n {
        let mut base = 0;
        for j in 0..k {
            base += norm_index(ids[t * k + j], ds[j])? * st[j];
        }
        pairs.extend((0..inner).map(|r| (base + r, t * inner + r)));
    }
    scatter(data, upd, &pairs, red)
}

/// A copy of `data` with `updates[u]` combined into element `o` for each pair `(o, u)`, in order.
fn scatter(
    data: &Tensor,
    upd: &Tensor,
    pairs: &[(usize, usize)],
    red: ScatterReduction,
) -> Result<Tensor, EvalError> {
    if upd.dtype() != data.dtype() {
        return Err(invalid(format!(
            "updates are {}, data is {}",
            upd.dtype(),
            data.dtype()
        )));
    }
    fn go<T: Elem>(
        a: &ArrayD<T>,
        upd: &Tensor,
        pairs: &[(usize, usize)],
        f: impl Fn(&T, &T) -> T,
    ) -> Result<Tensor, EvalError> {
        let mut out = flat(a).into_owned();
        let u = upd.view::<T>()?;
        let u = flat(u);
        let us = u.as_slice().expect("standard layout is contiguous");
        let os = out
            .as_slice_mut()
            .expect("owned standard layout is contiguous");
        for &(o, i) in pairs {
            os[o] = f(&os[o], &us[i]);
        }
        Ok(T::wrap(out))
    }
    fn replace<T: Clone>(_: &T, u: &T) -> T {
        u.clone()
    }
    fn combine<T: NumElem>(red: ScatterReduction, x: T, u: T) -> T {
        let float = T::DTYPE.is_float();
        match red {
            ScatterReduction::None => u,
            ScatterReduction::Add if float => T::from_f64(x.to_f64() + u.to_f64()),
            ScatterReduction::Add => T::from_i64(x.to_i64().wrapping_add(u.to_i64())),
            ScatterReduction::Mul if float => T::from_f64(x.to_f64() * u.to_f64()),
            ScatterReduction::Mul => T::from_i64(x.to_i64().wrapping_mul(u.to_i64())),
            // As Python's max/min: the update wins only when strictly better (so NaN loses).
            ScatterReduction::Max => {
                if u > x {
                    u
                } else {
                    x
                }
            }
            ScatterReduction::Min => {
                if u < x {
                    u
                } else {
                    x
                }
            }
        }
    }
    match red {
        ScatterReduction::None => dispatch_all!(data, a => go(a, upd, pairs, replace)),
        _ => dispatch_num!(data, a => go(a, upd, pairs, |x, u| combine(red, *x, *u)),
            _ => Err(invalid(format!("scatter reduction {red:?} on {}", data.dtype())))),
    }
}

pub(super) fn one_hot(
    indices: &Tensor,
    depth: i64,
    values: &Tensor,
    axis: usize,
) -> Result<Tensor, EvalError> {
    if values.len() != 2 {
        return Err(invalid(format!(
            "one_hot values must hold [off, on], found {:?}",
            values.shape()
        )));
    }
    if depth < 0 {
        return Err(invalid(format!("one_hot depth {depth}")));
    }
    let is = indices.shape();
    if axis > is.len() {
        return Err(invalid(format!("one_hot axis {axis} for indices {is:?}")));
    }
    // Indices may be of any numeric type; fractional ones truncate.
    let ids: Vec<i64> = indices
        .to_f64_vec()?
        .into_iter()
        .map(|v| v as i64)
        .collect();
    let outer: usize = is[..axis].iter().product();
    let inner: usize = is[axis..].iter().product();
    let d = depth as usize;
    let mut map = Vec::with_capacity(outer * d * inner);
    for o in 0..outer {
        for c in 0..depth {
            for r in 0..inner {
                let i = ids[o * inner + r];
                let i = if i < 0 { i + depth } else { i };
                map.push(Some(usize::from(i == c)));
            }
        }
    }
    let mut shape = is.to_vec();
    shape.insert(axis, d);
    take(values, &shape, &map, None)
}

pub(super) fn nonzero(x: &Tensor) -> Result<Tensor, EvalError> {
    fn nz<T: Elem>(a: &ArrayD<T>) -> Vec<usize> {
        let zero = T::default();
        a.as_standard_layout()
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != zero)
            .map(|(i, _)| i)
            .collect()
    }
    let hits = dispatch_all!(x, a => nz(a));
    let s = x.shape();
    let st = strides(s);
    let rank = s.len();
    let mut v = vec![0i64; rank * hits.len()];
    for (n, &f) in hits.iter().enumerate() {
        for k in 0..rank {
            v[k * hits.len() + n] = ((f / st[k]) % s[k]) as i64;
        }
    }
    Ok(Tensor::from_vec(&[rank, hits.len()], v)?)
}

pub(super) fn compress(
    x: &Tensor,
    cond: &Tensor,
    axis: Option<usize>,
) -> Result<Tensor, EvalError> {
    let c = cond.to_i64_vec()?;
    let pick = |n: usize| -> Vec<Option<usize>> {
        (0..n.min(c.len()))
            .filter(|&i| c[i] != 0)
            .map(Some)
            .collect()
    };
    match axis {
        None => {
            let map = pick(x.len());
            take(x, &[map.len()], &map, None)
        }
        Some(a) => {
            let s = x.shape();
            if a >= s.len() {
                return Err(invalid(format!("compress axis {a} of shape {s:?}")));
            }
            let mut per_axis: Vec<Vec<Option<usize>>> =
                s.iter().map(|&n| (0..n).map(Some).collect()).collect();
            per_axis[a] = pick(s[a]);
            axis_take(x, &per_axis, None)
        }
    }
}

pub(super) fn reverse_sequence(
    x: &Tensor,
    lens: &Tensor,
    batch_axis: usize,
    time_axis: usize,
) -> Result<Tensor, EvalError> {
    let s = x.shape();
    let lens = lens.to_i64_vec()?;
    if batch_axis >= s.len() || time_axis >= s.len() || lens.len() != s[batch_axis] {
        return Err(invalid(format!(
            "reverse_sequence of {s:?} with {} lengths",
            lens.len()
        )));
    }
    let st = strides(s);
    let mut map = Vec::with_capacity(x.len());
    for_each_index(s, |m| {
        let t = m[time_axis] as i64;
        let l = lens[m[batch_axis]].clamp(0, s[time_axis] as i64);
        let src_t = if t < l {
            (l - 1 - t) as usize
        } else {
            m[time_axis]
        };
        map.push(
            m.iter()
                .enumerate()
                .map(|(k, &i)| if k == time_axis { src_t } else { i } * st[k])
                .sum(),
        );
    });
    Ok(take_all(x, s, &map))
}

/// Groups of equal items (elements, or slices along `axis`): the first occurrence of each
/// unique item, the unique index of every item, and the counts, with the unique items in sorted
/// order or in order of first occurrence.
fn unique_groups<T: Elem + PartialOrd>(
    a: &ArrayD<T>,
    axis: Option<usize>,
    sorted: bool,
) -> (Vec<usize>, Vec<i64>, Vec<i64>) {
    let data: Vec<T> = match axis {
        None => a.iter().cloned().collect(),
        Some(ax) => {
            let mut perm: Vec<usize> = vec![ax];
            perm.extend((0..a.ndim()).filter(|&k| k != ax));
            a.view().permuted_axes(perm).iter().cloned().collect()
        }
    };
    let n = match axis {
        None => data.len(),
        Some(ax) => a.shape()[ax],
    };
    let len = data.len().checked_div(n).unwrap_or(0);
    let item = |i: usize| &data[i * len..(i + 1) * len];
    let cmp = |i: usize, j: usize| {
        item(i)
            .iter()
            .zip(item(j))
            .map(|(x, y)| x.partial_cmp(y).unwrap_or(Ordering::Equal))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| cmp(i, j));
    // Groups in sorted order; the stable sort puts each group's first occurrence first.
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for &i in &order {
        match groups.last_mut() {
            Some((first, members)) if cmp(*first, i) == Ordering::Equal => members.push(i),
            _ => groups.push((i, vec![i])),
        }
    }
    if !sorted {
        groups.sort_by_key(|g| g.0);
    }
    let mut inverse = vec![0i64; n];
    for (g, (_, members)) in groups.iter().enumerate() {
        for &m in members {
            inverse[m] = g as i64;
        }
    }
    let firsts = groups.iter().map(|g| g.0).collect();
    let counts = groups.iter().map(|g| g.1.len() as i64).collect();
    (firsts, inverse, counts)
}

pub(super) fn unique(
    x: &Tensor,
    axis: Option<usize>,
    sorted: bool,
) -> Result<Vec<Tensor>, EvalError> {
    if let Some(a) = axis
        && a >= x.rank()
    {
        return Err(invalid(format!("unique axis {a} of shape {:?}", x.shape())));
    }
    let (firsts, inverse, counts) = dispatch_all!(x, a => unique_groups(a, axis, sorted));
    let y = match axis {
        None => take_all(x, &[firsts.len()], &firsts),
        Some(a) => {
            let idx: Vec<i64> = firsts.iter().map(|&f| f as i64).collect();
            gather(x, &Tensor::from_vec(&[idx.len()], idx)?, a)?
        }
    };
    let firsts: Vec<i64> = firsts.into_iter().map(|f| f as i64).collect();
    Ok(vec![
        y,
        Tensor::from_vec(&[firsts.len()], firsts)?,
        Tensor::from_vec(&[inverse.len()], inverse)?,
        Tensor::from_vec(&[counts.len()], counts)?,
    ])
}

pub(super) fn tensor_scatter(
    past: &Tensor,
    upd: &Tensor,
    write: Option<&Tensor>,
    axis: usize,
    circular: bool,
) -> Result<Tensor, EvalError> {
    let ps = past.shape();
    let us = upd.shape();
    let ok = ps.len() == us.len()
        && axis < ps.len()
        && (0..ps.len()).all(|k| {
            if k == axis {
                us[k] <= ps[k]
            } else {
                us[k] == ps[k]
            }
        });
    if !ok {
        return Err(invalid(format!(
            "tensor_scatter of {us:?} into {ps:?} on axis {axis}"
        )));
    }
    let batch = ps.first().copied().unwrap_or(1);
    let write = match write {
        Some(w) => w.to_i64_vec()?,
        None => vec![0; batch],
    };
    let (max, seq) = (ps[axis], us[axis]);
    let inner: usize = ps[axis + 1..].iter().product();
    let prefix = &ps[..axis];
    let mut pairs = Vec::with_capacity(upd.len());
    let mut err = None;
    let mut p = 0;
    for_each_index(prefix, |m| {
        let b = m.first().copied().unwrap_or(0);
        let w = write.get(b).copied().unwrap_or(0);
        for t in 0..seq {
            let mut c = w + t as i64;
            if circular && max > 0 {
                c = c.rem_euclid(max as i64);
            }
            if c < 0 || c >= max as i64 {
                err.get_or_insert_with(|| {
                    invalid(format!("tensor_scatter writes position {c} of {max}"))
                });
                continue;
            }
            let o = (p * max + c as usize) * inner;
            let u = (p * seq + t) * inner;
            pairs.extend((0..inner).map(|r| (o + r, u + r)));
        }
        p += 1;
    });
    if let Some(e) = err {
        return Err(e);
    }
    scatter(past, upd, &pairs, ScatterReduction::None)
}
