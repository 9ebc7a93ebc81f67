//! The requantizing epilogue: an `i32` tile of the product turned into `u8`/`i8` right after
//! its last block is computed, while it is still in L1, so the `i32` result never goes to
//! memory.
//!
//! Every ISA computes, element by element and bit for bit,
//!
//! ```text
//! q = cast(min(max(round_half_even((f32(acc) · mult + shift) / scale) + f32(zp), lo), hi))
//! ```
//!
//! in `f32` with each operation rounded (the conversion and the division round to nearest
//! even, the multiplication is not fused into anything (the shift, when there is one, is
//! added after it is rounded), the division is a division, not a
//! multiplication by a reciprocal), `[lo, hi]` the output type's range and NaN mapped to 0: the
//! kernel IR's `Requant`, which is the elementwise tail that quantized models lower to.

#![allow(unsafe_code)]

use super::Isa;

/// The multiplier of the requantization, broadcast over the product's `m×n`.
#[derive(Clone, Copy, Debug)]
pub enum RqMult<'a> {
    /// One value for all of `C`.
    Scalar(f32),
    /// One value per row of `C` (at least `m`).
    PerRow(&'a [f32]),
    /// One value per column of `C` (at least `n`).
    PerCol(&'a [f32]),
}

/// The requantization applied to the `i32` product (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct IRequant<'a> {
    /// `mult`, multiplied first.
    pub mult: RqMult<'a>,
    /// Added after the multiplication (a float bias); `None` adds nothing.
    pub shift: Option<RqMult<'a>>,
    /// The divisor: the output scale.
    pub scale: f32,
    /// The output zero point, added after rounding.
    pub zero_point: i32,
    /// A quantized residual added to the requantized value and the sum requantized again
    /// (see [`IAdd`]); `None` stores the requantized value.
    pub add: Option<IAdd<'a>>,
    /// A byte table applied last: C stores `table[q]` for a `u8` C, `table[q + 128]` for an
    /// `i8` one (a quantized activation computed at compile time); `None` stores `q`.
    pub table: Option<&'a [u8; 256]>,
}

/// The `Add` of a quantized residual block, after the requantization (the kernel IR's
/// `RequantAdd`): with `q` the requantized value, `scale`/`zp` the requantization's,
///
/// ```text
/// v = (f32(q) - f32(zp)) · scale + (f32(r) - f32(r_zp)) · r_scale
/// C = cast(min(max(round_half_even(v / out_scale) + f32(out_zp), lo), hi))
/// ```
///
/// in `f32`, each operation rounded, `r` the residual's element at C's own position.
#[derive(Clone, Copy, Debug)]
pub struct IAdd<'a> {
    /// The residual's bytes, laid out as C (same first element and leading dimension, in
    /// elements: one byte, or four for an `f32` residual).
    pub r: &'a [u8],
    /// The scalars.
    pub p: AddParams,
}

/// [`IAdd`]'s scalars.
#[derive(Clone, Copy, Debug)]
pub struct AddParams {
    /// Whether the residual is `f32`, quantized first with `r_scale` and `r_zp` (see the kernel
    /// IR's `RequantAdd`).
    pub r_f32: bool,
    /// Whether the residual (its quantized value for an `f32` one) is `i8` (else `u8`).
    pub r_signed: bool,
    pub r_scale: f32,
    pub r_zp: f32,
    pub out_scale: f32,
    pub out_zp: f32,
}

impl AddParams {
    /// Bytes per element of the residual.
    pub fn r_size(&self) -> usize {
        if self.r_f32 { 4 } else { 1 }
    }

    /// The value of an `f32` residual `x` as it enters the sum: quantized with `r_scale` and
    /// `r_zp`.
    pub fn quantize_r(&self, x: f32) -> f32 {
        clamp_q(
            (x / self.r_scale).round_ties_even() + self.r_zp,
            self.r_signed,
        ) as f32
    }

