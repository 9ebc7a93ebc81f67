//! f32 matrix multiplication, `C = act(α·A·B + β·C + bias + R)`, with a fused epilogue.
//!
//! This is the contraction kernel behind the CPU backend's MatMul, Gemm and (im2col) Conv. It
//! follows the GotoBLAS/BLIS design:
//!
//! * **Cache blocking.** `B` is cut into `KC×NC` blocks packed into `NR`-column panels (the
//!   block stays in L2); with at most 32 rows of `C` (64 when `B` is at most 64 deep) a
//!   row-major `B` is read in place instead, since each panel would be used too few times to
//!   repay the copy. The `MR×KC` slice of `A`
//!   that a row of tiles reads stays in L1 while it meets every `B` panel of the block; a
//!   row-major `A` is read there in place, any other layout (a transposed `A`) is first packed
//!   into `MR`-row panels of `MC×KC` blocks.
//! * **Register blocking.** A microkernel keeps an `MR×NR` tile of `C` in vector registers for
//!   the whole `KC` loop: 12×32 in 24 zmm registers with AVX-512, 6×16 in 12 ymm with AVX2.
//!   Row and column edges are handled in the kernel itself (row count is a const generic, columns
//!   are lane masks), so no shape is padded in `C`.
//! * **Epilogue while the tile is hot.** On the last `KC` block the kernel adds the bias (scalar,
//!   per row or per column), the residual, applies the activation and stores the tile once.
//! * **Pre-packing.** A constant `B` (a weight) can be packed once, at compile time, with
//!   [`PackedB::new`]; [`sgemm_packed`] then skips packing it on every call.
//! * **Few columns.** Tiles vectorize along `C`'s columns, so `W·X` with 49 columns (a 7×7
//!   map) keeps 49 of 64 lanes busy. [`Gemm::run_packed_transposed`] computes `Cᵀ = Xᵀ·Wᵀ`
//!   instead, with `Wᵀ` pre-packed, and transposes each finished block back into `C` while it
//!   is in L1.
//! * **Threads.** [`sgemm_parallel`] splits `C` into equal bands of whole tiles, one per scoped
//!   thread, along `N` when that copies nothing twice (a row-major `A` is never packed), else
//!   along whichever of `M` and `N` has more tiles.
//!
//! Operands are described by [`MatRef`] (a slice plus a row and a column stride), so transposed
//! operands (ONNX Gemm's `transA`/`transB`) cost nothing but a different stride in packing.
//!
//! ```
//! use mlc_runtime::kernels::gemm::{sgemm, Activation, Bias, Epilogue};
//!
//! // C (2×2) = relu(A (2×3) · B (3×2) + per-column bias)
//! let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let b = [1.0, 0.0, 0.0, 1.0, 0.0, -1.0];
//! let mut c = [0.0; 4];
//! let ep = Epilogue::new().bias(Bias::PerCol(&[0.5, 0.5])).activation(Activation::Relu);
//! sgemm(2, 2, 3, &a, 3, &b, 2, &mut c, 2, &ep).unwrap();
//! // A·B = [[1, -1], [4, -1]]
//! assert_eq!(c, [1.5, 0.0, 4.5, 0.0]);
//! ```
//!
//! Pre-packed constant weights, transposed as in ONNX `Gemm(transB = 1)`, on two threads:
//!
//! ```
//! use mlc_runtime::kernels::gemm::{Epilogue, Gemm, MatRef};
//!
//! let (m, n, k) = (3, 4, 2);
//! let a = vec![1.0f32; m * k];
//! let w = vec![2.0f32; n * k]; // stored n×k: B = wᵀ
//! let gemm = Gemm::new().threads(2);
//! let packed = gemm.pack_b(k, n, MatRef::col_major(&w, k)).unwrap();
//! let mut c = vec![0.0; m * n];
//! gemm.run_packed(m, MatRef::row_major(&a, k), &packed, &mut c, n, &Epilogue::new()).unwrap();
//! assert!(c.iter().all(|&x| x == 4.0));
//! ```

// The driver hands raw pointers into the packed buffers and into `C` to the microkernels and to
// the threads that write disjoint tiles of `C`; every such use carries a `SAFETY:` comment.
#![allow(unsafe_code)]

/// `$x = $f` for every accumulator of a microkernel's tile, as nested loops over constant bounds
/// (which LLVM unrolls, keeping the accumulators in registers; see `avx512.rs`'s docs). Defined
/// before the ISA modules, which use it in their epilogues.
#[cfg(target_arch = "x86_64")]
macro_rules! each {
    ($acc:ident, |$x:ident| $f:expr) => {
        for row in $acc.iter_mut() {
            for x in row.iter_mut() {
                let $x = *x;
                *x = $f;
            }
        }
    };
}

pub mod act;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
mod gemv;
mod pack;
mod portable;
#[cfg(test)]
mod tests;

use super::Isa;
use pack::AlignedBuf;

/// A read-only view of a matrix: element `(i, j)` is `data[i * rs + j * cs]`.
///
/// The dimensions come from the call that uses it (`m×k` for `A`, `k×n` for `B`), and the
/// call checks that every element it reads lies inside `data`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Distance between consecutive rows.
    pub rs: usize,
    /// Distance between consecutive columns.
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A view with explicit strides.
    pub fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        MatRef { data, rs, cs }
    }

    /// Row-major storage with leading dimension `ld` (row `i` starts at `i * ld`).
    pub fn row_major(data: &'a [f32], ld: usize) -> Self {
        MatRef {
            data,
            rs: ld,
            cs: 1,
        }
    }

    /// Column-major storage with leading dimension `ld`: the transpose of a row-major matrix,
    /// which is how ONNX `transA`/`transB` operands arrive.
    pub fn col_major(data: &'a [f32], ld: usize) -> Self {
        MatRef {
            data,
            rs: 1,
            cs: ld,
        }
    }

    /// The transposed view (no data moves).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
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
}

