//! Algebraic identities and canonical forms of elementwise ops: `x * 1`, `x + 0`, `x - 0`,
//! `x / 1` are `x`; `x / c` is `x * (1/c)` for float constants; `-(-x)` is `x`;
//! `relu(relu(x))` is `relu(x)`; `x ^ 2` is `x * x`; identities and same-type casts vanish.
//!
//! Every rule requires the result to have exactly the matched class's type, so an identity
//! that would broadcast (`x[3] * ones[2,3]`) never drops the broadcast.

use super::{Build, NodeRule, add_const, add_op, is_splat, ops_where, same_as, ty, value};
use crate::egraph::analysis::MlcEGraph;
use egg::Id;
use mlc_interp::EvalCx;
use mlc_ir::ops::{EwOp, MovementOp};
use mlc_ir::{Op, TensorType};

pub fn rules() -> Vec<NodeRule> {
    vec![
        NodeRule::rewrite("mul-by-one", mul_by_one),
        NodeRule::rewrite("add-zero", add_zero),
        NodeRule::rewrite("sub-zero", sub_zero),
        NodeRule::rewrite("div-by-one", div_by_one),
        NodeRule::rewrite("div-by-const", div_by_const),
        NodeRule::rewrite("neg-neg", neg_neg),
        NodeRule::rewrite("relu-relu", relu_relu),
        NodeRule::rewrite("pow-two", pow_two),
        NodeRule::rewrite("identity", identity),
        NodeRule::rewrite("cast-to-same-type", cast_to_same_type),
    ]
}

fn ew(op: &Op) -> Option<&EwOp> {
    match op {
        Op::Ew(e) => Some(e),
        _ => None,
    }
}

/// `op(x, k)` (and `op(k, x)` when `commutes`) where `k` is all `v` and `x` has the class's
/// type: the class is `x`.
fn neutral(eg: &MlcEGraph, class: Id, op: EwOp, v: f64, commutes: bool) -> Vec<Build> {
    let Some(want) = ty(eg, class) else {
        return vec![];
    };
    let mut out = vec![];
    for (_, _, c) in ops_where(eg, class, |o| (ew(o) == Some(&op)).then_some(())) {
        let [a, b] = c else { continue };
        let sides: &[(Id, Id)] = if commutes {
            &[(*a, *b), (*b, *a)]
        } else {
            &[(*a, *b)]
        };
        for &(x, k) in sides {
            if is_splat(eg, k, v) && ty(eg, x) == Some(want) {
                out.push(same_as(x));
            }
        }
    }
    out
}

fn mul_by_one(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    neutral(eg, class, EwOp::Mul, 1.0, true)
}

/// `x + 0` is `x` numerically; for floats, `-0.0 + 0.0` gives `+0.0`, which compares equal.
fn add_zero(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    neutral(eg, class, EwOp::Add, 0.0, true)
}

fn sub_zero(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    neutral(eg, class, EwOp::Sub, 0.0, false)
}

fn div_by_one(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    neutral(eg, class, EwOp::Div, 1.0, false)
}

/// `x / c` becomes `x * r` with `r = 1/c` computed once at compile time: a multiplication is
/// cheaper than a division on every target. Only for float constants with no zero, infinite or
/// NaN element, so `r` is finite and the product is within an ulp or two of the quotient.
fn div_by_const(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let mut out: Vec<Build> = vec![];
    for (_, _, c) in ops_where(eg, class, |o| (ew(o) == Some(&EwOp::Div)).then_some(())) {
        let [x, k] = *c else { continue };
        let Some(kv) = value(eg, k) else { continue };
        let ok = kv.dtype().is_float()
            && !is_splat(eg, k, 1.0)
            && kv
                .to_f64_vec()
                .is_ok_and(|v| v.iter().all(|e| e.is_finite() && *e != 0.0));
        let Some(kty) = ty(eg, k).cloned() else {
            continue;
        };
        if !ok {
            continue;
        }
        let Ok(mut r) = mlc_interp::eval_op(
            &Op::Ew(EwOp::Reciprocal),
            &[Some(kv)],
            &EvalCx {
                regions: &[],
                output_types: std::slice::from_ref(&kty),
            },
        ) else {
            continue;
        };
        let Some(r) = r.pop() else { continue };
        let want = want.clone();
        out.push(Box::new(move |eg, rule| {
            let r = add_const(eg, r);
            add_op(eg, Op::Ew(EwOp::Mul), vec![x, r], vec![], &want, vec![rule])
        }));
    }
    out
}

/// The operand of every `outer(y)` in the class such that `y`'s class holds `inner(x)`.
fn nested(
    eg: &MlcEGraph,
    class: Id,
    outer: impl Fn(&EwOp) -> bool + Copy,
    inner: impl Fn(&EwOp) -> bool + Copy,
) -> Vec<(Id, Id)> {
    let mut out = vec![];
    for (_, _, c) in ops_where(eg, class, move |o| ew(o).filter(|e| outer(e)).map(|_| ())) {
        let [y] = *c else { continue };
        for (_, _, c2) in ops_where(eg, y, move |o| ew(o).filter(|e| inner(e)).map(|_| ())) {
            if let [x] = *c2 {
                out.push((y, x));
            }
        }
    }
    out
}

fn neg_neg(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let want = ty(eg, class);
    nested(eg, class, |e| *e == EwOp::Neg, |e| *e == EwOp::Neg)
        .into_iter()
        .filter(|(_, x)| ty(eg, *x) == want)
        .map(|(_, x)| same_as(x))
        .collect()
}

