//! A kernel-IR pass of the CPU backend: an integer contraction followed by the elementwise
//! kernel that requantizes its `i32` result becomes one contraction with a requantization
//! epilogue (`mlc_kir::Requant`), so the `i32` result never goes to memory.
//!
//! Quantized models (QDQ convolutions, `QLinearConv`, `MatMulInteger` chains) lower to an
//! integer `Matmul` writing an `i32` buffer, then a kernel that reads it back once per element
//! and computes `cast<u8>(min(max(round(f32(acc) · mult[row] / scale) + f32(zp), 0), 255))`.
//! The runtime's integer kernels do that while the tile is in registers (or in L1) instead.
//!
//! The rewrite is exact: it fires only when the tail computes exactly [`mlc_kir::Requant`]'s
//! formula (the same operations in the same order, C's whole range as the clamp) on every
//! element of the `i32` buffer, at the element's own index, with a multiplier indexed by the
//! element's row or column (or one multiplier) and one scale and zero point, and when the
//! `i32` buffer has no other reader, possibly followed by a QDQ residual add
//! (`RequantAdd`) and a table of the resulting byte (`Requant::table`: a quantized activation
//! the pass tabulates first, see [`fuse_requant`]). Anything else (a dequantization to `f32`,
//! another use of the `i32` result) is left as it is. The GPU backend never runs this pass.

use mlc_ir::DType;
use mlc_kir::{
    Access, BinOp, BufId, BufKind, Expr, Kernel, KernelId, Lit, LoopKind, MatRef, Matmul, ParamId,
    Program, Requant, RequantAdd, ScalarRef, Step, Stmt, TileTail, UnOp, VarId,
};
use std::collections::HashMap;

/// Rewrites every integer contraction whose only consumer is a requantizing tail (see the
/// module docs) into one requantizing contraction; returns the program and how many tails
/// were fused.
pub fn fuse_requant(p: &Program) -> (Program, usize) {
    let (q, fused, _) = fuse_requant_counted(p);
    (q, fused)
}

/// [`fuse_requant`], and how many tails it split at their byte.
fn fuse_requant_counted(p: &Program) -> (Program, usize, usize) {
    let mut q = p.clone();
    tabulate_activations(&mut q);
    let split = split_dequantizing_tails(&mut q);
    // The step keeps the tail's origin: the requantization is what the pair computes.
    let (q, fused) = fuse_adjacent(q, fuse_pair, |mm, tail| {
        tail.origin.clone().or_else(|| mm.origin.clone())
    });
    (q, fused, split)
}

/// Splits a tail that requantizes the contraction's result and then goes on from the byte
/// (dequantizes it to `f32` for a pooling, or a concatenation, as the last convolution of a
/// QDQ CNN does) into the requantizing tail, storing the byte into a new temporary, and the
/// rest, reading it: the first then fuses with the contraction (the integer GEMM's 16-lane
/// epilogue) and only the cheap rest stays a loop, where the whole tail ran as the
/// contraction's 4-lane tile function before. Split only where the first part fuses; returns
/// how many were split.
fn split_dequantizing_tails(p: &mut Program) -> usize {
    let mut split = 0;
    let mut i = 1;
    while i < p.steps.len() {
        if !plain_contraction(p, &p.steps[i - 1])
            || tail_pattern(p.kernel(p.steps[i].kernel)).is_some()
        {
            i += 1;
            continue;
        }
        let Some((head, rest, total, ty)) = split_at_byte(p.kernel(p.steps[i].kernel)) else {
            i += 1;
            continue;
        };
        let mark = Mark::of(p);
        let tmp = p.add_buffer(ty, vec![total], BufKind::Temp);
        let st = p.steps[i].clone();
        let mut head_args = st.args.clone();
        head_args.push(tmp);
        let (rest, rest_params) = rest;
        let mut rest_args: Vec<BufId> =
            rest_params.iter().map(|&q| st.args[q.0 as usize]).collect();
        rest_args.push(tmp);
        let (hk, rk) = (p.intern_kernel(head), p.intern_kernel(rest));
        p.steps[i] = Step {
            kernel: hk,
            args: head_args,
            origin: st.origin.clone(),
        };
        p.steps.insert(
            i + 1,
            Step {
                kernel: rk,
                args: rest_args,
                origin: st.origin,
            },
        );
        if fuse_pair(p, &p.steps[i - 1], &p.steps[i]).is_none() {
            mark.restore(p);
            i += 1;
            continue;
        }
        split += 1;
        i += 2;
    }
    split
}

/// The two halves of a tail split at its requantized byte (see [`split_dequantizing_tails`]):
/// the head, storing the byte into a new last parameter, which [`tail_pattern`] accepts; the
/// rest, reading it there, with only the parameters it uses (the original indices of those,
/// in order, then the byte's); the element count and the byte's type.
fn split_at_byte(k: &Kernel) -> Option<(Kernel, (Kernel, Vec<ParamId>), usize, DType)> {
    let (loops, body) = literal_nest(&k.body);
    let (last, lets) = body.split_last()?;
    let Stmt::Store { index, .. } = last else {
        return None;
    };
    let total = loops
        .iter()
        .try_fold(1usize, |a, &(_, e)| a.checked_mul(usize::try_from(e).ok()?))?;
    let rebuild = |stmts: Vec<Stmt>| -> Vec<Stmt> {
        let mut body = stmts;
        for &(var, e) in loops.iter().rev() {
            body = vec![Stmt::For {
                var,
                extent: Expr::idx(e),
                kind: LoopKind::Serial,
                body,
            }];
        }
        body
    };
    // Keep the original loop kinds: the rebuilt nests take them from the tail.
    let kinds = loop_kinds(&k.body);
    for (j, s) in lets.iter().enumerate() {
        let Stmt::Let { var, .. } = s else {
            return None;
        };
        let ty = k.var_ty(*var);
        if !matches!(ty, DType::U8 | DType::I8) {
            continue;
        }
        // The head: the lets up to the byte, the byte stored.
        let mut head = k.clone();
        let out = head.param(ty, total, Access::Write);
        let mut hb = lets[..=j].to_vec();
        hb.push(Stmt::Store {
            param: out,
            index: index.clone(),
            value: Expr::var(*var),
        });
        head.body = with_kinds(rebuild(hb), &kinds);
        let Some(t) = tail_pattern(&head) else {
            continue;
        };
        if t.out != out {
            continue;
        }
        // The rest: the tail with the byte loaded instead of computed, less what nothing
        // reads then (the requantization); its parameters compacted.
        let mut rb = lets[..j].to_vec();
        rb.push(Stmt::Let {
            var: *var,
            value: Expr::load(ParamId(u32::MAX), index.clone()),
        });
        rb.extend(lets[j + 1..].iter().cloned());
        rb.push(last.clone());
        let rb = live_lets(rb);
        let mut used: Vec<ParamId> = Vec::new();
        for s in &rb {
            stmt_params(s, &mut used);
        }
        used.retain(|q| q.0 != u32::MAX);
        used.sort();
        used.dedup();
        let mut rest = Kernel::new(format!("{}_rest", k.name));
        rest.vars = k.vars.clone();
        let mut map: HashMap<ParamId, ParamId> = HashMap::new();
        for &q in &used {
            let pr = &k.params[q.0 as usize];
            map.insert(q, rest.param(pr.dtype, pr.len, pr.access));
        }
        map.insert(ParamId(u32::MAX), rest.param(ty, total, Access::Read));
        let rb: Vec<Stmt> = rb
            .iter()
            .map(|s| remap_stmt(s, &map))
            .collect::<Option<_>>()?;
        rest.body = with_kinds(rebuild(rb), &kinds);
        if mlc_kir::verify_kernel(&head).is_err() || mlc_kir::verify_kernel(&rest).is_err() {
            return None;
        }
        return Some((head, (rest, used), total, ty));
    }
    None
}