/// A bias added to every element of the product before the activation.
#[derive(Clone, Copy, Debug, Default)]
pub enum Bias<'a> {
    /// No bias.
    #[default]
    None,
    /// One value for all of `C`.
    Scalar(f32),
    /// One value per row of `C` (length `m`): conv in NCHW layout, where rows are out channels.
    PerRow(&'a [f32]),
    /// One value per column of `C` (length `n`): MatMul/Gemm/Linear bias.
    PerCol(&'a [f32]),
}

/// An element-wise activation applied last, as the tile is stored.
///
/// NaN follows the kernel IR's definition (`max`/`min` that return the number when one operand
/// is NaN, as `f64::max` does): ReLU maps NaN to 0 and Clip maps it to `min`; LeakyReLU keeps
/// it. The SIMD kernels get this from `maxps`/`minps`, which return their second operand when
/// either is NaN, by passing the bound second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`; NaN becomes 0.
    Relu,
    /// `min(max(x, min), max)`; NaN becomes `min`.
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// `x` if `x ≥ 0`, else `alpha·x`; NaN stays NaN.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
    /// `max(0, min(1, alpha·x + beta))`; NaN stays NaN (ONNX HardSigmoid).
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// `x · max(0, min(1, x·(1/6) + 1/2))`; NaN stays NaN (ONNX HardSwish, whose `alpha` is
    /// 1/6: a multiplication by the rounded constant, as the spec writes it, not a division).
    HardSwish,
    /// GELU, erf form (ONNX `Gelu`): `0.5·x·(1 + erf(x/√2))`, with `erf` a polynomial
    /// approximation (see [`act`] for the algorithm and its error bound); NaN stays NaN.
    Gelu,
    /// GELU, tanh form (ONNX `Gelu(approximate = "tanh")`):
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, with `tanh` a polynomial approximation
    /// (see [`act`]); NaN stays NaN.
    GeluTanh,
    /// `1 / (1 + exp(-x))`, in this order, with `exp` a polynomial approximation (see
    /// [`act`]); NaN stays NaN (ONNX Sigmoid).
    Sigmoid,
    /// `x · (1 / (1 + exp(-(alpha·x))))`, in this order (SiLU for `alpha = 1`); NaN stays NaN.
    Swish {
        /// Scale of the sigmoid's argument.
        alpha: f32,
    },
}

/// `max(0, min(1, e))` keeping NaN, in the order the SIMD kernels compute it.
fn clamp01(e: f32) -> f32 {
    if e.is_nan() { e } else { e.clamp(0.0, 1.0) }
}

/// `act` on every element of `x`, 16 or 8 lanes at a time where `isa` has them (each lane as
/// [`Activation::apply`]).
pub fn activate_slice(act: Activation, x: &mut [f32], isa: Isa) {
    let isa = if isa.is_supported() {
        isa
    } else {
        Isa::Portable
    };
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is supported (checked above).
        Isa::Avx512 => unsafe { avx512::activate_slice(act, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are supported (checked above).
        Isa::Avx2 => unsafe { avx2::activate_slice(act, x) },
        _ => x.iter_mut().for_each(|v| *v = act.apply(*v)),
    }
}

impl Activation {
    /// The activation of one value (the scalar definition every kernel matches).
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            Activation::Clip { min, max } => x.max(min).min(max),
            Activation::LeakyRelu { alpha } => {
                if x < 0.0 {
                    alpha * x
                } else {
                    x
                }
            }
            Activation::HardSigmoid { alpha, beta } => clamp01(alpha * x + beta),
            Activation::HardSwish => x * clamp01(x * (1.0 / 6.0) + 0.5),
            Activation::Gelu => act::gelu(x),
            Activation::GeluTanh => act::gelu_tanh(x),
            Activation::Sigmoid => act::sigmoid(x),
            Activation::Swish { alpha } => act::swish(x, alpha),
        }
    }
}

/// A matrix added to the product (a residual connection), row-major with leading dimension
/// `ld`; it is `m×n` like `C`. It is only read, so `ld = 0` broadcasts one row to all.
#[derive(Clone, Copy, Debug)]
pub struct Residual<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Distance between consecutive rows.
    pub ld: usize,
}

/// A function the drivers call on every finished block of `C` (all of `k` accumulated, the
/// epilogue applied and stored): `(row0, rows, col0, cols)` in `C`'s coordinates, while the
/// block is still in cache. Each thread calls it on its own blocks only; blocks never overlap.
#[derive(Clone, Copy)]
pub struct TileHook<'a>(pub &'a (dyn Fn(usize, usize, usize, usize) + Sync));

impl std::fmt::Debug for TileHook<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TileHook")
    }
}

/// What happens to the product before it is stored:
/// `C = activation(alpha·A·B + beta·C + bias + residual)`.
///
/// `beta = 0` (the default) never reads `C`, so `C` may hold anything, NaN included.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the previous contents of `C`.
    pub beta: f32,
    /// Bias.
    pub bias: Bias<'a>,
    /// Residual matrix.
    pub residual: Option<Residual<'a>>,
    /// Activation, applied last.
    pub activation: Activation,
    /// Called on each finished block of `C`, after its store.
    pub tile_hook: Option<TileHook<'a>>,
}

