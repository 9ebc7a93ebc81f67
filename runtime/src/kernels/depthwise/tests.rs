//! The depthwise kernels against a naive loop in (ky, kx) order with a separate multiply and
//! add, within the rounding of the two summation orders ([`close`]): every ISA this CPU has,
//! widths 1..40 and some past 64, kernels 1–7, strides 1–3, dilation 2, asymmetric pads,
//! channel multipliers, with and without bias, epilogues, 1–3 threads.

use super::*;

/// Deterministic values in [-1, 1).
fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// One convolution: geometry plus the bottom and right pads.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    mult: usize,
    ih: usize,
    iw: usize,
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
    /// top, left, bottom, right
    pad: [usize; 4],
}

impl Case {
    fn shape(&self) -> Option<Shape> {
        let out = |i: usize, p0: usize, p1: usize, k: usize, s: usize, d: usize| {
            let span = d * (k - 1) + 1;
            (i + p0 + p1 >= span).then(|| (i + p0 + p1 - span) / s + 1)
        };
        let oh = out(
            self.ih,
            self.pad[0],
            self.pad[2],
            self.k[0],
            self.s[0],
            self.d[0],
        )?;
        let ow = out(
            self.iw,
            self.pad[1],
            self.pad[3],
            self.k[1],
            self.s[1],
            self.d[1],
        )?;
        Some(Shape::new(
            self.n,
            self.c,
            self.mult,
            [self.ih, self.iw],
            [oh, ow],
            self.k,
            self.s,
            self.d,
            [self.pad[0], self.pad[1]],
        ))
    }
}

/// The definition, written out independently of the kernels: the outputs, and per output
/// the sum of its terms' magnitudes (`|b| + Σ|x·w|`, the scale of its rounding error).
fn naive(
    s: &Shape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    ep: &[EpOp],
) -> (Vec<f32>, Vec<f32>) {
    let m = s.in_channels * s.mult;
    let [ih, iw] = s.in_hw;
    let [oh, ow] = s.out_hw;
    let [kh, kw] = s.kernel;
    let mut y = vec![0.0f32; s.batch * m * oh * ow];
    let mut mag = vec![0.0f32; y.len()];
    for n in 0..s.batch {
        for mo in 0..m {
            let xp = &x[(n * s.in_channels + mo / s.mult) * ih * iw..];
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[mo]);
                    let mut sum = acc.abs();
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy =
                                (oy * s.stride[0] + ky * s.dilation[0]) as i64 - s.pad[0] as i64;
                            let ix =
                                (ox * s.stride[1] + kx * s.dilation[1]) as i64 - s.pad[1] as i64;
                            let v =
                                if iy >= 0 && ix >= 0 && (iy as usize) < ih && (ix as usize) < iw {
                                    xp[iy as usize * iw + ix as usize]
                                } else {
                                    0.0
                                };
                            acc += v * w[(mo * kh + ky) * kw + kx];
                            sum += (v * w[(mo * kh + ky) * kw + kx]).abs();
                        }
                    }
                    let i = ((n * m + mo) * oh + oy) * ow + ox;
                    y[i] = apply_epilogue(ep, acc);
                    mag[i] = sum;
                }
            }
        }
    }
    (y, mag)
}

/// Whether a kernel's `got` is the reference's `want` up to rounding: the kernels fuse each
/// tap's multiply and add (one rounding where the reference has two) and may sum in another
/// order, so the two differ by at most about `2·n·u·mag` for `n` terms (`u` = 2⁻²⁴) before
/// the epilogue, whose slope is at most about 2 here (HardSwish, sigmoid, scales below 2),
/// plus a few rounding steps of the epilogue itself. NaN matches NaN, an infinity itself, and
/// zeros of either sign match.
fn close(got: f32, want: f32, mag: f32, taps: usize) -> bool {
    let u = f32::EPSILON / 2.0;
    let tol = 4.0 * (taps + 1) as f32 * u * mag + 8.0 * u * want.abs();
    (got.is_nan() && want.is_nan()) || got == want || (got - want).abs() <= tol
}

fn bin(op: BinKind, arg: f32) -> EpOp {
    EpOp::Bin {
        op,
        arg,
        arg_first: false,
    }
}

/// `x · max(0, min(1, x·(1/6) + 0.5))` as the kernel IR spells HardSwish (the kernels' fast
/// path, `EpKind::HardSwish`).
fn hard_swish() -> Vec<EpOp> {
    hard_swish_with(bin(BinKind::Mul, 1.0 / 6.0))
}

/// ReLU6 with the clamp's constant first in its `min` (`EpKind::Bins`).
fn relu6() -> Vec<EpOp> {
    vec![
        bin(BinKind::Max, 0.0),
        EpOp::Bin {
            op: BinKind::Min,
            arg: 6.0,
            arg_first: true,
        },
    ]
}

/// A scale, a subtraction from a constant and a division (`EpKind::Bins`).
fn scale_shift() -> Vec<EpOp> {
    vec![
        bin(BinKind::Mul, 0.75),
        EpOp::Bin {
            op: BinKind::Sub,
            arg: 0.25,
            arg_first: true,
        },
        bin(BinKind::Div, 3.0),
    ]
}

