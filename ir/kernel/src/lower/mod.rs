//! Graph IR → kernel IR. The graph must have static shapes (bind and simplify it first).
//!
//! Every graph value gets a program buffer; every node becomes zero or more launches. Shape
//! ops that move no bytes (reshape, squeeze, identity…) become buffer aliases and launch
//! nothing. A composite node whose body is elementwise becomes one fused kernel: its body's
//! values live in registers, never in memory, which is the point of fusing.
//!
//! Each op family lowers in its own file, mirroring `mlc_ir::ops`. A node that no family can
//! lower is collected; all of them are reported at once.

mod attn;
mod cast;
mod conv;
mod det;
mod dft;
mod epilogue;
mod ew;
mod flex_attn;
mod index;
mod linear_attn;
mod loss;
mod movement;
mod nn;
mod norm;
mod quant;
mod reduce;
mod resize;
mod rnn;
mod scatter;
mod signal;
mod stft;
mod tail;
mod vision;
mod winograd;

use crate::kernel::*;
use mlc_ir::{DType, Graph, Node, Op, ValueId};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LowerError {
    #[error("value %{value} has no static shape ({ty}); bind the input shapes first")]
    DynamicShape { value: u32, ty: String },
    #[error("kernel lowering does not support {}", list(.0))]
    Unsupported(Vec<Unsupported>),
    #[error("lowering produced an invalid kernel: {0}")]
    Invalid(String),
}

/// One node that could not be lowered, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Unsupported {
    pub op: String,
    pub node: Option<String>,
    pub why: String,
}

fn list(items: &[Unsupported]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|u| match &u.node {
            Some(n) => format!("{} (node {n}: {})", u.op, u.why),
            None => format!("{} ({})", u.op, u.why),
        })
        .collect();
    parts.join("; ")
}

/// Lowers `g` to a program whose outputs are `g`'s outputs.
pub fn lower_graph(g: &Graph) -> Result<Program, LowerError> {
    let mut p = lower_graph_unfolded(g)?;
    crate::fold::fold_constant_steps(&mut p);
    drop_unused_kernels(&mut p);
    drop_unused_consts(&mut p);
    Ok(p)
}

/// [`lower_graph`] without running the steps on constants at compile time
/// ([`crate::fold`]).
pub fn lower_graph_unfolded(g: &Graph) -> Result<Program, LowerError> {
    let mut cx = Cx {
        g,
        p: Program::default(),
        bufs: vec![None; g.values.len()],
    };
    for (i, port) in g.inputs.iter().enumerate() {
        let b = cx.new_buffer(port.value, BufKind::Input(i))?;
        cx.p.inputs.push((port.name.clone(), b));
    }
    let mut unsupported = Vec::new();
    for node in &g.nodes {
        match cx.node(node) {
            Ok(()) => {}
            Err(Fail::Unsupported(why)) => {
                unsupported.push(Unsupported {
                    op: node.op.name(),
                    node: node.loc.clone(),
                    why,
                });
                // Stand-in buffers let lowering go on, so every unsupported node is reported.
                for &o in &node.outputs {
                    if cx.bufs[o.0 as usize].is_none() {
                        cx.new_buffer(o, BufKind::Temp)?;
                    }
                }
            }
            Err(Fail::Hard(e)) => return Err(e),
        }
    }
    if !unsupported.is_empty() {
        return Err(LowerError::Unsupported(unsupported));
    }
    for port in &g.outputs {
        let b = cx.buf(port.value)?;
        cx.p.outputs.push((port.name.clone(), b));
    }
    drop_unused_kernels(&mut cx.p);
    for k in &cx.p.kernels {
        crate::verify::verify_kernel(k).map_err(|errs| {
            let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            LowerError::Invalid(msgs.join("; "))
        })?;
    }
    Ok(cx.p)
}

