//! Constant folding inside the e-graph: an op whose operands all have known (small) values is
//! evaluated with the reference interpreter and its class gets the constant.
//!
//! `simplify` already folded everything the imported graph could fold; this rule exists for
//! what other rules create (`1/c`, folded scale factors). Quantization ops are never folded, so
//! that QDQ structure survives for the integer-kernel rules; ops with regions are left alone.

use super::{Build, NodeRule, add_const, op_nodes, ty, value};
use crate::egraph::analysis::{MlcEGraph, SMALL_CONST_ELEMS};
use egg::Id;
use mlc_interp::EvalCx;
use mlc_ir::{Op, Tensor, TensorType};

pub fn rules() -> Vec<NodeRule> {
    vec![NodeRule::rewrite("fold-constants", fold_constants)]
}

fn fold_constants(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    if value(eg, class).is_some() {
        return vec![];
    }
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    for (o, c) in op_nodes(eg, class) {
        if matches!(o.op, Op::Quant(_) | Op::Control(_) | Op::Constant { .. }) || c.is_empty() {
            continue;
        }
        let args: Option<Vec<Option<&Tensor>>> = c
            .iter()
            .map(|k| {
                if eg[*k].data.types.is_empty() {
                    Some(None)
                } else {
                    value(eg, *k).map(Some)
                }
            })
            .collect();
        let Some(args) = args else { continue };
        let Ok(mut out) = mlc_interp::eval_op(
            &o.op,
            &args,
            &EvalCx {
                regions: &o.regions,
                output_types: &o.types,
            },
        ) else {
            continue;
        };
        let (Some(t), true) = (out.pop(), out.is_empty()) else {
            continue;
        };
        if t.len() > SMALL_CONST_ELEMS || TensorType::fixed(t.dtype(), t.shape()) != want {
            continue;
        }
        return vec![Box::new(move |eg, _| Some(add_const(eg, t)))];
    }
    vec![]
}

#[cfg(test)]
mod tests {
    use super::super::testkit::check;

    #[test]
    fn reciprocal_of_a_divisor_is_folded() {
        // `x / (a + b)` with constant `a`, `b`: the sum folds, then the division becomes a
        // multiplication by the folded reciprocal.
        let src = r#"graph (%0: f32[n] "x") -> (%5 "y") {
  @c0 = const f32[] [1.5]
  @c1 = const f32[] [2.5]
  %1 = constant @c0 : f32[]
  %2 = constant @c1 : f32[]
  %3 = ew.sqrt(%1) : f32[]
  %4 = ew.add(%3, %2) : f32[]
  %5 = ew.div(%0, %4) : f32[n]
}
"#;
        // `simplify` folds `%3` and `%4` already; build the graph without it to see the rule.
        for g in check(
            &["fold-constants", "div-by-const"],
            src,
            &[&[&[3]], &[&[1]]],
        ) {
            assert_eq!(g.op_count(), 1, "{g}");
        }
    }
}
