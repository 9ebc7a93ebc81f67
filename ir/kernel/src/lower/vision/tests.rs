//! The vision ops, grid_sample, reverse_sequence and tensor_scatter, lowered and evaluated
//! against the interpreter on pseudo-random inputs of odd shapes, over every mode.
//!
//! Unlike the family-wide tests in `lower/tests.rs`, inputs are given per case: boxes, batch
//! indices, unpooling indices, sequence lengths and write positions must be valid data.

use crate::{lower_graph, print_program, run_program};
use mlc_ir::{DType, Tensor, parse_graph};

/// A deterministic stream of floats in `[0, 1)`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as f64) / (1u64 << 31) as f64
    }
}

/// `f32` values uniform in `[lo, hi)`.
fn floats(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
    let mut r = Rng(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (lo + (hi - lo) * r.next()) as f32).collect();
    Tensor::from_vec(shape, v).expect("test tensor")
}

fn ints(shape: &[usize], v: Vec<i64>) -> Tensor {
    Tensor::from_vec(shape, v).expect("test tensor")
}

/// Lowers `src` (which must lower), runs it and the interpreter on `inputs`, and compares
/// within `tol` relative to the output's largest magnitude.
fn check(src: &str, inputs: &[Tensor], tol: f64) {
    let g = parse_graph(src).unwrap_or_else(|e| panic!("bad test graph: {e}\n{src}"));
    let named: Vec<(String, Tensor)> = g
        .inputs
        .iter()
        .zip(inputs)
        .map(|(p, t)| (p.name.clone(), t.clone()))
        .collect();
    let want = mlc_interp::run(&g, &named).unwrap_or_else(|e| panic!("interpreter: {e}\n{src}"));
    let prog = lower_graph(&g).unwrap_or_else(|e| panic!("lowering failed: {e}\n{src}"));
    let got = run_program(&prog, inputs)
        .unwrap_or_else(|e| panic!("evaluation failed: {e}\n{}", print_program(&prog)));
    assert_eq!(want.len(), got.len());
    for (i, (w, g_)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w.dtype(), g_.dtype(), "output {i} dtype");
        assert_eq!(w.shape(), g_.shape(), "output {i} shape");
        let w = w
            .cast(DType::F64)
            .and_then(|t| t.to_f64_vec())
            .expect("f64");
        let g_ = g_
            .cast(DType::F64)
            .and_then(|t| t.to_f64_vec())
            .expect("f64");
        let range = w.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
        for (j, (a, b)) in w.iter().zip(&g_).enumerate() {
            let ok = (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * range;
            assert!(
                ok,
                "output {i} element {j}: interpreter {a}, kernel IR {b}\n{src}\n{}",
                print_program(&prog)
            );
        }
    }
}

fn dims(d: &[usize]) -> String {
    d.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn grid_sample_every_mode_padding_and_rank() {
    // (input, grid): 1-D, 2-D with a batch and odd sizes, a unit axis, and a volume.
    let shapes: [(&[usize], &[usize]); 4] = [
        (&[2, 3, 5, 7], &[2, 4, 3, 2]),
        (&[1, 2, 1, 6], &[1, 3, 5, 2]),
        (&[2, 1, 9], &[2, 7, 1]),
        (&[1, 2, 3, 4, 5], &[1, 2, 3, 2, 3]),
    ];
    for (case, (xs, gs)) in shapes.iter().enumerate() {
        let k = xs.len() - 2;
        let mut out = xs[..2].to_vec();
        out.extend_from_slice(&gs[1..=k]);
        for mode in ["nearest", "linear", "cubic"] {
            for padding in ["zeros", "border", "reflection"] {
                for align in [false, true] {
                    let src = format!(
                        r#"graph (%0: f32[{}] "x", %1: f32[{}] "g") -> (%2 "y") {{
  %2 = nn.grid_sample {{"mode":"{mode}","padding":"{padding}","align_corners":{align}}} (%0, %1) : f32[{}]
}}"#,
                        dims(xs),
                        dims(gs),
                        dims(&out)
                    );
                    // Grid points well past [-1, 1] exercise the padding (and reflection's
                    // multiple folds).
                    let x = floats(xs, 11 + case as u64, -2.0, 2.0);
                    let g = floats(gs, 23 + case as u64, -4.5, 4.5);
                    check(&src, &[x, g], 1e-6);
                }
            }
        }
    }
}

