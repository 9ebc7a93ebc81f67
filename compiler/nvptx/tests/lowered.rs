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

// ---- whole kernels on the host: the lowered LLVM IR against `mlc_kir::eval` ----

use mlc_kir::eval::{Val, eval_kernel};
use mlc_nvptx::lower::lower_kernel_for_host;

fn to_bytes(t: DType, vals: &[Val]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in vals {
        match (t, *v) {
            (DType::F32, Val::F(f)) => out.extend((f as f32).to_le_bytes()),
            (DType::F64, Val::F(f)) => out.extend(f.to_le_bytes()),
            (DType::F16, Val::F(f)) => out.extend(half::f16::from_f64(f).to_bits().to_le_bytes()),
            (DType::BF16, Val::F(f)) => out.extend(half::bf16::from_f64(f).to_bits().to_le_bytes()),
            (DType::Bool, Val::B(b)) => out.push(b as u8),
            (t, Val::I(i)) => out.extend(&i.to_le_bytes()[..t.size().unwrap()]),
            other => panic!("cannot marshal {other:?}"),
        }
    }
    out
}

fn from_bytes(t: DType, b: &[u8]) -> Vec<Val> {
    let n = t.size().unwrap();
    b.chunks_exact(n)
        .map(|c| match t {
            DType::F32 => Val::F(f32::from_le_bytes(c.try_into().unwrap()) as f64),
            DType::F64 => Val::F(f64::from_le_bytes(c.try_into().unwrap())),
            DType::F16 => {
                Val::F(half::f16::from_bits(u16::from_le_bytes(c.try_into().unwrap())).to_f64())
            }
            DType::BF16 => {
                Val::F(half::bf16::from_bits(u16::from_le_bytes(c.try_into().unwrap())).to_f64())
            }
            DType::Bool => Val::B(c[0] != 0),
            t => {
                let mut w = [0u8; 8];
                w[..n].copy_from_slice(c);
                let u = u64::from_le_bytes(w);
                let shift = 64 - 8 * n as u32;
                Val::I(if t.is_signed_int() {
                    ((u << shift) as i64) >> shift
                } else {
                    u as i64
                })
            }
        })
        .collect()
}

/// Runs `k` lowered for the host (one GPU thread covering the grid) and through `eval` on the
/// same buffers, and asserts bit-equal results in every buffer.
fn check_on_host(k: &Kernel, init: Vec<Vec<Val>>) {
    inkwell::targets::Target::initialize_native(&inkwell::targets::InitializationConfig::default())
        .unwrap();
    let ctx = Context::create();
    let cg = lower_kernel_for_host(&ctx, k, "kernel").unwrap();
    // `run(ptr args)`: loads each buffer pointer and calls the kernel with them.
    let ptr0 = ctx.ptr_type(inkwell::AddressSpace::default());
    let ptr1 = ctx.ptr_type(inkwell::AddressSpace::from(1u16));
    let run = cg
        .module
        .add_function("run", ctx.void_type().fn_type(&[ptr0.into()], false), None);
    let b = ctx.create_builder();
    b.position_at_end(ctx.append_basic_block(run, "e"));
    let args_ptr = run.get_nth_param(0).unwrap().into_pointer_value();
    let mut call_args = Vec::new();
    for i in 0..k.params.len() {
        #[allow(unsafe_code)]
        // SAFETY: building a GEP instruction; the test passes exactly `params.len()` pointers.
        let slot = unsafe {
            b.build_gep(
                ptr0,
                args_ptr,
                &[ctx.i64_type().const_int(i as u64, false)],
                "",
            )
        }
        .unwrap();
        let p = b.build_load(ptr0, slot, "").unwrap().into_pointer_value();
        call_args.push(b.build_address_space_cast(p, ptr1, "").unwrap().into());
    }
    b.build_call(cg.func, &call_args, "").unwrap();
    b.build_return(None).unwrap();
    cg.module
        .verify()
        .unwrap_or_else(|e| panic!("{}", e.to_string()));
    let ee = cg
        .module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .unwrap();
    let mut bytes: Vec<Vec<u8>> = k
        .params
        .iter()
        .zip(&init)
        .map(|(p, v)| to_bytes(p.dtype, v))
        .collect();
    let ptrs: Vec<*mut u8> = bytes.iter_mut().map(|b| b.as_mut_ptr()).collect();
    type F = unsafe extern "C" fn(*const *mut u8);
    #[allow(unsafe_code)]
    // SAFETY: `run` has this signature; every pointer covers its parameter's `len` elements,
    // which is all a verified kernel touches.
    unsafe {
        ee.get_function::<F>("run").unwrap().call(ptrs.as_ptr())
    };
    let mut store = init.clone();
    let map: Vec<usize> = (0..k.params.len()).collect();
    eval_kernel(k, &mut store, &map).unwrap();
    for (i, p) in k.params.iter().enumerate() {
        let got = from_bytes(p.dtype, &bytes[i]);
        for (j, (g, w)) in got.iter().zip(&store[i]).enumerate() {
            // Results are compared after rounding to the parameter's type, as memory holds them.
            let w = from_bytes(p.dtype, &to_bytes(p.dtype, &[*w]))[0];
            let same = match (g, w) {
                (Val::F(a), Val::F(b)) => a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                _ => *g == w,
            };
            assert!(same, "{}: %p{i}[{j}] = {g:?}, eval says {w:?}", k.name);
        }
    }
}

