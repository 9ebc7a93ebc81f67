//! Fusion: an elementwise op (`ew`, an inference-mode `nn.batch_norm`, a quantize or
//! dequantize) consuming another elementwise op, or consuming a contraction (`nn.matmul`,
//! `nn.gemm`, `nn.conv`, their integer forms) or a layer normalization, becomes one
//! `control.composite` node whose body holds both. Applied again to composites, chains of any
//! length fuse into one kernel, with at most one such anchor, at its start (an *epilogue*:
//! bias, activation, residual add, clip, requantization). Views (`reshape` and friends) may
//! follow anywhere in a chain: a kernel writes its result in the view's shape for free.
//!
//! A composite's inputs are the values its body reads from outside (weights stay outside, by
//! reference); the intermediate values never reach memory, which is what the cost model
//! rewards. Conditions, each for a reason:
//!
//! * the consumer is elementwise (an `ew` op or an elementwise composite), so the producer's
//!   output is read once per output element;
//! * the producer's output has as many elements as the consumer's: no broadcast makes the
//!   fused kernel recompute a producer element many times;
//! * every reader of the producer's value is the consumer or an op already fused into it:
//!   fusing a value that others also read would compute it twice;
//! * a body holds at most [`MAX_BODY_OPS`] ops, which bounds the e-graph's growth (an
//!   implementation limit, not a semantic one).

use super::{Build, NodeRule, ty};
use crate::egraph::analysis::MlcEGraph;
use crate::egraph::lang::{MlcNode, OpInfo, OpRef};
use egg::Id;
use mlc_ir::ops::{ControlOp, NnOp, QuantOp};
use mlc_ir::{Graph, Op, Port, ValueId};
use std::collections::BTreeSet;

/// The most ops a fused body may hold.
pub const MAX_BODY_OPS: usize = 24;

pub fn rules() -> Vec<NodeRule> {
    vec![
        NodeRule::fuse("fuse-elementwise", fuse_elementwise),
        NodeRule::fuse("fuse-epilogue", fuse_epilogue),
    ]
}

/// What a fusible e-node computes, as a body over its operand classes.
#[derive(Clone)]
struct Piece {
    /// A body graph: input `i` is `inputs[i]`, one output.
    body: Graph,
    inputs: Vec<Id>,
    kind: String,
    rules: Vec<&'static str>,
    /// The location of the op that produces the piece's result, for diagnostics.
    loc: Option<String>,
}

/// Ops that compute each output element from the elements at the same (broadcast) position:
/// `ew` ops, and inference-mode batch normalization, a per-channel affine map.
/// Quantize and dequantize are elementwise too (their scales and zero points broadcast per
/// tensor, axis or block).
pub(crate) fn is_elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Ew(_)
            | Op::Nn(NnOp::BatchNorm { .. })
            | Op::Quant(QuantOp::Quantize { .. } | QuantOp::Dequantize { .. })
    )
}

/// Ops that may follow in a fused body: elementwise ops, and views (`reshape`, `flatten`,
/// `squeeze`, `unsqueeze`, `identity`), which keep every element where it is in memory, so a
/// kernel writes its result in the view's shape at no cost.
fn is_tail(op: &Op) -> bool {
    is_elementwise(op) || crate::egraph::cost::is_view(op)
}

/// Ops whose elementwise epilogues fuse: contractions, float and integer (`matmul_integer`,
/// `conv_integer` of dynamically quantized models, whose i32 results the following elementwise
/// ops rescale to float: the fused kernel is an integer kernel with a requantization epilogue),
/// and layer normalization (a row-wise kernel that can apply an activation as it writes).
pub(crate) fn is_anchor(op: &Op) -> bool {
    matches!(
        op,
        Op::Nn(NnOp::Matmul | NnOp::Gemm { .. } | NnOp::Conv { .. } | NnOp::LayerNorm { .. })
            | Op::Quant(QuantOp::MatMulInteger | QuantOp::ConvInteger(_))
    )
}

/// The short name used in composite kinds: `conv`, `add`.
fn short(op: &Op) -> String {
    let n = op.name();
    n.rsplit('.').next().unwrap_or(&n).to_string()
}

/// Whether a body is a fused kernel this file understands: elementwise ops, optionally after
/// one leading contraction.
pub(crate) fn body_shape(body: &Graph) -> Option<bool> {
    let mut anchored = false;
    for (i, n) in body.nodes.iter().enumerate() {
        match &n.op {
            op if is_tail(op) => {}
            op if i == 0 && is_anchor(op) => anchored = true,
            _ => return None,
        }
    }
    Some(anchored)
}

