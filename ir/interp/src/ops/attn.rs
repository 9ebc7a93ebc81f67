//! Kernels of the attn family: attention, flex attention, linear attention, rotary embedding.
//!
//! The kernels compute in f64 but round every intermediate to the type ONNX's reference
//! implementation computes it in (the input type, or the softmax precision), one rounding per
//! reference op, so that 16-bit results match the reference instead of being "better" than it.
//! Sums (matmul, softmax denominators) accumulate in f64 and round once, like numpy's
//! float-accumulating loops.

use crate::{EvalCx, EvalError, invalid};
use half::{bf16, f16};
use mlc_ir::ops::AttnOp;
use mlc_ir::ops::attn::{QkOutput, UpdateRule};
use mlc_ir::{DType, Tensor};
use ndarray::{Array4, ArrayD, Axis, Ix4, IxDyn};

pub fn eval(
    op: &AttnOp,
    inputs: &[Option<&Tensor>],
    cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    match op {
        AttnOp::Attention { .. } => attention(op, inputs, cx.n_outputs()),
        AttnOp::FlexAttention {
            scale,
            softmax_precision,
            score_captures,
            prob_captures,
        } => flex_attention(
            *scale,
            *softmax_precision,
            *score_captures,
            *prob_captures,
            inputs,
            cx,
        ),
        AttnOp::LinearAttention {
            q_num_heads,
            kv_num_heads,
            scale,
            update_rule,
        } => linear_attention(*q_num_heads, *kv_num_heads, *scale, *update_rule, inputs),
        AttnOp::Rotary {
            interleaved,
            rotary_dim,
            num_heads,
        } => rotary(*interleaved, *rotary_dim, *num_heads, inputs),
    }
}

/// Rounding to `dt`: what storing an f64 result in a `dt` tensor does.
fn rounder(dt: DType) -> Result<fn(f64) -> f64, EvalError> {
    Ok(match dt {
        DType::F64 => |x| x,
        DType::F32 => |x| x as f32 as f64,
        DType::F16 => |x| f16::from_f64(x).to_f64(),
        DType::BF16 => |x| bf16::from_f64(x).to_f64(),
        d => {
            return Err(invalid(format!(
                "attention computes in float types, not {d}"
            )));
        }
    })
}

fn req<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, EvalError> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| invalid(format!("input {i} is required")))
}

fn opt<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

fn to_f64(t: &Tensor) -> Result<ArrayD<f64>, EvalError> {
    Ok(t.cast(DType::F64)?.into_array::<f64>()?)
}

fn from_f64<D: ndarray::Dimension>(
    a: ndarray::Array<f64, D>,
    dt: DType,
) -> Result<Tensor, EvalError> {
    Ok(Tensor::F64(a.into_dyn()).cast(dt)?)
}

/// A 3-D `(batch, seq, heads * size)` or 4-D `(batch, heads, seq, size)` tensor as 4-D.
fn to_heads(t: &Tensor, heads: Option<usize>, what: &str) -> Result<Array4<f64>, EvalError> {
    let a = to_f64(t)?;
    match a.ndim() {
        4 => Ok(a.into_dimensionality::<Ix4>().expect("rank checked")),
        3 => {
            let (b, s, hidden) = (a.shape()[0], a.shape()[1], a.shape()[2]);
            let n = heads
                .filter(|&n| n > 0 && hidden.is_multiple_of(n))
                .ok_or_else(|| {
                    invalid(format!(
                        "{what} hidden size {hidden} does not split into {heads:?} heads"
                    ))
                })?;
            let a = a
                .into_shape_with_order(IxDyn(&[b, s, n, hidden / n]))
                .expect("same element count");
            let a = a.permuted_axes(IxDyn(&[0, 2, 1, 3]));
            Ok(a.into_dimensionality::<Ix4>()
                .expect("rank 4")
                .as_standard_layout()
                .into_owned())
        }
        r => Err(invalid(format!("{what} must have rank 3 or 4, not {r}"))),
    }
}

