//! Compiled kernels are checked against the kernel-IR evaluator (the oracle): each case is a
//! small text-IR graph, lowered, run by `mlc_kir::run_program` and compiled (scalar and SIMD,
//! one and two threads). Integer, bool and data-movement results must match exactly; floats
//! within a tight tolerance relative to the output's range.

use crate::{CompiledProgram, Options, kernel_clif};
use mlc_ir::{DType, Tensor, parse_graph};
use mlc_kir::{lower_graph, print_program, run_program};

/// Deterministic inputs in [-2, 2) (integers in [-5, 5)), never all zeros.
fn input(dtype: DType, shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f64) / (1u64 << 31) as f64
    };
    let v: Vec<f64> = (0..n).map(|_| next() * 4.0 - 2.0).collect();
    let t = if dtype.is_float() {
        Tensor::from_vec(shape, v)
    } else if dtype == DType::Bool {
        Tensor::from_vec(shape, v.iter().map(|x| *x > 0.0).collect::<Vec<bool>>())
    } else {
        // Unsigned inputs stay small: the evaluator holds u64 as i64.
        let unsigned = !dtype.is_signed_int();
        Tensor::from_vec(
            shape,
            v.iter()
                .map(|x| {
                    let i = (x * 2.5).floor() as i64;
                    if unsigned { i.abs() } else { i }
                })
                .collect::<Vec<i64>>(),
        )
    };
    t.and_then(|t| t.cast(dtype)).expect("test input")
}

/// A xorshift generator for test data (deterministic, no dependency).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// An integer in `lo..=hi`.
    pub(crate) fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    /// A float in `[lo, hi)` (a millionth's steps).
    pub(crate) fn float(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * (self.next() % 1_000_000) as f32 / 1e6
    }
    /// A float in `[-4, 4]` in steps of 1/250.
    pub(crate) fn f(&mut self) -> f32 {
        self.int(-1000, 1000) as f32 / 250.0
    }
}

pub(crate) fn inputs_for(g: &mlc_ir::Graph) -> Vec<Tensor> {
    g.inputs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ty = g.ty(p.value);
            input(
                ty.dtype,
                &ty.static_shape().expect("static test shapes"),
                i as u64 + 1,
            )
        })
        .collect()
}

/// Compares `got` with `want` within `tol` relative to `want`'s range (exactly when 0).
pub(crate) fn compare(want: &[Tensor], got: &[Tensor], tol: f64) -> Result<(), String> {
    if want.len() != got.len() {
        return Err(format!("{} outputs, expected {}", got.len(), want.len()));
    }
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        if w.dtype() != g.dtype() || w.shape() != g.shape() {
            return Err(format!(
                "output {i}: {:?}{:?}, expected {:?}{:?}",
                g.dtype(),
                g.shape(),
                w.dtype(),
                w.shape()
            ));
        }
        let (wv, gv) = (
            w.cast(DType::F64).and_then(|t| t.to_f64_vec()),
            g.cast(DType::F64).and_then(|t| t.to_f64_vec()),
        );
        let (wv, gv) = (
            wv.map_err(|e| e.to_string())?,
            gv.map_err(|e| e.to_string())?,
        );
        let range = wv.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
        for (j, (a, b)) in wv.iter().zip(&gv).enumerate() {
            let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= tol * range;
            if !ok {
                return Err(format!(
                    "output {i} element {j}: expected {a}, compiled {b}"
                ));
            }
        }
    }
    Ok(())
}

/// Lowers `src`, runs the evaluator and the compiled program (SIMD on and off, 1 and 2
/// threads), and compares. Returns the program's text.
pub(crate) fn check(src: &str, tol: f64) -> String {
    let g = parse_graph(src).unwrap_or_else(|e| panic!("bad test graph: {e}"));
    let inputs = inputs_for(&g);
    check_inputs(src, &inputs, tol)
}

/// [`check`] on the given inputs.
pub(crate) fn check_inputs(src: &str, inputs: &[Tensor], tol: f64) -> String {
    let g = parse_graph(src).unwrap_or_else(|e| panic!("bad test graph: {e}"));
    let inputs = inputs.to_vec();
    let prog = lower_graph(&g).unwrap_or_else(|e| panic!("lowering failed: {e}"));
    let want = run_program(&prog, &inputs)
        .unwrap_or_else(|e| panic!("evaluation failed: {e}\n{}", print_program(&prog)));
    for (simd, check_bounds) in [(false, true), (false, false), (true, false)] {
        let opts = Options {
            simd,
            check_bounds,
            ..Options::default()
        };
        let c = CompiledProgram::with_options(&prog, opts)
            .unwrap_or_else(|e| panic!("compilation failed: {e}\n{}", print_program(&prog)));
        for threads in [1, 2] {
            let got = c.run(&inputs, threads).expect("compiled run");
            if let Err(e) = compare(&want, &got, tol) {
                panic!(
                    "simd {simd}, {threads} threads: {e}\n{}",
                    print_program(&prog)
                );
            }
        }
        // Inputs read in place must be read exactly: each against a guard page, both ends.
        for against_end in [true, false] {
            let got = crate::tests_guard::run_guarded(&c, &inputs, 2, against_end);
            if let Err(e) = compare(&want, &got, tol) {
                panic!("simd {simd}, guarded inputs: {e}\n{}", print_program(&prog));
            }
        }
    }
    print_program(&prog)
}

#[test]
fn elementwise_broadcast_and_activations() {
    let ops = [
        "ew.add", "ew.sub", "ew.mul", "ew.div", "ew.max", "ew.min", "ew.prelu", "ew.pow",
    ];
    for op in ops {
        check(
            &format!(
                r#"graph (%0: f32[2,3,4] "a", %1: f32[3,1] "b") -> (%2 "y") {{
  %2 = {op}(%0, %1) : f32[2,3,4]
}}"#
            ),
            1e-6,
        );
    }
    let unary = [
        "ew.relu",
        "ew.sigmoid",
        "ew.tanh",
        "ew.exp",
        "ew.log",
        "ew.sqrt",
        "ew.abs",
        "ew.neg",
        "ew.erf",
        "ew.softplus",
        "ew.softsign",
        "ew.mish",
        "ew.hard_swish",
        "ew.floor",
        "ew.ceil",
        "ew.round",
        "ew.sign",
        "ew.sin",
        "ew.cos",
        "ew.tan",
        "ew.atan",
        "ew.asinh",
        "ew.sinh",
        "ew.cosh",
        "ew.reciprocal",
        "ew.is_nan",
        r#"ew.gelu {"approximate":"none"}"#,
        r#"ew.gelu {"approximate":"tanh"}"#,
        r#"ew.leaky_relu {"alpha":0.1}"#,
        r#"ew.elu {"alpha":1.0}"#,
        r#"ew.selu {"alpha":1.67,"gamma":1.05}"#,
        r#"ew.celu {"alpha":1.5}"#,
        r#"ew.hard_sigmoid {"alpha":0.2,"beta":0.5}"#,
        r#"ew.swish {"alpha":1.0}"#,
        r#"ew.shrink {"bias":0.5,"lambd":0.5}"#,
        r#"ew.thresholded_relu {"alpha":0.5}"#,
    ];
    for op in unary {
        let out = if op == "ew.is_nan" { "bool" } else { "f32" };
        for shape in ["[5,7]", "[3,37]", "[1000]"] {
            check(
                &format!(
                    r#"graph (%0: f32{shape} "x") -> (%1 "y") {{
  %1 = {op}(%0) : {out}{shape}
}}"#
                ),
                1e-5,
            );
        }
    }
}

