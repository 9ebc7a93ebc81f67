//! Import of the optimizers of domain `ai.onnx.preview.training` (Adagrad, Momentum, Adam).
//!
//! Each is one iteration of an update formula applied independently to several tensors: inputs
//! `R` (learning rate) and `T` (update count, i64), both scalars, then the tensors grouped by
//! role (`X1..Xn, G1..Gn, ...`); outputs grouped by role the same way. Every formula is
//! elementwise, so it is imported as the spec's formula written in `ew` ops: the coefficients
//! that depend only on `R` and `T` become a few scalar nodes shared by all tensors, and the
//! optimizer, the interpreter and every backend then treat the update as ordinary elementwise
//! code (fused into one kernel per tensor on the CPU).

use crate::cx::{NodeCx, NodeError, Registry, invalid};
use mlc_ir::ops::EwOp;
use mlc_ir::{DType, Op, Tensor, ValueId};

const DOMAIN: &str = "ai.onnx.preview.training";

pub fn register(r: &mut Registry) {
    r.add(DOMAIN, "Adagrad", adagrad);
    r.add(DOMAIN, "Momentum", momentum);
    r.add(DOMAIN, "Adam", adam);
}

fn ew(cx: &mut NodeCx, op: EwOp, inputs: Vec<ValueId>) -> Result<ValueId, NodeError> {
    cx.emit1(Op::Ew(op), inputs)
}

fn scalar(cx: &mut NodeCx, v: f64, dtype: DType) -> Result<ValueId, NodeError> {
    Ok(cx.constant(Tensor::scalar(v).cast(dtype)?))
}

/// `a * b`, `a + b`, ... in one call each, to keep the formulas below readable.
fn mul(cx: &mut NodeCx, a: ValueId, b: ValueId) -> Result<ValueId, NodeError> {
    ew(cx, EwOp::Mul, vec![a, b])
}

fn add(cx: &mut NodeCx, a: ValueId, b: ValueId) -> Result<ValueId, NodeError> {
    ew(cx, EwOp::Add, vec![a, b])
}

fn sub(cx: &mut NodeCx, a: ValueId, b: ValueId) -> Result<ValueId, NodeError> {
    ew(cx, EwOp::Sub, vec![a, b])
}

fn div(cx: &mut NodeCx, a: ValueId, b: ValueId) -> Result<ValueId, NodeError> {
    ew(cx, EwOp::Div, vec![a, b])
}

/// `v` converted to `dtype` (nothing emitted when it already has it).
fn cast(cx: &mut NodeCx, v: ValueId, dtype: DType) -> Result<ValueId, NodeError> {
    if cx.ty(v).dtype == dtype {
        return Ok(v);
    }
    ew(cx, EwOp::Cast { to: dtype }, vec![v])
}

/// The operands shared by every optimizer: `R` and `T` checked to be scalars of a float and an
/// integer type, and for each optimized tensor its `roles` inputs (`[X, G, ...]`), gathered
/// from the groups that follow `R` and `T`.
struct Operands {
    r: ValueId,
    t: ValueId,
    tensors: Vec<Vec<ValueId>>,
}

fn operands(cx: &NodeCx, roles: usize, outputs_per_tensor: usize) -> Result<Operands, NodeError> {
    let op = cx.op_type;
    let (r, t) = (cx.input(0)?, cx.input(1)?);
    let (tr, tt) = (cx.ty(r), cx.ty(t));
    if !tr.dtype.is_float() || tr.rank() != 0 {
        return Err(invalid(format!(
            "{op}: the learning rate R must be a float scalar, found {tr}"
        )));
    }
    if !tt.dtype.is_int() || tt.rank() != 0 {
        return Err(invalid(format!(
            "{op}: the update count T must be an integer scalar, found {tt}"
        )));
    }
    let rest = cx.n_inputs().saturating_sub(2);
    if rest == 0 || !rest.is_multiple_of(roles) {
        return Err(invalid(format!(
            "{op}: expected R, T and {roles} groups of tensors, found {} inputs",
            cx.n_inputs()
        )));
    }
    let n = rest / roles;
    if cx.n_outputs != outputs_per_tensor * n {
        return Err(invalid(format!(
            "{op}: {n} optimized tensors need {} outputs, found {}",
            outputs_per_tensor * n,
            cx.n_outputs
        )));
    }
    let tensors = (0..n)
        .map(|i| (0..roles).map(|g| cx.input(2 + g * n + i)).collect())
        .collect::<Result<Vec<Vec<ValueId>>, _>>()?;
    for (i, ins) in tensors.iter().enumerate() {
        let x = cx.ty(ins[0]);
        if !x.dtype.is_float() {
            return Err(invalid(format!(
                "{op}: optimized tensor {i} must be a float tensor, found {x}"
            )));
        }
        for &other in &ins[1..] {
            let y = cx.ty(other);
            if y.dtype != x.dtype || y.rank() != x.rank() {
                return Err(invalid(format!(
                    "{op}: the tensors of optimized tensor {i} differ: {x} and {y}"
                )));
            }
        }
    }
    Ok(Operands { r, t, tensors })
}

