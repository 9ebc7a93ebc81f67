//! Lowering is checked against the graph interpreter: each case is a small text-IR graph,
//! run on pseudo-random inputs by `mlc-interp` and by the kernel-IR evaluator after lowering.

use crate::{lower_graph, print_program, run_program};
use mlc_ir::{DType, Tensor, parse_graph};

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
        Tensor::from_vec(
            shape,
            v.iter()
                .map(|x| (x * 2.5).floor() as i64)
                .collect::<Vec<i64>>(),
        )
    };
    t.and_then(|t| t.cast(dtype)).expect("test input")
}

/// Lowers `src`, runs both ways, and compares within `tol` (relative to the output's range).
fn check(src: &str, tol: f64) -> String {
    check_with(src, &[], tol)
}

/// [`check`] with some inputs given (by position) instead of generated: run-time scalars such
/// as an axis must hold valid values.
fn check_with(src: &str, given: &[(usize, Tensor)], tol: f64) -> String {
    let g = parse_graph(src).unwrap_or_else(|e| panic!("bad test graph: {e}"));
    let inputs: Vec<Tensor> = g
        .inputs
        .iter()
        .enumerate()
        .map(|(i, p)| match given.iter().find(|(j, _)| *j == i) {
            Some((_, t)) => t.clone(),
            None => {
                let ty = g.ty(p.value);
                input(
                    ty.dtype,
                    &ty.static_shape().expect("static test shapes"),
                    i as u64 + 1,
                )
            }
        })
        .collect();
    let named: Vec<(String, Tensor)> = g
        .inputs
        .iter()
        .zip(&inputs)
        .map(|(p, t)| (p.name.clone(), t.clone()))
        .collect();
    let want = mlc_interp::run(&g, &named).expect("interpreter");
    let prog = lower_graph(&g).unwrap_or_else(|e| panic!("lowering failed: {e}"));
    let got = run_program(&prog, &inputs)
        .unwrap_or_else(|e| panic!("evaluation failed: {e}\n{}", print_program(&prog)));
    assert_eq!(want.len(), got.len());
    for (i, (w, g_)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w.dtype(), g_.dtype(), "output {i} dtype");
        assert_eq!(w.shape(), g_.shape(), "output {i} shape");
        let (w, g_) = (
            w.cast(DType::F64).and_then(|t| t.to_f64_vec()),
            g_.cast(DType::F64).and_then(|t| t.to_f64_vec()),
        );
        let (w, g_) = (w.expect("f64"), g_.expect("f64"));
        let range = w.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
        for (j, (a, b)) in w.iter().zip(&g_).enumerate() {
            let ok = (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * range;
            assert!(
                ok,
                "output {i} element {j}: interpreter {a}, kernel IR {b}\n{}",
                print_program(&prog)
            );
        }
    }
    print_program(&prog)
}

#[test]
fn elementwise_broadcast_and_activations() {
    let ops = [
        "ew.add", "ew.sub", "ew.mul", "ew.div", "ew.max", "ew.min", "ew.prelu",
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
        "ew.atan",
        "ew.reciprocal",
        r#"ew.gelu {"approximate":"none"}"#,
        r#"ew.gelu {"approximate":"tanh"}"#,
        r#"ew.leaky_relu {"alpha":0.1}"#,
        r#"ew.elu {"alpha":1.0}"#,
        r#"ew.selu {"alpha":1.67,"gamma":1.05}"#,
        r#"ew.celu {"alpha":1.5}"#,
        r#"ew.hard_sigmoid {"alpha":0.2,"beta":0.5}"#,
        r#"ew.swish {"alpha":1.0}"#,
        r#"ew.shrink {"bias":0.5,"lambd":0.5}"#,
    ];
    for op in unary {
        check(
            &format!(
                r#"graph (%0: f32[5,7] "x") -> (%1 "y") {{
  %1 = {op}(%0) : f32[5,7]
}}"#
            ),
            1e-5,
        );
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
        "log_sum_exp",
        "sum_square",
        "log_sum",
    ];
    for k in kinds {
        // Middle and leading axes reduce columns in place (`columns`), the rest row by row.
        for (axes, keep, out) in [
            ("[1]", true, "[2,1,4]"),
            ("[0]", false, "[3,4]"),
            ("[0,1]", true, "[1,1,4]"),
            ("[0,2]", false, "[3]"),
            ("null", false, "[]"),
        ] {
            check(
                &format!(
                    r#"graph (%0: f32[2,3,4] "x") -> (%1 "y") {{
  %1 = reduce.{k} {{"axes":{axes},"keepdims":{keep}}} (%0) : f32{out}
}}"#
                ),
                1e-5,
            );
        }
    }
    // A lone stack of wide rows splits its columns across threads.
    for k in ["sum", "max", "mean"] {
        check(
            &format!(
                r#"graph (%0: f32[5,192] "x") -> (%1 "y") {{
  %1 = reduce.{k} {{"axes":[0],"keepdims":true}} (%0) : f32[1,192]
}}"#
            ),
            1e-5,
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
        r#"graph (%0: f32[3,4] "a", %1: f32[4,5] "b", %2: f32[3,1] "c") -> (%3 "y") {
  %3 = nn.gemm {"trans_a":false,"trans_b":false,"alpha":0.25,"beta":-1.5} (%0, %1, %2) : f32[3,5]
}"#,
        1e-5,
    );
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
    insta::assert_snapshot!(shown);
}

#[test]
fn convolutions_and_pools() {
    // im2col + matmul (padded, strided, grouped), pointwise, depthwise, 1-D.
    for (x, w, attrs, out) in [
        (
            "f32[1,3,7,6]",
            "f32[4,3,3,3]",
            r#""dilations":[1,1],"group":1,"pads":[1,1,1,1],"strides":[2,2]"#,
            "f32[1,4,4,3]",
        ),
        (
            "f32[2,4,5,5]",
            "f32[6,2,2,2]",
            r#""dilations":[2,1],"group":2,"pads":[0,1,1,0],"strides":[1,1]"#,
            "f32[2,6,4,5]",
        ),
        (
            "f32[1,8,4,4]",
            "f32[5,8,1,1]",
            r#""dilations":[1,1],"group":1,"pads":[0,0,0,0],"strides":[1,1]"#,
            "f32[1,5,4,4]",
        ),
        (
            "f32[1,4,6,6]",
            "f32[8,1,3,3]",
            r#""dilations":[1,1],"group":4,"pads":[1,1,1,1],"strides":[2,2]"#,
            "f32[1,8,3,3]",
        ),
        (
            "f32[2,3,9]",
            "f32[2,3,4]",
            r#""dilations":[1],"group":1,"pads":[2,1],"strides":[2]"#,
            "f32[2,2,5]",
        ),
        // Depthwise: same-padded 3x3 with a batch, asymmetric pads and stride 2 with 5x5,
        // dilation without padding.
        (
            "f32[2,3,9,8]",
            "f32[3,1,3,3]",
            r#""dilations":[1,1],"group":3,"pads":[1,1,1,1],"strides":[1,1]"#,
            "f32[2,3,9,8]",
        ),
        (
            "f32[1,5,11,10]",
            "f32[5,1,5,5]",
            r#""dilations":[1,1],"group":5,"pads":[2,1,2,3],"strides":[2,2]"#,
            "f32[1,5,6,5]",
        ),
        (
            "f32[1,2,9,9]",
            "f32[2,1,3,3]",
            r#""dilations":[2,2],"group":2,"pads":[0,0,0,0],"strides":[1,1]"#,
            "f32[1,2,5,5]",
        ),
        // Unit stride, 5x5, a channel multiplier, an even number of rows (all in pairs) and
        // horizontal dilation only (rows still paired).
        (
            "f32[1,2,8,7]",
            "f32[4,1,5,5]",
            r#""dilations":[1,1],"group":2,"pads":[2,2,2,2],"strides":[1,1]"#,
            "f32[1,4,8,7]",
        ),
        (
            "f32[1,2,7,9]",
            "f32[2,1,3,3]",
            r#""dilations":[1,2],"group":2,"pads":[1,2,1,2],"strides":[1,2]"#,
            "f32[1,2,7,5]",
        ),
    ] {
        let m = &w[4..].split(',').next().unwrap_or("1").to_string();
        check(
            &format!(
                r#"graph (%0: {x} "x", %1: {w} "w", %2: f32[{m}] "b") -> (%3 "y") {{
  %3 = nn.conv {{"auto_pad":"not_set",{attrs}}} (%0, %1, %2) : {out}
}}"#
            ),
            1e-5,
        );
    }
    check(
        r#"graph (%0: f32[1,2,7,7] "x") -> (%1 "m", %2 "a", %3 "g", %4 "h", %5 "c") {
  %1 = nn.max_pool {"kernel":[3,3],"strides":[2,2],"dilations":[1,1],"pads":[1,1,1,1],"auto_pad":"not_set","ceil_mode":false,"storage_order_col_major":false} (%0) : f32[1,2,4,4]
  %2 = nn.avg_pool {"kernel":[2,3],"strides":[2,2],"dilations":[1,1],"pads":[0,1,1,0],"auto_pad":"not_set","ceil_mode":true,"count_include_pad":false} (%0) : f32[1,2,4,4]
  %3 = nn.global_avg_pool(%0) : f32[1,2,1,1]
  %4 = nn.global_max_pool(%0) : f32[1,2,1,1]
  %5 = nn.avg_pool {"kernel":[2,2],"strides":[2,2],"dilations":[1,1],"pads":[0,0,0,0],"auto_pad":"not_set","ceil_mode":true,"count_include_pad":true} (%0) : f32[1,2,4,4]
}"#,
        1e-6,
    );
}

