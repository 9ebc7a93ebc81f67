//! Batch separability: whether a compiled program may run a bigger batch as slices.
//!
//! A model whose inputs have a symbolic leading dim (`input: f32[batch,3,224,224]`) is compiled
//! for one size of it, `b0`. If every op treats the elements along that axis independently
//! (convolutions over `N`, matmuls with the batch among the leading dims or rows, reductions and
//! normalizations over other axes, reshapes that keep the leading dim, ...), then the model on a
//! batch of `k·b0` is the model on each of its `k` slices of `b0`, concatenated. The runtime
//! uses that to run such an artifact on any multiple of the compiled batch without recompiling.
//!
//! [`check`] proves it by a forward dataflow over the graph that is compiled: each value either
//! does not depend on the batched inputs' data (`Indep`: weights, shape arithmetic, constants) or
//! carries the batch along one axis (`Axis(a)`). Every op has a rule; an op without one, or one
//! that mixes batch elements (a reduction over the batch axis, a concat along it,
//! `DynamicQuantizeLinear`'s range over the whole tensor, max-pool indices that count from the
//! start of the whole tensor, ...), makes the model not separable, with the node named. Every
//! graph output must carry the batch on axis 0. An `Indep` operand is accepted next to batched
//! ones only where it has size 1 (or no dim) at the batch axis: it then is the same for every
//! slice, which is what broadcasting it over a bigger batch means.

use mlc_ir::ops::{AttnOp, ControlOp, EwOp, MovementOp, NnOp, QuantOp, ReduceOp};
use mlc_ir::{Dim, Graph, Node, Op, ValueId};
use std::fmt;

/// Where a value carries the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum B {
    /// Does not depend on the batched inputs' data.
    Indep,
    /// Carries the batch along this axis.
    Axis(usize),
}

/// Why a program cannot run a bigger batch as slices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotSeparable {
    /// The node (its name, or its index), or the output, where the proof stopped.
    pub at: String,
    pub reason: String,
}

impl fmt::Display for NotSeparable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.reason)
    }
}

/// Proves that `graph` (static shapes) computes every batch element independently along axis 0
/// of the inputs flagged in `batched` (one flag per graph input) and of every output. Fails,
/// naming the node, where that cannot be shown.
pub fn check(graph: &Graph, batched: &[bool]) -> Result<(), NotSeparable> {
    if !batched.iter().any(|&b| b) {
        return Err(NotSeparable {
            at: "inputs".into(),
            reason: "no input has a batch dim".into(),
        });
    }
    let inputs: Vec<B> = graph
        .inputs
        .iter()
        .enumerate()
        .map(|(i, _)| {
            if batched.get(i).copied().unwrap_or(false) {
                B::Axis(0)
            } else {
                B::Indep
            }
        })
        .collect();
    let outs = flow(graph, &inputs, "")?;
    for (port, b) in graph.outputs.iter().zip(outs) {
        if b != B::Axis(0) {
            return Err(NotSeparable {
                at: format!("output {:?}", port.name),
                reason: match b {
                    B::Indep => "does not depend on the batched inputs".into(),
                    B::Axis(a) => format!("carries the batch on axis {a}, not 0"),
                },
            });
        }
    }
    Ok(())
}