/// HardSwish with the division the lowering once made: the generic epilogue path.
fn hard_swish_div() -> Vec<EpOp> {
    hard_swish_with(bin(BinKind::Div, 6.0))
}

fn hard_swish_with(scale: EpOp) -> Vec<EpOp> {
    vec![
        EpOp::Save,
        scale,
        bin(BinKind::Add, 0.5),
        EpOp::Bin {
            op: BinKind::Min,
            arg: 1.0,
            arg_first: true,
        },
        EpOp::Bin {
            op: BinKind::Max,
            arg: 0.0,
            arg_first: true,
        },
        EpOp::Combine {
            op: BinKind::Mul,
            saved_first: true,
        },
    ]
}

/// PP-LCNetV3's affine + HardSwish (`x·clip(x + 3, 0, 6)·(1/6)`) + affine.
fn affine_swish_affine() -> Vec<EpOp> {
    vec![
        EpOp::Bin {
            op: BinKind::Mul,
            arg: 1.25,
            arg_first: true,
        },
        bin(BinKind::Add, -0.125),
        EpOp::Save,
        bin(BinKind::Add, 3.0),
        bin(BinKind::Max, 0.0),
        bin(BinKind::Min, 6.0),
        EpOp::Combine {
            op: BinKind::Mul,
            saved_first: true,
        },
        bin(BinKind::Mul, 1.0 / 6.0),
        EpOp::Bin {
            op: BinKind::Sub,
            arg: 0.75,
            arg_first: true,
        },
    ]
}

fn check(case: Case, bias: bool, ep: &[EpOp], threads: usize, seed: u64) {
    let Some(s) = case.shape() else { return };
    let m = s.out_channels();
    let x = data(case.n * case.c * case.ih * case.iw, seed);
    let w = data(m * case.k[0] * case.k[1], seed + 1);
    let b = data(m, seed + 2);
    let bias = bias.then_some(b.as_slice());
    let (want, mag) = naive(&s, &x, &w, bias, ep);
    let taps = case.k[0] * case.k[1];
    for isa in Isa::supported() {
        let mut got = vec![f32::NAN; want.len()];
        run(&s, &x, &w, bias, &mut got, ep, threads, isa).unwrap();
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            assert!(
                close(*g, *r, mag[i], taps),
                "{isa} {case:?} bias={} threads={threads} ep={ep:?}: y[{i}] = {g}, want {r}",
                bias.is_some()
            );
        }
    }
}

#[test]
fn every_width_kernel_stride_and_pad() {
    let mut seed = 1;
    // Widths past 64 reach the kernels' blocks of several vectors.
    for iw in (1..=40).chain([63, 64, 65, 100, 131]) {
        for k in [1, 3, 5, 7] {
            for s in [1, 2, 3] {
                seed += 1;
                let p = k / 2;
                let case = Case {
                    n: 1,
                    c: 2,
                    mult: 1,
                    ih: 5,
                    iw,
                    k: [k, k],
                    s: [s, s],
                    d: [1, 1],
                    pad: [p, p, p, p],
                };
                check(case, seed % 2 == 0, &[], 1, seed);
            }
        }
    }
}

#[test]
fn asymmetric_pads_dilation_and_rectangular_kernels() {
    let cases = [
        ([3, 3], [2, 2], [1, 1], [0, 0, 1, 1]),
        ([3, 3], [2, 2], [1, 1], [1, 0, 0, 1]),
        ([3, 3], [1, 1], [2, 2], [2, 2, 2, 2]),
        ([5, 5], [1, 1], [2, 2], [4, 1, 0, 3]),
        ([3, 5], [1, 2], [2, 1], [1, 2, 1, 2]),
        ([1, 7], [1, 1], [1, 1], [0, 3, 0, 3]),
        ([7, 1], [2, 1], [1, 1], [3, 0, 3, 0]),
        ([2, 2], [2, 2], [1, 1], [0, 0, 0, 0]),
        ([3, 3], [3, 2], [1, 3], [1, 5, 0, 6]),
        ([3, 3], [1, 2], [1, 1], [1, 1, 1, 1]),
        ([5, 3], [1, 3], [1, 2], [2, 0, 1, 2]),
    ];
    let mut seed = 100;
    for (k, s, d, pad) in cases {
        for (ih, iw) in [
            (1, 1),
            (4, 7),
            (9, 17),
            (14, 33),
            (7, 40),
            (6, 100),
            (5, 170),
        ] {
            seed += 1;
            let case = Case {
                n: 2,
                c: 3,
                mult: 1,
                ih,
                iw,
                k,
                s,
                d,
                pad,
            };
            check(case, true, &[], 1, seed);
        }
    }
}