/// The loop kinds of a perfect nest, outermost first.
fn loop_kinds(mut body: &[Stmt]) -> Vec<LoopKind> {
    let mut kinds = Vec::new();
    while let [
        Stmt::For {
            kind, body: inner, ..
        },
    ] = body
    {
        kinds.push(*kind);
        body = inner;
    }
    kinds
}

/// `body`'s perfect nest with `kinds` as its loops' kinds, outermost first.
fn with_kinds(mut body: Vec<Stmt>, kinds: &[LoopKind]) -> Vec<Stmt> {
    fn go(body: &mut [Stmt], kinds: &[LoopKind]) {
        if let ([Stmt::For { kind, body, .. }], [k, rest @ ..]) = (body, kinds) {
            *kind = *k;
            go(body, rest);
        }
    }
    go(&mut body, kinds);
    body
}

/// `stmts` (`let`s, then one store) without the `let`s nothing after them reads.
fn live_lets(stmts: Vec<Stmt>) -> Vec<Stmt> {
    let mut keep = vec![true; stmts.len()];
    let mut live: std::collections::HashSet<VarId> = Default::default();
    for (j, s) in stmts.iter().enumerate().rev() {
        match s {
            Stmt::Let { var, value } => {
                if live.contains(var) {
                    vars_of(value, &mut live);
                } else {
                    keep[j] = false;
                }
            }
            Stmt::Store { index, value, .. } => {
                vars_of(index, &mut live);
                vars_of(value, &mut live);
            }
            _ => {}
        }
    }
    stmts
        .into_iter()
        .zip(keep)
        .filter_map(|(s, k)| k.then_some(s))
        .collect()
}

fn vars_of(e: &Expr, out: &mut std::collections::HashSet<VarId>) {
    match e {
        Expr::Var(v) => {
            out.insert(*v);
        }
        Expr::Lit(_) => {}
        Expr::Load { index, .. } => vars_of(index, out),
        Expr::Unary(_, a) | Expr::Cast(_, a) => vars_of(a, out),
        Expr::Binary(_, a, b) => {
            vars_of(a, out);
            vars_of(b, out);
        }
        Expr::Select { cond, then, els } => {
            vars_of(cond, out);
            vars_of(then, out);
            vars_of(els, out);
        }
    }
}

/// The parameters `s` loads or stores.
fn stmt_params(s: &Stmt, out: &mut Vec<ParamId>) {
    let mut of = |e: &Expr| {
        e.for_each_load(&mut |q, _| out.push(q));
    };
    match s {
        Stmt::Let { value, .. } | Stmt::Assign { value, .. } => of(value),
        Stmt::Store {
            param,
            index,
            value,
        } => {
            of(index);
            of(value);
            out.push(*param);
        }
        _ => {}
    }
}

/// `s` with its parameters renamed by `map`; `None` for statements other than `let`s and
/// stores, or a parameter `map` lacks.
fn remap_stmt(s: &Stmt, map: &HashMap<ParamId, ParamId>) -> Option<Stmt> {
    fn expr(e: &Expr, map: &HashMap<ParamId, ParamId>) -> Option<Expr> {
        Some(match e {
            Expr::Var(_) | Expr::Lit(_) => e.clone(),
            Expr::Load { param, index } => Expr::load(*map.get(param)?, expr(index, map)?),
            Expr::Unary(op, a) => Expr::un(*op, expr(a, map)?),
            Expr::Cast(t, a) => Expr::cast(*t, expr(a, map)?),
            Expr::Binary(op, a, b) => Expr::bin(*op, expr(a, map)?, expr(b, map)?),
            Expr::Select { cond, then, els } => {
                Expr::select(expr(cond, map)?, expr(then, map)?, expr(els, map)?)
            }
        })
    }
    Some(match s {
        Stmt::Let { var, value } => Stmt::Let {
            var: *var,
            value: expr(value, map)?,
        },
        Stmt::Store {
            param,
            index,
            value,
        } => Stmt::Store {
            param: *map.get(param)?,
            index: expr(index, map)?,
            value: expr(value, map)?,
        },
        _ => return None,
    })
}

/// Makes the quantized activation after a requantizing tail's quantization (QDQ SiLU:
/// dequantize, sigmoid, multiply, quantize; or a clip, a hard swish) a byte table
/// ([`mlc_kir::tabulate_step`], cheap chains included: the contraction applies the table
/// in its epilogue for almost nothing), where the tail then fuses with the contraction before
/// it as a [`Requant::table`]. Tails that would not fuse are left as they are.
fn tabulate_activations(p: &mut Program) {
    for i in 1..p.steps.len() {
        if !plain_contraction(p, &p.steps[i - 1]) {
            continue;
        }
        let Some((k, tables)) = mlc_kir::tabulate_step(p, i, true) else {
            continue;
        };
        if tail_pattern(&k).is_none_or(|t| t.table.is_none()) {
            continue;
        }
        let mark = Mark::of(p);
        mlc_kir::install_tables(p, i, k, tables);
        if fuse_pair(p, &p.steps[i - 1], &p.steps[i]).is_none() {
            mark.restore(p);
        }
    }
}

/// Whether `s` launches a lone contraction that does not requantize yet: what a
/// requantizing tail may fuse with.
fn plain_contraction(p: &Program, s: &Step) -> bool {
    matches!(p.kernel(s.kernel).body.as_slice(), [Stmt::Matmul(mm)] if mm.requant.is_none())
}

/// The state a tentative rewrite of the pre-passes starts from: the steps, and the lengths of
/// the buffer, constant and kernel lists, which the rewrite only appends to.
struct Mark {
    steps: Vec<Step>,
    buffers: usize,
    consts: usize,
    kernels: usize,
}

impl Mark {
    fn of(p: &Program) -> Mark {
        Mark {
            steps: p.steps.clone(),
            buffers: p.buffers.len(),
            consts: p.consts.len(),
            kernels: p.kernels.len(),
        }
    }

    /// Undoes the rewrite: what it appended is read by no step of the marked ones.
    fn restore(self, p: &mut Program) {
        p.steps = self.steps;
        p.buffers.truncate(self.buffers);
        p.consts.truncate(self.consts);
        p.kernels.truncate(self.kernels);
    }
}