/// For a graph node: `Some((anchored, ops))` when fusion understands it (a fusible op or
/// composite with one output), for reports of fusions not taken.
pub(crate) fn node_shape(n: &mlc_ir::Node) -> Option<(bool, usize)> {
    if n.outputs.len() != 1 {
        return None;
    }
    match &n.op {
        Op::Control(ControlOp::Composite { .. }) => {
            let body = n.regions.first()?;
            Some((body_shape(body)?, body.nodes.len()))
        }
        op if n.regions.is_empty() && (is_anchor(op) || is_tail(op)) => Some((is_anchor(op), 1)),
        _ => None,
    }
}

/// The piece an e-node computes, if it is fusible: a single-output `ew` op or contraction, or a
/// composite built by this file.
fn piece(eg: &MlcEGraph, node: &MlcNode) -> Option<Piece> {
    let MlcNode::Op(o, children) = node else {
        return None;
    };
    let [out_ty] = o.types.as_slice() else {
        return None;
    };
    if let Op::Control(ControlOp::Composite { kind }) = &o.op {
        let body = o.regions.first()?;
        body_shape(body)?;
        if body.inputs.len() != children.len() || body.outputs.len() != 1 {
            return None;
        }
        return Some(Piece {
            body: body.clone(),
            inputs: children.iter().map(|c| eg.find(*c)).collect(),
            kind: kind.clone(),
            rules: o.rules.clone(),
            loc: o.loc.clone(),
        });
    }
    let anchored = is_anchor(&o.op);
    if !(anchored || is_tail(&o.op)) || !o.regions.is_empty() {
        return None;
    }
    // A body with one node: each distinct present operand becomes a body input.
    let mut body = Graph::new();
    let mut inputs: Vec<Id> = vec![];
    let mut args = Vec::with_capacity(children.len());
    for c in children {
        let facts = &eg[*c].data;
        if facts.types.is_empty() {
            args.push(None);
            continue;
        }
        let c = eg.find(*c);
        let k = match inputs.iter().position(|i| *i == c) {
            Some(k) => k,
            None => {
                inputs.push(c);
                body.add_input(format!("in{}", inputs.len() - 1), facts.ty()?.clone());
                inputs.len() - 1
            }
        };
        args.push(Some(body.inputs[k].value));
    }
    let out = body.add_node(
        o.op.clone(),
        args,
        vec![out_ty.clone()],
        vec![],
        o.loc.clone(),
    )[0];
    body.outputs.push(Port {
        value: out,
        name: "out".into(),
    });
    Some(Piece {
        body,
        inputs,
        kind: short(&o.op),
        rules: o.rules.clone(),
        loc: o.loc.clone(),
    })
}

/// Copies `src`'s nodes into `dst`, its inputs bound to `args`; returns its outputs.
fn inline(dst: &mut Graph, src: &Graph, args: &[ValueId]) -> Vec<ValueId> {
    let mut map: Vec<Option<ValueId>> = vec![None; src.values.len()];
    for (p, a) in src.inputs.iter().zip(args) {
        map[p.value.0 as usize] = Some(*a);
    }
    for n in &src.nodes {
        let op = match n.op {
            Op::Constant { id } => match src.consts.get(id as usize) {
                Some(t) => Op::Constant {
                    id: dst.add_const(t.clone()).0,
                },
                None => n.op.clone(),
            },
            _ => n.op.clone(),
        };
        let inputs = n
            .inputs
            .iter()
            .map(|v| v.and_then(|v| map[v.0 as usize]))
            .collect();
        let types = n.outputs.iter().map(|o| src.ty(*o).clone()).collect();
        let outs = dst.add_node(op, inputs, types, n.regions.clone(), n.loc.clone());
        for (o, v) in n.outputs.iter().zip(outs) {
            map[o.0 as usize] = Some(v);
        }
    }
    src.outputs
        .iter()
        .filter_map(|p| map[p.value.0 as usize])
        .collect()
}

