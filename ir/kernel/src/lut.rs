//! Functions of one byte as tables: in a loop body, a chain of `let`s computed from a single
//! 8-bit variable and constants only (a quantized activation: dequantize, sigmoid, multiply,
//! requantize, dequantize, as QDQ models spell SiLU) has at most 256 results, so it is
//! evaluated at compile time into a 256-entry constant table and the chain becomes one load.
//! Per step, since the constants are the step's: a parameter bound to a constant buffer and
//! read at a literal index is a known value. The table is computed by the kernel-IR evaluator
//! (the oracle) running the chain itself for every byte, so the rewritten kernel gives the
//! evaluator's results exactly. Only chains with a transcendental or a division are worth a
//! table; the rest are a few vector instructions.
//!
//! Loop bodies qualify, not contractions' tile tails (`TileTail`): there a table made a QDQ
//! EfficientNet faster on one thread but 1.7× slower on two (27 against 16 ms; cause not
//! found yet), so those chains stay computed. A requantizing contraction's tail is
//! tabulated before it is fused instead (`mlc-cpu`'s requantization pass calls
//! [`tabulate_step`] on it, cheap chains included): the table then becomes the contraction's
//! `Requant::table`, applied to each finished tile by the runtime's integer GEMM. A depthwise
//! convolution's epilogue gets the same treatment ([`tabulate_epilogues`]): the operations
//! after a narrowing to a byte that depend on it alone become one [`EpOp::Table`].

use crate::eval::{Val, eval_kernel, from_vals, to_vals};
use crate::kernel::*;
use mlc_ir::DType;
use std::collections::HashMap;

/// Replaces every eligible byte chain of every step of `p` by a table load (see the module
/// docs); returns how many.
pub fn tabulate_byte_chains(p: &mut Program) -> usize {
    let mut done = 0;
    for si in 0..p.steps.len() {
        if let Some((k, tables)) = tabulate_step(p, si, false) {
            done += tables.len();
            install_tables(p, si, k, tables);
        }
    }
    crate::concat::tidy(p);
    done
}

/// The kernel of step `si` of `p` with its eligible byte chains as table loads (see the module
/// docs), and the tables, one per parameter appended to the kernel, in order; `None` when no
/// chain qualifies. With `any_cost`, chains of cheap operations qualify too (for a consumer
/// that applies a table for free, such as a requantizing contraction's epilogue).
pub fn tabulate_step(
    p: &Program,
    si: usize,
    any_cost: bool,
) -> Option<(Kernel, Vec<mlc_ir::Tensor>)> {
    let st = p.steps.get(si)?;
    let k = p.kernel(st.kernel);
    let known = Known::new(p, st);
    let mut k = k.clone();
    let mut tables = Vec::new();
    rewrite(&mut k, &known, any_cost, &mut tables);
    if tables.is_empty() {
        return None;
    }
    debug_assert!(
        tables
            .iter()
            .enumerate()
            .all(|(j, (q, _))| q.0 as usize == st.args.len() + j)
    );
    Some((k, tables.into_iter().map(|(_, t)| t).collect()))
}

/// The values of a step's kernel parameters that are read-only constants (from the element the
/// argument starts at), converted on first use: a chain reads a few scalars, while a step's
/// constants may be a model's weights (converting them all made a BERT compile 0.35 s slower
/// and 275 MB larger).
struct Known<'p> {
    p: &'p Program,
    st: &'p Step,
    vals: Vec<std::cell::OnceCell<Option<Vec<Val>>>>,
}

impl<'p> Known<'p> {
    fn new(p: &'p Program, st: &'p Step) -> Known<'p> {
        let n = p.kernel(st.kernel).params.len();
        Known {
            p,
            st,
            vals: (0..n).map(|_| std::cell::OnceCell::new()).collect(),
        }
    }

    /// Parameter `q`'s values, if it is a read-only constant.
    fn get(&self, q: ParamId) -> Option<&[Val]> {
        let cell = self.vals.get(q.0 as usize)?;
        cell.get_or_init(|| {
            let param = self.p.kernel(self.st.kernel).params.get(q.0 as usize)?;
            let (s, at) = self.p.location(*self.st.args.get(q.0 as usize)?);
            match (param.access, &self.p.buffer(s).kind) {
                (Access::Read, BufKind::Const(c)) => to_vals(&self.p.consts[*c])
                    .ok()
                    .and_then(|v| v.get(at..).map(<[Val]>::to_vec)),
                _ => None,
            }
        })
        .as_deref()
    }
}

