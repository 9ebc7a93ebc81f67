//! AVX-512 (BW, VL, VNNI) packing of 8-bit operands into the panels of the VNNI kernels
//! (`KG = 4`), with the offset subtracted and the packed rows' sums taken on the way.
//!
//! The generic loops in [`super::pack`] move one byte at a time; on the model shapes that
//! cost more than the product (a conv's `k×n` im2col matrix is packed on every call). Two
//! layouts cover the operands the models pass:
//!
//! * **Interleave** (`B` row-major, seen transposed: the panel's 32 rows are adjacent bytes,
//!   consecutive `k` steps a leading dimension apart): two panels at a time, each group of
//!   four `k` steps is four 64-byte loads and a 4×64 byte transpose (`unpack{lo,hi}_epi8`,
//!   then `_epi16`, then a 4×4 transpose of 128-bit lanes), 256 bytes stored; the column sums
//!   are one `vpdpbusd` with a vector of ones per 16 columns.
//! * **Rows** (`A` row-major: each panel row is contiguous along `k`): four rows at a time,
//!   16 bytes (four groups) of each, a 4×4 transpose of `i32` lanes puts one group of the
//!   four rows in one vector; row sums again by `vpdpbusd` with ones.
//!
//! The packed byte is `x − off (mod 256)`, which is the value itself when it fits the packed
//! type (the caller chose `off` so). Partial panels and `k` tails use masked loads, which
//! neither read past the mask nor fault, and zeros elsewhere, as the layout requires.

#![allow(unsafe_code)]

use super::pack::band;
use super::{Im2col, IntRef};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Packs part `part` of the `rows×k` byte matrix `src` (as [`super::pack::pack`] does, with
/// `KG = 4`) when its layout is one of the two above; `false` (nothing written) otherwise.
/// `signed`: the packed bytes are `i8` (else `u8`), which the sums follow. The caller has
/// checked that the CPU has AVX-512 F, BW, VL and VNNI.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack8(
    src: &IntRef<'_, u8>,
    rows: usize,
    k: usize,
    off: i32,
    p: usize,
    (t, threads): (usize, usize),
    dst: &mut [MaybeUninit<u8>],
    sums: &mut [i32],
    signed: bool,
) -> bool {
    if rows == 0 || k == 0 || !super::supported(super::Isa::Avx512) {
        return false;
    }
    // The reads below stay inside what the view covers; a view that is too short (which the
    // callers have ruled out) takes the generic, bounds-checked path.
    match src.needed(rows, k) {
        Some(needed) if needed <= src.data.len() => {}
        _ => return false,
    }
    let kp = k.next_multiple_of(4);
    let (q0, q1) = band(t, threads, rows.div_ceil(p));
    if dst.len() < (q1 - q0) * p * kp || sums.len() < (q1 - q0) * p {
        return false;
    }
    let job = Job {
        src: src.data.as_ptr(),
        rows,
        k,
        off: off as i8,
        p,
        panels: (q0, q1),
        dst: dst.as_mut_ptr().cast(),
        sums: sums.as_mut_ptr(),
        signed,
    };
    if src.rs == 1 && src.cs != 1 && p == 32 {
        // SAFETY: the CPU features were checked above; `job` covers the view (checked
        // `needed`) and this part's panels and sums (checked lengths).
        unsafe { interleave(&job, src.cs) };
        true
    } else if src.cs == 1 && p.is_multiple_of(4) {
        // SAFETY: as above.
        unsafe { rows4(&job, src.rs) };
        true
    } else {
        false
    }
}

/// One part to pack: the source bytes (`rows×k` through the strides given alongside), the
/// offset (mod 256), the panel height, the panels `q0..q1`, and where they and their sums go
/// (the part's slices, from its first panel).
struct Job {
    src: *const u8,
    rows: usize,
    k: usize,
    off: i8,
    p: usize,
    panels: (usize, usize),
    dst: *mut u8,
    sums: *mut i32,
    signed: bool,
}

