//! The rnn family: recurrent layers (simple RNN, GRU, LSTM) and the stateful causal depthwise
//! convolution used by state-space and linear-attention models.
//!
//! The recurrent ops keep ONNX's operand order and layouts (both `layout` 0 and 1), but every
//! attribute is resolved at import: the hidden size is known, the activation list holds one
//! concrete function (with its alpha/beta) per slot and direction, and the ops always produce
//! all of their outputs (Y, Y_h and, for LSTM, Y_c), whichever the model uses.

use super::{InferCx, InferError};
use crate::DType;
use crate::shape::{Dim, Shape, TensorType};
use serde::{Deserialize, Serialize};

/// Which way a recurrent layer walks the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Forward,
    Reverse,
    /// One forward and one reverse pass with separate weights; outputs stack both.
    Bidirectional,
}

impl Direction {
    /// The size of the `num_directions` axis of weights and outputs.
    pub fn count(self) -> usize {
        match self {
            Direction::Bidirectional => 2,
            _ => 1,
        }
    }
}

/// An activation function of a recurrent cell, with its parameters resolved.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    Tanh,
    Sigmoid,
    /// `alpha * x + beta`.
    Affine {
        alpha: f32,
        beta: f32,
    },
    /// `x` if `x >= 0`, else `alpha * x`.
    LeakyRelu {
        alpha: f32,
    },
    /// `x` if `x > alpha`, else 0.
    ThresholdedRelu {
        alpha: f32,
    },
    /// `alpha * tanh(beta * x)`.
    ScaledTanh {
        alpha: f32,
        beta: f32,
    },
    /// `clamp(alpha * x + beta, 0, 1)`.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x` if `x >= 0`, else `alpha * (exp(x) - 1)`.
    Elu {
        alpha: f32,
    },
    /// `x / (1 + |x|)`.
    Softsign,
    /// `ln(1 + exp(x))`.
    Softplus,
}

impl Activation {
    /// Applies the function (in f64, the interpreter's working precision).
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Affine { alpha, beta } => f64::from(alpha) * x + f64::from(beta),
            Activation::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    f64::from(alpha) * x
                }
            }
            Activation::ThresholdedRelu { alpha } => {
                if x > f64::from(alpha) {
                    x
                } else {
                    0.0
                }
            }
            Activation::ScaledTanh { alpha, beta } => {
                f64::from(alpha) * (f64::from(beta) * x).tanh()
            }
            Activation::HardSigmoid { alpha, beta } => {
                (f64::from(alpha) * x + f64::from(beta)).clamp(0.0, 1.0)
            }
            Activation::Elu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    f64::from(alpha) * x.exp_m1()
                }
            }
            Activation::Softsign => x / (1.0 + x.abs()),
            Activation::Softplus => {
                // ln(1 + e^x) without overflow for large x.
                if x > 0.0 {
                    x + (-x).exp().ln_1p()
                } else {
                    x.exp().ln_1p()
                }
            }
        }
    }
}

/// Attributes shared by the three recurrent layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecurrentAttrs {
    pub hidden_size: usize,
    pub direction: Direction,
    /// The cell's functions, `slots` per direction (RNN: f; GRU: f, g; LSTM: f, g, h), the
    /// forward direction's first.
    pub activations: Vec<Activation>,
    /// Gate pre-activations are clamped to `[-clip, clip]` when set.
    pub clip: Option<f32>,
    /// ONNX `layout = 1`: X is `[batch, seq, input]`, Y `[batch, seq, dirs, hidden]` and the
    /// states `[batch, dirs, hidden]`; otherwise X is `[seq, batch, input]`, Y
    /// `[seq, dirs, batch, hidden]` and the states `[dirs, batch, hidden]`.
    pub batch_major: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RnnOp {
    /// `H = f(X W^T + H R^T + Wb + Rb)`. Inputs: X, W `[dirs, hidden, input]`, R
    /// `[dirs, hidden, hidden]`, B `[dirs, 2 hidden]`?, sequence_lens `[batch]`?, initial_h?.
    /// Outputs: Y, Y_h.
    Rnn(RecurrentAttrs),
    /// Gated recurrent unit, gates z, r, h in that order along W's and R's rows. Inputs: X, W
    /// `[dirs, 3 hidden, input]`, R `[dirs, 3 hidden, hidden]`, B `[dirs, 6 hidden]`?,
    /// sequence_lens?, initial_h?. Outputs: Y, Y_h.
    Gru {
        #[serde(flatten)]
        attrs: RecurrentAttrs,
        /// Apply the reset gate after the recurrent product (`r * (H Rh^T + Rbh)`) instead of
        /// before it (`(r * H) Rh^T + Rbh`).
        linear_before_reset: bool,
    },
    /// Long short-term memory, gates i, o, f, c in that order. Inputs: X, W
    /// `[dirs, 4 hidden, input]`, R `[dirs, 4 hidden, hidden]`, B `[dirs, 8 hidden]`?,
    /// sequence_lens?, initial_h?, initial_c?, P (peepholes i, o, f) `[dirs, 3 hidden]`?.
    /// Outputs: Y, Y_h, Y_c.
    Lstm {
        #[serde(flatten)]
        attrs: RecurrentAttrs,
        /// Couple the input and forget gates: `f = 1 - i`.
        input_forget: bool,
    },
    /// Causal depthwise 1-D convolution over `[batch, channels, length]` continuing from a
    /// carried state. Inputs: input, weight `[channels, 1, k]`, bias `[channels]`?, past_state
    /// `[batch, channels, k - 1]`? (zeros when absent). Outputs: the convolution (optionally
    /// through SiLU), and the last `k - 1` positions of past_state ++ input, the next state.
    CausalConvWithState { silu: bool },
}

