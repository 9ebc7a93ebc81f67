//! The vision ops, grid_sample, reverse_sequence and tensor_scatter compiled for the CPU,
//! against the interpreter, on shapes and attribute combinations the ONNX node tests do not
//! have (`ir/kernel`'s tests check the same lowering with the kernel-IR evaluator).

use mlc_ir::{Tensor, parse_graph};
use mlc_tests::node::{Backend, run_graph};

/// `f32` values uniform in `[lo, hi)`, deterministic.
fn floats(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
    let mut s = seed;
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (lo + (hi - lo) * ((s >> 33) as f64 / (1u64 << 31) as f64)) as f32
        })
        .collect();
    Tensor::from_vec(shape, v).expect("test tensor")
}

fn ints(v: &[i64]) -> Tensor {
    Tensor::from_vec(&[v.len()], v.to_vec()).expect("test tensor")
}

/// Runs `src` compiled for the CPU and in the interpreter; the outputs must agree to `tol`
/// relative to the output's largest magnitude.
fn check(src: &str, inputs: Vec<Tensor>, tol: f64) {
    let g = parse_graph(src).unwrap_or_else(|e| panic!("bad test graph: {e}\n{src}"));
    let named: Vec<(String, Tensor)> = g
        .inputs
        .iter()
        .map(|p| p.name.clone())
        .zip(inputs)
        .collect();
    let want = run_graph(&g, &named, Backend::Interp).expect("interpreter");
    let got = run_graph(&g, &named, Backend::Cpu).unwrap_or_else(|e| panic!("{e}\n{src}"));
    for (w, c) in want.iter().zip(&got) {
        assert_eq!(w.shape(), c.shape());
        let (w, c) = (w.to_f64_vec().expect("f64"), c.to_f64_vec().expect("f64"));
        let range = w.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
        for (j, (a, b)) in w.iter().zip(&c).enumerate() {
            assert!(
                (a - b).abs() <= tol * range,
                "element {j}: interpreter {a}, cpu {b}\n{src}"
            );
        }
    }
}

#[test]
fn grid_sample_on_the_cpu() {
    for mode in ["nearest", "linear", "cubic"] {
        for padding in ["zeros", "border", "reflection"] {
            for align in [false, true] {
                let src = format!(
                    r#"graph (%0: f32[2,3,5,7] "x", %1: f32[2,4,3,2] "g") -> (%2 "y") {{
  %2 = nn.grid_sample {{"mode":"{mode}","padding":"{padding}","align_corners":{align}}} (%0, %1) : f32[2,3,4,3]
}}"#
                );
                let x = floats(&[2, 3, 5, 7], 1, -2.0, 2.0);
                let g = floats(&[2, 4, 3, 2], 2, -4.5, 4.5);
                check(&src, vec![x, g], 1e-6);
            }
        }
    }
    // A volume, bicubic.
    let src = r#"graph (%0: f32[1,2,3,4,5] "x", %1: f32[1,2,3,2,3] "g") -> (%2 "y") {
  %2 = nn.grid_sample {"mode":"cubic","padding":"border","align_corners":false} (%0, %1) : f32[1,2,2,3,2]
}"#;
    let x = floats(&[1, 2, 3, 4, 5], 3, -2.0, 2.0);
    let g = floats(&[1, 2, 3, 2, 3], 4, -1.5, 1.5);
    check(src, vec![x, g], 1e-6);
}

#[test]
fn roi_ops_on_the_cpu() {
    let rois: Vec<f32> = vec![
        0.5, 1.0, 5.5, 4.0, -2.0, -1.0, 3.0, 9.0, 6.0, 5.0, 6.2, 5.1, 4.0, 4.0, 1.0, 2.0,
    ];
    let rois = Tensor::from_vec(&[4, 4], rois).expect("rois");
    for mode in ["avg", "max"] {
        for (ratio, half_pixel) in [(0, true), (2, false)] {
            let src = format!(
                r#"graph (%0: f32[2,3,6,7] "x", %1: f32[4,4] "r", %2: i64[4] "b") -> (%3 "y") {{
  %3 = vision.roi_align {{"mode":"{mode}","output_height":3,"output_width":2,"sampling_ratio":{ratio},"spatial_scale":0.75,"half_pixel":{half_pixel}}} (%0, %1, %2) : f32[4,3,3,2]
}}"#
            );
            let x = floats(&[2, 3, 6, 7], 5, -2.0, 2.0);
            check(&src, vec![x, rois.clone(), ints(&[1, 0, 1, 0])], 1e-6);
        }
    }
    let boxes: Vec<f32> = vec![
        1.0, 5.0, 3.0, 11.0, 9.0, 0.0, -1.0, -3.0, 4.0, 2.0, 0.0, 30.0, 30.0, 40.0, 35.0,
    ];
    let src = r#"graph (%0: f32[2,3,6,7] "x", %1: f32[3,5] "r") -> (%2 "y") {
  %2 = vision.max_roi_pool {"pooled_shape":[2,3],"spatial_scale":0.5} (%0, %1) : f32[3,3,2,3]
}"#;
    let x = floats(&[2, 3, 6, 7], 6, -2.0, 2.0);
    let r = Tensor::from_vec(&[3, 5], boxes).expect("rois");
    check(src, vec![x, r], 0.0);
}