/// The interleave layout: panel row `r`, step `kk` at `src[r + kk·ld]`; `p = 32`.
///
/// Two panels at a time: each step's 64 adjacent bytes are one load (a whole cache line when
/// aligned), the byte interleave runs within the four 128-bit lanes, and a 4×4 transpose of
/// lanes (`vshufi64x2`) gives each panel's two 64-byte rows of the group. Half the
/// instructions per byte of the one-panel, 256-bit form this replaced.
///
/// # Safety
///
/// AVX-512 F/BW/VL/VNNI; every in-range element is readable; `dst` holds the part's panels
/// (`32·kp` bytes each) and `sums` their 32 entries each.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn interleave(j: &Job, ld: usize) {
    let kp = j.k.next_multiple_of(4);
    let offv = _mm512_set1_epi8(j.off);
    let mut q = j.panels.0;
    while q < j.panels.1 {
        // This pair's panels: `q` and, when the part has it, `q + 1`.
        let two = q + 1 < j.panels.1;
        let i = q - j.panels.0;
        let top = q * 32;
        let live = (if two { 64 } else { 32 }).min(j.rows - top);
        let mask: __mmask64 = if live == 64 { !0 } else { (1u64 << live) - 1 };
        // SAFETY: panels `i` and (when `two`) `i + 1` of the part, inside `dst`.
        let panel = unsafe { j.dst.add(i * 32 * kp) };
        let mut s = [_mm512_setzero_si512(); 4];
        for g in 0..kp / 4 {
            // Step `4g + u` of the pair's live rows minus the offset; zero past `k` and in the
            // rows past the matrix.
            let step = |u: usize| -> __m512i {
                let kk = 4 * g + u;
                if kk < j.k {
                    // SAFETY: rows `top..top + live` of step `kk < k` are in the view; the
                    // masked-off bytes are not read.
                    let v =
                        unsafe { _mm512_maskz_loadu_epi8(mask, j.src.add(top + kk * ld).cast()) };
                    _mm512_maskz_sub_epi8(mask, v, offv)
                } else {
                    _mm512_setzero_si512()
                }
            };
            let rows = [step(0), step(1), step(2), step(3)];
            // SAFETY: group `g < kp/4` of the pair's panels, inside `dst` (the contract).
            unsafe { store_group(rows, (panel, kp, g), two, &mut s, j.signed) };
        }
        let outs = if two { 4 } else { 2 };
        for (u, sv) in s.iter().enumerate().take(outs) {
            // SAFETY: the pair's 32 or 64 sums.
            unsafe { _mm512_storeu_si512(j.sums.add(32 * i + 16 * u).cast(), *sv) };
        }
        q += if two { 2 } else { 1 };
    }
}

/// The interleave layout's group `g` of a pair of panels (`two`: both, else the first) from
/// four steps' rows of 64 columns: a 4×64 byte transpose stored as each panel's two 64-byte
/// rows of the group, and the packed bytes' sums added into `s` (one `vpdpbusd` with ones).
///
/// Per 128-bit lane L (columns 16L..16L+16): columns 0-3 of the lane in q0, 4-7 in q1, 8-11
/// in q2, 12-15 in q3, four steps (one i32) per column; output L is lane L of q0..q3.
///
/// # Safety
///
/// AVX-512 F/BW/VL/VNNI; `panel` holds the pair's panels of `32·kp` bytes each, `g < kp/4`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn store_group(
    [r0, r1, r2, r3]: [__m512i; 4],
    (panel, kp, g): (*mut u8, usize, usize),
    two: bool,
    s: &mut [__m512i; 4],
    signed: bool,
) {
    let ones = _mm512_set1_epi8(1);
    let (t01l, t01h) = (_mm512_unpacklo_epi8(r0, r1), _mm512_unpackhi_epi8(r0, r1));
    let (t23l, t23h) = (_mm512_unpacklo_epi8(r2, r3), _mm512_unpackhi_epi8(r2, r3));
    let q0 = _mm512_unpacklo_epi16(t01l, t23l);
    let q1 = _mm512_unpackhi_epi16(t01l, t23l);
    let q2 = _mm512_unpacklo_epi16(t01h, t23h);
    let q3 = _mm512_unpackhi_epi16(t01h, t23h);
    let a = _mm512_shuffle_i64x2::<0x44>(q0, q1);
    let b = _mm512_shuffle_i64x2::<0x44>(q2, q3);
    let c = _mm512_shuffle_i64x2::<0xEE>(q0, q1);
    let d = _mm512_shuffle_i64x2::<0xEE>(q2, q3);
    let o = [
        _mm512_shuffle_i64x2::<0x88>(a, b),
        _mm512_shuffle_i64x2::<0xDD>(a, b),
        _mm512_shuffle_i64x2::<0x88>(c, d),
        _mm512_shuffle_i64x2::<0xDD>(c, d),
    ];
    let outs = if two { 4 } else { 2 };
    for (u, (&ov, sv)) in o.iter().zip(s.iter_mut()).enumerate().take(outs) {
        // SAFETY: group `g` of panel `u/2` of the pair: 64 bytes at `128·g + 64·(u%2)`.
        unsafe {
            let at = (u / 2) * 32 * kp + 128 * g + 64 * (u % 2);
            _mm512_storeu_si512(panel.add(at).cast(), ov);
        }
        *sv = if signed {
            _mm512_dpbusd_epi32(*sv, ones, ov)
        } else {
            _mm512_dpbusd_epi32(*sv, ov, ones)
        };
    }
}

