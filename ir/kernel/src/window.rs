//! Expanding convolution-window operands back into explicit im2col kernels, for backends
//! that do not pack them.
//!
//! Lowering gives a convolution's contraction a [`Operand::Window`] `B`: the CPU runtime packs
//! its panels straight from the image, so the column matrix never goes to memory. A backend
//! whose contraction reads `B` as a strided matrix (the NVPTX one, whose GEMM tiles load `B`
//! through shared memory) runs [`expand_windows`] first: every step whose kernel contracts a
//! window gets a preceding im2col step that writes the column matrix into a new temporary,
//! and the contraction reads that instead. The expansion is exact: the im2col kernel stores
//! what [`ConvWindow::tap`] reads, padding as the window's pad value.

use crate::kernel::*;
use mlc_ir::DType;
use std::collections::HashMap;

/// Why a window could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// The contraction is not alone inside a nest of loops with literal extents, the only
    /// form lowering produces (the temporary needs one column matrix per iteration).
    #[error("kernel {0}: a window operand outside a perfect loop nest")]
    Shape(String),
}

/// Whether any kernel of `p` contracts a window.
pub fn has_windows(p: &Program) -> bool {
    p.kernels.iter().any(|k| {
        let mut found = false;
        visit_matmuls(&k.body, &mut |mm| found |= matches!(mm.b, Operand::Window(_)));
        found
    })
}

fn visit_matmuls(body: &[Stmt], f: &mut dyn FnMut(&Matmul)) {
    for s in body {
        match s {
            Stmt::For { body, .. } => visit_matmuls(body, f),
            Stmt::Matmul(mm) => f(mm),
            _ => {}
        }
    }
}

/// The loops `(var, extent, kind)` around a nest's single statement, and that statement, when
/// `body` is a perfect nest of loops with literal extents ending in one matmul.
fn perfect_nest(body: &[Stmt]) -> Option<(Vec<(VarId, usize, LoopKind)>, &Matmul)> {
    let mut loops = Vec::new();
    let mut cur = body;
    loop {
        match cur {
            [
                Stmt::For {
                    var,
                    extent: Expr::Lit(Lit::Int(_, e)),
                    kind,
                    body,
                },
            ] => {
                loops.push((*var, usize::try_from(*e).ok()?, *kind));
                cur = body;
            }
            [Stmt::Matmul(mm)] => return Some((loops, mm)),
            _ => return None,
        }
    }
}

/// Replaces every window operand of `p` by an explicit column matrix (see the module docs).
/// Kernels without windows, and the steps launching them, are left as they are.
pub fn expand_windows(p: &mut Program) -> Result<(), ExpandError> {
    // Every kernel with a window becomes its contraction reading a temporary, in place (so
    // that no kernel with a window is left for a backend to compile), plus an im2col kernel.
    let mut plans: HashMap<KernelId, (KernelId, DType, usize)> = HashMap::new();
    for i in 0..p.kernels.len() {
        let mut found = false;
        visit_matmuls(&p.kernels[i].body, &mut |mm| {
            found |= matches!(mm.b, Operand::Window(_))
        });
        if found {
            let (cols, mm_kernel, dtype, len) = split(&p.kernels[i])?;
            p.kernels[i] = mm_kernel;
            p.kernels.push(cols);
            let cols = KernelId(p.kernels.len() as u32 - 1);
            plans.insert(KernelId(i as u32), (cols, dtype, len));
        }
    }
    let mut steps = Vec::with_capacity(p.steps.len());
    for step in std::mem::take(&mut p.steps) {
        let Some(&(cols, dtype, len)) = plans.get(&step.kernel) else {
            steps.push(step);
            continue;
        };
        let tmp = p.add_buffer(dtype, vec![len], BufKind::Temp);
        // The im2col kernel takes the contraction kernel's parameters plus the temporary
        // (see `split`), so both steps take the same arguments.
        let mut args = step.args;
        args.push(tmp);
        steps.push(Step {
            kernel: cols,
            args: args.clone(),
            origin: step.origin.clone(),
        });
        steps.push(Step {
            kernel: step.kernel,
            args,
            origin: step.origin,
        });
    }
    p.steps = steps;
    Ok(())
}