/// One 2-D pooling geometry of [`pool_cases`]: kernel, strides, dilations, pads (begin, begin,
/// end, end), ceil mode, input and output sizes.
struct PoolCase {
    k: [usize; 2],
    st: [usize; 2],
    d: [usize; 2],
    pads: [usize; 4],
    ceil: bool,
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
}

impl PoolCase {
    /// A graph of one `nn.{op}` of this geometry on `ty` planes, with the attributes `extra`.
    fn graph(&self, op: &str, extra: &str, ty: &str) -> String {
        let PoolCase {
            k,
            st,
            d,
            pads,
            ceil,
            ih,
            iw,
            oh,
            ow,
        } = self;
        format!(
            r#"graph (%0: {ty}[2,3,{ih},{iw}] "x") -> (%1 "y") {{
  %1 = nn.{op} {{"kernel":{k:?},"strides":{st:?},"dilations":{d:?},"pads":{pads:?},"auto_pad":"not_set","ceil_mode":{ceil},{extra}}} (%0) : {ty}[2,3,{oh},{ow}]
}}"#
        )
    }
}

/// Pooling geometries that put windows across the top, bottom or both edges, dilated windows
/// that jump over a row, ceil mode and unpadded windows, on planes from 1×1 to 12×17 (the
/// combinations with at least one window).
fn pool_cases() -> Vec<PoolCase> {
    let out = |i: usize, k: usize, s: usize, d: usize, p0: usize, p1: usize, ceil: bool| {
        let span = (k - 1) * d + 1;
        let num = (i + p0 + p1).checked_sub(span)?;
        let mut o = if ceil { num.div_ceil(s) } else { num / s } + 1;
        if ceil && (o - 1) * s >= i + p0 {
            o -= 1;
        }
        Some(o)
    };
    let geoms = [
        ([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], false),
        ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], false),
        ([2, 2], [2, 2], [1, 1], [0, 0, 0, 0], false),
        ([3, 2], [2, 1], [2, 1], [2, 0, 2, 1], false),
        ([5, 3], [3, 2], [1, 1], [2, 1, 0, 1], true),
        ([2, 2], [2, 2], [1, 1], [0, 0, 1, 1], true),
        ([3, 3], [1, 2], [3, 1], [3, 1, 3, 1], false),
    ];
    let mut cases = vec![];
    for (k, st, d, pads, ceil) in geoms {
        for (ih, iw) in [(1, 1), (2, 3), (5, 4), (9, 11), (12, 17)] {
            if let (Some(oh), Some(ow)) = (
                out(ih, k[0], st[0], d[0], pads[0], pads[2], ceil),
                out(iw, k[1], st[1], d[1], pads[1], pads[3], ceil),
            ) {
                cases.push(PoolCase {
                    k,
                    st,
                    d,
                    pads,
                    ceil,
                    ih,
                    iw,
                    oh,
                    ow,
                });
            }
        }
    }
    cases
}

/// Max pooling reads the unpadded planes, skipping the window rows outside them: every
/// [`pool_cases`] geometry, in `f32` and the 8-bit types (padding is the type's lowest value).
#[test]
fn max_pools_skip_the_window_rows_outside_the_plane() {
    let mut cases = 0;
    for c in pool_cases() {
        for ty in ["f32", "u8", "i8"] {
            check(
                &c.graph("max_pool", r#""storage_order_col_major":false"#, ty),
                0.0,
            );
            cases += 1;
        }
    }
    assert!(cases >= 60, "{cases} cases");
}

/// `f32` average pooling runs separably (sums down the window rows inside the plane, then
/// across a zero-ended scratch row) and divides by each window's tap count: every
/// [`pool_cases`] geometry, padding counted or not, against the interpreter's row-major sums.
/// Windows that count the same taps everywhere divide by one literal (a multiply for a power of
/// two), the others by two constant tables of counts.
#[test]
fn average_pools_sum_separably_and_divide_by_their_tap_counts() {
    let (mut cases, mut tables, mut literal) = (0, 0, 0);
    for c in pool_cases() {
        for cip in [false, true] {
            let cip = format!(r#""count_include_pad":{cip}"#);
            let ir = check(&c.graph("avg_pool", &cip, "f32"), 1e-6);
            assert!(ir.contains("nn_avg_pool_rows"), "{ir}");
            if ir.contains("const 0") {
                tables += 1;
            } else {
                literal += 1;
            }
            cases += 1;
        }
    }
    assert!(
        cases >= 60 && tables >= 10 && literal >= 10,
        "{cases} cases, {tables} with count tables, {literal} with one divisor"
    );
}

#[test]
fn normalizations() {
    check(
        r#"graph (%0: f32[2,3,4,5] "x", %1: f32[3] "s", %2: f32[3] "b", %3: f32[3] "m", %4: f32[3] "v") -> (%6 "y") {
  %5 = ew.abs(%4) : f32[3]
  %6 = nn.batch_norm {"epsilon":1e-5} (%0, %1, %2, %3, %5) : f32[2,3,4,5]
}"#,
        1e-5,
    );
    check(
        r#"graph (%0: f32[2,3,8] "x", %1: f32[8] "s", %2: f32[8] "b") -> (%3 "y", %4 "mean", %5 "inv") {
  %3, %4, %5 = nn.layer_norm {"axis":2,"epsilon":1e-5,"stat_dtype":"f32"} (%0, %1, %2) : f32[2,3,8], f32[2,3,1], f32[2,3,1]
}"#,
        1e-5,
    );
}

#[test]
fn quantization() {
    check(
        r#"graph (%0: f32[2,3,4] "x", %1: f32[3] "s", %2: u8[3] "z") -> (%4 "y", %5 "q") {
  %3 = ew.abs(%1) : f32[3]
  %4 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%0, %3, %2) : u8[2,3,4]
  %5 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%4, %3, %2) : f32[2,3,4]
}"#,
        1e-6,
    );
    check(
        r#"graph (%0: f32[3,5] "x", %1: i8[5,4] "w", %2: i8[4] "wz") -> (%3 "y", %4 "s", %5 "z", %6 "m") {
  %3, %4, %5 = quant.dynamic_quantize(%0) : u8[3,5], f32[], u8[]
  %6 = quant.matmul_integer(%3, %1, %5, %2) : i32[3,4]
}"#,
        0.0,
    );
}

#[test]
fn large_dynamic_quantization_runs_in_parallel_chunks() {
    // 12,301 elements: three chunks of 4,100 and one element left over for the serial kernel.
    let text = check(
        r#"graph (%0: f32[1,12301] "x") -> (%1 "y", %2 "s", %3 "z") {
  %1, %2, %3 = quant.dynamic_quantize(%0) : u8[1,12301], f32[], u8[]
}"#,
        0.0,
    );
    assert_eq!(text.matches("for.parallel").count(), 2, "{text}");
    assert!(text.contains("_range") && text.contains("_scale"), "{text}");
    // An exact multiple: no tail.
    check(
        r#"graph (%0: f32[2,8192] "x") -> (%1 "y", %2 "s", %3 "z") {
  %1, %2, %3 = quant.dynamic_quantize(%0) : u8[2,8192], f32[], u8[]
}"#,
        0.0,
    );
}

#[test]
fn integer_matmul_is_one_8_bit_contraction() {
    // Per-tensor activation zero point, no weight zero point: the u8 and i8 operands go into
    // the matmul as they are, the zero point becomes an i32 bias.
    let text = check(
        r#"graph (%0: u8[2,3,5] "a", %1: i8[5,4] "w", %2: u8[] "za") -> (%3 "y") {
  %3 = quant.matmul_integer(%0, %1, %2) : i32[2,3,4]
}"#,
        0.0,
    );
    assert!(!text.contains("widen_i32"), "{text}");
    assert!(
        text.contains("%p0: u8[30] read, %p1: i8[20] read"),
        "{text}"
    );
    assert!(text.contains("bias="), "{text}");
    let text = check(
        r#"graph (%0: u8[3,5] "a", %1: i8[5,4] "w") -> (%2 "y") {
  %2 = quant.matmul_integer(%0, %1) : i32[3,4]
}"#,
        0.0,
    );
    assert!(
        !text.contains("widen_i32") && !text.contains("bias="),
        "{text}"
    );
}