/// Replaces every pair of consecutive steps that `pair` fuses by one step of the fused kernel
/// (its origin from `origin`), leaving the rest as they are; returns the program (without
/// kernels no step launches any more) and how many pairs were fused.
fn fuse_adjacent(
    mut p: Program,
    pair: impl Fn(&Program, &Step, &Step) -> Option<(Kernel, Vec<BufId>)>,
    origin: impl Fn(&Step, &Step) -> Option<String>,
) -> (Program, usize) {
    // Every pair is judged against the program as it was.
    let mut fusions = Vec::new();
    let mut i = 0;
    while i + 1 < p.steps.len() {
        match pair(&p, &p.steps[i], &p.steps[i + 1]) {
            Some((kernel, args)) => {
                fusions.push((i, kernel, args));
                i += 2;
            }
            None => i += 1,
        }
    }
    let fused = fusions.len();
    let old = std::mem::take(&mut p.steps);
    let mut steps = Vec::with_capacity(old.len());
    let mut fusions = fusions.into_iter().peekable();
    let mut i = 0;
    while i < old.len() {
        if let Some((_, kernel, args)) = fusions.next_if(|f| f.0 == i) {
            let k = p.intern_kernel(kernel);
            steps.push(Step {
                kernel: k,
                args,
                origin: origin(&old[i], &old[i + 1]),
            });
            i += 2;
            continue;
        }
        steps.push(old[i].clone());
        i += 1;
    }
    p.steps = steps;
    drop_unused_kernels(&mut p);
    (p, fused)
}

/// Removes kernels no step launches, renumbering the others.
fn drop_unused_kernels(p: &mut Program) {
    let mut used = vec![false; p.kernels.len()];
    for s in &p.steps {
        used[s.kernel.0 as usize] = true;
    }
    let mut map = vec![KernelId(0); p.kernels.len()];
    let mut kept = Vec::new();
    for (i, k) in std::mem::take(&mut p.kernels).into_iter().enumerate() {
        if used[i] {
            map[i] = KernelId(kept.len() as u32);
            kept.push(k);
        }
    }
    p.kernels = kept;
    for s in &mut p.steps {
        s.kernel = map[s.kernel.0 as usize];
    }
}

/// The fused kernel and its arguments, when `mm_step` is a lone integer contraction into an
/// `i32` buffer and `tail` requantizes exactly that buffer and nothing else reads it.
fn fuse_pair(p: &Program, mm_step: &Step, tail: &Step) -> Option<(Kernel, Vec<BufId>)> {
    let mk = p.kernel(mm_step.kernel);
    let [Stmt::Matmul(mm)] = mk.body.as_slice() else {
        return None;
    };
    let pty = |k: &Kernel, q: ParamId| k.params[q.0 as usize].dtype;
    let int_op = |t: DType| matches!(t, DType::U8 | DType::I8 | DType::I32);
    if mm.requant.is_some()
        || mm.alpha != 1.0
        || mm.beta != 0.0
        || mm.act != mlc_kir::Activation::None
        || pty(mk, mm.c.param) != DType::I32
        || !int_op(pty(mk, mm.a.param))
        || !int_op(pty(mk, mm.b.param))
        || mm
            .bias
            .as_ref()
            .is_some_and(|b| pty(mk, b.param) != DType::I32)
    {
        return None;
    }
    // C must be the whole of a dense row- or column-major m×n buffer.
    let cbuf = *mm_step.args.get(mm.c.param.0 as usize)?;
    let clen = mk.params[mm.c.param.0 as usize].len;
    let (m, n) = (mm.m as i64, mm.n as i64);
    let lit0 = matches!(mm.c.offset, Expr::Lit(Lit::Int(_, 0)));
    let row_major = mm.c.col_stride == 1 && (mm.c.row_stride == n || m == 1);
    let col_major = mm.c.row_stride == 1 && (mm.c.col_stride == m || n == 1);
    if !lit0 || !(row_major || col_major) || clen as i64 != m * n || m * n == 0 {
        return None;
    }
    if p.buffer(cbuf).kind != BufKind::Temp || p.buffer(cbuf).len() != clen {
        return None;
    }
    let t = tail_pattern(p.kernel(tail.kernel))?;
    let arg = |q: ParamId| tail.args.get(q.0 as usize).copied();
    if p.storage_of(arg(t.acc)?) != cbuf || t.total != clen as i64 {
        return None;
    }
    // Nothing else reads the i32 buffer: no other step, no output.
    let reads_c = |s: &Step| s.args.iter().any(|&b| p.storage_of(b) == cbuf);
    let others = p
        .steps
        .iter()
        .filter(|s| !std::ptr::eq(*s, mm_step) && !std::ptr::eq(*s, tail))
        .any(reads_c);
    let in_tail = tail
        .args
        .iter()
        .enumerate()
        .filter(|&(j, &b)| j != t.acc.0 as usize && p.storage_of(b) == cbuf)
        .count();
    if others || in_tail > 0 || p.outputs.iter().any(|(_, b)| p.storage_of(*b) == cbuf) {
        return None;
    }
    let out_buf = arg(t.out)?;
    // The output must not share storage with what the contraction reads.
    if mm_step
        .args
        .iter()
        .any(|&b| p.storage_of(b) == p.storage_of(out_buf))
    {
        return None;
    }
    let tk = p.kernel(tail.kernel);
    let ty_out = pty(tk, t.out);
    if tk.params[t.out.0 as usize].len != clen || pty(tk, t.zp) != ty_out {
        return None;
    }
    // The multiplier's index as `mo + r·mrs + c·mcs` over C's rows and columns: the tail's
    // element index L is `r·n + c` (row-major) or `c·m + r` (column-major).
    let (mo, mrs, mcs) = c_strides(&t.mult_idx, &t.loops, (m, n), row_major)?;
    let shift_view = match &t.shift {
        Some((_, idx)) => Some(c_strides(idx, &t.loops, (m, n), row_major)?),
        None => None,
    };
    // The fused kernel: the contraction's parameters with C of the output type, then the
    // multiplier, scale and zero point.
    let mut k = mk.clone();
    k.name = format!("{}_requant", mk.name);
    k.params[mm.c.param.0 as usize].dtype = ty_out;
    let mut param_of = |q: ParamId| k.param(pty(tk, q), tk.params[q.0 as usize].len, Access::Read);
    let (pm, ps, pz) = (param_of(t.mult), param_of(t.scale), param_of(t.zp));
    // The residual's parameters follow, in the order of `TailAdd`'s fields.
    let residual = t.residual.as_ref().map(|ra| {
        let r = param_of(ra.r);
        let mut sc = |(q, i): (ParamId, i64)| ScalarRef {
            param: param_of(q),
            index: Expr::idx(i),
        };
        let (r_scale, r_zp, out_scale, out_zp) =
            (sc(ra.r_scale), sc(ra.r_zp), sc(ra.out_scale), sc(ra.out_zp));
        Box::new(RequantAdd {
            r,
            r_scale,
            r_zp,
            out_scale,
            out_zp,
        })
    });
    let shift = match (&t.shift, shift_view) {
        (Some((sp, _)), Some((so, srs, scs))) => Some(MatRef {
            param: param_of(*sp),
            offset: Expr::idx(so),
            row_stride: srs,
            col_stride: scs,
        }),
        _ => None,
    };
    let mut new_mm: Matmul = (**mm).clone();
    new_mm.requant = Some(Requant {
        mult: MatRef {
            param: pm,
            offset: Expr::idx(mo),
            row_stride: mrs,
            col_stride: mcs,
        },
        shift,
        scale: ScalarRef {
            param: ps,
            index: Expr::idx(t.scale_idx),
        },
        zero_point: ScalarRef {
            param: pz,
            index: Expr::idx(t.zp_idx),
        },
        residual,
        table: t.table.map(&mut param_of),
    });
    k.body = vec![Stmt::Matmul(Box::new(new_mm))];
    let mut args = mm_step.args.clone();
    args[mm.c.param.0 as usize] = out_buf;
    args.extend([arg(t.mult)?, arg(t.scale)?, arg(t.zp)?]);
    if let Some(ra) = &t.residual {
        // Read at C's index while C is written: it must be another buffer.
        let r = arg(ra.r)?;
        if p.storage_of(r) == p.storage_of(out_buf) || p.storage_of(r) == cbuf {
            return None;
        }
        args.extend([
            r,
            arg(ra.r_scale.0)?,
            arg(ra.r_zp.0)?,
            arg(ra.out_scale.0)?,
            arg(ra.out_zp.0)?,
        ]);
    }
    if let Some((sp, _)) = &t.shift {
        args.push(arg(*sp)?);
    }
    if let Some(tp) = t.table {
        args.push(arg(tp)?);
    }
    mlc_kir::verify_kernel(&k).ok()?;
    Some((k, args))
}