#[test]
fn channel_multiplier_epilogues_and_threads() {
    let eps = [
        vec![],
        hard_swish(),
        hard_swish_div(),
        affine_swish_affine(),
        relu6(),
        scale_shift(),
    ];
    let mut seed = 500;
    for mult in [1, 2] {
        for (ep_i, ep) in eps.iter().enumerate() {
            for threads in 1..=3 {
                for (ih, iw, s, k) in [
                    (12, 19, 1, 3),
                    (24, 37, 2, 3),
                    (3, 16, 1, 3),
                    (8, 8, 3, 3),
                    (4, 97, 1, 3),
                    (3, 150, 2, 3),
                    (9, 40, 1, 5),
                    (20, 41, 2, 5),
                ] {
                    seed += 1;
                    let p = k / 2;
                    let case = Case {
                        n: 2,
                        c: 3,
                        mult,
                        ih,
                        iw,
                        k: [k, k],
                        s: [s, s],
                        d: [1, 1],
                        pad: [p, p, p, p],
                    };
                    check(case, ep_i != 1, ep, threads, seed);
                }
            }
        }
    }
}

#[test]
fn hard_swish_is_recognized_and_propagates_nan() {
    assert_eq!(super::EpKind::of(&hard_swish()), super::EpKind::HardSwish);
    assert_eq!(super::EpKind::of(&hard_swish_div()), super::EpKind::Other);
    assert_eq!(super::EpKind::of(&[]), super::EpKind::None);
    assert_eq!(super::EpKind::of(&relu6()), super::EpKind::Bins);
    assert_eq!(super::EpKind::of(&scale_shift()), super::EpKind::Bins);
    assert_eq!(
        super::EpKind::of(&affine_swish_affine()),
        super::EpKind::Other
    );
    // NaN, ±∞ and values around the clamp's corners (x = −3, 3) through the fast path.
    let s = Shape::new(1, 1, 1, [1, 40], [1, 40], [1, 1], [1, 1], [1, 1], [0, 0]);
    let mut x = data(40, 3);
    x[..9].copy_from_slice(&[
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -3.0,
        3.0,
        -3.0001,
        3.0001,
        0.0,
        -0.0,
    ]);
    let w = [1.0f32];
    let (want, _) = naive(&s, &x, &w, None, &hard_swish());
    for isa in Isa::supported() {
        let mut got = vec![0.0; 40];
        run(&s, &x, &w, None, &mut got, &hard_swish(), 1, isa).unwrap();
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == r.to_bits() || (g.is_nan() && r.is_nan()),
                "{isa} y[{i}] = {g}, want {r}"
            );
        }
    }
}

#[test]
fn nan_propagates_through_max_and_min_from_both_sides() {
    let ep = [
        EpOp::Bin {
            op: BinKind::Max,
            arg: 0.0,
            arg_first: true,
        },
        bin(BinKind::Min, 1.0),
    ];
    let s = Shape::new(1, 1, 1, [1, 20], [1, 20], [1, 1], [1, 1], [1, 1], [0, 0]);
    let mut x = data(20, 9);
    x[3] = f32::NAN;
    x[17] = f32::NAN;
    for isa in Isa::supported() {
        let mut y = vec![0.0; 20];
        run(&s, &x, &[1.0], None, &mut y, &ep, 1, isa).unwrap();
        assert!(y[3].is_nan() && y[17].is_nan(), "{isa}: {y:?}");
        assert!(
            y.iter()
                .enumerate()
                .all(|(i, v)| i == 3 || i == 17 || (0.0..=1.0).contains(v))
        );
        // A NaN bound is NaN everywhere, whichever side it is on.
        for arg_first in [false, true] {
            let nan = [EpOp::Bin {
                op: BinKind::Min,
                arg: f32::NAN,
                arg_first,
            }];
            run(&s, &x, &[1.0], None, &mut y, &nan, 1, isa).unwrap();
            assert!(y.iter().all(|v| v.is_nan()), "{isa}: {y:?}");
        }
    }
}

#[test]
fn short_buffers_and_degenerate_shapes_are_refused() {
    let s = Shape::new(1, 2, 1, [4, 4], [4, 4], [3, 3], [1, 1], [1, 1], [1, 1]);
    let (x, w) = (vec![0.0; 32], vec![0.0; 18]);
    let mut y = vec![0.0; 32];
    assert!(run(&s, &x, &w, None, &mut y, &[], 1, Isa::Portable).is_ok());
    assert!(matches!(
        run(&s, &x[..31], &w, None, &mut y, &[], 1, Isa::Portable),
        Err(DwError::TooShort { operand: "x", .. })
    ));
    assert!(matches!(
        run(&s, &x, &w, Some(&[0.0]), &mut y, &[], 1, Isa::Portable),
        Err(DwError::TooShort {
            operand: "bias",
            ..
        })
    ));
    let zero_stride = Shape {
        stride: [0, 1],
        ..s
    };
    assert_eq!(
        run(&zero_stride, &x, &w, None, &mut y, &[], 1, Isa::Portable),
        Err(DwError::Degenerate)
    );
}

