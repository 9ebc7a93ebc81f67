//! The convolution of [`super::run_mixed`] on the 8-bit input itself, with AVX-512 VNNI dot
//! products: what the quantized MobileNets' and EfficientNets' depthwise layers run on.
//!
//! `vpdpbusd` adds four `u8 × i8` products per 32-bit lane. For a block of 16 outputs along
//! the flattened output plane, one 64-byte load per kernel row holds every input byte the
//! block's taps of that row read (the window); a byte permutation (`vpermb`, VBMI) gathers,
//! for each lane, four consecutive taps `x[k], x[k + d], x[k + 2d], x[k + 3d]` of its row, and
//! one dot product with the broadcast weights of those taps accumulates them. A 3×3 layer
//! takes three loads, three permutations and three dot products per 16 outputs, where the f32
//! kernels took a widening pass over the input and nine fused multiply-adds. Windows wider
//! than 64 bytes (stride 2 on maps narrower than 16, dilations) use two loads and the
//! two-table permutation (`vpermi2b`); kernels wider than 8 or windows wider than 128 bytes
//! stay on the f32 path.
//!
//! Each input plane is first copied into a padded plane whose border bytes are the zero point
//! (`i8` inputs offset by 128 to `u8`, the zero point with them), so the taps need no bounds:
//! `Σ (x − z)·w = Σ x·w − z·Σ w` over every tap, and the accumulator starts at
//! `bias − z·Σ w`. The result is an exact integer; converted to f32 it is what the f32 path
//! computes (every partial sum below 2^24, checked with the weights' absolute sum, the
//! weights integers in `i8`'s range, the bias an integer).
//!
//! Blocks: on planes at least 16 wide, runs of 16 along each output row (the last run of a
//! row overlapping the one before), all with the same permutation; on narrower planes, runs
//! of 16 across rows (each block its own permutation, at most [`FLAT_BLOCKS`] of them), or
//! one masked run per row. Four blocks run together (four independent dot-product chains);
//! on small maps the four may come from several planes (a 7×7 map has four blocks).
//!
//! A chunk's input planes are all padded before any is read (a window loaded right after
//! being stored in pieces waits for the stores), and a requantizing epilogue ([`Dest::Quant`])
//! is applied to the accumulators in registers: its division overlaps the dot products.
//!
//! MobileNetV2-QDQ on one Zen 4 core: its depthwise layers 1.53 → 1.05 ms, the model 4.09 →
//! 3.51 ms (the f32 path: widening pass, f32 kernel, requantization pass).

#![allow(unsafe_code)]

use super::{Input, Shape};

/// Most blocks a narrow plane is cut into across rows (each with its own permutation).
const FLAT_BLOCKS: usize = 64;

/// 16 outputs of a plane computed together.
#[derive(Clone, Copy, Debug)]
struct Block {
    /// The window's offset in the padded plane (kernel row 0).
    poff: u32,
    /// The first output's index in the plane.
    yoff: u32,
    /// The lanes that are outputs (the others are computed and dropped).
    mask: u16,
    /// The block's permutation (`NG` vectors of 64 indices from `set · NG · 64`).
    set: u16,
}

/// What a convolution's planes share on the byte path: the padded geometry, the blocks and
/// permutations, and each output channel's weights as packed `i8` quadruples. Made per call
/// by [`super::run_mixed`], or once for constant weights ([`super::run_mixed_planned`]).
#[derive(Debug)]
pub struct BytePlan {
    /// What it was made for (see [`BytePlan::fits`]).
    shape: Shape,
    zero: u32,
    signed: bool,
    w_len: usize,
    kh: usize,
    /// Dot products per kernel row (taps in fours): 1 or 2.
    ng: usize,
    /// Two 64-byte windows per row (`vpermi2b`) instead of one.
    two: bool,
    /// Bytes between kernel rows in the padded plane (`dilation_h · pw`).
    row_step: usize,
    pw: usize,
    /// Bytes of a padded plane (with room for the last window's load).
    plen: usize,
    pt: usize,
    pl: usize,
    blocks: Vec<Block>,
    idx: Vec<u8>,
    /// Per output channel, `kh · ng` words of four `i8` weights.
    wq: Vec<i32>,
    /// Per output channel, `bias − z·Σ w`.
    init: Vec<i32>,
    /// The zero point as the padded plane's byte.
    zb: u8,
    /// XORed into every input byte: 0x80 for `i8` (to `u8`), 0 for `u8`.
    flip: u8,
}