#[test]
fn integer_convolutions() {
    // im2col + one 8-bit matmul; padding reads as the input zero point.
    let text = check(
        r#"graph (%0: u8[2,4,5,5] "x", %1: i8[3,4,3,3] "w", %2: u8[] "zx") -> (%3 "y") {
  %3 = quant.conv_integer {"strides":[2,1],"dilations":[1,1],"pad":{"explicit":[1,0,1,2]},"group":1} (%0, %1, %2) : i32[2,3,3,5]
}"#,
        0.0,
    );
    assert!(text.contains("matmul m=3 n=15 k=36"), "{text}");
    assert!(
        !text.contains("i32[108] read"),
        "the weights stay 8-bit:\n{text}"
    );
    // A per-channel weight zero point is subtracted from the weights first; groups.
    check(
        r#"graph (%0: u8[1,4,4,4] "x", %1: i8[6,2,2,2] "w", %2: u8[] "zx", %3: i8[6] "zw") -> (%4 "y") {
  %4 = quant.conv_integer {"strides":[1,1],"dilations":[1,1],"pad":"same_upper","group":2} (%0, %1, %2, %3) : i32[1,6,4,4]
}"#,
        0.0,
    );
    // Pointwise, no zero points: the input is the column matrix.
    let text = check(
        r#"graph (%0: u8[1,3,2,5] "x", %1: i8[4,3,1,1] "w") -> (%2 "y") {
  %2 = quant.conv_integer {"strides":[1,1],"dilations":[1,1],"pad":{"explicit":[0,0,0,0]},"group":1} (%0, %1) : i32[1,4,2,5]
}"#,
        0.0,
    );
    assert!(!text.contains("im2col"), "{text}");
    // 2-D depthwise: the f32 depthwise statement on `x - zx`, `w - zw` (exact: integers below
    // 2^24), both zero points, per tensor and per channel; strided, asymmetric pads, 5×5,
    // a channel multiplier; exactly the interpreter's i32 results.
    for (x, w, zw, attrs, y) in [
        (
            "u8[2,3,5,4]",
            "i8[3,1,3,3]",
            "i8[]",
            r#""strides":[1,1],"dilations":[1,1],"pad":{"explicit":[1,1,1,1]},"group":3"#,
            "i32[2,3,5,4]",
        ),
        (
            "u8[1,4,9,8]",
            "i8[4,1,5,5]",
            "i8[4]",
            r#""strides":[2,2],"dilations":[1,1],"pad":{"explicit":[2,1,2,2]},"group":4"#,
            "i32[1,4,5,4]",
        ),
        (
            "i8[1,2,6,7]",
            "i8[4,1,3,3]",
            "i8[4]",
            r#""strides":[1,2],"dilations":[1,1],"pad":{"explicit":[0,1,1,0]},"group":2"#,
            "i32[1,4,5,3]",
        ),
    ] {
        let zx = if x.starts_with("u8") { "u8[]" } else { "i8[]" };
        let text = check(
            &format!(
                r#"graph (%0: {x} "x", %1: {w} "w", %2: {zx} "zx", %3: {zw} "zw") -> (%4 "y") {{
  %4 = quant.conv_integer {{{attrs}}} (%0, %1, %2, %3) : {y}
}}"#
            ),
            0.0,
        );
        assert!(text.contains("  depthwise n="), "{text}");
    }
    // Depthwise with a window too large for exact f32 sums: direct loops.
    let text = check(
        r#"graph (%0: u8[1,2,17,17] "x", %1: i8[2,1,17,17] "w", %2: u8[] "zx") -> (%3 "y") {
  %3 = quant.conv_integer {"strides":[1,1],"dilations":[1,1],"pad":{"explicit":[0,0,0,0]},"group":2} (%0, %1, %2) : i32[1,2,1,1]
}"#,
        0.0,
    );
    assert!(text.contains("conv_integer_direct"), "{text}");
}

#[test]
fn stride_one_im2col_reads_the_unpadded_plane() {
    // Stride-1 f64 convolutions take their column matrix from shifted runs of the unpadded
    // planes: "same" (one run per tap plus its wrapped edges), asymmetric pads, a valid conv
    // (rows copied one by one), a kernel larger than the plane (taps entirely outside), 1×N
    // rows. The f32 ones (few output channels) and an 8-bit "same" one read their image in
    // the contraction instead (implicit GEMM), the zero point as the 8-bit one's fill.
    for (x, w, pads, y) in [
        ("[2,3,6,7]", "[4,3,3,3]", "[1,1,1,1]", "[2,4,6,7]"),
        ("[1,2,5,6]", "[3,2,3,3]", "[2,0,0,1]", "[1,3,5,5]"),
        ("[1,2,5,6]", "[3,2,3,2]", "[0,0,0,0]", "[1,3,3,5]"),
        ("[1,2,2,2]", "[2,2,5,5]", "[2,2,2,2]", "[1,2,2,2]"),
        ("[1,3,1,9]", "[2,3,1,3]", "[0,1,0,1]", "[1,2,1,9]"),
    ] {
        for ty in ["f32", "f64"] {
            let text = check(
                &format!(
                    r#"graph (%0: {ty}{x} "x", %1: {ty}{w} "w") -> (%2 "y") {{
  %2 = nn.conv {{"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":{pads},"strides":[1,1]}} (%0, %1, _) : {ty}{y}
}}"#
                ),
                1e-5,
            );
            assert!(!text.contains("pad_planes"), "{text}");
            let implicit = text.contains("b_im2col(") && !text.contains("kernel @im2col");
            assert_eq!(implicit, ty == "f32", "{text}");
            assert_eq!(text.contains("kernel @im2col"), ty == "f64", "{text}");
        }
    }
    let text = check(
        r#"graph (%0: u8[1,3,7,6] "x", %1: i8[2,3,3,3] "w", %2: u8[] "zx") -> (%3 "y") {
  %3 = quant.conv_integer {"strides":[1,1],"dilations":[1,1],"pad":{"explicit":[1,2,1,0]},"group":1} (%0, %1, %2) : i32[1,2,7,6]
}"#,
        0.0,
    );
    assert!(
        text.contains(
            "b_im2col(c=3 in=7x6 out=7x6 kernel=3x3 stride=1x1 dilation=1x1 pad=1x2 fill=%p"
        ) && !text.contains("kernel @im2col")
            && !text.contains("pad_planes"),
        "{text}"
    );
}

#[test]
fn implicit_gemm_where_it_pays() {
    // The image read as the column matrix, against the interpreter: 8-bit "same" stride-1
    // convolutions (dilated, grouped, two images, the zero point as the fill) and 3×3 stride-2
    // ones; f32 ones with at most 32 output channels per group (strided, asymmetric pads), an
    // image of at most 4 channels or a column matrix past 4 MiB. An 8-bit 5×5 stride-2 one, a
    // small f32 one with 8 input and 40 output channels and a ViT-like patch embedding (3
    // channels, 8×8 patches at stride 8) keep the explicit column matrix.
    for src in [
        r#"graph (%0: i8[2,4,9,8] "x", %1: i8[6,2,3,3] "w", %2: i8[] "zx") -> (%3 "y") {
  %3 = quant.conv_integer {"strides":[1,1],"dilations":[2,2],"pad":{"explicit":[1,2,3,2]},"group":2} (%0, %1, %2) : i32[2,6,9,8]
}"#,
        r#"graph (%0: u8[1,4,9,9] "x", %1: i8[4,4,3,3] "w", %2: u8[] "zx") -> (%3 "y") {
  %3 = quant.conv_integer {"strides":[2,2],"dilations":[1,1],"pad":{"explicit":[1,1,1,1]},"group":1} (%0, %1, %2) : i32[1,4,5,5]
}"#,
    ] {
        let text = check(src, 0.0);
        assert!(
            text.contains("b_im2col(") && text.contains("fill=%p"),
            "{text}"
        );
    }
    for src in [
        r#"graph (%0: f32[1,3,11,11] "x", %1: f32[4,3,7,7] "w") -> (%2 "y") {
  %2 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[3,2,1,3],"strides":[2,2]} (%0, %1, _) : f32[1,4,5,5]
}"#,
        r#"graph (%0: f32[1,8,151,150] "x", %1: f32[33,8,5,5] "w") -> (%2 "y") {
  %2 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[2,1,1,2],"strides":[2,2]} (%0, %1, _) : f32[1,33,75,75]
}"#,
        r#"graph (%0: f32[1,3,11,11] "x", %1: f32[40,3,7,7] "w") -> (%2 "y") {
  %2 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[3,3,3,3],"strides":[2,2]} (%0, %1, _) : f32[1,40,6,6]
}"#,
    ] {
        let text = check(src, 1e-4);
        assert!(
            text.contains("b_im2col(") && !text.contains("kernel @im2col"),
            "{text}"
        );
    }
    for src in [
        r#"graph (%0: u8[1,4,9,9] "x", %1: i8[4,4,5,5] "w", %2: u8[] "zx") -> (%3 "y") {
  %3 = quant.conv_integer {"strides":[2,2],"dilations":[1,1],"pad":{"explicit":[2,2,2,2]},"group":1} (%0, %1, %2) : i32[1,4,5,5]
}"#,
        r#"graph (%0: f32[1,8,11,11] "x", %1: f32[40,8,7,7] "w") -> (%2 "y") {
  %2 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[3,3,3,3],"strides":[2,2]} (%0, %1, _) : f32[1,40,6,6]
}"#,
        r#"graph (%0: f32[1,3,32,32] "x", %1: f32[48,3,8,8] "w") -> (%2 "y") {
  %2 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[0,0,0,0],"strides":[8,8]} (%0, %1, _) : f32[1,48,4,4]
}"#,
    ] {
        let text = check(src, 1e-5);
        assert!(!text.contains("b_im2col("), "{text}");
    }
}