/// Makes step `si` of `p` launch `k` (from [`tabulate_step`]) with `tables` as constant
/// buffers bound to its new parameters.
pub fn install_tables(p: &mut Program, si: usize, k: Kernel, tables: Vec<mlc_ir::Tensor>) {
    let mut args = p.steps[si].args.clone();
    for t in tables {
        p.consts.push(t.clone());
        let b = p.add_buffer(t.dtype(), vec![256], BufKind::Const(p.consts.len() - 1));
        args.push(b);
    }
    let id = p.intern_kernel(k);
    p.steps[si].kernel = id;
    p.steps[si].args = args;
}

/// Replaces, in every depthwise convolution's epilogue, each run of operations after a
/// `Narrow` to `u8`/`i8` that computes a function of that byte alone (literal and known scalar
/// operands, gates saved and combined inside the run: a QDQ SiLU, a dequantization) by one
/// [`EpOp::Table`] of 256 `f32`s that the evaluator's own definition fills; returns how many.
/// Runs of one operation stay (a table is no cheaper than one operation).
pub fn tabulate_epilogues(p: &mut Program) -> usize {
    let mut done = 0;
    for si in 0..p.steps.len() {
        let st = &p.steps[si];
        let k = p.kernel(st.kernel);
        let [Stmt::Depthwise(dw)] = k.body.as_slice() else {
            continue;
        };
        // Element 0 of the read-only constant parameters.
        let known = Known::new(p, st);
        let scalar = |q: ParamId| -> Option<f64> {
            match known.get(q)?.first()? {
                Val::F(f) => Some(*f),
                Val::I(i) => Some(*i as f64),
                Val::B(_) => None,
            }
        };
        let mut ops = dw.epilogue.clone();
        let mut tables = Vec::new();
        let mut kernel = k.clone();
        let mut i = 0;
        while i < ops.len() {
            let signed = match ops[i] {
                EpOp::Narrow(DType::U8) => false,
                EpOp::Narrow(DType::I8) => true,
                _ => {
                    i += 1;
                    continue;
                }
            };
            let Some((j, args)) = byte_run(&ops, i, &scalar) else {
                i += 1;
                continue;
            };
            let off = if signed { -128.0 } else { 0.0 };
            let vals: Vec<f32> = (0..256)
                .map(|b| {
                    let x = b as f64 + off;
                    crate::eval::apply_epilogue(&ops[i + 1..j], &args, x, &mut |_, _| None) as f32
                })
                .collect();
            let Ok(t) = mlc_ir::Tensor::from_vec(&[256], vals) else {
                break;
            };
            let table = kernel.param(DType::F32, 256, Access::Read);
            tables.push(t);
            ops.splice(i + 1..j, [EpOp::Table { table, signed }]);
            i += 2;
        }
        if tables.is_empty() {
            continue;
        }
        if let [Stmt::Depthwise(dw)] = kernel.body.as_mut_slice() {
            dw.epilogue = ops;
        }
        done += tables.len();
        install_tables(p, si, kernel, tables);
    }
    crate::concat::tidy(p);
    done
}

