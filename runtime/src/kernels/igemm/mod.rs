//! Exact integer matrix multiplication, `C (i32) = A·B + bias`, for 8-bit data: the kernel
//! behind `MatMulInteger`, `QLinearMatMul` and integer convolutions.
//!
//! **Exactness.** The products run on 8-bit operands: `A` as `u8`, `B` as `i8`, the pair that
//! AVX-512 VNNI's `vpdpbusd` multiplies (64 multiply-adds per instruction, four times the f32
//! FMA rate). Any integer matrix whose values span at most 256 consecutive integers fits such
//! an operand after subtracting an offset: `A = Au + oa`, `B = Bs + ob` with `Au ∈ [0, 255]`,
//! `Bs ∈ [−128, 127]`, and then
//!
//! ```text
//! A·B = Au·Bs + oa·colsum(Bs) + ob·rowsum(Au) + k·oa·ob
//! ```
//!
//! which the kernels add in their epilogue (a per-row and a per-column vector). So `u8×i8`,
//! `i8×i8` (`oa = −128`), `u8×u8` (`ob = 128`) and `i32` operands that are 8-bit values minus a
//! zero point (what the kernel-IR lowering of `MatMulInteger` produces today) all take the same
//! kernels. Every step is `i32` arithmetic modulo 2³², which is a ring, so the result is exact
//! whenever the true result fits in `i32`; [`IGemm::run`] proves that before starting (from the
//! operands' ranges: `k·max|A|·max|B| + max|bias| < 2³¹`) and refuses otherwise, so a caller
//! never gets a wrapped value where the definition saturates.
//!
//! **Kernels.** AVX-512 VNNI: a 12×32 tile in 24 zmm accumulators, `vpdpbusd` on groups of four
//! `k` steps. AVX2: no 8-bit multiply-add there is exact (`vpmaddubsw` saturates its `i16` pair
//! sums: 255·127·2 > 32767), so operands are packed as `i16` and multiplied with `vpmaddwd`
//! (pairs of products summed into `i32`, exact): a 6×16 tile. Portable Rust: a 4×16 tile on
//! `i16` operands. Operands are packed into panels whose layout each ISA chooses (see
//! [`pack`]), the offsets subtracted and the row and column sums taken on the way.
//!
//! ```
//! use mlc_runtime::kernels::igemm::{IBias, IGemm, IntRef};
//!
//! // C (2×2) = A (2×3, u8) · B (3×2, i8)
//! let a: [u8; 6] = [1, 2, 3, 4, 5, 255];
//! let b: [i8; 6] = [1, 0, 0, 1, -128, -1];
//! let mut c = [0i32; 4];
//! IGemm::new()
//!     .run(2, 2, 3, IntRef::row_major(&a, 3), IntRef::row_major(&b, 2), &mut c, 2, IBias::None)
//!     .unwrap();
//! assert_eq!(c, [1 - 384, 2 - 3, 4 - 128 * 255, 5 - 255]);
//! ```

// The driver hands raw pointers into the packed panels and into `C` to the microkernels and to
// the threads that write disjoint tiles of `C`; every such use carries a `SAFETY:` comment.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod pack;
#[cfg(target_arch = "x86_64")]
mod pack_x86;
mod portable;
mod requant;
#[cfg(test)]
mod tests;

use super::Isa;
pub use super::gemm::TileHook;
pub use super::im2col::Im2col;
use pack::{AlignedVec, PackDst};
#[cfg(target_arch = "x86_64")]
pub(crate) use requant::quantize16;
pub use requant::{AddParams, IAdd, IRequant, RqMult};
use requant::{Per, QTile};
use std::mem::MaybeUninit;

/// An integer element type an operand may have.
pub trait IntElem: super::bytes::Pod + Ord + Send + Sync + 'static {
    /// The type's smallest value.
    const LO: i64;
    /// The type's largest value.
    const HI: i64;
    /// The value, widened.
    fn widen(self) -> i64;
}

macro_rules! int_elem {
    ($($t:ty),*) => {$(
        impl IntElem for $t {
            const LO: i64 = <$t>::MIN as i64;
            const HI: i64 = <$t>::MAX as i64;
            fn widen(self) -> i64 {
                self as i64
            }
        }
    )*};
}
int_elem!(u8, i8, u16, i16, u32, i32);

/// A read-only view of an integer matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct IntRef<'a, T> {
    /// The elements.
    pub data: &'a [T],
    /// Distance between consecutive rows.
    pub rs: usize,
    /// Distance between consecutive columns.
    pub cs: usize,
}

impl<'a, T: IntElem> IntRef<'a, T> {
    /// A view with explicit strides.
    pub fn new(data: &'a [T], rs: usize, cs: usize) -> Self {
        IntRef { data, rs, cs }
    }

    /// Row-major storage with leading dimension `ld`.
    pub fn row_major(data: &'a [T], ld: usize) -> Self {
        IntRef {
            data,
            rs: ld,
            cs: 1,
        }
    }

    /// Column-major storage with leading dimension `ld`.
    pub fn col_major(data: &'a [T], ld: usize) -> Self {
        IntRef {
            data,
            rs: 1,
            cs: ld,
        }
    }

    /// The transposed view.
    pub fn t(self) -> Self {
        IntRef {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.rs + j * self.cs]
    }

    /// The number of elements a `rows×cols` view needs, or `None` on overflow.
    fn needed(&self, rows: usize, cols: usize) -> Option<usize> {
        if rows == 0 || cols == 0 {
            return Some(0);
        }
        (rows - 1)
            .checked_mul(self.rs)?
            .checked_add((cols - 1).checked_mul(self.cs)?)?
            .checked_add(1)
    }

    /// The smallest and largest value of the `rows×cols` view (the type's range when that
    /// already spans at most 256 values: no need to look). `rows, cols > 0`.
    fn range(&self, rows: usize, cols: usize) -> (i64, i64) {
        if T::HI - T::LO <= 255 {
            return (T::LO, T::HI);
        }
        let (mut lo, mut hi) = (self.at(0, 0), self.at(0, 0));
        // Scan along whichever dimension is contiguous, in the element type, so that the loop
        // vectorizes.
        let (outer, inner, os, is) = if self.cs == 1 || self.rs != 1 {
            (rows, cols, self.rs, self.cs)
        } else {
            (cols, rows, self.cs, self.rs)
        };
        for o in 0..outer {
            if is == 1 {
                let run = &self.data[o * os..o * os + inner];
                lo = lo.min(run.iter().copied().min().unwrap_or(lo));
                hi = hi.max(run.iter().copied().max().unwrap_or(hi));
            } else {
                for i in 0..inner {
                    let x = self.data[o * os + i * is];
                    lo = lo.min(x);
                    hi = hi.max(x);
                }
            }
        }
        (lo.widen(), hi.widen())
    }
}