/// Removes kernels no step launches (left behind when an epilogue was fused into a copy of a
/// kernel), keeping the others in order.
fn drop_unused_kernels(p: &mut Program) {
    let used: Vec<bool> = (0..p.kernels.len())
        .map(|k| p.steps.iter().any(|s| s.kernel.0 as usize == k))
        .collect();
    let mut remap = vec![0u32; p.kernels.len()];
    let mut next = 0u32;
    for (k, u) in used.iter().enumerate() {
        remap[k] = next;
        next += *u as u32;
    }
    let mut i = 0;
    p.kernels.retain(|_| {
        i += 1;
        used[i - 1]
    });
    for s in &mut p.steps {
        s.kernel = KernelId(remap[s.kernel.0 as usize]);
    }
}

/// Removes the constant buffers (and their data) that no step, output or alias reads: weights
/// a lowering replaced by a transformed copy (Winograd filters, folded steps' inputs) would
/// otherwise still be written into every artifact. Buffers are renumbered in order.
fn drop_unused_consts(p: &mut Program) {
    let n = p.buffers.len();
    let mut used = vec![false; n];
    for s in &p.steps {
        for a in &s.args {
            used[a.0 as usize] = true;
        }
    }
    for (_, b) in p.inputs.iter().chain(&p.outputs) {
        used[b.0 as usize] = true;
    }
    // An alias keeps what it aliases (aliases may chain).
    loop {
        let mut changed = false;
        for i in 0..n {
            if let (true, BufKind::Alias { of: t, .. }) = (used[i], p.buffers[i].kind)
                && !used[t.0 as usize]
            {
                used[t.0 as usize] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let drop = |i: usize| !used[i] && matches!(p.buffers[i].kind, BufKind::Const(_));
    if !(0..n).any(drop) {
        return;
    }
    let mut remap = vec![u32::MAX; n];
    let mut buffers = Vec::with_capacity(n);
    for (i, slot) in remap.iter_mut().enumerate() {
        if !drop(i) {
            *slot = buffers.len() as u32;
            buffers.push(p.buffers[i].clone());
        }
    }
    // The constants still referenced, renumbered in order.
    let mut const_map = vec![usize::MAX; p.consts.len()];
    let mut consts = Vec::new();
    for b in &mut buffers {
        match &mut b.kind {
            BufKind::Alias { of, .. } => *of = BufId(remap[of.0 as usize]),
            BufKind::Const(c) => {
                if const_map[*c] == usize::MAX {
                    const_map[*c] = consts.len();
                    consts.push(p.consts[*c].clone());
                }
                *c = const_map[*c];
            }
            BufKind::Input(_) | BufKind::Temp => {}
        }
    }
    p.buffers = buffers;
    p.consts = consts;
    for s in &mut p.steps {
        for a in &mut s.args {
            *a = BufId(remap[a.0 as usize]);
        }
    }
    for (_, b) in p.inputs.iter_mut().chain(p.outputs.iter_mut()) {
        *b = BufId(remap[b.0 as usize]);
    }
}

/// A row stride for rows of `len` elements of `bytes` each that many rows are read or written
/// at once: `len` rounded up to whole 64-byte cache lines, and to an odd number of them. Rows a
/// multiple of 4 KiB apart (or of 1 or 2 KiB: 4 or 2 distinct places) map to the same few L1
/// sets, so streams over many rows evict one another; an odd number of lines spreads them over
/// all sets.
pub(crate) fn odd_lines(len: usize, bytes: usize) -> usize {
    let per = (64 / bytes.clamp(1, 64)).max(1);
    per * (len.div_ceil(per) | 1)
}

/// Why one node failed: unsupported (collected) or a hard error (returned at once).
pub(crate) enum Fail {
    Unsupported(String),
    Hard(LowerError),
}

impl From<LowerError> for Fail {
    fn from(e: LowerError) -> Fail {
        Fail::Hard(e)
    }
}

pub(crate) fn unsupported<T>(why: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Unsupported(why.into()))
}

/// Lowering state: the program being built and the buffer of every graph value.
pub(crate) struct Cx<'g> {
    pub g: &'g Graph,
    pub p: Program,
    bufs: Vec<Option<BufId>>,
}

impl Cx<'_> {
    fn node(&mut self, node: &Node) -> Result<(), Fail> {
        match &node.op {
            Op::Constant { id } => {
                let t = self.g.consts[*id as usize].clone();
                let c = self.p.consts.len();
                self.p.consts.push(t);
                self.new_buffer(node.outputs[0], BufKind::Const(c))?;
                Ok(())
            }
            Op::Ew(op) => ew::lower(self, node, op),
            Op::Control(mlc_ir::ops::ControlOp::Composite { .. }) => {
                if ew::fusable_body(self, node)? {
                    ew::lower_composite(self, node)
                } else {
                    self.inline_region(node)
                }
            }
            Op::Reduce(op) => reduce::lower(self, node, op),
            Op::Nn(op) => nn::lower(self, node, op),
            Op::Movement(op) => movement::lower(self, node, op),
            Op::Quant(op) => quant::lower(self, node, op),
            Op::Attn(op) => attn::lower(self, node, op),
            Op::Signal(op) => signal::lower(self, node, op),
            Op::Rnn(op) => rnn::lower(self, node, op),
            Op::Vision(op) => vision::lower(self, node, op),
            _ => unsupported("no kernel lowering for this op family yet"),
        }
    }

    /// Lowers a composite node whose body is not one elementwise kernel by lowering its body
    /// in place: each body op becomes its own launches, the body's inputs are the node's
    /// input buffers and the node's outputs alias the body's. Correct for any body; fusing
    /// more of it is the business of the cases above.
    fn inline_region(&mut self, node: &Node) -> Result<(), Fail> {
        let Some(body) = node.regions.first() else {
            return unsupported("composite node without a body");
        };
        let mut sub = Cx {
            g: body,
            p: std::mem::take(&mut self.p),
            bufs: vec![None; body.values.len()],
        };
        let result = (|| -> Result<Vec<BufId>, Fail> {
            for (port, v) in body.inputs.iter().zip(&node.inputs) {
                let Some(v) = v else {
                    return unsupported("composite with an absent input");
                };
                sub.bufs[port.value.0 as usize] = Some(self.buf(*v)?);
            }
            // A contraction's bias and activation fold into its matmul (`epilogue.rs`).
            let mut open = None;
            // The loop kernel that computed the previous node, if any: a tail can go into its
            // stores.
            let mut producer = None;
            // The node after `i` was lowered with it.
            let mut done = None;
            for (i, n) in body.nodes.iter().enumerate() {
                if done == Some(i) {
                    continue;
                }
                if let Some(o) = open
                    && let Some(next) = epilogue::try_fuse(&mut sub, n, o)
                {
                    open = Some(next);
                    producer = None;
                    continue;
                }
                // Attention's mask add goes into the softmax's loads (`reduce.rs`).
                if let Some(operands) = add_feeding_softmax(body, i)
                    && let Op::Reduce(rop) = &body.nodes[i + 1].op
                    && reduce::softmax_of_sum(&mut sub, &body.nodes[i + 1], rop, operands)?
                {
                    (open, producer, done) = (None, None, Some(i + 1));
                    continue;
                }
                // What the matmul cannot absorb, one fused kernel may (`tail.rs`).
                if i > 0 && tail::lower(&mut sub, body, &body.nodes[i..], producer)? {
                    break;
                }
                let first_step = sub.p.steps.len();
                sub.node(n)?;
                if !matches!(n.op, Op::Constant { .. }) {
                    open = epilogue::open_after(&sub, n);
                    producer = (open.is_none() && n.outputs.len() == 1).then(|| tail::Producer {
                        value: n.outputs[0],
                        first_step,
                    });
                }
            }
            body.outputs.iter().map(|o| Ok(sub.buf(o.value)?)).collect()
        })();
        self.p = std::mem::take(&mut sub.p);
        let outs = result?;
        for (&o, b) in node.outputs.iter().zip(outs) {
            let target = self.p.storage_of(b);
            self.new_buffer(o, BufKind::alias(target))?;
        }
        Ok(())
    }

    /// The static shape of a value.
    pub fn shape(&self, v: ValueId) -> Result<Vec<usize>, LowerError> {
        let ty = self.g.ty(v);
        ty.static_shape().ok_or_else(|| LowerError::DynamicShape {
            value: v.0,
            ty: format!("{ty:?}"),
        })
    }

    pub fn dtype(&self, v: ValueId) -> DType {
        self.g.ty(v).dtype
    }

    pub fn new_buffer(&mut self, v: ValueId, kind: BufKind) -> Result<BufId, LowerError> {
        let shape = self.shape(v)?;
        let b = self.p.add_buffer(self.dtype(v), shape, kind);
        self.bufs[v.0 as usize] = Some(b);
        Ok(b)
    }

    /// Makes `v` share buffer `b` outright (same shape and type: an epilogue computed in
    /// place).
    pub fn set_buf(&mut self, v: ValueId, b: BufId) {
        self.bufs[v.0 as usize] = Some(b);
    }

    /// The buffer already holding `v`.
    /// A parameter of `kb` for the buffer of `v`, when there is a `v` (an optional operand).
    pub(crate) fn opt_param(
        &self,
        kb: &mut KernelBuilder,
        v: Option<ValueId>,
        access: Access,
    ) -> Result<Option<ParamId>, LowerError> {
        v.map(|v| Ok(kb.param(&self.p, self.buf(v)?, access)))
            .transpose()
    }

    pub fn buf(&self, v: ValueId) -> Result<BufId, LowerError> {
        self.bufs[v.0 as usize]
            .ok_or_else(|| LowerError::Invalid(format!("value %{} used before it is defined", v.0)))
    }

    /// Makes `v` an alias of `of`'s storage (no bytes move).
    pub fn alias(&mut self, v: ValueId, of: ValueId) -> Result<(), LowerError> {
        let target = self.p.storage_of(self.buf(of)?);
        self.new_buffer(v, BufKind::alias(target))?;
        Ok(())
    }

    /// Adds a launch of the kernel being built by `kb`.
    pub fn launch(&mut self, kb: KernelBuilder, node: &Node) {
        let id = self.p.intern_kernel(kb.k);
        self.p.steps.push(Step {
            kernel: id,
            args: kb.args,
            origin: node.loc.clone(),
        });
    }
}

