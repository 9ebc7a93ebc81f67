//! Running compiled CPU code: the ABI generated kernels follow ([`abi`]), the helpers they call
//! ([`helpers`], [`matmul`]).
//!
//! The compiler (`mlc-cpu`) JIT-compiles kernels for the `--engine cpu` path and writes shared
//! objects into artifacts; both call the helpers here, so compiled code behaves the same
//! whichever way it was loaded.

pub mod abi;
pub mod helpers;
pub mod matmul;
