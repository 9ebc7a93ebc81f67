//! mlc's graph passes: input-shape binding, type refinement, constant folding and dead-code
//! elimination, so that graphs which compute their shapes in-graph reach static shapes.
//!
//! Exported models often compute shapes at run time: `Shape -> Gather -> Concat -> Reshape`,
//! position ids from `Range`, attention masks from `Expand`/`Where`/`Equal`. Once the input
//! shapes are known, all of that is constant. [`simplify`] runs the passes in the order that
//! exposes it:
//!
//! 1. [`bind()`]: graph inputs get their concrete shapes; symbols they fix are replaced everywhere.
//! 2. [`infer()`] and [`fold()`], interleaved node by node, to a fixpoint: each node's types are
//!    re-inferred from its (now more specific) input types and constant inputs, then the node is
//!    evaluated with the reference interpreter if its inputs are constant (or, for `Shape` and
//!    `Size`, if its input's shape is static) and replaced by `constant` nodes.
//! 3. [`control::flatten`]: `If`, `Scan` and `Loop` nodes whose iteration structure is now known
//!    become straight-line code; if any did, step 2 runs again, since the inlined bodies fold
//!    and refine further (and may expose nested control nodes to the next round).
//! 4. [`dce()`]: nodes and constants nothing uses any more go, and ids are compacted.
//!
//! ```
//! use mlc_ir::{ops::EwOp, DType, Dim, Graph, Op, Port, TensorType};
//!
//! let mut g = Graph::new();
//! let x = g.add_input("x", TensorType::new(DType::F32, vec![Dim::Sym("batch".into()), Dim::Known(4)]));
//! let ty = g.ty(x).clone();
//! let y = g.add_node(Op::Ew(EwOp::Relu), vec![Some(x)], vec![ty], vec![], None)[0];
//! g.outputs.push(Port { value: y, name: "y".into() });
//!
//! let stats = mlc_passes::simplify(&mut g, &[("x".into(), vec![2, 4])]).unwrap();
//! assert_eq!(g.ty(y).to_string(), "f32[2,4]");
//! assert_eq!(stats.non_static, 0);
//! ```
//!
//! [`pipeline::run`] is what compiled engines run: simplify, optimize, simplify again.
//!
//! After simplification, [`egraph::optimize`] rewrites the static graph by equality
//! saturation: algebraic identities, cancellation of data movement, and fusion of elementwise
//! chains and contraction epilogues into `control.composite` kernels, chosen by a cost model of
//! the target.
//!
//! Passes never fail because an op cannot be inferred or evaluated (yet): such nodes are left as
//! they are and counted in [`Stats::skipped`]. They fail on contradictions, which are bugs in the
//! graph or in an op's inference or kernel: a binding that contradicts a declared type, an
//! inferred or folded type that contradicts the recorded one.

pub mod batch;
pub mod bind;
pub mod control;
pub mod dce;
pub mod egraph;
pub mod fold;
pub mod infer;
pub mod pipeline;
pub mod specialize;
mod sweep;

pub use bind::bind;
pub use control::{ControlPolicy, flatten};
pub use dce::{DceStats, dce};
pub use fold::{FoldPolicy, fold};
pub use infer::infer;
pub use specialize::specialize;

use mlc_interp::{EvalCx, EvalError};
use mlc_ir::{Graph, Op, Tensor};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// The evaluator folding uses: `mlc_interp::eval_op`, or a stand-in in tests.
pub type EvalFn = fn(&Op, &[Option<&Tensor>], &EvalCx) -> Result<Vec<Tensor>, EvalError>;

