//! The AVX2 microkernel: a 6×16 `i32` tile of `C` in 12 ymm accumulators, on `i16` operands.
//!
//! AVX2's 8-bit multiply-add (`vpmaddubsw`) saturates its `i16` pair sums, which `u8·i8`
//! pairs overflow (2·255·127 > 32767), so operands are packed as `i16` (the same `u8`/`i8`
//! values) and multiplied with `vpmaddwd`: each `i32` lane gets the exact sum of two `i16`
//! products. Each pair of `k` steps loads two 32-byte rows of the `B` panel (16 columns × 2)
//! and broadcasts each `A` row's pair as one `i32`: 12 `vpmaddwd` + 12 `vpaddd`.

#![allow(unsafe_code)]

use super::{Spec, Tile};
use std::arch::x86_64::*;

const MR: usize = 6;
const NR: usize = 16;
const NV: usize = NR / 8;
const KG: usize = 2;

pub(super) static SPEC: Spec<i16, i16> = Spec {
    mr: MR,
    nr: NR,
    kg: KG,
    kc: 512,
    nc: 256,
    tile,
};

/// Dispatches on the tile's row count.
///
/// # Safety
///
/// The CPU must support AVX2, and `t` must satisfy the contract of [`Tile`].
#[target_feature(enable = "avx2")]
unsafe fn tile(t: &Tile<i16, i16>) {
    // SAFETY: forwarded contract; each arm has exactly `t.rows` rows.
    unsafe {
        match t.rows {
            6 => kernel::<6>(t),
            5 => kernel::<5>(t),
            4 => kernel::<4>(t),
            3 => kernel::<3>(t),
            2 => kernel::<2>(t),
            _ => kernel::<1>(t),
        }
    }
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn kernel<const R: usize>(t: &Tile<i16, i16>) {
    // SAFETY: forwarded contract.
    let mut acc = unsafe { dot::<R>(t) };
    // The epilogue in registers, one pass per step over the whole tile (as the AVX-512
    // kernel): a full vector with plain loads and stores, the last partial one of a narrow
    // tile with `vpmaskmovd`, which never touches a masked-off lane. Through a stack row and a
    // scalar loop per element instead, the epilogue bound the small-k products (96×12544×16,
    // 1 thread: 53 → 69 GOP/s; `cargo bench --bench igemm`).
    let lanes: [usize; NV] = std::array::from_fn(|v| t.cols.saturating_sub(8 * v).min(8));
    let masks: [__m256i; NV] = std::array::from_fn(|v| super::super::tail_mask8(lanes[v]));
    // SAFETY (all the loads and stores below): `load` and `put` touch only the first
    // `lanes[v]` columns of vector `v` of rows `r < R = rows`: inside the tile of C, the
    // residual and the epilogue vectors, as the caller guarantees.
    if !t.first {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                let old = unsafe { load(t.c.add(r * t.ldc + 8 * v), lanes[v], masks[v]) };
                *x = _mm256_add_epi32(*x, old);
            }
        }
    }
    if t.last {
        let coladd: [__m256i; NV] =
            std::array::from_fn(|v| unsafe { load(t.coladd.add(8 * v), lanes[v], masks[v]) });
        for (r, row) in acc.iter_mut().enumerate() {
            let ra = _mm256_set1_epi32(unsafe { *t.rowadd.add(r) });
            for (x, &ca) in row.iter_mut().zip(&coladd) {
                *x = _mm256_add_epi32(_mm256_add_epi32(*x, ra), ca);
            }
        }
        if !t.res.is_null() {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    let rp = unsafe { t.res.add(r * t.ldr + 8 * v) };
                    *x = _mm256_add_epi32(*x, unsafe { load(rp, lanes[v], masks[v]) });
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, &x) in row.iter().enumerate() {
            unsafe { put(t.c.add(r * t.ldc + 8 * v), lanes[v], masks[v], x) };
        }
    }
}

/// Loads the first `n` of 8 `i32`s at `p` (the rest read as 0; none touched when `n` is 0).
///
/// # Safety
///
/// The `n` `i32`s from `p` are valid for reads.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load(p: *const i32, n: usize, mask: __m256i) -> __m256i {
    // SAFETY: see the function's contract; a masked load never touches a masked-off lane.
    unsafe {
        if n == 8 {
            _mm256_loadu_si256(p.cast())
        } else {
            _mm256_maskload_epi32(p, mask)
        }
    }
}

/// Stores the first `n` of the 8 `i32`s of `x` at `p` (none when `n` is 0).
///
/// # Safety
///
/// The `n` `i32`s from `p` are valid for writes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn put(p: *mut i32, n: usize, mask: __m256i, x: __m256i) {
    // SAFETY: see the function's contract; a masked store never touches a masked-off lane.
    unsafe {
        if n == 8 {
            _mm256_storeu_si256(p.cast(), x);
        } else {
            _mm256_maskstore_epi32(p, mask, x);
        }
    }
}

/// `A_panel · B_panel` for one tile, in registers (a function of its own, as in the AVX-512
/// kernel: inline in the epilogue's function, LLVM kept the accumulators on the stack).
///
/// # Safety
///
/// The panels hold `kc / KG` groups of `MR·KG` and `NR·KG` i16s from `t.a` and `t.b`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot<const R: usize>(t: &Tile<i16, i16>) -> [[__m256i; NV]; R] {
    let mut acc = [[_mm256_setzero_si256(); NV]; R];
    let (mut a, mut b) = (t.a, t.b);
    // SAFETY: see the function's contract.
    unsafe {
        for _ in 0..t.kc / KG {
            let bv: [__m256i; NV] =
                std::array::from_fn(|v| _mm256_loadu_si256(b.add(16 * v).cast()));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_epi32(a.add(r * KG).cast::<i32>().read_unaligned());
                for (x, &bx) in row.iter_mut().zip(&bv) {
                    *x = _mm256_add_epi32(*x, _mm256_madd_epi16(av, bx));
                }
            }
            a = a.add(MR * KG);
            b = b.add(NR * KG);
        }
    }
    acc
}
