//! Attention recognized from its parts: `matmul(softmax(matmul(q, kᵀ) [* scale] [+ mask]), v)`
//! with the softmax over the last axis becomes one `control.composite {"kind":"attention"}`,
//! whose body is those ops. The `[L, L]` score and probability matrices then never reach
//! memory: a backend implements the composite as one fused (flash-style) kernel.
//!
//! A composite rather than `attn.attention`: the exported graph has `kᵀ` already transposed
//! and the scale as a multiplication, and the body states exactly what it computes, so the
//! interpreter runs it unchanged and the rule needs no numerical argument.

use super::{Build, NodeRule, ops_where, ty};
use crate::egraph::analysis::MlcEGraph;
use crate::egraph::lang::{MlcNode, OpInfo, OpRef};
use egg::Id;
use mlc_ir::ops::nn::NnOp;
use mlc_ir::ops::reduce::{ReduceOp, SoftmaxAttrs};
use mlc_ir::ops::{ControlOp, EwOp};
use mlc_ir::{Graph, Op, Port, TensorType, ValueId};

pub fn rules() -> Vec<NodeRule> {
    vec![NodeRule::rewrite("attention", attention)]
}

/// The scores `matmul(q, kt) [* scale] [+ mask]`, with the class of each step.
#[derive(Clone)]
struct Scores {
    q: Id,
    kt: Id,
    qk: Id,
    /// The scale operand and the class of the scaled scores.
    scale: Option<(Id, Id)>,
    /// The mask operand and the class of the masked scores.
    mask: Option<(Id, Id)>,
}

fn matmuls(eg: &MlcEGraph, id: Id) -> Vec<(Id, Id)> {
    ops_where(eg, id, |o| matches!(o, Op::Nn(NnOp::Matmul)).then_some(()))
        .filter_map(|(_, _, c)| match c {
            [a, b] => Some((*a, *b)),
            _ => None,
        })
        .collect()
}

fn binary(eg: &MlcEGraph, id: Id, op: EwOp) -> Vec<(Id, Id)> {
    ops_where(eg, id, move |o| {
        matches!(o, Op::Ew(e) if *e == op).then_some(())
    })
    .filter_map(|(_, _, c)| match c {
        [a, b] => Some((*a, *b)),
        _ => None,
    })
    .collect()
}

/// Whether `id` is a scalar constant (one element).
fn scalar_const(eg: &MlcEGraph, id: Id) -> bool {
    super::value(eg, id).is_some_and(|t| t.len() == 1)
}

/// `matmul(q, kt) * scale` (scale a scalar constant, either side) or just `matmul(q, kt)`.
fn scaled(eg: &MlcEGraph, id: Id) -> Vec<Scores> {
    let mut out = vec![];
    for (q, kt) in matmuls(eg, id) {
        out.push(Scores {
            q,
            kt,
            qk: id,
            scale: None,
            mask: None,
        });
    }
    for (a, b) in binary(eg, id, EwOp::Mul) {
        for (qk, scale) in [(a, b), (b, a)] {
            if !scalar_const(eg, scale) {
                continue;
            }
            for (q, kt) in matmuls(eg, qk) {
                out.push(Scores {
                    q,
                    kt,
                    qk,
                    scale: Some((scale, id)),
                    mask: None,
                });
            }
        }
    }
    out
}

/// The score chains ending in class `s`: optionally masked by an addition.
fn scores(eg: &MlcEGraph, s: Id) -> Vec<Scores> {
    let mut out = scaled(eg, s);
    for (a, b) in binary(eg, s, EwOp::Add) {
        for (t, mask) in [(a, b), (b, a)] {
            for mut sc in scaled(eg, t) {
                sc.mask = Some((mask, s));
                out.push(sc);
            }
        }
    }
    out
}

fn attention(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let finals = ops_where(eg, class, |o| {
        matches!(o, Op::Nn(NnOp::Matmul)).then_some(())
    });
    for (_, last, c) in finals {
        let [p, v] = *c else { continue };
        let softmaxes = ops_where(eg, p, |o| match o {
            Op::Reduce(ReduceOp::Softmax(a)) => Some(a),
            _ => None,
        });
        for (attrs, _, c) in softmaxes {
            let [s] = *c else { continue };
            let Some(st) = ty(eg, s) else { continue };
            if attrs.axis + 1 != st.rank() || attrs.coerce_2d {
                continue;
            }
            // The first chain found is as good as any other: they compute the same scores.
            if let Some(sc) = scores(eg, s).into_iter().next() {
                let (attrs, want, loc) = (attrs.clone(), want.clone(), last.loc.clone());
                return vec![Box::new(move |eg, rule| {
                    build(eg, &sc, attrs, (p, v), want, loc, rule)
                })];
            }
        }
    }
    vec![]
}