#[test]
fn other_float_types() {
    for ty in ["f64", "f16", "bf16"] {
        for op in ["ew.add", "ew.mul", "ew.div", "ew.max", "ew.sub"] {
            check(
                &format!(
                    r#"graph (%0: {ty}[3,5] "a", %1: {ty}[5] "b") -> (%2 "y") {{
  %2 = {op}(%0, %1) : {ty}[3,5]
}}"#
                ),
                1e-6,
            );
        }
        for op in [
            "ew.exp",
            "ew.tanh",
            "ew.sigmoid",
            "ew.relu",
            "ew.neg",
            "ew.abs",
        ] {
            check(
                &format!(
                    r#"graph (%0: {ty}[4,6] "x") -> (%1 "y") {{
  %1 = {op}(%0) : {ty}[4,6]
}}"#
                ),
                1e-6,
            );
        }
    }
}

#[test]
fn integer_and_comparison_ops() {
    check(
        r#"graph (%0: i32[4,5] "a", %1: i32[5] "b") -> (%2 "y", %3 "z", %4 "w") {
  %2 = ew.mod {"fmod":false} (%0, %1) : i32[4,5]
  %3 = ew.less(%0, %1) : bool[4,5]
  %4 = ew.where(%3, %0, %1) : i32[4,5]
}"#,
        0.0,
    );
    check(
        r#"graph (%0: f16[6] "a", %1: f16[6] "b") -> (%2 "y", %3 "c") {
  %2 = ew.mul(%0, %1) : f16[6]
  %3 = ew.cast {"to":"i64"} (%2) : i64[6]
}"#,
        0.0,
    );
    for ty in ["i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64"] {
        for op in [
            "ew.add",
            "ew.sub",
            "ew.mul",
            "ew.div",
            "ew.max",
            "ew.min",
            r#"ew.mod {"fmod":false}"#,
            r#"ew.mod {"fmod":true}"#,
            "ew.bitwise_and",
            "ew.bitwise_or",
            "ew.bitwise_xor",
            "ew.pow",
        ] {
            check(
                &format!(
                    r#"graph (%0: {ty}[4,5] "a", %1: {ty}[5] "b") -> (%2 "y") {{
  %2 = {op}(%0, %1) : {ty}[4,5]
}}"#
                ),
                0.0,
            );
        }
        for op in ["ew.equal", "ew.greater", "ew.less_or_equal"] {
            check(
                &format!(
                    r#"graph (%0: {ty}[4,5] "a", %1: {ty}[5] "b") -> (%2 "y") {{
  %2 = {op}(%0, %1) : bool[4,5]
}}"#
                ),
                0.0,
            );
        }
        for op in ["ew.abs", "ew.neg", "ew.sign", "ew.bitwise_not"] {
            check(
                &format!(
                    r#"graph (%0: {ty}[3,7] "a") -> (%1 "y") {{
  %1 = {op}(%0) : {ty}[3,7]
}}"#
                ),
                0.0,
            );
        }
    }
    for ty in ["u8", "u16", "u32", "u64"] {
        for op in ["ew.shift_left", "ew.shift_right"] {
            check(
                &format!(
                    r#"graph (%0: {ty}[4,5] "a", %1: {ty}[5] "b") -> (%2 "y") {{
  %2 = {op}(%0, %1) : {ty}[4,5]
}}"#
                ),
                0.0,
            );
        }
    }
    check(
        r#"graph (%0: bool[4,5] "a", %1: bool[5] "b") -> (%2 "y", %3 "z", %4 "w", %5 "n") {
  %2 = ew.and(%0, %1) : bool[4,5]
  %3 = ew.or(%0, %1) : bool[4,5]
  %4 = ew.xor(%0, %1) : bool[4,5]
  %5 = ew.not(%0) : bool[4,5]
}"#,
        0.0,
    );
}

#[test]
fn casts() {
    let types = [
        "f32", "f64", "f16", "bf16", "i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64", "bool",
    ];
    // The attribute spelling of bf16 is serde's `b_f16`.
    let attr = |t: &str| {
        if t == "bf16" {
            "b_f16".to_string()
        } else {
            t.to_string()
        }
    };
    for from in types {
        for to in types {
            let to_attr = attr(to);
            check(
                &format!(
                    r#"graph (%0: {from}[3,5] "a") -> (%1 "y") {{
  %1 = ew.cast {{"to":"{to_attr}"}} (%0) : {to}[3,5]
}}"#
                ),
                0.0,
            );
        }
    }
}

/// Casts from and to the storage-only types (float8, float4, 4/2-bit ints; integer bit
/// manipulation in the kernels) and bit casts, compiled against the evaluator: storage results
/// code for code, on every code of each storage type and on float values around every
/// rounding boundary, in a fused chain too (f32 → f8 → f16, one kernel).
#[test]
fn storage_type_casts() {
    let storage = [
        "f8e4m3fn",
        "f8e4m3fnuz",
        "f8e5m2",
        "f8e5m2fnuz",
        "f8e8m0",
        "f4e2m1",
        "i4",
        "u4",
        "i2",
        "u2",
    ];
    let ordinary = ["f32", "f64", "f16", "i8", "u8", "i32", "u64", "bool"];
    // Every code (the sub-byte ones repeat theirs), and floats near the formats' values.
    let codes = |t: DType| {
        let bits = t.bits().expect("fixed width");
        let bytes: Vec<u8> = (0..=255u8).collect();
        Tensor::from_le_bytes(t, &[256 * 8 / bits], &bytes).expect("codes")
    };
    let mut probe: Vec<f64> = vec![
        0.0,
        -0.0,
        f64::NAN,
        f64::INFINITY,
        -f64::INFINITY,
        1e9,
        -3e5,
    ];
    for e in -20..18 {
        for m in [
            1.0, 1.0625, 1.125, 1.1875, 1.25, 1.375, 1.5, 1.625, 1.75, 1.875, 1.9375,
        ] {
            probe.extend([m * 2f64.powi(e), -m * 2f64.powi(e)]);
        }
    }
    let probe = Tensor::from_vec(&[probe.len()], probe).expect("probe");
    let probe32 = probe.cast(DType::F32).expect("f32 probe");
    let run = |src: &str, x: &Tensor| {
        let g = parse_graph(src).unwrap_or_else(|e| panic!("bad graph {src}: {e}"));
        let prog = lower_graph(&g).unwrap_or_else(|e| panic!("lowering {src}: {e}"));
        let want = run_program(&prog, std::slice::from_ref(x)).expect("evaluation");
        for simd in [false, true] {
            let opts = Options {
                simd,
                ..Options::default()
            };
            let c = CompiledProgram::with_options(&prog, opts)
                .unwrap_or_else(|e| panic!("compiling {src}: {e}\n{}", print_program(&prog)));
            for threads in [1, 2] {
                let got = c
                    .run(std::slice::from_ref(x), threads)
                    .expect("compiled run");
                let same = if want[0].dtype().is_storage_only() {
                    want[0].to_le_bytes().ok() == got[0].to_le_bytes().ok()
                } else {
                    compare(&want, &got, 0.0).is_ok()
                };
                assert!(
                    same,
                    "{src}: {:?} vs {:?}\n{}",
                    want[0],
                    got[0],
                    print_program(&prog)
                );
            }
        }
    };
    let cast = |from: &str, n: usize, to: &str| {
        format!(
            "graph (%0: {from}[{n}] \"x\") -> (%1 \"y\") {{\n  %1 = ew.cast {{\"to\":\"{to}\"}} (%0) : {to}[{n}]\n}}"
        )
    };
    for from in storage {
        let x = codes(DType::from_name(from).expect("dtype"));
        for to in ordinary.iter().chain(&storage) {
            run(&cast(from, x.len(), to), &x);
        }
    }
    for from in ["f32", "f64", "f16", "i32"] {
        let x = probe
            .cast(DType::from_name(from).expect("dtype"))
            .expect("probe");
        for to in storage {
            run(&cast(from, x.len(), to), &x);
        }
    }
    for sat in [false, true] {
        for round in ["up", "down", "nearest"] {
            for to in ["f8e4m3fn", "f8e5m2", "f8e8m0", "f8e5m2fnuz"] {
                let n = probe.len();
                run(
                    &format!(
                        r#"graph (%0: f32[{n}] "x") -> (%1 "y") {{
  %1 = ew.cast_f8 {{"to":"{to}","saturate":{sat},"round":"{round}"}} (%0) : {to}[{n}]
}}"#
                    ),
                    &probe32,
                );
            }
        }
    }
    let n = probe.len();
    let fused = format!(
        r#"graph (%0: f32[{n}] "x") -> (%1 "y") {{
  %1 = control.composite {{"kind":"cast+cast"}} (%0) : f16[{n}] {{
    graph (%0: f32[{n}] "x") -> (%2 "y") {{
      %1 = ew.cast {{"to":"f8e4m3fn"}} (%0) : f8e4m3fn[{n}]
      %2 = ew.cast {{"to":"f16"}} (%1) : f16[{n}]
    }}
  }}
}}"#
    );
    assert_eq!(run_count(&fused), 1, "one fused kernel");
    run(&fused, &probe32);
    for (from, to) in [
        ("f32", "i32"),
        ("i32", "f32"),
        ("f64", "u64"),
        ("f8e5m2", "u8"),
    ] {
        let x = if from == "f8e5m2" {
            codes(DType::F8E5M2)
        } else {
            probe
                .cast(DType::from_name(from).expect("dtype"))
                .expect("probe")
        };
        let n = x.len();
        run(
            &format!(
                r#"graph (%0: {from}[{n}] "x") -> (%1 "y") {{
  %1 = ew.bit_cast {{"to":"{to}"}} (%0) : {to}[{n}]
}}"#
            ),
            &x,
        );
    }
}

