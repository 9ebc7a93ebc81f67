//! The AVX-512 depthwise kernel: 16 outputs of a row per zmm.
//!
//! Per vector of 16 outputs the accumulator takes `kh·kw` FMAs; the weight is a broadcast.
//! Horizontal padding and the row's last partial vector are lane masks (`vmaskmov` loads
//! never touch a masked lane, so a load may start before the row or run past it); a row
//! outside the input adds `0·w` from a zero vector. Stride 2 loads 32 consecutive inputs in
//! two vectors and keeps the even lanes with one `vpermt2ps`; larger strides gather. Square
//! 3×3 and 5×5 kernels at stride 1 or 2 run in register tiles ([`blocked`]).

#![allow(unsafe_code)]

use super::{BinKind, EpKind, EpOp, Task};
use std::arch::x86_64::*;

const L: usize = 16;

/// Lanes `i` of a 16-lane vector starting at column `c0` with `0 <= c0 + i < n` (shared with
/// the direct convolution's column tables).
pub(crate) fn range_mask(c0: isize, n: isize) -> u16 {
    let lo = (-c0).clamp(0, L as isize) as u32;
    let hi = (n - c0).clamp(0, L as isize) as u32;
    if hi <= lo {
        return 0;
    }
    let upto = |k: u32| if k >= 16 { 0xffffu32 } else { (1u32 << k) - 1 };
    (upto(hi) & !upto(lo)) as u16
}

/// The column tables of a call: per (chunk of 16 outputs, kx) the first input column and the
/// masks of the two 16-lane halves it reads (only the first matters for stride 1); per chunk
/// whether every tap's lanes lie inside the row (no mask needed).
struct Cols {
    cols: Vec<(isize, u16, u16)>,
    full: Vec<bool>,
}

/// Computes the items' rows (see the module docs).
///
/// # Safety
///
/// The CPU must support AVX-512F; every item's `x` must hold the `ih·iw` plane, `w` `kh·kw`
/// weights and `out` whole rows of `ow` outputs, all items sharing one geometry.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn rows(ts: &mut [Task]) {
    let Some(first) = ts.first() else { return };
    let g = *first.g;
    // SAFETY (all): forwarded contract.
    if g.kh == g.kw && g.dh == 1 && g.dw == 1 && g.sh == g.sw {
        match (g.kw, g.sw) {
            (3, 1) => return unsafe { blocked_ep::<3, 1>(ts) },
            (3, 2) => return unsafe { blocked_ep::<3, 2>(ts) },
            (5, 1) => return unsafe { blocked_ep::<5, 1>(ts) },
            (5, 2) => return unsafe { blocked_ep::<5, 2>(ts) },
            _ => {}
        }
    }
    unsafe {
        match g.sw {
            1 => rows_s::<1>(ts),
            2 => rows_s::<2>(ts),
            _ => rows_s::<0>(ts),
        }
    }
}

