//! The cost model: a target as plain numbers ([`TargetInfo`]), the estimated time of one
//! kernel from the bytes it moves and the FLOPs it does, and the egg [`CostFunction`] that
//! extraction minimizes.
//!
//! A kernel costs one launch, plus its memory traffic (every distinct operand read once, every
//! output written once) at the target's bandwidth, plus its arithmetic at the target's peak
//! rate. A composite is one kernel: one launch, its *external* bytes (the values inside its
//! body never reach memory) and the FLOPs of its body. That is all fusion needs to win: it
//! removes launches and intermediate traffic and adds nothing. Views (`reshape`, `flatten`,
//! `squeeze`, `unsqueeze`, `identity`) move no data; they cost a tenth of a launch, for the
//! bookkeeping, so removing one is still a (small) improvement.

use super::analysis::MlcEGraph;
use super::lang::MlcNode;
use egg::{CostFunction, Id, Language};
use mlc_ir::ops::{EwOp, MovementOp, NnOp, QuantOp};
use mlc_ir::{Dim, Graph, Op, TensorType};
use serde::Serialize;

/// What the cost model knows of a target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetInfo {
    pub name: &'static str,
    /// Sustained memory bandwidth, bytes per microsecond.
    pub bytes_per_us: f64,
    /// Sustained f32 arithmetic rate, FLOPs per microsecond.
    pub flops_per_us: f64,
    /// The fixed cost of one kernel, microseconds.
    pub launch_us: f64,
}

impl TargetInfo {
    /// A current x86-64 server core pair: ~20 GB/s, ~100 GFLOP/s with AVX2 FMA, and a
    /// microsecond to enter a parallel loop nest.
    pub fn x86_64() -> TargetInfo {
        TargetInfo {
            name: "x86_64",
            bytes_per_us: 20e3,
            flops_per_us: 100e3,
            launch_us: 1.0,
        }
    }

    /// An H100 (sm_90): ~3 TB/s of HBM3, ~60 TFLOP/s of f32, ~4 us per kernel launch.
    pub fn sm_90() -> TargetInfo {
        TargetInfo {
            name: "sm_90",
            bytes_per_us: 3.0e6,
            flops_per_us: 60e6,
            launch_us: 4.0,
        }
    }

    /// The target named `name` (`x86_64` or `sm_90`).
    pub fn by_name(name: &str) -> Option<TargetInfo> {
        match name {
            "x86_64" => Some(TargetInfo::x86_64()),
            "sm_90" => Some(TargetInfo::sm_90()),
            _ => None,
        }
    }
}

/// Elements of a type; unknown and symbolic dims count as 1 (shapes are static by the time
/// models are optimized; text tests may leave them symbolic).
fn elems(t: &TensorType) -> f64 {
    t.shape
        .iter()
        .map(|d| match d {
            Dim::Known(n) => *n as f64,
            _ => 1.0,
        })
        .product()
}

fn bytes(t: &TensorType) -> f64 {
    elems(t) * t.dtype.size().unwrap_or(1) as f64
}

/// Whether an op only reinterprets its operand's shape.
pub fn is_view(op: &Op) -> bool {
    matches!(
        op,
        Op::Movement(
            MovementOp::Reshape { .. }
                | MovementOp::Flatten { .. }
                | MovementOp::Squeeze { .. }
                | MovementOp::Unsqueeze { .. }
                | MovementOp::Identity
        )
    )
}

/// FLOPs of one op with the given operand and result types (rough weights: a transcendental
/// function is worth 8 multiply-adds, a division 4).
fn flops(
    op: &Op,
    regions: &[Graph],
    inputs: &[Option<&TensorType>],
    outputs: &[TensorType],
) -> f64 {
    let out: f64 = outputs.iter().map(elems).sum();
    let input = |i: usize| inputs.get(i).copied().flatten();
    match op {
        op if is_view(op) => 0.0,
        Op::Ew(e) => {
            let w = match e {
                EwOp::Div | EwOp::Mod { .. } | EwOp::Sqrt | EwOp::Reciprocal => 4.0,
                EwOp::Exp
                | EwOp::Log
                | EwOp::Pow
                | EwOp::Tanh
                | EwOp::Sigmoid
                | EwOp::Erf
                | EwOp::Gelu { .. }
                | EwOp::Swish { .. }
                | EwOp::Softplus
                | EwOp::Mish
                | EwOp::Sin
                | EwOp::Cos => 8.0,
                _ => 1.0,
            };
            w * out
        }
        Op::Nn(NnOp::Matmul) => {
            let k = input(0).and_then(|t| t.shape.last()).map_or(1.0, dim);
            2.0 * out * k
        }
        Op::Nn(NnOp::Gemm { trans_a, .. }) => {
            let k = input(0)
                .and_then(|t| t.shape.get(usize::from(!*trans_a)))
                .map_or(1.0, dim);
            2.0 * out * k
        }
        Op::Nn(NnOp::Conv { .. }) => {
            // Each output element reads `w.len() / c_out` weights.
            let per = input(1).map_or(1.0, |w| {
                let c_out = w.shape.first().map_or(1.0, dim).max(1.0);
                elems(w) / c_out
            });
            2.0 * out * per
        }
        // 8-bit products accumulate in i32 at about twice the f32 rate (VNNI, dp4a).
        Op::Quant(QuantOp::MatMulInteger) => {
            flops(&Op::Nn(NnOp::Matmul), regions, inputs, outputs) / 2.0
        }
        Op::Quant(QuantOp::ConvInteger(g)) => {
            let conv = Op::Nn(NnOp::Conv {
                strides: g.strides.clone(),
                dilations: g.dilations.clone(),
                pads: vec![],
                group: g.group,
                auto_pad: mlc_ir::ops::nn::AutoPad::NotSet,
            });
            flops(&conv, regions, inputs, outputs) / 2.0
        }
        Op::Control(mlc_ir::ops::ControlOp::Composite { .. }) => {
            regions.first().map_or(out, body_flops)
        }
        _ => {
            let inp: f64 = inputs.iter().flatten().map(|t| elems(t)).sum();
            out.max(inp)
        }
    }
}

