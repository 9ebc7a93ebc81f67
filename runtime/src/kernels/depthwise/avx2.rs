//! The AVX2 depthwise kernel: 8 outputs of a row per ymm, 4 rows at a time, as the AVX-512 one
//! (see there) with `vmaskmovps` lane masks on loads (partial stores go by halves, pairs and
//! singles: see [`store`]), a shuffle and a cross-lane permute to keep the even lanes of stride
//! 2, and gathers for larger strides. Each tap is one FMA.

#![allow(unsafe_code)]

use super::{BinKind, EpKind, EpOp, Task};
use std::arch::x86_64::*;

const L: usize = 8;

/// The lanes `i` of an 8-lane vector starting at column `c0` with `0 <= c0 + i < n`, as a
/// `vmaskmovps` mask, and whether all are.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn range_mask(c0: isize, n: isize) -> (__m256i, bool) {
    let lo = (-c0).clamp(0, L as isize) as i32;
    let hi = (n - c0).clamp(0, L as isize) as i32;
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // lo <= lane < hi
    let ge = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(lo - 1));
    let lt = _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), lane);
    (_mm256_and_si256(ge, lt), lo == 0 && hi == L as i32)
}

/// A tap's entry in the column tables ([`Cols`], and [`blocked`]'s per chunk): its first
/// input column, the `vmaskmovps` masks of the two 8-lane halves from there, and whether every
/// lane its loads read lies inside the row.
type Taps = (isize, __m256i, __m256i, bool);

/// Computes the items' rows: per chunk of 8 outputs, blocks of 4 rows, so that four
/// independent accumulators hide the latency of the adds.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA; every item's `x` must hold the `ih·iw` plane, `w`
/// `kh·kw` weights and `out` whole rows of `ow` outputs, all items sharing one geometry.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn rows(ts: &mut [Task]) {
    let Some(first) = ts.first() else { return };
    let g = *first.g;
    // SAFETY (all): forwarded contract.
    if g.kh == g.kw && g.dh == 1 && g.dw == 1 && g.sh == g.sw {
        match (g.kw, g.sw) {
            (3, 1) => return unsafe { blocked_ep::<3, 1, 2>(ts) },
            (3, 2) => return unsafe { blocked_ep::<3, 2, 2>(ts) },
            (5, 1) => return unsafe { blocked_ep::<5, 1, 1>(ts) },
            (5, 2) => return unsafe { blocked_ep::<5, 2, 1>(ts) },
            _ => {}
        }
    }
    unsafe {
        match first.g.sw {
            1 => rows_s::<1>(ts),
            2 => rows_s::<2>(ts),
            _ => rows_s::<0>(ts),
        }
    }
}

/// Per (chunk of 8 outputs, kx): the tap's entry.
type Cols = Vec<Taps>;

/// `S` is the horizontal stride for 1 and 2, and 0 for any other (gathers).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_s<const S: usize>(ts: &mut [Task]) {
    let g = *ts[0].g;
    let chunks = g.ow.div_ceil(L);
    let mut cols: Cols = Vec::with_capacity(chunks * g.kw);
    for c in 0..chunks {
        for kx in 0..g.kw {
            let c0 = (c * L) as isize * g.sw + kx as isize * g.dw - g.pl;
            let (m0, f0) = range_mask(c0, g.iw);
            let (m1, f1) = range_mask(c0 + L as isize, g.iw);
            let full = match S {
                1 => f0,
                2 => f0 && f1,
                _ => false,
            };
            cols.push((c0, m0, m1, full));
        }
    }
    for task in ts.iter_mut() {
        let nrows = task.out.len() / g.ow;
        let out = task.out.as_mut_ptr();
        for c in 0..chunks {
            let mut r = 0;
            // SAFETY (both): forwarded contract; rows `[r, r + NR)` are rows of the item's
            // output and `c` one of their chunks.
            while r + 4 <= nrows {
                unsafe { block_rows::<S, 4>(&cols, task, r, c, out) };
                r += 4;
            }
            while r < nrows {
                unsafe { block_rows::<S, 1>(&cols, task, r, c, out) };
                r += 1;
            }
        }
    }
}