/// Deterministic pseudo-random floats with the awkward values mixed in.
fn floats(n: usize, seed: u64) -> Vec<Val> {
    let special = [
        0.0,
        -0.0,
        0.5,
        1.5,
        2.5,
        -2.5,
        1e9,
        -300.0,
        300.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        65504.0,
        1e-40,
    ];
    let mut s = seed;
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let x = ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 8.0;
            Val::F(if i % 3 == 0 {
                special[(i / 3) % special.len()]
            } else {
                x
            } as f32 as f64)
        })
        .collect()
}

fn ints(n: usize, seed: u64) -> Vec<Val> {
    let special = [
        0,
        -1,
        1,
        i32::MIN as i64,
        i32::MAX as i64,
        31,
        32,
        33,
        -33,
        7,
        100,
    ];
    let mut s = seed;
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            Val::I(if i % 2 == 0 {
                special[(i / 2) % special.len()]
            } else {
                ((s >> 33) as i64 % 2000) - 1000
            })
        })
        .collect()
}

#[test]
fn lowered_kernels_match_eval_on_the_host() {
    let zeros = |n: usize| vec![Val::F(0.0); n];
    check_on_host(
        &add_broadcast(),
        vec![zeros(32), floats(32, 1), floats(8, 2)],
    );
    let finite: Vec<Val> = floats(32, 3)
        .into_iter()
        .map(|v| match v {
            Val::F(f) if f.is_finite() && f.abs() < 100.0 => Val::F(f),
            _ => Val::F(1.25),
        })
        .collect();
    check_on_host(&softmax(), vec![zeros(32), finite]);
    check_on_host(&bias_gelu(), vec![zeros(16), floats(16, 4), floats(8, 5)]);
    // A depthwise convolution statement runs as its loop form (`mlc_kir::expand_depthwise`).
    let (dw, lens) = depthwise();
    let init = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| floats(n, 10 + i as u64))
        .collect();
    check_on_host(&dw, init);
    // A quantized one: u8 input less its zero point, per-channel scale, rounding, u8 output.
    let (dw, lens) = quantized_depthwise();
    let bytes = |n: usize, seed: u64| -> Vec<Val> {
        (0..n as u64)
            .map(|i| Val::I(((i * 37 + seed * 11) % 256) as i64))
            .collect()
    };
    let init = vec![
        bytes(lens[0], 1),
        vec![Val::I(117)],
        (0..lens[2])
            .map(|i| Val::F(((i * 5) % 11) as f64 - 5.0))
            .collect(),
        vec![Val::F(0.0123), Val::F(0.031)],
        bytes(lens[4], 2),
    ];
    check_on_host(&dw, init);
    // Contractions whose B is an image's column matrix (implicit GEMM): f32 with strides,
    // dilation and asymmetric pads (small integers, so sums are exact in any order), and an
    // 8-bit one whose padding reads a fill parameter.
    let small = |n: usize, seed: u64, lo: i64, span: i64| -> Vec<Val> {
        (0..n as u64)
            .map(|i| Val::I(lo + ((i * 7 + seed * 13) % span as u64) as i64))
            .collect()
    };
    let as_f = |v: Vec<Val>| -> Vec<Val> {
        v.into_iter()
            .map(|x| match x {
                Val::I(i) => Val::F(i as f64),
                f => f,
            })
            .collect()
    };
    let (k, lens) = implicit_gemm(DType::F32, DType::F32, None);
    let init = vec![
        as_f(small(lens[0], 1, -3, 7)),
        as_f(small(lens[1], 2, -4, 9)),
        vec![Val::F(0.0); lens[2]],
    ];
    check_on_host(&k, init);
    let (k, lens) = implicit_gemm(DType::U8, DType::I32, Some(DType::U8));
    let init = vec![
        small(lens[0], 3, -128, 255),
        small(lens[1], 4, 0, 256),
        vec![Val::I(0); lens[2]],
        vec![Val::I(77)],
    ];
    check_on_host(&k, init);
}

