//! The kernel-IR lowering, checked without a GPU: the PTX of three representative kernels
//! (an elementwise add with broadcast, a row softmax, a fused bias + GELU with `erf`) is pinned
//! by snapshots, each assembles with `ptxas`, the launch shapes follow the documented rule, and
//! the f64 math library that backs every transcendental is run on the host through LLVM's JIT
//! and compared with Rust's libm.

use inkwell::OptimizationLevel;
use inkwell::context::Context;
use mlc_ir::DType;
use mlc_kir::{Access, BinOp, Expr, Kernel, LoopKind, Stmt, UnOp};
use mlc_nvptx::lower::{LaunchShape, lower_kernel};
use mlc_nvptx::{GpuArch, PtxTarget, math, ptxas};
use std::path::Path;

fn f(v: f64) -> Expr {
    Expr::float(DType::F32, v)
}

/// `out[i, j] = x[i, j] + b[j]` over 4×8.
fn add_broadcast() -> Kernel {
    let mut k = Kernel::new("ew_add");
    let out = k.param(DType::F32, 32, Access::Write);
    let x = k.param(DType::F32, 32, Access::Read);
    let b = k.param(DType::F32, 8, Access::Read);
    let (i, j) = (k.var(DType::I64), k.var(DType::I64));
    let idx = Expr::add_idx(Expr::mul_idx(Expr::var(i), 8), Expr::var(j));
    k.body = vec![Stmt::For {
        var: i,
        extent: Expr::idx(4),
        kind: LoopKind::Parallel,
        body: vec![Stmt::For {
            var: j,
            extent: Expr::idx(8),
            kind: LoopKind::Vector,
            body: vec![Stmt::Store {
                param: out,
                index: idx.clone(),
                value: Expr::bin(BinOp::Add, Expr::load(x, idx), Expr::load(b, Expr::var(j))),
            }],
        }],
    }];
    k
}

/// A softmax over rows of 8: max, sum of exponentials, normalize.
fn softmax() -> Kernel {
    let mut k = Kernel::new("reduce_softmax");
    let out = k.param(DType::F32, 32, Access::Write);
    let x = k.param(DType::F32, 32, Access::Read);
    let r = k.var(DType::I64);
    let (j1, j2, j3) = (k.var(DType::I64), k.var(DType::I64), k.var(DType::I64));
    let (m, s) = (k.var(DType::F32), k.var(DType::F32));
    let at = |j| Expr::add_idx(Expr::mul_idx(Expr::var(r), 8), Expr::var(j));
    let e = |j| {
        Expr::un(
            UnOp::Exp,
            Expr::bin(BinOp::Sub, Expr::load(x, at(j)), Expr::var(m)),
        )
    };
    k.body = vec![Stmt::For {
        var: r,
        extent: Expr::idx(4),
        kind: LoopKind::Parallel,
        body: vec![
            Stmt::Let {
                var: m,
                value: f(f64::NEG_INFINITY),
            },
            Stmt::For {
                var: j1,
                extent: Expr::idx(8),
                kind: LoopKind::Serial,
                body: vec![Stmt::Assign {
                    var: m,
                    value: Expr::bin(BinOp::Max, Expr::var(m), Expr::load(x, at(j1))),
                }],
            },
            Stmt::Let {
                var: s,
                value: f(0.0),
            },
            Stmt::For {
                var: j2,
                extent: Expr::idx(8),
                kind: LoopKind::Serial,
                body: vec![Stmt::Assign {
                    var: s,
                    value: Expr::bin(BinOp::Add, Expr::var(s), e(j2)),
                }],
            },
            Stmt::For {
                var: j3,
                extent: Expr::idx(8),
                kind: LoopKind::Vector,
                body: vec![Stmt::Store {
                    param: out,
                    index: at(j3),
                    value: Expr::bin(BinOp::Div, e(j3), Expr::var(s)),
                }],
            },
        ],
    }];
    k
}

/// `y = gelu(x + b)` with the exact (erf) GELU, over 2×8: a fused composite.
fn bias_gelu() -> Kernel {
    let mut k = Kernel::new("fused_bias_gelu");
    let out = k.param(DType::F32, 16, Access::Write);
    let x = k.param(DType::F32, 16, Access::Read);
    let b = k.param(DType::F32, 8, Access::Read);
    let (i, j, v) = (k.var(DType::I64), k.var(DType::I64), k.var(DType::F32));
    let idx = Expr::add_idx(Expr::mul_idx(Expr::var(i), 8), Expr::var(j));
    let gelu = Expr::bin(
        BinOp::Mul,
        Expr::bin(BinOp::Mul, f(0.5), Expr::var(v)),
        Expr::bin(
            BinOp::Add,
            f(1.0),
            Expr::un(
                UnOp::Erf,
                Expr::bin(
                    BinOp::Mul,
                    Expr::var(v),
                    f(std::f64::consts::FRAC_1_SQRT_2 as f32 as f64),
                ),
            ),
        ),
    );
    k.body = vec![Stmt::For {
        var: i,
        extent: Expr::idx(2),
        kind: LoopKind::Parallel,
        body: vec![Stmt::For {
            var: j,
            extent: Expr::idx(8),
            kind: LoopKind::Vector,
            body: vec![
                Stmt::Let {
                    var: v,
                    value: Expr::bin(
                        BinOp::Add,
                        Expr::load(x, idx.clone()),
                        Expr::load(b, Expr::var(j)),
                    ),
                },
                Stmt::Store {
                    param: out,
                    index: idx,
                    value: gelu,
                },
            ],
        }],
    }];
    k
}

