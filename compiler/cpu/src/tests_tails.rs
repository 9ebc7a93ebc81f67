//! The tail fusion on small programs built like the lowering builds them: f32 and int8
//! contractions with residual, per-row, per-column, scalar and casting tails; what fuses and
//! what must not (with the reason); exactness against the evaluator and against the same
//! program compiled without the fusion, on odd shapes and 1–3 threads.

use super::*;
use crate::{CompiledProgram, Options};
use mlc_ir::Tensor;
use mlc_kir::{LoopKind, run_program};

use crate::tests::Rng;

/// The tail after the contraction.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tail {
    /// `out = C + R` (a residual), f32 out.
    Residual,
    /// `out = tanh(C · s[row]) / d` (per row, a scalar division), f32 out.
    PerRowTanh,
    /// `out = C + b[col]`, f32 out.
    PerCol,
    /// resnet18_int8's conv tails: dequantize C per row, requantize, dequantize, add the
    /// residual, requantize to u8.
    QdqResidual,
    /// `out = cast<u8>(clamp(round(f32(C) · s[row]), 0, 255))` where the clamp is narrower
    /// than u8 (not the pure requantization, so this pass, not `fuse_requant`, takes it).
    CastU8,
    /// `C = C · 2 + R` in place (the output is C itself).
    InPlace,
    /// `out = C + B` (a square product whose residual is its own `B`, as a ResNet pointwise
    /// convolution's shortcut is its input).
    ResidualIsB,
    /// The tail reads C at another element (its transpose): refused.
    OtherIndex,
    /// The tail uses a loop counter as a value: refused.
    UsesCounter,
    /// Another step reads C too: refused.
    SecondReader,
}

struct Case {
    m: usize,
    n: usize,
    k: usize,
    int8: bool,
    col_major: bool,
    /// The tail's nest is `m × n/4 × 4` (row-major C only).
    three_loops: bool,
    tail: Tail,
}

