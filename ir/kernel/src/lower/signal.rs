//! Signal ops. Window generators depend only on their length, which the static output shape
//! fixes, so they become constants computed here (in `f64`, then cast, as the interpreter
//! does) and cost nothing at run time. The mel weight matrix depends on scalar inputs, so a
//! kernel computes it; DFT and STFT are loop kernels (`dft.rs`).

use super::attn::f64_of;
use super::{Cx, Fail, KernelBuilder, kernel_name, loop_nest, unsupported};
use crate::kernel::*;
use mlc_ir::ops::SignalOp;
use mlc_ir::{DType, Node, Tensor};
use std::f64::consts::PI;

pub(super) fn lower(cx: &mut Cx, node: &Node, op: &SignalOp) -> Result<(), Fail> {
    let f: fn(f64, f64) -> f64 = match op {
        SignalOp::HannWindow(_) => |n, d| (PI * n / d).sin().powi(2),
        SignalOp::HammingWindow(_) => |n, d| {
            let alpha = 25.0 / 46.0;
            alpha - (1.0 - alpha) * (2.0 * PI * n / d).cos()
        },
        SignalOp::BlackmanWindow(_) => {
            |n, d| 0.42 - 0.5 * (2.0 * PI * n / d).cos() + 0.08 * (4.0 * PI * n / d).cos()
        }
        SignalOp::Dft {
            axis,
            length,
            inverse,
            onesided,
        } => return super::dft::dft(cx, node, *axis, *length, *inverse, *onesided),
        SignalOp::Stft {
            frame_step,
            frame_length,
            onesided,
        } => return super::stft::stft(cx, node, *frame_step, *frame_length, *onesided),
        SignalOp::MelWeightMatrix { dtype } => return mel_weight_matrix(cx, node, *dtype),
    };
    let Some(a) = op.window() else {
        return unsupported("not a window");
    };
    let out = node.outputs[0];
    let size = cx.shape(out)?.iter().product::<usize>();
    let denom = if a.periodic {
        size as f64
    } else {
        size as f64 - 1.0
    };
    let v: Vec<f64> = (0..size).map(|n| f(n as f64, denom)).collect();
    let t = Tensor::from_vec(&[size], v)
        .and_then(|t| t.cast(cx.dtype(out)))
        .map_err(|e| Fail::Unsupported(e.to_string()))?;
    let c = cx.p.consts.len();
    cx.p.consts.push(t);
    cx.new_buffer(out, BufKind::Const(c))?;
    Ok(())
}

