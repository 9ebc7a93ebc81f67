//! Attention ops: scaled dot-product attention (with GQA, masks, KV cache, soft cap and sliding
//! windows), FlexAttention with score/probability modifier regions, linear (recurrent)
//! attention, and rotary position embeddings.
//!
//! Every op accepts the two layouts ONNX uses: 4-D `(batch, heads, seq, head_size)` and 3-D
//! `(batch, seq, heads * head_size)`, where the head counts are attributes.

use super::{InferCx, InferError};
use crate::DType;
use crate::shape::{Dim, Shape, TensorType};
use serde::{Deserialize, Serialize};

/// What `attn.attention`'s optional fourth output holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QkOutput {
    /// `Q·Kᵀ` scaled, before the soft cap.
    Scores,
    /// After the soft cap, before the bias.
    Softcapped,
    /// After the soft cap and the mask/causal bias.
    Biased,
    /// The softmax probabilities (zero rows where every key is masked).
    Probs,
}

/// How `attn.linear_attention` updates its recurrent state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateRule {
    /// `S += k ⊗ v`.
    Linear,
    /// `S = exp(g) * S + k ⊗ v` (needs `decay`).
    Gated,
    /// `S += k ⊗ beta (v - Sᵀk)` (needs `beta`).
    Delta,
    /// Gating then the delta rule (needs `decay` and `beta`).
    GatedDelta,
}

impl UpdateRule {
    pub fn gated(self) -> bool {
        matches!(self, UpdateRule::Gated | UpdateRule::GatedDelta)
    }

