//! [`Stmt::Depthwise`] written out as plain loops, for backends without a depthwise library
//! kernel (the NVPTX backend) and for lowering steps that rewrite a kernel's stores.
//!
//! Why a function here and not a second lowering: the statement is the one description of the
//! convolution; a backend that cannot call a tuned kernel asks for its loop form, which
//! computes exactly what the evaluator defines (same taps in the same order, padding read as
//! 0.0 through a select on a clamped index, the epilogue as `let`s), so every backend agrees
//! with the oracle.

use crate::kernel::*;
use mlc_ir::DType;

/// `k` with every [`Stmt::Depthwise`] replaced by its loop form; the same kernel when it has
/// none.
pub fn expand_depthwise(k: &Kernel) -> Kernel {
    expand_kernel(k, &|k, s| match s {
        Stmt::Depthwise(dw) => Some(loops(k, dw)),
        _ => None,
    })
}

/// Whether `body` holds a [`Stmt::Depthwise`] at any depth.
pub fn has_depthwise(body: &[Stmt]) -> bool {
    holds(body, &|s| matches!(s, Stmt::Depthwise(_)))
}

/// What replaces a statement: its loop form, or `None` to keep it.
type Expansion<'a> = dyn Fn(&mut Kernel, &Stmt) -> Option<Vec<Stmt>> + 'a;

/// `k` with every statement that `expand` takes, at any loop depth, replaced by its loops.
fn expand_kernel(k: &Kernel, expand: &Expansion) -> Kernel {
    let mut out = k.clone();
    let body = std::mem::take(&mut out.body);
    out.body = expand_block(&mut out, body, expand);
    out
}

/// Whether `body` holds a statement `which` picks, at any loop depth.
fn holds(body: &[Stmt], which: &dyn Fn(&Stmt) -> bool) -> bool {
    body.iter().any(|s| match s {
        Stmt::For { body, .. } => holds(body, which),
        s => which(s),
    })
}

fn expand_block(k: &mut Kernel, body: Vec<Stmt>, expand: &Expansion) -> Vec<Stmt> {
    let mut out = Vec::with_capacity(body.len());
    for s in body {
        if let Some(v) = expand(k, &s) {
            out.extend(v);
            continue;
        }
        match s {
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => {
                let body = expand_block(k, body, expand);
                out.push(Stmt::For {
                    var,
                    extent,
                    kind,
                    body,
                });
            }
            s => out.push(s),
        }
    }
    out
}

fn idx(v: usize) -> Expr {
    Expr::idx(v as i64)
}

fn for_(var: VarId, extent: usize, kind: LoopKind, body: Vec<Stmt>) -> Stmt {
    Stmt::For {
        var,
        extent: idx(extent),
        kind,
        body,
    }
}

/// One input coordinate of a tap: `o·stride + t·dil - pad`, clamped into `[0, n)`, and
/// whether it was inside.
fn coord(o: VarId, t: usize, stride: usize, dil: usize, pad: usize, n: usize) -> (Expr, Expr) {
    let pos = Expr::add_idx(
        Expr::mul_idx(Expr::var(o), stride as i64),
        Expr::idx((t * dil) as i64 - pad as i64),
    );
    let inside = Expr::bin(
        BinOp::And,
        Expr::bin(BinOp::Ge, pos.clone(), Expr::idx(0)),
        Expr::bin(BinOp::Lt, pos.clone(), idx(n)),
    );
    let clamped = Expr::bin(
        BinOp::Max,
        Expr::bin(BinOp::Min, pos, Expr::idx(n as i64 - 1)),
        Expr::idx(0),
    );
    (clamped, inside)
}