    /// C's value for the requantized `q` (with the requantization's `scale` and `zp`) and the
    /// residual's value `r`, for an `i8` C when `signed`, else `u8`: the definition the kernels
    /// follow.
    pub fn value(&self, q: i32, scale: f32, zp: f32, r: f32, signed: bool) -> i32 {
        let v = (q as f32 - zp) * scale + (r - self.r_zp) * self.r_scale;
        clamp_q((v / self.out_scale).round_ties_even() + self.out_zp, signed)
    }
}

/// `v` clamped to the output type's range and converted; NaN becomes 0.
fn clamp_q(v: f32, signed: bool) -> i32 {
    let (lo, hi) = if signed {
        (-128.0, 127.0)
    } else {
        (0.0, 255.0)
    };
    if v.is_nan() {
        0
    } else {
        v.clamp(lo, hi) as i32
    }
}

impl IRequant<'_> {
    /// The requantized value of one `acc` with multiplier `mult`, for an `i8` output when
    /// `signed`, else `u8`: the definition the kernels follow.
    pub fn value(
        acc: i32,
        mult: f32,
        shift: Option<f32>,
        scale: f32,
        zp: f32,
        signed: bool,
    ) -> i32 {
        let v = acc as f32 * mult;
        let v = match shift {
            Some(s) => v + s,
            None => v,
        };
        clamp_q((v / scale).round_ties_even() + zp, signed)
    }
}

/// One tile to requantize: `rows×cols` `i32`s from `src` (rows `lds` apart) into bytes at `dst`
/// (rows `ldd` apart). `mult` points at the tile's first row's (`per == Row`) or first
/// column's (`per == Col`) multiplier, or is unused (`Scalar`).
#[derive(Clone, Copy)]
pub(super) struct QTile {
    pub src: *const i32,
    pub lds: usize,
    pub dst: *mut u8,
    pub ldd: usize,
    pub rows: usize,
    pub cols: usize,
    pub mult: *const f32,
    pub per: Per,
    pub scalar: f32,
    /// The shift as the multiplier (`shift` at the tile's first row or column), when
    /// `shifted`.
    pub shift: *const f32,
    pub shift_per: Per,
    pub shift_scalar: f32,
    pub shifted: bool,
    pub scale: f32,
    pub zp: f32,
    pub signed: bool,
    /// The residual's tile (laid out as `dst`: rows `ldd` apart), null without one.
    pub res: *const u8,
    pub add: Option<AddParams>,
    /// The byte table applied last ([`IRequant::table`]), null without one.
    pub table: *const [u8; 256],
}

/// What the multiplier varies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Per {
    Scalar,
    Row,
    Col,
}

impl Per {
    /// `v` (a multiplier or shift vector, this variation's) advanced to the tile at row `i`,
    /// column `j`; a scalar's pointer is unused and stays as it is.
    ///
    /// # Safety
    ///
    /// For `Row`/`Col`, `v` holds at least `i + 1`/`j + 1` elements.
    pub(super) unsafe fn at(self, v: *const f32, i: usize, j: usize) -> *const f32 {
        // SAFETY: the function's contract.
        unsafe {
            match self {
                Per::Scalar => v,
                Per::Row => v.add(i),
                Per::Col => v.add(j),
            }
        }
    }
}

impl QTile {
    /// The multiplier of element `(r, j)`.
    ///
    /// # Safety
    ///
    /// `mult` covers the tile's rows (`Row`) or columns (`Col`).
    unsafe fn mult_at(&self, r: usize, j: usize) -> f32 {
        // SAFETY: the function's contract.
        unsafe {
            match self.per {
                Per::Scalar => self.scalar,
                Per::Row => *self.mult.add(r),
                Per::Col => *self.mult.add(j),
            }
        }
    }