/// What a requantizing tail reads and writes.
struct Tail {
    /// The loop counters, outermost first, with their extents.
    loops: Vec<(VarId, i64)>,
    /// Elements: the product of the extents.
    total: i64,
    /// The `i32` input, read at the element's own index.
    acc: ParamId,
    /// The output, written at the element's own index.
    out: ParamId,
    mult: ParamId,
    /// The multiplier's index, affine in the loop counters.
    mult_idx: Affine,
    scale: ParamId,
    scale_idx: i64,
    zp: ParamId,
    zp_idx: i64,
    /// A residual added and the sum requantized again (a QDQ residual block's `Add`).
    residual: Option<TailAdd>,
    /// An `f32` shift added after the multiplication, and its index (affine in the counters).
    shift: Option<(ParamId, Affine)>,
    /// A byte table applied last ([`Requant::table`]).
    table: Option<ParamId>,
}

/// The residual part of a tail (see [`mlc_kir::RequantAdd`]): the residual, read at the
/// element's index, and four scalars as (buffer, index).
struct TailAdd {
    r: ParamId,
    r_scale: (ParamId, i64),
    r_zp: (ParamId, i64),
    out_scale: (ParamId, i64),
    out_zp: (ParamId, i64),
}

/// `c + Σ coef[v]·v` over loop counters.
#[derive(Clone, Debug, PartialEq)]
struct Affine {
    c: i64,
    coef: HashMap<VarId, i64>,
}

impl Affine {
    fn of(e: &Expr) -> Option<Affine> {
        Some(match e {
            Expr::Lit(Lit::Int(_, v)) => Affine {
                c: *v,
                coef: HashMap::new(),
            },
            Expr::Var(v) => Affine {
                c: 0,
                coef: HashMap::from([(*v, 1)]),
            },
            Expr::Binary(BinOp::Add, a, b) => {
                let (mut a, b) = (Affine::of(a)?, Affine::of(b)?);
                a.c = a.c.checked_add(b.c)?;
                for (v, k) in b.coef {
                    let e = a.coef.entry(v).or_insert(0);
                    *e = e.checked_add(k)?;
                }
                a
            }
            Expr::Binary(BinOp::Mul, a, b) => {
                let (a, b) = (Affine::of(a)?, Affine::of(b)?);
                let (x, k) = if a.coef.is_empty() {
                    (b, a.c)
                } else if b.coef.is_empty() {
                    (a, b.c)
                } else {
                    return None;
                };
                Affine {
                    c: x.c.checked_mul(k)?,
                    coef: x
                        .coef
                        .into_iter()
                        .map(|(v, c)| c.checked_mul(k).map(|c| (v, c)))
                        .collect::<Option<_>>()?,
                }
            }
            _ => return None,
        })
    }

    /// The coefficient of `v` (0 when absent).
    fn at(&self, v: VarId) -> i64 {
        self.coef.get(&v).copied().unwrap_or(0)
    }

    /// Whether only `vars` appear.
    fn over(&self, vars: &[(VarId, i64)]) -> bool {
        self.coef
            .iter()
            .all(|(v, c)| *c == 0 || vars.iter().any(|(w, _)| w == v))
    }
}

/// The perfectly nested loops of literal extent around `body` (outermost first, as
/// `(counter, extent)`) and the statements inside them.
fn literal_nest(mut body: &[Stmt]) -> (Vec<(VarId, i64)>, &[Stmt]) {
    let mut loops = Vec::new();
    while let [
        Stmt::For {
            var,
            extent: Expr::Lit(Lit::Int(_, e)),
            body: inner,
            ..
        },
    ] = body
    {
        loops.push((*var, *e));
        body = inner;
    }
    (loops, body)
}