/// The composite computing `consumer` with its operand `at` computed by `producer` inline.
fn fuse(eg: &MlcEGraph, producer: &Piece, at: Id, consumer: &Piece) -> Option<(Graph, Vec<Id>)> {
    let mut inputs: Vec<Id> = producer.inputs.clone();
    for c in &consumer.inputs {
        if *c != at && !inputs.contains(c) {
            inputs.push(*c);
        }
    }
    let mut body = Graph::new();
    let vals: Vec<ValueId> = inputs
        .iter()
        .enumerate()
        .map(|(i, c)| ty(eg, *c).map(|t| body.add_input(format!("in{i}"), t.clone())))
        .collect::<Option<_>>()?;
    let val_of = |c: &Id| inputs.iter().position(|i| i == c).map(|k| vals[k]);
    let p_args: Vec<ValueId> = producer.inputs.iter().map(val_of).collect::<Option<_>>()?;
    let [p_out] = inline(&mut body, &producer.body, &p_args)[..] else {
        return None;
    };
    let c_args: Vec<ValueId> = consumer
        .inputs
        .iter()
        .map(|c| if *c == at { Some(p_out) } else { val_of(c) })
        .collect::<Option<_>>()?;
    let [c_out] = inline(&mut body, &consumer.body, &c_args)[..] else {
        return None;
    };
    body.outputs.push(Port {
        value: c_out,
        name: "out".into(),
    });
    Some((body, inputs))
}

/// Whether `a` has as many elements as `b`: by static sizes, or failing that (symbolic dims)
/// by equal shapes. An elementwise consumer whose result has as many elements as an operand
/// does not broadcast that operand.
pub(crate) fn same_size(a: Option<&mlc_ir::TensorType>, b: &mlc_ir::TensorType) -> bool {
    let Some(a) = a else { return false };
    match (a.static_shape(), b.static_shape()) {
        (Some(x), Some(y)) => x.iter().product::<usize>() == y.iter().product::<usize>(),
        _ => a.shape == b.shape,
    }
}

/// The distinct classes whose e-nodes use `class`, not counting composites built by fusion:
/// every operand of such a composite is an operand of one of the pieces fused into it, and
/// those pieces are still in the e-graph (in their own classes), so they are counted instead.
/// Counting the fused composites too would make every fused value look shared and stop longer
/// chains from fusing. Composites that other rules build whole (an integer convolution with
/// its rescale, from a QDQ convolution) cover nothing (`covers` is empty): no plain op in the
/// e-graph reads their operands for them, so they count as readers themselves. Skipping them
/// let a quantized ResNet's residual add pull the whole convolution that produced its other
/// operand into its own kernel, computing that convolution twice.
fn consumers(eg: &MlcEGraph, class: Id) -> BTreeSet<Id> {
    eg[class]
        .parents()
        .filter(|p| {
            !matches!(eg.id_to_node(*p), MlcNode::Op(o, _)
                if matches!(o.op, Op::Control(ControlOp::Composite { .. })) && !o.covers.is_empty())
        })
        .map(|p| eg.find(p))
        // A parent in the class itself is a cycle left by an identity (`x * 1 = x`), not a use.
        .filter(|p| *p != class)
        .collect()
}

/// Fusion candidates in `class`: consumer e-nodes that are elementwise pieces, each operand
/// class's fusible producers that `accept` admits.
/// What the search needs to know of a fusible e-node, cheaply (no body is built).
struct Meta {
    inputs: Vec<Id>,
    anchored: bool,
    ops: usize,
    /// The classes of the ops it stands for (a plain op: none besides its own).
    covers: Vec<Id>,
}

fn meta(eg: &MlcEGraph, node: &MlcNode) -> Option<Meta> {
    let MlcNode::Op(o, children) = node else {
        return None;
    };
    if o.types.len() != 1 {
        return None;
    }
    let (anchored, ops) = match &o.op {
        Op::Control(ControlOp::Composite { .. }) => {
            let body = o.regions.first()?;
            (body_shape(body)?, body.nodes.len())
        }
        op if o.regions.is_empty() && (is_anchor(op) || is_tail(op)) => (is_anchor(op), 1),
        _ => return None,
    };
    let mut inputs: Vec<Id> = vec![];
    for c in children {
        let c = eg.find(*c);
        if !eg[c].data.types.is_empty() && !inputs.contains(&c) {
            inputs.push(c);
        }
    }
    Some(Meta {
        inputs,
        anchored,
        ops,
        covers: o.covers.iter().map(|c| eg.find(*c)).collect(),
    })
}