/// The blocks of a plane `pw` bytes wide, runs of 16 across rows when `flat` (each with its
/// own permutation) or along each row (one permutation): each block and the offsets of its
/// lanes' windows from the block's.
fn blocks(s: &Shape, pw: usize, flat: bool) -> (Vec<Block>, Vec<[usize; 16]>) {
    let [oh, ow] = s.out_hw;
    let [sh, sw] = s.stride;
    let mut blocks = Vec::new();
    let mut rels: Vec<[usize; 16]> = Vec::new();
    let mask = |lanes: usize| (((1u32 << lanes) - 1) & 0xffff) as u16;
    if flat {
        // Increasing with `o`: a row's last tap is left of the next row's first.
        let off = |o: usize| (o / ow) * sh * pw + (o % ow) * sw;
        let n = oh * ow;
        for b in 0..n.div_ceil(16) {
            let o0 = 16 * b;
            blocks.push(Block {
                poff: off(o0) as u32,
                yoff: o0 as u32,
                mask: mask((n - o0).min(16)),
                set: b as u16,
            });
            rels.push(std::array::from_fn(|l| off((o0 + l).min(n - 1)) - off(o0)));
        }
    } else {
        let lanes = ow.min(16);
        rels.push(std::array::from_fn(|l| l.min(lanes - 1) * sw));
        for r in 0..oh {
            for j in (0..ow).step_by(16) {
                let j0 = j.min(ow - lanes);
                blocks.push(Block {
                    poff: (r * sh * pw + j0 * sw) as u32,
                    yoff: (r * ow + j0) as u32,
                    mask: mask(lanes),
                    set: 0,
                });
            }
        }
    }
    (blocks, rels)
}

/// Bytes of the widest window of blocks with lane offsets `rels`.
fn span(rels: &[[usize; 16]], kw: usize, dw: usize) -> usize {
    rels.iter().flatten().max().copied().unwrap_or(0) + (kw - 1) * dw + 1
}

/// Whether this CPU has what the kernel uses.
#[cfg(target_arch = "x86_64")]
fn cpu_has() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
}

