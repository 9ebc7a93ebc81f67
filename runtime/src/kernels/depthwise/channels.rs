//! Depthwise convolution on small maps, 16 channels per vector (AVX-512).
//!
//! The row kernels vectorize along an output row: a 7×7 map fills 7 of 8 lanes, and every
//! 49-output plane pays its own setup, tiles and partial stores (a 960-channel 7×7 layer ran at
//! 11 GFLOP/s against 30 on 56×56 maps). Here a vector holds one spatial position of 16
//! channels instead: each group of 16 planes is transposed (16×16 blocks in registers) into a
//! position-major scratch with a zero border, every output accumulates its taps from fixed
//! offsets in that scratch with the 16 channels' weights, and the results are transposed back
//! into the planes. Lanes are channels, so none is wasted whatever the map's width (960@7 3×3:
//! 78 → 45 µs, 512@7 5×5: 61 → 41 µs in `cargo bench --bench depthwise`).
//!
//! Each lane computes what the row kernels compute: the accumulator starts at the channel's
//! bias, takes the taps in (ky, kx) order, one FMA each, and a tap outside the input adds
//! `0·w` (from the zero border); then the epilogue.

#![allow(unsafe_code)]

use super::{EpKind, EpOp, Shape};

/// Channels per group (the lanes of a zmm).
pub(super) const LANES: usize = 16;

/// Whether `depthwise::run` takes this convolution here: small output maps, where the row
/// kernels waste lanes (14×14 maps measured no faster here), at least one full group of
/// channels, at most 49 taps, and an input plane and tap span small enough for the scratch.
pub(super) fn takes(s: &Shape, planes: usize) -> bool {
    let (oh, ow) = (s.out_hw[0], s.out_hw[1]);
    ow <= 8
        && oh * ow <= 64
        && planes >= LANES
        && s.kernel[0] * s.kernel[1] <= 49
        && s.in_hw[0] * s.in_hw[1] <= 1024
        && (s.out_hw[0] - 1) * s.stride[0] + (s.kernel[0] - 1) * s.dilation[0] < 64
        && (s.out_hw[1] - 1) * s.stride[1] + (s.kernel[1] - 1) * s.dilation[1] < 64
}

/// Where a group's input goes in its scratch: a zero-bordered, position-major copy of the
/// region the taps read, so that every tap is a plain load at a fixed offset from its output's
/// first tap, with no bounds test (padding reads the zero border and adds `0·w`).
pub(super) struct Layout {
    /// Scratch width (positions per row) and size.
    pw: usize,
    len: usize,
    /// For every input position (row-major): its scratch position, or `usize::MAX` when no
    /// tap reads it.
    at: Vec<usize>,
    /// Each tap's offset from its output's first tap, in (ky, kx) order.
    taps: Vec<usize>,
}

impl Layout {
    pub(super) fn new(s: &Shape) -> Layout {
        let span = |o: usize, st: usize, k: usize, d: usize| (o - 1) * st + (k - 1) * d + 1;
        let ph = span(s.out_hw[0], s.stride[0], s.kernel[0], s.dilation[0]);
        let pw = span(s.out_hw[1], s.stride[1], s.kernel[1], s.dilation[1]);
        let mut at = Vec::with_capacity(s.in_hw[0] * s.in_hw[1]);
        for iy in 0..s.in_hw[0] {
            for ix in 0..s.in_hw[1] {
                let (py, px) = (iy + s.pad[0], ix + s.pad[1]);
                at.push(if py < ph && px < pw {
                    py * pw + px
                } else {
                    usize::MAX
                });
            }
        }
        let mut taps = Vec::with_capacity(s.kernel[0] * s.kernel[1]);
        for ky in 0..s.kernel[0] {
            for kx in 0..s.kernel[1] {
                taps.push(ky * s.dilation[0] * pw + kx * s.dilation[1]);
            }
        }
        Layout {
            pw,
            len: ph * pw,
            at,
            taps,
        }
    }
}