/// Chunk `c` of the item's output rows `[r, r + NR)` (`out` is the item's first output row).
///
/// # Safety
///
/// As [`rows`]; rows `[r, r + NR)` are rows of the item's output and `c` is one of their
/// chunks.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_rows<const S: usize, const NR: usize>(
    cols: &Cols,
    task: &Task,
    r: usize,
    c: usize,
    out: *mut f32,
) {
    let g = task.g;
    let zero = _mm256_setzero_ps();
    let mut acc = [_mm256_set1_ps(task.bias); NR];
    let cols = &cols[c * g.kw..(c + 1) * g.kw];
    for ky in 0..g.kh {
        let wrow = &task.w[ky * g.kw..(ky + 1) * g.kw];
        for (&(c0, m0, m1, full), &wv) in cols.iter().zip(wrow) {
            let wv = _mm256_set1_ps(wv);
            for (j, a) in acc.iter_mut().enumerate() {
                let oy = (task.oy0 + r + j) as isize;
                let iy = oy * g.sh + ky as isize * g.dh - g.pt;
                let xv = if iy < 0 || iy >= g.ih {
                    // A padding row reads 0.0, as the definition says.
                    zero
                } else {
                    let rowp = task.x.as_ptr().wrapping_offset(iy * g.iw);
                    let p = rowp.wrapping_offset(c0);
                    // SAFETY: row `iy` lies in the plane (tested above); a full chunk's lanes
                    // all lie inside the row, and otherwise the masks enable exactly the lanes
                    // whose columns do (masked-off lanes are never accessed).
                    unsafe {
                        match S {
                            1 if full => _mm256_loadu_ps(p),
                            1 => _mm256_maskload_ps(p, m0),
                            2 => {
                                let (a, b) = if full {
                                    (_mm256_loadu_ps(p), _mm256_loadu_ps(p.wrapping_add(L)))
                                } else {
                                    (
                                        _mm256_maskload_ps(p, m0),
                                        _mm256_maskload_ps(p.wrapping_add(L), m1),
                                    )
                                };
                                // [a0 a2 b0 b2 | a4 a6 b4 b6] → [a0 a2 a4 a6 | b0 b2 b4 b6]
                                let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
                                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(
                                    _mm256_castps_pd(e),
                                ))
                            }
                            _ => {
                                let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                                let idx = _mm256_add_epi32(
                                    _mm256_mullo_epi32(lane, _mm256_set1_epi32(g.sw as i32)),
                                    _mm256_set1_epi32(c0 as i32),
                                );
                                let inside = _mm256_and_si256(
                                    _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(-1)),
                                    _mm256_cmpgt_epi32(_mm256_set1_epi32(g.iw as i32), idx),
                                );
                                _mm256_mask_i32gather_ps::<4>(
                                    zero,
                                    rowp,
                                    idx,
                                    _mm256_castsi256_ps(inside),
                                )
                            }
                        }
                    }
                };
                *a = _mm256_fmadd_ps(xv, wv, *a);
            }
        }
    }
    let lanes = (g.ow - c * L).min(L);
    for (j, a) in acc.iter().enumerate() {
        let v = epilogue(task.kind, task.ep, *a);
        let dst = out.wrapping_add((r + j) * g.ow + c * L);
        // SAFETY: row `r + j` of the item's output holds `ow` floats; a full vector lies
        // inside it, and the mask of a partial one enables the lanes `8·c + i < ow` only.
        unsafe { store(dst, v, lanes) };
    }
}