impl Default for Epilogue<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> Epilogue<'a> {
    /// Plain `C = A·B`.
    pub const fn new() -> Self {
        Epilogue {
            alpha: 1.0,
            beta: 0.0,
            bias: Bias::None,
            residual: None,
            activation: Activation::None,
            tile_hook: None,
        }
    }

    /// With a function called on each finished block of `C` (see [`TileHook`]).
    pub const fn tile_hook(mut self, hook: TileHook<'a>) -> Self {
        self.tile_hook = Some(hook);
        self
    }

    /// With this `alpha`.
    pub const fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }

    /// With this `beta`.
    pub const fn beta(mut self, beta: f32) -> Self {
        self.beta = beta;
        self
    }

    /// With this bias.
    pub const fn bias(mut self, bias: Bias<'a>) -> Self {
        self.bias = bias;
        self
    }

    /// With a residual matrix (row-major, leading dimension `ld`).
    pub const fn residual(mut self, data: &'a [f32], ld: usize) -> Self {
        self.residual = Some(Residual { data, ld });
        self
    }

    /// With this activation.
    pub const fn activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }
}

/// Why a product could not be computed. All of these are caller errors, found before any
/// element of `C` is written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GemmError {
    /// An operand's slice does not hold every element its shape and strides reach.
    #[error("{operand} needs {needed} elements for its shape and strides but has {len}")]
    TooShort {
        /// Which operand (`A`, `B`, `C`, `bias`, `residual`).
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
    /// A written matrix's leading dimension is smaller than its row, so rows would overlap.
    #[error("{operand} has leading dimension {ld} < n = {n}: its rows would overlap")]
    Overlap {
        /// Which operand (`C`).
        operand: &'static str,
        /// The leading dimension given.
        ld: usize,
        /// The row length.
        n: usize,
    },
    /// The CPU cannot run kernels of this level.
    #[error("this CPU does not support {0} kernels")]
    Unsupported(Isa),
    /// [`Gemm::run_packed_transposed`] was given an epilogue that reads `C` (`β ≠ 0` or a
    /// residual), or was called again from inside its own tile hook.
    #[error("a transposed product cannot read C (beta ≠ 0 or a residual) or nest")]
    Transposed,
    /// A pre-packed `B` does not fit the product.
    #[error(
        "B was packed as {packed_k}×{packed_n} for {packed_isa}, the product needs {k}×{n} for {isa}"
    )]
    PackedMismatch {
        /// `k` of the packed `B`.
        packed_k: usize,
        /// `n` of the packed `B`.
        packed_n: usize,
        /// ISA the packed `B` was laid out for.
        packed_isa: Isa,
        /// `k` needed.
        k: usize,
        /// `n` needed.
        n: usize,
        /// ISA of the run.
        isa: Isa,
    },
}

/// `C = epilogue(A·B)` for row-major `A` (`m×k`, leading dimension `lda`), `B` (`k×n`, `ldb`)
/// and `C` (`m×n`, `ldc`), on one thread with the CPU's widest kernels.
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    epilogue: &Epilogue<'_>,
) -> Result<(), GemmError> {
    Gemm::new().run(
        m,
        n,
        k,
        MatRef::row_major(a, lda),
        MatRef::row_major(b, ldb),
        c,
        ldc,
        epilogue,
    )
}

/// [`sgemm`] on `threads` threads, each computing an equal band of whole tiles of `C`.
pub fn sgemm_parallel(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    epilogue: &Epilogue<'_>,
    threads: usize,
) -> Result<(), GemmError> {
    Gemm::new().threads(threads).run(
        m,
        n,
        k,
        MatRef::row_major(a, lda),
        MatRef::row_major(b, ldb),
        c,
        ldc,
        epilogue,
    )
}

/// [`sgemm`] with a `B` packed ahead of time by [`PackedB::new`] (on the widest kernels, one
/// thread).
pub fn sgemm_packed(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epilogue: &Epilogue<'_>,
) -> Result<(), GemmError> {
    Gemm::with_isa(b.isa)?.run_packed(m, MatRef::row_major(a, lda), b, c, ldc, epilogue)
}

/// A `k×n` matrix `B` packed into the panels one ISA's microkernels read (blocks of `KC` rows,
/// each a run of `NR`-column panels), for reuse across calls (a constant weight, packed at compile time). Build it with [`PackedB::new`] or
/// [`Gemm::pack_b`]; it can only be used with kernels of the ISA it was packed for.
#[derive(Clone, Debug)]
pub struct PackedB {
    isa: Isa,
    k: usize,
    n: usize,
    data: AlignedBuf,
}

impl PackedB {
    /// Packs the row-major `k×n` matrix `b` (leading dimension `ldb`) for the CPU's widest
    /// kernels.
    pub fn new(k: usize, n: usize, b: &[f32], ldb: usize) -> Result<PackedB, GemmError> {
        Gemm::new().pack_b(k, n, MatRef::row_major(b, ldb))
    }

    /// Rows of `B` (the contraction length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of `B`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The ISA whose kernels this packing is laid out for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
}

/// A GEMM configuration: which kernels and how many threads. Cheap to build and copy.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    isa: Isa,
    threads: usize,
}

impl Default for Gemm {
    fn default() -> Self {
        Self::new()
    }
}

impl Gemm {
    /// The CPU's widest kernels, one thread.
    pub fn new() -> Self {
        Gemm {
            isa: Isa::detect(),
            threads: 1,
        }
    }

    /// Forces the kernels of one ISA (for tests and benchmarks); fails if the CPU lacks it.
    pub fn with_isa(isa: Isa) -> Result<Self, GemmError> {
        if !isa.is_supported() {
            return Err(GemmError::Unsupported(isa));
        }
        Ok(Gemm { isa, threads: 1 })
    }