/// Recognizes the requantizing tail: a nest of literal loops whose innermost body is `let`s
/// and one store `out[L] = cast<u8|i8>(min(max(round(cast<f32>(acc[L]) · mult[·] /
/// scale[s]) + cast<f32>(zp[z]), lo), hi))`, `L` the row-major index of the nest and
/// `[lo, hi]` the output type's range.
fn tail_pattern(k: &Kernel) -> Option<Tail> {
    let (loops, body) = literal_nest(&k.body);
    let (out, index, value) = inlined_store(body)?;
    let out = &out;
    // The element index: row-major over the nest.
    let total = loops
        .iter()
        .try_fold(1i64, |acc, &(_, e)| acc.checked_mul(e))?;
    let li = Affine::of(&index)?;
    let mut stride = 1i64;
    for &(v, e) in loops.iter().rev() {
        if e <= 0 || (e > 1 && li.at(v) != stride) {
            return None;
        }
        stride *= e;
    }
    if li.c != 0 || !li.over(&loops) {
        return None;
    }
    // The formula, from the outside in.
    let ty_out = k.params.get(out.0 as usize)?.dtype;
    if !matches!(ty_out, DType::U8 | DType::I8) {
        return None;
    }
    // A byte table applied last: `table[cast<i64>(q)]` (`+ 128` for `i8`), as
    // `mlc_kir::tabulate_step` writes it.
    let (value, table) = match table_parts(&value, ty_out, k) {
        Some((q, t)) => (q, Some(t)),
        None => (&value, None),
    };
    let load = |e: &Expr, ty: DType| match e {
        Expr::Load { param, index } if k.params[param.0 as usize].dtype == ty => {
            Some((*param, Affine::of(index)?))
        }
        _ => None,
    };
    let scalar = |a: &Affine| a.coef.values().all(|&c| c == 0).then_some(a.c);
    let scalar_load = |e: &Expr, ty: DType| {
        let (p, i) = load(e, ty)?;
        Some((p, scalar(&i)?))
    };
    let (num, scale_e, zp_e) = quantize_parts(value, ty_out)?;
    // A residual block: the numerator is `D(q) + D(r)`, with `q` the plain requantization
    // (whose scale and zero point dequantize it again) and `r` read at the element's index.
    let (num, scale_e, zp_e, residual) = match residual_parts(num, ty_out) {
        Some((inner, dq_scale, dq_zp, r, r_scale, r_zp)) => {
            let (num1, scale1, zp1) = quantize_parts(inner, ty_out)?;
            if scale1 != dq_scale || zp1 != dq_zp {
                return None;
            }
            // The residual: 8-bit values, or f32 ones quantized right here with the scale and
            // zero point that dequantize them (the branch arrives dequantized).
            let (r, rty) = match r {
                Expr::Load { .. } => (r, None),
                Expr::Cast(t @ (DType::U8 | DType::I8), _) => {
                    let (x, s, z) = quantize_parts(r, *t)?;
                    if s != r_scale || z != r_zp {
                        return None;
                    }
                    (x, Some(*t))
                }
                _ => return None,
            };
            let Expr::Load { param: rp, index } = r else {
                return None;
            };
            let lty = k.params[rp.0 as usize].dtype;
            let zty = match (lty, rty) {
                (DType::U8 | DType::I8, None) => lty,
                (DType::F32, Some(t)) => t,
                _ => return None,
            };
            if Affine::of(index)? != li {
                return None;
            }
            let add = TailAdd {
                r: *rp,
                r_scale: scalar_load(r_scale, DType::F32)?,
                r_zp: scalar_load(r_zp, zty)?,
                out_scale: scalar_load(scale_e, DType::F32)?,
                out_zp: scalar_load(zp_e, ty_out)?,
            };
            (num1, scale1, zp1, Some(add))
        }
        None => (num, scale_e, zp_e, None),
    };
    // A float bias added after the dequantizing multiplication (PyTorch's QDQ export).
    let (num, shift) = match num {
        Expr::Binary(BinOp::Add, x, y) => match (&**x, &**y) {
            (m @ Expr::Binary(BinOp::Mul, ..), s) | (s, m @ Expr::Binary(BinOp::Mul, ..)) => {
                (m, Some(load(s, DType::F32)?))
            }
            _ => return None,
        },
        n => (n, None),
    };
    let Expr::Binary(BinOp::Mul, a, b) = num else {
        return None;
    };
    let acc_of = |e: &Expr| match e {
        Expr::Cast(DType::F32, inner) => match &**inner {
            Expr::Load { param, index } => Some((*param, (**index).clone())),
            _ => None,
        },
        _ => None,
    };
    let ((acc, acc_idx), mult_e) = match (acc_of(a), acc_of(b)) {
        (Some(x), _) if k.params[x.0.0 as usize].dtype == DType::I32 => (x, &**b),
        (_, Some(x)) if k.params[x.0.0 as usize].dtype == DType::I32 => (x, &**a),
        _ => return None,
    };
    if Affine::of(&acc_idx)? != li {
        return None;
    }
    let (mult, mult_idx) = load(mult_e, DType::F32)?;
    let (scale, scale_idx) = scalar_load(scale_e, DType::F32)?;
    let (zp, zp_idx) = scalar_load(zp_e, ty_out)?;
    let mut operands = vec![acc, mult, scale, zp];
    if let Some(ra) = &residual {
        operands.extend([ra.r, ra.r_scale.0, ra.r_zp.0, ra.out_scale.0, ra.out_zp.0]);
    }
    if let Some((sp, si)) = &shift {
        if !si.over(&loops) {
            return None;
        }
        operands.push(*sp);
    }
    operands.extend(table);
    if !mult_idx.over(&loops) || operands.contains(out) {
        return None;
    }
    if operands
        .iter()
        .any(|&q| k.params[q.0 as usize].access != Access::Read)
    {
        return None;
    }
    Some(Tail {
        loops,
        total,
        acc,
        out: *out,
        mult,
        mult_idx,
        scale,
        scale_idx,
        zp,
        zp_idx,
        residual,
        shift,
        table,
    })
}

/// `(q, table)` when `e` is `table[cast<i64>(q)]` (`u8`) or `table[cast<i64>(q) + 128]` (`i8`)
/// with `table` a read-only 256-element parameter of type `ty`.
fn table_parts<'e>(e: &'e Expr, ty: DType, k: &Kernel) -> Option<(&'e Expr, ParamId)> {
    let Expr::Load { param, index } = e else {
        return None;
    };
    let t = k.params.get(param.0 as usize)?;
    if t.dtype != ty || t.len != 256 || t.access != Access::Read {
        return None;
    }
    let cast = match (ty, &**index) {
        (DType::U8, c) => c,
        (DType::I8, Expr::Binary(BinOp::Add, c, o))
            if matches!(**o, Expr::Lit(Lit::Int(_, 128))) =>
        {
            c
        }
        _ => return None,
    };
    match cast {
        Expr::Cast(DType::I64, q) => Some((q, *param)),
        _ => None,
    }
}

/// `(num, scale, zp)` when `e` is `cast<ty>(min(max(round(num / scale) + cast<f32>(zp), lo),
/// hi))` with `[lo, hi]` the range of `ty` (`u8` or `i8`): a quantization.
fn quantize_parts(e: &Expr, ty: DType) -> Option<(&Expr, &Expr, &Expr)> {
    let (lo, hi) = match ty {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        _ => return None,
    };
    let Expr::Cast(to, x) = e else {
        return None;
    };
    let x = (*to == ty).then_some(&**x)?;
    let x = clamp_arg(x, BinOp::Min, hi)?;
    let x = clamp_arg(x, BinOp::Max, lo)?;
    let Expr::Binary(BinOp::Add, a, b) = x else {
        return None;
    };
    let (rounded, zp_cast) = match (&**a, &**b) {
        (r @ Expr::Unary(UnOp::Round, _), z) | (z, r @ Expr::Unary(UnOp::Round, _)) => (r, z),
        _ => return None,
    };
    let Expr::Unary(UnOp::Round, q) = rounded else {
        return None;
    };
    let Expr::Binary(BinOp::Div, num, scale) = &**q else {
        return None;
    };
    let Expr::Cast(DType::F32, zp) = zp_cast else {
        return None;
    };
    Some((num, scale, zp))
}

/// `(v, zp, scale)` when `e` is `(cast<f32>(v) - cast<f32>(zp)) · scale` (either factor first).
fn dequant_parts(e: &Expr) -> Option<(&Expr, &Expr, &Expr)> {
    fn parts(d: &Expr) -> Option<(&Expr, &Expr)> {
        match d {
            Expr::Binary(BinOp::Sub, v, z) => match (&**v, &**z) {
                (Expr::Cast(DType::F32, v), Expr::Cast(DType::F32, z)) => Some((&**v, &**z)),
                _ => None,
            },
            _ => None,
        }
    }
    let Expr::Binary(BinOp::Mul, x, y) = e else {
        return None;
    };
    match (parts(x), parts(y)) {
        (Some((v, z)), _) => Some((v, z, &**y)),
        (_, Some((v, z))) => Some((v, z, &**x)),
        _ => None,
    }
}

/// `(q, scale, zp, r, r_scale, r_zp)` when `e` is `(cast<f32>(q) - cast<f32>(zp)) · scale +
/// (cast<f32>(r) - cast<f32>(r_zp)) · r_scale` (either addend first, either factor first): the
/// sum of two dequantizations, `q` of type `ty`. Which addend is the requantized product is
/// told by `q`'s type and shape later ([`tail_pattern`]); here the one whose value is a
/// quantization of `ty` is taken as `q`.
#[allow(clippy::type_complexity)]
fn residual_parts(e: &Expr, ty: DType) -> Option<(&Expr, &Expr, &Expr, &Expr, &Expr, &Expr)> {
    let Expr::Binary(BinOp::Add, a, b) = e else {
        return None;
    };
    let (da, db) = (dequant_parts(a)?, dequant_parts(b)?);
    // The requantized product's numerator is a product (`f32(acc) · mult`), maybe shifted
    // (`+ shift`); an f32 residual quantized in place divides a load.
    let product = |e: &Expr| matches!(e, Expr::Binary(BinOp::Mul, ..));
    let is_q = |v: &Expr| {
        quantize_parts(v, ty).is_some_and(|(num, _, _)| match num {
            Expr::Binary(BinOp::Add, x, y) => product(x) || product(y),
            n => product(n),
        })
    };
    let ((q, zp, scale), (r, r_zp, r_scale)) = if is_q(da.0) {
        (da, db)
    } else if is_q(db.0) {
        (db, da)
    } else {
        return None;
    };
    Some((q, scale, zp, r, r_scale, r_zp))
}