/// `out = tail(A·B + bias)` as two steps.
fn program(c: &Case, rng: &mut Rng) -> Program {
    let (m, n, k) = (c.m, c.n, c.k);
    let mut p = Program::default();
    let (at, bt, ct) = if c.int8 {
        (DType::I8, DType::U8, DType::I32)
    } else {
        (DType::F32, DType::F32, DType::F32)
    };
    if c.int8 {
        let a: Vec<i8> = (0..m * k).map(|_| rng.int(-128, 127) as i8).collect();
        p.consts.push(Tensor::from_vec(&[m, k], a).unwrap());
        let bias: Vec<i32> = (0..m).map(|_| rng.int(-3000, 3000) as i32).collect();
        p.consts.push(Tensor::from_vec(&[m], bias).unwrap());
    } else {
        let a: Vec<f32> = (0..m * k).map(|_| rng.f()).collect();
        p.consts.push(Tensor::from_vec(&[m, k], a).unwrap());
        let bias: Vec<f32> = (0..m).map(|_| rng.f()).collect();
        p.consts.push(Tensor::from_vec(&[m], bias).unwrap());
    }
    let rowv: Vec<f32> = (0..m).map(|_| rng.int(1, 5000) as f32 * 1e-4).collect();
    p.consts.push(Tensor::from_vec(&[m], rowv).unwrap());
    let colv: Vec<f32> = (0..n).map(|_| rng.f()).collect();
    p.consts.push(Tensor::from_vec(&[n], colv).unwrap());
    let scal: Vec<f32> = vec![0.37, 0.011, 3.0];
    p.consts.push(Tensor::from_vec(&[3], scal).unwrap());
    p.consts
        .push(Tensor::from_vec(&[1], vec![rng.int(0, 255) as u8]).unwrap());
    let buf = |p: &mut Program, dtype, shape: Vec<usize>, kind| p.add_buffer(dtype, shape, kind);
    let ba = buf(&mut p, at, vec![m, k], BufKind::Const(0));
    let bb = buf(&mut p, bt, vec![k, n], BufKind::Input(0));
    let bres = buf(&mut p, DType::F32, vec![m * n], BufKind::Input(1));
    let bbias = buf(&mut p, ct, vec![m], BufKind::Const(1));
    let brow = buf(&mut p, DType::F32, vec![m], BufKind::Const(2));
    let bcol = buf(&mut p, DType::F32, vec![n], BufKind::Const(3));
    let bscal = buf(&mut p, DType::F32, vec![3], BufKind::Const(4));
    let bzp = buf(&mut p, DType::U8, vec![1], BufKind::Const(5));
    let bc = buf(&mut p, ct, vec![m * n], BufKind::Temp);
    let out_ty = match c.tail {
        Tail::QdqResidual | Tail::CastU8 => DType::U8,
        Tail::InPlace => ct,
        _ => DType::F32,
    };
    let bout = if c.tail == Tail::InPlace {
        bc
    } else {
        buf(&mut p, out_ty, vec![m * n], BufKind::Temp)
    };
    p.inputs.push(("b".into(), bb));
    p.inputs.push(("r".into(), bres));

    let mut mk = Kernel::new("matmul");
    let pa = mk.param(at, m * k, Access::Read);
    let pb = mk.param(bt, k * n, Access::Read);
    let pbias = mk.param(ct, m, Access::Read);
    let pc = mk.param(ct, m * n, Access::Write);
    let view = |param, rs: usize, cs: usize| MatRef {
        param,
        offset: Expr::idx(0),
        row_stride: rs as i64,
        col_stride: cs as i64,
    };
    let col = c.col_major;
    let mm = Matmul {
        m,
        n,
        k,
        a: view(pa, k, 1),
        b: view(pb, n, 1),
        c: if col { view(pc, 1, m) } else { view(pc, n, 1) },
        alpha: 1.0,
        beta: 0.0,
        bias: Some(view(pbias, 1, 0)),
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

    // The tail, over C's elements in memory order.
    let mut t = Kernel::new("fused_epilogue");
    let pout = t.param(out_ty, m * n, Access::Write);
    let pacc = t.param(ct, m * n, Access::Read);
    let pres = t.param(DType::F32, m * n, Access::Read);
    let prow = t.param(DType::F32, m, Access::Read);
    let pcol = t.param(DType::F32, n, Access::Read);
    let pscal = t.param(DType::F32, 3, Access::Read);
    let pzp = t.param(DType::U8, 1, Access::Read);
    let extents: Vec<usize> = if col {
        vec![n, m]
    } else if c.three_loops {
        vec![m, n / 4, 4]
    } else {
        vec![m, n]
    };
    let vars: Vec<VarId> = extents.iter().map(|_| t.var(DType::I64)).collect();
    let mut idx = Expr::idx(0);
    let mut stride = 1i64;
    for (&var, &e) in vars.iter().zip(&extents).rev() {
        idx = Expr::add_idx(Expr::mul_idx(Expr::var(var), stride), idx);
        stride *= e as i64;
    }
    // The element's row and column as counters.
    let (row_e, col_e) = if col {
        (Expr::var(vars[1]), Expr::var(vars[0]))
    } else if c.three_loops {
        (
            Expr::var(vars[0]),
            Expr::add_idx(Expr::mul_idx(Expr::var(vars[1]), 4), Expr::var(vars[2])),
        )
    } else {
        (Expr::var(vars[0]), Expr::var(vars[1]))
    };
    let f = |x: f64| Expr::float(DType::F32, x);
    let mut body = Vec::new();
    let mut let_ = |t: &mut Kernel, ty: DType, e: Expr| {
        let var = t.var(ty);
        body.push(Stmt::Let { var, value: e });
        Expr::var(var)
    };
    let acc_idx = if c.tail == Tail::OtherIndex {
        // The transposed element (a square C).
        Expr::add_idx(Expr::mul_idx(col_e.clone(), m as i64), row_e.clone())
    } else {
        idx.clone()
    };
    let acc = let_(&mut t, ct, Expr::load(pacc, acc_idx));
    let x = let_(&mut t, DType::F32, Expr::cast(DType::F32, acc.clone()));
    let sv = |t: &mut Kernel, i: i64, l: &mut dyn FnMut(&mut Kernel, DType, Expr) -> Expr| {
        l(t, DType::F32, Expr::load(pscal, Expr::idx(i)))
    };
    let value = match c.tail {
        Tail::Residual | Tail::OtherIndex | Tail::SecondReader | Tail::ResidualIsB => {
            let r = let_(&mut t, DType::F32, Expr::load(pres, idx.clone()));
            let_(&mut t, DType::F32, Expr::bin(BinOp::Add, x, r))
        }
        Tail::UsesCounter => {
            let i = let_(&mut t, DType::F32, Expr::cast(DType::F32, row_e.clone()));
            let_(&mut t, DType::F32, Expr::bin(BinOp::Add, x, i))
        }
        Tail::PerRowTanh => {
            let s = let_(&mut t, DType::F32, Expr::load(prow, row_e.clone()));
            let y = let_(&mut t, DType::F32, Expr::bin(BinOp::Mul, x, s));
            let y = let_(&mut t, DType::F32, Expr::un(UnOp::Tanh, y));
            let d = sv(&mut t, 2, &mut let_);
            let_(&mut t, DType::F32, Expr::bin(BinOp::Div, y, d))
        }
        Tail::PerCol => {
            let b = let_(&mut t, DType::F32, Expr::load(pcol, col_e.clone()));
            let_(&mut t, DType::F32, Expr::bin(BinOp::Add, x, b))
        }
        Tail::CastU8 => {
            let s = let_(&mut t, DType::F32, Expr::load(prow, row_e.clone()));
            let y = let_(&mut t, DType::F32, Expr::bin(BinOp::Mul, x, s));
            let y = let_(&mut t, DType::F32, Expr::un(UnOp::Round, y));
            let y = let_(&mut t, DType::F32, Expr::bin(BinOp::Max, y, f(3.0)));
            let y = let_(&mut t, DType::F32, Expr::bin(BinOp::Min, y, f(200.0)));
            let_(&mut t, DType::U8, Expr::cast(DType::U8, y))
        }
        Tail::InPlace => {
            let r = let_(&mut t, DType::F32, Expr::load(pres, idx.clone()));
            let two = if c.int8 {
                Expr::Lit(Lit::Int(DType::I32, 2))
            } else {
                f(2.0)
            };
            let y = let_(&mut t, ct, Expr::bin(BinOp::Mul, acc, two));
            let r = let_(&mut t, ct, Expr::cast(ct, r));
            let_(&mut t, ct, Expr::bin(BinOp::Add, y, r))
        }
        Tail::QdqResidual => {
            // q(v, s) = cast<u8>(min(max(round(v / s) + zp, 0), 255)); dq(q, s) = (f32(q) − zp)·s.
            let zp = let_(&mut t, DType::U8, Expr::load(pzp, Expr::idx(0)));
            let zf = let_(&mut t, DType::F32, Expr::cast(DType::F32, zp));
            let mut q = |t: &mut Kernel, v: Expr, s: Expr| {
                let s = let_(t, DType::F32, s);
                let v = let_(t, DType::F32, Expr::bin(BinOp::Div, v, s.clone()));
                let v = let_(t, DType::F32, Expr::un(UnOp::Round, v));
                let v = let_(t, DType::F32, Expr::bin(BinOp::Add, v, zf.clone()));
                let v = let_(t, DType::F32, Expr::bin(BinOp::Max, v, f(0.0)));
                let v = let_(t, DType::F32, Expr::bin(BinOp::Min, v, f(255.0)));
                let q = let_(t, DType::U8, Expr::cast(DType::U8, v));
                let v = let_(t, DType::F32, Expr::cast(DType::F32, q.clone()));
                let v = let_(t, DType::F32, Expr::bin(BinOp::Sub, v, zf.clone()));
                (q, let_(t, DType::F32, Expr::bin(BinOp::Mul, v, s)))
            };
            let mult = Expr::load(prow, row_e.clone());
            let y = Expr::bin(BinOp::Mul, x, mult);
            let s0 = Expr::load(pscal, Expr::idx(0));
            let (_, y) = q(&mut t, y, s0);
            let r = Expr::load(pres, idx.clone());
            let y = Expr::bin(BinOp::Add, y, r);
            let s1 = Expr::load(pscal, Expr::idx(1));
            q(&mut t, y, s1).0
        }
    };
    body.push(Stmt::Store {
        param: pout,
        index: idx,
        value,
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
    p.steps.push(Step {
        kernel: kt,
        args: vec![
            bout,
            bc,
            if c.tail == Tail::ResidualIsB {
                bb
            } else {
                bres
            },
            brow,
            bcol,
            bscal,
            bzp,
        ],
        origin: Some("tail".into()),
    });
    p.outputs.push(("out".into(), bout));
    if c.tail == Tail::SecondReader {
        p.outputs.push(("c".into(), bc));
    }
    p
}

fn inputs(p: &Program, int8: bool, rng: &mut Rng) -> Vec<Tensor> {
    let b = p.buffer(p.inputs[0].1);
    let bt = if int8 {
        let v: Vec<u8> = (0..b.len()).map(|_| rng.int(0, 255) as u8).collect();
        Tensor::from_vec(&b.shape, v).unwrap()
    } else {
        let v: Vec<f32> = (0..b.len()).map(|_| rng.f()).collect();
        Tensor::from_vec(&b.shape, v).unwrap()
    };
    let r = p.buffer(p.inputs[1].1);
    let scale = if int8 { 300.0 } else { 1.0 };
    let rv: Vec<f32> = (0..r.len()).map(|_| rng.f() * scale).collect();
    vec![bt, Tensor::from_vec(&r.shape, rv).unwrap()]
}

/// The outputs' bits, for exact comparisons.
fn bits(ts: &[Tensor]) -> Vec<Vec<u64>> {
    ts.iter()
        .map(|t| {
            t.to_f64_vec()
                .unwrap()
                .into_iter()
                .map(|x| (x as f32).to_bits() as u64)
                .collect()
        })
        .collect()
}

fn close(want: &[Tensor], got: &[Tensor], tol: f64) -> bool {
    want.iter().zip(got).all(|(w, g)| {
        let (w, g) = (w.to_f64_vec().unwrap(), g.to_f64_vec().unwrap());
        w.iter()
            .zip(&g)
            .all(|(a, b)| (a - b).abs() <= tol * (1.0 + a.abs()))
    })
}

/// Builds, fuses (or checks the refusal), and compares: the evaluator before and after the
/// pass (exact), the compiled program with and without the fusion (exact, libm math), and the compiled
/// program against the evaluator (exact for int8; f32 within the GEMM's summation-order
/// tolerance).
fn check(c: &Case, want_fused: Result<(), Refusal>, rng: &mut Rng) {
    let what = format!(
        "{}x{}x{} {:?} int8={} col_major={} three_loops={}",
        c.m, c.n, c.k, c.tail, c.int8, c.col_major, c.three_loops
    );
    let p = program(c, rng);
    let got = fuse_tail_pair(&p, &p.steps[0], &p.steps[1]).map(|_| ());
    assert_eq!(got, want_fused, "{what}");
    let (q, fused) = fuse_tails(&p);
    assert_eq!(fused, usize::from(want_fused.is_ok()), "{what}");
    for kern in &q.kernels {
        mlc_kir::verify_kernel(kern).unwrap_or_else(|e| panic!("{what}: {e:?}"));
    }
    let x = inputs(&p, c.int8, rng);
    let want = run_program(&p, &x).unwrap();
    let after = run_program(&q, &x).unwrap();
    assert_eq!(
        bits(&after),
        bits(&want),
        "{what}: evaluator after the pass"
    );
    // Libm's transcendentals on both sides: the inline vector ones differ from them by an
    // ulp, and the two programs may vectorize different loops.
    let opts = |fuse_epilogues| Options {
        fuse_epilogues,
        inline_math: false,
        ..Options::default()
    };
    let unfused = CompiledProgram::with_options(&p, opts(false)).unwrap();
    let fused_c = CompiledProgram::with_options(&p, opts(true)).unwrap();
    for threads in [1, 2, 3] {
        let a = fused_c.run(&x, threads).unwrap();
        let b = unfused.run(&x, threads).unwrap();
        assert_eq!(
            bits(&a),
            bits(&b),
            "{what}: fused vs unfused, {threads} threads"
        );
        // (libm's `tanhf` and the evaluator's differ by an ulp here and there.)
        if c.int8 && c.tail != Tail::PerRowTanh {
            assert_eq!(bits(&a), bits(&want), "{what}: compiled, {threads} threads");
        } else {
            assert!(
                close(&want, &a, 1e-4),
                "{what}: compiled, {threads} threads"
            );
        }
    }
}

#[test]
fn fuses_pointwise_tails_exactly() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let tails = [
        Tail::Residual,
        Tail::PerRowTanh,
        Tail::PerCol,
        Tail::QdqResidual,
        Tail::CastU8,
        Tail::InPlace,
    ];
    // Odd sizes, a single row or column, and sizes past one tile and one cache block.
    let shapes = [
        (1, 8, 3),
        (9, 1, 5),
        (7, 12, 13),
        (13, 36, 27),
        (64, 100, 147),
        (37, 256, 64),
    ];
    for &(m, n, k) in &shapes {
        for tail in tails {
            for int8 in [false, true] {
                for (col_major, three_loops) in [(false, false), (true, false), (false, true)] {
                    if three_loops && n % 4 != 0 {
                        continue;
                    }
                    let c = Case {
                        m,
                        n,
                        k,
                        int8,
                        col_major,
                        three_loops,
                        tail,
                    };
                    check(&c, Ok(()), &mut rng);
                }
            }
        }
    }
}

#[test]
fn tails_of_transposed_products() {
    // A weight on the left and 7 or 49 columns: the runtime computes `Cᵀ = Bᵀ·Aᵀ` and runs the
    // tail on each block of C once it is transposed back, in C's coordinates (600 rows: more
    // than one cache block of them), reading `B` as its residual.
    let mut rng = Rng(0x007a_110b);
    for (m, n) in [(600, 7), (300, 49)] {
        let c = Case {
            m,
            n,
            k: m,
            int8: false,
            col_major: false,
            three_loops: false,
            tail: Tail::ResidualIsB,
        };
        check(&c, Ok(()), &mut rng);
    }
}

#[test]
fn refuses_what_is_not_a_tile_tail() {
    let mut rng = Rng(99);
    let cases = [
        (Tail::OtherIndex, Refusal::CIndex),
        (Tail::UsesCounter, Refusal::UsesCounters),
        (Tail::SecondReader, Refusal::CLive),
    ];
    for (tail, why) in cases {
        for int8 in [false, true] {
            let c = Case {
                m: 12,
                n: 12,
                k: 5,
                int8,
                col_major: false,
                three_loops: false,
                tail,
            };
            check(&c, Err(why), &mut rng);
        }
    }
}

#[test]
fn printed_form_shows_the_tail() {
    let mut rng = Rng(3);
    let c = Case {
        m: 4,
        n: 8,
        k: 3,
        int8: false,
        col_major: false,
        three_loops: false,
        tail: Tail::PerCol,
    };
    let p = program(&c, &mut rng);
    let (q, n) = fuse_tails(&p);
    assert_eq!(n, 1);
    let text = mlc_kir::print_program(&q);
    assert!(text.contains(" tail(%v"), "{text}");
}

/// The quantized development models, optimized and lowered as `mlc` does, give the same bytes
/// compiled with and without the epilogue fusions (requantizations and tails), on 1 and 2
/// threads. Skipped (with a note) when the development corpus is absent.
#[test]
fn int8_dev_models_identical_with_and_without_fusion() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models-dev");
    let dir = std::env::var_os("MLC_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or(root);
    for (file, input, shape) in [("resnet18_int8_qdq.onnx", "input", vec![1, 3, 224, 224])] {
        let path = dir.join(file);
        if !path.exists() {
            eprintln!("note: {} not found; skipping", path.display());
            continue;
        }
        let mut model = mlc_onnx::load(&path).expect("import");
        let g = &mut model.graph;
        let bindings = vec![(input.to_string(), shape.clone())];
        let opts = mlc_passes::pipeline::Options::new(
            mlc_passes::pipeline::Level::O1,
            mlc_passes::egraph::TargetInfo::x86_64(),
        );
        mlc_passes::pipeline::run(g, &bindings, &opts).expect("pipeline");
        let prog = mlc_kir::lower_graph(g).expect("lowering");
        let (_, f) = fuse_epilogues(&prog);
        assert!(f.tails > 0, "{file}: no tail fused");
        let mut rng = Rng(11);
        let len: usize = shape.iter().product();
        let x: Vec<f32> = (0..len).map(|_| rng.f() * 0.5).collect();
        let x = vec![Tensor::from_vec(&shape, x).unwrap()];
        let on = CompiledProgram::new(&prog).expect("compiles");
        let off = CompiledProgram::with_options(
            &prog,
            Options {
                fuse_epilogues: false,
                ..Options::default()
            },
        )
        .expect("compiles");
        for threads in [1, 2] {
            let a = on.run(&x, threads).expect("runs");
            let b = off.run(&x, threads).expect("runs");
            assert_eq!(bits(&a), bits(&b), "{file}: {threads} threads");
        }
    }
}