/// Runs the dataflow over `graph` whose inputs carry `inputs`; returns its outputs' facts.
fn flow(graph: &Graph, inputs: &[B], at: &str) -> Result<Vec<B>, NotSeparable> {
    let mut facts = vec![B::Indep; graph.values.len()];
    for (port, &b) in graph.inputs.iter().zip(inputs) {
        facts[port.value.0 as usize] = b;
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        let ins: Vec<Option<B>> = node
            .inputs
            .iter()
            .map(|v| v.map(|v| facts[v.0 as usize]))
            .collect();
        let here = || match &node.loc {
            Some(name) => format!("{at}node {name:?} ({})", node.op.name()),
            None => format!("{at}node {i} ({})", node.op.name()),
        };
        let outs = if ins.iter().flatten().all(|&b| b == B::Indep) {
            // Pure ops of batch-independent values are batch-independent.
            vec![B::Indep; node.outputs.len()]
        } else {
            let cx = Cx { graph, node, ins };
            match &node.op {
                Op::Control(ControlOp::Composite { .. }) => {
                    let region = node.regions.first().ok_or_else(|| NotSeparable {
                        at: here(),
                        reason: "composite without a body".into(),
                    })?;
                    let inner: Vec<B> = cx.ins.iter().map(|b| b.unwrap_or(B::Indep)).collect();
                    flow(region, &inner, &format!("{} > ", here()))?
                }
                op => rule(&cx, op).map_err(|reason| NotSeparable { at: here(), reason })?,
            }
        };
        for (v, b) in node.outputs.iter().zip(outs) {
            facts[v.0 as usize] = b;
        }
    }
    Ok(graph
        .outputs
        .iter()
        .map(|p| facts[p.value.0 as usize])
        .collect())
}

/// One node's operands and their facts.
struct Cx<'a> {
    graph: &'a Graph,
    node: &'a Node,
    ins: Vec<Option<B>>,
}

impl Cx<'_> {
    fn fact(&self, i: usize) -> B {
        self.ins.get(i).copied().flatten().unwrap_or(B::Indep)
    }

    fn shape(&self, v: ValueId) -> Vec<Option<usize>> {
        self.graph.ty(v).shape.iter().map(Dim::known).collect()
    }

    fn in_shape(&self, i: usize) -> Vec<Option<usize>> {
        self.node
            .input(i)
            .map(|v| self.shape(v))
            .unwrap_or_default()
    }

    fn out_rank(&self) -> usize {
        self.node
            .outputs
            .first()
            .map(|&v| self.graph.ty(v).rank())
            .unwrap_or(0)
    }

    /// The batch axis of operand `i`, which must carry it (`Err` if it is independent, since
    /// the rule's caller expects the batch there).
    fn axis(&self, i: usize) -> Result<usize, String> {
        match self.fact(i) {
            B::Axis(a) => Ok(a),
            B::Indep => Err(format!("operand {i} must carry the batch")),
        }
    }

    /// Every operand other than `batched` is independent of the batch.
    fn others_indep(&self, batched: &[usize]) -> Result<(), String> {
        for (i, b) in self.ins.iter().enumerate() {
            if !batched.contains(&i) && matches!(b, Some(B::Axis(_))) {
                return Err(format!("operand {i} carries the batch"));
            }
        }
        Ok(())
    }

    /// Broadcasting: every batched operand's batch axis lands on the same output axis, and
    /// every independent operand has size 1 there (or no dim).
    fn broadcast(&self) -> Result<B, String> {
        let r = self.out_rank();
        let mut at = None;
        for (i, b) in self.ins.iter().enumerate() {
            if let Some(B::Axis(a)) = b {
                let aligned = a + r - self.in_shape(i).len().min(r);
                if at.is_some_and(|x| x != aligned) {
                    return Err("operands carry the batch on different axes".into());
                }
                at = Some(aligned);
            }
        }
        let Some(axis) = at else {
            return Ok(B::Indep);
        };
        for (i, b) in self.ins.iter().enumerate() {
            if *b == Some(B::Indep) && !self.size_one_at(i, axis, r) {
                return Err(format!(
                    "operand {i} does not depend on the batch but differs along it"
                ));
            }
        }
        Ok(B::Axis(axis))
    }

    /// Operand `i`, right-aligned to rank `r`, has size 1 or no dim at output axis `axis`.
    fn size_one_at(&self, i: usize, axis: usize, r: usize) -> bool {
        let s = self.in_shape(i);
        match (axis + s.len()).checked_sub(r) {
            None => true,
            Some(j) => s.get(j).copied().flatten() == Some(1),
        }
    }

    /// The operand's constant value as integers, from the attribute or a constant operand.
    fn ints(&self, attr: Option<Vec<i64>>, i: usize) -> Option<Vec<i64>> {
        attr.or_else(|| {
            let v = self.node.input(i)?;
            self.graph.const_value(v)?.to_i64_vec().ok()
        })
    }
}