/// Builds one kernel and the list of buffers its launch binds, so lowering code can refer to
/// program buffers and get kernel parameters.
pub(crate) struct KernelBuilder {
    pub k: Kernel,
    pub args: Vec<BufId>,
}

impl KernelBuilder {
    pub fn new(name: impl Into<String>) -> KernelBuilder {
        KernelBuilder {
            k: Kernel::new(name),
            args: Vec::new(),
        }
    }

    /// The parameter bound to `b`, added on first use.
    pub fn param(&mut self, p: &Program, b: BufId, access: Access) -> ParamId {
        if let Some(i) = self.args.iter().position(|&a| a == b) {
            let prm = &mut self.k.params[i];
            if prm.access != access {
                prm.access = Access::ReadWrite;
            }
            return ParamId(i as u32);
        }
        let buf = p.buffer(b);
        self.args.push(b);
        self.k.param(buf.dtype, buf.len(), access)
    }

    pub fn var(&mut self, ty: DType) -> VarId {
        self.k.var(ty)
    }
}

/// Row-major strides of a shape.
pub(crate) fn strides(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1] as i64;
    }
    s
}

/// Opens a loop nest over `shape` (outermost first) inside `body_of`, which gets the loop
/// counters and returns the innermost statements. The outermost loop is `Parallel`, inner
/// ones `Vector` for the innermost and `Serial` between; an empty shape gives no loops.
pub(crate) fn loop_nest(
    kb: &mut KernelBuilder,
    shape: &[usize],
    body_of: impl FnOnce(&mut KernelBuilder, &[VarId]) -> Vec<Stmt>,
) -> Vec<Stmt> {
    nest_with(kb, shape, true, body_of)
}

