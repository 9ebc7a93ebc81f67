//! Cancellation of data movement: a transpose of a transpose is one transpose (or none), a
//! view of a view (`reshape`, `flatten`, `squeeze`, `unsqueeze`) is one reshape of the
//! original, a view, transpose or slice that changes nothing is its operand, and a transpose
//! feeding an elementwise op is hoisted past it, so that transposes around elementwise code
//! meet and cancel.

use super::{Build, NodeRule, add_op, ops_where, same_as, ty, value};
use crate::egraph::analysis::MlcEGraph;
use egg::Id;
use mlc_ir::ops::{EwOp, MovementOp};
use mlc_ir::{Dim, Op, TensorType};

pub fn rules() -> Vec<NodeRule> {
    vec![
        NodeRule::rewrite("transpose-transpose", transpose_transpose),
        NodeRule::rewrite("noop-movement", noop_movement),
        NodeRule::rewrite("view-view", view_view),
        NodeRule::rewrite("transpose-hoist", transpose_hoist),
    ]
}

fn transpose(op: &Op) -> Option<&Vec<usize>> {
    match op {
        Op::Movement(MovementOp::Transpose { perm }) => Some(perm),
        _ => None,
    }
}

/// Ops that only reinterpret the shape of their first operand (row-major data unchanged).
fn is_view(op: &Op) -> bool {
    matches!(
        op,
        Op::Movement(
            MovementOp::Reshape { .. }
                | MovementOp::Flatten { .. }
                | MovementOp::Squeeze { .. }
                | MovementOp::Unsqueeze { .. }
        )
    )
}

/// `transpose(transpose(x, p), q)` is `transpose(x, r)` with `r[i] = p[q[i]]`: output dim `i`
/// of the outer is its input's dim `q[i]`, which is `x`'s dim `p[q[i]]`. When `r` is the
/// identity the class is `x` itself (left to `noop-movement` once the new node exists).
fn transpose_transpose(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let mut out: Vec<Build> = vec![];
    for (q, _, c) in ops_where(eg, class, transpose) {
        let [y] = *c else { continue };
        for (p, _, c2) in ops_where(eg, y, transpose) {
            let [x] = *c2 else { continue };
            if p.len() != q.len() || q.iter().any(|&i| i >= p.len()) {
                continue;
            }
            let r: Vec<usize> = q.iter().map(|&i| p[i]).collect();
            let want = want.clone();
            if r.iter().enumerate().all(|(i, &d)| i == d) {
                if ty(eg, x) == Some(&want) {
                    out.push(same_as(x));
                }
                continue;
            }
            out.push(Box::new(move |eg, rule| {
                add_op(
                    eg,
                    Op::Movement(MovementOp::Transpose { perm: r }),
                    vec![x],
                    vec![],
                    &want,
                    vec![rule],
                )
            }));
        }
    }
    out
}

/// How one operand of an elementwise op crosses a hoisted transpose.
#[derive(Clone, Copy)]
enum Across {
    /// `transpose(x, p)`: the op takes `x`.
    Inner(Id),
    /// Every dim 1 (or absent): broadcasts the same either way.
    Keep(Id),
    /// A small constant of full rank: the op takes `transpose(c, p⁻¹)`, which folds.
    Permute(Id),
}

