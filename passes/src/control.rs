//! Control-flow flattening: `control.if`, `control.scan` and `control.loop` nodes whose
//! iteration structure is known at compile time become straight-line graph code, so that every
//! compiled engine (kernel IR, CPU, PTX) runs them without supporting regions.
//!
//! - `If` with a run-time condition: both branches are inlined and each output is selected with
//!   `Where(cond, then, else)`. Regions are pure, so computing the branch not taken changes no
//!   result. Only when both branches yield outputs of identical static types (a `Where` cannot
//!   select between shapes), and only up to [`ControlPolicy::max_branch_nodes`] nodes, since
//!   the work of both branches is always paid.
//! - `Scan` whose sequence length is static: the body is copied once per iteration, each copy
//!   taking one slice of every scan input (`Split` + `Squeeze`, honoring reverse directions) and
//!   the previous copy's states; the scan outputs' slices are stacked along their axes
//!   (`Unsqueeze` + `Concat`, honoring reverse directions).
//! - `Loop` whose trip count is a constant and whose condition provably stays true (absent or a
//!   constant true, and the body yields a constant true or passes its condition input through):
//!   unrolled the same way, each copy's iteration number an `i64` constant, scan outputs stacked
//!   along a new axis 0. A data-dependent condition leaves the node alone: the number of
//!   iterations, and so the shapes of the scan outputs, is only known at run time.
//!
//! Unrolling is bounded by [`ControlPolicy::max_unrolled_nodes`] (iterations × body ops).
//!
//! Every copied node is re-typed by its op's inference from the types it actually receives:
//! a region's recorded types are its declared contract, which may be vaguer than one
//! iteration's (a symbolic dim the binding fixed outside), or may not hold for every iteration
//! (a loop-carried value that grows). A node whose copy cannot be typed (in an `If`, typically
//! a branch that is invalid for the shapes at hand and so never taken) makes the pass leave the
//! control node as it was. Constants of a region are added to the graph once per rewritten
//! node, not once per iteration, so a body's weights are not duplicated.
//!
//! The pass rewrites the top-level graph only. Inside a region that stays, types are the
//! region's declared contract rather than facts, and no compiled engine would run the result
//! anyway. Control nodes that an inlined body brings to the top level are handled on the next
//! run, after the fold/infer fixpoint has specialized them ([`crate::simplify_with`] alternates
//! the two).

use crate::Skipped;
use mlc_ir::ops::{ControlOp, EwOp, InferCx, MovementOp};
use mlc_ir::{DType, Graph, Node, Op, Tensor, TensorType, ValueId};
use std::collections::{BTreeMap, HashMap};

/// Limits of [`flatten`].
#[derive(Debug, Clone)]
pub struct ControlPolicy {
    /// The most ops (not counting constants) both branches of an `If` may hold together.
    pub max_branch_nodes: usize,
    /// The most ops an unrolled `Scan` or `Loop` may produce: iterations × body ops.
    pub max_unrolled_nodes: usize,
}

impl Default for ControlPolicy {
    fn default() -> Self {
        ControlPolicy {
            max_branch_nodes: 256,
            max_unrolled_nodes: 4096,
        }
    }
}

/// What [`flatten`] did.
#[derive(Debug, Clone, Default)]
pub struct Flattened {
    /// Control nodes replaced by straight-line code.
    pub rewritten: usize,
    /// Control nodes left alone, keyed `"flatten <op>"`, with the first reason.
    pub skipped: BTreeMap<String, Skipped>,
}

/// Why a control node was left alone.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("the trip count is not a compile-time constant")]
    DynamicTrips,
    #[error("the loop condition may turn false at run time")]
    DynamicCond,
    #[error("the scan length is not static")]
    DynamicLength,
    #[error("the condition {0} is not a static one-element tensor")]
    Condition(String),
    #[error("{needed} ops exceed the budget of {budget}")]
    Budget { needed: usize, budget: usize },
    #[error("output {index}: the branches yield {then} and {other}, not one static type")]
    BranchTypes {
        index: usize,
        then: String,
        other: String,
    },
    #[error("output {index} has no static type ({ty}) for an empty result")]
    NotStatic { index: usize, ty: String },
    #[error("a copy of {op} cannot be typed: {reason}")]
    Infer { op: String, reason: String },
    #[error("a branch addresses data by run-time indices ({0}), which must not run untaken")]
    DataAddressed(String),
    #[error("malformed node: {0}")]
    Malformed(String),
}

/// Replaces the top-level control nodes of `graph` that the policy allows by straight-line
/// code; see the module docs.
pub fn flatten(graph: &mut Graph, policy: &ControlPolicy) -> Flattened {
    let mut out = Flattened::default();
    let old = std::mem::take(&mut graph.nodes);
    // The results that replace each rewritten node's outputs, applied to every later use.
    let mut rename: HashMap<ValueId, ValueId> = HashMap::new();
    let mut b = Builder::new(graph);
    for mut node in old {
        for v in node.inputs.iter_mut().flatten() {
            if let Some(r) = rename.get(v) {
                *v = *r;
            }
        }
        if let Op::Control(op) = &node.op
            && !matches!(op, ControlOp::Composite { .. })
        {
            let mark = b.mark();
            match b.expand(op, &node, policy) {
                Ok(results) => {
                    rename.extend(node.outputs.iter().copied().zip(results));
                    out.rewritten += 1;
                    continue;
                }
                Err(e) => {
                    b.rollback(mark);
                    out.skipped
                        .entry(format!("flatten {}", node.op.name()))
                        .and_modify(|s| s.count += 1)
                        .or_insert_with(|| Skipped {
                            count: 1,
                            reason: e.to_string(),
                        });
                }
            }
        }
        b.push(node);
    }
    for p in &mut graph.outputs {
        if let Some(r) = rename.get(&p.value) {
            p.value = *r;
        }
    }
    out
}

