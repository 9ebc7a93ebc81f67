//! Graphs: values, nodes in topological order, constants by reference, and nested regions.
//!
//! A `Graph` owns its values (typed SSA names `%N`), its nodes and its constant table. A node
//! that needs bodies (`control.if`, `control.loop`, composite/fused nodes) owns them as
//! *regions*: complete graphs whose inputs are bound by the node. Regions never see the values
//! of the enclosing graph directly; whatever they use from outside is passed as an explicit
//! node input (closure conversion happens at import), so every graph is self-contained.

use crate::ops::Op;
use crate::shape::TensorType;
use crate::tensor::Tensor;
use std::fmt;

/// An SSA value in one graph: an index into `Graph::values`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl fmt::Debug for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// A constant in a graph's constant table, produced into the graph by a `constant` node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConstId(pub u32);

/// One operation. `inputs` may hold `None` for an absent optional operand (the op's docs say
/// which positions are optional); outputs are always present.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<ValueId>,
    pub regions: Vec<Graph>,
    /// Where the node came from (for example the ONNX node's name), for diagnostics only:
    /// no semantics may depend on it.
    pub loc: Option<String>,
}

impl Node {
    pub fn input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }
}

/// A graph input or output: the value and the name the user knows it by.
#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    pub value: ValueId,
    pub name: String,
}

/// A dataflow graph in topological order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    /// The type of every value, indexed by `ValueId`.
    pub values: Vec<TensorType>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    pub consts: Vec<Tensor>,
}

impl Graph {
    pub fn new() -> Self {
        Graph::default()
    }

    /// Adds a value of the given type and returns its id.
    pub fn add_value(&mut self, ty: TensorType) -> ValueId {
        let id = ValueId(u32::try_from(self.values.len()).expect("fewer than 2^32 values"));
        self.values.push(ty);
        id
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.values[v.0 as usize]
    }

    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> ValueId {
        let value = self.add_value(ty);
        self.inputs.push(Port {
            value,
            name: name.into(),
        });
        value
    }

    pub fn add_const(&mut self, t: Tensor) -> ConstId {
        let id = ConstId(u32::try_from(self.consts.len()).expect("fewer than 2^32 constants"));
        self.consts.push(t);
        id
    }

    /// Adds a `constant` node for `t` and returns the value it defines.
    pub fn add_constant(&mut self, t: Tensor) -> ValueId {
        let ty = TensorType::fixed(t.dtype(), t.shape());
        let id = self.add_const(t);
        let out = self.add_value(ty);
        self.nodes.push(Node {
            op: Op::Constant { id: id.0 },
            inputs: vec![],
            outputs: vec![out],
            regions: vec![],
            loc: None,
        });
        out
    }

    /// Appends a node whose output types are already known.
    pub fn add_node(
        &mut self,
        op: Op,
        inputs: Vec<Option<ValueId>>,
        output_types: Vec<TensorType>,
        regions: Vec<Graph>,
        loc: Option<String>,
    ) -> Vec<ValueId> {
        let outputs: Vec<ValueId> = output_types
            .into_iter()
            .map(|t| self.add_value(t))
            .collect();
        self.nodes.push(Node {
            op,
            inputs,
            outputs: outputs.clone(),
            regions,
            loc,
        });
        outputs
    }

    /// The tensor a value holds if a `constant` node defines it.
    pub fn const_value(&self, v: ValueId) -> Option<&Tensor> {
        self.nodes.iter().find_map(|n| match n.op {
            Op::Constant { id } if n.outputs.first() == Some(&v) => self.consts.get(id as usize),
            _ => None,
        })
    }

    /// For each value, the index of the node defining it (`None` for graph inputs).
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut p = vec![None; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for o in &n.outputs {
                p[o.0 as usize] = Some(i);
            }
        }
        p
    }

    /// Number of nodes, counting those inside regions, not counting `constant` nodes.
    pub fn op_count(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| {
                let own = usize::from(!matches!(n.op, Op::Constant { .. }));
                own + n.regions.iter().map(Graph::op_count).sum::<usize>()
            })
            .sum()
    }
}