/// `ew(transpose(x, p), transpose(y, p), c)` is `transpose(ew(x, y, transpose(c, p⁻¹)), p)`:
/// an elementwise op commutes with a permutation of the dims of all its operands. Operands
/// that are not transposed by the same `p` must broadcast alike either way: all-ones shapes
/// stay, small full-rank constants are permuted back (a constant transpose that
/// `fold-constants` folds); anything else blocks the rule, which therefore never adds a
/// transpose of run-time data. Repeated, transposes rise through elementwise chains until they
/// meet another transpose and `transpose-transpose` cancels the pair (exported attention and
/// channels-last blocks: `transpose → add/mul/act → transpose back`).
fn transpose_hoist(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let rank = want.shape.len();
    let ew = |o: &Op| match o {
        Op::Ew(EwOp::BitCast { .. }) => None,
        Op::Ew(_) => Some(()),
        _ => None,
    };
    let ones = |t: &TensorType| t.shape.iter().all(|d| *d == Dim::Known(1));
    let mut out: Vec<Build> = vec![];
    for (_, o, c) in ops_where(eg, class, ew) {
        // The permutation: that of the first operand that is a transpose of full rank.
        let perm = c.iter().find_map(|&k| {
            ops_where(eg, k, transpose)
                .map(|(p, _, _)| p)
                .find(|p| p.len() == rank)
                .cloned()
        });
        let Some(p) = perm else { continue };
        let args: Option<Vec<Across>> = c
            .iter()
            .map(|&k| {
                if let Some(x) = ops_where(eg, k, transpose)
                    .find(|(q, _, _)| **q == p)
                    .and_then(|(_, _, cc)| cc.first().copied())
                {
                    return Some(Across::Inner(x));
                }
                match ty(eg, k) {
                    None if eg[k].data.types.is_empty() => Some(Across::Keep(k)),
                    Some(t) if ones(t) => Some(Across::Keep(k)),
                    Some(t) if t.shape.len() == rank && value(eg, k).is_some() => {
                        Some(Across::Permute(k))
                    }
                    _ => None,
                }
            })
            .collect();
        let Some(args) = args else { continue };
        let mut inv = vec![0; rank];
        for (i, &d) in p.iter().enumerate() {
            inv[d] = i;
        }
        // The result before the transpose: dim `p[i]` of it is dim `i` of `want`.
        let mut inner = want.clone();
        for (i, &d) in p.iter().enumerate() {
            inner.shape[d] = want.shape[i].clone();
        }
        let (op, want) = (o.op.clone(), want.clone());
        out.push(Box::new(move |eg, rule| {
            let mut kids = Vec::with_capacity(args.len());
            for a in args {
                kids.push(match a {
                    Across::Inner(x) | Across::Keep(x) => x,
                    Across::Permute(k) => {
                        let t = ty(eg, k)?.clone();
                        let mut back = t.clone();
                        for (j, &d) in inv.iter().enumerate() {
                            back.shape[j] = t.shape[d].clone();
                        }
                        add_op(
                            eg,
                            Op::Movement(MovementOp::Transpose { perm: inv.clone() }),
                            vec![k],
                            vec![],
                            &back,
                            vec![rule],
                        )?
                    }
                });
            }
            let y = add_op(eg, op, kids, vec![], &inner, vec![rule])?;
            add_op(
                eg,
                Op::Movement(MovementOp::Transpose { perm: p }),
                vec![y],
                vec![],
                &want,
                vec![rule],
            )
        }));
    }
    out
}

/// A view, transpose or slice whose result has its operand's exact type is the operand: views
/// keep the data, a transpose that keeps the type is the identity permutation (or permutes
/// dims of size 1, which moves no data either), and a unit-step slice that keeps every dim's
/// length selects the whole range (a contiguous run as long as the dim starts at 0).
/// Exporters leave such slices behind (`x[:, :, :, 0:1]` of a size-1 dim); they would
/// otherwise cost a full copy.
fn noop_movement(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class) else {
        return vec![];
    };
    ops_where(eg, class, |o| {
        let identity_perm =
            transpose(o).is_some_and(|p| p.iter().enumerate().all(|(i, &d)| i == d));
        (is_view(o) || identity_perm || unit_step_slice(o)).then_some(())
    })
    .filter_map(|(_, _, c)| {
        let x = *c.first()?;
        (ty(eg, x) == Some(want)).then(|| same_as(x))
    })
    .collect()
}

/// A slice with constant bounds and unit (or default) steps: it keeps a dim whole exactly
/// when the dim's length is unchanged. Negative steps reverse, so they never qualify.
fn unit_step_slice(op: &Op) -> bool {
    match op {
        Op::Movement(MovementOp::Slice {
            starts: Some(_),
            ends: Some(_),
            steps,
            ..
        }) => steps.as_ref().is_none_or(|s| s.iter().all(|&k| k == 1)),
        _ => false,
    }
}