/// `C (3×20) = W (3×12) · B`, `B` the column matrix of a 2-channel 7×9 image under a 2×3
/// kernel at stride (2, 1), dilation (1, 2), pads (1, 2) (output 4×5); `W` of `wt` (`i8` for
/// an 8-bit image), the image of `xt`, C of `ct`, and a one-element fill of type `fill`.
fn implicit_gemm(xt: DType, ct: DType, fill: Option<DType>) -> (Kernel, Vec<usize>) {
    use mlc_kir::{Activation, Im2col, MatRef, Matmul, ParamId};
    let wt = if xt == DType::F32 {
        DType::F32
    } else {
        DType::I8
    };
    let mut k = Kernel::new("implicit_gemm");
    let lens = vec![3 * 12, 2 * 7 * 9, 3 * 20];
    k.param(wt, lens[0], Access::Read);
    k.param(xt, lens[1], Access::Read);
    k.param(ct, lens[2], Access::ReadWrite);
    if let Some(t) = fill {
        k.param(t, 1, Access::Read);
    }
    let view = |p: u32, rs: i64, cs: i64| MatRef {
        param: ParamId(p),
        offset: Expr::idx(0),
        row_stride: rs,
        col_stride: cs,
    };
    k.body = vec![Stmt::Matmul(Box::new(Matmul {
        m: 3,
        n: 20,
        k: 12,
        a: view(0, 12, 1),
        b: view(1, 0, 0),
        c: view(2, 20, 1),
        alpha: 1.0,
        beta: 0.0,
        bias: None,
        act: Activation::None,
        requant: None,
        tail: None,
        b_im2col: Some(Box::new(Im2col {
            channels: 2,
            in_hw: [7, 9],
            out_hw: [4, 5],
            kernel: [2, 3],
            stride: [2, 1],
            dilation: [1, 2],
            pad: [1, 2],
            fill: fill.map(|_| ParamId(3)),
        })),
    }))];
    // A trailing store (C's first element, rewritten) keeps the kernel off the grid GEMM,
    // which the host lowering does not run: the contraction runs as serial loops.
    k.body.push(Stmt::Store {
        param: ParamId(2),
        index: Expr::idx(0),
        value: Expr::load(ParamId(2), Expr::idx(0)),
    });
    mlc_kir::verify_kernel(&k).unwrap();
    (k, lens)
}

/// A 2×(3×3) depthwise convolution, stride 2, asymmetric pads, bias, and an epilogue
/// `(x·s + 0.5)·(x·s - 1) / s` that reads a scalar parameter; and its parameter lengths.
fn depthwise() -> (Kernel, Vec<usize>) {
    use mlc_kir::{Depthwise, EpArg, EpOp};
    let mut k = Kernel::new("dw");
    let lens = vec![2 * 7 * 9, 2 * 9, 2, 1, 2 * 4 * 5];
    for (i, &n) in lens.iter().enumerate() {
        let access = if i == 4 { Access::Write } else { Access::Read };
        k.param(DType::F32, n, access);
    }
    let p = mlc_kir::ParamId;
    let bin = |op, arg, arg_first| EpOp::Bin { op, arg, arg_first };
    k.body = vec![Stmt::Depthwise(Box::new(Depthwise {
        batch: 1,
        channels: 2,
        mult: 1,
        in_hw: [7, 9],
        out_hw: [4, 5],
        kernel: [3, 3],
        stride: [2, 2],
        dilation: [1, 1],
        pad: [1, 0],
        x: p(0),
        x_zero: None,
        w: p(1),
        bias: Some(p(2)),
        out: p(4),
        epilogue: vec![
            bin(BinOp::Mul, EpArg::Scalar(p(3)), false),
            bin(BinOp::Add, EpArg::Lit(0.5), false),
            EpOp::Save,
            bin(BinOp::Sub, EpArg::Lit(1.5), false),
            EpOp::Combine {
                op: BinOp::Mul,
                saved_first: true,
            },
            bin(BinOp::Div, EpArg::Scalar(p(3)), false),
        ],
    }))];
    (k, lens)
}

/// A 2×(3×3) depthwise convolution of a `u8` input with its zero point, requantized into a
/// `u8` output with per-channel scales; and its parameter lengths.
fn quantized_depthwise() -> (Kernel, Vec<usize>) {
    use mlc_kir::{Depthwise, EpArg, EpOp};
    let mut k = Kernel::new("qdw");
    let types = [DType::U8, DType::U8, DType::F32, DType::F32, DType::U8];
    let lens = vec![2 * 7 * 9, 1, 2 * 9, 2, 2 * 4 * 5];
    for (i, (&n, &t)) in lens.iter().zip(&types).enumerate() {
        let access = if i == 4 { Access::Write } else { Access::Read };
        k.param(t, n, access);
    }
    let p = mlc_kir::ParamId;
    let bin = |op, arg, arg_first| EpOp::Bin { op, arg, arg_first };
    k.body = vec![Stmt::Depthwise(Box::new(Depthwise {
        batch: 1,
        channels: 2,
        mult: 1,
        in_hw: [7, 9],
        out_hw: [4, 5],
        kernel: [3, 3],
        stride: [2, 2],
        dilation: [1, 1],
        pad: [1, 0],
        x: p(0),
        x_zero: Some(p(1)),
        w: p(2),
        bias: None,
        out: p(4),
        epilogue: vec![
            bin(BinOp::Mul, EpArg::Channel(p(3)), false),
            EpOp::Round,
            bin(BinOp::Add, EpArg::Scalar(p(1)), false),
            bin(BinOp::Max, EpArg::Lit(0.0), false),
            bin(BinOp::Min, EpArg::Lit(255.0), false),
        ],
    }))];
    (k, lens)
}

