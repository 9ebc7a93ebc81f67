//! Packing operands into the panel layouts the microkernels stream through.
//!
//! `A` blocks become `MR`-row panels: for each step `p` of k, the `MR` values of column `p`
//! lie together (`panel[p * MR + i]`). `B` blocks become `NR`-column panels: for each `p`, the
//! `NR` values of row `p` lie together (`panel[p * NR + j]`), zero-padded past `n` so that the
//! kernel can always load whole vectors. Panels are consecutive, `kc * MR` (`kc * NR`) apart.

use super::MatRef;
use std::mem::MaybeUninit;

/// An `f32` buffer whose first element is 64-byte aligned, so that packed panels start on cache
/// lines and vector loads of them never split one. It starts uninitialized: packing writes
/// every element a kernel later reads (padding included), so zeroing it first would only cost a
/// pass over up to half a megabyte per call.
#[derive(Clone, Debug)]
pub(super) struct AlignedBuf {
    buf: Box<[MaybeUninit<f32>]>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub(super) fn new(len: usize) -> AlignedBuf {
        let buf = Box::new_uninit_slice(len + 16);
        // `align_offset` of a `*const f32` to 64 bytes is at most 15 elements.
        let start = buf.as_ptr().align_offset(64).min(16);
        AlignedBuf { buf, start, len }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [MaybeUninit<f32>] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// The first element, for kernels, which read only elements that packing wrote.
    pub(super) fn as_ptr(&self) -> *const f32 {
        self.buf[self.start..].as_ptr().cast()
    }
}

/// Packs rows `i0..i0+mc`, columns `p0..p0+kc` of `a` into `MR`-row panels.
/// Rows past `mc` in the last panel are left as they are: kernels never read them.
pub(super) fn pack_a(
    dst: &mut [MaybeUninit<f32>],
    a: &MatRef<'_>,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    mr: usize,
) {
    if kc == 0 {
        return;
    }
    for (q, panel) in dst.chunks_mut(kc * mr).take(mc.div_ceil(mr)).enumerate() {
        let top = i0 + q * mr;
        let rows = mr.min(i0 + mc - top);
        if a.cs == 1 {
            // Row-major A: each row is contiguous along k; scatter it into the panel.
            for i in 0..rows {
                let start = (top + i) * a.rs + p0;
                let src = &a.data[start..start + kc];
                for (p, &x) in src.iter().enumerate() {
                    panel[p * mr + i].write(x);
                }
            }
        } else if a.rs == 1 {
            // Transposed A: each column is contiguous along m; copy it whole. A full panel's
            // columns have the tile's row count, known here at compile time, so each is a few
            // vector moves: a slice copy of run-time length is a `memcpy` call per column
            // (5% of MobileNet-like models' time went to those calls).
            match (rows, mr) {
                (12, 12) => columns::<12>(panel, a, p0, kc, top),
                (8, 8) => columns::<8>(panel, a, p0, kc, top),
                (6, 6) => columns::<6>(panel, a, p0, kc, top),
                (4, 4) => columns::<4>(panel, a, p0, kc, top),
                _ => {
                    for p in 0..kc {
                        let start = (p0 + p) * a.cs + top;
                        let src = &a.data[start..start + rows];
                        for (d, &x) in panel[p * mr..p * mr + rows].iter_mut().zip(src) {
                            d.write(x);
                        }
                    }
                }
            }
        } else {
            for p in 0..kc {
                for i in 0..rows {
                    panel[p * mr + i].write(a.data[(top + i) * a.rs + (p0 + p) * a.cs]);
                }
            }
        }
    }
}

/// Columns `p0..p0+kc` of a transposed `a` (`rs == 1`), rows `top..top+MR`, into `panel`.
fn columns<const MR: usize>(
    panel: &mut [MaybeUninit<f32>],
    a: &MatRef<'_>,
    p0: usize,
    kc: usize,
    top: usize,
) {
    for (p, dst) in panel.chunks_exact_mut(MR).take(kc).enumerate() {
        let start = (p0 + p) * a.cs + top;
        for (d, &x) in dst.iter_mut().zip(&a.data[start..start + MR]) {
            d.write(x);
        }
    }
}

/// Packs rows `p0..p0+kc`, columns `j0..j0+nc` of `b` into `NR`-column panels, zero-padding
/// the last panel to `NR` columns.
pub(super) fn pack_b(
    dst: &mut [MaybeUninit<f32>],
    b: &MatRef<'_>,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    nr: usize,
) {
    if kc == 0 {
        return;
    }
    for (q, panel) in dst.chunks_mut(kc * nr).take(nc.div_ceil(nr)).enumerate() {
        let left = j0 + q * nr;
        let cols = nr.min(j0 + nc - left);
        if b.cs == 1 {
            // Row-major B: each panel row is a contiguous run of B's row.
            for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                let start = (p0 + p) * b.rs + left;
                for (d, &x) in row[..cols].iter_mut().zip(&b.data[start..start + cols]) {
                    d.write(x);
                }
                for d in &mut row[cols..] {
                    d.write(0.0);
                }
            }
        } else {
            if cols < nr {
                for d in panel.iter_mut() {
                    d.write(0.0);
                }
            }
            if b.rs == 1 {
                // Transposed B: each column is contiguous along k.
                for j in 0..cols {
                    let start = (left + j) * b.cs + p0;
                    for (p, &x) in b.data[start..start + kc].iter().enumerate() {
                        panel[p * nr + j].write(x);
                    }
                }
            } else {
                for p in 0..kc {
                    for j in 0..cols {
                        panel[p * nr + j].write(b.data[(p0 + p) * b.rs + (left + j) * b.cs]);
                    }
                }
            }
        }
    }
}
