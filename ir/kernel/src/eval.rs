//! A reference evaluator for the kernel IR: the oracle that backends are checked against,
//! and the check that lowering preserved the graph's meaning (compared with `mlc-interp`).
//!
//! Scalars are held widened (`f64`, `i64`, `bool`) and rounded back to their declared type
//! after every operation, so results are those of the declared type: an `f32` add computed in
//! `f64` and rounded once is exactly the `f32` add. Parallel and vector loops run in order;
//! every index is bounds-checked.

use crate::kernel::*;
use half::{bf16, f16};
use mlc_ir::{DType, Tensor};

/// A widened scalar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val {
    F(f64),
    I(i64),
    B(bool),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EvalError {
    #[error("kernel {kernel}: index {index} out of bounds of %p{param} (length {len})")]
    OutOfBounds {
        kernel: String,
        param: u32,
        index: i64,
        len: usize,
    },
    #[error("kernel {kernel}: %v{var} read before it was defined")]
    Undefined { kernel: String, var: u32 },
    #[error("program expects {expected} inputs, got {got}")]
    InputCount { expected: usize, got: usize },
    #[error(
        "input {name}: the program was specialized to another value of this input; compile it again for this one"
    )]
    Guard { name: String },
    #[error("input {index}: expected {expected}, got {got}")]
    InputType {
        index: usize,
        expected: String,
        got: String,
    },
    #[error("cannot hold {0} in the kernel-IR evaluator")]
    Dtype(String),
}

/// Equal type and bytes (so a guard holding a NaN still matches itself).
fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    a.dtype() == b.dtype()
        && a.shape() == b.shape()
        && a.to_le_bytes()
            .ok()
            .is_some_and(|x| b.to_le_bytes().ok() == Some(x))
}

/// Runs a program on its inputs and returns its outputs in order.
pub fn run_program(p: &Program, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
    if inputs.len() != p.inputs.len() {
        return Err(EvalError::InputCount {
            expected: p.inputs.len(),
            got: inputs.len(),
        });
    }
    for ((name, _), t) in p.inputs.iter().zip(inputs) {
        if p.guard(name).is_some_and(|g| !same_bits(g, t)) {
            return Err(EvalError::Guard { name: name.clone() });
        }
    }
    // One storage per non-alias buffer; aliases share their target's.
    let mut store: Vec<Vec<Val>> = Vec::with_capacity(p.buffers.len());
    for (i, b) in p.buffers.iter().enumerate() {
        store.push(match b.kind {
            BufKind::Input(n) => {
                let t = &inputs[n];
                if t.dtype() != b.dtype || t.shape() != b.shape.as_slice() {
                    return Err(EvalError::InputType {
                        index: n,
                        expected: format!("{}{:?}", b.dtype.name(), b.shape),
                        got: format!("{}{:?}", t.dtype().name(), t.shape()),
                    });
                }
                to_vals(t)?
            }
            BufKind::Const(c) => to_vals(&p.consts[c])?,
            BufKind::Temp => vec![zero(b.dtype); b.len()],
            BufKind::Alias { .. } => Vec::new(),
        });
        debug_assert_eq!(store.len(), i + 1);
    }
    let at = |b: BufId| {
        let (s, o) = p.location(b);
        (s.0 as usize, o)
    };
    for st in &p.steps {
        let map: Vec<(usize, usize)> = st.args.iter().map(|&b| at(b)).collect();
        eval_kernel_at(p.kernel(st.kernel), &mut store, &map)?;
    }
    p.outputs
        .iter()
        .map(|(_, b)| {
            let buf = p.buffer(*b);
            let (s, o) = at(*b);
            let vals = store[s]
                .get(o..o + buf.len())
                .ok_or(EvalError::OutOfBounds {
                    kernel: "(outputs)".into(),
                    param: b.0,
                    index: (o + buf.len()) as i64,
                    len: store[s].len(),
                })?;
            from_vals(buf.dtype, &buf.shape, vals)
        })
        .collect()
}

/// Runs one kernel; `map[i]` is the index in `store` of the buffer bound to `ParamId(i)`.
pub fn eval_kernel(k: &Kernel, store: &mut [Vec<Val>], map: &[usize]) -> Result<(), EvalError> {
    let map: Vec<(usize, usize)> = map.iter().map(|&s| (s, 0)).collect();
    eval_kernel_at(k, store, &map)
}

