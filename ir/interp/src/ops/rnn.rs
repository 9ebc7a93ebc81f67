//! Kernels of the rnn family: RNN, GRU and LSTM layers, and the stateful causal depthwise
//! convolution.
//!
//! Everything is computed in f64 and rounded once to the element type of X. Each (direction,
//! batch row) pair is an independent recurrence, so the kernels loop over those pairs and walk
//! the row's own sequence length (`sequence_lens`, ONNX Runtime's semantics): a forward pass
//! covers steps `0..len`, a reverse pass `len-1..=0`; Y is zero past `len` and Y_h (Y_c) hold
//! the state after the last step taken (the initial state when `len` is 0).

use crate::{EvalCx, EvalError, invalid};
use mlc_ir::ops::RnnOp;
use mlc_ir::ops::rnn::{Direction, RecurrentAttrs};
use mlc_ir::{DType, Tensor};

pub fn eval(
    op: &RnnOp,
    inputs: &[Option<&Tensor>],
    _cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    match op {
        RnnOp::CausalConvWithState { silu } => causal_conv(inputs, *silu),
        _ => recurrent(op, inputs),
    }
}

fn input<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, EvalError> {
    opt(inputs, i).ok_or_else(|| invalid(format!("input {i} is required")))
}

fn opt<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

/// The elements of an optional input as f64, checked against the expected shape, or
/// zeros of that shape when it is absent.
fn f64_input(
    inputs: &[Option<&Tensor>],
    i: usize,
    shape: &[usize],
    what: &str,
) -> Result<Vec<f64>, EvalError> {
    match opt(inputs, i) {
        Some(t) if t.shape() == shape => Ok(t.to_f64_vec()?),
        Some(t) => Err(invalid(format!(
            "{what} has shape {:?}, expected {shape:?}",
            t.shape()
        ))),
        None => Ok(vec![0.0; shape.iter().product()]),
    }
}

/// Rounds f64 results to the element type of the op.
fn finish(shape: &[usize], data: Vec<f64>, dtype: DType) -> Result<Tensor, EvalError> {
    Ok(Tensor::from_vec(shape, data)?.cast(dtype)?)
}

/// The weights and running state of one direction of one batch row.
struct Cell<'a> {
    op: &'a RnnOp,
    a: &'a RecurrentAttrs,
    /// Activation functions of this direction.
    acts: &'a [mlc_ir::ops::rnn::Activation],
    hidden: usize,
    input: usize,
    /// `[gates * hidden, input]`.
    w: &'a [f64],
    /// `[gates * hidden, hidden]`.
    r: &'a [f64],
    /// `[2 * gates * hidden]`: W's biases then R's.
    b: &'a [f64],
    /// `[3 * hidden]`: LSTM peepholes i, o, f.
    p: &'a [f64],
}

