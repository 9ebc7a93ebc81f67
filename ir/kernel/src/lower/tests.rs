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
    let g = parse_graph(src).unwrap_or_else(|e| panic!("bad test graph: {e}"));
    let inputs: Vec<Tensor> = g
        .inputs
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
    ];
    for k in kinds {
        for (axes, keep, out) in [
            ("[1]", true, "[2,1,4]"),
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
        r#"graph (%0: f32[1,2,7,7] "x") -> (%1 "m", %2 "a", %3 "g", %4 "h") {
  %1 = nn.max_pool {"kernel":[3,3],"strides":[2,2],"dilations":[1,1],"pads":[1,1,1,1],"auto_pad":"not_set","ceil_mode":false,"storage_order_col_major":false} (%0) : f32[1,2,4,4]
  %2 = nn.avg_pool {"kernel":[2,3],"strides":[2,2],"dilations":[1,1],"pads":[0,1,1,0],"auto_pad":"not_set","ceil_mode":true,"count_include_pad":false} (%0) : f32[1,2,4,4]
  %3 = nn.global_avg_pool(%0) : f32[1,2,1,1]
  %4 = nn.global_max_pool(%0) : f32[1,2,1,1]
}"#,
        1e-6,
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
fn gather_nd() {
    check(
        r#"graph (%0: f32[6,6,2] "x", %1: i64[2,2] "i") -> (%2 "y") {
  %2 = movement.gather_nd {"batch_dims":0} (%0, %1) : f32[2,2]
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
