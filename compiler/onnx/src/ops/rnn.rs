//! Import of ONNX RNN, GRU, LSTM and CausalConvWithState into the `rnn` family.
//!
//! Normalized here: the hidden size (attribute, or R's last dim), the activation list (each
//! op's default functions; one list reused for both directions when a bidirectional layer names
//! only one; names matched case-insensitively; alpha/beta consumed in order by the functions
//! that take them, ONNX Runtime's reading of the spec, with each function's ONNX defaults when
//! the lists run out), `layout` (absent before opset 14, hence 0), and the optional outputs:
//! the IR op always produces Y, Y_h (and Y_c), and the model simply leaves unused ones dead.

use crate::cx::{NodeCx, NodeError, Registry, invalid};
use mlc_ir::ops::RnnOp;
use mlc_ir::ops::rnn::{Activation, Direction, RecurrentAttrs};
use mlc_ir::{Op, ValueId};

pub fn register(r: &mut Registry) {
    r.add("", "RNN", |cx| recurrent(cx, Kind::Rnn));
    r.add("", "GRU", |cx| recurrent(cx, Kind::Gru));
    r.add("", "LSTM", |cx| recurrent(cx, Kind::Lstm));
    r.add("", "CausalConvWithState", causal_conv);
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Rnn,
    Gru,
    Lstm,
}

fn attr_err(name: &str, reason: impl Into<String>) -> NodeError {
    NodeError::Attr {
        name: name.into(),
        reason: reason.into(),
    }
}

fn recurrent(cx: &mut NodeCx, kind: Kind) -> Result<Vec<ValueId>, NodeError> {
    let direction = match cx.attr_str("direction", "forward")?.as_str() {
        "forward" => Direction::Forward,
        "reverse" => Direction::Reverse,
        "bidirectional" => Direction::Bidirectional,
        other => return Err(attr_err("direction", format!("unknown value {other:?}"))),
    };
    let hidden_size = match cx.attr_int_opt("hidden_size")? {
        Some(h) => usize::try_from(h).map_err(|_| attr_err("hidden_size", "negative"))?,
        None => {
            let r = cx.input_type(2)?;
            r.shape
                .last()
                .and_then(|d| d.known())
                .ok_or_else(|| invalid("hidden_size is neither given nor known from R"))?
        }
    };
    let defaults: &[&str] = match kind {
        Kind::Rnn => &["tanh"],
        Kind::Gru => &["sigmoid", "tanh"],
        Kind::Lstm => &["sigmoid", "tanh", "tanh"],
    };
    let slots = defaults.len();
    let dirs = direction.count();
    let mut names: Vec<String> = match cx.attr_strs("activations")? {
        Some(v) if !v.is_empty() => v,
        _ => defaults.iter().map(|s| s.to_string()).collect(),
    };
    if dirs == 2 && names.len() == slots {
        names.extend_from_within(..);
    }
    if names.len() != slots * dirs {
        return Err(attr_err(
            "activations",
            format!("expected {} functions, got {}", slots * dirs, names.len()),
        ));
    }
    let alphas = cx.attr_floats("activation_alpha")?.unwrap_or_default();
    let betas = cx.attr_floats("activation_beta")?.unwrap_or_default();
    let (mut ai, mut bi) = (alphas.into_iter(), betas.into_iter());
    let activations = names
        .iter()
        .map(|name| activation(name, &mut ai, &mut bi))
        .collect::<Result<Vec<_>, _>>()?;
    let layout = cx.attr_int("layout", 0)?;
    if !matches!(layout, 0 | 1) {
        return Err(attr_err("layout", format!("must be 0 or 1, got {layout}")));
    }
    let attrs = RecurrentAttrs {
        hidden_size,
        direction,
        activations,
        clip: cx.attr_float_opt("clip")?,
        batch_major: layout == 1,
    };
    let (op, n_in, n_out) = match kind {
        Kind::Rnn => (RnnOp::Rnn(attrs), 6, 2),
        Kind::Gru => (
            RnnOp::Gru {
                attrs,
                linear_before_reset: cx.attr_int("linear_before_reset", 0)? != 0,
            },
            6,
            2,
        ),
        Kind::Lstm => (
            RnnOp::Lstm {
                attrs,
                input_forget: cx.attr_int("input_forget", 0)? != 0,
            },
            8,
            3,
        ),
    };
    if cx.n_inputs() > n_in {
        return Err(invalid(format!(
            "at most {n_in} inputs, got {}",
            cx.n_inputs()
        )));
    }
    let mut inputs: Vec<Option<ValueId>> = (0..n_in).map(|i| cx.opt_input(i)).collect();
    // Drop trailing absent inputs so the IR node lists only what it has.
    while inputs.last() == Some(&None) {
        inputs.pop();
    }
    cx.emit(Op::Rnn(op), inputs, n_out)
}

/// Resolves one activation name, taking its alpha/beta from the lists where it uses them.
fn activation(
    name: &str,
    alphas: &mut impl Iterator<Item = f32>,
    betas: &mut impl Iterator<Item = f32>,
) -> Result<Activation, NodeError> {
    let mut alpha = |default: f32| alphas.next().unwrap_or(default);
    Ok(match name.to_ascii_lowercase().as_str() {
        "relu" => Activation::Relu,
        "tanh" => Activation::Tanh,
        "sigmoid" => Activation::Sigmoid,
        "softsign" => Activation::Softsign,
        "softplus" => Activation::Softplus,
        "leakyrelu" => Activation::LeakyRelu { alpha: alpha(0.01) },
        "thresholdedrelu" => Activation::ThresholdedRelu { alpha: alpha(1.0) },
        "elu" => Activation::Elu { alpha: alpha(1.0) },
        "affine" => Activation::Affine {
            alpha: alpha(1.0),
            beta: betas.next().unwrap_or(0.0),
        },
        "scaledtanh" => Activation::ScaledTanh {
            alpha: alpha(1.0),
            beta: betas.next().unwrap_or(1.0),
        },
        "hardsigmoid" => Activation::HardSigmoid {
            alpha: alpha(0.2),
            beta: betas.next().unwrap_or(0.5),
        },
        other => {
            return Err(attr_err(
                "activations",
                format!("unknown function {other:?}"),
            ));
        }
    })
}

fn causal_conv(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let silu = match cx.attr_str("activation", "none")?.as_str() {
        "none" => false,
        "silu" | "swish" => true,
        other => return Err(attr_err("activation", format!("unknown value {other:?}"))),
    };
    let inputs = vec![
        Some(cx.input(0)?),
        Some(cx.input(1)?),
        cx.opt_input(2),
        cx.opt_input(3),
    ];
    cx.emit(Op::Rnn(RnnOp::CausalConvWithState { silu }), inputs, 2)
}