fn loops(k: &mut Kernel, dw: &Depthwise) -> Vec<Stmt> {
    let f32_ = DType::F32;
    let m = dw.channels * dw.mult;
    let ([ih, iw], [oh, ow], [kh, kw]) = (dw.in_hw, dw.out_hw, dw.kernel);
    let (p, oy, ox) = (k.var(DType::I64), k.var(DType::I64), k.var(DType::I64));
    let (mo, acc) = (k.var(DType::I64), k.var(f32_));
    // Plane p = n·m + mo reads input plane n·c + mo / mult.
    let in_plane = Expr::mul_idx(
        Expr::add_idx(
            Expr::mul_idx(
                Expr::bin(BinOp::Div, Expr::var(p), idx(m)),
                dw.channels as i64,
            ),
            Expr::bin(BinOp::Div, Expr::var(mo), idx(dw.mult)),
        ),
        (ih * iw) as i64,
    );
    let types: Vec<DType> = k.params.iter().map(|q| q.dtype).collect();
    let dtype = |p: ParamId| types.get(p.0 as usize).copied().unwrap_or(f32_);
    // A scalar operand as f32 (an 8-bit one converted).
    let as_f32 = |p: ParamId| {
        let v = Expr::load(p, Expr::idx(0));
        if dtype(p) == f32_ {
            v
        } else {
            Expr::cast(f32_, v)
        }
    };
    let x_ty = dtype(dw.x);
    let x_zero = dw.x_zero.map(as_f32);
    let x_at = |at: Expr| {
        let v = Expr::load(dw.x, at);
        if x_ty == f32_ {
            return v;
        }
        let v = Expr::cast(f32_, v);
        match &x_zero {
            Some(z) => Expr::bin(BinOp::Sub, v, z.clone()),
            None => v,
        }
    };
    let out_ty = dtype(dw.out);
    let mut inner = vec![Stmt::Let {
        var: acc,
        value: match dw.bias {
            Some(b) => Expr::load(b, Expr::var(mo)),
            None => Expr::float(f32_, 0.0),
        },
    }];
    for ky in 0..kh {
        let (ry, iny) = coord(oy, ky, dw.stride[0], dw.dilation[0], dw.pad[0], ih);
        for kx in 0..kw {
            let (rx, inx) = coord(ox, kx, dw.stride[1], dw.dilation[1], dw.pad[1], iw);
            let at = Expr::add_idx(
                Expr::add_idx(in_plane.clone(), Expr::mul_idx(ry.clone(), iw as i64)),
                rx,
            );
            let xv = Expr::select(
                Expr::bin(BinOp::And, iny.clone(), inx),
                x_at(at),
                Expr::float(f32_, 0.0),
            );
            let wv = Expr::load(
                dw.w,
                Expr::add_idx(
                    Expr::mul_idx(Expr::var(mo), (kh * kw) as i64),
                    idx(ky * kw + kx),
                ),
            );
            inner.push(Stmt::Assign {
                var: acc,
                value: Expr::bin(BinOp::Add, Expr::var(acc), Expr::bin(BinOp::Mul, xv, wv)),
            });
        }
    }
    // The epilogue: `x` and `s` start as the accumulator.
    let (x, s) = (k.var(f32_), k.var(f32_));
    inner.push(Stmt::Let {
        var: x,
        value: Expr::var(acc),
    });
    inner.push(Stmt::Let {
        var: s,
        value: Expr::var(acc),
    });
    for e in &dw.epilogue {
        let (var, value) = match e {
            EpOp::Bin { op, arg, arg_first } => {
                let a = match arg {
                    EpArg::Lit(v) => Expr::float(f32_, *v as f64),
                    EpArg::Scalar(q) => as_f32(*q),
                    EpArg::Channel(q) => Expr::load(*q, Expr::var(mo)),
                };
                let v = if *arg_first {
                    Expr::bin(*op, a, Expr::var(x))
                } else {
                    Expr::bin(*op, Expr::var(x), a)
                };
                (x, v)
            }
            EpOp::Save => (s, Expr::var(x)),
            EpOp::Sigmoid => {
                let one = || Expr::float(f32_, 1.0);
                let e = Expr::un(UnOp::Exp, Expr::un(UnOp::Neg, Expr::var(x)));
                (
                    x,
                    Expr::bin(BinOp::Div, one(), Expr::bin(BinOp::Add, one(), e)),
                )
            }
            EpOp::Combine { op, saved_first } => {
                let v = if *saved_first {
                    Expr::bin(*op, Expr::var(s), Expr::var(x))
                } else {
                    Expr::bin(*op, Expr::var(x), Expr::var(s))
                };
                (x, v)
            }
            EpOp::Round => (x, Expr::un(UnOp::Round, Expr::var(x))),
            EpOp::Narrow(t) => (x, Expr::cast(f32_, Expr::cast(*t, Expr::var(x)))),
            EpOp::Table { table, signed } => {
                let byte = if *signed { DType::I8 } else { DType::U8 };
                let mut i = Expr::cast(DType::I64, Expr::cast(byte, Expr::var(x)));
                if *signed {
                    i = Expr::bin(BinOp::Add, i, Expr::idx(128));
                }
                (x, Expr::load(*table, i))
            }
        };
        inner.push(Stmt::Assign { var, value });
    }
    let stored = if out_ty == f32_ {
        Expr::var(x)
    } else {
        Expr::cast(out_ty, Expr::var(x))
    };
    inner.push(Stmt::Store {
        param: dw.out,
        index: Expr::add_idx(
            Expr::mul_idx(Expr::var(p), (oh * ow) as i64),
            Expr::add_idx(Expr::mul_idx(Expr::var(oy), ow as i64), Expr::var(ox)),
        ),
        value: stored,
    });
    let per_plane = vec![
        Stmt::Let {
            var: mo,
            value: Expr::bin(BinOp::Rem, Expr::var(p), idx(m)),
        },
        for_(
            oy,
            oh,
            LoopKind::Serial,
            vec![for_(ox, ow, LoopKind::Serial, inner)],
        ),
    ];
    vec![for_(p, dw.batch * m, LoopKind::Parallel, per_plane)]
}

