//! The AVX-512 VNNI microkernel: a 12×32 `i32` tile of `C` in 24 zmm accumulators.
//!
//! Each group of four `k` steps loads two 64-byte rows of the `B` panel (32 columns × 4 `i8`)
//! and broadcasts the four `u8` of each of the twelve `A` rows as one `i32`, for 24
//! independent `vpdpbusd` (each lane: four `u8·i8` products added to its `i32`, without
//! saturation). The shape and the register budget are those of the f32 kernel
//! (`kernels::gemm::avx512`), whose notes on keeping the accumulators in registers apply here.

#![allow(unsafe_code)]

use super::{Spec, Tile};
use std::arch::x86_64::*;

const MR: usize = 12;
const NR: usize = 32;
const NV: usize = NR / 16;
const KG: usize = 4;
/// How far ahead (bytes) of the `A` panel the kernel prefetches: ~40 groups, several hundred
/// cycles of work, about a memory latency.
const PF_A: usize = 2048;

pub(super) static SPEC: Spec<u8, i8> = Spec {
    mr: MR,
    nr: NR,
    kg: KG,
    kc: 1024,
    nc: 256,
    tile,
};

/// Dispatches on the tile's row and column counts.
///
/// A full tile is 12×32 (two vectors per row); a tile cut short by the edge of `C` runs only
/// the work its columns need, so that `n` not a multiple of 32 (the 49 and 196 pixels of a
/// ResNet's last stages) costs little more than its own multiply-adds: up to 16 columns take
/// one vector per row (`R` `vpdpbusd` per group), and a few columns — fewer than the rows —
/// take the transposed form of [`columns`], one `vpdpbusd` per column covering all twelve
/// rows. Between 17 and 31 columns, 16 columns by vectors plus the rest by columns when that
/// is cheaper than a second vector per row.
///
/// # Safety
///
/// The CPU must support AVX-512F, BW and VNNI, and `t` must satisfy the contract of [`Tile`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile(t: &Tile<u8, i8>) {
    let (rows, cols) = (t.rows, t.cols);
    // SAFETY: forwarded contract; every call covers a part of the tile's columns, with the
    // pointers moved to its first column (16 columns are 64 bytes of a B group).
    unsafe {
        if cols <= 16 {
            if cols < rows {
                columns_n(t);
            } else {
                rows_n::<1>(t);
            }
        } else if cols < 32 && cols - 16 < rows {
            rows_n::<1>(&Tile { cols: 16, ..*t });
            columns_n(&Tile {
                b: t.b.add(64),
                c: t.c.add(16),
                cols: cols - 16,
                coladd: t.coladd.add(16),
                res: if t.res.is_null() {
                    t.res
                } else {
                    t.res.add(16)
                },
                ..*t
            });
        } else {
            rows_n::<NV>(t);
        }
    }
}

/// [`kernel`] for the tile's row count, with `V` vectors per row.
///
/// # Safety
///
/// As for [`tile`]; `16·(V − 1) < t.cols ≤ 16·V`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn rows_n<const V: usize>(t: &Tile<u8, i8>) {
    // SAFETY: forwarded contract; each arm has exactly `t.rows` rows.
    unsafe {
        match t.rows {
            12 => kernel::<12, V>(t),
            11 => kernel::<11, V>(t),
            10 => kernel::<10, V>(t),
            9 => kernel::<9, V>(t),
            8 => kernel::<8, V>(t),
            7 => kernel::<7, V>(t),
            6 => kernel::<6, V>(t),
            5 => kernel::<5, V>(t),
            4 => kernel::<4, V>(t),
            3 => kernel::<3, V>(t),
            2 => kernel::<2, V>(t),
            _ => kernel::<1, V>(t),
        }
    }
}

/// [`columns`] for the tile's column count (below 12).
///
/// # Safety
///
/// As for [`tile`]; `t.cols < MR`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn columns_n(t: &Tile<u8, i8>) {
    // SAFETY: forwarded contract; each arm has exactly `t.cols` columns. Few columns get
    // several accumulators per column, so that the chains of dependent `vpdpbusd` overlap.
    unsafe {
        match t.cols {
            1 => columns::<1, 4>(t),
            2 => columns::<2, 2>(t),
            3 => columns::<3, 2>(t),
            4 => columns::<4, 1>(t),
            5 => columns::<5, 1>(t),
            6 => columns::<6, 1>(t),
            7 => columns::<7, 1>(t),
            8 => columns::<8, 1>(t),
            9 => columns::<9, 1>(t),
            10 => columns::<10, 1>(t),
            _ => columns::<11, 1>(t),
        }
    }
}

