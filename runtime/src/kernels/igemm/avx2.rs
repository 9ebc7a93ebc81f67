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
    let acc = unsafe { dot::<R>(t) };
    // The epilogue goes through a stack row: 16 lanes, stored in full, copied out for `cols`.
    for (r, row) in acc.iter().enumerate() {
        let mut out = [0i32; NR];
        for (v, &x) in row.iter().enumerate() {
            // SAFETY: `out` holds NR = 8·NV i32s.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(8 * v).cast(), x) };
        }
        for (j, &o) in out[..t.cols].iter().enumerate() {
            // SAFETY: `j < cols` and `r < rows`: inside the tile of C, the residual and the
            // epilogue vectors.
            unsafe {
                let cp = t.c.add(r * t.ldc + j);
                let mut x = o;
                if !t.first {
                    x = x.wrapping_add(*cp);
                }
                if t.last {
                    x = x
                        .wrapping_add(*t.rowadd.add(r))
                        .wrapping_add(*t.coladd.add(j));
                    if !t.res.is_null() {
                        x = x.wrapping_add(*t.res.add(r * t.ldr + j));
                    }
                }
                *cp = x;
            }
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