/// [`loop_nest`], with the innermost loop `Vector` only when `vector` (bodies of gathers and
/// inner loops, which no backend vectorizes, keep it `Serial`).
pub(crate) fn nest_with(
    kb: &mut KernelBuilder,
    shape: &[usize],
    vector: bool,
    body_of: impl FnOnce(&mut KernelBuilder, &[VarId]) -> Vec<Stmt>,
) -> Vec<Stmt> {
    let vars: Vec<VarId> = shape.iter().map(|_| kb.var(DType::I64)).collect();
    let body = body_of(kb, &vars);
    let real: Vec<usize> = (0..shape.len()).filter(|&d| shape[d] != 1).collect();
    let kinds: Vec<LoopKind> = (0..shape.len())
        .map(|d| {
            if real.first() == Some(&d) {
                LoopKind::Parallel
            } else if vector && real.last() == Some(&d) {
                LoopKind::Vector
            } else {
                LoopKind::Serial
            }
        })
        .collect();
    wrap_loops(&vars, shape, &kinds, body)
}

/// The operands of `body.nodes[i]` when it is an `ew.add` whose result only feeds the softmax
/// that is the next node.
fn add_feeding_softmax(body: &Graph, i: usize) -> Option<(ValueId, ValueId)> {
    use mlc_ir::ops::{EwOp, ReduceOp};
    let (n, next) = (body.nodes.get(i)?, body.nodes.get(i + 1)?);
    let ([Some(a), Some(m)], [v]) = (n.inputs.as_slice(), n.outputs.as_slice()) else {
        return None;
    };
    let softmax = matches!(
        next.op,
        Op::Reduce(ReduceOp::Softmax(_) | ReduceOp::LogSoftmax(_))
    );
    let uses = body
        .nodes
        .iter()
        .flat_map(|k| k.inputs.iter())
        .filter(|x| **x == Some(*v))
        .count();
    let escapes = body.outputs.iter().any(|o| o.value == *v);
    (matches!(n.op, Op::Ew(EwOp::Add))
        && n.regions.is_empty()
        && softmax
        && next.input(0) == Some(*v)
        && uses == 1
        && !escapes)
        .then_some((*a, *m))
}