/// The rows layout: panel row `r`, step `kk` at `src[r·rs + kk]`; `p` a multiple of 4.
///
/// # Safety
///
/// AVX-512 F/BW/VL/VNNI; every in-range element is readable; `dst` holds the part's panels
/// (`p·kp` bytes each) and `sums` their `p` entries each.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows4(j: &Job, rs: usize) {
    let (p, k) = (j.p, j.k);
    let kp = k.next_multiple_of(4);
    let offv = _mm_set1_epi8(j.off);
    let ones = _mm_set1_epi8(1);
    for (i, q) in (j.panels.0..j.panels.1).enumerate() {
        let top = q * p;
        let live = p.min(j.rows - top);
        // SAFETY: panel `i` of the part, inside `dst` (see the contract).
        let panel = unsafe { j.dst.add(i * p * kp) };
        for rb in (0..p).step_by(4) {
            let mut acc = [_mm_setzero_si128(); 4];
            // Bytes `c..c + 16` of each of rows `rb..rb + 4`: groups `c/4..c/4 + 4`. `c < k`
            // always: `c` is a multiple of 4 below `kp`, the multiple of 4 above `k`.
            let mut c = 0;
            while c < kp {
                let mask: __mmask16 = if k - c >= 16 {
                    !0
                } else {
                    (1u16 << (k - c)) - 1
                };
                let x: [__m128i; 4] = std::array::from_fn(|u| {
                    let r = rb + u;
                    if r < live {
                        // SAFETY: bytes `c..min(c + 16, k)` of row `top + r < rows`; the
                        // masked-off bytes are not read.
                        let v = unsafe {
                            _mm_maskz_loadu_epi8(mask, j.src.add((top + r) * rs + c).cast())
                        };
                        _mm_maskz_sub_epi8(mask, v, offv)
                    } else {
                        _mm_setzero_si128()
                    }
                });
                for (a, &v) in acc.iter_mut().zip(&x) {
                    *a = if j.signed {
                        _mm_dpbusd_epi32(*a, ones, v)
                    } else {
                        _mm_dpbusd_epi32(*a, v, ones)
                    };
                }
                // A 4×4 transpose of i32 lanes: y[g] holds group `c/4 + g` of the four rows.
                let t0 = _mm_unpacklo_epi32(x[0], x[1]);
                let t1 = _mm_unpacklo_epi32(x[2], x[3]);
                let t2 = _mm_unpackhi_epi32(x[0], x[1]);
                let t3 = _mm_unpackhi_epi32(x[2], x[3]);
                let y = [
                    _mm_unpacklo_epi64(t0, t1),
                    _mm_unpackhi_epi64(t0, t1),
                    _mm_unpacklo_epi64(t2, t3),
                    _mm_unpackhi_epi64(t2, t3),
                ];
                let groups = ((kp - c) / 4).min(4);
                for (g, &v) in y.iter().enumerate().take(groups) {
                    // SAFETY: group `c/4 + g < kp/4`, rows `rb..rb + 4 ≤ p` of the panel.
                    unsafe { _mm_storeu_si128(panel.add((c / 4 + g) * p * 4 + rb * 4).cast(), v) };
                }
                c += 16;
            }
            for (u, a) in acc.iter().enumerate() {
                let mut lanes = [0i32; 4];
                // SAFETY: `lanes` holds four i32s.
                unsafe { _mm_storeu_si128(lanes.as_mut_ptr().cast(), *a) };
                let s = lanes.iter().fold(0i32, |s, &x| s.wrapping_add(x));
                // SAFETY: entry `rb + u < p` of the panel's sums.
                unsafe { *j.sums.add(p * i + rb + u) = s };
            }
        }
    }
}