/// [`eval_kernel`] where `ParamId(i)` is bound to the elements of `store[map[i].0]` from
/// `map[i].1` on (an alias at an offset).
pub fn eval_kernel_at(
    k: &Kernel,
    store: &mut [Vec<Val>],
    map: &[(usize, usize)],
) -> Result<(), EvalError> {
    let mut cx = Cx {
        k,
        store,
        map,
        vars: vec![None; k.vars.len()],
    };
    cx.block(&k.body)
}

struct Cx<'a> {
    k: &'a Kernel,
    store: &'a mut [Vec<Val>],
    map: &'a [(usize, usize)],
    vars: Vec<Option<Val>>,
}

impl Cx<'_> {
    fn block(&mut self, body: &[Stmt]) -> Result<(), EvalError> {
        for st in body {
            match st {
                Stmt::For {
                    var, extent, body, ..
                } => {
                    let n = self.int(extent)?;
                    for i in 0..n {
                        self.vars[var.0 as usize] = Some(Val::I(i));
                        self.block(body)?;
                    }
                }
                Stmt::Let { var, value } | Stmt::Assign { var, value } => {
                    let v = self.expr(value)?;
                    self.vars[var.0 as usize] = Some(v);
                }
                Stmt::Store {
                    param,
                    index,
                    value,
                } => {
                    let i = self.int(index)?;
                    let v = self.expr(value)?;
                    let slot = self.slot(*param, i)?;
                    self.store[slot.0][slot.1] = v;
                }
                Stmt::Matmul(mm) => self.matmul(mm)?,
                Stmt::Depthwise(dw) => self.depthwise(dw)?,
                Stmt::Softmax(sm) => self.softmax(sm)?,
            }
        }
        Ok(())
    }

    fn slot(&self, param: ParamId, i: i64) -> Result<(usize, usize), EvalError> {
        let (s, at) = self.map[param.0 as usize];
        let len = self.k.params[param.0 as usize].len;
        if i < 0 || i as usize >= len || at + i as usize >= self.store[s].len() {
            return Err(EvalError::OutOfBounds {
                kernel: self.k.name.clone(),
                param: param.0,
                index: i,
                len,
            });
        }
        Ok((s, at + i as usize))
    }

    fn int(&mut self, e: &Expr) -> Result<i64, EvalError> {
        Ok(match self.expr(e)? {
            Val::I(i) => i,
            Val::F(f) => f as i64,
            Val::B(b) => b as i64,
        })
    }

    fn load_f(&self, m: &MatRef, off: i64, r: usize, c: usize) -> Result<f64, EvalError> {
        let i = off + r as i64 * m.row_stride + c as i64 * m.col_stride;
        let (s, i) = self.slot(m.param, i)?;
        Ok(match self.store[s][i] {
            Val::F(f) => f,
            Val::I(i) => i as f64,
            Val::B(b) => b as i64 as f64,
        })
    }

    fn matmul(&mut self, mm: &Matmul) -> Result<(), EvalError> {
        let (ao, bo, co) = (
            self.int(&mm.a.offset)?,
            self.int(&mm.b.offset)?,
            self.int(&mm.c.offset)?,
        );
        let bias_o = match &mm.bias {
            Some(b) => self.int(&b.offset)?,
            None => 0,
        };
        let cty = self.k.params[mm.c.param.0 as usize].dtype;
        let rq = match &mm.requant {
            Some(rq) => {
                let mo = self.int(&rq.mult.offset)?;
                let si = self.int(&rq.scale.index)?;
                let zi = self.int(&rq.zero_point.index)?;
                let scale = self.load_f(&MatRef::scalar(rq.scale.param), si, 0, 0)? as f32;
                let zp = self.load_f(&MatRef::scalar(rq.zero_point.param), zi, 0, 0)? as f32;
                // The residual's scalars: (r_scale, r_zp, out_scale, out_zp).
                let add = match &rq.residual {
                    Some(ra) => {
                        let mut sc = [0f32; 4];
                        for (v, s) in
                            sc.iter_mut()
                                .zip([&ra.r_scale, &ra.r_zp, &ra.out_scale, &ra.out_zp])
                        {
                            let i = self.int(&s.index)?;
                            *v = self.load_f(&MatRef::scalar(s.param), i, 0, 0)? as f32;
                        }
                        Some((ra.r, sc))
                    }
                    None => None,
                };
                Some((rq, mo, scale, zp, add))
            }
            None => None,
        };
        for r in 0..mm.m {
            for c in 0..mm.n {
                let mut acc = 0.0f64;
                for kk in 0..mm.k {
                    let b = match &mm.b_im2col {
                        None => self.load_f(&mm.b, bo, kk, c)?,
                        Some(v) => match v.source(kk, c) {
                            Some(i) => {
                                self.load_f(&MatRef::scalar(mm.b.param), bo + i as i64, 0, 0)?
                            }
                            None => match v.fill {
                                Some(f) => self.load_f(&MatRef::scalar(f), 0, 0, 0)?,
                                None => 0.0,
                            },
                        },
                    };
                    acc += self.load_f(&mm.a, ao, r, kk)? * b;
                }
                let mut v = mm.alpha as f64 * acc;
                if mm.beta != 0.0 {
                    v += mm.beta as f64 * self.load_f(&mm.c, co, r, c)?;
                }
                if let Some(b) = &mm.bias {
                    v += self.load_f(b, bias_o, r, c)?;
                }
                v = mm.act.apply(v);
                let i = co + r as i64 * mm.c.row_stride + c as i64 * mm.c.col_stride;
                let (s, i) = self.slot(mm.c.param, i)?;
                if let Some((rq, mo, scale, zp, add)) = &rq {
                    // The `i32` result the unfused contraction would have stored, then the
                    // requantization.
                    let acc = match cast(DType::I32, Val::F(v)) {
                        Val::I(a) => a,
                        _ => 0,
                    };
                    let mult = self.load_f(&rq.mult, *mo, r, c)? as f32;
                    let shift = match &rq.shift {
                        Some(sv) => {
                            let o = self.int(&sv.offset)?;
                            Some(self.load_f(sv, o, r, c)? as f32)
                        }
                        None => None,
                    };
                    let signed = cty.is_signed_int();
                    let mut q = Requant::apply(acc as i32, mult, shift, *scale, *zp, signed);
                    if let Some((rp, [rs, rz, os, oz])) = add {
                        let ci = co + r as i64 * mm.c.row_stride + c as i64 * mm.c.col_stride;
                        let mut rv = self.load_f(&MatRef::scalar(*rp), ci, 0, 0)? as f32;
                        if self.k.params[rp.0 as usize].dtype == DType::F32 {
                            let zsigned = mm_rzp_signed(self.k, &rq.residual);
                            rv = RequantAdd::quantize_residual(rv, *rs, *rz, zsigned);
                        }
                        q = RequantAdd::apply(q, *scale, *zp, rv, *rs, *rz, (*os, *oz), signed);
                    }
                    if let Some(t) = rq.table {
                        let at = Requant::table_index(q, signed);
                        q = self.load_f(&MatRef::scalar(t), at, 0, 0)? as i64;
                    }
                    self.store[s][i] = Val::I(q);
                    continue;
                }
                // Integer (and bool) results convert like a cast: a float accumulator held
                // as `Val::F` in an integer buffer would read back as 0.
                self.store[s][i] = if cty.is_float() {
                    round(cty, Val::F(v))
                } else {
                    cast(cty, Val::F(v))
                };
            }
        }
        // The fused elementwise tail, once C is final, element by element.
        if let Some(t) = &mm.tail {
            for r in 0..mm.m {
                for c in 0..mm.n {
                    self.vars[t.row.0 as usize] = Some(Val::I(r as i64));
                    self.vars[t.col.0 as usize] = Some(Val::I(c as i64));
                    self.block(&t.body)?;
                }
            }
        }
        Ok(())
    }

    /// [`Softmax`]'s definition, operation by operation in `f32` (`exp` as `UnOp::Exp`). Each
    /// row is read whole before it is written, so `out` on `x`'s storage computes the same.
    fn softmax(&mut self, sm: &Softmax) -> Result<(), EvalError> {
        let f = |cx: &Self, p: ParamId, i: i64| -> Result<f64, EvalError> {
            let (s, i) = cx.slot(p, i)?;
            Ok(match cx.store[s][i] {
                Val::F(f) => f,
                Val::I(i) => i as f64,
                Val::B(b) => b as i64 as f64,
            })
        };
        let bin = |o: BinOp, a: f64, b: f64| match round(
            DType::F32,
            binary(o, DType::F32, Val::F(a), Val::F(b)),
        ) {
            Val::F(v) => v,
            _ => f64::NAN,
        };
        let exp = |a: f64| match round(DType::F32, unary(UnOp::Exp, Val::F(a))) {
            Val::F(v) => v,
            _ => f64::NAN,
        };
        let scale = match sm.scale {
            Some(EpArg::Scalar(p)) => Some(f(self, p, 0)?),
            Some(EpArg::Lit(v)) => Some(v as f64),
            // The verifier refuses it: a softmax has no channels.
            Some(EpArg::Channel(p)) => Some(f(self, p, 0)?),
            None => None,
        };
        let mut v = vec![0.0f64; sm.len];
        for r in 0..sm.rows {
            let base = (r * sm.len) as i64;
            let moff = sm.mask.as_ref().map(|m| m.row_offset(r));
            for (c, vc) in v.iter_mut().enumerate() {
                let mut a = f(self, sm.x, base + c as i64)?;
                if let Some(s) = scale {
                    a = bin(BinOp::Mul, a, s);
                }
                if let (Some(m), Some(o)) = (&sm.mask, moff) {
                    a = bin(BinOp::Add, a, f(self, m.param, o + c as i64)?);
                }
                *vc = a;
            }
            let mx = v
                .iter()
                .fold(f64::NEG_INFINITY, |m, &a| bin(BinOp::Max, m, a));
            let mut sum = 0.0;
            for vc in v.iter_mut() {
                *vc = exp(bin(BinOp::Sub, *vc, mx));
                sum = bin(BinOp::Add, sum, *vc);
            }
            let inv = bin(BinOp::Div, 1.0, sum);
            for (c, &e) in v.iter().enumerate() {
                let (si, i) = self.slot(sm.out, base + c as i64)?;
                self.store[si][i] = Val::F(bin(BinOp::Mul, e, inv));
            }
        }
        Ok(())
    }

    /// [`Depthwise`]'s definition, operation by operation in `f32`.
    fn depthwise(&mut self, dw: &Depthwise) -> Result<(), EvalError> {
        let f = |cx: &Self, p: ParamId, i: usize| -> Result<f64, EvalError> {
            let (s, i) = cx.slot(p, i as i64)?;
            Ok(match cx.store[s][i] {
                Val::F(f) => f,
                Val::I(i) => i as f64,
                Val::B(b) => b as i64 as f64,
            })
        };
        let op = |o: BinOp, a: f64, b: f64| match round(
            DType::F32,
            binary(o, DType::F32, Val::F(a), Val::F(b)),
        ) {
            Val::F(v) => v,
            _ => f64::NAN,
        };
        // The epilogue's scalars, read once (per-channel ones per channel, below).
        let mut args = Vec::with_capacity(dw.epilogue.len());
        for e in &dw.epilogue {
            args.push(match e {
                EpOp::Bin {
                    arg: EpArg::Scalar(p),
                    ..
                } => f(self, *p, 0)?,
                EpOp::Bin {
                    arg: EpArg::Lit(v), ..
                } => *v as f64,
                _ => 0.0,
            });
        }
        let x_zero = match dw.x_zero {
            Some(z) => f(self, z, 0)?,
            None => 0.0,
        };
        let out_ty = self.k.params.get(dw.out.0 as usize).map(|p| p.dtype);
        let m = dw.channels * dw.mult;
        let ([ih, iw], [oh, ow], [kh, kw]) = (dw.in_hw, dw.out_hw, dw.kernel);
        for n in 0..dw.batch {
            for mo in 0..m {
                for (e, a) in dw.epilogue.iter().zip(args.iter_mut()) {
                    if let EpOp::Bin {
                        arg: EpArg::Channel(p),
                        ..
                    } = e
                    {
                        *a = f(self, *p, mo)?;
                    }
                }
                let xp = (n * dw.channels + mo / dw.mult) * ih * iw;
                let bias = match dw.bias {
                    Some(b) => f(self, b, mo)?,
                    None => 0.0,
                };
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias;
                        for ky in 0..kh {
                            let iy =
                                (oy * dw.stride[0] + ky * dw.dilation[0]) as i64 - dw.pad[0] as i64;
                            for kx in 0..kw {
                                let ix = (ox * dw.stride[1] + kx * dw.dilation[1]) as i64
                                    - dw.pad[1] as i64;
                                let xv = if (0..ih as i64).contains(&iy)
                                    && (0..iw as i64).contains(&ix)
                                {
                                    // An 8-bit input less its zero point is exact in f32.
                                    f(self, dw.x, xp + iy as usize * iw + ix as usize)? - x_zero
                                } else {
                                    0.0
                                };
                                let wv = f(self, dw.w, (mo * kh + ky) * kw + kx)?;
                                acc = op(BinOp::Add, acc, op(BinOp::Mul, xv, wv));
                            }
                        }
                        let x = apply_epilogue(&dw.epilogue, &args, acc, &mut |p, i| {
                            f(self, p, i).ok()
                        });
                        let at = ((n * m + mo) * oh + oy) * ow + ox;
                        let (si, i) = self.slot(dw.out, at as i64)?;
                        self.store[si][i] = match out_ty {
                            Some(t) if t != DType::F32 => cast(t, Val::F(x)),
                            _ => Val::F(x),
                        };
                    }
                }
            }
        }
        Ok(())
    }

    fn expr(&mut self, e: &Expr) -> Result<Val, EvalError> {
        let ty = self.k.type_of(e);
        Ok(match e {
            Expr::Var(v) => self.vars[v.0 as usize].ok_or_else(|| EvalError::Undefined {
                kernel: self.k.name.clone(),
                var: v.0,
            })?,
            Expr::Lit(Lit::Float(_, f)) => Val::F(*f),
            Expr::Lit(Lit::Int(_, i)) => Val::I(*i),
            Expr::Lit(Lit::Bool(b)) => Val::B(*b),
            Expr::Load { param, index } => {
                let i = self.int(index)?;
                let (s, i) = self.slot(*param, i)?;
                self.store[s][i]
            }
            Expr::Unary(UnOp::Bitcast(to), a) => {
                let from = self.k.type_of(a);
                bitcast(from, *to, self.expr(a)?)
            }
            Expr::Unary(op, a) => {
                let a = self.expr(a)?;
                round(ty, unary(*op, a))
            }
            Expr::Binary(op, a, b) => {
                let aty = self.k.type_of(a);
                let (a, b) = (self.expr(a)?, self.expr(b)?);
                round(ty, binary(*op, aty, a, b))
            }
            Expr::Select { cond, then, els } => {
                let c = self.expr(cond)?;
                if truthy(c) {
                    self.expr(then)?
                } else {
                    self.expr(els)?
                }
            }
            Expr::Cast(to, a) => {
                let from = self.k.type_of(a);
                match self.expr(a)? {
                    // A u64 is held in an i64: its high bit is not a sign.
                    Val::I(i) if from == DType::U64 && to.is_float() => {
                        round(*to, Val::F(i as u64 as f64))
                    }
                    a => cast(*to, a),
                }
            }
        })
    }
}

