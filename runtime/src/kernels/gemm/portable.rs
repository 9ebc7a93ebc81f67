//! The portable microkernel: a 4×16 tile in plain Rust (separate multiply and add: `mul_add`
//! without hardware FMA is a slow libm call), which the compiler vectorizes for the
//! build target's baseline (SSE2 on x86-64, NEON on aarch64). It is the reference shape of the
//! SIMD kernels and the fallback where none applies.

#![allow(unsafe_code)]

use super::{Spec, Tile};

const MR: usize = 4;
const NR: usize = 16;

pub(super) static SPEC: Spec = Spec {
    mr: MR,
    nr: NR,
    nr_last: NR,
    kc: 256,
    mc: 64,
    nc: 512,
    tile,
};

/// # Safety
///
/// `t` must satisfy the contract of [`Tile`].
pub(super) unsafe fn tile(t: &Tile) {
    // SAFETY: forwarded contract.
    unsafe {
        if t.lda == 0 {
            rows::<true>(t)
        } else {
            rows::<false>(t)
        }
    }
}

#[inline]
unsafe fn rows<const PACKED: bool>(t: &Tile) {
    // SAFETY: forwarded contract; `rows` selects an instantiation with exactly that many rows.
    unsafe {
        match t.rows {
            4 => kernel::<4, PACKED>(t),
            3 => kernel::<3, PACKED>(t),
            2 => kernel::<2, PACKED>(t),
            _ => kernel::<1, PACKED>(t),
        }
    }
}

#[inline]
unsafe fn kernel<const R: usize, const PACKED: bool>(t: &Tile) {
    let mut acc = [[0.0f32; NR]; R];
    // A packed: row stride 1, k stride MR; A in place (row-major): row stride lda, k stride 1.
    let (a_rs, a_ks) = if PACKED { (1, MR) } else { (t.lda, 1) };
    for p in 0..t.kc {
        // SAFETY: the B panel (packed, or in place) holds `kc` rows of `NR` floats, `ldb` apart.
        let bk = unsafe { std::slice::from_raw_parts(t.b.add(p * t.ldb), NR) };
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: the A panel (packed, or in place with `lda`) holds `kc` steps of `rows`
            // values.
            let ar = unsafe { *t.a.add(r * a_rs + p * a_ks) };
            for (x, &bx) in row.iter_mut().zip(bk) {
                *x += ar * bx;
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (j, &x) in row.iter().enumerate().take(t.cols) {
            let mut x = t.alpha * x;
            // SAFETY: `r < rows` and `j < cols` address the tile inside `C`, the bias and the
            // residual, as the caller guarantees.
            unsafe {
                let cp = t.c.add(r * t.ldc + j);
                if t.beta != 0.0 {
                    x = if t.beta == 1.0 {
                        x + *cp
                    } else {
                        x + t.beta * *cp
                    };
                }
                if let Some(ep) = &t.ep {
                    x += ep.scalar;
                    if !ep.row_bias.is_null() {
                        x += *ep.row_bias.add(r);
                    }
                    if !ep.col_bias.is_null() {
                        x += *ep.col_bias.add(j);
                    }
                    if !ep.res.is_null() {
                        x += *ep.res.add(r * ep.ldr + j);
                    }
                    x = ep.act.apply(x);
                }
                *cp = x;
            }
        }
    }
}
