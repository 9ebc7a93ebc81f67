//! Kernels, one file per op family (mirrors `mlc_ir::ops`).

pub mod attn;
pub mod control;
pub mod ew;
pub mod movement;
pub mod nn;
pub mod quant;
pub mod reduce;
pub mod rnn;
pub mod signal;
pub mod strings;
pub mod vision;
