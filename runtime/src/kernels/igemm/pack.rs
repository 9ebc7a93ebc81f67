//! Packing integer operands into the panels the microkernels read, with the offset subtracted
//! (so that values land in the 8-bit window) and each panel row's sum taken on the way.
//!
//! Both operands are seen as `rows×k` matrices (`A` as it is, `B` transposed) and cut into
//! panels of `P` rows (`MR` for `A`, `NR` for `B`). Inside a panel, `k` is cut into groups of
//! `KG` steps and laid out group by group, row by row: element `(r, g·KG + u)` of a panel is at
//! `g·P·KG + r·KG + u`. So one group of a row is `KG` adjacent values (the four bytes `vpdpbusd`
//! multiplies into one `i32` lane, the pair `vpmaddwd` does), and one group of the whole panel
//! is one contiguous run the kernel loads as vectors (`B`) or broadcasts from (`A`). Rows past
//! the matrix and steps past `k` are zero, so they add nothing.

use super::{IntElem, IntImage, IntRef, Panels};
use crate::kernels::{bytes, im2col};
use std::any::TypeId;
use std::mem::MaybeUninit;

/// A packed element type: the 8- or 16-bit form the kernels multiply.
pub(super) trait PackDst: Copy + Default + Send + Sync + 'static {
    /// `v`, known to fit.
    fn from_i32(v: i32) -> Self;
    /// Panels of this type, as a [`super::PackedInt`] keeps them.
    fn wrap(v: AlignedVec<Self>) -> Panels;
    /// The panels, if they hold this type.
    fn unwrap(p: &Panels) -> Option<&AlignedVec<Self>>;
}

