//! Activations recognized from their decomposed forms, so that they become one op (and then
//! one epilogue): GELU from its `erf` form (`x * 0.5 * (1 + erf(x / sqrt(2)))`, as BERT
//! exports it, in any association of the product) and from its `tanh` form
//! (`0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`, as JAX exports it in magika, and
//! with `pow(x, 3)` as HF's GPT-2 `NewGELU` does), SiLU from `x * sigmoid(x)`, HardSwish from
//! `x * hard_sigmoid(x)` with PyTorch's constants.

use super::{Build, NodeRule, add_op, is_splat, ops_where, ty, value};
use crate::egraph::analysis::MlcEGraph;
use egg::Id;
use mlc_ir::Op;
use mlc_ir::ops::ew::{EwOp, GeluApprox};

pub fn rules() -> Vec<NodeRule> {
    vec![
        NodeRule::rewrite("gelu-erf", gelu_erf),
        NodeRule::rewrite("gelu-tanh", gelu_tanh),
        NodeRule::rewrite("silu", silu),
        NodeRule::rewrite("hard-swish", hard_swish),
    ]
}

fn is(op: &Op, want: EwOp) -> bool {
    matches!(op, Op::Ew(e) if *e == want)
}

/// Whether the class is a constant whose every element is within `1e-6` (relative) of `v`.
fn near(eg: &MlcEGraph, id: Id, v: f64) -> bool {
    value(eg, id)
        .and_then(|t| t.to_f64_vec().ok())
        .is_some_and(|xs| !xs.is_empty() && xs.iter().all(|x| (x - v).abs() <= 1e-6 * v.abs()))
}

/// The operand pairs of the `ew.mul` nodes of a class.
fn products(eg: &MlcEGraph, id: Id) -> Vec<(Id, Id)> {
    ops_where(eg, id, |o| is(o, EwOp::Mul).then_some(()))
        .filter_map(|(_, _, c)| match c {
            [a, b] => Some((*a, *b)),
            _ => None,
        })
        .collect()
}

/// The three factors of a product of three, in every association: `(a*b)*c`, `a*(b*c)`.
fn triple_products(eg: &MlcEGraph, id: Id) -> Vec<[Id; 3]> {
    let mut out = vec![];
    for (p, q) in products(eg, id) {
        for (a, b) in products(eg, p) {
            out.push([a, b, q]);
        }
        for (a, b) in products(eg, q) {
            out.push([p, a, b]);
        }
    }
    out
}

/// Whether `s` is `1 + erf(x / sqrt(2))` (or `x * (1/sqrt(2))`, as `div-by-const` leaves it).
fn is_one_plus_erf_of(eg: &MlcEGraph, s: Id, x: Id) -> bool {
    ops_where(eg, s, |o| is(o, EwOp::Add).then_some(())).any(|(_, _, c)| {
        let [a, b] = c else { return false };
        [(*a, *b), (*b, *a)].into_iter().any(|(e, one)| {
            is_splat(eg, one, 1.0)
                && ops_where(eg, e, |o| is(o, EwOp::Erf).then_some(())).any(|(_, _, c)| {
                    let [arg] = c else { return false };
                    let scaled = ops_where(eg, *arg, |o| match o {
                        Op::Ew(EwOp::Mul) => Some(std::f64::consts::FRAC_1_SQRT_2),
                        Op::Ew(EwOp::Div) => Some(std::f64::consts::SQRT_2),
                        _ => None,
                    });
                    scaled.into_iter().any(|(k, o, c)| match c {
                        [p, q] if *p == x && near(eg, *q, k) => true,
                        [p, q] if *q == x && near(eg, *p, k) => is(&o.op, EwOp::Mul),
                        _ => false,
                    })
                })
        })
    })
}

fn gelu_erf(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    if !want.dtype.is_float() {
        return vec![];
    }
    let mut out: Vec<Build> = vec![];
    for f in triple_products(eg, class) {
        // Which factor is the half, which the input, which `1 + erf(...)`.
        for (h, x, s) in [
            (0, 1, 2),
            (0, 2, 1),
            (1, 0, 2),
            (1, 2, 0),
            (2, 0, 1),
            (2, 1, 0),
        ] {
            let (h, x, s) = (eg.find(f[h]), eg.find(f[x]), eg.find(f[s]));
            if near(eg, h, 0.5) && ty(eg, x) == Some(&want) && is_one_plus_erf_of(eg, s, x) {
                let want = want.clone();
                out.push(Box::new(move |eg, rule| {
                    let op = Op::Ew(EwOp::Gelu {
                        approximate: GeluApprox::None,
                    });
                    add_op(eg, op, vec![x], vec![], &want, vec![rule])
                }));
                return out;
            }
        }
    }
    out
}