/// Computes groups `[g0, g1)` of 16 output planes (plane `p` = `n·channels·mult + m`).
///
/// # Safety
///
/// The CPU must support AVX-512F. `s` was checked by `depthwise::run` against `x`, `w`,
/// `bias` and the `planes·oh·ow` floats at `out`, and by [`takes`]; `lay` is the [`Layout`] of
/// `s`; no other thread writes the planes of these groups while this runs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn groups(
    s: &Shape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: *mut f32,
    ep: &[EpOp],
    lay: &Layout,
    (g0, g1): (usize, usize),
) {
    use std::arch::x86_64::*;
    let m = s.out_channels();
    let planes = s.batch * m;
    let ipl = s.in_hw[0] * s.in_hw[1];
    let opl = s.out_hw[0] * s.out_hw[1];
    let kk = s.kernel[0] * s.kernel[1];
    let kind = EpKind::of(ep);
    let zero = _mm512_setzero_ps();
    // Position-major scratch: the input of one group (its border stays zero: only positions
    // that `lay.at` names are written), then its output.
    let mut xs = vec![zero; lay.len];
    let mut ys = vec![zero; opl];
    let mut wv = [zero; 49];
    for g in g0..g1 {
        let p0 = g * LANES;
        let count = LANES.min(planes - p0);
        // Per lane: the input plane's offset (from the first lane's), its weights and bias.
        let mut xoff = [0isize; LANES];
        let mut bv = [0f32; LANES];
        let mut wl = [[0f32; LANES]; 49];
        let first = {
            let (n, mo) = (p0 / m, p0 % m);
            (n * s.in_channels + mo / s.mult) * ipl
        };
        for l in 0..count {
            let p = p0 + l;
            let (n, mo) = (p / m, p % m);
            xoff[l] = ((n * s.in_channels + mo / s.mult) * ipl) as isize - first as isize;
            bv[l] = bias.map_or(0.0, |b| b[mo]);
            for (t, row) in wl[..kk].iter_mut().enumerate() {
                row[l] = w[mo * kk + t];
            }
        }
        for (v, row) in wv[..kk].iter_mut().zip(&wl) {
            // SAFETY: `row` holds 16 floats.
            *v = unsafe { _mm512_loadu_ps(row.as_ptr()) };
        }
        // SAFETY: 16 floats.
        let bias_v = unsafe { _mm512_loadu_ps(bv.as_ptr()) };
        // Into the scratch by 16×16 blocks: row `l` = 16 positions of lane `l`'s plane.
        let xbase = x[first..].as_ptr();
        for q0 in (0..ipl).step_by(LANES) {
            let cols = LANES.min(ipl - q0);
            let cmask = if cols == LANES {
                0xffff
            } else {
                ((1u32 << cols) - 1) as u16
            };
            let mut r = [zero; LANES];
            for (l, v) in r.iter_mut().enumerate().take(count) {
                // SAFETY: lane `l`'s plane holds `ipl` floats at `xoff[l]` from `xbase` (inside
                // `x`, checked by `run`); the mask enables positions `q0 + i < ipl` only.
                *v = unsafe { _mm512_maskz_loadu_ps(cmask, xbase.offset(xoff[l]).add(q0)) };
            }
            transpose16(&mut r);
            for (&at, v) in lay.at[q0..q0 + cols].iter().zip(&r) {
                if at != usize::MAX {
                    xs[at] = *v;
                }
            }
        }
        // Each output row by four positions, then the rest: independent accumulator chains
        // hide the adds' latency.
        let sw = s.stride[1];
        let ctx = Ctx {
            xs: &xs,
            taps: &lay.taps,
            w: &wv[..kk],
            bias: bias_v,
            sw,
            kind,
            ep,
        };
        {
            let (pw, ys) = (lay.pw, &mut ys);
            match kind {
                EpKind::None => outputs_of::<{ EpKind::NONE }>(&ctx, s, pw, ys),
                EpKind::HardSwish => outputs_of::<{ EpKind::HARD_SWISH }>(&ctx, s, pw, ys),
                EpKind::Bins => outputs_of::<{ EpKind::BINS }>(&ctx, s, pw, ys),
                EpKind::Other => outputs_of::<{ EpKind::OTHER }>(&ctx, s, pw, ys),
            }
        }
        // Back into the planes by 16×16 blocks: row `c` = position `q0 + c`'s 16 channels.
        for q0 in (0..opl).step_by(LANES) {
            let cols = LANES.min(opl - q0);
            let cmask = if cols == LANES {
                0xffff
            } else {
                ((1u32 << cols) - 1) as u16
            };
            let mut r = [zero; LANES];
            r[..cols].copy_from_slice(&ys[q0..q0 + cols]);
            transpose16(&mut r);
            for (l, v) in r.iter().enumerate().take(count) {
                // SAFETY: output plane `p0 + l < planes` holds `opl` floats inside `out` and
                // belongs to this call's groups; the mask enables positions `q0 + i < opl`.
                unsafe { _mm512_mask_storeu_ps(out.add((p0 + l) * opl + q0), cmask, *v) };
            }
        }
    }
}

