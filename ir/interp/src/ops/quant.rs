//! Kernels of the quant family: quantize/dequantize, dynamic quantization, integer matmul and
//! convolution.
//!
//! The arithmetic follows the ONNX reference implementation step by step, including the
//! precision of each intermediate (the quotient `x / scale` is rounded to the inputs' float
//! type before rounding half to even; dequantization is computed in f32), so that results match
//! it bit for bit. Integer products accumulate in wrapping i32, the only overflow ONNX allows.

use crate::{EvalCx, EvalError, invalid};
use half::{bf16, f16};
use mlc_ir::ops::QuantOp;
use mlc_ir::ops::quant::ConvGeom;
use mlc_ir::{CastMode, DType, NumElem, Tensor, dispatch_num};
use ndarray::{ArrayD, IxDyn};

pub fn eval(
    op: &QuantOp,
    inputs: &[Option<&Tensor>],
    _cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    match op {
        QuantOp::Quantize {
            axis,
            block_size,
            to,
            saturate,
        } => {
            let (x, scale) = (input(inputs, 0)?, input(inputs, 1)?);
            let zp = opt(inputs, 2);
            let q = Quant {
                axis: *axis,
                block_size: *block_size,
                to: *to,
                saturate: *saturate,
            };
            Ok(vec![quantize(x, scale, zp, q)?])
        }
        QuantOp::Dequantize {
            axis,
            block_size,
            to,
        } => {
            let (x, scale) = (input(inputs, 0)?, input(inputs, 1)?);
            let zp = opt(inputs, 2);
            Ok(vec![dequantize(x, scale, zp, *axis, *block_size, *to)?])
        }
        QuantOp::DynamicQuantize => dynamic_quantize(input(inputs, 0)?),
        QuantOp::MatMulInteger => {
            let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
            let a = sub_zero_point(a, opt(inputs, 2), Side::Rows)?;
            let b = sub_zero_point(b, opt(inputs, 3), Side::Cols)?;
            Ok(vec![Tensor::I32(matmul_i32(&a, &b)?)])
        }
        QuantOp::QLinearMatMul => {
            let (a, b) = (input(inputs, 0)?, input(inputs, 3)?);
            let c = matmul_i32(
                &sub_zero_point(a, opt(inputs, 2), Side::Rows)?,
                &sub_zero_point(b, opt(inputs, 5), Side::Cols)?,
            )?;
            let sa = param_f64(input(inputs, 1)?, a.rank(), Side::Rows)?;
            let sb = param_f64(input(inputs, 4)?, b.rank(), Side::Cols)?;
            let sy = input(inputs, 6)?;
            let prec = promote(
                promote(input(inputs, 1)?.dtype(), input(inputs, 4)?.dtype()),
                sy.dtype(),
            );
            let sy = scalar_f64(sy, "y_scale")?;
            // numpy: `a_scale * b_scale / y_scale` in the scales' float type.
            let mult = broadcast_op(&sa, &sb, |p, q| round_to(prec, round_to(prec, p * q) / sy))?;
            let out_ty = opt(inputs, 7).map_or(a.dtype(), Tensor::dtype);
            let zp = opt(inputs, 7)
                .map(|t| scalar_f64(t, "y_zero_point"))
                .transpose()?
                .unwrap_or(0.0);
            let d = broadcast_op(&c.mapv(f64::from), &mult, |c, m| c * m + zp)?;
            Ok(vec![requantize(&d, out_ty)?])
        }
        QuantOp::ConvInteger(g) => {
            let (x, w) = (input(inputs, 0)?, input(inputs, 1)?);
            let x = sub_scalar_zero_point(x, opt(inputs, 2))?;
            let w = sub_channel_zero_point(w, opt(inputs, 3))?;
            Ok(vec![Tensor::I32(conv_i32(&x, &w, None, g)?)])
        }
        QuantOp::QLinearConv(g) => {
            let (x, w) = (input(inputs, 0)?, input(inputs, 3)?);
            let xi = sub_scalar_zero_point(x, opt(inputs, 2))?;
            let wi = sub_channel_zero_point(w, opt(inputs, 5))?;
            let bias = opt(inputs, 8)
                .map(|b| {
                    b.view::<i32>()
                        .map(|a| a.iter().copied().collect::<Vec<_>>())
                })
                .transpose()?;
            let res = conv_i32(&xi, &wi, bias.as_deref(), g)?;
            let (xs, ws, ys) = (input(inputs, 1)?, input(inputs, 4)?, input(inputs, 6)?);
            let prec = promote(promote(xs.dtype(), ws.dtype()), ys.dtype());
            let (xs, ys) = (scalar_f64(xs, "x_scale")?, scalar_f64(ys, "y_scale")?);
            let ws = ws.to_f64_vec()?;
            let m = res.shape()[1];
            if ws.len() != 1 && ws.len() != m {
                return Err(invalid(format!(
                    "w_scale has {} elements for {m} output channels",
                    ws.len()
                )));
            }
            let mult: Vec<f64> = ws
                .iter()
                .map(|&w| round_to(prec, round_to(prec, xs * w) / ys))
                .collect();
            let out_ty = opt(inputs, 7).map_or(x.dtype(), Tensor::dtype);
            let zp = opt(inputs, 7)
                .map(|t| scalar_f64(t, "y_zero_point"))
                .transpose()?
                .unwrap_or(0.0);
            let plane: usize = res.shape()[2..].iter().product();
            let mut d = ArrayD::<f64>::zeros(res.raw_dim());
            for (i, (o, r)) in d.iter_mut().zip(res.iter()).enumerate() {
                let ch = (i / plane.max(1)) % m;
                *o = f64::from(*r) * mult[if mult.len() == 1 { 0 } else { ch }] + zp;
            }
            Ok(vec![requantize(&d, out_ty)?])
        }
    }
}