/// The mel filter bank, from scalar inputs read at run time (the static output shape fixes the
/// number of mel and spectrum bins, not the frequencies). Every element computes the three bin
/// edges of its mel column (a few scalar operations, the matrix is small) and its triangle's
/// value, following the interpreter: the edges' mel values in `f32` (`log1p` as an `f64` log of
/// the exact `1 + x`, rounded), the edges themselves through numpy's floor division, the falling
/// side of a triangle written after (so over) the rising one.
fn mel_weight_matrix(cx: &mut Cx, node: &Node, dtype: DType) -> Result<(), Fail> {
    let ins: Option<Vec<_>> = (0..5).map(|i| node.input(i)).collect();
    let Some(ins) = ins else {
        return unsupported("missing input");
    };
    for (i, &v) in ins.iter().enumerate() {
        let ok = if i < 3 {
            cx.dtype(v).is_int()
        } else {
            matches!(
                cx.dtype(v),
                DType::F16 | DType::BF16 | DType::F32 | DType::F64
            )
        };
        if !ok || cx.shape(v)?.iter().product::<usize>() != 1 {
            return unsupported("inputs that are not scalars of the expected types");
        }
    }
    let os = cx.shape(node.outputs[0])?;
    let &[spec_bins, mel_bins] = os.as_slice() else {
        return unsupported("an output that is not 2-D");
    };
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    if spec_bins * mel_bins == 0 {
        return Ok(());
    }
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let mut scalars = Vec::new();
    for &v in &ins[1..] {
        let p = kb.param(&cx.p, cx.buf(v)?, Access::Read);
        scalars.push(f64_of(Expr::load(p, Expr::idx(0)), cx.dtype(v)));
    }
    let op_ = kb.param(&cx.p, out, Access::Write);
    let f = |v: f64| Expr::float(DType::F64, v);
    let f32l = |v: f32| Expr::float(DType::F32, f64::from(v));
    let bin = Expr::bin;
    let [dft_len, rate, lower, upper] = [0, 1, 2, 3].map(|i| scalars[i].clone());
    let ln10 = 10f64.ln();
    // The reference's f32 mel of a frequency, widened.
    let to_mel = |hz: Expr| {
        let x = bin(BinOp::Div, Expr::cast(DType::F32, hz), f32l(700.0));
        let l1p = Expr::cast(
            DType::F32,
            Expr::un(
                UnOp::Log,
                bin(BinOp::Add, f(1.0), Expr::cast(DType::F64, x)),
            ),
        );
        bin(
            BinOp::Div,
            Expr::cast(DType::F64, bin(BinOp::Mul, f32l(2595.0), l1p)),
            f(ln10),
        )
    };
    let [lo, step, a_num, rate_v, jf] = [(); 5].map(|_| kb.var(DType::F64));
    let edge_vars: Vec<VarId> = (0..3).map(|_| kb.var(DType::I64)).collect();
    let body = loop_nest(&mut kb, &[spec_bins, mel_bins], |kb, v| {
        let (j, i) = (Expr::var(v[0]), Expr::var(v[1]));
        let var = Expr::var;
        let mut s = vec![
            Stmt::Let {
                var: lo,
                value: to_mel(lower.clone()),
            },
            Stmt::Let {
                var: step,
                value: bin(
                    BinOp::Div,
                    bin(BinOp::Sub, to_mel(upper.clone()), var(lo)),
                    f((mel_bins + 2) as f64),
                ),
            },
            Stmt::Let {
                var: a_num,
                value: bin(BinOp::Add, dft_len.clone(), f(1.0)),
            },
            Stmt::Let {
                var: rate_v,
                value: rate.clone(),
            },
            Stmt::Let {
                var: jf,
                value: Expr::cast(DType::F64, j.clone()),
            },
        ];
        for (d, &ev) in edge_vars.iter().enumerate() {
            let mel = bin(
                BinOp::Add,
                bin(
                    BinOp::Mul,
                    Expr::cast(DType::F64, Expr::add_idx(i.clone(), Expr::idx(d as i64))),
                    var(step),
                ),
                var(lo),
            );
            let e = Expr::un(
                UnOp::Exp,
                bin(BinOp::Mul, bin(BinOp::Div, mel, f(2595.0)), f(ln10)),
            );
            let hz = bin(BinOp::Mul, f(700.0), bin(BinOp::Sub, e, f(1.0)));
            let a = bin(BinOp::Mul, var(a_num), hz);
            // numpy's floor division through fmod.
            let [av, m_, div_, fl_] = [(); 4].map(|_| kb.var(DType::F64));
            s.extend([
                Stmt::Let { var: av, value: a },
                Stmt::Let {
                    var: m_,
                    value: bin(BinOp::Rem, var(av), var(rate_v)),
                },
                Stmt::Let {
                    var: div_,
                    value: bin(BinOp::Div, bin(BinOp::Sub, var(av), var(m_)), var(rate_v)),
                },
                Stmt::Assign {
                    var: div_,
                    value: Expr::select(
                        bin(
                            BinOp::And,
                            bin(BinOp::Ne, var(m_), f(0.0)),
                            bin(
                                BinOp::Ne,
                                bin(BinOp::Lt, var(rate_v), f(0.0)),
                                bin(BinOp::Lt, var(m_), f(0.0)),
                            ),
                        ),
                        bin(BinOp::Sub, var(div_), f(1.0)),
                        var(div_),
                    ),
                },
                Stmt::Let {
                    var: fl_,
                    value: Expr::un(UnOp::Floor, var(div_)),
                },
                Stmt::Let {
                    var: ev,
                    value: Expr::cast(
                        DType::I64,
                        Expr::select(
                            bin(BinOp::Gt, bin(BinOp::Sub, var(div_), var(fl_)), f(0.5)),
                            bin(BinOp::Add, var(fl_), f(1.0)),
                            var(fl_),
                        ),
                    ),
                },
            ]);
        }
        let [left, center, right] = [0, 1, 2].map(|d| var(edge_vars[d]));
        let ff = |e: Expr| Expr::cast(DType::F64, e);
        let (up, down) = (
            bin(BinOp::Sub, center.clone(), left.clone()),
            bin(BinOp::Sub, right.clone(), center.clone()),
        );
        let in_down = bin(
            BinOp::And,
            bin(BinOp::Gt, down.clone(), Expr::idx(0)),
            bin(
                BinOp::And,
                bin(BinOp::Ge, j.clone(), center.clone()),
                bin(BinOp::Lt, j.clone(), right.clone()),
            ),
        );
        let in_up = bin(
            BinOp::And,
            bin(BinOp::Ge, j.clone(), left.clone()),
            bin(BinOp::Le, j.clone(), center.clone()),
        );
        let up_v = Expr::select(
            bin(BinOp::Eq, up.clone(), Expr::idx(0)),
            f(1.0),
            bin(
                BinOp::Div,
                bin(BinOp::Sub, var(jf), ff(left)),
                ff(up.clone()),
            ),
        );
        let down_v = bin(BinOp::Div, bin(BinOp::Sub, ff(right), var(jf)), ff(down));
        let value = Expr::select(
            in_down,
            down_v,
            Expr::select(
                bin(
                    BinOp::Or,
                    bin(
                        BinOp::And,
                        bin(BinOp::Eq, up, Expr::idx(0)),
                        bin(BinOp::Eq, j.clone(), center),
                    ),
                    in_up,
                ),
                up_v,
                f(0.0),
            ),
        );
        s.push(Stmt::Store {
            param: op_,
            index: Expr::add_idx(Expr::mul_idx(j, mel_bins as i64), i),
            value: Expr::cast(dtype, value),
        });
        s
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}