/// Adds the composite for the chain `sc` whose probabilities (class `p`) multiply `v`; it
/// stands where the final matmul (at `loc`) stood.
fn build(
    eg: &mut MlcEGraph,
    sc: &Scores,
    attrs: SoftmaxAttrs,
    (p, v): (Id, Id),
    want: TensorType,
    loc: Option<String>,
    rule: &'static str,
) -> Option<Id> {
    let mut inputs: Vec<Id> = vec![sc.q, sc.kt];
    inputs.extend(sc.scale.map(|(k, _)| k));
    inputs.extend(sc.mask.map(|(m, _)| m));
    inputs.push(v);
    let mut body = Graph::new();
    let mut vals = vec![];
    for (i, c) in inputs.iter().enumerate() {
        vals.push(body.add_input(format!("in{i}"), ty(eg, *c)?.clone()));
    }
    let node = |body: &mut Graph, op: Op, args: Vec<ValueId>, class: Id| -> Option<ValueId> {
        let t = ty(eg, class)?.clone();
        Some(
            body.add_node(
                op,
                args.into_iter().map(Some).collect(),
                vec![t],
                vec![],
                None,
            )[0],
        )
    };
    let mut next = 2;
    let mut x = node(
        &mut body,
        Op::Nn(NnOp::Matmul),
        vec![vals[0], vals[1]],
        sc.qk,
    )?;
    if let Some((_, class)) = sc.scale {
        x = node(&mut body, Op::Ew(EwOp::Mul), vec![x, vals[next]], class)?;
        next += 1;
    }
    if let Some((_, class)) = sc.mask {
        x = node(&mut body, Op::Ew(EwOp::Add), vec![x, vals[next]], class)?;
        next += 1;
    }
    x = node(&mut body, Op::Reduce(ReduceOp::Softmax(attrs)), vec![x], p)?;
    let y = body.add_node(
        Op::Nn(NnOp::Matmul),
        vec![Some(x), Some(vals[next])],
        vec![want.clone()],
        vec![],
        None,
    )[0];
    body.outputs.push(Port {
        value: y,
        name: "out".into(),
    });
    let info = OpInfo::new(
        Op::Control(ControlOp::Composite {
            kind: "attention".into(),
        }),
        vec![body],
        vec![want],
        loc,
        vec![rule],
    );
    Some(eg.add(MlcNode::Op(OpRef::new(info), inputs)))
}

#[cfg(test)]
mod tests {
    use super::super::testkit::check;

    #[test]
    fn scaled_masked_attention_is_one_kernel() {
        let src = r#"graph (%0: f32[1,2,s,4] "q", %1: f32[1,2,4,s] "kt", %2: f32[1,1,s,s] "mask", %3: f32[1,2,s,4] "v") -> (%9 "y") {
  @c0 = const f32[] [0.5]
  %4 = nn.matmul(%0, %1) : f32[1,2,s,s]
  %5 = constant @c0 : f32[]
  %6 = ew.mul(%4, %5) : f32[1,2,s,s]
  %7 = ew.add(%2, %6) : f32[1,2,s,s]
  %8 = reduce.softmax {"axis":3} (%7) : f32[1,2,s,s]
  %9 = nn.matmul(%8, %3) : f32[1,2,s,4]
}
"#;
        let shapes: &[&[&[usize]]] = &[
            &[&[1, 2, 3, 4], &[1, 2, 4, 3], &[1, 1, 3, 3], &[1, 2, 3, 4]],
            &[&[1, 2, 8, 4], &[1, 2, 4, 8], &[1, 1, 8, 8], &[1, 2, 8, 4]],
        ];
        for g in check(&["attention"], src, shapes) {
            assert_eq!(g.nodes.len() - 1, 1, "{g}");
            assert!(g.to_string().contains(r#"{"kind":"attention"}"#), "{g}");
        }
    }
}