#[test]
fn grid_sample_f64_grid() {
    let src = r#"graph (%0: f64[1,2,4,5] "x", %1: f64[1,3,3,2] "g") -> (%2 "y") {
  %2 = nn.grid_sample {"mode":"cubic","padding":"reflection","align_corners":false} (%0, %1) : f64[1,2,3,3]
}"#;
    let x = floats(&[1, 2, 4, 5], 5, -1.0, 1.0)
        .cast(DType::F64)
        .expect("f64");
    let g = floats(&[1, 3, 3, 2], 6, -1.5, 1.5)
        .cast(DType::F64)
        .expect("f64");
    check(src, &[x, g], 1e-12);
}

#[test]
fn affine_grid_planar_and_volumetric() {
    for align in [false, true] {
        for (theta, size, out) in [
            ("f32[2,2,3]", "[2,3,4,5]", "f32[2,4,5,2]"),
            ("f32[1,2,3]", "[1,1,1,3]", "f32[1,1,3,2]"),
            ("f32[2,3,4]", "[2,1,3,2,4]", "f32[2,3,2,4,3]"),
        ] {
            let src = format!(
                r#"graph (%0: {theta} "t") -> (%1 "y") {{
  %1 = vision.affine_grid {{"align_corners":{align},"size":{size}}} (%0) : {out}
}}"#
            );
            let shape: Vec<usize> = theta[4..theta.len() - 1]
                .split(',')
                .map(|d| d.parse().expect("dim"))
                .collect();
            check(&src, &[floats(&shape, 3, -1.5, 1.5)], 1e-6);
        }
    }
}

#[test]
fn roi_align_modes_scales_and_sampling() {
    // RoIs of every kind: inside, partly and wholly outside, degenerate, reversed.
    let rois = [
        0.5f32, 1.0, 5.5, 4.0, //
        -2.0, -1.0, 3.0, 9.0, //
        6.0, 5.0, 6.2, 5.1, //
        20.0, 20.0, 30.0, 25.0, //
        4.0, 4.0, 1.0, 2.0,
    ];
    let rois = Tensor::from_vec(&[5, 4], rois.to_vec()).expect("rois");
    let batch = ints(&[5], vec![1, 0, 1, 0, 1]);
    for mode in ["avg", "max"] {
        for half_pixel in [false, true] {
            for (ratio, scale) in [(0, 1.0), (2, 0.5), (1, 1.5)] {
                let src = format!(
                    r#"graph (%0: f32[2,3,6,7] "x", %1: f32[5,4] "r", %2: i64[5] "b") -> (%3 "y") {{
  %3 = vision.roi_align {{"mode":"{mode}","output_height":3,"output_width":2,"sampling_ratio":{ratio},"spatial_scale":{scale},"half_pixel":{half_pixel}}} (%0, %1, %2) : f32[5,3,3,2]
}}"#
                );
                let x = floats(&[2, 3, 6, 7], 9, -2.0, 2.0);
                check(&src, &[x, rois.clone(), batch.clone()], 1e-6);
            }
        }
    }
}

#[test]
fn col2im_strides_pads_dilations_and_ranks() {
    // (image, block, dilations, pads, strides, input shape)
    let cases: [(&[usize], &[usize], &[usize], &[usize], &[usize], [usize; 3]); 5] = [
        (&[5, 5], &[2, 2], &[], &[], &[], [2, 12, 16]),
        (
            &[5, 6],
            &[3, 2],
            &[1, 2],
            &[1, 0, 2, 1],
            &[2, 1],
            [1, 12, 15],
        ),
        (&[7], &[3], &[2], &[1, 1], &[2], [2, 6, 3]),
        (&[3, 4, 3], &[2, 2, 2], &[], &[], &[], [1, 16, 12]),
        (&[4, 5], &[1, 3], &[], &[0, 2, 0, 2], &[3, 2], [1, 6, 8]),
    ];
    for (image, block, dil, pads, strides, xs) in cases {
        let c = xs[1] / block.iter().product::<usize>();
        let mut out = vec![xs[0], c];
        out.extend_from_slice(image);
        let src = format!(
            r#"graph (%0: f32[{}] "x") -> (%1 "y") {{
  %1 = vision.col2_im {{"image_shape":[{}],"block_shape":[{}],"dilations":[{}],"pads":[{}],"strides":[{}]}} (%0) : f32[{}]
}}"#,
            dims(&xs),
            dims(image),
            dims(block),
            dims(dil),
            dims(pads),
            dims(strides),
            dims(&out)
        );
        check(&src, &[floats(&xs, 4, -2.0, 2.0)], 1e-6);
        // The image and block shapes as run-time inputs (the output's type still static).
        let src = format!(
            r#"graph (%0: f32[{}] "x", %1: i64[{n}] "i", %2: i64[{n}] "b") -> (%3 "y") {{
  %3 = vision.col2_im {{"image_shape":null,"block_shape":null,"dilations":[{}],"pads":[{}],"strides":[{}]}} (%0, %1, %2) : f32[{}]
}}"#,
            dims(&xs),
            dims(dil),
            dims(pads),
            dims(strides),
            dims(&out),
            n = image.len()
        );
        let shape = |v: &[usize]| ints(&[v.len()], v.iter().map(|&d| d as i64).collect());
        let inputs = [floats(&xs, 4, -2.0, 2.0), shape(image), shape(block)];
        check(&src, &inputs, 1e-6);
    }
}