fn truthy(v: Val) -> bool {
    match v {
        Val::B(b) => b,
        Val::I(i) => i != 0,
        Val::F(f) => f != 0.0,
    }
}

fn unary(op: UnOp, a: Val) -> Val {
    match a {
        Val::F(x) => match op {
            UnOp::Neg => Val::F(-x),
            UnOp::Abs => Val::F(x.abs()),
            UnOp::Not => Val::B(x == 0.0),
            UnOp::Sqrt => Val::F(x.sqrt()),
            UnOp::Exp => Val::F(x.exp()),
            UnOp::Log => Val::F(x.ln()),
            UnOp::Tanh => Val::F(x.tanh()),
            UnOp::Erf => Val::F(libm::erf(x)),
            UnOp::Sin => Val::F(x.sin()),
            UnOp::Cos => Val::F(x.cos()),
            UnOp::Tan => Val::F(x.tan()),
            UnOp::Asin => Val::F(x.asin()),
            UnOp::Acos => Val::F(x.acos()),
            UnOp::Atan => Val::F(x.atan()),
            UnOp::Sinh => Val::F(x.sinh()),
            UnOp::Cosh => Val::F(x.cosh()),
            UnOp::Asinh => Val::F(x.asinh()),
            UnOp::Acosh => Val::F(x.acosh()),
            UnOp::Atanh => Val::F(x.atanh()),
            UnOp::Floor => Val::F(x.floor()),
            UnOp::Ceil => Val::F(x.ceil()),
            UnOp::Round => Val::F(x.round_ties_even()),
            UnOp::IsNan => Val::B(x.is_nan()),
            UnOp::IsInf => Val::B(x.is_infinite()),
            // Evaluated by `bitcast`, which knows the operand's type.
            UnOp::Bitcast(_) => Val::F(x),
        },
        Val::I(x) => match op {
            UnOp::Neg => Val::I(x.wrapping_neg()),
            UnOp::Abs => Val::I(x.wrapping_abs()),
            UnOp::Not => Val::I(!x),
            UnOp::IsNan | UnOp::IsInf => Val::B(false),
            // Rounding ops are the identity on integers; the others are not lowered for
            // integers (lowering casts to float first).
            _ => Val::I(x),
        },
        Val::B(x) => match op {
            UnOp::Not => Val::B(!x),
            _ => Val::B(x),
        },
    }
}