/// An `i32` bias added to every element of the product.
#[derive(Clone, Copy, Debug, Default)]
pub enum IBias<'a> {
    /// No bias.
    #[default]
    None,
    /// One value for all of `C`.
    Scalar(i32),
    /// One value per row of `C` (length `m`).
    PerRow(&'a [i32]),
    /// One value per column of `C` (length `n`).
    PerCol(&'a [i32]),
    /// A full `m×n` matrix, row-major with this leading dimension (0 repeats one row).
    Full(&'a [i32], usize),
}

/// Where a product goes: `i32` as it is, or requantized into `u8`/`i8` in the kernels'
/// epilogue (see [`IRequant`]).
#[derive(Debug)]
pub enum IOut<'a> {
    /// The exact `i32` product.
    I32(&'a mut [i32]),
    /// The exact `i32` product, then the hook on each finished block of it (see
    /// [`TileHook`]).
    I32Then(&'a mut [i32], TileHook<'a>),
    /// The product requantized into `u8`.
    U8(&'a mut [u8], IRequant<'a>),
    /// The product requantized into `i8`.
    I8(&'a mut [i8], IRequant<'a>),
}

impl IOut<'_> {
    fn len(&self) -> usize {
        match self {
            IOut::I32(c) | IOut::I32Then(c, _) => c.len(),
            IOut::U8(c, _) => c.len(),
            IOut::I8(c, _) => c.len(),
        }
    }
}

/// Why a product was not computed; nothing of `C` was written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IGemmError {
    /// An operand's slice does not hold every element its shape and strides reach.
    #[error("{operand} needs {needed} elements for its shape and strides but has {len}")]
    TooShort {
        /// Which operand (`A`, `B`, `C`, `bias`).
        operand: &'static str,
        /// Elements needed.
        needed: usize,
        /// Elements present.
        len: usize,
    },
    /// An operand's shape and strides overflow `usize`.
    #[error("{operand}: shape and strides overflow the address space")]
    Overflow {
        /// Which operand.
        operand: &'static str,
    },
    /// `C`'s leading dimension is smaller than its row, so rows would overlap.
    #[error("C has leading dimension {ld} < n = {n}: its rows would overlap")]
    Overlap {
        /// The leading dimension given.
        ld: usize,
        /// The row length.
        n: usize,
    },
    /// An operand's values span more than 256 integers, so it has no 8-bit form.
    #[error("{operand} holds values from {lo} to {hi}: more than 256 apart")]
    Range {
        /// Which operand.
        operand: &'static str,
        /// Smallest value.
        lo: i64,
        /// Largest value.
        hi: i64,
    },
    /// An image read as `B` whose column matrix is not `k` deep, or whose geometry has a zero
    /// stride, dilation or kernel size.
    #[error("an image of {rows} column-matrix rows as B of a product {k} deep")]
    Image {
        /// The column matrix's rows.
        rows: usize,
        /// The product's depth.
        k: usize,
    },
    /// The result could exceed `i32` for these operand ranges and `k`.
    #[error("the product may exceed i32 (bound {bound})")]
    MayOverflow {
        /// The bound on `|C|` from the operands' ranges.
        bound: i128,
    },
    /// The CPU cannot run this ISA's integer kernels.
    #[error("this CPU does not support {0} integer kernels")]
    Unsupported(Isa),
    /// A packed operand used with kernels of another ISA, or in the other slot.
    #[error(
        "an operand packed as {slot:?} for {isa} kernels was given as {want_slot:?} to {want_isa} kernels"
    )]
    WrongPacking {
        /// The ISA it was packed for.
        isa: Isa,
        /// The slot it was packed for.
        slot: Slot,
        /// The ISA of the kernels it was given to.
        want_isa: Isa,
        /// The slot it was given in.
        want_slot: Slot,
    },
}

/// Whether this CPU runs the integer kernels of `isa` (AVX-512 needs VNNI, BW and VL on top
/// of F: the kernels use VNNI and BW, the packing routines the 128/256-bit forms of both).
pub fn supported(isa: Isa) -> bool {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            Isa::Avx512.is_supported()
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
        }
        other => other.is_supported(),
    }
}

/// An integer GEMM configuration: which kernels and how many threads.
#[derive(Clone, Copy, Debug)]
pub struct IGemm {
    isa: Isa,
    threads: usize,
}

impl Default for IGemm {
    fn default() -> Self {
        Self::new()
    }
}

/// The geometry and microkernel of one ISA, over its packed element types.
struct Spec<DA, DB> {
    /// Rows of the register tile.
    mr: usize,
    /// Columns of the register tile.
    nr: usize,
    /// `k` steps the kernel consumes at once (`k` is zero-padded to a multiple).
    kg: usize,
    /// Depth of a cache block (a multiple of `kg`).
    kc: usize,
    /// Columns of a cache block of `B` (a multiple of `nr`): `KC×NC` stays in L2.
    nc: usize,
    /// The microkernel.
    tile: unsafe fn(&Tile<DA, DB>),
}

/// One microkernel call: `C[rows×cols] (+)= A_panel·B_panel`, then the epilogue if `last`.
///
/// `a` points at step `pc` of an `MR`-row packed panel, `b` at step `pc` of an `NR`-column
/// one; `kc` steps (a multiple of `KG`) are read. `c` is the tile's first element, rows `ldc`
/// apart. `first`: C is overwritten, else added to. On the last block, `rowadd[r]` and
/// `coladd[j]` (already offset to the tile) and the residual (null if none, rows `ldr` apart)
/// are added.
#[derive(Clone, Copy)]
struct Tile<DA, DB> {
    kc: usize,
    a: *const DA,
    b: *const DB,
    c: *mut i32,
    ldc: usize,
    rows: usize,
    cols: usize,
    first: bool,
    last: bool,
    rowadd: *const i32,
    coladd: *const i32,
    res: *const i32,
    ldr: usize,
}