fn dim(d: &Dim) -> f64 {
    match d {
        Dim::Known(n) => *n as f64,
        _ => 1.0,
    }
}

/// FLOPs of every op of a body.
fn body_flops(body: &Graph) -> f64 {
    body.nodes
        .iter()
        .map(|n| {
            let ins: Vec<Option<&TensorType>> =
                n.inputs.iter().map(|v| v.map(|v| body.ty(v))).collect();
            let outs: Vec<TensorType> = n.outputs.iter().map(|o| body.ty(*o).clone()).collect();
            flops(&n.op, &n.regions, &ins, &outs)
        })
        .sum()
}

/// The estimated time of one kernel, in microseconds. `inputs` are its distinct operands.
pub fn kernel_cost(
    target: &TargetInfo,
    op: &Op,
    regions: &[Graph],
    inputs: &[Option<&TensorType>],
    outputs: &[TensorType],
) -> f64 {
    if matches!(op, Op::Constant { .. }) {
        return 0.0;
    }
    if is_view(op) {
        return target.launch_us / 10.0;
    }
    let moved: f64 = inputs.iter().flatten().map(|t| bytes(t)).sum::<f64>()
        + outputs.iter().map(bytes).sum::<f64>();
    target.launch_us
        + moved / target.bytes_per_us
        + flops(op, regions, inputs, outputs) / target.flops_per_us
}

/// The cost of a whole graph: the sum of its kernels' costs (each value computed once).
pub fn graph_cost(target: &TargetInfo, g: &Graph) -> f64 {
    g.nodes
        .iter()
        .map(|n| {
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
            kernel_cost(target, &n.op, &n.regions, &ins, &outs)
        })
        .sum()
}

/// The number of kernels a graph launches: its top-level ops (a composite is one kernel),
/// constants and views excluded: a view (`reshape`, `flatten`, `squeeze`, `unsqueeze`,
/// `identity`) lowers to an alias of its operand's buffer and launches nothing.
pub fn kernel_count(g: &Graph) -> usize {
    g.nodes
        .iter()
        .filter(|n| !matches!(n.op, Op::Constant { .. }) && !is_view(&n.op))
        .count()
}

/// Extraction's cost function: a node's own kernel cost plus the costs of its distinct
/// operands (egg's extractor minimizes this *tree* cost, which counts a value shared by two
/// nodes once per node; see `mod.rs` for why that is good enough here).
#[derive(Debug)]
pub struct MlcCost<'a> {
    pub egraph: &'a MlcEGraph,
    pub target: &'a TargetInfo,
}

impl CostFunction<MlcNode> for MlcCost<'_> {
    type Cost = f64;

    fn cost<C>(&mut self, enode: &MlcNode, mut costs: C) -> f64
    where
        C: FnMut(Id) -> f64,
    {
        let own = match enode {
            MlcNode::Op(info, children) => {
                let mut seen: Vec<Id> = vec![];
                let ins: Vec<Option<&TensorType>> = children
                    .iter()
                    .map(|c| self.egraph.find(*c))
                    .filter(|c| {
                        let fresh = !seen.contains(c);
                        seen.push(*c);
                        fresh
                    })
                    .map(|c| self.egraph[c].data.ty())
                    .collect();
                kernel_cost(self.target, &info.op, &info.regions, &ins, &info.types)
            }
            _ => 0.0,
        };
        // Each distinct operand counts once: `x * x` reads `x` once, and must not look twice
        // as expensive as `pow(x, 2)`.
        let mut seen: Vec<Id> = vec![];
        enode.children().iter().fold(own, |acc, c| {
            let c = self.egraph.find(*c);
            if seen.contains(&c) {
                acc
            } else {
                seen.push(c);
                acc + costs(c)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::parse_graph;

    #[test]
    fn a_fused_chain_costs_less_than_its_parts() {
        let parts = parse_graph(
            r#"graph (%0: f32[1024,1024] "x") -> (%2 "y") {
  %1 = ew.neg(%0) : f32[1024,1024]
  %2 = ew.relu(%1) : f32[1024,1024]
}
"#,
        )
        .expect("parses");
        let fused = parse_graph(
            r#"graph (%0: f32[1024,1024] "x") -> (%1 "y") {
  %1 = control.composite {"kind":"neg+relu"} (%0) : f32[1024,1024] {
    graph (%0: f32[1024,1024] "a") -> (%2 "r") {
      %1 = ew.neg(%0) : f32[1024,1024]
      %2 = ew.relu(%1) : f32[1024,1024]
    }
  }
}
"#,
        )
        .expect("parses");
        for t in [TargetInfo::x86_64(), TargetInfo::sm_90()] {
            let (a, b) = (graph_cost(&t, &parts), graph_cost(&t, &fused));
            // Half the traffic and one launch fewer.
            assert!(b < a * 0.6, "{}: {b} vs {a}", t.name);
        }
        assert_eq!((kernel_count(&parts), kernel_count(&fused)), (2, 1));
    }
}