fn binary(op: BinOp, ty: DType, a: Val, b: Val) -> Val {
    match (a, b) {
        (Val::F(x), Val::F(y)) => match op {
            BinOp::Add => Val::F(x + y),
            BinOp::Sub => Val::F(x - y),
            BinOp::Mul => Val::F(x * y),
            BinOp::Div => Val::F(x / y),
            BinOp::Rem => Val::F(x % y),
            BinOp::Max => Val::F(if x.is_nan() || y.is_nan() {
                f64::NAN
            } else {
                x.max(y)
            }),
            BinOp::Min => Val::F(if x.is_nan() || y.is_nan() {
                f64::NAN
            } else {
                x.min(y)
            }),
            BinOp::Pow => Val::F(pow(ty, x, y)),
            BinOp::Eq => Val::B(x == y),
            BinOp::Ne => Val::B(x != y),
            BinOp::Lt => Val::B(x < y),
            BinOp::Le => Val::B(x <= y),
            BinOp::Gt => Val::B(x > y),
            BinOp::Ge => Val::B(x >= y),
            BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Shl | BinOp::Shr => Val::F(f64::NAN),
        },
        (Val::I(x), Val::I(y)) => {
            let unsigned = !ty.is_signed_int();
            match op {
                BinOp::Add => Val::I(x.wrapping_add(y)),
                BinOp::Sub => Val::I(x.wrapping_sub(y)),
                BinOp::Mul => Val::I(x.wrapping_mul(y)),
                BinOp::Div => Val::I(if y == 0 { 0 } else { x.wrapping_div(y) }),
                BinOp::Rem => Val::I(if y == 0 { 0 } else { x.wrapping_rem(y) }),
                BinOp::Max => Val::I(x.max(y)),
                BinOp::Min => Val::I(x.min(y)),
                BinOp::Pow => Val::I(if y < 0 {
                    0
                } else {
                    x.wrapping_pow(y.min(u32::MAX as i64) as u32)
                }),
                BinOp::And => Val::I(x & y),
                BinOp::Or => Val::I(x | y),
                BinOp::Xor => Val::I(x ^ y),
                BinOp::Shl => Val::I(if (0..64).contains(&y) { x << y } else { 0 }),
                BinOp::Shr if unsigned => {
                    let bits = ty.bits().unwrap_or(64) as i64;
                    let ux = (x as u64) & mask(bits);
                    Val::I(if (0..64).contains(&y) {
                        (ux >> y) as i64
                    } else {
                        0
                    })
                }
                BinOp::Shr => Val::I(if (0..64).contains(&y) {
                    x >> y
                } else if x < 0 {
                    -1
                } else {
                    0
                }),
                BinOp::Eq => Val::B(x == y),
                BinOp::Ne => Val::B(x != y),
                BinOp::Lt => Val::B(x < y),
                BinOp::Le => Val::B(x <= y),
                BinOp::Gt => Val::B(x > y),
                BinOp::Ge => Val::B(x >= y),
            }
        }
        (Val::B(x), Val::B(y)) => match op {
            BinOp::And | BinOp::Min | BinOp::Mul => Val::B(x & y),
            BinOp::Or | BinOp::Max | BinOp::Add => Val::B(x | y),
            BinOp::Xor | BinOp::Ne => Val::B(x ^ y),
            BinOp::Eq => Val::B(x == y),
            BinOp::Lt => Val::B(!x & y),
            BinOp::Le => Val::B(!x | y),
            BinOp::Gt => Val::B(x & !y),
            BinOp::Ge => Val::B(x | !y),
            _ => Val::B(false),
        },
        // Ill-typed; the verifier rejects it. Produce something deterministic.
        _ => Val::F(f64::NAN),
    }
}