#[test]
fn col2im_deform_conv_and_affine_grid_on_the_cpu() {
    let src = r#"graph (%0: f32[1,12,15] "x", %1: i64[2] "b") -> (%2 "y") {
  %2 = vision.col2_im {"image_shape":[5,6],"block_shape":null,"dilations":[1,2],"pads":[1,0,2,1],"strides":[2,1]} (%0, _, %1) : f32[1,2,5,6]
}"#;
    check(
        src,
        vec![floats(&[1, 12, 15], 7, -2.0, 2.0), ints(&[3, 2])],
        1e-6,
    );
    let src = r#"graph (%0: f32[2,4,6,5] "x", %1: f32[4,2,3,2] "w", %2: f32[2,24,3,5] "o", %3: f32[4] "b", %4: f32[2,12,3,5] "m") -> (%5 "y") {
  %5 = vision.deform_conv {"strides":[2,1],"dilations":[1,2],"pads":[1,1,1,1],"group":2,"offset_group":2} (%0, %1, %2, %3, %4) : f32[2,4,3,5]
}"#;
    let inputs = vec![
        floats(&[2, 4, 6, 5], 8, -2.0, 2.0),
        floats(&[4, 2, 3, 2], 9, -1.0, 1.0),
        floats(&[2, 24, 3, 5], 10, -3.0, 3.0),
        floats(&[4], 11, -1.0, 1.0),
        floats(&[2, 12, 3, 5], 12, 0.0, 1.0),
    ];
    check(src, inputs, 1e-6);
    let src = r#"graph (%0: f32[2,3,4] "t") -> (%1 "y") {
  %1 = vision.affine_grid {"align_corners":false,"size":[2,1,3,2,5]} (%0) : f32[2,3,2,5,3]
}"#;
    check(src, vec![floats(&[2, 3, 4], 13, -1.5, 1.5)], 1e-6);
}

#[test]
fn unpool_and_sequence_movement_on_the_cpu() {
    let idx: Vec<i64> = (0..54).map(|i| (i * 37 + 11) % 150).collect();
    let src = r#"graph (%0: f32[2,3,3,3] "x", %1: i64[2,3,3,3] "i") -> (%2 "y") {
  %2 = vision.max_unpool {"kernel_shape":[3,3],"strides":[2,2],"pads":[1,1,1,1],"output_shape":[2,3,6,7]} (%0, %1, _) : f32[2,3,6,7]
}"#;
    let i = Tensor::from_vec(&[2, 3, 3, 3], idx).expect("indices");
    check(src, vec![floats(&[2, 3, 3, 3], 14, -2.0, 2.0), i], 0.0);
    let src = r#"graph (%0: f32[4,5,3] "x", %1: i64[5] "l") -> (%2 "y") {
  %2 = movement.reverse_sequence {"batch_axis":1,"time_axis":0} (%0, %1) : f32[4,5,3]
}"#;
    let x = floats(&[4, 5, 3], 15, -2.0, 2.0);
    check(src, vec![x, ints(&[0, 1, 3, 4, 9])], 0.0);
    let src = r#"graph (%0: f32[2,3,6,4] "p", %1: f32[2,3,3,4] "u", %2: i64[2] "w") -> (%3 "y") {
  %3 = movement.tensor_scatter {"axis":2,"circular":true} (%0, %1, %2) : f32[2,3,6,4]
}"#;
    let (p, u) = (
        floats(&[2, 3, 6, 4], 16, -2.0, 2.0),
        floats(&[2, 3, 3, 4], 17, 3.0, 4.0),
    );
    check(src, vec![p, u, ints(&[5, 1])], 0.0);
}
