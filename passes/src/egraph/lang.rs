//! The e-graph language: one e-node kind per IR op (carried by reference), leaves for graph
//! inputs and constants, projections of multi-output ops, and the graph's output list.
//!
//! mlc's `Op` has float attributes, so it is neither `Eq` nor `Hash`; egg needs both (and
//! `Ord`). An op node therefore carries an [`OpRef`]: the op, its regions and its recorded
//! output types behind an `Arc`, compared and hashed by a canonical key (the op's serde JSON,
//! its output count and its regions' exact text form). Two op nodes are the same e-node exactly
//! when their keys and children are equal, which is what hash-consing needs.
//!
//! Weights never enter the e-graph: `(const 7)` names entry 7 of the constant table kept by the
//! analysis, and `(input 3)` names graph input 3.

use egg::{Id, Language};
use mlc_ir::{Graph, Op, TensorType};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// What an op e-node carries besides its children.
#[derive(Debug)]
pub struct OpInfo {
    pub op: Op,
    /// The node's regions (a composite's body, an `if`'s branches), kept whole: the e-graph
    /// does not look inside them.
    pub regions: Vec<Graph>,
    /// Output types: recorded on the imported node, or inferred when a rule built the node.
    pub types: Vec<TensorType>,
    /// The imported node's location, for diagnostics only.
    pub loc: Option<String>,
    /// The rules that built this node (empty for imported nodes), for `--explain`.
    pub rules: Vec<&'static str>,
    /// For a composite built by fusion: the e-classes of the ops fused into it, so that a value
    /// read only by those ops counts as read once (see `rules/fusion.rs`). Ids may be stale;
    /// readers canonicalize them.
    pub covers: Vec<Id>,
    /// `family.op`, or the composite's kind.
    pub name: String,
    key: String,
}

impl OpInfo {
    /// Builds the info and its canonical key.
    pub fn new(
        op: Op,
        regions: Vec<Graph>,
        types: Vec<TensorType>,
        loc: Option<String>,
        rules: Vec<&'static str>,
    ) -> OpInfo {
        // Serializing an `Op` cannot fail: every attribute is plain data. Should it ever, the
        // Debug form is just as canonical.
        let mut key = serde_json::to_string(&op).unwrap_or_else(|_| format!("{op:?}"));
        key.push_str(&format!("/{}", types.len()));
        for r in &regions {
            key.push('\n');
            key.push_str(&mlc_ir::print_graph(r));
        }
        let name = match &op {
            Op::Control(mlc_ir::ops::ControlOp::Composite { kind }) => kind.clone(),
            _ => op.name(),
        };
        OpInfo {
            op,
            regions,
            types,
            loc,
            rules,
            covers: vec![],
            name,
            key,
        }
    }

    /// The canonical key: equal keys mean equal ops (attributes, output count, regions).
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// An op shared between e-nodes, compared by its canonical key.
#[derive(Clone)]
pub struct OpRef(pub Arc<OpInfo>);

impl OpRef {
    pub fn new(info: OpInfo) -> OpRef {
        OpRef(Arc::new(info))
    }
}

impl std::ops::Deref for OpRef {
    type Target = OpInfo;
    fn deref(&self) -> &OpInfo {
        &self.0
    }
}

impl PartialEq for OpRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.key == other.0.key
    }
}

impl Eq for OpRef {}

impl PartialOrd for OpRef {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OpRef {
    /// By key, so that e-node order (and with it extraction's tie-breaking) never depends on
    /// addresses or interning order.
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.key.cmp(&other.0.key)
    }
}

impl Hash for OpRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl fmt::Debug for OpRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.name)
    }
}

/// An e-node of mlc's language.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MlcNode {
    /// Graph input `i`.
    Input(u32),
    /// Entry `i` of the constant table.
    Const(u32),
    /// An absent optional operand.
    Absent,
    /// Output `index` of a multi-output op.
    Out { index: u32, of: [Id; 1] },
    /// An op applied to its operands.
    Op(OpRef, Vec<Id>),
    /// The graph's outputs, in order: the root of every expression.
    Graph(Vec<Id>),
}

impl MlcNode {
    /// The op this node applies, if it is an op node.
    pub fn op(&self) -> Option<&OpRef> {
        match self {
            MlcNode::Op(o, _) => Some(o),
            _ => None,
        }
    }
}

impl Language for MlcNode {
    type Discriminant = std::mem::Discriminant<Self>;

    fn discriminant(&self) -> Self::Discriminant {
        std::mem::discriminant(self)
    }

    fn matches(&self, other: &Self) -> bool {
        match (self, other) {
            (MlcNode::Input(a), MlcNode::Input(b)) | (MlcNode::Const(a), MlcNode::Const(b)) => {
                a == b
            }
            (MlcNode::Absent, MlcNode::Absent) => true,
            (MlcNode::Out { index: a, .. }, MlcNode::Out { index: b, .. }) => a == b,
            (MlcNode::Op(a, xs), MlcNode::Op(b, ys)) => a == b && xs.len() == ys.len(),
            (MlcNode::Graph(xs), MlcNode::Graph(ys)) => xs.len() == ys.len(),
            _ => false,
        }
    }

    fn children(&self) -> &[Id] {
        match self {
            MlcNode::Input(_) | MlcNode::Const(_) | MlcNode::Absent => &[],
            MlcNode::Out { of, .. } => of,
            MlcNode::Op(_, c) | MlcNode::Graph(c) => c,
        }
    }

    fn children_mut(&mut self) -> &mut [Id] {
        match self {
            MlcNode::Input(_) | MlcNode::Const(_) | MlcNode::Absent => &mut [],
            MlcNode::Out { of, .. } => of,
            MlcNode::Op(_, c) | MlcNode::Graph(c) => c,
        }
    }
}

impl fmt::Display for MlcNode {
    /// The e-node's head, as egg prints it in s-expressions: `input3`, `const7`, `out0`,
    /// `ew.add`, `graph`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MlcNode::Input(i) => write!(f, "input{i}"),
            MlcNode::Const(i) => write!(f, "const{i}"),
            MlcNode::Absent => f.write_str("_"),
            MlcNode::Out { index, .. } => write!(f, "out{index}"),
            MlcNode::Op(o, _) => f.write_str(&o.name),
            MlcNode::Graph(_) => f.write_str("graph"),
        }
    }
}
