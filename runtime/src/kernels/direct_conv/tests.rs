//! The direct kernels against the convolution by its definition: random geometries (column
//! strides 1, 2 and 3 — the three ways a tap's vector is formed —, row strides, dilations,
//! pads past the kernel's reach, maps narrower than a vector and wider than several), 1–40
//! output channels (every tile height and its padding rows), a fill, strided output rows,
//! each epilogue part, 1–3 threads. Values are small integers, so the sums are exact in any
//! order and every comparison is bit for bit.

use super::*;
use crate::kernels::gemm::{Activation, TileHook};
use std::sync::Mutex;

use crate::testing::Rng;

/// A random geometry with at least one output position.
fn geometry(rng: &mut Rng) -> Im2col {
    loop {
        let (kh, kw) = (rng.range(1, 7), rng.range(1, 7));
        let (sh, sw) = (rng.range(1, 3), rng.range(1, 3));
        let (dh, dw) = (rng.range(1, 2), rng.range(1, 2));
        let (ih, iw) = (rng.range(1, 12), rng.range(1, 80));
        let (pt, pl, pb, pr) = (
            rng.range(0, 4),
            rng.range(0, 4),
            rng.range(0, 4),
            rng.range(0, 4),
        );
        let reach = |i: usize, p0: usize, p1: usize, k: usize, d: usize, s: usize| {
            (i + p0 + p1)
                .checked_sub((k - 1) * d + 1)
                .map(|x| x / s + 1)
        };
        if let (Some(oh), Some(ow)) = (reach(ih, pt, pb, kh, dh, sh), reach(iw, pl, pr, kw, dw, sw))
        {
            return Im2col {
                channels: rng.range(1, 4),
                ih,
                iw,
                oh,
                ow,
                kh,
                kw,
                sh,
                sw,
                dh,
                dw,
                pt,
                pl,
            };
        }
    }
}

/// `A·columns(image)` by the definition, in f64, `fill` in the padding.
fn reference(geo: &Im2col, m: usize, w: &[f32], image: &[f32], fill: f32) -> Vec<f64> {
    let (k, n) = geo.dims();
    let mut out = vec![0.0f64; m * n];
    for j in 0..n {
        let (oy, ox) = (j / geo.ow, j % geo.ow);
        for kk in 0..k {
            let (c, ky, kx) = (kk / (geo.kh * geo.kw), (kk / geo.kw) % geo.kh, kk % geo.kw);
            let iy = (oy * geo.sh + ky * geo.dh) as i64 - geo.pt as i64;
            let ix = (ox * geo.sw + kx * geo.dw) as i64 - geo.pl as i64;
            let inside = iy >= 0 && ix >= 0 && (iy as usize) < geo.ih && (ix as usize) < geo.iw;
            let x = if inside {
                image[(c * geo.ih + iy as usize) * geo.iw + ix as usize]
            } else {
                fill
            };
            for r in 0..m {
                out[r * n + j] += f64::from(w[r * k + kk]) * f64::from(x);
            }
        }
    }
    out
}

const ACTIVATIONS: [Activation; 5] = [
    Activation::None,
    Activation::Relu,
    Activation::Clip {
        min: -3.0,
        max: 5.0,
    },
    Activation::LeakyRelu { alpha: 0.25 },
    Activation::HardSwish,
];