#[test]
fn max_unpool_default_and_larger_output() {
    // Indices with duplicates (a later one wins) into the default 2x3x5x5 shape.
    let mut r = Rng(77);
    let idx: Vec<i64> = (0..2 * 3 * 3 * 3)
        .map(|_| (r.next() * 150.0) as i64)
        .collect();
    let x = floats(&[2, 3, 3, 3], 8, -2.0, 2.0);
    for out in ["[2,3,5,5]", "[2,3,6,7]"] {
        let src = format!(
            r#"graph (%0: f32[2,3,3,3] "x", %1: i64[2,3,3,3] "i") -> (%2 "y") {{
  %2 = vision.max_unpool {{"kernel_shape":[3,3],"strides":[2,2],"pads":[1,1,1,1],"output_shape":{out}}} (%0, %1, _) : f32{out}
}}"#
        );
        check(&src, &[x.clone(), ints(&[2, 3, 3, 3], idx.clone())], 0.0);
    }
}

#[test]
fn deform_conv_groups_masks_and_ranks() {
    // (x, w, offset groups, groups, strides, dilations, pads, mask, bias)
    type Case = (
        [usize; 4],
        [usize; 4],
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 4],
        bool,
        bool,
    );
    let cases: [Case; 3] = [
        (
            [1, 2, 5, 6],
            [3, 2, 2, 3],
            1,
            1,
            [1, 1],
            [1, 1],
            [0, 1, 1, 0],
            false,
            false,
        ),
        (
            [2, 4, 6, 5],
            [4, 2, 3, 2],
            2,
            2,
            [2, 1],
            [1, 2],
            [1, 1, 1, 1],
            true,
            true,
        ),
        (
            [1, 4, 4, 4],
            [2, 4, 1, 1],
            4,
            1,
            [1, 1],
            [1, 1],
            [0, 0, 0, 0],
            true,
            false,
        ),
    ];
    for (xs, ws, og, g, st, dil, pads, mask, bias) in cases {
        let mut os = [xs[0], og * ws[2] * ws[3] * 2, 0, 0];
        for i in 0..2 {
            let span = dil[i] * (ws[i + 2] - 1) + 1;
            os[i + 2] = (xs[i + 2] + pads[i] + pads[i + 2] - span) / st[i] + 1;
        }
        let ms = [xs[0], og * ws[2] * ws[3], os[2], os[3]];
        let out = [xs[0], ws[0], os[2], os[3]];
        let src = format!(
            r#"graph (%0: f32[{}] "x", %1: f32[{}] "w", %2: f32[{}] "o", %3: f32[{}] "b", %4: f32[{}] "m") -> (%5 "y") {{
  %5 = vision.deform_conv {{"strides":[{}],"dilations":[{}],"pads":[{}],"group":{g},"offset_group":{og}}} (%0, %1, %2, {}, {}) : f32[{}]
}}"#,
            dims(&xs),
            dims(&ws),
            dims(&os),
            ws[0],
            dims(&ms),
            dims(&st),
            dims(&dil),
            dims(&pads),
            if bias { "%3" } else { "_" },
            if mask { "%4" } else { "_" },
            dims(&out)
        );
        let inputs = [
            floats(&xs, 1, -2.0, 2.0),
            floats(&ws, 2, -1.0, 1.0),
            // Offsets up to ±3 pixels push taps past the border.
            floats(&os, 3, -3.0, 3.0),
            floats(&[ws[0]], 4, -1.0, 1.0),
            floats(&ms, 5, 0.0, 1.0),
        ];
        check(&src, &inputs, 1e-6);
    }
    // 1-D.
    let src = r#"graph (%0: f32[2,2,7] "x", %1: f32[3,2,3] "w", %2: f32[2,3,3] "o") -> (%3 "y") {
  %3 = vision.deform_conv {"strides":[2],"dilations":[1],"pads":[1,0],"group":1,"offset_group":1} (%0, %1, %2, _, _) : f32[2,3,3]
}"#;
    let inputs = [
        floats(&[2, 2, 7], 6, -2.0, 2.0),
        floats(&[3, 2, 3], 7, -1.0, 1.0),
        floats(&[2, 3, 3], 8, -2.0, 2.0),
    ];
    check(src, &inputs, 1e-6);
}