    /// Uses up to `threads` threads (0 counts as 1). Products too small to share run on one.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The ISA of the kernels.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Packs the `k×n` matrix `b` for [`Gemm::run_packed`] with this configuration's ISA.
    pub fn pack_b(&self, k: usize, n: usize, b: MatRef<'_>) -> Result<PackedB, GemmError> {
        check_ref("B", &b, k, n)?;
        let spec = Spec::of(self.isa);
        let panels = n.div_ceil(spec.nr);
        let mut data = AlignedBuf::new(panels * spec.nr * k);
        // Block by block of KC rows, exactly as `block_loops` would pack them, so that the
        // panels of one block are contiguous (panels a whole `k` apart would all map to the
        // same L2 sets when `k·NR·4` is a multiple of the L2 way size).
        for (kb, block) in data
            .as_mut_slice()
            .chunks_mut((spec.kc * panels * spec.nr).max(1))
            .enumerate()
        {
            let pc = kb * spec.kc;
            pack::pack_b(block, &b, pc, spec.kc.min(k - pc), 0, n, spec.nr);
        }
        Ok(PackedB {
            isa: self.isa,
            k,
            n,
            data,
        })
    }

    /// `C (m×n, row-major, leading dimension ldc) = epilogue(A (m×k) · B (k×n))`.
    pub fn run(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: MatRef<'_>,
        b: MatRef<'_>,
        c: &mut [f32],
        ldc: usize,
        epilogue: &Epilogue<'_>,
    ) -> Result<(), GemmError> {
        check_ref("A", &a, m, k)?;
        check_ref("B", &b, k, n)?;
        check_out(m, n, c, ldc, epilogue)?;
        if !self.gemv(m, n, k, &a, &b, c, ldc, epilogue) {
            self.drive(m, n, k, &a, BSource::Strided(b), c, ldc, epilogue);
        }
        Ok(())
    }

    /// The matrix-vector products that the blocked loops would run badly: one row of `C` with
    /// a `B` whose columns are contiguous (packing `B` would copy it to use it once), and one
    /// column of `C` with a row-major `A` (a tile would fill one of its `NR` columns). Both are
    /// dot products of a vector with contiguous rows of a matrix `W` ([`gemv::dots`]); the
    /// epilogue is applied per element, in the same order of operations as the tiles'.
    /// Returns `false` (having done nothing) for any other product.
    #[allow(clippy::too_many_arguments)]
    fn gemv(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &MatRef<'_>,
        b: &MatRef<'_>,
        c: &mut [f32],
        ldc: usize,
        ep: &Epilogue<'_>,
    ) -> bool {
        // (outputs, W, its row stride, x, its stride, whether outputs run down a column of C)
        let (len, w, ldw, xd, xs, down) = if k == 0 || m == 0 || n == 0 {
            return false;
        } else if row_dots(m, n, (b.rs, b.cs)) {
            (n, b.data, b.cs, a.data, a.cs, false)
        } else if col_dots(n, a.cs) {
            (m, a.data, a.rs, b.data, b.rs, true)
        } else {
            return false;
        };
        let gathered: Vec<f32>;
        let x = if xs == 1 {
            &xd[..k]
        } else {
            gathered = (0..k).map(|p| xd[p * xs]).collect();
            &gathered
        };
        let mut dots = vec![0.0f32; len];
        let threads = if len * k < GEMV_MIN_THREADED {
            1
        } else {
            self.threads.min(len)
        };
        if threads == 1 {
            gemv::dots(self.isa, x, w, ldw, &mut dots);
        } else {
            let per = len.div_ceil(threads);
            let chunks: Vec<std::sync::Mutex<&mut [f32]>> =
                dots.chunks_mut(per).map(std::sync::Mutex::new).collect();
            super::parallel_for(chunks.len(), &|t| {
                let w = &w[t * per * ldw..];
                let mut chunk = chunks[t].lock().unwrap_or_else(|e| e.into_inner());
                gemv::dots(self.isa, x, w, ldw, &mut chunk);
            });
        }
        for (j, &dot) in dots.iter().enumerate() {
            let (row, col) = if down { (j, 0) } else { (0, j) };
            let ci = row * ldc + col;
            let mut v = dot;
            if ep.alpha != 1.0 {
                v *= ep.alpha;
            }
            if ep.beta != 0.0 {
                let old = c[ci];
                v = if ep.beta == 1.0 {
                    v + old
                } else {
                    ep.beta.mul_add(old, v)
                };
            }
            match ep.bias {
                Bias::None => {}
                Bias::Scalar(s) => {
                    if s != 0.0 {
                        v += s;
                    }
                }
                Bias::PerRow(r) => v += r[row],
                Bias::PerCol(cb) => v += cb[col],
            }
            if let Some(r) = &ep.residual {
                v += r.data[row * r.ld + col];
            }
            c[ci] = ep.activation.apply(v);
        }
        if let Some(h) = ep.tile_hook {
            (h.0)(0, m, 0, n);
        }
        true
    }

