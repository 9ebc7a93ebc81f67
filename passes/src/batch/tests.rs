use super::*;
use mlc_ir::{Tensor, parse_graph};

/// Parses `src` (inputs `f32[b,...]` with a symbolic batch `b`), binds `b` to 1 and checks.
fn checked(src: &str) -> Result<(), NotSeparable> {
    let mut g = parse_graph(src).expect("parses");
    let bindings: Vec<(String, Vec<usize>)> = g
        .inputs
        .iter()
        .map(|p| {
            let dims = g
                .ty(p.value)
                .shape
                .iter()
                .map(|d| d.known().unwrap_or(1))
                .collect();
            (p.name.clone(), dims)
        })
        .collect();
    crate::simplify(&mut g, &bindings).expect("simplifies");
    let batched: Vec<bool> = vec![true; g.inputs.len()];
    check(&g, &batched)
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(shape, v).expect("fills the shape")
}

/// The soundness of a separable verdict: the graph on a batch of 3 equals the batch-1 graph on
/// each slice, concatenated (the interpreter on both sides).
fn assert_slices_agree(src: &str, rest: &[usize]) {
    let g = parse_graph(src).expect("parses");
    let bind = |b: usize| {
        let mut g = g.clone();
        let dims: Vec<usize> = std::iter::once(b).chain(rest.iter().copied()).collect();
        crate::simplify(&mut g, &[("x".into(), dims)]).expect("simplifies");
        g
    };
    let (one, three) = (bind(1), bind(3));
    let whole_shape: Vec<usize> = std::iter::once(3).chain(rest.iter().copied()).collect();
    let x = random(&whole_shape, 7);
    let whole = mlc_interp::run(&three, &[("x".into(), x.clone())]).expect("runs");
    let xs = x.view::<f32>().expect("f32");
    for i in 0..3 {
        let slice = xs
            .slice_axis(ndarray::Axis(0), ndarray::Slice::from(i..i + 1))
            .to_owned();
        let part = mlc_interp::run(&one, &[("x".into(), Tensor::F32(slice))]).expect("runs");
        for (w, p) in whole.iter().zip(&part) {
            let w = w.view::<f32>().expect("f32");
            let w = w.slice_axis(ndarray::Axis(0), ndarray::Slice::from(i..i + 1));
            let p = p.view::<f32>().expect("f32");
            for (a, b) in w.iter().zip(p.iter()) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "slice {i}: {a} vs {b}"
                );
            }
        }
    }
}

const SEPARABLE: &str = r#"graph (%0: f32[b,4,8] "x") -> (%7 "y") {
  @c0 = const f32[8,8] [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9, 1.0, -1.1, 1.2, 1.3, -1.4, 1.5, 1.6, -0.1, 0.2, -0.3, 0.4, 0.5, -0.6, 0.7, 0.8, -0.9, 1.0, 1.1, -1.2, 1.3, 1.4, -1.5, 1.6, 0.1, 0.2, 0.3, -0.4, 0.5, 0.6, -0.7, 0.8, 0.9, -1.0, 1.1, 1.2, -1.3, 1.4, 1.5, -1.6, 0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9, 1.0, -1.1, 1.2, 1.3, -1.4, 1.5, 1.6]
  %1 = constant @c0 : f32[8,8]
  %2 = nn.matmul(%0, %1) : f32[b,4,8]
  %3 = reduce.softmax {"axis":2} (%2) : f32[b,4,8]
  %4 = movement.transpose {"perm":[0,2,1]} (%3) : f32[b,8,4]
  %5 = reduce.sum {"axes":[2],"keepdims":false} (%4) : f32[b,8]
  %6 = ew.mul(%5, %5) : f32[b,8]
  %7 = movement.reshape {"shape":[0,2,4],"allowzero":false} (%6, _) : f32[b,2,4]
}
"#;

#[test]
fn matmul_softmax_transpose_reduce_reshape_is_separable() {
    assert_eq!(checked(SEPARABLE), Ok(()));
    assert_slices_agree(SEPARABLE, &[4, 8]);
}

fn reason(src: &str) -> String {
    match checked(src) {
        Ok(()) => panic!("separable: {src}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_reduction_over_the_batch_mixes_it() {
    let src = r#"graph (%0: f32[b,4] "x") -> (%2 "y") {
  %1 = reduce.sum {"axes":[0],"keepdims":true} (%0) : f32[1,4]
  %2 = ew.add(%0, %1) : f32[b,4]
}
"#;
    let r = reason(src);
    assert!(r.contains("reduce.sum") && r.contains("batch"), "{r}");
}

#[test]
fn a_concat_along_the_batch_mixes_it() {
    let src = r#"graph (%0: f32[b,4] "x") -> (%1 "y") {
  %1 = movement.concat {"axis":0} (%0, %0) : f32[?,4]
}
"#;
    assert!(reason(src).contains("concatenates along the batch"));
}

#[test]
fn a_reshape_that_merges_the_batch_mixes_it() {
    let src = r#"graph (%0: f32[b,4,2] "x") -> (%1 "y") {
  %1 = movement.reshape {"shape":[-1,2],"allowzero":false} (%0, _) : f32[?,2]
}
"#;
    assert!(reason(src).contains("reshapes across the batch"));
}

#[test]
fn dynamic_quantization_takes_its_range_over_the_whole_batch() {
    let src = r#"graph (%0: f32[b,3] "x") -> (%1 "y") {
  %1, %2, %3 = quant.dynamic_quantize(%0) : u8[b,3], f32[], u8[]
}
"#;
    assert!(reason(src).contains("whole batch"));
}

#[test]
fn a_matmul_contracting_over_the_batch_mixes_it() {
    let src = r#"graph (%0: f32[b,4] "x") -> (%2 "y") {
  %1 = movement.transpose {"perm":[1,0]} (%0) : f32[4,b]
  %2 = nn.matmul(%1, %0) : f32[4,4]
}
"#;
    assert!(reason(src).contains("contracts over the batch"));
}

#[test]
fn an_output_without_the_batch_is_refused() {
    let src = r#"graph (%0: f32[b,4] "x") -> (%0 "y", %1 "z") {
  @c0 = const f32[] [2]
  %1 = constant @c0 : f32[]
}
"#;
    assert!(reason(src).contains("output \"z\""));
}

#[test]
fn an_independent_operand_that_varies_along_the_batch_is_refused() {
    // At batch 2, a constant [2,4] added to the batch would differ between slices.
    let src = r#"graph (%0: f32[b,4] "x") -> (%2 "y") {
  @c0 = const f32[2,4] [1, 2, 3, 4, 5, 6, 7, 8]
  %1 = constant @c0 : f32[2,4]
  %2 = ew.add(%0, %1) : f32[b,4]
}
"#;
    let mut g = parse_graph(src).expect("parses");
    crate::simplify(&mut g, &[("x".into(), vec![2, 4])]).expect("simplifies");
    let err = check(&g, &[true]).unwrap_err();
    assert!(err.reason.contains("differs along it"), "{err}");
}