/// Wraps `body` in loops over `extents` (outermost first) of the given kinds. A dim of extent 1
/// is no loop: its counter is a `let` of 0, so backends see only the loops that iterate, and
/// the outermost real loop is the parallel one.
pub(crate) fn wrap_loops(
    vars: &[VarId],
    extents: &[usize],
    kinds: &[LoopKind],
    mut body: Vec<Stmt>,
) -> Vec<Stmt> {
    for d in (0..extents.len()).rev() {
        if extents[d] == 1 {
            // A unit dim is no loop: its counter is the constant 0, substituted away, so the
            // loops that iterate stay perfectly nested and backends can collapse them into
            // one parallel range.
            subst_zero(&mut body, vars[d]);
        } else {
            body = vec![Stmt::For {
                var: vars[d],
                extent: Expr::idx(extents[d] as i64),
                kind: kinds[d],
                body,
            }];
        }
    }
    body
}

/// Replaces every use of `v` in `body` by the index 0, folding the index arithmetic that
/// becomes constant.
fn subst_zero(body: &mut [Stmt], v: VarId) {
    fn expr(e: &mut Expr, v: VarId) {
        match e {
            Expr::Var(x) if *x == v => *e = Expr::idx(0),
            Expr::Var(_) | Expr::Lit(_) => {}
            Expr::Load { index, .. } => expr(index, v),
            Expr::Unary(_, a) | Expr::Cast(_, a) => expr(a, v),
            Expr::Binary(op, a, b) => {
                expr(a, v);
                expr(b, v);
                let folded = match (*op, &**a, &**b) {
                    (BinOp::Add, Expr::Lit(Lit::Int(DType::I64, 0)), _) => Some((**b).clone()),
                    (BinOp::Add | BinOp::Sub, _, Expr::Lit(Lit::Int(DType::I64, 0))) => {
                        Some((**a).clone())
                    }
                    (BinOp::Mul, Expr::Lit(Lit::Int(DType::I64, 0)), _)
                    | (BinOp::Mul, _, Expr::Lit(Lit::Int(DType::I64, 0))) => Some(Expr::idx(0)),
                    _ => None,
                };
                if let Some(f) = folded {
                    *e = f;
                }
            }
            Expr::Select { cond, then, els } => {
                expr(cond, v);
                expr(then, v);
                expr(els, v);
            }
        }
    }
    fn mat(m: &mut MatRef, v: VarId) {
        expr(&mut m.offset, v);
    }
    for st in body {
        match st {
            Stmt::For { extent, body, .. } => {
                expr(extent, v);
                subst_zero(body, v);
            }
            Stmt::Let { value, .. } | Stmt::Assign { value, .. } => expr(value, v),
            Stmt::Store { index, value, .. } => {
                expr(index, v);
                expr(value, v);
            }
            Stmt::Matmul(mm) => {
                mat(&mut mm.a, v);
                mat(&mut mm.b, v);
                mat(&mut mm.c, v);
                if let Some(b) = &mut mm.bias {
                    mat(b, v);
                }
            }
            // No expression inside.
            Stmt::Depthwise(_) | Stmt::Softmax(_) => {}
        }
    }
}