#[test]
fn tall_planes_reach_every_row_block_of_the_square_kernels() {
    // The 3×3 and 5×5 kernels at stride 1 and 2 run in blocks of 4 output rows: heights 1–13
    // give every remainder, pads of 0 to k−1 put padding rows in the first and last blocks.
    let mut seed = 500;
    for k in [3, 5] {
        for s in [1, 2] {
            for ih in 1..=13 {
                for (iw, pad) in [
                    (1, [k / 2; 4]),
                    (17, [0, 0, k - 1, 1]),
                    (50, [k - 1, 1, 0, 0]),
                    (100, [k / 2; 4]),
                ] {
                    seed += 1;
                    let case = Case {
                        n: 1,
                        c: 3,
                        mult: 1,
                        ih,
                        iw,
                        k: [k, k],
                        s: [s, s],
                        d: [1, 1],
                        pad,
                    };
                    let ep = match seed % 3 {
                        0 => hard_swish(),
                        1 => hard_swish_div(),
                        _ => vec![],
                    };
                    check(case, seed % 3 != 0, &ep, 1 + seed as usize % 2, seed);
                }
            }
        }
    }
}

/// Sigmoid and swish (`x · sigmoid(1.5·x)`) epilogues: every ISA within the vector `exp`'s few
/// ulp of the scalar definition (the polynomials are the same; FMA rounds differently).
#[test]
fn sigmoid_and_swish_epilogues() {
    let swish = vec![
        EpOp::Save,
        bin(BinKind::Mul, 1.5),
        EpOp::Sigmoid,
        EpOp::Combine {
            op: BinKind::Mul,
            saved_first: true,
        },
    ];
    for (ep, seed) in [(vec![EpOp::Sigmoid], 900), (swish, 901)] {
        for (ih, iw, s) in [(12, 19, 1), (24, 37, 2), (5, 70, 1)] {
            let case = Case {
                n: 1,
                c: 5,
                mult: 1,
                ih,
                iw,
                k: [3, 3],
                s: [s, s],
                d: [1, 1],
                pad: [1, 1, 1, 1],
            };
            let Some(sh) = case.shape() else { continue };
            let x: Vec<f32> = data(case.c * ih * iw, seed)
                .iter()
                .map(|v| v * 8.0)
                .collect();
            let w = data(case.c * 9, seed + 1);
            let (want, mag) = naive(&sh, &x, &w, None, &ep);
            for isa in Isa::supported() {
                let mut got = vec![f32::NAN; want.len()];
                run(&sh, &x, &w, None, &mut got, &ep, 2, isa).unwrap();
                for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        close(*g, *r, mag[i], 9),
                        "{isa} {ep:?}: y[{i}] = {g}, want {r}"
                    );
                }
            }
        }
    }
}

/// Small maps with enough channels take the channel-vectorized AVX-512 path
/// (`channels.rs`): every geometry it accepts (kernels, strides, dilations, uneven pads, channel
/// multipliers, a partial last group of 16, batches) matches the reference, with every
/// epilogue kind, on 1–3 threads.
#[test]
fn small_maps_across_channels() {
    let relu6 = vec![bin(BinKind::Max, 0.0), bin(BinKind::Min, 6.0)];
    let eps = [vec![], hard_swish(), affine_swish_affine(), relu6];
    let mut seed = 900;
    let mut taken = 0;
    for (n, c, mult) in [(1, 16, 1), (1, 40, 1), (2, 23, 1), (1, 9, 2)] {
        for (ih, iw, k, s, d, pad) in [
            (7, 7, 3, 1, 1, [1, 1, 1, 1]),
            (14, 14, 3, 2, 1, [1, 1, 1, 1]),
            (7, 7, 5, 1, 1, [2, 2, 2, 2]),
            (14, 14, 5, 2, 1, [2, 2, 2, 2]),
            (8, 8, 3, 1, 1, [0, 0, 2, 2]),
            (15, 16, 5, 2, 1, [1, 2, 2, 1]),
            (8, 5, 3, 1, 2, [2, 1, 0, 2]),
            (1, 1, 1, 1, 1, [0, 0, 0, 0]),
            (6, 9, 3, 2, 1, [0, 1, 1, 0]),
            (4, 4, 7, 1, 1, [3, 3, 3, 3]),
        ] {
            for (ep_i, ep) in eps.iter().enumerate() {
                seed += 1;
                let case = Case {
                    n,
                    c,
                    mult,
                    ih,
                    iw,
                    k: [k, k],
                    s: [s, s],
                    d: [d, d],
                    pad,
                };
                if let Some(shape) = case.shape() {
                    taken += usize::from(super::channels::takes(&shape, n * c * mult));
                }
                check(case, ep_i % 2 == 0, ep, 1 + seed as usize % 3, seed);
            }
        }
    }
    assert!(taken >= 80, "only {taken} cases reached the channel path");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn transpose16_transposes() {
    if !Isa::Avx512.is_supported() {
        return;
    }
    #[target_feature(enable = "avx512f")]
    fn go() -> [[f32; 16]; 16] {
        use std::arch::x86_64::*;
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, v) in r.iter_mut().enumerate() {
            let row: [f32; 16] = std::array::from_fn(|j| (i * 16 + j) as f32);
            // SAFETY: 16 floats.
            *v = unsafe { _mm512_loadu_ps(row.as_ptr()) };
        }
        super::channels::transpose16(&mut r);
        let mut out = [[0f32; 16]; 16];
        for (o, v) in out.iter_mut().zip(&r) {
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *v) };
        }
        out
    }
    // SAFETY: AVX-512F checked above.
    let out = unsafe { go() };
    for (i, row) in out.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            assert_eq!(v, (j * 16 + i) as f32, "out[{i}][{j}]");
        }
    }
}

