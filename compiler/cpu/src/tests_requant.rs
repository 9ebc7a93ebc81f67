//! The requantization fusion on small programs built like the lowering builds them: what
//! fuses and what must not, and exactness (the evaluator before and after the pass, the
//! compiled program after it, on random data with ties and saturation).

use super::*;
use crate::CompiledProgram;
use mlc_ir::Tensor;
use mlc_kir::{Buffer, LoopKind, run_program};

use crate::tests::Rng;

/// How the test program differs from the plain per-channel conv tail.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Plain,
    /// One multiplier for the whole tensor.
    PerTensor,
    /// C column-major (`Cᵀ` stored), the tail's multiplier indexed by the inner counter.
    ColMajor,
    /// The tail's nest is `m × h × w` with `n = h·w`.
    ThreeLoops,
    /// The tail clamps to a narrower range than the output type's: not the formula.
    NarrowClamp,
    /// Another step also reads the `i32` result.
    SecondReader,
    /// The tail divides before it multiplies: not the formula.
    DivFirst,
    /// A QDQ residual block: the requantized value dequantized, a quantized residual (of the
    /// other 8-bit type) dequantized and added, the sum quantized again.
    Residual,
    /// As `Residual`, but the addend dequantizes with another zero point than the
    /// requantization's: not the formula.
    ResidualOtherZp,
    /// As `Residual` with an f32 residual quantized in the tail (a branch that arrives
    /// dequantized).
    ResidualF32,
    /// A float bias per row added after the multiplication (PyTorch's QDQ export).
    Shifted,
    /// As `Shifted` with C column-major: the shift indexed by the inner counter.
    ShiftedColMajor,
    /// The bias added before the multiplication: not the formula.
    ShiftFirst,
    /// `Residual` of a `Shifted` product (MobileNetV2's QDQ residual blocks).
    ShiftedResidual,
    /// A quantized activation after the requantization, as QDQ models spell SiLU
    /// (`Q(x · DQ(Q(sigmoid(x))))` with `x = DQ(q)`): a function of the requantized byte, so
    /// a table in the epilogue.
    Activated,
    /// As `Activated` with a cheap activation (`Q(clip(DQ(q), 0, 6))`, a QDQ ReLU6).
    ActivatedCheap,
    /// As `Activated`, the activation also reading the `i32` result: no function of one byte.
    ActivatedMixed,
}

impl Variant {
    fn shifted(self) -> bool {
        matches!(
            self,
            Variant::Shifted
                | Variant::ShiftedColMajor
                | Variant::ShiftFirst
                | Variant::ShiftedResidual
        )
    }
}

