//! Kernels of the nn family: contractions, convolutions, pooling, normalizations, resampling.
//!
//! Every kernel is written once over flat row-major `&[T]` slices and a shape, generic over
//! the element type it computes in; the dtype dispatch happens at the edge (`with_acc!`,
//! `with_float!`). Half-precision tensors compute in f32 (as ONNX Runtime does), f64 in f64,
//! integers (matmul, gemm, einsum) in wrapping i64/u64. The contractions call one GEMM
//! (`Acc::gemm`), which uses `matrixmultiply` (through ndarray) for floats so that the dev
//! models run in seconds even in the interpreter.

mod conv;
mod det;
mod matmul;
mod norm;
mod pool;
mod resize;

use crate::{EvalCx, EvalError, invalid};
use half::{bf16, f16};
use mlc_ir::ops::NnOp;
use mlc_ir::{DType, NumElem, Tensor, dispatch_num};
use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
use std::fmt::Debug;

pub fn eval(op: &NnOp, inputs: &[Option<&Tensor>], cx: &EvalCx) -> Result<Vec<Tensor>, EvalError> {
    match op {
        NnOp::Matmul => matmul::matmul(req(inputs, 0)?, req(inputs, 1)?).map(|t| vec![t]),
        NnOp::Gemm {
            trans_a,
            trans_b,
            alpha,
            beta,
        } => matmul::gemm(
            req(inputs, 0)?,
            req(inputs, 1)?,
            opt(inputs, 2),
            *trans_a,
            *trans_b,
            *alpha,
            *beta,
        )
        .map(|t| vec![t]),
        NnOp::Einsum { equation } => {
            let ts: Vec<&Tensor> = (0..inputs.len())
                .map(|i| req(inputs, i))
                .collect::<Result<_, _>>()?;
            matmul::einsum(equation, &ts).map(|t| vec![t])
        }
        NnOp::Conv { .. } | NnOp::ConvTranspose { .. } => {
            conv::eval(op, req(inputs, 0)?, req(inputs, 1)?, opt(inputs, 2)).map(|t| vec![t])
        }
        NnOp::MaxPool { .. }
        | NnOp::AvgPool { .. }
        | NnOp::LpPool { .. }
        | NnOp::GlobalMaxPool
        | NnOp::GlobalAvgPool
        | NnOp::GlobalLpPool { .. } => pool::eval(op, req(inputs, 0)?, cx.n_outputs()),
        NnOp::BatchNorm { .. }
        | NnOp::LayerNorm { .. }
        | NnOp::InstanceNorm { .. }
        | NnOp::GroupNorm { .. }
        | NnOp::RmsNorm { .. }
        | NnOp::Lrn { .. }
        | NnOp::MeanVarianceNorm { .. } => norm::eval(op, inputs, cx),
        NnOp::Det => det::det(req(inputs, 0)?).map(|t| vec![t]),
        NnOp::Resize { .. } => resize::resize(op, inputs),
        NnOp::GridSample { .. } => resize::grid_sample(op, req(inputs, 0)?, req(inputs, 1)?),
    }
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

/// An element type kernels accumulate in: f32, f64, or wrapping i64/u64 for integers.
pub(crate) trait Acc: Copy + Default + PartialOrd + Debug + Send + Sync + 'static {
    fn add(self, b: Self) -> Self;
    fn mul(self, b: Self) -> Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    /// Reads any numeric tensor's elements, in row-major order, converted to `Self`.
    fn read(t: &Tensor) -> Vec<Self>;
    /// Builds a tensor of `dtype` from values computed in `Self`.
    fn write(v: Vec<Self>, shape: &[usize], dtype: DType) -> Result<Tensor, EvalError>;

    /// `c[m, n] += sum_k a[m, k] * b[k, n]`; `a`, `b` are strided views `(data, row stride,
    /// col stride)`, `c` is contiguous. The default is an i-k-j loop over contiguous rows.
    fn gemm(m: usize, n: usize, k: usize, a: Mat<Self>, b: Mat<Self>, c: &mut [Self]) {
        for i in 0..m {
            let crow = &mut c[i * n..(i + 1) * n];
            for kk in 0..k {
                let av = a.0[i * a.1 + kk * a.2];
                let boff = kk * b.1;
                if b.2 == 1 {
                    for (cv, &bv) in crow.iter_mut().zip(&b.0[boff..boff + n]) {
                        *cv = cv.add(av.mul(bv));
                    }
                } else {
                    for (j, cv) in crow.iter_mut().enumerate() {
                        *cv = cv.add(av.mul(b.0[boff + j * b.2]));
                    }
                }
            }
        }
    }
}

