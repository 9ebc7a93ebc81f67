//! STFT (`signal.stft`): for `f32` signals with a known frame step and length, one `Matmul`
//! per batch row (the frames are a strided view of the signal, `frame_step` apart, and the
//! window is folded into the twiddle matrix); otherwise a loop kernel over (batch, frame, bin)
//! with a serial `f64` sum inside, reading run-time `frame_step` and `frame_length` inputs.
//! The twiddles and their trade-offs are `dft.rs`'s.

use super::attn::f64_of;
use super::dft::{
    MAX_TABLE, Scalar, Twiddles, bin, bin_sum, const_f32, f, idx, is_float, matmul, rows_of,
    scalar, scalar_expr, twiddle_matrix, var,
};
use super::{Cx, Fail, KernelBuilder, kernel_name, unsupported};
use crate::kernel::*;
use mlc_ir::{DType, Node};

pub(super) fn stft(
    cx: &mut Cx,
    node: &Node,
    frame_step: Option<usize>,
    frame_length: Option<usize>,
    onesided: bool,
) -> Result<(), Fail> {
    let Some(xv) = node.input(0) else {
        return unsupported("missing signal");
    };
    let dt = cx.dtype(xv);
    let xs = cx.shape(xv)?;
    let (&[batch, n, c], true) = (xs.as_slice(), is_float(dt)) else {
        return unsupported("a signal not shaped [batch, length, 1 or 2] of floats");
    };
    if !matches!(c, 1 | 2) {
        return unsupported("a signal not shaped [batch, length, 1 or 2]");
    }
    let os = cx.shape(node.outputs[0])?;
    let &[_, frames, bins, 2] = os.as_slice() else {
        return unsupported("an output not shaped [batch, frames, bins, 2]");
    };
    let Some(step) = scalar(cx, frame_step, node.input(1))? else {
        return unsupported("missing frame step");
    };
    let window = node.input(2);
    let wl = match window {
        Some(w) => {
            let ws = cx.shape(w)?;
            if ws.len() != 1 || !is_float(cx.dtype(w)) {
                return unsupported("a window that is not a 1-D float tensor");
            }
            Some(ws[0])
        }
        None => None,
    };
    let len = match scalar(cx, frame_length, node.input(3))? {
        Some(l) => l,
        None => Scalar::Known(wl.unwrap_or(n) as i64),
    };
    if let Scalar::Known(l) = len {
        let want = if onesided { l / 2 + 1 } else { l };
        if l <= 0 || l as usize > n || want != bins as i64 {
            return unsupported("a frame length that does not give the output shape");
        }
    }
    let y = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    if batch * frames * bins == 0 {
        return Ok(());
    }
    if let (DType::F32, Scalar::Known(l), Scalar::Known(st)) = (dt, &len, &step)
        && *st > 0
    {
        let (l, st) = (*l as usize, *st as usize);
        let terms = wl.map_or(l, |w| w.min(l));
        let cols = bins * 2;
        if terms * c * cols * 4 <= MAX_TABLE {
            stft_matmul(cx, node, y, [batch, n, c], [frames, terms, cols], l, st)?;
            return Ok(());
        }
    }
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(xv)?, Access::Read);
    let wp = match window {
        Some(w) => Some((kb.param(&cx.p, cx.buf(w)?, Access::Read), cx.dtype(w))),
        None => None,
    };
    let yp = kb.param(&cx.p, y, Access::Write);
    let step_e = scalar_expr(cx, &mut kb, &step)?;
    let len_e = scalar_expr(cx, &mut kb, &len)?;
    let tw = match len {
        Scalar::Known(l) => Twiddles::table(cx, &mut kb, l as usize, -1.0)?,
        Scalar::RunTime(_) => Twiddles::Computed {
            sign: -1.0,
            len: len_e.clone(),
        },
    };
    // A window shorter than the frame sums fewer samples (the interpreter's zip).
    let terms = match (wl, &len) {
        (Some(w), Scalar::Known(l)) => idx(w.min(*l as usize)),
        (Some(w), Scalar::RunTime(_)) => bin(BinOp::Min, idx(w), len_e.clone()),
        (None, _) => len_e.clone(),
    };
    let [b, fr, k] = [DType::I64; 3].map(|t| kb.var(t));
    let (re, im) = (kb.var(DType::F64), kb.var(DType::F64));
    let mut body = bin_sum(
        &mut kb,
        &tw,
        terms,
        var(k),
        len_e,
        (re, im),
        Vec::new(),
        |kb, j| {
            let (t, ok) = (kb.var(DType::I64), kb.var(DType::Bool));
            let lets = vec![
                Stmt::Let {
                    var: t,
                    value: bin(BinOp::Add, bin(BinOp::Mul, var(fr), step_e), j.clone()),
                },
                Stmt::Let {
                    var: ok,
                    value: bin(BinOp::Lt, var(t), idx(n)),
                },
            ];
            let at = |part: i64| {
                let t = bin(
                    BinOp::Max,
                    bin(BinOp::Min, var(t), idx(n - 1)),
                    Expr::idx(0),
                );
                let row = Expr::add_idx(Expr::mul_idx(var(b), n as i64), t);
                let v = f64_of(
                    Expr::load(
                        xp,
                        Expr::add_idx(Expr::mul_idx(row, c as i64), Expr::idx(part)),
                    ),
                    dt,
                );
                let v = match wp {
                    Some((wp, wt)) => bin(BinOp::Mul, v, f64_of(Expr::load(wp, j.clone()), wt)),
                    None => v,
                };
                Expr::select(var(ok), v, f(0.0))
            };
            (lets, at(0), (c == 2).then(|| at(1)))
        },
    );
    let out_at = Expr::mul_idx(
        Expr::add_idx(
            Expr::mul_idx(
                Expr::add_idx(Expr::mul_idx(var(b), frames as i64), var(fr)),
                bins as i64,
            ),
            var(k),
        ),
        2,
    );
    body.push(Stmt::Store {
        param: yp,
        index: out_at.clone(),
        value: Expr::cast(dt, var(re)),
    });
    body.push(Stmt::Store {
        param: yp,
        index: Expr::add_idx(out_at, Expr::idx(1)),
        value: Expr::cast(dt, var(im)),
    });
    let kinds = [LoopKind::Parallel, LoopKind::Serial, LoopKind::Serial];
    kb.k.body = super::wrap_loops(&[b, fr, k], &[batch, frames, bins], &kinds, body);
    cx.launch(kb, node);
    Ok(())
}