fn input<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, EvalError> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| invalid(format!("input {i} is required")))
}

fn opt<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

fn scalar_f64(t: &Tensor, what: &str) -> Result<f64, EvalError> {
    match t.to_f64_vec()?.as_slice() {
        [v] => Ok(*v),
        _ => Err(invalid(format!(
            "{what} must be a scalar, got shape {:?}",
            t.shape()
        ))),
    }
}

/// The saturation range of a quantized integer type.
fn int_range(d: DType) -> Result<(f64, f64), EvalError> {
    Ok(match d {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::U16 => (0.0, 65535.0),
        DType::I16 => (-32768.0, 32767.0),
        DType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
        DType::I4 => (-8.0, 7.0),
        DType::U4 => (0.0, 15.0),
        DType::I2 => (-2.0, 1.0),
        DType::U2 => (0.0, 3.0),
        _ => return Err(invalid(format!("{d} is not a quantized integer type"))),
    })
}

/// numpy's result type of arithmetic between two float types (used for scale arithmetic).
fn promote(a: DType, b: DType) -> DType {
    match (a, b) {
        _ if a == b => a,
        (DType::F64, _) | (_, DType::F64) => DType::F64,
        _ if !a.is_float() || !b.is_float() => DType::F64,
        _ => DType::F32,
    }
}

/// Rounds `v` to the nearest value of float type `d` (identity for f64 and non-floats).
fn round_to(d: DType, v: f64) -> f64 {
    match d {
        DType::F32 => f64::from(v as f32),
        DType::F16 => f16::from_f64(v).to_f64(),
        DType::BF16 => bf16::from_f64(v).to_f64(),
        _ => v,
    }
}

/// Rounds half to even and saturates to `to`'s range.
fn requantize(d: &ArrayD<f64>, to: DType) -> Result<Tensor, EvalError> {
    let (lo, hi) = int_range(to)?;
    let q = d.mapv(|v| v.round_ties_even().clamp(lo, hi) as i64);
    Ok(Tensor::I64(q).cast(to)?)
}

/// Maps each element of `x` (viewed as `[outer, len, inner]` around `axis`) to the index of its
/// scale / zero point: 0 per-tensor, the axis index per-axis, the block's element when blocked.
struct Granularity {
    /// Elements of x after the axis.
    inner: usize,
    len: usize,
    /// Number of blocks along the axis (blocked), 1 otherwise.
    blocks: usize,
    block_size: usize,
    mode: Mode,
}

#[derive(PartialEq)]
enum Mode {
    Tensor,
    Axis,
    Blocked,
}