fn ptx_of(k: &Kernel) -> (String, LaunchShape) {
    let ctx = Context::create();
    let (cg, launch) = lower_kernel(&ctx, k, &k.name).unwrap();
    let ptx = PtxTarget::new(GpuArch::Sm90)
        .unwrap()
        .compile(&cg.module)
        .unwrap();
    (ptx, launch)
}

#[test]
fn lowered_kernel_snapshots_assemble() {
    let ptxas_bin = ptxas::find_ptxas(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")));
    for (k, items) in [(add_broadcast(), 32), (softmax(), 4), (bias_gelu(), 16)] {
        let (ptx, launch) = ptx_of(&k);
        assert_eq!(launch, LaunchShape::Grid { items });
        assert_eq!(launch.dims(), ([1, 1, 1], [256, 1, 1]));
        if let Some(p) = &ptxas_bin {
            ptxas::assemble(p, &ptx, GpuArch::Sm90, &k.name).unwrap_or_else(|e| panic!("{e}"));
        }
        insta::assert_snapshot!(format!("lowered_{}", k.name), ptx);
    }
}

#[test]
fn launch_rule() {
    assert_eq!(LaunchShape::Grid { items: 1 << 30 }.dims().0, [4096, 1, 1]);
    assert_eq!(LaunchShape::Grid { items: 257 }.dims().0, [2, 1, 1]);
    assert_eq!(LaunchShape::Single.dims(), ([1, 1, 1], [1, 1, 1]));
    assert_eq!(
        LaunchShape::Gemm {
            m: 100,
            n: 130,
            batch: 12
        }
        .dims()
        .0,
        [3, 2, 12]
    );
}

/// Runs `mlc_<name>` from `math` on the host and returns the worst error in f32 ulps of the
/// f32-rounded result against `reference`, over `xs`.
fn host_check(name: &str, xs: &[f64], reference: impl Fn(f64) -> f64) -> f64 {
    inkwell::targets::Target::initialize_native(&inkwell::targets::InitializationConfig::default())
        .unwrap();
    let ctx = Context::create();
    let module = ctx.create_module("m");
    let func = math::function(&ctx, &module, name).unwrap();
    // An externally visible wrapper, so the JIT can look it up.
    let f64t = ctx.f64_type();
    let w = module.add_function("entry", f64t.fn_type(&[f64t.into()], false), None);
    let b = ctx.create_builder();
    b.position_at_end(ctx.append_basic_block(w, "e"));
    let arg = w.get_nth_param(0).unwrap().into_float_value();
    let r = b.build_call(func, &[arg.into()], "").unwrap();
    b.build_return(Some(&r.try_as_basic_value().basic().unwrap()))
        .unwrap();
    module.verify().unwrap();
    let ee = module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .unwrap();
    type F = unsafe extern "C" fn(f64) -> f64;
    #[allow(unsafe_code)]
    // SAFETY: `entry` is defined above with exactly this signature.
    let jf = unsafe { ee.get_function::<F>("entry").unwrap() };
    let mut worst = 0.0f64;
    for &x in xs {
        #[allow(unsafe_code)]
        // SAFETY: calling the JIT-compiled function, a pure f64 -> f64 computation.
        let got = unsafe { jf.call(x) } as f32;
        let want = reference(x) as f32;
        if want.is_nan() {
            assert!(got.is_nan(), "{name}({x}) = {got}, expected NaN");
            continue;
        }
        if want.is_infinite() || want == 0.0 {
            assert_eq!(got, want, "{name}({x})");
            continue;
        }
        let ulp = (want.abs().to_bits() as i64 - got.abs().to_bits() as i64).unsigned_abs() as f64;
        assert!(
            got.signum() == want.signum() || ulp == 0.0,
            "{name}({x}) = {got}, want {want}"
        );
        worst = worst.max(ulp);
    }
    worst
}

#[test]
fn math_library_is_accurate_on_the_host() {
    let mut xs: Vec<f64> = (-4000..=4000).map(|i| i as f64 * 0.01).collect();
    xs.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-8,
        88.0,
        89.0,
        -104.0,
        -200.0,
        1e10,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ]);
    let xs: Vec<f64> = xs.into_iter().map(|x| x as f32 as f64).collect();
    let pos: Vec<f64> = xs.iter().map(|x| x.abs()).collect();
    let unit: Vec<f64> = (-1000..=1000)
        .map(|i| (i as f64 * 0.001) as f32 as f64)
        .collect();
    let checks: Vec<(&str, &[f64], fn(f64) -> f64)> = vec![
        ("exp", &xs, f64::exp),
        ("expm1", &xs, f64::exp_m1),
        ("log", &pos, f64::ln),
        ("log1p", &pos, f64::ln_1p),
        ("tanh", &xs, f64::tanh),
        ("erf", &xs, libm::erf),
        ("sin", &xs, f64::sin),
        ("cos", &xs, f64::cos),
        ("tan", &xs, f64::tan),
        ("atan", &xs, f64::atan),
        ("asin", &unit, f64::asin),
        ("acos", &unit, f64::acos),
        ("sinh", &xs, f64::sinh),
        ("cosh", &xs, f64::cosh),
        ("asinh", &xs, f64::asinh),
        ("acosh", &pos, f64::acosh),
        ("atanh", &unit, f64::atanh),
    ];
    let mut report = Vec::new();
    for (name, args, reference) in checks {
        let ulps = host_check(name, args, reference);
        report.push(format!("{name}: {ulps} ulp"));
        assert!(ulps <= 1.0, "{name}: {ulps} f32 ulps");
    }
    println!("{}", report.join(", "));
}