/// `x` when `e` is `op(x, bound)` or `op(bound, x)` with `bound` the `f32` literal `v`.
fn clamp_arg(e: &Expr, op: BinOp, v: f64) -> Option<&Expr> {
    let is_bound = |e: &Expr| matches!(e, Expr::Lit(Lit::Float(DType::F32, x)) if *x == v);
    match e {
        Expr::Binary(o, a, b) if *o == op && is_bound(b) => Some(a),
        Expr::Binary(o, a, b) if *o == op && is_bound(a) => Some(b),
        _ => None,
    }
}

/// `e` with every `let`-defined variable replaced by its definition (loop counters stay).
/// A body of `let`s and then one store, as the store's parameter, index and value with the
/// `let`s inlined.
fn inlined_store(body: &[Stmt]) -> Option<(ParamId, Expr, Expr)> {
    let (last, lets) = body.split_last()?;
    let Stmt::Store {
        param,
        index,
        value,
    } = last
    else {
        return None;
    };
    let mut defs: HashMap<VarId, &Expr> = HashMap::new();
    for s in lets {
        let Stmt::Let { var, value } = s else {
            return None;
        };
        defs.insert(*var, value);
    }
    Some((*param, inline(index, &defs, 0)?, inline(value, &defs, 0)?))
}

fn inline(e: &Expr, defs: &HashMap<VarId, &Expr>, depth: usize) -> Option<Expr> {
    if depth > 64 {
        return None;
    }
    let go = |x: &Expr| inline(x, defs, depth + 1).map(Box::new);
    Some(match e {
        Expr::Var(v) => match defs.get(v) {
            Some(d) => inline(d, defs, depth + 1)?,
            None => e.clone(),
        },
        Expr::Lit(_) => e.clone(),
        Expr::Load { param, index } => Expr::Load {
            param: *param,
            index: go(index)?,
        },
        Expr::Unary(op, a) => Expr::Unary(*op, go(a)?),
        Expr::Binary(op, a, b) => Expr::Binary(*op, go(a)?, go(b)?),
        Expr::Select { cond, then, els } => Expr::Select {
            cond: go(cond)?,
            then: go(then)?,
            els: go(els)?,
        },
        Expr::Cast(t, a) => Expr::Cast(*t, go(a)?),
    })
}

/// An operand index `a` (affine in the counters of a nest over the `m×n` C, row-major when
/// `row_major`, else column-major) as `(offset, row stride, col stride)` of C: `None` unless it
/// is one ([`split_affine`] along C's contiguous dimension).
fn c_strides(
    a: &Affine,
    loops: &[(VarId, i64)],
    (m, n): (i64, i64),
    row_major: bool,
) -> Option<(i64, i64, i64)> {
    let inner = if row_major { n } else { m };
    let (o, per_outer, per_inner) = split_affine(a, loops, inner)?;
    Some(if row_major {
        (o, per_outer, per_inner)
    } else {
        (o, per_inner, per_outer)
    })
}

/// The multiplier index `mult_idx` (affine in the nest's counters, whose element index is
/// `L = outer·inner + within`) as `(offset, per outer, per within)`: `None` unless it is
/// `offset + (L / inner)·a + (L % inner)·b` for every element.
fn split_affine(mult_idx: &Affine, loops: &[(VarId, i64)], inner: i64) -> Option<(i64, i64, i64)> {
    // The counters below the split hold `L % inner`: their strides' product is `inner`.
    let mut strides = vec![0i64; loops.len()];
    let mut s = 1i64;
    for (i, &(_, e)) in loops.iter().enumerate().rev() {
        strides[i] = s;
        s = s.checked_mul(e)?;
    }
    let split = (0..=loops.len()).find(|&p| {
        let below: i64 = loops[p..].iter().map(|&(_, e)| e).product();
        below == inner
    })?;
    let (mut a, mut b) = (None::<i64>, None::<i64>);
    for (i, &(v, e)) in loops.iter().enumerate() {
        if e == 1 {
            continue;
        }
        let coef = mult_idx.at(v);
        if i < split {
            // The outer index contributes `strides[i] / inner` per step of this counter.
            let step = strides[i] / inner;
            if coef % step != 0 {
                return None;
            }
            let k = coef / step;
            if *a.get_or_insert(k) != k {
                return None;
            }
        } else {
            let step = strides[i];
            if coef % step != 0 {
                return None;
            }
            let k = coef / step;
            if *b.get_or_insert(k) != k {
                return None;
            }
        }
    }
    Some((mult_idx.c, a.unwrap_or(0), b.unwrap_or(0)))
}

/// Why a contraction and the kernel after it were not fused into a contraction with a tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The first step is not a lone, plain contraction (or already has an epilogue of ours).
    NotAContraction,
    /// C is not the whole of a dense row- or column-major `m×n` temporary.
    CLayout,
    /// The second kernel is not a nest of literal loops around `let`s and one store.
    NotPointwise,
    /// The second kernel does not write one element per element of C at its own index.
    NotElementwise,
    /// The second kernel does not read C, or reads it elsewhere than at the element's index.
    CIndex,
    /// C is read by another step or is a program output.
    CLive,
    /// A load's index is not the element's, per row, per column or a constant.
    OperandIndex,
    /// The output shares storage with an operand (other than C in place, same type).
    Aliased,
    /// The body uses the loop counters other than in indices.
    UsesCounters,
}

/// Rewrites every contraction whose result is read back only by the elementwise kernel after
/// it (see [`fuse_tail_pair`]) into one contraction with a [`mlc_kir::TileTail`]; returns the
/// program and how many tails were fused. Run after [`fuse_requant`], which handles the pure
/// requantizations more cheaply.
pub fn fuse_tails(p: &Program) -> (Program, usize) {
    fuse_adjacent(
        p.clone(),
        |p, mm, tail| fuse_tail_pair(p, mm, tail).ok(),
        |mm, _| mm.origin.clone(),
    )
}

/// What the CPU backend's epilogue passes fused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fused {
    /// Pure requantizations ([`fuse_requant`]).
    pub requant: usize,
    /// Of those, the ones that apply a byte table (a quantized activation, `Requant::table`).
    pub requant_tables: usize,
    /// Of those, the tails split at their byte, the rest left a loop reading it.
    pub requant_split: usize,
    /// General tails ([`fuse_tails`]).
    pub tails: usize,
    /// Of those tails, the GELUs, sigmoids and swishes that became the contraction's
    /// activation ([`fuse_activations`]).
    pub gelu: usize,
    /// Of the tails left, those whose last operation (GELU, sigmoid, swish) the runtime
    /// applies to each stored block ([`tail_activation`]).
    pub tail_activations: usize,
}

