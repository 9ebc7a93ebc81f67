//! Inference-mode batch normalization folded into the weights of the contraction before it.
//!
//! `batch_norm(y, s, β, μ, σ²)` is the per-channel affine map `y·a + (β - μ·a)` with
//! `a = s / sqrt(σ² + ε)`. When `y = conv(x, W, b)` with constant `W` (and `b`), that map
//! moves into the weights: `conv(x, W·a[m], (b - μ)·a + β)`, one kernel and no
//! normalization at run time. The same holds for `gemm(x, W, c)` with `A` not transposed
//! (the channels are `gemm`'s columns, `W`'s rows when `trans_b`).
//!
//! Conditions: the weights, bias and every normalization parameter are constants of the
//! contraction's dtype (f32), so the new weights can be computed here; `c` of a `gemm` is
//! absent or one value per column (or one value). The new weights are computed in f64 and
//! rounded once to f32: results change by rounding only.

use super::{Build, NodeRule, add_const, add_op, ops_where, ty};
use crate::egraph::analysis::MlcEGraph;
use crate::egraph::lang::MlcNode;
use egg::Id;
use mlc_ir::ops::NnOp;
use mlc_ir::{DType, Op, Tensor};

pub fn rules() -> Vec<NodeRule> {
    vec![NodeRule::rewrite("fold-batch-norm", fold_batch_norm)]
}

/// The full value of a class holding a constant leaf, as f64s, if it is f32.
fn f32_const(eg: &MlcEGraph, class: Id) -> Option<(Vec<usize>, Vec<f64>)> {
    eg[class].nodes.iter().find_map(|n| match n {
        MlcNode::Const(i) => {
            let t = eg.analysis.tables.consts.get(*i as usize)?;
            if t.dtype() != DType::F32 {
                return None;
            }
            Some((t.shape().to_vec(), t.to_f64_vec().ok()?))
        }
        _ => None,
    })
}

/// The shape of a class holding an f32 constant leaf.
fn f32_shape(eg: &MlcEGraph, class: Id) -> Option<Vec<usize>> {
    eg[class].nodes.iter().find_map(|n| match n {
        MlcNode::Const(i) => {
            let t = eg.analysis.tables.consts.get(*i as usize)?;
            (t.dtype() == DType::F32).then(|| t.shape().to_vec())
        }
        _ => None,
    })
}

fn tensor(shape: &[usize], v: &[f64]) -> Option<Tensor> {
    Tensor::from_vec(shape, v.iter().map(|x| *x as f32).collect::<Vec<f32>>()).ok()
}

/// The contraction feeding a batch normalization, as a recipe for its folded form.
enum Contraction {
    Conv {
        op: Op,
        x: Id,
    },
    /// `trans_b`: the weights are `[N, K]` (channels are rows).
    Gemm {
        op: Op,
        x: Id,
        trans_b: bool,
        beta: f32,
    },
}