/// `pow` in the precision of the declared type, as the C library computes it.
fn pow(ty: DType, x: f64, y: f64) -> f64 {
    if ty == DType::F64 {
        x.powf(y)
    } else {
        (x as f32).powf(y as f32) as f64
    }
}

fn mask(bits: i64) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

fn zero(ty: DType) -> Val {
    if ty.is_float() {
        Val::F(0.0)
    } else if ty == DType::Bool {
        Val::B(false)
    } else {
        Val::I(0)
    }
}

/// Rounds a widened value to the declared type `ty`.
fn round(ty: DType, v: Val) -> Val {
    match (ty, v) {
        (DType::F32, Val::F(f)) => Val::F(f as f32 as f64),
        (DType::F16, Val::F(f)) => Val::F(f16::from_f64(f).to_f64()),
        (DType::BF16, Val::F(f)) => Val::F(bf16::from_f64(f).to_f64()),
        (t, Val::I(i)) if t.is_int() => Val::I(wrap(t, i)),
        _ => v,
    }
}

/// Wraps an integer to the range of `ty` (two's complement).
fn wrap(ty: DType, i: i64) -> i64 {
    match ty {
        DType::I8 => i as i8 as i64,
        DType::U8 => i as u8 as i64,
        DType::I16 => i as i16 as i64,
        DType::U16 => i as u16 as i64,
        DType::I32 => i as i32 as i64,
        DType::U32 => i as u32 as i64,
        _ => i,
    }
}

