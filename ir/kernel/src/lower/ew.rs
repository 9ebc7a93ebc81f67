//! Elementwise ops, and composite nodes whose bodies are elementwise, as one loop nest over
//! the output with broadcasting folded into the load indices.
//!
//! Activations are expanded into the kernel IR's few primitives (`exp`, `erf`, `tanh`,
//! `max`…), so every backend implements a dozen scalar ops, not ONNX's seventy. Half-precision
//! math is done in `f32` and rounded once at the end, as every CPU backend must anyway.

use super::{Cx, Fail, KernelBuilder, bcast_index, cast, kernel_name, loop_nest, unsupported};
use crate::kernel::*;
use mlc_ir::ops::ew::GeluApprox;
use mlc_ir::{DType, Graph, Node, Op, ValueId, ops::EwOp};

pub(super) fn lower(cx: &mut Cx, node: &Node, op: &EwOp) -> Result<(), Fail> {
    let out_v = node.outputs[0];
    let out_shape = cx.shape(out_v)?;
    let out = cx.new_buffer(out_v, BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let mut inputs = Vec::new();
    for v in node.inputs.iter() {
        inputs.push(match v {
            Some(v) => Some((cx.buf(*v)?, cx.shape(*v)?, cx.dtype(*v))),
            None => None,
        });
    }
    let out_ty = cx.dtype(out_v);
    let out_p = kb.param(&cx.p, out, Access::Write);
    let in_params: Vec<Option<ParamId>> = inputs
        .iter()
        .map(|i| {
            i.as_ref()
                .map(|(b, _, _)| kb.param(&cx.p, *b, Access::Read))
        })
        .collect();
    let mut failure = None;
    let body = loop_nest(&mut kb, &out_shape, |kb, vars| {
        let mut stmts = Vec::new();
        let mut args = Vec::new();
        for (inp, p) in inputs.iter().zip(&in_params) {
            match (inp, p) {
                (Some((_, shape, ty)), Some(p)) => {
                    let var = kb.var(*ty);
                    let index = bcast_index(shape, &out_shape, vars);
                    stmts.push(Stmt::Let {
                        var,
                        value: Expr::load(*p, index),
                    });
                    args.push(Some(Expr::var(var)));
                }
                _ => args.push(None),
            }
        }
        // The data operand's type; `where(cond, x, y)` takes it from x.
        let data = if matches!(op, EwOp::Where) { 1 } else { 0 };
        let in_ty = inputs
            .get(data)
            .and_then(|i| i.as_ref())
            .map(|i| i.2)
            .unwrap_or(out_ty);
        let value = match (cast::handles(op, in_ty, out_ty), args.first()) {
            (true, Some(Some(x))) => {
                cast::lower(op, x.clone(), in_ty, out_ty, &mut |t| kb.var(t), &mut stmts)
            }
            _ => scalar(op, &args, in_ty, out_ty),
        };
        match value {
            Ok(value) => {
                let index = bcast_index(&out_shape, &out_shape, vars);
                stmts.push(Stmt::Store {
                    param: out_p,
                    index,
                    value,
                });
            }
            Err(f) => failure = Some(f),
        }
        stmts
    });
    if let Some(f) = failure {
        return Err(f);
    }
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// Whether a composite node is one elementwise kernel: its body holds only elementwise ops and
/// scalar constants, and all its outputs have one shape (the loop nest's).
pub(super) fn fusable_body(cx: &Cx, node: &Node) -> Result<bool, Fail> {
    let Some(body) = node.regions.first() else {
        return unsupported("composite node without a body");
    };
    let out_shape = cx.shape(node.outputs[0])?;
    for &o in &node.outputs {
        if cx.shape(o)? != out_shape {
            return Ok(false);
        }
    }
    for (i, v) in node.inputs.iter().enumerate() {
        match v {
            Some(v) if cx.shape(*v)?.len() <= out_shape.len() => {}
            _ => return Ok(false),
        }
        if body.inputs.get(i).is_none() {
            return Ok(false);
        }
    }
    Ok(body.nodes.iter().all(|n| match &n.op {
        Op::Ew(op) => !matches!(op, EwOp::StringConcat),
        Op::Constant { id } => body.consts[*id as usize].len() == 1,
        _ => false,
    }))
}

/// A composite node whose body holds only elementwise ops (and scalar constants): one kernel,
/// the intermediates in registers. The caller checked [`fusable_body`].
pub(super) fn lower_composite(cx: &mut Cx, node: &Node) -> Result<(), Fail> {
    let Some(body) = node.regions.first() else {
        return unsupported("composite node without a body");
    };
    let out_shape = cx.shape(node.outputs[0])?;
    let kind = match &node.op {
        Op::Control(mlc_ir::ops::ControlOp::Composite { kind }) => kind.clone(),
        _ => String::new(),
    };
    let mut kb = KernelBuilder::new(format!(
        "fused_{}",
        kind.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    ));
    let outs: Vec<BufId> = node
        .outputs
        .iter()
        .map(|&o| cx.new_buffer(o, BufKind::Temp))
        .collect::<Result<_, _>>()?;
    let out_params: Vec<ParamId> = outs
        .iter()
        .map(|&b| kb.param(&cx.p, b, Access::Write))
        .collect();
    let mut ins = Vec::new();
    for (i, v) in node.inputs.iter().enumerate() {
        let Some(v) = v else {
            return unsupported("composite with an absent input");
        };
        let shape = cx.shape(*v)?;
        if shape.len() > out_shape.len() {
            return unsupported("composite input of higher rank than its output");
        }
        let p = kb.param(&cx.p, cx.buf(*v)?, Access::Read);
        ins.push((body.inputs[i].value, p, shape, cx.dtype(*v)));
    }
    let mut failure = None;
    let stmts = loop_nest(&mut kb, &out_shape, |kb, vars| {
        match fused_body(kb, body, &ins, &out_shape, vars, &out_params) {
            Ok(s) => s,
            Err(f) => {
                failure = Some(f);
                Vec::new()
            }
        }
    });
    if let Some(f) = failure {
        return Err(f);
    }
    kb.k.body = stmts;
    cx.launch(kb, node);
    Ok(())
}

fn fused_body(
    kb: &mut KernelBuilder,
    body: &Graph,
    ins: &[(ValueId, ParamId, Vec<usize>, DType)],
    out_shape: &[usize],
    vars: &[VarId],
    out_params: &[ParamId],
) -> Result<Vec<Stmt>, Fail> {
    let mut stmts = Vec::new();
    let mut env: Vec<Option<Expr>> = vec![None; body.values.len()];
    for (v, p, shape, ty) in ins {
        let var = kb.var(*ty);
        stmts.push(Stmt::Let {
            var,
            value: Expr::load(*p, bcast_index(shape, out_shape, vars)),
        });
        env[v.0 as usize] = Some(Expr::var(var));
    }
    body_lets(body, &mut env, &mut |t| kb.var(t), &mut stmts)?;
    for (port, &p) in body.outputs.iter().zip(out_params) {
        let Some(value) = env[port.value.0 as usize].clone() else {
            return unsupported("composite output not computed by its body");
        };
        stmts.push(Stmt::Store {
            param: p,
            index: bcast_index(out_shape, out_shape, vars),
            value,
        });
    }
    Ok(stmts)
}

/// The statements computing every node of an elementwise `body` (ops and scalar constants),
/// one `let` each, from `env` (the expressions of the values already known: the body's
/// inputs), which receives each node's variable. `var` makes fresh variables.
pub(super) fn body_lets(
    body: &Graph,
    env: &mut [Option<Expr>],
    var: &mut dyn FnMut(DType) -> VarId,
    stmts: &mut Vec<Stmt>,
) -> Result<(), Fail> {
    for n in &body.nodes {
        let out_v = n.outputs[0];
        let out_ty = body.ty(out_v).dtype;
        let value = match &n.op {
            Op::Constant { id } => literal(&body.consts[*id as usize])?,
            Op::Ew(op) => {
                let args: Vec<Option<Expr>> = n
                    .inputs
                    .iter()
                    .map(|v| v.and_then(|v| env[v.0 as usize].clone()))
                    .collect();
                let first = match op {
                    EwOp::Where => n.input(1),
                    _ => n.input(0),
                };
                let in_ty = first.map(|v| body.ty(v).dtype).unwrap_or(out_ty);
                match (cast::handles(op, in_ty, out_ty), &args[..]) {
                    (true, [Some(x)]) => cast::lower(op, x.clone(), in_ty, out_ty, var, stmts)?,
                    _ => scalar(op, &args, in_ty, out_ty)?,
                }
            }
            _ => return unsupported("composite body op"),
        };
        let v = var(out_ty);
        stmts.push(Stmt::Let { var: v, value });
        env[out_v.0 as usize] = Some(Expr::var(v));
    }
    Ok(())
}

/// A one-element constant as a literal of its type.
fn literal(t: &mlc_ir::Tensor) -> Result<Expr, Fail> {
    let ty = t.dtype();
    let bad = || Fail::Unsupported(format!("constant of type {}", ty.name()));
    Ok(Expr::Lit(if ty.is_float() && !ty.is_storage_only() {
        Lit::Float(ty, t.to_f64_vec().map_err(|_| bad())?[0])
    } else if ty == DType::Bool {
        Lit::Bool(t.to_i64_vec().map_err(|_| bad())?[0] != 0)
    } else if ty.is_int() && !ty.is_storage_only() {
        Lit::Int(ty, t.to_i64_vec().map_err(|_| bad())?[0])
    } else {
        return Err(bad());
    }))
}

/// The scalar expression of `op` applied to `args` (loaded operands; `None` for absent
/// optional inputs). `in_ty` is the type of the data operands, `out_ty` the result's.
pub(crate) fn scalar(
    op: &EwOp,
    args: &[Option<Expr>],
    in_ty: DType,
    out_ty: DType,
) -> Result<Expr, Fail> {
    let arg = |i: usize| -> Result<Expr, Fail> {
        match args.get(i) {
            Some(Some(e)) => Ok(e.clone()),
            _ => unsupported(format!("missing operand {i}")),
        }
    };
    if in_ty.is_storage_only() || out_ty.is_storage_only() || in_ty == DType::Str {
        return unsupported(format!("elementwise math on {}", in_ty.name()));
    }
    // Casts and selects move values without arithmetic: no widening needed.
    match op {
        EwOp::Cast { to } => return Ok(Expr::cast(*to, arg(0)?)),
        EwOp::Where => return Ok(Expr::select(arg(0)?, arg(1)?, arg(2)?)),
        EwOp::CastF8 { .. } | EwOp::BitCast { .. } | EwOp::StringConcat => {
            return unsupported("not lowered to kernels yet");
        }
        _ => {}
    }
    // Half floats compute in f32.
    let half = matches!(in_ty, DType::F16 | DType::BF16);
    let t = if half { DType::F32 } else { in_ty };
    let widen = |e: Expr| if half { Expr::cast(DType::F32, e) } else { e };
    let mut a: Vec<Option<Expr>> = args.iter().map(|e| e.clone().map(widen)).collect();
    a.resize(3, None);
    let x = || -> Result<Expr, Fail> {
        match &a[0] {
            Some(e) => Ok(e.clone()),
            None => unsupported("missing operand 0"),
        }
    };
    let y = || -> Result<Expr, Fail> {
        match &a[1] {
            Some(e) => Ok(e.clone()),
            None => unsupported("missing operand 1"),
        }
    };
    let float = t.is_float();
    let c = |v: f64| -> Expr {
        if float {
            Expr::float(t, if t == DType::F32 { v as f32 as f64 } else { v })
        } else {
            Expr::Lit(Lit::Int(t, v as i64))
        }
    };
    let un = |o: UnOp, e: Expr| Expr::un(o, e);
    let bin = |o: BinOp, p: Expr, q: Expr| Expr::bin(o, p, q);
    let need_float = |name: &str| -> Result<(), Fail> {
        if float {
            Ok(())
        } else {
            unsupported(format!("{name} on {}", t.name()))
        }
    };
    let sigmoid = |e: Expr| {
        bin(
            BinOp::Div,
            c(1.0),
            bin(BinOp::Add, c(1.0), un(UnOp::Exp, un(UnOp::Neg, e))),
        )
    };
    let softplus = |e: Expr| {
        bin(
            BinOp::Add,
            bin(BinOp::Max, e.clone(), c(0.0)),
            un(
                UnOp::Log,
                bin(
                    BinOp::Add,
                    c(1.0),
                    un(UnOp::Exp, un(UnOp::Neg, un(UnOp::Abs, e))),
                ),
            ),
        )
    };
    let clamp01 = |e: Expr| bin(BinOp::Max, c(0.0), bin(BinOp::Min, c(1.0), e));
    let lt0 = |e: Expr| bin(BinOp::Lt, e, c(0.0));
    let gt0 = |e: Expr| bin(BinOp::Gt, e, c(0.0));
    let libm = |o: UnOp| -> Result<Expr, Fail> {
        need_float(o.name())?;
        Ok(un(o, x()?))
    };
    use EwOp as E;
    let r = match op {
        E::Abs => un(UnOp::Abs, x()?),
        E::Neg => un(UnOp::Neg, x()?),
        E::Exp => libm(UnOp::Exp)?,
        E::Log => libm(UnOp::Log)?,
        E::Sqrt => libm(UnOp::Sqrt)?,
        E::Sin => libm(UnOp::Sin)?,
        E::Cos => libm(UnOp::Cos)?,
        E::Tan => libm(UnOp::Tan)?,
        E::Asin => libm(UnOp::Asin)?,
        E::Acos => libm(UnOp::Acos)?,
        E::Atan => libm(UnOp::Atan)?,
        E::Sinh => libm(UnOp::Sinh)?,
        E::Cosh => libm(UnOp::Cosh)?,
        E::Asinh => libm(UnOp::Asinh)?,
        E::Acosh => libm(UnOp::Acosh)?,
        E::Atanh => libm(UnOp::Atanh)?,
        E::Erf => libm(UnOp::Erf)?,
        E::Tanh => libm(UnOp::Tanh)?,
        E::Floor | E::Ceil | E::Round if !float => x()?,
        E::Floor => un(UnOp::Floor, x()?),
        E::Ceil => un(UnOp::Ceil, x()?),
        E::Round => un(UnOp::Round, x()?),
        E::Reciprocal => bin(BinOp::Div, c(1.0), x()?),
        E::Sigmoid => {
            need_float("sigmoid")?;
            sigmoid(x()?)
        }
        E::Relu => Expr::select(lt0(x()?), c(0.0), x()?),
        E::Sign if !float && !in_ty.is_signed_int() => bin(BinOp::Min, x()?, c(1.0)),
        E::Sign => Expr::select(
            gt0(x()?),
            c(1.0),
            Expr::select(lt0(x()?), c(-1.0), bin(BinOp::Mul, x()?, c(0.0))),
        ),
        E::Softplus => {
            need_float("softplus")?;
            softplus(x()?)
        }
        E::Softsign => bin(
            BinOp::Div,
            x()?,
            bin(BinOp::Add, c(1.0), un(UnOp::Abs, x()?)),
        ),
        E::Mish => {
            need_float("mish")?;
            bin(BinOp::Mul, x()?, un(UnOp::Tanh, softplus(x()?)))
        }
        E::HardSwish => bin(
            BinOp::Mul,
            x()?,
            clamp01(bin(BinOp::Add, bin(BinOp::Mul, x()?, c(1.0 / 6.0)), c(0.5))),
        ),
        E::LeakyRelu { alpha } => {
            Expr::select(gt0(x()?), x()?, bin(BinOp::Mul, x()?, c(*alpha as f64)))
        }
        E::Elu { alpha } => Expr::select(
            gt0(x()?),
            x()?,
            bin(
                BinOp::Mul,
                c(*alpha as f64),
                bin(BinOp::Sub, un(UnOp::Exp, x()?), c(1.0)),
            ),
        ),
        E::Selu { alpha, gamma } => bin(
            BinOp::Mul,
            c(*gamma as f64),
            Expr::select(
                gt0(x()?),
                x()?,
                bin(
                    BinOp::Sub,
                    bin(BinOp::Mul, c(*alpha as f64), un(UnOp::Exp, x()?)),
                    c(*alpha as f64),
                ),
            ),
        ),
        E::Celu { alpha } => {
            let al = c(*alpha as f64);
            let em1 = bin(
                BinOp::Sub,
                un(UnOp::Exp, bin(BinOp::Div, x()?, al.clone())),
                c(1.0),
            );
            bin(
                BinOp::Add,
                bin(BinOp::Max, x()?, c(0.0)),
                bin(BinOp::Min, bin(BinOp::Mul, al, em1), c(0.0)),
            )
        }
        E::HardSigmoid { alpha, beta } => clamp01(bin(
            BinOp::Add,
            bin(BinOp::Mul, c(*alpha as f64), x()?),
            c(*beta as f64),
        )),
        E::ThresholdedRelu { alpha } => {
            Expr::select(bin(BinOp::Gt, x()?, c(*alpha as f64)), x()?, c(0.0))
        }
        E::Gelu { approximate } => {
            need_float("gelu")?;
            let inner = match approximate {
                GeluApprox::None => un(
                    UnOp::Erf,
                    bin(BinOp::Mul, x()?, c(std::f64::consts::FRAC_1_SQRT_2)),
                ),
                GeluApprox::Tanh => {
                    let x3 = bin(BinOp::Mul, bin(BinOp::Mul, x()?, x()?), x()?);
                    let k = (2.0 / std::f64::consts::PI).sqrt();
                    un(
                        UnOp::Tanh,
                        bin(
                            BinOp::Mul,
                            c(k),
                            bin(BinOp::Add, x()?, bin(BinOp::Mul, c(0.044715), x3)),
                        ),
                    )
                }
            };
            bin(
                BinOp::Mul,
                bin(BinOp::Mul, c(0.5), x()?),
                bin(BinOp::Add, c(1.0), inner),
            )
        }
        E::Swish { alpha } => {
            need_float("swish")?;
            bin(
                BinOp::Mul,
                x()?,
                sigmoid(bin(BinOp::Mul, c(*alpha as f64), x()?)),
            )
        }
        E::Shrink { bias, lambd } => {
            let (b, l) = (*bias as f64, *lambd as f64);
            Expr::select(
                bin(BinOp::Lt, x()?, c(-l)),
                bin(BinOp::Add, x()?, c(b)),
                Expr::select(
                    bin(BinOp::Gt, x()?, c(l)),
                    bin(BinOp::Sub, x()?, c(b)),
                    c(0.0),
                ),
            )
        }
        E::IsNan => un(UnOp::IsNan, x()?),
        E::IsInf {
            detect_positive,
            detect_negative,
        } => {
            let inf = un(UnOp::IsInf, x()?);
            match (detect_positive, detect_negative) {
                (true, true) => inf,
                (true, false) => bin(BinOp::And, inf, gt0(x()?)),
                (false, true) => bin(BinOp::And, inf, lt0(x()?)),
                (false, false) => Expr::Lit(Lit::Bool(false)),
            }
        }
        E::Not | E::BitwiseNot => un(UnOp::Not, x()?),
        E::Add => bin(BinOp::Add, x()?, y()?),
        E::Sub => bin(BinOp::Sub, x()?, y()?),
        E::Mul => bin(BinOp::Mul, x()?, y()?),
        E::Div => bin(BinOp::Div, x()?, y()?),
        E::Pow => {
            // ONNX Pow's exponent may have another type; compute in the base's type.
            bin(BinOp::Pow, x()?, Expr::cast(t, y()?))
        }
        E::Mod { fmod: true } => bin(BinOp::Rem, x()?, y()?),
        E::Mod { fmod: false } => {
            // Python's modulo: the result takes the divisor's sign.
            let r = bin(BinOp::Rem, x()?, y()?);
            let fix = bin(
                BinOp::And,
                bin(BinOp::Ne, r.clone(), c(0.0)),
                bin(BinOp::Ne, lt0(r.clone()), lt0(y()?)),
            );
            Expr::select(fix, bin(BinOp::Add, r.clone(), y()?), r)
        }
        E::Max => bin(BinOp::Max, x()?, y()?),
        E::Min => bin(BinOp::Min, x()?, y()?),
        E::Prelu => Expr::select(lt0(x()?), bin(BinOp::Mul, x()?, y()?), x()?),
        E::ShiftLeft => bin(BinOp::Shl, x()?, y()?),
        E::ShiftRight => bin(BinOp::Shr, x()?, y()?),
        E::BitwiseAnd | E::And => bin(BinOp::And, x()?, y()?),
        E::BitwiseOr | E::Or => bin(BinOp::Or, x()?, y()?),
        E::BitwiseXor | E::Xor => bin(BinOp::Xor, x()?, y()?),
        E::Equal => bin(BinOp::Eq, x()?, y()?),
        E::Less => bin(BinOp::Lt, x()?, y()?),
        E::LessOrEqual => bin(BinOp::Le, x()?, y()?),
        E::Greater => bin(BinOp::Gt, x()?, y()?),
        E::GreaterOrEqual => bin(BinOp::Ge, x()?, y()?),
        E::Clip => {
            let mut v = x()?;
            if let Some(lo) = a[1].clone() {
                v = bin(BinOp::Max, v, lo);
            }
            if let Some(hi) = a[2].clone() {
                v = bin(BinOp::Min, v, hi);
            }
            v
        }
        other => return unsupported(format!("{other:?} is not lowered yet")),
    };
    // Results that are data (not bool) go back to the half type.
    Ok(if half && out_ty != DType::Bool {
        Expr::cast(out_ty, r)
    } else {
        r
    })
}