/// Appends nodes to a graph, typing each new one by inference, and can undo what it added.
struct Builder<'g> {
    g: &'g mut Graph,
    /// Per value, the constant a `constant` node gives it.
    consts: Vec<Option<u32>>,
}

/// The table sizes to return to when an expansion is abandoned.
#[derive(Clone, Copy)]
struct Mark {
    values: usize,
    nodes: usize,
    consts: usize,
}

impl<'g> Builder<'g> {
    /// A builder on `g`, whose nodes were taken out to be passed back through [`Builder::push`]
    /// (which indexes their constants) or replaced.
    fn new(g: &'g mut Graph) -> Self {
        let consts = vec![None; g.values.len()];
        Builder { g, consts }
    }

    fn mark(&self) -> Mark {
        Mark {
            values: self.g.values.len(),
            nodes: self.g.nodes.len(),
            consts: self.g.consts.len(),
        }
    }

    fn rollback(&mut self, m: Mark) {
        self.g.values.truncate(m.values);
        self.g.nodes.truncate(m.nodes);
        self.g.consts.truncate(m.consts);
        self.consts.truncate(m.values);
    }

    fn push(&mut self, node: Node) {
        if let (Op::Constant { id }, Some(v)) = (&node.op, node.outputs.first())
            && let Some(slot) = self.consts.get_mut(v.0 as usize)
        {
            *slot = Some(*id);
        }
        self.g.nodes.push(node);
    }

    fn ty(&self, v: ValueId) -> &TensorType {
        self.g.ty(v)
    }

    fn const_of(&self, v: ValueId) -> Option<&Tensor> {
        let id = self.consts.get(v.0 as usize).copied().flatten()?;
        self.g.consts.get(id as usize)
    }

    fn constant(&mut self, t: Tensor) -> ValueId {
        let v = self.g.add_constant(t);
        self.consts.resize(self.g.values.len(), None);
        self.consts[v.0 as usize] = Some((self.g.consts.len() - 1) as u32);
        v
    }

    /// Appends `op` on `inputs`, its output types inferred from the inputs' types and
    /// constant values.
    fn emit(
        &mut self,
        op: Op,
        inputs: Vec<Option<ValueId>>,
        n_outputs: usize,
        regions: Vec<Graph>,
        loc: Option<String>,
    ) -> Result<Vec<ValueId>, Refusal> {
        let types: Vec<Option<TensorType>> = inputs
            .iter()
            .map(|v| v.map(|v| self.ty(v).clone()))
            .collect();
        let consts: Vec<Option<&Tensor>> = inputs
            .iter()
            .map(|v| v.and_then(|v| self.const_of(v)))
            .collect();
        let cx = InferCx {
            inputs: &types,
            consts: &consts,
            regions: &regions,
            n_outputs,
        };
        let out_types = op.infer(&cx).map_err(|e| Refusal::Infer {
            op: op.name(),
            reason: e.to_string(),
        })?;
        if out_types.len() != n_outputs {
            return Err(Refusal::Infer {
                op: op.name(),
                reason: format!("{} types for {n_outputs} outputs", out_types.len()),
            });
        }
        let outs = self.g.add_node(op, inputs, out_types, regions, loc);
        self.consts.resize(self.g.values.len(), None);
        Ok(outs)
    }

    fn one(
        &mut self,
        op: Op,
        inputs: Vec<ValueId>,
        loc: &Option<String>,
    ) -> Result<ValueId, Refusal> {
        let outs = self.emit(
            op,
            inputs.into_iter().map(Some).collect(),
            1,
            vec![],
            loc.clone(),
        )?;
        outs.first()
            .copied()
            .ok_or_else(|| Refusal::Malformed("an op without output".into()))
    }

