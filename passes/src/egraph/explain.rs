//! What the optimizer reports (`--explain`): for the whole graph, the e-graph's size, the
//! iterations, why saturation stopped, the time, cost and kernel count before and after; per
//! kernel of the result, the rules that built it and its cost. Printed as text or as JSON
//! (serde).

use super::convert::Origins;
use super::cost::{TargetInfo, kernel_cost};
use mlc_ir::{Graph, Op, TensorType};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Why saturation stopped: data, not an error.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// An iteration learned nothing new: every rule's consequences are in the e-graph.
    Saturated,
    IterationLimit(usize),
    NodeLimit(usize),
    /// Seconds.
    TimeLimit(f64),
    Other(String),
}

impl From<&egg::StopReason> for Stop {
    fn from(s: &egg::StopReason) -> Stop {
        match s {
            egg::StopReason::Saturated => Stop::Saturated,
            egg::StopReason::IterationLimit(n) => Stop::IterationLimit(*n),
            egg::StopReason::NodeLimit(n) => Stop::NodeLimit(*n),
            egg::StopReason::TimeLimit(t) => Stop::TimeLimit(*t),
            egg::StopReason::Other(s) => Stop::Other(s.clone()),
        }
    }
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Saturated => f.write_str("saturated"),
            Stop::IterationLimit(n) => write!(f, "iteration limit ({n})"),
            Stop::NodeLimit(n) => write!(f, "node limit ({n} e-nodes)"),
            Stop::TimeLimit(t) => write!(f, "time limit ({t} s; the result depends on timing)"),
            Stop::Other(s) => f.write_str(s),
        }
    }
}

/// One kernel of the optimized graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelReport {
    /// The node's index in the optimized graph.
    pub node: usize,
    /// `family.op`, or the composite's kind (`conv+add+relu`).
    pub name: String,
    /// The rules that built it; empty for a node kept as imported.
    pub rules: Vec<String>,
    /// Estimated time on the target, microseconds.
    pub cost_us: f64,
    /// The imported node's location, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loc: Option<String>,
}

/// One saturation phase: its e-graph's final size, iterations, why it stopped, its time
/// (saturation and extraction).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    pub iterations: usize,
    pub stop: Stop,
    pub ms: f64,
}

/// A fusion the optimized graph still offers but the rules did not take, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotFused {
    /// The producing and the consuming node, by index in the optimized graph.
    pub producer: usize,
    pub consumer: usize,
    pub reason: String,
}

/// What [`super::optimize`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub target: String,
    pub phases: Vec<PhaseReport>,
    /// Time in all: conversions, both phases, verification.
    pub total_ms: f64,
    pub cost_before_us: f64,
    pub cost_after_us: f64,
    pub kernels_before: usize,
    pub kernels_after: usize,
    /// How many times each rule applied, summed over iterations.
    pub applied: BTreeMap<String, usize>,
    pub kernels: Vec<KernelReport>,
    /// Producer-consumer pairs of fusible kernels left apart, with the reason.
    pub not_fused: Vec<NotFused>,
}

/// Per-kernel reports for `g`, whose node `i` came from `origins[i]`.
pub fn kernels(target: &TargetInfo, g: &Graph, origins: &Origins) -> Vec<KernelReport> {
    let mut out = vec![];
    for (i, (n, origin)) in g.nodes.iter().zip(origins).enumerate() {
        // Constants and views launch nothing (see `cost::kernel_count`).
        if matches!(n.op, Op::Constant { .. }) || super::cost::is_view(&n.op) {
            continue;
        }
        let mut seen = vec![];
        let ins: Vec<Option<&TensorType>> = n
            .inputs
            .iter()
            .flatten()
            .filter(|v| {
                let fresh = !seen.contains(*v);
                seen.push(**v);
                fresh
            })
            .map(|v| Some(g.ty(*v)))
            .collect();
        let outs: Vec<TensorType> = n.outputs.iter().map(|o| g.ty(*o).clone()).collect();
        out.push(KernelReport {
            node: i,
            name: origin
                .as_ref()
                .map_or_else(|| n.op.name(), |o| o.name.clone()),
            rules: origin
                .as_ref()
                .map(|o| o.rules.iter().map(|r| r.to_string()).collect())
                .unwrap_or_default(),
            cost_us: kernel_cost(target, &n.op, &n.regions, &ins, &outs),
            loc: n.loc.clone(),
        });
    }
    out
}