/// Square `K`×`K` kernels at stride `S` both ways, no dilation, as the AVX-512 `blocked`:
/// tiles of 4 output rows × `NB` chunks of 8 outputs, each input row's `K` shifted vectors
/// loaded once per tile and added into every output row that reads it, in (ky, kx) order per
/// accumulator (as the general kernel). `NB` is 2 for 3×3 and 1 for 5×5, so that
/// accumulators and loaded vectors fit the 16 ymm registers.
///
/// # Safety
///
/// As [`rows`], and the geometry is `K`×`K`, stride `S` both ways, dilation 1.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn blocked<const K: usize, const S: usize, const NB: usize, const E: u8>(ts: &mut [Task]) {
    let g = *ts[0].g;
    let chunks = g.ow.div_ceil(L);
    // Per chunk and kx: the first input column, the masks of its two 8-lane halves, and
    // whether the lanes a load reads (8, or 16 at stride 2) all lie inside the row.
    let cols: Vec<[Taps; K]> = (0..chunks)
        .map(|c| {
            std::array::from_fn(|kx| {
                let c0 = (c * L * S) as isize + kx as isize - g.pl;
                let ((m0, f0), (m1, f1)) =
                    (range_mask(c0, g.iw), range_mask(c0 + L as isize, g.iw));
                (c0, m0, m1, f0 && (S == 1 || f1))
            })
        })
        .collect();
    for task in ts.iter_mut() {
        let out = task.out.as_mut_ptr();
        let nrows = task.out.len() / g.ow;
        super::for_tiles(nrows, chunks, NB, |r, four, c, wide| {
            // SAFETY (all four): forwarded contract; `for_tiles` hands out rows `[r, r + R)`
            // of the item's output and chunks `[c, c + NB)` of them.
            unsafe {
                match (four, wide) {
                    (true, true) => tile::<K, S, E, 4, NB>(&cols, task, r, c, out),
                    (true, false) => tile::<K, S, E, 4, 1>(&cols, task, r, c, out),
                    (false, true) => tile::<K, S, E, 1, NB>(&cols, task, r, c, out),
                    (false, false) => tile::<K, S, E, 1, 1>(&cols, task, r, c, out),
                }
            }
        });
    }
}

/// Output rows `[r0, r0 + R)` × chunks `[c, c + NB)` of the item (`out` is its first row).
///
/// # Safety
///
/// As [`blocked`]; the rows are rows of the item's output, the chunks chunks of them, and
/// `cols` the table [`blocked`] built for this geometry.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const K: usize, const S: usize, const E: u8, const R: usize, const NB: usize>(
    cols: &[[Taps; K]],
    task: &Task,
    r0: usize,
    c: usize,
    out: *mut f32,
) {
    let g = task.g;
    let mut acc = [[_mm256_set1_ps(task.bias); R]; NB];
    let iy0 = ((task.oy0 + r0) * S) as isize - g.pt;
    let rows = (R - 1) * S + K;
    // What every step reads, in locals (the barrier may write memory; see the AVX-512 tile).
    let (ih, iw, x) = (g.ih, g.iw, task.x.as_ptr());
    let chunk: [[Taps; K]; NB] = std::array::from_fn(|j| cols[c + j]);
    // The weights too (3×3: 8–12% faster than reading `task.w` per step; 5×5 2–3% slower).
    let mut w = [0f32; 25];
    w[..K * K].copy_from_slice(&task.w[..K * K]);
    // One input row per step ([`unrolled_rows`]).
    unrolled_rows!(rows, acc, ymm_reg, |t| {
        let iy = iy0 + t as isize;
        // A row outside the plane reads 0.0 in every lane and still adds `0·w`.
        let mut xv = [[_mm256_setzero_ps(); K]; NB];
        if iy >= 0 && iy < ih {
            let rowp = x.wrapping_offset(iy * iw);
            for (xj, cj) in xv.iter_mut().zip(&chunk) {
                // SAFETY: row `iy` lies in the plane.
                unsafe { load_taps::<K, S>(rowp, cj, xj) };
            }
        }
        for rr in 0..R {
            // Output row `r0 + rr` reads input rows `iy0 + rr·S + ky`.
            let ky = t as isize - (rr * S) as isize;
            if ky < 0 || ky >= K as isize {
                continue;
            }
            for kx in 0..K {
                let wv = _mm256_set1_ps(w[ky as usize * K + kx]);
                for (aj, xj) in acc.iter_mut().zip(&xv) {
                    aj[rr] = _mm256_fmadd_ps(xj[kx], wv, aj[rr]);
                }
            }
        }
    });
    for (j, aj) in acc.iter().enumerate() {
        let lanes = (g.ow - (c + j) * L).min(L);
        for (rr, a) in aj.iter().enumerate() {
            let v = epilogue_of::<E>(task.kind, task.ep, *a);
            let dst = out.wrapping_add((r0 + rr) * g.ow + (c + j) * L);
            // SAFETY: row `r0 + rr` of the item's output holds `ow` floats; a full vector lies
            // inside it, and the mask of a partial one enables the lanes `8·(c + j) + i < ow`.
            unsafe { store(dst, v, lanes) };
        }
    }
}

