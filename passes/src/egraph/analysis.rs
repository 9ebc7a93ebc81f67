//! The e-class analysis: every class knows the types of its values and, for small constants,
//! their value. Facts only ever get more precise; two classes whose facts contradict each other
//! cannot be equal, so merging them is a bug in a rule and panics.

use super::lang::MlcNode;
use egg::{Analysis, DidMerge, EGraph, Id};
use mlc_ir::{Port, Tensor, TensorType};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Constants with at most this many elements have their value in the analysis, so rules can
/// match `x * 1` or fold `1 / c`. Weights are bigger and stay in the table only.
pub const SMALL_CONST_ELEMS: usize = 64;

/// The graph-level tables that leaves refer to: graph inputs and the constant table.
#[derive(Debug, Default)]
pub struct Tables {
    /// Graph inputs (name and value in the original graph) with their types.
    pub inputs: Vec<(Port, TensorType)>,
    /// Names of the graph outputs, in order.
    pub outputs: Vec<String>,
    /// The constant table; rules append to it.
    pub consts: Vec<Tensor>,
    /// The type every constant is produced with.
    pub const_types: Vec<TensorType>,
    /// Constants rules added, by content, so that folding the same value twice reuses the entry.
    pub(super) added: BTreeMap<(String, Vec<usize>, Vec<u8>), u32>,
}

impl Tables {
    /// Adds a constant (or finds the one a rule added before with the same content).
    pub fn add_const(&mut self, t: Tensor) -> u32 {
        let content = t
            .to_le_bytes()
            .ok()
            .map(|b| (t.dtype().to_string(), t.shape().to_vec(), b));
        if let Some(k) = &content
            && let Some(&id) = self.added.get(k)
        {
            return id;
        }
        let id = u32::try_from(self.consts.len()).expect("fewer than 2^32 constants");
        self.const_types
            .push(TensorType::fixed(t.dtype(), t.shape()));
        self.consts.push(t);
        if let Some(k) = content {
            self.added.insert(k, id);
        }
        id
    }
}

/// What the analysis knows about an e-class.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The types of the class's values: one for a plain value, one per output for a
    /// multi-output op, none for an absent operand or the graph root.
    pub types: Vec<TensorType>,
    /// The value, for constants of at most [`SMALL_CONST_ELEMS`] elements.
    pub value: Option<Arc<Tensor>>,
}

impl Facts {
    /// The type of a single-valued class.
    pub fn ty(&self) -> Option<&TensorType> {
        match self.types.as_slice() {
            [t] => Some(t),
            _ => None,
        }
    }
}

/// The analysis: facts per class, plus the tables leaves refer to.
#[derive(Debug, Default)]
pub struct MlcAnalysis {
    pub tables: Tables,
    /// (consumer, producer) e-node pairs the fusion rules have fused already, so that later
    /// iterations do not build the same composite body again only to find it hash-consed.
    pub fused: HashSet<(MlcNode, MlcNode)>,
}

/// The e-graph of mlc's language.
pub type MlcEGraph = EGraph<MlcNode, MlcAnalysis>;

impl Analysis<MlcNode> for MlcAnalysis {
    type Data = Facts;

    fn make(egraph: &mut MlcEGraph, enode: &MlcNode, _id: Id) -> Facts {
        let tables = &egraph.analysis.tables;
        let none = |types| Facts { types, value: None };
        match enode {
            MlcNode::Input(i) => none(
                tables
                    .inputs
                    .get(*i as usize)
                    .map(|(_, t)| vec![t.clone()])
                    .unwrap_or_default(),
            ),
            MlcNode::Const(i) => {
                let i = *i as usize;
                let types = tables.const_types.get(i).cloned().into_iter().collect();
                let value = tables
                    .consts
                    .get(i)
                    .filter(|t| t.len() <= SMALL_CONST_ELEMS)
                    .map(|t| Arc::new(t.clone()));
                Facts { types, value }
            }
            MlcNode::Absent | MlcNode::Graph(_) => none(vec![]),
            MlcNode::Out { index, of } => none(
                egraph[of[0]]
                    .data
                    .types
                    .get(*index as usize)
                    .cloned()
                    .into_iter()
                    .collect(),
            ),
            MlcNode::Op(info, _) => none(info.types.clone()),
        }
    }

    fn merge(&mut self, a: &mut Facts, b: Facts) -> DidMerge {
        // Equal classes compute the same values, so they have the same types. A difference
        // means a rule equated different computations: fail loudly rather than keep either.
        assert!(
            a.types == b.types,
            "e-graph merge of classes with different types ({} vs {}): a rewrite rule is unsound",
            show(&a.types),
            show(&b.types)
        );
        match (&a.value, b.value) {
            (Some(x), Some(y)) => {
                assert!(
                    x.to_le_bytes().ok() == y.to_le_bytes().ok(),
                    "e-graph merge of classes with different constant values: a rewrite rule is unsound"
                );
                DidMerge(false, false)
            }
            (None, Some(y)) => {
                a.value = Some(y);
                DidMerge(true, false)
            }
            (Some(_), None) => DidMerge(false, true),
            (None, None) => DidMerge(false, false),
        }
    }
}

fn show(types: &[TensorType]) -> String {
    let t: Vec<String> = types.iter().map(ToString::to_string).collect();
    format!("[{}]", t.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use egg::Analysis;
    use mlc_ir::DType;

    #[test]
    fn merge_learns_values_and_keeps_types() {
        let mut an = MlcAnalysis::default();
        let t = TensorType::fixed(DType::F32, &[2]);
        let mut a = Facts {
            types: vec![t.clone()],
            value: None,
        };
        let v = Arc::new(Tensor::from_vec(&[2], vec![1f32, 2.]).expect("2 elements"));
        let b = Facts {
            types: vec![t],
            value: Some(v),
        };
        let DidMerge(a_changed, b_changed) = an.merge(&mut a, b);
        assert!(a_changed && !b_changed);
        assert!(a.value.is_some());
    }

    #[test]
    fn merge_of_contradicting_types_panics_with_a_clear_message() {
        let mut an = MlcAnalysis::default();
        let mut a = Facts {
            types: vec![TensorType::fixed(DType::F32, &[2])],
            value: None,
        };
        let b = Facts {
            types: vec![TensorType::fixed(DType::F32, &[3])],
            value: None,
        };
        let Err(err) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            an.merge(&mut a, b);
        })) else {
            panic!("contradicting facts must not merge");
        };
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("[f32[2]] vs [f32[3]]") && msg.contains("unsound"),
            "{msg}"
        );
    }

    #[test]
    fn added_constants_are_shared_by_content() {
        let mut t = Tables::default();
        let a = t.add_const(Tensor::scalar(0.5f32));
        let b = t.add_const(Tensor::scalar(0.5f32));
        let c = t.add_const(Tensor::scalar(0.25f32));
        assert_eq!((a, b, c), (0, 0, 1));
    }
}