/// A raw pointer that threads share; each writes only its own part.
#[derive(Clone, Copy)]
struct SharedPtr<T>(*mut T);
// SAFETY: only dereferenced on parts of the buffer that no other thread touches (disjoint
// bands of C), within a `thread::scope` that ends before the borrow of the buffer ends.
unsafe impl<T> Send for SharedPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SharedPtr<T> {}

impl<T> SharedPtr<T> {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(self) -> *mut T {
        self.0
    }
}

/// Half the L2 cache of the CPUs the kernels are tuned for (1 MiB per core on Zen 4/5, 1–2
/// MiB on recent Intel cores): the most of B's packed panels one column block may take
/// before `k` is cut into `KC` blocks.
const L2_HALF: usize = 512 << 10;

/// Below this many multiply-adds a product stays on one thread.
const MIN_THREADED_MACS: usize = 1 << 21;

/// Which operand of the product a [`PackedInt`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The left operand, `A` (`m×k`).
    A,
    /// The right operand, `B` (`k×n`).
    B,
}

/// The packed panels of one operand, in the element type its ISA's kernels read.
enum Panels {
    U8(AlignedVec<u8>),
    I8(AlignedVec<i8>),
    I16(AlignedVec<i16>),
}

/// An operand packed once for many products (a constant weight), for one ISA's kernels and
/// one slot: the panels the microkernels read, with the offset already subtracted, and each
/// packed row's (`A`) or column's (`B`) sum for the epilogue. Build it with
/// [`IGemm::pack_a`] or [`IGemm::pack_b`] and use it with [`IGemm::run_packed_a`] or
/// [`IGemm::run_packed_b`] of an `IGemm` of the same ISA; the results are those of
/// [`IGemm::run`] on the unpacked operand, exactly.
///
/// ```
/// use mlc_runtime::kernels::igemm::{IBias, IGemm, IntRef};
///
/// // C (2×2) = A (2×3, u8, per call) · W (3×2, i8, packed once)
/// let w: [i8; 6] = [1, 0, 0, 1, -128, -1];
/// let g = IGemm::new();
/// let pw = g.pack_b(3, 2, IntRef::row_major(&w, 2)).unwrap();
/// let a: [u8; 6] = [1, 2, 3, 4, 5, 255];
/// let mut c = [0i32; 4];
/// g.run_packed_b(2, IntRef::row_major(&a, 3), &pw, &mut c, 2, IBias::None).unwrap();
/// assert_eq!(c, [1 - 384, 2 - 3, 4 - 128 * 255, 5 - 255]);
/// ```
pub struct PackedInt {
    isa: Isa,
    slot: Slot,
    /// Rows of `A` (`m`) or columns of `B` (`n`): the packed operand seen as `rows×k`.
    rows: usize,
    k: usize,
    /// The smallest and largest value of the operand as given (for the overflow bound).
    range: (i64, i64),
    /// The offset subtracted while packing.
    off: i32,
    panels: Panels,
    /// The sum of each packed row, padded to whole panels.
    sums: Vec<i32>,
}

impl std::fmt::Debug for PackedInt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedInt")
            .field("isa", &self.isa)
            .field("slot", &self.slot)
            .field("rows", &self.rows)
            .field("k", &self.k)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl PackedInt {
    /// The ISA whose kernels this packing is laid out for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The slot it fills.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// `m` for an `A`, `n` for a `B`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The contraction length.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes the panels and sums take.
    pub fn bytes(&self) -> usize {
        let panels = match &self.panels {
            Panels::U8(v) => v.len(),
            Panels::I8(v) => v.len(),
            Panels::I16(v) => 2 * v.len(),
        };
        panels + 4 * self.sums.len()
    }
}

/// One operand as the driver takes it: a view to pack on this call, seen as `rows×k` (`A` as
/// it is, `B` transposed), or one packed ahead of time.
enum Side<'a, T> {
    Raw(IntRef<'a, T>),
    Packed(&'a PackedInt),
    /// `B` (seen transposed, as `n×k`) read from an image (only ever `B`).
    Image(IntImage<'a, T>),
}

/// `B` as the column matrix of a 2-D convolution's image (implicit GEMM, see
/// [`super::im2col`]): `data` holds the image's planes (at least `geom.image_len()` values)
/// and padded taps read `fill`. The column matrix is never written out: each column block of
/// `B` is packed from the image right before its tiles.
#[derive(Clone, Copy, Debug)]
pub struct IntImage<'a, T> {
    pub data: &'a [T],
    pub geom: Im2col,
    pub fill: T,
}

impl<T: IntElem> IntImage<'_, T> {
    /// The values the matrix holds: the type's range for 8-bit types, else the image's
    /// (with the fill).
    fn range(&self) -> (i64, i64) {
        if T::HI - T::LO <= 255 {
            return (T::LO, T::HI);
        }
        let v = self.data.get(..self.geom.image_len()).unwrap_or(&[]);
        let lo = v
            .iter()
            .copied()
            .min()
            .map_or(self.fill, |x| x.min(self.fill));
        let hi = v
            .iter()
            .copied()
            .max()
            .map_or(self.fill, |x| x.max(self.fill));
        (lo.widen(), hi.widen())
    }
}

impl<T: IntElem> Side<'_, T> {
    /// The operand's value range (`(0, 0)` when it is empty).
    fn range(&self, rows: usize, k: usize) -> (i64, i64) {
        match self {
            Side::Raw(_) if rows == 0 || k == 0 => (0, 0),
            Side::Raw(v) => v.range(rows, k),
            Side::Packed(p) => p.range,
            Side::Image(_) if rows == 0 || k == 0 => (0, 0),
            Side::Image(v) => v.range(),
        }
    }
}

impl IGemm {
    /// The CPU's widest integer kernels, one thread.
    pub fn new() -> Self {
        let isa = Isa::ALL
            .into_iter()
            .rev()
            .find(|&i| supported(i))
            .unwrap_or(Isa::Portable);
        IGemm { isa, threads: 1 }
    }

    /// Forces one ISA's kernels (tests, benches); fails if the CPU lacks it.
    pub fn with_isa(isa: Isa) -> Result<Self, IGemmError> {
        if !supported(isa) {
            return Err(IGemmError::Unsupported(isa));
        }
        Ok(IGemm { isa, threads: 1 })
    }