fn fold_batch_norm(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    if want.dtype != DType::F32 {
        return vec![];
    }
    let mut out: Vec<Build> = vec![];
    for (eps, _, c) in ops_where(eg, class, |o| match o {
        Op::Nn(NnOp::BatchNorm { epsilon }) => Some(*epsilon),
        _ => None,
    }) {
        let [y, s, beta, mean, var] = *c else {
            continue;
        };
        let params: Option<Vec<Vec<f64>>> = [s, beta, mean, var]
            .iter()
            .map(|k| f32_const(eg, *k).map(|(_, v)| v))
            .collect();
        let Some(params) = params else { continue };
        let channels = params[0].len();
        if params.iter().any(|p| p.len() != channels) {
            continue;
        }
        // a = s / sqrt(var + eps), shift = beta - mean * a (before the contraction's bias).
        let a: Vec<f64> = (0..channels)
            .map(|m| params[0][m] / (params[3][m] + eps as f64).sqrt())
            .collect();
        for (kind, _, cc) in ops_where(eg, y, |o| match o {
            Op::Nn(NnOp::Conv { .. }) => Some(None),
            Op::Nn(NnOp::Gemm {
                trans_a: false,
                trans_b,
                beta,
                ..
            }) => Some(Some((*trans_b, *beta))),
            _ => None,
        }) {
            let (Some(&x), Some(&w)) = (cc.first(), cc.get(1)) else {
                continue;
            };
            // Only the shape here: the weights are read when the build runs (searching runs
            // every iteration, building once).
            let Some(ws) = f32_shape(eg, w) else {
                continue;
            };
            let numel: usize = ws.iter().product();
            let bias_class = cc.get(2).copied().filter(|b| !eg[*b].data.types.is_empty());
            let b: Option<Vec<f64>> = match bias_class {
                None => Some(vec![0.0; channels]),
                Some(b) => f32_const(eg, b).and_then(|(_, v)| match v.len() {
                    1 => Some(vec![v[0]; channels]),
                    n if n == channels => Some(v),
                    _ => None,
                }),
            };
            let Some(b) = b else { continue };
            // Find the op node again to own its op.
            let Some(op) = eg[y].nodes.iter().find_map(|n| match n {
                MlcNode::Op(o, ch) if ch.as_slice() == cc => Some(o.op.clone()),
                _ => None,
            }) else {
                continue;
            };
            let contraction = match kind {
                None => Contraction::Conv { op, x },
                Some((trans_b, beta)) => Contraction::Gemm {
                    op,
                    x,
                    trans_b,
                    beta,
                },
            };
            // The channel of weight element i.
            let (channel_of, beta_c): (Box<dyn Fn(usize) -> usize>, f64) = match &contraction {
                Contraction::Conv { .. } => {
                    if ws.first() != Some(&channels) {
                        continue;
                    }
                    let per = numel / channels.max(1);
                    (Box::new(move |i| i / per), 1.0)
                }
                Contraction::Gemm { trans_b, beta, .. } => {
                    let [r, cl] = ws[..] else { continue };
                    if *trans_b && r == channels {
                        (Box::new(move |i| i / cl), *beta as f64)
                    } else if !*trans_b && cl == channels {
                        (Box::new(move |i| i % cl), *beta as f64)
                    } else {
                        continue;
                    }
                }
            };
            let want = want.clone();
            let (a, params) = (a.clone(), params.clone());
            out.push(Box::new(move |eg, rule| {
                let (_, wv) = f32_const(eg, w)?;
                let w2: Vec<f64> = wv
                    .iter()
                    .enumerate()
                    .map(|(i, x)| x * a[channel_of(i)])
                    .collect();
                let b2: Vec<f64> = (0..channels)
                    .map(|m| (beta_c * b[m] - params[2][m]) * a[m] + params[1][m])
                    .collect();
                let (w2, b2) = (tensor(&ws, &w2)?, tensor(&[channels], &b2)?);
                let (w2, b2) = (add_const(eg, w2), add_const(eg, b2));
                let (op, x) = match contraction {
                    Contraction::Conv { op, x } => (op, x),
                    Contraction::Gemm { op, x, .. } => {
                        let Op::Nn(NnOp::Gemm {
                            trans_a,
                            trans_b,
                            alpha,
                            ..
                        }) = op
                        else {
                            return None;
                        };
                        let op = Op::Nn(NnOp::Gemm {
                            trans_a,
                            trans_b,
                            alpha,
                            beta: 1.0,
                        });
                        (op, x)
                    }
                };
                add_op(eg, op, vec![x, w2, b2], vec![], &want, vec![rule])
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testkit::check;

    #[test]
    fn batch_norm_folds_into_convolution_weights() {
        let src = r#"graph (%0: f32[n,2,h,w] "x") -> (%9 "y") {
  @c0 = const f32[3,2,1,2] [0.5, -1.0, 2.0, 0.25, -0.75, 1.5, 1.0, 0.1, -0.2, 0.3, 0.4, -0.6]
  @c1 = const f32[3] [0.1, -0.2, 0.3]
  @c2 = const f32[3] [1.5, 0.5, -2.0]
  @c3 = const f32[3] [0.0, 1.0, -1.0]
  @c4 = const f32[3] [0.2, -0.4, 0.6]
  @c5 = const f32[3] [1.0, 0.25, 4.0]
  %1 = constant @c0 : f32[3,2,1,2]
  %2 = constant @c1 : f32[3]
  %3 = nn.conv {"strides":[1,1],"dilations":[1,1],"pads":[0,1,0,0],"group":1,"auto_pad":"not_set"} (%0, %1, %2) : f32[n,3,h,w]
  %4 = constant @c2 : f32[3]
  %5 = constant @c3 : f32[3]
  %6 = constant @c4 : f32[3]
  %7 = constant @c5 : f32[3]
  %8 = nn.batch_norm {"epsilon":0.001} (%3, %4, %5, %6, %7) : f32[n,3,h,w]
  %9 = ew.relu(%8) : f32[n,3,h,w]
}
"#;
        for g in check(
            &["fold-batch-norm"],
            src,
            &[&[&[1, 2, 3, 4]], &[&[2, 2, 1, 1]]],
        ) {
            assert!(!g.to_string().contains("batch_norm"), "{g}");
        }
    }

    #[test]
    fn batch_norm_folds_into_gemm_weights() {
        for (trans_b, w) in [(true, "f32[3,2]"), (false, "f32[2,3]")] {
            let src = format!(
                r#"graph (%0: f32[m,2] "x") -> (%8 "y") {{
  @c0 = const {w} [0.5, -1.0, 2.0, 0.25, -0.75, 1.5]
  @c1 = const f32[3] [1.5, 0.5, -2.0]
  @c2 = const f32[3] [0.0, 1.0, -1.0]
  @c3 = const f32[3] [0.2, -0.4, 0.6]
  @c4 = const f32[3] [1.0, 0.25, 4.0]
  @c5 = const f32[] [0.7]
  %1 = constant @c0 : {w}
  %2 = constant @c5 : f32[]
  %3 = nn.gemm {{"trans_a":false,"trans_b":{trans_b},"alpha":2.0,"beta":0.5}} (%0, %1, %2) : f32[m,3]
  %4 = constant @c1 : f32[3]
  %5 = constant @c2 : f32[3]
  %6 = constant @c3 : f32[3]
  %7 = constant @c4 : f32[3]
  %8 = nn.batch_norm {{"epsilon":0.00001}} (%3, %4, %5, %6, %7) : f32[m,3]
}}
"#
            );
            for g in check(&["fold-batch-norm"], &src, &[&[&[1, 2]], &[&[4, 2]]]) {
                assert!(!g.to_string().contains("batch_norm"), "{g}");
            }
        }
    }
}
