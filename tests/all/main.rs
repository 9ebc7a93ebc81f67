//! mlc's integration tests, one binary: each area is a module under `tests/all/`.
//!
//! - `arch`: architecture invariants (which crate may depend on which), from `cargo metadata`.
//! - `cli`: the `mlc` binary on good and bad inputs: clean one-paragraph errors, exit status,
//!   no output file left behind.
//! - `dev_models`: the development models against ONNX Runtime's reference outputs.
//! - `kernel_lowering`: every development model lowers to the kernel IR; the smallest evaluate
//!   at kernel level to ONNX Runtime's outputs.
//! - `imported_ir`: insta snapshots of the IR imported from a few small ONNX models.
//! - `node_manifest`: the ONNX backend node tests listed in `tests/node_manifest.txt`.
//! - `vision_cpu`: the vision ops (and grid_sample, reverse_sequence, tensor_scatter) compiled
//!   for the CPU against the interpreter, on shapes the node tests do not have.
//!
//! Tests that run `mlc` need the binary built first: `cargo build -p mlc-cli` (see
//! `mlc_tests::mlc_bin`).

mod arch;
mod cli;
mod dev_models;
mod gpu_ptx;
mod imported_ir;
mod kernel_lowering;
mod node_manifest;
mod vision_cpu;