/// Quantization to and from the storage types, per axis and blocked, compiled.
#[test]
fn storage_type_quantization() {
    check(
        r#"graph (%0: f32[4,6] "x", %1: f32[6] "s", %2: f32[4,2] "b") -> (%3 "q", %4 "f", %5 "u", %6 "d") {
  %3 = quant.quantize {"axis":1,"block_size":0,"to":"i4"} (%0, %1, _) : i4[4,6]
  %4 = quant.quantize {"axis":1,"block_size":0,"to":"f8e4m3fn","saturate":false} (%0, %1, _) : f8e4m3fn[4,6]
  %5 = quant.quantize {"axis":1,"block_size":4,"to":"u8"} (%0, %2, _) : u8[4,6]
  %6 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%3, %1, _) : f32[4,6]
}"#,
        0.0,
    );
}

/// The number of kernels `src` lowers to.
fn run_count(src: &str) -> usize {
    let g = parse_graph(src).expect("graph");
    lower_graph(&g).expect("lowering").kernels.len()
}

/// Vector integer lanes: u8/i8/i32 loads widened to f32, and f32 → u8/i8/i32 casts stored
/// narrowed, saturating with NaN → 0, against the evaluator on values past every range.
#[test]
fn integer_lane_casts_saturate_like_scalar() {
    let mut v: Vec<f32> = (0..38).map(|i| (i as f32 - 19.0) * 17.3).collect();
    v.extend([
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        127.5,
        -128.7,
        255.9,
        1e10,
        -1e10,
    ]);
    let n = v.len();
    let x = Tensor::from_vec(&[n], v).expect("x");
    for to in ["u8", "i8", "i32"] {
        let g = parse_graph(&format!(
            r#"graph (%0: f32[{n}] "x") -> (%1 "q", %2 "back") {{
  %1 = ew.cast {{"to":"{to}"}} (%0) : {to}[{n}]
  %2 = ew.cast {{"to":"f32"}} (%1) : f32[{n}]
}}"#
        ))
        .expect("graph");
        let prog = lower_graph(&g).expect("lowering");
        let want = run_program(&prog, std::slice::from_ref(&x)).expect("evaluates");
        let c = CompiledProgram::new(&prog).expect("compiles");
        let got = c.run(std::slice::from_ref(&x), 1).expect("runs");
        compare(&want, &got, 0.0).unwrap_or_else(|e| panic!("to {to}: {e}"));
        let clif = crate::program_clif(&prog, Options::default()).expect("clif");
        // On x86 a plain truncation after a clamp in float (see `simd::cast_lanes`).
        assert!(
            clif.contains("fcvt_to_sint_sat.i32x4") || clif.contains("x86_cvtt2dq.i32x4"),
            "to {to}: not vectorized"
        );
    }
    // A quantize / dequantize chain with per-channel scales: vector body and scalar tail.
    check(
        r#"graph (%0: f32[2,3,17] "x", %1: f32[3] "s", %2: u8[3] "z") -> (%4 "y", %5 "q") {
  %3 = ew.abs(%1) : f32[3]
  %4 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%0, %3, %2) : u8[2,3,17]
  %5 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%4, %3, %2) : f32[2,3,17]
}"#,
        0.0,
    );
}

#[test]
fn reductions_and_softmax() {
    let kinds = [
        "sum",
        "mean",
        "max",
        "min",
        "prod",
        "l1",
        "l2",
        "log_sum",
        "log_sum_exp",
        "sum_square",
    ];
    for k in kinds {
        for (axes, keep, out) in [
            ("[1]", true, "[2,1,4]"),
            ("[0,2]", false, "[3]"),
            ("null", false, "[]"),
        ] {
            let ty = "f32";
            let src = format!(
                r#"graph (%0: {ty}[2,3,4] "x") -> (%1 "y") {{
  %1 = reduce.{k} {{"axes":{axes},"keepdims":{keep}}} (%0) : {ty}{out}
}}"#
            );
            // log_sum of a negative sum is NaN in both, which compare equal.
            check(&src, 1e-5);
        }
    }
    // Long rows: vector accumulators, a remainder, and threads over the kept dim.
    for k in [
        "sum",
        "mean",
        "max",
        "min",
        "l1",
        "l2",
        "log_sum_exp",
        "sum_square",
    ] {
        check(
            &format!(
                r#"graph (%0: f32[8,1003] "x") -> (%1 "y") {{
  %1 = reduce.{k} {{"axes":[1],"keepdims":false}} (%0) : f32[8]
}}"#
            ),
            1e-5,
        );
    }
    for k in ["sum", "max", "min", "prod"] {
        check(
            &format!(
                r#"graph (%0: i32[2,3,4] "x") -> (%1 "y") {{
  %1 = reduce.{k} {{"axes":[2],"keepdims":false}} (%0) : i32[2,3]
}}"#
            ),
            0.0,
        );
    }
    for k in ["softmax", "log_softmax"] {
        check(
            &format!(
                r#"graph (%0: f32[2,3,5] "x") -> (%1 "y", %2 "z") {{
  %1 = reduce.{k} {{"axis":2}} (%0) : f32[2,3,5]
  %2 = reduce.{k} {{"axis":1}} (%0) : f32[2,3,5]
}}"#
            ),
            1e-5,
        );
        check(
            &format!(
                r#"graph (%0: f32[64,100] "x") -> (%1 "y") {{
  %1 = reduce.{k} {{"axis":1}} (%0) : f32[64,100]
}}"#
            ),
            1e-5,
        );
    }
}