/// A strided matrix operand: `(data, row stride, column stride)`.
pub(crate) type Mat<'a, T> = (&'a [T], usize, usize);

/// A float type kernels compute in (f32 or f64).
pub(crate) trait Float: Acc + num_traits::Float + num_traits::NumAssign {}
impl Float for f32 {}
impl Float for f64 {}

fn read_num<T, S: NumElem>(a: &ndarray::ArrayD<S>, f: impl Fn(S) -> T) -> Vec<T> {
    match a.as_slice() {
        Some(s) => s.iter().map(|&v| f(v)).collect(),
        None => a.iter().map(|&v| f(v)).collect(),
    }
}

/// Float results into `dtype`: integers round half to even and saturate (numpy's
/// `saturate_cast`, which the ONNX reference applies to resampled integers).
fn write_float<F: Float>(v: Vec<F>, shape: &[usize], dtype: DType) -> Result<Tensor, EvalError> {
    let f = |v: Vec<F>| -> Vec<F> {
        if dtype.is_int() {
            v.into_iter()
                .map(|x| F::from_f64(x.to_f64().round_ties_even()))
                .collect()
        } else {
            v
        }
    };
    let t = if std::mem::size_of::<F>() == 4 {
        let v: Vec<f32> = f(v).into_iter().map(|x| x.to_f64() as f32).collect();
        match dtype {
            DType::F16 => {
                return Ok(Tensor::from_vec(
                    shape,
                    v.into_iter().map(f16::from_f32).collect(),
                )?);
            }
            DType::BF16 => {
                return Ok(Tensor::from_vec(
                    shape,
                    v.into_iter().map(bf16::from_f32).collect(),
                )?);
            }
            _ => Tensor::from_vec(shape, v)?,
        }
    } else {
        Tensor::from_vec(shape, f(v).into_iter().map(|x| x.to_f64()).collect())?
    };
    Ok(t.cast(dtype)?)
}

fn float_gemm<F: Float + ndarray::LinalgScalar>(
    m: usize,
    n: usize,
    k: usize,
    a: Mat<F>,
    b: Mat<F>,
    c: &mut [F],
) {
    // matrixmultiply is fast but has a fixed setup cost; tiny products run the plain loop.
    if m * n * k < 4096 {
        for i in 0..m {
            for kk in 0..k {
                let av = a.0[i * a.1 + kk * a.2];
                for j in 0..n {
                    c[i * n + j] += av * b.0[kk * b.1 + j * b.2];
                }
            }
        }
        return;
    }
    fn view<'a, F>(x: Mat<'a, F>, r: usize, cols: usize) -> ArrayView2<'a, F> {
        ArrayView2::from_shape((r, cols).strides((x.1, x.2)), x.0)
            .expect("operand slice covers its view")
    }
    let av = view(a, m, k);
    let bv = view(b, k, n);
    let mut cv = ArrayViewMut2::from_shape((m, n), c).expect("output slice is m*n");
    ndarray::linalg::general_mat_mul(F::one(), &av, &bv, F::one(), &mut cv);
}