/// `S` is the horizontal stride for 1 and 2, and 0 for any other (gathers).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn rows_s<const S: usize>(ts: &mut [Task]) {
    let g = *ts[0].g;
    let chunks = g.ow.div_ceil(L);
    let mut t = Cols {
        cols: Vec::with_capacity(chunks * g.kw),
        full: Vec::with_capacity(chunks),
    };
    for c in 0..chunks {
        let mut all = true;
        for kx in 0..g.kw {
            let c0 = (c * L) as isize * g.sw + kx as isize * g.dw - g.pl;
            let (m0, m1) = (range_mask(c0, g.iw), range_mask(c0 + L as isize, g.iw));
            all &= match S {
                1 => m0 == 0xffff,
                2 => m0 == 0xffff && m1 == 0xffff,
                _ => false,
            };
            t.cols.push((c0, m0, m1));
        }
        t.full.push(all);
    }
    for task in ts.iter_mut() {
        let nrows = task.out.len() / g.ow;
        let obase = task.out.as_mut_ptr();
        if chunks <= 2 {
            // Short rows: blocks of 4 rows of one chunk, so that 4 independent accumulators
            // hide the latency of the adds (one chunk alone waits on every add of its taps).
            for c in 0..chunks {
                let mut r = 0;
                // SAFETY (both): forwarded contract; rows `[r, r + NR)` are rows of the item's
                // output and `c` one of their chunks.
                while r + 4 <= nrows {
                    unsafe { block_rows::<S, 4>(&t, task, r, c, obase) };
                    r += 4;
                }
                while r < nrows {
                    unsafe { block_rows::<S, 1>(&t, task, r, c, obase) };
                    r += 1;
                }
            }
            continue;
        }
        for r in 0..nrows {
            let oy = (task.oy0 + r) as isize;
            let dst = obase.wrapping_add(r * g.ow);
            // Blocks of 4 chunks share each weight broadcast and the row bookkeeping; the
            // rest go by 2 and 1.
            let mut c = 0;
            // SAFETY (all three): forwarded contract; `dst` is row `r` of the item's output,
            // and each block covers chunks `[c, c + NB)` with `c + NB <= chunks`.
            while c + 4 <= chunks {
                unsafe { block::<S, 4>(&t, task, oy, c, dst) };
                c += 4;
            }
            if c + 2 <= chunks {
                unsafe { block::<S, 2>(&t, task, oy, c, dst) };
                c += 2;
            }
            if c < chunks {
                unsafe { block::<S, 1>(&t, task, oy, c, dst) };
            }
        }
    }
}

/// Output chunks `[c, c + NB)` of row `oy`, stored at `dst + 16·c`.
///
/// # Safety
///
/// As [`rows`]; `dst` is an output row of `ow` floats and `c + NB` is at most the row's
/// chunk count.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block<const S: usize, const NB: usize>(
    t: &Cols,
    task: &Task,
    oy: isize,
    c: usize,
    dst: *mut f32,
) {
    let g = task.g;
    let zero = _mm512_setzero_ps();
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let mut acc = [_mm512_set1_ps(task.bias); NB];
    let all_full = t.full[c..c + NB].iter().all(|&f| f);
    for ky in 0..g.kh {
        let iy = oy * g.sh + ky as isize * g.dh - g.pt;
        let wrow = &task.w[ky * g.kw..(ky + 1) * g.kw];
        if iy < 0 || iy >= g.ih {
            // A padding row adds 0·w to every lane, as the definition says.
            for &wv in wrow {
                let z = _mm512_mul_ps(zero, _mm512_set1_ps(wv));
                for a in acc.iter_mut() {
                    *a = _mm512_add_ps(*a, z);
                }
            }
            continue;
        }
        let rowp = task.x.as_ptr().wrapping_offset(iy * g.iw);
        if all_full && S != 0 {
            // Every lane of the block lies inside the row: plain loads at computed offsets,
            // no table.
            for (kx, &wv) in wrow.iter().enumerate() {
                let wv = _mm512_set1_ps(wv);
                let p0 = rowp.wrapping_offset(kx as isize * g.dw - g.pl);
                for (j, a) in acc.iter_mut().enumerate() {
                    let p = p0.wrapping_add((c + j) * L * S);
                    // SAFETY: row `iy` lies in the plane and the chunk is full: the `16·S`
                    // columns from `p` lie inside the row.
                    let xv = unsafe {
                        if S == 1 {
                            _mm512_loadu_ps(p)
                        } else {
                            _mm512_permutex2var_ps(
                                _mm512_loadu_ps(p),
                                even,
                                _mm512_loadu_ps(p.wrapping_add(L)),
                            )
                        }
                    };
                    *a = _mm512_fmadd_ps(xv, wv, *a);
                }
            }
            continue;
        }
        let cols = &t.cols[c * g.kw..(c + NB) * g.kw];
        let full = &t.full[c..c + NB];
        for (kx, &wv) in wrow.iter().enumerate() {
            let wv = _mm512_set1_ps(wv);
            for (j, a) in acc.iter_mut().enumerate() {
                let (c0, m0, m1) = cols[j * g.kw + kx];
                let p = rowp.wrapping_offset(c0);
                // SAFETY: row `iy` lies in the plane (tested above); a full chunk's lanes all
                // lie inside the row, and otherwise the masks enable exactly the lanes whose
                // columns do (masked-off lanes are never accessed).
                let xv = unsafe {
                    match S {
                        1 if full[j] => _mm512_loadu_ps(p),
                        1 => _mm512_maskz_loadu_ps(m0, p),
                        2 if full[j] => _mm512_permutex2var_ps(
                            _mm512_loadu_ps(p),
                            even,
                            _mm512_loadu_ps(p.wrapping_add(L)),
                        ),
                        2 => _mm512_permutex2var_ps(
                            _mm512_maskz_loadu_ps(m0, p),
                            even,
                            _mm512_maskz_loadu_ps(m1, p.wrapping_add(L)),
                        ),
                        _ => {
                            let lane = _mm512_setr_epi32(
                                0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                            );
                            let idx = _mm512_add_epi32(
                                _mm512_mullo_epi32(lane, _mm512_set1_epi32(g.sw as i32)),
                                _mm512_set1_epi32(c0 as i32),
                            );
                            let inside = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512())
                                & _mm512_cmplt_epi32_mask(idx, _mm512_set1_epi32(g.iw as i32));
                            _mm512_mask_i32gather_ps::<4>(zero, inside, idx, rowp)
                        }
                    }
                };
                *a = _mm512_fmadd_ps(xv, wv, *a);
            }
        }
    }
    epilogue(task.kind, task.ep, &mut acc);
    for (j, v) in acc.iter().enumerate() {
        let lanes = (g.ow - (c + j) * L).min(L);
        let store = if lanes == L {
            0xffff
        } else {
            ((1u32 << lanes) - 1) as u16
        };
        // SAFETY: the row holds `ow` floats; the mask enables the lanes `16·(c + j) + i < ow`.
        unsafe { _mm512_mask_storeu_ps(dst.add((c + j) * L), store, *v) };
    }
}