#[test]
fn random_convolutions_match_the_definition() {
    if Isa::detect() != Isa::Avx512 {
        return;
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for case in 0..300 {
        let geo = geometry(&mut rng);
        let m = rng.range(1, 40);
        let (k, n) = geo.dims();
        let image: Vec<f32> = (0..geo.image_len())
            .map(|_| rng.int(-4, 4) as f32)
            .collect();
        // Weights with a row stride past `k` (an `A` view inside a bigger buffer).
        let wrs = k + rng.below(3);
        let w: Vec<f32> = (0..m * wrs).map(|_| rng.int(-3, 3) as f32).collect();
        let dense: Vec<f32> = (0..m)
            .flat_map(|r| w[r * wrs..r * wrs + k].to_vec())
            .collect();
        let fill = if rng.below(2) == 0 { 0.0 } else { 2.0 };
        let ldc = n + rng.below(5);
        let bias: Vec<f32> = (0..m).map(|_| rng.int(-5, 5) as f32).collect();
        let act = ACTIVATIONS[case % ACTIVATIONS.len()];
        let alpha = if rng.below(3) == 0 { 0.5 } else { 1.0 };
        let (b, bias_of): (Bias, Box<dyn Fn(usize) -> f32>) = match rng.below(3) {
            0 => (Bias::None, Box::new(|_| 0.0)),
            1 => (Bias::Scalar(3.0), Box::new(|_| 3.0)),
            _ => (Bias::PerRow(&bias), Box::new(|r| bias[r])),
        };
        let seen = Mutex::new(vec![0u8; m * n]);
        let hook = |r0: usize, rows: usize, c0: usize, cols: usize| {
            let mut s = seen.lock().unwrap();
            for r in r0..r0 + rows {
                for j in c0..c0 + cols {
                    s[r * n + j] += 1;
                }
            }
        };
        let ep = Epilogue::new()
            .alpha(alpha)
            .bias(b)
            .activation(act)
            .tile_hook(TileHook(&hook));
        let threads = rng.range(1, 3);
        let mut out = vec![f32::NAN; m * ldc];
        let weights = Weights {
            data: &w,
            rs: wrs,
            cs: 1,
        };
        run(&geo, m, weights, &image, fill, &mut out, ldc, &ep, threads).unwrap();
        let want = reference(&geo, m, &dense, &image, fill);
        for r in 0..m {
            for j in 0..n {
                let v = (want[r * n + j] as f32) * alpha + bias_of(r);
                let v = act.apply(v);
                let got = out[r * ldc + j];
                assert!(
                    got.to_bits() == v.to_bits(),
                    "case {case}: {geo:?} m={m} act={act:?} at ({r}, {j}): {got} vs {v}"
                );
            }
            // Past the row's `n` columns nothing is written.
            assert!(out[r * ldc + n..(r + 1) * ldc].iter().all(|v| v.is_nan()));
        }
        assert!(
            seen.lock().unwrap().iter().all(|&c| c == 1),
            "case {case}: the tile hook covers every output once"
        );
    }
}

#[test]
fn what_the_kernels_refuse() {
    let geo = Im2col {
        channels: 1,
        ih: 4,
        iw: 4,
        oh: 4,
        ow: 4,
        kh: 3,
        kw: 3,
        sh: 1,
        sw: 1,
        dh: 1,
        dw: 1,
        pt: 1,
        pl: 1,
    };
    let (x, w) = ([1.0f32; 16], [1.0f32; 9]);
    let weights = Weights {
        data: &w,
        rs: 9,
        cs: 1,
    };
    let mut y = [7.0f32; 16];
    let plain = Epilogue::new();
    let refused = |e: Result<(), DirectError>| matches!(e, Err(DirectError::Refused(_)));
    assert!(refused(run(
        &geo,
        1,
        weights,
        &x,
        0.0,
        &mut y,
        16,
        &plain.beta(1.0),
        1
    )));
    let col = [1.0f32; 16];
    assert!(refused(run(
        &geo,
        1,
        weights,
        &x,
        0.0,
        &mut y,
        16,
        &plain.bias(Bias::PerCol(&col)),
        1
    )));
    assert!(refused(run(
        &Im2col { sw: 0, ..geo },
        1,
        weights,
        &x,
        0.0,
        &mut y,
        16,
        &plain,
        1
    )));
    assert_eq!(
        run(&geo, 1, weights, &x[..15], 0.0, &mut y, 16, &plain, 1),
        Err(DirectError::TooShort {
            operand: "image",
            needed: 16,
            len: 15
        })
    );
    assert_eq!(
        run(&geo, 2, weights, &x, 0.0, &mut y, 16, &plain, 1),
        Err(DirectError::TooShort {
            operand: "weights",
            needed: 18,
            len: 9
        })
    );
    assert_eq!(
        run(&geo, 1, weights, &x, 0.0, &mut y[..15], 16, &plain, 1),
        Err(DirectError::TooShort {
            operand: "out",
            needed: 16,
            len: 15
        })
    );
    // Nothing was written by any refused call.
    assert!(y.iter().all(|&v| v == 7.0));
}