impl BytePlan {
    /// The plan for `s` when the integer path applies (8-bit input with an integer zero point,
    /// integer `i8` weights and bias, sums exact in f32, kernels at most 8 wide, windows at
    /// most 128 bytes) and the CPU has it.
    pub fn new(s: &Shape, x: &Input, w: &[f32], bias: Option<&[f32]>) -> Option<BytePlan> {
        #[cfg(not(target_arch = "x86_64"))]
        return None;
        #[cfg(target_arch = "x86_64")]
        if !cpu_has() {
            return None;
        }
        let (zero, flip, range) = match *x {
            Input::F32(_) => return None,
            Input::U8 { zero, .. } => (zero, 0u8, (0.0, 255.0)),
            Input::I8 { zero, .. } => (zero, 0x80, (-128.0, 127.0)),
        };
        if zero.fract() != 0.0 || !(range.0..=range.1).contains(&zero) {
            return None;
        }
        let zb = (zero as i32 + if flip != 0 { 128 } else { 0 }) as u8;
        let [kh, kw] = s.kernel;
        let [sh, sw] = s.stride;
        let [dh, dw] = s.dilation;
        let [ih, iw] = s.in_hw;
        let [oh, ow] = s.out_hw;
        // Callers may ask before the operands were checked (a plan made once per executor):
        // degenerate geometries and short weights or bias get no plan.
        let m = s.out_channels();
        let sizes = [kh, kw, sh, sw, dh, dw, oh, ow, s.mult];
        if sizes.contains(&0)
            || s.lens().is_none()
            || w.len() < m.saturating_mul(kh * kw)
            || bias.is_some_and(|b| b.len() < m)
        {
            return None;
        }
        let ng = kw.div_ceil(4);
        if ng > 2 {
            return None;
        }
        // Weights and bias: integers (the casts saturate and take NaN to 0, so a value that
        // survives the round trip is one), each channel's sum bounded so that f32 is exact.
        let i8_weight = |v: f32| v as i8 as f32 == v;
        let int = |v: f32| v as i32 as f32 == v && v.abs() < 16_777_216.0;
        if !w.iter().all(|&v| i8_weight(v)) || !bias.is_none_or(|b| b.iter().all(|&v| int(v))) {
            return None;
        }
        let kk = kh * kw;
        let mut wq = Vec::with_capacity(m * kh * ng);
        let mut init = Vec::with_capacity(m);
        for (c, wc) in w.chunks_exact(kk).take(m).enumerate() {
            let b = bias.map_or(0, |b| b[c] as i64);
            let abs: i64 = wc.iter().map(|&v| (v as i64).abs()).sum();
            if 255 * abs + b.abs() >= 1 << 24 {
                return None;
            }
            for row in wc.chunks_exact(kw) {
                for g in 0..ng {
                    let q: [u8; 4] =
                        std::array::from_fn(|t| row.get(4 * g + t).map_or(0, |&v| v as i8 as u8));
                    wq.push(i32::from_le_bytes(q));
                }
            }
            let sum: i64 = wc.iter().map(|&v| v as i64).sum();
            init.push((b - i64::from(zb) * sum) as i32);
        }
        // The padded plane: every tap of every output inside it.
        let [pt, pl] = s.pad;
        // The extent the taps reach, in checked arithmetic (sizes come from the artifact).
        let reach = |o: usize, st: usize, k: usize, d: usize| {
            (o - 1)
                .checked_mul(st)?
                .checked_add((k - 1).checked_mul(d)?)?
                .checked_add(1)
        };
        let pw = (pl.checked_add(iw)?).max(reach(ow, sw, kw, dw)?);
        let ph = (pt.checked_add(ih)?).max(reach(oh, sh, kh, dh)?);
        // Offsets are kept in 32 bits (with room for the windows past the plane).
        if ph.checked_mul(pw)?.checked_add(1 << 10)? > u32::MAX as usize
            || oh * ow > u32::MAX as usize
        {
            return None;
        }
        let (blocks, rels) = [true, false]
            .into_iter()
            .filter(|&flat| !flat || (ow < 16 && (oh * ow).div_ceil(16) <= FLAT_BLOCKS))
            .map(|flat| blocks(s, pw, flat))
            .find(|(_, rels)| span(rels, kw, dw) <= 128)?;
        let two = span(&rels, kw, dw) > 64;
        let mut idx = Vec::with_capacity(rels.len() * ng * 64);
        for rel in &rels {
            for g in 0..ng {
                for &r in rel {
                    for t in 0..4 {
                        // A tap past the kernel has weight 0: any byte of the window does.
                        let k = (4 * g + t).min(kw - 1);
                        idx.push((r + k * dw) as u8);
                    }
                }
            }
        }
        let row_step = dh * pw;
        let last = blocks.iter().map(|b| b.poff as usize).max().unwrap_or(0);
        // The last window's loads, and the padding's last row store (`rows`), stay inside.
        let plen = (ph * pw)
            .max(last + (kh - 1) * row_step + if two { 128 } else { 64 })
            .max((pt + ih) * pw + 64);
        Some(BytePlan {
            shape: *s,
            zero: zero.to_bits(),
            signed: flip != 0,
            w_len: w.len(),
            kh,
            ng,
            two,
            row_step,
            pw,
            plen,
            pt,
            pl,
            blocks,
            idx,
            wq,
            init,
            zb,
            flip,
        })
    }