/// The end `j` of the longest run `ops[at + 1..j]` (at least two operations) that is a
/// function of the byte `ops[at]` narrowed to, and its operands: literals and `scalar`s
/// only (no per-channel operand, no table), every `Combine` combining a value saved in the
/// run, and no value saved in the run combined after it.
fn byte_run(
    ops: &[EpOp],
    at: usize,
    scalar: &dyn Fn(ParamId) -> Option<f64>,
) -> Option<(usize, Vec<f64>)> {
    let mut args = Vec::new();
    let mut saved = false;
    let mut best = None;
    for (j, op) in ops.iter().enumerate().skip(at + 1) {
        match *op {
            EpOp::Bin { arg, .. } => args.push(match arg {
                EpArg::Lit(v) => v as f64,
                EpArg::Scalar(q) => match scalar(q) {
                    Some(v) => v,
                    None => break,
                },
                EpArg::Channel(_) => break,
            }),
            EpOp::Save => {
                saved = true;
                args.push(0.0);
            }
            EpOp::Combine { .. } if !saved => break,
            EpOp::Table { .. } => break,
            _ => args.push(0.0),
        }
        // The run may end after `j` when what follows does not combine a value saved in it.
        let next_combines = ops[j + 1..]
            .iter()
            .find(|o| matches!(o, EpOp::Save | EpOp::Combine { .. }))
            .is_some_and(|o| matches!(o, EpOp::Combine { .. }));
        if j > at + 1 && !(saved && next_combines) {
            best = Some((j + 1, args.clone()));
        }
    }
    best
}

/// Rewrites the chains of `k` in place, adding a table parameter per chain; `tables` gets
/// `(parameter, table)`.
fn rewrite(
    k: &mut Kernel,
    known: &Known,
    any_cost: bool,
    tables: &mut Vec<(ParamId, mlc_ir::Tensor)>,
) {
    let mut body = std::mem::take(&mut k.body);
    let mut consts = HashMap::new();
    block(k, &mut body, known, any_cost, &mut consts, tables);
    k.body = body;
}