/// Every edge of `g` from a fusible producer into an elementwise consumer that fusion left
/// apart, with the condition of `rules/fusion.rs` that kept it so; `saturated` says whether the
/// fusion phase ran to saturation (else the pair may simply not have been reached).
pub fn not_fused(g: &Graph, saturated: bool) -> Vec<NotFused> {
    use super::rules::fusion::{MAX_BODY_OPS, node_shape};
    let producers = g.producers();
    let mut readers = vec![0usize; g.values.len()];
    for n in &g.nodes {
        let mut seen = vec![];
        for v in n.inputs.iter().flatten() {
            if !seen.contains(v) {
                seen.push(*v);
                readers[v.0 as usize] += 1;
            }
        }
    }
    for p in &g.outputs {
        readers[p.value.0 as usize] += 1;
    }
    let mut out = vec![];
    for (c, n) in g.nodes.iter().enumerate() {
        let Some((false, c_ops)) = node_shape(n) else {
            continue;
        };
        let mut seen = vec![];
        for v in n.inputs.iter().flatten() {
            if seen.contains(v) {
                continue;
            }
            seen.push(*v);
            let Some(p) = producers[v.0 as usize] else {
                continue;
            };
            let Some((_, p_ops)) = node_shape(&g.nodes[p]) else {
                continue;
            };
            let out_ty = n.outputs.first().map(|o| g.ty(*o));
            let reason = if readers[v.0 as usize] > 1 {
                format!(
                    "{v} has {} readers: fusing would compute it twice",
                    readers[v.0 as usize]
                )
            } else if !out_ty.is_some_and(|t| super::rules::fusion::same_size(Some(g.ty(*v)), t)) {
                format!(
                    "{v} is {} but the consumer computes {}: the producer would run once per broadcast copy",
                    g.ty(*v),
                    n.outputs
                        .first()
                        .map(|o| g.ty(*o).to_string())
                        .unwrap_or_default()
                )
            } else if p_ops + c_ops > super::rules::fusion::MAX_BODY_OPS {
                format!(
                    "the fused body would hold {} ops (limit {MAX_BODY_OPS})",
                    p_ops + c_ops
                )
            } else if saturated {
                "the cost model prices them cheaper apart".to_string()
            } else {
                "not reached within the saturation limits".to_string()
            };
            out.push(NotFused {
                producer: p,
                consumer: c,
                reason,
            });
        }
    }
    out
}

impl Report {
    /// Kernels built by fusion, by kind, with their count: the recognitions.
    pub fn fused_kinds(&self) -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for k in &self.kernels {
            if k.rules.iter().any(|r| r.starts_with("fuse-")) {
                *m.entry(k.name.as_str()).or_default() += 1;
            }
        }
        m
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        // Every field is plain data with string keys; serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let drop = if self.kernels_before == 0 {
            0.0
        } else {
            100.0 * (1.0 - self.kernels_after as f64 / self.kernels_before as f64)
        };
        writeln!(f, "target: {}", self.target)?;
        writeln!(
            f,
            "kernels: {} -> {} ({drop:.0}% fewer)",
            self.kernels_before, self.kernels_after
        )?;
        writeln!(
            f,
            "cost: {:.1} us -> {:.1} us",
            self.cost_before_us, self.cost_after_us
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "{} phase: {} e-nodes in {} classes after {} iterations, {:.1} ms; stopped: {}",
                p.phase, p.egraph_nodes, p.egraph_classes, p.iterations, p.ms, p.stop
            )?;
        }
        writeln!(f, "time: {:.1} ms", self.total_ms)?;
        if !self.applied.is_empty() {
            let a: Vec<String> = self
                .applied
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect();
            writeln!(f, "rules applied: {}", a.join(", "))?;
        }
        if !self.not_fused.is_empty() {
            writeln!(f, "fusions not taken:")?;
            for n in &self.not_fused {
                writeln!(
                    f,
                    "  node {:>4} -> node {:>4}: {}",
                    n.producer, n.consumer, n.reason
                )?;
            }
        }
        writeln!(f, "kernels:")?;
        for k in &self.kernels {
            write!(
                f,
                "  node {:>4}  {:<28} {:>10.2} us",
                k.node, k.name, k.cost_us
            )?;
            if !k.rules.is_empty() {
                write!(f, "  by {}", k.rules.join(", "))?;
            }
            if let Some(loc) = &k.loc {
                write!(f, "  at {loc}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
