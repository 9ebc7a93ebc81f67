//! Equality saturation with [egg]: rewrites add equivalent forms of the graph to an e-graph,
//! and a cost model of the target extracts the cheapest.
//!
//! The pipeline of [`optimize`]:
//!
//! 1. [`convert::to_expr`]: the graph becomes a `RecExpr` of [`lang::MlcNode`]s: ops by
//!    reference to their attributes and regions, inputs and constants by reference to the
//!    graph's tables (weights never enter the e-graph), multi-output ops through `out`
//!    projections.
//! 2. An egg `Runner` applies the rules of [`rules`] under node, iteration and time limits; why
//!    it stopped is reported ([`Stop`]), never an error. This runs twice: the rewrite rules
//!    first, then on the extracted result the fusion rules (see [`rules::Phase`] for why). The [`analysis`] keeps every class's
//!    types and small constant values, and panics on a merge whose facts disagree (a bug in a
//!    rule).
//! 3. Greedy extraction (egg's `Extractor`) with [`cost::MlcCost`] picks the cheapest form of
//!    every class bottom-up, and [`convert::from_expr`] rebuilds the graph, which is verified.
//!
//! **Why greedy extraction.** It is linear in the e-graph and deterministic. Its cost is a
//! tree cost: a value used twice counts twice. All alternatives of one class read the same
//! operands, so that overcount rarely changes a choice, and the fusion rules refuse to fuse a
//! value with several consumers, which is where a tree cost would duplicate work. An optimal
//! ILP extraction (egg's `LpExtractor`) needs a solver dependency (CBC through `good_lp`) and
//! takes seconds on BERT-sized e-graphs, against the 1 s budget per model.
//!
//! **Determinism.** egg is built with its `deterministic` feature; e-nodes order by canonical
//! key, never by address; rules run in a fixed order. The node and iteration limits bound the
//! work well below the time limit, which only guards against pathological inputs (if it does
//! trigger, the result depends on the machine's speed, and the report says so).
//!
//! ```
//! use mlc_passes::egraph::{optimize, Options};
//!
//! let g = mlc_ir::parse_graph(r#"graph (%0: f32[4] "x") -> (%3 "y") {
//!   @c0 = const f32[] [2.0]
//!   %1 = constant @c0 : f32[]
//!   %2 = ew.div(%0, %1) : f32[4]
//!   %3 = ew.relu(%2) : f32[4]
//! }
//! "#)?;
//! let (opt, report) = optimize(g, &Options::default())?;
//! assert_eq!(report.kernels_before, 2);
//! assert_eq!(report.kernels_after, 1);
//! assert!(opt.to_string().contains(r#"control.composite {"kind":"mul+relu"}"#));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod analysis;
pub mod convert;
pub mod cost;
pub mod explain;
pub mod lang;
pub mod rules;

pub use analysis::{Facts, MlcAnalysis, MlcEGraph};
pub use cost::TargetInfo;
pub use explain::{KernelReport, NotFused, PhaseReport, Report, Stop};
pub use lang::MlcNode;
pub use rules::NodeRule;

use egg::{Extractor, Runner};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Why the optimizer refused or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptError {
    /// The input graph cannot be expressed (it is not in topological order, for example).
    #[error("cannot convert the graph: {0}")]
    Convert(#[from] convert::ConvertError),
    /// The optimized graph does not verify: a bug in a rule or in the conversion.
    #[error("internal error: the optimized graph does not verify: {0}")]
    Verify(String),
}

/// Limits and target of [`optimize`].
#[derive(Debug, Clone)]
pub struct Options {
    pub target: TargetInfo,
    /// Saturation stops after this many iterations...
    pub iter_limit: usize,
    /// ... or once the e-graph holds this many e-nodes...
    pub node_limit: usize,
    /// ... or after this long (each limit applies to each phase).
    pub time_limit: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            target: TargetInfo::x86_64(),
            iter_limit: 12,
            node_limit: 40_000,
            // Per phase: two phases stay within the 1 s budget per model.
            time_limit: Duration::from_millis(400),
        }
    }
}

/// Optimizes `graph` with every rule.
pub fn optimize(
    graph: mlc_ir::Graph,
    options: &Options,
) -> Result<(mlc_ir::Graph, Report), OptError> {
    optimize_with(graph, &rules::all(), options)
}