/// The ways to write class `id` as a product of at most `max` factors (itself included), by
/// expanding `ew.mul` nodes; at most 64 ways, which bounds the work on long products.
fn flat_products(eg: &MlcEGraph, id: Id, max: usize) -> Vec<Vec<Id>> {
    let id = eg.find(id);
    let mut out = vec![vec![id]];
    if max < 2 {
        return out;
    }
    for (a, b) in products(eg, id) {
        for fa in flat_products(eg, a, max - 1) {
            for fb in flat_products(eg, b, max - fa.len()) {
                if out.len() >= 64 {
                    return out;
                }
                let mut f = fa.clone();
                f.extend(fb);
                out.push(f);
            }
        }
    }
    out
}

/// How many times `f` multiplies `x`: 1 for `x` itself, `k` for `pow(x, k)` with `k` exactly 2
/// or 3 (HF's NewGELU writes the cube as `pow(x, 3.0)`), 0 otherwise.
fn degree_in(eg: &MlcEGraph, f: Id, x: Id) -> usize {
    let (f, x) = (eg.find(f), eg.find(x));
    if f == x {
        return 1;
    }
    ops_where(eg, f, |o| is(o, EwOp::Pow).then_some(()))
        .find_map(|(_, _, c)| match c {
            [b, k] if eg.find(*b) == x => [2u8, 3]
                .into_iter()
                .find(|&d| is_splat(eg, *k, f64::from(d))),
            _ => None,
        })
        .map_or(0, usize::from)
}

/// Whether `factors` are, in some order, one constant near each of `consts` and powers of `x`
/// (itself or `pow(x, 2 | 3)`) whose degrees add up to `n`, and nothing else.
fn is_monomial(eg: &MlcEGraph, factors: &[Id], consts: &[f64], x: Id, n: usize) -> bool {
    let mut degree = 0;
    let mut rest: Vec<Id> = vec![];
    for &f in factors {
        match degree_in(eg, f, x) {
            0 => rest.push(f),
            d => degree += d,
        }
    }
    if degree != n || rest.len() != consts.len() {
        return false;
    }
    consts
        .iter()
        .all(|k| match rest.iter().position(|f| near(eg, *f, *k)) {
            Some(i) => {
                rest.swap_remove(i);
                true
            }
            None => false,
        })
}

/// Whether `s` is `1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))`, the cube as a product of
/// `x`s in any association or as `pow(x, 3)`.
fn is_one_plus_tanh_of(eg: &MlcEGraph, s: Id, x: Id) -> bool {
    const K1: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
    const K2: f64 = 0.044715;
    ops_where(eg, s, |o| is(o, EwOp::Add).then_some(())).any(|(_, _, c)| {
        let [a, b] = c else { return false };
        [(*a, *b), (*b, *a)].into_iter().any(|(t, one)| {
            is_splat(eg, one, 1.0)
                && ops_where(eg, t, |o| is(o, EwOp::Tanh).then_some(())).any(|(_, _, c)| {
                    let [u] = c else { return false };
                    flat_products(eg, *u, 2).iter().any(|f| {
                        let [p, q] = f[..] else { return false };
                        [(p, q), (q, p)].into_iter().any(|(k, v)| {
                            near(eg, k, K1)
                                && ops_where(eg, v, |o| is(o, EwOp::Add).then_some(())).any(
                                    |(_, _, c)| {
                                        let [a, b] = c else { return false };
                                        [(*a, *b), (*b, *a)].into_iter().any(|(y, w)| {
                                            eg.find(y) == x
                                                && flat_products(eg, w, 4)
                                                    .iter()
                                                    .any(|f| is_monomial(eg, f, &[K2], x, 3))
                                        })
                                    },
                                )
                        })
                    })
                })
        })
    })
}

