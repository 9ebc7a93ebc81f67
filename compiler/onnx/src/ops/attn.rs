//! Import of ONNX attention ops into the `attn` family: `Attention` (opsets 23-25),
//! `RotaryEmbedding`, `LinearAttention` and the preview `FlexAttention`.

use crate::cx::{AttrValue, NodeCx, NodeError, Registry};
use mlc_ir::ops::AttnOp;
use mlc_ir::ops::attn::{QkOutput, UpdateRule};
use mlc_ir::{DType, Dim, Op, TensorType, ValueId};

pub fn register(r: &mut Registry) {
    r.add("", "Attention", attention);
    r.add("", "RotaryEmbedding", rotary);
    r.add("", "LinearAttention", linear_attention);
    r.add("ai.onnx.preview", "FlexAttention", flex_attention);
}

fn attr_err(name: &str, reason: impl Into<String>) -> NodeError {
    NodeError::Attr {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// The float type an ONNX `TensorProto.DataType` code names (for `softmax_precision`).
fn float_dtype(name: &str, code: i64) -> Result<DType, NodeError> {
    match code {
        1 => Ok(DType::F32),
        10 => Ok(DType::F16),
        11 => Ok(DType::F64),
        16 => Ok(DType::BF16),
        c => Err(attr_err(
            name,
            format!("{c} is not a float type (1, 10, 11 or 16)"),
        )),
    }
}

/// A positive count attribute, `None` when absent.
fn count(cx: &NodeCx, name: &str) -> Result<Option<usize>, NodeError> {
    match cx.attr_int_opt(name)? {
        None => Ok(None),
        Some(n) if n > 0 => Ok(Some(n as usize)),
        Some(n) => Err(attr_err(name, format!("{n} is not positive"))),
    }
}

/// A window bound: `-1` (the default) leaves the side unbounded.
fn window(cx: &NodeCx, name: &str) -> Result<Option<usize>, NodeError> {
    match cx.attr_int(name, -1)? {
        -1 => Ok(None),
        n if n >= 0 => Ok(Some(n as usize)),
        n => Err(attr_err(name, format!("{n} is neither -1 nor nonnegative"))),
    }
}

fn attention(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let q = cx.input_type(0)?;
    // Head counts only matter for 3-D inputs; opsets 23-24 tolerate them on 4-D inputs.
    let (q_num_heads, kv_num_heads) = if q.rank() == 3 {
        let need = |cx: &NodeCx, n: &str| {
            count(cx, n)?.ok_or_else(|| attr_err(n, "required for 3-D inputs"))
        };
        (
            Some(need(cx, "q_num_heads")?),
            Some(need(cx, "kv_num_heads")?),
        )
    } else {
        (None, None)
    };
    let softcap = cx.attr_float("softcap", 0.0)?;
    let qk_output = match cx.attr_int("qk_matmul_output_mode", 0)? {
        0 => QkOutput::Scores,
        1 => QkOutput::Softcapped,
        2 => QkOutput::Biased,
        3 => QkOutput::Probs,
        m => {
            return Err(attr_err(
                "qk_matmul_output_mode",
                format!("unknown mode {m}"),
            ));
        }
    };
    let op = AttnOp::Attention {
        q_num_heads,
        kv_num_heads,
        scale: cx.attr_float_opt("scale")?,
        is_causal: cx.attr_int("is_causal", 0)? != 0,
        softcap: (softcap > 0.0).then_some(softcap),
        softmax_precision: cx
            .attr_int_opt("softmax_precision")?
            .map(|c| float_dtype("softmax_precision", c))
            .transpose()?,
        qk_output,
        left_window: window(cx, "left_window_size")?,
        right_window: window(cx, "right_window_size")?,
    };
    let inputs: Vec<Option<ValueId>> = (0..cx.n_inputs().min(7)).map(|i| cx.opt_input(i)).collect();
    let n = cx.n_outputs.clamp(1, 4);
    cx.emit(Op::Attn(op), inputs, n)
}

fn rotary(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let rotary_dim = match cx.attr_int("rotary_embedding_dim", 0)? {
        0 => None,
        n if n > 0 => Some(n as usize),
        n => return Err(attr_err("rotary_embedding_dim", format!("{n} is negative"))),
    };
    let op = AttnOp::Rotary {
        interleaved: cx.attr_int("interleaved", 0)? != 0,
        rotary_dim,
        num_heads: count(cx, "num_heads")?,
    };
    let inputs: Vec<Option<ValueId>> = (0..cx.n_inputs().min(4)).map(|i| cx.opt_input(i)).collect();
    cx.emit(Op::Attn(op), inputs, 1)
}

fn linear_attention(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let update_rule = match cx.attr_str("update_rule", "gated_delta")?.as_str() {
        "linear" => UpdateRule::Linear,
        "gated" => UpdateRule::Gated,
        "delta" => UpdateRule::Delta,
        "gated_delta" => UpdateRule::GatedDelta,
        r => return Err(attr_err("update_rule", format!("unknown rule {r:?}"))),
    };
    let need = |cx: &NodeCx, n: &str| count(cx, n)?.ok_or_else(|| attr_err(n, "required"));
    let scale = cx.attr_float("scale", 0.0)?;
    // `chunk_size` is a tuning hint with no effect on the result.
    let op = AttnOp::LinearAttention {
        q_num_heads: need(cx, "q_num_heads")?,
        kv_num_heads: need(cx, "kv_num_heads")?,
        scale: (scale != 0.0).then_some(scale),
        update_rule,
    };
    let inputs: Vec<Option<ValueId>> = (0..cx.n_inputs().min(6)).map(|i| cx.opt_input(i)).collect();
    cx.emit(Op::Attn(op), inputs, 2)
}

fn flex_attention(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let (q, k) = (cx.input_type(0)?, cx.input_type(1)?);
    let v = cx.input(2)?;
    if q.rank() != 4 || k.rank() != 4 {
        return Err(NodeError::Invalid(format!(
            "FlexAttention takes 4-D inputs, not {q} and {k}"
        )));
    }
    let softmax_precision = cx
        .attr_int_opt("softmax_precision")?
        .map(|c| float_dtype("softmax_precision", c))
        .transpose()?;
    // The modifiers see the scores in the softmax type: (batch, q_heads, q_seq, kv_seq).
    let compute = softmax_precision.unwrap_or(if matches!(q.dtype, DType::F16 | DType::BF16) {
        DType::F32
    } else {
        q.dtype
    });
    let scores: Vec<Dim> = vec![
        q.shape[0].clone(),
        q.shape[1].clone(),
        q.shape[2].clone(),
        k.shape[2].clone(),
    ];
    let scores = TensorType::new(compute, scores);
    let mut regions = Vec::new();
    let mut inputs = vec![cx.opt_input(0), cx.opt_input(1), Some(v)];
    let mut captures = [None, None];
    for (slot, name) in captures.iter_mut().zip(["score_mod", "prob_mod"]) {
        if matches!(cx.attr(name), Some(AttrValue::Graph)) {
            let (g, caps) = cx.subgraph(name, &[Some(scores.clone())])?;
            if g.inputs.len() != 1 + caps.len() || g.outputs.len() != 1 {
                return Err(attr_err(
                    name,
                    "a modifier graph maps one tensor to one tensor",
                ));
            }
            *slot = Some(caps.len());
            inputs.extend(caps.into_iter().map(Some));
            regions.push(g);
        }
    }
    let op = AttnOp::FlexAttention {
        scale: cx.attr_float_opt("scale")?,
        softmax_precision,
        score_captures: captures[0],
        prob_captures: captures[1],
    };
    cx.emit_with_regions(Op::Attn(op), inputs, regions, 1)
}