    /// Uses up to `threads` threads (0 counts as 1).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The ISA of the kernels.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `C (m×n, row-major, leading dimension ldc) = A (m×k) · B (k×n) + bias`, exactly.
    ///
    /// Fails, before writing anything, on malformed views, on operands whose values span more
    /// than 256 integers, and when the result could exceed `i32`.
    #[allow(clippy::too_many_arguments)]
    pub fn run<TA: IntElem, TB: IntElem>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: IntRef<'_, TA>,
        b: IntRef<'_, TB>,
        c: &mut [i32],
        ldc: usize,
        bias: IBias<'_>,
    ) -> Result<(), IGemmError> {
        self.run_into(m, n, k, a, b, IOut::I32(c), ldc, bias)
    }

    /// [`IGemm::run`] into `c`: the `i32` product, or its requantization to `u8`/`i8` done
    /// tile by tile in the epilogue (the `i32` result is never stored).
    #[allow(clippy::too_many_arguments)]
    pub fn run_into<TA: IntElem, TB: IntElem>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: IntRef<'_, TA>,
        b: IntRef<'_, TB>,
        c: IOut<'_>,
        ldc: usize,
        bias: IBias<'_>,
    ) -> Result<(), IGemmError> {
        check("A", a.needed(m, k), a.data.len())?;
        check("B", b.needed(k, n), b.data.len())?;
        self.product(m, n, k, Side::Raw(a), Side::Raw(b.t()), c, ldc, bias)
    }

    /// Packs the `m×k` matrix `a` for the `A` slot of this ISA's kernels, once (see
    /// [`PackedInt`]). Fails on a malformed view or values spanning more than 256 integers.
    pub fn pack_a<T: IntElem>(
        &self,
        m: usize,
        k: usize,
        a: IntRef<'_, T>,
    ) -> Result<PackedInt, IGemmError> {
        check("A", a.needed(m, k), a.data.len())?;
        self.pack_operand(Slot::A, m, k, a)
    }

    /// Packs the `k×n` matrix `b` for the `B` slot of this ISA's kernels, once (see
    /// [`PackedInt`]). Fails on a malformed view or values spanning more than 256 integers.
    pub fn pack_b<T: IntElem>(
        &self,
        k: usize,
        n: usize,
        b: IntRef<'_, T>,
    ) -> Result<PackedInt, IGemmError> {
        check("B", b.needed(k, n), b.data.len())?;
        self.pack_operand(Slot::B, n, k, b.t())
    }

    /// [`IGemm::run`] with `A` packed ahead of time: `C (m×n) = A · B (k×n) + bias`, where `m`
    /// and `k` are the packed operand's.
    #[allow(clippy::too_many_arguments)]
    pub fn run_packed_a<TB: IntElem>(
        &self,
        a: &PackedInt,
        n: usize,
        b: IntRef<'_, TB>,
        c: &mut [i32],
        ldc: usize,
        bias: IBias<'_>,
    ) -> Result<(), IGemmError> {
        self.run_packed_a_into(a, n, b, IOut::I32(c), ldc, bias)
    }

    /// [`IGemm::run_packed_a`] into `c` (see [`IGemm::run_into`]).
    #[allow(clippy::too_many_arguments)]
    pub fn run_packed_a_into<TB: IntElem>(
        &self,
        a: &PackedInt,
        n: usize,
        b: IntRef<'_, TB>,
        c: IOut<'_>,
        ldc: usize,
        bias: IBias<'_>,
    ) -> Result<(), IGemmError> {
        self.expect(a, Slot::A)?;
        let (m, k) = (a.rows, a.k);
        check("B", b.needed(k, n), b.data.len())?;
        self.product::<u8, TB>(m, n, k, Side::Packed(a), Side::Raw(b.t()), c, ldc, bias)
    }

    /// [`IGemm::run_packed_a_into`] with `B` (`k×n`) the column matrix of a convolution's
    /// image, `(k, n) = b.geom.dims()`.
    pub fn run_packed_a_image_into<TB: IntElem>(
        &self,
        a: &PackedInt,
        b: IntImage<'_, TB>,
        c: IOut<'_>,
        ldc: usize,
        bias: IBias<'_>,
    ) -> Result<(), IGemmError> {
        self.expect(a, Slot::A)?;
        let (m, k) = (a.rows, a.k);
        let g = &b.geom;
        let (rows, n) = g.dims();
        if rows != k || [g.sh, g.sw, g.dh, g.dw, g.kh, g.kw].contains(&0) {
            return Err(IGemmError::Image { rows, k });
        }
        check("B", Some(g.image_len()), b.data.len())?;
        self.product::<u8, TB>(m, n, k, Side::Packed(a), Side::Image(b), c, ldc, bias)
    }

    /// [`IGemm::run`] with `B` packed ahead of time: `C (m×n) = A (m×k) · B + bias`, where `k`
    /// and `n` are the packed operand's.
    pub fn run_packed_b<TA: IntElem>(
        &self,
        m: usize,
        a: IntRef<'_, TA>,
        b: &PackedInt,
        c: &mut [i32],
        ldc: usize,
        bias: IBias<'_>,
    ) -> Result<(), IGemmError> {
        self.run_packed_b_into(m, a, b, IOut::I32(c), ldc, bias)
    }

    /// [`IGemm::run_packed_b`] into `c` (see [`IGemm::run_into`]).
    pub fn run_packed_b_into<TA: IntElem>(
        &self,
        m: usize,
        a: IntRef<'_, TA>,
        b: &PackedInt,
        c: IOut<'_>,
        ldc: usize,
        bias: IBias<'_>,
    ) -> Result<(), IGemmError> {
        self.expect(b, Slot::B)?;
        let (n, k) = (b.rows, b.k);
        check("A", a.needed(m, k), a.data.len())?;
        self.product::<TA, u8>(m, n, k, Side::Raw(a), Side::Packed(b), c, ldc, bias)
    }

    fn expect(&self, p: &PackedInt, slot: Slot) -> Result<(), IGemmError> {
        if p.isa != self.isa || p.slot != slot {
            return Err(IGemmError::WrongPacking {
                isa: p.isa,
                slot: p.slot,
                want_isa: self.isa,
                want_slot: slot,
            });
        }
        Ok(())
    }

    /// Packs `v`, seen as `rows×k`, for `slot` (views checked).
    fn pack_operand<T: IntElem>(
        &self,
        slot: Slot,
        rows: usize,
        k: usize,
        v: IntRef<'_, T>,
    ) -> Result<PackedInt, IGemmError> {
        let range = Side::Raw(v).range(rows, k);
        let off = match slot {
            Slot::A => offset("A", range, (0, 255))?,
            Slot::B => offset("B", range, (-128, 127))?,
        };
        let threads = if rows.saturating_mul(k) < 1 << 16 {
            1
        } else {
            self.threads
        };
        let (panels, sums) = match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => pack_for(&avx512::SPEC, slot, &v, rows, k, off, threads),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => pack_for(&avx2::SPEC, slot, &v, rows, k, off, threads),
            _ => pack_for(&portable::SPEC, slot, &v, rows, k, off, threads),
        };
        Ok(PackedInt {
            isa: self.isa,
            slot,
            rows,
            k,
            range,
            off,
            panels,
            sums,
        })
    }

    /// Checks C, the bias, the ranges and the overflow bound, then runs on this ISA. The raw
    /// views have been checked; `b` is seen transposed (`n×k`).
    #[allow(clippy::too_many_arguments)]
    fn product<TA: IntElem, TB: IntElem>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: Side<'_, TA>,
        b: Side<'_, TB>,
        mut c: IOut<'_>,
        ldc: usize,
        bias: IBias<'_>,
    ) -> Result<(), IGemmError> {
        if n > ldc && m > 1 {
            return Err(IGemmError::Overlap { ld: ldc, n });
        }
        let needed = IntRef::<u8>::row_major(&[], ldc).needed(m, n);
        check("C", needed, c.len())?;
        if let IOut::U8(_, rq) | IOut::I8(_, rq) = &c {
            match rq.mult {
                RqMult::Scalar(_) => {}
                RqMult::PerRow(v) => check("multiplier", Some(m), v.len())?,
                RqMult::PerCol(v) => check("multiplier", Some(n), v.len())?,
            }
            match rq.shift {
                None | Some(RqMult::Scalar(_)) => {}
                Some(RqMult::PerRow(v)) => check("shift", Some(m), v.len())?,
                Some(RqMult::PerCol(v)) => check("shift", Some(n), v.len())?,
            }
            if let Some(a) = &rq.add {
                check("residual", needed, a.r.len() / a.p.r_size())?;
            }
        }
        let (blo, bhi) = match bias {
            IBias::None => (0, 0),
            IBias::Scalar(s) => (s as i64, s as i64),
            IBias::PerRow(v) => vec_range("bias", v, m)?,
            IBias::PerCol(v) => vec_range("bias", v, n)?,
            IBias::Full(v, ld) => {
                check("bias", IntRef::row_major(v, ld).needed(m, n), v.len())?;
                let r = IntRef::row_major(v, ld);
                if m == 0 || n == 0 {
                    (0, 0)
                } else {
                    r.range(m, n)
                }
            }
        };
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (ra, rb) = (a.range(m, k), b.range(n, k));
        let oa = match &a {
            Side::Raw(_) | Side::Image(_) => offset("A", ra, (0, 255))?,
            Side::Packed(p) => p.off,
        };
        let ob = match &b {
            Side::Raw(_) | Side::Image(_) => offset("B", rb, (-128, 127))?,
            Side::Packed(p) => p.off,
        };
        let mag = |(lo, hi): (i64, i64)| i128::from(lo.unsigned_abs().max(hi.unsigned_abs()));
        let bound = k as i128 * mag(ra) * mag(rb) + mag((blo, bhi));
        if bound > i128::from(i32::MAX) {
            return Err(IGemmError::MayOverflow { bound });
        }
        let p = Problem {
            m,
            n,
            k,
            oa,
            ob,
            bias,
            threads: self.threads,
        };
        let dest = Dest::new(self.isa, &mut c, ldc);
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => p.drive(&avx512::SPEC, &a, &b, dest),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => p.drive(&avx2::SPEC, &a, &b, dest),
            _ => p.drive(&portable::SPEC, &a, &b, dest),
        }
    }
}