impl RnnOp {
    /// The recurrent attributes and the number of activation slots per direction.
    pub fn recurrent(&self) -> Option<(&RecurrentAttrs, usize)> {
        match self {
            RnnOp::Rnn(a) => Some((a, 1)),
            RnnOp::Gru { attrs, .. } => Some((attrs, 2)),
            RnnOp::Lstm { attrs, .. } => Some((attrs, 3)),
            RnnOp::CausalConvWithState { .. } => None,
        }
    }

    /// Gates per cell: the multiple of `hidden_size` in W's and R's rows.
    pub fn gates(&self) -> usize {
        match self {
            RnnOp::Rnn(_) => 1,
            RnnOp::Gru { .. } => 3,
            RnnOp::Lstm { .. } => 4,
            RnnOp::CausalConvWithState { .. } => 0,
        }
    }

    pub fn infer(&self, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        match self.recurrent() {
            Some((a, slots)) => self.infer_recurrent(a, slots, cx),
            None => infer_causal_conv(cx),
        }
    }

    fn infer_recurrent(
        &self,
        a: &RecurrentAttrs,
        slots: usize,
        cx: &InferCx,
    ) -> Result<Vec<TensorType>, InferError> {
        let is_lstm = matches!(self, RnnOp::Lstm { .. });
        cx.arity(3, if is_lstm { 8 } else { 6 })?;
        let dirs = a.direction.count();
        if a.activations.len() != slots * dirs {
            return Err(InferError::Attr {
                name: "activations",
                reason: format!(
                    "expected {} functions, got {}",
                    slots * dirs,
                    a.activations.len()
                ),
            });
        }
        let x = cx.input(0)?;
        float_input(x, 0)?;
        if x.rank() != 3 {
            return Err(InferError::Shape(format!("X must be rank 3, got {x}")));
        }
        let (h, g) = (a.hidden_size, self.gates());
        let i_dim = x.shape[2].clone();
        // Check what is known of the weights against the attributes.
        let expect = |idx: usize, want: &[Option<usize>]| -> Result<(), InferError> {
            let Some(t) = cx.opt_input(idx) else {
                return Ok(());
            };
            if t.dtype != x.dtype {
                return Err(InferError::DType {
                    index: idx,
                    expected: x.dtype.to_string(),
                    found: t.dtype,
                });
            }
            let fits = t.rank() == want.len()
                && t.shape.iter().zip(want).all(|(d, w)| match (d.known(), w) {
                    (Some(d), Some(w)) => d == *w,
                    _ => true,
                });
            if !fits {
                return Err(InferError::Shape(format!(
                    "input {idx} is {t}, expected {want:?}"
                )));
            }
            Ok(())
        };
        cx.input(1)?;
        cx.input(2)?;
        expect(1, &[Some(dirs), Some(g * h), i_dim.known()])?;
        expect(2, &[Some(dirs), Some(g * h), Some(h)])?;
        expect(3, &[Some(dirs), Some(2 * g * h)])?;
        if let Some(s) = cx.opt_input(4)
            && (!matches!(s.dtype, DType::I32 | DType::I64) || s.rank() != 1)
        {
            return Err(InferError::Shape(format!(
                "sequence_lens must be a 1-D i32 tensor, got {s}"
            )));
        }
        let (seq, batch) = if a.batch_major {
            (x.shape[1].clone(), x.shape[0].clone())
        } else {
            (x.shape[0].clone(), x.shape[1].clone())
        };
        let state: Shape = if a.batch_major {
            vec![batch.clone(), Dim::Known(dirs), Dim::Known(h)]
        } else {
            vec![Dim::Known(dirs), batch.clone(), Dim::Known(h)]
        };
        let known: Vec<Option<usize>> = state.iter().map(Dim::known).collect();
        expect(5, &known)?;
        if is_lstm {
            expect(6, &known)?;
            expect(7, &[Some(dirs), Some(3 * h)])?;
        }
        let y: Shape = if a.batch_major {
            vec![batch, seq, Dim::Known(dirs), Dim::Known(h)]
        } else {
            vec![seq, Dim::Known(dirs), batch, Dim::Known(h)]
        };
        let mut out = vec![
            TensorType::new(x.dtype, y),
            TensorType::new(x.dtype, state.clone()),
        ];
        if is_lstm {
            out.push(TensorType::new(x.dtype, state));
        }
        Ok(out)
    }
}

