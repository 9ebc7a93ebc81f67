//! The graph pipeline that every compiled engine runs before lowering: bind and simplify, then
//! (at optimization level 1) equality saturation for the target, then simplify again.
//!
//! One function, so that `mlc run --engine kir|cpu`, `mlc compile` and the tests all compile
//! the same graph. The second `simplify` is cheap (a few milliseconds) and catches what the
//! optimizer exposes to folding: rules that compute new constants (folded batch
//! normalizations, requantization scales) leave constant-only subgraphs and dead constants
//! behind, which it folds and removes.
//!
//! ```
//! use mlc_passes::pipeline::{Level, Options, run};
//!
//! let mut g = mlc_ir::parse_graph(r#"graph (%0: f32[n,4] "x") -> (%3 "y") {
//!   @c0 = const f32[] [2.0]
//!   %1 = constant @c0 : f32[]
//!   %2 = ew.div(%0, %1) : f32[n,4]
//!   %3 = ew.relu(%2) : f32[n,4]
//! }
//! "#)?;
//! let report = run(&mut g, &[("x".into(), vec![3, 4])], &Options::default())?;
//! assert_eq!(report.optimize.as_ref().map(|r| r.kernels_after), Some(1));
//! let report = run(&mut g.clone(), &[], &Options { level: Level::O0, ..Options::default() })?;
//! assert!(report.optimize.is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::egraph::{self, OptError, Report, TargetInfo};
use crate::{PassError, Stats};
use mlc_ir::{Graph, Tensor};
use std::fmt;
use std::time::{Duration, Instant};

/// How much the pipeline optimizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Level {
    /// Simplification only: the graph as imported, with shapes bound and constants folded.
    O0,
    /// Simplification, then equality saturation ([`egraph::optimize`]).
    #[default]
    O1,
}

impl Level {
    /// The level numbered `n` (`0` or `1`).
    pub fn from_number(n: u8) -> Option<Level> {
        match n {
            0 => Some(Level::O0),
            1 => Some(Level::O1),
            _ => None,
        }
    }
}

/// What [`run`] does.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub level: Level,
    /// The optimizer's target and limits.
    pub optimize: egraph::Options,
    /// Input values known at compile time: those that feed shape-like operands are baked in
    /// ([`crate::specialize`]) and reported in [`PipelineReport::specialized`] as the guard.
    pub values: Vec<(String, Tensor)>,
}

impl Options {
    /// Level `level` for `target`, with the optimizer's default limits.
    pub fn new(level: Level, target: TargetInfo) -> Options {
        Options {
            level,
            optimize: egraph::Options {
                target,
                ..egraph::Options::default()
            },
            values: Vec::new(),
        }
    }
}

/// Why the pipeline failed. The cause is part of the message and deliberately not also an
/// error `source()`, so that printing the chain (`{:#}`) does not say it twice.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PipelineError {
    #[error("simplifying the graph failed: {0}")]
    Simplify(PassError),
    #[error("optimizing the graph failed: {0}")]
    Optimize(OptError),
}

impl From<PassError> for PipelineError {
    fn from(e: PassError) -> Self {
        PipelineError::Simplify(e)
    }
}

impl From<OptError> for PipelineError {
    fn from(e: OptError) -> Self {
        PipelineError::Optimize(e)
    }
}

/// What [`run`] did, phase by phase.
#[derive(Clone, Debug)]
pub struct PipelineReport {
    pub simplify: Stats,
    /// The optimizer's report, at level 1.
    pub optimize: Option<Report>,
    /// The second simplification, at level 1.
    pub resimplify: Option<Stats>,
    /// The inputs specialized to the values given in [`Options::values`]: a compiled program
    /// must refuse other values for them.
    pub specialized: Vec<(String, Tensor)>,
    /// The whole pipeline's time.
    pub time: Duration,
}

impl fmt::Display for PipelineReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "simplify: {}", self.simplify)?;
        if !self.specialized.is_empty() {
            let names: Vec<&str> = self.specialized.iter().map(|(n, _)| n.as_str()).collect();
            writeln!(f, "specialized to their values: {}", names.join(", "))?;
        }
        if let Some(r) = &self.optimize {
            let stops: Vec<String> = r.phases.iter().map(|p| p.stop.to_string()).collect();
            writeln!(
                f,
                "optimize ({}): kernels {} -> {}, cost {:.1} us -> {:.1} us, {} e-nodes, stopped: {}, {:.1} ms",
                r.target,
                r.kernels_before,
                r.kernels_after,
                r.cost_before_us,
                r.cost_after_us,
                r.phases.iter().map(|p| p.egraph_nodes).max().unwrap_or(0),
                stops.join(", "),
                r.total_ms
            )?;
        }
        if let Some(s) = &self.resimplify {
            writeln!(f, "simplify again: {s}")?;
        }
        Ok(())
    }
}

/// Binds `bindings`, simplifies, and at [`Level::O1`] optimizes for the target and simplifies
/// again. `graph` is replaced by the result.
pub fn run(
    graph: &mut Graph,
    bindings: &[(String, Vec<usize>)],
    options: &Options,
) -> Result<PipelineReport, PipelineError> {
    let start = Instant::now();
    let mut simplify = crate::simplify(graph, bindings)?;
    let specialized = if !options.values.is_empty() {
        let bound = crate::specialize(graph, &options.values)?;
        simplify.non_static = crate::non_static_values(graph).len();
        bound
    } else {
        Vec::new()
    };
    let (optimize, resimplify) = match options.level {
        Level::O0 => (None, None),
        Level::O1 => {
            let (optimized, report) = egraph::optimize(std::mem::take(graph), &options.optimize)?;
            *graph = optimized;
            let again = crate::simplify(graph, &[])?;
            (Some(report), Some(again))
        }
    };
    Ok(PipelineReport {
        simplify,
        optimize,
        resimplify,
        specialized,
        time: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"graph (%0: f32[n,8] "x", %1: f32[8,4] "w") -> (%4 "y") {
  @c0 = const f32[] [0.5]
  %2 = nn.matmul(%0, %1) : f32[n,4]
  %3 = constant @c0 : f32[]
  %4 = ew.mul(%2, %3) : f32[n,4]
}
"#;

    #[test]
    fn levels_differ_only_in_optimization() {
        let bind = [("x".to_string(), vec![2, 8])];
        let g = mlc_ir::parse_graph(SRC).expect("parses");
        let (mut a, mut b) = (g.clone(), g);
        let r0 = run(
            &mut a,
            &bind,
            &Options::new(Level::O0, TargetInfo::x86_64()),
        )
        .expect("O0");
        let r1 = run(&mut b, &bind, &Options::new(Level::O1, TargetInfo::sm_90())).expect("O1");
        assert!(r0.optimize.is_none() && r0.resimplify.is_none());
        assert_eq!(crate::egraph::cost::kernel_count(&a), 2);
        let report = r1.optimize.clone().expect("optimized at O1");
        assert_eq!((report.target.as_str(), report.kernels_after), ("sm_90", 1));
        assert_eq!(crate::egraph::cost::kernel_count(&b), 1);
        assert!(mlc_ir::verify(&b).is_ok());
        assert!(
            r1.to_string().contains("optimize (sm_90): kernels 2 -> 1"),
            "{r1}"
        );
    }

    #[test]
    fn binding_errors_are_reported() {
        let mut g = mlc_ir::parse_graph(SRC).expect("parses");
        let err = run(&mut g, &[("nope".into(), vec![1])], &Options::default()).unwrap_err();
        assert!(matches!(err, PipelineError::Simplify(_)), "{err}");
    }
}