/// Packs `v` (`rows×k`) for `slot` of `spec`'s kernels.
fn pack_for<DA: PackDst, DB: PackDst, T: IntElem>(
    spec: &Spec<DA, DB>,
    slot: Slot,
    v: &IntRef<'_, T>,
    rows: usize,
    k: usize,
    off: i32,
    threads: usize,
) -> (Panels, Vec<i32>) {
    match slot {
        Slot::A => {
            let (p, s) = pack::pack_all::<T, DA>(v, rows, k, off, spec.mr, spec.kg, threads);
            (DA::wrap(p), s)
        }
        Slot::B => {
            let (p, s) = pack::pack_all::<T, DB>(v, rows, k, off, spec.nr, spec.kg, threads);
            (DB::wrap(p), s)
        }
    }
}

fn check(operand: &'static str, needed: Option<usize>, len: usize) -> Result<(), IGemmError> {
    let needed = needed.ok_or(IGemmError::Overflow { operand })?;
    if needed > len {
        return Err(IGemmError::TooShort {
            operand,
            needed,
            len,
        });
    }
    Ok(())
}

fn vec_range(operand: &'static str, v: &[i32], len: usize) -> Result<(i64, i64), IGemmError> {
    check(operand, Some(len), v.len())?;
    let v = &v[..len];
    Ok((
        v.iter().copied().min().unwrap_or(0) as i64,
        v.iter().copied().max().unwrap_or(0) as i64,
    ))
}

/// The offset that moves values in `[lo, hi]` into `[tlo, thi]` (a 256-value window): 0 when
/// they already lie there, else the one that puts `lo` at `tlo`.
fn offset(
    operand: &'static str,
    (lo, hi): (i64, i64),
    (tlo, thi): (i64, i64),
) -> Result<i32, IGemmError> {
    if lo >= tlo && hi <= thi {
        Ok(0)
    } else if hi - lo <= thi - tlo {
        // |lo − tlo| < 2³² + 128 for any i32/u32 source; the offset is used modulo 2³².
        Ok((lo - tlo) as i32)
    } else {
        Err(IGemmError::Range { operand, lo, hi })
    }
}