    /// The shift of element `(r, j)`, if any.
    ///
    /// # Safety
    ///
    /// `shift` covers the tile's rows (`Row`) or columns (`Col`).
    unsafe fn shift_at(&self, r: usize, j: usize) -> Option<f32> {
        // SAFETY: the function's contract.
        self.shifted.then(|| unsafe {
            match self.shift_per {
                Per::Scalar => self.shift_scalar,
                Per::Row => *self.shift.add(r),
                Per::Col => *self.shift.add(j),
            }
        })
    }
}

/// Requantizes one tile with the widest code `isa` allows.
///
/// # Safety
///
/// The CPU runs `isa`; `src`, `dst` and `mult` are valid for the tile as [`QTile`] says.
pub(super) unsafe fn tile(isa: Isa, t: &QTile) {
    // SAFETY: forwarded contract; each ISA's function needs only what `isa` guarantees.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512(t),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2(t),
            _ => portable(t),
        }
        if let Some(table) = t.table.as_ref() {
            lookup(isa, t, table);
        }
    }
}

/// Replaces every byte of the finished tile at `dst` by its table entry (see
/// [`IRequant::table`]), while the tile is in L1: 64 bytes by four permutations where the CPU
/// has AVX-512 VBMI, else byte by byte.
///
/// # Safety
///
/// As for [`tile`].
unsafe fn lookup(isa: Isa, t: &QTile, table: &[u8; 256]) {
    // An `i8` value `q` is the byte `q as u8`; its entry is at `q + 128`, the byte's top bit
    // flipped.
    let flip = if t.signed { 0x80 } else { 0 };
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
    {
        // SAFETY: the CPU has AVX-512 (F, BW) and VBMI; the tile as `tile` says.
        return unsafe { lookup_vbmi(t, table, flip) };
    }
    let _ = isa;
    for r in 0..t.rows {
        for j in 0..t.cols {
            // SAFETY: inside the tile.
            unsafe {
                let b = t.dst.add(r * t.ldd + j);
                *b = table[(*b ^ flip) as usize];
            }
        }
    }
}

/// [`lookup`] with VBMI: `vpermi2b` picks among 128 bytes by an index's low seven bits, so two
/// of them cover the table's halves and the index's top bit chooses between their results.
///
/// # Safety
///
/// As for [`tile`], on a CPU with AVX-512 F, BW and VBMI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn lookup_vbmi(t: &QTile, table: &[u8; 256], flip: u8) {
    use std::arch::x86_64::*;
    // SAFETY: `table` is 256 bytes; every tile access is inside row `r < rows`, at columns
    // below `cols` (the mask keeps the last, partial, vector inside).
    unsafe {
        let tp = table.as_ptr().cast::<__m512i>();
        let (t0, t1) = (_mm512_loadu_si512(tp), _mm512_loadu_si512(tp.add(1)));
        let (t2, t3) = (_mm512_loadu_si512(tp.add(2)), _mm512_loadu_si512(tp.add(3)));
        let fl = _mm512_set1_epi8(flip as i8);
        for r in 0..t.rows {
            let row = t.dst.add(r * t.ldd).cast::<i8>();
            let mut j = 0;
            while j < t.cols {
                let n = (t.cols - j).min(64);
                let mask = if n == 64 { !0u64 } else { (1u64 << n) - 1 };
                let x = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, row.add(j)), fl);
                let lo = _mm512_permutex2var_epi8(t0, x, t1);
                let hi = _mm512_permutex2var_epi8(t2, x, t3);
                let y = _mm512_mask_blend_epi8(_mm512_movepi8_mask(x), lo, hi);
                _mm512_mask_storeu_epi8(row.add(j), mask, y);
                j += 64;
            }
        }
    }
}

/// Element by element, as the definition says.
///
/// # Safety
///
/// As for [`tile`].
#[inline(always)]
unsafe fn portable(t: &QTile) {
    for r in 0..t.rows {
        for j in 0..t.cols {
            // SAFETY: `r < rows`, `j < cols`: inside the tile.
            unsafe {
                let acc = *t.src.add(r * t.lds + j);
                let q = IRequant::value(
                    acc,
                    t.mult_at(r, j),
                    t.shift_at(r, j),
                    t.scale,
                    t.zp,
                    t.signed,
                );
                let at = r * t.ldd + j;
                *t.dst.add(at) = t.with_add(q, at) as u8;
            }
        }
    }
}