impl Granularity {
    fn new(
        x: &[usize],
        param: &[usize],
        axis: usize,
        block_size: usize,
    ) -> Result<Self, EvalError> {
        let n: usize = param.iter().product();
        if block_size == 0 && n == 1 {
            return Ok(Granularity {
                inner: 1,
                len: 1,
                blocks: 1,
                block_size: 1,
                mode: Mode::Tensor,
            });
        }
        if axis >= x.len() {
            return Err(invalid(format!("axis {axis} out of range for shape {x:?}")));
        }
        let inner = x[axis + 1..].iter().product();
        let len = x[axis];
        if block_size == 0 {
            if param != [len] {
                return Err(invalid(format!(
                    "per-axis parameter of shape {param:?} for axis length {len}"
                )));
            }
            return Ok(Granularity {
                inner,
                len,
                blocks: len,
                block_size: 1,
                mode: Mode::Axis,
            });
        }
        let blocks = len.div_ceil(block_size);
        let want: Vec<usize> = x
            .iter()
            .enumerate()
            .map(|(i, &d)| if i == axis { blocks } else { d })
            .collect();
        if param != want.as_slice() {
            return Err(invalid(format!(
                "blocked parameter of shape {param:?} does not fit {x:?} with block size {block_size}"
            )));
        }
        Ok(Granularity {
            inner,
            len,
            blocks,
            block_size,
            mode: Mode::Blocked,
        })
    }

    /// The parameter index of element `i` (row-major in x).
    fn index(&self, i: usize) -> usize {
        match self.mode {
            Mode::Tensor => 0,
            Mode::Axis => (i / self.inner) % self.len,
            Mode::Blocked => {
                let (outer, rest) = (i / (self.inner * self.len), i % (self.inner * self.len));
                let (a, inner) = (rest / self.inner, rest % self.inner);
                (outer * self.blocks + a / self.block_size) * self.inner + inner
            }
        }
    }
}

/// The attributes of a quantize op.
struct Quant {
    axis: usize,
    block_size: usize,
    to: DType,
    saturate: bool,
}

fn quantize(
    x: &Tensor,
    scale: &Tensor,
    zp: Option<&Tensor>,
    q: Quant,
) -> Result<Tensor, EvalError> {
    let Quant {
        axis,
        block_size,
        to,
        saturate,
    } = q;
    let g = Granularity::new(x.shape(), scale.shape(), axis, block_size)?;
    let s = scale.to_f64_vec()?;
    if let Some(t) = zp {
        Granularity::new(x.shape(), t.shape(), axis, block_size)?;
    }
    // The quotient has numpy's result type of `x / scale`.
    let prec = if x.dtype().is_float() {
        promote(x.dtype(), scale.dtype())
    } else {
        DType::F64
    };
    let xs = x.to_f64_vec()?;
    if to.is_small_float() {
        // The reference converts the quotient as `Cast` does; only f4e2m1 adds its zero point.
        // (Adding a zero point of 0 is not a no-op: -0 + 0 is +0.)
        let z = match zp {
            Some(t) if to == DType::F4E2M1 => Some(t.to_f64_vec()?),
            _ => None,
        };
        let y: Vec<f64> = xs
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let p = g.index(i);
                let r = round_to(prec, v / s[p]);
                z.as_ref().map_or(r, |z| round_to(prec, r + z[p]))
            })
            .collect();
        let mode = CastMode {
            saturate,
            ..CastMode::default()
        };
        return Ok(Tensor::from_vec(x.shape(), y)?.cast_with(to, mode)?);
    }
    let z = match zp {
        Some(t) => t.to_i64_vec()?,
        None => vec![0; s.len()],
    };
    let (lo, hi) = int_range(to)?;
    let q: Vec<i64> = xs
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let p = g.index(i);
            let r = round_to(prec, v / s[p]).round_ties_even() + z[p] as f64;
            r.clamp(lo, hi) as i64
        })
        .collect();
    Ok(Tensor::from_vec(x.shape(), q)?.cast(to)?)
}

fn dequantize(
    x: &Tensor,
    scale: &Tensor,
    zp: Option<&Tensor>,
    axis: usize,
    block_size: usize,
    to: DType,
) -> Result<Tensor, EvalError> {
    let g = Granularity::new(x.shape(), scale.shape(), axis, block_size)?;
    let s = scale.to_f64_vec()?;
    let z = match zp {
        Some(t) => {
            Granularity::new(x.shape(), t.shape(), axis, block_size)?;
            let z = t.to_f64_vec()?;
            // The reference ignores the zero point of the float types; float8 ones must be 0.
            if x.dtype().is_small_float() {
                if x.dtype() != DType::F4E2M1 && z.iter().any(|&v| v != 0.0) {
                    return Err(invalid("a float8 zero point must be zero"));
                }
                vec![0.0; s.len()]
            } else {
                z
            }
        }
        None => vec![0.0; s.len()],
    };
    let xs = x.to_f64_vec()?;
    // The reference computes `(f32(x) - zp) * scale` in f32 (f64 only for f64 scales).
    let prec = if scale.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let y: Vec<f64> = xs
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let p = g.index(i);
            let dx = round_to(prec, round_to(prec, v) - z[p]);
            round_to(prec, dx * s[p])
        })
        .collect();
    Ok(Tensor::from_vec(x.shape(), y)?.cast(to)?)
}