/// Chunk `c` of the item's output rows `[r, r + NR)` (`out` is the item's first output row).
///
/// # Safety
///
/// As [`rows`]; rows `[r, r + NR)` are rows of the item's output and `c` is one of their
/// chunks.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block_rows<const S: usize, const NR: usize>(
    t: &Cols,
    task: &Task,
    r: usize,
    c: usize,
    out: *mut f32,
) {
    let g = task.g;
    let zero = _mm512_setzero_ps();
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let mut acc = [_mm512_set1_ps(task.bias); NR];
    let cols = &t.cols[c * g.kw..(c + 1) * g.kw];
    for ky in 0..g.kh {
        let wrow = &task.w[ky * g.kw..(ky + 1) * g.kw];
        for (kx, &wv) in wrow.iter().enumerate() {
            let (c0, m0, m1) = cols[kx];
            let wv = _mm512_set1_ps(wv);
            for (j, a) in acc.iter_mut().enumerate() {
                let oy = (task.oy0 + r + j) as isize;
                let iy = oy * g.sh + ky as isize * g.dh - g.pt;
                // A padding row reads 0.0 in every lane (a zero mask), as the definition says.
                let (m0, m1) = if iy < 0 || iy >= g.ih {
                    (0, 0)
                } else {
                    (m0, m1)
                };
                let rowp = task.x.as_ptr().wrapping_offset(iy * g.iw);
                let p = rowp.wrapping_offset(c0);
                // SAFETY: the masks enable exactly the lanes whose columns lie inside the row,
                // and none when the row is outside the plane (masked-off lanes are never
                // accessed).
                let xv = unsafe {
                    match S {
                        1 => _mm512_maskz_loadu_ps(m0, p),
                        2 => _mm512_permutex2var_ps(
                            _mm512_maskz_loadu_ps(m0, p),
                            even,
                            _mm512_maskz_loadu_ps(m1, p.wrapping_add(L)),
                        ),
                        _ => {
                            let lane = _mm512_setr_epi32(
                                0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                            );
                            let idx = _mm512_add_epi32(
                                _mm512_mullo_epi32(lane, _mm512_set1_epi32(g.sw as i32)),
                                _mm512_set1_epi32(c0 as i32),
                            );
                            let inside = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512())
                                & _mm512_cmplt_epi32_mask(idx, _mm512_set1_epi32(g.iw as i32))
                                & if iy < 0 || iy >= g.ih { 0 } else { 0xffff };
                            _mm512_mask_i32gather_ps::<4>(zero, inside, idx, rowp)
                        }
                    }
                };
                *a = _mm512_fmadd_ps(xv, wv, *a);
            }
        }
    }
    epilogue(task.kind, task.ep, &mut acc);
    let lanes = (g.ow - c * L).min(L);
    let store = if lanes == L {
        0xffff
    } else {
        ((1u32 << lanes) - 1) as u16
    };
    for (j, v) in acc.iter().enumerate() {
        // SAFETY: row `r + j` of the item's output holds `ow` floats; the mask enables the
        // lanes `16·c + i < ow`.
        unsafe { _mm512_mask_storeu_ps(out.add((r + j) * g.ow + c * L), store, *v) };
    }
}