#[test]
fn integer_contraction_tails_are_one_kernel() {
    // conv_integer, then rescale, requantize and dequantize: one matmul, then one fused pass.
    let text = check(
        r#"graph (%0: u8[1,2,4,4] "x", %1: i8[3,2,3,3] "w", %2: u8[] "zx", %3: f32[3,1,1] "s") -> (%4 "y") {
  %4 = control.composite {"kind":"conv_integer+cast+mul+quantize+dequantize"} (%0, %1, %2, %3) : f32[1,3,4,4] {
    graph (%0: u8[1,2,4,4] "in0", %1: i8[3,2,3,3] "in1", %2: u8[] "in2", %3: f32[3,1,1] "in3") -> (%12 "out") {
      @c0 = const f32[] [0.5]
      @c1 = const u8[] [7]
      %4 = quant.conv_integer {"strides":[1,1],"dilations":[1,1],"pad":{"explicit":[1,1,1,1]},"group":1} (%0, %1, %2) : i32[1,3,4,4]
      %5 = ew.cast {"to":"f32"} (%4) : f32[1,3,4,4]
      %6 = ew.mul(%5, %3) : f32[1,3,4,4]
      %7 = constant @c0 : f32[]
      %8 = constant @c1 : u8[]
      %9 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%6, %7, %8) : u8[1,3,4,4]
      %10 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%9, %7, %8) : f32[1,3,4,4]
      %11 = movement.reshape {"shape":[1,3,16],"allowzero":false} (%10) : f32[1,3,16]
      %12 = movement.reshape {"shape":[1,3,4,4],"allowzero":false} (%11) : f32[1,3,4,4]
    }
  }
}"#,
        1e-6,
    );
    assert_eq!(text.matches("kernel @fused_epilogue").count(), 1, "{text}");
    assert!(
        !text.contains("kernel @ew_") && !text.contains("kernel @quant_quantize"),
        "{text}"
    );
}

#[test]
fn tails_go_into_the_stores_of_loop_kernels() {
    // Depthwise convolution + HardSwish: the activation is applied as the conv stores.
    let text = check(
        r#"graph (%0: f32[1,3,6,5] "x", %1: f32[3,1,3,3] "w", %2: f32[3] "b") -> (%3 "y") {
  %3 = control.composite {"kind":"conv+hard_swish"} (%0, %1, %2) : f32[1,3,6,5] {
    graph (%0: f32[1,3,6,5] "in0", %1: f32[3,1,3,3] "in1", %2: f32[3] "in2") -> (%4 "out") {
      %3 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":3,"pads":[1,1,1,1],"strides":[1,1]} (%0, %1, %2) : f32[1,3,6,5]
      %4 = ew.hard_swish(%3) : f32[1,3,6,5]
    }
  }
}"#,
        1e-6,
    );
    assert!(
        text.contains("kernel @nn_conv_depthwise_hard_swish"),
        "{text}"
    );
    assert!(!text.contains("kernel @ew_hard_swish"), "{text}");
    // ReLU (a select in the lowering) is the epilogue's `max(·, 0)`; the tail is no kernel.
    let text = check(
        r#"graph (%0: f32[1,3,9,7] "x", %1: f32[3,1,3,3] "w", %2: f32[3] "b") -> (%3 "y") {
  %3 = control.composite {"kind":"conv+relu"} (%0, %1, %2) : f32[1,3,9,7] {
    graph (%0: f32[1,3,9,7] "in0", %1: f32[3,1,3,3] "in1", %2: f32[3] "in2") -> (%4 "out") {
      %3 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":3,"pads":[1,1,1,1],"strides":[1,1]} (%0, %1, %2) : f32[1,3,9,7]
      %4 = ew.relu(%3) : f32[1,3,9,7]
    }
  }
}"#,
        1e-6,
    );
    assert!(text.contains("kernel @nn_conv_depthwise_relu"), "{text}");
    assert!(text.contains("max(x, 0.0)"), "{text}");
    assert!(!text.contains("kernel @ew_relu"), "{text}");
    // Sigmoid and swish (EfficientNet's SiLU) are epilogue programs too.
    for (act, want) in [
        ("ew.sigmoid", "sigmoid(x)"),
        (r#"ew.swish {"alpha":1.0}"#, "save"),
    ] {
        let text = check(
            &format!(
                r#"graph (%0: f32[1,3,9,7] "x", %1: f32[3,1,3,3] "w", %2: f32[3] "b") -> (%3 "y") {{
  %3 = control.composite {{"kind":"conv+act"}} (%0, %1, %2) : f32[1,3,5,4] {{
    graph (%0: f32[1,3,9,7] "in0", %1: f32[3,1,3,3] "in1", %2: f32[3] "in2") -> (%4 "out") {{
      %3 = nn.conv {{"auto_pad":"not_set","dilations":[1,1],"group":3,"pads":[1,1,1,1],"strides":[2,2]}} (%0, %1, %2) : f32[1,3,5,4]
      %4 = {act}(%3) : f32[1,3,5,4]
    }}
  }}
}}"#
            ),
            1e-6,
        );
        assert!(text.contains("sigmoid(x)") && text.contains(want), "{text}");
        assert_eq!(text.matches("kernel @").count(), 1, "{text}");
    }
    // A strided depthwise convolution + a quantizing tail with a runtime scale: no epilogue
    // operation changes the type, so the convolution stays the library statement and the
    // tail runs as its own kernel (rather than both as scalar loops).
    let text = check(
        r#"graph (%0: f32[1,2,7,7] "x", %1: f32[2,1,3,3] "w", %2: f32[] "s") -> (%3 "y") {
  %3 = control.composite {"kind":"conv+quantize"} (%0, %1, %2) : u8[1,2,4,4] {
    graph (%0: f32[1,2,7,7] "in0", %1: f32[2,1,3,3] "in1", %2: f32[] "in2") -> (%5 "out") {
      @c0 = const u8[] [3]
      %3 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":2,"pads":[1,1,1,1],"strides":[2,2]} (%0, %1, _) : f32[1,2,4,4]
      %4 = constant @c0 : u8[]
      %5 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%3, %2, %4) : u8[1,2,4,4]
    }
  }
}"#,
        0.0,
    );
    assert!(text.contains("  depthwise n=1 c=2"), "{text}");
    assert!(text.contains("u8[32] write"), "{text}");
    // A producer that reads back what it stored (softmax rescales in place) keeps its tail
    // as a kernel of its own.
    let text = check(
        r#"graph (%0: f32[2,9] "x") -> (%1 "y") {
  %1 = control.composite {"kind":"softmax+relu"} (%0) : f32[2,9] {
    graph (%0: f32[2,9] "in0") -> (%2 "out") {
      %1 = reduce.softmax {"axis":1} (%0) : f32[2,9]
      %2 = ew.relu(%1) : f32[2,9]
    }
  }
}"#,
        1e-6,
    );
    assert!(text.contains("kernel @ew_relu"), "{text}");
}

#[test]
fn hard_activations_go_into_the_matmul() {
    for (act, name) in [
        ("ew.hard_swish(%3)", "act=hard_swish"),
        (
            r#"ew.hard_sigmoid {"alpha":0.2,"beta":0.5} (%3)"#,
            "act=hard_sigmoid(0.2, 0.5)",
        ),
    ] {
        let text = check(
            &format!(
                r#"graph (%0: f32[1,3,5,5] "x", %1: f32[4,3,1,1] "w", %2: f32[4] "b") -> (%3 "y") {{
  %3 = control.composite {{"kind":"conv+act"}} (%0, %1, %2) : f32[1,4,5,5] {{
    graph (%0: f32[1,3,5,5] "in0", %1: f32[4,3,1,1] "in1", %2: f32[4] "in2") -> (%4 "out") {{
      %3 = nn.conv {{"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[0,0,0,0],"strides":[1,1]}} (%0, %1, %2) : f32[1,4,5,5]
      %4 = {act} : f32[1,4,5,5]
    }}
  }}
}}"#
            ),
            1e-6,
        );
        assert!(text.contains(name), "{text}");
        assert!(!text.contains("kernel @ew_"), "{text}");
    }
}

/// Attention's scale by a one-element constant becomes the scores matmul's `α`, whether the
/// constant is the composite's input (a constant of the outer graph) or its own; a scale by a
/// computed value or a non-scalar stays a multiplication.
#[test]
fn attention_scale_goes_into_the_matmul_alpha() {
    let body = |scale_in: &str, consts: &str| -> String {
        format!(
            r#"graph (%0: f32[2,4,8] "q", %1: f32[2,8,4] "kt", %2: f32[2,4,8] "v", %3: f32[] "s") -> (%5 "y") {{
  @c0 = const f32[] [0.35355338]
{consts}  %5 = control.composite {{"kind":"attention"}} (%0, %1, %2, {scale_in}) : f32[2,4,8] {{
    graph (%0: f32[2,4,8] "in0", %1: f32[2,8,4] "in1", %2: f32[2,4,8] "in2", %3: f32[] "in3") -> (%7 "out") {{
      %4 = nn.matmul(%0, %1) : f32[2,4,4]
      %5 = ew.mul(%4, %3) : f32[2,4,4]
      %6 = reduce.softmax {{"axis":2,"coerce_2d":false}} (%5) : f32[2,4,4]
      %7 = nn.matmul(%6, %2) : f32[2,4,8]
    }}
  }}
}}"#
        )
    };
    let c = "  %4 = constant @c0 : f32[]\n";
    let text = check(&body("%4", c), 1e-6);
    assert!(text.contains("alpha=0.35355338"), "{text}");
    assert!(!text.contains("kernel @ew_mul"), "{text}");
    // A run-time scale (the graph input %3) stays a multiplication.
    let text = check(&body("%3", c), 1e-6);
    assert!(
        text.contains("kernel @ew_mul") && !text.contains("alpha=0.35"),
        "{text}"
    );
}

