//! GELU tails becoming the contraction's activation: graphs shaped like BERT's FFN (matmul,
//! bias, GELU in one composite) and MagiKa's conv tail (a contraction, then a composite of a
//! per-row bias and the tanh GELU), odd shapes; what must not be rewritten; and the compiled
//! program (the runtime's GELU epilogue on every row and column edge) against the evaluator.

use super::*;
use crate::tests::check;
use mlc_ir::parse_graph;
use mlc_kir::{lower_graph, print_program};

/// The program after the CPU epilogue passes, and how many GELUs became activations.
fn fused(src: &str) -> (String, usize) {
    let g = parse_graph(src).unwrap_or_else(|e| panic!("bad graph: {e}"));
    let p = lower_graph(&g).expect("lowering");
    let (q, f) = fuse_epilogues(&p);
    for k in &q.kernels {
        mlc_kir::verify_kernel(k).unwrap_or_else(|e| panic!("{e:?}\n{}", print_program(&q)));
    }
    (print_program(&q), f.gelu)
}

/// BERT's FFN: `gelu(x·W + b)` as one composite.
fn ffn(m: usize, k: usize, n: usize, approx: &str) -> String {
    format!(
        r#"graph (%0: f32[{m},{k}] "x", %1: f32[{k},{n}] "w", %2: f32[{n}] "b") -> (%3 "y") {{
  %3 = control.composite {{"kind":"matmul+gelu"}} (%0, %1, %2) : f32[{m},{n}] {{
    graph (%0: f32[{m},{k}] "in0", %1: f32[{k},{n}] "in1", %2: f32[{n}] "in2") -> (%5 "out") {{
      %3 = nn.matmul(%0, %1) : f32[{m},{n}]
      %4 = ew.add(%3, %2) : f32[{m},{n}]
      %5 = ew.gelu {{"approximate":"{approx}"}}(%4) : f32[{m},{n}]
    }}
  }}
}}"#
    )
}

/// MagiKa's tail: a contraction, then `gelu(C + b[row])` as a composite of its own.
fn conv_tail(m: usize, k: usize, n: usize, approx: &str) -> String {
    format!(
        r#"graph (%0: f32[{m},{k}] "w", %1: f32[{k},{n}] "x", %2: f32[{m},1] "b") -> (%4 "y") {{
  %3 = nn.matmul(%0, %1) : f32[{m},{n}]
  %4 = control.composite {{"kind":"bias_gelu"}} (%3, %2) : f32[{m},{n}] {{
    graph (%0: f32[{m},{n}] "in0", %1: f32[{m},1] "in1") -> (%3 "out") {{
      %2 = ew.add(%0, %1) : f32[{m},{n}]
      %3 = ew.gelu {{"approximate":"{approx}"}}(%2) : f32[{m},{n}]
    }}
  }}
}}"#
    )
}

#[test]
fn gelu_tails_become_activations() {
    // Odd sizes around the AVX-512 (12×32) and AVX2 (6×16) tiles, a single row and column.
    let shapes = [
        (1, 5, 1),
        (1, 7, 33),
        (13, 9, 37),
        (25, 31, 65),
        (40, 64, 100),
    ];
    for &(m, k, n) in &shapes {
        for (approx, act) in [("none", "act=gelu"), ("tanh", "act=gelu_tanh")] {
            for src in [ffn(m, k, n, approx), conv_tail(m, k, n, approx)] {
                let (text, n_gelu) = fused(&src);
                assert_eq!(n_gelu, 1, "{src}\n{text}");
                assert!(text.contains(act), "{text}");
                assert!(!text.contains("erf") && !text.contains("tanh("), "{text}");
                // The runtime's erf/tanh are within 1e-6 relative (+3e-7 absolute) of libm's;
                // the f32 contraction's own rounding is within the same tolerance here.
                check(&src, 2e-6);
            }
        }
    }
}

/// A convolution-like contraction followed by `act(C + b[row])`, `act` an elementwise op
/// written as IR text (`ew.sigmoid`, `ew.swish {"alpha":…}`): EfficientNet's SiLU blocks.
fn act_tail(m: usize, k: usize, n: usize, act: &str) -> String {
    format!(
        r#"graph (%0: f32[{m},{k}] "w", %1: f32[{k},{n}] "x", %2: f32[{m},1] "b") -> (%4 "y") {{
  %3 = nn.matmul(%0, %1) : f32[{m},{n}]
  %4 = control.composite {{"kind":"bias_act"}} (%3, %2) : f32[{m},{n}] {{
    graph (%0: f32[{m},{n}] "in0", %1: f32[{m},1] "in1") -> (%3 "out") {{
      %2 = ew.add(%0, %1) : f32[{m},{n}]
      %3 = {act}(%2) : f32[{m},{n}]
    }}
  }}
}}"#
    )
}