fn cast(to: DType, v: Val) -> Val {
    match v {
        Val::F(f) if to.is_float() => round(to, Val::F(f)),
        Val::F(f) if to == DType::Bool => Val::B(f != 0.0),
        Val::F(f) => {
            // Saturating truncation, NaN → 0: what Rust's `as` does, and what backends emit.
            let i = match to {
                DType::I8 => f as i8 as i64,
                DType::U8 => f as u8 as i64,
                DType::I16 => f as i16 as i64,
                DType::U16 => f as u16 as i64,
                DType::I32 => f as i32 as i64,
                DType::U32 => f as u32 as i64,
                DType::U64 => f as u64 as i64,
                _ => f as i64,
            };
            Val::I(i)
        }
        Val::I(i) if to.is_float() => round(to, Val::F(i as f64)),
        Val::I(i) if to == DType::Bool => Val::B(i != 0),
        Val::I(i) => Val::I(wrap(to, i)),
        Val::B(b) if to.is_float() => Val::F(b as i64 as f64),
        Val::B(b) if to == DType::Bool => Val::B(b),
        Val::B(b) => Val::I(b as i64),
    }
}

/// `UnOp::Bitcast`: the bits of `v` (of type `from`) as `to` (see the op's semantics).
fn bitcast(from: DType, to: DType, v: Val) -> Val {
    let b: u64 = match (from, v) {
        (DType::F32, Val::F(f)) => u64::from((f as f32).to_bits()),
        (_, Val::F(f)) => f.to_bits(),
        (_, Val::I(i)) => i as u64,
        (_, Val::B(b)) => b as u64,
    };
    match to {
        DType::F32 => Val::F(f64::from(f32::from_bits(b as u32))),
        DType::F64 => Val::F(f64::from_bits(b)),
        t if t.is_storage_only() => Val::I((b & mask(t.bits().unwrap_or(8) as i64)) as i64),
        t => Val::I(wrap(t, b as i64)),
    }
}