#[test]
fn recurrences() {
    // LSTM, both directions, clipped, with peepholes, an initial state and sequence lengths
    // (one row shorter than the sequence, one empty).
    check(
        r#"graph (%0: f32[4,3,2] "x", %1: f32[2,12,2] "w", %2: f32[2,12,3] "r", %3: f32[2,24] "b", %4: f32[2,3,3] "h0", %5: f32[2,3,3] "c0", %6: f32[2,9] "p") -> (%8 "y", %9 "yh", %10 "yc") {
  @c0 = const i32[3] [4, 2, 0]
  %7 = constant @c0 : i32[3]
  %8, %9, %10 = rnn.lstm {"hidden_size":3,"direction":"bidirectional","activations":["sigmoid","tanh","tanh","sigmoid","softsign",{"affine":{"alpha":0.5,"beta":0.1}}],"clip":0.8,"batch_major":false,"input_forget":false} (%0, %1, %2, %3, %7, %4, %5, %6) : f32[4,2,3,3], f32[2,3,3], f32[2,3,3]
}"#,
        1e-5,
    );
    // GRU, reset gate before and after the recurrent product, batch-major, reverse.
    for lbr in [false, true] {
        check(
            &format!(
                r#"graph (%0: f32[2,5,3] "x", %1: f32[1,12,3] "w", %2: f32[1,12,4] "r", %3: f32[1,24] "b") -> (%4 "y", %5 "yh") {{
  %4, %5 = rnn.gru {{"hidden_size":4,"direction":"reverse","activations":["sigmoid","tanh"],"clip":null,"batch_major":true,"linear_before_reset":{lbr}}} (%0, %1, %2, %3) : f32[2,5,1,4], f32[2,1,4]
}}"#
            ),
            1e-5,
        );
    }
    // A plain RNN with no bias and no initial state.
    check(
        r#"graph (%0: f32[3,2,4] "x", %1: f32[1,5,4] "w", %2: f32[1,5,5] "r") -> (%3 "y", %4 "yh") {
  %3, %4 = rnn.rnn {"hidden_size":5,"direction":"forward","activations":["tanh"],"clip":null,"batch_major":false} (%0, %1, %2) : f32[3,1,2,5], f32[1,2,5]
}"#,
        1e-5,
    );
}

#[test]
fn gather_nd() {
    check(
        r#"graph (%0: f32[6,6,2] "x", %1: i64[2,2] "i") -> (%2 "y") {
  %2 = movement.gather_nd {"batch_dims":0} (%0, %1) : f32[2,2]
}"#,
        0.0,
    );
}

#[test]
fn gather_nd_with_batch_dims_and_i32_indices() {
    // Two batch axes with i32 tuples of two, then one batch axis with rank-3 i64 indices
    // addressing a single axis: negative indices wrap per addressed axis.
    check(
        r#"graph (%0: f32[2,3,5,6,2] "x", %1: i32[2,3,4,2] "i", %2: i16[2,6,7] "w", %3: i64[2,4,3,1] "j") -> (%4 "y", %5 "z") {
  %4 = movement.gather_nd {"batch_dims":2} (%0, %1) : f32[2,3,4,2]
  %5 = movement.gather_nd {"batch_dims":1} (%2, %3) : i16[2,4,3,7]
}"#,
        0.0,
    );
}

#[test]
fn composite_with_a_contraction_is_inlined() {
    check(
        r#"graph (%0: f32[3,4] "x", %1: f32[4,5] "w", %2: f32[5] "b") -> (%3 "y") {
  %3 = control.composite {"kind":"matmul_bias_relu"} (%0, %1, %2) : f32[3,5] {
    graph (%0: f32[3,4] "x", %1: f32[4,5] "w", %2: f32[5] "b") -> (%5 "y") {
      %3 = nn.matmul(%0, %1) : f32[3,5]
      %4 = ew.add(%3, %2) : f32[3,5]
      %5 = ew.relu(%4) : f32[3,5]
    }
  }
}"#,
        1e-6,
    );
}

#[test]
fn center_crop_pad_crops_and_pads_odd_sizes() {
    check(
        r#"graph (%0: f32[5,4,3] "x", %1: i32[4,6] "i") -> (%2 "a", %3 "b", %4 "c") {
  %2 = movement.center_crop_pad {"shape":[2,7],"axes":[0,1]} (%0, _) : f32[2,7,3]
  %3 = movement.center_crop_pad {"shape":[6],"axes":[2]} (%0, _) : f32[5,4,6]
  %4 = movement.center_crop_pad {"shape":[1,9],"axes":[1,0]} (%1, _) : i32[9,1]
}"#,
        0.0,
    );
}

#[test]
fn pads_tiles_args_and_scans() {
    check(
        r#"graph (%0: f32[2,3,4] "x") -> (%1 "p", %2 "e", %3 "r", %4 "w", %5 "t", %6 "a", %7 "b", %8 "c", %9 "d") {
  %1 = movement.pad {"mode":"constant","pads":[0,1,2,1,0,1],"axes":null} (%0, _, _, _) : f32[3,4,7]
  %2 = movement.pad {"mode":"edge","pads":[0,2,1,0,1,2],"axes":null} (%0, _, _, _) : f32[2,6,7]
  %3 = movement.pad {"mode":"reflect","pads":[0,2,3,0,2,2],"axes":null} (%0, _, _, _) : f32[2,7,9]
  %4 = movement.pad {"mode":"wrap","pads":[1,1],"axes":[2]} (%0, _, _, _) : f32[2,3,6]
  %5 = movement.tile {"repeats":[2,1,3]} (%0, _) : f32[4,3,12]
  %6 = reduce.arg_max {"axis":1,"keepdims":true,"select_last_index":false} (%0) : i64[2,1,4]
  %7 = reduce.arg_min {"axis":2,"keepdims":false,"select_last_index":true} (%0) : i64[2,3]
  %8 = reduce.cum_sum {"axis":1,"exclusive":false,"reverse":true} (%0, _) : f32[2,3,4]
  %9 = reduce.cum_sum {"axis":2,"exclusive":true,"reverse":false} (%0, _) : f32[2,3,4]
}"#,
        1e-6,
    );
}

#[test]
fn scans_norms_and_run_time_axes() {
    check(
        r#"graph (%0: f32[2,3,4] "x", %1: i64[1] "axes", %2: i32[3] "v") -> (%3 "p", %4 "h", %5 "k", %6 "n", %7 "s", %8 "q", %9 "c", %14 "r") {
  @c0 = const i64[] [0]
  @c1 = const i64[] [1]
  %10 = constant @c0 : i64[]
  %11 = constant @c1 : i64[]
  %12 = ew.mul(%1, %10) : i64[1]
  %13 = ew.add(%12, %11) : i64[1]
  %3 = reduce.cum_prod {"axis":1,"exclusive":true,"reverse":true} (%0, _) : f32[2,3,4]
  %4 = reduce.hardmax {"axis":1,"coerce_2d":false} (%0) : f32[2,3,4]
  %5 = reduce.hardmax {"axis":1,"coerce_2d":true} (%0) : f32[2,3,4]
  %6 = reduce.lp_norm {"axis":2,"p":2} (%0) : f32[2,3,4]
  %7 = reduce.sum {"axes":null,"keepdims":true,"noop_with_empty_axes":false} (%0, %13) : f32[2,1,4]
  %8 = reduce.max {"axes":null,"keepdims":false,"noop_with_empty_axes":false} (%0, %13) : f32[2,4]
  %9 = reduce.cum_sum {"axis":null,"exclusive":false,"reverse":false} (%2, %12) : i32[3]
  %14 = reduce.cum_prod {"axis":null,"exclusive":true,"reverse":true} (%0, %13) : f32[2,3,4]
}"#,
        1e-5,
    );
}

#[test]
fn classification_losses() {
    for (red, shape) in [("none", "[2,3]"), ("sum", "[]"), ("mean", "[]")] {
        check(
            &format!(
                r#"graph (%0: f32[2,4,3] "x", %1: f32[4] "w") -> (%4 "l", %5 "s", %6 "lp") {{
  @c0 = const i64[2,3] [0, 3, 1, 2, 1, 3]
  %2 = constant @c0 : i64[2,3]
  %3 = ew.abs(%1) : f32[4]
  %4 = reduce.nll_loss {{"reduction":"{red}","ignore_index":1}} (%0, %2, %3) : f32{shape}
  %5, %6 = reduce.softmax_cross_entropy {{"reduction":"{red}","ignore_index":null}} (%0, %2, _) : f32{shape}, f32[2,4,3]
}}"#
            ),
            1e-5,
        );
    }
}

