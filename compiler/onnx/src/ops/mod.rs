//! Import functions, one file per op family (mirrors `mlc_ir::ops`).

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
pub mod train;
pub mod vision;

use crate::cx::Registry;

/// Registers every family's import functions.
pub fn register_all(r: &mut Registry) {
    attn::register(r);
    control::register(r);
    ew::register(r);
    movement::register(r);
    nn::register(r);
    quant::register(r);
    reduce::register(r);
    strings::register(r);
    vision::register(r);
    signal::register(r);
    rnn::register(r);
    train::register(r);
}