fn float_input(t: &TensorType, index: usize) -> Result<(), InferError> {
    if !t.dtype.is_float() {
        return Err(InferError::DType {
            index,
            expected: "a float type".into(),
            found: t.dtype,
        });
    }
    Ok(())
}

fn infer_causal_conv(cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
    cx.arity(2, 4)?;
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    float_input(x, 0)?;
    if x.rank() != 3 || w.rank() != 3 {
        return Err(InferError::Shape(format!(
            "input and weight must be rank 3, got {x} and {w}"
        )));
    }
    if w.dtype != x.dtype {
        return Err(InferError::DType {
            index: 1,
            expected: x.dtype.to_string(),
            found: w.dtype,
        });
    }
    if matches!(w.shape[1].known(), Some(n) if n != 1) {
        return Err(InferError::Shape(format!(
            "depthwise weight must be [channels, 1, k], got {w}"
        )));
    }
    let state_len = match w.shape[2].known() {
        Some(0) => return Err(InferError::Shape("kernel size must be positive".into())),
        Some(k) => Dim::Known(k - 1),
        None => Dim::Unknown,
    };
    let state = vec![x.shape[0].clone(), x.shape[1].clone(), state_len];
    if let Some(p) = cx.opt_input(3) {
        let fits = p.rank() == 3
            && p.shape.iter().zip(&state).all(|(a, b)| match (a, b) {
                (Dim::Known(a), Dim::Known(b)) => a == b,
                _ => true,
            });
        if !fits {
            return Err(InferError::Shape(format!(
                "past_state is {p}, expected [{},{},{}]",
                state[0], state[1], state[2]
            )));
        }
    }
    Ok(vec![x.clone(), TensorType::new(x.dtype, state)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(direction: Direction, n: usize, batch_major: bool) -> RecurrentAttrs {
        RecurrentAttrs {
            hidden_size: 5,
            direction,
            activations: vec![Activation::Tanh; n],
            clip: None,
            batch_major,
        }
    }

    fn infer(op: &RnnOp, inputs: &[Option<TensorType>]) -> Result<Vec<String>, InferError> {
        let out = op.infer(&InferCx {
            inputs,
            consts: &[],
            regions: &[],
            n_outputs: 2,
        })?;
        Ok(out.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn recurrent_shapes() {
        let x = TensorType::new(
            DType::F32,
            vec![Dim::Sym("s".into()), Dim::Known(3), Dim::Known(2)],
        );
        let w = TensorType::fixed(DType::F32, &[2, 15, 2]);
        let r = TensorType::fixed(DType::F32, &[2, 15, 5]);
        let op = RnnOp::Gru {
            attrs: attrs(Direction::Bidirectional, 4, false),
            linear_before_reset: false,
        };
        let got = infer(&op, &[Some(x.clone()), Some(w.clone()), Some(r.clone())]).unwrap();
        assert_eq!(got, ["f32[s,2,3,5]", "f32[2,3,5]"]);
        let op = RnnOp::Gru {
            attrs: attrs(Direction::Bidirectional, 4, true),
            linear_before_reset: false,
        };
        let got = infer(&op, &[Some(x.clone()), Some(w.clone()), Some(r.clone())]).unwrap();
        // Batch-major: the same X now reads as [batch = s, seq = 3, input].
        assert_eq!(got, ["f32[s,3,2,5]", "f32[s,2,5]"]);
        // Wrong activation count, wrong weight rows.
        let op = RnnOp::Gru {
            attrs: attrs(Direction::Bidirectional, 2, false),
            linear_before_reset: false,
        };
        assert!(infer(&op, &[Some(x.clone()), Some(w.clone()), Some(r.clone())]).is_err());
        let op = RnnOp::Rnn(attrs(Direction::Bidirectional, 2, false));
        assert!(infer(&op, &[Some(x), Some(w), Some(r)]).is_err());
    }

    #[test]
    fn causal_conv_shapes() {
        let x = TensorType::new(
            DType::F16,
            vec![Dim::Sym("b".into()), Dim::Known(4), Dim::Sym("l".into())],
        );
        let w = TensorType::fixed(DType::F16, &[4, 1, 3]);
        let op = RnnOp::CausalConvWithState { silu: true };
        let got = infer(&op, &[Some(x), Some(w)]).unwrap();
        assert_eq!(got, ["f16[b,4,l]", "f16[b,4,2]"]);
    }

    #[test]
    fn names() {
        let op = crate::Op::Rnn(RnnOp::Lstm {
            attrs: attrs(Direction::Forward, 3, false),
            input_forget: false,
        });
        assert_eq!(op.name(), "rnn.lstm");
        let json = serde_json::to_string(&op).unwrap();
        let back: crate::Op = serde_json::from_str(&json).unwrap();
        assert_eq!(back, op);
    }
}
