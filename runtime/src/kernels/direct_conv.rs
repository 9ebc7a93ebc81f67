//! f32 2-D convolution computed straight from the image, for layers with few input channels
//! (a network's first layer: RGB in, 3×3 or 7×7 taps, stride 2).
//!
//! As a GEMM such a layer multiplies `m` output channels by a column matrix of `c·kh·kw` rows
//! (27 for a 3×3 RGB stem) and `oh·ow` columns, and writing that matrix costs about as much
//! as the product when `m` is small: PP-LCNet's and MNASNet's 16-channel stems spent 80 µs
//! copying blocks of it beside 125 µs of GEMM (measured). Here each row of `B` is formed in
//! registers from the image row it reads, the way the depthwise kernels read theirs: per tap
//! one masked load (column stride 1), two and a `vpermt2ps` (stride 2) or a gather, with the
//! fill in the lanes outside the plane. A tile is `MB` output channels × 16 output columns of
//! one output row in `MB` zmm accumulators, one broadcast weight per channel and tap, the
//! weights packed per block of channels so that the broadcasts read consecutive floats.
//! Each output is one chain of FMAs in `(c, ky, kx)` order, as the GEMM computes it on the
//! column matrix.
//!
//! The epilogue is the GEMM's ([`Epilogue`]: alpha, a scalar or per-channel bias, the
//! activation), and its tile hook runs on each finished output row of a block of channels.
//! Reading `C` (beta, a residual) and per-column biases are refused ([`DirectError::Refused`]):
//! convolutions do not produce them.
//!
//! ```
//! use mlc_runtime::kernels::direct_conv::{run, Weights};
//! use mlc_runtime::kernels::gemm::Epilogue;
//! use mlc_runtime::kernels::im2col::Im2col;
//! use mlc_runtime::kernels::Isa;
//!
//! // One 3×3 channel, a 3×3 box filter, pad 1: every output sums its in-range neighbours.
//! let geo = Im2col { channels: 1, ih: 3, iw: 3, oh: 3, ow: 3, kh: 3, kw: 3,
//!                    sh: 1, sw: 1, dh: 1, dw: 1, pt: 1, pl: 1 };
//! let (x, w) = ([1.0f32; 9], [1.0f32; 9]);
//! let mut y = [0.0f32; 9];
//! let weights = Weights { data: &w, rs: 9, cs: 1 };
//! if Isa::detect() == Isa::Avx512 {
//!     run(&geo, 1, weights, &x, 0.0, &mut y, 9, &Epilogue::new(), 1).unwrap();
//!     assert_eq!(y, [4.0, 6.0, 4.0, 6.0, 9.0, 6.0, 4.0, 6.0, 4.0]);
//! }
//! ```

// The tiles read the image through masked loads and gathers at computed offsets and write
// disjoint parts of `C` from several threads through a shared pointer; each use has a
// `SAFETY:` comment.
#![allow(unsafe_code)]

use super::Isa;
#[cfg(target_arch = "x86_64")]
use super::SendPtr;
use super::gemm::{Bias, Epilogue};
use super::im2col::Im2col;

#[cfg(test)]
mod tests;

/// The weights, an `m × c·kh·kw` matrix: element `(r, k)` at `data[r·rs + k·cs]`, `k` running
/// over `(c, ky, kx)` (the GEMM's `A`).
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// Why a convolution was not computed (nothing is written then).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectError {
    #[error("{operand} needs {needed} elements but has {len}")]
    TooShort {
        operand: &'static str,
        needed: usize,
        len: usize,
    },
    #[error("the convolution's sizes overflow the address space")]
    Overflow,
    /// Something these kernels do not do: no AVX-512 on this CPU, a zero stride, dilation or
    /// kernel size, or an epilogue that reads `C` or has a per-column bias.
    #[error("the direct kernels do not take this convolution: {0}")]
    Refused(&'static str),
}