/// Why a pass refused a graph.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PassError {
    #[error("no graph input is named {0:?}")]
    UnknownInput(String),
    #[error("input {0:?} is bound twice")]
    DuplicateBinding(String),
    #[error("input {input:?} has type {declared}, the binding gives {} dims: {given:?}", given.len())]
    RankMismatch {
        input: String,
        declared: String,
        given: Vec<usize>,
    },
    #[error("input {input:?} has type {declared}, the binding gives {given} at axis {axis}")]
    DimMismatch {
        input: String,
        axis: usize,
        declared: String,
        given: usize,
    },
    #[error("input {input:?} has type {declared}, the value given is {given}")]
    ValueMismatch {
        input: String,
        declared: String,
        given: String,
    },
    #[error("symbol {symbol:?} is bound to both {first} and {second}")]
    SymbolConflict {
        symbol: String,
        first: usize,
        second: usize,
    },
    /// Inference (or the constant table) gives a value a type that contradicts its recorded one.
    #[error("{at}: {value} is recorded as {recorded} but inferred as {inferred}")]
    TypeConflict {
        at: String,
        value: String,
        recorded: String,
        inferred: String,
    },
    /// The interpreter computed a value that contradicts the node's recorded output types.
    #[error("{at}: folding gave {got} where {expected} was recorded")]
    FoldMismatch {
        at: String,
        expected: String,
        got: String,
    },
    #[error("{at}: constant @{id} does not exist")]
    MissingConst { at: String, id: u32 },
}

/// Limits of [`simplify_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The most infer+fold sweeps to run; each one after the first exists only because the
    /// previous one changed something, so real graphs saturate in a handful.
    pub max_iterations: usize,
    pub fold: FoldPolicy,
    /// Which control nodes [`control::flatten`] turns into straight-line code.
    pub control: ControlPolicy,
    /// The most flatten + fixpoint rounds: each round after the first exists only because the
    /// previous one inlined a body holding control nodes of its own. Zero turns flattening off.
    pub max_control_rounds: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_iterations: 32,
            fold: FoldPolicy::default(),
            control: ControlPolicy::default(),
            max_control_rounds: 8,
        }
    }
}

/// Why the infer+fold loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopReason {
    /// A sweep changed nothing: the fixpoint.
    #[default]
    Saturated,
    /// `Options::max_iterations` sweeps ran and the last still changed something.
    IterationLimit,
}

/// Nodes a pass could not handle and left as they were, by phase and op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub count: usize,
    /// The first reason seen.
    pub reason: String,
}

/// What [`simplify`] did.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Ops before and after, counting those inside regions, not counting `constant` nodes.
    pub nodes_before: usize,
    pub nodes_after: usize,
    /// `constant` nodes after (folding turns ops into constants; dce removes the dead ones).
    pub constants_after: usize,
    /// The sizes the bindings gave to symbols.
    pub symbols: BTreeMap<String, usize>,
    /// Values whose types inference made more specific.
    pub refined: usize,
    /// Ops replaced by constants.
    pub folded: usize,
    /// Control nodes (`If`, `Scan`, `Loop`) replaced by straight-line code.
    pub flattened: usize,
    /// Nodes (ops and constants) that dead-code elimination removed.
    pub removed: usize,
    /// Infer+fold sweeps run, and why they stopped.
    pub iterations: usize,
    pub stop: StopReason,
    /// Values (in regions too) whose shape is still not static at the end.
    pub non_static: usize,
    /// Nodes left alone in the last sweep, keyed `"infer <op>"` or `"eval <op>"`.
    pub skipped: BTreeMap<String, Skipped>,
    pub time: Duration,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ops {} -> {} ({} constants), folded {}, refined {}, removed {}, {} sweeps ({:?}), {} non-static values, {:.1?}",
            self.nodes_before,
            self.nodes_after,
            self.constants_after,
            self.folded,
            self.refined,
            self.removed,
            self.iterations,
            self.stop,
            self.non_static,
            self.time
        )?;
        if self.flattened > 0 {
            write!(f, ", {} control nodes flattened", self.flattened)?;
        }
        for (k, s) in &self.skipped {
            write!(f, "\n  skipped {k} x{}: {}", s.count, s.reason)?;
        }
        Ok(())
    }
}

/// Binds input shapes, then folds and refines types to a fixpoint, then removes dead code.
pub fn simplify(graph: &mut Graph, bindings: &[(String, Vec<usize>)]) -> Result<Stats, PassError> {
    simplify_with(graph, bindings, &Options::default())
}