/// `run_mixed` on 8-bit inputs (integers, so every sum is exact) against [`naive`] on the
/// same values less the zero point, followed by the mixed epilogue written out per element:
/// u8 and i8 inputs, f32/i32/u8/i8 outputs, per-channel operands, rounding and narrowing,
/// a batch of two with a channel multiplier (the channel operand is indexed by the output
/// channel, not the plane), small maps (the channel-vector kernel), maps larger than a chunk,
/// 1–3 threads. Exactly equal.
#[test]
fn mixed_types_match_the_definition_exactly() {
    let cases = [
        Case {
            n: 2,
            c: 3,
            mult: 2,
            ih: 9,
            iw: 13,
            k: [3, 3],
            s: [1, 1],
            d: [1, 1],
            pad: [1, 1, 1, 1],
        },
        Case {
            n: 1,
            c: 5,
            mult: 1,
            ih: 40,
            iw: 70,
            k: [3, 3],
            s: [2, 2],
            d: [1, 1],
            pad: [1, 1, 1, 1],
        },
        Case {
            n: 1,
            c: 20,
            mult: 1,
            ih: 7,
            iw: 7,
            k: [5, 5],
            s: [1, 1],
            d: [1, 1],
            pad: [2, 2, 2, 2],
        },
        Case {
            n: 2,
            c: 17,
            mult: 1,
            ih: 6,
            iw: 5,
            k: [3, 3],
            s: [1, 1],
            d: [2, 1],
            pad: [2, 1, 1, 0],
        },
    ];
    let isas = [Isa::Portable, Isa::Avx2, Isa::Avx512];
    for (ci, case) in cases.iter().enumerate() {
        let s = case.shape().expect("valid case");
        let (lx, lw, ly) = s.lens().expect("sizes");
        let m = s.out_channels();
        let ints = |len: usize, seed: u64, lo: f32, hi: f32| -> Vec<f32> {
            data(len, seed)
                .into_iter()
                .map(|v| (lo + (v + 1.0) * 0.5 * (hi - lo)).round())
                .collect()
        };
        let wq = ints(lw, 7 + ci as u64, -128.0, 127.0);
        let bias = ints(m, 11, -1000.0, 1000.0);
        let scale: Vec<f32> = data(m, 13).iter().map(|v| (v.abs() + 0.1) * 2e-4).collect();
        let shift: Vec<f32> = data(m, 17).iter().map(|v| v * 3.0).collect();
        for signed in [false, true] {
            let (lo, hi, zero) = if signed {
                (-128.0, 127.0, -3.0)
            } else {
                (0.0, 255.0, 128.0)
            };
            let xq = ints(lx, 3 + ci as u64, lo, hi);
            let xf: Vec<f32> = xq.iter().map(|v| v - zero).collect();
            let (u8s, i8s): (Vec<u8>, Vec<i8>) = (
                xq.iter().map(|&v| v as u8).collect(),
                xq.iter().map(|&v| v as i8).collect(),
            );
            let input = if signed {
                Input::I8 { x: &i8s, zero }
            } else {
                Input::U8 { x: &u8s, zero }
            };
            let (acc, _) = naive(&s, &xf, &wq, Some(&bias), &[]);
            let steps = [
                Step::Bin {
                    op: BinKind::Mul,
                    arg: Arg::Channel(&scale),
                    arg_first: false,
                },
                Step::Bin {
                    op: BinKind::Add,
                    arg: Arg::Channel(&shift),
                    arg_first: false,
                },
                Step::Save,
                Step::Bin {
                    op: BinKind::Div,
                    arg: Arg::Lit(0.07),
                    arg_first: false,
                },
                Step::Round,
                Step::Bin {
                    op: BinKind::Add,
                    arg: Arg::Lit(9.0),
                    arg_first: false,
                },
                Step::Narrow(if signed { Int::I8 } else { Int::U8 }),
                Step::Combine {
                    op: BinKind::Sub,
                    saved_first: true,
                },
                Step::Bin {
                    op: BinKind::Max,
                    arg: Arg::Lit(-300.0),
                    arg_first: true,
                },
                Step::Bin {
                    op: BinKind::Mul,
                    arg: Arg::Lit(7.0),
                    arg_first: false,
                },
            ];
            let want_f32: Vec<f32> = acc
                .iter()
                .enumerate()
                .map(|(i, &a)| {
                    let mo = (i / (s.out_hw[0] * s.out_hw[1])) % m;
                    let x = a * scale[mo] + shift[mo];
                    let saved = x;
                    let q = (x / 0.07).round_ties_even() + 9.0;
                    let q = if signed {
                        q as i8 as f32
                    } else {
                        q as u8 as f32
                    };
                    let x = BinKind::Max.apply(-300.0, saved - q);
                    x * 7.0
                })
                .collect();
            for threads in 1..=3 {
                for isa in isas {
                    let what = format!("case {ci}, signed {signed}, {threads} threads, {isa:?}");
                    // The convolution with epilogue `ep`, stored as f32, u8 or i8.
                    let run_into = |ep: &[Step], out: Output| {
                        run_mixed(&s, input, &wq, Some(&bias), out, ep, threads, isa).expect("runs")
                    };
                    let f32_out = |ep: &[Step]| {
                        let mut y = vec![0f32; ly];
                        run_into(ep, Output::F32(&mut y));
                        y
                    };
                    let u8_out = |ep: &[Step]| {
                        let mut y = vec![0u8; ly];
                        run_into(ep, Output::U8(&mut y));
                        y
                    };
                    let i8_out = |ep: &[Step]| {
                        let mut y = vec![0i8; ly];
                        run_into(ep, Output::I8(&mut y));
                        y
                    };
                    let y = f32_out(&steps);
                    assert_eq!(y, want_f32, "{what}: f32 out");
                    let mut y = vec![0i32; ly];
                    run_mixed(
                        &s,
                        input,
                        &wq,
                        Some(&bias),
                        Output::I32(&mut y),
                        &[],
                        threads,
                        isa,
                    )
                    .expect("runs");
                    let want: Vec<i32> = acc.iter().map(|&a| a as i32).collect();
                    assert_eq!(y, want, "{what}: i32 accumulators");
                    // Requantized to both 8-bit types (out of range values saturate).
                    let rq = &steps[..6];
                    let q = |i: usize, a: f32| {
                        let mo = (i / (s.out_hw[0] * s.out_hw[1])) % m;
                        ((a * scale[mo] + shift[mo]) / 0.07).round_ties_even() + 9.0
                    };
                    let y = u8_out(rq);
                    let want: Vec<u8> = acc
                        .iter()
                        .enumerate()
                        .map(|(i, &a)| q(i, a) as u8)
                        .collect();
                    assert_eq!(y, want, "{what}: u8 out");
                    let y = i8_out(rq);
                    let want: Vec<i8> = acc
                        .iter()
                        .enumerate()
                        .map(|(i, &a)| q(i, a) as i8)
                        .collect();
                    assert_eq!(y, want, "{what}: i8 out");
                    // A QDQ layer's requantization exactly (its own AVX-512 loop): with and
                    // without the per-channel shift, a constant multiplier, clamps narrower than
                    // the type.
                    let (lo, hi) = if signed {
                        (-100.0, 120.0)
                    } else {
                        (3.0, 250.0)
                    };
                    let tail = [
                        Step::Bin {
                            op: BinKind::Div,
                            arg: Arg::Lit(0.07),
                            arg_first: false,
                        },
                        Step::Round,
                        Step::Bin {
                            op: BinKind::Add,
                            arg: Arg::Lit(9.0),
                            arg_first: false,
                        },
                        Step::Bin {
                            op: BinKind::Max,
                            arg: Arg::Lit(lo),
                            arg_first: false,
                        },
                        Step::Bin {
                            op: BinKind::Min,
                            arg: Arg::Lit(hi),
                            arg_first: false,
                        },
                    ];
                    let mul = |arg| Step::Bin {
                        op: BinKind::Mul,
                        arg,
                        arg_first: false,
                    };
                    let add = Step::Bin {
                        op: BinKind::Add,
                        arg: Arg::Channel(&shift),
                        arg_first: false,
                    };
                    for (name, head) in [
                        ("shifted", vec![mul(Arg::Channel(&scale)), add]),
                        ("per channel", vec![mul(Arg::Channel(&scale))]),
                        ("constant", vec![mul(Arg::Lit(3e-4))]),
                    ] {
                        let ep: Vec<Step> = head.iter().chain(&tail).copied().collect();
                        let value = |i: usize, a: f32| {
                            let mo = (i / (s.out_hw[0] * s.out_hw[1])) % m;
                            let mut x = a * if name == "constant" { 3e-4 } else { scale[mo] };
                            if head.len() == 2 {
                                x += shift[mo];
                            }
                            ((x / 0.07).round_ties_even() + 9.0).clamp(lo, hi)
                        };
                        let y = u8_out(&ep);
                        let want: Vec<u8> = acc
                            .iter()
                            .enumerate()
                            .map(|(i, &a)| value(i, a) as u8)
                            .collect();
                        assert_eq!(y, want, "{what}: {name} requantization, u8");
                        let y = i8_out(&ep);
                        let want: Vec<i8> = acc
                            .iter()
                            .enumerate()
                            .map(|(i, &a)| value(i, a) as i8)
                            .collect();
                        assert_eq!(y, want, "{what}: {name} requantization, i8");
                        let y = f32_out(&ep);
                        let want: Vec<f32> =
                            acc.iter().enumerate().map(|(i, &a)| value(i, a)).collect();
                        assert_eq!(y, want, "{what}: {name} requantization, f32");
                        // Then a table of the byte (a quantized activation), stored as f32
                        // and as the 8-bit type (saturating).
                        let narrow = Step::Narrow(if signed { Int::I8 } else { Int::U8 });
                        let table = Step::Table {
                            table: &TABLE,
                            signed,
                        };
                        let ep: Vec<Step> = ep.iter().copied().chain([narrow, table]).collect();
                        let entry = |i: usize, a: f32| {
                            TABLE[(value(i, a) + if signed { 128.0 } else { 0.0 }) as usize]
                        };
                        let y = f32_out(&ep);
                        let want: Vec<f32> =
                            acc.iter().enumerate().map(|(i, &a)| entry(i, a)).collect();
                        assert_eq!(y, want, "{what}: {name} requantization, table, f32");
                        let y = u8_out(&ep);
                        let want: Vec<u8> = acc
                            .iter()
                            .enumerate()
                            .map(|(i, &a)| entry(i, a) as u8)
                            .collect();
                        assert_eq!(y, want, "{what}: {name} requantization, table, u8");
                        // Not a requantization before it: step by step.
                        let ep = [head[0], narrow, table];
                        let y = f32_out(&ep);
                        let want: Vec<f32> = acc
                            .iter()
                            .enumerate()
                            .map(|(i, &a)| {
                                let mo = (i / (s.out_hw[0] * s.out_hw[1])) % m;
                                let x = a * if name == "constant" { 3e-4 } else { scale[mo] };
                                let b = if signed {
                                    x as i8 as i32 + 128
                                } else {
                                    x as u8 as i32
                                };
                                TABLE[b as usize]
                            })
                            .collect();
                        assert_eq!(y, want, "{what}: {name} table step by step");
                    }
                }
            }
        }
    }
    // A NaN in the epilogue stores 0 in every 8-bit output, as the cast does.
    let s = Shape::new(1, 1, 1, [1, 20], [1, 20], [1, 1], [1, 1], [1, 1], [0, 0]);
    let nan = [Step::Bin {
        op: BinKind::Mul,
        arg: Arg::Lit(f32::NAN),
        arg_first: false,
    }];
    for isa in isas {
        let mut y = vec![5i8; 20];
        run_mixed(
            &s,
            Input::F32(&[1.0; 20]),
            &[1.0],
            None,
            Output::I8(&mut y),
            &nan,
            1,
            isa,
        )
        .expect("runs");
        assert_eq!(y, vec![0; 20], "{isa:?}");
    }
    // Short operands are refused before anything is written.
    let s = Shape::new(1, 2, 1, [2, 2], [2, 2], [1, 1], [1, 1], [1, 1], [0, 0]);
    let short = [Step::Bin {
        op: BinKind::Add,
        arg: Arg::Channel(&[1.0]),
        arg_first: false,
    }];
    let mut y = vec![0u8; 8];
    let r = run_mixed(
        &s,
        Input::U8 {
            x: &[0; 8],
            zero: 0.0,
        },
        &[1.0; 2],
        None,
        Output::U8(&mut y),
        &short,
        1,
        Isa::detect(),
    );
    assert!(
        matches!(
            r,
            Err(DwError::TooShort {
                operand: "epilogue operand",
                ..
            })
        ),
        "{r:?}"
    );
}