/// Splits a kernel `for…{ matmul(window) }` into an im2col kernel writing one column matrix
/// per iteration of the nest into a new last parameter, and the same kernel contracting that
/// parameter. Both keep the original parameters (the im2col kernel reads the image and the pad
/// value from them, and lists the others as read-only and unused), so that they take the same
/// arguments. Returns both, the temporary's element type and its length.
fn split(k: &Kernel) -> Result<(Kernel, Kernel, DType, usize), ExpandError> {
    let err = || ExpandError::Shape(k.name.clone());
    let (loops, mm) = perfect_nest(&k.body).ok_or_else(err)?;
    let Operand::Window(w) = &mm.b else {
        return Err(err());
    };
    let dtype = k.params[w.param.0 as usize].dtype;
    let (kk, n) = (w.k(), w.n());
    let iters: usize = loops.iter().map(|l| l.1).product();
    let len = iters * kk * n;
    // The linear number of the nest's iteration: each contraction gets its own matrix.
    let mut it = Expr::idx(0);
    for &(v, e, _) in &loops {
        it = Expr::add_idx(Expr::mul_idx(it, e as i64), Expr::var(v));
    }
    let base = Expr::mul_idx(it, (kk * n) as i64);

    // The contraction, reading the temporary.
    let mut mmk = k.clone();
    let tp = mmk.param(dtype, len, Access::Read);
    let mut new_mm = mm.clone();
    new_mm.b = Operand::Mat(MatRef {
        param: tp,
        offset: base.clone(),
        row_stride: n as i64,
        col_stride: 1,
    });
    mmk.body = wrap(&loops, vec![Stmt::Matmul(Box::new(new_mm))]);

    // The im2col kernel: same parameters, all read-only, plus the temporary written.
    let mut ck = Kernel::new(format!("{}_im2col", k.name));
    for prm in &k.params {
        ck.param(prm.dtype, prm.len, Access::Read);
    }
    ck.vars = k.vars.clone();
    let tw = ck.param(dtype, len, Access::Write);
    let (ci, ky, kx, oy, ox) = (
        ck.var(DType::I64),
        ck.var(DType::I64),
        ck.var(DType::I64),
        ck.var(DType::I64),
        ck.var(DType::I64),
    );
    // Input coordinate of one dim and whether it lies inside `[0, size)`.
    let coord = |o: VarId, t: VarId, s: usize, d: usize, pad: usize| {
        Expr::add_idx(
            Expr::add_idx(
                Expr::mul_idx(Expr::var(o), s as i64),
                Expr::mul_idx(Expr::var(t), d as i64),
            ),
            Expr::idx(-(pad as i64)),
        )
    };
    let inside = |e: &Expr, size: usize| {
        Expr::bin(
            BinOp::And,
            Expr::bin(BinOp::Ge, e.clone(), Expr::idx(0)),
            Expr::bin(BinOp::Lt, e.clone(), Expr::idx(size as i64)),
        )
    };
    let clamp = |e: Expr, size: usize| {
        Expr::bin(
            BinOp::Max,
            Expr::bin(BinOp::Min, e, Expr::idx(size as i64 - 1)),
            Expr::idx(0),
        )
    };
    let iy = coord(oy, ky, w.stride.0, w.dilation.0, w.pad.0);
    let ix = coord(ox, kx, w.stride.1, w.dilation.1, w.pad.1);
    let ok = Expr::bin(BinOp::And, inside(&iy, w.h), inside(&ix, w.w));
    let src = Expr::add_idx(
        w.offset.clone(),
        Expr::add_idx(
            Expr::mul_idx(
                Expr::add_idx(Expr::mul_idx(Expr::var(ci), w.h as i64), clamp(iy, w.h)),
                w.w as i64,
            ),
            clamp(ix, w.w),
        ),
    );
    let pad = match &w.pad_value {
        Some(v) => Expr::load(v.param, v.index.clone()),
        None if dtype.is_float() => Expr::float(dtype, 0.0),
        None => Expr::Lit(Lit::Int(dtype, 0)),
    };
    let row = Expr::add_idx(
        Expr::mul_idx(
            Expr::add_idx(Expr::mul_idx(Expr::var(ci), w.kh as i64), Expr::var(ky)),
            w.kw as i64,
        ),
        Expr::var(kx),
    );
    let col = Expr::add_idx(Expr::mul_idx(Expr::var(oy), w.out.1 as i64), Expr::var(ox));
    let store = Stmt::Store {
        param: tw,
        index: Expr::add_idx(base, Expr::add_idx(Expr::mul_idx(row, n as i64), col)),
        value: Expr::select(ok, Expr::load(w.param, src), pad),
    };
    // Every element is written once, so every loop is parallel: the GPU fuses the whole nest
    // into one grid of work items.
    let mut all: Vec<(VarId, usize, LoopKind)> =
        loops.iter().map(|l| (l.0, l.1, LoopKind::Parallel)).collect();
    all.extend([
        (ci, w.c, LoopKind::Parallel),
        (ky, w.kh, LoopKind::Parallel),
        (kx, w.kw, LoopKind::Parallel),
        (oy, w.out.0, LoopKind::Parallel),
        (ox, w.out.1, LoopKind::Parallel),
    ]);
    ck.body = wrap(&all, vec![store]);
    Ok((ck, mmk, dtype, len))
}

fn wrap(loops: &[(VarId, usize, LoopKind)], mut body: Vec<Stmt>) -> Vec<Stmt> {
    for &(var, e, kind) in loops.iter().rev() {
        body = vec![Stmt::For {
            var,
            extent: Expr::idx(e as i64),
            kind,
            body,
        }];
    }
    body
}