/// The three passes, in order: what code generation runs.
pub fn fuse_epilogues(p: &Program) -> (Program, Fused) {
    let (q, requant, requant_split) = fuse_requant_counted(p);
    let requant_tables = q
        .steps
        .iter()
        .filter(|s| {
            matches!(q.kernel(s.kernel).body.as_slice(), [Stmt::Matmul(mm)]
                if mm.requant.as_ref().is_some_and(|rq| rq.table.is_some()))
        })
        .count();
    let (q, tails) = fuse_tails(&q);
    let (q, gelu) = fuse_activations(&q);
    let tail_activations = q
        .steps
        .iter()
        .map(|s| q.kernel(s.kernel))
        .filter(|k| {
            crate::clif::tail_of(k)
                .and_then(|mm| tail_activation(k, mm))
                .is_some()
        })
        .count();
    (
        q,
        Fused {
            requant,
            requant_tables,
            requant_split,
            tails,
            gelu,
            tail_activations,
        },
    )
}

mod gelu;
pub(crate) use gelu::tail_activation;

/// Turns every contraction whose fused tail is exactly GELU, sigmoid or swish of its result
/// (plus a broadcast bias) into one with that bias and that activation (see [`gelu`]); returns the program
/// and how many were rewritten. Run after [`fuse_tails`].
pub fn fuse_activations(p: &Program) -> (Program, usize) {
    let mut out = p.clone();
    let mut rewritten = 0;
    for (i, s) in p.steps.iter().enumerate() {
        if let Some((k, args)) = gelu::tail_to_activation(p.kernel(s.kernel), &s.args) {
            let kernel = out.intern_kernel(k);
            out.steps[i] = Step {
                kernel,
                args,
                origin: s.origin.clone(),
            };
            rewritten += 1;
        }
    }
    drop_unused_kernels(&mut out);
    (out, rewritten)
}

/// The contraction of `mm_step` with the kernel of `tail` as its [`mlc_kir::TileTail`], and
/// the fused step's arguments, or why not.
///
/// It fuses when `mm_step` is a lone contraction (no requantization) into the whole of a dense
/// row- or column-major temporary C, and `tail` is a nest of literal loops around `let`s and
/// one store whose element index `L` (row-major over the nest) runs over C's elements, where
/// the store writes element `L` of its output, every load of C reads element `L`, every other
/// load reads a buffer nobody writes here at `L`, per row, per column or one element (an index
/// `o + (L / inner)·a + (L % inner)·b`), the counters appear in nothing else, and nothing else
/// reads C afterwards. The output may be C itself when it has C's type (in place).
pub fn fuse_tail_pair(
    p: &Program,
    mm_step: &Step,
    tail: &Step,
) -> Result<(Kernel, Vec<BufId>), Refusal> {
    use Refusal::*;
    let mk = p.kernel(mm_step.kernel);
    let [Stmt::Matmul(mm)] = mk.body.as_slice() else {
        return Err(NotAContraction);
    };
    if mm.requant.is_some() || mm.tail.is_some() {
        return Err(NotAContraction);
    }
    let cp = mm.c.param;
    let cbuf = p.storage_of(*mm_step.args.get(cp.0 as usize).ok_or(NotAContraction)?);
    let clen = mk.params[cp.0 as usize].len;
    let cty = mk.params[cp.0 as usize].dtype;
    let (m, n) = (mm.m as i64, mm.n as i64);
    let lit0 = matches!(mm.c.offset, Expr::Lit(Lit::Int(_, 0)));
    let row_major = mm.c.col_stride == 1 && (mm.c.row_stride == n || m == 1);
    let col_major = mm.c.row_stride == 1 && (mm.c.col_stride == m || n == 1);
    if !lit0 || !(row_major || col_major) || clen as i64 != m * n || m * n == 0 {
        return Err(CLayout);
    }
    if p.buffer(cbuf).kind != BufKind::Temp || p.buffer(cbuf).len() != clen {
        return Err(CLayout);
    }
    // The tail: literal loops around lets and one store.
    let tk = p.kernel(tail.kernel);
    let (loops, body) = literal_nest(&tk.body);
    let (last, lets) = body.split_last().ok_or(NotPointwise)?;
    let Stmt::Store {
        param: out,
        index: out_index,
        value: out_value,
    } = last
    else {
        return Err(NotPointwise);
    };
    let mut defs: HashMap<VarId, &Expr> = HashMap::new();
    for s in lets {
        let Stmt::Let { var, value } = s else {
            return Err(NotPointwise);
        };
        defs.insert(*var, value);
    }
    let total = loops
        .iter()
        .try_fold(1i64, |acc, &(_, e)| acc.checked_mul(e))
        .ok_or(NotElementwise)?;
    if total != clen as i64 || loops.iter().any(|&(_, e)| e <= 0) {
        return Err(NotElementwise);
    }
    // The element index L: row-major over the nest.
    let mut li = Affine {
        c: 0,
        coef: HashMap::new(),
    };
    let mut stride = 1i64;
    for &(v, e) in loops.iter().rev() {
        if e > 1 {
            li.coef.insert(v, stride);
        }
        stride *= e;
    }
    let affine_of = |e: &Expr| -> Option<Affine> {
        let mut a = Affine::of(&inline(e, &defs, 0)?)?;
        a.coef.retain(|_, c| *c != 0);
        // Counters of extent 1 are always 0.
        a.coef
            .retain(|v, _| loops.iter().any(|&(w, e)| w == *v && e > 1));
        Some(a)
    };
    let arg = |q: ParamId| tail.args.get(q.0 as usize).copied();
    let out_buf = arg(*out).ok_or(NotPointwise)?;
    if affine_of(out_index).as_ref() != Some(&li) || tk.params[out.0 as usize].len != clen {
        return Err(NotElementwise);
    }
    // Which tail parameters are C; nothing else may read C.
    let is_c = |q: usize| tail.args.get(q).is_some_and(|&b| p.storage_of(b) == cbuf);
    let in_place = p.storage_of(out_buf) == cbuf;
    if in_place && tk.params[out.0 as usize].dtype != cty {
        return Err(Aliased);
    }
    let reads_c = |s: &Step| s.args.iter().any(|&b| p.storage_of(b) == cbuf);
    let others = p
        .steps
        .iter()
        .filter(|s| !std::ptr::eq(*s, mm_step) && !std::ptr::eq(*s, tail))
        .any(reads_c);
    // (In place, C's final value is the tail's output, which may be a program output.)
    if others || (!in_place && p.outputs.iter().any(|(_, b)| p.storage_of(*b) == cbuf)) {
        return Err(CLive);
    }
    // The output shares storage with nothing the contraction or the tail reads (but C).
    let out_store = p.storage_of(out_buf);
    if !in_place {
        let shares = |b: &BufId| p.storage_of(*b) == out_store;
        let tail_others = tail
            .args
            .iter()
            .enumerate()
            .any(|(j, b)| j != out.0 as usize && shares(b));
        if mm_step.args.iter().any(shares) || tail_others {
            return Err(Aliased);
        }
    }
    // The fused kernel: the contraction's parameters, then the tail's other ones.
    let mut k = mk.clone();
    k.name = format!("{}_{}", mk.name, tk.name);
    let var0 = k.vars.len() as u32;
    k.vars.extend(tk.vars.iter().copied());
    let (row, col) = (k.var(DType::I64), k.var(DType::I64));
    let mut pmap: HashMap<ParamId, ParamId> = HashMap::new();
    let mut args = mm_step.args.clone();
    for (j, prm) in tk.params.iter().enumerate() {
        let q = ParamId(j as u32);
        if is_c(j) {
            if q != *out && prm.dtype != cty {
                return Err(CIndex);
            }
            pmap.insert(q, cp);
            continue;
        }
        if q != *out && prm.access != Access::Read {
            return Err(NotPointwise);
        }
        let access = if q == *out {
            Access::Write
        } else {
            Access::Read
        };
        pmap.insert(q, k.param(prm.dtype, prm.len, access));
        args.push(arg(q).ok_or(NotPointwise)?);
    }
    // An index affine in the counters as one in (row, col).
    let index_of = |a: &Affine| -> Result<Expr, Refusal> {
        let (o, rs, cs) = c_strides(a, &loops, (m, n), row_major).ok_or(OperandIndex)?;
        Ok(Expr::add_idx(
            Expr::idx(o),
            Expr::add_idx(
                Expr::mul_idx(Expr::var(row), rs),
                Expr::mul_idx(Expr::var(col), cs),
            ),
        ))
    };
    let elem = index_of(&li)?;
    let var_map = |v: VarId| VarId(v.0 + var0);
    let mut err = None;
    let mut rw = |e: &Expr| -> Expr {
        rewrite(e, &mut |param, index| {
            let a = match affine_of(index) {
                Some(a) => a,
                None => {
                    err.get_or_insert(OperandIndex);
                    return Expr::idx(0);
                }
            };
            if is_c(param.0 as usize) && a != li {
                err.get_or_insert(CIndex);
            }
            match index_of(&a) {
                Ok(i) => i,
                Err(e) => {
                    err.get_or_insert(e);
                    Expr::idx(0)
                }
            }
        })
    };
    let mut new_body = Vec::new();
    for s in lets {
        if let Stmt::Let { var, value } = s {
            new_body.push(Stmt::Let {
                var: *var,
                value: rw(value),
            });
        }
    }
    let value = rw(out_value);
    if let Some(e) = err {
        return Err(e);
    }
    new_body.push(Stmt::Store {
        param: *out,
        index: elem,
        value,
    });
    // Only C was read at the element's index? Every tail load of C went through `is_c`;
    // a tail that never reads C is not C's tail.
    if !(0..tk.params.len()).any(|j| j != out.0 as usize && is_c(j)) {
        return Err(CIndex);
    }
    // Lets that only fed indices are dead now; then no counter may remain.
    let new_body = drop_dead_lets(new_body);
    let counters: Vec<VarId> = loops.iter().map(|&(v, _)| v).collect();
    if new_body.iter().any(|s| stmt_uses(s, &counters)) {
        return Err(UsesCounters);
    }
    // Renumber the tail's parameters and variables into the fused kernel's.
    let body = new_body
        .into_iter()
        .map(|s| renumber(s, &pmap, &var_map, (row, col)))
        .collect();
    let mut new_mm: Matmul = (**mm).clone();
    new_mm.tail = Some(TileTail { row, col, body });
    k.body = vec![Stmt::Matmul(Box::new(new_mm))];
    mlc_kir::verify_kernel(&k).map_err(|_| NotPointwise)?;
    Ok((k, args))
}

