//! f32 matrix transposition of one block, `dst[j·ldd + i] = src[i·lds + j]`.
//!
//! The contraction kernels use it to compute a product with few columns as its transpose
//! (`Cᵀ = Bᵀ·Aᵀ`, whose vector lanes then run along the many rows) and put each finished block
//! back where `C` wants it while the block is still in L1. It works in 4×4 blocks of SSE
//! registers (x86-64's baseline, so no detection) with a scalar edge; at about one cycle per
//! element it costs a few percent of a product with `k` in the hundreds.

#![allow(unsafe_code)]

/// Writes the transpose of the `rows×cols` block at `src` (row stride `lds`) at `dst` (row
/// stride `ldd`): `dst[j·ldd + i] = src[i·lds + j]`.
///
/// # Safety
///
/// `src` must be valid for reads of `(rows − 1)·lds + cols` elements and `dst` for writes of
/// `(cols − 1)·ldd + rows` elements (when `rows` and `cols` are non-zero), and the two ranges
/// must not overlap.
pub unsafe fn block(
    src: *const f32,
    lds: usize,
    dst: *mut f32,
    ldd: usize,
    rows: usize,
    cols: usize,
) {
    let (r4, c4) = (rows / 4 * 4, cols / 4 * 4);
    // SAFETY (all): every offset is `i·lds + j` with `i < rows`, `j < cols` on the source and
    // `j·ldd + i` on the destination, inside the ranges of the contract.
    unsafe {
        for i in (0..r4).step_by(4) {
            for j in (0..c4).step_by(4) {
                quad(src.add(i * lds + j), lds, dst.add(j * ldd + i), ldd);
            }
            for j in c4..cols {
                for ii in i..i + 4 {
                    *dst.add(j * ldd + ii) = *src.add(ii * lds + j);
                }
            }
        }
        for i in r4..rows {
            for j in 0..cols {
                *dst.add(j * ldd + i) = *src.add(i * lds + j);
            }
        }
    }
}

/// One 4×4 block.
///
/// # Safety
///
/// Four rows of four elements at `src` (stride `lds`) readable, four at `dst` (stride `ldd`)
/// writable.
#[inline(always)]
unsafe fn quad(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64; the loads and stores are the contract's 4×4 elements.
    unsafe {
        use std::arch::x86_64::*;
        let r0 = _mm_loadu_ps(src);
        let r1 = _mm_loadu_ps(src.add(lds));
        let r2 = _mm_loadu_ps(src.add(2 * lds));
        let r3 = _mm_loadu_ps(src.add(3 * lds));
        let t0 = _mm_unpacklo_ps(r0, r1);
        let t1 = _mm_unpacklo_ps(r2, r3);
        let t2 = _mm_unpackhi_ps(r0, r1);
        let t3 = _mm_unpackhi_ps(r2, r3);
        _mm_storeu_ps(dst, _mm_movelh_ps(t0, t1));
        _mm_storeu_ps(dst.add(ldd), _mm_movehl_ps(t1, t0));
        _mm_storeu_ps(dst.add(2 * ldd), _mm_movelh_ps(t2, t3));
        _mm_storeu_ps(dst.add(3 * ldd), _mm_movehl_ps(t3, t2));
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: as above.
    unsafe {
        for i in 0..4 {
            for j in 0..4 {
                *dst.add(j * ldd + i) = *src.add(i * lds + j);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_shape_and_stride_lands_where_it_should() {
        for rows in 0..11 {
            for cols in 0..11 {
                let (lds, ldd) = (cols + 3, rows + 2);
                let src: Vec<f32> = (0..rows * lds).map(|v| v as f32).collect();
                let mut dst = vec![-1.0f32; cols * ldd];
                // SAFETY: the buffers hold `rows·lds` and `cols·ldd` elements.
                unsafe { super::block(src.as_ptr(), lds, dst.as_mut_ptr(), ldd, rows, cols) };
                for j in 0..cols {
                    for i in 0..ldd {
                        let want = if i < rows { src[i * lds + j] } else { -1.0 };
                        assert_eq!(dst[j * ldd + i], want, "{rows}×{cols} at ({i}, {j})");
                    }
                }
            }
        }
    }
}