    pub fn delta(self) -> bool {
        matches!(self, UpdateRule::Delta | UpdateRule::GatedDelta)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttnOp {
    /// Scaled dot-product attention (ONNX `Attention`, opsets 23-25).
    ///
    /// Inputs: `q, k, v, attn_mask?, past_key?, past_value?, nonpad_kv_seqlen?`. `attn_mask` is
    /// bool (true = attend) or float (added to the scores), broadcastable to
    /// `(batch, q_heads, q_seq, total_seq)`; a shorter last dim is padded with "masked".
    /// Outputs: `y` and, when the node has them, `present_key, present_value` (the caches after
    /// appending `k, v`, always 4-D) and the `qk_output` tensor `(batch, q_heads, q_seq, total_seq)`.
    ///
    /// Scores are `(q·√scale)(k·√scale)ᵀ`, rounded to the input type at every step as ONNX's
    /// reference does. A query row whose bias masks every key yields zeros, not NaN.
    Attention {
        /// Head counts for 3-D inputs; `None` for 4-D inputs (the heads are dim 1).
        q_num_heads: Option<usize>,
        kv_num_heads: Option<usize>,
        /// Defaults to `1/√head_size`.
        scale: Option<f32>,
        is_causal: bool,
        /// `c·tanh(x/c)` on the scores when set.
        softcap: Option<f32>,
        /// The type the softmax runs in (default: the input type).
        softmax_precision: Option<DType>,
        qk_output: QkOutput,
        /// Sliding window: a query at absolute position `p` sees keys in
        /// `[p - left, p + right]`; `None` leaves a side unbounded.
        left_window: Option<usize>,
        right_window: Option<usize>,
    },
    /// Attention with user score/probability modifiers (ONNX preview `FlexAttention`), 4-D only.
    ///
    /// Inputs: `q, k, v`, then the values captured by the score modifier region, then those of
    /// the probability modifier region. Regions, in order: the score modifier (if
    /// `score_captures` is set), the probability modifier (if `prob_captures` is set); each maps
    /// one `(batch, q_heads, q_seq, kv_seq)` tensor in the softmax type to another.
    FlexAttention {
        scale: Option<f32>,
        /// The type scores, softmax and the final matmul run in (default: f32 for 16-bit
        /// inputs, else the input type).
        softmax_precision: Option<DType>,
        /// Number of captured values the score modifier takes; `None` when there is none.
        score_captures: Option<usize>,
        prob_captures: Option<usize>,
    },
    /// Recurrent linear attention (ONNX `LinearAttention`), 3-D `(batch, seq, heads * dim)`.
    ///
    /// Inputs: `query, key, value, past_state?, decay?, beta?`; outputs `output` and
    /// `present_state (batch, kv_heads, d_k, d_v)`. Computed in f32.
    LinearAttention {
        q_num_heads: usize,
        kv_num_heads: usize,
        /// Defaults to `1/√d_k`.
        scale: Option<f32>,
        update_rule: UpdateRule,
    },
    /// Rotary position embedding (ONNX `RotaryEmbedding`).
    ///
    /// Inputs: `x (batch, heads, seq, head)` or `(batch, seq, heads * head)`, `cos, sin` (indexed
    /// by `position_ids` when given: `(max_pos, rot/2)`; else `(batch, seq, rot/2)`),
    /// `position_ids? (batch, seq)`.
    Rotary {
        /// Rotate pairs `(x[2i], x[2i+1])` instead of `(x[i], x[i + rot/2])`.
        interleaved: bool,
        /// Rotate only the first `rot` features of each head (default: all).
        rotary_dim: Option<usize>,
        /// Head count for 3-D inputs.
        num_heads: Option<usize>,
    },
}

/// `a + b` where both are known; equal symbols stay unknown (their sum has no name).
fn add_dims(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => Dim::Known(x + y),
        (Dim::Known(0), d) | (d, Dim::Known(0)) => d.clone(),
        _ => Dim::Unknown,
    }
}

fn mul_dim(a: &Dim, n: usize) -> Dim {
    match a {
        Dim::Known(x) => Dim::Known(x * n),
        d if n == 1 => d.clone(),
        _ => Dim::Unknown,
    }
}

/// `a / n`, checking divisibility when `a` is known.
fn div_dim(a: &Dim, n: usize, what: &str) -> Result<Dim, InferError> {
    match a {
        Dim::Known(x) if n == 0 || !x.is_multiple_of(n) => Err(InferError::Shape(format!(
            "{what} size {x} is not divisible by {n} heads"
        ))),
        Dim::Known(x) => Ok(Dim::Known(x / n)),
        d if n == 1 => Ok(d.clone()),
        _ => Ok(Dim::Unknown),
    }
}

fn float_input(cx: &InferCx, i: usize) -> Result<TensorType, InferError> {
    let t = cx.input(i)?;
    if !t.dtype.is_float() {
        return Err(InferError::DType {
            index: i,
            expected: "a float type".into(),
            found: t.dtype,
        });
    }
    Ok(t.clone())
}

fn rank_is(t: &TensorType, ranks: &[usize], what: &str) -> Result<(), InferError> {
    if ranks.contains(&t.rank()) {
        Ok(())
    } else {
        Err(InferError::Shape(format!(
            "{what} must have rank {ranks:?}, found {t}"
        )))
    }
}

/// A head count attribute, required for 3-D inputs.
fn heads(n: Option<usize>, name: &'static str) -> Result<usize, InferError> {
    match n {
        Some(n) if n > 0 => Ok(n),
        _ => Err(InferError::Attr {
            name,
            reason: "a positive head count is required for 3-D inputs".into(),
        }),
    }
}

impl AttnOp {
    pub fn infer(&self, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        match self {
            AttnOp::Attention {
                q_num_heads,
                kv_num_heads,
                ..
            } => {
                cx.arity(3, 7)?;
                if !(1..=4).contains(&cx.n_outputs) {
                    return Err(InferError::Other(format!(
                        "attention has 1 to 4 outputs, not {}",
                        cx.n_outputs
                    )));
                }
                let (q, k, v) = (
                    float_input(cx, 0)?,
                    float_input(cx, 1)?,
                    float_input(cx, 2)?,
                );
                rank_is(&q, &[3, 4], "q")?;
                if k.rank() != q.rank() || v.rank() != q.rank() {
                    return Err(InferError::Shape(format!(
                        "q, k, v ranks differ: {q}, {k}, {v}"
                    )));
                }
                // Normalize to the 4-D view: (batch, heads, seq, head_size).
                let (b, hq, sq, hkv, skv, dk, dv) = if q.rank() == 4 {
                    let s = |t: &TensorType, i: usize| t.shape[i].clone();
                    (
                        s(&q, 0),
                        s(&q, 1),
                        s(&q, 2),
                        s(&k, 1),
                        s(&k, 2),
                        s(&k, 3),
                        s(&v, 3),
                    )
                } else {
                    let nq = heads(*q_num_heads, "q_num_heads")?;
                    let nkv = heads(*kv_num_heads, "kv_num_heads")?;
                    (
                        q.shape[0].clone(),
                        Dim::Known(nq),
                        q.shape[1].clone(),
                        Dim::Known(nkv),
                        k.shape[1].clone(),
                        div_dim(&k.shape[2], nkv, "k hidden")?,
                        div_dim(&v.shape[2], nkv, "v hidden")?,
                    )
                };
                let past_k = cx.opt_input(4);
                let past_v = cx.opt_input(5);
                if past_k.is_some() != past_v.is_some() {
                    return Err(InferError::Other(
                        "past_key and past_value go together".into(),
                    ));
                }
                let total = match past_k {
                    Some(p) => {
                        rank_is(p, &[4], "past_key")?;
                        add_dims(&p.shape[2], &skv)
                    }
                    None => skv,
                };
                let y_shape: Shape = if q.rank() == 4 {
                    vec![b.clone(), hq.clone(), sq.clone(), dv.clone()]
                } else {
                    let nq = heads(*q_num_heads, "q_num_heads")?;
                    let nkv = heads(*kv_num_heads, "kv_num_heads")?;
                    // With as many q heads as kv heads the hidden size carries over, even symbolic.
                    let hidden = if nq == nkv {
                        v.shape[2].clone()
                    } else {
                        mul_dim(&dv, nq)
                    };
                    vec![b.clone(), sq.clone(), hidden]
                };
                let dt = q.dtype;
                let mut out = vec![TensorType::new(dt, y_shape)];
                if cx.n_outputs > 1 {
                    out.push(TensorType::new(
                        dt,
                        vec![b.clone(), hkv.clone(), total.clone(), dk],
                    ));
                }
                if cx.n_outputs > 2 {
                    out.push(TensorType::new(dt, vec![b.clone(), hkv, total.clone(), dv]));
                }
                if cx.n_outputs > 3 {
                    out.push(TensorType::new(dt, vec![b, hq, sq, total]));
                }
                Ok(out)
            }
            AttnOp::FlexAttention {
                score_captures,
                prob_captures,
                ..
            } => {
                let n_caps = score_captures.unwrap_or(0) + prob_captures.unwrap_or(0);
                cx.arity(3 + n_caps, 3 + n_caps)?;
                let n_regions =
                    usize::from(score_captures.is_some()) + usize::from(prob_captures.is_some());
                if cx.regions.len() != n_regions {
                    return Err(InferError::Other(format!(
                        "flex_attention expects {n_regions} regions, found {}",
                        cx.regions.len()
                    )));
                }
                let (q, v) = (float_input(cx, 0)?, float_input(cx, 2)?);
                let k = float_input(cx, 1)?;
                for (t, n) in [(&q, "q"), (&k, "k"), (&v, "v")] {
                    rank_is(t, &[4], n)?;
                }
                let shape = vec![
                    q.shape[0].clone(),
                    q.shape[1].clone(),
                    q.shape[2].clone(),
                    v.shape[3].clone(),
                ];
                Ok(vec![TensorType::new(v.dtype, shape)])
            }
            AttnOp::LinearAttention {
                q_num_heads,
                kv_num_heads,
                update_rule,
                ..
            } => {
                cx.arity(3, 6)?;
                let (q, v) = (float_input(cx, 0)?, float_input(cx, 2)?);
                let k = float_input(cx, 1)?;
                for (t, n) in [(&q, "query"), (&k, "key"), (&v, "value")] {
                    rank_is(t, &[3], n)?;
                }
                if *q_num_heads == 0
                    || *kv_num_heads == 0
                    || !q_num_heads.is_multiple_of(*kv_num_heads)
                {
                    return Err(InferError::Attr {
                        name: "q_num_heads",
                        reason: format!(
                            "{q_num_heads} is not a positive multiple of kv_num_heads {kv_num_heads}"
                        ),
                    });
                }
                if update_rule.gated() != cx.opt_input(4).is_some() {
                    return Err(InferError::Other(format!(
                        "update rule {update_rule:?} and the decay input disagree"
                    )));
                }
                if update_rule.delta() != cx.opt_input(5).is_some() {
                    return Err(InferError::Other(format!(
                        "update rule {update_rule:?} and the beta input disagree"
                    )));
                }
                let dk = div_dim(&q.shape[2], *q_num_heads, "query hidden")?;
                let dv = div_dim(&v.shape[2], *kv_num_heads, "value hidden")?;
                let hidden = mul_dim(&dv, *q_num_heads);
                let y = TensorType::new(
                    q.dtype,
                    vec![q.shape[0].clone(), q.shape[1].clone(), hidden],
                );
                let state_dt = cx.opt_input(3).map_or(q.dtype, |p| p.dtype);
                let state = TensorType::new(
                    state_dt,
                    vec![q.shape[0].clone(), Dim::Known(*kv_num_heads), dk, dv],
                );
                Ok(vec![y, state])
            }
            AttnOp::Rotary {
                num_heads,
                rotary_dim,
                ..
            } => {
                cx.arity(3, 4)?;
                let x = float_input(cx, 0)?;
                rank_is(&x, &[3, 4], "x")?;
                if x.rank() == 3 {
                    heads(*num_heads, "num_heads")?;
                }
                if let Some(r) = rotary_dim
                    && !r.is_multiple_of(2)
                {
                    return Err(InferError::Attr {
                        name: "rotary_embedding_dim",
                        reason: format!("{r} is odd"),
                    });
                }
                Ok(vec![x])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Op;

    fn infer(
        op: AttnOp,
        inputs: Vec<Option<TensorType>>,
        n_outputs: usize,
    ) -> Result<Vec<TensorType>, InferError> {
        let consts = vec![None; inputs.len()];
        Op::Attn(op).infer(&InferCx {
            inputs: &inputs,
            consts: &consts,
            regions: &[],
            n_outputs,
        })
    }

    fn attention(q: Option<usize>, kv: Option<usize>) -> AttnOp {
        AttnOp::Attention {
            q_num_heads: q,
            kv_num_heads: kv,
            scale: None,
            is_causal: false,
            softcap: None,
            softmax_precision: None,
            qk_output: QkOutput::Scores,
            left_window: None,
            right_window: None,
        }
    }

    #[test]
    fn attention_3d_with_cache() {
        let f = |d: &[usize]| Some(TensorType::fixed(DType::F32, d));
        let out = infer(
            attention(Some(9), Some(3)),
            vec![
                f(&[2, 4, 72]),
                f(&[2, 6, 24]),
                f(&[2, 6, 30]),
                f(&[4, 18]),
                f(&[2, 3, 12, 8]),
                f(&[2, 3, 12, 10]),
            ],
            4,
        )
        .unwrap();
        let shapes: Vec<_> = out.iter().map(|t| t.static_shape().unwrap()).collect();
        assert_eq!(
            shapes,
            vec![
                vec![2, 4, 90],
                vec![2, 3, 18, 8],
                vec![2, 3, 18, 10],
                vec![2, 9, 4, 18]
            ]
        );
    }

    #[test]
    fn attention_symbolic_4d() {
        let s = |n: &str| Dim::Sym(n.into());
        let t = |d: Vec<Dim>| Some(TensorType::new(DType::F16, d));
        let out = infer(
            attention(None, None),
            vec![
                t(vec![s("b"), Dim::Known(8), s("q"), Dim::Known(64)]),
                t(vec![s("b"), Dim::Known(2), s("kv"), Dim::Known(64)]),
                t(vec![s("b"), Dim::Known(2), s("kv"), Dim::Known(64)]),
            ],
            1,
        )
        .unwrap();
        assert_eq!(
            out[0].shape,
            vec![s("b"), Dim::Known(8), s("q"), Dim::Known(64)]
        );
    }

    #[test]
    fn rotary_3d_needs_heads() {
        let x = Some(TensorType::fixed(DType::F32, &[2, 3, 32]));
        let c = Some(TensorType::fixed(DType::F32, &[50, 4]));
        let op = AttnOp::Rotary {
            interleaved: false,
            rotary_dim: None,
            num_heads: None,
        };
        assert!(infer(op, vec![x, c.clone(), c], 1).is_err());
    }
}
