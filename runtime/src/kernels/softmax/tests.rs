//! The softmax kernels against a scalar `f64` reference that rounds `x·scale + mask` and
//! `v - max` to `f32` as the definition does: every ISA this CPU has, lengths 1..70 and a few
//! longer, with and without pre-scale and broadcast mask, `-inf` masks, large values, NaN and
//! infinities, 1–3 threads.
//!
//! Tolerance: `|got - want| <= 1e-5·|want| + 1e-37`. Each exponential is within a few ulp
//! (~1e-7) and the lane-wise sum of at most a few hundred terms adds a few more; `1e-37`
//! absorbs the AVX2 `exp`'s flush of subnormal results to 0. A wrong lane, mask row or tail
//! is off by far more.

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

/// The reference: `f32` for the roundings the definition fixes, `f64` for the rest.
fn reference(
    x: &[f32],
    rows: usize,
    len: usize,
    scale: Option<f32>,
    mask: Option<Mask>,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows * len);
    for r in 0..rows {
        let v: Vec<f32> = (0..len)
            .map(|c| {
                let mut v = x[r * len + c];
                if let Some(s) = scale {
                    v *= s;
                }
                if let Some(m) = &mask {
                    v += m.data[m.row_offset(r) + c];
                }
                v
            })
            .collect();
        let mx = v.iter().fold(f32::NEG_INFINITY, |m, &a| {
            if m.is_nan() || a.is_nan() {
                f32::NAN
            } else {
                m.max(a)
            }
        });
        let e: Vec<f64> = v.iter().map(|&a| ((a - mx) as f64).exp()).collect();
        let sum: f64 = e.iter().sum();
        out.extend(e.iter().map(|&e| e / sum));
    }
    out
}

fn check(what: &str, got: &[f32], want: &[f64]) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else {
            (g as f64 - w).abs() <= 1e-5 * w.abs() + 1e-37
        };
        assert!(ok, "{what}: element {i}: got {g:e}, want {w:e}");
    }
}

/// Runs one case on every ISA and thread count and checks it.
fn case(x: &[f32], rows: usize, len: usize, scale: Option<f32>, mask: Option<Mask>, what: &str) {
    let want = reference(x, rows, len, scale, mask);
    for isa in Isa::supported() {
        for threads in 1..=3 {
            let mut out = vec![f32::NAN; rows * len];
            run(x, &mut out, rows, len, scale, mask, threads, isa).unwrap();
            check(&format!("{what} {isa} t{threads}"), &out, &want);
        }
    }
}

#[test]
fn rows_of_every_length_match_the_reference() {
    for len in (1..=70).chain([127, 128, 129, 200]) {
        let rows = 5;
        let x: Vec<f32> = data(rows * len, len as u64)
            .iter()
            .map(|v| v * 8.0)
            .collect();
        case(&x, rows, len, None, None, &format!("len {len}"));
        case(
            &x,
            rows,
            len,
            Some(0.125),
            None,
            &format!("len {len} scaled"),
        );
    }
}

#[test]
fn broadcast_masks_with_minus_infinity() {
    // Attention: rows = heads × queries, the mask one row per batch shared by every head and
    // query (stride 0), some keys masked with -inf or a large negative number.
    for len in [1, 7, 16, 33, 64, 70] {
        let (b, h, q) = (2, 3, 4);
        let rows = b * h * q;
        let x = data(rows * len, 7 + len as u64);
        let mut m = data(b * len, 11 + len as u64);
        for (i, v) in m.iter_mut().enumerate() {
            if i % 3 == 1 {
                *v = f32::NEG_INFINITY;
            } else if i % 5 == 2 {
                *v = -10000.0;
            }
        }
        let dims = [(b, len), (h, 0), (q, 0)];
        let mask = Mask {
            data: &m,
            dims: &dims,
        };
        case(
            &x,
            rows,
            len,
            Some(0.5),
            Some(mask),
            &format!("mask len {len}"),
        );
        // A full per-row mask (rows × len, contiguous).
        let mf = data(rows * len, 13);
        let dims = [(rows, len)];
        let mask = Mask {
            data: &mf,
            dims: &dims,
        };
        case(
            &x,
            rows,
            len,
            None,
            Some(mask),
            &format!("full mask len {len}"),
        );
    }
}

#[test]
fn large_values_and_specials() {
    let len = 37;
    let rows = 6;
    let mut x: Vec<f32> = data(rows * len, 3).iter().map(|v| v * 1.0e4).collect();
    // Row 1: a NaN; row 2: +inf; row 3: all -inf; row 4: one finite among -inf; row 5: values
    // near the overflow threshold.
    x[len + 5] = f32::NAN;
    x[2 * len + 36] = f32::INFINITY;
    x[3 * len..4 * len].fill(f32::NEG_INFINITY);
    x[4 * len..5 * len].fill(f32::NEG_INFINITY);
    x[4 * len + 20] = 3.0;
    for (i, v) in x[5 * len..].iter_mut().enumerate() {
        *v = 80.0 + i as f32 * 0.5;
    }
    case(&x, rows, len, None, None, "specials");
    let want = reference(&x, rows, len, None, None);
    assert!(want[len..3 * len].iter().all(|v| v.is_nan()));
    assert!(want[3 * len..4 * len].iter().all(|v| v.is_nan()));
    assert_eq!(want[4 * len + 20], 1.0);
}

#[test]
fn many_rows_split_over_threads() {
    // Enough work for several tasks per thread (rows·len ≥ 8192).
    let (rows, len) = (300, 100);
    let x: Vec<f32> = data(rows * len, 5).iter().map(|v| v * 20.0).collect();
    let m = data(len * 10, 9);
    let dims = [(30, 0), (10, len)];
    let mask = Mask {
        data: &m,
        dims: &dims,
    };
    case(&x, rows, len, Some(0.3), Some(mask), "threads");
}

#[test]
fn bad_arguments_are_refused() {
    let x = [0.0f32; 8];
    let mut out = [0.0f32; 8];
    let short = run(&x, &mut out, 3, 3, None, None, 1, Isa::Portable);
    assert!(
        matches!(short, Err(SoftmaxError::TooShort { .. })),
        "{short:?}"
    );
    let m = [0.0f32; 4];
    let dims = [(3, 1)];
    let mask = Some(Mask {
        data: &m,
        dims: &dims,
    });
    let rows = run(&x, &mut out, 2, 4, None, mask, 1, Isa::Portable);
    assert!(
        matches!(rows, Err(SoftmaxError::MaskRows { .. })),
        "{rows:?}"
    );
    let dims = [(2, 1)];
    let mask = Some(Mask {
        data: &m,
        dims: &dims,
    });
    let reach = run(&x, &mut out, 2, 4, None, mask, 1, Isa::Portable);
    assert!(
        matches!(reach, Err(SoftmaxError::TooShort { .. })),
        "{reach:?}"
    );
}