impl Cell<'_> {
    fn clip(&self, v: f64) -> f64 {
        match self.a.clip {
            Some(c) => v.clamp(-f64::from(c), f64::from(c)),
            None => v,
        }
    }

    /// Row `row` of `W x + Wb` and of `R h + Rb`.
    fn pre(&self, row: usize, x: &[f64], h: &[f64]) -> (f64, f64) {
        let (n, g) = (self.hidden, self.op.gates());
        let wx: f64 = self.w[row * self.input..(row + 1) * self.input]
            .iter()
            .zip(x)
            .map(|(w, x)| w * x)
            .sum();
        let rh: f64 = self.r[row * n..(row + 1) * n]
            .iter()
            .zip(h)
            .map(|(r, h)| r * h)
            .sum();
        (wx + self.b[row], rh + self.b[g * n + row])
    }

    /// One step: updates `h` (and `c` for LSTM) from input `x`.
    fn step(&self, x: &[f64], h: &mut [f64], c: &mut [f64]) {
        let n = self.hidden;
        let act = |slot: usize, v: f64| self.acts[slot].apply(self.clip(v));
        match self.op {
            RnnOp::Rnn(_) => {
                let new: Vec<f64> = (0..n)
                    .map(|j| {
                        let (wx, rh) = self.pre(j, x, h);
                        act(0, wx + rh)
                    })
                    .collect();
                h.copy_from_slice(&new);
            }
            RnnOp::Gru {
                linear_before_reset,
                ..
            } => {
                let mut z = vec![0.0; n];
                let mut r = vec![0.0; n];
                for j in 0..n {
                    let (wx, rh) = self.pre(j, x, h);
                    z[j] = act(0, wx + rh);
                    let (wx, rh) = self.pre(n + j, x, h);
                    r[j] = act(0, wx + rh);
                }
                let rh_prod: Vec<f64> = h.iter().zip(&r).map(|(h, r)| h * r).collect();
                let new: Vec<f64> = (0..n)
                    .map(|j| {
                        let row = 2 * n + j;
                        let cand = if *linear_before_reset {
                            let (wx, rh) = self.pre(row, x, h);
                            wx + r[j] * rh
                        } else {
                            let (wx, rh) = self.pre(row, x, &rh_prod);
                            wx + rh
                        };
                        let hh = act(1, cand);
                        (1.0 - z[j]) * hh + z[j] * h[j]
                    })
                    .collect();
                h.copy_from_slice(&new);
            }
            RnnOp::Lstm { input_forget, .. } => {
                let (pi, po, pf) = (&self.p[..n], &self.p[n..2 * n], &self.p[2 * n..]);
                let gate = |k: usize, j: usize| {
                    let (wx, rh) = self.pre(k * n + j, x, h);
                    wx + rh
                };
                let mut new_h = vec![0.0; n];
                for j in 0..n {
                    let i = act(0, gate(0, j) + pi[j] * c[j]);
                    let f = if *input_forget {
                        1.0 - i
                    } else {
                        act(0, gate(2, j) + pf[j] * c[j])
                    };
                    let cand = act(1, gate(3, j));
                    let cell = f * c[j] + i * cand;
                    let o = act(0, gate(1, j) + po[j] * cell);
                    new_h[j] = o * self.acts[2].apply(cell);
                    c[j] = cell;
                }
                h.copy_from_slice(&new_h);
            }
            RnnOp::CausalConvWithState { .. } => unreachable!("not a recurrent op"),
        }
    }
}