fn dynamic_quantize(x: &Tensor) -> Result<Vec<Tensor>, EvalError> {
    if !x.dtype().is_float() {
        return Err(invalid("dynamic quantization takes a float tensor"));
    }
    // All arithmetic in f32, as the reference does.
    let xs: Vec<f32> = x.to_f64_vec()?.into_iter().map(|v| v as f32).collect();
    let maxx = xs.iter().copied().fold(0.0f32, f32::max);
    let minx = xs.iter().copied().fold(0.0f32, f32::min);
    let scale = if maxx == minx { 1.0f32 } else { maxx - minx } / 255.0;
    let zp = (0.0 - minx / scale).clamp(0.0, 255.0).round_ties_even();
    let y: Vec<u8> = xs
        .iter()
        .map(|&v| ((v / scale).round_ties_even() + zp).clamp(0.0, 255.0) as u8)
        .collect();
    Ok(vec![
        Tensor::from_vec(x.shape(), y)?,
        Tensor::scalar(scale),
        Tensor::scalar(zp as u8),
    ])
}

/// Which matmul operand a zero point or scale belongs to.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    /// The left operand: a vector `[M]` holds one value per row.
    Rows,
    /// The right operand: a vector `[N]` holds one value per column (plain broadcasting).
    Cols,
}

/// A per-tensor or per-row/column parameter reshaped to broadcast against its operand.
fn param_shape(p: &[usize], operand_rank: usize, side: Side) -> Vec<usize> {
    match p {
        [m] if *m != 1 && side == Side::Rows && operand_rank >= 2 => vec![*m, 1],
        _ => p.to_vec(),
    }
}

fn param_f64(p: &Tensor, operand_rank: usize, side: Side) -> Result<ArrayD<f64>, EvalError> {
    let shape = param_shape(p.shape(), operand_rank, side);
    ArrayD::from_shape_vec(IxDyn(&shape), p.to_f64_vec()?).map_err(|e| invalid(e.to_string()))
}

fn to_i32(t: &Tensor) -> Result<ArrayD<i32>, EvalError> {
    dispatch_num!(t, a => Ok(a.mapv(|v| v.to_i64() as i32)), _ => Err(invalid("expected an integer tensor")))
}

/// `t - zero_point` in i32, the zero point per tensor, per row or per column.
fn sub_zero_point(t: &Tensor, zp: Option<&Tensor>, side: Side) -> Result<ArrayD<i32>, EvalError> {
    let a = to_i32(t)?;
    let Some(zp) = zp else { return Ok(a) };
    let shape = param_shape(zp.shape(), t.rank(), side);
    let z = to_i32(zp)?
        .into_shape_with_order(IxDyn(&shape))
        .map_err(|e| invalid(e.to_string()))?;
    broadcast_op(&a, &z, |x, z| x - z)
}

fn sub_scalar_zero_point(t: &Tensor, zp: Option<&Tensor>) -> Result<ArrayD<i32>, EvalError> {
    let a = to_i32(t)?;
    match zp {
        None => Ok(a),
        Some(z) => match to_i32(z)?.iter().copied().collect::<Vec<_>>().as_slice() {
            [z] => Ok(a.mapv(|v| v - z)),
            _ => Err(invalid("x_zero_point must be a scalar")),
        },
    }
}

/// Weights minus a scalar or per-output-channel zero point.
fn sub_channel_zero_point(w: &Tensor, zp: Option<&Tensor>) -> Result<ArrayD<i32>, EvalError> {
    let mut a = to_i32(w)?;
    let Some(zp) = zp else { return Ok(a) };
    let z: Vec<i32> = to_i32(zp)?.iter().copied().collect();
    let m = a.shape().first().copied().unwrap_or(1);
    if z.len() != 1 && z.len() != m {
        return Err(invalid(format!(
            "w_zero_point has {} elements for {m} output channels",
            z.len()
        )));
    }
    let per = a.len() / m.max(1);
    for (i, v) in a.iter_mut().enumerate() {
        *v -= z[if z.len() == 1 { 0 } else { i / per }];
    }
    Ok(a)
}