/// The inverse of `to_heads` for a 3-D layout: `(b, h, s, d)` to `(b, s, h * d)`.
fn merge_heads(a: Array4<f64>) -> ArrayD<f64> {
    let (b, h, s, d) = a.dim();
    let a = a
        .permuted_axes([0, 2, 1, 3])
        .as_standard_layout()
        .into_owned();
    a.into_shape_with_order(IxDyn(&[b, s, h * d]))
        .expect("same element count")
}

/// `Q·Kᵀ` for one (batch, q head) pair, with `q, k` already pre-scaled; rounded by `r`.
fn scores(
    q: &Array4<f64>,
    k: &Array4<f64>,
    b: usize,
    h: usize,
    kh: usize,
    r: fn(f64) -> f64,
) -> Vec<Vec<f64>> {
    let (_, _, sq, d) = q.dim();
    let skv = k.dim().2;
    (0..sq)
        .map(|i| {
            (0..skv)
                .map(|j| r((0..d).map(|e| q[[b, h, i, e]] * k[[b, kh, j, e]]).sum()))
                .collect()
        })
        .collect()
}

/// numpy's `max`: NaN if any element is NaN.
fn nan_max(xs: &[f64]) -> f64 {
    xs.iter().fold(f64::NEG_INFINITY, |m, &x| {
        if x.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(x)
        }
    })
}

/// A sum as numpy computes it in `dt`: bf16 (an `ml_dtypes` type without a pairwise-sum loop)
/// adds one element at a time, rounding every partial sum; numpy's own float types accumulate
/// in at least f32 and round once.
fn sum_in(dt: DType, r: fn(f64) -> f64, xs: &[f64]) -> f64 {
    if dt == DType::BF16 {
        xs.iter().fold(0.0, |acc, &x| r(acc + x))
    } else {
        r(xs.iter().sum())
    }
}

/// Softmax of one row computed in `dt`; with `guard_masked`, an all `-inf` row gives zeros.
fn softmax_row(xs: &[f64], dt: DType, guard_masked: bool) -> Result<Vec<f64>, EvalError> {
    let r = rounder(dt)?;
    let m = nan_max(xs);
    let safe = if guard_masked && m == f64::NEG_INFINITY {
        0.0
    } else {
        m
    };
    let tmp: Vec<f64> = xs.iter().map(|&x| r(r(x - safe).exp())).collect();
    let mut s = sum_in(dt, r, &tmp);
    if guard_masked && s == 0.0 {
        s = 1.0;
    }
    Ok(tmp.iter().map(|&t| r(t / s)).collect())
}

