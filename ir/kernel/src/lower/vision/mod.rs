//! The vision family (`Op::Vision`) and `nn.grid_sample`: sampling and scatter-like ops as
//! gathers over their outputs.
//!
//! Each op follows its interpreter kernel (`mlc_interp`'s `ops/vision.rs` and `grid_sample`
//! in `ops/nn/resize.rs`) operation for operation: the same `f64` arithmetic in the same
//! order, so compiled results match the reference up to the final rounding to the output type.
//! Where the interpreter scatters (col2im sums overlapping blocks, deformable convolution adds
//! each tap into every output channel), the kernel gathers instead, visiting the contributions
//! of one output element in the order the interpreter adds them. Taps that the interpreter
//! skips are skipped with a `select` on the accumulator, not multiplied by zero, so an `inf`
//! or NaN beside the sampled region cannot leak in; every data-addressed load is clamped into
//! its buffer, because a backend may evaluate both arms of a `select`.

mod col2im;
mod deform_conv;
mod grid_sample;
mod roi_align;

#[cfg(test)]
mod tests;

pub(super) use grid_sample::grid_sample;

use super::{Cx, Fail, KernelBuilder, kernel_name, unsupported};
use crate::kernel::*;
use mlc_ir::ops::VisionOp;
use mlc_ir::{DType, Node, ValueId};

pub(super) fn lower(cx: &mut Cx, node: &Node, op: &VisionOp) -> Result<(), Fail> {
    match op {
        VisionOp::AffineGrid { align_corners, .. } => affine_grid(cx, node, *align_corners),
        VisionOp::RoiAlign { .. } => roi_align::roi_align(cx, node, op),
        VisionOp::Col2Im { .. } => col2im::col2im(cx, node, op),
        VisionOp::MaxUnpool { .. } => col2im::max_unpool(cx, node, op),
        VisionOp::DeformConv { .. } => deform_conv::deform_conv(cx, node, op),
        // Its output's length depends on the data.
        VisionOp::NonMaxSuppression { .. } => unsupported("data-dependent output shape"),
        VisionOp::MaxRoiPool { .. } => roi_align::max_roi_pool(cx, node, op),
    }
}

// ---- Expression shorthands ---------------------------------------------------------------

pub(super) fn add(a: Expr, b: Expr) -> Expr {
    Expr::bin(BinOp::Add, a, b)
}

pub(super) fn sub(a: Expr, b: Expr) -> Expr {
    Expr::bin(BinOp::Sub, a, b)
}

pub(super) fn mul(a: Expr, b: Expr) -> Expr {
    Expr::bin(BinOp::Mul, a, b)
}

pub(super) fn div(a: Expr, b: Expr) -> Expr {
    Expr::bin(BinOp::Div, a, b)
}

pub(super) fn cmp(op: BinOp, a: Expr, b: Expr) -> Expr {
    Expr::bin(op, a, b)
}

pub(super) fn and(a: Expr, b: Expr) -> Expr {
    Expr::bin(BinOp::And, a, b)
}

pub(super) fn f64_(v: f64) -> Expr {
    Expr::float(DType::F64, v)
}

pub(super) fn idx(i: i64) -> Expr {
    Expr::idx(i)
}

/// `min(max(i, lo), hi)` on indices.
pub(super) fn clamp_idx(i: Expr, lo: i64, hi: i64) -> Expr {
    Expr::bin(
        BinOp::Min,
        Expr::bin(BinOp::Max, i, Expr::idx(lo)),
        Expr::idx(hi),
    )
}

/// `0 <= i < n` on indices.
pub(super) fn in_range(i: Expr, n: i64) -> Expr {
    and(
        cmp(BinOp::Ge, i.clone(), Expr::idx(0)),
        cmp(BinOp::Lt, i, Expr::idx(n)),
    )
}

/// `e` as `f64` (no cast when it already is).
pub(super) fn to_f64(kb: &KernelBuilder, e: Expr) -> Expr {
    to_ty(kb, e, DType::F64)
}

/// `e` as an `i64` index (no cast when it already is).
pub(super) fn to_i64(kb: &KernelBuilder, e: Expr) -> Expr {
    to_ty(kb, e, DType::I64)
}

fn to_ty(kb: &KernelBuilder, e: Expr, ty: DType) -> Expr {
    if kb.k.type_of(&e) == ty {
        e
    } else {
        Expr::cast(ty, e)
    }
}

/// A `let` of `value` in a fresh variable of type `ty`, pushed on `stmts`; the variable.
pub(super) fn let_(kb: &mut KernelBuilder, stmts: &mut Vec<Stmt>, ty: DType, value: Expr) -> Expr {
    let var = kb.var(ty);
    stmts.push(Stmt::Let { var, value });
    Expr::var(var)
}

/// `acc = cond ? acc + term : acc`: a contribution the interpreter adds only when `cond`.
pub(super) fn add_if(acc: VarId, cond: Expr, term: Expr) -> Stmt {
    Stmt::Assign {
        var: acc,
        value: Expr::select(cond, add(Expr::var(acc), term), Expr::var(acc)),
    }
}

/// An `f64` value rounded to `ty` for the store (the interpreter's final cast).
pub(super) fn round_to(ty: DType, v: Expr) -> Expr {
    if ty == DType::F64 {
        v
    } else {
        Expr::cast(ty, v)
    }
}

/// The flat index of the counters `vars` (any index expressions) in a row-major `shape`.
pub(super) fn flat(shape: &[usize], vars: &[Expr]) -> Expr {
    let mut e = Expr::idx(0);
    for (v, &n) in vars.iter().zip(shape) {
        e = Expr::add_idx(Expr::mul_idx(e, n as i64), v.clone());
    }
    e
}