/// A table of 256 distinct `f32`s of both signs, some beyond the 8-bit ranges.
static TABLE: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as f32 - 128.5) * 1.37;
        i += 1;
    }
    t
};

/// The byte path ([`super::vnni`]) against [`naive`], exactly, over the geometries it takes:
/// widths 1–40 and 70 (rows of 16 with an overlapping last run, blocks across rows, masked
/// rows), kernels 1–8 wide (one or two dot products per row), strides 1–3, dilations 1–3
/// (windows past 64 bytes take the two-table permutation), asymmetric pads, a channel
/// multiplier, `u8` and `i8` inputs with zero points at both ends, weights at `i8`'s ends;
/// the accumulators, and requantized to `u8`, `i8` and through a table (as the dot products
/// finish, on both the plane-by-plane and the across-planes loops).
/// Where the CPU has VNNI and VBMI, it checks that the path takes every case.
#[test]
fn byte_path_matches_the_definition_exactly() {
    let (mut taken, mut cases) = (0, 0);
    let mut seed = 0;
    for iw in (1..=40).chain([70]) {
        for (k, st, d, pad) in [
            ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
            ([3, 3], [2, 2], [1, 1], [0, 1, 1, 0]),
            ([5, 5], [2, 2], [1, 1], [2, 2, 2, 2]),
            ([1, 8], [1, 1], [1, 1], [0, 3, 0, 4]),
            ([2, 7], [3, 3], [2, 3], [1, 2, 0, 1]),
            ([3, 1], [1, 2], [3, 1], [3, 0, 2, 0]),
        ] {
            seed += 1;
            let case = Case {
                n: 2,
                c: 3,
                mult: if iw % 3 == 0 { 2 } else { 1 },
                ih: 1 + (iw * 7) % 13,
                iw,
                k,
                s: st,
                d,
                pad,
            };
            let Some(s) = case.shape() else { continue };
            let (lx, lw, ly) = s.lens().expect("sizes");
            let ints = |len: usize, seed: u64, lo: f32, hi: f32| -> Vec<f32> {
                data(len, seed)
                    .into_iter()
                    .map(|v| (lo + (v + 1.0) * 0.5 * (hi - lo)).round())
                    .collect()
            };
            let mut wq = ints(lw, seed, -128.0, 127.0);
            wq[0] = -128.0;
            wq[lw - 1] = 127.0;
            let bias = ints(s.out_channels(), seed + 1, -5000.0, 5000.0);
            let scale: Vec<f32> = data(s.out_channels(), seed + 3)
                .iter()
                .map(|v| (v.abs() + 0.1) * 2e-4)
                .collect();
            let shift: Vec<f32> = data(s.out_channels(), seed + 4)
                .iter()
                .map(|v| v * 3.0)
                .collect();
            for (signed, zero) in [(false, 0.0), (false, 255.0), (true, -128.0), (true, 37.0)] {
                let (lo, hi) = if signed {
                    (-128.0, 127.0)
                } else {
                    (0.0, 255.0)
                };
                let xq = ints(lx, seed + 2, lo, hi);
                let u8s: Vec<u8> = xq.iter().map(|&v| v as u8).collect();
                let i8s: Vec<i8> = xq.iter().map(|&v| v as i8).collect();
                let input = if signed {
                    Input::I8 { x: &i8s, zero }
                } else {
                    Input::U8 { x: &u8s, zero }
                };
                cases += 1;
                taken += usize::from(BytePlan::new(&s, &input, &wq, Some(&bias)).is_some());
                let xf: Vec<f32> = xq.iter().map(|v| v - zero).collect();
                let (want, _) = naive(&s, &xf, &wq, Some(&bias), &[]);
                for threads in [1, 2] {
                    let mut y = vec![0i32; ly];
                    run_mixed(
                        &s,
                        input,
                        &wq,
                        Some(&bias),
                        Output::I32(&mut y),
                        &[],
                        threads,
                        Isa::detect(),
                    )
                    .expect("runs");
                    let acc: Vec<i32> = want.iter().map(|&a| a as i32).collect();
                    let what = format!("{case:?} {signed} {zero} {threads} threads");
                    assert_eq!(y, acc, "{what}");
                    // Requantized as the dot products finish: to both byte types, and through
                    // a table to f32.
                    let mo = |i: usize| (i / (s.out_hw[0] * s.out_hw[1])) % s.out_channels();
                    let value = |i: usize, a: f32, (zp, lo, hi): (f32, f32, f32)| {
                        { ((a * scale[mo(i)] + shift[mo(i)]) / 0.07).round_ties_even() + zp }
                            .clamp(lo, hi)
                    };
                    let run = |q: (f32, f32, f32), table: bool, out: Output| {
                        let bin = |op, arg| Step::Bin {
                            op,
                            arg,
                            arg_first: false,
                        };
                        let mut ep = vec![
                            bin(BinKind::Mul, Arg::Channel(&scale)),
                            bin(BinKind::Add, Arg::Channel(&shift)),
                            bin(BinKind::Div, Arg::Lit(0.07)),
                            Step::Round,
                            bin(BinKind::Add, Arg::Lit(q.0)),
                            bin(BinKind::Max, Arg::Lit(q.1)),
                            bin(BinKind::Min, Arg::Lit(q.2)),
                        ];
                        if table {
                            ep.push(Step::Narrow(Int::U8));
                            ep.push(Step::Table {
                                table: &TABLE,
                                signed: false,
                            });
                        }
                        run_mixed(
                            &s,
                            input,
                            &wq,
                            Some(&bias),
                            out,
                            &ep,
                            threads,
                            Isa::detect(),
                        )
                        .expect("runs");
                    };
                    let q = (9.0, 0.0, 255.0);
                    let mut y = vec![0u8; ly];
                    run(q, false, Output::U8(&mut y));
                    let want: Vec<u8> = acc
                        .iter()
                        .enumerate()
                        .map(|(i, &a)| value(i, a as f32, q) as u8)
                        .collect();
                    assert_eq!(y, want, "{what}: u8");
                    let q = (-5.0, -128.0, 127.0);
                    let mut y = vec![0i8; ly];
                    run(q, false, Output::I8(&mut y));
                    let want: Vec<i8> = acc
                        .iter()
                        .enumerate()
                        .map(|(i, &a)| value(i, a as f32, q) as i8)
                        .collect();
                    assert_eq!(y, want, "{what}: i8");
                    let q = (3.0, 0.0, 250.0);
                    let mut y = vec![0f32; ly];
                    run(q, true, Output::F32(&mut y));
                    let want: Vec<f32> = acc
                        .iter()
                        .enumerate()
                        .map(|(i, &a)| TABLE[value(i, a as f32, q) as usize])
                        .collect();
                    assert_eq!(y, want, "{what}: table");
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
    {
        assert_eq!(taken, cases, "cases the byte path took");
    }
}