/// [`blocked`] with its epilogue compiled in (see [`EpKind::NONE`]).
///
/// # Safety
///
/// As [`blocked`].
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn blocked_ep<const K: usize, const S: usize>(ts: &mut [Task]) {
    // SAFETY (all): forwarded contract.
    unsafe {
        match ts[0].kind {
            EpKind::None => blocked::<K, S, { EpKind::NONE }>(ts),
            EpKind::HardSwish => blocked::<K, S, { EpKind::HARD_SWISH }>(ts),
            EpKind::Bins => blocked::<K, S, { EpKind::BINS }>(ts),
            EpKind::Other => blocked::<K, S, { EpKind::OTHER }>(ts),
        }
    }
}

/// The epilogue of kind `E` (an [`EpKind`] constant) on `NB` vectors: [`epilogue`], inline.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn epilogue_of<const E: u8, const NB: usize>(
    kind: EpKind,
    ep: &[EpOp],
    x: &mut [__m512; NB],
) {
    match E {
        EpKind::NONE => {}
        EpKind::HARD_SWISH => hard_swish(x),
        EpKind::BINS => {
            // Written out rather than through `bin_const`: LLVM left that call out of line here
            // and the 3×3 tiles ran 25% slower (98 → 125 µs on 64@56, measured).
            for op in ep {
                if let EpOp::Bin { op, arg, arg_first } = *op {
                    let a = [_mm512_set1_ps(arg); NB];
                    *x = match op {
                        BinKind::Max | BinKind::Min => max_min_const(op, arg, x),
                        _ if arg_first => bin(op, &a, x),
                        _ => bin(op, x, &a),
                    };
                }
            }
        }
        _ => epilogue(kind, ep, x),
    }
}

