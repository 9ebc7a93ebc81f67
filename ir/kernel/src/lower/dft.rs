//! DFT (`signal.dft`), and the twiddle machinery the STFT (`stft.rs`) shares: a `Matmul`
//! against a twiddle matrix for `f32` signals, loop kernels otherwise.
//!
//! `f32` (the common case, and ONNX Runtime's own precision): a transform along the last
//! signal axis is one contraction `[signals, samples·parts] × [samples·parts, bins·2]` whose
//! result is already the output's layout, and an STFT's frames are a strided view of the
//! signal (row stride `frame_step`), so one contraction per batch row; the window, when there
//! is one, is folded into the twiddle matrix (by a small kernel when it is a run-time input).
//! The matrix is a compile-time constant (twiddles in `f64`, rounded once), bounded at
//! [`MAX_TABLE`] bytes; the tuned GEMM makes a whisper-sized STFT some 30× faster than the
//! loop form. It accumulates in `f32`, so results differ from the interpreter's `f64` sums by
//! `f32` rounding.
//!
//! Loop form (other float types, other axes, run-time lengths or axes, larger tables): each
//! output bin is a parallel iteration with a serial sum over the signal inside, in `f64` like
//! the interpreter's; the twiddle table is one period of `len` entries (the product `k·t` is
//! walked modulo `len`, as the interpreter reduces it). When the transform length is known at
//! compile time the table is a constant computed exactly as the interpreter computes its
//! twiddles; when it is only known at run time (an STFT's `frame_length` input) the kernel
//! computes `cos`/`sin` itself.
//!
//! Scalars the output shape does not fix (the DFT's `axis`, the STFT's `frame_step` and
//! `frame_length` inputs) are read by the kernel at run time. A run-time DFT axis picks among
//! the axes that give the node's static output shape.

use super::attn::f64_of;
use super::{Cx, Fail, KernelBuilder, kernel_name, unsupported};
use crate::kernel::*;
use mlc_ir::{DType, Node, Tensor, ValueId};
use std::f64::consts::PI;

/// The largest twiddle matrix (in bytes) the `Matmul` form builds; larger transforms use the
/// loop form, whose table is one period.
pub(super) const MAX_TABLE: usize = 16 << 20;

/// A constant `f32` buffer `[rows, cols]` from `f64` values.
pub(super) fn const_f32(cx: &mut Cx, rows: usize, cols: usize, v: Vec<f64>) -> Result<BufId, Fail> {
    let t = Tensor::from_vec(&[rows, cols], v)
        .and_then(|t| t.cast(DType::F32))
        .map_err(|e| Fail::Unsupported(e.to_string()))?;
    let c = cx.p.consts.len();
    cx.p.consts.push(t);
    Ok(cx
        .p
        .add_buffer(DType::F32, vec![rows, cols], BufKind::Const(c)))
}

/// `(cos, sin)` of `sign·2π·(k·t mod len)/len`, as the interpreter computes its twiddles.
fn twiddle(k: usize, t: usize, len: usize, sign: f64) -> (f64, f64) {
    let m = ((k as u128 * t as u128) % len as u128) as f64;
    let ang = sign * 2.0 * PI * m / len as f64;
    (ang.cos(), ang.sin())
}

/// The twiddle matrix of a transform of `terms` samples of `parts` (1 real, 2 complex) parts
/// into `bins` complex bins: row `(t, part)`, column `(k, re/im)`, scaled by `scale`.
pub(super) fn twiddle_matrix(
    terms: usize,
    parts: usize,
    bins: usize,
    len: usize,
    sign: f64,
    scale: f64,
) -> Vec<f64> {
    let cols = bins * 2;
    let mut v = vec![0.0; terms * parts * cols];
    for t in 0..terms {
        for k in 0..bins {
            let (c, s) = twiddle(k, t, len, sign);
            let row = t * parts;
            // re += xr·c - xi·s; im += xr·s + xi·c
            v[row * cols + 2 * k] = c * scale;
            v[row * cols + 2 * k + 1] = s * scale;
            if parts == 2 {
                v[(row + 1) * cols + 2 * k] = -s * scale;
                v[(row + 1) * cols + 2 * k + 1] = c * scale;
            }
        }
    }
    v
}

/// A plain `C = A·B` statement.
pub(super) fn matmul(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: MatRef) -> Stmt {
    Stmt::Matmul(Box::new(Matmul {
        m,
        n,
        k,
        a,
        b,
        c,
        alpha: 1.0,
        beta: 0.0,
        bias: None,
        act: Activation::None,
        requant: None,
        tail: None,
        b_im2col: None,
    }))
}