/// The tiles of `C` that thread `t` of `threads` computes: `((m0, m1), (n0, n1))` in tile
/// units. Bands of whole tiles along whichever of `M` and `N` has more, so that with
/// `threads ≤ max(mt, nt)` every thread gets at least one tile.
fn band_of(t: usize, threads: usize, mt: usize, nt: usize) -> ((usize, usize), (usize, usize)) {
    let band = |tiles: usize| (tiles * t / threads, tiles * (t + 1) / threads);
    if threads == 1 {
        ((0, mt), (0, nt))
    } else if mt >= nt {
        (band(mt), (0, nt))
    } else {
        ((0, mt), band(nt))
    }
}

/// The threads a product of `m×n×k` with `mt×nt` tiles uses, of `threads` allowed.
fn threads_for(m: usize, n: usize, k: usize, mt: usize, nt: usize, threads: usize) -> usize {
    let work = m.saturating_mul(n).saturating_mul(k.max(1));
    if work < MIN_THREADED_MACS {
        1
    } else {
        threads.min(mt.max(nt)).max(1)
    }
}

/// The requantization of a tile, as raw parts that threads share.
#[derive(Clone, Copy)]
struct QParams {
    /// The per-row or per-column multipliers (unused for a scalar one).
    mult: *const f32,
    per: Per,
    scalar: f32,
    /// The shift, as the multiplier, when `shifted`.
    shift: *const f32,
    shift_per: Per,
    shift_scalar: f32,
    shifted: bool,
    scale: f32,
    zp: f32,
    signed: bool,
    /// The residual (laid out as C), null without one, and its scalars.
    res: *const u8,
    add: Option<AddParams>,
    /// The byte table applied last, null without one.
    table: *const [u8; 256],
}

/// Where the driver writes: `C`'s first element and leading dimension, `i32`s or (with `q`)
/// requantized bytes.
#[derive(Clone, Copy)]
struct Dest<'h> {
    c: *mut u8,
    ldc: usize,
    q: Option<QParams>,
    isa: Isa,
    hook: Option<TileHook<'h>>,
}

// SAFETY: threads write only their own bands of C (see `SharedPtr`) and read the multipliers,
// which nobody writes during the product.
unsafe impl Send for Dest<'_> {}
// SAFETY: as above.
unsafe impl Sync for Dest<'_> {}

impl<'h> Dest<'h> {
    fn new(isa: Isa, c: &mut IOut<'h>, ldc: usize) -> Dest<'h> {
        let parts = |m: RqMult| match m {
            RqMult::Scalar(s) => (std::ptr::null(), Per::Scalar, s),
            RqMult::PerRow(v) => (v.as_ptr(), Per::Row, 0.0),
            RqMult::PerCol(v) => (v.as_ptr(), Per::Col, 0.0),
        };
        let q = |rq: &IRequant, signed| {
            let (mult, per, scalar) = parts(rq.mult);
            let (shift, shift_per, shift_scalar) = parts(rq.shift.unwrap_or(RqMult::Scalar(0.0)));
            Some(QParams {
                mult,
                per,
                scalar,
                shift,
                shift_per,
                shift_scalar,
                shifted: rq.shift.is_some(),
                scale: rq.scale,
                zp: rq.zero_point as f32,
                signed,
                res: rq.add.map_or(std::ptr::null(), |a| a.r.as_ptr()),
                add: rq.add.map(|a| a.p),
                table: rq.table.map_or(std::ptr::null(), |t| t as *const [u8; 256]),
            })
        };
        let hook = match c {
            IOut::I32Then(_, h) => Some(*h),
            _ => None,
        };
        let (c, q) = match c {
            IOut::I32(c) | IOut::I32Then(c, _) => (c.as_mut_ptr().cast::<u8>(), None),
            IOut::U8(c, rq) => (c.as_mut_ptr(), q(rq, false)),
            IOut::I8(c, rq) => (c.as_mut_ptr().cast::<u8>(), q(rq, true)),
        };
        Dest {
            c,
            ldc,
            q,
            isa,
            hook,
        }
    }
}

/// A checked product, ready to run on one ISA.
struct Problem<'a> {
    m: usize,
    n: usize,
    k: usize,
    oa: i32,
    ob: i32,
    bias: IBias<'a>,
    threads: usize,
}