fn attention(
    op: &AttnOp,
    inputs: &[Option<&Tensor>],
    n_outputs: usize,
) -> Result<Vec<Tensor>, EvalError> {
    let AttnOp::Attention {
        q_num_heads,
        kv_num_heads,
        scale,
        is_causal,
        softcap,
        softmax_precision,
        qk_output,
        left_window,
        right_window,
    } = op
    else {
        unreachable!("called for attention only");
    };
    let q_t = req(inputs, 0)?;
    let dt = q_t.dtype();
    let r = rounder(dt)?;
    let pdt = softmax_precision.unwrap_or(dt);
    let rp = rounder(pdt)?;
    let three_d = q_t.rank() == 3;
    let q = to_heads(q_t, *q_num_heads, "q")?;
    let mut k = to_heads(req(inputs, 1)?, *kv_num_heads, "k")?;
    let mut v = to_heads(req(inputs, 2)?, *kv_num_heads, "v")?;
    let past_len = match (opt(inputs, 4), opt(inputs, 5)) {
        (Some(pk), Some(pv)) => {
            let (pk, pv) = (
                to_heads(pk, None, "past_key")?,
                to_heads(pv, None, "past_value")?,
            );
            let n = pk.dim().2;
            k = ndarray::concatenate(Axis(2), &[pk.view(), k.view()])
                .map_err(|e| invalid(format!("past_key: {e}")))?;
            v = ndarray::concatenate(Axis(2), &[pv.view(), v.view()])
                .map_err(|e| invalid(format!("past_value: {e}")))?;
            Some(n)
        }
        (None, None) => None,
        _ => return Err(invalid("past_key and past_value go together")),
    };
    let (nb, hq, sq, dq) = q.dim();
    let (kb, hkv, skv, dk) = k.dim();
    let (vb, vh, sv, dv) = v.dim();
    if dq != dk
        || kb != nb
        || vb != nb
        || vh != hkv
        || sv != skv
        || hkv == 0
        || !hq.is_multiple_of(hkv)
    {
        return Err(invalid(format!(
            "bad attention shapes q {:?}, k {:?}, v {:?}",
            q.dim(),
            k.dim(),
            v.dim()
        )));
    }
    let group = hq / hkv;

    // The additive bias, materialized as (batch, q_heads, q_seq, kv_seq).
    let full = IxDyn(&[nb, hq, sq, skv]);
    let mut bias = match opt(inputs, 3) {
        None => ArrayD::zeros(full.clone()),
        Some(m) => {
            let is_bool = m.dtype() == DType::Bool;
            let mut a = to_f64(m)?;
            if is_bool {
                a.mapv_inplace(|x| if x != 0.0 { 0.0 } else { f64::NEG_INFINITY });
            }
            let last = a.shape().last().copied().unwrap_or(1);
            if a.ndim() > 0 && last < skv {
                // A shorter mask covers the first keys; the rest are masked.
                let mut pad_shape = a.shape().to_vec();
                *pad_shape.last_mut().expect("rank > 0") = skv - last;
                let pad = ArrayD::from_elem(IxDyn(&pad_shape), f64::NEG_INFINITY);
                a = ndarray::concatenate(Axis(a.ndim() - 1), &[a.view(), pad.view()])
                    .expect("shapes agree but the last axis");
            }
            a.broadcast(full.clone())
                .ok_or_else(|| {
                    invalid(format!(
                        "attn_mask {:?} does not broadcast to {:?}",
                        m.shape(),
                        full
                    ))
                })?
                .to_owned()
        }
    };
    let nonpad = opt(inputs, 6).map(|t| t.to_i64_vec()).transpose()?;
    if let Some(np) = &nonpad
        && np.len() != nb
    {
        return Err(invalid(format!(
            "nonpad_kv_seqlen has {} entries for batch {nb}",
            np.len()
        )));
    }
    // Keys before the query block: the internal cache, or the external cache's valid length.
    let offset = |b: usize| -> i64 {
        match (past_len, &nonpad) {
            (Some(p), _) => p as i64,
            (None, Some(np)) => np[b] - sq as i64,
            (None, None) => 0,
        }
    };
    for b in 0..nb {
        let off = offset(b);
        for (h, i, j) in
            (0..hq).flat_map(|h| (0..sq).flat_map(move |i| (0..skv).map(move |j| (h, i, j))))
        {
            let x = &mut bias[[b, h, i, j]];
            let diff = i as i64 + off - j as i64;
            if *is_causal && diff < 0 {
                *x += f64::NEG_INFINITY;
            }
            let outside_left = left_window.is_some_and(|l| diff > l as i64);
            let outside_right = right_window.is_some_and(|rw| -diff > rw as i64);
            if outside_left || outside_right {
                *x += f64::NEG_INFINITY;
            }
            if let Some(np) = &nonpad
                && j as i64 >= np[b]
            {
                *x += f64::NEG_INFINITY;
            }
        }
    }

    let scale = scale.map_or(1.0 / (dq as f64).sqrt(), f64::from);
    let sc = r(scale.sqrt());
    let qs = q.mapv(|x| r(x * sc));
    let ks = k.mapv(|x| r(x * sc));
    let mut y = Array4::<f64>::zeros((nb, hq, sq, dv));
    let mut qk = Array4::<f64>::zeros((nb, hq, sq, skv));
    for b in 0..nb {
        for h in 0..hq {
            let kh = h / group;
            for (i, raw) in scores(&qs, &ks, b, h, kh, r).into_iter().enumerate() {
                let capped: Vec<f64> = match softcap {
                    Some(c) if *c > 0.0 => {
                        let c = f64::from(*c);
                        raw.iter().map(|&x| r(r(r(x / c).tanh()) * c)).collect()
                    }
                    _ => raw.clone(),
                };
                let row_bias: Vec<f64> = (0..skv).map(|j| bias[[b, h, i, j]]).collect();
                let biased: Vec<f64> = capped
                    .iter()
                    .zip(&row_bias)
                    .map(|(&x, &m)| r(x + m))
                    .collect();
                let in_p: Vec<f64> = biased.iter().map(|&x| rp(x)).collect();
                let mut p = softmax_row(&in_p, pdt, true)?;
                // A row whose bias masks every key attends nothing; decided on the bias, not the
                // (possibly NaN) scores.
                if skv > 0 && row_bias.iter().all(|&m| m == f64::NEG_INFINITY) {
                    p.iter_mut().for_each(|x| *x = 0.0);
                }
                let p: Vec<f64> = p.into_iter().map(r).collect();
                let exposed = match qk_output {
                    QkOutput::Scores => &raw,
                    QkOutput::Softcapped => &capped,
                    QkOutput::Biased => &biased,
                    QkOutput::Probs => &p,
                };
                for j in 0..skv {
                    qk[[b, h, i, j]] = exposed[j];
                }
                for e in 0..dv {
                    y[[b, h, i, e]] = r((0..skv).map(|j| p[j] * v[[b, kh, j, e]]).sum());
                }
            }
        }
    }
    let y = if three_d {
        merge_heads(y)
    } else {
        y.into_dyn()
    };
    let mut out = vec![
        from_f64(y, dt)?,
        from_f64(k, dt)?,
        from_f64(v, dt)?,
        from_f64(qk, dt)?,
    ];
    out.truncate(n_outputs);
    Ok(out)
}