/// [`simplify`] with explicit limits and evaluator.
pub fn simplify_with(
    graph: &mut Graph,
    bindings: &[(String, Vec<usize>)],
    options: &Options,
) -> Result<Stats, PassError> {
    let start = Instant::now();
    let mut stats = Stats {
        nodes_before: graph.op_count(),
        ..Stats::default()
    };
    stats.symbols = bind(graph, bindings)?;

    let mode = sweep::Mode {
        infer: true,
        fold: Some(&options.fold),
    };
    let mut control_skipped = BTreeMap::new();
    let mut rounds = 0;
    loop {
        fixpoint(graph, &mode, options, &mut stats)?;
        if rounds >= options.max_control_rounds {
            break;
        }
        rounds += 1;
        let flat = control::flatten(graph, &options.control);
        stats.flattened += flat.rewritten;
        control_skipped = flat.skipped;
        if flat.rewritten == 0 {
            break;
        }
    }
    stats.skipped.extend(control_skipped);

    let d = dce(graph);
    stats.removed = d.nodes;
    stats.nodes_after = graph.op_count();
    stats.constants_after = count_constants(graph);
    stats.non_static = non_static_values(graph).len();
    stats.time = start.elapsed();
    Ok(stats)
}

/// Runs infer+fold sweeps until one changes nothing or the iteration limit, accumulating into
/// `stats`.
fn fixpoint(
    graph: &mut Graph,
    mode: &sweep::Mode,
    options: &Options,
    stats: &mut Stats,
) -> Result<(), PassError> {
    let mut sweeps = 0;
    stats.stop = StopReason::IterationLimit;
    while sweeps < options.max_iterations {
        sweeps += 1;
        stats.iterations += 1;
        // Failures are recounted every sweep so that the report shows what the fixpoint left.
        let mut tally = sweep::Tally::default();
        let changed = sweep::sweep(graph, mode, true, "", &mut tally)?;
        let back = infer::infer_backward(graph);
        let changed = changed || back > 0;
        stats.refined += tally.refined + back;
        stats.folded += tally.folded;
        stats.skipped = tally.skipped;
        if !changed {
            stats.stop = StopReason::Saturated;
            break;
        }
    }
    Ok(())
}

/// The values of `graph` and its regions whose shapes are not static, as `(path, value, type)`
/// where `path` names the region (empty at top level).
pub fn non_static_values(graph: &Graph) -> Vec<(String, String)> {
    let mut out = Vec::new();
    collect_non_static(graph, "", &mut out);
    out
}

fn collect_non_static(graph: &Graph, at: &str, out: &mut Vec<(String, String)>) {
    for (i, ty) in graph.values.iter().enumerate() {
        if ty.static_shape().is_none() {
            out.push((format!("{at}%{i}"), ty.to_string()));
        }
    }
    for (i, n) in graph.nodes.iter().enumerate() {
        for (r, region) in n.regions.iter().enumerate() {
            collect_non_static(region, &format!("{at}node {i} region {r}: "), out);
        }
    }
}

