//! Dead-code elimination: removes nodes no graph output depends on and constants no node
//! produces, then renumbers values and constants densely.
//!
//! Every node is pure (mlc's IR has no side-effecting ops), so a node is live exactly when one
//! of its outputs is used by a live node or is a graph output. Graph inputs stay even when
//! unused: they are the graph's signature. Regions are cleaned the same way, keeping their own
//! inputs and outputs, which their node binds.

use mlc_ir::{Graph, Op, ValueId};

/// What [`dce`] removed, counting regions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DceStats {
    /// Nodes removed (ops and `constant` nodes).
    pub nodes: usize,
    /// Entries removed from constant tables.
    pub consts: usize,
    /// Values removed.
    pub values: usize,
}

/// Removes dead nodes, constants and values from `graph` and its regions.
pub fn dce(graph: &mut Graph) -> DceStats {
    let mut stats = DceStats::default();
    dce_into(graph, &mut stats);
    stats
}

fn dce_into(graph: &mut Graph, stats: &mut DceStats) {
    // Liveness, backwards over the topological order.
    let mut live = vec![false; graph.values.len()];
    for p in &graph.outputs {
        live[p.value.0 as usize] = true;
    }
    let mut keep = vec![false; graph.nodes.len()];
    for (i, n) in graph.nodes.iter().enumerate().rev() {
        if n.outputs.iter().any(|v| live[v.0 as usize]) {
            keep[i] = true;
            for v in n.inputs.iter().flatten() {
                live[v.0 as usize] = true;
            }
        }
    }
    let before = graph.nodes.len();
    let mut k = keep.into_iter();
    graph.nodes.retain(|_| k.next().expect("one flag per node"));
    stats.nodes += before - graph.nodes.len();

    for n in &mut graph.nodes {
        for region in &mut n.regions {
            dce_into(region, stats);
        }
    }
    compact_consts(graph, stats);
    compact_values(graph, stats);
}

/// Drops constants that no `constant` node refers to and renumbers the rest in order.
fn compact_consts(graph: &mut Graph, stats: &mut DceStats) {
    let mut remap: Vec<Option<u32>> = vec![None; graph.consts.len()];
    for n in &graph.nodes {
        if let Op::Constant { id } = n.op
            && let Some(slot) = remap.get_mut(id as usize)
        {
            *slot = Some(0);
        }
    }
    for (next, slot) in (0u32..).zip(remap.iter_mut().flatten()) {
        *slot = next;
    }
    let before = graph.consts.len();
    let mut used = remap.iter();
    graph
        .consts
        .retain(|_| used.next().is_some_and(Option::is_some));
    stats.consts += before - graph.consts.len();
    for n in &mut graph.nodes {
        if let Op::Constant { id } = &mut n.op
            && let Some(Some(new)) = remap.get(*id as usize)
        {
            *id = *new;
        }
    }
}

/// Drops values that nothing defines or uses any more and renumbers the rest in order.
fn compact_values(graph: &mut Graph, stats: &mut DceStats) {
    let mut used = vec![false; graph.values.len()];
    let ports = graph.inputs.iter().chain(&graph.outputs).map(|p| p.value);
    let node_values = graph
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter().flatten().chain(&n.outputs).copied());
    for v in ports.chain(node_values) {
        used[v.0 as usize] = true;
    }
    let mut remap = vec![ValueId(u32::MAX); graph.values.len()];
    let live = remap.iter_mut().zip(&used).filter(|(_, u)| **u);
    for (next, (slot, _)) in (0u32..).zip(live) {
        *slot = ValueId(next);
    }
    let before = graph.values.len();
    let mut u = used.iter();
    graph
        .values
        .retain(|_| *u.next().expect("one flag per value"));
    stats.values += before - graph.values.len();
    let map = |v: &mut ValueId| *v = remap[v.0 as usize];
    graph
        .inputs
        .iter_mut()
        .chain(&mut graph.outputs)
        .for_each(|p| map(&mut p.value));
    for n in &mut graph.nodes {
        n.inputs.iter_mut().flatten().for_each(map);
        n.outputs.iter_mut().for_each(map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ty;
    use mlc_ir::ops::EwOp;
    use mlc_ir::{DType, Dim, Port, Tensor};

    #[test]
    fn removes_dead_nodes_constants_and_values() {
        let mut g = Graph::new();
        let t = || ty(DType::F32, vec![Dim::Known(2)]);
        let x = g.add_input("x", t());
        let _unused = g.add_input("unused", t());
        let dead_c = g.add_constant(Tensor::scalar(1f32));
        let c = g.add_constant(Tensor::scalar(2f32));
        let _dead = g.add_node(
            Op::Ew(EwOp::Add),
            vec![Some(x), Some(dead_c)],
            vec![t()],
            vec![],
            None,
        );
        let y = g.add_node(
            Op::Ew(EwOp::Add),
            vec![Some(x), Some(c)],
            vec![t()],
            vec![],
            None,
        )[0];
        g.outputs.push(Port {
            value: y,
            name: "y".into(),
        });

        let s = dce(&mut g);
        assert_eq!(
            s,
            DceStats {
                nodes: 2,
                consts: 1,
                values: 2
            }
        );
        assert_eq!(g.values.len(), 4);
        assert_eq!(g.consts, [Tensor::scalar(2f32)]);
        assert_eq!(g.nodes[0].op, Op::Constant { id: 0 });
        assert_eq!(g.nodes[1].inputs, [Some(ValueId(0)), Some(ValueId(2))]);
        assert_eq!(g.outputs[0].value, ValueId(3));
        assert_eq!(g.inputs[1].value, ValueId(1));
        assert_eq!(dce(&mut g), DceStats::default());
    }

    #[test]
    fn cleans_regions_but_keeps_their_signature() {
        let t = || ty(DType::F32, vec![]);
        let mut region = Graph::new();
        let a = region.add_input("a", t());
        let _b = region.add_input("b", t());
        let _dead = region.add_node(Op::Ew(EwOp::Relu), vec![Some(a)], vec![t()], vec![], None);
        region.outputs.push(Port {
            value: a,
            name: "a".into(),
        });

        let mut g = Graph::new();
        let x = g.add_input("x", t());
        let y = g.add_node(
            Op::Ew(EwOp::Relu),
            vec![Some(x)],
            vec![t()],
            vec![region],
            None,
        )[0];
        g.outputs.push(Port {
            value: y,
            name: "y".into(),
        });
        assert_eq!(
            dce(&mut g),
            DceStats {
                nodes: 1,
                consts: 0,
                values: 1
            }
        );
        let r = &g.nodes[0].regions[0];
        assert!(r.nodes.is_empty());
        assert_eq!(r.inputs.len(), 2);
    }
}
