//! Running compiled CPU code: the ABI generated kernels follow ([`abi`]), the helpers they call
//! ([`helpers`], [`matmul`]), the execution plan ([`plan`]) with its static memory plan
//! ([`memplan`]), the executor ([`exec`]) and its thread pool ([`pool`]), and loading artifacts
//! ([`model`], [`native`]).
//!
//! The compiler (`mlc-cpu`) JIT-compiles kernels for `mlc run --engine cpu` and links shared
//! objects into artifacts; both run through the same executor and call the same helpers, so
//! compiled code behaves the same whichever way it was loaded.

pub mod abi;
pub mod exec;
pub mod helpers;
pub mod matmul;
pub mod memplan;
pub mod model;
pub mod native;
pub mod plan;
pub mod pool;

pub use exec::{Executor, RunError, Weights};
pub use model::{CpuModel, ModelError};