impl Problem<'_> {
    fn drive<DA: PackDst, DB: PackDst, TA: IntElem, TB: IntElem>(
        &self,
        spec: &Spec<DA, DB>,
        a: &Side<'_, TA>,
        b: &Side<'_, TB>,
        dest: Dest<'_>,
    ) -> Result<(), IGemmError> {
        let (m, n, k) = (self.m, self.n, self.k);
        let kp = k.next_multiple_of(spec.kg);
        let (mt, nt) = (m.div_ceil(spec.mr), n.div_ceil(spec.nr));
        let threads = threads_for(m, n, k, mt, nt, self.threads);
        // Pack A (as MR-row panels of u8-range values) and B (NR-column panels of i8-range
        // values), with their row and column sums, unless they come packed.
        let wrong = |p: &PackedInt| IGemmError::WrongPacking {
            isa: p.isa,
            slot: p.slot,
            want_isa: p.isa,
            want_slot: p.slot,
        };
        let own_a;
        let (ap, rsum): (*const DA, &[i32]) = match a {
            Side::Raw(v) => {
                own_a = pack::pack_all::<TA, DA>(v, m, k, self.oa, spec.mr, spec.kg, threads);
                (own_a.0.as_ptr(), &own_a.1)
            }
            Side::Packed(p) => (DA::unwrap(&p.panels).ok_or(wrong(p))?.as_ptr(), &p.sums),
            Side::Image(_) => return Err(IGemmError::Image { rows: 0, k }),
        };
        // A B packed on this call is packed one column block at a time, by the thread that
        // uses it, right before its tiles (see `block_loops`), when each thread's tiles span
        // whole columns of C (one thread, or bands along N): the block's panels then stay in
        // L2 between packing and use, instead of the whole B going out to L3 and back, and
        // the threads need no barrier between packing and computing. Bands along M would each
        // need all of B: it is packed once, up front, by all threads.
        let lazy_b = matches!(b, Side::Raw(_) | Side::Image(_)) && (threads == 1 || mt < nt);
        let own_b;
        let (bp, csum): (*const DB, &[i32]) = match b {
            Side::Raw(_) | Side::Image(_) if lazy_b => (std::ptr::null(), &[]),
            Side::Raw(v) => {
                own_b = pack::pack_all::<TB, DB>(v, n, k, self.ob, spec.nr, spec.kg, threads);
                (own_b.0.as_ptr(), &own_b.1)
            }
            // Bands along M each need all of B: packed up front, the threads' panels each.
            Side::Image(img) => {
                own_b =
                    pack::pack_all_image::<TB, DB>(img, n, k, self.ob, spec.nr, spec.kg, threads);
                (own_b.0.as_ptr(), &own_b.1)
            }
            Side::Packed(p) => (DB::unwrap(&p.panels).ok_or(wrong(p))?.as_ptr(), &p.sums),
        };
        // The epilogue's vectors: A·B = Au·Bs + oa·colsum(Bs) + ob·(rowsum(Au) + k·oa)
        // (`oa·colsum` added per block when B is packed there).
        let (oa, ob, kk) = (self.oa, self.ob, k as i32);
        let mut rowadd: Vec<i32> = rsum[..mt * spec.mr]
            .iter()
            .map(|&s| ob.wrapping_mul(s.wrapping_add(kk.wrapping_mul(oa))))
            .collect();
        let mut coladd: Vec<i32> = if lazy_b {
            vec![0; nt * spec.nr]
        } else {
            csum[..nt * spec.nr]
                .iter()
                .map(|&s| oa.wrapping_mul(s))
                .collect()
        };
        let mut res = (std::ptr::null(), 0);
        match self.bias {
            IBias::None => {}
            IBias::Scalar(s) => rowadd.iter_mut().for_each(|x| *x = x.wrapping_add(s)),
            IBias::PerRow(v) => {
                for (x, &y) in rowadd.iter_mut().zip(v) {
                    *x = x.wrapping_add(y);
                }
            }
            IBias::PerCol(v) => {
                for (x, &y) in coladd.iter_mut().zip(v) {
                    *x = x.wrapping_add(y);
                }
            }
            IBias::Full(v, ld) => res = (v.as_ptr(), ld),
        }
        let (app, bpp) = (SharedPtr(ap.cast_mut()), SharedPtr(bp.cast_mut()));
        let (rap, cap, resp) = (
            SharedPtr(rowadd.as_ptr().cast_mut()),
            SharedPtr(coladd.as_ptr().cast_mut()),
            SharedPtr(res.0.cast_mut()),
        );
        let (obb, kg, nr) = (self.ob, spec.kg, spec.nr);
        // Packs panels `j0..j1` of B (in tiles) into `dst` and their column sums into `sums`.
        let pack_cols = |j0: usize, j1: usize, dst: &mut [MaybeUninit<DB>], sums: &mut [i32]| {
            let (top, rows) = (j0 * nr, (j1 * nr).min(n) - j0 * nr);
            match b {
                Side::Raw(v) => {
                    let view = IntRef::new(&v.data[(top * v.rs).min(v.data.len())..], v.rs, v.cs);
                    pack::pack(&view, rows, k, obb, nr, kg, (0, 1), dst, sums);
                }
                Side::Image(img) => pack::pack_image(img, (top, rows), k, obb, nr, kg, dst, sums),
                Side::Packed(_) => {}
            }
        };
        let lazy = lazy_b.then_some(LazyB {
            pack: &pack_cols,
            oa,
        });
        let run_band = move |t: usize| {
            let ((m0, m1), (n0, n1)) = band_of(t, threads, mt, nt);
            // SAFETY: the panels hold all `mt`×`nt` tiles with `kp` steps (packed here, or
            // by `pack_operand` for the same ISA, slot, rows and k); the epilogue vectors hold
            // `mt·MR` and `nt·NR` entries; `C` (checked m×n, stride `ldc`) is written only in
            // this band's tiles, which no other thread touches; the residual was checked to
            // cover m×n, the multipliers `m` or `n` values.
            unsafe {
                block_loops(
                    spec,
                    (m0, m1),
                    (n0, n1),
                    (m, n, kp),
                    app.get(),
                    bpp.get(),
                    dest,
                    (rap.get(), cap.get(), resp.get(), res.1),
                    lazy,
                )
            };
        };
        if threads == 1 {
            run_band(0);
        } else {
            super::parallel_for(threads, &run_band);
        }
        Ok(())
    }
}

/// A `B` that [`block_loops`] packs one column block at a time: the packer (panels `j0..j1`,
/// in tiles, into a buffer and their column sums) and `A`'s offset, by which the sums enter
/// the epilogue's column vector.
#[derive(Clone, Copy)]
struct LazyB<'p, DB> {
    pack: &'p PackCols<'p, DB>,
    oa: i32,
}

/// Packs panels `j0..j1` of `B` into `dst` and their column sums into `sums`.
type PackCols<'p, DB> = dyn Fn(usize, usize, &mut [MaybeUninit<DB>], &mut [i32]) + Sync + 'p;