impl Acc for f32 {
    fn add(self, b: Self) -> Self {
        self + b
    }
    fn mul(self, b: Self) -> Self {
        self * b
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn read(t: &Tensor) -> Vec<Self> {
        match t {
            Tensor::F32(a) => read_num(a, |v| v),
            Tensor::F16(a) => read_num(a, f16::to_f32),
            Tensor::BF16(a) => read_num(a, bf16::to_f32),
            _ => dispatch_num!(t, a => read_num(a, |v| NumElem::to_f64(v) as f32), _ => vec![]),
        }
    }
    fn write(v: Vec<Self>, shape: &[usize], dtype: DType) -> Result<Tensor, EvalError> {
        write_float(v, shape, dtype)
    }
    fn gemm(m: usize, n: usize, k: usize, a: Mat<Self>, b: Mat<Self>, c: &mut [Self]) {
        float_gemm(m, n, k, a, b, c)
    }
}

impl Acc for f64 {
    fn add(self, b: Self) -> Self {
        self + b
    }
    fn mul(self, b: Self) -> Self {
        self * b
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn read(t: &Tensor) -> Vec<Self> {
        dispatch_num!(t, a => read_num(a, NumElem::to_f64), _ => vec![])
    }
    fn write(v: Vec<Self>, shape: &[usize], dtype: DType) -> Result<Tensor, EvalError> {
        write_float(v, shape, dtype)
    }
    fn gemm(m: usize, n: usize, k: usize, a: Mat<Self>, b: Mat<Self>, c: &mut [Self]) {
        float_gemm(m, n, k, a, b, c)
    }
}

impl Acc for i64 {
    fn add(self, b: Self) -> Self {
        self.wrapping_add(b)
    }
    fn mul(self, b: Self) -> Self {
        self.wrapping_mul(b)
    }
    fn from_f64(v: f64) -> Self {
        v as i64
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn read(t: &Tensor) -> Vec<Self> {
        dispatch_num!(t, a => read_num(a, |v| v.to_i64()), _ => vec![])
    }
    fn write(v: Vec<Self>, shape: &[usize], dtype: DType) -> Result<Tensor, EvalError> {
        // Wrapping i64 arithmetic truncated to a narrower integer equals that type's wrapping
        // arithmetic, which is what integer matmul does.
        Ok(Tensor::from_vec(shape, v)?.cast(dtype)?)
    }
}

impl Acc for u64 {
    fn add(self, b: Self) -> Self {
        self.wrapping_add(b)
    }
    fn mul(self, b: Self) -> Self {
        self.wrapping_mul(b)
    }
    fn from_f64(v: f64) -> Self {
        v as u64
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn read(t: &Tensor) -> Vec<Self> {
        dispatch_num!(t, a => read_num(a, |v| v.to_u64()), _ => vec![])
    }
    fn write(v: Vec<Self>, shape: &[usize], dtype: DType) -> Result<Tensor, EvalError> {
        Ok(Tensor::from_vec(shape, v)?.cast(dtype)?)
    }
}

/// Runs `$body` with `$T` the accumulation type of `$dt` (any numeric dtype).
macro_rules! with_acc {
    ($dt:expr, $T:ident => $body:expr) => {{
        let dt: mlc_ir::DType = $dt;
        if dt == mlc_ir::DType::F64 {
            type $T = f64;
            $body
        } else if dt.is_float() {
            type $T = f32;
            $body
        } else if dt.is_signed_int() || dt == mlc_ir::DType::Bool {
            type $T = i64;
            $body
        } else if dt.is_int() {
            type $T = u64;
            $body
        } else {
            Err($crate::EvalError::Invalid(format!(
                "nn kernels do not take {dt} tensors"
            )))
        }
    }};
}

/// Runs `$body` with `$F` the float type a float kernel computes in for `$dt` (f64 for f64,
/// f32 otherwise, including integer inputs of max pooling and resize).
macro_rules! with_float {
    ($dt:expr, $F:ident => $body:expr) => {{
        let dt: mlc_ir::DType = $dt;
        if dt == mlc_ir::DType::Str {
            Err($crate::EvalError::Invalid(
                "nn kernels do not take string tensors".into(),
            ))
        } else if dt == mlc_ir::DType::F64 {
            type $F = f64;
            $body
        } else {
            type $F = f32;
            $body
        }
    }};
}
pub(crate) use {with_acc, with_float};

/// Row-major strides of a shape.
fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Calls `f` with every multi-index of `dims` in row-major order.
fn for_each_index(dims: &[usize], mut f: impl FnMut(&[usize])) {
    if dims.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; dims.len()];
    loop {
        f(&idx);
        let mut d = dims.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Numpy-broadcasts `data` of `shape` to `target` (the caller checked compatibility).
fn broadcast_to<T: Copy>(
    data: &[T],
    shape: &[usize],
    target: &[usize],
) -> Result<Vec<T>, EvalError> {
    if shape == target {
        return Ok(data.to_vec());
    }
    if shape.len() > target.len() {
        return Err(invalid(format!("cannot broadcast {shape:?} to {target:?}")));
    }
    let off = target.len() - shape.len();
    let src = strides_of(shape);
    let mut st = vec![0usize; target.len()];
    for (i, (&d, &s)) in shape.iter().zip(&src).enumerate() {
        if d == target[off + i] {
            st[off + i] = s;
        } else if d != 1 {
            return Err(invalid(format!("cannot broadcast {shape:?} to {target:?}")));
        }
    }
    let mut out = Vec::with_capacity(target.iter().product());
    for_each_index(target, |idx| {
        let o: usize = idx.iter().zip(&st).map(|(i, s)| i * s).sum();
        out.push(data[o]);
    });
    Ok(out)
}