/// The codes of a storage tensor, one per element (the evaluator's values of storage types).
fn codes(t: &Tensor) -> Option<Vec<u8>> {
    let bits = t.dtype().bits()?;
    let bytes = t.to_le_bytes().ok()?;
    let per = 8 / bits;
    let m = ((1u16 << bits) - 1) as u8;
    Some(
        (0..t.len())
            .map(|i| (bytes[i / per] >> ((i % per) * bits)) & m)
            .collect(),
    )
}

/// A tensor's elements as widened values.
pub fn to_vals(t: &Tensor) -> Result<Vec<Val>, EvalError> {
    let ty = t.dtype();
    let bad = |_| EvalError::Dtype(ty.name().to_string());
    if ty.is_storage_only() {
        let c = codes(t).ok_or_else(|| EvalError::Dtype(ty.name().to_string()))?;
        Ok(c.into_iter().map(|c| Val::I(c.into())).collect())
    } else if ty.is_float() {
        Ok(t.to_f64_vec()
            .map_err(bad)?
            .into_iter()
            .map(Val::F)
            .collect())
    } else if ty == DType::Bool {
        Ok(t.to_i64_vec()
            .map_err(bad)?
            .into_iter()
            .map(|i| Val::B(i != 0))
            .collect())
    } else if ty.is_int() && !ty.is_storage_only() {
        Ok(t.to_i64_vec()
            .map_err(bad)?
            .into_iter()
            .map(Val::I)
            .collect())
    } else {
        Err(EvalError::Dtype(ty.name().to_string()))
    }
}