impl QTile {
    /// `q`, or with a residual [`AddParams::value`] of `q` and the residual at `at`.
    ///
    /// # Safety
    ///
    /// With a residual, `res + at` lies in the residual's tile.
    #[inline(always)]
    unsafe fn with_add(&self, q: i32, at: usize) -> i32 {
        let Some(a) = &self.add else { return q };
        let r = if a.r_f32 {
            // SAFETY: the function's contract (elements of four bytes, maybe unaligned).
            let x = unsafe { self.res.add(4 * at).cast::<f32>().read_unaligned() };
            a.quantize_r(x)
        } else {
            // SAFETY: the function's contract.
            let rb = unsafe { *self.res.add(at) };
            if a.r_signed {
                rb as i8 as f32
            } else {
                rb as f32
            }
        };
        a.value(q, self.scale, self.zp, r, self.signed)
    }
}

/// `min(max(round_half_even(f) + zp, lo), hi)` as `i32` lanes, NaN as 0, for integer `zp`,
/// `lo` and `hi` (each below 2^24 in magnitude, `lo ≤ hi`): the quantization's rounding,
/// zero point and clamp in four vector operations (six for a NaN-mapping `lo ≠ 0`) instead
/// of seven. The clamp moves before the rounding, to `[lo − zp, hi − zp]`: exact, because
/// those bounds are integers and rounding is monotone, and it keeps the conversion in range;
/// the conversion rounds half to even and the zero point is added in integers, exactly as the
/// `f32` sum of an integer below 2^24 and `zp`. A NaN leaves `max` as its second operand,
/// `lo − zp`, hence `lo`: 0 when `lo` is, else masked to 0.
///
/// # Safety
///
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn quantize16(
    f: std::arch::x86_64::__m512,
    zp: f32,
    lo: f32,
    hi: f32,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let c = _mm512_min_ps(
        _mm512_max_ps(f, _mm512_set1_ps(lo - zp)),
        _mm512_set1_ps(hi - zp),
    );
    let r = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(c);
    let q = _mm512_add_epi32(r, _mm512_set1_epi32(zp as i32));
    if lo == 0.0 {
        q
    } else {
        _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(f, f), q)
    }
}

/// Eight lanes at a time, the columns past the last multiple of eight element by element.
///
/// # Safety
///
/// As for [`tile`], on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2(t: &QTile) {
    use std::arch::x86_64::*;
    let (lo, hi) = if t.signed {
        (-128.0, 127.0)
    } else {
        (0.0, 255.0)
    };
    let (lov, hiv) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let (scale, zp) = (_mm256_set1_ps(t.scale), _mm256_set1_ps(t.zp));
    let full = t.cols / 8 * 8;
    for r in 0..t.rows {
        // SAFETY: every load and store is inside row `r < rows` and column `< cols` of the
        // tile; `mult` covers the rows or columns used.
        unsafe {
            let row_mult = match t.per {
                Per::Scalar => t.scalar,
                Per::Row => *t.mult.add(r),
                Per::Col => 0.0,
            };
            let row_shift = match t.shift_per {
                Per::Scalar => t.shift_scalar,
                Per::Row if t.shifted => *t.shift.add(r),
                _ => 0.0,
            };
            let mut j = 0;
            while j < full {
                let x = _mm256_loadu_si256(t.src.add(r * t.lds + j).cast());
                let m = if t.per == Per::Col {
                    _mm256_loadu_ps(t.mult.add(j))
                } else {
                    _mm256_set1_ps(row_mult)
                };
                let mut f = _mm256_mul_ps(_mm256_cvtepi32_ps(x), m);
                if t.shifted {
                    let s = if t.shift_per == Per::Col {
                        _mm256_loadu_ps(t.shift.add(j))
                    } else {
                        _mm256_set1_ps(row_shift)
                    };
                    f = _mm256_add_ps(f, s);
                }
                let f = _mm256_div_ps(f, scale);
                let f = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(f);
                let f = _mm256_add_ps(f, zp);
                let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(f, f);
                let f = _mm256_min_ps(_mm256_max_ps(f, lov), hiv);
                let q = _mm256_andnot_si256(_mm256_castps_si256(nan), _mm256_cvtps_epi32(f));
                let mut out = [0i32; 8];
                _mm256_storeu_si256(out.as_mut_ptr().cast(), q);
                for (l, &v) in out.iter().enumerate() {
                    let at = r * t.ldd + j + l;
                    *t.dst.add(at) = t.with_add(v, at) as u8;
                }
                j += 8;
            }
            for j in full..t.cols {
                let acc = *t.src.add(r * t.lds + j);
                let q = IRequant::value(
                    acc,
                    t.mult_at(r, j),
                    t.shift_at(r, j),
                    t.scale,
                    t.zp,
                    t.signed,
                );
                let at = r * t.ldd + j;
                *t.dst.add(at) = t.with_add(q, at) as u8;
            }
        }
    }
}

