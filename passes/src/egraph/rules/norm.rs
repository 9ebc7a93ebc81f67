//! Normalizations recognized from their decomposed forms. LayerNorm, as Paddle exports it
//! (ppocrv4_rec):
//!
//! ```text
//! mu = reduce.mean(x, axes = [a..r), keepdims)      c = x - mu
//! var = reduce.mean(c * c  or  pow(c, 2), same axes)
//! y = c / sqrt(var + eps) * gamma + beta             (gamma, beta of shape x.shape[a..])
//! ```
//!
//! becomes `nn.layer_norm {axis: a, epsilon: eps}(x, gamma, beta)`: one op instead of nine,
//! which reads `x` twice instead of five times. The operands of the two commutative steps
//! (`* gamma`, `+ beta`, `var + eps`) are matched in either order.

use super::{Build, NodeRule, add_op, ops_where, ty, value};
use crate::egraph::analysis::MlcEGraph;
use egg::Id;
use mlc_ir::ops::ew::EwOp;
use mlc_ir::ops::nn::NnOp;
use mlc_ir::ops::reduce::{ReduceAttrs, ReduceOp};
use mlc_ir::{DType, Op};

pub fn rules() -> Vec<NodeRule> {
    vec![NodeRule::rewrite("layer-norm", layer_norm)]
}

fn is(op: &Op, want: EwOp) -> bool {
    matches!(op, Op::Ew(e) if *e == want)
}

/// Operand pairs of the `want` nodes of a class, in both orders when `commutes`.
fn pairs(eg: &MlcEGraph, id: Id, want: EwOp, commutes: bool) -> Vec<(Id, Id)> {
    let mut out = vec![];
    for (_, _, c) in ops_where(eg, id, move |o| is(o, want.clone()).then_some(())) {
        if let [a, b] = *c {
            out.push((a, b));
            if commutes {
                out.push((b, a));
            }
        }
    }
    out
}

/// The operand of a keepdims mean over a suffix of axes `[a, r)` of a rank-`r` input, with `a`.
fn suffix_means(eg: &MlcEGraph, id: Id) -> Vec<(Id, usize)> {
    ops_where(eg, id, |o| match o {
        Op::Reduce(ReduceOp::Mean(ReduceAttrs {
            axes: Some(axes),
            keepdims: true,
            ..
        })) => Some(axes),
        _ => None,
    })
    .filter_map(|(axes, _, c)| {
        let [x] = *c else { return None };
        let rank = ty(eg, x)?.rank();
        let first = *axes.first()?;
        let suffix = axes.iter().copied().eq(first..rank);
        suffix.then_some((x, first))
    })
    .collect()
}

/// Whether `sq` is `c * c` or `pow(c, 2)`.
fn is_square_of(eg: &MlcEGraph, sq: Id, c: Id) -> bool {
    let c = eg.find(c);
    ops_where(eg, sq, |o| match o {
        Op::Ew(EwOp::Mul) | Op::Ew(EwOp::Pow) => Some(is(o, EwOp::Pow)),
        _ => None,
    })
    .any(|(pow, _, ch)| match *ch {
        [a, b] if pow => eg.find(a) == c && super::is_splat(eg, b, 2.0),
        [a, b] => eg.find(a) == c && eg.find(b) == c,
        _ => false,
    })
}

/// The epsilon if `s` is `sqrt(mean(c^2) + eps)` over the same axes, from `axis` on.
fn std_dev_of(eg: &MlcEGraph, s: Id, c: Id, axis: usize) -> Option<f32> {
    for (_, _, ch) in ops_where(eg, s, |o| is(o, EwOp::Sqrt).then_some(())) {
        let [a] = *ch else { continue };
        for (v, e) in pairs(eg, a, EwOp::Add, true) {
            let Some(eps) = value(eg, e).and_then(|t| t.to_f64_vec().ok()) else {
                continue;
            };
            let [eps] = eps[..] else { continue };
            let mean_of_square = suffix_means(eg, v)
                .into_iter()
                .any(|(sq, ax)| ax == axis && is_square_of(eg, sq, c));
            if mean_of_square && eps >= 0.0 {
                return Some(eps as f32);
            }
        }
    }
    None
}

fn layer_norm(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    if want.dtype != DType::F32 {
        return vec![];
    }
    for (m, beta) in pairs(eg, class, EwOp::Add, true) {
        for (d, gamma) in pairs(eg, m, EwOp::Mul, true) {
            for (c, s) in pairs(eg, d, EwOp::Div, false) {
                for (x, mu) in pairs(eg, c, EwOp::Sub, false) {
                    for (x2, axis) in suffix_means(eg, mu) {
                        if eg.find(x2) != eg.find(x) || ty(eg, x) != Some(&want) {
                            continue;
                        }
                        // gamma and beta must be per-feature: exactly the normalized dims.
                        let trailing = &want.shape[axis..];
                        let per_feature = |p: Id| {
                            ty(eg, p).is_some_and(|t| t.dtype == want.dtype && t.shape == trailing)
                        };
                        if !(per_feature(gamma) && per_feature(beta)) {
                            continue;
                        }
                        let Some(epsilon) = std_dev_of(eg, s, c, axis) else {
                            continue;
                        };
                        let want = want.clone();
                        return vec![Box::new(move |eg, rule| {
                            let op = Op::Nn(NnOp::LayerNorm {
                                axis,
                                epsilon,
                                stat_dtype: DType::F32,
                            });
                            add_op(eg, op, vec![x, gamma, beta], vec![], &want, vec![rule])
                        })];
                    }
                }
            }
        }
    }
    vec![]
}

#[cfg(test)]
mod tests {
    use super::super::testkit::check;

    #[test]
    fn decomposed_layer_norm_is_one_op() {
        let src = r#"graph (%0: f32[a,b,c] "x", %1: f32[c] "gamma", %2: f32[c] "beta") -> (%13 "y") {
  @c0 = const f32[] [2.0]
  @c1 = const f32[] [0.00001]
  %3 = reduce.mean {"axes":[2],"keepdims":true} (%0) : f32[a,b,1]
  %4 = ew.sub(%0, %3) : f32[a,b,c]
  %5 = constant @c0 : f32[]
  %6 = ew.pow(%4, %5) : f32[a,b,c]
  %7 = reduce.mean {"axes":[2],"keepdims":true} (%6) : f32[a,b,1]
  %8 = constant @c1 : f32[]
  %9 = ew.add(%8, %7) : f32[a,b,1]
  %10 = ew.sqrt(%9) : f32[a,b,1]
  %11 = ew.div(%4, %10) : f32[a,b,c]
  %12 = ew.mul(%1, %11) : f32[a,b,c]
  %13 = ew.add(%12, %2) : f32[a,b,c]
}
"#;
        let shapes: &[&[&[usize]]] = &[&[&[1, 40, 120], &[120], &[120]], &[&[2, 3, 4], &[4], &[4]]];
        for g in check(&["layer-norm"], src, shapes) {
            assert_eq!(g.op_count(), 1, "{g}");
            assert!(g.to_string().contains("nn.layer_norm"), "{g}");
        }
    }
}