/// The row-major multi-index of flat index `i` in `dims`, by division and remainder.
pub(super) fn unravel(i: Expr, dims: &[usize]) -> Vec<Expr> {
    let mut stride = 1i64;
    let mut out = vec![Expr::idx(0); dims.len()];
    for d in (0..dims.len()).rev() {
        let q = if stride == 1 {
            i.clone()
        } else {
            Expr::bin(BinOp::Div, i.clone(), Expr::idx(stride))
        };
        out[d] = if d == 0 {
            q
        } else {
            Expr::bin(BinOp::Rem, q, Expr::idx(dims[d] as i64))
        };
        stride *= dims[d] as i64;
    }
    out
}

/// A loop nest over `shape` whose outermost iterating loop is `Parallel` and the others
/// `Serial`: for bodies of gathers and inner loops, which no backend vectorizes.
pub(super) fn par_nest(
    kb: &mut KernelBuilder,
    shape: &[usize],
    body_of: impl FnOnce(&mut KernelBuilder, &[VarId]) -> Vec<Stmt>,
) -> Vec<Stmt> {
    super::nest_with(kb, shape, false, body_of)
}

/// A `Serial` loop `for v in 0..extent { body_of(v) }`.
pub(super) fn serial(
    kb: &mut KernelBuilder,
    extent: Expr,
    body_of: impl FnOnce(&mut KernelBuilder, Expr) -> Vec<Stmt>,
) -> Stmt {
    let var = kb.var(DType::I64);
    let body = body_of(kb, Expr::var(var));
    Stmt::For {
        var,
        extent,
        kind: LoopKind::Serial,
        body,
    }
}

/// A shape-like attribute, or the value of the constant input it came from.
pub(super) fn shape_of(
    cx: &Cx,
    attr: &Option<Vec<usize>>,
    input: Option<ValueId>,
) -> Option<Vec<usize>> {
    if let Some(s) = attr {
        return Some(s.clone());
    }
    let v = cx.g.const_value(input?)?.to_i64_vec().ok()?;
    v.iter().map(|&d| usize::try_from(d).ok()).collect()
}

/// Whether `ty` is a float type the kernels compute with (through `f64`).
pub(super) fn float_ok(ty: DType) -> bool {
    ty.is_float() && !ty.is_storage_only()
}

// ---- Affine grid --------------------------------------------------------------------------

/// `out[n, p.., r] = Σ_j theta[n, r, j] · base(p)[j]`, the base point `(x, y[, z], 1)` of
/// normalized coordinates, `x` along the last axis.
fn affine_grid(cx: &mut Cx, node: &Node, align: bool) -> Result<(), Fail> {
    let Some(theta) = node.input(0) else {
        return unsupported("missing input");
    };
    let (ts, os) = (cx.shape(theta)?, cx.shape(node.outputs[0])?);
    let ty = cx.dtype(theta);
    let nd = os.len().saturating_sub(2);
    if !(nd == 2 || nd == 3) || ts != [os[0], nd, nd + 1] || os[nd + 1] != nd {
        return unsupported(format!("affine_grid theta {ts:?} for a grid {os:?}"));
    }
    if !float_ok(ty) {
        return unsupported(format!("affine_grid of {}", ty.name()));
    }
    let dims = os[1..=nd].to_vec();
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let tp = kb.param(&cx.p, cx.buf(theta)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let mut shape = vec![os[0]];
    shape.extend_from_slice(&dims);
    let body = par_nest(&mut kb, &shape, |kb, v| {
        let n = Expr::var(v[0]);
        // The normalized coordinate of sample `i` of `len`, as the interpreter computes it.
        let coord = |kb: &KernelBuilder, i: Expr, len: usize| -> Expr {
            let i = to_f64(kb, i);
            if align {
                if len <= 1 {
                    f64_(-1.0)
                } else {
                    add(f64_(-1.0), mul(i, f64_(2.0 / (len - 1) as f64)))
                }
            } else {
                let step = 2.0 / len as f64;
                add(f64_(-1.0 + step / 2.0), mul(i, f64_(step)))
            }
        };
        let mut stmts = Vec::new();
        let mut base = Vec::with_capacity(nd);
        for d in 0..nd {
            let c = coord(kb, Expr::var(v[nd - d]), dims[nd - 1 - d]);
            base.push(let_(kb, &mut stmts, DType::F64, c));
        }
        let point = flat(&shape, &v.iter().map(|&x| Expr::var(x)).collect::<Vec<_>>());
        for r in 0..nd {
            let row = Expr::mul_idx(
                Expr::add_idx(Expr::mul_idx(n.clone(), nd as i64), idx(r as i64)),
                (nd + 1) as i64,
            );
            let t = |j: usize| {
                to_f64(
                    kb,
                    Expr::load(tp, Expr::add_idx(row.clone(), idx(j as i64))),
                )
            };
            let mut sum = mul(t(0), base[0].clone());
            for (j, b) in base.iter().enumerate().skip(1) {
                sum = add(sum, mul(t(j), b.clone()));
            }
            sum = add(sum, t(nd));
            stmts.push(Stmt::Store {
                param: op_,
                index: Expr::add_idx(Expr::mul_idx(point.clone(), nd as i64), idx(r as i64)),
                value: round_to(ty, sum),
            });
        }
        stmts
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// Rust's `f64::max`: the other operand when one is NaN (the interpreter's `max`, unlike
/// [`BinOp::Max`], which propagates NaN).
pub(super) fn fmax(a: Expr, b: Expr) -> Expr {
    let take_b = Expr::bin(
        BinOp::Or,
        cmp(BinOp::Gt, b.clone(), a.clone()),
        Expr::un(UnOp::IsNan, a.clone()),
    );
    Expr::select(take_b, b, a)
}