/// The axis `a` of a rank-`r` tensor after removing the sorted axes `removed`.
fn after_removing(a: usize, removed: &[usize]) -> usize {
    a - removed.iter().filter(|&&x| x < a).count()
}

fn normalize(axes: &[i64], rank: usize) -> Vec<usize> {
    let mut v: Vec<usize> = axes
        .iter()
        .map(|&x| if x < 0 { x + rank as i64 } else { x } as usize)
        .collect();
    v.sort_unstable();
    v
}

/// The rule for one op whose operands are not all independent: its outputs' facts.
fn rule(cx: &Cx, op: &Op) -> Result<Vec<B>, String> {
    let n = cx.node.outputs.len();
    let same = |b: B| Ok(vec![b; n]);
    match op {
        Op::Ew(EwOp::StringConcat) => Err("string op".into()),
        Op::Ew(_) => same(cx.broadcast()?),
        Op::Nn(nn) => nn_rule(cx, nn, n),
        Op::Reduce(r) => reduce_rule(cx, r, n),
        Op::Movement(m) => movement_rule(cx, m, n),
        Op::Quant(q) => quant_rule(cx, q, n),
        Op::Attn(AttnOp::Attention { .. } | AttnOp::Rotary { .. }) => {
            // Batch-major operands (`q, k, v, caches`) on axis 0; a mask or a table that does
            // not depend on the batch broadcasts over it.
            for (i, b) in cx.ins.iter().enumerate() {
                match b {
                    Some(B::Axis(0)) | None => {}
                    Some(B::Axis(_)) => return Err(format!("operand {i} is not batch-major")),
                    Some(B::Indep) => {
                        // Batch-major by definition: attention's 4-D operands, rotary's 3-D
                        // cos/sin tables `(batch, seq, rot/2)`.
                        let s = cx.in_shape(i);
                        let rotary_table = matches!(op, Op::Attn(AttnOp::Rotary { .. }))
                            && (i == 1 || i == 2)
                            && s.len() == 3;
                        if (s.len() == 4 || rotary_table) && s[0] != Some(1) {
                            return Err(format!("operand {i} differs along the batch"));
                        }
                    }
                }
            }
            cx.axis(0)?;
            same(B::Axis(0))
        }
        _ => Err("no batch rule for this op".into()),
    }
}

fn nn_rule(cx: &Cx, op: &NnOp, n: usize) -> Result<Vec<B>, String> {
    let same = |b: B| Ok(vec![b; n]);
    match op {
        NnOp::Conv { .. }
        | NnOp::ConvTranspose { .. }
        | NnOp::AvgPool { .. }
        | NnOp::LpPool { .. }
        | NnOp::GlobalMaxPool
        | NnOp::GlobalAvgPool
        | NnOp::GlobalLpPool { .. }
        | NnOp::BatchNorm { .. }
        | NnOp::InstanceNorm { .. }
        | NnOp::GroupNorm { .. }
        | NnOp::Lrn { .. } => {
            if cx.axis(0)? != 0 {
                return Err("the batch is not on axis N".into());
            }
            cx.others_indep(&[0])?;
            same(B::Axis(0))
        }
        NnOp::MaxPool { .. } => {
            if n > 1 {
                return Err("max-pool indices count from the start of the whole batch".into());
            }
            if cx.axis(0)? != 0 {
                return Err("the batch is not on axis N".into());
            }
            cx.others_indep(&[0])?;
            same(B::Axis(0))
        }
        NnOp::LayerNorm { axis, .. } | NnOp::RmsNorm { axis, .. } => {
            let a = cx.axis(0)?;
            if a >= *axis {
                return Err("normalizes over the batch axis".into());
            }
            cx.others_indep(&[0])?;
            same(B::Axis(a))
        }
        NnOp::MeanVarianceNorm { axes } => {
            let a = cx.axis(0)?;
            if axes.contains(&a) {
                return Err("normalizes over the batch axis".into());
            }
            same(B::Axis(a))
        }
        NnOp::Resize { axes, scales, .. } => {
            let a = cx.axis(0)?;
            cx.others_indep(&[0])?;
            if let Some(p) = axes.iter().position(|&x| x == a) {
                // Only an explicit scale of exactly 1 keeps the batch as it is at any size.
                if scales.as_ref().and_then(|s| s.get(p)) != Some(&1.0) {
                    return Err("resizes the batch axis".into());
                }
            }
            same(B::Axis(a))
        }
        NnOp::Matmul => matmul_rule(cx, 0, 1).map(|b| vec![b; n]),
        NnOp::Gemm {
            trans_a, trans_b, ..
        } => {
            let (fa, fb) = (cx.fact(0), cx.fact(1));
            cx.others_indep(&[0, 1])?;
            match (fa, fb) {
                (B::Axis(a), B::Indep) if a == usize::from(*trans_a) => {
                    if !cx.size_one_at(2, 0, 2) {
                        return Err("the bias differs along the batch rows".into());
                    }
                    same(B::Axis(0))
                }
                (B::Indep, B::Axis(b)) if b == usize::from(!*trans_b) => {
                    if !cx.size_one_at(2, 1, 2) {
                        return Err("the bias differs along the batch columns".into());
                    }
                    same(B::Axis(1))
                }
                _ => Err("contracts over the batch".into()),
            }
        }
        _ => Err("no batch rule for this op".into()),
    }
}