/// `out = requant(A (m×k, i8) · B (k×n, u8) + bias)` as two steps, the tail as lowering
/// writes it.
fn program(m: usize, n: usize, k: usize, out_ty: DType, v: Variant, rng: &mut Rng) -> Program {
    let mut p = Program::default();
    let a_vals: Vec<i8> = (0..m * k).map(|_| rng.int(-128, 127) as i8).collect();
    p.consts.push(Tensor::from_vec(&[m, k], a_vals).unwrap());
    let bias: Vec<i32> = (0..m).map(|_| rng.int(-3000, 3000) as i32).collect();
    p.consts.push(Tensor::from_vec(&[m], bias).unwrap());
    // Multipliers: a few exact (ties with a scale of 2), most small; the scale and zero point.
    let mult: Vec<f32> = (0..m)
        .map(|i| {
            if i % 3 == 0 {
                1.0
            } else {
                rng.int(1, 5000) as f32 * 1e-5
            }
        })
        .collect();
    p.consts.push(Tensor::from_vec(&[m], mult).unwrap());
    let scale = [2.0f32, 0.37, 0.011][rng.int(0, 2) as usize];
    p.consts.push(Tensor::from_vec(&[1], vec![scale]).unwrap());
    let zp = if out_ty == DType::U8 {
        Tensor::from_vec(&[1], vec![rng.int(0, 255) as u8]).unwrap()
    } else {
        Tensor::from_vec(&[1], vec![rng.int(-128, 127) as i8]).unwrap()
    };
    p.consts.push(zp);
    let buf = |p: &mut Program, dtype, shape: Vec<usize>, kind| p.add_buffer(dtype, shape, kind);
    let ba = buf(&mut p, DType::I8, vec![m, k], BufKind::Const(0));
    let bb = buf(&mut p, DType::U8, vec![k, n], BufKind::Input(0));
    let bbias = buf(&mut p, DType::I32, vec![m], BufKind::Const(1));
    let bmult = buf(&mut p, DType::F32, vec![m], BufKind::Const(2));
    let bscale = buf(&mut p, DType::F32, vec![1], BufKind::Const(3));
    let bzp = buf(&mut p, out_ty, vec![1], BufKind::Const(4));
    let bc = buf(&mut p, DType::I32, vec![m * n], BufKind::Temp);
    let bout = buf(&mut p, out_ty, vec![m * n], BufKind::Temp);
    p.inputs.push(("b".into(), bb));
    p.outputs.push(("out".into(), bout));
    // The residual (of the other 8-bit type), its scale and zero point, the sum's scale and
    // zero point: consts 5..=9.
    let residual = matches!(
        v,
        Variant::Residual
            | Variant::ResidualOtherZp
            | Variant::ResidualF32
            | Variant::ShiftedResidual
    );
    let lty = if v == Variant::ResidualF32 {
        DType::F32
    } else if out_ty == DType::U8 {
        DType::I8
    } else {
        DType::U8
    };
    let rty = if out_ty == DType::U8 {
        DType::I8
    } else {
        DType::U8
    };
    let byte = |ty: DType, v: i64| {
        if ty == DType::U8 {
            Tensor::from_vec(&[1], vec![(v + 128) as u8]).unwrap()
        } else {
            Tensor::from_vec(&[1], vec![v as i8]).unwrap()
        }
    };
    let rbufs = residual.then(|| {
        let r: Vec<i64> = (0..m * n).map(|_| rng.int(-128, 127)).collect();
        p.consts.push(if lty == DType::F32 {
            Tensor::from_vec(&[m * n], r.iter().map(|&x| x as f32 * 0.093).collect()).unwrap()
        } else if rty == DType::U8 {
            Tensor::from_vec(&[m * n], r.iter().map(|&x| (x + 128) as u8).collect()).unwrap()
        } else {
            Tensor::from_vec(&[m * n], r.iter().map(|&x| x as i8).collect()).unwrap()
        });
        p.consts
            .push(Tensor::from_vec(&[1], vec![0.05f32]).unwrap());
        p.consts.push(byte(rty, rng.int(-20, 20)));
        let os = [0.5f32, 0.07, 2.0][rng.int(0, 2) as usize];
        p.consts.push(Tensor::from_vec(&[1], vec![os]).unwrap());
        p.consts.push(byte(out_ty, rng.int(-20, 20)));
        [
            buf(&mut p, lty, vec![m * n], BufKind::Const(5)),
            buf(&mut p, DType::F32, vec![1], BufKind::Const(6)),
            buf(&mut p, rty, vec![1], BufKind::Const(7)),
            buf(&mut p, DType::F32, vec![1], BufKind::Const(8)),
            buf(&mut p, out_ty, vec![1], BufKind::Const(9)),
        ]
    });

    // The contraction.
    let mut mk = Kernel::new("conv_integer");
    let pa = mk.param(DType::I8, m * k, Access::Read);
    let pb = mk.param(DType::U8, k * n, Access::Read);
    let pbias = mk.param(DType::I32, m, Access::Read);
    let pc = mk.param(DType::I32, m * n, Access::Write);
    let col = matches!(v, Variant::ColMajor | Variant::ShiftedColMajor);
    let mm = Matmul {
        m,
        n,
        k,
        a: MatRef {
            param: pa,
            offset: Expr::idx(0),
            row_stride: k as i64,
            col_stride: 1,
        },
        b: MatRef {
            param: pb,
            offset: Expr::idx(0),
            row_stride: n as i64,
            col_stride: 1,
        },
        c: MatRef {
            param: pc,
            offset: Expr::idx(0),
            row_stride: if col { 1 } else { n as i64 },
            col_stride: if col { m as i64 } else { 1 },
        },
        alpha: 1.0,
        beta: 0.0,
        bias: Some(MatRef {
            param: pbias,
            offset: Expr::idx(0),
            row_stride: 1,
            col_stride: 0,
        }),
        act: mlc_kir::Activation::None,
        requant: None,
        tail: None,
        b_im2col: None,
    };
    mk.body = vec![Stmt::Matmul(Box::new(mm))];
    let kmm = p.intern_kernel(mk);
    p.steps.push(Step {
        kernel: kmm,
        args: vec![ba, bb, bbias, bc],
        origin: None,
    });

    // The tail.
    let mut t = Kernel::new("fused_epilogue");
    let pout = t.param(out_ty, m * n, Access::Write);
    let pacc = t.param(DType::I32, m * n, Access::Read);
    let pm = t.param(DType::F32, m, Access::Read);
    let ps = t.param(DType::F32, 1, Access::Read);
    let pz = t.param(out_ty, 1, Access::Read);
    let extents: Vec<usize> = match v {
        Variant::ColMajor | Variant::ShiftedColMajor => vec![n, m],
        Variant::ThreeLoops => vec![m, n / 4, 4],
        _ => vec![m, n],
    };
    let vars: Vec<VarId> = extents.iter().map(|_| t.var(DType::I64)).collect();
    let mut idx = Expr::idx(0);
    let mut stride = 1i64;
    for (&var, &e) in vars.iter().zip(&extents).rev() {
        idx = Expr::add_idx(Expr::mul_idx(Expr::var(var), stride), idx);
        stride *= e as i64;
    }
    let mult_idx = match v {
        Variant::PerTensor => Expr::idx(0),
        Variant::ColMajor | Variant::ShiftedColMajor => Expr::var(vars[1]),
        _ => Expr::var(vars[0]),
    };
    // The shift: a const per row of C (after the residual's consts), read like the multiplier.
    let shift = v.shifted().then(|| {
        let vals: Vec<f32> = (0..m).map(|_| rng.int(-4000, 4000) as f32 * 1e-3).collect();
        p.consts.push(Tensor::from_vec(&[m], vals).unwrap());
        let ci = p.consts.len() - 1;
        let b = buf(&mut p, DType::F32, vec![m], BufKind::Const(ci));
        (b, t.param(DType::F32, m, Access::Read))
    });
    let f = |x: f64| Expr::float(DType::F32, x);
    let (lo, hi) = match (out_ty, v) {
        (DType::U8, Variant::NarrowClamp) => (0.0, 127.0),
        (DType::U8, _) => (0.0, 255.0),
        (_, Variant::NarrowClamp) => (-128.0, 100.0),
        _ => (-128.0, 127.0),
    };
    let mut body = Vec::new();
    let mut let_ = |t: &mut Kernel, ty: DType, e: Expr| {
        let var = t.var(ty);
        body.push(Stmt::Let { var, value: e });
        Expr::var(var)
    };
    let acc = let_(&mut t, DType::I32, Expr::load(pacc, idx.clone()));
    let mv = let_(&mut t, DType::F32, Expr::load(pm, mult_idx.clone()));
    let sv = let_(&mut t, DType::F32, Expr::load(ps, Expr::idx(0)));
    let zv = let_(&mut t, out_ty, Expr::load(pz, Expr::idx(0)));
    let x = let_(&mut t, DType::F32, Expr::cast(DType::F32, acc.clone()));
    let x = if v == Variant::DivFirst {
        let d = let_(&mut t, DType::F32, Expr::bin(BinOp::Div, x, sv.clone()));
        let_(&mut t, DType::F32, Expr::bin(BinOp::Mul, d, mv))
    } else if v == Variant::ShiftFirst {
        let sh = Expr::load(shift.as_ref().unwrap().1, mult_idx.clone());
        let y = let_(&mut t, DType::F32, Expr::bin(BinOp::Add, x, sh));
        let y = let_(&mut t, DType::F32, Expr::bin(BinOp::Mul, y, mv));
        let_(&mut t, DType::F32, Expr::bin(BinOp::Div, y, sv.clone()))
    } else {
        let mut y = let_(&mut t, DType::F32, Expr::bin(BinOp::Mul, x, mv));
        if let Some((_, psh)) = shift {
            let sh = Expr::load(psh, mult_idx.clone());
            y = let_(&mut t, DType::F32, Expr::bin(BinOp::Add, y, sh));
        }
        let_(&mut t, DType::F32, Expr::bin(BinOp::Div, y, sv.clone()))
    };
    let x = let_(&mut t, DType::F32, Expr::un(UnOp::Round, x));
    let z = let_(&mut t, DType::F32, Expr::cast(DType::F32, zv.clone()));
    let x = let_(&mut t, DType::F32, Expr::bin(BinOp::Add, x, z));
    let x = let_(&mut t, DType::F32, Expr::bin(BinOp::Max, x, f(lo)));
    let x = let_(&mut t, DType::F32, Expr::bin(BinOp::Min, x, f(hi)));
    let mut q = let_(&mut t, out_ty, Expr::cast(out_ty, x));
    if residual {
        let pr = t.param(lty, m * n, Access::Read);
        let prs = t.param(DType::F32, 1, Access::Read);
        let prz = t.param(rty, 1, Access::Read);
        let pos = t.param(DType::F32, 1, Access::Read);
        let poz = t.param(out_ty, 1, Access::Read);
        let c32 = |e: Expr| Expr::cast(DType::F32, e);
        let zq = if v == Variant::ResidualOtherZp {
            Expr::load(poz, Expr::idx(0))
        } else {
            zv.clone()
        };
        let dq = Expr::bin(
            BinOp::Mul,
            Expr::bin(BinOp::Sub, c32(q), c32(zq)),
            sv.clone(),
        );
        let dq = let_(&mut t, DType::F32, dq);
        let rv = if lty == DType::F32 {
            let (rlo, rhi) = if rty == DType::U8 {
                (0.0, 255.0)
            } else {
                (-128.0, 127.0)
            };
            let x = Expr::bin(
                BinOp::Div,
                Expr::load(pr, idx.clone()),
                Expr::load(prs, Expr::idx(0)),
            );
            let x = Expr::bin(
                BinOp::Add,
                Expr::un(UnOp::Round, x),
                c32(Expr::load(prz, Expr::idx(0))),
            );
            let x = Expr::bin(BinOp::Min, Expr::bin(BinOp::Max, x, f(rlo)), f(rhi));
            let_(&mut t, rty, Expr::cast(rty, x))
        } else {
            Expr::load(pr, idx.clone())
        };
        let dr = Expr::bin(
            BinOp::Mul,
            Expr::load(prs, Expr::idx(0)),
            Expr::bin(BinOp::Sub, c32(rv), c32(Expr::load(prz, Expr::idx(0)))),
        );
        let dr = let_(&mut t, DType::F32, dr);
        // The residual first, as the fused block's operands may come in either order.
        let sum = let_(&mut t, DType::F32, Expr::bin(BinOp::Add, dr, dq));
        let x = Expr::bin(BinOp::Div, sum, Expr::load(pos, Expr::idx(0)));
        let x = Expr::bin(
            BinOp::Add,
            Expr::un(UnOp::Round, x),
            c32(Expr::load(poz, Expr::idx(0))),
        );
        let x = Expr::bin(BinOp::Min, Expr::bin(BinOp::Max, x, f(lo)), f(hi));
        q = let_(&mut t, out_ty, Expr::cast(out_ty, x));
    }
    // The activation's scales and zero points (the gate's, the output's), as consts.
    let mut act_bufs = Vec::new();
    if matches!(
        v,
        Variant::Activated | Variant::ActivatedCheap | Variant::ActivatedMixed
    ) {
        let mut scalar = |p: &mut Program, t: &mut Kernel, x: Tensor| {
            let ty = x.dtype();
            p.consts.push(x);
            act_bufs.push(buf(p, ty, vec![1], BufKind::Const(p.consts.len() - 1)));
            Expr::load(t.param(ty, 1, Access::Read), Expr::idx(0))
        };
        let gs = scalar(
            &mut p,
            &mut t,
            Tensor::from_vec(&[1], vec![1.0f32 / 255.0]).unwrap(),
        );
        let gz = scalar(&mut p, &mut t, byte(out_ty, -128));
        let os = scalar(
            &mut p,
            &mut t,
            Tensor::from_vec(&[1], vec![0.043f32]).unwrap(),
        );
        let oz = scalar(&mut p, &mut t, byte(out_ty, rng.int(-20, 20)));
        let c32 = |e: Expr| Expr::cast(DType::F32, e);
        let quantize = |y: Expr, s: Expr, z: Expr| {
            let x = Expr::bin(
                BinOp::Add,
                Expr::un(UnOp::Round, Expr::bin(BinOp::Div, y, s)),
                c32(z),
            );
            Expr::cast(
                out_ty,
                Expr::bin(BinOp::Min, Expr::bin(BinOp::Max, x, f(lo)), f(hi)),
            )
        };
        let dq = Expr::bin(
            BinOp::Mul,
            Expr::bin(BinOp::Sub, c32(q), c32(zv.clone())),
            sv,
        );
        let x = let_(&mut t, DType::F32, dq);
        let y = match v {
            Variant::Activated => {
                let e = Expr::un(UnOp::Exp, Expr::un(UnOp::Neg, x.clone()));
                let s = Expr::bin(BinOp::Div, f(1.0), Expr::bin(BinOp::Add, f(1.0), e));
                let s = let_(&mut t, DType::F32, s);
                let g = let_(&mut t, out_ty, quantize(s, gs.clone(), gz.clone()));
                let dg = Expr::bin(BinOp::Mul, Expr::bin(BinOp::Sub, c32(g), c32(gz)), gs);
                Expr::bin(BinOp::Mul, x, dg)
            }
            Variant::ActivatedCheap => {
                Expr::bin(BinOp::Min, Expr::bin(BinOp::Max, x, f(0.0)), f(6.0))
            }
            _ => Expr::bin(BinOp::Add, x, Expr::bin(BinOp::Mul, c32(acc), f(1e-3))),
        };
        let y = let_(&mut t, DType::F32, y);
        q = let_(&mut t, out_ty, quantize(y, os, oz));
    }
    body.push(Stmt::Store {
        param: pout,
        index: idx,
        value: q,
    });
    for (d, &var) in vars.iter().enumerate().rev() {
        let kind = if d == vars.len() - 1 {
            LoopKind::Vector
        } else if d == 0 {
            LoopKind::Parallel
        } else {
            LoopKind::Serial
        };
        body = vec![Stmt::For {
            var,
            extent: Expr::idx(extents[d] as i64),
            kind,
            body,
        }];
    }
    t.body = body;
    mlc_kir::verify_kernel(&t).unwrap();
    let kt = p.intern_kernel(t);
    let mut args = vec![bout, bc, bmult, bscale, bzp];
    args.extend(shift.map(|(b, _)| b));
    args.extend(rbufs.into_iter().flatten());
    args.extend(act_bufs);
    p.steps.push(Step {
        kernel: kt,
        args,
        origin: Some("q".into()),
    });
    if v == Variant::SecondReader {
        // A copy of the i32 result, as a second output.
        let bcopy = buf(&mut p, DType::I32, vec![m * n], BufKind::Temp);
        p.outputs.push(("acc".into(), bcopy));
        let mut ck = Kernel::new("copy");
        let src = ck.param(DType::I32, m * n, Access::Read);
        let dst = ck.param(DType::I32, m * n, Access::Write);
        let i = ck.var(DType::I64);
        ck.body = vec![Stmt::For {
            var: i,
            extent: Expr::idx((m * n) as i64),
            kind: LoopKind::Parallel,
            body: vec![Stmt::Store {
                param: dst,
                index: Expr::var(i),
                value: Expr::load(src, Expr::var(i)),
            }],
        }];
        let kc = p.intern_kernel(ck);
        p.steps.push(Step {
            kernel: kc,
            args: vec![bc, bcopy],
            origin: None,
        });
    }
    p
}