/// `view2(view1(x))` is `reshape(x)` to the outer's static shape, given as an attribute: both
/// only reinterpret row-major data. Only when that shape has no zero dim (a `0` in a reshape
/// target means "copy the input dim").
fn view_view(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let Some(dims) = want.static_shape() else {
        return vec![];
    };
    if dims.contains(&0) {
        return vec![];
    }
    let target: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    let mut out: Vec<Build> = vec![];
    for (_, _, c) in ops_where(eg, class, |o| is_view(o).then_some(())) {
        let Some(&y) = c.first() else { continue };
        for (_, _, c2) in ops_where(eg, y, |o| is_view(o).then_some(())) {
            let Some(&x) = c2.first() else { continue };
            let (want, target) = (want.clone(), target.clone());
            out.push(Box::new(move |eg, rule| {
                add_op(
                    eg,
                    Op::Movement(MovementOp::Reshape {
                        shape: Some(target),
                        allowzero: false,
                    }),
                    vec![x],
                    vec![],
                    &want,
                    vec![rule],
                )
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{check, check_all};

    #[test]
    fn transposes_compose_and_cancel() {
        let src = r#"graph (%0: f32[a,b,c] "x") -> (%2 "y", %4 "z") {
  %1 = movement.transpose {"perm":[1,2,0]} (%0) : f32[b,c,a]
  %2 = movement.transpose {"perm":[2,0,1]} (%1) : f32[a,b,c]
  %3 = movement.transpose {"perm":[0,2,1]} (%0) : f32[a,c,b]
  %4 = movement.transpose {"perm":[1,0,2]} (%3) : f32[c,a,b]
}
"#;
        let shapes: &[&[&[usize]]] = &[&[&[2, 3, 4]], &[&[1, 5, 2]]];
        for g in check(&["transpose-transpose"], src, shapes) {
            // `y` is `x`; `z` is one transpose of `x`.
            assert_eq!(g.op_count(), 1, "{g}");
            assert_eq!(g.outputs[0].value, g.inputs[0].value, "{g}");
        }
    }

    #[test]
    fn transposes_rise_through_elementwise_code_and_cancel() {
        // transpose → add (of another transpose) → mul by a constant → relu → transpose back:
        // the elementwise ops run on the untransposed data, and no transpose is left.
        let src = r#"graph (%0: f32[a,3,c] "x", %1: f32[a,3,c] "y") -> (%8 "z") {
  @c0 = const f32[1,1,3] [0.5, -1.0, 2.0]
  %2 = movement.transpose {"perm":[0,2,1]} (%0) : f32[a,c,3]
  %3 = movement.transpose {"perm":[0,2,1]} (%1) : f32[a,c,3]
  %4 = ew.add(%2, %3) : f32[a,c,3]
  %5 = constant @c0 : f32[1,1,3]
  %6 = ew.mul(%4, %5) : f32[a,c,3]
  %7 = ew.relu(%6) : f32[a,c,3]
  %8 = movement.transpose {"perm":[0,2,1]} (%7) : f32[a,3,c]
}
"#;
        let shapes: &[&[&[usize]]] = &[&[&[2, 3, 4], &[2, 3, 4]], &[&[1, 3, 1], &[1, 3, 1]]];
        for g in check(
            &["transpose-hoist", "transpose-transpose", "fold-constants"],
            src,
            shapes,
        ) {
            let text = g.to_string();
            assert!(!text.contains("movement.transpose"), "{g}");
            assert!(text.contains("ew.relu"), "{g}");
        }
    }

    #[test]
    fn transposes_stay_where_run_time_operands_would_need_one() {
        // `y` is not transposed and not a constant: hoisting would transpose it at run time.
        let src = r#"graph (%0: f32[a,b] "x", %1: f32[b,a] "y") -> (%3 "z") {
  %2 = movement.transpose {"perm":[1,0]} (%0) : f32[b,a]
  %3 = ew.add(%2, %1) : f32[b,a]
}
"#;
        for g in check_all(src, &[&[&[2, 3], &[3, 2]]]) {
            assert!(g.to_string().contains("movement.transpose"), "{g}");
        }
    }

    #[test]
    fn whole_unit_step_slices_vanish() {
        // `y` keeps every dim (ends past the end): the operand itself. `z` drops a row, and
        // `w` reverses a dim of the same length: both stay.
        let src = r#"graph (%0: f32[a,b] "x") -> (%1 "y", %2 "z", %3 "w") {
  %1 = movement.slice {"starts":[0,0],"ends":[1000000000,2147483647],"axes":[0,1],"steps":null} (%0) : f32[a,b]
  %2 = movement.slice {"starts":[1],"ends":[1000000000],"axes":[0],"steps":[1]} (%0) : f32[?,b]
  %3 = movement.slice {"starts":[-1],"ends":[-1000000000],"axes":[1],"steps":[-1]} (%0) : f32[a,b]
}
"#;
        for g in check(&["noop-movement"], src, &[&[&[3, 4]], &[&[2, 1]]]) {
            assert_eq!(g.op_count(), 2, "{g}");
            assert_eq!(g.outputs[0].value, g.inputs[0].value, "{g}");
        }
    }

    #[test]
    fn views_of_views_are_one_reshape() {
        let src = r#"graph (%0: f32[a,b] "x") -> (%3 "y") {
  %1 = movement.unsqueeze {"axes":[0]} (%0) : f32[1,a,b]
  %2 = movement.flatten {"axis":2} (%1) : f32[a,b]
  %3 = movement.reshape {"shape":[-1],"allowzero":false} (%2) : f32[?]
}
"#;
        for g in check(&["view-view"], src, &[&[&[2, 3]], &[&[4, 1]]]) {
            assert_eq!(g.op_count(), 1, "{g}");
        }
    }
}