#[test]
fn contractions() {
    check(
        r#"graph (%0: f32[2,1,3,4] "a", %1: f32[5,4,6] "b") -> (%2 "y") {
  %2 = nn.matmul(%0, %1) : f32[2,5,3,6]
}"#,
        1e-5,
    );
    check(
        r#"graph (%0: f32[4] "a", %1: f32[4,6] "b") -> (%2 "y") {
  %2 = nn.matmul(%0, %1) : f32[6]
}"#,
        1e-5,
    );
    check(
        r#"graph (%0: f32[4,3] "a", %1: f32[5,4] "b", %2: f32[5] "c") -> (%3 "y") {
  %3 = nn.gemm {"trans_a":true,"trans_b":true,"alpha":0.5,"beta":1.0} (%0, %1, %2) : f32[3,5]
}"#,
        1e-5,
    );
    check(
        r#"graph (%0: f32[37,70] "a", %1: f32[70,45] "b") -> (%2 "y") {
  %2 = nn.matmul(%0, %1) : f32[37,45]
}"#,
        1e-5,
    );
    check(
        r#"graph (%0: f64[3,4] "a", %1: f64[4,5] "b") -> (%2 "y") {
  %2 = nn.matmul(%0, %1) : f64[3,5]
}"#,
        1e-12,
    );
    check(
        r#"graph (%0: i32[3,4] "a", %1: i32[4,5] "b") -> (%2 "y") {
  %2 = nn.matmul(%0, %1) : i32[3,5]
}"#,
        0.0,
    );
}

#[test]
fn depthwise_convolutions() {
    // Rows accumulate in place (`y[i] = y[i] + x[..] * w`): vectorized, and so is the padding
    // copy. Strides 1 and 2, padded and not, a channel multiplier, no bias.
    for (x, w, attrs, out, bias) in [
        (
            "f32[2,3,9,8]",
            "f32[3,1,3,3]",
            r#""dilations":[1,1],"group":3,"pads":[1,1,1,1],"strides":[1,1]"#,
            "f32[2,3,9,8]",
            true,
        ),
        (
            "f32[1,4,11,10]",
            "f32[8,1,5,5]",
            r#""dilations":[1,1],"group":4,"pads":[2,1,2,3],"strides":[2,2]"#,
            "f32[1,8,6,5]",
            true,
        ),
        (
            "f32[1,2,9,9]",
            "f32[2,1,3,3]",
            r#""dilations":[2,2],"group":2,"pads":[0,0,0,0],"strides":[1,1]"#,
            "f32[1,2,5,5]",
            false,
        ),
        // 7x7: more taps than are unrolled, so rows accumulate in place.
        (
            "f32[1,3,10,9]",
            "f32[3,1,7,7]",
            r#""dilations":[1,1],"group":3,"pads":[3,3,3,3],"strides":[1,1]"#,
            "f32[1,3,10,9]",
            true,
        ),
    ] {
        let m = w[4..].split(',').next().unwrap_or("1");
        let (decl, arg, y) = if bias {
            (format!(r#", %2: f32[{m}] "b""#), "%2", 3)
        } else {
            (String::new(), "_", 2)
        };
        let text = check(
            &format!(
                r#"graph (%0: {x} "x", %1: {w} "w"{decl}) -> (%{y} "y") {{
  %{y} = nn.conv {{"auto_pad":"not_set",{attrs}}} (%0, %1, {arg}) : {out}
}}"#
            ),
            1e-5,
        );
        assert!(text.contains("_depthwise"), "{text}");
    }
}

#[test]
fn max_pool_rows() {
    // Padded with -inf, rows take the max with one tap at a time: strides, dilation, ceil mode.
    let text = check(
        r#"graph (%0: f32[2,3,9,8] "x") -> (%1 "a", %2 "b") {
  %1 = nn.max_pool {"kernel":[3,3],"strides":[2,2],"dilations":[1,1],"pads":[1,1,1,1],"auto_pad":"not_set","ceil_mode":false,"storage_order_col_major":false} (%0) : f32[2,3,5,4]
  %2 = nn.max_pool {"kernel":[2,3],"strides":[2,1],"dilations":[2,1],"pads":[0,1,0,0],"auto_pad":"not_set","ceil_mode":true,"storage_order_col_major":false} (%0) : f32[2,3,4,7]
}"#,
        0.0,
    );
    assert_eq!(text.matches("_rows(").count(), 2, "{text}");
}

#[test]
fn data_movement() {
    check(
        r#"graph (%0: f32[2,3,4] "x", %1: f32[2,1,4] "z", %2: i64[2,2] "i") -> (%3 "t", %5 "e", %6 "c", %7 "s", %8 "g") {
  %3 = movement.transpose {"perm":[2,0,1]} (%0) : f32[4,2,3]
  %4 = movement.reshape {"shape":[6,4],"allowzero":false} (%0, _) : f32[6,4]
  %5 = movement.expand {"shape":[3,2,3,4]} (%0, _) : f32[3,2,3,4]
  %6 = movement.concat {"axis":1} (%0, %1) : f32[2,4,4]
  %7 = movement.slice {"starts":[1,-1],"ends":[3,0],"axes":[1,2],"steps":[1,-2]} (%0, _, _, _, _) : f32[2,2,2]
  %8 = movement.gather {"axis":0} (%4, %2) : f32[2,2,4]
}"#,
        0.0,
    );
    for ty in ["i64", "u8", "bool", "f16"] {
        check(
            &format!(
                r#"graph (%0: {ty}[3,4,5] "x") -> (%1 "t") {{
  %1 = movement.transpose {{"perm":[1,2,0]}} (%0) : {ty}[4,5,3]
}}"#
            ),
            0.0,
        );
    }
}

#[test]
fn composite_fuses_into_one_kernel() {
    let shown = check(
        r#"graph (%0: f32[2,8] "x", %1: f32[8] "b") -> (%2 "y") {
  %2 = control.composite {"kind":"bias_gelu"} (%0, %1) : f32[2,8] {
    graph (%0: f32[2,8] "x", %1: f32[8] "b") -> (%4 "y") {
      @c0 = const f32[] [0.5]
      %2 = ew.add(%0, %1) : f32[2,8]
      %3 = constant @c0 : f32[]
      %4 = ew.mul(%2, %3) : f32[2,8]
    }
  }
}"#,
        1e-6,
    );
    assert_eq!(shown.matches("kernel @").count(), 1, "{shown}");
}