/// A tile of `C` columns, transposed: per group, the `A` panel's twelve rows (48 bytes) are
/// one vector of twelve `i32` lanes and each column's four bytes of `B` are broadcast, so one
/// `vpdpbusd` computes a column for all rows. `U` accumulators per column take alternate
/// groups. The epilogue goes element by element (rows × `C` values, small beside the
/// `C·kc/4` products).
///
/// # Safety
///
/// As for [`tile`]; `t.cols == C`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn columns<const C: usize, const U: usize>(t: &Tile<u8, i8>) {
    let groups = t.kc / KG;
    let rows_mask: __mmask16 = (1 << MR) - 1;
    let mut acc = [[_mm512_setzero_si512(); U]; C];
    let (mut a, mut b) = (t.a, t.b);
    // SAFETY: the panels hold `groups` groups of `MR·KG` and `NR·KG` bytes; the masked load
    // reads only the group's 48 bytes of A; a column's four bytes lie inside B's group.
    unsafe {
        let dot = |acc: &mut __m512i, a: *const u8, b: *const i8| {
            let av = _mm512_maskz_loadu_epi32(rows_mask, a.cast());
            let bv = _mm512_set1_epi32(b.cast::<i32>().read_unaligned());
            *acc = _mm512_dpbusd_epi32(*acc, av, bv);
        };
        let mut g = 0;
        while g + U <= groups {
            _mm_prefetch::<_MM_HINT_T0>(a.add(PF_A).cast());
            for u in 0..U {
                for (j, col) in acc.iter_mut().enumerate() {
                    dot(&mut col[u], a.add(u * MR * KG), b.add(u * NR * KG + j * KG));
                }
            }
            a = a.add(U * MR * KG);
            b = b.add(U * NR * KG);
            g += U;
        }
        while g < groups {
            for (j, col) in acc.iter_mut().enumerate() {
                dot(&mut col[0], a, b.add(j * KG));
            }
            a = a.add(MR * KG);
            b = b.add(NR * KG);
            g += 1;
        }
    }
    for (j, col) in acc.iter().enumerate() {
        let sum = col[1..].iter().fold(col[0], |s, &x| _mm512_add_epi32(s, x));
        let mut lanes = [0i32; 16];
        // SAFETY: `lanes` holds sixteen i32s.
        unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), sum) };
        for (r, &x) in lanes.iter().enumerate().take(t.rows) {
            // SAFETY: row `r < rows`, column `j < cols` of C, of the epilogue vectors and of
            // the residual.
            unsafe {
                let cp = t.c.add(r * t.ldc + j);
                let mut v = x;
                if !t.first {
                    v = v.wrapping_add(*cp);
                }
                if t.last {
                    v = v
                        .wrapping_add(*t.rowadd.add(r))
                        .wrapping_add(*t.coladd.add(j));
                    if !t.res.is_null() {
                        v = v.wrapping_add(*t.res.add(r * t.ldr + j));
                    }
                }
                *cp = v;
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn kernel<const R: usize, const V: usize>(t: &Tile<u8, i8>) {
    // SAFETY: forwarded contract.
    let mut acc = unsafe { dot::<R, V>(t) };
    let masks: [__mmask16; V] = std::array::from_fn(|v| {
        let lanes = t.cols.saturating_sub(16 * v).min(16);
        ((1u32 << lanes) - 1) as __mmask16
    });
    // Each step is its own pass over the whole tile behind one test, over constant bounds, so
    // that LLVM unrolls them and the accumulators stay in registers (one loop doing every step
    // per element behind its tests kept them in an array on the stack; see the f32 kernel).
    // SAFETY (all the loads and stores below): masked loads and stores touch only the tile's
    // `cols` columns of rows `r < R = rows` of C and the residual (a vector past `cols` has an
    // empty mask and touches nothing); the epilogue vectors cover the padded tile.
    if !t.first {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, (x, &mask)) in row.iter_mut().zip(&masks).enumerate() {
                let old = unsafe { _mm512_maskz_loadu_epi32(mask, t.c.add(r * t.ldc + 16 * v)) };
                *x = _mm512_add_epi32(*x, old);
            }
        }
    }
    if t.last {
        let coladd: [__m512i; V] = std::array::from_fn(|v| unsafe {
            _mm512_maskz_loadu_epi32(masks[v], t.coladd.add(16 * v))
        });
        for (r, row) in acc.iter_mut().enumerate() {
            let ra = _mm512_set1_epi32(unsafe { *t.rowadd.add(r) });
            for (x, &ca) in row.iter_mut().zip(&coladd) {
                *x = _mm512_add_epi32(_mm512_add_epi32(*x, ra), ca);
            }
        }
        if !t.res.is_null() {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, (x, &mask)) in row.iter_mut().zip(&masks).enumerate() {
                    let rp = unsafe { t.res.add(r * t.ldr + 16 * v) };
                    *x = _mm512_add_epi32(*x, unsafe { _mm512_maskz_loadu_epi32(mask, rp) });
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, (&x, &mask)) in row.iter().zip(&masks).enumerate() {
            unsafe { _mm512_mask_storeu_epi32(t.c.add(r * t.ldc + 16 * v), mask, x) };
        }
    }
}

/// `A_panel · B_panel` for one tile, in registers. It must stay a function of its own: with
/// this loop inline in `kernel`, LLVM stored every accumulator to the stack on each step (the
/// kernel ran at half speed, measured).
///
/// # Safety
///
/// The panels hold `kc / KG` groups of `MR·KG` and `NR·KG` bytes from `t.a` and `t.b`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot<const R: usize, const V: usize>(t: &Tile<u8, i8>) -> [[__m512i; V]; R] {
    let mut acc = [[_mm512_setzero_si512(); V]; R];
    let (mut a, mut b) = (t.a, t.b);
    // SAFETY: see the function's contract.
    unsafe {
        for _ in 0..t.kc / KG {
            // A's panels stream from memory when they are a weight out of cache; the
            // prefetchers alone left the 512×49×4608 conv at half speed (measured).
            _mm_prefetch::<_MM_HINT_T0>(a.add(PF_A).cast());
            let bv: [__m512i; V] =
                std::array::from_fn(|v| _mm512_loadu_si512(b.add(64 * v).cast()));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32(a.add(r * KG).cast::<i32>().read_unaligned());
                for (x, &bx) in row.iter_mut().zip(&bv) {
                    *x = _mm512_dpbusd_epi32(*x, av, bx);
                }
            }
            a = a.add(MR * KG);
            b = b.add(NR * KG);
        }
    }
    acc
}