/// The blocked loops over tiles `m0..m1` × `n0..n1` (in tile units): `jc` (NC columns) →
/// `pc` (KC steps) → `i` (MR rows) → `j` (NR columns) → microkernel.
///
/// # Safety
///
/// `a` holds `m.div_ceil(MR)` packed panels of `kp` steps, `b` `n.div_ceil(NR)`; `dest.c` is
/// valid for `m×n` with stride `ldc`; `rowadd`/`coladd` cover every padded row and column;
/// `res` is null or valid for `m×n` with stride `ldr`; a requantization's multipliers cover
/// `m` rows or `n` columns; no other thread touches this band of `C`. The CPU runs
/// `dest.isa`.
///
/// With `lazy`, `b` is unused: each column block of B is packed into a buffer of this call's
/// right before its tiles, and `coladd` holds everything but `oa·colsum(B)`.
///
/// With a requantization, the microkernels accumulate into an `i32` scratch (one tile when
/// `k` is not cut, else the band's rows of one column block, so that partial sums survive
/// between `k` blocks), and each tile is requantized into `C` right after its last block.
#[allow(clippy::too_many_arguments)]
unsafe fn block_loops<DA, DB: PackDst>(
    spec: &Spec<DA, DB>,
    (m0, m1): (usize, usize),
    (n0, n1): (usize, usize),
    (m, n, kp): (usize, usize, usize),
    a: *const DA,
    b: *const DB,
    dest: Dest<'_>,
    (rowadd, coladd, res, ldr): (*mut i32, *mut i32, *mut i32, usize),
    lazy: Option<LazyB<'_, DB>>,
) {
    let (mr, nr) = (spec.mr, spec.nr);
    let nc_tiles = (spec.nc / nr).max(1);
    // The packed column block and its epilogue vector, when B is packed here.
    let (mut bbuf, mut bsums, mut bcol) = match lazy {
        Some(_) => {
            let cols = nc_tiles.min(n1 - n0) * nr;
            (
                AlignedVec::<DB>::new(cols * kp),
                vec![0i32; cols],
                vec![0i32; cols],
            )
        }
        None => (AlignedVec::<DB>::new(0), Vec::new(), Vec::new()),
    };
    // When a whole column block of B (all `kp` steps) fits in half of L2, `k` is not cut: A's
    // panels are then read once, front to back, which the prefetchers stream from memory (a
    // weight that is not in cache, 512×49×4608: 430 → 600+ GOP/s measured), and C is
    // written once.
    let block_bytes = kp * nc_tiles.min(n1 - n0) * nr * std::mem::size_of::<DB>();
    let kc_max = if block_bytes <= L2_HALF { kp } else { spec.kc };
    let kblocks = kp.div_ceil(kc_max).max(1);
    let ldc = dest.ldc;
    // The requantization's scratch and its leading dimension: the `i32` tiles of one row of
    // tiles of a column block (all the band's rows when `k` is cut, so that partial sums
    // survive between `k` blocks). Requantizing a whole row of tiles at once, rather than
    // each 12×32 tile, runs the epilogue over rows of up to 256 columns.
    let ld = nc_tiles * nr;
    let (mut scratch, lds) = match dest.q {
        None => (Vec::new(), 0),
        Some(_) if kblocks == 1 => (vec![0i32; mr * ld], ld),
        Some(_) => (vec![0i32; (m1 - m0) * mr * ld], ld),
    };
    let mut jc = n0;
    while jc < n1 {
        let jend = (jc + nc_tiles).min(n1);
        // Where this block's panels and column vector are: B's own, or packed here.
        let (bblk, cblk) = match lazy {
            Some(lz) => {
                let cols = (jend - jc) * nr;
                (lz.pack)(
                    jc,
                    jend,
                    &mut bbuf.as_mut_slice()[..cols * kp],
                    &mut bsums[..cols],
                );
                for (x, (&s, &base)) in bcol.iter_mut().zip(bsums.iter().zip(
                    // SAFETY: `coladd` covers every padded column (the contract).
                    unsafe { std::slice::from_raw_parts(coladd.add(jc * nr), cols) },
                )) {
                    *x = base.wrapping_add(lz.oa.wrapping_mul(s));
                }
                (bbuf.as_ptr(), bcol.as_mut_ptr())
            }
            // SAFETY: panel `jc` and column `jc·NR` lie inside B's panels and `coladd`.
            None => unsafe { (b.add(jc * nr * kp), coladd.add(jc * nr)) },
        };
        for kb in 0..kblocks {
            let pc = kb * kc_max;
            let kc = kc_max.min(kp - pc);
            let last = kb + 1 == kblocks;
            for it in m0..m1 {
                let i = it * mr;
                // This row of tiles' scratch (with a requantization).
                let srow = if kblocks == 1 {
                    0
                } else {
                    (it - m0) * mr * lds
                };
                for jt in jc..jend {
                    let j = jt * nr;
                    // SAFETY: see the function's contract; `i < m`, `j < n`, and panel offsets
                    // stay inside the packed buffers; a scratch tile lies inside the scratch
                    // (tile `jt − jc` of the row of tiles `srow` starts).
                    unsafe {
                        let (c, tldc) = match dest.q {
                            None => (dest.c.cast::<i32>().add(i * ldc + j), ldc),
                            Some(_) => (scratch.as_mut_ptr().add(srow + (jt - jc) * nr), lds),
                        };
                        let tile = Tile {
                            kc,
                            a: a.add(it * mr * kp + pc * mr),
                            b: bblk.add((jt - jc) * nr * kp + pc * nr),
                            c,
                            ldc: tldc,
                            rows: mr.min(m - i),
                            cols: nr.min(n - j),
                            first: kb == 0,
                            last,
                            rowadd: rowadd.add(i),
                            coladd: cblk.add(j - jc * nr),
                            res: if res.is_null() {
                                res
                            } else {
                                res.add(i * ldr + j)
                            },
                            ldr,
                        };
                        (spec.tile)(&tile);
                    }
                }
                // The row of tiles is final: requantize it into C.
                if let Some(q) = dest.q
                    && last
                {
                    let j = jc * nr;
                    // SAFETY: the row of tiles lies inside the scratch, and rows `i..` and
                    // columns `j..` inside C, the residual and the multipliers (the contract).
                    unsafe {
                        let qt = QTile {
                            src: scratch.as_ptr().add(srow),
                            lds,
                            dst: dest.c.add(i * ldc + j),
                            ldd: ldc,
                            rows: mr.min(m - i),
                            cols: (jend * nr).min(n) - j,
                            mult: q.per.at(q.mult, i, j),
                            per: q.per,
                            scalar: q.scalar,
                            shift: q.shift_per.at(q.shift, i, j),
                            shift_per: q.shift_per,
                            shift_scalar: q.shift_scalar,
                            shifted: q.shifted,
                            scale: q.scale,
                            zp: q.zp,
                            signed: q.signed,
                            res: match q.add {
                                Some(a) => q.res.add((i * ldc + j) * a.r_size()),
                                None => q.res,
                            },
                            add: q.add,
                            table: q.table,
                        };
                        requant::tile(dest.isa, &qt);
                    }
                }
            }
        }
        // The band's rows of this column block are final: run the tail on them, once the
        // microkernels no longer need the block of B in L1.
        if let Some(h) = dest.hook {
            let (i0, i1) = (m0 * mr, (m1 * mr).min(m));
            let (j0, j1) = (jc * nr, (jend * nr).min(n));
            (h.0)(i0, i1 - i0, j0, j1 - j0);
        }
        jc = jend;
    }
}