#[test]
fn addressed_movement() {
    check(
        r#"graph (%0: f32[3,4] "x", %1: f32[2,4] "u", %2: f32[1,8,2,3] "d") -> (%6 "ge", %7 "se", %8 "sa", %9 "sn", %10 "oh", %11 "tu", %12 "tl", %13 "ds", %14 "sd", %15 "ey") {
  @c0 = const i64[2,4] [0, -1, 2, 1, 2, 2, 0, -3]
  @c1 = const i64[2,1] [2, 0]
  @c2 = const i64[3] [1, -1, 3]
  @c3 = const f32[2] [0.5, 2.0]
  %3 = constant @c0 : i64[2,4]
  %4 = constant @c1 : i64[2,1]
  %5 = constant @c2 : i64[3]
  %16 = constant @c3 : f32[2]
  %6 = movement.gather_elements {"axis":0} (%0, %3) : f32[2,4]
  %7 = movement.scatter_elements {"axis":0,"reduction":"none"} (%0, %3, %1) : f32[3,4]
  %8 = movement.scatter_elements {"axis":0,"reduction":"add"} (%0, %3, %1) : f32[3,4]
  %9 = movement.scatter_nd {"reduction":"mul"} (%0, %4, %1) : f32[3,4]
  %10 = movement.one_hot {"axis":1,"depth":4} (%5, _, %16) : f32[3,4]
  %11 = movement.trilu {"upper":true,"k":1} (%0, _) : f32[3,4]
  %12 = movement.trilu {"upper":false,"k":-1} (%0, _) : f32[3,4]
  %13 = movement.depth_to_space {"blocksize":2,"mode":"crd"} (%2) : f32[1,2,4,6]
  %14 = movement.space_to_depth {"blocksize":2,"mode":"dcr"} (%13) : f32[1,8,2,3]
  %15 = movement.eye_like {"dtype":"i32","k":1} (%0) : i32[3,4]
}"#,
        1e-6,
    );
}

#[test]
fn attention() {
    // 4-D, grouped heads, a bool mask shorter than the keys, causal, with a past cache.
    check(
        r#"graph (%0: f32[1,4,3,8] "q", %1: f32[1,2,3,8] "k", %2: f32[1,2,3,5] "v", %3: bool[3,4] "m", %4: f32[1,2,2,8] "pk", %5: f32[1,2,2,5] "pv") -> (%6 "y", %7 "ck", %8 "cv", %9 "p") {
  %6, %7, %8, %9 = attn.attention {"q_num_heads":null,"kv_num_heads":null,"scale":null,"is_causal":true,"softcap":null,"softmax_precision":null,"qk_output":"probs","left_window":null,"right_window":null} (%0, %1, %2, %3, %4, %5, _) : f32[1,4,3,5], f32[1,2,5,8], f32[1,2,5,5], f32[1,4,3,5]
}"#,
        1e-5,
    );
    // 3-D with head counts, a float mask, a soft cap and an explicit scale.
    check(
        r#"graph (%0: f32[2,3,8] "q", %1: f32[2,4,8] "k", %2: f32[2,4,6] "v", %3: f32[2,1,3,4] "m") -> (%4 "y") {
  %4 = attn.attention {"q_num_heads":2,"kv_num_heads":2,"scale":0.3,"is_causal":false,"softcap":2.0,"softmax_precision":null,"qk_output":"scores","left_window":1,"right_window":null} (%0, %1, %2, %3, _, _, _) : f32[2,3,6]
}"#,
        1e-5,
    );
}

#[test]
fn resize() {
    let cases = [
        (
            r#""mode":"cubic","coord_mode":"half_pixel","nearest_mode":"round_prefer_floor","cubic_coeff_a":-0.75,"exclude_outside":true,"antialias":false,"scales":[0.6,1.5],"sizes":null,"roi":null"#,
            "f32[1,2,3,7]",
        ),
        (
            r#""mode":"linear","coord_mode":"align_corners","nearest_mode":"round_prefer_floor","cubic_coeff_a":-0.75,"exclude_outside":false,"antialias":true,"scales":[0.6,1.5],"sizes":null,"roi":null"#,
            "f32[1,2,3,7]",
        ),
        (
            r#""mode":"nearest","coord_mode":"asymmetric","nearest_mode":"ceil","cubic_coeff_a":-0.75,"exclude_outside":false,"antialias":false,"scales":null,"sizes":[7,3],"roi":null"#,
            "f32[1,2,7,3]",
        ),
        (
            r#""mode":"linear","coord_mode":"tf_crop_and_resize","nearest_mode":"floor","cubic_coeff_a":-0.75,"exclude_outside":false,"antialias":false,"scales":null,"sizes":[3,3],"roi":[0.4,0.6,0.6,0.8]"#,
            "f32[1,2,3,3]",
        ),
    ];
    for (attrs, out) in cases {
        check(
            &format!(
                r#"graph (%0: f32[1,2,5,5] "x") -> (%1 "y") {{
  %1 = nn.resize {{{attrs},"extrapolation_value":10.0,"axes":[2,3],"aspect_policy":"stretch"}} (%0, _, _, _) : {out}
}}"#
            ),
            1e-5,
        );
    }
}

#[test]
fn grouped_norms_lrn_and_lp_pools() {
    check(
        r#"graph (%0: f32[2,4,3,5] "x", %1: f32[4] "s", %2: f32[4] "b", %3: f32[2] "gs", %4: f32[2] "gb") -> (%5 "i", %6 "g", %7 "gg", %8 "l", %9 "p", %10 "q") {
  %5 = nn.instance_norm {"epsilon":1e-5} (%0, %1, %2) : f32[2,4,3,5]
  %6 = nn.group_norm {"num_groups":2,"epsilon":1e-5} (%0, %1, %2) : f32[2,4,3,5]
  %7 = nn.group_norm {"num_groups":2,"epsilon":1e-5} (%0, %3, %4) : f32[2,4,3,5]
  %8 = nn.lrn {"size":3,"alpha":0.001,"beta":0.75,"bias":1.0} (%0) : f32[2,4,3,5]
  %9 = nn.lp_pool {"kernel":[2,2],"strides":[1,2],"dilations":[1,1],"pads":[0,1,1,0],"auto_pad":"not_set","ceil_mode":false,"p":2.0} (%0) : f32[2,4,3,3]
  %10 = nn.global_lp_pool {"p":3.0} (%0) : f32[2,4,1,1]
}"#,
        1e-5,
    );
}

#[test]
fn mean_variance_norm_over_any_axes() {
    // ONNX's default axes, interleaved axes, all axes, no axis, and a half-precision input.
    check(
        r#"graph (%0: f32[2,3,4,5] "x", %1: f16[3,2,4] "h") -> (%2 "a", %3 "b", %4 "c", %5 "d", %6 "e") {
  %2 = nn.mean_variance_norm {"axes":[0,2,3]} (%0) : f32[2,3,4,5]
  %3 = nn.mean_variance_norm {"axes":[1,3]} (%0) : f32[2,3,4,5]
  %4 = nn.mean_variance_norm {"axes":[0,1,2,3]} (%0) : f32[2,3,4,5]
  %5 = nn.mean_variance_norm {"axes":[]} (%1) : f16[3,2,4]
  %6 = nn.mean_variance_norm {"axes":[2,0]} (%1) : f16[3,2,4]
}"#,
        1e-5,
    );
}

#[test]
fn half_precision_convolutions() {
    // A causal depthwise 1-D convolution with bias, and a grouped, strided, dilated 2-D one
    // without: products summed in f32 and rounded once to f16 (bf16).
    check(
        r#"graph (%0: f16[2,4,7] "x", %1: f16[4,1,3] "w", %2: f16[4] "b", %3: f16[1,4,6,5] "y", %4: f16[6,2,2,3] "v", %5: bf16[1,4,6,5] "z", %6: bf16[6,2,2,3] "u") -> (%7 "a", %8 "c", %9 "d") {
  %7 = nn.conv {"auto_pad":"not_set","dilations":[1],"group":4,"pads":[2,0],"strides":[1]} (%0, %1, %2) : f16[2,4,7]
  %8 = nn.conv {"auto_pad":"not_set","dilations":[2,1],"group":2,"pads":[1,0,1,2],"strides":[1,2]} (%3, %4, _) : f16[1,6,6,3]
  %9 = nn.conv {"auto_pad":"not_set","dilations":[2,1],"group":2,"pads":[1,0,1,2],"strides":[1,2]} (%5, %6, _) : bf16[1,6,6,3]
}"#,
        1e-3,
    );
}

#[test]
fn transposed_convolution() {
    check(
        r#"graph (%0: f32[1,4,3,4] "x", %1: f32[4,3,3,2] "w", %2: f32[6] "b") -> (%3 "y") {
  %3 = nn.conv_transpose {"strides":[2,1],"dilations":[1,2],"pads":[1,0,0,-1],"output_padding":[1,0],"group":2,"auto_pad":"not_set","output_shape":null} (%0, %1, %2) : f32[1,6,7,7]
}"#,
        1e-5,
    );
}

#[test]
fn rotary_embedding() {
    check(
        r#"graph (%0: f32[2,3,4,8] "x", %1: f32[6,3] "c", %2: f32[6,3] "s", %3: f32[2,4,12] "x3", %4: f32[2,4,6] "c3", %5: f32[2,4,6] "s3") -> (%7 "y", %8 "z") {
  @c0 = const i64[2,4] [0, 1, 2, 3, 5, 4, 3, 0]
  %6 = constant @c0 : i64[2,4]
  %7 = attn.rotary {"interleaved":true,"rotary_dim":6,"num_heads":null} (%0, %1, %2, %6) : f32[2,3,4,8]
  %8 = attn.rotary {"interleaved":false,"rotary_dim":null,"num_heads":1} (%3, %4, %5, _) : f32[2,4,12]
}"#,
        1e-5,
    );
}