    /// Whether the plan was made for this convolution (the batch, and the weights' and bias's
    /// values aside).
    pub(super) fn fits(&self, s: &Shape, x: &Input, w: &[f32], bias: Option<&[f32]>) -> bool {
        let (zero, signed) = match *x {
            Input::F32(_) => return false,
            Input::U8 { zero, .. } => (zero, false),
            Input::I8 { zero, .. } => (zero, true),
        };
        Shape {
            batch: s.batch,
            ..self.shape
        } == *s
            && self.zero == zero.to_bits()
            && self.signed == signed
            && self.w_len == w.len()
            && bias.is_none_or(|b| b.len() >= self.init.len())
    }

    /// Input channels `c0..c1` of image `n` into `p` as padded planes of `u8` (`plen` bytes
    /// apart; the rest of each the zero point's byte), all before any is read: loads of a
    /// window just stored in pieces would wait for the stores.
    pub(super) fn pad(
        &self,
        s: &Shape,
        x: Input,
        n: usize,
        (c0, c1): (usize, usize),
        p: &mut Vec<u8>,
    ) {
        let [ih, iw] = s.in_hw;
        let planes = n * s.in_channels + c0..n * s.in_channels + c1;
        p.resize(planes.len() * self.plen, self.zb);
        for (u, q) in planes.zip(p.chunks_exact_mut(self.plen)) {
            let (top, bottom) = (self.pt * self.pw, (self.pt + ih) * self.pw);
            q[..top].fill(self.zb);
            let plane = u * ih * iw..(u + 1) * ih * iw;
            // The bytes of an `i8` input read as `u8` (`flip` then offsets them by 128).
            let src = match x {
                Input::U8 { x, .. } => x[plane].as_ptr(),
                Input::I8 { x, .. } => x[plane].as_ptr().cast::<u8>(),
                Input::F32(_) => return,
            };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `BytePlan::new` checked the CPU; the source rows are the plane's `ih·iw`
            // bytes (sliced above), the padded rows `pt..pt + ih` of `pw` bytes and 64 more lie
            // inside `q` (`plen ≥ (pt + ih)·pw + 64`), and each holds `pl + iw ≤ pw` bytes.
            unsafe {
                rows(
                    src,
                    q.as_mut_ptr().add(top),
                    (ih, iw),
                    (self.pw, self.pl),
                    self.zb,
                    self.flip,
                )
            };
            // After the rows: their last store ran into it.
            q[bottom..].fill(self.zb);
        }
    }