/// Elementwise `f` under numpy broadcasting.
fn broadcast_op<A: Copy, B: Copy, C>(
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    f: impl Fn(A, B) -> C,
) -> Result<ArrayD<C>, EvalError> {
    let rank = a.ndim().max(b.ndim());
    let pad = |s: &[usize]| {
        std::iter::repeat_n(1, rank - s.len())
            .chain(s.iter().copied())
            .collect::<Vec<_>>()
    };
    let (sa, sb) = (pad(a.shape()), pad(b.shape()));
    let mut out = Vec::with_capacity(rank);
    for (&x, &y) in sa.iter().zip(&sb) {
        out.push(match (x, y) {
            _ if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(invalid(format!(
                    "shapes {:?} and {:?} do not broadcast",
                    a.shape(),
                    b.shape()
                )));
            }
        });
    }
    let av = a
        .broadcast(IxDyn(&out))
        .ok_or_else(|| invalid("broadcast failed"))?;
    let bv = b
        .broadcast(IxDyn(&out))
        .ok_or_else(|| invalid("broadcast failed"))?;
    Ok(ndarray::Zip::from(&av)
        .and(&bv)
        .map_collect(|&x, &y| f(x, y)))
}

/// numpy `matmul` over i32 with wrapping accumulation. The inner loops run over contiguous rows
/// (`out[i, :] += a[i, k] * b[k, :]`), so a 128x384x384 product takes milliseconds.
fn matmul_i32(a: &ArrayD<i32>, b: &ArrayD<i32>) -> Result<ArrayD<i32>, EvalError> {
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err(invalid("matmul operands must have rank >= 1"));
    }
    let a2 = if a.ndim() == 1 {
        a.view().insert_axis(ndarray::Axis(0))
    } else {
        a.view()
    };
    let b2 = if b.ndim() == 1 {
        b.view().insert_axis(ndarray::Axis(1))
    } else {
        b.view()
    };
    let (ra, rb) = (a2.ndim(), b2.ndim());
    let (m, k) = (a2.shape()[ra - 2], a2.shape()[ra - 1]);
    let (kb, n) = (b2.shape()[rb - 2], b2.shape()[rb - 1]);
    if k != kb {
        return Err(invalid(format!(
            "matmul of {:?} and {:?}: contraction dims differ",
            a.shape(),
            b.shape()
        )));
    }
    let (ba, bb) = (&a2.shape()[..ra - 2], &b2.shape()[..rb - 2]);
    let rank = ba.len().max(bb.len());
    let pad = |s: &[usize]| {
        std::iter::repeat_n(1, rank - s.len())
            .chain(s.iter().copied())
            .collect::<Vec<_>>()
    };
    let (pa, pb) = (pad(ba), pad(bb));
    let mut batch = Vec::with_capacity(rank);
    for (&x, &y) in pa.iter().zip(&pb) {
        batch.push(match (x, y) {
            _ if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(invalid(format!(
                    "matmul batch dims of {:?} and {:?} do not broadcast",
                    a.shape(),
                    b.shape()
                )));
            }
        });
    }
    let (av, bv) = (a2.as_standard_layout(), b2.as_standard_layout());
    let (ad, bd) = (
        av.as_slice().expect("standard layout"),
        bv.as_slice().expect("standard layout"),
    );
    let nb: usize = batch.iter().product();
    let mut out = vec![0i32; nb * m * n];
    let mut idx = vec![0usize; rank];
    for bi in 0..nb {
        // Row-major batch index -> offsets into a and b (size-1 dims broadcast).
        let mut rem = bi;
        for d in (0..rank).rev() {
            idx[d] = rem % batch[d];
            rem /= batch[d];
        }
        let (mut oa, mut ob) = (0, 0);
        for d in 0..rank {
            oa = oa * pa[d] + if pa[d] == 1 { 0 } else { idx[d] };
            ob = ob * pb[d] + if pb[d] == 1 { 0 } else { idx[d] };
        }
        let am = &ad[oa * m * k..(oa + 1) * m * k];
        let bm = &bd[ob * k * n..(ob + 1) * k * n];
        let om = &mut out[bi * m * n..(bi + 1) * m * n];
        for i in 0..m {
            let orow = &mut om[i * n..(i + 1) * n];
            for (kk, &x) in am[i * k..(i + 1) * k].iter().enumerate() {
                if x == 0 {
                    continue;
                }
                for (o, &y) in orow.iter_mut().zip(&bm[kk * n..(kk + 1) * n]) {
                    *o = o.wrapping_add(x.wrapping_mul(y));
                }
            }
        }
    }
    let mut shape = batch;
    if a.ndim() > 1 {
        shape.push(m);
    }
    if b.ndim() > 1 {
        shape.push(n);
    }
    ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| invalid(e.to_string()))
}

