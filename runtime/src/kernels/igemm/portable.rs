//! The portable microkernel: a 4×16 `i32` tile on `i16` operands, one `k` step at a time, in
//! plain Rust that the compiler vectorizes for the build's baseline.

#![allow(unsafe_code)]

use super::{Spec, Tile};

const MR: usize = 4;
const NR: usize = 16;

pub(super) static SPEC: Spec<i16, i16> = Spec {
    mr: MR,
    nr: NR,
    kg: 1,
    kc: 512,
    nc: 256,
    tile,
};

/// # Safety
///
/// `t` must satisfy the contract of [`Tile`].
unsafe fn tile(t: &Tile<i16, i16>) {
    let mut acc = [[0i32; NR]; MR];
    // SAFETY: the panels hold `kc` steps of MR and NR i16s.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(t.a, t.kc * MR),
            std::slice::from_raw_parts(t.b, t.kc * NR),
        )
    };
    for (av, bv) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (row, &x) in acc.iter_mut().zip(av) {
            for (c, &y) in row.iter_mut().zip(bv) {
                *c = c.wrapping_add(i32::from(x) * i32::from(y));
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(t.rows) {
        for (j, &o) in row[..t.cols].iter().enumerate() {
            // SAFETY: `r < rows`, `j < cols`: inside the tile of C, the residual and the
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