    /// `C (m×n, row-major, leading dimension ldc) = epilogue(A·B)` computed as
    /// `Cᵀ = Bᵀ·Aᵀ` with `bt = Bᵀ` (`n×k`) and a pre-packed `at = Aᵀ` (`k×m`): the kernels
    /// write `Cᵀ` into a per-thread scratch and each finished block is transposed into `C`
    /// while it is still in L1. `epilogue` is the transposed product's (a bias per row of `C` is
    /// per column here); its tile hook runs on each block once it is in `C`, with `C`'s
    /// coordinates. `β` must be 0 (`C` is never read) and there is no residual. Worth it when
    /// `n` is small and `m` large: the kernels vectorize along the columns of what they compute.
    pub fn run_packed_transposed(
        &self,
        n: usize,
        bt: MatRef<'_>,
        at: &PackedB,
        c: &mut [f32],
        ldc: usize,
        epilogue: &Epilogue<'_>,
    ) -> Result<(), GemmError> {
        let (k, m) = (at.k, at.n);
        if epilogue.beta != 0.0 || epilogue.residual.is_some() {
            return Err(GemmError::Transposed);
        }
        self.check_packed(at)?;
        check_ref("B", &bt, n, k)?;
        check_out(m, n, c, ldc, &Epilogue::new())?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        SCRATCH.with(|s| {
            let mut s = s.try_borrow_mut().map_err(|_| GemmError::Transposed)?;
            if s.len() < n * m {
                s.resize(n * m, 0.0);
            }
            check_out(n, m, &s[..n * m], m, epilogue)?;
            let (src, dst) = (CPtr(s.as_mut_ptr()), CPtr(c.as_mut_ptr()));
            let tail = epilogue.tile_hook;
            let back = move |r0: usize, rows: usize, c0: usize, cols: usize| {
                // SAFETY: the kernels finished rows `r0..r0 + rows`, columns `c0..c0 + cols`
                // of the n×m scratch (row stride m); their transpose is rows `c0..`, columns
                // `r0..` of C, inside `c` by `check_out`. Blocks of different calls never
                // overlap, so no two threads touch the same elements of either buffer.
                unsafe {
                    super::transpose::block(
                        src.ptr().add(r0 * m + c0),
                        m,
                        dst.ptr().add(c0 * ldc + r0),
                        ldc,
                        rows,
                        cols,
                    );
                }
                if let Some(h) = tail {
                    (h.0)(c0, cols, r0, rows);
                }
            };
            let ep = epilogue.tile_hook(TileHook(&back));
            // Threads split `Cᵀ` along its columns (the weight's panels), so each would pack all
            // of `Bᵀ` for itself: pack it once, in parallel, and share it (ResNet-18's last
            // 3×3 convolutions, 49×512×4608, on two threads: 1.58 → 1.37 ms; 1.52 untransposed).
            let pre = (self.threads > 1).then(|| PackedA::new(self, &bt, n, k));
            // SAFETY: the scratch holds n·m elements, an n×m matrix with leading dimension m,
            // that only this call uses; `check_ref` checked `bt`, which `pre` packs whole.
            unsafe { self.drive_raw(n, m, k, &bt, pre.as_ref(), BSource::Packed(at), src, m, &ep) };
            Ok(())
        })
    }

    /// The register tile of this ISA's microkernel, `(rows, columns)`: a product whose `n` is
    /// not a multiple of the columns computes the remainder in a whole tile (but see
    /// [`Gemm::tile_last`]).
    pub fn tile(&self) -> (usize, usize) {
        let s = Spec::of(self.isa);
        (s.mr, s.nr)
    }

    /// The widest last partial column tile that runs a narrower kernel, and so costs only its
    /// own width: one vector (AVX-512 16 columns, AVX2 8), or `nr` where there is no such
    /// kernel (portable).
    pub fn tile_last(&self) -> usize {
        Spec::of(self.isa).nr_last
    }

    /// A packed operand made for another ISA's panels is refused.
    fn check_packed(&self, b: &PackedB) -> Result<(), GemmError> {
        if b.isa != self.isa {
            return Err(GemmError::PackedMismatch {
                packed_k: b.k,
                packed_n: b.n,
                packed_isa: b.isa,
                k: b.k,
                n: b.n,
                isa: self.isa,
            });
        }
        Ok(())
    }

    /// Like [`Gemm::run`] with a pre-packed `B` (its `k` and `n` are the product's).
    pub fn run_packed(
        &self,
        m: usize,
        a: MatRef<'_>,
        b: &PackedB,
        c: &mut [f32],
        ldc: usize,
        epilogue: &Epilogue<'_>,
    ) -> Result<(), GemmError> {
        let (k, n) = (b.k, b.n);
        self.check_packed(b)?;
        check_ref("A", &a, m, k)?;
        check_out(m, n, c, ldc, epilogue)?;
        self.drive(m, n, k, &a, BSource::Packed(b), c, ldc, epilogue);
        Ok(())
    }

    /// Splits `C` into bands of whole tiles, one per thread, and runs the blocked loops on each.
    fn drive(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &MatRef<'_>,
        b: BSource<'_>,
        c: &mut [f32],
        ldc: usize,
        ep: &Epilogue<'_>,
    ) {
        // SAFETY: the callers checked `c` against m×n with `ldc` (`check_out`) and the operands.
        unsafe { self.drive_raw(m, n, k, a, None, b, CPtr(c.as_mut_ptr()), ldc, ep) }
    }

    /// [`Gemm::drive`] on a raw `C`.
    ///
    /// # Safety
    ///
    /// `c` points at an m×n matrix with leading dimension `ldc` that nothing else accesses
    /// during the call but the epilogue's tile hook (on blocks the kernels finished), and the
    /// operands and epilogue were checked for the product.
    #[allow(clippy::too_many_arguments)]
    unsafe fn drive_raw(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &MatRef<'_>,
        pre_a: Option<&PackedA>,
        b: BSource<'_>,
        cp: CPtr,
        ldc: usize,
        ep: &Epilogue<'_>,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        let spec = Spec::of(self.isa);
        let (mt, nt) = (m.div_ceil(spec.mr), n.div_ceil(spec.nr));
        // Below about a million multiply-adds a thread costs more than it saves.
        let work = m.saturating_mul(n).saturating_mul(k.max(1));
        let threads = if work < 1 << 20 {
            1
        } else {
            self.threads.min(mt.max(nt))
        };
        // Splitting M makes every thread pack all of a `B` that is packed per call; splitting N
        // would make every thread pack all of `A`, but a row-major `A` is read in place, so
        // then N is the split that copies nothing twice (if it gives each thread a tile).
        let split_m = if matches!(b, BSource::Strided(_)) && a.cs == 1 && a.rs > 0 {
            nt < threads && mt > nt
        } else {
            mt >= nt
        };
        let band = |t: usize, tiles: usize| (tiles * t / threads, tiles * (t + 1) / threads);
        let run_band = |t: usize| {
            let (rows, cols) = if threads == 1 {
                ((0, m), (0, n))
            } else if split_m {
                let (t0, t1) = band(t, mt);
                ((t0 * spec.mr, (t1 * spec.mr).min(m)), (0, n))
            } else {
                let (t0, t1) = band(t, nt);
                ((0, m), (t0 * spec.nr, (t1 * spec.nr).min(n)))
            };
            // SAFETY: `check_out` proved that every element of the m×n `C` with stride `ldc`
            // lies in `c`, and the bands of different threads are disjoint sets of whole
            // tiles, so no two threads write the same element.
            unsafe { block_loops(spec, rows, cols, k, (a, pre_a), &b, cp, ldc, ep) };
        };
        if threads == 1 {
            run_band(0);
        } else {
            super::parallel_for(threads, &run_band);
        }
    }
}