    /// Output channels `m0..m1` into `dest` from their padded input planes `ps` (of
    /// [`BytePlan::pad`], for input channels `m0 / mult..`).
    pub(super) fn planes(&self, ps: &[u8], (m0, m1): (usize, usize), dest: Dest) {
        let mult = self.shape.mult;
        let ohw = self.shape.out_hw[0] * self.shape.out_hw[1];
        assert!(
            m0 % mult == 0
                && m1 <= self.init.len()
                && ps.len() >= (m1 - m0).div_ceil(mult) * self.plen
                && match &dest {
                    Dest::Acc(y) => y.len() >= (m1 - m0) * ohw,
                    #[cfg(target_arch = "x86_64")]
                    Dest::Quant(..) => true,
                },
            "planes for the chunk"
        );
        if m1 <= m0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `BytePlan::new` checked the CPU; `ps` holds the input planes of channels
        // `m0..m1`, `plen` bytes each, which cover every block's windows, and every block's
        // lanes lie inside its output plane of `dest` (asserted above; for `Quant`, the
        // caller's contract).
        unsafe {
            match (self.ng, self.two) {
                (1, false) => planes::<1, false>(self, ps, (m0, m1), dest),
                (1, true) => planes::<1, true>(self, ps, (m0, m1), dest),
                (_, false) => planes::<2, false>(self, ps, (m0, m1), dest),
                (_, true) => planes::<2, true>(self, ps, (m0, m1), dest),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = dest;
    }
}

/// Where a chunk's results go: its accumulators as f32 (`ohw` per plane), or requantized
/// into the output from its first plane (`ohw` elements of the lanes' type per plane, which
/// the caller guarantees are writable).
pub(super) enum Dest<'a> {
    Acc(&'a mut [f32]),
    #[cfg(target_arch = "x86_64")]
    Quant(super::mixed::RqLanes<'a>, *mut u8),
}

/// Rows `0..ih` of a padded plane at `dst` (`pw` bytes apart): `pl` bytes of `zb`, the `iw`
/// bytes of the source row XOR `flip`, `zb` to the row's end; each 64 bytes composed in a
/// register (a masked load over `zb ^ flip`) and stored whole, so a row's last store may run
/// up to 63 bytes into what follows it (the next row, rewritten next, or the caller's).
///
/// # Safety
///
/// The CPU has AVX-512F/BW; `src` holds `ih·iw` bytes, `dst` `ih·pw + 64`, and `pl + iw ≤ pw`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rows(
    src: *const u8,
    dst: *mut u8,
    (ih, iw): (usize, usize),
    (pw, pl): (usize, usize),
    zb: u8,
    flip: u8,
) {
    use std::arch::x86_64::*;
    let (zf, f) = (
        _mm512_set1_epi8((zb ^ flip) as i8),
        _mm512_set1_epi8(flip as i8),
    );
    // Lanes `lo..hi` of a 64-lane mask.
    let lanes = |lo: usize, hi: usize| {
        let below = |n: usize| if n >= 64 { !0u64 } else { (1u64 << n) - 1 };
        below(hi) & !below(lo)
    };
    for r in 0..ih {
        let (d, sr) = (dst.wrapping_add(r * pw), src.wrapping_add(r * iw));
        for j in (0..pw).step_by(64) {
            // Padded columns `j..j + 64` hold source columns `j − pl..`, those in `[0, iw)`.
            let (lo, hi) = (pl.saturating_sub(j), (pl + iw).saturating_sub(j).min(64));
            let k = if hi > lo { lanes(lo, hi) } else { 0 };
            // SAFETY: only the lanes of `k` are loaded, source columns `j + lo − pl .. j + hi −
            // pl` of row `r`, inside it (the contract); the store's 64 bytes from column `j <
            // pw` of row `r` lie in `dst`'s `ih·pw + 64` bytes.
            unsafe {
                let v = _mm512_mask_loadu_epi8(zf, k, sr.wrapping_add(j).wrapping_sub(pl).cast());
                _mm512_storeu_si512(d.add(j).cast(), _mm512_xor_si512(v, f));
            }
        }
    }
}

/// Blocks per plane from which [`planes`] runs plane by plane (see [`per_plane`]).
const PER_PLANE: usize = 8;

/// One block of one plane: where its window and permutation are, its channel's weights,
/// and where its lanes go.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Item {
    src: *const u8,
    ix: *const u8,
    w: *const i32,
    init: i32,
    /// The output channel.
    m: usize,
    /// The first lane's element in the chunk's output.
    at: usize,
    mask: u16,
}

/// Output channels `m0..m1`: their blocks four at a time (independent dot-product chains, each
/// accumulator in a register through every kernel row). On small maps (fewer than
/// [`PER_PLANE`] blocks) a quad may span planes, so that they fill it too, the last quad
/// filled up with copies of the last block; larger ones run plane by plane ([`per_plane`]).
///
/// # Safety
///
/// The CPU has AVX-512F/BW/VL/DQ, VNNI and VBMI; `ps` holds the chunk's padded planes and
/// `dest` its output planes (see [`BytePlan::planes`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi")]
unsafe fn planes<const NG: usize, const TWO: bool>(
    pl: &BytePlan,
    ps: &[u8],
    (m0, m1): (usize, usize),
    dest: Dest,
) {
    use std::arch::x86_64::*;
    let ohw = pl.shape.out_hw[0] * pl.shape.out_hw[1];
    let mult = pl.shape.mult;
    let (y, quant) = match dest {
        Dest::Acc(y) => (y.as_mut_ptr(), None),
        Dest::Quant(lanes, out) => (std::ptr::null_mut(), Some((lanes, out))),
    };
    let (blocks, nb) = (&pl.blocks, pl.blocks.len());
    let (planes, kq) = (m1 - m0, pl.kh * NG);
    // The (plane, block) pairs in order, `src` the plane's padded input; past the end, the
    // last one again.
    let (mut i, mut bi, mut src, mut mi) = (0usize, 0usize, ps.as_ptr(), 0usize);
    macro_rules! next {
        () => {{
            let b = blocks[bi];
            let m = m0 + i;
            // SAFETY: the plane of `ps` for channel `m`, its weights, block `b`'s permutation.
            let t = unsafe {
                Item {
                    src: src.add(b.poff as usize),
                    ix: pl.idx.as_ptr().add(b.set as usize * NG * 64),
                    w: pl.wq.as_ptr().add(m * kq),
                    init: pl.init[m],
                    m,
                    at: i * ohw + b.yoff as usize,
                    mask: b.mask,
                }
            };
            if i + 1 < planes || bi + 1 < nb {
                bi += 1;
                if bi == nb {
                    (i, bi) = (i + 1, 0);
                    mi += 1;
                    if mi == mult {
                        // SAFETY: the next input plane (channel `m0 + i` exists).
                        src = unsafe { src.add(pl.plen) };
                        mi = 0;
                    }
                }
            }
            t
        }};
    }
    // One kernel row `$ky` of item `$t` into accumulator `$a`.
    macro_rules! tap_row {
        ($a:ident, $t:expr, $ky:expr) => {{
            let src = $t.src.add($ky * pl.row_step);
            let lo = _mm512_loadu_si512(src.cast());
            let hi = if TWO {
                _mm512_loadu_si512(src.add(64).cast())
            } else {
                lo
            };
            for g in 0..NG {
                let i = _mm512_loadu_si512($t.ix.add(g * 64).cast());
                let v = if TWO {
                    _mm512_permutex2var_epi8(lo, i, hi)
                } else {
                    _mm512_permutexvar_epi8(i, lo)
                };
                let w = _mm512_set1_epi32(*$t.w.add($ky * NG + g));
                $a = _mm512_dpbusd_epi32($a, v, w);
            }
        }};
    }
    macro_rules! store {
        ($a:ident, $t:expr) => {{
            let x = _mm512_cvtepi32_ps($a);
            match &quant {
                None => _mm512_mask_storeu_ps(y.add($t.at), $t.mask, x),
                Some((lanes, out)) => {
                    let (mult, shift) = lanes.channel($t.m);
                    let ms = (_mm512_set1_ps(mult), _mm512_set1_ps(shift));
                    lanes.store(x, ms, *out, $t.at, $t.mask)
                }
            }
        }};
    }
    if nb >= PER_PLANE {
        // SAFETY: the function's contract.
        unsafe { per_plane::<NG, TWO>(pl, ps, (m0, m1), (y, quant)) };
        return;
    }
    let mut left = planes * nb;
    while left > 0 {
        left = left.saturating_sub(4);
        let t: [Item; 4] = [next!(), next!(), next!(), next!()];
        let (mut a0, mut a1, mut a2, mut a3) = (
            _mm512_set1_epi32(t[0].init),
            _mm512_set1_epi32(t[1].init),
            _mm512_set1_epi32(t[2].init),
            _mm512_set1_epi32(t[3].init),
        );
        for ky in 0..pl.kh {
            // SAFETY: every block's window of every kernel row lies inside its plane of `ps`
            // (`plen`), the weights inside `wq`, the permutations inside `idx`.
            unsafe {
                tap_row!(a0, t[0], ky);
                tap_row!(a1, t[1], ky);
                tap_row!(a2, t[2], ky);
                tap_row!(a3, t[3], ky);
            }
        }
        // SAFETY: each block's lanes (`mask`) are outputs of its plane (the contract).
        unsafe {
            store!(a0, t[0]);
            store!(a1, t[1]);
            store!(a2, t[2]);
            store!(a3, t[3]);
        }
    }
}

/// [`planes`] plane by plane: each plane's weights, requantization and (in rows of 16) the
/// permutation loaded once for its blocks, its last blocks one at a time.
///
/// # Safety
///
/// As for [`planes`]; `y` is the accumulators' destination unless `quant` is given.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi")]
unsafe fn per_plane<const NG: usize, const TWO: bool>(
    pl: &BytePlan,
    ps: &[u8],
    (m0, m1): (usize, usize),
    (y, quant): (*mut f32, Option<(super::mixed::RqLanes, *mut u8)>),
) {
    use std::arch::x86_64::*;
    let ohw = pl.shape.out_hw[0] * pl.shape.out_hw[1];
    let (mult, kq) = (pl.shape.mult, pl.kh * NG);
    let idx = pl.idx.as_ptr();
    let mut src = ps.as_ptr();
    // One kernel row of block `$b` into accumulator `$a`, weights `$w`, row pointer `$row`.
    macro_rules! tap_row {
        ($a:ident, $b:expr, $row:expr, $w:expr) => {{
            let s = $row.add($b.poff as usize);
            let lo = _mm512_loadu_si512(s.cast());
            let hi = if TWO {
                _mm512_loadu_si512(s.add(64).cast())
            } else {
                lo
            };
            let ix = idx.add($b.set as usize * NG * 64);
            for g in 0..NG {
                let i = _mm512_loadu_si512(ix.add(g * 64).cast());
                let v = if TWO {
                    _mm512_permutex2var_epi8(lo, i, hi)
                } else {
                    _mm512_permutexvar_epi8(i, lo)
                };
                $a = _mm512_dpbusd_epi32($a, v, $w[g]);
            }
        }};
    }
    for i in 0..m1 - m0 {
        let m = m0 + i;
        if i > 0 && i % mult == 0 {
            // SAFETY: the next input plane of the chunk.
            src = unsafe { src.add(pl.plen) };
        }
        let wq = &pl.wq[m * kq..(m + 1) * kq];
        let init = _mm512_set1_epi32(pl.init[m]);
        let ms = quant.map(|(lanes, _)| {
            let (a, b) = lanes.channel(m);
            (_mm512_set1_ps(a), _mm512_set1_ps(b))
        });
        macro_rules! store {
            ($a:ident, $b:expr) => {{
                let x = _mm512_cvtepi32_ps($a);
                let at = i * ohw + $b.yoff as usize;
                match (&quant, ms) {
                    (Some((lanes, out)), Some(ms)) => lanes.store(x, ms, *out, at, $b.mask),
                    _ => _mm512_mask_storeu_ps(y.add(at), $b.mask, x),
                }
            }};
        }
        let weights = |ky: usize| -> [__m512i; NG] {
            std::array::from_fn(|g| _mm512_set1_epi32(wq[ky * NG + g]))
        };
        let mut quads = pl.blocks.chunks_exact(4);
        for q in &mut quads {
            let (mut a0, mut a1, mut a2, mut a3) = (init, init, init, init);
            for ky in 0..pl.kh {
                let w = weights(ky);
                // SAFETY: every block's window of every kernel row lies inside the plane
                // (`plen`).
                unsafe {
                    let row = src.add(ky * pl.row_step);
                    tap_row!(a0, q[0], row, w);
                    tap_row!(a1, q[1], row, w);
                    tap_row!(a2, q[2], row, w);
                    tap_row!(a3, q[3], row, w);
                }
            }
            // SAFETY: each block's lanes (`mask`) are outputs of the plane (the contract).
            unsafe {
                store!(a0, q[0]);
                store!(a1, q[1]);
                store!(a2, q[2]);
                store!(a3, q[3]);
            }
        }
        for b in quads.remainder() {
            let mut a = init;
            for ky in 0..pl.kh {
                let w = weights(ky);
                // SAFETY: as above.
                unsafe { tap_row!(a, b, src.add(ky * pl.row_step), w) };
            }
            // SAFETY: as above.
            unsafe { store!(a, b) };
        }
    }
}