fn flex_attention(
    scale: Option<f32>,
    softmax_precision: Option<DType>,
    score_captures: Option<usize>,
    prob_captures: Option<usize>,
    inputs: &[Option<&Tensor>],
    cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    let q_t = req(inputs, 0)?;
    let dt = q_t.dtype();
    let r = rounder(dt)?;
    let cdt = softmax_precision.unwrap_or(if matches!(dt, DType::F16 | DType::BF16) {
        DType::F32
    } else {
        dt
    });
    let rc = rounder(cdt)?;
    let (q, k, v) = (
        to_heads(q_t, None, "q")?,
        to_heads(req(inputs, 1)?, None, "k")?,
        to_heads(req(inputs, 2)?, None, "v")?,
    );
    let v_dt = req(inputs, 2)?.dtype();
    let (nb, hq, sq, e) = q.dim();
    let (_, hkv, skv, ek) = k.dim();
    let dv = v.dim().3;
    if ek != e || v.dim().1 != hkv || v.dim().2 != skv || hkv == 0 || !hq.is_multiple_of(hkv) {
        return Err(invalid(format!(
            "bad flex attention shapes q {:?}, k {:?}, v {:?}",
            q.dim(),
            k.dim(),
            v.dim()
        )));
    }
    let group = hq / hkv;
    // The reference takes the square root of the scale in f32, then rounds it to the input type.
    let scale = scale.unwrap_or((1.0 / (e as f64).sqrt()) as f32);
    let ss = r(f64::from(scale.sqrt()));
    let (qs, ks) = (q.mapv(|x| r(x * ss)), k.mapv(|x| r(x * ss)));
    let mut s = Array4::<f64>::zeros((nb, hq, sq, skv));
    for b in 0..nb {
        for h in 0..hq {
            for (i, row) in scores(&qs, &ks, b, h, h / group, r).into_iter().enumerate() {
                for (j, x) in row.into_iter().enumerate() {
                    s[[b, h, i, j]] = rc(x);
                }
            }
        }
    }
    // Captures follow q, k, v: the score modifier's first, then the probability modifier's.
    let caps: Vec<Tensor> = inputs
        .iter()
        .skip(3)
        .map(|t| t.cloned().ok_or_else(|| invalid("missing capture")))
        .collect::<Result<_, _>>()?;
    let n_score = score_captures.unwrap_or(0);
    let run_mod =
        |region: usize, x: Array4<f64>, caps: &[Tensor]| -> Result<Array4<f64>, EvalError> {
            let mut args = vec![from_f64(x, cdt)?];
            args.extend(caps.iter().cloned());
            let out = cx.run_region(region, args)?;
            let t = out
                .into_iter()
                .next()
                .ok_or_else(|| invalid("modifier region yields nothing"))?;
            let a = to_f64(&t)?.mapv(rc);
            let a = a
                .into_dimensionality::<Ix4>()
                .map_err(|_| invalid("modifier region must keep the scores' rank"))?;
            if a.dim() != (nb, hq, sq, skv) {
                return Err(invalid(format!(
                    "modifier region changed the scores' shape to {:?}",
                    a.dim()
                )));
            }
            Ok(a)
        };
    if score_captures.is_some() {
        s = run_mod(0, s, &caps[..n_score])?;
    }
    let mut p = Array4::<f64>::zeros((nb, hq, sq, skv));
    for b in 0..nb {
        for h in 0..hq {
            for i in 0..sq {
                let row: Vec<f64> = (0..skv).map(|j| s[[b, h, i, j]]).collect();
                for (j, x) in softmax_row(&row, cdt, false)?.into_iter().enumerate() {
                    p[[b, h, i, j]] = x;
                }
            }
        }
    }
    if prob_captures.is_some() {
        let region = usize::from(score_captures.is_some());
        p = run_mod(region, p, &caps[n_score..])?;
    }
    let vc = v.mapv(rc);
    let mut y = Array4::<f64>::zeros((nb, hq, sq, dv));
    for ((b, h, i, d), out) in y.indexed_iter_mut() {
        *out = rc((0..skv)
            .map(|j| p[[b, h, i, j]] * vc[[b, h / group, j, d]])
            .sum());
    }
    Ok(vec![from_f64(y, v_dt)?])
}

