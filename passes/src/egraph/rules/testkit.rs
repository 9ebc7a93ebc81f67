//! The soundness check every rule's tests use: a text graph, bound to several input shapes,
//! optimized, and evaluated before and after by the reference interpreter on random inputs.

use crate::egraph::{NodeRule, Options, optimize_with, rules};
use crate::{FoldPolicy, Options as SimplifyOptions, simplify_with};
use mlc_ir::{Graph, Tensor, parse_graph};

/// Checks `rules` (by name) on `src` for every set of input shapes in `shapes`: each named rule
/// applies at least once for each, the result verifies, and it computes what `src` computes.
/// Returns the optimized graphs.
pub fn check(names: &[&str], src: &str, shapes: &[&[&[usize]]]) -> Vec<Graph> {
    let chosen: Vec<NodeRule> = rules::all()
        .into_iter()
        .filter(|r| names.contains(&r.name))
        .collect();
    assert_eq!(chosen.len(), names.len(), "unknown rule among {names:?}");
    run(&chosen, names, src, shapes, 1e-6)
}

/// Like [`check`], with outputs agreeing within `atol + 1e-5·|x|`: for rules whose results
/// may differ by more than float rounding near zero, or by one quantum where a `quantize`
/// rounds a slightly different value to the other neighbour.
pub fn check_with_tolerance(
    names: &[&str],
    src: &str,
    shapes: &[&[&[usize]]],
    atol: f64,
) -> Vec<Graph> {
    let chosen: Vec<NodeRule> = rules::all()
        .into_iter()
        .filter(|r| names.contains(&r.name))
        .collect();
    assert_eq!(chosen.len(), names.len(), "unknown rule among {names:?}");
    run(&chosen, names, src, shapes, atol)
}

/// Like [`check`] with every rule, none required to apply.
pub fn check_all(src: &str, shapes: &[&[&[usize]]]) -> Vec<Graph> {
    run(&rules::all(), &[], src, shapes, 1e-6)
}

fn run(
    rules: &[NodeRule],
    must_apply: &[&str],
    src: &str,
    shapes: &[&[&[usize]]],
    atol: f64,
) -> Vec<Graph> {
    let parsed = parse_graph(src).unwrap_or_else(|e| panic!("{e}\n{src}"));
    let mut out = vec![];
    for (case, dims) in shapes.iter().enumerate() {
        let mut g = parsed.clone();
        let bindings: Vec<(String, Vec<usize>)> = g
            .inputs
            .iter()
            .zip(dims.iter())
            .map(|(p, d)| (p.name.clone(), d.to_vec()))
            .collect();
        // Bind and refine types but fold nothing, so that rules see the graph as written.
        let no_fold = SimplifyOptions {
            fold: FoldPolicy {
                max_elements: 0,
                ..FoldPolicy::default()
            },
            ..SimplifyOptions::default()
        };
        simplify_with(&mut g, &bindings, &no_fold).unwrap_or_else(|e| panic!("{e}"));
        let (opt, report) = optimize_with(g.clone(), rules, &Options::default())
            .unwrap_or_else(|e| panic!("{e}\n{g}"));
        for name in must_apply {
            assert!(
                report.applied.contains_key(*name),
                "rule {name} did not apply to {dims:?}:\n{g}\n{report}"
            );
        }
        let inputs: Vec<(String, Tensor)> = g
            .inputs
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), random(g.ty(p.value), case * 7919 + i)))
            .collect();
        let want = mlc_interp::run(&g, &inputs).unwrap_or_else(|e| panic!("before: {e}\n{g}"));
        let got = mlc_interp::run(&opt, &inputs).unwrap_or_else(|e| panic!("after: {e}\n{opt}"));
        assert_eq!(want.len(), got.len());
        for (k, (w, o)) in want.iter().zip(&got).enumerate() {
            assert_eq!(w.shape(), o.shape(), "output {k}");
            assert_eq!(w.dtype(), o.dtype(), "output {k}");
            let (w, o) = (
                w.to_f64_vec().expect("numeric"),
                o.to_f64_vec().expect("numeric"),
            );
            for (a, b) in w.iter().zip(&o) {
                let close = (a.is_nan() && b.is_nan()) || (a - b).abs() <= atol + 1e-5 * a.abs();
                assert!(
                    close,
                    "output {k}: {a} vs {b} for {dims:?}\nbefore:\n{g}\nafter:\n{opt}"
                );
            }
        }
        out.push(opt);
    }
    out
}

/// Deterministic pseudo-random values in [-2, 2), converted to the type's dtype.
fn random(ty: &mlc_ir::TensorType, seed: usize) -> Tensor {
    let shape = ty.static_shape().expect("bound inputs are static");
    let n: usize = shape.iter().product();
    let mut s = (seed as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    let t = Tensor::from_vec(&shape, v).expect("n elements");
    t.cast(ty.dtype).expect("numeric dtype")
}
