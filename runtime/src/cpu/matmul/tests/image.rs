//! `run_image` (B read from a convolution's image) against `run` on the column matrix written
//! out by the definition: random geometries (strides, dilations, pads past the kernel's reach,
//! one-wide maps), f32 in blocks of a few columns and whole, 8-bit images with a fill on the
//! integer kernels (the packer that reads "same" stride-1 images directly and the copy that
//! serves the others), requantized, with a tail hook, on one to three threads. Values are small
//! integers, so f32 sums are exact in any order and every comparison is bit for bit.

use super::*;
use crate::cpu::matmul::image::run_image_in;
use crate::cpu::matmul::{Im2col, Image};

/// A random geometry with at least one output position.
fn geometry(rng: &mut Rng, same_s1: bool) -> Im2col {
    loop {
        let r = |rng: &mut Rng, lo: usize, hi: usize| lo + rng.below(hi - lo + 1);
        let (kh, kw) = (r(rng, 1, 4), r(rng, 1, 4));
        let (sh, sw) = if same_s1 {
            (1, 1)
        } else {
            (r(rng, 1, 3), r(rng, 1, 3))
        };
        let (dh, dw) = (r(rng, 1, 2), r(rng, 1, 2));
        let (ih, iw) = (r(rng, 1, 13), r(rng, 1, 70));
        let (pt, pl) = (r(rng, 0, 3), r(rng, 0, 3));
        let (pb, pr) = (r(rng, 0, 3), r(rng, 0, 3));
        let reach = |i: usize, p0: usize, p1: usize, k: usize, d: usize, s: usize| {
            let span = (k - 1) * d + 1;
            (i + p0 + p1).checked_sub(span).map(|x| x / s + 1)
        };
        let oh = reach(ih, pt, pb, kh, dh, sh);
        let ow = if same_s1 {
            // Output as wide as the input: the right pad completes the window.
            let span = (kw - 1) * dw;
            (pl <= span).then_some(iw)
        } else {
            reach(iw, pl, pr, kw, dw, sw)
        };
        if let (Some(oh), Some(ow)) = (oh, ow) {
            return Im2col {
                channels: r(rng, 1, 5),
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

/// The column matrix by its definition, as f64 values (`fill` in the padding).
fn columns(geo: &Im2col, img: &[f64], fill: f64) -> Vec<f64> {
    let (k, n) = geo.dims();
    let mut out = vec![fill; k * n];
    for r in 0..k {
        let (c, ky, kx) = (r / (geo.kh * geo.kw), (r / geo.kw) % geo.kh, r % geo.kw);
        for j in 0..n {
            let (oy, ox) = (j / geo.ow, j % geo.ow);
            let iy = (oy * geo.sh + ky * geo.dh) as i64 - geo.pt as i64;
            let ix = (ox * geo.sw + kx * geo.dw) as i64 - geo.pl as i64;
            if iy >= 0 && ix >= 0 && (iy as usize) < geo.ih && (ix as usize) < geo.iw {
                out[r * n + j] = img[(c * geo.ih + iy as usize) * geo.iw + ix as usize];
            }
        }
    }
    out
}

/// One case: `C (m×n) = A (m×k) · B` with `B` the image's column matrix, through
/// `run_image_in` (blocks of `block` bytes) and through `run` on the written-out matrix.
#[allow(clippy::too_many_arguments)]
fn case(
    rng: &mut Rng,
    geo: Im2col,
    m: usize,
    (ta, tx, tc): (DType, DType, DType),
    rq: bool,
    threads: usize,
    block: usize,
) {
    let (k, n) = geo.dims();
    let lead = rng.below(3);
    let val = |rng: &mut Rng, t: DType| -> f64 {
        let (lo, hi) = match t {
            DType::U8 => (0, 255),
            DType::I8 => (-128, 127),
            _ => (-4, 4),
        };
        (lo + rng.below((hi - lo + 1) as usize) as i64) as f64
    };
    let a = Buf::new(ta, m * k, 0, |_| val(rng, ta));
    let img_vals: Vec<f64> = (0..lead + geo.image_len()).map(|_| val(rng, tx)).collect();
    let x = Buf::new(tx, img_vals.len(), 0, |i| img_vals[i]);
    let fill = if tx == DType::F32 { 0.0 } else { val(rng, tx) };
    let cols = columns(&geo, &img_vals[lead..], fill);
    let bm = Buf::new(tx, k * n, 0, |i| cols[i]);
    let g = Gemm {
        m,
        n,
        k,
        alpha: 1.0,
        beta: 0.0,
        act: Activation::None,
        threads,
    };
    let mut fill_bytes = [0u8; 8];
    write(&mut fill_bytes, tx, 0, fill);
    let image = Image {
        bytes: x.bytes(),
        dtype: tx,
        offset: lead as i64,
        geom: geo,
        fill: fill_bytes,
    };
    let what = format!("{geo:?} m {m} {ta:?}·{tx:?}→{tc:?} rq {rq} {threads}T block {block}");
    let cv = (tc, 0, n as i64, 1);
    let mut c1 = Buf::new(tc, m * n, 0, |_| 0.0);
    let mut c2 = Buf::new(tc, m * n, 0, |_| 0.0);
    let av = a.view((0, k as i64, 1));
    let bv = bm.view((0, n as i64, 1));
    if rq {
        let mult = Buf::new(DType::F32, m, 0, |i| 0.01 + i as f64 * 0.003);
        let shift = Buf::new(DType::F32, m, 0, |i| i as f64 * 0.25 - 1.0);
        let rq = Requant {
            mult: mult.view((0, 1, 0)),
            shift: Some(shift.view((0, 1, 0))),
            scale: 0.5,
            zero_point: 3,
            add: None,
            table: Some(&TABLE),
        };
        run_image_in(
            &g,
            av,
            image,
            c1.bytes_mut(),
            cv,
            (None, None, Some(&rq)),
            block,
        )
        .unwrap_or_else(|_| panic!("{what}"));
        run_requant(&g, av, bv, c2.bytes_mut(), cv, None, &rq).unwrap();
        assert_eq!(c1.bytes(), c2.bytes(), "{what}");
        return;
    }
    // With a tail hook: every element of C once, in C's coordinates.
    use std::sync::atomic::{AtomicU32, Ordering};
    let seen: Vec<AtomicU32> = (0..m * n).map(|_| AtomicU32::new(0)).collect();
    let hook = |r0: usize, rows: usize, c0: usize, cs: usize| {
        for r in r0..(r0 + rows).min(m) {
            for c in c0..(c0 + cs).min(n) {
                seen[r * n + c].fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    run_image_in(
        &g,
        av,
        image,
        c1.bytes_mut(),
        cv,
        (None, Some(TileHook(&hook)), None),
        block,
    )
    .unwrap_or_else(|_| panic!("{what}"));
    run(&g, av, bv, c2.bytes_mut(), cv, None).unwrap();
    assert_eq!(c1.bytes(), c2.bytes(), "{what}");
    assert!(
        seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
        "{what}: tail not once per element"
    );
}

#[test]
fn images_read_as_their_column_matrix() {
    let mut rng = Rng(0x1a2b_3c4d);
    for i in 0..120 {
        let same = i % 2 == 0;
        let geo = geometry(&mut rng, same);
        let m = 1 + rng.below(40);
        let threads = 1 + i % 3;
        // f32 in blocks of 64 columns (or whole), 8-bit on the integer kernels.
        let block = if i % 4 < 2 { 1 } else { 1 << 30 };
        case(
            &mut rng,
            geo,
            m,
            (DType::F32, DType::F32, DType::F32),
            false,
            threads,
            block,
        );
        for tx in [DType::U8, DType::I8] {
            case(
                &mut rng,
                geo,
                m,
                (DType::I8, tx, DType::I32),
                false,
                threads,
                block,
            );
            case(
                &mut rng,
                geo,
                m,
                (DType::I8, tx, DType::U8),
                true,
                threads,
                block,
            );
        }
    }
}

#[test]
fn bad_images_are_refused() {
    let geo = Im2col {
        channels: 2,
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
    let (k, n) = geo.dims();
    let a = Buf::new(DType::F32, k, 0, |_| 1.0);
    let x = Buf::new(DType::F32, geo.image_len(), 0, |_| 1.0);
    let mut c = Buf::new(DType::F32, n, 0, |_| 0.0);
    let g = Gemm {
        m: 1,
        n,
        k,
        alpha: 1.0,
        beta: 0.0,
        act: Activation::None,
        threads: 1,
    };
    let image = |offset: i64, geom: Im2col| Image {
        bytes: x.bytes(),
        dtype: DType::F32,
        offset,
        geom,
        fill: [0; 8],
    };
    let cv = (DType::F32, 0, n as i64, 1);
    let av = a.view((0, k as i64, 1));
    // Past the image's end, a geometry that is not k×n, a zero stride.
    for (img, gg) in [
        (image(1, geo), g),
        (image(0, geo), Gemm { k: k - 1, ..g }),
        (image(0, Im2col { sw: 0, ..geo }), g),
    ] {
        assert!(run_image(&gg, av, img, c.bytes_mut(), cv, None, None, None).is_err());
    }
    run_image(&g, av, image(0, geo), c.bytes_mut(), cv, None, None, None).unwrap();
}

/// A byte table that moves every value (the image path must pass it to the kernels).
static TABLE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).wrapping_mul(37).wrapping_add(11);
        i += 1;
    }
    t
};