fn linear_attention(
    hq: usize,
    hkv: usize,
    scale: Option<f32>,
    rule: UpdateRule,
    inputs: &[Option<&Tensor>],
) -> Result<Vec<Tensor>, EvalError> {
    // The reference recurrence runs in f32 whatever the input type.
    let r = |x: f64| x as f32 as f64;
    let q_t = req(inputs, 0)?;
    let out_dt = q_t.dtype();
    let as_f32 = |t: &Tensor| -> Result<ArrayD<f64>, EvalError> { Ok(to_f64(t)?.mapv(r)) };
    if hkv == 0 || !hq.is_multiple_of(hkv) {
        return Err(invalid(format!(
            "q_num_heads {hq} is not a multiple of kv_num_heads {hkv}"
        )));
    }
    let q = to_heads(&Tensor::F64(as_f32(q_t)?), Some(hq), "query")?;
    let k = to_heads(&Tensor::F64(as_f32(req(inputs, 1)?)?), Some(hkv), "key")?;
    let v = to_heads(&Tensor::F64(as_f32(req(inputs, 2)?)?), Some(hkv), "value")?;
    let (nb, _, nt, dk) = q.dim();
    let dv = v.dim().3;
    if k.dim() != (nb, hkv, nt, dk) || v.dim().0 != nb || v.dim().2 != nt {
        return Err(invalid(format!(
            "bad linear attention shapes q {:?}, k {:?}, v {:?}",
            q.dim(),
            k.dim(),
            v.dim()
        )));
    }
    let group = hq / hkv;
    let past = opt(inputs, 3);
    let state_dt = past.map_or(out_dt, Tensor::dtype);
    let mut state = match past {
        Some(p) => as_f32(p)?
            .into_dimensionality::<Ix4>()
            .ok()
            .filter(|s| s.dim() == (nb, hkv, dk, dv))
            .ok_or_else(|| {
                invalid(format!(
                    "past_state {:?} is not ({nb}, {hkv}, {dk}, {dv})",
                    p.shape()
                ))
            })?,
        None => Array4::zeros((nb, hkv, dk, dv)),
    };
    let rank3 = |t: Option<&Tensor>, what: &str| -> Result<Option<ArrayD<f64>>, EvalError> {
        match t {
            None => Ok(None),
            Some(t) if t.rank() == 3 && t.shape()[0] == nb && t.shape()[1] == nt => {
                Ok(Some(as_f32(t)?))
            }
            Some(t) => Err(invalid(format!(
                "{what} must be ({nb}, {nt}, _), not {:?}",
                t.shape()
            ))),
        }
    };
    let decay = rank3(opt(inputs, 4), "decay")?;
    let beta = rank3(opt(inputs, 5), "beta")?;
    if rule.gated() != decay.is_some() || rule.delta() != beta.is_some() {
        return Err(invalid(format!(
            "update rule {rule:?} and the decay/beta inputs disagree"
        )));
    }
    let decay_at = |b: usize, t: usize, h: usize, d: usize| -> Result<f64, EvalError> {
        let a = decay.as_ref().expect("gated rules have decay");
        match a.shape()[2] {
            n if n == hkv => Ok(a[[b, t, h]]),
            n if n == hkv * dk => Ok(a[[b, t, h * dk + d]]),
            n => Err(invalid(format!(
                "decay last dim {n} is neither {hkv} nor {}",
                hkv * dk
            ))),
        }
    };
    let beta_at = |b: usize, t: usize, h: usize| -> Result<f64, EvalError> {
        let a = beta.as_ref().expect("delta rules have beta");
        match a.shape()[2] {
            1 => Ok(a[[b, t, 0]]),
            n if n == hkv => Ok(a[[b, t, h]]),
            n => Err(invalid(format!("beta last dim {n} is neither 1 nor {hkv}"))),
        }
    };
    let scale = match scale {
        Some(s) if s != 0.0 => f64::from(s),
        _ => 1.0 / (dk as f64).sqrt(),
    };
    let mut y = Array4::<f64>::zeros((nb, hq, nt, dv));
    for t in 0..nt {
        for b in 0..nb {
            for h in 0..hkv {
                if rule.gated() {
                    for d in 0..dk {
                        let g = r(decay_at(b, t, h, d)?.exp());
                        for m in 0..dv {
                            state[[b, h, d, m]] = r(state[[b, h, d, m]] * g);
                        }
                    }
                }
                let mut vt: Vec<f64> = (0..dv).map(|m| v[[b, h, t, m]]).collect();
                if rule.delta() {
                    let bt = beta_at(b, t, h)?;
                    for (m, x) in vt.iter_mut().enumerate() {
                        let retrieved =
                            r((0..dk).map(|d| state[[b, h, d, m]] * k[[b, h, t, d]]).sum());
                        *x = r(bt * r(*x - retrieved));
                    }
                }
                for d in 0..dk {
                    for (m, &x) in vt.iter().enumerate() {
                        state[[b, h, d, m]] = r(state[[b, h, d, m]] + r(k[[b, h, t, d]] * x));
                    }
                }
            }
            for h in 0..hq {
                for m in 0..dv {
                    let dot = r((0..dk)
                        .map(|d| q[[b, h, t, d]] * state[[b, h / group, d, m]])
                        .sum());
                    y[[b, h, t, m]] = r(scale * dot);
                }
            }
        }
    }
    Ok(vec![
        from_f64(merge_heads(y), out_dt)?,
        from_f64(state, state_dt)?,
    ])
}

