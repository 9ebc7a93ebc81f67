//! A contraction whose fused tile tail is exactly GELU, sigmoid or swish (SiLU) of its result
//! (plus a broadcast bias) gets that as its epilogue activation instead: the runtime's GEMM
//! kernels then apply it 16 lanes wide while the tile is in registers, rather than calling the
//! compiled tail (4 lanes) on each finished block.
//!
//! It fires on the fused kernels [`super::fuse_tail_pair`] builds when the tail, its `let`s
//! inlined, stores `gelu(x)` at C's element index, written exactly as the lowering of
//! `ew.gelu` writes it (erf or tanh form, same operations in the same order, the same `f32`
//! constants), or `sigmoid(x)`/`swish(x)` as `ew.sigmoid`/`ew.swish` write them, where `x` is C's element, or C's element plus (either order) an `f32` operand
//! read per row, per column or as one value, and the contraction has no activation yet (nor a
//! bias, when the tail adds one). The result is then the contraction with that bias and
//! [`Activation::Gelu`]/[`Activation::GeluTanh`]/[`Activation::Sigmoid`]/[`Activation::Swish`]
//! writing the tail's output directly; C, a
//! temporary nothing else reads (the tail pass checked it), is no longer an argument.
//!
//! The activation's definition is the tail's formula, so the evaluator's result is unchanged;
//! the runtime approximates `erf`/`tanh`/`exp` with the algorithms the compiled tail used (see
//! `mlc_runtime::kernels::gemm::act`), within the same tolerance.

use super::Affine;
use mlc_ir::DType;
use mlc_kir::{Activation, BinOp, BufId, Expr, Kernel, Lit, MatRef, ParamId, Stmt, UnOp, VarId};
use std::collections::HashMap;

/// `e` is the `f32` literal `v` (as the lowering rounds it).
fn is_lit(e: &Expr, v: f64) -> bool {
    matches!(e, Expr::Lit(Lit::Float(DType::F32, x)) if *x == v as f32 as f64)
}

/// `(a, b)` when `e` is `a op b`.
fn bin(e: &Expr, op: BinOp) -> Option<(&Expr, &Expr)> {
    match e {
        Expr::Binary(o, a, b) if *o == op => Some((a, b)),
        _ => None,
    }
}

/// The activation and its argument when `e` is `ew.gelu`'s lowering of that argument:
/// `(0.5 · x) · (1 + erf(x · (1/√2)))` or
/// `(0.5 · x) · (1 + tanh(√(2/π) · (x + 0.044715 · ((x · x) · x))))`.
pub(super) fn gelu_of(e: &Expr) -> Option<(Activation, &Expr)> {
    let (half_x, one_plus) = bin(e, BinOp::Mul)?;
    let (half, x) = bin(half_x, BinOp::Mul)?;
    let (one, inner) = bin(one_plus, BinOp::Add)?;
    if !is_lit(half, 0.5) || !is_lit(one, 1.0) {
        return None;
    }
    match inner {
        Expr::Unary(UnOp::Erf, arg) => {
            let (x1, s) = bin(arg, BinOp::Mul)?;
            (x1 == x && is_lit(s, std::f64::consts::FRAC_1_SQRT_2)).then_some((Activation::Gelu, x))
        }
        Expr::Unary(UnOp::Tanh, arg) => {
            let (k, u) = bin(arg, BinOp::Mul)?;
            let (x1, cubic) = bin(u, BinOp::Add)?;
            let (c, x3) = bin(cubic, BinOp::Mul)?;
            let (xx, x2) = bin(x3, BinOp::Mul)?;
            let (x3a, x3b) = bin(xx, BinOp::Mul)?;
            let ok = is_lit(k, (2.0 / std::f64::consts::PI).sqrt())
                && is_lit(c, 0.044715)
                && [x1, x2, x3a, x3b].iter().all(|y| *y == x);
            ok.then_some((Activation::GeluTanh, x))
        }
        _ => None,
    }
}