/// `T > 0` as a bool scalar.
fn t_positive(cx: &mut NodeCx, t: ValueId) -> Result<ValueId, NodeError> {
    let zero = cx.constant(Tensor::scalar(0i64).cast(cx.ty(t).dtype)?);
    ew(cx, EwOp::Greater, vec![t, zero])
}

/// `norm_coefficient * X + G`, the gradient with L2 regularization.
fn regularized(
    cx: &mut NodeCx,
    x: ValueId,
    g: ValueId,
    norm_coefficient: f32,
) -> Result<ValueId, NodeError> {
    if norm_coefficient == 0.0 {
        return Ok(g);
    }
    let dtype = cx.ty(x).dtype;
    let c = scalar(cx, norm_coefficient as f64, dtype)?;
    let cx_ = mul(cx, c, x)?;
    add(cx, cx_, g)
}

/// Adagrad: `r = R / (1 + T * decay_factor)`, `G' = norm_coefficient * X + G`,
/// `H_new = H + G' * G'`, `X_new = X - r * G' / (sqrt(H_new) + epsilon)`.
fn adagrad(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let decay = cx.attr_float("decay_factor", 0.0)?;
    let epsilon = cx.attr_float("epsilon", 0.0)?;
    let norm = cx.attr_float("norm_coefficient", 0.0)?;
    let Operands { r, t, tensors } = operands(cx, 3, 2)?;
    let rd = cx.ty(r).dtype;
    let tf = cast(cx, t, rd)?;
    let decay_c = scalar(cx, decay as f64, rd)?;
    let one = scalar(cx, 1.0, rd)?;
    let td = mul(cx, tf, decay_c)?;
    let denom = add(cx, one, td)?;
    let rate = div(cx, r, denom)?;
    let (mut xs, mut hs) = (vec![], vec![]);
    for ins in &tensors {
        let (x, g, h) = (ins[0], ins[1], ins[2]);
        let dtype = cx.ty(x).dtype;
        let gr = regularized(cx, x, g, norm)?;
        let g2 = mul(cx, gr, gr)?;
        let h_new = add(cx, h, g2)?;
        let root = ew(cx, EwOp::Sqrt, vec![h_new])?;
        let eps = scalar(cx, epsilon as f64, dtype)?;
        let h_adaptive = add(cx, root, eps)?;
        let rate = cast(cx, rate, dtype)?;
        let step = mul(cx, rate, gr)?;
        let step = div(cx, step, h_adaptive)?;
        xs.push(sub(cx, x, step)?);
        hs.push(h_new);
    }
    xs.extend(hs);
    Ok(xs)
}

/// Momentum: `G' = norm_coefficient * X + G`, `beta' = T > 0 ? beta : 1`,
/// `V_new = alpha * V + beta' * G'`; standard: `X_new = X - R * V_new`, Nesterov:
/// `X_new = X - R * (G' + alpha * V_new)`.
fn momentum(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let required = |cx: &NodeCx, name: &str| {
        cx.attr_float_opt(name)?
            .ok_or_else(|| invalid(format!("Momentum: attribute {name} is required")))
    };
    let alpha = required(cx, "alpha")?;
    let beta = required(cx, "beta")?;
    let norm = required(cx, "norm_coefficient")?;
    let nesterov = match cx.attr_str_opt("mode")?.as_deref() {
        Some("standard") => false,
        Some("nesterov") => true,
        Some(m) => return Err(invalid(format!("Momentum: unknown mode {m:?}"))),
        None => return Err(invalid("Momentum: attribute mode is required")),
    };
    let Operands { r, t, tensors } = operands(cx, 3, 2)?;
    let rd = cx.ty(r).dtype;
    let first = t_positive(cx, t)?;
    let beta_c = scalar(cx, beta as f64, rd)?;
    let one = scalar(cx, 1.0, rd)?;
    let beta_adj = ew(cx, EwOp::Where, vec![first, beta_c, one])?;
    let (mut xs, mut vs) = (vec![], vec![]);
    for ins in &tensors {
        let (x, g, v) = (ins[0], ins[1], ins[2]);
        let dtype = cx.ty(x).dtype;
        let gr = regularized(cx, x, g, norm)?;
        let alpha_c = scalar(cx, alpha as f64, dtype)?;
        let av = mul(cx, alpha_c, v)?;
        let b = cast(cx, beta_adj, dtype)?;
        let bg = mul(cx, b, gr)?;
        let v_new = add(cx, av, bg)?;
        let dir = if nesterov {
            let av_new = mul(cx, alpha_c, v_new)?;
            add(cx, gr, av_new)?
        } else {
            v_new
        };
        let rate = cast(cx, r, dtype)?;
        let step = mul(cx, rate, dir)?;
        xs.push(sub(cx, x, step)?);
        vs.push(v_new);
    }
    xs.extend(vs);
    Ok(xs)
}

