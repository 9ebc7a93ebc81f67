//! One-hot products are table lookups.
//!
//! Exporters encode an embedding as `matmul(cast<f32>(equal(i, range(K))), W)`: a `[..., K]`
//! one-hot matrix (MagiKa builds one row per input byte) times a `[K, N]` table. Each output
//! row is one row of `W` (or zeros when `i` is outside `0..K`), so the product's `2·K·N`
//! flops per row are a copy of `N` values:
//!
//! ```text
//! matmul(cast(equal(i, [0, 1, .., K-1])), W)  =  gather(W ++ [0 … 0], squeeze(clip(i, -1, K)))
//! ```
//!
//! The appended zero row takes every index outside the table: `clip` maps those above to `K`,
//! those below to `-1`, which `gather` reads from the end, row `K` again.
//!
//! An elementwise op applied to a lookup with constant other operands (the bias and GELU after
//! an embedding) then moves into the table, evaluated once here on `K + 1` rows instead of at
//! run time on every looked-up row (`gather-table-fold`):
//!
//! ```text
//! f(gather(T, i), c)  =  gather(f(T, c'), i)      c' = c without the dims that index rows
//! ```
//!
//! provided `c` does not vary along the looked-up dims (they are 1 in `c`), and the table
//! is no larger than the result (never more work than the op it replaces).
//!
//! Conditions: `W` is a finite f32 constant (`0 · inf` would make every row of the product NaN,
//! where the lookup keeps one), the range is a constant `[1, …, 1, K]` holding exactly
//! `0..K`, and `i`'s last dim is 1 (it broadcasts against the range). Results are equal up to
//! the sign of a zero.

use super::{Build, NodeRule, add_const, add_op, ops_where, ty};
use crate::egraph::analysis::MlcEGraph;
use crate::egraph::lang::MlcNode;
use egg::Id;
use mlc_interp::EvalCx;
use mlc_ir::ops::{EwOp, MovementOp, NnOp};
use mlc_ir::{DType, Graph, InferCx, Op, Tensor, TensorType};

pub fn rules() -> Vec<NodeRule> {
    vec![
        NodeRule::rewrite("one-hot-lookup", one_hot_lookup),
        NodeRule::rewrite("gather-table-fold", gather_table_fold),
    ]
}

/// The tensor of a class holding a constant leaf.
fn constant(eg: &MlcEGraph, class: Id) -> Option<&Tensor> {
    eg[class].nodes.iter().find_map(|n| match n {
        MlcNode::Const(i) => eg.analysis.tables.consts.get(*i as usize),
        _ => None,
    })
}

/// `(i, K)` when `class` computes `cast<f32>(equal(i, range))` (either operand order) with
/// `range` a constant `[1, …, 1, K]` holding `0..K` and `i` an integer tensor whose last dim
/// is 1.
fn one_hot(eg: &MlcEGraph, class: Id) -> Option<(Id, usize)> {
    for (_, _, c) in ops_where(eg, class, |o| {
        matches!(o, Op::Ew(EwOp::Cast { to: DType::F32 })).then_some(())
    }) {
        let [e] = *c else { continue };
        for (_, _, c2) in ops_where(eg, e, |o| matches!(o, Op::Ew(EwOp::Equal)).then_some(())) {
            let [p, q] = *c2 else { continue };
            for (i, r) in [(p, q), (q, p)] {
                if let Some(k) = range_len(eg, r)
                    && index_column(eg, i)
                {
                    return Some((i, k));
                }
            }
        }
    }
    None
}

/// `K` when `class` is an integer constant of shape `[1, …, 1, K]` holding `0, 1, …, K-1`.
fn range_len(eg: &MlcEGraph, class: Id) -> Option<usize> {
    let t = constant(eg, class)?;
    let (&k, lead) = t.shape().split_last()?;
    if !t.dtype().is_int() || lead.iter().any(|&d| d != 1) || k == 0 {
        return None;
    }
    let v = t.to_f64_vec().ok()?;
    v.iter()
        .enumerate()
        .all(|(j, &x)| x == j as f64)
        .then_some(k)
}

/// Whether `class` is an integer tensor whose last dim is statically 1.
fn index_column(eg: &MlcEGraph, class: Id) -> bool {
    ty(eg, class)
        .is_some_and(|t| t.dtype.is_int() && t.shape.last().and_then(|d| d.known()) == Some(1))
}