#[test]
fn big_shapes_use_threads_and_simd() {
    check(
        r#"graph (%0: f32[64,1001] "a", %1: f32[1001] "b") -> (%2 "y") {
  %2 = ew.add(%0, %1) : f32[64,1001]
}"#,
        1e-6,
    );
    check(
        r#"graph (%0: f32[100000] "a") -> (%1 "y") {
  %1 = ew.tanh(%0) : f32[100000]
}"#,
        1e-6,
    );
    check(
        r#"graph (%0: f32[8,32,64] "a", %1: f32[8,64,48] "b") -> (%2 "y") {
  %2 = nn.matmul(%0, %1) : f32[8,32,48]
}"#,
        1e-5,
    );
    // One big contraction: its columns are split across threads inside the library call.
    check(
        r#"graph (%0: f32[64,128] "a", %1: f32[128,96] "b") -> (%2 "y") {
  %2 = nn.matmul(%0, %1) : f32[64,96]
}"#,
        1e-5,
    );
    check(
        r#"graph (%0: f32[30,128] "a", %1: f32[97,128] "b", %2: f32[97] "c") -> (%3 "y") {
  %3 = nn.gemm {"trans_a":false,"trans_b":true,"alpha":1.0,"beta":1.0} (%0, %1, %2) : f32[30,97]
}"#,
        1e-5,
    );
    check(
        r#"graph (%0: f32[256,300] "x") -> (%1 "y") {
  %1 = reduce.softmax {"axis":1} (%0) : f32[256,300]
}"#,
        1e-5,
    );
}

#[test]
fn gather_out_of_bounds_is_an_error() {
    let g = parse_graph(
        r#"graph (%0: f32[3,4] "x", %1: i64[2] "i") -> (%2 "y") {
  %2 = movement.gather {"axis":0} (%0, %1) : f32[2,4]
}"#,
    )
    .expect("graph");
    let prog = lower_graph(&g).expect("lowering");
    let c = CompiledProgram::new(&prog).expect("compiles");
    let x = input(DType::F32, &[3, 4], 1);
    let ok = Tensor::from_vec(&[2], vec![2i64, -1]).expect("tensor");
    let bad = Tensor::from_vec(&[2], vec![0i64, 7]).expect("tensor");
    assert!(c.run(&[x.clone(), ok], 1).is_ok());
    let e = c.run(&[x.clone(), bad], 1).expect_err("index 7 of 3");
    assert!(matches!(e, crate::RunError::OutOfBounds { .. }), "{e}");
    let e = c.run(&[x], 1).expect_err("missing input");
    assert!(matches!(e, crate::RunError::InputCount { .. }), "{e}");
}

#[test]
fn objects_are_deterministic() {
    let g = parse_graph(
        r#"graph (%0: f32[4,8] "x", %1: f32[8,3] "w") -> (%3 "y") {
  %2 = nn.matmul(%0, %1) : f32[4,3]
  %3 = ew.tanh(%2) : f32[4,3]
}"#,
    )
    .expect("graph");
    let prog = lower_graph(&g).expect("lowering");
    let a = crate::compile_object(&prog, Options::default()).expect("object");
    let b = crate::compile_object(&prog, Options::default()).expect("object");
    assert!(a.len() > 64 && a.starts_with(b"\x7fELF"));
    assert_eq!(a, b);
}

/// The CLIF of a few kernels, pinned.
#[test]
fn clif_snapshots() {
    let cases = [
        (
            "add_broadcast",
            r#"graph (%0: f32[2,3,4] "a", %1: f32[3,1] "b") -> (%2 "y") {
  %2 = ew.add(%0, %1) : f32[2,3,4]
}"#,
        ),
        (
            "fused_bias_gelu",
            r#"graph (%0: f32[2,8] "x", %1: f32[8] "b") -> (%2 "y") {
  %2 = control.composite {"kind":"bias_gelu"} (%0, %1) : f32[2,8] {
    graph (%0: f32[2,8] "x", %1: f32[8] "b") -> (%5 "y") {
      @c0 = const f32[] [0.5]
      %2 = ew.add(%0, %1) : f32[2,8]
      %3 = constant @c0 : f32[]
      %4 = ew.mul(%2, %3) : f32[2,8]
      %5 = ew.erf(%4) : f32[2,8]
    }
  }
}"#,
        ),
        (
            "reduce_sum",
            r#"graph (%0: f32[2,3,4] "x") -> (%1 "y") {
  %1 = reduce.sum {"axes":[2],"keepdims":false} (%0) : f32[2,3]
}"#,
        ),
        (
            "softmax",
            r#"graph (%0: f32[2,5] "x") -> (%1 "y") {
  %1 = reduce.softmax {"axis":1} (%0) : f32[2,5]
}"#,
        ),
    ];
    for (name, src) in cases {
        let g = parse_graph(src).expect("graph");
        let prog = lower_graph(&g).expect("lowering");
        let text = kernel_clif(&prog.kernels[0], Options::default()).expect("clif");
        insta::assert_snapshot!(format!("clif_{name}"), text);
    }
}

/// The development MLP, imported from ONNX, simplified, lowered and compiled, against the
/// graph interpreter. Skipped (with a note) when the development corpus is absent.
#[test]
fn dev_model_mlp_end_to_end() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models-dev");
    let dir = std::env::var_os("MLC_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or(root);
    let path = dir.join("mlp_784_512_512_10.onnx");
    if !path.exists() {
        eprintln!("note: {} not found; skipping", path.display());
        return;
    }
    let mut model = mlc_onnx::load(&path).expect("import");
    let g = &mut model.graph;
    let mut named = Vec::new();
    for (i, port) in g.inputs.iter().enumerate() {
        let ty = g.ty(port.value);
        let shape: Vec<usize> = ty.shape.iter().map(|d| d.known().unwrap_or(4)).collect();
        named.push((port.name.clone(), input(ty.dtype, &shape, i as u64 + 7)));
    }
    let bindings: Vec<(String, Vec<usize>)> = named
        .iter()
        .map(|(n, t)| (n.clone(), t.shape().to_vec()))
        .collect();
    mlc_passes::simplify(g, &bindings).expect("simplify");
    let want = mlc_interp::run(g, &named).expect("interpreter");
    let prog = lower_graph(g).expect("every op of the MLP lowers");
    let inputs: Vec<Tensor> = named.into_iter().map(|(_, t)| t).collect();
    let c = CompiledProgram::new(&prog).expect("compiles");
    for threads in [1, 2] {
        let got = c.run(&inputs, threads).expect("runs");
        compare(&want, &got, 1e-5).unwrap_or_else(|e| panic!("{threads} threads: {e}"));
    }
}

/// The inline vector `tanh` against libm, element by element.
#[test]
fn inline_tanh_is_accurate() {
    let g = parse_graph(
        r#"graph (%0: f32[4003] "x") -> (%1 "y") {
  %1 = ew.tanh(%0) : f32[4003]
}"#,
    )
    .expect("graph");
    let mut v: Vec<f32> = (0..4000)
        .map(|i| {
            let t = (i as f32 - 2000.0) / 2000.0;
            t * t * t * 12.0
        })
        .collect();
    v.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
    let x = Tensor::from_vec(&[4003], v.clone()).expect("tensor");
    let prog = lower_graph(&g).expect("lowering");
    let c = CompiledProgram::new(&prog).expect("compiles");
    let got = c.run(&[x], 1).expect("runs")[0].to_f64_vec().expect("f32");
    for (i, (&x, &y)) in v.iter().zip(&got).enumerate() {
        let want = x.tanh() as f64;
        let ok = (want.is_nan() && y.is_nan()) || want == y || ((want - y) / want).abs() < 5e-7;
        assert!(ok, "element {i}: tanh({x}) = {want}, inline {y}");
    }
}