/// Whether [`Gemm::run`] computes a non-empty `m×n` product, `A` with column stride `a_cs`
/// and `B` with strides `b`, as the dot products of its matrix-vector path instead of tiles.
pub fn dot_products(m: usize, n: usize, a_cs: usize, b: (usize, usize)) -> bool {
    row_dots(m, n, b) || col_dots(n, a_cs)
}

/// One row of `C` from a `B` with contiguous columns: dots with the rows of `Bᵀ`.
fn row_dots(m: usize, n: usize, (b_rs, b_cs): (usize, usize)) -> bool {
    m == 1 && b_rs == 1 && (b_cs != 1 || n == 1)
}

/// One column of `C` from a row-major `A`: dots with the rows of `A`.
fn col_dots(n: usize, a_cs: usize) -> bool {
    n == 1 && a_cs == 1
}

/// The geometry and microkernel of one ISA.
#[derive(Debug)]
struct Spec {
    /// Rows of the register tile.
    mr: usize,
    /// Columns of the register tile.
    nr: usize,
    /// A last tile of at most this many columns runs a narrower kernel (as many columns as
    /// `nr` when there is none): what its columns cost.
    nr_last: usize,
    /// Depth of a cache block: an `MR×KC` panel of packed `A` stays in L1.
    kc: usize,
    /// Rows of a packed block of `A` (a multiple of `mr`).
    mc: usize,
    /// Columns of a packed block of `B` (a multiple of `nr`): `KC×NC` stays in L2.
    nc: usize,
    /// The microkernel.
    tile: unsafe fn(&Tile),
}

impl Spec {
    fn of(isa: Isa) -> &'static Spec {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => &avx512::SPEC,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &avx2::SPEC,
            // Non-x86 targets never pass `Gemm::with_isa` with an x86 level.
            _ => &portable::SPEC,
        }
    }
}

/// One microkernel call: `C[rows×cols] = β·C + A_panel·B_panel`, plus the epilogue if given.
///
/// `a` is an `MR×kc` packed panel (stride `MR` per step of k) when `lda == 0`, else the first
/// element of `rows` rows of a row-major `A` read in place (row stride `lda`, k stride 1); `b`
/// is a `kc×NR` panel, packed (`ldb = NR`) or a full-width slice of a row-major `B` read in
/// place (`ldb` its row stride); `rows ≤ MR` and `cols ≤ NR`; `c` points at the tile's first
/// element.
#[derive(Debug)]
struct Tile {
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    /// Scale of the product.
    alpha: f32,
    /// 0 never reads `C`; 1 adds to it.
    beta: f32,
    /// Present on the last `KC` block only.
    ep: Option<TileEp>,
}

/// The epilogue of one tile; null pointers mean "absent". Pointers are already offset to the
/// tile's first row and column.
#[derive(Clone, Copy, Debug)]
struct TileEp {
    scalar: f32,
    row_bias: *const f32,
    col_bias: *const f32,
    res: *const f32,
    ldr: usize,
    act: Activation,
}

/// All of an `m×k` `A` in the microkernels' panels, packed once and shared by the threads: for
/// each `KC` block of k (at `pc·m̄`, `m̄` = `m` rounded up to `MR`), the `MR`-row panels of every
/// row, `kc·MR` apart.
struct PackedA {
    buf: AlignedBuf,
    /// `m` rounded up to a multiple of `MR`.
    rows: usize,
    mr: usize,
}

impl PackedA {
    /// Packs `a` (checked for `m×k`) on the gemm's threads, each taking whole panels.
    fn new(gemm: &Gemm, a: &MatRef<'_>, m: usize, k: usize) -> PackedA {
        let spec = Spec::of(gemm.isa);
        let (mr, rows) = (spec.mr, m.next_multiple_of(spec.mr));
        let mut buf = AlignedBuf::new(rows * k);
        let panels = rows / mr;
        let threads = gemm.threads.clamp(1, panels.max(1));
        let dst = CPtr(buf.as_mut_slice().as_mut_ptr().cast());
        let len = rows * k;
        let pack = |t: usize| {
            let (q0, q1) = (panels * t / threads, panels * (t + 1) / threads);
            if q0 == q1 {
                return;
            }
            let mut pc = 0;
            while pc < k {
                let kc = spec.kc.min(k - pc);
                let (i0, mc) = (q0 * mr, (q1 * mr).min(m) - q0 * mr);
                let at = pc * rows + q0 * kc * mr;
                // SAFETY: panels `q0..q1` of this `KC` block are `(q1 − q0)·kc·MR` elements
                // from `at`, inside the `rows·k` buffer, and no other thread's panels overlap.
                let block = unsafe {
                    std::slice::from_raw_parts_mut(
                        dst.ptr().add(at).cast::<std::mem::MaybeUninit<f32>>(),
                        ((q1 - q0) * kc * mr).min(len - at),
                    )
                };
                pack::pack_a(block, a, i0, mc, pc, kc, mr);
                pc += kc;
            }
        };
        if threads == 1 {
            pack(0);
        } else {
            super::parallel_for(threads, &pack);
        }
        PackedA { buf, rows, mr }
    }