fn gelu_tanh(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    if !want.dtype.is_float() {
        return vec![];
    }
    for f in flat_products(eg, class, 3) {
        if f.len() != 3 {
            continue;
        }
        for (h, x, s) in [
            (0, 1, 2),
            (0, 2, 1),
            (1, 0, 2),
            (1, 2, 0),
            (2, 0, 1),
            (2, 1, 0),
        ] {
            let (h, x, s) = (f[h], f[x], f[s]);
            if near(eg, h, 0.5) && ty(eg, x) == Some(&want) && is_one_plus_tanh_of(eg, s, x) {
                let want = want.clone();
                return vec![Box::new(move |eg, rule| {
                    let op = Op::Ew(EwOp::Gelu {
                        approximate: GeluApprox::Tanh,
                    });
                    add_op(eg, op, vec![x], vec![], &want, vec![rule])
                })];
            }
        }
    }
    vec![]
}

/// `x * g(x)` where the class of `g(x)` holds an op `pick` accepts: the op `make` gives.
fn times_gate_of_self(
    eg: &MlcEGraph,
    class: Id,
    pick: fn(&Op) -> bool,
    make: fn() -> Op,
) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let mut out: Vec<Build> = vec![];
    for (a, b) in products(eg, class) {
        for (x, g) in [(a, b), (b, a)] {
            let gated = ops_where(eg, g, |o| pick(o).then_some(()))
                .any(|(_, _, c)| matches!(c, [y] if eg.find(*y) == eg.find(x)));
            if gated && ty(eg, x) == Some(&want) && want.dtype.is_float() {
                let want = want.clone();
                out.push(Box::new(move |eg, rule| {
                    add_op(eg, make(), vec![x], vec![], &want, vec![rule])
                }));
                return out;
            }
        }
    }
    out
}

fn silu(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    times_gate_of_self(
        eg,
        class,
        |o| is(o, EwOp::Sigmoid),
        || Op::Ew(EwOp::Swish { alpha: 1.0 }),
    )
}

