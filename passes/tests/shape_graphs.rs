//! Graphs that compute their shapes in-graph, as exporters write them, simplified with bound
//! inputs: each case is *start => goal*, the goal pinned as an `insta` snapshot of the text form.
//!
//! `check` also holds every case to the passes' contract: the result verifies, every value is
//! static, and the reference interpreter computes the same outputs before and after.

use mlc_ir::{Graph, Tensor, parse_graph, print_graph, verify};
use mlc_passes::simplify;

/// Deterministic inputs of the bound shapes: small integers (zeros among them, so masks mask),
/// and floats of both signs.
fn inputs(g: &Graph) -> Vec<(String, Tensor)> {
    g.inputs
        .iter()
        .map(|p| {
            let ty = g.ty(p.value);
            let shape = ty.static_shape().expect("inputs are bound");
            let n: usize = shape.iter().product();
            let ints: Vec<i64> = (0..n as i64).map(|i| (i * 7 + 3) % 5).collect();
            let t = Tensor::from_vec(&shape, ints).expect("n elements");
            let t = if ty.dtype.is_float() {
                let f: Vec<f64> = (0..n)
                    .map(|i| ((i * 37) % 17) as f64 * 0.25 - 2.0)
                    .collect();
                Tensor::from_vec(&shape, f).expect("n elements")
            } else {
                t
            };
            (p.name.clone(), t.cast(ty.dtype).expect("numeric input"))
        })
        .collect()
}

/// Simplifies `src` with `bindings`, checks the contract, and returns a summary and the result.
fn check(src: &str, bindings: &[(&str, &[usize])]) -> String {
    let before = parse_graph(src).unwrap_or_else(|e| panic!("{e}"));
    verify(&before).unwrap_or_else(|e| panic!("start does not verify: {e:?}"));
    let mut after = before.clone();
    let bindings: Vec<(String, Vec<usize>)> = bindings
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_vec()))
        .collect();
    let stats = simplify(&mut after, &bindings).unwrap_or_else(|e| panic!("{e}"));
    verify(&after).unwrap_or_else(|e| panic!("result does not verify: {e:?}\n{after}"));
    assert_eq!(stats.non_static, 0, "{stats}\n{after}");
    assert!(stats.skipped.is_empty(), "{stats}");
    let feed = inputs(&after);
    let expected = mlc_interp::run(&before, &feed).unwrap_or_else(|e| panic!("start: {e}"));
    let got = mlc_interp::run(&after, &feed).unwrap_or_else(|e| panic!("result: {e}"));
    assert_eq!(got, expected, "outputs differ");
    format!(
        "# ops {} -> {}, folded {}, sweeps {}\n{}",
        stats.nodes_before,
        stats.nodes_after,
        stats.folded,
        stats.iterations,
        print_graph(&after)
    )
}

/// `Shape -> Gather -> Unsqueeze -> Concat -> Reshape`: splitting attention heads.
#[test]
fn head_split_reshape() {
    let src = r#"graph (%0: f32[batch,seq,8] "x") -> (%12 "y") {
  @c0 = const i64[] [0]
  %1 = constant @c0 : i64[]
  @c1 = const i64[] [1]
  %2 = constant @c1 : i64[]
  @c2 = const i64[2] [2, 4]
  %3 = constant @c2 : i64[2]
  %4 = movement.shape {"start":0,"end":3} (%0) : i64[3]
  %5 = movement.gather {"axis":0} (%4, %1) : i64[]
  %6 = movement.gather {"axis":0} (%4, %2) : i64[]
  %7 = movement.unsqueeze {"axes":[0]} (%5) : i64[1]
  %8 = movement.unsqueeze {"axes":[0]} (%6) : i64[1]
  %9 = movement.concat {"axis":0} (%7, %8, %3) : i64[4]
  %10 = movement.reshape {"shape":null,"allowzero":false} (%0, %9) : f32[?,?,?,?]
  %11 = movement.transpose {"perm":[0,2,1,3]} (%10) : f32[?,?,?,?]
  %12 = ew.relu(%11) : f32[?,?,?,?]
}
"#;
    insta::assert_snapshot!(check(src, &[("x", &[1, 3, 8])]));
}

/// Position ids from `Range` over the sequence length, an additive attention mask built with
/// `Equal`/`Where`/`Expand` to a shape computed in-graph, and `CumSum` positions from the mask.
#[test]
fn positions_and_attention_mask() {
    let src = r#"graph (%0: i64[batch,seq] "input_ids", %1: i64[batch,seq] "attention_mask") -> (%11 "position_ids", %19 "bias", %20 "positions") {
  @c0 = const i64[] [0]
  %2 = constant @c0 : i64[]
  @c1 = const i64[] [1]
  %3 = constant @c1 : i64[]
  @c2 = const f32[] [-inf]
  %4 = constant @c2 : f32[]
  @c3 = const f32[] [0.0]
  %5 = constant @c3 : f32[]
  @c4 = const i64[1] [1]
  %6 = constant @c4 : i64[1]
  %7 = movement.shape {"start":0,"end":2} (%0) : i64[2]
  %8 = movement.gather {"axis":0} (%7, %3) : i64[]
  %9 = movement.range(%2, %8, %3) : i64[?]
  %10 = movement.unsqueeze {"axes":[0]} (%9) : i64[1,?]
  %11 = movement.expand {"shape":null} (%10, %7) : i64[?,?]
  %12 = ew.equal(%1, %2) : bool[batch,seq]
  %13 = ew.where(%12, %4, %5) : f32[batch,seq]
  %14 = movement.unsqueeze {"axes":[1,2]} (%13) : f32[batch,1,1,seq]
  %15 = movement.gather {"axis":0} (%7, %2) : i64[]
  %16 = movement.unsqueeze {"axes":[0]} (%15) : i64[1]
  %17 = movement.unsqueeze {"axes":[0]} (%8) : i64[1]
  %18 = movement.concat {"axis":0} (%16, %6, %17, %17) : i64[4]
  %19 = movement.expand {"shape":null} (%14, %18) : f32[?,?,?,?]
  %20 = reduce.cum_sum {"axis":1,"exclusive":false,"reverse":false} (%1) : i64[?,?]
}
"#;
    insta::assert_snapshot!(check(
        src,
        &[("input_ids", &[1, 4]), ("attention_mask", &[1, 4])]
    ));
}