/// Adam: `G' = norm_coefficient * X + G`, `V_new = alpha * V + (1 - alpha) * G'`,
/// `H_new = beta * H + (1 - beta) * G' * G'`,
/// `R' = T > 0 ? R * sqrt(1 - beta^T) / (1 - alpha^T) : R`,
/// `X_new = (1 - norm_coefficient_post) * (X - R' * V_new / (sqrt(H_new) + epsilon))`.
fn adam(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let alpha = cx.attr_float("alpha", 0.9)?;
    let beta = cx.attr_float("beta", 0.999)?;
    let epsilon = cx.attr_float("epsilon", 1e-6)?;
    let norm = cx.attr_float("norm_coefficient", 0.0)?;
    let norm_post = cx.attr_float("norm_coefficient_post", 0.0)?;
    let Operands { r, t, tensors } = operands(cx, 4, 3)?;
    let rd = cx.ty(r).dtype;
    let first = t_positive(cx, t)?;
    let tf = cast(cx, t, rd)?;
    let one = scalar(cx, 1.0, rd)?;
    let alpha_c = scalar(cx, alpha as f64, rd)?;
    let beta_c = scalar(cx, beta as f64, rd)?;
    let alpha_t = ew(cx, EwOp::Pow, vec![alpha_c, tf])?;
    let beta_t = ew(cx, EwOp::Pow, vec![beta_c, tf])?;
    let num = sub(cx, one, beta_t)?;
    let num = ew(cx, EwOp::Sqrt, vec![num])?;
    let den = sub(cx, one, alpha_t)?;
    let corr = div(cx, num, den)?;
    let corrected = mul(cx, r, corr)?;
    // At T = 0 the correction is 0/0; the spec uses R unchanged there.
    let rate = ew(cx, EwOp::Where, vec![first, corrected, r])?;
    let (mut xs, mut vs, mut hs) = (vec![], vec![], vec![]);
    for ins in &tensors {
        let (x, g, v, h) = (ins[0], ins[1], ins[2], ins[3]);
        let dtype = cx.ty(x).dtype;
        let gr = regularized(cx, x, g, norm)?;
        let a = scalar(cx, alpha as f64, dtype)?;
        let a1 = scalar(cx, 1.0 - alpha as f64, dtype)?;
        let b = scalar(cx, beta as f64, dtype)?;
        let b1 = scalar(cx, 1.0 - beta as f64, dtype)?;
        let av = mul(cx, a, v)?;
        let ag = mul(cx, a1, gr)?;
        let v_new = add(cx, av, ag)?;
        let bh = mul(cx, b, h)?;
        let g2 = mul(cx, gr, gr)?;
        let bg = mul(cx, b1, g2)?;
        let h_new = add(cx, bh, bg)?;
        let root = ew(cx, EwOp::Sqrt, vec![h_new])?;
        let eps = scalar(cx, epsilon as f64, dtype)?;
        let h_sqrt = add(cx, root, eps)?;
        let rate = cast(cx, rate, dtype)?;
        let step = mul(cx, rate, v_new)?;
        let step = div(cx, step, h_sqrt)?;
        let mut x_new = sub(cx, x, step)?;
        if norm_post != 0.0 {
            let keep = scalar(cx, 1.0 - norm_post as f64, dtype)?;
            x_new = mul(cx, keep, x_new)?;
        }
        xs.push(x_new);
        vs.push(v_new);
        hs.push(h_new);
    }
    xs.extend(vs);
    xs.extend(hs);
    Ok(xs)
}