#[test]
fn einsum() {
    check(
        r#"graph (%0: f32[2,3,4] "a", %1: f32[2,4,5] "b", %2: f32[3,3] "s") -> (%3 "m", %4 "d", %5 "t", %6 "x") {
  %3 = nn.einsum {"equation":"bij,bjk->bik"} (%0, %1) : f32[2,3,5]
  %4 = nn.einsum {"equation":"ii->i"} (%2) : f32[3]
  %5 = nn.einsum {"equation":"...ij->...ji"} (%0) : f32[2,4,3]
  %6 = nn.einsum {"equation":"bij,bjk->"} (%0, %1) : f32[]
}"#,
        1e-5,
    );
}

#[test]
fn qlinear_matmul() {
    check(
        r#"graph (%0: u8[3,4] "a", %1: u8[4,2] "b") -> (%8 "y") {
  @c0 = const f32[] [0.05]
  @c1 = const u8[] [3]
  @c2 = const f32[2] [0.02, 0.03]
  @c3 = const u8[2] [1, 2]
  @c4 = const f32[] [0.01]
  @c5 = const u8[] [100]
  %2 = constant @c0 : f32[]
  %3 = constant @c1 : u8[]
  %4 = constant @c2 : f32[2]
  %5 = constant @c3 : u8[2]
  %6 = constant @c4 : f32[]
  %7 = constant @c5 : u8[]
  %8 = quant.qlinear_matmul(%0, %2, %3, %1, %4, %5, %6, %7) : u8[3,2]
}"#,
        0.0,
    );
}

#[test]
fn qlinear_conv() {
    // A grouped, strided, unevenly padded u8 convolution with per-channel weight scales and
    // zero points and a bias (the im2col matmul path), and a depthwise i8 one without bias or
    // output zero point (the direct path; its output takes the input's type).
    check(
        r#"graph (%0: u8[2,4,5,6] "x", %1: u8[6,2,3,3] "w", %2: i8[1,3,4,4] "q", %3: i8[3,1,3,3] "v") -> (%13 "y", %14 "z") {
  @c0 = const f32[] [0.05]
  @c1 = const u8[] [3]
  @c2 = const f32[6] [0.002, 0.003, 0.001, 0.004, 0.0025, 0.0015]
  @c3 = const u8[6] [1, 2, 0, 4, 3, 5]
  @c4 = const f32[] [0.01]
  @c5 = const u8[] [100]
  @c6 = const i32[6] [-700, 30, 0, 1200, -5, 64]
  @c7 = const i8[] [-2]
  @c8 = const f32[] [0.02]
  %4 = constant @c0 : f32[]
  %5 = constant @c1 : u8[]
  %6 = constant @c2 : f32[6]
  %7 = constant @c3 : u8[6]
  %8 = constant @c4 : f32[]
  %9 = constant @c5 : u8[]
  %10 = constant @c6 : i32[6]
  %11 = constant @c7 : i8[]
  %12 = constant @c8 : f32[]
  %13 = quant.qlinear_conv {"strides":[2,1],"dilations":[1,1],"pad":{"explicit":[1,0,1,2]},"group":2} (%0, %4, %5, %1, %6, %7, %8, %9, %10) : u8[2,6,3,6]
  %14 = quant.qlinear_conv {"strides":[1,1],"dilations":[1,1],"pad":"same_upper","group":3} (%2, %12, %11, %3, %4, _, %8, _, _) : i8[1,3,4,4]
}"#,
        0.0,
    );
}

#[test]
fn top_k_with_ties() {
    check(
        r#"graph (%0: i32[3,8] "x", %1: f32[4,5,2] "f") -> (%2 "v", %3 "i", %4 "w", %5 "j") {
  %2, %3 = reduce.top_k {"axis":1,"k":3,"largest":true,"sorted":true} (%0, _) : i32[3,3], i64[3,3]
  %4, %5 = reduce.top_k {"axis":1,"k":2,"largest":false,"sorted":true} (%1, _) : f32[4,2,2], i64[4,2,2]
}"#,
        0.0,
    );
}

#[test]
fn run_time_slice_and_pad_bounds() {
    // Bounds computed in the graph, so they are run-time values the kernels must read.
    check(
        r#"graph (%0: f32[3,4,5] "x", %1: i64[2] "r", %2: f32[] "v") -> (%7 "s", %8 "p") {
  @c0 = const i64[] [0]
  @c1 = const i64[2] [1, -2]
  @c2 = const i64[6] [0, 1, 2, 1, 0, 1]
  @c3 = const i64[2] [-6, 4]
  %3 = constant @c0 : i64[]
  %4 = constant @c1 : i64[2]
  %5 = ew.mul(%1, %3) : i64[2]
  %6 = ew.add(%5, %4) : i64[2]
  %12 = constant @c3 : i64[2]
  %7 = movement.slice {"starts":null,"ends":null,"axes":[2,1],"steps":[-1,1]} (%0, %6, %12, _, _) : f32[3,2,2]
  %9 = constant @c2 : i64[6]
  %10 = ew.mul(%9, %3) : i64[6]
  %11 = ew.add(%10, %9) : i64[6]
  %8 = movement.pad {"mode":"constant","pads":null,"axes":null} (%0, %11, %2, _) : f32[4,5,8]
}"#,
        0.0,
    );
}

#[test]
fn bool_any_and_all() {
    check(
        r#"graph (%0: bool[3,4] "b") -> (%1 "any", %2 "all") {
  %1 = reduce.max {"axes":[1],"keepdims":false,"noop_with_empty_axes":false} (%0) : bool[3]
  %2 = reduce.min {"axes":[0],"keepdims":true,"noop_with_empty_axes":false} (%0) : bool[1,4]
}"#,
        0.0,
    );
}

#[test]
fn run_time_axes_the_output_shape_leaves_ambiguous() {
    // Reducing dim 1 or dim 2 of [3,2,2] both give [3,2]: the kernel must read the axes.
    for axis in [1, -1] {
        check(
            &format!(
                r#"graph (%0: f32[3,2,2] "x", %1: i64[1] "a") -> (%6 "y", %7 "m") {{
  @c0 = const i64[] [0]
  @c1 = const i64[] [{axis}]
  %2 = constant @c0 : i64[]
  %3 = constant @c1 : i64[]
  %4 = ew.mul(%1, %2) : i64[1]
  %5 = ew.add(%4, %3) : i64[1]
  %6 = reduce.sum {{"axes":null,"keepdims":false,"noop_with_empty_axes":false}} (%0, %5) : f32[3,2]
  %7 = reduce.max {{"axes":null,"keepdims":false,"noop_with_empty_axes":false}} (%0, %5) : f32[3,2]
}}"#
            ),
            1e-6,
        );
    }
}

#[test]
fn max_pools_with_indices() {
    // Padding with dilation, ceil mode on f16, and a 3-D i8 pool (many ties: the first
    // maximum wins) whose indices count column-major.
    check(
        r#"graph (%0: f32[2,3,5,6] "x", %1: f16[1,2,5,5] "h", %2: i8[1,2,4,3,5] "q") -> (%3 "a", %4 "ai", %5 "b", %6 "bi", %7 "c", %8 "ci") {
  %3, %4 = nn.max_pool {"kernel":[3,2],"strides":[2,1],"dilations":[1,2],"pads":[1,0,1,1],"auto_pad":"not_set","ceil_mode":false,"storage_order_col_major":false} (%0) : f32[2,3,3,5], i64[2,3,3,5]
  %5, %6 = nn.max_pool {"kernel":[2,2],"strides":[2,2],"dilations":[1,1],"pads":[0,0,0,0],"auto_pad":"not_set","ceil_mode":true,"storage_order_col_major":false} (%1) : f16[1,2,3,3], i64[1,2,3,3]
  %7, %8 = nn.max_pool {"kernel":[2,2,2],"strides":[2,1,2],"dilations":[1,1,1],"pads":[0,0,1,1,1,0],"auto_pad":"not_set","ceil_mode":false,"storage_order_col_major":true} (%2) : i8[1,2,2,3,3], i64[1,2,2,3,3]
}"#,
        0.0,
    );
}

#[test]
fn integer_max_pool() {
    check(
        r#"graph (%0: i8[1,2,5,5] "x") -> (%1 "m") {
  %1 = nn.max_pool {"kernel":[2,2],"strides":[2,2],"dilations":[1,1],"pads":[1,1,0,0],"auto_pad":"not_set","ceil_mode":false,"storage_order_col_major":false} (%0) : i8[1,2,3,3]
}"#,
        0.0,
    );
}

#[test]
fn windows_are_constants() {
    check(
        r#"graph () -> (%0 "h", %1 "m", %2 "b") {
  %0 = signal.hann_window {"size":5,"periodic":false,"dtype":"f32"} () : f32[5]
  %1 = signal.hamming_window {"size":6,"periodic":true,"dtype":"f64"} () : f64[6]
  %2 = signal.blackman_window {"size":4,"periodic":true,"dtype":"f32"} () : f32[4]
}"#,
        1e-7,
    );
}