#[test]
fn sigmoid_and_swish_tails_become_activations() {
    let shapes = [(1, 5, 1), (13, 9, 37), (40, 64, 100)];
    for &(m, k, n) in &shapes {
        for (act, want) in [
            ("ew.sigmoid", "act=sigmoid"),
            (r#"ew.swish {"alpha":1.0}"#, "act=swish(1)"),
            (r#"ew.swish {"alpha":1.702}"#, "act=swish(1.702)"),
        ] {
            let src = act_tail(m, k, n, act);
            let (text, n_act) = fused(&src);
            assert_eq!(n_act, 1, "{src}\n{text}");
            assert!(text.contains(want), "{text}");
            assert!(!text.contains("exp("), "{text}");
            // The runtime's exp is the compiled tail's polynomial, within a few ulp of libm.
            check(&src, 2e-6);
        }
    }
}

/// EfficientNet's first layer: a 3-channel convolution (an implicit GEMM reading its image)
/// with a bias and SiLU in one composite; also with a 1-wide stride, 2 output channels and a
/// grouped one of 8 channels per group. The swish becomes the contraction's activation.
#[test]
fn implicit_gemm_swish_tails_become_activations() {
    for (c, m, hw, s, group) in [(3, 32, 17, 2, 1), (3, 2, 9, 1, 1), (16, 16, 11, 2, 2)] {
        let o = (hw + 2 - 3) / s + 1;
        let cg = c / group;
        let src = format!(
            r#"graph (%0: f32[1,{c},{hw},{hw}] "x", %1: f32[{m},{cg},3,3] "w", %2: f32[{m}] "b") -> (%3 "y") {{
  %3 = control.composite {{"kind":"conv+swish"}} (%0, %1, %2) : f32[1,{m},{o},{o}] {{
    graph (%0: f32[1,{c},{hw},{hw}] "in0", %1: f32[{m},{cg},3,3] "in1", %2: f32[{m}] "in2") -> (%4 "out") {{
      %3 = nn.conv {{"auto_pad":"not_set","dilations":[1,1],"group":{group},"pads":[1,1,1,1],"strides":[{s},{s}]}} (%0, %1, %2) : f32[1,{m},{o},{o}]
      %4 = ew.swish {{"alpha":1.0}}(%3) : f32[1,{m},{o},{o}]
    }}
  }}
}}"#
        );
        let (text, n_act) = fused(&src);
        assert!(text.contains("b_im2col("), "{text}");
        if group == 1 {
            assert_eq!(n_act, 1, "{src}\n{text}");
            assert!(text.contains("act=swish(1)"), "{text}");
            assert!(!text.contains("exp("), "{text}");
        }
        check(&src, 2e-6);
    }
}

#[test]
fn other_tails_stay_tails() {
    // A GELU of something else than C + bias (here C·2) is a general tail, not an activation.
    let src = r#"graph (%0: f32[5,7] "x", %1: f32[7,9] "w") -> (%3 "y") {
  %2 = nn.matmul(%0, %1) : f32[5,9]
  %3 = control.composite {"kind":"scale_gelu"} (%2) : f32[5,9] {
    graph (%0: f32[5,9] "in0") -> (%3 "out") {
      @c0 = const f32[] [2.0]
      %1 = constant @c0 : f32[]
      %2 = ew.mul(%0, %1) : f32[5,9]
      %3 = ew.gelu {"approximate":"none"}(%2) : f32[5,9]
    }
  }
}"#;
    let (text, n_gelu) = fused(src);
    assert_eq!(n_gelu, 0, "{text}");
    assert!(text.contains("erf"), "{text}");
    check(src, 2e-6);
}

#[test]
fn gelu_pattern_needs_the_exact_formula() {
    let c = |v: f64| Expr::float(DType::F32, v as f32 as f64);
    let x = Expr::var(VarId(0));
    let mul = |a: Expr, b: Expr| Expr::bin(BinOp::Mul, a, b);
    let add = |a: Expr, b: Expr| Expr::bin(BinOp::Add, a, b);
    let erf_form = |s: f64, y: Expr| {
        mul(
            mul(c(0.5), x.clone()),
            add(c(1.0), Expr::un(UnOp::Erf, mul(y, c(s)))),
        )
    };
    let s = std::f64::consts::FRAC_1_SQRT_2;
    assert_eq!(
        gelu::gelu_of(&erf_form(s, x.clone())).map(|(a, _)| a),
        Some(mlc_kir::Activation::Gelu)
    );
    // Another constant, another argument inside the erf: not GELU.
    assert!(gelu::gelu_of(&erf_form(0.7, x.clone())).is_none());
    assert!(gelu::gelu_of(&erf_form(s, Expr::var(VarId(1)))).is_none());
}