/// numpy matmul of operands `ia` and `ib`: the batch may be a leading (broadcast) dim of either
/// or both, the rows of `a` or the columns of `b`, never the contracted dim.
fn matmul_rule(cx: &Cx, ia: usize, ib: usize) -> Result<B, String> {
    let (sa, sb) = (cx.in_shape(ia), cx.in_shape(ib));
    let (ra, rb) = (sa.len(), sb.len());
    let r = cx.out_rank();
    if ra < 2 || rb < 2 {
        return Err("vector operands".into());
    }
    let place = |b: B, rank: usize, is_a: bool| -> Result<Option<usize>, String> {
        match b {
            B::Indep => Ok(None),
            B::Axis(x) if x + 2 < rank => Ok(Some(x + r - rank)),
            B::Axis(x) if is_a && x == rank - 2 => Ok(Some(r - 2)),
            B::Axis(x) if !is_a && x == rank - 1 => Ok(Some(r - 1)),
            B::Axis(_) => Err("contracts over the batch".into()),
        }
    };
    let pa = place(cx.fact(ia), ra, true)?;
    let pb = place(cx.fact(ib), rb, false)?;
    let axis = match (pa, pb) {
        (Some(x), Some(y)) if x == y && x + 2 < r => x,
        (Some(_), Some(_)) => return Err("operands carry the batch on different axes".into()),
        (Some(x), None) => {
            if x + 2 < r && !cx.size_one_at(ib, x, r) {
                return Err("the other operand differs along the batch".into());
            }
            x
        }
        (None, Some(y)) => {
            if y + 2 < r && !cx.size_one_at(ia, y, r) {
                return Err("the other operand differs along the batch".into());
            }
            y
        }
        (None, None) => return Ok(B::Indep),
    };
    Ok(B::Axis(axis))
}