fn count_constants(graph: &Graph) -> usize {
    graph
        .nodes
        .iter()
        .map(|n| {
            usize::from(matches!(n.op, Op::Constant { .. }))
                + n.regions.iter().map(count_constants).sum::<usize>()
        })
        .sum()
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{policy, sym, ty};
    use mlc_ir::ops::EwOp;
    use mlc_ir::{DType, Dim, Port, TensorType};

    fn options(max_iterations: usize) -> Options {
        Options {
            max_iterations,
            fold: policy(),
            ..Options::default()
        }
    }

    /// `z = relu(x + relu(c))` with vague recorded types, plus a dead `cast(x)`.
    fn graph() -> Graph {
        let mut g = Graph::new();
        let x = g.add_input("x", ty(DType::F32, vec![sym("batch"), Dim::Known(4)]));
        let c =
            g.add_constant(Tensor::from_vec(&[4], vec![1f32, -2., 3., -4.]).expect("4 elements"));
        let unknown = || ty(DType::F32, vec![Dim::Unknown, Dim::Unknown]);
        let r = g.add_node(
            Op::Ew(EwOp::Relu),
            vec![Some(c)],
            vec![ty(DType::F32, vec![Dim::Unknown])],
            vec![],
            None,
        )[0];
        let y = g.add_node(
            Op::Ew(EwOp::Add),
            vec![Some(x), Some(r)],
            vec![unknown()],
            vec![],
            None,
        )[0];
        let z = g.add_node(
            Op::Ew(EwOp::Relu),
            vec![Some(y)],
            vec![unknown()],
            vec![],
            None,
        )[0];
        let _dead = g.add_node(
            Op::Ew(EwOp::Cast { to: DType::I64 }),
            vec![Some(x)],
            vec![TensorType::scalar(DType::I64)],
            vec![],
            None,
        );
        g.outputs.push(Port {
            value: z,
            name: "z".into(),
        });
        g
    }

    #[test]
    fn simplify_binds_folds_refines_and_cleans_up() {
        let mut g = graph();
        let s = simplify_with(&mut g, &[("x".into(), vec![2, 4])], &options(8))
            .expect("consistent graph");
        assert_eq!(
            (s.nodes_before, s.nodes_after, s.constants_after),
            (4, 2, 1)
        );
        assert_eq!((s.folded, s.removed, s.non_static), (1, 2, 0));
        assert_eq!((s.iterations, s.stop), (2, StopReason::Saturated));
        assert_eq!(s.symbols, BTreeMap::from([("batch".to_string(), 2)]));
        assert!(s.skipped.is_empty(), "{s}");
        let types: Vec<String> = g.values.iter().map(ToString::to_string).collect();
        assert_eq!(types, ["f32[2,4]", "f32[4]", "f32[2,4]", "f32[2,4]"]);
        assert_eq!(
            g.const_value(mlc_ir::ValueId(1))
                .and_then(|t| t.to_f64_vec().ok()),
            Some(vec![1., 0., 3., 0.])
        );
        assert_eq!(g.outputs[0].value, mlc_ir::ValueId(3));
    }

    #[test]
    fn simplify_stops_at_the_iteration_limit() {
        let mut g = graph();
        let s = simplify_with(&mut g, &[], &options(1)).expect("consistent graph");
        assert_eq!((s.iterations, s.stop), (1, StopReason::IterationLimit));
        // Without bindings, the symbol survives; the known dim is still inferred.
        assert_eq!(g.ty(g.outputs[0].value).to_string(), "f32[batch,4]");
        assert_eq!(s.non_static, 3);
    }

    #[test]
    fn simplify_reports_what_it_could_not_evaluate() {
        let mut g = graph();
        let s = simplify(&mut g, &[("x".into(), vec![1, 4])]).expect("consistent graph");
        // The interpreter's ew kernels may or may not exist yet; either way, nothing fails.
        assert_eq!(s.non_static, 0);
        assert!(s.skipped.keys().all(|k| k.starts_with("eval ")), "{s}");
    }

    #[test]
    fn simplify_works_inside_regions_without_binding_their_inputs() {
        let mut region = Graph::new();
        let a = region.add_input("a", ty(DType::F32, vec![sym("batch")]));
        let c = region.add_constant(Tensor::scalar(-1f32));
        let r = region.add_node(
            Op::Ew(EwOp::Relu),
            vec![Some(c)],
            vec![TensorType::scalar(DType::F32)],
            vec![],
            None,
        )[0];
        let y = region.add_node(
            Op::Ew(EwOp::Add),
            vec![Some(a), Some(r)],
            vec![ty(DType::F32, vec![Dim::Unknown])],
            vec![],
            None,
        )[0];
        let _dead = region.add_node(
            Op::Ew(EwOp::Relu),
            vec![Some(a)],
            vec![ty(DType::F32, vec![Dim::Unknown])],
            vec![],
            None,
        );
        region.outputs.push(Port {
            value: y,
            name: "y".into(),
        });

        let mut g = Graph::new();
        let x = g.add_input("x", ty(DType::F32, vec![sym("batch")]));
        let o = g.add_node(
            Op::Ew(EwOp::Relu),
            vec![Some(x)],
            vec![ty(DType::F32, vec![Dim::Unknown])],
            vec![region],
            None,
        )[0];
        g.outputs.push(Port {
            value: o,
            name: "o".into(),
        });
        let s =
            simplify_with(&mut g, &[("x".into(), vec![3])], &options(8)).expect("consistent graph");
        assert_eq!((s.folded, s.removed, s.nodes_after), (1, 2, 2));
        assert_eq!(g.ty(g.outputs[0].value).to_string(), "f32[3]");
        let region = &g.nodes[0].regions[0];
        let types: Vec<String> = region.values.iter().map(ToString::to_string).collect();
        assert_eq!(types, ["f32[batch]", "f32[]", "f32[batch]"]);
        assert_eq!(s.non_static, 2);
    }
}