/// An `f32` STFT as one contraction per batch row: the frames are the rows of a strided view
/// of the signal (`frame_step` apart), times the twiddle matrix with the window folded in.
fn stft_matmul(
    cx: &mut Cx,
    node: &Node,
    y: BufId,
    [batch, n, c]: [usize; 3],
    [frames, terms, cols]: [usize; 3],
    len: usize,
    step: usize,
) -> Result<(), Fail> {
    let Some(xv) = node.input(0) else {
        return unsupported("missing signal");
    };
    let table = const_f32(
        cx,
        terms * c,
        cols,
        twiddle_matrix(terms, c, cols / 2, len, -1.0, 1.0),
    )?;
    // The window scales row (t, part) of the matrix: folded at compile time when constant,
    // else by a kernel.
    let b = match node.input(2) {
        None => table,
        Some(w) => {
            if let Some(wv) = cx.g.const_value(w).and_then(|t| t.to_f64_vec().ok()) {
                let mut v = twiddle_matrix(terms, c, cols / 2, len, -1.0, 1.0);
                for (r, row) in v.chunks_mut(cols).enumerate() {
                    row.iter_mut().for_each(|x| *x *= wv[r / c]);
                }
                const_f32(cx, terms * c, cols, v)?
            } else {
                let b =
                    cx.p.add_buffer(DType::F32, vec![terms * c, cols], BufKind::Temp);
                let mut kb = KernelBuilder::new("signal_stft_window");
                let wp = kb.param(&cx.p, cx.buf(w)?, Access::Read);
                let tp = kb.param(&cx.p, table, Access::Read);
                let bp = kb.param(&cx.p, b, Access::Write);
                let wt = cx.dtype(w);
                let body = super::loop_nest(&mut kb, &[terms * c, cols], |_, v| {
                    let (r, k) = (var(v[0]), var(v[1]));
                    let at = Expr::add_idx(Expr::mul_idx(r.clone(), cols as i64), k);
                    let wj = Expr::load(wp, bin(BinOp::Div, r, Expr::idx(c as i64)));
                    let wj = if wt == DType::F32 {
                        wj
                    } else {
                        Expr::cast(DType::F32, wj)
                    };
                    vec![Stmt::Store {
                        param: bp,
                        index: at.clone(),
                        value: bin(BinOp::Mul, Expr::load(tp, at), wj),
                    }]
                });
                kb.k.body = body;
                cx.launch(kb, node);
                b
            }
        }
    };
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(xv)?, Access::Read);
    let bp = kb.param(&cx.p, b, Access::Read);
    let yp = kb.param(&cx.p, y, Access::Write);
    let bv = kb.var(DType::I64);
    let mm = matmul(
        frames,
        cols,
        terms * c,
        rows_of(xp, Expr::mul_idx(var(bv), (n * c) as i64), step * c),
        rows_of(bp, Expr::idx(0), cols),
        rows_of(yp, Expr::mul_idx(var(bv), (frames * cols) as i64), cols),
    );
    kb.k.body = super::wrap_loops(&[bv], &[batch], &[LoopKind::Parallel], vec![mm]);
    cx.launch(kb, node);
    Ok(())
}