/// `relu(relu(x))` is the inner `relu(x)`: relu is idempotent.
fn relu_relu(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let want = ty(eg, class);
    nested(eg, class, |e| *e == EwOp::Relu, |e| *e == EwOp::Relu)
        .into_iter()
        .filter(|(y, _)| ty(eg, *y) == want)
        .map(|(y, _)| same_as(y))
        .collect()
}

/// `x ^ 2` is `x * x` for float `x` (decomposed LayerNorm squares with `Pow`): a multiply
/// instead of a call to `pow`.
fn pow_two(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let mut out: Vec<Build> = vec![];
    for (_, _, c) in ops_where(eg, class, |o| (ew(o) == Some(&EwOp::Pow)).then_some(())) {
        let [x, k] = *c else { continue };
        if want.dtype.is_float() && is_splat(eg, k, 2.0) && ty(eg, x) == Some(&want) {
            let want = want.clone();
            out.push(Box::new(move |eg, rule| {
                add_op(eg, Op::Ew(EwOp::Mul), vec![x, x], vec![], &want, vec![rule])
            }));
        }
    }
    out
}

fn identity(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let want = ty(eg, class);
    ops_where(eg, class, |o| {
        matches!(o, Op::Movement(MovementOp::Identity)).then_some(())
    })
    .filter_map(|(_, _, c)| match c {
        [x] if ty(eg, *x) == want => Some(same_as(*x)),
        _ => None,
    })
    .collect()
}

fn cast_to_same_type(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let want: Option<&TensorType> = ty(eg, class);
    ops_where(eg, class, |o| match o {
        Op::Ew(EwOp::Cast { to }) => Some(*to),
        _ => None,
    })
    .filter_map(|(to, _, c)| match c {
        [x] if ty(eg, *x) == want && want.is_some_and(|w| w.dtype == to) => Some(same_as(*x)),
        _ => None,
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{check, check_all};

    #[test]
    fn identities_disappear() {
        for (rule, line, c) in [
            ("mul-by-one", "%2 = ew.mul(%1, %0)", "1.0"),
            ("add-zero", "%2 = ew.add(%0, %1)", "0.0"),
            ("sub-zero", "%2 = ew.sub(%0, %1)", "0.0"),
            ("div-by-one", "%2 = ew.div(%0, %1)", "1.0"),
        ] {
            let src = format!(
                "graph (%0: f32[a] \"x\") -> (%2 \"y\") {{\n  @c0 = const f32[] [{c}]\n  %1 = constant @c0 : f32[]\n  {line} : f32[a]\n}}\n"
            );
            for g in check(&[rule], &src, &[&[&[1]], &[&[7]]]) {
                assert_eq!(g.op_count(), 0, "{rule}: {g}");
            }
        }
    }

    #[test]
    fn identities_keep_broadcasts() {
        // `x[3] * ones[2,3]` is not `x`: the rule must not fire.
        let src = r#"graph (%0: f32[3] "x") -> (%2 "y") {
  @c0 = const f32[2,3] [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
  %1 = constant @c0 : f32[2,3]
  %2 = ew.mul(%0, %1) : f32[2,3]
}
"#;
        let g = &check_all(src, &[&[&[3]]])[0];
        assert_eq!(g.op_count(), 1);
    }

    #[test]
    fn division_by_a_constant_becomes_a_multiplication() {
        let src = r#"graph (%0: f32[a,b] "x") -> (%2 "y") {
  @c0 = const f32[] [3.0]
  %1 = constant @c0 : f32[]
  %2 = ew.div(%0, %1) : f32[a,b]
}
"#;
        for g in check(&["div-by-const"], src, SHAPES_2D) {
            assert!(g.to_string().contains("ew.mul"), "{g}");
        }
    }

    const SHAPES_2D: &[&[&[usize]]] = &[&[&[1, 1]], &[&[3, 4]], &[&[5, 2]]];

    #[test]
    fn double_negation_and_idempotent_relu() {
        let src = r#"graph (%0: f32[a] "x") -> (%4 "y") {
  %1 = ew.neg(%0) : f32[a]
  %2 = ew.neg(%1) : f32[a]
  %3 = ew.relu(%2) : f32[a]
  %4 = ew.relu(%3) : f32[a]
}
"#;
        for g in check(&["neg-neg", "relu-relu"], src, &[&[&[1]], &[&[9]]]) {
            assert_eq!(g.op_count(), 1, "{g}");
        }
    }

    #[test]
    fn square_is_a_multiplication() {
        let src = r#"graph (%0: f32[a,b] "x") -> (%2 "y") {
  @c0 = const f32[] [2.0]
  %1 = constant @c0 : f32[]
  %2 = ew.pow(%0, %1) : f32[a,b]
}
"#;
        for g in check(&["pow-two"], src, SHAPES_2D) {
            assert!(g.to_string().contains("ew.mul(%0, %0)"), "{g}");
        }
    }

    #[test]
    fn identity_and_same_type_cast_vanish() {
        let src = r#"graph (%0: f32[a] "x") -> (%2 "y") {
  %1 = movement.identity(%0) : f32[a]
  %2 = ew.cast {"to":"f32"} (%1) : f32[a]
}
"#;
        for g in check(&["identity", "cast-to-same-type"], src, &[&[&[4]], &[&[1]]]) {
            assert_eq!(g.op_count(), 0, "{g}");
        }
    }
}