/// [`outputs`] for the geometry of `s`: square 3×3 and 5×5 kernels at stride 1 or 2 with no
/// dilation slide along the rows ([`slide`]), the rest go tap by tap.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn outputs_of<const E: u8>(ctx: &Ctx, s: &Shape, pw: usize, ys: &mut [std::arch::x86_64::__m512]) {
    let (oh, ow, sh) = (s.out_hw[0], s.out_hw[1], s.stride[0]);
    let square = s.kernel[0] == s.kernel[1] && s.dilation == [1, 1] && sh == s.stride[1];
    match (square, s.kernel[1], sh) {
        (true, 3, 1) => outputs::<3, 1, E>(ctx, oh, ow, sh, pw, ys),
        (true, 3, 2) => outputs::<3, 2, E>(ctx, oh, ow, sh, pw, ys),
        (true, 5, 1) => outputs::<5, 1, E>(ctx, oh, ow, sh, pw, ys),
        (true, 5, 2) => outputs::<5, 2, E>(ctx, oh, ow, sh, pw, ys),
        _ => outputs::<0, 0, E>(ctx, oh, ow, sh, pw, ys),
    }
}

/// The group's `oh × ow` outputs into `ys`, with the epilogue of kind `E` compiled in (see
/// [`EpKind::NONE`]); blocks of 4 outputs by [`slide`] when `K` (the kernel size, at stride
/// `S`) is not 0.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn outputs<const K: usize, const S: usize, const E: u8>(
    ctx: &Ctx,
    oh: usize,
    ow: usize,
    sh: usize,
    pw: usize,
    ys: &mut [std::arch::x86_64::__m512],
) {
    let sw = ctx.sw;
    for oy in 0..oh {
        let row = oy * sh * pw;
        let y = &mut ys[oy * ow..(oy + 1) * ow];
        let mut ox = 0;
        while ox + 4 <= ow {
            if K == 0 {
                block::<4, E>(ctx, row + ox * sw, &mut y[ox..ox + 4]);
            } else {
                slide::<K, S, E>(ctx, row + ox * sw, pw, &mut y[ox..ox + 4]);
            }
            ox += 4;
        }
        match ow - ox {
            3 => block::<3, E>(ctx, row + ox * sw, &mut y[ox..]),
            2 => block::<2, E>(ctx, row + ox * sw, &mut y[ox..]),
            1 => block::<1, E>(ctx, row + ox * sw, &mut y[ox..]),
            _ => {}
        }
    }
}

/// What [`block`] reads: a group's scratch, the tap offsets and weights, the bias, the column
/// stride, the epilogue.
#[cfg(target_arch = "x86_64")]
struct Ctx<'a> {
    xs: &'a [std::arch::x86_64::__m512],
    taps: &'a [usize],
    w: &'a [std::arch::x86_64::__m512],
    bias: std::arch::x86_64::__m512,
    sw: usize,
    kind: EpKind,
    ep: &'a [EpOp],
}