/// Direct N-d convolution in wrapping i32: x `[N, C, S...]`, w `[M, C/group, K...]`, optional
/// per-output-channel bias. Padding contributes zeros (the zero points are already subtracted).
fn conv_i32(
    x: &ArrayD<i32>,
    w: &ArrayD<i32>,
    bias: Option<&[i32]>,
    g: &ConvGeom,
) -> Result<ArrayD<i32>, EvalError> {
    let (xs, ws) = (x.shape(), w.shape());
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(invalid(format!(
            "conv input {xs:?} and weights {ws:?} must be [N,C,...] and [M,C/group,...]"
        )));
    }
    let nsp = xs.len() - 2;
    let (n, c, m, cg) = (xs[0], xs[1], ws[0], ws[1]);
    let group = g.group;
    if group == 0 || c != cg * group || m % group != 0 {
        return Err(invalid(format!(
            "{c} channels, weights {ws:?} and group {group} do not fit"
        )));
    }
    if g.strides.len() != nsp || g.dilations.len() != nsp {
        return Err(invalid(format!("strides/dilations must have {nsp} values")));
    }
    if let Some(b) = bias
        && b.len() != m
    {
        return Err(invalid(format!(
            "bias has {} values for {m} output channels",
            b.len()
        )));
    }
    let (sp, ksp) = (&xs[2..], &ws[2..]);
    let (head, tail) = g.pads(sp, ksp);
    let mut osp = Vec::with_capacity(nsp);
    for i in 0..nsp {
        osp.push(
            g.out_len(i, sp[i], ksp[i], head[i], tail[i])
                .ok_or_else(|| invalid("the kernel does not fit the padded input"))?,
        );
    }
    let (s_len, k_len, o_len): (usize, usize, usize) = (
        sp.iter().product(),
        ksp.iter().product(),
        osp.iter().product(),
    );
    // For every (kernel offset, output position): the input offset in a channel plane, or MAX
    // where the tap falls into padding. Shared by all batches and channels.
    let mut taps = vec![usize::MAX; k_len * o_len];
    let mut kidx = vec![0usize; nsp];
    let mut oidx = vec![0usize; nsp];
    for kp in 0..k_len {
        unravel(kp, ksp, &mut kidx);
        for op in 0..o_len {
            unravel(op, &osp, &mut oidx);
            let mut off = 0usize;
            let mut inside = true;
            for d in 0..nsp {
                let pos =
                    (oidx[d] * g.strides[d] + kidx[d] * g.dilations[d]) as isize - head[d] as isize;
                if pos < 0 || pos as usize >= sp[d] {
                    inside = false;
                    break;
                }
                off = off * sp[d] + pos as usize;
            }
            if inside {
                taps[kp * o_len + op] = off;
            }
        }
    }
    let (xv, wv) = (x.as_standard_layout(), w.as_standard_layout());
    let (xd, wd) = (
        xv.as_slice().expect("standard layout"),
        wv.as_slice().expect("standard layout"),
    );
    let mut out = vec![0i32; n * m * o_len];
    let mg = m / group;
    for b in 0..n {
        for oc in 0..m {
            let gi = oc / mg;
            let acc = &mut out[(b * m + oc) * o_len..(b * m + oc + 1) * o_len];
            if let Some(bias) = bias {
                acc.fill(bias[oc]);
            }
            for ci in 0..cg {
                let plane = &xd[(b * c + gi * cg + ci) * s_len..][..s_len];
                let wk = &wd[(oc * cg + ci) * k_len..][..k_len];
                for (kp, &wv) in wk.iter().enumerate() {
                    if wv == 0 {
                        continue;
                    }
                    for (a, &t) in acc.iter_mut().zip(&taps[kp * o_len..(kp + 1) * o_len]) {
                        if t != usize::MAX {
                            *a = a.wrapping_add(wv.wrapping_mul(plane[t]));
                        }
                    }
                }
            }
        }
    }
    let shape: Vec<usize> = [n, m].into_iter().chain(osp).collect();
    ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| invalid(e.to_string()))
}