/// Whether [`pack_image8`] packs an image of this geometry with one load per step: stride 1
/// with as many output as input columns (a "same" convolution), where column `j` of a tap's
/// row is element `j + dy·iw + dx` of its channel's plane.
fn shifted(g: &Im2col) -> bool {
    g.sh == 1 && g.sw == 1 && g.ow == g.iw
}

/// Whether [`pack_image8`] packs an image of this geometry at all on this CPU: shifted ones,
/// and (with AVX-512 VBMI and BMI2, for the byte permutes and mask spreads) any of column
/// stride 1 or 2, a load or two per output row met.
pub(super) fn image_direct(g: &Im2col) -> bool {
    shifted(g)
        || (g.sw <= 2 && is_x86_feature_detected!("avx512vbmi") && is_x86_feature_detected!("bmi2"))
}

/// Packs columns `top..top + rows` of the column matrix of an 8-bit image (seen transposed, as
/// [`pack8`]'s interleave layout with `p = 32`) straight from the image: each step's 64 columns
/// are one masked load from the tap's shifted plane, the columns whose tap falls outside the
/// plane (a per-tap mask for each pair of panels) take the fill. `false` (nothing written)
/// for other geometries or CPUs.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_image8(
    planes: &[u8],
    fill: u8,
    g: &Im2col,
    (top, rows): (usize, usize),
    k: usize,
    off: i32,
    dst: &mut [MaybeUninit<u8>],
    sums: &mut [i32],
    signed: bool,
) -> bool {
    let taps = g.kh * g.kw;
    let (kk_all, n) = g.dims();
    if rows == 0
        || k == 0
        || k != kk_all
        || top + rows > n
        || !image_direct(g)
        || planes.len() < g.image_len()
        || !super::supported(super::Isa::Avx512)
    {
        return false;
    }
    let kp = k.next_multiple_of(4);
    let panels = rows.div_ceil(32);
    if dst.len() < panels * 32 * kp || sums.len() < panels * 32 {
        return false;
    }
    // Per tap: its plane offset and its (dy, dx).
    let shifts: Vec<(isize, isize, isize)> = (0..taps)
        .map(|t| {
            let dy = ((t / g.kw) * g.dh) as isize - g.pt as isize;
            let dx = ((t % g.kw) * g.dw) as isize - g.pl as isize;
            (dy * g.iw as isize + dx, dy, dx)
        })
        .collect();
    let job = ImageJob {
        planes: planes.as_ptr(),
        fill: fill as i8,
        g,
        shifts: &shifts,
        top,
        rows,
        k,
        off: off as i8,
        dst: dst.as_mut_ptr().cast(),
        sums: sums.as_mut_ptr(),
        signed,
    };
    // SAFETY: the CPU features were checked above (`image_direct`: VBMI and BMI2 for a
    // geometry that is not shifted); the loads read only columns whose tap lies inside its
    // plane (`planes` holds every plane: checked), and `dst`/`sums` hold the panels and sums
    // (checked lengths).
    unsafe {
        if shifted(g) {
            image_interleave(&job)
        } else {
            image_runs(&job)
        }
    };
    true
}

struct ImageJob<'a> {
    planes: *const u8,
    fill: i8,
    g: &'a Im2col,
    shifts: &'a [(isize, isize, isize)],
    top: usize,
    rows: usize,
    k: usize,
    off: i8,
    dst: *mut u8,
    sums: *mut i32,
    signed: bool,
}

/// The columns `x0..x0 + live` (bit `i` for column `x0 + i`) whose tap, shifted by `(dy, dx)`,
/// lies inside the `ih×iw` plane: per output row met, its run of inside columns.
fn inside_mask(g: &Im2col, x0: usize, live: usize, (dy, dx): (isize, isize)) -> u64 {
    let (ow, end) = (g.ow, x0 + live);
    let lo_x = (-dx).clamp(0, ow as isize) as usize;
    let hi_x = (g.iw as isize - dx).clamp(lo_x as isize, ow as isize) as usize;
    let mut m = 0u64;
    let mut start = x0 / ow * ow;
    while start < end {
        let iy = (start / ow) as isize + dy;
        if iy >= 0 && iy < g.ih as isize {
            let a = (start + lo_x).max(x0);
            let b = (start + hi_x).min(end);
            if b > a {
                let len = b - a;
                let run = if len >= 64 { !0 } else { (1u64 << len) - 1 };
                m |= run << (a - x0);
            }
        }
        start += ow;
    }
    m
}