/// The inline vector `erf` against the `libm` crate's `erff` (the evaluator's), element by
/// element, across its regions (boundaries 0.84375, 1.25, 1/0.35, 6) and the special values.
#[test]
fn inline_erf_is_accurate() {
    let g = parse_graph(
        r#"graph (%0: f32[4007] "x") -> (%1 "y") {
  %1 = ew.erf(%0) : f32[4007]
}"#,
    )
    .expect("graph");
    let mut v: Vec<f32> = (0..4000)
        .map(|i| {
            let t = (i as f32 - 2000.0) / 2000.0;
            t * t * t * 7.0
        })
        .collect();
    v.extend([
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        0.0,
        -0.0,
        1e-30,
        0.84375,
    ]);
    let x = Tensor::from_vec(&[4007], v.clone()).expect("tensor");
    let prog = lower_graph(&g).expect("lowering");
    let c = CompiledProgram::new(&prog).expect("compiles");
    let got = c.run(&[x], 1).expect("runs")[0].to_f64_vec().expect("f32");
    for (i, (&x, &y)) in v.iter().zip(&got).enumerate() {
        let want = libm::erff(x) as f64;
        let ok = (want.is_nan() && y.is_nan())
            || want == y
            || ((want - y) / want).abs() < 1e-6
            || (want - y).abs() < 1e-37;
        assert!(ok, "element {i}: erf({x}) = {want}, inline {y}");
    }
}

/// The inline vector `exp` against libm, element by element, over its whole range and the
/// special values.
#[test]
fn inline_exp_is_accurate() {
    let g = parse_graph(
        r#"graph (%0: f32[4003] "x") -> (%1 "y") {
  %1 = ew.exp(%0) : f32[4003]
}"#,
    )
    .expect("graph");
    let mut v: Vec<f32> = (0..4000).map(|i| -110.0 + i as f32 * 0.055).collect();
    v.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
    let x = Tensor::from_vec(&[4003], v.clone()).expect("tensor");
    let prog = lower_graph(&g).expect("lowering");
    let c = CompiledProgram::new(&prog).expect("compiles");
    let got = c.run(&[x], 1).expect("runs")[0].to_f64_vec().expect("f32");
    for (i, (&x, &y)) in v.iter().zip(&got).enumerate() {
        let want = x.exp() as f64;
        let ok = (want.is_nan() && y.is_nan())
            || want == y
            || (want < 1.2e-38 && y.abs() < 1.2e-38)
            || ((want - y) / want).abs() < 3e-7;
        assert!(ok, "element {i}: exp({x}) = {want}, inline {y}");
    }
}

/// A matmul with a constant weight and more than 64 rows takes the pre-packed path (packed on
/// the first run, reused after): results match the evaluator on every run, 1 and 2 threads.
#[test]
fn constant_weights_are_packed_once_and_reused() {
    use mlc_ir::ops::NnOp;
    use mlc_ir::{Graph, Op, Port, TensorType};
    let (m, k, n) = (70, 33, 40);
    let mut g = Graph::new();
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[m, k]));
    let wv: Vec<f32> = (0..k * n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let w = g.add_constant(Tensor::from_vec(&[k, n], wv).expect("w"));
    let y = g.add_node(
        Op::Nn(NnOp::Matmul),
        vec![Some(x), Some(w)],
        vec![TensorType::fixed(DType::F32, &[m, n])],
        vec![],
        None,
    )[0];
    g.outputs.push(Port {
        value: y,
        name: "y".into(),
    });
    let prog = lower_graph(&g).expect("lowers");
    let xin = input(DType::F32, &[m, k], 3);
    let want = run_program(&prog, std::slice::from_ref(&xin)).expect("evaluates");
    let c = CompiledProgram::new(&prog).expect("compiles");
    for threads in [1, 2, 1, 2] {
        let got = c.run(std::slice::from_ref(&xin), threads).expect("runs");
        compare(&want, &got, 1e-5).unwrap_or_else(|e| panic!("{threads} threads: {e}"));
    }
}

/// Values that clamps, casts and reductions must get right: NaN, infinities, signed zeros,
/// the types' bounds and just past them, and ordinary values in between.
fn special_values(n: usize) -> Vec<f32> {
    let special = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        255.0,
        255.5,
        256.0,
        -128.0,
        -128.5,
        127.5,
        -0.5,
        0.5,
        1e10,
        -1e10,
        6.0,
        -6.0,
    ];
    (0..n)
        .map(|i| {
            if i % 3 == 0 {
                special[(i / 3) % special.len()]
            } else {
                ((i * 37 % 101) as f32 - 50.0) * 5.3
            }
        })
        .collect()
}

/// The float results of a program compiled with SIMD on and off, bit for bit (NaNs as NaNs):
/// the vector clamps by constants (`maxps`/`minps` on x86) and casts (`cvttps2dq`) must give
/// what the scalar IEEE `fmax`/`fmin` and saturating conversions give, signs of zeros
/// included.
fn assert_simd_matches_scalar_bits(src: &str, inputs: &[Tensor]) {
    let g = parse_graph(src).expect("graph");
    let prog = lower_graph(&g).expect("lowering");
    let run = |simd| {
        let opts = Options {
            simd,
            ..Options::default()
        };
        let c = CompiledProgram::with_options(&prog, opts).expect("compiles");
        c.run(inputs, 1).expect("runs")
    };
    let (scalar, vector) = (run(false), run(true));
    for (o, (s, v)) in scalar.iter().zip(&vector).enumerate() {
        let (s, v) = (
            s.cast(DType::F64)
                .and_then(|t| t.to_f64_vec())
                .expect("f64"),
            v.cast(DType::F64)
                .and_then(|t| t.to_f64_vec())
                .expect("f64"),
        );
        for (j, (a, b)) in s.iter().zip(&v).enumerate() {
            let same = (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits();
            assert!(
                same,
                "output {o} element {j}: scalar {a}, vector {b}\n{}",
                print_program(&prog)
            );
        }
    }
}

/// Clamps by constants (fused quantization epilogues: `max(x, 0.0)`, `min(x, 255.0)`, and
/// clips by ±0) and the f32 → u8/i8/i32 casts after them, on NaN, ±inf, ±0 and values past
/// every bound: against the evaluator, and the vector code against the scalar bit for bit.
#[test]
fn clamps_by_constants_and_casts_keep_nan_and_zero_signs() {
    let n = 67;
    let x = Tensor::from_vec(&[n], special_values(n)).expect("x");
    let clips = [
        ("0.0", "255.0", "u8"),
        ("-128.0", "127.0", "i8"),
        ("0.0", "6.0", "i32"),
        ("-0.0", "0.0", "i8"),
        ("0.0", "-0.0", "u8"),
        ("-1e30", "1e30", "i32"),
    ];
    for (lo, hi, to) in clips {
        let src = format!(
            r#"graph (%0: f32[{n}] "x") -> (%1 "y", %2 "q", %3 "m") {{
  %1, %2, %3 = control.composite {{"kind":"clip_cast"}} (%0) : f32[{n}], {to}[{n}], f32[{n}] {{
    graph (%0: f32[{n}] "x") -> (%3 "y", %4 "q", %7 "m") {{
      @c0 = const f32[] [{lo}]
      @c1 = const f32[] [{hi}]
      %1 = constant @c0 : f32[]
      %2 = constant @c1 : f32[]
      %3 = ew.clip(%0, %1, %2) : f32[{n}]
      %4 = ew.cast {{"to":"{to}"}} (%3) : {to}[{n}]
      %5 = ew.max(%0, %1) : f32[{n}]
      %6 = ew.min(%2, %0) : f32[{n}]
      %7 = ew.add(%5, %6) : f32[{n}]
    }}
  }}
}}"#
        );
        let shown = check_inputs(&src, std::slice::from_ref(&x), 0.0);
        assert!(shown.contains("min(max("), "{shown}");
        assert_simd_matches_scalar_bits(&src, std::slice::from_ref(&x));
    }
    // The quantization epilogue of int8 models, vector body and scalar tail.
    for to in ["u8", "i8"] {
        let src = format!(
            r#"graph (%0: f32[{n}] "x", %1: f32[] "s", %2: {to}[] "z") -> (%3 "q") {{
  %3 = quant.quantize {{"axis":1,"block_size":0,"to":"{to}"}} (%0, %1, %2) : {to}[{n}]
}}"#
        );
        let s = Tensor::from_vec(&[], vec![0.37f32]).expect("s");
        let z = Tensor::from_vec(&[], vec![3i64])
            .and_then(|t| t.cast(if to == "u8" { DType::U8 } else { DType::I8 }))
            .expect("z");
        let ins = [x.clone(), s, z];
        check_inputs(&src, &ins, 0.0);
        assert_simd_matches_scalar_bits(&src, &ins);
    }
}