/// Widened values back into a tensor of `dtype` and `shape`.
pub fn from_vals(dtype: DType, shape: &[usize], vals: &[Val]) -> Result<Tensor, EvalError> {
    let bad = |_| EvalError::Dtype(dtype.name().to_string());
    if let Some(bits) = dtype.bits().filter(|_| dtype.is_storage_only()) {
        // Packed as ONNX stores them: the first code in the lowest bits.
        let per = 8 / bits;
        let mut bytes = vec![0u8; vals.len().div_ceil(per)];
        for (i, v) in vals.iter().enumerate() {
            let c = if let Val::I(c) = v { *c as u8 } else { 0 };
            bytes[i / per] |= (c & ((1u16 << bits) - 1) as u8) << ((i % per) * bits);
        }
        Tensor::from_le_bytes(dtype, shape, &bytes).map_err(bad)
    } else if dtype.is_float() {
        let v: Vec<f64> = vals
            .iter()
            .map(|v| if let Val::F(f) = v { *f } else { f64::NAN })
            .collect();
        Tensor::from_vec(shape, v)
            .and_then(|t| t.cast(dtype))
            .map_err(bad)
    } else if dtype == DType::Bool {
        let v: Vec<bool> = vals.iter().map(|v| truthy(*v)).collect();
        Tensor::from_vec(shape, v).map_err(bad)
    } else {
        let v: Vec<i64> = vals
            .iter()
            .map(|v| if let Val::I(i) = v { *i } else { 0 })
            .collect();
        Tensor::from_vec(shape, v)
            .and_then(|t| t.cast(dtype))
            .map_err(bad)
    }
}

/// The value a depthwise epilogue makes of the accumulator `acc`: the operations in order, each
/// in `f32` as [`EpOp`] defines it; `args[i]` is operation `i`'s operand (0 for those without
/// one), `table(p, i)` element `i` of table parameter `p` (NaN when it has none).
pub(crate) fn apply_epilogue(
    ops: &[EpOp],
    args: &[f64],
    acc: f64,
    table: &mut dyn FnMut(ParamId, usize) -> Option<f64>,
) -> f64 {
    let op = |o: BinOp, a: f64, b: f64| match round(
        DType::F32,
        binary(o, DType::F32, Val::F(a), Val::F(b)),
    ) {
        Val::F(v) => v,
        _ => f64::NAN,
    };
    let (mut x, mut s) = (acc, acc);
    for (e, &a) in ops.iter().zip(args) {
        match *e {
            EpOp::Bin {
                op: o, arg_first, ..
            } => x = if arg_first { op(o, a, x) } else { op(o, x, a) },
            EpOp::Save => s = x,
            EpOp::Combine { op: o, saved_first } => {
                x = if saved_first {
                    op(o, s, x)
                } else {
                    op(o, x, s)
                }
            }
            EpOp::Sigmoid => {
                let e = match round(DType::F32, unary(UnOp::Exp, unary(UnOp::Neg, Val::F(x)))) {
                    Val::F(v) => v,
                    _ => f64::NAN,
                };
                x = op(BinOp::Div, 1.0, op(BinOp::Add, 1.0, e));
            }
            EpOp::Round => x = x.round_ties_even(),
            EpOp::Narrow(t) => {
                x = match cast(DType::F32, cast(t, Val::F(x))) {
                    Val::F(v) => v,
                    _ => f64::NAN,
                }
            }
            EpOp::Table { table: p, signed } => {
                let i = x + if signed { 128.0 } else { 0.0 };
                x = if (0.0..256.0).contains(&i) {
                    table(p, i as usize).unwrap_or(f64::NAN)
                } else {
                    f64::NAN
                };
            }
        }
    }
    x
}

/// Whether a requantization's residual zero point is `i8` (an `f32` residual is quantized to
/// that type first).
fn mm_rzp_signed(k: &Kernel, ra: &Option<Box<RequantAdd>>) -> bool {
    ra.as_ref()
        .is_some_and(|ra| k.params[ra.r_zp.param.0 as usize].dtype == DType::I8)
}