/// One statement list: known constant `let`s are collected (visible in nested lists too), and
/// each 8-bit `let` starts a candidate chain.
fn block(
    k: &mut Kernel,
    body: &mut Vec<Stmt>,
    known: &Known,
    any_cost: bool,
    consts: &mut HashMap<VarId, Lit>,
    tables: &mut Vec<(ParamId, mlc_ir::Tensor)>,
) {
    let mut i = 0;
    while i < body.len() {
        match &mut body[i] {
            Stmt::For { body: inner, .. } => {
                let mut inner_consts = consts.clone();
                block(k, inner, known, any_cost, &mut inner_consts, tables);
            }
            Stmt::Let { var, value } => {
                let (var, value) = (*var, value.clone());
                if let Some(l) = constant(k, &value, known, consts) {
                    consts.insert(var, l);
                } else if matches!(k.var_ty(var), DType::U8 | DType::I8) {
                    chain(k, body, i, known, any_cost, consts, tables);
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// `e` as a literal of its type, if it is one, a known variable, or a known parameter's
/// element at a literal index.
fn constant(k: &Kernel, e: &Expr, known: &Known, consts: &HashMap<VarId, Lit>) -> Option<Lit> {
    let ty = k.type_of(e);
    let lit = |v: &Val| -> Option<Lit> {
        Some(match (v, ty.is_float()) {
            (Val::F(f), true) => Lit::Float(ty, *f),
            (Val::I(n), false) if ty != DType::Bool => Lit::Int(ty, *n),
            _ => return None,
        })
    };
    match e {
        Expr::Lit(l) => Some(*l),
        Expr::Var(v) => consts.get(v).copied(),
        Expr::Load { param, index } => {
            let Expr::Lit(Lit::Int(_, n)) = **index else {
                return None;
            };
            let vals = known.get(*param)?;
            lit(vals.get(usize::try_from(n).ok()?)?)
        }
        _ => None,
    }
}

/// The chain starting at the 8-bit `let` `body[at]`: the following `let`s of the list whose
/// values use only it, the chain, known constants and literals. When exactly one of them is
/// used outside the chain and the chain is costly, it is tabulated.
fn chain(
    k: &mut Kernel,
    body: &mut Vec<Stmt>,
    at: usize,
    known: &Known,
    any_cost: bool,
    consts: &HashMap<VarId, Lit>,
    tables: &mut Vec<(ParamId, mlc_ir::Tensor)>,
) {
    let Stmt::Let { var: x, .. } = body[at] else {
        return;
    };
    // `dep`: the chain's variables that depend on `x`; `free`: those computed from known
    // values alone (a zero point widened), which the table needs too.
    let mut consts = consts.clone();
    let mut dep = vec![x];
    let mut free: Vec<VarId> = Vec::new();
    let mut lets: Vec<usize> = Vec::new(); // positions in `body`, in order
    for (j, s) in body.iter().enumerate().skip(at + 1) {
        let Stmt::Let { var, value } = s else {
            continue;
        };
        if let Some(l) = constant(k, value, known, &consts) {
            consts.insert(*var, l);
            continue;
        }
        let known_vars = |v: &VarId| dep.contains(v) || free.contains(v) || consts.contains_key(v);
        let mut reads_dep = false;
        let ok = walk(value, &mut |e| match e {
            Expr::Var(v) => {
                reads_dep |= dep.contains(v);
                known_vars(v)
            }
            // A known parameter's element read in place (not through a `let`) is a constant.
            Expr::Load { .. } => constant(k, e, known, &consts).is_some(),
            _ => true,
        });
        if ok {
            if reads_dep {
                dep.push(*var)
            } else {
                free.push(*var)
            }
            lets.push(j);
        }
    }
    // Chain members that depend on `x` and are read by anything outside the chain.
    let inside = |j: usize| j == at || lets.contains(&j);
    let mut exits: Vec<VarId> = Vec::new();
    for (j, s) in body.iter().enumerate() {
        if inside(j) {
            continue;
        }
        for &m in &dep[1..] {
            if stmt_uses(s, m) && !exits.contains(&m) {
                exits.push(m);
            }
        }
    }
    let [y] = exits[..] else { return };
    let Some(y_at) = lets
        .iter()
        .position(|&j| matches!(body[j], Stmt::Let { var, .. } if var == y))
    else {
        return;
    };
    // Only what `y` depends on, and only if that costs something.
    let used = &lets[..=y_at];
    if !any_cost
        && !used
            .iter()
            .any(|&j| matches!(&body[j], Stmt::Let { value, .. } if costly(value)))
    {
        return;
    }
    let y_ty = k.var_ty(y);
    if !matches!(y_ty, DType::F32 | DType::I32 | DType::U8 | DType::I8) {
        return;
    }
    // The table: the chain run by the evaluator for every byte.
    let signed = k.var_ty(x) == DType::I8;
    let mut tk = Kernel::new("table");
    tk.vars = k.vars.clone();
    let out = tk.param(y_ty, 256, Access::Write);
    let i = tk.var(DType::I64);
    let byte = if signed {
        Expr::bin(BinOp::Sub, Expr::var(i), Expr::idx(128))
    } else {
        Expr::var(i)
    };
    let mut inner = vec![Stmt::Let {
        var: x,
        value: Expr::cast(k.var_ty(x), byte),
    }];
    for &j in used {
        if let Stmt::Let { var, value } = &body[j] {
            inner.push(Stmt::Let {
                var: *var,
                value: substitute(value, &|e| constant(k, e, known, &consts)),
            });
        }
    }
    inner.push(Stmt::Store {
        param: out,
        index: Expr::var(i),
        value: Expr::var(y),
    });
    tk.body = vec![Stmt::For {
        var: i,
        extent: Expr::idx(256),
        kind: LoopKind::Serial,
        body: inner,
    }];
    let mut store = vec![vec![Val::I(0); 256]];
    if eval_kernel(&tk, &mut store, &[0]).is_err() {
        return;
    }
    let Ok(table) = from_vals(y_ty, &[256], &store[0]) else {
        return;
    };
    // `y = table[x]`; the rest of the chain goes (nothing outside reads it).
    let param = k.param(y_ty, 256, Access::Read);
    let mut index = Expr::cast(DType::I64, Expr::var(x));
    if signed {
        index = Expr::bin(BinOp::Add, index, Expr::idx(128));
    }
    body[lets[y_at]] = Stmt::Let {
        var: y,
        value: Expr::load(param, index),
    };
    // The chain's other `let`s go once nothing reads them (last first, so that a removal
    // frees what it read).
    let y_pos = lets[y_at];
    for &j in lets.iter().rev() {
        if j != y_pos && !stmt_uses_any(&body[j + 1..], body_var(&body[j])) {
            body[j] = Stmt::Let {
                var: VarId(u32::MAX),
                value: Expr::idx(0),
            };
        }
    }
    body.retain(|s| !matches!(s, Stmt::Let { var, .. } if var.0 == u32::MAX));
    tables.push((param, table));
}

fn body_var(s: &Stmt) -> Option<VarId> {
    match s {
        Stmt::Let { var, .. } => Some(*var),
        _ => None,
    }
}

/// Whether a statement of `rest` reads `v`.
fn stmt_uses_any(rest: &[Stmt], v: Option<VarId>) -> bool {
    v.is_some_and(|v| rest.iter().any(|s| stmt_uses(s, v)))
}

/// Whether `e` holds a transcendental or a division: what makes a table pay.
fn costly(e: &Expr) -> bool {
    !walk(e, &mut |x| {
        !matches!(
            x,
            Expr::Binary(BinOp::Div | BinOp::Pow, ..)
                | Expr::Unary(UnOp::Exp | UnOp::Tanh | UnOp::Log | UnOp::Erf, _)
        )
    })
}

/// `e` with known variables and known parameters' elements replaced by their literals.
fn substitute(e: &Expr, known: &dyn Fn(&Expr) -> Option<Lit>) -> Expr {
    if matches!(e, Expr::Var(_) | Expr::Load { .. })
        && let Some(l) = known(e)
    {
        return Expr::Lit(l);
    }
    let s = |x: &Expr| substitute(x, known);
    match e {
        Expr::Var(_) | Expr::Lit(_) => e.clone(),
        Expr::Load { param, index } => Expr::load(*param, s(index)),
        Expr::Unary(op, a) => Expr::un(*op, s(a)),
        Expr::Binary(op, a, b) => Expr::bin(*op, s(a), s(b)),
        Expr::Select { cond, then, els } => Expr::select(s(cond), s(then), s(els)),
        Expr::Cast(t, a) => Expr::cast(*t, s(a)),
    }
}

/// `f` on every node of `e`; false as soon as `f` is.
fn walk(e: &Expr, f: &mut dyn FnMut(&Expr) -> bool) -> bool {
    if !f(e) {
        return false;
    }
    match e {
        Expr::Var(_) | Expr::Lit(_) => true,
        Expr::Load { index, .. } => walk(index, f),
        Expr::Unary(_, a) | Expr::Cast(_, a) => walk(a, f),
        Expr::Binary(_, a, b) => walk(a, f) && walk(b, f),
        Expr::Select { cond, then, els } => walk(cond, f) && walk(then, f) && walk(els, f),
    }
}

/// Whether statement `s` (and what it nests) reads variable `v`.
fn stmt_uses(s: &Stmt, v: VarId) -> bool {
    let e_uses = |e: &Expr| !walk(e, &mut |x| !matches!(x, Expr::Var(w) if *w == v));
    match s {
        Stmt::For { extent, body, .. } => e_uses(extent) || body.iter().any(|s| stmt_uses(s, v)),
        Stmt::Let { value, .. } | Stmt::Assign { value, .. } => e_uses(value),
        Stmt::Store { index, value, .. } => e_uses(index) || e_uses(value),
        // Contractions and library statements read buffers, not variables, except through
        // their offset expressions: assume they might.
        Stmt::Matmul(_) | Stmt::Depthwise(_) | Stmt::Softmax(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::print_program;
    use crate::testing::before_after;

    /// QDQ SiLU as a fused kernel: dequantize, sigmoid, multiply, quantize, dequantize.
    fn qdq_silu(ty: &str, zp: i32) -> String {
        format!(
            r#"graph (%0: {ty}[1,3,5,7] "x") -> (%1 "y") {{
  %1 = control.composite {{"kind":"qdq_silu"}} (%0) : f32[1,3,5,7] {{
    graph (%0: {ty}[1,3,5,7] "x") -> (%8 "y") {{
      @c0 = const f32[] [0.0625]
      @c1 = const {ty}[] [{zp}]
      @c2 = const f32[] [0.03125]
      %1 = constant @c0 : f32[]
      %2 = constant @c1 : {ty}[]
      %3 = constant @c2 : f32[]
      %4 = quant.dequantize {{"axis":1,"block_size":0,"to":"f32"}} (%0, %1, %2) : f32[1,3,5,7]
      %5 = ew.sigmoid(%4) : f32[1,3,5,7]
      %6 = ew.mul(%4, %5) : f32[1,3,5,7]
      %7 = quant.quantize {{"axis":1,"block_size":0,"to":"{ty}"}} (%6, %3, %2) : {ty}[1,3,5,7]
      %8 = quant.dequantize {{"axis":1,"block_size":0,"to":"f32"}} (%7, %3, %2) : f32[1,3,5,7]
    }}
  }}
}}"#
        )
    }

    #[test]
    fn a_quantized_activation_becomes_a_table() {
        for (ty, zp) in [("u8", 128), ("i8", -3)] {
            let (n, p) = before_after(&qdq_silu(ty, zp), tabulate_byte_chains);
            assert_eq!(n, 1, "{ty}\n{}", print_program(&p));
            let text = print_program(&p);
            assert!(!text.contains("exp("), "{text}");
        }
    }

    /// A QDQ depthwise layer with a QDQ SiLU after its requantization (EfficientNet's),
    /// dequantized: scales and zero points constants.
    const QDQ_DEPTHWISE_SILU: &str = r#"graph (%0: u8[1,3,8,9] "x", %1: i8[3,1,3,3] "w") -> (%8 "y") {
  @c0 = const u8[] [128]
  @c1 = const f32[3,1,1] [0.0004, 0.0011, 0.0007]
  @c2 = const f32[] [0.047]
  @c3 = const u8[] [121]
  @c4 = const f32[] [0.0039]
  @c5 = const u8[] [0]
  %2 = constant @c0 : u8[]
  %3 = constant @c1 : f32[3,1,1]
  %4 = constant @c2 : f32[]
  %5 = constant @c3 : u8[]
  %6 = constant @c4 : f32[]
  %7 = constant @c5 : u8[]
  %8 = control.composite {"kind":"conv_integer+cast+mul+silu"} (%0, %1, %2, %3, %4, %5, %6, %7) : f32[1,3,8,9] {
    graph (%0: u8[1,3,8,9] "x", %1: i8[3,1,3,3] "w", %2: u8[] "zx", %3: f32[3,1,1] "a", %4: f32[] "s", %5: u8[] "zp", %6: f32[] "gs", %7: u8[] "gz") -> (%18 "y") {
      %8 = quant.conv_integer {"dilations":[1,1],"group":3,"pad":{"explicit":[1,1,1,1]},"strides":[1,1]} (%0, %1, %2) : i32[1,3,8,9]
      %9 = ew.cast {"to":"f32"} (%8) : f32[1,3,8,9]
      %10 = ew.mul(%9, %3) : f32[1,3,8,9]
      %11 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%10, %4, %5) : u8[1,3,8,9]
      %12 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%11, %4, %5) : f32[1,3,8,9]
      %13 = ew.sigmoid(%12) : f32[1,3,8,9]
      %14 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%13, %6, %7) : u8[1,3,8,9]
      %15 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%14, %6, %7) : f32[1,3,8,9]
      %16 = ew.mul(%12, %15) : f32[1,3,8,9]
      %17 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%16, %4, %5) : u8[1,3,8,9]
      %18 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%17, %4, %5) : f32[1,3,8,9]
    }
  }
}"#;

    #[test]
    fn a_depthwise_epilogue_after_its_byte_becomes_a_table() {
        let (n, p) = before_after(QDQ_DEPTHWISE_SILU, tabulate_epilogues);
        let text = print_program(&p);
        assert_eq!(n, 1, "{text}");
        assert!(
            text.contains("narrow<u8>(x), %p") && !text.contains("sigmoid(x)"),
            "{text}"
        );
        // The verifier wants the table right after a narrowing to its byte type.
        let mut k = p
            .kernels
            .iter()
            .find(|k| matches!(k.body.as_slice(), [Stmt::Depthwise(_)]))
            .expect("the depthwise kernel")
            .clone();
        crate::verify_kernel(&k).expect("valid as made");
        if let [Stmt::Depthwise(dw)] = k.body.as_mut_slice() {
            let t = dw
                .epilogue
                .iter()
                .position(|o| matches!(o, EpOp::Table { .. }))
                .expect("a table");
            dw.epilogue[t - 1] = EpOp::Narrow(DType::I8);
        }
        assert!(crate::verify_kernel(&k).is_err());
    }

    #[test]
    fn byte_runs_end_where_the_byte_no_longer_decides() {
        let lit = |op, v| EpOp::Bin {
            op,
            arg: EpArg::Lit(v),
            arg_first: false,
        };
        let combine = EpOp::Combine {
            op: BinOp::Mul,
            saved_first: true,
        };
        let narrow = EpOp::Narrow(DType::U8);
        let known = |_: ParamId| -> Option<f64> { None };
        let end = |ops: &[EpOp]| byte_run(ops, 0, &known).map(|(j, _)| j);
        // A gate saved and combined inside: the whole run.
        let gate = [
            narrow,
            lit(BinOp::Sub, 3.0),
            lit(BinOp::Mul, 0.5),
            EpOp::Save,
            EpOp::Sigmoid,
            combine,
        ];
        assert_eq!(end(&gate), Some(6));
        // A value saved before the byte and combined after: the run stops short of it.
        let outer = [narrow, lit(BinOp::Sub, 3.0), lit(BinOp::Mul, 0.5), combine];
        assert_eq!(end(&outer), Some(3));
        // A value saved in the run and combined after a per-channel operand: no run of two.
        let channel = EpOp::Bin {
            op: BinOp::Add,
            arg: EpArg::Channel(ParamId(5)),
            arg_first: false,
        };
        let split = [
            narrow,
            lit(BinOp::Sub, 3.0),
            EpOp::Save,
            lit(BinOp::Mul, 2.0),
            channel,
            combine,
        ];
        assert_eq!(end(&split), None);
        // An operand unknown at compile time ends the run; one operation is no table.
        let unknown = EpOp::Bin {
            op: BinOp::Mul,
            arg: EpArg::Scalar(ParamId(4)),
            arg_first: false,
        };
        assert_eq!(
            end(&[narrow, lit(BinOp::Sub, 3.0), unknown, lit(BinOp::Add, 1.0)]),
            None
        );
        assert_eq!(
            end(&[narrow, channel, lit(BinOp::Add, 1.0), lit(BinOp::Add, 1.0)]),
            None
        );
    }

    #[test]
    fn cheap_or_unknown_chains_stay() {
        // No transcendental or division: a table would not pay. A scale that is an input:
        // unknown at compile time.
        let cheap = qdq_silu("u8", 7)
            .replace("ew.sigmoid(%4)", "ew.relu(%4)")
            .replace("ew.mul(%4, %5)", "ew.add(%4, %5)");
        let (n, _) = before_after(&cheap, tabulate_byte_chains);
        // Quantizing divides by the scale: still a table.
        assert_eq!(n, 1);
        let unknown = r#"graph (%0: u8[2,9] "x", %1: f32[] "s") -> (%2 "y") {
  %2 = control.composite {"kind":"dq_sigmoid"} (%0, %1) : f32[2,9] {
    graph (%0: u8[2,9] "x", %1: f32[] "s") -> (%4 "y") {
      @c0 = const u8[] [9]
      %2 = constant @c0 : u8[]
      %3 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%0, %1, %2) : f32[2,9]
      %4 = ew.sigmoid(%3) : f32[2,9]
    }
  }
}"#;
        let (n, _) = before_after(unknown, tabulate_byte_chains);
        assert_eq!(n, 0);
    }
}