/// The most ops any fusible e-node of `class` (anchored or not, as asked) already holds.
/// Fusion only extends the widest alternatives of a class: every narrower one is a part of
/// them, and combining every part of a producer with every part of its consumer makes the
/// number of composites grow with the product of their lengths (exponentially where chains
/// branch and join, as around the residual adds of a quantized ResNet), for kernels the
/// widest ones already cover.
fn largest(eg: &MlcEGraph, class: Id, anchored: bool) -> usize {
    eg[class]
        .nodes
        .iter()
        .filter_map(|n| meta(eg, n))
        .filter(|m| m.anchored == anchored)
        .map(|m| m.ops)
        .max()
        .unwrap_or(0)
}

fn candidates(eg: &MlcEGraph, class: Id, anchored: bool) -> Vec<Build> {
    let class = eg.find(class);
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let mut out: Vec<Build> = vec![];
    let widest = largest(eg, class, false);
    for cnode in &eg[class].nodes {
        let Some(consumer) = meta(eg, cnode) else {
            continue;
        };
        if consumer.anchored || consumer.inputs.contains(&class) || consumer.ops < widest {
            continue;
        }
        for &at in &consumer.inputs {
            // As many elements (dtypes may differ: `cast`, `quantize` consume contractions;
            // shapes too, through a view): then no producer element is computed twice.
            if !same_size(ty(eg, at), &want) {
                continue;
            }
            // Every reader of `at` is the consumer or fused into it, so fusing computes `at`
            // once.
            let read_inside = consumers(eg, at)
                .iter()
                .all(|r| *r == class || consumer.covers.contains(r));
            if !read_inside {
                continue;
            }
            let widest = largest(eg, at, anchored);
            for pnode in &eg[at].nodes {
                let Some(producer) = meta(eg, pnode) else {
                    continue;
                };
                if producer.anchored != anchored
                    || producer.ops < widest
                    || producer.inputs.contains(&at)
                    || producer.inputs.contains(&class)
                    || producer.ops + consumer.ops > MAX_BODY_OPS
                    || eg.analysis.fused.contains(&(cnode.clone(), pnode.clone()))
                {
                    continue;
                }
                let mut covers: Vec<Id> = consumer.covers.clone();
                covers.extend(producer.covers.iter().copied());
                covers.extend([at, class]);
                covers.sort_unstable();
                covers.dedup();
                let (cnode, pnode, want) = (cnode.clone(), pnode.clone(), want.clone());
                out.push(Box::new(move |eg, rule| {
                    eg.analysis.fused.insert((cnode.clone(), pnode.clone()));
                    let (producer, consumer) = (piece(eg, &pnode)?, piece(eg, &cnode)?);
                    let (body, inputs) = fuse(eg, &producer, eg.find(at), &consumer)?;
                    let kind = format!("{}+{}", producer.kind, consumer.kind);
                    let mut rules: Vec<&'static str> = producer.rules.clone();
                    rules.extend(consumer.rules.iter().copied());
                    rules.push(rule);
                    rules.sort_unstable();
                    rules.dedup();
                    let mut info = OpInfo::new(
                        Op::Control(ControlOp::Composite { kind }),
                        vec![body],
                        vec![want],
                        // The composite stands where its last op stood.
                        consumer.loc.clone().or_else(|| producer.loc.clone()),
                        rules,
                    );
                    info.covers = covers;
                    Some(eg.add(MlcNode::Op(OpRef::new(info), inputs)))
                }));
            }
        }
    }
    out
}

fn fuse_elementwise(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    candidates(eg, class, false)
}