/// Integer division by 0 and by -1, shifts out of range, saturating and NaN casts, NaN max,
/// f16 per-op rounding, bool stores, pow, rounding, and a `Select` that guards a load.
#[test]
fn scalar_semantics_match_eval_on_the_host() {
    const N: usize = 64;
    let mut k = Kernel::new("semantics");
    let outs: Vec<_> = [
        DType::I32,
        DType::I32,
        DType::I32,
        DType::I8,
        DType::U16,
        DType::F32,
        DType::Bool,
        DType::F16,
        DType::F32,
        DType::F32,
        DType::F32,
        DType::I32,
        DType::U8,
    ]
    .iter()
    .map(|&t| k.param(t, N, Access::Write))
    .collect();
    let a = k.param(DType::I32, N, Access::Read);
    let b = k.param(DType::I32, N, Access::Read);
    let x = k.param(DType::F32, N, Access::Read);
    let y = k.param(DType::F32, N, Access::Read);
    let h = k.param(DType::F16, N, Access::Read);
    let j = k.var(DType::I64);
    let ld = |p| Expr::load(p, Expr::var(j));
    let bin = Expr::bin;
    let in_range = bin(
        BinOp::And,
        bin(
            BinOp::Ge,
            ld(b),
            Expr::Lit(mlc_kir::Lit::Int(DType::I32, 0)),
        ),
        bin(
            BinOp::Lt,
            ld(b),
            Expr::Lit(mlc_kir::Lit::Int(DType::I32, N as i64)),
        ),
    );
    let values = vec![
        bin(BinOp::Div, ld(a), ld(b)),
        bin(BinOp::Rem, ld(a), ld(b)),
        bin(BinOp::Shr, ld(a), ld(b)),
        Expr::cast(DType::I8, ld(x)),
        Expr::cast(DType::U16, ld(x)),
        bin(BinOp::Max, ld(x), ld(y)),
        bin(
            BinOp::Xor,
            bin(BinOp::Gt, ld(x), f(0.5)),
            Expr::un(UnOp::IsNan, ld(y)),
        ),
        bin(BinOp::Add, bin(BinOp::Mul, ld(h), ld(h)), ld(h)),
        Expr::select(
            in_range,
            Expr::load(x, Expr::cast(DType::I64, ld(b))),
            f(-1.0),
        ),
        bin(BinOp::Pow, ld(x), ld(y)),
        bin(
            BinOp::Add,
            Expr::un(UnOp::Round, ld(x)),
            Expr::un(UnOp::Floor, ld(y)),
        ),
        bin(
            BinOp::Mul,
            bin(
                BinOp::Pow,
                ld(a),
                Expr::Lit(mlc_kir::Lit::Int(DType::I32, 3)),
            ),
            ld(b),
        ),
        bin(
            BinOp::Shl,
            Expr::cast(DType::U8, ld(a)),
            Expr::cast(DType::U8, ld(b)),
        ),
    ];
    k.body = vec![Stmt::For {
        var: j,
        extent: Expr::idx(N as i64),
        kind: LoopKind::Parallel,
        body: outs
            .iter()
            .zip(values)
            .map(|(&p, value)| Stmt::Store {
                param: p,
                index: Expr::var(j),
                value,
            })
            .collect(),
    }];
    mlc_kir::verify_kernel(&k).unwrap_or_else(|e| panic!("{e:?}"));
    let mut init: Vec<Vec<Val>> = outs
        .iter()
        .map(|p| {
            let t = k.params[p.0 as usize].dtype;
            vec![
                if t.is_float() {
                    Val::F(0.0)
                } else if t == DType::Bool {
                    Val::B(false)
                } else {
                    Val::I(0)
                };
                N
            ]
        })
        .collect();
    init.push(ints(N, 7));
    init.push(ints(N, 8));
    init.push(floats(N, 9));
    init.push(floats(N, 10));
    init.push(
        floats(N, 11)
            .into_iter()
            .map(|v| match v {
                Val::F(f) => Val::F(half::f16::from_f64(f).to_f64()),
                v => v,
            })
            .collect(),
    );
    check_on_host(&k, init);
}