/// Sixteen lanes at a time with masked loads and narrowing stores.
///
/// `f32(acc) · mult (+ shift)` for the lanes `mask` of row `r` from column `j` (the others 0),
/// `row` the row's multiplier and shift when they are not per column.
///
/// # Safety
///
/// As for [`tile`], on a CPU with AVX-512F; the masked columns from `j` lie in row `r`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn dequantized16(
    t: &QTile,
    (r, j): (usize, usize),
    mask: std::arch::x86_64::__mmask16,
    (row_mult, row_shift): (f32, f32),
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: the contract; `mult` and `shift` cover the columns used.
    unsafe {
        let x = _mm512_maskz_loadu_epi32(mask, t.src.add(r * t.lds + j));
        let m = if t.per == Per::Col {
            _mm512_maskz_loadu_ps(mask, t.mult.add(j))
        } else {
            _mm512_set1_ps(row_mult)
        };
        let mut f = _mm512_mul_ps(_mm512_cvtepi32_ps(x), m);
        if t.shifted {
            let s = if t.shift_per == Per::Col {
                _mm512_maskz_loadu_ps(mask, t.shift.add(j))
            } else {
                _mm512_set1_ps(row_shift)
            };
            f = _mm512_add_ps(f, s);
        }
        f
    }
}

/// Row `r` of the tile without a residual, 64 columns at a time, each four quantized vectors
/// packed to bytes (exact: they lie in the byte's range) and put back in order for one
/// store, instead of four narrowing stores: the columns done (a multiple of 64).
///
/// # Safety
///
/// As for [`tile`], on a CPU with AVX-512F/BW; `r < rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn packed64(
    t: &QTile,
    r: usize,
    (row_mult, row_shift): (f32, f32),
    (lo, hi): (f32, f32),
) -> usize {
    use std::arch::x86_64::*;
    let scale = _mm512_set1_ps(t.scale);
    // SAFETY: columns `j..j + 64 ≤ cols` of row `r` (the contract); `mult` and `shift` cover
    // the columns used.
    let mq = |j: usize| unsafe {
        let f = dequantized16(t, (r, j), !0, (row_mult, row_shift));
        quantize16(_mm512_div_ps(f, scale), t.zp, lo, hi)
    };
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let mut j = 0;
    while j + 64 <= t.cols {
        let a = _mm512_packs_epi32(mq(j), mq(j + 16));
        let b = _mm512_packs_epi32(mq(j + 32), mq(j + 48));
        let c = if t.signed {
            _mm512_packs_epi16(a, b)
        } else {
            _mm512_packus_epi16(a, b)
        };
        // SAFETY: as above.
        unsafe {
            let v = _mm512_permutexvar_epi32(order, c);
            _mm512_storeu_si512(t.dst.add(r * t.ldd + j).cast(), v);
        }
        j += 64;
    }
    j
}