fn input(p: &Program, rng: &mut Rng) -> Vec<Tensor> {
    let b: &Buffer = p.buffer(p.inputs[0].1);
    let vals: Vec<u8> = (0..b.len()).map(|_| rng.int(0, 255) as u8).collect();
    vec![Tensor::from_vec(&b.shape, vals).unwrap()]
}

fn ints(ts: &[Tensor]) -> Vec<Vec<i64>> {
    ts.iter().map(|t| t.to_i64_vec().unwrap()).collect()
}

/// What the pass makes of a variant's pair of steps.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// One requantizing contraction.
    Fuses,
    /// A requantizing contraction, then the rest of the tail from the byte.
    Splits,
    /// Unchanged.
    Stays,
}
use Outcome::*;

#[test]
fn fuses_exactly_the_requantizing_tails() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let variants = [
        (Variant::Plain, Fuses),
        (Variant::PerTensor, Fuses),
        (Variant::ColMajor, Fuses),
        (Variant::ThreeLoops, Fuses),
        (Variant::NarrowClamp, Stays),
        (Variant::SecondReader, Stays),
        (Variant::DivFirst, Stays),
        (Variant::Residual, Fuses),
        // The requantization fuses; the residual block after its byte stays a loop.
        (Variant::ResidualOtherZp, Splits),
        (Variant::ResidualF32, Fuses),
        (Variant::Shifted, Fuses),
        (Variant::ShiftedColMajor, Fuses),
        (Variant::ShiftFirst, Stays),
        (Variant::ShiftedResidual, Fuses),
        (Variant::Activated, Fuses),
        (Variant::ActivatedCheap, Fuses),
        (Variant::ActivatedMixed, Stays),
    ];
    for &(m, n, k) in &[(1, 4, 1), (7, 12, 13), (13, 36, 27), (64, 100, 147)] {
        for (v, outcome) in variants {
            for out_ty in [DType::U8, DType::I8] {
                let what = format!("{m}x{n}x{k} {v:?} {}", out_ty.name());
                let p = program(m, n, k, out_ty, v, &mut rng);
                let (q, fused) = fuse_requant(&p);
                let (want_fused, steps) = match outcome {
                    Fuses => (1, p.steps.len() - 1),
                    Splits => (1, p.steps.len()),
                    Stays => (0, p.steps.len()),
                };
                assert_eq!(fused, want_fused, "{what}");
                assert_eq!(q.steps.len(), steps, "{what}");
                for kern in &q.kernels {
                    mlc_kir::verify_kernel(kern).unwrap_or_else(|e| panic!("{what}: {e:?}"));
                }
                let x = input(&p, &mut rng);
                let want = ints(&run_program(&p, &x).unwrap());
                let got = ints(&run_program(&q, &x).unwrap());
                assert_eq!(got, want, "{what}: evaluator after the pass");
                // Compiled (the pass runs inside), on one and two threads.
                let c = CompiledProgram::new(&p).unwrap();
                for threads in [1, 2] {
                    let got = ints(&c.run(&x, threads).unwrap());
                    assert_eq!(got, want, "{what}: compiled, {threads} threads");
                }
            }
        }
    }
}