    /// The panel holding row `i` in the `KC` block that starts at `pc` (`kc` deep).
    fn panel(&self, pc: usize, kc: usize, i: usize) -> *const f32 {
        self.buf
            .as_ptr()
            .wrapping_add(pc * self.rows + (i / self.mr) * kc * self.mr)
    }
}

thread_local! {
    /// The transposed product's `Cᵀ` ([`Gemm::run_packed_transposed`]), kept per thread so
    /// that a model step does not map and fault in fresh pages on every call.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A raw `C` pointer that threads share; each writes only its own band.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: the pointer is only dereferenced by `block_loops` on bands of `C` that no other thread
// touches (see `Gemm::drive`), and `thread::scope` ends every use before the borrow of `C` ends.
unsafe impl Send for CPtr {}
// SAFETY: as above; sharing the pointer value itself is harmless.
unsafe impl Sync for CPtr {}

impl CPtr {
    /// The pointer (a method, so that closures capture the whole `Send + Sync` wrapper).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Where the microkernels find one `KC×NC` block of `B`.
#[derive(Clone, Copy)]
enum BBlock {
    /// Packed panels, `stride` apart.
    Packed { base: *const f32, stride: usize },
    /// In place (row stride `ld`) for the first `full` columns; the rest packed at `tail`.
    Direct {
        base: *const f32,
        ld: usize,
        tail: *const f32,
        full: usize,
    },
}

/// Bands of at most this many rows read a row-major `B` in place instead of packing it...
const DIRECT_B_MAX_ROWS: usize = 64;
/// ...and bands of more than this many rows do so only when `B` is at most
/// [`DIRECT_B_SHALLOW_K`] deep (see `block_loops`).
const DIRECT_B_ALWAYS_ROWS: usize = 32;
const DIRECT_B_SHALLOW_K: usize = 64;

/// Below this many multiply-adds a matrix-vector product stays on one thread. The product is
/// memory-bound and two cores stream `W` faster than one, while a waiting pool thread starts
/// within a microsecond or two (measured below).
const GEMV_MIN_THREADED: usize = 1 << 16;

enum BSource<'a> {
    Strided(MatRef<'a>),
    Packed(&'a PackedB),
}

/// The GotoBLAS loops over one band `rows × cols` of `C`: `jc` (NC) → `pc` (KC, pack B) →
/// `ic` (MC, pack A) → `ir` (MR) → `jr` (NR) → microkernel.
///
/// # Safety
///
/// `c` must point at an `m×n` matrix with leading dimension `ldc` containing the band, shapes
/// and strides of `a`, `b` and `ep` must have been checked for the whole product, and no other
/// thread may access the band.
unsafe fn block_loops(
    spec: &Spec,
    (m0, m1): (usize, usize),
    (n0, n1): (usize, usize),
    k: usize,
    (a, pre_a): (&MatRef<'_>, Option<&PackedA>),
    b: &BSource<'_>,
    c: CPtr,
    ldc: usize,
    ep: &Epilogue<'_>,
) {
    let (mr, nr) = (spec.mr, spec.nr);
    let kc_max = k.clamp(1, spec.kc);
    let mc_max = spec.mc.min((m1 - m0).next_multiple_of(mr));
    let nc_max = spec.nc.min((n1 - n0).next_multiple_of(nr));
    // A row-major A is read in place: each row's KC-run is contiguous, and the MR rows a tile
    // reads stay in L1 across the NR panels, so packing would only add a copy (measured: the
    // copy costs a third of the time of 3136×64×64, and a few percent at 512³).
    let direct_a = pre_a.is_none() && a.cs == 1 && a.rs > 0;
    let own_a = !direct_a && pre_a.is_none();
    let mut abuf = AlignedBuf::new(if own_a { mc_max * kc_max } else { 0 });
    // With few rows of tiles, each B panel is used only a few times: reading a row-major `B`
    // in place beats copying it first (at m = 1 the copy is as much work as the product;
    // measured on Zen 5 at n = k = 768: 1.8× at m = 1, 2× at m = 8, 1.2× at m = 64, even at
    // m = 128, but worse at m = 128 when rows of B are 4 KiB apart).
    // Past 32 rows a `B` deeper than 64 pays more for the strided reads (a 64-row band reads
    // each panel six times, from rows that may lie a page or more apart) than for the copy
    // (Zen 4, one thread, in place → packed: 64×12544×147, ResNet's im2col stem, 62 → 82
    // GFLOP/s; 49×3072×768 49 → 80; but 32×5000×256 109 → 91 and 32×12544×16 72 → 67, which
    // stay in place).
    let rows = m1 - m0;
    let direct_b = matches!(b, BSource::Strided(bm) if bm.cs == 1)
        && rows <= DIRECT_B_MAX_ROWS
        && (rows <= DIRECT_B_ALWAYS_ROWS || k <= DIRECT_B_SHALLOW_K);
    let mut bbuf = match b {
        BSource::Strided(_) if direct_b => AlignedBuf::new(nr * kc_max),
        BSource::Strided(_) => AlignedBuf::new(nc_max * kc_max),
        BSource::Packed(_) => AlignedBuf::new(0),
    };
    let (scalar, row_bias, col_bias) = match ep.bias {
        Bias::None => (0.0, None, None),
        Bias::Scalar(s) => (s, None, None),
        Bias::PerRow(v) => (0.0, Some(v.as_ptr()), None),
        Bias::PerCol(v) => (0.0, None, Some(v.as_ptr())),
    };
    let kblocks = k.div_ceil(spec.kc).max(1);
    let mut jc = n0;
    while jc < n1 {
        let nc = nc_max.min(n1 - jc);
        for kb in 0..kblocks {
            let pc = kb * spec.kc;
            let kc = spec.kc.min(k - pc);
            let bblock = match b {
                BSource::Strided(bm) if direct_b => {
                    // Only the last, partial panel is packed (zero-padded to NR columns).
                    let full = nc / nr * nr;
                    if full < nc {
                        pack::pack_b(bbuf.as_mut_slice(), bm, pc, kc, jc + full, nc - full, nr);
                    }
                    BBlock::Direct {
                        // SAFETY: row `pc`, column `jc` is inside the checked `B` when kc > 0;
                        // `wrapping_add` keeps the k = 0 case (never read) defined.
                        base: bm.data.as_ptr().wrapping_add(pc * bm.rs + jc),
                        ld: bm.rs,
                        tail: bbuf.as_ptr(),
                        full,
                    }
                }
                BSource::Strided(bm) => {
                    pack::pack_b(bbuf.as_mut_slice(), bm, pc, kc, jc, nc, nr);
                    BBlock::Packed {
                        base: bbuf.as_ptr(),
                        stride: kc * nr,
                    }
                }
                // SAFETY: `jc` is a multiple of `nr` (bands and NC blocks are whole tiles), so
                // panel `jc / nr` of the block of rows `pc..pc + kc` lies inside the packed
                // data, which holds `n.div_ceil(nr)` panels per block (see `Gemm::pack_b`).
                BSource::Packed(p) => BBlock::Packed {
                    base: unsafe {
                        p.data
                            .as_ptr()
                            .add(pc * p.n.div_ceil(nr) * nr + (jc / nr) * kc * nr)
                    },
                    stride: kc * nr,
                },
            };
            let last = kb + 1 == kblocks;
            let beta = if kb == 0 { ep.beta } else { 1.0 };
            let mut ic = m0;
            while ic < m1 {
                let mc = mc_max.min(m1 - ic);
                if own_a {
                    pack::pack_a(abuf.as_mut_slice(), a, ic, mc, pc, kc, mr);
                }
                for ir in (0..mc).step_by(mr) {
                    let i = ic + ir;
                    for jr in (0..nc).step_by(nr) {
                        let j = jc + jr;
                        let (bp, ldb) = match bblock {
                            BBlock::Packed { base, stride } => {
                                (base.wrapping_add((jr / nr) * stride), nr)
                            }
                            BBlock::Direct {
                                base,
                                ld,
                                tail,
                                full,
                            } => {
                                if jr < full {
                                    (base.wrapping_add(jr), ld)
                                } else {
                                    (tail, nr)
                                }
                            }
                        };
                        // SAFETY: all offsets stay inside the checked operands: `i < m`,
                        // `j < n`, the panels were packed for these blocks, and the bias and
                        // residual were checked to cover m×n.
                        unsafe {
                            let tep = last.then(|| TileEp {
                                scalar,
                                row_bias: row_bias.map_or(std::ptr::null(), |p| p.add(i)),
                                col_bias: col_bias.map_or(std::ptr::null(), |p| p.add(j)),
                                res: ep.residual.as_ref().map_or(std::ptr::null(), |r| {
                                    r.data.as_ptr().add(i * r.ld + j)
                                }),
                                ldr: ep.residual.as_ref().map_or(0, |r| r.ld),
                                act: ep.activation,
                            });
                            let tile = Tile {
                                kc,
                                a: match pre_a {
                                    _ if direct_a => a.data.as_ptr().add(i * a.rs + pc),
                                    Some(p) => p.panel(pc, kc, i),
                                    None => abuf.as_ptr().add(ir * kc),
                                },
                                lda: if direct_a { a.rs } else { 0 },
                                b: bp,
                                ldb,
                                c: c.0.add(i * ldc + j),
                                ldc,
                                rows: mr.min(m1 - i),
                                cols: nr.min(n1 - j),
                                alpha: ep.alpha,
                                beta,
                                ep: tep,
                            };
                            (spec.tile)(&tile);
                        }
                    }
                    // These rows of the column block are final: run the tail on them.
                    if last && let Some(h) = ep.tile_hook {
                        (h.0)(i, mr.min(m1 - i), jc, nc);
                    }
                }
                ic += mc;
            }
        }
        jc += nc;
    }
}

fn check_ref(
    operand: &'static str,
    x: &MatRef<'_>,
    rows: usize,
    cols: usize,
) -> Result<(), GemmError> {
    let needed = x
        .needed(rows, cols)
        .ok_or(GemmError::Overflow { operand })?;
    if needed > x.data.len() {
        return Err(GemmError::TooShort {
            operand,
            needed,
            len: x.data.len(),
        });
    }
    Ok(())
}

/// Checks `C` and everything the epilogue reads against the `m×n` output.
fn check_out(
    m: usize,
    n: usize,
    c: &[f32],
    ldc: usize,
    ep: &Epilogue<'_>,
) -> Result<(), GemmError> {
    if n > ldc && m > 1 {
        return Err(GemmError::Overlap {
            operand: "C",
            ld: ldc,
            n,
        });
    }
    check_ref("C", &MatRef::row_major(c, ldc), m, n)?;
    if let Some(r) = &ep.residual {
        check_ref("residual", &MatRef::row_major(r.data, r.ld), m, n)?;
    }
    let (bias, needed) = match ep.bias {
        Bias::PerRow(v) => (v, m),
        Bias::PerCol(v) => (v, n),
        Bias::None | Bias::Scalar(_) => return Ok(()),
    };
    if bias.len() < needed {
        return Err(GemmError::TooShort {
            operand: "bias",
            needed,
            len: bias.len(),
        });
    }
    Ok(())
}