fn one_hot_lookup(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let mut out: Vec<Build> = vec![];
    for (_, _, c) in ops_where(eg, class, |o| {
        matches!(o, Op::Nn(NnOp::Matmul)).then_some(())
    }) {
        let [a, w] = *c else { continue };
        let Some((i, k)) = one_hot(eg, a) else {
            continue;
        };
        let Some(table) = constant(eg, w) else {
            continue;
        };
        let ([rows, n], DType::F32) = (table.shape(), table.dtype()) else {
            continue;
        };
        let (rows, n) = (*rows, *n);
        let Ok(wv) = table.to_f64_vec() else { continue };
        if rows != k || wv.iter().any(|x| !x.is_finite()) {
            continue;
        }
        let Some(index_ty) = ty(eg, i).cloned() else {
            continue;
        };
        let want = want.clone();
        out.push(Box::new(move |eg, rule| {
            let mut ext: Vec<f32> = wv.iter().map(|&x| x as f32).collect();
            ext.extend(std::iter::repeat_n(0.0f32, n));
            let ext = add_const(eg, Tensor::from_vec(&[k + 1, n], ext).ok()?);
            let bound = |v: f32| {
                Tensor::from_vec(&[], vec![v])
                    .ok()?
                    .cast(index_ty.dtype)
                    .ok()
            };
            let (lo, hi) = (bound(-1.0)?, bound(k as f32)?);
            let (lo, hi) = (add_const(eg, lo), add_const(eg, hi));
            let clip = add_op(
                eg,
                Op::Ew(EwOp::Clip),
                vec![i, lo, hi],
                vec![],
                &index_ty,
                vec![rule],
            )?;
            // `i`'s unit last dim goes, so the lookup has the product's shape.
            let axis = index_ty.rank() - 1;
            let idx = add_inferred(
                eg,
                Op::Movement(MovementOp::Squeeze {
                    axes: Some(vec![axis]),
                }),
                vec![clip],
                rule,
            )?;
            add_op(
                eg,
                Op::Movement(MovementOp::Gather { axis: 0 }),
                vec![ext, idx],
                vec![],
                &want,
                vec![rule],
            )
        }));
    }
    out
}

/// `(table, index)` of an axis-0 `gather` in `class` whose table is a constant.
fn table_lookup(eg: &MlcEGraph, class: Id) -> Option<(Id, Id)> {
    ops_where(eg, class, |o| {
        matches!(o, Op::Movement(MovementOp::Gather { axis: 0 })).then_some(())
    })
    .find_map(|(_, _, c)| match *c {
        [t, i] if constant(eg, t).is_some() => Some((t, i)),
        _ => None,
    })
}

/// The most elements a folded table may have.
const MAX_TABLE: usize = 1 << 20;

fn gather_table_fold(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let Some(out_dims) = want.static_shape() else {
        return vec![];
    };
    let mut found: Vec<Build> = vec![];
    for (op, o, c) in ops_where(eg, class, |o| match o {
        Op::Ew(e) => Some(e.clone()),
        _ => None,
    }) {
        // Ops with regions or several results are not plain pointwise maps.
        if !o.regions.is_empty() || o.types.len() != 1 {
            continue;
        }
        // Exactly one operand is a lookup; the others are constants.
        let lookups: Vec<(usize, (Id, Id))> = c
            .iter()
            .enumerate()
            .filter_map(|(j, &k)| table_lookup(eg, k).map(|l| (j, l)))
            .collect();
        let [(at, (table, index))] = lookups[..] else {
            continue;
        };
        let Some(t) = constant(eg, table) else {
            continue;
        };
        let row_dims = &t.shape()[1..];
        // The looked-up dims lead the result; the table's row dims end it.
        let Some(lead) = out_dims.len().checked_sub(row_dims.len()) else {
            continue;
        };
        if out_dims[lead..] != *row_dims
            || t.len() > MAX_TABLE
            || t.len() > out_dims.iter().product()
        {
            continue;
        }
        let mut args: Vec<Option<Tensor>> = vec![];
        let mut ok = true;
        for (j, &k) in c.iter().enumerate() {
            if j == at {
                args.push(Some(t.clone()));
                continue;
            }
            let Some(v) = constant(eg, k).or_else(|| super::value(eg, k)) else {
                ok = false;
                break;
            };
            // Right-aligned against the result: 1 wherever rows are looked up.
            let r = v.shape().len();
            let skip = r.saturating_sub(row_dims.len());
            if r > out_dims.len() || v.shape()[..skip].iter().any(|&d| d != 1) {
                ok = false;
                break;
            }
            let Ok(v2) = v
                .to_le_bytes()
                .and_then(|b| Tensor::from_le_bytes(v.dtype(), &v.shape()[skip..], &b))
            else {
                ok = false;
                break;
            };
            args.push(Some(v2));
        }
        if !ok {
            continue;
        }
        let refs: Vec<Option<&Tensor>> = args.iter().map(|a| a.as_ref()).collect();
        let table_ty = TensorType::fixed(want.dtype, t.shape());
        let Ok(mut res) = mlc_interp::eval_op(
            &Op::Ew(op),
            &refs,
            &EvalCx {
                regions: &[],
                output_types: std::slice::from_ref(&table_ty),
            },
        ) else {
            continue;
        };
        let (Some(folded), true) = (res.pop(), res.is_empty()) else {
            continue;
        };
        if folded.shape() != t.shape() || folded.dtype() != want.dtype {
            continue;
        }
        let want = want.clone();
        found.push(Box::new(move |eg, rule| {
            let table = add_const(eg, folded);
            add_op(
                eg,
                Op::Movement(MovementOp::Gather { axis: 0 }),
                vec![table, index],
                vec![],
                &want,
                vec![rule],
            )
        }));
    }
    found
}