fn reduce_rule(cx: &Cx, op: &ReduceOp, n: usize) -> Result<Vec<B>, String> {
    let same = |b: B| Ok(vec![b; n]);
    let a = cx.axis(0)?;
    cx.others_indep(&[0])?;
    let rank = cx.in_shape(0).len();
    match op {
        ReduceOp::Sum(r)
        | ReduceOp::Mean(r)
        | ReduceOp::Max(r)
        | ReduceOp::Min(r)
        | ReduceOp::Prod(r)
        | ReduceOp::L1(r)
        | ReduceOp::L2(r)
        | ReduceOp::LogSum(r)
        | ReduceOp::LogSumExp(r)
        | ReduceOp::SumSquare(r) => {
            let Some(axes) = &r.axes else {
                return Err("reduction axes known only at run time".into());
            };
            if axes.contains(&a) {
                return Err("reduces over the batch axis".into());
            }
            same(B::Axis(if r.keepdims {
                a
            } else {
                after_removing(a, axes)
            }))
        }
        ReduceOp::ArgMax(r) | ReduceOp::ArgMin(r) => {
            if r.axis == a {
                return Err("reduces over the batch axis".into());
            }
            same(B::Axis(if r.keepdims || r.axis > a { a } else { a - 1 }))
        }
        ReduceOp::Softmax(s) | ReduceOp::LogSoftmax(s) | ReduceOp::Hardmax(s) => {
            let mixes = if s.coerce_2d {
                a >= s.axis
            } else {
                a == s.axis
            };
            if mixes {
                return Err("normalizes over the batch axis".into());
            }
            same(B::Axis(a))
        }
        ReduceOp::CumSum(c) | ReduceOp::CumProd(c) => match c.axis {
            Some(x) if x != a => same(B::Axis(a)),
            _ => Err("scans along the batch axis".into()),
        },
        ReduceOp::TopK { axis, .. } | ReduceOp::LpNorm { axis, .. } if *axis != a && a < rank => {
            same(B::Axis(a))
        }
        _ => Err("mixes the batch".into()),
    }
}

fn movement_rule(cx: &Cx, op: &MovementOp, n: usize) -> Result<Vec<B>, String> {
    use MovementOp as M;
    let same = |b: B| Ok(vec![b; n]);
    let out_shape = cx
        .node
        .outputs
        .first()
        .map(|&v| cx.shape(v))
        .unwrap_or_default();
    match op {
        M::Identity => same(cx.fact(0)),
        M::Shape { .. } | M::Size => same(B::Indep),
        M::Reshape { .. } => {
            // The leading dim kept as it is: each slice's elements stay one contiguous block.
            let a = cx.axis(0)?;
            cx.others_indep(&[0])?;
            if a != 0 || out_shape.first() != cx.in_shape(0).first() {
                return Err("reshapes across the batch".into());
            }
            same(B::Axis(0))
        }
        M::Flatten { axis } => {
            if cx.axis(0)? != 0 || *axis == 0 {
                return Err("flattens the batch".into());
            }
            same(B::Axis(0))
        }
        M::Transpose { perm } => {
            let a = cx.axis(0)?;
            let p = perm.iter().position(|&x| x == a).ok_or("bad permutation")?;
            same(B::Axis(p))
        }
        M::Squeeze { axes } => {
            let a = cx.axis(0)?;
            let axes = match cx.ints(
                axes.as_ref().map(|v| v.iter().map(|&x| x as i64).collect()),
                1,
            ) {
                Some(v) => normalize(&v, cx.in_shape(0).len()),
                None => return Err("squeezes every size-1 axis, the batch's included".into()),
            };
            if axes.contains(&a) {
                return Err("squeezes the batch axis".into());
            }
            same(B::Axis(after_removing(a, &axes)))
        }
        M::Unsqueeze { axes } => {
            let a = cx.axis(0)?;
            let r = out_shape.len();
            let Some(axes) = cx.ints(
                axes.as_ref().map(|v| v.iter().map(|&x| x as i64).collect()),
                1,
            ) else {
                return Err("unsqueeze axes known only at run time".into());
            };
            let inserted = normalize(&axes, r);
            // The output axes that are not inserted take the input's, in order.
            let kept: Vec<usize> = (0..r).filter(|x| !inserted.contains(x)).collect();
            same(B::Axis(*kept.get(a).ok_or("bad unsqueeze")?))
        }
        M::Expand { .. } => {
            let a = cx.axis(0)?;
            cx.others_indep(&[0])?;
            let r = out_shape.len();
            let aligned = a + r - cx.in_shape(0).len();
            if out_shape.get(aligned) != cx.in_shape(0).get(a) {
                return Err("expands along the batch".into());
            }
            same(B::Axis(aligned))
        }
        M::Concat { axis } => {
            let b = cx.broadcast()?;
            if b == B::Axis(*axis) {
                return Err("concatenates along the batch".into());
            }
            same(b)
        }
        M::Split { axis, .. } => {
            let a = cx.axis(0)?;
            if a == *axis {
                return Err("splits the batch".into());
            }
            same(B::Axis(a))
        }
        M::Slice { axes, starts, .. } => {
            let a = cx.axis(0)?;
            cx.others_indep(&[0])?;
            let rank = cx.in_shape(0).len();
            let axes = match cx.ints(axes.clone(), 3) {
                Some(v) => normalize(&v, rank),
                None => match cx.ints(starts.clone(), 1) {
                    Some(s) => (0..s.len()).collect(),
                    None => return Err("slice axes known only at run time".into()),
                },
            };
            if axes.contains(&a) {
                return Err("slices the batch axis".into());
            }
            same(B::Axis(a))
        }
        M::Gather { axis } => match (cx.fact(0), cx.fact(1)) {
            (B::Axis(a), B::Indep) if a != *axis => {
                let ri = cx.in_shape(1).len();
                same(B::Axis(if a < *axis { a } else { a + ri - 1 }))
            }
            (B::Indep, B::Axis(b)) => same(B::Axis(axis + b)),
            _ => Err("gathers along the batch".into()),
        },
        M::GatherElements { axis } => match (cx.fact(0), cx.fact(1)) {
            (B::Axis(a), B::Axis(b)) if a == b && a != *axis => same(B::Axis(a)),
            _ => Err("gathers along the batch".into()),
        },
        M::Tile { repeats } => {
            let a = cx.axis(0)?;
            let reps = cx.ints(
                repeats
                    .as_ref()
                    .map(|v| v.iter().map(|&x| x as i64).collect()),
                1,
            );
            match reps {
                Some(r) if r.get(a) == Some(&1) => same(B::Axis(a)),
                _ => Err("tiles the batch".into()),
            }
        }
        M::DepthToSpace { .. } | M::SpaceToDepth { .. } if cx.axis(0)? == 0 => same(B::Axis(0)),
        M::Trilu { .. } => {
            let a = cx.axis(0)?;
            if a + 2 >= cx.in_shape(0).len() {
                return Err("the batch is one of the matrix dims".into());
            }
            same(B::Axis(a))
        }
        _ => Err("no batch rule for this op".into()),
    }
}