/// Optimizes `graph` with the given rules: the rewrite phase, then the fusion phase (see
/// [`rules::Phase`]), each saturating a fresh e-graph built from the previous phase's
/// extracted expression.
pub fn optimize_with(
    graph: mlc_ir::Graph,
    rules: &[NodeRule],
    options: &Options,
) -> Result<(mlc_ir::Graph, Report), OptError> {
    let start = Instant::now();
    let kernels_before = cost::kernel_count(&graph);
    let cost_before = cost::graph_cost(&options.target, &graph);
    let (mut expr, mut tables) = convert::to_expr(graph)?;

    let mut phases = vec![];
    let mut applied: BTreeMap<String, usize> = BTreeMap::new();
    for (phase, name) in [
        (rules::Phase::Rewrite, "rewrite"),
        (rules::Phase::Fuse, "fuse"),
    ] {
        let chosen: Vec<NodeRule> = rules.iter().filter(|r| r.phase == phase).copied().collect();
        let t = Instant::now();
        let mut egraph = MlcEGraph::new(MlcAnalysis {
            tables,
            ..MlcAnalysis::default()
        });
        let root = egraph.add_expr(&expr);
        let runner = Runner::default()
            .with_egraph(egraph)
            .with_iter_limit(options.iter_limit)
            .with_node_limit(options.node_limit)
            .with_time_limit(options.time_limit)
            .run(&rules::rewrites(&chosen));
        for it in &runner.iterations {
            for (rule, n) in &it.applied {
                *applied.entry(rule.to_string()).or_default() += n;
            }
        }
        let mut egraph = runner.egraph;
        expr = {
            let extractor = Extractor::new(
                &egraph,
                cost::MlcCost {
                    egraph: &egraph,
                    target: &options.target,
                },
            );
            extractor.find_best(root).1
        };
        tables = std::mem::take(&mut egraph.analysis.tables);
        phases.push(PhaseReport {
            phase: name.to_string(),
            egraph_nodes: egraph.total_number_of_nodes(),
            egraph_classes: egraph.number_of_classes(),
            iterations: runner.iterations.len(),
            stop: runner
                .stop_reason
                .as_ref()
                .map_or(Stop::Saturated, Stop::from),
            ms: t.elapsed().as_secs_f64() * 1e3,
        });
    }

    let (optimized, origins) = convert::from_expr(&expr, tables)?;
    if let Err(errors) = mlc_ir::verify(&optimized) {
        let first: Vec<String> = errors.iter().take(3).map(ToString::to_string).collect();
        return Err(OptError::Verify(first.join("; ")));
    }
    let fuse_saturated = phases.last().is_some_and(|p| p.stop == Stop::Saturated);
    let report = Report {
        target: options.target.name.to_string(),
        phases,
        total_ms: start.elapsed().as_secs_f64() * 1e3,
        cost_before_us: cost_before,
        cost_after_us: cost::graph_cost(&options.target, &optimized),
        kernels_before,
        kernels_after: cost::kernel_count(&optimized),
        applied,
        kernels: explain::kernels(&options.target, &optimized, &origins),
        not_fused: explain::not_fused(&optimized, fuse_saturated),
    };
    Ok((optimized, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"graph (%0: f32[8,16] "x", %1: f32[16,4] "w") -> (%6 "y") {
  @c0 = const f32[] [4.0]
  @c1 = const f32[] [1.0]
  %2 = nn.matmul(%0, %1) : f32[8,4]
  %3 = constant @c0 : f32[]
  %4 = ew.div(%2, %3) : f32[8,4]
  %5 = constant @c1 : f32[]
  %6 = ew.mul(%4, %5) : f32[8,4]
}
"#;

    #[test]
    fn output_is_deterministic() {
        let run = || {
            let g = mlc_ir::parse_graph(SRC).expect("parses");
            let (g, r) = optimize(g, &Options::default()).expect("optimizes");
            (g.to_string(), r.kernels_after, r.applied)
        };
        let first = run();
        for _ in 0..3 {
            assert_eq!(run(), first);
        }
        assert_eq!(first.1, 1, "{}", first.0);
    }

    #[test]
    fn limits_are_reported_not_errors() {
        let g = mlc_ir::parse_graph(SRC).expect("parses");
        let options = Options {
            iter_limit: 1,
            ..Options::default()
        };
        let (_, r) = optimize(g, &options).expect("optimizes");
        assert_eq!(r.phases[0].stop, Stop::IterationLimit(1));
        assert_eq!(r.phases[1].stop, Stop::IterationLimit(1));
    }
}