fn rotary(
    interleaved: bool,
    rotary_dim: Option<usize>,
    num_heads: Option<usize>,
    inputs: &[Option<&Tensor>],
) -> Result<Vec<Tensor>, EvalError> {
    let x_t = req(inputs, 0)?;
    let dt = x_t.dtype();
    let r = rounder(dt)?;
    let three_d = x_t.rank() == 3;
    let x = to_heads(x_t, num_heads, "x")?;
    let (nb, nh, ns, d) = x.dim();
    let rd = rotary_dim.filter(|&r| r > 0).unwrap_or(d);
    if rd > d || !rd.is_multiple_of(2) {
        return Err(invalid(format!(
            "rotary dim {rd} does not fit head size {d}"
        )));
    }
    let half = rd / 2;
    let (cos, sin) = (to_f64(req(inputs, 1)?)?, to_f64(req(inputs, 2)?)?);
    if cos.shape() != sin.shape() || cos.shape().last() != Some(&half) {
        return Err(invalid(format!(
            "cos/sin caches {:?}, {:?} must end in {half}",
            cos.shape(),
            sin.shape()
        )));
    }
    let pos = opt(inputs, 3)
        .map(|p| p.to_i64_vec().map(|v| (v, p.shape().to_vec())))
        .transpose()?;
    // The cache row for (batch, position): looked up by position id, or given per batch.
    let row = |b: usize, s: usize| -> Result<Vec<usize>, EvalError> {
        match &pos {
            Some((ids, shape)) => {
                if shape != &[nb, ns] || cos.ndim() != 2 {
                    return Err(invalid(format!(
                        "position_ids {shape:?} / cache {:?} do not match",
                        cos.shape()
                    )));
                }
                let p = ids[b * ns + s];
                let p = usize::try_from(p).ok().filter(|&p| p < cos.shape()[0]);
                Ok(vec![p.ok_or_else(|| {
                    invalid(format!("position id {} out of range", ids[b * ns + s]))
                })?])
            }
            None if cos.shape() == [nb, ns, half] => Ok(vec![b, s]),
            None => Err(invalid(format!(
                "cos cache {:?} is not ({nb}, {ns}, {half})",
                cos.shape()
            ))),
        }
    };
    let mut y = x.clone();
    for b in 0..nb {
        for s in 0..ns {
            let at = row(b, s)?;
            for i in 0..half {
                let mut idx = at.clone();
                idx.push(i);
                let (c, sn) = (cos[IxDyn(&idx)], sin[IxDyn(&idx)]);
                let (i1, i2) = if interleaved {
                    (2 * i, 2 * i + 1)
                } else {
                    (i, i + half)
                };
                for h in 0..nh {
                    let (x1, x2) = (x[[b, h, s, i1]], x[[b, h, s, i2]]);
                    y[[b, h, s, i1]] = r(r(c * x1) - r(sn * x2));
                    y[[b, h, s, i2]] = r(r(sn * x1) + r(c * x2));
                }
            }
        }
    }
    let y = if three_d {
        merge_heads(y)
    } else {
        y.into_dyn()
    };
    Ok(vec![from_f64(y, dt)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape, data).unwrap()
    }

    fn run(op: AttnOp, inputs: &[Option<&Tensor>], n_outputs: usize) -> Vec<Tensor> {
        let types = vec![mlc_ir::TensorType::scalar(DType::F32); n_outputs];
        eval(
            &op,
            inputs,
            &EvalCx {
                regions: &[],
                output_types: &types,
            },
        )
        .unwrap()
    }

    fn close(a: &Tensor, want: &[f64]) {
        let got = a.to_f64_vec().unwrap();
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{got:?} vs {want:?}"
            );
        }
    }

    /// Causal attention with a 2-key cache and a bool mask; numbers from ONNX's reference:
    /// `Attention(Q, K, V, mask, pk, pv, is_causal=1)` on the tensors below.
    #[test]
    fn attention_causal_with_cache() {
        let q = t(&[1, 1, 2, 2], vec![1.0, 0.0, 0.5, -1.0]);
        let k = t(&[1, 1, 1, 2], vec![0.0, 1.0]);
        let v = t(&[1, 1, 1, 1], vec![3.0]);
        let pk = t(&[1, 1, 2, 2], vec![1.0, 1.0, -1.0, 0.0]);
        let pv = t(&[1, 1, 2, 1], vec![1.0, 2.0]);
        let op = AttnOp::Attention {
            q_num_heads: None,
            kv_num_heads: None,
            scale: None,
            is_causal: true,
            softcap: None,
            softmax_precision: None,
            qk_output: QkOutput::Probs,
            left_window: None,
            right_window: None,
        };
        // Offset 2: query 0 sees keys 0..=2, query 1 sees keys 0..=3 (only 3 exist).
        let out = run(
            op,
            &[Some(&q), Some(&k), Some(&v), None, Some(&pk), Some(&pv)],
            4,
        );
        assert_eq!(out[1].shape(), &[1, 1, 3, 2]);
        let s = 1.0 / 2f64.sqrt();
        let softmax = |xs: &[f64]| {
            let e: Vec<f64> = xs.iter().map(|x| (x * s).exp()).collect();
            let t: f64 = e.iter().sum();
            e.into_iter().map(|x| x / t).collect::<Vec<_>>()
        };
        let p0 = softmax(&[1.0, -1.0, 0.0]);
        let p1 = softmax(&[-0.5, -0.5, -1.0]);
        let y = |p: &[f64]| p[0] + 2.0 * p[1] + 3.0 * p[2];
        close(&out[0], &[y(&p0), y(&p1)]);
        close(&out[3], &[p0, p1].concat());
    }

    #[test]
    fn fully_masked_rows_are_zero() {
        let q = t(&[1, 1, 1, 1], vec![1.0]);
        let v = t(&[1, 1, 2, 1], vec![1.0, 2.0]);
        let k = t(&[1, 1, 2, 1], vec![1.0, 1.0]);
        let mask = Tensor::from_vec(&[2], vec![false, false]).unwrap();
        let op = AttnOp::Attention {
            q_num_heads: None,
            kv_num_heads: None,
            scale: None,
            is_causal: false,
            softcap: None,
            softmax_precision: None,
            qk_output: QkOutput::Scores,
            left_window: None,
            right_window: None,
        };
        let out = run(op, &[Some(&q), Some(&k), Some(&v), Some(&mask)], 1);
        close(&out[0], &[0.0]);
    }

    #[test]
    fn rotary_half_split() {
        // One head of size 4, position 1: rotate (x0, x2) and (x1, x3) by the cache's angles.
        let x = t(&[1, 1, 1, 4], vec![1.0, 2.0, 3.0, 4.0]);
        let cos = t(&[2, 2], vec![1.0, 1.0, 0.5, 0.0]);
        let sin = t(&[2, 2], vec![0.0, 0.0, 0.25, 1.0]);
        let pos = Tensor::from_vec(&[1, 1], vec![1i64]).unwrap();
        let op = AttnOp::Rotary {
            interleaved: false,
            rotary_dim: None,
            num_heads: None,
        };
        let out = run(op, &[Some(&x), Some(&cos), Some(&sin), Some(&pos)], 1);
        close(
            &out[0],
            &[0.5 * 1.0 - 0.25 * 3.0, -4.0, 0.25 * 1.0 + 0.5 * 3.0, 2.0],
        );
    }

    #[test]
    fn linear_attention_single_step() {
        // One head, d = 1: state = k v, output = scale * q * state.
        let (q, k, v) = (
            t(&[1, 1, 1], vec![2.0]),
            t(&[1, 1, 1], vec![3.0]),
            t(&[1, 1, 1], vec![5.0]),
        );
        let op = AttnOp::LinearAttention {
            q_num_heads: 1,
            kv_num_heads: 1,
            scale: None,
            update_rule: UpdateRule::Linear,
        };
        let out = run(op, &[Some(&q), Some(&k), Some(&v)], 2);
        close(&out[0], &[30.0]);
        close(&out[1], &[15.0]);
    }
}