// ---- Softmax ---------------------------------------------------------------------------

/// `k` with every [`Stmt::Softmax`] replaced by its loop form (one parallel loop over the rows,
/// three vector loops per row: max, exponentials stored and summed, rescale in place): what
/// the evaluator defines, which is what the softmax lowering emitted before the statement
/// existed. The same kernel when it has none.
pub fn expand_softmax(k: &Kernel) -> Kernel {
    expand_kernel(k, &|k, s| match s {
        Stmt::Softmax(sm) => Some(softmax_loops(k, sm)),
        _ => None,
    })
}

/// Whether `body` holds a [`Stmt::Softmax`] at any depth.
pub fn has_softmax(body: &[Stmt]) -> bool {
    holds(body, &|s| matches!(s, Stmt::Softmax(_)))
}

fn softmax_loops(k: &mut Kernel, sm: &Softmax) -> Vec<Stmt> {
    let f32_ = DType::F32;
    // The loop form reads the exponentials back from `out`.
    k.params[sm.out.0 as usize].access = Access::ReadWrite;
    let r = k.var(DType::I64);
    let at = |c: VarId| Expr::add_idx(Expr::mul_idx(Expr::var(r), sm.len as i64), Expr::var(c));
    // The mask row's start: digit i of r is (r / (product of the inner extents)) % extent_i.
    let moff = sm.mask.as_ref().map(|m| {
        let (mut off, mut inner) = (Expr::idx(0), 1usize);
        for &(e, st) in m.dims.iter().rev() {
            if st != 0 && e > 1 {
                let digit = Expr::bin(
                    BinOp::Rem,
                    Expr::bin(BinOp::Div, Expr::var(r), idx(inner)),
                    idx(e),
                );
                off = Expr::add_idx(off, Expr::mul_idx(digit, st));
            }
            inner *= e.max(1);
        }
        (m.param, off)
    });
    let value = |c: VarId| {
        let mut v = Expr::load(sm.x, at(c));
        match sm.scale {
            Some(EpArg::Lit(s)) => v = Expr::bin(BinOp::Mul, v, Expr::float(f32_, s as f64)),
            // (A channel argument is refused by the verifier; as a scalar it is element 0.)
            Some(EpArg::Scalar(p) | EpArg::Channel(p)) => {
                v = Expr::bin(BinOp::Mul, v, Expr::load(p, Expr::idx(0)))
            }
            None => {}
        }
        if let Some((p, off)) = &moff {
            v = Expr::bin(
                BinOp::Add,
                v,
                Expr::load(*p, Expr::add_idx(off.clone(), Expr::var(c))),
            );
        }
        v
    };
    let (mx, sum, inv, ev) = (k.var(f32_), k.var(f32_), k.var(f32_), k.var(f32_));
    let (c0, c1, c2) = (k.var(DType::I64), k.var(DType::I64), k.var(DType::I64));
    let row = vec![
        Stmt::Let {
            var: mx,
            value: Expr::float(f32_, f64::NEG_INFINITY),
        },
        for_(
            c0,
            sm.len,
            LoopKind::Vector,
            vec![Stmt::Assign {
                var: mx,
                value: Expr::bin(BinOp::Max, Expr::var(mx), value(c0)),
            }],
        ),
        Stmt::Let {
            var: sum,
            value: Expr::float(f32_, 0.0),
        },
        for_(
            c1,
            sm.len,
            LoopKind::Vector,
            vec![
                Stmt::Let {
                    var: ev,
                    value: Expr::un(UnOp::Exp, Expr::bin(BinOp::Sub, value(c1), Expr::var(mx))),
                },
                Stmt::Store {
                    param: sm.out,
                    index: at(c1),
                    value: Expr::var(ev),
                },
                Stmt::Assign {
                    var: sum,
                    value: Expr::bin(BinOp::Add, Expr::var(sum), Expr::var(ev)),
                },
            ],
        ),
        Stmt::Let {
            var: inv,
            value: Expr::bin(BinOp::Div, Expr::float(f32_, 1.0), Expr::var(sum)),
        },
        for_(
            c2,
            sm.len,
            LoopKind::Vector,
            vec![Stmt::Store {
                param: sm.out,
                index: at(c2),
                value: Expr::bin(BinOp::Mul, Expr::load(sm.out, at(c2)), Expr::var(inv)),
            }],
        ),
    ];
    vec![for_(r, sm.rows, LoopKind::Parallel, row)]
}

