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

/// Dispatches on the tile's row count.
///
/// # Safety
///
/// The CPU must support AVX-512F, BW and VNNI, and `t` must satisfy the contract of [`Tile`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile(t: &Tile<u8, i8>) {
    // SAFETY: forwarded contract; each arm has exactly `t.rows` rows.
    unsafe {
        match t.rows {
            12 => kernel::<12>(t),
            11 => kernel::<11>(t),
            10 => kernel::<10>(t),
            9 => kernel::<9>(t),
            8 => kernel::<8>(t),
            7 => kernel::<7>(t),
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
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn kernel<const R: usize>(t: &Tile<u8, i8>) {
    // SAFETY: forwarded contract.
    let acc = unsafe { dot::<R>(t) };
    let masks: [__mmask16; NV] = std::array::from_fn(|v| {
        let lanes = t.cols.saturating_sub(16 * v).min(16);
        ((1u32 << lanes) - 1) as __mmask16
    });
    for (r, row) in acc.iter().enumerate() {
        for (v, (&x, &mask)) in row.iter().zip(&masks).enumerate() {
            if mask == 0 {
                continue;
            }
            let mut x = x;
            // SAFETY: masked loads and stores touch only the tile's `cols` columns of row
            // `r < rows` of C and the residual; the epilogue vectors cover the padded tile.
            unsafe {
                let cp = t.c.add(r * t.ldc + 16 * v);
                if !t.first {
                    x = _mm512_add_epi32(x, _mm512_maskz_loadu_epi32(mask, cp));
                }
                if t.last {
                    x = _mm512_add_epi32(x, _mm512_set1_epi32(*t.rowadd.add(r)));
                    x = _mm512_add_epi32(x, _mm512_maskz_loadu_epi32(mask, t.coladd.add(16 * v)));
                    if !t.res.is_null() {
                        let rp = t.res.add(r * t.ldr + 16 * v);
                        x = _mm512_add_epi32(x, _mm512_maskz_loadu_epi32(mask, rp));
                    }
                }
                _mm512_mask_storeu_epi32(cp, mask, x);
            }
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
unsafe fn dot<const R: usize>(t: &Tile<u8, i8>) -> [[__m512i; NV]; R] {
    let mut acc = [[_mm512_setzero_si512(); NV]; R];
    let (mut a, mut b) = (t.a, t.b);
    // SAFETY: see the function's contract.
    unsafe {
        for _ in 0..t.kc / KG {
            // A's panels stream from memory when they are a weight out of cache; the
            // prefetchers alone left the 512×49×4608 conv at half speed (measured).
            _mm_prefetch::<_MM_HINT_T0>(a.add(PF_A).cast());
            let bv: [__m512i; NV] =
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