/// Like [`loop_nest`], but every loop is `Serial`: for nests whose iterations depend on each
/// other (scatters, where a later update must see an earlier one).
pub(crate) fn serial_nest(
    kb: &mut KernelBuilder,
    shape: &[usize],
    body_of: impl FnOnce(&mut KernelBuilder, &[VarId]) -> Vec<Stmt>,
) -> Vec<Stmt> {
    let vars: Vec<VarId> = shape.iter().map(|_| kb.var(DType::I64)).collect();
    let mut body = body_of(kb, &vars);
    for d in (0..shape.len()).rev() {
        body = vec![Stmt::For {
            var: vars[d],
            extent: Expr::idx(shape[d] as i64),
            kind: LoopKind::Serial,
            body,
        }];
    }
    body
}

/// The flat index of `vars` in a row-major tensor with strides `st`.
pub(crate) fn flat_index(st: &[i64], vars: &[VarId]) -> Expr {
    let mut idx = Expr::idx(0);
    for (d, &s) in st.iter().enumerate() {
        idx = Expr::add_idx(idx, Expr::mul_idx(Expr::var(vars[d]), s));
    }
    idx
}

/// The flat index of element `vars` of a tensor of `shape` broadcast to `out` (right-aligned;
/// broadcast dims contribute nothing).
pub(crate) fn bcast_index(shape: &[usize], out: &[usize], vars: &[VarId]) -> Expr {
    let st = strides(shape);
    let off = out.len() - shape.len();
    let mut idx = Expr::idx(0);
    for (d, &n) in shape.iter().enumerate() {
        if n != 1 || out[off + d] == 1 {
            let term = Expr::mul_idx(Expr::var(vars[off + d]), st[d]);
            idx = Expr::add_idx(idx, term);
        }
    }
    idx
}

/// A readable kernel name from an op name (`ew.add` → `ew_add`).
pub(crate) fn kernel_name(op: &Op) -> String {
    op.name().replace('.', "_")
}

#[cfg(test)]
mod tests;
