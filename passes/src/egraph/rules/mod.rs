//! Rewrite rules, one file per topic, and the small framework they share.
//!
//! mlc's ops carry typed attributes and their preconditions are about types and constant
//! values, which egg's pattern language cannot express, so every rule is a [`NodeRule`]: a
//! function that looks at one e-class and returns the equivalent forms it can build there.
//! The same function serves as egg's `Searcher` (is there anything to build?) and `Applier`
//! (build it and union it with the class). Read `docs/rules-for-rules.md` before adding one.

pub mod activations;
pub mod algebra;
pub mod attention;
pub mod batchnorm;
pub mod fold;
pub mod fusion;
pub mod lookup;
pub mod movement;
pub mod norm;
pub mod qdq;
pub mod quant;

use super::analysis::{Facts, MlcAnalysis, MlcEGraph};
use super::lang::{MlcNode, OpInfo, OpRef};
use egg::{Applier, Id, PatternAst, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};
use mlc_ir::{Graph, InferCx, Op, Tensor, TensorType};

/// One way to build an equivalent of a matched e-class: adds e-nodes and returns the class
/// they form, or `None` when it turns out not to apply after all. The argument is the rule's
/// name, recorded on the e-nodes it builds.
pub type Build = Box<dyn FnOnce(&mut MlcEGraph, &'static str) -> Option<Id>>;

/// When a rule runs. Saturation runs in two phases: first the rewrites (identities, canonical
/// forms, recognitions) to saturation, then, on the extracted result, fusion. Fusion decides
/// from the number of consumers a value has, and the alternatives that rewrites leave in the
/// e-graph (the unused `x / c` beside `x * (1/c)`, the parts of a recognized GELU) would count
/// as consumers; after extraction only the chosen program's uses remain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Rewrite,
    Fuse,
}

/// A rule: its name, its phase and the function that finds what it can build in one e-class.
#[derive(Clone, Copy)]
pub struct NodeRule {
    pub name: &'static str,
    pub phase: Phase,
    pub find: fn(&MlcEGraph, Id) -> Vec<Build>,
}

impl std::fmt::Debug for NodeRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl NodeRule {
    pub const fn rewrite(name: &'static str, find: fn(&MlcEGraph, Id) -> Vec<Build>) -> Self {
        NodeRule {
            name,
            phase: Phase::Rewrite,
            find,
        }
    }

    pub const fn fuse(name: &'static str, find: fn(&MlcEGraph, Id) -> Vec<Build>) -> Self {
        NodeRule {
            name,
            phase: Phase::Fuse,
            find,
        }
    }

    /// The egg rewrite that runs this rule.
    pub fn to_egg(self) -> Rewrite<MlcNode, MlcAnalysis> {
        // `Rewrite::new` fails only for patterns with unbound variables; we bind none.
        Rewrite::new(self.name, self, self).expect("node rules bind no variables")
    }
}

impl Searcher<MlcNode, MlcAnalysis> for NodeRule {
    fn search_eclass_with_limit(
        &self,
        egraph: &MlcEGraph,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, MlcNode>> {
        (limit > 0 && !(self.find)(egraph, eclass).is_empty()).then(|| SearchMatches {
            eclass,
            substs: vec![Subst::default()],
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

impl Applier<MlcNode, MlcAnalysis> for NodeRule {
    fn apply_one(
        &self,
        egraph: &mut MlcEGraph,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&PatternAst<MlcNode>>,
        _rule_name: Symbol,
    ) -> Vec<Id> {
        // The class may have changed since the search; look again and build what applies now.
        let mut changed = vec![];
        for build in (self.find)(egraph, eclass) {
            if let Some(id) = build(egraph, self.name)
                && egraph.union(id, eclass)
            {
                changed.push(eclass);
            }
        }
        changed
    }
}

/// Every rule, in the order they run each iteration.
pub fn all() -> Vec<NodeRule> {
    let mut r = Vec::new();
    r.extend(algebra::rules());
    r.extend(activations::rules());
    r.extend(norm::rules());
    r.extend(attention::rules());
    r.extend(movement::rules());
    r.extend(fold::rules());
    r.extend(quant::rules());
    r.extend(qdq::rules());
    r.extend(batchnorm::rules());
    r.extend(lookup::rules());
    r.extend(fusion::rules());
    r
}

/// The rules as egg rewrites.
pub fn rewrites(rules: &[NodeRule]) -> Vec<Rewrite<MlcNode, MlcAnalysis>> {
    rules.iter().map(|r| r.to_egg()).collect()
}

// ---- Helpers for rules ----

/// The facts of a class.
pub fn facts(eg: &MlcEGraph, id: Id) -> &Facts {
    &eg[id].data
}

/// The type of a single-valued class.
pub fn ty(eg: &MlcEGraph, id: Id) -> Option<&TensorType> {
    eg[id].data.ty()
}

/// The known value of a class (small constants only).
pub fn value(eg: &MlcEGraph, id: Id) -> Option<&Tensor> {
    eg[id].data.value.as_deref()
}

/// Whether every element of the class's known value equals `v` (and there is at least one).
pub fn is_splat(eg: &MlcEGraph, id: Id, v: f64) -> bool {
    value(eg, id)
        .and_then(|t| t.to_f64_vec().ok())
        .is_some_and(|xs| !xs.is_empty() && xs.iter().all(|x| *x == v))
}

/// The op nodes of a class with their children.
pub fn op_nodes(eg: &MlcEGraph, id: Id) -> impl Iterator<Item = (&OpRef, &[Id])> {
    eg[id].nodes.iter().filter_map(|n| match n {
        MlcNode::Op(o, c) => Some((o, c.as_slice())),
        _ => None,
    })
}

/// The op nodes of a class applying an op that `pick` accepts.
pub fn ops_where<'a, T>(
    eg: &'a MlcEGraph,
    id: Id,
    pick: impl Fn(&'a Op) -> Option<T> + 'a,
) -> impl Iterator<Item = (T, &'a OpRef, &'a [Id])> + 'a {
    op_nodes(eg, id).filter_map(move |(o, c)| pick(&o.op).map(|t| (t, o, c)))
}

/// Adds a single-output op node whose type is inferred from its operands, provided it has
/// exactly type `want` (the type of the class it will join). `None` when inference fails or
/// disagrees: the rule then does not apply.
pub fn add_op(
    eg: &mut MlcEGraph,
    op: Op,
    children: Vec<Id>,
    regions: Vec<Graph>,
    want: &TensorType,
    rules: Vec<&'static str>,
) -> Option<Id> {
    let types: Vec<Option<TensorType>> = children.iter().map(|c| ty(eg, *c).cloned()).collect();
    let values: Vec<Option<&Tensor>> = children.iter().map(|c| value(eg, *c)).collect();
    let inferred = op
        .infer(&InferCx {
            inputs: &types,
            consts: &values,
            regions: &regions,
            n_outputs: 1,
        })
        .ok()?;
    if inferred.as_slice() != std::slice::from_ref(want) {
        return None;
    }
    let info = OpInfo::new(op, regions, inferred, None, rules);
    Some(eg.add(MlcNode::Op(OpRef::new(info), children)))
}

/// Adds a constant to the table and its leaf to the e-graph.
pub fn add_const(eg: &mut MlcEGraph, t: Tensor) -> Id {
    let id = eg.analysis.tables.add_const(t);
    eg.add(MlcNode::Const(id))
}

/// A build that just names an existing class (for rules like `x * 1 = x`).
pub fn same_as(id: Id) -> Build {
    Box::new(move |_, _| Some(id))
}

#[cfg(test)]
pub(crate) mod testkit;