/// Row-major flat index -> multi-index.
fn unravel(mut i: usize, dims: &[usize], out: &mut [usize]) {
    for d in (0..dims.len()).rev() {
        out[d] = i % dims[d];
        i /= dims[d];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::Elem;
    use mlc_ir::ops::quant::ConvPad;

    fn run(op: QuantOp, inputs: &[Option<&Tensor>]) -> Vec<Tensor> {
        let cx = EvalCx {
            regions: &[],
            output_types: &[],
        };
        eval(&op, inputs, &cx).unwrap()
    }

    fn t<T: Elem>(shape: &[usize], v: Vec<T>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    #[test]
    fn quantize_rounds_half_to_even_and_saturates() {
        let x = t(&[7], vec![0.5f32, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0]);
        let s = Tensor::scalar(1.0f32);
        let op = |to| QuantOp::Quantize {
            axis: 1,
            block_size: 0,
            to,
            saturate: true,
        };
        let zp = Tensor::scalar(10u8);
        // numpy: np.clip(np.rint(x) + 10, 0, 255)
        assert_eq!(
            run(op(DType::U8), &[Some(&x), Some(&s), Some(&zp)])[0],
            t(&[7], vec![10u8, 12, 12, 10, 8, 255, 0])
        );
        assert_eq!(
            run(op(DType::I8), &[Some(&x), Some(&s), None])[0],
            t(&[7], vec![0i8, 2, 2, 0, -2, 127, -128])
        );
    }

    #[test]
    fn quantize_per_axis_and_blocked() {
        let x = t(&[2, 4], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let s = t(&[2], vec![1.0f32, 2.0]);
        let op = QuantOp::Quantize {
            axis: 0,
            block_size: 0,
            to: DType::I16,
            saturate: true,
        };
        assert_eq!(
            run(op, &[Some(&x), Some(&s)])[0],
            t(&[2, 4], vec![1i16, 2, 3, 4, 2, 3, 4, 4])
        );
        let s = t(&[2, 2], vec![1.0f32, 2.0, 4.0, 8.0]);
        let z = t(&[2, 2], vec![0u8, 1, 2, 3]);
        let op = QuantOp::Quantize {
            axis: 1,
            block_size: 2,
            to: DType::U8,
            saturate: true,
        };
        // Blocks: row 0 = [1, 2 | 3, 4] / [1 | 2] + [0 | 1]; row 1 = [5, 6 | 7, 8] / [4 | 8] + [2 | 3].
        assert_eq!(
            run(op, &[Some(&x), Some(&s), Some(&z)])[0],
            t(&[2, 4], vec![1u8, 2, 3, 3, 3, 4, 4, 4])
        );
    }

    #[test]
    fn quantize_to_storage_types() {
        use mlc_ir::lowbit::{F4E2M1, F8E4M3FN, I4};
        let x = t(&[4], vec![1.0f32, 300.0, -1000.0, 17.0]);
        let s = Tensor::scalar(2.0f32);
        let op = |to, saturate| QuantOp::Quantize {
            axis: 0,
            block_size: 0,
            to,
            saturate,
        };
        // x / 2 = [0.5, 150, -500, 8.5]; float8 ignores the zero point; -500 saturates to -448
        // or becomes NaN (0xff).
        let zp = Tensor::scalar(F8E4M3FN(0));
        let q = |sat| run(op(DType::F8E4M3FN, sat), &[Some(&x), Some(&s), Some(&zp)]);
        let codes = |v: [u8; 4]| t(&[4], v.map(F8E4M3FN).to_vec());
        assert_eq!(q(true)[0], codes([0x30, 0x71, 0xfe, 0x50]));
        assert_eq!(q(false)[0], codes([0x30, 0x71, 0xff, 0x50]));
        // Integers round half to even, add the zero point and saturate: [0, 75, -250, 8] + 1.
        let zp = Tensor::scalar(I4(1));
        assert_eq!(
            run(op(DType::I4, true), &[Some(&x), Some(&s), Some(&zp)])[0],
            t(&[4], vec![I4(1), I4(7), I4(-8), I4(7)])
        );
        // f4e2m1 adds its zero point (1.0): [1.5, 151, -499, 9.5] -> [1.5, 6, -6, 6].
        let zp = Tensor::scalar(F4E2M1(0x2));
        assert_eq!(
            run(op(DType::F4E2M1, true), &[Some(&x), Some(&s), Some(&zp)])[0],
            t(
                &[4],
                vec![F4E2M1(0x3), F4E2M1(0x7), F4E2M1(0xf), F4E2M1(0x7)]
            )
        );
    }

    #[test]
    fn dequantize_storage_types() {
        use mlc_ir::lowbit::{F8E5M2, U2};
        let op = QuantOp::Dequantize {
            axis: 0,
            block_size: 0,
            to: DType::F32,
        };
        let s = Tensor::scalar(0.5f32);
        let x = t(&[3], vec![U2(0), U2(3), U2(1)]);
        let zp = Tensor::scalar(U2(1));
        assert_eq!(
            run(op.clone(), &[Some(&x), Some(&s), Some(&zp)])[0],
            t(&[3], vec![-0.5f32, 1.0, 0.0])
        );
        // 0x3c is 1.0, 0x7c is infinity.
        let x = t(&[2], vec![F8E5M2(0x3c), F8E5M2(0x7c)]);
        assert_eq!(
            run(op.clone(), &[Some(&x), Some(&s), None])[0],
            t(&[2], vec![0.5f32, f32::INFINITY])
        );
        let cx = EvalCx {
            regions: &[],
            output_types: &[],
        };
        let zp = Tensor::scalar(F8E5M2(0x3c));
        assert!(eval(&op, &[Some(&x), Some(&s), Some(&zp)], &cx).is_err());
    }

    #[test]
    fn dequantize_per_axis() {
        let x = t(&[2, 2], vec![10u8, 20, 30, 40]);
        let s = t(&[2], vec![0.5f32, 2.0]);
        let z = t(&[2], vec![10u8, 0]);
        let op = QuantOp::Dequantize {
            axis: 1,
            block_size: 0,
            to: DType::F32,
        };
        assert_eq!(
            run(op, &[Some(&x), Some(&s), Some(&z)])[0],
            t(&[2, 2], vec![0.0f32, 40.0, 10.0, 80.0])
        );
    }

    #[test]
    fn dynamic_quantize_small_vector() {
        // Reference: x = [0, 2, -3, -2.5, 1.34, 0.5] -> scale 5/255, zp 153.
        let x = t(&[6], vec![0.0f32, 2.0, -3.0, -2.5, 1.34, 0.5]);
        let out = run(QuantOp::DynamicQuantize, &[Some(&x)]);
        assert_eq!(out[0], t(&[6], vec![153u8, 255, 0, 26, 221, 179]));
        assert_eq!(out[1], Tensor::scalar(0.019607844f32));
        assert_eq!(out[2], Tensor::scalar(153u8));
    }

    #[test]
    fn matmul_integer_zero_points() {
        // numpy: (A - 12) @ (B - [1, 2])
        let a = t(&[2, 3], vec![11u8, 7, 3, 10, 6, 2]);
        let b = t(&[3, 2], vec![1u8, 4, 2, 5, 3, 6]);
        let za = Tensor::scalar(12u8);
        let zb = t(&[2], vec![1u8, 2]);
        let out = run(
            QuantOp::MatMulInteger,
            &[Some(&a), Some(&b), Some(&za), Some(&zb)],
        );
        assert_eq!(out[0], t(&[2, 2], vec![-23i32, -53, -26, -62]));
        // Per-row zero point of A: rows minus [11, 10].
        let za = t(&[2], vec![11u8, 10]);
        let out = run(
            QuantOp::MatMulInteger,
            &[Some(&a), Some(&b), Some(&za), None],
        );
        assert_eq!(out[0], t(&[2, 2], vec![-32i32, -68, -32, -68]));
    }

    #[test]
    fn conv_integer_padding() {
        // onnx test_convinteger_with_padding: x = arange(2, 11) - 1 (zp 1), w = ones 2x2, pads 1.
        let x = t(&[1, 1, 3, 3], (2u8..11).collect());
        let w = t(&[1, 1, 2, 2], vec![1u8; 4]);
        let zp = Tensor::scalar(1u8);
        let g = ConvGeom {
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pad: ConvPad::Explicit(vec![1; 4]),
            group: 1,
        };
        let out = run(QuantOp::ConvInteger(g), &[Some(&x), Some(&w), Some(&zp)]);
        assert_eq!(
            out[0],
            t(
                &[1, 1, 4, 4],
                vec![1i32, 3, 5, 3, 5, 12, 16, 9, 11, 24, 28, 15, 7, 15, 17, 9]
            )
        );
    }
}