macro_rules! pack_dst {
    ($($t:ty => $variant:ident),*) => {$(
        impl PackDst for $t {
            fn from_i32(v: i32) -> Self {
                v as $t
            }
            fn wrap(v: AlignedVec<Self>) -> Panels {
                Panels::$variant(v)
            }
            fn unwrap(p: &Panels) -> Option<&AlignedVec<Self>> {
                match p {
                    Panels::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    )*};
}
pack_dst!(u8 => U8, i8 => I8, i16 => I16);

/// Whether `T` is `u8` or `i8` (one byte, every bit pattern a value).
fn is_byte<T: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<u8>() || TypeId::of::<T>() == TypeId::of::<i8>()
}

/// A buffer whose first element is 64-byte aligned, so that panels start on cache lines.
pub(super) struct AlignedVec<T> {
    buf: Box<[MaybeUninit<T>]>,
    start: usize,
    len: usize,
}

impl<T: PackDst> AlignedVec<T> {
    pub(super) fn new(len: usize) -> Self {
        let slack = 64 / std::mem::size_of::<T>();
        let buf = Box::new_uninit_slice(len + slack);
        let start = buf.as_ptr().align_offset(64).min(slack);
        AlignedVec { buf, start, len }
    }

    /// The elements; packing writes every one of them (padding included) before any is read.
    pub(super) fn as_mut_slice(&mut self) -> &mut [MaybeUninit<T>] {
        &mut self.buf[self.start..self.start + self.len]
    }

    pub(super) fn as_ptr(&self) -> *const T {
        self.buf[self.start..].as_ptr().cast()
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

/// Packs the whole `rows×k` matrix `src` minus `off` into `p`-row panels (see [`pack`]), split
/// across up to `threads` threads: the panels and each packed row's sum (padded to whole
/// panels).
pub(super) fn pack_all<T: IntElem, D: PackDst>(
    src: &IntRef<'_, T>,
    rows: usize,
    k: usize,
    off: i32,
    p: usize,
    kg: usize,
    threads: usize,
) -> (AlignedVec<D>, Vec<i32>) {
    in_parts((rows, k), (p, kg), threads, &|part, d, s| {
        pack(src, rows, k, off, p, kg, part, d, s)
    })
}

/// [`pack_all`] of an image's column matrix (seen transposed, `n×k`), each part packed by
/// [`pack_image`] from the image.
pub(super) fn pack_all_image<T: IntElem, D: PackDst>(
    img: &IntImage<'_, T>,
    n: usize,
    k: usize,
    off: i32,
    p: usize,
    kg: usize,
    threads: usize,
) -> (AlignedVec<D>, Vec<i32>) {
    let tiles = n.div_ceil(p);
    in_parts((n, k), (p, kg), threads, &|(t, parts), d, s| {
        let (q0, q1) = band(t, parts, tiles);
        let top = q0 * p;
        let rows = (q1 * p).min(n).saturating_sub(top);
        if rows > 0 {
            pack_image(img, (top, rows), k, off, p, kg, d, s);
        }
    })
}

/// Packs part `(t, parts)` (whole panels, see [`band`]) into that part's panels and sums.
type Part<'f, D> = dyn Fn((usize, usize), &mut [MaybeUninit<D>], &mut [i32]) + Sync + 'f;

/// The panels (`p` rows, `k` padded to a multiple of `kg`) and row sums of a `rows×k` operand,
/// its parts packed by `part` on up to `threads` threads.
fn in_parts<D: PackDst>(
    (rows, k): (usize, usize),
    (p, kg): (usize, usize),
    threads: usize,
    part: &Part<'_, D>,
) -> (AlignedVec<D>, Vec<i32>) {
    let kp = k.next_multiple_of(kg);
    let tiles = rows.div_ceil(p);
    let mut buf = AlignedVec::<D>::new(tiles * p * kp);
    let mut sums = vec![0i32; tiles * p];
    let threads = threads.min(tiles).max(1);
    if threads == 1 {
        part((0, 1), buf.as_mut_slice(), &mut sums);
    } else {
        let parts: Vec<std::sync::Mutex<Option<_>>> =
            split(buf.as_mut_slice(), &mut sums, p * kp, p, tiles, threads)
                .into_iter()
                .map(|part| std::sync::Mutex::new(Some(part)))
                .collect();
        super::super::parallel_for(threads, &|t| {
            let taken = parts[t].lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some((d, s)) = taken {
                part((t, threads), d, s);
            }
        });
    }
    (buf, sums)
}

/// The tiles `[t·tiles/threads, (t+1)·tiles/threads)` of part `t`.
pub(super) fn band(t: usize, threads: usize, tiles: usize) -> (usize, usize) {
    (tiles * t / threads, tiles * (t + 1) / threads)
}

/// Cuts the packed buffer and the sums into one part per thread (whole panels).
pub(super) fn split<'a, D>(
    mut dst: &'a mut [MaybeUninit<D>],
    mut sums: &'a mut [i32],
    panel_len: usize,
    p: usize,
    tiles: usize,
    threads: usize,
) -> Vec<(&'a mut [MaybeUninit<D>], &'a mut [i32])> {
    let mut parts = Vec::with_capacity(threads);
    for t in 0..threads {
        let (q0, q1) = band(t, threads, tiles);
        let (d, rest) = dst.split_at_mut((q1 - q0) * panel_len);
        let (s, srest) = sums.split_at_mut((q1 - q0) * p);
        parts.push((d, s));
        dst = rest;
        sums = srest;
    }
    parts
}

/// Packs part `t` of `threads` (whole panels) of the `rows×k` matrix `src` minus `off` into
/// `P`-row panels with `k` padded to a multiple of `kg`; `dst` and `sums` are that part's
/// slices (from [`split`], or everything for one part). `sums[r]` is the sum of packed row `r`.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack<T: IntElem, D: PackDst>(
    src: &IntRef<'_, T>,
    rows: usize,
    k: usize,
    off: i32,
    p: usize,
    kg: usize,
    part: (usize, usize),
    dst: &mut [MaybeUninit<D>],
    sums: &mut [i32],
) {
    #[cfg(target_arch = "x86_64")]
    if kg == 4 && is_byte::<T>() && is_byte::<D>() && super::supported(super::Isa::Avx512) {
        // SAFETY: `T` and `D` are `u8` or `i8` (checked just above): one byte, every bit
        // pattern valid, so their slices are byte slices of the same length.
        let (bytes, out) = unsafe {
            (
                std::slice::from_raw_parts(src.data.as_ptr().cast::<u8>(), src.data.len()),
                std::slice::from_raw_parts_mut(
                    dst.as_mut_ptr().cast::<MaybeUninit<u8>>(),
                    dst.len(),
                ),
            )
        };
        let signed = TypeId::of::<D>() == TypeId::of::<i8>();
        let view = IntRef::new(bytes, src.rs, src.cs);
        if super::pack_x86::pack8(&view, rows, k, off, p, part, out, sums, signed) {
            return;
        }
    }
    pack_generic(src, rows, k, off, p, kg, part, dst, sums);
}

/// Packs columns `top..top + rows` of the column matrix of `img` (seen transposed, as a
/// `rows×k` matrix) like [`pack`] with one part: straight from the image where a packer for
/// its geometry exists, else from a copy of the block (in L1/L2, reused between calls).
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_image<T: IntElem, D: PackDst>(
    img: &IntImage<'_, T>,
    (top, rows): (usize, usize),
    k: usize,
    off: i32,
    p: usize,
    kg: usize,
    dst: &mut [MaybeUninit<D>],
    sums: &mut [i32],
) {
    #[cfg(target_arch = "x86_64")]
    if kg == 4 && p == 32 && is_byte::<T>() && is_byte::<D>() {
        // SAFETY: `T` and `D` are `u8` or `i8` (checked just above): one byte, every bit
        // pattern valid, so their slices are byte slices of the same length.
        let (planes, out) = unsafe {
            (
                std::slice::from_raw_parts(img.data.as_ptr().cast::<u8>(), img.data.len()),
                std::slice::from_raw_parts_mut(
                    dst.as_mut_ptr().cast::<MaybeUninit<u8>>(),
                    dst.len(),
                ),
            )
        };
        let fill = bytes::as_bytes_mut(&mut [img.fill])[0];
        let signed = TypeId::of::<D>() == TypeId::of::<i8>();
        if super::pack_x86::pack_image8(
            planes,
            fill,
            &img.geom,
            (top, rows),
            k,
            off,
            out,
            sums,
            signed,
        ) {
            return;
        }
    }
    im2col::with_scratch(k * rows, img.fill, |col| {
        im2col::copy_block(img.data, img.fill, &img.geom, top, rows, col, 1);
        let v = IntRef::new(&*col, 1, rows);
        pack(&v, rows, k, off, p, kg, (0, 1), dst, sums);
    })
}

/// [`pack`] in plain Rust, for any layout, element types and ISA.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_generic<T: IntElem, D: PackDst>(
    src: &IntRef<'_, T>,
    rows: usize,
    k: usize,
    off: i32,
    p: usize,
    kg: usize,
    part: (usize, usize),
    dst: &mut [MaybeUninit<D>],
    sums: &mut [i32],
) {
    // The group size as a constant, so that the layout's `/` and `%` are shifts.
    match kg {
        4 => pack_kg::<T, D, 4>(src, rows, k, off, p, part, dst, sums),
        2 => pack_kg::<T, D, 2>(src, rows, k, off, p, part, dst, sums),
        _ => pack_kg::<T, D, 1>(src, rows, k, off, p, part, dst, sums),
    }
}

#[allow(clippy::too_many_arguments)]
fn pack_kg<T: IntElem, D: PackDst, const KG: usize>(
    src: &IntRef<'_, T>,
    rows: usize,
    k: usize,
    off: i32,
    p: usize,
    (t, threads): (usize, usize),
    dst: &mut [MaybeUninit<D>],
    sums: &mut [i32],
) {
    let kp = k.next_multiple_of(KG);
    let (q0, q1) = band(t, threads, rows.div_ceil(p));
    let val = |x: T| (x.widen() as i32).wrapping_sub(off);
    for (q, (panel, psum)) in (q0..q1).zip(dst.chunks_mut(p * kp).zip(sums.chunks_mut(p))) {
        let top = q * p;
        let live = p.min(rows - top);
        if live < p || kp > k {
            panel.fill(MaybeUninit::new(D::default()));
        }
        psum.fill(0);
        // Element (r, kk) of the panel: group kk / KG, row r, lane kk % KG.
        let at = |r: usize, kk: usize| (kk / KG) * p * KG + r * KG + kk % KG;
        if src.rs == 1 && src.cs != 1 {
            // The panel's rows are adjacent in memory (B row-major, seen transposed): a group
            // is KG runs across them, one per step of k, interleaved into the panel, which is
            // written in order.
            for (g, out) in panel.chunks_exact_mut(p * KG).enumerate() {
                if live == p && (g + 1) * KG <= k {
                    // A whole group: KG runs of exactly `p` values, so that the compiler
                    // hoists the bounds checks and vectorizes the interleave.
                    let runs: [&[T]; KG] = std::array::from_fn(|u| {
                        let start = top + (g * KG + u) * src.cs;
                        &src.data[start..start + p]
                    });
                    for (r, (o, s)) in out.chunks_exact_mut(KG).zip(psum.iter_mut()).enumerate() {
                        let mut acc = *s;
                        for (o, run) in o.iter_mut().zip(&runs) {
                            let v = val(run[r]);
                            acc = acc.wrapping_add(v);
                            *o = MaybeUninit::new(D::from_i32(v));
                        }
                        *s = acc;
                    }
                    continue;
                }
                let runs: [&[T]; KG] = std::array::from_fn(|u| {
                    let kk = g * KG + u;
                    if kk < k {
                        let start = top + kk * src.cs;
                        &src.data[start..start + live]
                    } else {
                        &[]
                    }
                });
                for (r, (o, s)) in out.chunks_exact_mut(KG).zip(psum.iter_mut()).enumerate() {
                    for (o, run) in o.iter_mut().zip(&runs) {
                        if let Some(&x) = run.get(r) {
                            let v = val(x);
                            *s = s.wrapping_add(v);
                            *o = MaybeUninit::new(D::from_i32(v));
                        }
                    }
                }
            }
        } else if src.cs == 1 {
            // Each row is contiguous along k: copy it KG values at a time.
            for (r, s) in psum[..live].iter_mut().enumerate() {
                let start = (top + r) * src.rs;
                let row = &src.data[start..start + k];
                let mut acc = 0i32;
                for (g, chunk) in row.chunks(KG).enumerate() {
                    let base = g * p * KG + r * KG;
                    for (o, &x) in panel[base..base + chunk.len()].iter_mut().zip(chunk) {
                        let v = val(x);
                        acc = acc.wrapping_add(v);
                        *o = MaybeUninit::new(D::from_i32(v));
                    }
                }
                *s = acc;
            }
        } else {
            for (r, s) in psum[..live].iter_mut().enumerate() {
                let mut acc = 0i32;
                for kk in 0..k {
                    let v = val(src.at(top + r, kk));
                    acc = acc.wrapping_add(v);
                    panel[at(r, kk)] = MaybeUninit::new(D::from_i32(v));
                }
                *s = acc;
            }
        }
    }
}
