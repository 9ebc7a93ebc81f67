//! The column matrix of a 2-D convolution (im2col) read from its image: the geometry, and a
//! copy of any block of it, for the contraction kernels that take the image as their `B`
//! (implicit GEMM) instead of a column matrix written out whole.
//!
//! A block is copied row by row (one tap of one channel), each row by output row: one run
//! per output row of the input row the tap reads (every `sw`-th element), whole runs of the
//! fill where that input row is outside, and the columns whose taps fall left or right of the
//! plane written with the fill afterwards, column by column (a `memset` call per row and side
//! cost more than the copy). With stride 1 and as many output as input columns, a row is one
//! shifted run of the plane, copied at once, and only its wrapped edge columns are fixed.

// The copy is compiled for AVX2 and AVX-512 too, and called after detecting the CPU's
// features; each call has a SAFETY comment.
#![allow(unsafe_code)]

use super::bytes::Pod;
use std::cell::RefCell;

use std::sync::Mutex;

thread_local! {
    /// The calling thread's scratch for blocks of column matrices (8-byte words: aligned for
    /// every element type), kept between calls.
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` elements of the calling thread's scratch (contents unspecified), which
/// stays allocated between calls; a nested call gets a fresh `vec![fill; len]`.
pub fn with_scratch<T: Pod, R>(len: usize, fill: T, f: impl FnOnce(&mut [T]) -> R) -> R {
    SCRATCH.with(|cell| {
        if let Ok(mut buf) = cell.try_borrow_mut() {
            let words = (len * std::mem::size_of::<T>()).div_ceil(8);
            if buf.len() < words {
                buf.resize(words, 0);
            }
            if let Some(t) =
                super::bytes::cast_mut::<T>(super::bytes::as_bytes_mut(&mut buf[..words]))
                    .and_then(|t| t.get_mut(..len))
            {
                return f(t);
            }
        }
        f(&mut vec![fill; len])
    })
}

/// A block's copy is split over threads from this many elements on.
const PARALLEL_FILL: usize = 32 * 1024;

/// The geometry of a column matrix (the kernel IR's `Im2col`): row `(c·kh + ky)·kw + kx`,
/// column `oy·ow + ox` is `image[c·ih·iw + iy·iw + ix]` with `iy = oy·sh + ky·dh − pt`,
/// `ix = ox·sw + kx·dw − pl`, or the fill where that falls outside the `ih×iw` plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Im2col {
    pub channels: usize,
    pub ih: usize,
    pub iw: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub pt: usize,
    pub pl: usize,
}

impl Im2col {
    /// Rows and columns of the matrix.
    pub fn dims(&self) -> (usize, usize) {
        (self.channels * self.kh * self.kw, self.oh * self.ow)
    }

    /// The image elements the matrix reads from: `channels·ih·iw`.
    pub fn image_len(&self) -> usize {
        self.channels * self.ih * self.iw
    }
}

/// Copies columns `j0..j0 + cols` of the column matrix of `planes` (the image's channels,
/// `geo.image_len()` elements) into `dst` (`k×cols`, row-major), on up to `threads` threads
/// when it is large.
#[allow(clippy::too_many_arguments)]
pub fn copy_block<T: Pod + Send + Sync>(
    planes: &[T],
    fill: T,
    geo: &Im2col,
    j0: usize,
    cols: usize,
    dst: &mut [T],
    threads: usize,
) {
    let k = geo.channels * geo.kh * geo.kw;
    if cols == 0 || k == 0 {
        return;
    }
    let parts = if threads > 1 && k * cols >= PARALLEL_FILL {
        threads.min(k)
    } else {
        1
    };
    let rows_per = k.div_ceil(parts);
    let run = |r0: usize, out: &mut [T]| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl") {
                // SAFETY: the CPU has the features the function is compiled for.
                return unsafe { rows_avx512(planes, fill, geo, (r0, j0, cols), out) };
            }
            if is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { rows_avx2(planes, fill, geo, (r0, j0, cols), out) };
            }
        }
        rows::<T, false>(planes, fill, geo, (r0, j0, cols), out)
    };
    if parts == 1 {
        run(0, dst);
        return;
    }
    let pieces: Vec<Mutex<&mut [T]>> = dst.chunks_mut(rows_per * cols).map(Mutex::new).collect();
    super::parallel_for(pieces.len(), &|t| {
        if let Ok(mut out) = pieces[t].lock() {
            run(t * rows_per, &mut out);
        }
    });
}

/// [`rows`] compiled for AVX2: the stride-2 copies become vector shuffles (with SSE2 they
/// were a byte at a time, and ResNet-18's 8-bit stem copied slower than it multiplied).
///
/// # Safety
///
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2<T: Pod>(
    planes: &[T],
    fill: T,
    geo: &Im2col,
    at: (usize, usize, usize),
    out: &mut [T],
) {
    rows::<T, false>(planes, fill, geo, at, out)
}

/// [`rows`] compiled for AVX-512 (BW: byte and word shuffles).
///
/// # Safety
///
/// The CPU must support AVX-512 F, BW and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn rows_avx512<T: Pod>(
    planes: &[T],
    fill: T,
    geo: &Im2col,
    at: (usize, usize, usize),
    out: &mut [T],
) {
    rows::<T, true>(planes, fill, geo, at, out)
}

/// The rows from `r0` on that `out` holds, columns `j0..j0 + cols`; `AVX512`: the CPU has
/// AVX-512 F, BW and VL (the caller is compiled for them).
#[inline(always)]
fn rows<T: Pod, const AVX512: bool>(
    planes: &[T],
    fill: T,
    geo: &Im2col,
    (r0, j0, cols): (usize, usize, usize),
    out: &mut [T],
) {
    for (i, row) in out.chunks_exact_mut(cols).enumerate() {
        row_of::<T, AVX512>(planes, fill, geo, r0 + i, j0, row);
    }
}

/// Row `r` of the column matrix, columns `j0..j0 + row.len()`.
#[inline(always)]
fn row_of<T: Pod, const AVX512: bool>(
    img: &[T],
    fill: T,
    geo: &Im2col,
    r: usize,
    j0: usize,
    row: &mut [T],
) {
    let (kk, ihw) = (geo.kh * geo.kw, geo.ih * geo.iw);
    let (c, ky, kx) = (r / kk, (r / geo.kw) % geo.kh, r % geo.kw);
    let plane = &img[c * ihw..(c + 1) * ihw];
    let (sw, iw) = (geo.sw, geo.iw as isize);
    let dy = (ky * geo.dh) as isize - geo.pt as isize;
    let dx = (kx * geo.dw) as isize - geo.pl as isize;
    // Output columns whose tap `ix = ox·sw + dx` lies in `[0, iw)`: `[lo, hi)`.
    let first_at_or_after =
        |x: isize| -> usize { if x <= 0 { 0 } else { (x as usize).div_ceil(sw) } };
    let lo = first_at_or_after(-dx).min(geo.ow);
    let hi = first_at_or_after(iw - dx).clamp(lo, geo.ow);
    if sw == 1 && geo.sh == 1 && geo.ow == geo.iw {
        shifted(plane, fill, geo, (dy, dx), (lo, hi), j0, row);
        return;
    }
    // One run per output row: the taps inside the plane (a slice of an image row, every
    // `sw`-th element), or all of it the fill where the tap's input row is outside; then the
    // columns left and right of the plane.
    let (mut oy, mut ox) = (j0 / geo.ow, j0 % geo.ow);
    let mut o = 0;
    while o < row.len() {
        let run = (geo.ow - ox).min(row.len() - o);
        let seg = &mut row[o..o + run];
        let iy = (oy * geo.sh) as isize + dy;
        if iy < 0 || iy >= geo.ih as isize {
            seg.fill(fill);
        } else {
            let a = lo.clamp(ox, ox + run);
            let b = hi.clamp(a, ox + run);
            if b > a {
                let line = &plane[iy as usize * geo.iw..(iy as usize + 1) * geo.iw];
                let from = ((a * sw) as isize + dx) as usize;
                let src = &line[from..from + (b - a - 1) * sw + 1];
                gather::<T, AVX512>(&mut seg[a - ox..b - ox], src, sw);
            }
        }
        o += run;
        oy += 1;
        ox = 0;
    }
    edges(row, fill, geo.ow, j0, (lo, hi));
}

/// `dst[i] = src[i·step]`.
#[inline(always)]
fn gather<T: Pod, const AVX512: bool>(dst: &mut [T], src: &[T], step: usize) {
    #[cfg(target_arch = "x86_64")]
    if AVX512 && step == 2 && matches!(std::mem::size_of::<T>(), 1 | 4) {
        // SAFETY: the caller runs on a CPU with AVX-512 F, BW and VL (`AVX512`); `src` holds
        // `2·(dst.len() − 1) + 1` elements (the callers' slice), which the vector loop reads
        // up to and no further.
        unsafe { pairs_avx512(dst, src) };
        return;
    }
    match step {
        1 => dst.copy_from_slice(&src[..dst.len()]),
        // Pairs, so that the compiler sees one interleaved load group and vectorizes it.
        2 => {
            let (last, body) = match dst.split_last_mut() {
                Some(x) => x,
                None => return,
            };
            for (d, p) in body.iter_mut().zip(src.chunks_exact(2)) {
                *d = p[0];
            }
            *last = src[2 * body.len()];
        }
        _ => {
            for (d, s) in dst.iter_mut().zip(src.iter().step_by(step)) {
                *d = *s;
            }
        }
    }
}

/// `dst[i] = src[2i]` for elements of 1 or 4 bytes: 32 bytes or 16 floats per step from
/// one or two 64-byte loads (`vpmovwb` keeps the low byte of each 16-bit pair, `vpermt2d`
/// the even lanes), the tail by masks. LLVM's vectorization of the pair loop ran at a third
/// of this on ResNet-18's 8-bit stem.
///
/// # Safety
///
/// AVX-512 F, BW and VL; `src.len() ≥ 2·(dst.len() − 1) + 1`; `T` of 1 or 4 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn pairs_avx512<T: Pod>(dst: &mut [T], src: &[T]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    if n == 0 {
        return;
    }
    // Elements of `src` that may be read: up to and including `src[2(n − 1)]`.
    let avail = (2 * (n - 1) + 1).min(src.len());
    let (s, d) = (src.as_ptr().cast::<u8>(), dst.as_mut_ptr().cast::<u8>());
    if std::mem::size_of::<T>() == 1 {
        let mut i = 0;
        while i < n {
            let len = (n - i).min(32);
            // Source bytes `2i .. 2i + 2·len − 1` (the last pair's odd byte may be past `avail`).
            let have = (avail - 2 * i).min(2 * len);
            let lm: __mmask64 = if have >= 64 { !0 } else { (1u64 << have) - 1 };
            // SAFETY: the mask covers bytes `2i .. 2i + have`, inside `src`.
            let v = unsafe { _mm512_maskz_loadu_epi8(lm, s.add(2 * i).cast()) };
            let even = _mm512_cvtepi16_epi8(v);
            let sm: __mmask32 = if len >= 32 { !0 } else { (1u32 << len) - 1 };
            // SAFETY: outputs `i .. i + len`, inside `dst`.
            unsafe { _mm256_mask_storeu_epi8(d.add(i).cast(), sm, even) };
            i += len;
        }
    } else {
        let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let mut i = 0;
        while i < n {
            let len = (n - i).min(16);
            let have = (avail - 2 * i).min(2 * len);
            let m = |c: usize| -> __mmask16 { if c >= 16 { !0 } else { (1u16 << c) - 1 } };
            let (m0, m1) = (m(have.min(16)), m(have.saturating_sub(16)));
            // SAFETY: the masks cover elements `2i .. 2i + have`, inside `src`.
            let (lo, hi) = unsafe {
                (
                    _mm512_maskz_loadu_epi32(m0, s.add(8 * i).cast()),
                    _mm512_maskz_loadu_epi32(m1, s.add(8 * i + 64).cast()),
                )
            };
            let even = _mm512_permutex2var_epi32(lo, idx, hi);
            // SAFETY: outputs `i .. i + len`, inside `dst`.
            unsafe { _mm512_mask_storeu_epi32(d.add(4 * i).cast(), m(len), even) };
            i += len;
        }
    }
}

/// Writes the fill into the columns `[0, lo)` and `[hi, ow)` of every output row that
/// `row` (columns from `j0` on) holds: column by column down the rows (a store every `ow`
/// elements, where a fill per row and side would be a `memset` call of one or two elements).
#[inline(always)]
fn edges<T: Copy>(row: &mut [T], fill: T, ow: usize, j0: usize, (lo, hi): (usize, usize)) {
    if lo == 0 && hi == ow {
        return;
    }
    let len = row.len();
    for x in (0..lo).chain(hi..ow) {
        // The first position at or after `j0` in column `x`.
        let first = (j0 / ow) * ow + x;
        let mut p = if first < j0 { first + ow } else { first } - j0;
        while p < len {
            row[p] = fill;
            p += ow;
        }
    }
}

/// [`row_of`] for stride 1 with as many output as input columns (a "same" convolution):
/// output position `j` reads plane element `j + dy·iw + dx`, so the row is one run of the
/// plane, copied at once; then the output rows whose input row is outside, and in the others
/// the `|dx|` columns that wrapped around an edge, are written with the fill.
#[inline(always)]
fn shifted<T: Pod>(
    plane: &[T],
    fill: T,
    geo: &Im2col,
    (dy, dx): (isize, isize),
    (lo, hi): (usize, usize),
    j0: usize,
    row: &mut [T],
) {
    let ow = geo.ow;
    let (j0, j1) = (j0 as isize, (j0 + row.len()) as isize);
    // Output rows `oy` with `0 ≤ oy + dy < ih`, as columns, inside the block.
    let oy_lo = (-dy).clamp(0, geo.oh as isize);
    let oy_hi = (geo.ih as isize - dy).clamp(oy_lo, geo.oh as isize);
    let a = (oy_lo * ow as isize).clamp(j0, j1);
    let b = (oy_hi * ow as isize).clamp(a, j1);
    row[..(a - j0) as usize].fill(fill);
    row[(b - j0) as usize..].fill(fill);
    // The copy, less the elements before the plane's start or past its end (edge columns,
    // written below).
    let off = dy * geo.iw as isize + dx;
    let ca = a.max(-off);
    let cb = b.min(plane.len() as isize - off).max(ca);
    if cb > ca {
        row[(ca - j0) as usize..(cb - j0) as usize]
            .copy_from_slice(&plane[(ca + off) as usize..(cb + off) as usize]);
    }
    edges(row, fill, ow, j0 as usize, (lo, hi));
}