fn recurrent(op: &RnnOp, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>, EvalError> {
    let (a, slots) = op
        .recurrent()
        .ok_or_else(|| invalid("not a recurrent op"))?;
    let is_lstm = matches!(op, RnnOp::Lstm { .. });
    let xt = input(inputs, 0)?;
    let dtype = xt.dtype();
    let &[d0, d1, ni] = xt.shape() else {
        return Err(invalid(format!("X must be rank 3, got {:?}", xt.shape())));
    };
    let (seq, batch) = if a.batch_major { (d1, d0) } else { (d0, d1) };
    let (n, g, dirs) = (a.hidden_size, op.gates(), a.direction.count());
    if a.activations.len() != slots * dirs {
        return Err(invalid("wrong number of activation functions"));
    }
    input(inputs, 1)?;
    input(inputs, 2)?;
    let x = xt.to_f64_vec()?;
    let w = f64_input(inputs, 1, &[dirs, g * n, ni], "W")?;
    let r = f64_input(inputs, 2, &[dirs, g * n, n], "R")?;
    let b = f64_input(inputs, 3, &[dirs, 2 * g * n], "B")?;
    let lens: Vec<usize> = match opt(inputs, 4) {
        Some(t) => {
            let v = t.to_i64_vec()?;
            if v.len() != batch {
                return Err(invalid(format!(
                    "sequence_lens has {} entries for batch {batch}",
                    v.len()
                )));
            }
            v.iter()
                .map(|&l| {
                    usize::try_from(l)
                        .ok()
                        .filter(|&l| l <= seq)
                        .ok_or_else(|| invalid(format!("sequence length {l} not in 0..={seq}")))
                })
                .collect::<Result<_, _>>()?
        }
        None => vec![seq; batch],
    };
    let state_shape = if a.batch_major {
        [batch, dirs, n]
    } else {
        [dirs, batch, n]
    };
    let h0 = f64_input(inputs, 5, &state_shape, "initial_h")?;
    let (c0, p) = if is_lstm {
        (
            f64_input(inputs, 6, &state_shape, "initial_c")?,
            f64_input(inputs, 7, &[dirs, 3 * n], "P")?,
        )
    } else {
        (vec![0.0; h0.len()], vec![0.0; dirs * 3 * n])
    };
    // Flat offsets of X rows, Y rows and state rows in the op's layout.
    let x_at = |t: usize, bi: usize| {
        if a.batch_major {
            (bi * seq + t) * ni
        } else {
            (t * batch + bi) * ni
        }
    };
    let y_at = |t: usize, d: usize, bi: usize| {
        if a.batch_major {
            ((bi * seq + t) * dirs + d) * n
        } else {
            ((t * dirs + d) * batch + bi) * n
        }
    };
    let s_at = |d: usize, bi: usize| {
        if a.batch_major {
            (bi * dirs + d) * n
        } else {
            (d * batch + bi) * n
        }
    };
    let mut y = vec![0.0; seq * dirs * batch * n];
    let mut yh = vec![0.0; dirs * batch * n];
    let mut yc = vec![0.0; dirs * batch * n];
    for d in 0..dirs {
        let reverse = a.direction == Direction::Reverse || d == 1;
        let cell = Cell {
            op,
            a,
            acts: &a.activations[d * slots..(d + 1) * slots],
            hidden: n,
            input: ni,
            w: &w[d * g * n * ni..(d + 1) * g * n * ni],
            r: &r[d * g * n * n..(d + 1) * g * n * n],
            b: &b[d * 2 * g * n..(d + 1) * 2 * g * n],
            p: &p[d * 3 * n..(d + 1) * 3 * n],
        };
        for (bi, &len) in lens.iter().enumerate() {
            let s = s_at(d, bi);
            let mut h = h0[s..s + n].to_vec();
            let mut c = c0[s..s + n].to_vec();
            for k in 0..len {
                let t = if reverse { len - 1 - k } else { k };
                let xo = x_at(t, bi);
                cell.step(&x[xo..xo + ni], &mut h, &mut c);
                let yo = y_at(t, d, bi);
                y[yo..yo + n].copy_from_slice(&h);
            }
            yh[s..s + n].copy_from_slice(&h);
            yc[s..s + n].copy_from_slice(&c);
        }
    }
    let y_shape = if a.batch_major {
        [batch, seq, dirs, n]
    } else {
        [seq, dirs, batch, n]
    };
    let mut out = vec![
        finish(&y_shape, y, dtype)?,
        finish(&state_shape, yh, dtype)?,
    ];
    if is_lstm {
        out.push(finish(&state_shape, yc, dtype)?);
    }
    Ok(out)
}

fn causal_conv(inputs: &[Option<&Tensor>], silu: bool) -> Result<Vec<Tensor>, EvalError> {
    let xt = input(inputs, 0)?;
    let wt = input(inputs, 1)?;
    let dtype = xt.dtype();
    let &[nb, nc, len] = xt.shape() else {
        return Err(invalid(format!(
            "input must be rank 3, got {:?}",
            xt.shape()
        )));
    };
    let k = match wt.shape() {
        &[c, 1, k] if c == nc && k > 0 => k,
        s => {
            return Err(invalid(format!(
                "weight is {s:?}, expected [{nc}, 1, k] with k > 0"
            )));
        }
    };
    let (x, w) = (xt.to_f64_vec()?, wt.to_f64_vec()?);
    let bias = f64_input(inputs, 2, &[nc], "bias")?;
    let past = f64_input(inputs, 3, &[nb, nc, k - 1], "past_state")?;
    let plen = len + k - 1;
    let mut out = Vec::with_capacity(nb * nc * len);
    let mut state = Vec::with_capacity(nb * nc * (k - 1));
    for bi in 0..nb {
        for ci in 0..nc {
            let row = bi * nc + ci;
            let padded: Vec<f64> = past[row * (k - 1)..(row + 1) * (k - 1)]
                .iter()
                .chain(&x[row * len..(row + 1) * len])
                .copied()
                .collect();
            let taps = &w[ci * k..(ci + 1) * k];
            out.extend((0..len).map(|t| {
                bias[ci]
                    + taps
                        .iter()
                        .zip(&padded[t..t + k])
                        .map(|(w, v)| w * v)
                        .sum::<f64>()
            }));
            state.extend_from_slice(&padded[plen - (k - 1)..]);
        }
    }
    let mut y = finish(&[nb, nc, len], out, dtype)?;
    if silu {
        // The reference rounds the convolution to the element type before the activation.
        let v: Vec<f64> = y
            .to_f64_vec()?
            .into_iter()
            .map(|v| v / (1.0 + (-v).exp()))
            .collect();
        y = finish(&[nb, nc, len], v, dtype)?;
    }
    Ok(vec![y, finish(&[nb, nc, k - 1], state, dtype)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::ops::rnn::Activation;

    fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    fn run(op: &RnnOp, inputs: &[Option<&Tensor>]) -> Vec<Vec<f64>> {
        let cx = EvalCx {
            regions: &[],
            output_types: &[],
        };
        eval(op, inputs, &cx)
            .unwrap()
            .iter()
            .map(|t| t.to_f64_vec().unwrap())
            .collect()
    }

    fn close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    fn attrs(direction: Direction, acts: Vec<Activation>) -> RecurrentAttrs {
        RecurrentAttrs {
            hidden_size: 1,
            direction,
            activations: acts,
            clip: None,
            batch_major: false,
        }
    }

    #[test]
    fn simple_rnn_by_hand() {
        // Hidden size 1, input size 1, three steps of one batch row:
        // h_t = tanh(0.5 x_t + 0.25 h_{t-1} + 0.1).
        let x = t(&[3, 1, 1], vec![1.0, -2.0, 0.5]);
        let w = t(&[1, 1, 1], vec![0.5]);
        let r = t(&[1, 1, 1], vec![0.25]);
        let b = t(&[1, 2], vec![0.1, 0.0]);
        let mut h = 0.0f64;
        let mut want = vec![];
        for xv in [1.0, -2.0, 0.5] {
            h = (0.5 * xv + 0.25 * h + 0.1).tanh();
            want.push(h);
        }
        let op = RnnOp::Rnn(attrs(Direction::Forward, vec![Activation::Tanh]));
        let out = run(&op, &[Some(&x), Some(&w), Some(&r), Some(&b)]);
        close(&out[0], &want);
        close(&out[1], &want[2..]);
        // Reverse with a sequence length of 2: steps 1 then 0, step 2 left zero.
        let lens = Tensor::from_vec(&[1], vec![2i32]).unwrap();
        let op = RnnOp::Rnn(attrs(Direction::Reverse, vec![Activation::Tanh]));
        let out = run(&op, &[Some(&x), Some(&w), Some(&r), Some(&b), Some(&lens)]);
        let h1 = (0.5f64 * -2.0 + 0.1).tanh();
        let h0 = (0.5 + 0.25 * h1 + 0.1).tanh();
        close(&out[0], &[h0, h1, 0.0]);
        close(&out[1], &[h0]);
    }

    #[test]
    fn lstm_one_step() {
        // One step, hidden 1, input 1, W rows i, o, f, c; peepholes on.
        let x = t(&[1, 1, 1], vec![2.0]);
        let w = t(&[1, 4, 1], vec![0.1, 0.2, 0.3, 0.4]);
        let r = t(&[1, 4, 1], vec![0.5, 0.6, 0.7, 0.8]);
        let h0 = t(&[1, 1, 1], vec![0.5]);
        let c0 = t(&[1, 1, 1], vec![-1.0]);
        let p = t(&[1, 3], vec![0.1, 0.2, 0.3]);
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let i = sig(0.2 + 0.25 - 0.1);
        let f = sig(0.6 + 0.35 - 0.3);
        // c0 = -1.
        let c = i * (0.8f64 + 0.4).tanh() - f;
        let o = sig(0.4 + 0.3 + 0.2 * c);
        let h = o * c.tanh();
        let op = RnnOp::Lstm {
            attrs: attrs(
                Direction::Forward,
                vec![Activation::Sigmoid, Activation::Tanh, Activation::Tanh],
            ),
            input_forget: false,
        };
        let out = run(
            &op,
            &[
                Some(&x),
                Some(&w),
                Some(&r),
                None,
                None,
                Some(&h0),
                Some(&c0),
                Some(&p),
            ],
        );
        close(&out[0], &[h]);
        close(&out[1], &[h]);
        close(&out[2], &[c]);
    }

    #[test]
    fn causal_conv() {
        // One row, k = 3, past state [1, 2]: padded = [1, 2, 3, 4].
        let x = t(&[1, 1, 2], vec![3.0, 4.0]);
        let w = t(&[1, 1, 3], vec![1.0, 10.0, 100.0]);
        let past = t(&[1, 1, 2], vec![1.0, 2.0]);
        let bias = t(&[1], vec![0.5]);
        let op = RnnOp::CausalConvWithState { silu: false };
        let out = run(&op, &[Some(&x), Some(&w), Some(&bias), Some(&past)]);
        close(&out[0], &[321.5, 432.5]);
        close(&out[1], &[3.0, 4.0]);
        let out = run(&op, &[Some(&x), Some(&w)]);
        close(&out[0], &[300.0, 430.0]);
        close(&out[1], &[3.0, 4.0]);
    }
}