/// The `K` tap vectors of a chunk of 8 outputs from one input row: tap `kx`, lane `i` is
/// column `c0 + S·i + kx` of the row (0.0 outside it), for the chunk's entry of
/// [`blocked`]'s table (per tap: its first column and the masks of its two 8-lane halves).
///
/// # Safety
///
/// `rowp` is a row of `iw` floats and `cols` the chunk's entry for that geometry.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_taps<const K: usize, const S: usize>(
    rowp: *const f32,
    cols: &[Taps; K],
    xj: &mut [__m256; K],
) {
    if S == 2 {
        // Taps `2q` and `2q + 1` are the even and odd columns of the same 16 loaded from tap
        // `2q`'s first column: two loads per pair of taps.
        for q in 0..K.div_ceil(2) {
            let (c0, m0, m1, full) = cols[2 * q];
            let p = rowp.wrapping_offset(c0);
            // SAFETY: all 16 columns lie inside the row when `full`, else the masks enable
            // exactly the lanes whose columns do (masked-off lanes are never accessed).
            let (a, b) = unsafe {
                if full {
                    (_mm256_loadu_ps(p), _mm256_loadu_ps(p.wrapping_add(L)))
                } else {
                    (
                        _mm256_maskload_ps(p, m0),
                        _mm256_maskload_ps(p.wrapping_add(L), m1),
                    )
                }
            };
            // [a0 a2 b0 b2 | a4 a6 b4 b6] → [a0 a2 a4 a6 | b0 b2 b4 b6], and the same for the
            // odd lanes.
            let order = |v: __m256| {
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
            };
            xj[2 * q] = order(_mm256_shuffle_ps::<0b10_00_10_00>(a, b));
            if 2 * q + 1 < K {
                xj[2 * q + 1] = order(_mm256_shuffle_ps::<0b11_01_11_01>(a, b));
            }
        }
        return;
    }
    for (kx, v) in xj.iter_mut().enumerate() {
        let (c0, m0, _, full) = cols[kx];
        let p = rowp.wrapping_offset(c0);
        // SAFETY: all 8 columns lie inside the row when `full`, else the mask enables exactly
        // the lanes whose columns do (masked-off lanes are never accessed). `vmaskmovps` costs
        // more than a plain load on Zen 4 (16@112 3×3: 194 → 154 µs with plain loads).
        *v = unsafe {
            if full {
                _mm256_loadu_ps(p)
            } else {
                _mm256_maskload_ps(p, m0)
            }
        };
    }
}

/// Stores the first `lanes` (1 to 8) lanes of `v` at `dst`: a whole vector, or the low half,
/// a pair and a single as needed. Not `vmaskmovps`, whose store form is microcoded on AMD
/// (about a dozen cycles each on Zen 4: a third of a 7×7, 5×5 layer's time went there).
///
/// # Safety
///
/// AVX; `dst` is valid for writes of `lanes` floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store(dst: *mut f32, v: __m256, lanes: usize) {
    // SAFETY (all): each store writes lanes below `lanes` only.
    unsafe {
        if lanes >= L {
            return _mm256_storeu_ps(dst, v);
        }
        let (mut x, mut at, mut rem) = (_mm256_castps256_ps128(v), dst, lanes);
        if rem >= 4 {
            _mm_storeu_ps(at, x);
            (x, at, rem) = (_mm256_extractf128_ps::<1>(v), at.add(4), rem - 4);
        }
        if rem >= 2 {
            _mm_storel_epi64(at.cast::<__m128i>(), _mm_castps_si128(x));
            (x, at, rem) = (_mm_movehl_ps(x, x), at.add(2), rem - 2);
        }
        if rem == 1 {
            _mm_store_ss(at, x);
        }
    }
}