fn fuse_epilogue(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    candidates(eg, class, true)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{check, check_all};

    #[test]
    fn an_elementwise_chain_is_one_kernel() {
        let src = r#"graph (%0: f32[a,b] "x", %1: f32[a,b] "y") -> (%5 "z") {
  %2 = ew.sub(%0, %1) : f32[a,b]
  %3 = ew.mul(%2, %2) : f32[a,b]
  %4 = ew.exp(%3) : f32[a,b]
  %5 = ew.relu(%4) : f32[a,b]
}
"#;
        let shapes: &[&[&[usize]]] = &[&[&[2, 3], &[2, 3]], &[&[1, 7], &[1, 7]]];
        for g in check(&["fuse-elementwise"], src, shapes) {
            assert_eq!(g.nodes.len(), 1, "{g}");
            assert!(g.to_string().contains("sub+mul+exp+relu"), "{g}");
        }
    }

    #[test]
    fn activations_and_residual_adds_fuse_into_contractions() {
        let src = r#"graph (%0: f32[1,2,5,5] "x", %1: f32[4,2,3,3] "w", %2: f32[1,4,3,3] "skip") -> (%5 "y") {
  %3 = nn.conv {"strides":[1,1],"dilations":[1,1],"pads":[0,0,0,0],"group":1,"auto_pad":"not_set"} (%0, %1, _) : f32[1,4,3,3]
  %4 = ew.add(%3, %2) : f32[1,4,3,3]
  %5 = ew.relu(%4) : f32[1,4,3,3]
}
"#;
        let shapes: &[&[&[usize]]] = &[&[&[1, 2, 5, 5], &[4, 2, 3, 3], &[1, 4, 3, 3]]];
        for g in check(&["fuse-epilogue", "fuse-elementwise"], src, shapes) {
            assert_eq!(g.nodes.len(), 1, "{g}");
            assert!(g.to_string().contains("conv+add+relu"), "{g}");
        }
    }

    #[test]
    fn batch_norm_and_activation_fuse_into_a_convolution() {
        let src = r#"graph (%0: f32[1,2,6,6] "x", %1: f32[3,2,3,3] "w", %2: f32[3] "s", %3: f32[3] "b", %4: f32[3] "m", %5: f32[3] "v") -> (%9 "y") {
  @c0 = const f32[3] [1.0, 2.0, 3.0]
  %6 = nn.conv {"strides":[1,1],"dilations":[1,1],"pads":[1,1,1,1],"group":1,"auto_pad":"not_set"} (%0, %1, _) : f32[1,3,6,6]
  %7 = constant @c0 : f32[3]
  %8 = nn.batch_norm {"epsilon":0.00001} (%6, %2, %3, %4, %7) : f32[1,3,6,6]
  %9 = ew.hard_swish(%8) : f32[1,3,6,6]
}
"#;
        let (c, w, p): (&[usize], &[usize], &[usize]) = (&[1, 2, 6, 6], &[3, 2, 3, 3], &[3]);
        for g in check(&["fuse-epilogue"], src, &[&[c, w, p, p, p, p]]) {
            assert_eq!(g.op_count() - 3, 1, "{g}");
            assert!(g.to_string().contains("conv+batch_norm+hard_swish"), "{g}");
        }
    }

    #[test]
    fn a_value_read_only_inside_one_kernel_fuses_into_it() {
        // `%2` has two readers, `%3` and `%4`, which fuse together first: then `%2` is read
        // only inside that kernel and joins it (the tanh form of GELU looks like this).
        let src = r#"graph (%0: f32[a] "x") -> (%4 "y") {
  %1 = ew.neg(%0) : f32[a]
  %2 = ew.relu(%1) : f32[a]
  %3 = ew.mul(%2, %2) : f32[a]
  %4 = ew.add(%3, %2) : f32[a]
}
"#;
        for g in check(&["fuse-elementwise"], src, &[&[&[5]], &[&[1]]]) {
            assert_eq!(g.nodes.len(), 1, "{g}");
        }
    }

    #[test]
    fn views_fuse_anywhere_in_a_chain() {
        let src = r#"graph (%0: f32[2,4] "x", %1: f32[4,6] "w") -> (%5 "y") {
  %2 = nn.matmul(%0, %1) : f32[2,6]
  %3 = movement.reshape {"shape":[2,2,3],"allowzero":false} (%2) : f32[2,2,3]
  %4 = ew.relu(%3) : f32[2,2,3]
  %5 = movement.flatten {"axis":1} (%4) : f32[2,6]
}
"#;
        for g in check(&["fuse-epilogue"], src, &[&[&[2, 4], &[4, 6]]]) {
            assert_eq!(g.nodes.len(), 1, "{g}");
            assert!(g.to_string().contains("matmul+reshape+relu+flatten"), "{g}");
        }
    }

    #[test]
    fn shared_values_and_broadcasting_producers_do_not_fuse() {
        // `%2` has two consumers; `%4` would be recomputed for every row of `%5`.
        let src = r#"graph (%0: f32[3] "x", %1: f32[2,3] "m") -> (%3 "a", %5 "b") {
  %2 = ew.exp(%0) : f32[3]
  %3 = ew.neg(%2) : f32[3]
  %4 = ew.sin(%2) : f32[3]
  %5 = ew.mul(%4, %1) : f32[2,3]
}
"#;
        let g = &check_all(src, &[&[&[3], &[2, 3]]])[0];
        assert_eq!(g.nodes.len(), 4, "{g}");
    }
}