pub(super) fn rows_of(param: ParamId, offset: Expr, row_stride: usize) -> MatRef {
    MatRef {
        param,
        offset,
        row_stride: row_stride as i64,
        col_stride: 1,
    }
}

pub(super) fn f(v: f64) -> Expr {
    Expr::float(DType::F64, v)
}

pub(super) fn var(v: VarId) -> Expr {
    Expr::var(v)
}

pub(super) fn idx(v: usize) -> Expr {
    Expr::idx(v as i64)
}

pub(super) fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
    Expr::bin(op, a, b)
}

pub(super) fn is_float(t: DType) -> bool {
    matches!(t, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

/// A scalar operand: known at compile time, or read from an integer input at run time.
pub(super) enum Scalar {
    Known(i64),
    RunTime(ValueId),
}

pub(super) fn scalar(
    cx: &Cx,
    attr: Option<usize>,
    v: Option<ValueId>,
) -> Result<Option<Scalar>, Fail> {
    if let Some(a) = attr {
        return Ok(Some(Scalar::Known(a as i64)));
    }
    let Some(v) = v else { return Ok(None) };
    if let Some(t) = cx.g.const_value(v) {
        return match t.to_i64_vec().ok().as_deref() {
            Some(&[x]) => Ok(Some(Scalar::Known(x))),
            _ => unsupported("a scalar input that is not one integer"),
        };
    }
    if !cx.dtype(v).is_int() || cx.shape(v)?.iter().product::<usize>() != 1 {
        return unsupported("a scalar input that is not one integer");
    }
    Ok(Some(Scalar::RunTime(v)))
}

/// The value of `s` in the kernel: a literal, or a load of element 0 of its input.
pub(super) fn scalar_expr(cx: &Cx, kb: &mut KernelBuilder, s: &Scalar) -> Result<Expr, Fail> {
    Ok(match s {
        Scalar::Known(x) => Expr::idx(*x),
        Scalar::RunTime(v) => {
            let p = kb.param(&cx.p, cx.buf(*v)?, Access::Read);
            let e = Expr::load(p, Expr::idx(0));
            if cx.dtype(*v) == DType::I64 {
                e
            } else {
                Expr::cast(DType::I64, e)
            }
        }
    })
}

/// Where the twiddle factors `e^{sign·2πi·m/len}` come from.
pub(super) enum Twiddles {
    /// A constant `[len, 2]` table of `(cos, sin)`.
    Table(ParamId),
    /// Computed in the kernel for a run-time `len`.
    Computed { sign: f64, len: Expr },
}

impl Twiddles {
    /// A table for a known `len` (the interpreter's formula, so the values are the same bits).
    pub(super) fn table(
        cx: &mut Cx,
        kb: &mut KernelBuilder,
        len: usize,
        sign: f64,
    ) -> Result<Twiddles, Fail> {
        let mut v = Vec::with_capacity(2 * len);
        for m in 0..len {
            let ang = sign * 2.0 * PI * m as f64 / len as f64;
            v.extend([ang.cos(), ang.sin()]);
        }
        let t = Tensor::from_vec(&[len, 2], v).map_err(|e| Fail::Unsupported(e.to_string()))?;
        let c = cx.p.consts.len();
        cx.p.consts.push(t);
        let b = cx.p.add_buffer(DType::F64, vec![len, 2], BufKind::Const(c));
        Ok(Twiddles::Table(kb.param(&cx.p, b, Access::Read)))
    }

    /// `(cos, sin)` of twiddle `m` (an `I64` in `0..len`).
    pub(super) fn at(&self, m: Expr) -> (Expr, Expr) {
        match self {
            Twiddles::Table(p) => (
                Expr::load(*p, Expr::mul_idx(m.clone(), 2)),
                Expr::load(*p, Expr::add_idx(Expr::mul_idx(m, 2), Expr::idx(1))),
            ),
            Twiddles::Computed { sign, len } => {
                let ang = bin(
                    BinOp::Div,
                    bin(BinOp::Mul, f(sign * 2.0 * PI), Expr::cast(DType::F64, m)),
                    Expr::cast(DType::F64, len.clone()),
                );
                (Expr::un(UnOp::Cos, ang.clone()), Expr::un(UnOp::Sin, ang))
            }
        }
    }
}

/// The statements of one bin's sum: `acc_re, acc_im = Σ_{j < terms} sample(j) · w(m_j)` with
/// `m_j = (step · j) mod len` walked incrementally (`step < len`), in the interpreter's order
/// of operations. `sample(j)` gives `(re, im)`; `im` is `None` for a real signal.
#[allow(clippy::too_many_arguments)]
pub(super) fn bin_sum(
    kb: &mut KernelBuilder,
    tw: &Twiddles,
    terms: Expr,
    step: Expr,
    len: Expr,
    acc: (VarId, VarId),
    pre: Vec<Stmt>,
    sample: impl FnOnce(&mut KernelBuilder, Expr) -> (Vec<Stmt>, Expr, Option<Expr>),
) -> Vec<Stmt> {
    let (re, im) = acc;
    let (j, m, cs, sn) = (
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::F64),
        kb.var(DType::F64),
    );
    let (mut body, xr, xi) = sample(kb, var(j));
    let (c, s) = tw.at(var(m));
    body.push(Stmt::Let { var: cs, value: c });
    body.push(Stmt::Let { var: sn, value: s });
    let mul = |a: Expr, b: VarId| bin(BinOp::Mul, a, var(b));
    let (mut new_re, mut new_im) = (
        bin(BinOp::Add, var(re), mul(xr.clone(), cs)),
        bin(BinOp::Add, var(im), mul(xr, sn)),
    );
    if let Some(xi) = xi {
        new_re = bin(BinOp::Sub, new_re, mul(xi.clone(), sn));
        new_im = bin(BinOp::Add, new_im, mul(xi, cs));
    }
    body.push(Stmt::Assign {
        var: re,
        value: new_re,
    });
    body.push(Stmt::Assign {
        var: im,
        value: new_im,
    });
    let next = bin(BinOp::Add, var(m), step);
    body.push(Stmt::Assign {
        var: m,
        value: Expr::select(
            bin(BinOp::Ge, next.clone(), len.clone()),
            bin(BinOp::Sub, next.clone(), len),
            next,
        ),
    });
    let mut s = pre;
    s.extend([
        Stmt::Let {
            var: re,
            value: f(0.0),
        },
        Stmt::Let {
            var: im,
            value: f(0.0),
        },
        Stmt::Let {
            var: m,
            value: Expr::idx(0),
        },
        Stmt::For {
            var: j,
            extent: terms,
            kind: LoopKind::Serial,
            body,
        },
    ]);
    s
}

/// One axis the DFT may run along, with the sizes that follow from it.
#[derive(Clone, Copy)]
struct Cand {
    axis: usize,
    n: usize,
    inner: usize,
    len: usize,
    out_len: usize,
}

pub(super) fn dft(
    cx: &mut Cx,
    node: &Node,
    axis: Option<usize>,
    length: Option<usize>,
    inverse: bool,
    onesided: bool,
) -> Result<(), Fail> {
    let Some(xv) = node.input(0) else {
        return unsupported("missing signal");
    };
    let dt = cx.dtype(xv);
    if !is_float(dt) {
        return unsupported("a DFT of a non-float signal");
    }
    let (s, os) = (cx.shape(xv)?, cx.shape(node.outputs[0])?);
    let r = s.len();
    if r < 2 || !matches!(s[r - 1], 1 | 2) || os.len() != r {
        return unsupported("a signal not shaped [..., 1 or 2]");
    }
    let c = s[r - 1];
    let out_c = os[r - 1];
    let length = match scalar(cx, length, node.input(1))? {
        Some(Scalar::Known(n)) if n > 0 => Some(n as usize),
        Some(Scalar::Known(_)) => return unsupported("a DFT length that is not positive"),
        Some(Scalar::RunTime(_)) => return unsupported("a DFT length known only at run time"),
        None => None,
    };
    let axis = match scalar(cx, axis, node.input(2))? {
        Some(Scalar::Known(a)) => {
            let a = if a < 0 { a + r as i64 } else { a };
            if a < 0 || a as usize + 1 >= r {
                return unsupported("a DFT axis outside the signal axes");
            }
            Some(Scalar::Known(a))
        }
        other => other,
    };
    // The axes that give the output shape; a known axis must be one of them.
    let cands: Vec<Cand> = (0..r - 1)
        .filter(|&a| match &axis {
            Some(Scalar::Known(k)) => *k as usize == a,
            _ => true,
        })
        .filter_map(|a| {
            let n = s[a];
            let len = length.unwrap_or(if inverse && onesided {
                2 * n.saturating_sub(1)
            } else {
                n
            });
            let out_len = if !inverse && onesided {
                len / 2 + 1
            } else {
                len
            };
            let mut want = s.clone();
            want[a] = out_len;
            want[r - 1] = if inverse && onesided { 1 } else { 2 };
            (len > 0 && want == os).then(|| Cand {
                axis: a,
                n,
                inner: s[a + 1..r - 1].iter().product(),
                len,
                out_len,
            })
        })
        .collect();
    let Some(&first) = cands.first() else {
        return unsupported("no DFT axis gives the output shape");
    };
    let y = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let rows: usize = os[..r - 1].iter().product();
    if rows == 0 {
        return Ok(());
    }
    let sign = if inverse { 1.0 } else { -1.0 };
    if dt == DType::F32 && cands.len() == 1 && first.inner == 1 {
        // One contraction: rows are the signals, the twiddle matrix maps samples to bins.
        let (n, len, out_len) = (first.n, first.len, first.out_len);
        let (terms, b) = if inverse && onesided {
            // The Hermitian extension folded into the matrix: half-spectrum bin j feeds every
            // full bin kk that mirrors to it, conjugated past len / 2.
            let half = n.min(len / 2 + 1);
            let mut v = vec![0.0; half * c * len];
            for t in 0..len {
                for kk in 0..len {
                    let (src, sg) = if kk <= len / 2 {
                        (kk, 1.0)
                    } else {
                        (len - kk, -1.0)
                    };
                    if src >= half {
                        continue;
                    }
                    let (cs, sn) = twiddle(kk, t, len, 1.0);
                    v[src * c * len + t] += cs / len as f64;
                    if c == 2 {
                        v[(src * c + 1) * len + t] -= sg * sn / len as f64;
                    }
                }
            }
            (half, v)
        } else {
            let terms = n.min(len);
            let scale = if inverse { 1.0 / len as f64 } else { 1.0 };
            (terms, twiddle_matrix(terms, c, out_len, len, sign, scale))
        };
        let cols = out_len * out_c;
        if terms * c * cols * 4 <= MAX_TABLE {
            let table = const_f32(cx, terms * c, cols, b)?;
            let mut kb = KernelBuilder::new(kernel_name(&node.op));
            let xp = kb.param(&cx.p, cx.buf(xv)?, Access::Read);
            let tp = kb.param(&cx.p, table, Access::Read);
            let yp = kb.param(&cx.p, y, Access::Write);
            let signals = s[..first.axis].iter().product();
            kb.k.body = vec![matmul(
                signals,
                cols,
                terms * c,
                rows_of(xp, Expr::idx(0), n * c),
                rows_of(tp, Expr::idx(0), cols),
                rows_of(yp, Expr::idx(0), cols),
            )];
            cx.launch(kb, node);
            return Ok(());
        }
    }
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(xv)?, Access::Read);
    let yp = kb.param(&cx.p, y, Access::Write);
    let same_len = cands.iter().all(|k| k.len == first.len);
    let ax = kb.var(DType::I64);
    let mut top = Vec::new();
    if let (Some(Scalar::RunTime(v)), true) = (&axis, cands.len() > 1) {
        let a = scalar_expr(cx, &mut kb, &Scalar::RunTime(*v))?;
        top.push(Stmt::Let {
            var: ax,
            value: Expr::select(
                bin(BinOp::Lt, a.clone(), Expr::idx(0)),
                bin(BinOp::Add, a.clone(), idx(r)),
                a,
            ),
        });
    }
    let multi = cands.len() > 1;
    // A per-axis size: a literal, or a select on the run-time axis.
    let pick = |g: fn(&Cand) -> usize| -> Expr {
        let mut e = idx(g(cands.last().unwrap_or(&first)));
        if multi {
            for k in cands.iter().rev().skip(1) {
                e = Expr::select(bin(BinOp::Eq, var(ax), idx(k.axis)), idx(g(k)), e);
            }
        }
        e
    };
    // With a run-time axis the sizes are variables, selected once.
    let mut size = |g: fn(&Cand) -> usize| -> Expr {
        let e = pick(g);
        if !multi {
            return e;
        }
        let v = kb.var(DType::I64);
        top.push(Stmt::Let { var: v, value: e });
        var(v)
    };
    let (n_e, inner_e, len_e, out_len_e) = (
        size(|k| k.n),
        size(|k| k.inner),
        size(|k| k.len),
        size(|k| k.out_len),
    );
    let tw = if same_len {
        Twiddles::table(cx, &mut kb, first.len, sign)?
    } else {
        Twiddles::Computed {
            sign,
            len: len_e.clone(),
        }
    };
    let [e, i, q, kk, o] = [DType::I64; 5].map(|t| kb.var(t));
    let (re, im) = (kb.var(DType::F64), kb.var(DType::F64));
    let pre = vec![
        Stmt::Let {
            var: i,
            value: bin(BinOp::Rem, var(e), inner_e.clone()),
        },
        Stmt::Let {
            var: q,
            value: bin(BinOp::Div, var(e), inner_e.clone()),
        },
        Stmt::Let {
            var: kk,
            value: bin(BinOp::Rem, var(q), out_len_e.clone()),
        },
        Stmt::Let {
            var: o,
            value: bin(BinOp::Div, var(q), out_len_e),
        },
    ];
    // The input element (t, part) of this lane, t clamped into the axis.
    let x_at = |t: Expr, part: i64| -> Expr {
        let t = bin(BinOp::Min, t, bin(BinOp::Sub, n_e.clone(), Expr::idx(1)));
        let row = bin(
            BinOp::Add,
            bin(
                BinOp::Mul,
                bin(BinOp::Add, bin(BinOp::Mul, var(o), n_e.clone()), t),
                inner_e.clone(),
            ),
            var(i),
        );
        f64_of(
            Expr::load(
                xp,
                Expr::add_idx(Expr::mul_idx(row, c as i64), Expr::idx(part)),
            ),
            dt,
        )
    };
    let mut body = if inverse && onesided {
        // The Hermitian extension of the half spectrum: bin kk ≤ len/2 is x[kk] (zero past the
        // axis), the others the conjugate of x[len - kk].
        let half = bin(BinOp::Div, len_e.clone(), Expr::idx(2));
        bin_sum(
            &mut kb,
            &tw,
            len_e.clone(),
            var(kk),
            len_e.clone(),
            (re, im),
            pre,
            |kb, j| {
                let (src, low, ok) = (kb.var(DType::I64), kb.var(DType::Bool), kb.var(DType::Bool));
                let lets = vec![
                    Stmt::Let {
                        var: low,
                        value: bin(BinOp::Le, j.clone(), half),
                    },
                    Stmt::Let {
                        var: src,
                        value: Expr::select(var(low), j.clone(), bin(BinOp::Sub, len_e.clone(), j)),
                    },
                    Stmt::Let {
                        var: ok,
                        value: bin(BinOp::Lt, var(src), n_e.clone()),
                    },
                ];
                let xr = Expr::select(var(ok), x_at(var(src), 0), f(0.0));
                let xi = (c == 2).then(|| {
                    let v = x_at(var(src), 1);
                    Expr::select(
                        var(ok),
                        Expr::select(var(low), v.clone(), Expr::un(UnOp::Neg, v)),
                        f(0.0),
                    )
                });
                (lets, xr, xi)
            },
        )
    } else {
        let terms = if length.is_some_and(|l| cands.iter().any(|k| l < k.n)) {
            bin(BinOp::Min, n_e.clone(), len_e.clone())
        } else {
            n_e.clone()
        };
        bin_sum(
            &mut kb,
            &tw,
            terms,
            var(kk),
            len_e.clone(),
            (re, im),
            pre,
            |_, j| {
                let xi = (c == 2).then(|| x_at(j.clone(), 1));
                (Vec::new(), x_at(j, 0), xi)
            },
        )
    };
    let scaled = |v: VarId| {
        if inverse {
            bin(
                BinOp::Mul,
                var(v),
                bin(BinOp::Div, f(1.0), Expr::cast(DType::F64, len_e.clone())),
            )
        } else {
            var(v)
        }
    };
    body.push(Stmt::Store {
        param: yp,
        index: Expr::mul_idx(var(e), out_c as i64),
        value: Expr::cast(dt, scaled(re)),
    });
    if out_c == 2 {
        body.push(Stmt::Store {
            param: yp,
            index: Expr::add_idx(Expr::mul_idx(var(e), 2), Expr::idx(1)),
            value: Expr::cast(dt, scaled(im)),
        });
    }
    top.push(Stmt::For {
        var: e,
        extent: idx(rows),
        kind: LoopKind::Parallel,
        body,
    });
    kb.k.body = top;
    cx.launch(kb, node);
    Ok(())
}
