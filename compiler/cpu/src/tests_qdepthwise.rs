//! Quantized depthwise convolutions as one `Stmt::Depthwise`: the 8-bit input and its zero
//! point read by the runtime's kernel, the QDQ tail (per-channel dequantization, requantize,
//! a QDQ SiLU) in its epilogue, the 8-bit result stored by it: compiled against the
//! evaluator of the same program, exactly where no `exp` is involved.

use crate::tests::check_inputs;
use mlc_ir::{Tensor, parse_graph};

use crate::tests::Rng;

/// One geometry: channels, multiplier, input size, kernel, stride, pads (t, l, b, r).
type Geom = (usize, usize, [usize; 2], usize, usize, [usize; 4]);

const GEOMS: [Geom; 5] = [
    // MobileNet's 3×3, stride 1 and 2, on maps wide enough for the row kernels.
    (5, 1, [9, 37], 3, 1, [1, 1, 1, 1]),
    (4, 1, [12, 20], 3, 2, [1, 1, 1, 1]),
    // EfficientNet's 5×5 with a channel multiplier and asymmetric pads.
    (3, 2, [11, 9], 5, 2, [2, 1, 2, 2]),
    // Small maps, 16+ channels: the channel-vector kernel.
    (18, 1, [7, 7], 3, 1, [1, 1, 1, 1]),
    // A map wider than a chunk of the epilogue's blocks (several blocks per plane).
    (2, 1, [40, 61], 3, 1, [1, 1, 1, 1]),
];

fn out_size(i: usize, k: usize, s: usize, p0: usize, p1: usize) -> usize {
    (i + p0 + p1 - k) / s + 1
}

/// The graph of a `conv_integer + cast + mul + add + quantize` composite (as the optimizer
/// makes of a QDQ depthwise layer), with `silu` a QDQ SiLU between (dequantize, sigmoid,
/// multiply, quantize), and its inputs; with `consts`, the scales and the zero point are
/// constants of the graph, as in a model, rather than inputs.
fn case(g: Geom, q: &str, silu: bool, consts: bool, rng: &mut Rng) -> (String, Vec<Tensor>) {
    let (c, mult, [h, w], k, s, pads) = g;
    let m = c * mult;
    let (oh, ow) = (
        out_size(h, k, s, pads[0], pads[2]),
        out_size(w, k, s, pads[1], pads[3]),
    );
    let attrs = format!(
        r#""dilations":[1,1],"group":{c},"pad":{{"explicit":[{},{},{},{}]}},"strides":[{s},{s}]"#,
        pads[0], pads[1], pads[2], pads[3]
    );
    let y = format!("[1,{m},{oh},{ow}]");
    let (lo, hi) = if q == "u8" { (0, 255) } else { (-128, 127) };
    let (tail, out) = if silu {
        (
            format!(
                r#"      %12 = quant.quantize {{"axis":1,"block_size":0,"to":"{q}"}} (%11, %5, %6) : {q}{y}
      %13 = quant.dequantize {{"axis":1,"block_size":0,"to":"f32"}} (%12, %5, %6) : f32{y}
      %14 = ew.sigmoid(%13) : f32{y}
      %15 = ew.mul(%13, %14) : f32{y}
      %16 = quant.quantize {{"axis":1,"block_size":0,"to":"{q}"}} (%15, %7, %6) : {q}{y}"#
            ),
            16,
        )
    } else {
        (
            format!(
                r#"      %12 = quant.quantize {{"axis":1,"block_size":0,"to":"{q}"}} (%11, %5, %6) : {q}{y}"#
            ),
            12,
        )
    };
    let (s1, zp, s2) = (
        rng.float(0.02, 0.05),
        rng.int(lo / 2, hi / 2),
        rng.float(0.01, 0.03),
    );
    let (scalars, defs) = if consts {
        (
            String::new(),
            format!(
                "  @c0 = const f32[] [{s1:?}]\n  @c1 = const {q}[] [{zp}]\n  @c2 = const f32[] [{s2:?}]\n  %5 = constant @c0 : f32[]\n  %6 = constant @c1 : {q}[]\n  %7 = constant @c2 : f32[]\n"
            ),
        )
    } else {
        (
            format!(r#", %5: f32[] "s", %6: {q}[] "zp", %7: f32[] "s2""#),
            String::new(),
        )
    };
    let src = format!(
        r#"graph (%0: {q}[1,{c},{h},{w}] "x", %1: i8[{m},1,{k},{k}] "w", %2: {q}[] "zx", %3: f32[{m},1,1] "a", %4: f32[{m},1,1] "b"{scalars}) -> (%8 "y") {{
{defs}  %8 = control.composite {{"kind":"conv_integer+cast+mul+add+quantize"}} (%0, %1, %2, %3, %4, %5, %6, %7) : {q}{y} {{
    graph (%0: {q}[1,{c},{h},{w}] "in0", %1: i8[{m},1,{k},{k}] "in1", %2: {q}[] "in2", %3: f32[{m},1,1] "in3", %4: f32[{m},1,1] "in4", %5: f32[] "in5", %6: {q}[] "in6", %7: f32[] "in7") -> (%{out} "out") {{
      %8 = quant.conv_integer {{{attrs}}} (%0, %1, %2) : i32{y}
      %9 = ew.cast {{"to":"f32"}} (%8) : f32{y}
      %10 = ew.mul(%9, %3) : f32{y}
      %11 = ew.add(%10, %4) : f32{y}
{tail}
    }}
  }}
}}"#
    );
    let byte = |v: i64, n: usize| -> Tensor {
        let shape: Vec<usize> = if n == 1 { vec![] } else { vec![n] };
        if q == "u8" {
            Tensor::from_vec(&shape, vec![v as u8; n]).expect("tensor")
        } else {
            Tensor::from_vec(&shape, vec![v as i8; n]).expect("tensor")
        }
    };
    let xs: Vec<i64> = (0..c * h * w).map(|_| rng.int(lo, hi)).collect();
    let x = if q == "u8" {
        Tensor::from_vec(&[1, c, h, w], xs.iter().map(|&v| v as u8).collect()).expect("x")
    } else {
        Tensor::from_vec(&[1, c, h, w], xs.iter().map(|&v| v as i8).collect()).expect("x")
    };
    let wv: Vec<i8> = (0..m * k * k).map(|_| rng.int(-128, 127) as i8).collect();
    let wt = Tensor::from_vec(&[m, 1, k, k], wv).expect("w");
    // Multipliers that bring the accumulators (up to ~25·255·128) to a few units, with some
    // saturation; shifts of either sign.
    let a: Vec<f32> = (0..m).map(|_| rng.float(1e-5, 8e-5)).collect();
    let b: Vec<f32> = (0..m).map(|_| rng.float(-2.0, 2.0)).collect();
    let mut inputs = vec![
        x,
        wt,
        byte(rng.int(lo, hi), 1),
        Tensor::from_vec(&[m, 1, 1], a).expect("a"),
        Tensor::from_vec(&[m, 1, 1], b).expect("b"),
    ];
    if !consts {
        inputs.extend([Tensor::scalar(s1), byte(zp, 1), Tensor::scalar(s2)]);
    }
    (src, inputs)
}