/// `x * hard_sigmoid(x)` with `alpha = 1/6`, `beta = 1/2` is HardSwish's definition.
fn hard_swish(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    times_gate_of_self(
        eg,
        class,
        |o| {
            matches!(o, Op::Ew(EwOp::HardSigmoid { alpha, beta })
                if (f64::from(*alpha) - 1.0 / 6.0).abs() < 1e-7 && *beta == 0.5)
        },
        || Op::Ew(EwOp::HardSwish),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{check, check_all};

    const SHAPES: &[&[&[usize]]] = &[&[&[2, 3]], &[&[1, 16]]];

    #[test]
    fn gelu_is_recognized_in_bert_form() {
        // As BERT exports it: div by sqrt(2), erf, add 1, mul by x, mul by 0.5.
        let src = r#"graph (%0: f32[a,b] "x") -> (%9 "y") {
  @c0 = const f32[] [1.4142135]
  @c1 = const f32[] [1.0]
  @c2 = const f32[] [0.5]
  %1 = constant @c0 : f32[]
  %2 = ew.div(%0, %1) : f32[a,b]
  %3 = ew.erf(%2) : f32[a,b]
  %4 = constant @c1 : f32[]
  %5 = ew.add(%3, %4) : f32[a,b]
  %6 = ew.mul(%0, %5) : f32[a,b]
  %7 = constant @c2 : f32[]
  %8 = ew.mul(%6, %7) : f32[a,b]
  %9 = ew.relu(%8) : f32[a,b]
}
"#;
        for g in check(&["gelu-erf", "div-by-const"], src, SHAPES) {
            assert!(g.to_string().contains("ew.gelu"), "{g}");
            assert_eq!(g.op_count(), 2, "{g}");
        }
    }

    #[test]
    fn gelu_is_recognized_in_its_tanh_form_as_jax_writes_it() {
        // x * (0.5 * (1 + tanh(0.7978846 * (x + x * (x * (0.044715 * x)))))), as in magika.
        let src = r#"graph (%0: f32[a,b] "x") -> (%14 "y") {
  @c0 = const f32[] [0.044715]
  @c1 = const f32[] [0.7978846]
  @c2 = const f32[] [1.0]
  @c3 = const f32[] [0.5]
  %1 = constant @c0 : f32[]
  %2 = ew.mul(%1, %0) : f32[a,b]
  %3 = ew.mul(%0, %2) : f32[a,b]
  %4 = ew.mul(%0, %3) : f32[a,b]
  %5 = ew.add(%0, %4) : f32[a,b]
  %6 = constant @c1 : f32[]
  %7 = ew.mul(%6, %5) : f32[a,b]
  %8 = ew.tanh(%7) : f32[a,b]
  %9 = constant @c2 : f32[]
  %10 = ew.add(%9, %8) : f32[a,b]
  %11 = constant @c3 : f32[]
  %12 = ew.mul(%11, %10) : f32[a,b]
  %13 = ew.mul(%0, %12) : f32[a,b]
  %14 = ew.neg(%13) : f32[a,b]
}
"#;
        for g in check(&["gelu-tanh"], src, SHAPES) {
            assert!(
                g.to_string().contains(r#"ew.gelu {"approximate":"tanh"}"#),
                "{g}"
            );
            assert_eq!(g.op_count(), 2, "{g}");
        }
    }

    #[test]
    fn gelu_is_recognized_in_its_tanh_form_with_pow_as_gpt2_writes_it() {
        // HF's NewGELU: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * pow(x, 3.0)))).
        let src = r#"graph (%0: f32[a,b] "x") -> (%14 "y") {
  @c0 = const f32[] [0.5]
  @c1 = const f32[] [3.0]
  @c2 = const f32[] [0.044715]
  @c3 = const f32[] [0.7978846]
  @c4 = const f32[] [1.0]
  %1 = constant @c0 : f32[]
  %2 = ew.mul(%0, %1) : f32[a,b]
  %3 = constant @c1 : f32[]
  %4 = ew.pow(%0, %3) : f32[a,b]
  %5 = constant @c2 : f32[]
  %6 = ew.mul(%4, %5) : f32[a,b]
  %7 = ew.add(%0, %6) : f32[a,b]
  %8 = constant @c3 : f32[]
  %9 = ew.mul(%7, %8) : f32[a,b]
  %10 = ew.tanh(%9) : f32[a,b]
  %11 = constant @c4 : f32[]
  %12 = ew.add(%10, %11) : f32[a,b]
  %13 = ew.mul(%2, %12) : f32[a,b]
  %14 = ew.neg(%13) : f32[a,b]
}
"#;
        for g in check(&["gelu-tanh"], src, SHAPES) {
            assert!(
                g.to_string().contains(r#"ew.gelu {"approximate":"tanh"}"#),
                "{g}"
            );
            assert_eq!(g.op_count(), 2, "{g}");
        }
    }

    #[test]
    fn gelu_tanh_wants_the_cube_exactly() {
        // pow(x, 2.9) is not x^3: nothing is recognized and the graph keeps its ops.
        let src = r#"graph (%0: f32[a,b] "x") -> (%13 "y") {
  @c0 = const f32[] [0.5]
  @c1 = const f32[] [2.9]
  @c2 = const f32[] [0.044715]
  @c3 = const f32[] [0.7978846]
  @c4 = const f32[] [1.0]
  %1 = constant @c0 : f32[]
  %2 = ew.mul(%0, %1) : f32[a,b]
  %3 = constant @c1 : f32[]
  %4 = ew.pow(%0, %3) : f32[a,b]
  %5 = constant @c2 : f32[]
  %6 = ew.mul(%4, %5) : f32[a,b]
  %7 = ew.add(%0, %6) : f32[a,b]
  %8 = constant @c3 : f32[]
  %9 = ew.mul(%7, %8) : f32[a,b]
  %10 = ew.tanh(%9) : f32[a,b]
  %11 = constant @c4 : f32[]
  %12 = ew.add(%10, %11) : f32[a,b]
  %13 = ew.mul(%2, %12) : f32[a,b]
}
"#;
        for g in check_all(src, SHAPES) {
            assert!(!g.to_string().contains("ew.gelu"), "{g}");
            assert!(g.to_string().contains("ew.pow"), "{g}");
        }
    }

    #[test]
    fn silu_and_hard_swish_are_recognized() {
        let src = r#"graph (%0: f32[a,b] "x") -> (%2 "y", %4 "z") {
  %1 = ew.sigmoid(%0) : f32[a,b]
  %2 = ew.mul(%0, %1) : f32[a,b]
  %3 = ew.hard_sigmoid {"alpha":0.16666667,"beta":0.5} (%0) : f32[a,b]
  %4 = ew.mul(%3, %0) : f32[a,b]
}
"#;
        for g in check(&["silu", "hard-swish"], src, SHAPES) {
            let text = g.to_string();
            assert!(
                text.contains("ew.swish") && text.contains("ew.hard_swish"),
                "{g}"
            );
            assert_eq!(g.op_count(), 2, "{g}");
        }
    }
}