/// [`blocked`] with its epilogue compiled in (see [`EpKind::NONE`]).
///
/// # Safety
///
/// As [`blocked`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn blocked_ep<const K: usize, const S: usize, const NB: usize>(ts: &mut [Task]) {
    // SAFETY (all): forwarded contract.
    unsafe {
        match ts[0].kind {
            EpKind::None => blocked::<K, S, NB, { EpKind::NONE }>(ts),
            EpKind::HardSwish => blocked::<K, S, NB, { EpKind::HARD_SWISH }>(ts),
            EpKind::Bins => blocked::<K, S, NB, { EpKind::BINS }>(ts),
            EpKind::Other => blocked::<K, S, NB, { EpKind::OTHER }>(ts),
        }
    }
}

/// The epilogue of kind `E` (an [`EpKind`] constant): [`epilogue`], inline.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn epilogue_of<const E: u8>(kind: EpKind, ep: &[EpOp], acc: __m256) -> __m256 {
    match E {
        EpKind::NONE => acc,
        EpKind::HARD_SWISH => hard_swish(acc),
        EpKind::BINS => {
            let mut x = acc;
            for op in ep {
                if let EpOp::Bin { op, arg, arg_first } = *op {
                    x = bin_const(op, arg, arg_first, x);
                }
            }
            x
        }
        _ => epilogue(kind, ep, acc),
    }
}

/// The epilogue on 8 lanes, exactly as [`super::apply_epilogue`] on each.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn epilogue(kind: EpKind, ep: &[EpOp], acc: __m256) -> __m256 {
    match kind {
        EpKind::None => return acc,
        EpKind::HardSwish => return hard_swish(acc),
        EpKind::Bins | EpKind::Other => {}
    }
    let (mut x, mut s) = (acc, acc);
    for op in ep {
        match *op {
            EpOp::Bin { op, arg, arg_first } => x = bin_const(op, arg, arg_first, x),
            EpOp::Save => s = x,
            EpOp::Combine { op, saved_first } => {
                x = if saved_first {
                    bin(op, s, x)
                } else {
                    bin(op, x, s)
                };
            }
            EpOp::Sigmoid => x = crate::kernels::gemm::avx2::sigmoid8(x),
        }
    }
    x
}

/// HardSwish as the [`EpOp`] program the lowering makes of it (see [`EpKind::HardSwish`]):
/// multiply, add, then `min`/`max` with the constant first, which return the NaN second
/// operand.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hard_swish(acc: __m256) -> __m256 {
    let e = _mm256_add_ps(
        _mm256_mul_ps(acc, _mm256_set1_ps(1.0 / 6.0)),
        _mm256_set1_ps(0.5),
    );
    let g = _mm256_max_ps(_mm256_setzero_ps(), _mm256_min_ps(_mm256_set1_ps(1.0), e));
    _mm256_mul_ps(acc, g)
}

/// `x op arg`, or `arg op x` when `arg_first` ([`EpOp::Bin`]).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn bin_const(op: BinKind, arg: f32, arg_first: bool, x: __m256) -> __m256 {
    let a = _mm256_set1_ps(arg);
    match op {
        // One instruction, as the AVX-512 `max_min_const` (which says why).
        BinKind::Max | BinKind::Min if arg.is_nan() => a,
        BinKind::Max => _mm256_max_ps(a, x),
        BinKind::Min => _mm256_min_ps(a, x),
        _ if arg_first => bin(op, a, x),
        _ => bin(op, x, a),
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn bin(op: BinKind, a: __m256, b: __m256) -> __m256 {
    match op {
        BinKind::Add => _mm256_add_ps(a, b),
        BinKind::Sub => _mm256_sub_ps(a, b),
        BinKind::Mul => _mm256_mul_ps(a, b),
        BinKind::Div => _mm256_div_ps(a, b),
        // `vmaxps`/`vminps` return the second operand when either is NaN: a NaN in `a` is put
        // back explicitly so that NaN propagates from both sides.
        BinKind::Max => {
            let r = _mm256_max_ps(a, b);
            _mm256_blendv_ps(r, a, _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a))
        }
        BinKind::Min => {
            let r = _mm256_min_ps(a, b);
            _mm256_blendv_ps(r, a, _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a))
        }
    }
}