#[test]
fn printed_form_names_the_requantization() {
    let mut rng = Rng(7);
    let p = program(4, 8, 3, DType::U8, Variant::Plain, &mut rng);
    let (q, _) = fuse_requant(&p);
    let text = mlc_kir::print_program(&q);
    assert!(
        text.contains("requant(mult=%p4[0; 1, 0], scale=%p5[0], zp=%p6[0])"),
        "{text}"
    );
    // A quantized activation after it: one table, read by the contraction.
    let p = program(4, 8, 3, DType::U8, Variant::Activated, &mut rng);
    let (q, _) = fuse_requant(&p);
    let text = mlc_kir::print_program(&q);
    assert!(
        text.contains("requant(mult=%p4[0; 1, 0], scale=%p5[0], zp=%p6[0]) table=%p7"),
        "{text}"
    );
    assert_eq!(q.steps.len(), 1, "{text}");
    let f = fuse_epilogues(&p).1;
    assert_eq!(
        (f.requant, f.requant_tables, f.requant_split),
        (1, 1, 0),
        "{f:?}"
    );
}

#[test]
fn a_tail_that_dequantizes_its_byte_is_split_and_the_requantization_fused() {
    // The last convolution of a QDQ CNN: requantized, then dequantized for a pooling. The
    // requantization goes into the contraction, the dequantization stays a loop reading its
    // byte; the compiled program equals the evaluator's exactly.
    let src = r#"graph (%0: u8[1,7,6,6] "x", %1: i8[5,7,1,1] "w", %2: u8[] "zx", %3: f32[5,1,1] "m", %4: f32[] "s", %5: u8[] "zp") -> (%6 "y") {
  %6 = control.composite {"kind":"conv_integer+cast+mul+quantize+dequantize"} (%0, %1, %2, %3, %4, %5) : f32[1,5,6,6] {
    graph (%0: u8[1,7,6,6] "in0", %1: i8[5,7,1,1] "in1", %2: u8[] "in2", %3: f32[5,1,1] "in3", %4: f32[] "in4", %5: u8[] "in5") -> (%10 "out") {
      %6 = quant.conv_integer {"dilations":[1,1],"group":1,"pad":{"explicit":[0,0,0,0]},"strides":[1,1]} (%0, %1, %2) : i32[1,5,6,6]
      %7 = ew.cast {"to":"f32"} (%6) : f32[1,5,6,6]
      %8 = ew.mul(%7, %3) : f32[1,5,6,6]
      %9 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%8, %4, %5) : u8[1,5,6,6]
      %10 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%9, %4, %5) : f32[1,5,6,6]
    }
  }
}"#;
    let mut rng = Rng(0x5eed_0117);
    let bytes =
        |n: usize, rng: &mut Rng| -> Vec<u8> { (0..n).map(|_| rng.int(0, 255) as u8).collect() };
    let inputs = vec![
        Tensor::from_vec(&[1, 7, 6, 6], bytes(252, &mut rng)).unwrap(),
        Tensor::from_vec(
            &[5, 7, 1, 1],
            (0..35).map(|_| rng.int(-128, 127) as i8).collect(),
        )
        .unwrap(),
        Tensor::from_vec(&[], vec![120u8]).unwrap(),
        Tensor::from_vec(
            &[5, 1, 1],
            (0..5).map(|_| rng.int(1, 900) as f32 * 1e-4).collect(),
        )
        .unwrap(),
        Tensor::scalar(0.02f32),
        Tensor::from_vec(&[], vec![7u8]).unwrap(),
    ];
    crate::tests::check_inputs(src, &inputs, 0.0);
    let prog = mlc_kir::lower_graph(&mlc_ir::parse_graph(src).unwrap()).unwrap();
    let (q, fused) = fuse_requant(&prog);
    let text = mlc_kir::print_program(&q);
    assert_eq!(fused, 1, "{text}");
    assert!(
        text.contains(" requant(") && text.contains("_rest("),
        "{text}"
    );
    // `--explain` counts it.
    let f = fuse_epilogues(&prog).1;
    assert_eq!(
        (f.requant, f.requant_split, f.requant_tables),
        (1, 1, 0),
        "{f:?}"
    );
}