/// # Safety
///
/// As for [`tile`], on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512(t: &QTile) {
    use std::arch::x86_64::*;
    let (lo, hi) = if t.signed {
        (-128.0, 127.0)
    } else {
        (0.0, 255.0)
    };
    let (scale, zp) = (_mm512_set1_ps(t.scale), _mm512_set1_ps(t.zp));
    for r in 0..t.rows {
        // SAFETY: every masked load and store touches only row `r < rows`, columns `< cols`
        // of the tile; `mult` covers the rows or columns used.
        unsafe {
            let row_mult = match t.per {
                Per::Scalar => t.scalar,
                Per::Row => *t.mult.add(r),
                Per::Col => 0.0,
            };
            let row_shift = match t.shift_per {
                Per::Scalar => t.shift_scalar,
                Per::Row if t.shifted => *t.shift.add(r),
                _ => 0.0,
            };
            let mut j = 0;
            // Without a residual, 64 columns at a time (with AVX-512BW's packs).
            if t.add.is_none() && std::arch::is_x86_feature_detected!("avx512bw") {
                j = packed64(t, r, (row_mult, row_shift), (lo, hi));
            }
            while j < t.cols {
                let lanes = (t.cols - j).min(16);
                let mask = ((1u32 << lanes) - 1) as __mmask16;
                let f = dequantized16(t, (r, j), mask, (row_mult, row_shift));
                let mut q = quantize16(_mm512_div_ps(f, scale), t.zp, lo, hi);
                if let Some(a) = &t.add {
                    // v = (f32(q) - zp) · scale + (f32(r) - r_zp) · r_scale, then quantized
                    // like the requantization (each operation rounded, no FMA).
                    let rz = _mm512_set1_ps(a.r_zp);
                    let rf = if a.r_f32 {
                        // Quantized with the residual's own scale and zero point first.
                        let x = _mm512_maskz_loadu_ps(mask, t.res.add(4 * (r * t.ldd + j)).cast());
                        let x = _mm512_div_ps(x, _mm512_set1_ps(a.r_scale));
                        let x = _mm512_roundscale_ps::<
                            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                        >(x);
                        let x = _mm512_add_ps(x, rz);
                        let ok = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(x, x);
                        let (rlo, rhi) = if a.r_signed {
                            (-128.0, 127.0)
                        } else {
                            (0.0, 255.0)
                        };
                        let x = _mm512_min_ps(
                            _mm512_max_ps(x, _mm512_set1_ps(rlo)),
                            _mm512_set1_ps(rhi),
                        );
                        _mm512_maskz_mov_ps(ok, x)
                    } else {
                        // (Byte-masked loads need AVX-512BW: a partial vector goes through a
                        // stack copy.)
                        let rp = t.res.add(r * t.ldd + j);
                        let rb = if lanes == 16 {
                            _mm_loadu_si128(rp.cast())
                        } else {
                            let mut buf = [0u8; 16];
                            std::ptr::copy_nonoverlapping(rp, buf.as_mut_ptr(), lanes);
                            _mm_loadu_si128(buf.as_ptr().cast())
                        };
                        _mm512_cvtepi32_ps(if a.r_signed {
                            _mm512_cvtepi8_epi32(rb)
                        } else {
                            _mm512_cvtepu8_epi32(rb)
                        })
                    };
                    let dq = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(q), zp), scale);
                    let dr = _mm512_mul_ps(_mm512_sub_ps(rf, rz), _mm512_set1_ps(a.r_scale));
                    let v = _mm512_div_ps(_mm512_add_ps(dq, dr), _mm512_set1_ps(a.out_scale));
                    q = quantize16(v, a.out_zp, lo, hi);
                }
                _mm512_mask_cvtepi32_storeu_epi8(t.dst.add(r * t.ldd + j).cast(), mask, q);
                j += 16;
            }
        }
    }
}