/// [`image_interleave`] for any geometry of column stride 1 or 2: per pair of panels, the
/// output rows its 64 columns meet (runs of lanes), and per tap and run the lanes whose tap
/// lies inside the plane with the offset of the byte lane 0 would read; each step starts from
/// the fill and loads every run over it (stride 2: two loads of the run's 128 bytes, its even
/// bytes picked by one `vpermt2b`).
///
/// # Safety
///
/// As [`image_interleave`], and AVX-512 VBMI and BMI2; `g.sw` is 1 or 2.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,bmi2")]
unsafe fn image_runs(j: &ImageJob) {
    let g = j.g;
    let kp = j.k.next_multiple_of(4);
    let taps = j.shifts.len();
    let ihw = (g.ih * g.iw) as isize;
    let sw = g.sw as isize;
    let offv = _mm512_set1_epi8(j.off);
    let fillv = _mm512_set1_epi8(j.fill);
    let even = {
        let mut b = [0u8; 64];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (2 * i) as u8;
        }
        // SAFETY: 64 bytes.
        unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
    };
    let panels = j.rows.div_ceil(32);
    // Per tap, its runs of the current pair: (lanes inside, offset in the plane of lane 0).
    let mut runs: Vec<Vec<(u64, isize)>> = vec![Vec::new(); taps];
    let mut q = 0;
    while q < panels {
        let two = q + 1 < panels;
        let x0 = j.top + q * 32;
        let live = (if two { 64 } else { 32 }).min(j.rows - q * 32);
        let live_mask: __mmask64 = if live == 64 { !0 } else { (1u64 << live) - 1 };
        for (t, tr) in runs.iter_mut().enumerate() {
            tr.clear();
            let (_, dy, dx) = j.shifts[t];
            // Output columns `[lo, hi)` of a row whose tap `ox·sw + dx` is inside the row.
            let lo = if dx >= 0 {
                0
            } else {
                (-dx as usize).div_ceil(sw as usize)
            };
            let hi = (((g.iw as isize - dx).max(0) + sw - 1) / sw).clamp(0, g.ow as isize) as usize;
            let mut col = x0;
            while col < x0 + live {
                let (oy, ox) = (col / g.ow, col % g.ow);
                let len = (g.ow - ox).min(x0 + live - col);
                let iy = (oy * g.sh) as isize + dy;
                let (a, b) = (ox.max(lo), (ox + len).min(hi));
                if iy >= 0 && iy < g.ih as isize && b > a {
                    let lane = col - x0;
                    let bits = |n: usize| if n >= 64 { !0u64 } else { (1u64 << n) - 1 };
                    let m = bits(b - a) << (lane + a - ox);
                    // Lane `l` reads `iy·iw + (ox + l − lane)·sw + dx`.
                    let at = iy * g.iw as isize + (ox as isize - lane as isize) * sw + dx;
                    tr.push((m, at));
                }
                col += len;
            }
        }
        // SAFETY: panels `q` and (when `two`) `q + 1`, inside `dst`.
        let panel = unsafe { j.dst.add(q * 32 * kp) };
        let mut s = [_mm512_setzero_si512(); 4];
        let (mut c, mut t) = (0isize, 0usize);
        for gi in 0..kp / 4 {
            let mut step = || -> __m512i {
                if (c as usize) * taps + t >= j.k {
                    return _mm512_setzero_si512();
                }
                let mut v = fillv;
                for &(m, at) in &runs[t] {
                    let p = j.planes.wrapping_offset(c * ihw + at);
                    if sw == 1 {
                        // SAFETY: the lanes of `m` read bytes of their tap's input row, inside
                        // the planes; the others are not read (masked).
                        v = unsafe { _mm512_mask_loadu_epi8(v, m, p.cast()) };
                    } else {
                        // Lane `l` is byte `2l` of the 128 from `p`: spread the lane mask to
                        // the even bytes of each half.
                        let (lo, hi) = (
                            _pdep_u64(m, 0x5555_5555_5555_5555),
                            _pdep_u64(m >> 32, 0x5555_5555_5555_5555),
                        );
                        // SAFETY: as above, for the even bytes of the two halves.
                        let (l, h) = unsafe {
                            (
                                _mm512_maskz_loadu_epi8(lo, p.cast()),
                                _mm512_maskz_loadu_epi8(hi, p.wrapping_add(64).cast()),
                            )
                        };
                        v = _mm512_mask_mov_epi8(v, m, _mm512_permutex2var_epi8(l, even, h));
                    }
                }
                t += 1;
                if t == taps {
                    t = 0;
                    c += 1;
                }
                _mm512_maskz_sub_epi8(live_mask, v, offv)
            };
            let rows = [step(), step(), step(), step()];
            // SAFETY: group `gi < kp/4` of the pair's panels, inside `dst` (the contract).
            unsafe { store_group(rows, (panel, kp, gi), two, &mut s, j.signed) };
        }
        let outs = if two { 4 } else { 2 };
        for (u, sv) in s.iter().enumerate().take(outs) {
            // SAFETY: the pair's 32 or 64 sums.
            unsafe { _mm512_storeu_si512(j.sums.add(32 * q + 16 * u).cast(), *sv) };
        }
        q += if two { 2 } else { 1 };
    }
}