fn quant_rule(cx: &Cx, op: &QuantOp, n: usize) -> Result<Vec<B>, String> {
    let same = |b: B| Ok(vec![b; n]);
    match op {
        QuantOp::Quantize { axis, .. } | QuantOp::Dequantize { axis, .. } => {
            let a = cx.axis(0)?;
            cx.others_indep(&[0])?;
            // A scale per element of the batch axis would differ between slices.
            let per_axis = cx.in_shape(1).into_iter().product::<Option<usize>>() != Some(1);
            if per_axis && *axis == a {
                return Err("quantization parameters along the batch axis".into());
            }
            same(B::Axis(a))
        }
        QuantOp::DynamicQuantize => {
            Err("the quantization range is taken over the whole batch".into())
        }
        QuantOp::ConvInteger(_) | QuantOp::QLinearConv(_) => {
            if cx.axis(0)? != 0 {
                return Err("the batch is not on axis N".into());
            }
            cx.others_indep(&[0])?;
            same(B::Axis(0))
        }
        QuantOp::MatMulInteger => {
            cx.others_indep(&[0, 1])?;
            // Zero points per row or column would have to follow the batch.
            for zp in [2, 3] {
                if cx
                    .in_shape(zp)
                    .into_iter()
                    .product::<Option<usize>>()
                    .unwrap_or(1)
                    > 1
                {
                    return Err("zero points per row or column".into());
                }
            }
            matmul_rule(cx, 0, 1).map(|b| vec![b; n])
        }
        QuantOp::QLinearMatMul => {
            cx.others_indep(&[0, 3])?;
            matmul_rule(cx, 0, 3).map(|b| vec![b; n])
        }
    }
}

#[cfg(test)]
mod tests;