/// `N` consecutive outputs of a row, whose first taps are at scratch position `base`, into
/// `y[..N]`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn block<const N: usize, const E: u8>(c: &Ctx, base: usize, y: &mut [std::arch::x86_64::__m512]) {
    use std::arch::x86_64::*;
    let mut acc = [c.bias; N];
    for (&o, &w) in c.taps.iter().zip(c.w) {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(c.xs[base + j * c.sw + o], w, *a);
        }
    }
    super::avx512::epilogue_of::<E, N>(c.kind, c.ep, &mut acc);
    y[..N].copy_from_slice(&acc);
}

/// [`block`] of 4 outputs for a square `K`×`K` kernel at stride `S`, no dilation: each
/// window row's `3·S + K` positions are loaded once and shared by the 4 outputs that read
/// them (`block` loads every tap of every output: 4·K² loads, the bound of the 5×5 layers).
/// Each accumulator still takes its taps in (ky, kx) order.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn slide<const K: usize, const S: usize, const E: u8>(
    c: &Ctx,
    base: usize,
    pw: usize,
    y: &mut [std::arch::x86_64::__m512],
) {
    use std::arch::x86_64::*;
    let mut acc = [c.bias; 4];
    for ky in 0..K {
        let rb = base + ky * pw;
        let mut xv = [_mm512_setzero_ps(); 16];
        for (p, v) in xv.iter_mut().enumerate().take(3 * S + K) {
            *v = c.xs[rb + p];
        }
        for kx in 0..K {
            let w = c.w[ky * K + kx];
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(xv[j * S + kx], w, *a);
            }
        }
    }
    super::avx512::epilogue_of::<E, 4>(c.kind, c.ep, &mut acc);
    y[..4].copy_from_slice(&acc);
}

/// Transposes the 16×16 matrix whose rows are `r` in place (rows become columns), in three
/// rounds of shuffles: 32-bit pairs, 64-bit pairs, then 128-bit lanes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn transpose16(r: &mut [std::arch::x86_64::__m512; 16]) {
    use std::arch::x86_64::*;
    let mut t = *r;
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4i + j], 128-bit lane k: rows 4i..4i+4 of column 4k + j.
    let mut u = t;
    for i in 0..4 {
        let pd = |v: __m512| _mm512_castps_pd(v);
        let ps = |v: __m512d| _mm512_castpd_ps(v);
        u[4 * i] = ps(_mm512_unpacklo_pd(pd(t[4 * i]), pd(t[4 * i + 2])));
        u[4 * i + 1] = ps(_mm512_unpackhi_pd(pd(t[4 * i]), pd(t[4 * i + 2])));
        u[4 * i + 2] = ps(_mm512_unpacklo_pd(pd(t[4 * i + 1]), pd(t[4 * i + 3])));
        u[4 * i + 3] = ps(_mm512_unpackhi_pd(pd(t[4 * i + 1]), pd(t[4 * i + 3])));
    }
    for j in 0..4 {
        // Lanes (0, 1) and (2, 3) of the row groups 0–3 / 4–7, and of 8–11 / 12–15.
        let p0 = _mm512_shuffle_f32x4::<0x44>(u[j], u[4 + j]);
        let p1 = _mm512_shuffle_f32x4::<0xEE>(u[j], u[4 + j]);
        let q0 = _mm512_shuffle_f32x4::<0x44>(u[8 + j], u[12 + j]);
        let q1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + j], u[12 + j]);
        r[j] = _mm512_shuffle_f32x4::<0x88>(p0, q0);
        r[4 + j] = _mm512_shuffle_f32x4::<0xDD>(p0, q0);
        r[8 + j] = _mm512_shuffle_f32x4::<0x88>(p1, q1);
        r[12 + j] = _mm512_shuffle_f32x4::<0xDD>(p1, q1);
    }
}