/// [`interleave`]'s loop with each step's row loaded from the image.
///
/// # Safety
///
/// AVX-512 F/BW/VL/VNNI; the job's planes hold `g.image_len()` bytes; `dst` holds the
/// `rows.div_ceil(32)` panels (`32·kp` bytes each) and `sums` their 32 entries each.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn image_interleave(j: &ImageJob) {
    let kp = j.k.next_multiple_of(4);
    let taps = j.shifts.len();
    let ihw = (j.g.ih * j.g.iw) as isize;
    let offv = _mm512_set1_epi8(j.off);
    let fillv = _mm512_set1_epi8(j.fill);
    let panels = j.rows.div_ceil(32);
    let mut inside = vec![0u64; taps];
    let mut q = 0;
    while q < panels {
        let two = q + 1 < panels;
        let x0 = j.top + q * 32;
        let live = (if two { 64 } else { 32 }).min(j.rows - q * 32);
        let live_mask: __mmask64 = if live == 64 { !0 } else { (1u64 << live) - 1 };
        for (m, &(_, dy, dx)) in inside.iter_mut().zip(j.shifts) {
            *m = inside_mask(j.g, x0, live, (dy, dx));
        }
        // SAFETY: panels `q` and (when `two`) `q + 1`, inside `dst`.
        let panel = unsafe { j.dst.add(q * 32 * kp) };
        let mut s = [_mm512_setzero_si512(); 4];
        // Step `kk`'s channel and tap, advanced with `kk`.
        let (mut c, mut t) = (0isize, 0usize);
        for g in 0..kp / 4 {
            let mut step = || -> __m512i {
                if (c as usize) * taps + t >= j.k {
                    return _mm512_setzero_si512();
                }
                let m = inside[t];
                let at = c * ihw + j.shifts[t].0 + x0 as isize;
                // SAFETY: lanes of `m` are columns whose tap lies inside its plane, so their
                // bytes are inside the planes; the other lanes are not read (masked), and the
                // address is only formed with wrapping arithmetic.
                let v = unsafe { _mm512_maskz_loadu_epi8(m, j.planes.wrapping_offset(at).cast()) };
                let v = _mm512_mask_mov_epi8(v, live_mask & !m, fillv);
                t += 1;
                if t == taps {
                    t = 0;
                    c += 1;
                }
                _mm512_maskz_sub_epi8(live_mask, v, offv)
            };
            let rows = [step(), step(), step(), step()];
            // SAFETY: group `g < kp/4` of the pair's panels, inside `dst` (the contract).
            unsafe { store_group(rows, (panel, kp, g), two, &mut s, j.signed) };
        }
        let outs = if two { 4 } else { 2 };
        for (u, sv) in s.iter().enumerate().take(outs) {
            // SAFETY: the pair's 32 or 64 sums.
            unsafe { _mm512_storeu_si512(j.sums.add(32 * q + 16 * u).cast(), *sv) };
        }
        q += if two { 2 } else { 1 };
    }
}