#[test]
fn depthwise_sigmoid_and_swish_epilogues_run_compiled() {
    // The runtime's depthwise kernels apply the epilogue's sigmoid with the vector `exp`.
    for act in ["ew.sigmoid", r#"ew.swish {"alpha":1.0}"#] {
        let src = format!(
            r#"graph (%0: f32[1,4,13,11] "x", %1: f32[4,1,3,3] "w", %2: f32[4] "b") -> (%3 "y") {{
  %3 = control.composite {{"kind":"conv+act"}} (%0, %1, %2) : f32[1,4,13,11] {{
    graph (%0: f32[1,4,13,11] "in0", %1: f32[4,1,3,3] "in1", %2: f32[4] "in2") -> (%4 "out") {{
      %3 = nn.conv {{"auto_pad":"not_set","dilations":[1,1],"group":4,"pads":[1,1,1,1],"strides":[1,1]}} (%0, %1, %2) : f32[1,4,13,11]
      %4 = {act}(%3) : f32[1,4,13,11]
    }}
  }}
}}"#
        );
        check(&src, 2e-6);
    }
}

/// GPT-2's dynamically quantized FFN: the integer product, its dequantization (`· s + b`),
/// a view adding a leading unit dimension, then the tanh GELU, in one composite of `m×n`.
fn dequant_ffn(m: usize, k: usize, n: usize, view: &str) -> String {
    format!(
        r#"graph (%0: u8[{m},{k}] "x", %1: i8[{k},{n}] "w", %2: u8[] "zp", %3: f32[] "s", %4: f32[{n}] "b") -> (%5 "y") {{
  %5 = control.composite {{"kind":"matmul_integer+cast+mul+add+reshape+gelu"}} (%0, %1, %2, %3, %4) : f32[{view}] {{
    graph (%0: u8[{m},{k}] "in0", %1: i8[{k},{n}] "in1", %2: u8[] "in2", %3: f32[] "in3", %4: f32[{n}] "in4") -> (%10 "out") {{
      %5 = quant.matmul_integer(%0, %1, %2) : i32[{m},{n}]
      %6 = ew.cast {{"to":"f32"}} (%5) : f32[{m},{n}]
      %7 = ew.mul(%6, %3) : f32[{m},{n}]
      %8 = ew.add(%7, %4) : f32[{m},{n}]
      %9 = movement.reshape {{"allowzero":false,"shape":[{view}]}} (%8) : f32[{view}]
      %10 = ew.gelu {{"approximate":"tanh"}} (%9) : f32[{view}]
    }}
  }}
}}"#
    )
}

/// The dequantizing tail of an integer product, a leading-unit view inside it, is one tail
/// whose GELU the runtime applies (16 lanes) to each block the compiled tail stored; the
/// compiled program against the evaluator.
#[test]
fn a_dequantizing_tail_leaves_its_gelu_to_the_runtime() {
    for (m, k, n) in [(1, 7, 33), (13, 9, 37), (32, 64, 100)] {
        let src = dequant_ffn(m, k, n, &format!("1,{m},{n}"));
        let g = parse_graph(&src).unwrap_or_else(|e| panic!("bad graph: {e}"));
        let p = lower_graph(&g).expect("lowering");
        let text = print_program(&p);
        // One pass after the product: no kernel per op.
        assert!(!text.contains("kernel @ew_"), "{text}");
        let (q, _) = fuse_epilogues(&p);
        let tails: Vec<_> = q
            .kernels
            .iter()
            .filter_map(|k| Some((k, crate::clif::tail_of(k)?)))
            .filter_map(|(k, mm)| crate::requant::tail_activation(k, mm))
            .collect();
        assert_eq!(tails.len(), 1, "{}", print_program(&q));
        assert_eq!(tails[0].act, mlc_kir::Activation::GeluTanh);
        let (o, rs, cs) = tails[0].view;
        assert!(
            o == 0 && cs == 1 && (m == 1 || rs == n as i64),
            "{:?}",
            tails[0].view
        );
        check(&src, 2e-6);
    }
    // A view that regroups the trailing dimensions stays out of the tail (the bias would
    // broadcast differently against it); the result is still the evaluator's.
    let src = dequant_ffn(4, 5, 6, "2,12");
    check(&src, 2e-6);
}