#[test]
fn quantized_depthwise_runs_as_one_statement() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for g in GEOMS {
        for q in ["u8", "i8"] {
            for silu in [false, true] {
                let (src, inputs) = case(g, q, silu, false, &mut rng);
                // The sigmoid's `exp` is the runtime's polynomial: a value on a rounding
                // boundary may land one step away; everything else is exact.
                let tol = if silu { 1.01 / 127.0 } else { 0.0 };
                let text = check_inputs(&src, &inputs, tol);
                assert!(
                    text.contains("x_zero=") && text.contains("round(x)"),
                    "{q} silu {silu}: the input and the tail go into the statement:\n{text}"
                );
                assert!(
                    !text.contains("input_minus_zero_point")
                        && !text.contains("accumulator_to_i32")
                        && text.matches("kernel @").count() == 2,
                    "{q} silu {silu}: one kernel besides the weights':\n{text}"
                );
                if silu {
                    assert!(
                        text.contains("sigmoid(x)") && text.contains("narrow<"),
                        "{text}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_quantized_activation_becomes_a_table() {
    // With constant scales and zero points, the SiLU after the requantization's byte is a
    // function of that byte: one table step computed by the evaluator, so the compiled
    // result is exact.
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    for g in GEOMS {
        for q in ["u8", "i8"] {
            let (src, inputs) = case(g, q, true, true, &mut rng);
            check_inputs(&src, &inputs, 0.0);
            let prog = mlc_kir::lower_graph(&parse_graph(&src).expect("graph")).expect("lower");
            let (prepared, done) = crate::prepare(&prog, crate::Options::default());
            let text = mlc_kir::print_program(&prepared);
            assert_eq!(done.tables, 1, "{q}: one table:\n{text}");
            assert!(
                text.contains("[x") && !text.contains("sigmoid(x)"),
                "{q}: the gate is the table:\n{text}"
            );
        }
    }
}

#[test]
fn an_f32_depthwise_quantizes_in_its_epilogue() {
    // A float depthwise convolution followed by a per-channel scale and a quantization: the
    // statement stores u8.
    let src = r#"graph (%0: f32[1,3,10,12] "x", %1: f32[3,1,3,3] "w", %2: f32[3,1,1] "a", %3: f32[] "s", %4: u8[] "zp") -> (%5 "y") {
  %5 = control.composite {"kind":"conv+mul+quantize"} (%0, %1, %2, %3, %4) : u8[1,3,10,12] {
    graph (%0: f32[1,3,10,12] "in0", %1: f32[3,1,3,3] "in1", %2: f32[3,1,1] "in2", %3: f32[] "in3", %4: u8[] "in4") -> (%7 "out") {
      %5 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":3,"pads":[1,1,1,1],"strides":[1,1]} (%0, %1, _) : f32[1,3,10,12]
      %6 = ew.mul(%5, %2) : f32[1,3,10,12]
      %7 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%6, %3, %4) : u8[1,3,10,12]
    }
  }
}"#;
    let g = parse_graph(src).expect("graph");
    let mut inputs = crate::tests::inputs_for(&g);
    inputs[3] = Tensor::scalar(0.05f32);
    inputs[4] = Tensor::from_vec(&[], vec![100u8]).expect("zp");
    // f32 taps are fused multiply-adds in the kernel: a value on a rounding boundary may
    // land one step away.
    let text = check_inputs(src, &inputs, 1.01 / 255.0);
    assert!(text.contains("[m])") && text.contains("round(x)"), "{text}");
}