/// The argument of `1 / (1 + exp(-arg))`, as the lowering writes a sigmoid.
fn sigmoid_arg(e: &Expr) -> Option<&Expr> {
    let (one, d) = bin(e, BinOp::Div)?;
    let (one2, ex) = bin(d, BinOp::Add)?;
    if !is_lit(one, 1.0) || !is_lit(one2, 1.0) {
        return None;
    }
    let Expr::Unary(UnOp::Exp, n) = ex else {
        return None;
    };
    match &**n {
        Expr::Unary(UnOp::Neg, arg) => Some(arg),
        _ => None,
    }
}

/// The activation and its argument when `e` is the lowering of `ew.gelu`, `ew.sigmoid` or
/// `ew.swish` (`x · sigmoid(alpha · x)`) of that argument.
pub(super) fn activation_of(e: &Expr) -> Option<(Activation, &Expr)> {
    if let Some(g) = gelu_of(e) {
        return Some(g);
    }
    if let Some(x) = sigmoid_arg(e) {
        return Some((Activation::Sigmoid, x));
    }
    let (x, s) = bin(e, BinOp::Mul)?;
    let (alpha, x1) = bin(sigmoid_arg(s)?, BinOp::Mul)?;
    match alpha {
        Expr::Lit(Lit::Float(DType::F32, a)) if x1 == x => {
            Some((Activation::Swish { alpha: *a as f32 }, x))
        }
        _ => None,
    }
}

/// `index` as `offset + row·rs + col·cs`, `(offset, rs, cs)`, when it is affine in the tail's
/// `row` and `col` only.
fn view_of(index: &Expr, row: VarId, col: VarId) -> Option<(i64, i64, i64)> {
    let a = Affine::of(index)?;
    let only = a
        .coef
        .iter()
        .all(|(v, c)| *c == 0 || *v == row || *v == col);
    only.then(|| (a.c, a.at(row), a.at(col)))
}

/// The contraction with the tail's activation, when `k` (a fused contraction with a tail, and
/// its arguments `args`) qualifies (see the module docs).
pub(super) fn tail_to_activation(k: &Kernel, args: &[BufId]) -> Option<(Kernel, Vec<BufId>)> {
    let [Stmt::Matmul(mm)] = k.body.as_slice() else {
        return None;
    };
    let tail = mm.tail.as_ref()?;
    let pty = |q: ParamId| k.params.get(q.0 as usize).map(|p| p.dtype);
    // `beta ≠ 0` would read the old C, which the rewrite replaces by the output.
    if mm.act != Activation::None
        || mm.beta != 0.0
        || mm.requant.is_some()
        || pty(mm.c.param)? != DType::F32
    {
        return None;
    }
    let (out, index, value) = super::inlined_store(&tail.body)?;
    let (act, x) = activation_of(&value)?;
    // x: C's element, or C's element plus a bias.
    let c_elem = |e: &Expr| matches!(e, Expr::Load { param, index: i } if *param == mm.c.param && **i == index);
    let bias = if c_elem(x) {
        None
    } else {
        let (a, b) = bin(x, BinOp::Add)?;
        let other = if c_elem(a) {
            b
        } else if c_elem(b) {
            a
        } else {
            return None;
        };
        let Expr::Load { param, index: bi } = other else {
            return None;
        };
        if *param == mm.c.param || *param == out || pty(*param)? != DType::F32 {
            return None;
        }
        let (o, rs, cs) = view_of(bi, tail.row, tail.col)?;
        if mm.bias.is_some() || (rs != 0 && cs != 0) {
            return None;
        }
        Some(MatRef {
            param: *param,
            offset: Expr::idx(o),
            row_stride: rs,
            col_stride: cs,
        })
    };
    let (o, rs, cs) = view_of(&index, tail.row, tail.col)?;
    if pty(out)? != DType::F32 {
        return None;
    }
    let mut new_mm = (**mm).clone();
    new_mm.tail = None;
    new_mm.act = act;
    if bias.is_some() {
        new_mm.bias = bias;
    }
    new_mm.c = MatRef {
        param: out,
        offset: Expr::idx(o),
        row_stride: rs,
        col_stride: cs,
    };
    // Keep only the parameters the contraction still uses (C, when the output is elsewhere,
    // drops out), renumbered in their order.
    let offsets = [&new_mm.a, &new_mm.b, &new_mm.c]
        .into_iter()
        .chain(new_mm.bias.as_ref())
        .map(|v| &v.offset);
    if offsets.into_iter().any(|o| !matches!(o, Expr::Lit(_))) {
        return None;
    }
    // An implicit GEMM's `B` is the image; its padding's fill is one more parameter.
    let fill = new_mm.b_im2col.as_ref().and_then(|i| i.fill);
    let mut used: Vec<ParamId> = [new_mm.a.param, new_mm.b.param, new_mm.c.param]
        .into_iter()
        .chain(new_mm.bias.as_ref().map(|b| b.param))
        .chain(fill)
        .collect();
    used.sort_by_key(|p| p.0);
    used.dedup();
    let map: HashMap<ParamId, ParamId> = used
        .iter()
        .enumerate()
        .map(|(i, &p)| (p, ParamId(i as u32)))
        .collect();
    let mut nk = Kernel::new(k.name.clone());
    nk.vars = k.vars.clone();
    nk.params = used
        .iter()
        .map(|p| k.params[p.0 as usize].clone())
        .collect();
    let new_args = used
        .iter()
        .map(|p| args.get(p.0 as usize).copied())
        .collect::<Option<Vec<_>>>()?;
    for v in [&mut new_mm.a, &mut new_mm.b, &mut new_mm.c]
        .into_iter()
        .chain(new_mm.bias.as_mut())
    {
        v.param = map[&v.param];
    }
    if let Some(f) = new_mm.b_im2col.as_mut().and_then(|i| i.fill.as_mut()) {
        *f = map[f];
    }
    nk.body = vec![Stmt::Matmul(Box::new(new_mm))];
    mlc_kir::verify_kernel(&nk).ok()?;
    Some((nk, new_args))
}

