//! mlc's kernel IR: the level between the graph IR and machine code.
//!
//! A [`Program`] is a list of [`Step`]s, each a launch of a [`Kernel`] on program-level
//! buffers. A kernel is a small imperative loop nest over *flat* buffers: every tensor is a
//! contiguous row-major array of elements and every index is an explicit `i64` expression, so
//! a backend never has to know about shapes, broadcasting or strides. Contractions are not
//! spelled as loops but as a [`Stmt::Matmul`], which the CPU backend maps to the runtime's
//! microkernels and the GPU backend to its tensor-core templates: both do far better than
//! generated loops can. A 2-D `f32` depthwise convolution is likewise a [`Stmt::Depthwise`]
//! (the CPU backend calls the runtime's kernel; [`expand_depthwise`] gives its loop form to
//! backends without one), and so is a softmax over contiguous `f32` rows, a [`Stmt::Softmax`]
//! ([`expand_softmax`]).
//!
//! Why this shape: Cranelift and the NVPTX backend both want scalar code with explicit
//! control flow; loops tagged [`LoopKind::Parallel`] become threads (CPU) or the grid (GPU),
//! [`LoopKind::Vector`] loops become SIMD lanes. Everything above (fusion, layout) is decided
//! in the graph IR; everything below (registers, instruction selection) belongs to the
//! backend.
//!
//! Modules: [`kernel`] (the data types), [`print`] (the text form), [`eval`] (a reference
//! evaluator, the oracle for backends), [`lower`] (graph IR → kernel IR), [`verify`].

pub mod concat;
pub mod eval;
pub mod expand;
pub mod fold;
pub mod inplace;
pub mod kernel;
pub mod lower;
pub mod lut;
pub mod print;
#[cfg(test)]
mod testing;
pub mod verify;
pub mod views;

pub use concat::{Placed, place_concat_parts};
pub use eval::{EvalError, eval_kernel, eval_kernel_at, run_program};
pub use expand::{expand_depthwise, expand_softmax, has_depthwise, has_softmax};
pub use fold::fold_constant_steps;
pub use inplace::inplace_pairs;
pub use kernel::*;
pub use lower::{LowerError, lower_graph, lower_graph_unfolded};
pub use lut::{install_tables, tabulate_byte_chains, tabulate_epilogues, tabulate_step};
pub use print::{print_kernel, print_program};
pub use verify::{VerifyError, verify_kernel};
pub use views::alias_slices;
