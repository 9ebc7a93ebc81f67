//! The forward sweep that infer and fold share: one walk over the nodes in order, recursing
//! into regions, with an index of which values are constants.
//!
//! Doing both in one walk matters: in `Shape -> Gather -> Concat -> Reshape -> Shape -> ...`
//! each fold makes the next node's inference exact and each exact type lets the next `Shape`
//! fold, so interleaving them per node reaches the fixpoint in one sweep where alternating
//! whole passes would take one pass per link of the chain.

use crate::{FoldPolicy, PassError, Skipped, fold, infer};
use mlc_ir::{Graph, Node, Op};
use std::collections::BTreeMap;

/// Which passes a sweep runs.
#[derive(Debug)]
pub(crate) struct Mode<'a> {
    pub infer: bool,
    pub fold: Option<&'a FoldPolicy>,
}

/// What a sweep did.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub refined: usize,
    pub folded: usize,
    pub skipped: BTreeMap<String, Skipped>,
}

impl Tally {
    /// Records that `phase` ("infer", "eval") left a node of `op` alone.
    pub fn skip(&mut self, phase: &str, op: &Op, reason: impl FnOnce() -> String) {
        self.skipped
            .entry(format!("{phase} {}", op.name()))
            .and_modify(|s| s.count += 1)
            .or_insert_with(|| Skipped {
                count: 1,
                reason: reason(),
            });
    }
}

/// For each value of a graph, the id of the constant a `constant` node gives it.
///
/// `Graph::const_value` scans all nodes per query; this is built once per sweep and kept up to
/// date as nodes fold.
pub(crate) type ConstIndex = Vec<Option<u32>>;

fn const_index(graph: &Graph, at: &str) -> Result<ConstIndex, PassError> {
    let mut index = vec![None; graph.values.len()];
    for (i, n) in graph.nodes.iter().enumerate() {
        if let Op::Constant { id } = n.op {
            if id as usize >= graph.consts.len() {
                return Err(PassError::MissingConst {
                    at: site(at, i, n),
                    id,
                });
            }
            if let Some(v) = n.outputs.first() {
                index[v.0 as usize] = Some(id);
            }
        }
    }
    Ok(index)
}

/// Names a node in errors: `node 12 (ew.add at /encoder/Add)`, prefixed with its region path.
pub(crate) fn site(at: &str, i: usize, node: &Node) -> String {
    let loc = node
        .loc
        .as_ref()
        .map(|l| format!(" at {l}"))
        .unwrap_or_default();
    format!("{at}node {i} ({}{loc})", node.op.name())
}

/// Runs one sweep over `graph` and its regions; `top` is false inside regions. Returns whether
/// anything changed.
pub(crate) fn sweep(
    graph: &mut Graph,
    mode: &Mode,
    top: bool,
    at: &str,
    tally: &mut Tally,
) -> Result<bool, PassError> {
    let mut index = const_index(graph, at)?;
    let mut changed = false;
    let mut i = 0;
    while i < graph.nodes.len() {
        let Graph {
            values,
            nodes,
            consts,
            ..
        } = &mut *graph;
        let node = &mut nodes[i];
        if let Op::Constant { id } = node.op {
            if mode.infer {
                changed |=
                    infer::refine_constant(node, &consts[id as usize], values, at, i, tally)?;
            }
            i += 1;
            continue;
        }
        // Regions first, so that a control op's inference sees their refined output types.
        for (r, region) in node.regions.iter_mut().enumerate() {
            changed |= sweep(
                region,
                mode,
                false,
                &format!("{at}node {i} region {r}: "),
                tally,
            )?;
        }
        if mode.infer {
            changed |= infer::refine_node(node, values, consts, &index, at, i, tally)?;
        }
        if let Some(policy) = mode.fold
            && let Some(tensors) =
                fold::try_fold(node, values, consts, &index, policy, top, at, i, tally)?
        {
            i += fold::replace(nodes, i, values, consts, &mut index, tensors);
            tally.folded += 1;
            changed = true;
            continue;
        }
        i += 1;
    }
    Ok(changed)
}