/// A tail whose last operation is an activation the runtime applies instead (the mlc_matmul
/// descriptor's `TAIL_ACT`): the tile function stores `arg`, the activation's argument, at
/// `out[offset + row·rs + col·cs]`, and the runtime applies `act` to each block it stored,
/// 16 lanes at a time where the compiled tail had 4 (GELU was 2.4 ns an element there).
/// The runtime's activations approximate `erf`/`tanh`/`exp` with the algorithms the compiled
/// tail used, within the same tolerance (as [`tail_to_activation`]'s).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TailActivation {
    pub act: Activation,
    pub arg: Expr,
    pub out: ParamId,
    pub view: (i64, i64, i64),
}

/// The [`TailActivation`] of `mm`'s tail in `k`, when its body is `let`s then one store of
/// an activation ([`activation_of`]) into an `f32` output other than C, at an index affine in
/// the tail's row and column that reaches each element of the `m×n` view once, and the
/// activation's argument does not read that output.
pub(crate) fn tail_activation(k: &Kernel, mm: &mlc_kir::Matmul) -> Option<TailActivation> {
    let tail = mm.tail.as_ref()?;
    let pty = |q: ParamId| k.params.get(q.0 as usize).map(|p| p.dtype);
    let (out, index, value) = super::inlined_store(&tail.body)?;
    let (act, arg) = activation_of(&value)?;
    if out == mm.c.param || pty(out)? != DType::F32 || reads(arg, out) {
        return None;
    }
    let (o, rs, cs) = view_of(&index, tail.row, tail.col)?;
    // The runtime's own check of the view (it refuses the call otherwise).
    let len = k.params.get(out.0 as usize)?.len as i64;
    if !mlc_runtime::cpu::abi::tail_view_ok((mm.m, mm.n), (len, o, rs, cs)) {
        return None;
    }
    Some(TailActivation {
        act,
        arg: arg.clone(),
        out,
        view: (o, rs, cs),
    })
}

/// Whether `e` loads from `p`.
fn reads(e: &Expr, p: ParamId) -> bool {
    let mut found = false;
    e.for_each_load(&mut |q, _| found |= q == p);
    found
}
