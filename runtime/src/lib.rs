//! mlc's runtime: what a deployed model needs at run time, and nothing of the compiler.
//!
//! Architecture invariant: this crate depends on no compiler crate (`mlc-ir`, `mlc-passes`,
//! `mlc-onnx`) and on none of egg, cranelift-codegen, inkwell or melior, so that it ships small.
//! It talks in raw little-endian bytes plus shapes and its own element-type enum; the compiler
//! side converts. It holds the `.npy` reader/writer, the compute kernels that compiled code
//! calls ([`kernels`]: f32 GEMM), `artifact` (the compiled-model container) and `plan` (the
//! execution plan it carries) and, behind the `cuda` feature, the CUDA runtime (`cuda`: PTX
//! loading, device memory, launches, event timing, and the plan executor).

pub mod artifact;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod kernels;
pub mod npy;
pub mod plan;
#[cfg(test)]
mod testing;

pub use npy::{ElemType, NpyArray, NpyData, NpyError};
