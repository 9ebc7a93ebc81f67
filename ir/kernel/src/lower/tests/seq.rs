//! Lowering of the sequence and signal ops (causal convolution with state, linear and flex
//! attention, DFT and STFT) against the interpreter, on several shapes and every attribute.

use super::{check, check_with};
use mlc_ir::Tensor;

fn scalar_i64(v: i64) -> Tensor {
    Tensor::scalar(v)
}

#[test]
fn causal_conv_with_state() {
    // (batch, channels, len, k, type, bias, past, silu)
    let cases = [
        (2, 3, 5, 4, "f32", true, true, true),
        (2, 3, 5, 4, "f32", false, false, false),
        (1, 1, 1, 1, "f32", false, false, false),
        (3, 2, 2, 4, "f32", true, false, true),
        (2, 5, 1, 3, "f32", false, true, false),
        (1, 4, 7, 3, "f16", true, true, true),
        (2, 3, 6, 2, "f64", true, true, false),
    ];
    for (nb, nc, len, k, ty, bias, past, silu) in cases {
        let mut ins = vec![
            format!(r#"%0: {ty}[{nb},{nc},{len}] "x""#),
            format!(r#"%1: {ty}[{nc},1,{k}] "w""#),
        ];
        let b = if bias {
            ins.push(format!(r#"%{}: {ty}[{nc}] "b""#, ins.len()));
            format!("%{}", ins.len() - 1)
        } else {
            "_".into()
        };
        let p = if past {
            ins.push(format!(r#"%{}: {ty}[{nb},{nc},{}] "p""#, ins.len(), k - 1));
            format!("%{}", ins.len() - 1)
        } else {
            "_".into()
        };
        let (y, st) = (ins.len(), ins.len() + 1);
        let src = format!(
            r#"graph ({}) -> (%{y} "y", %{st} "s") {{
  %{y}, %{st} = rnn.causal_conv_with_state {{"silu":{silu}}} (%0, %1, {b}, {p}) : {ty}[{nb},{nc},{len}], {ty}[{nb},{nc},{}]
}}"#,
            ins.join(", "),
            k - 1
        );
        check(&src, if ty == "f16" { 2e-3 } else { 1e-6 });
    }
}

#[test]
fn linear_attention() {
    // (rule, batch, steps, q heads, kv heads, d_k, d_v, decay per feature, beta per head,
    //  past, type, scale)
    let cases = [
        (
            "linear", 1, 3, 2, 2, 4, 4, false, false, false, "f32", "null",
        ),
        ("linear", 2, 4, 4, 2, 3, 5, false, false, true, "f32", "0.7"),
        ("gated", 2, 3, 2, 1, 3, 2, false, false, true, "f32", "null"),
        ("gated", 1, 5, 3, 3, 2, 3, true, false, false, "f32", "null"),
        ("delta", 2, 3, 2, 2, 4, 3, false, true, true, "f32", "null"),
        ("delta", 1, 2, 4, 1, 3, 3, false, false, false, "f32", "0.5"),
        (
            "gated_delta",
            2,
            4,
            4,
            2,
            3,
            4,
            true,
            true,
            true,
            "f32",
            "null",
        ),
        (
            "gated_delta",
            1,
            3,
            2,
            2,
            2,
            2,
            false,
            false,
            true,
            "f16",
            "null",
        ),
        (
            "linear", 1, 1, 1, 1, 5, 3, false, false, false, "f64", "null",
        ),
    ];
    for (rule, nb, nt, hq, hkv, dk, dv, per_feat, per_head, past, ty, scale) in cases {
        let gated = rule.starts_with("gated");
        let delta = rule.ends_with("delta");
        let mut ins = vec![
            format!(r#"%0: {ty}[{nb},{nt},{}] "q""#, hq * dk),
            format!(r#"%1: {ty}[{nb},{nt},{}] "k""#, hkv * dk),
            format!(r#"%2: {ty}[{nb},{nt},{}] "v""#, hkv * dv),
        ];
        let mut args: Vec<String> = vec!["%0".into(), "%1".into(), "%2".into()];
        let mut opt = |on: bool, ty_: String, name: &str, ins: &mut Vec<String>| {
            if on {
                args.push(format!("%{}", ins.len()));
                ins.push(format!(r#"%{}: {ty_} "{name}""#, ins.len()));
            } else {
                args.push("_".into());
            }
        };
        opt(past, format!("{ty}[{nb},{hkv},{dk},{dv}]"), "p", &mut ins);
        // Decays are log-gates: small negative numbers in practice, any value here.
        let n = if per_feat { hkv * dk } else { hkv };
        opt(gated, format!("{ty}[{nb},{nt},{n}]"), "g", &mut ins);
        let n = if per_head { hkv } else { 1 };
        opt(delta, format!("{ty}[{nb},{nt},{n}]"), "beta", &mut ins);
        let (y, st) = (ins.len(), ins.len() + 1);
        let src = format!(
            r#"graph ({}) -> (%{y} "y", %{st} "state") {{
  %{y}, %{st} = attn.linear_attention {{"q_num_heads":{hq},"kv_num_heads":{hkv},"scale":{scale},"update_rule":"{rule}"}} ({}) : {ty}[{nb},{nt},{}], {ty}[{nb},{hkv},{dk},{dv}]
}}"#,
            ins.join(", "),
            args.join(", "),
            hq * dv
        );
        check(&src, if ty == "f16" { 2e-3 } else { 1e-6 });
    }
}

/// A flex attention graph of q `[b, hq, sq, e]`, k `[b, hkv, skv, e]`, v `[b, hkv, skv, dv]`
/// with the given attributes, extra inputs and regions.
#[allow(clippy::too_many_arguments)]
fn flex(
    ty: &str,
    [b, hq, hkv, sq, skv, e, dv]: [usize; 7],
    attrs: &str,
    extra_inputs: &[String],
    regions: &str,
) -> String {
    let mut ins = vec![
        format!(r#"%0: {ty}[{b},{hq},{sq},{e}] "q""#),
        format!(r#"%1: {ty}[{b},{hkv},{skv},{e}] "k""#),
        format!(r#"%2: {ty}[{b},{hkv},{skv},{dv}] "v""#),
    ];
    let mut args = vec!["%0".to_string(), "%1".into(), "%2".into()];
    for (i, x) in extra_inputs.iter().enumerate() {
        ins.push(format!(r#"%{}: {x} "c{i}""#, 3 + i));
        args.push(format!("%{}", 3 + i));
    }
    let y = 3 + extra_inputs.len();
    format!(
        r#"graph ({}) -> (%{y} "y") {{
  %{y} = attn.flex_attention {attrs} ({}) : {ty}[{b},{hq},{sq},{dv}]{regions}
}}"#,
        ins.join(", "),
        args.join(", ")
    )
}

#[test]
fn flex_attention() {
    let plain =
        r#"{"prob_captures":null,"scale":null,"score_captures":null,"softmax_precision":null}"#;
    // No modifiers: plain, grouped heads, other head sizes, odd sizes, each float type.
    for (ty, dims, tol) in [
        ("f32", [1, 2, 2, 3, 3, 4, 4], 1e-6),
        ("f32", [2, 4, 2, 3, 5, 8, 3], 1e-6),
        ("f64", [1, 3, 1, 1, 7, 5, 2], 1e-12),
        ("f16", [2, 2, 1, 4, 3, 6, 5], 2e-3),
    ] {
        check(&flex(ty, dims, plain, &[], ""), tol);
    }
    // An explicit scale and an f64 softmax of f32 inputs.
    let attrs =
        r#"{"prob_captures":null,"scale":0.3,"score_captures":null,"softmax_precision":"f64"}"#;
    check(&flex("f32", [1, 2, 1, 3, 4, 5, 2], attrs, &[], ""), 1e-6);
    // A score modifier with a constant, then a probability modifier.
    let score =
        r#"{"prob_captures":null,"scale":null,"score_captures":0,"softmax_precision":null}"#;
    let region = r#" {
    graph (%0: f32[2,2,3,5] "scores") -> (%2 "scores_out") {
      @c0 = const f32[] [0.5]
      %1 = constant @c0 : f32[]
      %2 = ew.add(%0, %1) : f32[2,2,3,5]
    }
  }"#;
    check(
        &flex("f32", [2, 2, 2, 3, 5, 4, 3], score, &[], region),
        1e-6,
    );
    let prob = r#"{"prob_captures":0,"scale":null,"score_captures":null,"softmax_precision":null}"#;
    let region = region.replace("ew.add", "ew.mul");
    check(
        &flex("f32", [2, 2, 2, 3, 5, 4, 3], prob, &[], &region),
        1e-6,
    );
    // Both modifiers, each with a captured input: a bias on the scores, a scale on the
    // probabilities, in an f16 attention whose softmax runs in f32.
    let both = r#"{"prob_captures":1,"scale":null,"score_captures":1,"softmax_precision":null}"#;
    let regions = r#" {
    graph (%0: f32[1,2,3,4] "scores", %1: f32[3,4] "bias") -> (%2 "out") {
      %2 = ew.add(%0, %1) : f32[1,2,3,4]
    }
    graph (%0: f32[1,2,3,4] "probs", %1: f32[1,2,1,1] "s") -> (%2 "out") {
      %2 = ew.mul(%0, %1) : f32[1,2,3,4]
    }
  }"#;
    let caps = ["f32[3,4]".to_string(), "f32[1,2,1,1]".to_string()];
    check(
        &flex("f16", [1, 2, 1, 3, 4, 8, 3], both, &caps, regions),
        2e-3,
    );
}

#[test]
fn dft() {
    let op = |axis: &str, inverse: bool, onesided: bool, length: &str| {
        format!(
            r#"signal.dft {{"axis":{axis},"inverse":{inverse},"length":{length},"onesided":{onesided}}}"#
        )
    };
    // (input, output, op, tolerance)
    let cases = [
        (
            "f32[2,5,3,1]",
            "f32[2,5,3,2]",
            op("1", false, false, "null"),
        ),
        (
            "f32[2,5,3,1]",
            "f32[2,5,3,2]",
            op("2", false, false, "null"),
        ),
        ("f32[2,7,3,2]", "f32[2,4,3,2]", op("1", false, true, "null")),
        ("f32[3,6,2]", "f32[3,4,2]", op("1", false, true, "null")),
        ("f64[2,5,3,2]", "f64[2,5,3,2]", op("1", true, false, "null")),
        ("f32[1,6,4,2]", "f32[1,10,4,1]", op("1", true, true, "null")),
        ("f32[2,5,3,2]", "f32[2,5,4,1]", op("2", true, true, "null")),
        ("f32[3,4,2]", "f32[3,4,2]", op("0", false, false, "null")),
        ("f32[2,4,3,1]", "f32[2,5,3,1]", op("1", true, true, "5")),
        ("f32[2,6,3,2]", "f32[2,9,3,2]", op("1", false, false, "9")),
        ("f32[2,6,3,1]", "f32[2,3,3,2]", op("1", false, true, "4")),
        ("f32[2,9,2]", "f32[2,4,2]", op("1", true, false, "4")),
        ("f16[3,8,1]", "f16[3,5,2]", op("1", false, true, "null")),
        ("f32[3,6,2]", "f32[3,10,1]", op("1", true, true, "null")),
        ("f32[2,3,5,1]", "f32[2,3,7,1]", op("2", true, true, "7")),
        ("f64[2,3,5,1]", "f64[2,3,7,1]", op("2", true, true, "7")),
    ];
    for (x, y, op) in cases {
        let src = format!(
            r#"graph (%0: {x} "x") -> (%1 "y") {{
  %1 = {op} (%0, _, _) : {y}
}}"#
        );
        // f32 along the last signal axis is a contraction (f32 sums); the rest loops in f64.
        let r = x.matches(',').count();
        let last_axis = op.contains(&format!("\"axis\":{}", r - 1));
        let tol = match &x[..3] {
            "f16" => 2e-3,
            "f32" => 1e-5,
            _ => 1e-12,
        };
        let printed = check(&src, tol);
        assert_eq!(
            printed.contains("matmul"),
            x.starts_with("f32") && last_axis,
            "{op} on {x}:\n{printed}"
        );
    }
    // A run-time axis where two axes give the output shape, each value of it.
    for axis in [1, 2, -2, -3] {
        let src = format!(
            r#"graph (%0: f32[2,4,4,2] "x", %1: i64[] "axis") -> (%2 "y") {{
  %2 = {} (%0, _, %1) : f32[2,4,4,2]
}}"#,
            op("null", false, false, "null")
        );
        check_with(&src, &[(1, scalar_i64(axis))], 1e-6);
    }
    // A run-time axis with two candidate lengths: the twiddles are computed in the kernel.
    for axis in [1, 2] {
        let src = format!(
            r#"graph (%0: f32[1,4,6,1] "x", %1: i64[] "axis") -> (%2 "y") {{
  %2 = {} (%0, _, %1) : f32[1,4,6,2]
}}"#,
            op("null", true, false, "null")
        );
        check_with(&src, &[(1, scalar_i64(axis))], 1e-6);
    }
}

#[test]
fn stft() {
    // Constant attributes, a window, a complex signal, both sidednesses.
    let cases = [
        (
            "f32[2,32,1]",
            "",
            "f32[2,7,5,2]",
            r#"{"frame_length":8,"frame_step":4,"onesided":true}"#,
        ),
        (
            "f32[1,20,2]",
            "",
            "f32[1,4,6,2]",
            r#"{"frame_length":6,"frame_step":4,"onesided":false}"#,
        ),
        (
            "f64[2,17,1]",
            ", %1: f64[5] \"w\"",
            "f64[2,5,3,2]",
            r#"{"frame_length":null,"frame_step":3,"onesided":true}"#,
        ),
        (
            "f32[1,16,1]",
            ", %1: f32[4] \"w\"",
            "f32[1,3,4,2]",
            r#"{"frame_length":6,"frame_step":5,"onesided":true}"#,
        ),
    ];
    for (x, w, y, attrs) in cases {
        let (tol, mm) = if x.starts_with("f32") {
            (1e-5, true)
        } else {
            (1e-12, false)
        };
        let (win, out) = if w.is_empty() { ("_", 1) } else { ("%1", 2) };
        let src = format!(
            r#"graph (%0: {x} "x"{w}) -> (%{out} "y") {{
  %{out} = signal.stft {attrs} (%0, _, {win}, _) : {y}
}}"#
        );
        // f32 with a known frame step and length is one contraction per batch row.
        assert_eq!(check(&src, tol).contains("matmul"), mm, "{src}");
    }
    // The frame step and length as run-time inputs (the twiddles computed in the kernel).
    let src = r#"graph (%0: f32[2,30,1] "x", %1: i64[] "step", %2: i64[] "len") -> (%3 "y") {
  %3 = signal.stft {"frame_length":null,"frame_step":null,"onesided":true} (%0, %1, _, %2) : f32[2,6,5,2]
}"#;
    check_with(src, &[(1, scalar_i64(4)), (2, scalar_i64(9))], 1e-6);
    let src = r#"graph (%0: f32[1,30,2] "x", %1: i64[] "step", %2: f32[8] "w") -> (%3 "y") {
  %3 = signal.stft {"frame_length":null,"frame_step":null,"onesided":false} (%0, %1, %2, _) : f32[1,12,8,2]
}"#;
    check_with(src, &[(1, scalar_i64(2))], 1e-6);
}

#[test]
fn mel_weight_matrix() {
    // (mel bins, dft length, sample rate, lower, upper, output type)
    let cases = [
        (8i32, 16i64, 8192i32, 0.0f32, 4096.0f32, "f32"),
        (5, 30, 16000, 20.0, 7600.0, "f32"),
        (3, 9, 8000, 100.0, 3000.0, "f64"),
        (10, 64, 22050, 0.0, 11025.0, "f16"),
    ];
    for (mel, dft, rate, lo, hi, ty) in cases {
        let src = format!(
            r#"graph (%0: i32[] "m", %1: i64[] "d", %2: i32[] "r", %3: f32[] "lo", %4: f32[] "hi") -> (%5 "w") {{
  %5 = signal.mel_weight_matrix {{"dtype":"{ty}"}} (%0, %1, %2, %3, %4) : {ty}[{},{mel}]
}}"#,
            dft / 2 + 1
        );
        let given = [
            (0, Tensor::scalar(mel)),
            (1, Tensor::scalar(dft)),
            (2, Tensor::scalar(rate)),
            (3, Tensor::scalar(lo)),
            (4, Tensor::scalar(hi)),
        ];
        check_with(&src, &given, 1e-6);
    }
}