/// Adds a single-output op node of whatever type inference gives it (an intermediate of a
/// rule's result, whose class is new).
fn add_inferred(eg: &mut MlcEGraph, op: Op, children: Vec<Id>, rule: &'static str) -> Option<Id> {
    let types: Vec<Option<TensorType>> = children.iter().map(|c| ty(eg, *c).cloned()).collect();
    let values: Vec<Option<&Tensor>> = children.iter().map(|c| super::value(eg, *c)).collect();
    let inferred = op
        .infer(&InferCx {
            inputs: &types,
            consts: &values,
            regions: &Vec::<Graph>::new(),
            n_outputs: 1,
        })
        .ok()?;
    let [t] = inferred.as_slice() else {
        return None;
    };
    add_op(eg, op, children, vec![], &t.clone(), vec![rule])
}

#[cfg(test)]
mod tests {
    use super::super::testkit::check;

    #[test]
    fn one_hot_products_become_lookups() {
        // Indices -1..=2 (random -2..=1 plus 1) against a table of 2 rows: one below, two
        // inside, one above the table.
        let src = r#"graph (%0: i32[a,b,1] "i") -> (%6 "y") {
  @c0 = const i32[1,1,2] [0, 1]
  @c1 = const f32[2,3] [0.5, -1.0, 2.0, 0.25, -0.75, 1.5]
  @c2 = const i32[] [1]
  %1 = constant @c0 : i32[1,1,2]
  %2 = constant @c1 : f32[2,3]
  %3 = constant @c2 : i32[]
  %7 = ew.add(%0, %3) : i32[a,b,1]
  %4 = ew.equal(%7, %1) : bool[a,b,2]
  %5 = ew.cast {"to":"f32"} (%4) : f32[a,b,2]
  %6 = nn.matmul(%5, %2) : f32[a,b,3]
}
"#;
        for g in check(&["one-hot-lookup"], src, &[&[&[1, 6, 1]], &[&[3, 5, 1]]]) {
            let text = g.to_string();
            assert!(text.contains("movement.gather"), "{text}");
            assert!(!text.contains("nn.matmul"), "{text}");
        }
    }

    #[test]
    fn pointwise_ops_of_a_lookup_fold_into_the_table() {
        // A bias per column, then GELU, then a scale whose dims all broadcast: all three fold
        // into the table, leaving one gather. `z` divides by an input: it stays.
        let src = r#"graph (%0: i64[a,b] "i", %9: f32[3] "s") -> (%7 "y", %8 "z") {
  @c0 = const f32[4,3] [0.5, -1.0, 2.0, 0.25, -0.75, 1.5, 1.0, 0.1, -0.2, 0.3, 0.4, -0.6]
  @c1 = const f32[1,1,3] [0.1, -0.2, 0.3]
  @c2 = const f32[1,1] [2.0]
  %1 = constant @c0 : f32[4,3]
  %2 = constant @c1 : f32[1,1,3]
  %3 = constant @c2 : f32[1,1]
  %4 = movement.gather {"axis":0} (%1, %0) : f32[a,b,3]
  %5 = ew.add(%4, %2) : f32[a,b,3]
  %6 = ew.gelu {"approximate":"tanh"} (%5) : f32[a,b,3]
  %7 = ew.mul(%3, %6) : f32[a,b,3]
  %8 = ew.div(%4, %9) : f32[a,b,3]
}
"#;
        let shapes: &[&[&[usize]]] = &[&[&[2, 5], &[3]], &[&[1, 7], &[3]]];
        for g in check(&["gather-table-fold"], src, shapes) {
            let text = g.to_string();
            assert_eq!(text.matches("movement.gather").count(), 2, "{text}");
            assert_eq!(g.op_count(), 3, "{text}");
        }
    }
}