#[test]
fn contraction_epilogues_fuse_into_the_matmul() {
    let shown = check(
        r#"graph (%0: f32[2,3,4] "x", %1: f32[4,5] "w", %2: f32[5] "b") -> (%3 "y") {
  %3 = control.composite {"kind":"matmul_bias_relu"} (%0, %1, %2) : f32[2,3,5] {
    graph (%0: f32[2,3,4] "x", %1: f32[4,5] "w", %2: f32[5] "b") -> (%5 "y") {
      %3 = nn.matmul(%0, %1) : f32[2,3,5]
      %4 = ew.add(%3, %2) : f32[2,3,5]
      %5 = ew.relu(%4) : f32[2,3,5]
    }
  }
}"#,
        1e-6,
    );
    assert_eq!(shown.matches("step ").count(), 1, "{shown}");
    assert!(
        shown.contains("act=relu") && shown.contains("bias=%p"),
        "{shown}"
    );
    // The bias written first (`b + x·W`, as exporters often do) and a scale first (`s · C`).
    let shown = check(
        r#"graph (%0: f32[2,3,4] "x", %1: f32[4,5] "w", %2: f32[5] "b") -> (%3 "y") {
  %3 = control.composite {"kind":"bias_matmul"} (%0, %1, %2) : f32[2,3,5] {
    graph (%0: f32[2,3,4] "x", %1: f32[4,5] "w", %2: f32[5] "b") -> (%6 "y") {
      @c0 = const f32[] [0.25]
      %3 = constant @c0 : f32[]
      %4 = nn.matmul(%0, %1) : f32[2,3,5]
      %5 = ew.mul(%3, %4) : f32[2,3,5]
      %6 = ew.add(%2, %5) : f32[2,3,5]
    }
  }
}"#,
        1e-6,
    );
    assert_eq!(shown.matches("step ").count(), 1, "{shown}");
    assert!(
        shown.contains("alpha=0.25") && shown.contains("bias=%p"),
        "{shown}"
    );
    let shown = check(
        r#"graph (%0: f32[2,3,6,6] "x", %1: f32[4,3,3,3] "w", %2: f32[4,1,1] "b") -> (%3 "y") {
  %3 = control.composite {"kind":"conv_bias_clip"} (%0, %1, %2) : f32[2,4,4,4] {
    graph (%0: f32[2,3,6,6] "x", %1: f32[4,3,3,3] "w", %2: f32[4,1,1] "b") -> (%7 "y") {
      @c0 = const f32[] [0.0]
      @c1 = const f32[] [0.5]
      %3 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[0,0,0,0],"strides":[1,1]} (%0, %1, _) : f32[2,4,4,4]
      %4 = ew.add(%3, %2) : f32[2,4,4,4]
      %5 = constant @c0 : f32[]
      %6 = constant @c1 : f32[]
      %7 = ew.clip(%4, %5, %6) : f32[2,4,4,4]
    }
  }
}"#,
        1e-5,
    );
    assert!(
        shown.contains("act=clip(0.0, 0.5)") && shown.contains("bias=%p"),
        "{shown}"
    );
    // A weight shared by the batch: one product over all 2·3 rows. A bias per row of each
    // batch element (3 values) must not be read as one per product row (6).
    let shown = check(
        r#"graph (%0: f32[2,3,4] "x", %1: f32[4,5] "w", %2: f32[3,1] "b") -> (%3 "y") {
  %3 = control.composite {"kind":"matmul_add_relu"} (%0, %1, %2) : f32[2,3,5] {
    graph (%0: f32[2,3,4] "x", %1: f32[4,5] "w", %2: f32[3,1] "b") -> (%5 "y") {
      %3 = nn.matmul(%0, %1) : f32[2,3,5]
      %4 = ew.add(%3, %2) : f32[2,3,5]
      %5 = ew.relu(%4) : f32[2,3,5]
    }
  }
}"#,
        1e-6,
    );
    assert!(shown.contains("matmul m=6 n=5 k=4"), "{shown}");
    // A bias that varies along a batch dim cannot ride in the matmul: a separate kernel.
    let shown = check(
        r#"graph (%0: f32[2,3,4] "x", %1: f32[4,5] "w", %2: f32[2,1,1] "b") -> (%3 "y") {
  %3 = control.composite {"kind":"matmul_add"} (%0, %1, %2) : f32[2,3,5] {
    graph (%0: f32[2,3,4] "x", %1: f32[4,5] "w", %2: f32[2,1,1] "b") -> (%4 "y") {
      %3 = nn.matmul(%0, %1) : f32[2,3,5]
      %4 = ew.add(%3, %2) : f32[2,3,5]
    }
  }
}"#,
        1e-6,
    );
    assert_eq!(shown.matches("step ").count(), 2, "{shown}");
}

#[test]
fn a_weight_tied_to_a_table_through_a_transpose_is_read_in_place() {
    // `e` is an embedding table, `w` its transpose (as folding leaves GPT-2's lm_head weight):
    // the product reads `e` column-major and `w` is dropped; a constant that is not `e`'s
    // transpose bit for bit stays.
    let src = |w: &str| {
        format!(
            r#"graph (%0: i64[2] "ids", %1: f32[3,2] "x") -> (%5 "y", %6 "z") {{
  @c0 = const f32[4,2] [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
  @c1 = const f32[2,4] [{w}]
  %2 = constant @c0 : f32[4,2]
  %3 = constant @c1 : f32[2,4]
  %4 = movement.gather {{"axis":0}} (%2, %0) : f32[2,2]
  %5 = nn.matmul(%1, %3) : f32[3,4]
  %6 = ew.add(%4, %4) : f32[2,2]
}}"#
        )
    };
    let ids = Tensor::from_vec(&[2], vec![3i64, 1]).expect("ids");
    let tied = check_with(
        &src("1.0, 3.0, 5.0, 7.0, 2.0, 4.0, 6.0, 8.0"),
        &[(0, ids.clone())],
        1e-6,
    );
    assert!(!tied.contains("f32[2,4] const"), "{tied}");
    assert!(tied.contains("matmul m=3 n=4 k=2"), "{tied}");
    let other = check_with(
        &src("1.0, 3.0, 5.0, 7.0, 2.0, 4.0, 6.0, -8.0"),
        &[(0, ids)],
        1e-6,
    );
    assert!(other.contains("f32[2,4] const"), "{other}");
}

#[test]
fn attention_mask_add_goes_into_the_softmax() {
    // Scores + a mask broadcast over heads, then softmax: one softmax kernel reads both.
    // `z` uses the sum twice: it stays a kernel of its own.
    for kind in ["softmax", "log_softmax"] {
        let text = check(
            &format!(
                r#"graph (%0: f32[1,2,3,4] "q", %1: f32[1,2,4,5] "k", %2: f32[1,1,3,5] "m") -> (%3 "y", %4 "z") {{
  %3 = control.composite {{"kind":"attention"}} (%0, %1, %2) : f32[1,2,3,5] {{
    graph (%0: f32[1,2,3,4] "in0", %1: f32[1,2,4,5] "in1", %2: f32[1,1,3,5] "in2") -> (%5 "out") {{
      %3 = nn.matmul(%0, %1) : f32[1,2,3,5]
      %4 = ew.add(%3, %2) : f32[1,2,3,5]
      %5 = reduce.{kind} {{"axis":3,"coerce_2d":false}} (%4) : f32[1,2,3,5]
    }}
  }}
  %4 = control.composite {{"kind":"attention"}} (%0, %1, %2) : f32[1,2,3,5] {{
    graph (%0: f32[1,2,3,4] "in0", %1: f32[1,2,4,5] "in1", %2: f32[1,1,3,5] "in2") -> (%6 "out") {{
      %3 = nn.matmul(%0, %1) : f32[1,2,3,5]
      %4 = ew.add(%3, %2) : f32[1,2,3,5]
      %5 = reduce.{kind} {{"axis":3,"coerce_2d":false}} (%4) : f32[1,2,3,5]
      %6 = ew.add(%5, %4) : f32[1,2,3,5]
    }}
  }}
}}"#
            ),
            1e-5,
        );
        assert_eq!(text.matches("kernel @ew_add").count(), 2, "{text}");
    }
}

/// A 3×3 stride-1 f32 convolution with a constant filter and enough tiles lowers to Winograd
/// F(2×2, 3×3): padded planes, input transform, 16 matmuls, output transform with the bias,
/// clipped last tile row and column (9×13 output).
#[test]
fn winograd_conv_lowering() {
    let w: Vec<String> = (0..16 * 16 * 9)
        .map(|i| format!("{:?}", ((i * 37 % 101) as f32 - 50.0) / 64.0))
        .collect();
    let src = format!(
        r#"graph (%0: f32[1,16,9,13] "x", %1: f32[16] "b") -> (%3 "y") {{
  @c0 = const f32[16,16,3,3] [{}]
  %2 = constant @c0 : f32[16,16,3,3]
  %3 = nn.conv {{"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[1,1,1,1],"strides":[1,1]}} (%0, %2, %1) : f32[1,16,9,13]
}}"#,
        w.join(", ")
    );
    let shown = check(&src, 1e-5);
    assert!(shown.contains("winograd_output"), "{shown}");
    insta::assert_snapshot!(shown);
}

mod det;
mod seq;