/// Square `K`×`K` kernels at stride `S` in both directions, no dilation (the MobileNet and
/// PP-LCNet depthwise layers): tiles of `R` output rows × `NB` chunks of 16 outputs.
///
/// The general kernel loads `K·K` input vectors per output vector. Here an input row's `K`
/// shifted vectors are loaded once and added into every output row of the tile that reads
/// it: `(R−1)·S + K` input rows per `R` output rows (6 instead of 12 for 3×3 at stride 1), and
/// the `R·NB` accumulators are independent chains that hide the FMAs' latency. Input rows are
/// visited in ascending order, so each accumulator still takes its taps in (ky, kx) order, as
/// the general kernel does. The weights are broadcast once per tile.
///
/// The `K` shifted vectors of a row ([`load_taps`]): at stride 1, one masked load per tap (on
/// Zen 4 the FMAs, broadcasts and shuffles share the FP ports, the loads do not: with the
/// weights broadcast once and loads for `valignd`, 16@112 3×3 went 88 → 66 µs); at stride 2,
/// three vectors, split into even and odd columns (taps 0 and 1) and shifted by one permute
/// per further tap (loading every tap's vector, two per tap, bound the stride-2 layers: mv2
/// 96@112 3×3 s2 275 → 196 µs).
///
/// # Safety
///
/// As [`rows`], and the geometry is `K`×`K`, stride `S` both ways, dilation 1.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn blocked<const K: usize, const S: usize, const E: u8>(ts: &mut [Task]) {
    let g = *ts[0].g;
    let chunks = g.ow.div_ceil(L);
    // Per chunk: the column of its first tap and the masks of the three 16-lane blocks from
    // it (every tap's vector is formed from those blocks).
    let cols: Vec<(isize, u16, u16, u16)> = (0..chunks)
        .map(|c| {
            let c0 = (c * L * S) as isize - g.pl;
            let m = |b: isize| range_mask(c0 + b * L as isize, g.iw);
            (c0, m(0), m(1), m(2))
        })
        .collect();
    for task in ts.iter_mut() {
        let out = task.out.as_mut_ptr();
        let nrows = task.out.len() / g.ow;
        super::for_tiles(nrows, chunks, 2, |r, four, c, wide| {
            // SAFETY (all four): forwarded contract; `for_tiles` hands out rows `[r, r + R)`
            // of the item's output and chunks `[c, c + NB)` of them.
            unsafe {
                match (four, wide) {
                    (true, true) => tile::<K, S, E, 4, 2>(&cols, task, r, c, out),
                    (true, false) => tile::<K, S, E, 4, 1>(&cols, task, r, c, out),
                    (false, true) => tile::<K, S, E, 1, 2>(&cols, task, r, c, out),
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
#[target_feature(enable = "avx512f")]
unsafe fn tile<const K: usize, const S: usize, const E: u8, const R: usize, const NB: usize>(
    cols: &[(isize, u16, u16, u16)],
    task: &Task,
    r0: usize,
    c: usize,
    out: *mut f32,
) {
    let g = task.g;
    // The weights, broadcast once per tile (those that do not fit in registers are spilled
    // and reloaded as full vectors: loads, where broadcasts would compete with the FMAs).
    let mut w = [_mm512_setzero_ps(); 25];
    for (v, &x) in w.iter_mut().zip(&task.w[..K * K]) {
        *v = _mm512_set1_ps(x);
    }
    let mut acc = [[_mm512_set1_ps(task.bias); R]; NB];
    let iy0 = ((task.oy0 + r0) * S) as isize - g.pt;
    let rows = (R - 1) * S + K;
    // What every step reads, in locals: the barrier below may write any memory, so values
    // read through `g`, `task` or `cols` would be reloaded (and bounds-checked) per step.
    let (ih, iw, x) = (g.ih, g.iw, task.x.as_ptr());
    let chunk: [(isize, u16, u16, u16); NB] = std::array::from_fn(|j| cols[c + j]);
    // One input row per step ([`unrolled_rows`]): as a loop, 3×3 stride 1 ran 50% slower;
    // unrolled without the barrier, LLVM spilled the loaded rows (41 GFLOP/s on 16@112, 52
    // with it).
    unrolled_rows!(rows, acc, zmm_reg, |t| {
        let iy = iy0 + t as isize;
        // A row outside the plane reads 0.0 in every lane and still adds `0·w`, as
        // the definition (and the general kernel) does.
        let mut xv = [[_mm512_setzero_ps(); K]; NB];
        if iy >= 0 && iy < ih {
            let rowp = x.wrapping_offset(iy * iw);
            for (xj, &cj) in xv.iter_mut().zip(&chunk) {
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
                let wv = w[ky as usize * K + kx];
                for (aj, xj) in acc.iter_mut().zip(&xv) {
                    aj[rr] = _mm512_fmadd_ps(xj[kx], wv, aj[rr]);
                }
            }
        }
    });
    for (j, aj) in acc.iter_mut().enumerate() {
        epilogue_of::<E, R>(task.kind, task.ep, aj);
        let lanes = (g.ow - (c + j) * L).min(L);
        let store = if lanes == L {
            0xffff
        } else {
            ((1u32 << lanes) - 1) as u16
        };
        for (rr, v) in aj.iter().enumerate() {
            // SAFETY: row `r0 + rr` of the item's output holds `ow` floats; the mask enables
            // the lanes `16·(c + j) + i < ow`.
            unsafe { _mm512_mask_storeu_ps(out.add((r0 + rr) * g.ow + (c + j) * L), store, *v) };
        }
    }
}

/// The `K` tap vectors of a chunk of 16 outputs from one input row: tap `kx`, lane `i` is
/// column `c0 + S·i + kx` of the row (0.0 outside it), for the chunk's `cols` entry
/// `(c0, m0, m1, m2)` ([`blocked`]'s table).
///
/// # Safety
///
/// `rowp` is a row of `iw` floats and the masks are those of the blocks of 16 columns from
/// `c0` within that row.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_taps<const K: usize, const S: usize>(
    rowp: *const f32,
    (c0, m0, m1, m2): (isize, u16, u16, u16),
    xj: &mut [__m512; K],
) {
    let p = rowp.wrapping_offset(c0);
    if S == 1 {
        // Tap `kx` is the 16 columns from `c0 + kx`: one masked load each (loads, where
        // `valignd` of two vectors would compete with the FMAs for ports).
        let both = m0 as u32 | (m1 as u32) << 16;
        for (kx, v) in xj.iter_mut().enumerate() {
            // SAFETY: lane `i` reads column `c0 + kx + i`, enabled exactly when that lies
            // inside the row (bit `kx + i` of the two blocks' masks); masked-off lanes are
            // never accessed.
            *v = unsafe { _mm512_maskz_loadu_ps((both >> kx) as u16, p.wrapping_add(kx)) };
        }
        return;
    }
    // Stride 2: the 48 columns from `c0`, loaded once: their even and odd columns are taps 0
    // and 1, and taps 2–4 are those shifted by one or two lanes with the next block's first
    // columns shifted in (two loads and a permute per tap read it before; the loads bound
    // the layer).
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    // Lanes `i + 1` of the first operand, the last from the second (`16 + 0`, or `16 + 1` for
    // the odd columns), and lanes `i + 2` with `16 + 0` and `16 + 2` last.
    let shift1 = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
    let shift1_odd = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17);
    let shift2 = _mm512_setr_epi32(2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18);
    // SAFETY: the masks enable exactly the lanes whose columns lie inside the row
    // (masked-off lanes are never accessed).
    let (a, b, n) = unsafe {
        (
            _mm512_maskz_loadu_ps(m0, p),
            _mm512_maskz_loadu_ps(m1, p.wrapping_add(L)),
            if K > 2 {
                _mm512_maskz_loadu_ps(m2, p.wrapping_add(2 * L))
            } else {
                _mm512_setzero_ps()
            },
        )
    };
    let ev = _mm512_permutex2var_ps(a, even, b);
    let od = _mm512_permutex2var_ps(a, odd, b);
    for (kx, v) in xj.iter_mut().enumerate() {
        *v = match kx {
            0 => ev,
            1 => od,
            2 => _mm512_permutex2var_ps(ev, shift1, n),
            3 => _mm512_permutex2var_ps(od, shift1_odd, n),
            _ => _mm512_permutex2var_ps(ev, shift2, n),
        };
    }
}

/// The epilogue on `NB` vectors, exactly as [`super::apply_epilogue`] on each lane; each
/// operation is chosen once for all `NB`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn epilogue<const NB: usize>(kind: EpKind, ep: &[EpOp], x: &mut [__m512; NB]) {
    match kind {
        EpKind::None => return,
        EpKind::HardSwish => {
            hard_swish(x);
            return;
        }
        EpKind::Bins | EpKind::Other => {}
    }
    let mut s = *x;
    for op in ep {
        match *op {
            EpOp::Bin { op, arg, arg_first } => bin_const(op, arg, arg_first, x),
            EpOp::Save => s = *x,
            EpOp::Combine { op, saved_first } => {
                *x = if saved_first {
                    bin(op, &s, x)
                } else {
                    bin(op, x, &s)
                };
            }
            EpOp::Sigmoid => x
                .iter_mut()
                .for_each(|v| *v = crate::kernels::gemm::avx512::sigmoid16(*v)),
        }
    }
}

/// HardSwish as the [`EpOp`] program the lowering makes of it (see [`EpKind::HardSwish`]).
#[inline]
#[target_feature(enable = "avx512f")]
fn hard_swish<const NB: usize>(x: &mut [__m512; NB]) {
    let (a, h) = (_mm512_set1_ps(1.0 / 6.0), _mm512_set1_ps(0.5));
    let (one, zero) = (_mm512_set1_ps(1.0), _mm512_setzero_ps());
    for v in x.iter_mut() {
        // `vminps`/`vmaxps` return the second operand, `e`, when it is NaN: NaN
        // propagates as in the generic path (whose first operands are constants).
        let e = _mm512_add_ps(_mm512_mul_ps(*v, a), h);
        let g = _mm512_max_ps(zero, _mm512_min_ps(one, e));
        *v = _mm512_mul_ps(*v, g);
    }
}

/// `x = x op arg`, or `arg op x` when `arg_first` ([`EpOp::Bin`]).
#[inline]
#[target_feature(enable = "avx512f")]
fn bin_const<const NB: usize>(op: BinKind, arg: f32, arg_first: bool, x: &mut [__m512; NB]) {
    let a = [_mm512_set1_ps(arg); NB];
    *x = match op {
        BinKind::Max | BinKind::Min => max_min_const(op, arg, x),
        _ if arg_first => bin(op, &a, x),
        _ => bin(op, x, &a),
    };
}

/// `max(x, arg)` or `min(x, arg)` (either order: they commute) in one instruction per
/// vector: `vmaxps`/`vminps` return their second operand when either is NaN, so with the
/// constant first a NaN in `x` comes through, and a NaN constant is every lane's result.
/// (Which of two equal zeros comes out may differ from [`BinKind::apply`]; they compare
/// equal.)
#[inline]
#[target_feature(enable = "avx512f")]
fn max_min_const<const NB: usize>(op: BinKind, arg: f32, x: &[__m512; NB]) -> [__m512; NB] {
    let a = _mm512_set1_ps(arg);
    if arg.is_nan() {
        return [a; NB];
    }
    x.map(|v| {
        if op == BinKind::Max {
            _mm512_max_ps(a, v)
        } else {
            _mm512_min_ps(a, v)
        }
    })
}

#[inline]
#[target_feature(enable = "avx512f")]
fn bin<const NB: usize>(op: BinKind, a: &[__m512; NB], b: &[__m512; NB]) -> [__m512; NB] {
    let mut r = *a;
    match op {
        BinKind::Add => (0..NB).for_each(|j| r[j] = _mm512_add_ps(a[j], b[j])),
        BinKind::Sub => (0..NB).for_each(|j| r[j] = _mm512_sub_ps(a[j], b[j])),
        BinKind::Mul => (0..NB).for_each(|j| r[j] = _mm512_mul_ps(a[j], b[j])),
        BinKind::Div => (0..NB).for_each(|j| r[j] = _mm512_div_ps(a[j], b[j])),
        // `vmaxps`/`vminps` return the second operand when either is NaN: a NaN in `a` is put
        // back explicitly so that NaN propagates from both sides.
        BinKind::Max => (0..NB).for_each(|j| {
            let m = _mm512_max_ps(a[j], b[j]);
            r[j] = _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a[j], a[j]), a[j]);
        }),
        BinKind::Min => (0..NB).for_each(|j| {
            let m = _mm512_min_ps(a[j], b[j]);
            r[j] = _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a[j], a[j]), a[j]);
        }),
    }
    r
}