#[test]
fn reverse_sequence_both_layouts() {
    // Lengths of 0, 1, partial, full and past the end.
    let src = r#"graph (%0: f32[4,5,3] "x", %1: i64[5] "l") -> (%2 "y") {
  %2 = movement.reverse_sequence {"batch_axis":1,"time_axis":0} (%0, %1) : f32[4,5,3]
}"#;
    let x = floats(&[4, 5, 3], 1, -2.0, 2.0);
    check(src, &[x, ints(&[5], vec![0, 1, 3, 4, 9])], 0.0);
    let src = r#"graph (%0: f32[3,2,6] "x", %1: i32[3] "l") -> (%2 "y") {
  %2 = movement.reverse_sequence {"batch_axis":0,"time_axis":2} (%0, %1) : f32[3,2,6]
}"#;
    let l = ints(&[3], vec![6, 2, -1]).cast(DType::I32).expect("i32");
    check(src, &[floats(&[3, 2, 6], 2, -2.0, 2.0), l], 0.0);
}

#[test]
fn tensor_scatter_linear_and_circular() {
    let cases: [(&[usize], &[usize], usize, Option<Vec<i64>>); 4] = [
        (&[2, 3, 6, 4], &[2, 3, 2, 4], 2, Some(vec![1, 4])),
        (&[2, 3, 6, 4], &[2, 3, 3, 4], 2, Some(vec![5, 0])),
        (&[3, 5, 2], &[3, 2, 2], 1, None),
        (&[4, 3], &[2, 3], 0, Some(vec![3, 0, 0, 0])),
    ];
    for (past, upd, axis, write) in cases {
        for circular in [false, true] {
            let w = write.clone();
            // Positions past the axis are an error unless the write wraps.
            let fits = w.as_ref().is_none_or(|w| {
                let lim = if axis == 0 { 1 } else { w.len() };
                w[..lim]
                    .iter()
                    .all(|&s| s as usize + upd[axis] <= past[axis])
            });
            if !circular && !fits {
                continue;
            }
            let (wdecl, warg, y) = match &w {
                Some(w) => (format!(r#", %2: i64[{}] "w""#, w.len()), "%2", "%3"),
                None => (String::new(), "_", "%2"),
            };
            let src = format!(
                r#"graph (%0: f32[{}] "p", %1: f32[{}] "u"{wdecl}) -> ({y} "y") {{
  {y} = movement.tensor_scatter {{"axis":{axis},"circular":{circular}}} (%0, %1, {warg}) : f32[{}]
}}"#,
                dims(past),
                dims(upd),
                dims(past)
            );
            let mut inputs = vec![floats(past, 1, -2.0, 2.0), floats(upd, 2, 3.0, 4.0)];
            if let Some(w) = w {
                inputs.push(ints(&[w.len()], w));
            }
            check(&src, &inputs, 0.0);
        }
    }
}

#[test]
fn max_roi_pool_rounding_and_empty_bins() {
    // Halves after scaling (5·0.5 = 2.5, -1·0.5 = -0.5) round away from zero; a RoI past the
    // image has empty bins.
    let rois = [
        1.0f32, 5.0, 3.0, 11.0, 9.0, //
        0.0, -1.0, -3.0, 4.0, 2.0, //
        1.0, 0.0, 0.0, 0.0, 0.0, //
        0.0, 30.0, 30.0, 40.0, 35.0, //
        1.0, 9.0, 7.0, 2.0, 3.0,
    ];
    let rois = Tensor::from_vec(&[5, 5], rois.to_vec()).expect("rois");
    for (scale, pooled) in [(0.5, [2, 3]), (1.0, [3, 2]), (0.25, [1, 1])] {
        let src = format!(
            r#"graph (%0: f32[2,3,6,7] "x", %1: f32[5,5] "r") -> (%2 "y") {{
  %2 = vision.max_roi_pool {{"pooled_shape":[{}],"spatial_scale":{scale}}} (%0, %1) : f32[5,3,{}]
}}"#,
            dims(&pooled),
            dims(&pooled)
        );
        check(
            &src,
            &[floats(&[2, 3, 6, 7], 12, -2.0, 2.0), rois.clone()],
            0.0,
        );
    }
}
