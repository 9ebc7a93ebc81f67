//! mlc's CPU backend: kernel IR → Cranelift IR (CLIF) → machine code.
//!
//! Every [`mlc_kir::Kernel`] becomes one Cranelift function with the C ABI
//! `extern "C" fn(params: *const *mut u8, start: i64, end: i64)` (`mlc_runtime::cpu::abi`): `params[i]` is the base
//! pointer of `ParamId(i)` (and `params[n]`, one past the kernel's parameters, points to a
//! control block of two `i64`s: a status word that the kernel sets to non-zero when a
//! data-dependent index is out of bounds, then the number of threads a library call such as
//! matmul may use); `[start, end)` is the part of the kernel's outermost parallel loop that this call
//! runs, so the executor can split it across threads. A kernel whose body is not one parallel
//! loop ignores the range and is called once.
//!
//! - [`clif`] translates a kernel statement by statement (loops become blocks, variables
//!   become `cranelift_frontend::Variable`s); [`simd`] turns eligible innermost `f32` loops
//!   into 128-bit vector loops with a scalar remainder.
//! - [`module`] drives Cranelift: the JIT (host ISA from `cranelift-native`) and relocatable
//!   objects (an explicit x86-64 baseline ISA: SSE4.2, AVX and FMA), and prints CLIF.
//! - Generated code calls helpers (libm, half-float conversions, the contraction library
//!   behind `Stmt::Matmul`) that live in `mlc_runtime::cpu`, through a table of code addresses
//!   (`mlc_runtime::cpu::abi`), so JIT'd code and artifacts loaded by the runtime run the same
//!   helpers.
//! - [`exec`] runs a whole [`mlc_kir::Program`]: buffers, steps in order, threads.
//! - [`requant`] holds the kernel-IR passes run before code generation (JIT and artifacts
//!   alike) that fold the elementwise kernel after a contraction into it: a pure
//!   requantization into the integer kernels' epilogue, any other pointwise tail as a
//!   Cranelift *tile function* the runtime's GEMM calls on each finished block of C.
//!
//! ```
//! use mlc_ir::{Tensor, parse_graph};
//!
//! let g = parse_graph(r#"graph (%0: f32[2,3] "x", %1: f32[3] "b") -> (%2 "y") {
//!   %2 = ew.add(%0, %1) : f32[2,3]
//! }"#)?;
//! let program = mlc_kir::lower_graph(&g)?;
//! let compiled = mlc_cpu::CompiledProgram::new(&program)?;
//! let x = Tensor::from_vec(&[2, 3], vec![1f32, 2., 3., 4., 5., 6.])?;
//! let b = Tensor::from_vec(&[3], vec![10f32, 20., 30.])?;
//! let y = compiled.run(&[x, b], 2)?;
//! assert_eq!(y[0].to_f64_vec()?, [11., 22., 33., 14., 25., 36.]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This is the only crate that links Cranelift. Unsafe code lives in one module, `ffi`, which
//! calls the JIT'd function pointers and receives raw pointers from them.

pub mod artifact;
pub mod clif;
pub mod exec;
mod ffi;
pub mod module;
pub mod plan;
pub mod requant;
pub mod simd;

pub use artifact::{compile_artifact, compile_variants};

/// `p` as code generation takes it: with the kernel-IR epilogue fusion of [`requant`], then
/// the byte tables ([`mlc_kir::tabulate_byte_chains`]) and the copy elisions
/// ([`mlc_kir::alias_slices`], [`mlc_kir::place_concat_parts`]) applied when `opts` asks for
/// them (the JIT and artifacts share this), and what each did (`mlc compile --explain`).
pub fn prepare(
    p: &mlc_kir::Program,
    opts: Options,
) -> (std::borrow::Cow<'_, mlc_kir::Program>, Prepared) {
    let mut p = std::borrow::Cow::Borrowed(p);
    let mut done = Prepared::default();
    if opts.fuse_epilogues {
        let (q, fused) = requant::fuse_epilogues(&p);
        p = std::borrow::Cow::Owned(q);
        done.epilogues = fused;
    }
    if opts.tabulate {
        done.tables = mlc_kir::tabulate_byte_chains(p.to_mut());
        done.tables += mlc_kir::tabulate_epilogues(p.to_mut());
    }
    if opts.elide_copies {
        done.views = mlc_kir::alias_slices(p.to_mut());
        done.concat = mlc_kir::place_concat_parts(p.to_mut());
    }
    (p, done)
}

/// What [`prepare`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Prepared {
    pub epilogues: requant::Fused,
    /// Chains computed as byte tables.
    pub tables: usize,
    /// Slices made views of their source.
    pub views: usize,
    pub concat: mlc_kir::Placed,
}

/// [`prepare`]'s program.
pub(crate) fn prepared(
    p: &mlc_kir::Program,
    opts: Options,
) -> std::borrow::Cow<'_, mlc_kir::Program> {
    prepare(p, opts).0
}
pub use exec::{CompiledProgram, RunError};
pub use module::{compile_object, kernel_clif, program_clif};

/// Code-generation options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Vectorize eligible innermost loops with 128-bit SIMD (`f32x4`).
    pub simd: bool,
    /// In vector loops, compute `exp` and `tanh` inline (polynomials within a few ulp of
    /// libm; denormal `exp` results flushed to 0) instead of calling libm once per lane.
    pub inline_math: bool,
    /// Bounds-check every load and store (not only data-dependent ones), reporting an index
    /// out of bounds as a run error: for debugging lowering. Turns vectorization off.
    pub check_bounds: bool,
    /// Fold the elementwise tails of contractions into them before code generation
    /// (`requant::fuse_epilogues`); off, every kernel is compiled as lowering wrote it.
    pub fuse_epilogues: bool,
    /// Elide copies: contiguous slices become views of their source
    /// (`mlc_kir::alias_slices`), and the producers of a concatenation's parts write them into
    /// its output (`mlc_kir::place_concat_parts`).
    pub elide_copies: bool,
    /// Compute functions of one byte (quantized activations) as 256-entry tables
    /// (`mlc_kir::tabulate_byte_chains`).
    pub tabulate: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            simd: true,
            inline_math: true,
            check_bounds: false,
            fuse_epilogues: true,
            elide_copies: true,
            tabulate: true,
        }
    }
}

/// Why a program could not be compiled.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CodegenError {
    /// The kernel uses something this backend does not implement.
    #[error("kernel {kernel}: unsupported by the CPU backend: {what}")]
    Unsupported { kernel: String, what: String },
    /// The program is malformed (a bug in lowering or in this crate).
    #[error("invalid program: {0}")]
    Invalid(String),
    /// Cranelift rejected the generated code or could not set up the target.
    #[error("cranelift: {0}")]
    Cranelift(String),
    /// Linking the shared object of an artifact failed.
    #[error("linking: {0}")]
    Link(String),
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_artifact;
#[cfg(test)]
mod tests_copies;
#[cfg(test)]
mod tests_guard;
#[cfg(test)]
mod tests_qdepthwise;
#[cfg(test)]
mod tests_vectorize;
#[cfg(test)]
mod tests_winograd;