/// `max`/`min` of two tensors (the five-instruction vector form on x86) on every pair of
/// special values — NaN on either side, ±0 both ways round, ±inf — and a max pool over them:
/// against the evaluator, and the vector code against the scalar bit for bit (NaNs as NaNs).
#[test]
fn max_and_min_of_two_tensors_keep_nan_and_zero_signs() {
    let sv = special_values(19);
    let n = sv.len() * sv.len();
    let (a, b): (Vec<f32>, Vec<f32>) = sv
        .iter()
        .flat_map(|&x| sv.iter().map(move |&y| (x, y)))
        .unzip();
    let ins = [
        Tensor::from_vec(&[n], a).expect("a"),
        Tensor::from_vec(&[n], b).expect("b"),
    ];
    let src = format!(
        r#"graph (%0: f32[{n}] "a", %1: f32[{n}] "b") -> (%2 "mx", %3 "mn") {{
  %2 = ew.max(%0, %1) : f32[{n}]
  %3 = ew.min(%1, %0) : f32[{n}]
}}"#
    );
    check_inputs(&src, &ins, 0.0);
    assert_simd_matches_scalar_bits(&src, &ins);
    let (h, w) = (9, 38);
    let img: Vec<f32> = (0..h * w)
        .map(|i| {
            if i % 7 == 3 {
                sv[(i / 7) % sv.len()]
            } else {
                ((i * 13 % 29) as f32 - 14.0) * 0.5
            }
        })
        .collect();
    let x = Tensor::from_vec(&[1, 1, h, w], img).expect("x");
    let src = format!(
        r#"graph (%0: f32[1,1,{h},{w}] "x") -> (%1 "y") {{
  %1 = nn.max_pool {{"kernel":[3,3],"strides":[2,2],"dilations":[1,1],"pads":[1,1,1,1],"auto_pad":"not_set","ceil_mode":false,"storage_order_col_major":false}} (%0) : f32[1,1,5,19]
}}"#
    );
    check_inputs(&src, std::slice::from_ref(&x), 0.0);
    assert_simd_matches_scalar_bits(&src, std::slice::from_ref(&x));
}

/// Vector reductions run four accumulators sixteen lanes at a time, then one accumulator,
/// then scalars: every length around those steps, with NaN, ±inf and ±0 in the data, against
/// the evaluator (max and min exactly, NaN included).
#[test]
fn reductions_of_every_length_with_special_values() {
    for len in [
        1, 3, 4, 5, 8, 15, 16, 17, 19, 31, 32, 33, 47, 63, 64, 65, 100,
    ] {
        for (k, tol) in [
            ("max", 0.0),
            ("min", 0.0),
            ("sum", 1e-5),
            ("sum_square", 1e-5),
        ] {
            let src = format!(
                r#"graph (%0: f32[3,{len}] "x") -> (%1 "y") {{
  %1 = reduce.{k} {{"axes":[1],"keepdims":false}} (%0) : f32[3]
}}"#
            );
            // Row 0 ordinary values, row 1 with the special ones, row 2 zeros of both signs
            // and one NaN-free negative row for max.
            let mut v = Vec::with_capacity(3 * len);
            v.extend((0..len).map(|i| ((i * 29 % 53) as f32 - 26.0) * 0.7));
            v.extend(special_values(len + 1).into_iter().skip(1));
            v.extend((0..len).map(|i| if i % 2 == 0 { -0.0 } else { 0.0 }));
            let x = Tensor::from_vec(&[3, len], v).expect("x");
            check_inputs(&src, std::slice::from_ref(&x), tol);
            if k == "max" || k == "min" {
                assert_simd_matches_scalar_bits(&src, std::slice::from_ref(&x));
            }
        }
    }
    // A NaN in any single position of a long row reaches the result.
    for pos in [0, 1, 5, 15, 16, 17, 40, 63, 64, 66] {
        for k in ["max", "min"] {
            let src = format!(
                r#"graph (%0: f32[67] "x") -> (%1 "y") {{
  %1 = reduce.{k} {{"axes":[0],"keepdims":false}} (%0) : f32[]
}}"#
            );
            let mut v: Vec<f32> = (0..67).map(|i| (i as f32 - 30.0) * 1.5).collect();
            v[pos] = f32::NAN;
            let x = Tensor::from_vec(&[67], v).expect("x");
            check_inputs(&src, std::slice::from_ref(&x), 0.0);
        }
    }
}

/// Loop nests over short rows (7, 14: small feature maps) run as one loop when the rows are
/// contiguous (`simd::collapse`): per-channel quantization and a broadcast add over
/// `[c, h, w]`, against the evaluator, exactly, scalar and SIMD.
#[test]
fn short_rows_collapse_into_one_vector_loop() {
    for (h, w) in [(7, 7), (3, 14), (5, 3), (2, 9)] {
        let src = format!(
            r#"graph (%0: f32[3,{h},{w}] "x", %1: f32[3] "s", %2: u8[3] "z", %3: f32[3,1,1] "b") -> (%5 "q", %6 "y") {{
  %4 = ew.abs(%1) : f32[3]
  %5 = quant.quantize {{"axis":0,"block_size":0,"to":"u8"}} (%0, %4, %2) : u8[3,{h},{w}]
  %6 = ew.add(%0, %3) : f32[3,{h},{w}]
}}"#
        );
        let shown = check(&src, 0.0);
        let g = parse_graph(&src).expect("graph");
        let prog = lower_graph(&g).expect("lowering");
        fn any_collapses(body: &[mlc_kir::Stmt]) -> bool {
            body.iter().any(|s| {
                crate::simd::collapse(s).is_some()
                    || matches!(s, mlc_kir::Stmt::For { body, .. } if any_collapses(body))
            })
        }
        assert!(
            prog.kernels.iter().any(|k| any_collapses(&k.body)),
            "no loop nest to collapse:\n{shown}"
        );
    }
}

// ---- Depthwise convolution statement -------------------------------------------------------

