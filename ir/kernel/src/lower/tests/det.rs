//! Lowering of `nn.det` against the interpreter: batched, single, 1x1, f64, and matrices
//! that need row swaps or are singular (the node tests have only two small f32 cases).

use super::{check, check_with};
use mlc_ir::Tensor;

#[test]
fn det_random_matrices() {
    for (shape, ty) in [
        ("[2,3,5,5]", "f32"),
        ("[4,4]", "f32"),
        ("[3,1,1]", "f64"),
        ("[2,7,7]", "f64"),
        ("[6,2,2]", "f32"),
    ] {
        let dims: Vec<&str> = shape.trim_matches(['[', ']']).split(',').collect();
        let out = format!("[{}]", dims[..dims.len() - 2].join(","));
        let src = format!(
            r#"graph (%0: {ty}{shape} "x") -> (%1 "d") {{
  %1 = nn.det (%0) : {ty}{out}
}}"#
        );
        check(&src, 1e-9);
    }
}

#[test]
fn det_pivoting_and_singular() {
    let src = r#"graph (%0: f64[4,3,3] "x") -> (%1 "d") {
  %1 = nn.det (%0) : f64[4]
}"#;
    #[rustfmt::skip]
    let v = vec![
        // zero leading entries: two row swaps
        0.0, 2.0, 1.0, 0.0, 0.0, 3.0, 4.0, 1.0, 2.0,
        // rank 2
        1.0, 2.0, 3.0, 2.0, 4.0, 6.0, 1.0, 0.0, 1.0,
        // all zero
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        // ties in magnitude: the first row of the largest one is the pivot
        -3.0, 1.0, 2.0, 3.0, 5.0, 1.0, 1.0, 1.0, 4.0,
    ];
    let x = Tensor::from_vec(&[4, 3, 3], v).unwrap();
    check_with(src, &[(0, x)], 0.0);
}