// ---- end Softmax ------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{run_program, verify_kernel};
    use mlc_ir::Tensor;

    /// Deterministic values in [-1, 1).
    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// A program of one kernel running `st` on parameters for `inputs` (read, in order) and
    /// one output of `len` elements of `ty` after them.
    fn one_statement(
        inputs: &[Tensor],
        (ty, len, access): (DType, usize, Access),
        st: Stmt,
    ) -> Program {
        let mut p = Program::default();
        let mut k = Kernel::new("k");
        let mut args = vec![];
        for (i, t) in inputs.iter().enumerate() {
            args.push(p.add_buffer(t.dtype(), vec![t.len()], BufKind::Input(i)));
            k.param(t.dtype(), t.len(), Access::Read);
        }
        let out = p.add_buffer(ty, vec![len], BufKind::Temp);
        args.push(out);
        k.param(ty, len, access);
        k.body = vec![st];
        let id = p.intern_kernel(k);
        p.steps.push(Step {
            kernel: id,
            args,
            origin: None,
        });
        p.inputs = (0..inputs.len())
            .map(|i| (format!("in{i}"), BufId(i as u32)))
            .collect();
        p.outputs = vec![("out".into(), out)];
        p
    }

    /// A program of one depthwise statement (x, w, bias, a scalar, out) and its inputs.
    fn program(dw: &Depthwise, seed: u64) -> (Program, Vec<Tensor>) {
        let (lx, lw, ly) = dw.lens();
        let m = dw.channels * dw.mult;
        let inputs: Vec<Tensor> = [lx, lw, m, 1]
            .into_iter()
            .enumerate()
            .map(|(i, len)| Tensor::from_vec(&[len], data(len, seed + i as u64)).expect("tensor"))
            .collect();
        let st = Stmt::Depthwise(Box::new(dw.clone()));
        let p = one_statement(&inputs, (DType::F32, ly, Access::Write), st);
        (p, inputs)
    }

    /// An 8-bit input with its zero point, per-channel operands, rounding, narrowing and an
    /// 8-bit output: the loop form computes exactly what the evaluator makes of the statement.
    #[test]
    fn the_loop_form_of_a_quantized_statement_matches() {
        let bin = |op, arg, arg_first| EpOp::Bin { op, arg, arg_first };
        for (x_ty, out_ty) in [
            (DType::U8, DType::U8),
            (DType::I8, DType::I8),
            (DType::U8, DType::I32),
        ] {
            let dw = Depthwise {
                batch: 2,
                channels: 3,
                mult: 2,
                in_hw: [6, 7],
                out_hw: [3, 4],
                kernel: [3, 3],
                stride: [2, 2],
                dilation: [1, 1],
                pad: [1, 1],
                x: ParamId(0),
                x_zero: Some(ParamId(1)),
                w: ParamId(2),
                bias: None,
                out: ParamId(4),
                epilogue: if out_ty == DType::I32 {
                    vec![]
                } else {
                    vec![
                        bin(BinOp::Mul, EpArg::Channel(ParamId(3)), false),
                        bin(BinOp::Div, EpArg::Lit(0.3), false),
                        EpOp::Round,
                        bin(BinOp::Add, EpArg::Scalar(ParamId(1)), false),
                        EpOp::Narrow(out_ty),
                        bin(BinOp::Sub, EpArg::Lit(2.5), false),
                    ]
                },
            };
            let (lx, lw, ly) = dw.lens();
            let x: Vec<i64> = data(lx, 1).iter().map(|v| (v * 127.0) as i64).collect();
            let xt = if x_ty == DType::U8 {
                Tensor::from_vec(&[lx], x.iter().map(|&v| (v + 128) as u8).collect()).expect("x")
            } else {
                Tensor::from_vec(&[lx], x.iter().map(|&v| v as i8).collect()).expect("x")
            };
            let zt = if x_ty == DType::U8 {
                Tensor::from_vec(&[1], vec![120u8]).expect("z")
            } else {
                Tensor::from_vec(&[1], vec![-7i8]).expect("z")
            };
            let w: Vec<f32> = data(lw, 2).iter().map(|v| (v * 100.0).round()).collect();
            let ch: Vec<f32> = data(6, 3).iter().map(|v| v.abs() * 1e-3).collect();
            let inputs = vec![
                xt,
                zt,
                Tensor::from_vec(&[lw], w).expect("w"),
                Tensor::from_vec(&[6], ch).expect("ch"),
            ];
            let st = Stmt::Depthwise(Box::new(dw));
            let p = one_statement(&inputs, (out_ty, ly, Access::Write), st);
            verify_kernel(&p.kernels[0]).expect("statement verifies");
            let mut q = p.clone();
            q.kernels[0] = expand_depthwise(&p.kernels[0]);
            verify_kernel(&q.kernels[0]).expect("loop form verifies");
            let a = run_program(&p, &inputs).expect("statement").remove(0);
            let b = run_program(&q, &inputs).expect("loops").remove(0);
            assert_eq!(a.dtype(), out_ty);
            let (a, b) = (a.to_f64_vec().expect("ints"), b.to_f64_vec().expect("ints"));
            assert_eq!(a, b, "{x_ty:?} -> {out_ty:?}");
            // Not a constant output: the rewrite has something to get wrong.
            assert!(a.iter().any(|v| *v != a[0]), "{a:?}");
        }
    }

    #[test]
    fn the_loop_form_computes_what_the_statement_defines() {
        let bin = |op, arg, arg_first| EpOp::Bin { op, arg, arg_first };
        let gate = vec![
            bin(BinOp::Mul, EpArg::Scalar(ParamId(3)), true),
            bin(BinOp::Add, EpArg::Lit(0.25), false),
            EpOp::Save,
            bin(BinOp::Add, EpArg::Lit(3.0), false),
            bin(BinOp::Max, EpArg::Lit(0.0), false),
            bin(BinOp::Min, EpArg::Lit(6.0), false),
            EpOp::Combine {
                op: BinOp::Mul,
                saved_first: true,
            },
            bin(BinOp::Div, EpArg::Lit(6.0), false),
            bin(BinOp::Sub, EpArg::Scalar(ParamId(3)), true),
        ];
        let cases = [
            (
                2,
                3,
                1,
                [6, 7],
                [6, 7],
                [3, 3],
                [1, 1],
                [1, 1],
                [1, 1],
                true,
            ),
            (
                1,
                2,
                2,
                [9, 8],
                [4, 3],
                [5, 5],
                [2, 2],
                [1, 1],
                [2, 1],
                false,
            ),
            (
                1,
                3,
                1,
                [9, 9],
                [5, 5],
                [3, 3],
                [1, 1],
                [2, 2],
                [0, 0],
                true,
            ),
            (
                1,
                1,
                1,
                [5, 11],
                [3, 3],
                [3, 1],
                [2, 3],
                [1, 1],
                [1, 0],
                true,
            ),
        ];
        for (i, (n, c, mult, in_hw, out_hw, kernel, stride, dilation, pad, bias)) in
            cases.into_iter().enumerate()
        {
            for ep in [vec![], gate.clone()] {
                let dw = Depthwise {
                    batch: n,
                    channels: c,
                    mult,
                    in_hw,
                    out_hw,
                    kernel,
                    stride,
                    dilation,
                    pad,
                    x: ParamId(0),
                    x_zero: None,
                    w: ParamId(1),
                    bias: bias.then_some(ParamId(2)),
                    out: ParamId(4),
                    epilogue: ep,
                };
                let (p, inputs) = program(&dw, i as u64 * 10);
                let mut q = p.clone();
                q.kernels[0] = expand_depthwise(&p.kernels[0]);
                assert!(!has_depthwise(&q.kernels[0].body));
                verify_kernel(&p.kernels[0]).expect("statement verifies");
                verify_kernel(&q.kernels[0]).expect("loop form verifies");
                let a = run_program(&p, &inputs).expect("statement").remove(0);
                let b = run_program(&q, &inputs).expect("loops").remove(0);
                let (a, b) = (a.to_f64_vec().expect("f32"), b.to_f64_vec().expect("f32"));
                for (j, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(x.to_bits() == y.to_bits(), "case {i} y[{j}]: {x} vs {y}");
                }
            }
        }
    }

    /// The softmax loop form against the statement, in the evaluator, bit for bit: with and
    /// without pre-scale (literal and parameter) and broadcast mask.
    #[test]
    fn the_softmax_loop_form_computes_what_the_statement_defines() {
        for (rows, len, dims) in [
            (6, 7, vec![(2, 7), (3, 0)]),
            (4, 16, vec![(4, 16)]),
            (1, 33, vec![(1, 0)]),
        ] {
            for scale in [
                None,
                Some(EpArg::Lit(0.125)),
                Some(EpArg::Scalar(ParamId(2))),
            ] {
                for masked in [false, true] {
                    let mlen = 4 * 16;
                    let inputs: Vec<Tensor> = [rows * len, mlen, 1]
                        .into_iter()
                        .enumerate()
                        .map(|(i, l)| {
                            let v: Vec<f32> =
                                data(l, 3 + i as u64).iter().map(|v| v * 9.0).collect();
                            Tensor::from_vec(&[l], v).expect("tensor")
                        })
                        .collect();
                    let sm = Softmax {
                        rows,
                        len,
                        x: ParamId(0),
                        scale,
                        mask: masked.then(|| SoftmaxMask {
                            param: ParamId(1),
                            dims: dims.clone(),
                        }),
                        out: ParamId(3),
                    };
                    let out = (DType::F32, rows * len, Access::ReadWrite);
                    let p = one_statement(&inputs, out, Stmt::Softmax(Box::new(sm)));
                    let mut q = p.clone();
                    q.kernels[0] = expand_softmax(&p.kernels[0]);
                    assert!(!has_softmax(&q.kernels[0].body));
                    verify_kernel(&p.kernels[0]).expect("statement verifies");
                    verify_kernel(&q.kernels[0]).expect("loop form verifies");
                    let a = run_program(&p, &inputs).expect("statement").remove(0);
                    let b = run_program(&q, &inputs).expect("loops").remove(0);
                    let (a, b) = (a.to_f64_vec().expect("f32"), b.to_f64_vec().expect("f32"));
                    let total: f64 = a.iter().sum();
                    assert!((total - rows as f64).abs() < 1e-4, "rows sum to 1: {total}");
                    for (j, (x, y)) in a.iter().zip(&b).enumerate() {
                        assert!(x.to_bits() == y.to_bits(), "y[{j}]: {x} vs {y}");
                    }
                }
            }
        }
    }
}