/// `Stmt::Depthwise` through the runtime's kernel against the evaluator (within 1e-5 of the
/// output's range: the kernel fuses each tap's multiply and add): widths 1..40, kernels
/// 3/5/7, strides 1/2, dilation 2, asymmetric pads, and elementwise tails in the epilogue
/// (PP-LCNetV3's affine + HardSwish + affine, with scalars read from buffers).
#[test]
fn depthwise_statement_matches_the_evaluator() {
    let geoms = [
        (3, [1, 1, 1, 1], 1, 1),
        (3, [1, 1, 1, 1], 2, 1),
        (3, [0, 0, 1, 1], 2, 1),
        (5, [2, 2, 2, 2], 1, 1),
        (5, [2, 1, 2, 3], 2, 1),
        (7, [3, 3, 3, 3], 1, 1),
        (3, [2, 2, 2, 2], 1, 2),
    ];
    let mut n = 0;
    for w in (1..=40).step_by(3).chain([16, 17, 32, 33]) {
        for &(k, pads, s, d) in &geoms {
            let (h, c) = (5 + w % 4, 2 + w % 3);
            let span = d * (k - 1) + 1;
            let out =
                |i: usize, p0: usize, p1: usize| (i + p0 + p1).checked_sub(span).map(|r| r / s + 1);
            let (Some(oh), Some(ow)) = (out(h, pads[0], pads[2]), out(w, pads[1], pads[3])) else {
                continue;
            };
            let attrs = format!(
                r#""auto_pad":"not_set","dilations":[{d},{d}],"group":{c},"pads":[{},{},{},{}],"strides":[{s},{s}]"#,
                pads[0], pads[1], pads[2], pads[3]
            );
            let ty = format!("f32[1,{c},{oh},{ow}]");
            let plain = format!(
                r#"graph (%0: f32[1,{c},{h},{w}] "x", %1: f32[{c},1,{k},{k}] "w", %2: f32[{c}] "b") -> (%3 "y") {{
  %3 = nn.conv {{{attrs}}} (%0, %1, %2) : {ty}
}}"#
            );
            let text = check(&plain, 1e-5);
            assert!(text.contains("depthwise n=1"), "{text}");
            n += 1;
            if n % 3 != 0 {
                continue;
            }
            // Affine, x·clip(x + 3, 0, 6)·(1/6), affine: the scale, shifts and bounds are
            // one-element inputs, so the epilogue reads them from buffers.
            let tail = format!(
                r#"graph (%0: f32[1,{c},{h},{w}] "x", %1: f32[{c},1,{k},{k}] "w", %2: f32[{c}] "b", %3: f32[] "s", %4: f32[] "t", %5: f32[] "lo", %6: f32[] "hi") -> (%7 "y") {{
  %7 = control.composite {{"kind":"conv+tail"}} (%0, %1, %2, %3, %4, %5, %6) : {ty} {{
    graph (%0: f32[1,{c},{h},{w}] "in0", %1: f32[{c},1,{k},{k}] "in1", %2: f32[{c}] "in2", %3: f32[] "in3", %4: f32[] "in4", %5: f32[] "in5", %6: f32[] "in6") -> (%17 "out") {{
      @c0 = const f32[] [3]
      @c1 = const f32[] [0.16666667]
      %7 = nn.conv {{{attrs}}} (%0, %1, %2) : {ty}
      %8 = ew.mul(%3, %7) : {ty}
      %9 = ew.add(%8, %4) : {ty}
      %10 = constant @c0 : f32[]
      %11 = ew.add(%9, %10) : {ty}
      %12 = ew.clip(%11, %5, %6) : {ty}
      %13 = ew.mul(%9, %12) : {ty}
      %14 = constant @c1 : f32[]
      %15 = ew.mul(%13, %14) : {ty}
      %16 = ew.mul(%3, %15) : {ty}
      %17 = ew.sub(%16, %4) : {ty}
    }}
  }}
}}"#
            );
            let g = parse_graph(&tail).unwrap_or_else(|e| panic!("bad test graph: {e}"));
            let mut inputs = inputs_for(&g);
            inputs[5] = Tensor::scalar(0.0f32);
            inputs[6] = Tensor::scalar(6.0f32);
            let text = check_inputs(&tail, &inputs, 1e-5);
            assert!(
                text.contains("ep=[") && !text.contains("kernel @ew_"),
                "{text}"
            );
        }
    }
    // f64 keeps the loop lowering.
    let text = check(
        r#"graph (%0: f64[1,2,6,7] "x", %1: f64[2,1,3,3] "w") -> (%2 "y") {
  %2 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":2,"pads":[1,1,1,1],"strides":[1,1]} (%0, %1, _) : f64[1,2,6,7]
}"#,
        0.0,
    );
    assert!(!text.contains("depthwise n="), "{text}");
}

// ---- Softmax statement ---------------------------------------------------------------------

/// `Stmt::Softmax` through the runtime's kernel against the evaluator (the kernel sums in
/// lanes and has its own `exp`: a few ulp): row lengths around the vector widths, attention's
/// mask broadcast over heads (and over queries), a mask with -inf entries; the statement is
/// what the lowering emits.
#[test]
fn softmax_statement_matches_the_evaluator() {
    for len in [1, 5, 8, 15, 16, 17, 31, 33, 64, 70, 128] {
        let plain = format!(
            r#"graph (%0: f32[2,3,{len}] "x") -> (%1 "y") {{
  %1 = reduce.softmax {{"axis":2}} (%0) : f32[2,3,{len}]
}}"#
        );
        let text = check(&plain, 1e-5);
        assert!(
            text.contains(&format!("softmax rows=6 len={len}")),
            "{text}"
        );
        for mshape in [format!("1,1,3,{len}"), format!("2,1,1,{len}")] {
            let src = format!(
                r#"graph (%0: f32[2,4,3,{len}] "s", %1: f32[{mshape}] "m") -> (%2 "y") {{
  %2 = control.composite {{"kind":"attention"}} (%0, %1) : f32[2,4,3,{len}] {{
    graph (%0: f32[2,4,3,{len}] "in0", %1: f32[{mshape}] "in1") -> (%3 "out") {{
      %2 = ew.add(%0, %1) : f32[2,4,3,{len}]
      %3 = reduce.softmax {{"axis":3,"coerce_2d":false}} (%2) : f32[2,4,3,{len}]
    }}
  }}
}}"#
            );
            let g = parse_graph(&src).unwrap_or_else(|e| panic!("bad test graph: {e}"));
            let mut inputs = inputs_for(&g);
            // Mask out every third key (never a whole row: that row would be NaN).
            let shape: Vec<usize> = mshape.split(',').map(|d| d.parse().unwrap()).collect();
            let m: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|i| if i % 3 == 1 { f32::NEG_INFINITY } else { -0.5 })
                .collect();
            inputs[1] = Tensor::from_vec(&shape, m).unwrap();
            let text = check_inputs(&src, &inputs, 1e-5);
            assert!(
                text.contains("softmax rows=24") && text.contains(" mask=%p"),
                "{text}"
            );
        }
    }
    // f64 and a softmax over a middle axis keep the loop lowering.
    let text = check(
        r#"graph (%0: f64[2,9] "x", %1: f32[2,3,5] "z") -> (%2 "y", %3 "w") {
  %2 = reduce.softmax {"axis":1} (%0) : f64[2,9]
  %3 = reduce.softmax {"axis":1} (%1) : f32[2,3,5]
}"#,
        1e-5,
    );
    assert!(!text.contains("softmax rows="), "{text}");
}