/// Whether the direct kernels beat copying the column matrix for the GEMM, on this CPU, for
/// `m` output channels of the geometry `geo`. Measured on Zen 4 (per-layer times in
/// `docs/benchmarks.md`): images of at most 4 channels (3→16 3×3 stride 2 at 224×224 0.22 →
/// 0.13 ms, 3→64 7×7 2.90 → 2.62) and at most 32 output channels (16→24 3×3 stride 2
/// 0.35 → 0.29, 8→16 3×3 0.39 → 0.28); from 64 output channels of 32 or more input channels
/// the GEMM's 12×32 tiles win (64→128 3×3 stride 2: 1.49 against 1.30). Column strides past 2
/// gather every tap (a ViT's 16×16 stride-16 patches: 2.3× slower than im2col + GEMM).
pub fn pays(geo: &Im2col, m: usize) -> bool {
    Isa::detect() == Isa::Avx512 && geo.sw <= 2 && (geo.channels <= 4 || m <= 32)
}

/// `out = ep(conv(image, weights))`: output channel `r`'s `oh·ow` results at `out[r·ldc..]`,
/// on up to `threads` threads of the runtime's pool.
#[allow(clippy::too_many_arguments)]
pub fn run(
    geo: &Im2col,
    m: usize,
    w: Weights,
    image: &[f32],
    fill: f32,
    out: &mut [f32],
    ldc: usize,
    ep: &Epilogue,
    threads: usize,
) -> Result<(), DirectError> {
    let g = geo;
    if [g.sh, g.sw, g.dh, g.dw, g.kh, g.kw].contains(&0) {
        return Err(DirectError::Refused(
            "a zero stride, dilation or kernel size",
        ));
    }
    if ep.beta != 0.0 || ep.residual.is_some() || matches!(ep.bias, Bias::PerCol(_)) {
        return Err(DirectError::Refused(
            "an epilogue that reads C or a per-column bias",
        ));
    }
    let (k, n) = g.dims();
    let needed_w = if m == 0 || k == 0 {
        0
    } else {
        (m - 1)
            .checked_mul(w.rs)
            .and_then(|a| (k - 1).checked_mul(w.cs).and_then(|b| a.checked_add(b)))
            .and_then(|a| a.checked_add(1))
            .ok_or(DirectError::Overflow)?
    };
    let needed_out = if m == 0 || n == 0 {
        0
    } else {
        (m - 1)
            .checked_mul(ldc)
            .and_then(|a| a.checked_add(n))
            .ok_or(DirectError::Overflow)?
    };
    let bias_len = match ep.bias {
        Bias::PerRow(b) => b.len(),
        _ => m,
    };
    for (operand, needed, len) in [
        ("image", g.image_len(), image.len()),
        ("weights", needed_w, w.data.len()),
        ("out", needed_out, out.len()),
        ("bias", m, bias_len),
    ] {
        if len < needed {
            return Err(DirectError::TooShort {
                operand,
                needed,
                len,
            });
        }
    }
    if m > 1 && ldc < n {
        return Err(DirectError::Refused("output rows that overlap"));
    }
    // Tap columns and rows are formed in `isize`, gather indices in `i32`.
    let reach = |o: usize, s: usize, kk: usize, d: usize, p: usize| {
        o.checked_add(16)
            .and_then(|o| o.checked_mul(s))
            .and_then(|a| a.checked_add(kk.checked_mul(d)?))
            .and_then(|a| a.checked_add(p))
            .filter(|&r| r < i32::MAX as usize)
    };
    if reach(g.ow, g.sw, g.kw, g.dw, g.pl).is_none()
        || reach(g.oh, g.sh, g.kh, g.dh, g.pt).is_none()
        || g.image_len() >= isize::MAX as usize / 4
    {
        return Err(DirectError::Overflow);
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx512.is_supported() {
        // The weights per block of channels, tap-major: the broadcasts of one tap read
        // consecutive floats. Rows past `m` are zero (computed, never stored).
        let blocks = blocks(m);
        let mut packed = vec![0.0f32; blocks.iter().map(|&(_, mb)| k * mb).sum()];
        let mut at = 0;
        for &(r0, mb) in &blocks {
            for (kk, tap) in packed[at..at + k * mb].chunks_exact_mut(mb).enumerate() {
                for (r, v) in tap.iter_mut().enumerate() {
                    if r0 + r < m {
                        *v = w.data[(r0 + r) * w.rs + kk * w.cs];
                    }
                }
            }
            at += k * mb;
        }
        let cx = avx512::Ctx::new(g, m, &blocks, &packed, image, fill, ldc, ep);
        let tasks = if threads <= 1 {
            1
        } else {
            g.oh.min(4 * threads)
        };
        let per = g.oh.div_ceil(tasks);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let task = |t: usize| {
            let rows = (t * per)..((t + 1) * per).min(g.oh);
            // SAFETY: AVX-512F is supported (checked above); every operand was checked
            // against the geometry; tasks write disjoint output rows of `out` (columns
            // `oy·ow..(oy + 1)·ow` of every channel), and all of them end before `run` returns
            // (`parallel_for` joins its tasks).
            unsafe { cx.rows(rows, out_ptr) };
        };
        if tasks == 1 {
            task(0);
        } else {
            super::parallel_for(tasks, &task);
        }
        return Ok(());
    }
    let _ = (fill, threads);
    Err(DirectError::Refused("no AVX-512 on this CPU"))
}

/// The blocks of output channels `(first, rows)` a tile computes: 16 at a time (16 zmm
/// accumulators), the last 8 when at most 8 remain. Measured on Zen 4 against tiles of 8, 12×2
/// chunks and 24: 16 was fastest for 16, 32 and 64 channels, and 16 + 8 for 24 (24 zmm
/// accumulators left too few registers for the rest and ran 10–15% slower).
#[cfg(target_arch = "x86_64")]
fn blocks(m: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(m.div_ceil(8));
    let mut r0 = 0;
    while r0 < m {
        let mb = if m - r0 <= 8 { 8 } else { 16 };
        out.push((r0, mb));
        r0 += mb;
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::SendPtr;
    use super::super::depthwise::range_mask;
    use super::super::gemm::avx512::activate16;
    use super::super::gemm::{Activation, Bias, Epilogue, TileHook};
    use super::super::im2col::Im2col;
    use std::arch::x86_64::*;

    const L: usize = 16;

    /// One call's geometry, packed weights, column table and epilogue.
    pub(super) struct Ctx<'a> {
        channels: usize,
        ih: isize,
        iw: isize,
        ow: usize,
        kh: usize,
        kw: usize,
        sh: isize,
        sw: isize,
        dh: isize,
        pt: isize,
        m: usize,
        /// The blocks of channels `(first, rows)`, their weights one after the other in
        /// `packed`, `k × rows` each.
        blocks: &'a [(usize, usize)],
        packed: &'a [f32],
        image: &'a [f32],
        fill: f32,
        ldc: usize,
        /// Per (chunk of 16 output columns, kx): the first input column read and the masks of
        /// the 16 (stride 1, gathers) or 32 (stride 2) input columns from it inside the row.
        cols: Vec<(isize, u16, u16)>,
        alpha: f32,
        scalar: f32,
        row_bias: Option<&'a [f32]>,
        act: Activation,
        hook: Option<TileHook<'a>>,
    }

    impl<'a> Ctx<'a> {
        #[allow(clippy::too_many_arguments)]
        pub(super) fn new(
            g: &Im2col,
            m: usize,
            blocks: &'a [(usize, usize)],
            packed: &'a [f32],
            image: &'a [f32],
            fill: f32,
            ldc: usize,
            ep: &Epilogue<'a>,
        ) -> Ctx<'a> {
            let (iw, sw, dw, pl) = (g.iw as isize, g.sw as isize, g.dw as isize, g.pl as isize);
            let chunks = g.ow.div_ceil(L);
            let mut cols = Vec::with_capacity(chunks * g.kw);
            for q in 0..chunks {
                for kx in 0..g.kw {
                    let c0 = (q * L) as isize * sw + kx as isize * dw - pl;
                    cols.push((c0, range_mask(c0, iw), range_mask(c0 + L as isize, iw)));
                }
            }
            let (scalar, row_bias) = match ep.bias {
                Bias::Scalar(s) => (s, None),
                Bias::PerRow(b) => (0.0, Some(b)),
                _ => (0.0, None),
            };
            Ctx {
                channels: g.channels,
                ih: g.ih as isize,
                iw,
                ow: g.ow,
                kh: g.kh,
                kw: g.kw,
                sh: g.sh as isize,
                sw,
                dh: g.dh as isize,
                pt: g.pt as isize,
                m,
                blocks,
                packed,
                image,
                fill,
                ldc,
                cols,
                alpha: ep.alpha,
                scalar,
                row_bias,
                act: ep.activation,
                hook: ep.tile_hook,
            }
        }

        /// Output rows `rows` of every channel.
        ///
        /// # Safety
        ///
        /// The CPU supports AVX-512F; `run` checked the operands against the geometry; `out`
        /// is `C`, and no other thread writes these rows.
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn rows(&self, rows: std::ops::Range<usize>, out: SendPtr) {
            // SAFETY (all): forwarded contract.
            unsafe {
                match self.sw {
                    1 => self.rows_of::<1>(rows, out),
                    2 => self.rows_of::<2>(rows, out),
                    _ => self.rows_of::<0>(rows, out),
                }
            }
        }

        /// [`Ctx::rows`] at column stride `S` (0: any, gathered).
        ///
        /// # Safety
        ///
        /// As [`Ctx::rows`].
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn rows_of<const S: usize>(&self, rows: std::ops::Range<usize>, out: SendPtr) {
            let k = self.channels * self.kh * self.kw;
            let chunks = self.ow.div_ceil(L);
            for oy in rows {
                let mut at = 0;
                for &(r0, mb) in self.blocks {
                    let wb = &self.packed[at..at + k * mb];
                    at += k * mb;
                    let nrows = mb.min(self.m - r0);
                    let dst = out.get().wrapping_add(r0 * self.ldc + oy * self.ow);
                    for q in 0..chunks {
                        // SAFETY: forwarded contract; `dst` is output row `oy` of channel
                        // `r0`, `nrows` channels `ldc` apart lie in `C`, and chunk `q`'s lanes
                        // below `ow` lie in the row.
                        unsafe {
                            if mb == 16 {
                                self.tile::<16, S>(wb, r0, oy, q, nrows, dst)
                            } else {
                                self.tile::<8, S>(wb, r0, oy, q, nrows, dst)
                            }
                        };
                    }
                    if let Some(h) = self.hook {
                        (h.0)(r0, nrows, oy * self.ow, self.ow);
                    }
                }
            }
        }

        /// Channels `r0..r0 + nrows` (a block, weights `wb`, `MB` rows) at output columns
        /// `16·q..16·q + 16` of row `oy`, stored from `dst` (the block's first channel at the
        /// row's first column).
        ///
        /// # Safety
        ///
        /// As [`Ctx::rows_of`]; `dst` as described, `nrows <= MB`, chunk `q` exists.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn tile<const MB: usize, const S: usize>(
            &self,
            wb: &[f32],
            r0: usize,
            oy: usize,
            q: usize,
            nrows: usize,
            dst: *mut f32,
        ) {
            let fill = _mm512_set1_ps(self.fill);
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            let step = _mm512_mullo_epi32(lane, _mm512_set1_epi32(self.sw as i32));
            let mut acc = [_mm512_setzero_ps(); MB];
            let kw = self.kw;
            let cols = &self.cols[q * kw..(q + 1) * kw];
            let plane = self.ih as usize * self.iw as usize;
            let mut wp = wb.as_ptr();
            for c in 0..self.channels {
                for ky in 0..self.kh {
                    let iy = oy as isize * self.sh + ky as isize * self.dh - self.pt;
                    let inside = iy >= 0 && iy < self.ih;
                    // The row's first element; used only when `inside`.
                    let rowp = self
                        .image
                        .as_ptr()
                        .wrapping_add(c * plane)
                        .wrapping_offset(iy * self.iw);
                    for &(c0, m0, m1) in cols {
                        let p = rowp.wrapping_offset(c0);
                        let xv = {
                            // SAFETY: row `iy` lies in the plane when `inside` (else nothing
                            // is read); the masks enable exactly the lanes whose columns lie
                            // inside the row, and masked-off lanes are never accessed.
                            unsafe {
                                if !inside {
                                    fill
                                } else if S == 1 {
                                    _mm512_mask_loadu_ps(fill, m0, p)
                                } else if S == 2 {
                                    _mm512_permutex2var_ps(
                                        _mm512_mask_loadu_ps(fill, m0, p),
                                        even,
                                        _mm512_mask_loadu_ps(fill, m1, p.wrapping_add(L)),
                                    )
                                } else {
                                    let idx = _mm512_add_epi32(step, _mm512_set1_epi32(c0 as i32));
                                    let ok = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512())
                                        & _mm512_cmplt_epi32_mask(
                                            idx,
                                            _mm512_set1_epi32(self.iw as i32),
                                        );
                                    _mm512_mask_i32gather_ps::<4>(fill, ok, idx, rowp)
                                }
                            }
                        };
                        for (r, a) in acc.iter_mut().enumerate() {
                            // SAFETY: `wb` holds `k·MB` floats and `wp` advances `MB` per
                            // tap, `k` taps in all.
                            let wv = _mm512_set1_ps(unsafe { *wp.add(r) });
                            *a = _mm512_fmadd_ps(wv, xv, *a);
                        }
                        wp = wp.wrapping_add(MB);
                    }
                }
            }
            // Every loop over `acc` below has constant bounds and a small body, so that LLVM
            // unrolls it and keeps `acc` in registers; a loop it keeps rolled indexes `acc` and
            // sends it to the stack through the taps' loop too (measured 1.4× slower).
            if self.alpha != 1.0 {
                let alpha = _mm512_set1_ps(self.alpha);
                acc.iter_mut().for_each(|a| *a = _mm512_mul_ps(*a, alpha));
            }
            if self.scalar != 0.0 {
                let scalar = _mm512_set1_ps(self.scalar);
                acc.iter_mut().for_each(|a| *a = _mm512_add_ps(*a, scalar));
            }
            if let Some(b) = self.row_bias {
                // `run` checked that the bias holds `m` values; rows past them stay unstored.
                for (r, a) in acc.iter_mut().enumerate() {
                    let v = b.get(r0 + r).copied().unwrap_or(0.0);
                    *a = _mm512_add_ps(*a, _mm512_set1_ps(v));
                }
            }
            let zero = _mm512_setzero_ps();
            if self.act == Activation::Relu {
                acc.iter_mut().for_each(|a| *a = _mm512_max_ps(*a, zero));
            }
            let lanes = (self.ow - q * L).min(L);
            let mask = ((1u32 << lanes) - 1) as u16;
            for (r, a) in acc.iter().enumerate() {
                if r < nrows {
                    // SAFETY: channel `r < nrows` of the block, output row `oy`, the lanes of
                    // chunk `q` below `ow` (see the contract).
                    unsafe { _mm512_mask_storeu_ps(dst.add(r * self.ldc + q * L), mask, *a) };
                }
            }
            // Other activations (sigmoid, swish, GELU: a polynomial each) run on the stored
            // vectors, still in L1: inlined into the loop over `acc` they kept LLVM from
            // unrolling it, which sent the accumulators to the stack (1.4× slower); a call per
            // vector measured the same as this.
            if !matches!(self.act, Activation::None | Activation::Relu) {
                for r in 0..nrows {
                    let p = dst.wrapping_add(r * self.ldc + q * L);
                    // SAFETY: the lanes just stored above.
                    unsafe {
                        let x = _mm512_maskz_loadu_ps(mask, p);
                        _mm512_mask_storeu_ps(p, mask, activate16(self.act, x));
                    }
                }
            }
        }
    }
}
