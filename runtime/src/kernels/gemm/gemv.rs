//! Matrix-vector products (`m = 1`, or `n = 1` seen transposed) as dot products of contiguous
//! rows, without packing anything.
//!
//! A one-row product whose `B` has contiguous *columns* (an ONNX `Gemm` weight with
//! `transB = 1`, the usual Linear layer) would make the blocked path pack all of `B` to use
//! each panel once: the copy costs as much as the product. Here each output is instead the dot
//! product of `x` with one contiguous row of `W = Bᵀ`, eight rows at a time so that `x` is
//! loaded once per eight FMAs and the eight chains hide the FMA latency. The product is
//! memory-bound (every element of `W` is used once), so this reads `W` at the speed of the
//! memory it sits in.

#![allow(unsafe_code)]

use super::Isa;

/// `out[j] = Σₚ x[p] · w[j·ldw + p]` for `j < out.len()`, with `x.len() = k`.
///
/// The caller guarantees that `w` holds `(out.len() − 1)·ldw + k` elements.
pub(super) fn dots(isa: Isa, x: &[f32], w: &[f32], ldw: usize, out: &mut [f32]) {
    let k = x.len();
    let n = out.len();
    if n == 0 {
        return;
    }
    assert!(
        w.len() >= (n - 1) * ldw + k,
        "gemv: W is shorter than its shape"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only constructed for CPUs that support AVX-512F (checked by
        // `Gemm::with_isa`/`Isa::detect`), and the bounds were checked just above.
        Isa::Avx512 => unsafe { avx512::dots(x, w, ldw, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 and FMA.
        Isa::Avx2 => unsafe { avx2::dots(x, w, ldw, out) },
        _ => portable(x, w, ldw, out),
    }
}

/// Eight partial sums per row, so that the compiler can keep them in one vector register.
fn portable(x: &[f32], w: &[f32], ldw: usize, out: &mut [f32]) {
    let k = x.len();
    for (j, o) in out.iter_mut().enumerate() {
        let row = &w[j * ldw..j * ldw + k];
        let mut acc = [0.0f32; 8];
        let (xc, xr) = x.split_at(k / 8 * 8);
        let (rc, rr) = row.split_at(k / 8 * 8);
        for (xs, rs) in xc.chunks_exact(8).zip(rc.chunks_exact(8)) {
            for l in 0..8 {
                acc[l] += xs[l] * rs[l];
            }
        }
        let mut s = acc.iter().sum::<f32>();
        for (a, b) in xr.iter().zip(rr) {
            s += a * b;
        }
        *o = s;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// AVX-512F, and `w` holds `(out.len() − 1)·ldw + x.len()` elements.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots(x: &[f32], w: &[f32], ldw: usize, out: &mut [f32]) {
        let mut j = 0;
        // SAFETY: rows `j..j + R` are inside `w` by the contract.
        unsafe {
            while j + 8 <= out.len() {
                rows::<8>(x, w.as_ptr().add(j * ldw), ldw, &mut out[j..j + 8]);
                j += 8;
            }
            while j < out.len() {
                rows::<1>(x, w.as_ptr().add(j * ldw), ldw, &mut out[j..j + 1]);
                j += 1;
            }
        }
    }

    /// Dot products of `x` with `R` rows starting at `w`; one row gets four chains instead.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize>(x: &[f32], w: *const f32, ldw: usize, out: &mut [f32]) {
        let k = x.len();
        let xp = x.as_ptr();
        let mut acc = [_mm512_setzero_ps(); 8];
        let mut p = 0;
        // SAFETY: every load reads `p..p + 16 ≤ k` of `x` and of each row, or is masked to
        // `p..k`.
        unsafe {
            if R == 1 {
                while p + 64 <= k {
                    for (u, a) in acc[..4].iter_mut().enumerate() {
                        let xv = _mm512_loadu_ps(xp.add(p + 16 * u));
                        *a = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w.add(p + 16 * u)), *a);
                    }
                    p += 64;
                }
            }
            while p + 16 <= k {
                let xv = _mm512_loadu_ps(xp.add(p));
                for (r, a) in acc[..R].iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w.add(r * ldw + p)), *a);
                }
                p += 16;
            }
            if p < k {
                let mask = ((1u32 << (k - p)) - 1) as __mmask16;
                let xv = _mm512_maskz_loadu_ps(mask, xp.add(p));
                for (r, a) in acc[..R].iter_mut().enumerate() {
                    let wv = _mm512_maskz_loadu_ps(mask, w.add(r * ldw + p));
                    *a = _mm512_fmadd_ps(xv, wv, *a);
                }
            }
        }
        if R == 1 {
            let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            out[0] = _mm512_reduce_add_ps(s);
        } else {
            for (o, a) in out.iter_mut().zip(&acc[..R]) {
                *o = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// AVX2 and FMA, and `w` holds `(out.len() − 1)·ldw + x.len()` elements.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots(x: &[f32], w: &[f32], ldw: usize, out: &mut [f32]) {
        let mut j = 0;
        // SAFETY: rows `j..j + R` are inside `w` by the contract.
        unsafe {
            while j + 8 <= out.len() {
                rows::<8>(x, w.as_ptr().add(j * ldw), ldw, &mut out[j..j + 8]);
                j += 8;
            }
            while j < out.len() {
                rows::<1>(x, w.as_ptr().add(j * ldw), ldw, &mut out[j..j + 1]);
                j += 1;
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows<const R: usize>(x: &[f32], w: *const f32, ldw: usize, out: &mut [f32]) {
        let k = x.len();
        let xp = x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut p = 0;
        // SAFETY: every vector load reads `p..p + 8 ≤ k` of `x` and of each row.
        unsafe {
            if R == 1 {
                while p + 32 <= k {
                    for (u, a) in acc[..4].iter_mut().enumerate() {
                        let xv = _mm256_loadu_ps(xp.add(p + 8 * u));
                        *a = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w.add(p + 8 * u)), *a);
                    }
                    p += 32;
                }
            }
            while p + 8 <= k {
                let xv = _mm256_loadu_ps(xp.add(p));
                for (r, a) in acc[..R].iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w.add(r * ldw + p)), *a);
                }
                p += 8;
            }
        }
        let mut sums = [0.0f32; 8];
        if R == 1 {
            let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            sums[0] = hsum(s);
        } else {
            for (s, a) in sums.iter_mut().zip(&acc[..R]) {
                *s = hsum(*a);
            }
        }
        // The last `k % 8` terms, scalar.
        for (r, (o, s)) in out.iter_mut().zip(sums).enumerate() {
            let mut s = s;
            for (q, &xq) in x.iter().enumerate().skip(p) {
                // SAFETY: `q < k`, inside row `r`.
                s += xq * unsafe { *w.add(r * ldw + q) };
            }
            *o = s;
        }
    }
}