    /// Copies `region`'s nodes with its inputs bound to `args`; returns what it yields.
    /// `hoisted` maps the region's constants to the values already holding them.
    fn inline(
        &mut self,
        region: &Graph,
        args: &[ValueId],
        hoisted: &mut HashMap<u32, ValueId>,
        loc: &Option<String>,
    ) -> Result<Vec<ValueId>, Refusal> {
        if region.inputs.len() != args.len() {
            return Err(Refusal::Malformed(format!(
                "a region takes {} inputs, the node gives {}",
                region.inputs.len(),
                args.len()
            )));
        }
        let mut map: Vec<Option<ValueId>> = vec![None; region.values.len()];
        let undefined = |v: ValueId| Refusal::Malformed(format!("region value {v} is undefined"));
        let n_values = region.values.len();
        let slot = |v: ValueId| -> Result<usize, Refusal> {
            let i = v.0 as usize;
            if i < n_values {
                Ok(i)
            } else {
                Err(undefined(v))
            }
        };
        for (p, &a) in region.inputs.iter().zip(args) {
            let i = slot(p.value)?;
            map[i] = Some(a);
        }
        for n in &region.nodes {
            let outs = if let Op::Constant { id } = n.op {
                let v = match hoisted.get(&id) {
                    Some(&v) => v,
                    None => {
                        let t = region.consts.get(id as usize).cloned().ok_or_else(|| {
                            Refusal::Malformed(format!("region constant @{id} does not exist"))
                        })?;
                        let v = self.constant(t);
                        hoisted.insert(id, v);
                        v
                    }
                };
                vec![v]
            } else {
                let inputs = n
                    .inputs
                    .iter()
                    .map(|i| {
                        i.map(|v| {
                            map.get(v.0 as usize)
                                .copied()
                                .flatten()
                                .ok_or_else(|| undefined(v))
                        })
                        .transpose()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let at = n.loc.clone().or_else(|| loc.clone());
                self.emit(n.op.clone(), inputs, n.outputs.len(), n.regions.clone(), at)?
            };
            for (o, v) in n.outputs.iter().zip(outs) {
                let i = slot(*o)?;
                map[i] = Some(v);
            }
        }
        region
            .outputs
            .iter()
            .map(|p| {
                map.get(p.value.0 as usize)
                    .copied()
                    .flatten()
                    .ok_or_else(|| undefined(p.value))
            })
            .collect()
    }

    fn expand(
        &mut self,
        op: &ControlOp,
        node: &Node,
        policy: &ControlPolicy,
    ) -> Result<Vec<ValueId>, Refusal> {
        let results = match op {
            ControlOp::If {
                then_captures,
                else_captures,
            } => self.expand_if(node, *then_captures, *else_captures, policy)?,
            ControlOp::Scan {
                states,
                input_axes,
                input_reverse,
                output_axes,
                output_reverse,
                ..
            } => self.expand_scan(
                node,
                *states,
                (input_axes, input_reverse),
                (output_axes, output_reverse),
                policy,
            )?,
            ControlOp::Loop { carried, .. } => self.expand_loop(node, *carried, policy)?,
            ControlOp::Composite { .. } => {
                return Err(Refusal::Malformed("composites are not control flow".into()));
            }
        };
        if results.len() != node.outputs.len() {
            return Err(Refusal::Malformed(format!(
                "{} results for {} outputs",
                results.len(),
                node.outputs.len()
            )));
        }
        Ok(results)
    }

    fn expand_if(
        &mut self,
        node: &Node,
        then_captures: usize,
        else_captures: usize,
        policy: &ControlPolicy,
    ) -> Result<Vec<ValueId>, Refusal> {
        let [then_r, else_r] = node.regions.as_slice() else {
            return Err(Refusal::Malformed("an if needs two regions".into()));
        };
        let needed = then_r.op_count() + else_r.op_count();
        if needed > policy.max_branch_nodes {
            return Err(Refusal::Budget {
                needed,
                budget: policy.max_branch_nodes,
            });
        }
        let cond = required(node, 0)?;
        let cond_ty = self.ty(cond).clone();
        if cond_ty.static_shape().map(|s| s.iter().product::<usize>()) != Some(1)
            || cond_ty.dtype == DType::Str
        {
            return Err(Refusal::Condition(cond_ty.to_string()));
        }
        let args = (1..1 + then_captures + else_captures)
            .map(|i| required(node, i))
            .collect::<Result<Vec<_>, _>>()?;
        let (then_args, else_args) = args.split_at(then_captures);
        let first = self.g.nodes.len();
        let then_v = self.inline(then_r, then_args, &mut HashMap::new(), &node.loc)?;
        let else_v = self.inline(else_r, else_args, &mut HashMap::new(), &node.loc)?;
        if then_v.len() != node.outputs.len() || else_v.len() != node.outputs.len() {
            return Err(Refusal::Malformed(
                "branches yield the wrong number of values".into(),
            ));
        }
        // Compiled kernels do not bounds-check run-time indices: the branch not taken may hold
        // indices that are only valid when it is (`if i < n { gather(x, i) }`).
        for n in &self.g.nodes[first..] {
            let by_data = index_operand(&n.op)
                .is_some_and(|i| n.input(i).is_some_and(|v| self.const_of(v).is_none()));
            if by_data || n.regions.iter().any(addresses_data) {
                return Err(Refusal::DataAddressed(n.op.name()));
            }
        }
        for (index, (&t, &e)) in then_v.iter().zip(&else_v).enumerate() {
            let (tt, et) = (self.ty(t), self.ty(e));
            if tt != et || tt.static_shape().is_none() || tt.dtype == DType::Str {
                return Err(Refusal::BranchTypes {
                    index,
                    then: tt.to_string(),
                    other: et.to_string(),
                });
            }
        }
        // `Where` wants a bool condition that broadcasts to every output: a scalar.
        let mut pred = None;
        let mut results = Vec::with_capacity(then_v.len());
        for (&t, &e) in then_v.iter().zip(&else_v) {
            if t == e {
                results.push(t);
                continue;
            }
            let p = match pred {
                Some(p) => p,
                None => {
                    let mut p = cond;
                    if cond_ty.dtype != DType::Bool {
                        p = self.one(Op::Ew(EwOp::Cast { to: DType::Bool }), vec![p], &node.loc)?;
                    }
                    if cond_ty.rank() > 0 {
                        p = self.one(
                            Op::Movement(MovementOp::Squeeze { axes: None }),
                            vec![p],
                            &node.loc,
                        )?;
                    }
                    pred = Some(p);
                    p
                }
            };
            results.push(self.one(Op::Ew(EwOp::Where), vec![p, t, e], &node.loc)?);
        }
        Ok(results)
    }

    fn expand_scan(
        &mut self,
        node: &Node,
        states: usize,
        (input_axes, input_reverse): (&[usize], &[bool]),
        (output_axes, output_reverse): (&[usize], &[bool]),
        policy: &ControlPolicy,
    ) -> Result<Vec<ValueId>, Refusal> {
        let [body] = node.regions.as_slice() else {
            return Err(Refusal::Malformed("a scan needs one region".into()));
        };
        let n_in = input_axes.len();
        if input_reverse.len() != n_in || output_reverse.len() != output_axes.len() {
            return Err(Refusal::Malformed("inconsistent scan axes".into()));
        }
        let inputs = (0..node.inputs.len())
            .map(|i| required(node, i))
            .collect::<Result<Vec<_>, _>>()?;
        if inputs.len() < states + n_in {
            return Err(Refusal::Malformed("too few scan inputs".into()));
        }
        let (init, rest) = inputs.split_at(states);
        let (xs, caps) = rest.split_at(n_in);
        let mut len = None;
        for (&x, &ax) in xs.iter().zip(input_axes) {
            let d = self.ty(x).shape.get(ax).and_then(|d| d.known());
            match (len, d) {
                (_, None) => return Err(Refusal::DynamicLength),
                (Some(l), Some(d)) if l != d => {
                    return Err(Refusal::Malformed(format!("scan lengths {l} and {d}")));
                }
                _ => len = d,
            }
        }
        let len = len.ok_or(Refusal::DynamicLength)?;
        check_budget(len, body, policy)?;

        // slices[j][i]: slice i of scan input j, in storage order.
        let mut slices = Vec::with_capacity(n_in);
        for (&x, &ax) in xs.iter().zip(input_axes) {
            let parts = match len {
                0 => vec![],
                1 => vec![x],
                _ => self.emit(
                    Op::Movement(MovementOp::Split {
                        axis: ax,
                        sizes: Some(vec![1; len]),
                    }),
                    vec![Some(x)],
                    len,
                    vec![],
                    node.loc.clone(),
                )?,
            };
            let squeeze = Op::Movement(MovementOp::Squeeze {
                axes: Some(vec![ax]),
            });
            let row = parts
                .into_iter()
                .map(|p| self.one(squeeze.clone(), vec![p], &node.loc))
                .collect::<Result<Vec<_>, _>>()?;
            slices.push(row);
        }

        let mut state = init.to_vec();
        let mut scanned: Vec<Vec<ValueId>> = vec![Vec::with_capacity(len); output_axes.len()];
        let mut hoisted = HashMap::new();
        for it in 0..len {
            let mut args = state.clone();
            for (row, &rev) in slices.iter().zip(input_reverse) {
                args.push(row[if rev { len - 1 - it } else { it }]);
            }
            args.extend_from_slice(caps);
            let outs = self.inline(body, &args, &mut hoisted, &node.loc)?;
            if outs.len() != states + output_axes.len() {
                return Err(Refusal::Malformed(format!(
                    "the scan body yields {} values, expected {}",
                    outs.len(),
                    states + output_axes.len()
                )));
            }
            let (s, ys) = outs.split_at(states);
            state = s.to_vec();
            for (acc, &y) in scanned.iter_mut().zip(ys) {
                acc.push(y);
            }
        }
        let mut results = state;
        for (k, (mut ys, (&ax, &rev))) in scanned
            .into_iter()
            .zip(output_axes.iter().zip(output_reverse))
            .enumerate()
        {
            if rev {
                ys.reverse();
            }
            results.push(self.stack(node, states + k, ys, ax)?);
        }
        Ok(results)
    }

    fn expand_loop(
        &mut self,
        node: &Node,
        carried: usize,
        policy: &ControlPolicy,
    ) -> Result<Vec<ValueId>, Refusal> {
        let [body] = node.regions.as_slice() else {
            return Err(Refusal::Malformed("a loop needs one region".into()));
        };
        let trips = node
            .input(0)
            .and_then(|v| self.const_of(v))
            .and_then(|t| t.to_i64_vec().ok())
            .and_then(|v| match v.as_slice() {
                [n] => Some(*n),
                _ => None,
            })
            .ok_or(Refusal::DynamicTrips)?;
        let cond_in = match node.input(1) {
            None => None,
            Some(c) => Some(truth(self.const_of(c)).ok_or(Refusal::DynamicCond)?),
        };
        let trips = if cond_in == Some(false) {
            0
        } else {
            usize::try_from(trips.max(0)).map_err(|_| Refusal::DynamicTrips)?
        };
        check_budget(trips, body, policy)?;
        if trips > 0 && !yields_true(body) {
            return Err(Refusal::DynamicCond);
        }
        let inputs = (2..node.inputs.len())
            .map(|i| required(node, i))
            .collect::<Result<Vec<_>, _>>()?;
        if inputs.len() < carried {
            return Err(Refusal::Malformed("too few carried values".into()));
        }
        let (init, caps) = inputs.split_at(carried);
        let n_scan = node
            .outputs
            .len()
            .checked_sub(carried)
            .ok_or_else(|| Refusal::Malformed("fewer outputs than carried values".into()))?;

        let mut vals = init.to_vec();
        let mut scanned: Vec<Vec<ValueId>> = vec![Vec::with_capacity(trips); n_scan];
        let mut hoisted = HashMap::new();
        let mut yes = None;
        for it in 0..trips {
            let iteration = self.constant(Tensor::scalar(it as i64));
            let cond = match yes {
                Some(c) => c,
                None => *yes.insert(self.constant(Tensor::scalar(true))),
            };
            let mut args = vec![iteration, cond];
            args.extend_from_slice(&vals);
            args.extend_from_slice(caps);
            let outs = self.inline(body, &args, &mut hoisted, &node.loc)?;
            if outs.len() != 1 + carried + n_scan {
                return Err(Refusal::Malformed(format!(
                    "the loop body yields {} values, expected {}",
                    outs.len(),
                    1 + carried + n_scan
                )));
            }
            vals = outs[1..=carried].to_vec();
            for (acc, &y) in scanned.iter_mut().zip(&outs[1 + carried..]) {
                acc.push(y);
            }
        }
        for (k, ys) in scanned.into_iter().enumerate() {
            let v = if ys.is_empty() {
                // Zero trips: an empty stack whose other dims the body's output type gives.
                let ty = body
                    .outputs
                    .get(1 + carried + k)
                    .map(|p| body.ty(p.value).clone())
                    .ok_or_else(|| Refusal::Malformed("missing scan output".into()))?;
                let mut shape = vec![0];
                shape.extend(ty.static_shape().ok_or_else(|| Refusal::NotStatic {
                    index: carried + k,
                    ty: ty.to_string(),
                })?);
                self.constant(Tensor::zeros(ty.dtype, &shape))
            } else {
                self.stack(node, carried + k, ys, 0)?
            };
            vals.push(v);
        }
        Ok(vals)
    }

    /// The per-iteration values `ys` stacked along a new `axis`; for no iterations, zeros of
    /// output `index`'s type (which must be static).
    fn stack(
        &mut self,
        node: &Node,
        index: usize,
        ys: Vec<ValueId>,
        axis: usize,
    ) -> Result<ValueId, Refusal> {
        if ys.is_empty() {
            let ty = node
                .outputs
                .get(index)
                .map(|&o| self.ty(o).clone())
                .ok_or_else(|| Refusal::Malformed("missing output".into()))?;
            let shape = ty.static_shape().ok_or_else(|| Refusal::NotStatic {
                index,
                ty: ty.to_string(),
            })?;
            return Ok(self.constant(Tensor::zeros(ty.dtype, &shape)));
        }
        let unsqueeze = Op::Movement(MovementOp::Unsqueeze {
            axes: Some(vec![axis]),
        });
        let parts = ys
            .into_iter()
            .map(|y| self.one(unsqueeze.clone(), vec![y], &node.loc))
            .collect::<Result<Vec<_>, _>>()?;
        match parts.as_slice() {
            [one] => Ok(*one),
            _ => self.one(Op::Movement(MovementOp::Concat { axis }), parts, &node.loc),
        }
    }
}

/// The input of a data-addressed movement op that holds its indices.
fn index_operand(op: &Op) -> Option<usize> {
    match op {
        Op::Movement(
            MovementOp::Gather { .. }
            | MovementOp::GatherElements { .. }
            | MovementOp::GatherNd { .. }
            | MovementOp::ScatterElements { .. }
            | MovementOp::ScatterNd { .. },
        ) => Some(1),
        Op::Movement(MovementOp::TensorScatter { .. }) => Some(2),
        _ => None,
    }
}

/// Whether a region holds any data-addressed op, constant indices or not.
fn addresses_data(g: &Graph) -> bool {
    g.nodes
        .iter()
        .any(|n| index_operand(&n.op).is_some() || n.regions.iter().any(addresses_data))
}

fn required(node: &Node, i: usize) -> Result<ValueId, Refusal> {
    node.input(i)
        .ok_or_else(|| Refusal::Malformed(format!("input {i} is required")))
}

fn check_budget(iterations: usize, body: &Graph, policy: &ControlPolicy) -> Result<(), Refusal> {
    // A body of only routing still costs its copies (stack and slice ops), so count it as one.
    let needed = iterations.saturating_mul(body.op_count().max(1));
    if needed > policy.max_unrolled_nodes {
        return Err(Refusal::Budget {
            needed,
            budget: policy.max_unrolled_nodes,
        });
    }
    Ok(())
}

/// The truth of a one-element constant, as the interpreter reads a condition.
fn truth(t: Option<&Tensor>) -> Option<bool> {
    match t?.to_f64_vec().ok()?.as_slice() {
        [x] => Some(*x != 0.0),
        _ => None,
    }
}

/// Whether a loop body's condition output is true on every iteration that starts true: a
/// constant true, or the condition input passed through (possibly by `Identity`).
fn yields_true(body: &Graph) -> bool {
    let (Some(out), Some(cond_in)) = (body.outputs.first(), body.inputs.get(1)) else {
        return false;
    };
    let producers = body.producers();
    let mut v = out.value;
    loop {
        if v == cond_in.value {
            return true;
        }
        let Some(n) = producers
            .get(v.0 as usize)
            .copied()
            .flatten()
            .and_then(|i| body.nodes.get(i))
        else {
            return false;
        };
        match (&n.op, n.input(0)) {
            (Op::Constant { id }, _) => return truth(body.consts.get(*id as usize)) == Some(true),
            (Op::Movement(MovementOp::Identity), Some(x)) => v = x,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Options, simplify_with};
    use mlc_ir::Port;

    fn f32t(dims: &[usize]) -> TensorType {
        TensorType::fixed(DType::F32, dims)
    }

    /// A graph or region over `inputs` (named `in0`, `in1`, ...) yielding `outs(graph, inputs)`.
    fn graph(
        inputs: &[TensorType],
        outs: impl FnOnce(&mut Graph, &[ValueId]) -> Vec<ValueId>,
    ) -> Graph {
        let mut g = Graph::new();
        let ins: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| g.add_input(format!("in{i}"), t.clone()))
            .collect();
        for (i, v) in outs(&mut g, &ins).into_iter().enumerate() {
            g.outputs.push(Port {
                value: v,
                name: format!("out{i}"),
            });
        }
        g
    }

    /// Appends `op` with output types by inference.
    fn op(
        g: &mut Graph,
        op: Op,
        inputs: &[ValueId],
        n_outputs: usize,
        regions: Vec<Graph>,
    ) -> Vec<ValueId> {
        let types: Vec<_> = inputs.iter().map(|&v| Some(g.ty(v).clone())).collect();
        let consts: Vec<_> = inputs.iter().map(|&v| g.const_value(v)).collect();
        let out = op
            .infer(&InferCx {
                inputs: &types,
                consts: &consts,
                regions: &regions,
                n_outputs,
            })
            .unwrap_or_else(|e| panic!("{}: {e}", op.name()));
        g.add_node(
            op,
            inputs.iter().copied().map(Some).collect(),
            out,
            regions,
            None,
        )
    }

    fn ew(g: &mut Graph, e: EwOp, inputs: &[ValueId]) -> ValueId {
        op(g, Op::Ew(e), inputs, 1, vec![])[0]
    }

    /// Deterministic values in [-1, 1) from a linear congruential generator.
    fn random(dims: &[usize], seed: u64) -> Tensor {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = dims.iter().product();
        let v = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32) / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Tensor::from_vec(dims, v).expect("matching length")
    }

    fn count_control(g: &Graph) -> usize {
        g.nodes
            .iter()
            .map(|n| {
                usize::from(matches!(n.op, Op::Control(_)))
                    + n.regions.iter().map(count_control).sum::<usize>()
            })
            .sum()
    }

    /// Simplifies `g` under `policy` and checks that it flattened `flattened` control nodes
    /// (leaving `left` in the graph) and that the interpreter gives the same outputs before and
    /// after on `inputs`. Returns what simplification reported.
    fn check_with(
        g: &Graph,
        policy: ControlPolicy,
        inputs: &[Tensor],
        flattened: usize,
        left: usize,
    ) -> crate::Stats {
        let named: Vec<(String, Tensor)> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("in{i}"), t.clone()))
            .collect();
        let want = mlc_interp::run(g, &named).unwrap_or_else(|e| panic!("before: {e}\n{g}"));
        let mut after = g.clone();
        let options = Options {
            control: policy,
            ..Options::default()
        };
        let stats = simplify_with(&mut after, &[], &options).unwrap_or_else(|e| panic!("{e}\n{g}"));
        assert_eq!(stats.flattened, flattened, "{stats}\n{after}");
        assert_eq!(count_control(&after), left, "{stats}\n{after}");
        let got = mlc_interp::run(&after, &named).unwrap_or_else(|e| panic!("after: {e}\n{after}"));
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.shape(), b.shape(), "output {i}\n{after}");
            assert_eq!(a.dtype(), b.dtype(), "output {i}");
            assert_eq!(
                a.to_f64_vec().ok(),
                b.to_f64_vec().ok(),
                "output {i}\n{after}"
            );
        }
        stats
    }

    fn check(g: &Graph, inputs: &[Tensor], flattened: usize) -> crate::Stats {
        check_with(g, ControlPolicy::default(), inputs, flattened, 0)
    }

    /// `if cond { (x + 1, x) } else { (relu(y), x) }` over f32[2,3], `cond` of type `cond_ty`.
    fn if_graph(cond_ty: TensorType, else_dims: &[usize]) -> Graph {
        let t = f32t(&[2, 3]);
        let e = f32t(else_dims);
        graph(&[cond_ty, t.clone(), e.clone()], |g, ins| {
            let then = graph(std::slice::from_ref(&t), |r, a| {
                let one = r.add_constant(Tensor::scalar(1f32));
                vec![ew(r, EwOp::Add, &[a[0], one]), a[0]]
            });
            let els = graph(&[e.clone(), t.clone()], |r, a| {
                vec![ew(r, EwOp::Relu, &[a[0]]), a[1]]
            });
            let ifop = Op::Control(ControlOp::If {
                then_captures: 1,
                else_captures: 2,
            });
            let outs = op(
                g,
                ifop,
                &[ins[0], ins[1], ins[2], ins[1]],
                2,
                vec![then, els],
            );
            // Use the results, so that a wrong selection shows in the outputs.
            vec![ew(g, EwOp::Mul, &[outs[0], outs[1]]), outs[1]]
        })
    }

    #[test]
    fn if_selects_between_both_branches() {
        // A numeric condition (the IR allows one) goes through a cast to bool.
        for cond_ty in [
            TensorType::scalar(DType::Bool),
            TensorType::fixed(DType::Bool, &[1]),
            TensorType::fixed(DType::F32, &[1, 1]),
        ] {
            let g = if_graph(cond_ty.clone(), &[2, 3]);
            for c in [true, false] {
                let shape = cond_ty.static_shape().unwrap_or_default();
                let cond = Tensor::from_vec(&shape, vec![c; 1])
                    .and_then(|t| t.cast(cond_ty.dtype))
                    .expect("one element");
                let stats = check(&g, &[cond, random(&[2, 3], 1), random(&[2, 3], 2)], 1);
                assert!(
                    stats.skipped.keys().all(|k| !k.starts_with("flatten")),
                    "{stats}"
                );
            }
        }
    }

    #[test]
    fn if_with_branches_of_different_types_stays() {
        let g = if_graph(TensorType::scalar(DType::Bool), &[2, 1]);
        let cond = Tensor::scalar(false);
        let stats = check_with(
            &g,
            ControlPolicy::default(),
            &[cond, random(&[2, 3], 1), random(&[2, 1], 2)],
            0,
            1,
        );
        let s = &stats.skipped["flatten control.if"];
        assert!(s.reason.contains("f32[2,1]"), "{}", s.reason);
    }

    /// `if c { gather(x, i) } else { x[0] }`: the then-branch's index is only known at run time,
    /// so the node stays; with a constant index it flattens.
    #[test]
    fn if_with_a_run_time_gather_index_stays() {
        let t = f32t(&[4]);
        let idx = TensorType::scalar(DType::I64);
        let build = |constant_index: bool| {
            graph(
                &[TensorType::scalar(DType::Bool), t.clone(), idx.clone()],
                |g, ins| {
                    let then = graph(&[t.clone(), idx.clone()], |r, a| {
                        let i = if constant_index {
                            r.add_constant(Tensor::scalar(2i64))
                        } else {
                            a[1]
                        };
                        op(
                            r,
                            Op::Movement(MovementOp::Gather { axis: 0 }),
                            &[a[0], i],
                            1,
                            vec![],
                        )
                    });
                    let els = graph(std::slice::from_ref(&t), |r, a| {
                        let zero = r.add_constant(Tensor::scalar(0i64));
                        op(
                            r,
                            Op::Movement(MovementOp::Gather { axis: 0 }),
                            &[a[0], zero],
                            1,
                            vec![],
                        )
                    });
                    let ifop = Op::Control(ControlOp::If {
                        then_captures: 2,
                        else_captures: 1,
                    });
                    op(
                        g,
                        ifop,
                        &[ins[0], ins[1], ins[2], ins[1]],
                        1,
                        vec![then, els],
                    )
                },
            )
        };
        let inputs = [Tensor::scalar(false), random(&[4], 1), Tensor::scalar(9i64)];
        let stats = check_with(&build(false), ControlPolicy::default(), &inputs, 0, 1);
        assert!(
            stats.skipped["flatten control.if"]
                .reason
                .contains("movement.gather")
        );
        check(&build(true), &inputs, 1);
    }

    #[test]
    fn if_over_the_budget_stays() {
        let g = if_graph(TensorType::scalar(DType::Bool), &[2, 3]);
        let policy = ControlPolicy {
            max_branch_nodes: 1,
            ..ControlPolicy::default()
        };
        let inputs = [Tensor::scalar(true), random(&[2, 3], 1), random(&[2, 3], 2)];
        let stats = check_with(&g, policy, &inputs, 0, 1);
        assert!(
            stats.skipped["flatten control.if"]
                .reason
                .contains("budget")
        );
    }

    /// Two states `s0, s1: f32[3]`, scan inputs `x0: f32[4,3]` (axis 0) and `x1: f32[3,4]`
    /// (axis 1), a capture `c: f32[3]`; body `s0' = s0 + x0`, `s1' = relu(s1 + x1 * c)`,
    /// scan outputs `s0'` and `s1' + s0`, on axes 0 and 1.
    fn scan_graph(input_reverse: Vec<bool>, output_reverse: Vec<bool>) -> Graph {
        let v = f32t(&[3]);
        graph(
            &[
                v.clone(),
                v.clone(),
                f32t(&[4, 3]),
                f32t(&[3, 4]),
                v.clone(),
            ],
            |g, ins| {
                let body = graph(
                    &[v.clone(), v.clone(), v.clone(), v.clone(), v.clone()],
                    |r, a| {
                        let s0 = ew(r, EwOp::Add, &[a[0], a[2]]);
                        let m = ew(r, EwOp::Mul, &[a[3], a[4]]);
                        let s = ew(r, EwOp::Add, &[a[1], m]);
                        let s1 = ew(r, EwOp::Relu, &[s]);
                        let y1 = ew(r, EwOp::Add, &[s1, a[0]]);
                        vec![s0, s1, s0, y1]
                    },
                );
                let scan = Op::Control(ControlOp::Scan {
                    states: 2,
                    captures: 1,
                    input_axes: vec![0, 1],
                    input_reverse,
                    output_axes: vec![0, 1],
                    output_reverse,
                });
                op(g, scan, ins, 4, vec![body])
            },
        )
    }

    fn scan_inputs() -> Vec<Tensor> {
        vec![
            random(&[3], 1),
            random(&[3], 2),
            random(&[4, 3], 3),
            random(&[3, 4], 4),
            random(&[3], 5),
        ]
    }

    #[test]
    fn scan_unrolls_in_every_direction() {
        for (ir, or) in [
            (vec![false, false], vec![false, false]),
            (vec![true, false], vec![false, true]),
            (vec![false, true], vec![true, false]),
            (vec![true, true], vec![true, true]),
        ] {
            let g = scan_graph(ir, or);
            check(&g, &scan_inputs(), 1);
        }
    }

    #[test]
    fn scan_over_the_budget_stays() {
        let g = scan_graph(vec![false, false], vec![false, false]);
        // Four iterations of a five-op body.
        let policy = ControlPolicy {
            max_unrolled_nodes: 19,
            ..ControlPolicy::default()
        };
        let stats = check_with(&g, policy, &scan_inputs(), 0, 1);
        assert!(
            stats.skipped["flatten control.scan"]
                .reason
                .contains("20 ops")
        );
    }

    /// `loop trips { a = a + f32(iteration) * cap; yield cond, a, scan a }` with an optional
    /// condition input and a body condition `cond_out(body, cond_in, a)`.
    fn loop_graph(
        trips: Option<i64>,
        cond: Option<bool>,
        cond_out: fn(&mut Graph, ValueId, ValueId) -> ValueId,
    ) -> Graph {
        let v = f32t(&[2]);
        let mut ins = vec![v.clone(), v.clone()];
        if trips.is_none() {
            ins.push(TensorType::scalar(DType::I64));
        }
        graph(&ins, |g, ins| {
            let body = graph(
                &[
                    TensorType::scalar(DType::I64),
                    TensorType::scalar(DType::Bool),
                    v.clone(),
                    v.clone(),
                ],
                |r, a| {
                    let i = ew(r, EwOp::Cast { to: DType::F32 }, &[a[0]]);
                    let m = ew(r, EwOp::Mul, &[i, a[3]]);
                    let s = ew(r, EwOp::Add, &[a[2], m]);
                    let c = cond_out(r, a[1], s);
                    vec![c, s, s]
                },
            );
            let m = match trips {
                Some(n) => g.add_constant(Tensor::scalar(n)),
                None => ins[2],
            };
            let c = cond.map(|c| g.add_constant(Tensor::scalar(c)));
            let types = vec![
                v.clone(),
                TensorType::new(
                    DType::F32,
                    vec![mlc_ir::Dim::Unknown, mlc_ir::Dim::Known(2)],
                ),
            ];
            g.add_node(
                Op::Control(ControlOp::Loop {
                    carried: 1,
                    captures: 1,
                }),
                vec![Some(m), c, Some(ins[0]), Some(ins[1])],
                types,
                vec![body],
                None,
            )
        })
    }

    fn pass_through(_: &mut Graph, cond: ValueId, _: ValueId) -> ValueId {
        cond
    }

    fn identity(r: &mut Graph, cond: ValueId, _: ValueId) -> ValueId {
        op(r, Op::Movement(MovementOp::Identity), &[cond], 1, vec![])[0]
    }

    fn constant_true(r: &mut Graph, _: ValueId, _: ValueId) -> ValueId {
        r.add_constant(Tensor::scalar(true))
    }

    /// Data-dependent: continue while the first element stays below 1.
    fn data_dependent(r: &mut Graph, _: ValueId, s: ValueId) -> ValueId {
        let first = op(
            r,
            Op::Movement(MovementOp::Slice {
                starts: Some(vec![0]),
                ends: Some(vec![1]),
                axes: Some(vec![0]),
                steps: None,
            }),
            &[s],
            1,
            vec![],
        )[0];
        let one = r.add_constant(Tensor::from_vec(&[1], vec![1f32]).expect("one element"));
        let lt = ew(r, EwOp::Less, &[first, one]);
        op(
            r,
            Op::Movement(MovementOp::Squeeze { axes: None }),
            &[lt],
            1,
            vec![],
        )[0]
    }

    #[test]
    fn loop_with_a_constant_trip_count_unrolls() {
        let inputs = [random(&[2], 1), random(&[2], 2)];
        for (trips, cond, cond_out) in [
            (
                3,
                None,
                pass_through as fn(&mut Graph, ValueId, ValueId) -> ValueId,
            ),
            (4, Some(true), identity),
            (2, None, constant_true),
            (1, Some(true), pass_through),
            // Zero trips: the initial value and an empty stack.
            (0, None, pass_through),
            // A false condition runs no trip, whatever the body does.
            (5, Some(false), data_dependent),
        ] {
            check(&loop_graph(Some(trips), cond, cond_out), &inputs, 1);
        }
    }

    #[test]
    fn loop_that_may_stop_early_or_has_run_time_trips_stays() {
        let inputs = [random(&[2], 1), random(&[2], 2)];
        let g = loop_graph(Some(3), None, data_dependent);
        let stats = check_with(&g, ControlPolicy::default(), &inputs, 0, 1);
        assert!(
            stats.skipped["flatten control.loop"]
                .reason
                .contains("condition")
        );

        let g = loop_graph(None, None, pass_through);
        let with_trips = [inputs[0].clone(), inputs[1].clone(), Tensor::scalar(3i64)];
        let stats = check_with(&g, ControlPolicy::default(), &with_trips, 0, 1);
        assert!(
            stats.skipped["flatten control.loop"]
                .reason
                .contains("trip count")
        );

        let g = loop_graph(Some(100), None, pass_through);
        let policy = ControlPolicy {
            max_unrolled_nodes: 100,
            ..ControlPolicy::default()
        };
        let stats = check_with(&g, policy, &inputs, 0, 1);
        assert!(
            stats.skipped["flatten control.loop"]
                .reason
                .contains("budget")
        );
    }

    /// `loop 3 { a = concat(a, x) }`: the carried value grows each trip, so the body's recorded
    /// types (`f32[?]`) hold for no copy in particular; each copy is typed from what it gets.
    #[test]
    fn loop_with_a_growing_carried_value_unrolls() {
        let v = f32t(&[2]);
        let any = TensorType::new(DType::F32, vec![mlc_ir::Dim::Unknown]);
        let g = graph(&[v.clone(), v.clone()], |g, ins| {
            let body = graph(
                &[
                    TensorType::scalar(DType::I64),
                    TensorType::scalar(DType::Bool),
                    any.clone(),
                    v.clone(),
                ],
                |r, a| {
                    let c = op(
                        r,
                        Op::Movement(MovementOp::Concat { axis: 0 }),
                        &[a[2], a[3]],
                        1,
                        vec![],
                    );
                    vec![a[1], c[0]]
                },
            );
            let m = g.add_constant(Tensor::scalar(3i64));
            g.add_node(
                Op::Control(ControlOp::Loop {
                    carried: 1,
                    captures: 1,
                }),
                vec![Some(m), None, Some(ins[0]), Some(ins[1])],
                vec![any.clone()],
                vec![body],
                None,
            )
        });
        check(&g, &[random(&[2], 1), random(&[2], 2)], 1);
        let mut after = g.clone();
        simplify_with(&mut after, &[], &Options::default()).expect("consistent graph");
        assert_eq!(after.ty(after.outputs[0].value).to_string(), "f32[8]");
    }

    /// A loop whose body holds a scan: the loop unrolls, then (next round) each scan copy.
    #[test]
    fn nested_control_flattens_over_rounds() {
        let v = f32t(&[3]);
        let g = graph(&[v.clone(), f32t(&[2, 3])], |g, ins| {
            let scan_body = graph(&[v.clone(), v.clone()], |r, a| {
                let s = ew(r, EwOp::Add, &[a[0], a[1]]);
                vec![s, s]
            });
            let loop_body = graph(
                &[
                    TensorType::scalar(DType::I64),
                    TensorType::scalar(DType::Bool),
                    v.clone(),
                    f32t(&[2, 3]),
                ],
                |r, a| {
                    let scan = Op::Control(ControlOp::Scan {
                        states: 1,
                        captures: 0,
                        input_axes: vec![0],
                        input_reverse: vec![false],
                        output_axes: vec![0],
                        output_reverse: vec![false],
                    });
                    let o = op(r, scan, &[a[2], a[3]], 2, vec![scan_body]);
                    vec![a[1], o[0]]
                },
            );
            let m = g.add_constant(Tensor::scalar(3i64));
            g.add_node(
                Op::Control(ControlOp::Loop {
                    carried: 1,
                    captures: 1,
                }),
                vec![Some(m), None, Some(ins[0]), Some(ins[1])],
                vec![v.clone()],
                vec![loop_body],
                None,
            )
        });
        // The loop in the first round, its three scan copies in the second.
        check(&g, &[random(&[3], 1), random(&[2, 3], 2)], 4);
    }
}