/// `e` with the index of every load replaced by `f(param, index)` (loads inside indices are
/// left as they are: their indices are the caller's to judge).
fn rewrite(e: &Expr, f: &mut dyn FnMut(ParamId, &Expr) -> Expr) -> Expr {
    match e {
        Expr::Var(_) | Expr::Lit(_) => e.clone(),
        Expr::Load { param, index } => Expr::load(*param, f(*param, index)),
        Expr::Unary(op, a) => Expr::un(*op, rewrite(a, f)),
        Expr::Binary(op, a, b) => Expr::bin(*op, rewrite(a, f), rewrite(b, f)),
        Expr::Select { cond, then, els } => {
            Expr::select(rewrite(cond, f), rewrite(then, f), rewrite(els, f))
        }
        Expr::Cast(t, a) => Expr::cast(*t, rewrite(a, f)),
    }
}

/// Whether `e` mentions one of `vars`.
fn uses(e: &Expr, vars: &[VarId]) -> bool {
    match e {
        Expr::Var(v) => vars.contains(v),
        Expr::Lit(_) => false,
        Expr::Load { index, .. } => uses(index, vars),
        Expr::Unary(_, a) | Expr::Cast(_, a) => uses(a, vars),
        Expr::Binary(_, a, b) => uses(a, vars) || uses(b, vars),
        Expr::Select { cond, then, els } => uses(cond, vars) || uses(then, vars) || uses(els, vars),
    }
}

fn stmt_uses(s: &Stmt, vars: &[VarId]) -> bool {
    match s {
        Stmt::Let { value, .. } | Stmt::Assign { value, .. } => uses(value, vars),
        Stmt::Store { index, value, .. } => uses(index, vars) || uses(value, vars),
        _ => true,
    }
}

/// `body` without the `let`s whose variable nothing after them reads.
fn drop_dead_lets(mut body: Vec<Stmt>) -> Vec<Stmt> {
    loop {
        let before = body.len();
        let mut keep = vec![true; body.len()];
        for (i, s) in body.iter().enumerate() {
            if let Stmt::Let { var, .. } = s {
                keep[i] = body[i + 1..].iter().any(|t| stmt_uses(t, &[*var]));
            }
        }
        let mut it = keep.iter();
        body.retain(|_| *it.next().unwrap_or(&true));
        if body.len() == before {
            return body;
        }
    }
}

/// A tail statement with its parameters and variables renumbered into the fused kernel; the
/// new row and column variables are already fused-kernel ones.
fn renumber(
    s: Stmt,
    pmap: &HashMap<ParamId, ParamId>,
    vmap: &dyn Fn(VarId) -> VarId,
    keep: (VarId, VarId),
) -> Stmt {
    fn ex(
        e: &Expr,
        pmap: &HashMap<ParamId, ParamId>,
        vmap: &dyn Fn(VarId) -> VarId,
        keep: (VarId, VarId),
    ) -> Expr {
        let go = |x: &Expr| ex(x, pmap, vmap, keep);
        match e {
            Expr::Var(v) if *v == keep.0 || *v == keep.1 => e.clone(),
            Expr::Var(v) => Expr::var(vmap(*v)),
            Expr::Lit(_) => e.clone(),
            Expr::Load { param, index } => Expr::load(pmap[param], go(index)),
            Expr::Unary(op, a) => Expr::un(*op, go(a)),
            Expr::Binary(op, a, b) => Expr::bin(*op, go(a), go(b)),
            Expr::Select { cond, then, els } => Expr::select(go(cond), go(then), go(els)),
            Expr::Cast(t, a) => Expr::cast(*t, go(a)),
        }
    }
    match s {
        Stmt::Let { var, value } => Stmt::Let {
            var: vmap(var),
            value: ex(&value, pmap, vmap, keep),
        },
        Stmt::Store {
            param,
            index,
            value,
        } => Stmt::Store {
            param: pmap[&param],
            index: ex(&index, pmap, vmap, keep),
            value: ex(&value, pmap, vmap, keep),
        },
        other => other,
    }
}

#[cfg(test)]
#[path = "tests_requant.rs"]
mod tests;

#[cfg(test)]
#[path = "tests_tails.rs"]
mod tests_tails;

#[cfg(test)]
#[path = "tests_gelu.rs"]
mod tests_gelu;
