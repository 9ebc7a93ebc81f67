//! Vectorization of innermost loops with Cranelift's 128-bit SIMD (`f32x4`).
//!
//! A loop qualifies when it is `Vector` or `Parallel`, holds no inner loop or contraction, and
//! every value in it falls in one of four classes:
//! - *uniform*: the same for all iterations of four consecutive counters (no dependence on the
//!   counter); computed once by the scalar translator and broadcast where a vector is needed;
//! - *affine*: an `i64` index `base + stride * counter` with a literal stride;
//! - *vector `f32`*: loads of `f32` at an affine index (unit stride: one 128-bit load; other
//!   strides: four scalar loads), and `f32` arithmetic on such values;
//! - *vector mask*: comparisons of vector `f32`s and logic on them (`i32x4` all-ones lanes).
//!
//! Stores must be at unit stride (`f32` also at any other literal stride, lane by lane), so
//! iterations write distinct elements; with no buffer
//! both loaded and stored, iterations are then independent whatever the loop's kind says.
//! An `f32` variable defined outside and updated as `acc = acc ⊕ e` (⊕ one of add, mul, max,
//! min) and read nowhere else in the body is a *reduction*: it gets a vector accumulator,
//! reduced across lanes after the vector loop (this reassociates float sums and products,
//! which changes their rounding slightly). Anything else (integers, other casts, loads in
//! `select` arms, other assignments to outer variables) keeps the loop scalar. The vector loop
//! runs four iterations at a time and a scalar loop does the rest. Transcendentals are called
//! once per lane.

use crate::clif::{Result, Tx, libm_symbol};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{self, Endianness, InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::Variable;
use cranelift_module::Module;
use mlc_ir::DType;
use mlc_kir::*;
use std::collections::{HashMap, HashSet};

/// Lanes of an `f32x4`.
pub const LANES: i64 = 4;

/// The class of a value inside a candidate loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Uniform,
    Affine(i64),
    VecF32,
    VecMask,
    /// Four 8- or 32-bit integers (`i8`, `u8`, `i32`), each widened exactly into an `i32x4`
    /// lane: unit-stride loads, float → int casts, and the stores and int → float casts of
    /// quantization epilogues.
    VecI32,
}

/// Integer element types held in [`Class::VecI32`] lanes.
fn lane_int(d: DType) -> bool {
    matches!(d, DType::I8 | DType::U8 | DType::I32)
}

/// Classifies the values of one loop body.
struct Analysis<'a> {
    k: &'a Kernel,
    counter: VarId,
    classes: HashMap<VarId, Class>,
    loaded: HashSet<ParamId>,
    /// The index of every load, by buffer.
    load_index: HashMap<ParamId, Vec<Expr>>,
    /// Variables whose value depends on loaded data (outer ones as the translator knows).
    data_dep: HashSet<VarId>,
}

impl<'a> Analysis<'a> {
    /// A fresh analysis of a loop over `counter`; `outer_data_dep[v]` tells whether variable
    /// `v`, defined outside, depends on loaded data.
    fn new(k: &'a Kernel, counter: VarId, outer_data_dep: &[bool]) -> Analysis<'a> {
        Analysis {
            k,
            counter,
            classes: HashMap::new(),
            loaded: HashSet::new(),
            load_index: HashMap::new(),
            data_dep: (0..outer_data_dep.len())
                .filter(|&i| outer_data_dep[i])
                .map(|i| VarId(i as u32))
                .collect(),
        }
    }

    /// Whether `e` depends on loaded data: vector accesses at such indices would escape the
    /// bounds checks, so they keep the loop scalar.
    fn data_dep(&self, e: &Expr) -> bool {
        match e {
            Expr::Var(v) => self.data_dep.contains(v),
            Expr::Lit(_) => false,
            Expr::Load { .. } => true,
            Expr::Unary(_, a) | Expr::Cast(_, a) => self.data_dep(a),
            Expr::Binary(_, a, b) => self.data_dep(a) || self.data_dep(b),
            Expr::Select { cond, then, els } => {
                self.data_dep(cond) || self.data_dep(then) || self.data_dep(els)
            }
        }
    }

    fn var(&self, v: VarId) -> Class {
        if v == self.counter {
            Class::Affine(1)
        } else {
            // Variables defined outside the loop are uniform.
            self.classes.get(&v).copied().unwrap_or(Class::Uniform)
        }
    }

    fn class(&mut self, e: &Expr) -> Option<Class> {
        use Class::*;
        let norm = |c: Class| if c == Affine(0) { Uniform } else { c };
        Some(match e {
            Expr::Var(v) => self.var(*v),
            Expr::Lit(_) => Uniform,
            Expr::Load { param, index } => {
                // A table indexed by a byte (`mlc_kir::tabulate_byte_chains`): in bounds by
                // the byte's type, so its lanes load one by one without checks.
                if let Some(v) = byte_index(index)
                    && self.var(v) == VecI32
                    && self.k.params[param.0 as usize].len >= 256
                    && self.k.params[param.0 as usize].dtype == DType::F32
                    && matches!(self.k.var_ty(v), DType::U8 | DType::I8)
                {
                    self.loaded.insert(*param);
                    return Some(VecF32);
                }
                let ci = self.class(index)?;
                self.loaded.insert(*param);
                self.load_index
                    .entry(*param)
                    .or_default()
                    .push((**index).clone());
                let pty = self.k.params[param.0 as usize].dtype;
                match ci {
                    Uniform => Uniform,
                    Affine(_) if pty == DType::F32 => {
                        if self.data_dep(index) {
                            return None;
                        }
                        VecF32
                    }
                    Affine(1 | 2) if lane_int(pty) => {
                        if self.data_dep(index) {
                            return None;
                        }
                        VecI32
                    }
                    _ => return None,
                }
            }
            Expr::Unary(op, a) => {
                let ca = self.class(a)?;
                let ty = self.k.type_of(a);
                match (ca, ty) {
                    (Uniform, _) => Uniform,
                    (VecF32, DType::F32) => match op {
                        UnOp::IsNan | UnOp::IsInf => VecMask,
                        UnOp::Not | UnOp::Bitcast(_) => return None,
                        _ => VecF32,
                    },
                    (VecMask, DType::Bool) => VecMask,
                    _ => return None,
                }
            }
            Expr::Binary(op, a, b) => {
                let (ca, cb) = (self.class(a)?, self.class(b)?);
                let ty = self.k.type_of(a);
                if ca == Uniform && cb == Uniform {
                    return Some(Uniform);
                }
                match ty {
                    DType::I64 => {
                        let s = |c: Class| match c {
                            Uniform => Some(0),
                            Affine(s) => Some(s),
                            _ => None,
                        };
                        let (sa, sb) = (s(ca)?, s(cb)?);
                        match op {
                            BinOp::Add => norm(Affine(sa.checked_add(sb)?)),
                            BinOp::Sub => norm(Affine(sa.checked_sub(sb)?)),
                            BinOp::Mul => match (&**a, &**b) {
                                (_, Expr::Lit(Lit::Int(_, k))) => norm(Affine(sa.checked_mul(*k)?)),
                                (Expr::Lit(Lit::Int(_, k)), _) => norm(Affine(sb.checked_mul(*k)?)),
                                _ => return None,
                            },
                            _ => return None,
                        }
                    }
                    DType::F32 => {
                        if !matches!(ca, Uniform | VecF32) || !matches!(cb, Uniform | VecF32) {
                            return None;
                        }
                        match op {
                            BinOp::Add
                            | BinOp::Sub
                            | BinOp::Mul
                            | BinOp::Div
                            | BinOp::Max
                            | BinOp::Min
                            | BinOp::Rem
                            | BinOp::Pow => VecF32,
                            o if o.is_comparison() => VecMask,
                            _ => return None,
                        }
                    }
                    // Comparisons of exact integer lanes (one-hot encodings, masks from ids).
                    t if lane_int(t) && op.is_comparison() => {
                        if !matches!(ca, Uniform | VecI32) || !matches!(cb, Uniform | VecI32) {
                            return None;
                        }
                        VecMask
                    }
                    DType::Bool => {
                        if !matches!(ca, Uniform | VecMask) || !matches!(cb, Uniform | VecMask) {
                            return None;
                        }
                        match op {
                            BinOp::And
                            | BinOp::Or
                            | BinOp::Xor
                            | BinOp::Eq
                            | BinOp::Ne
                            | BinOp::Min
                            | BinOp::Max
                            | BinOp::Mul
                            | BinOp::Add => VecMask,
                            _ => return None,
                        }
                    }
                    _ => return None,
                }
            }
            Expr::Select { cond, then, els } => {
                let cc = self.class(cond)?;
                let (ct, ce) = (self.class(then)?, self.class(els)?);
                if cc == Uniform && ct == Uniform && ce == Uniform {
                    return Some(Uniform);
                }
                // Both arms are evaluated for all lanes: no loads there.
                if contains_load(then) || contains_load(els) {
                    return None;
                }
                if !matches!(cc, Uniform | VecMask) {
                    return None;
                }
                if cc == VecMask && self.k.type_of(cond) != DType::Bool {
                    return None;
                }
                let arm = match self.k.type_of(then) {
                    DType::F32 => VecF32,
                    DType::Bool => VecMask,
                    _ => return None,
                };
                if ![ct, ce].iter().all(|&c| c == Uniform || c == arm) {
                    return None;
                }
                arm
            }
            Expr::Cast(to, a) => {
                let ca = self.class(a)?;
                let from = self.k.type_of(a);
                match ca {
                    Uniform => Uniform,
                    VecF32 if *to == DType::F32 => VecF32,
                    VecF32 if from == DType::F32 && lane_int(*to) => VecI32,
                    VecI32 if *to == DType::F32 && lane_int(from) => VecF32,
                    VecMask if *to == DType::F32 && from == DType::Bool => VecF32,
                    _ => return None,
                }
            }
        })
    }
}

fn uses_var(e: &Expr, v: VarId) -> bool {
    match e {
        Expr::Var(x) => *x == v,
        Expr::Lit(_) => false,
        Expr::Load { index, .. } => uses_var(index, v),
        Expr::Unary(_, a) | Expr::Cast(_, a) => uses_var(a, v),
        Expr::Binary(_, a, b) => uses_var(a, v) || uses_var(b, v),
        Expr::Select { cond, then, els } => {
            uses_var(cond, v) || uses_var(then, v) || uses_var(els, v)
        }
    }
}

/// If `st` is `acc = acc ⊕ e` (or `e ⊕ acc`) on an `f32` variable `acc` not defined in the
/// body, returns `(acc, ⊕, e)`.
fn reduction<'e>(
    k: &Kernel,
    st: &'e Stmt,
    defined: &HashSet<VarId>,
) -> Option<(VarId, BinOp, &'e Expr)> {
    let Stmt::Assign { var, value } = st else {
        return None;
    };
    if defined.contains(var) || k.var_ty(*var) != DType::F32 {
        return None;
    }
    let Expr::Binary(op, a, b) = value else {
        return None;
    };
    if !matches!(op, BinOp::Add | BinOp::Mul | BinOp::Max | BinOp::Min) {
        return None;
    }
    let e = match (&**a, &**b) {
        (Expr::Var(x), e) if x == var => e,
        (e, Expr::Var(x)) if x == var => e,
        _ => return None,
    };
    if uses_var(e, *var) {
        return None;
    }
    Some((*var, *op, e))
}

/// The reductions of a loop body (see the module docs), if its other statements leave them
/// alone; `None` when an outer variable is assigned otherwise or a reduction is read.
fn reductions(k: &Kernel, body: &[Stmt]) -> Option<Vec<(VarId, BinOp)>> {
    let mut defined = HashSet::new();
    let mut red: Vec<(VarId, BinOp)> = Vec::new();
    for st in body {
        match st {
            Stmt::Let { var, .. } => {
                defined.insert(*var);
            }
            Stmt::Assign { var, .. } if !defined.contains(var) => {
                let (v, op, _) = reduction(k, st, &defined)?;
                if red.iter().any(|(x, _)| *x == v) {
                    return None;
                }
                red.push((v, op));
            }
            _ => {}
        }
    }
    // A reduction variable may appear only in its own update.
    for st in body {
        let exprs: Vec<&Expr> = match st {
            Stmt::Let { value, .. } => vec![value],
            Stmt::Assign { var, value } => match reduction(k, st, &defined) {
                Some((_, _, e)) if red.iter().any(|(x, _)| x == var) => vec![e],
                _ => vec![value],
            },
            Stmt::Store { index, value, .. } => vec![index, value],
            _ => vec![],
        };
        if exprs
            .iter()
            .any(|e| red.iter().any(|(v, _)| uses_var(e, *v)))
        {
            return None;
        }
    }
    Some(red)
}

fn contains_load(e: &Expr) -> bool {
    match e {
        Expr::Var(_) | Expr::Lit(_) => false,
        Expr::Load { .. } => true,
        Expr::Unary(_, a) | Expr::Cast(_, a) => contains_load(a),
        Expr::Binary(_, a, b) => contains_load(a) || contains_load(b),
        Expr::Select { cond, then, els } => {
            contains_load(cond) || contains_load(then) || contains_load(els)
        }
    }
}

/// Whether the loop over `counter` with `body` can be vectorized (see the module docs).
/// `outer_data_dep[v]` tells whether variable `v`, defined outside, depends on loaded data.
/// `extent` is the loop's trip count when it is a constant.
pub fn vectorizable(
    k: &Kernel,
    counter: VarId,
    extent: Option<i64>,
    body: &[Stmt],
    outer_data_dep: &[bool],
) -> bool {
    if byte_copy(k, counter, body, outer_data_dep).is_some() {
        return true;
    }
    let mut a = Analysis::new(k, counter, outer_data_dep);
    let Some(red) = reductions(k, body) else {
        return false;
    };
    let mut stored: HashMap<ParamId, Vec<&Expr>> = HashMap::new();
    // The lane stride of each stored buffer's indices (one per buffer).
    let mut store_stride: HashMap<ParamId, i64> = HashMap::new();
    let mut vector_store = false;
    for st in body {
        if let Stmt::Assign { var, value } = st
            && red.iter().any(|(v, _)| v == var)
        {
            let Expr::Binary(_, x, y) = value else {
                return false;
            };
            let e = if matches!(&**x, Expr::Var(v) if v == var) {
                y
            } else {
                x
            };
            if !matches!(a.class(e), Some(Class::Uniform | Class::VecF32)) {
                return false;
            }
            if a.class(e) == Some(Class::VecF32) {
                vector_store = true;
            }
            continue;
        }
        match st {
            Stmt::For { .. } | Stmt::Matmul(_) | Stmt::Depthwise(_) | Stmt::Softmax(_) => {
                return false;
            }
            Stmt::Let { var, value } => {
                let Some(c) = a.class(value) else {
                    return false;
                };
                let ok = match c {
                    Class::Uniform => true,
                    Class::Affine(_) => k.var_ty(*var) == DType::I64,
                    Class::VecF32 => k.var_ty(*var) == DType::F32,
                    Class::VecMask => k.var_ty(*var) == DType::Bool,
                    Class::VecI32 => lane_int(k.var_ty(*var)),
                };
                if !ok {
                    return false;
                }
                if a.data_dep(value) {
                    a.data_dep.insert(*var);
                } else {
                    a.data_dep.remove(var);
                }
                a.classes.insert(*var, c);
            }
            Stmt::Assign { var, value } => {
                // Only variables defined in the body, keeping their class: an assignment
                // to an outer variable is a reduction, which stays scalar.
                let Some(&prev) = a.classes.get(var) else {
                    return false;
                };
                if a.class(value) != Some(prev) {
                    return false;
                }
                if a.data_dep(value) {
                    a.data_dep.insert(*var);
                }
            }
            Stmt::Store {
                param,
                index,
                value,
            } => {
                let pty = k.params[param.0 as usize].dtype;
                let value_ok = match pty {
                    DType::F32 => {
                        k.type_of(value) == DType::F32
                            && matches!(a.class(value), Some(Class::Uniform | Class::VecF32))
                    }
                    t if lane_int(t) => {
                        k.type_of(value) == t
                            && matches!(a.class(value), Some(Class::Uniform | Class::VecI32))
                    }
                    _ => false,
                };
                let stride = match a.class(index) {
                    Some(Class::Affine(s)) if s == 1 || (s != 0 && pty == DType::F32) => s,
                    _ => return false,
                };
                if !value_ok
                    || a.data_dep(index)
                    || *store_stride.entry(*param).or_insert(stride) != stride
                {
                    return false;
                }
                stored.entry(*param).or_default().push(index);
                vector_store = true;
            }
        }
    }
    // A buffer both loaded and stored is fine when every access to it uses one index (unit
    // stride, as stores are): each iteration then reads and writes only its own element, as
    // in an accumulation `y[i] = y[i] + ...`.
    //
    // A buffer only stored may take several stores at indices `base + dᵢ` (literal `dᵢ`, one
    // `base`) whose ranges over the whole loop cannot meet: `|dᵢ − dⱼ| ≥ extent` (several
    // output rows written by one loop over a row); at lane stride `s`, offsets in different
    // residues mod `s` never meet either (a 2×2 output tile's two columns).
    let independent = stored.iter().all(|(p, idx)| {
        let s = store_stride.get(p).copied().unwrap_or(1);
        let first = idx[0];
        if idx.iter().all(|i| *i == first) {
            return a
                .load_index
                .get(p)
                .is_none_or(|loads| loads.iter().all(|l| l == first));
        }
        let (Some(extent), None) = (extent, a.load_index.get(p)) else {
            return false;
        };
        let split: Option<Vec<(&Expr, i64)>> = idx.iter().map(|i| offset_split(i)).collect();
        let Some(split) = split else {
            return false;
        };
        split.iter().all(|(b, _)| *b == split[0].0)
            && split.iter().enumerate().all(|(x, (_, dx))| {
                split[..x].iter().all(|(_, dy)| {
                    (dx - dy) % s != 0
                        || dx.abs_diff(*dy) >= extent.unsigned_abs() * s.unsigned_abs()
                })
            })
    });
    vector_store && independent
}

/// `base + d` as `(base, d)` for a literal `d` (`(e, 0)` otherwise).
fn offset_split(e: &Expr) -> Option<(&Expr, i64)> {
    Some(match e {
        Expr::Binary(BinOp::Add, a, b) => match &**b {
            Expr::Lit(Lit::Int(_, d)) => (&**a, *d),
            _ => (e, 0),
        },
        _ => (e, 0),
    })
}

/// A loop that stores 8-bit elements computed from 8-bit loads at stride 1 or 2, values that
/// do not depend on the counter, and `max`/`min` of those (`dst[i] = src[i']`, a fill, a
/// max-pooling tap `dst[i] = max(dst[i], src[2i + k])`): 16 bytes per iteration, in the
/// 8-bit lanes themselves, instead of four widened lanes.
struct ByteCopy<'a> {
    dst: ParamId,
    dst_index: &'a Expr,
    /// The stored value.
    value: ByteVal<'a>,
    /// Whether computing a block again gives the same bytes, so the loop may end with a
    /// block overlapping the previous one: a copy or fill, or a `max`-only (`min`-only) tree
    /// whose read of the destination is at the stored index (`max(max(d, x), x)` is
    /// `max(d, x)`). Otherwise the remainder runs in lanes.
    idempotent: bool,
    /// Whether the four-lane loop handles the body too (copies and fills), for remainders;
    /// otherwise they run as a scalar loop.
    lanes: bool,
}

/// A [`ByteCopy`] value.
enum ByteVal<'a> {
    /// A load from `param` at `index`, whose lanes step by `stride` (1 or 2) elements.
    Load(ParamId, &'a Expr, i64),
    /// A value that does not depend on the counter (evaluated once, splat).
    Uniform(&'a Expr),
    Bin(BinOp, Box<ByteVal<'a>>, Box<ByteVal<'a>>),
}

impl ByteVal<'_> {
    /// The binary ops of the tree, and whether it reads `dst` at an index other than `at`.
    fn ops(&self, dst: ParamId, at: &Expr, ops: &mut HashSet<BinOp>, foreign: &mut bool) {
        match self {
            ByteVal::Load(p, i, _) => *foreign |= *p == dst && *i != at,
            // Computed once before the loop: it must not read what the loop writes.
            ByteVal::Uniform(e) => e.for_each_load(&mut |p, _| *foreign |= p == dst),
            ByteVal::Bin(op, a, b) => {
                ops.insert(*op);
                a.ops(dst, at, ops, foreign);
                b.ops(dst, at, ops, foreign);
            }
        }
    }

    fn reads(&self, p: ParamId) -> bool {
        match self {
            ByteVal::Load(q, _, _) => *q == p,
            ByteVal::Uniform(e) => {
                let mut r = false;
                e.for_each_load(&mut |q, _| r |= q == p);
                r
            }
            ByteVal::Bin(_, a, b) => a.reads(p) || b.reads(p),
        }
    }
}

fn byte_val<'a>(
    k: &Kernel,
    a: &mut Analysis,
    counter: VarId,
    ty: DType,
    e: &'a Expr,
) -> Option<ByteVal<'a>> {
    if k.type_of(e) != ty {
        return None;
    }
    match e {
        Expr::Load { param, index }
            if k.params[param.0 as usize].dtype == ty && !uses_var(index, counter) =>
        {
            // A load at an index the counter does not change (a zero point as the fill).
            (a.class(e) == Some(Class::Uniform)).then_some(ByteVal::Uniform(e))
        }
        Expr::Load { param, index } if k.params[param.0 as usize].dtype == ty => {
            let stride = match a.class(index)? {
                Class::Affine(s @ (1 | 2)) => s,
                _ => return None,
            };
            (!a.data_dep(index)).then_some(ByteVal::Load(*param, index, stride))
        }
        Expr::Binary(op @ (BinOp::Max | BinOp::Min), x, y) => Some(ByteVal::Bin(
            *op,
            Box::new(byte_val(k, a, counter, ty, x)?),
            Box::new(byte_val(k, a, counter, ty, y)?),
        )),
        v if !uses_var(v, counter) && a.class(v) == Some(Class::Uniform) => {
            Some(ByteVal::Uniform(v))
        }
        _ => None,
    }
}

fn byte_copy<'a>(
    k: &Kernel,
    counter: VarId,
    body: &'a [Stmt],
    outer_data_dep: &[bool],
) -> Option<ByteCopy<'a>> {
    let [
        Stmt::Store {
            param,
            index,
            value,
        },
    ] = body
    else {
        return None;
    };
    let ty = k.params[param.0 as usize].dtype;
    if !matches!(ty, DType::U8 | DType::I8) {
        return None;
    }
    let mut a = Analysis::new(k, counter, outer_data_dep);
    if a.class(index) != Some(Class::Affine(1)) || a.data_dep(index) {
        return None;
    }
    let value = byte_val(k, &mut a, counter, ty, value)?;
    let (mut ops, mut foreign) = (HashSet::new(), false);
    value.ops(*param, index, &mut ops, &mut foreign);
    if foreign {
        // The destination read elsewhere than where it is written: a block could read
        // bytes an earlier block of this loop wrote.
        return None;
    }
    let idempotent = match ops.len() {
        // A copy or a fill: nothing read from the destination (as before).
        0 => !value.reads(*param),
        1 => mlc_kir::inplace_pairs(k).is_empty(),
        _ => false,
    };
    Some(ByteCopy {
        dst: *param,
        dst_index: index,
        value,
        idempotent,
        lanes: ops.is_empty(),
    })
}

/// Whether a vector loop over `body` may finish with a vector over its last four elements,
/// overlapping the previous one: every iteration must compute the same values when run
/// again. So no buffer may be both read and written by the body (an accumulation would add
/// twice), and the kernel may not compute an output in place of an input
/// (`mlc_kir::inplace_pairs`: the memory plan may then give them one address, and the
/// repeated elements would read outputs). Reductions are excluded by the caller.
fn overlap_ok(k: &Kernel, body: &[Stmt]) -> bool {
    fn loads(e: &Expr, out: &mut HashSet<ParamId>) {
        e.for_each_load(&mut |p, _| {
            out.insert(p);
        });
    }
    let (mut read, mut written) = (HashSet::new(), HashSet::new());
    for st in body {
        match st {
            Stmt::Let { value, .. } | Stmt::Assign { value, .. } => loads(value, &mut read),
            Stmt::Store {
                param,
                index,
                value,
            } => {
                written.insert(*param);
                loads(index, &mut read);
                loads(value, &mut read);
            }
            Stmt::For { .. } | Stmt::Matmul(_) | Stmt::Depthwise(_) | Stmt::Softmax(_) => {
                return false;
            }
        }
    }
    written.iter().all(|p| !read.contains(p)) && mlc_kir::inplace_pairs(k).is_empty()
}

/// The scalar and vector types of a short [`ByteCopy`] block of `width` (8 or 4) bytes.
fn short_types(width: i64) -> (types::Type, types::Type) {
    if width == 8 {
        (types::I64, types::I64X2)
    } else {
        (types::I32, types::I32X4)
    }
}

/// A value in the vector body.
#[derive(Clone, Copy, Debug)]
enum VV {
    Uni(Value),
    /// `base + stride * lane`, with `base` the index at the first lane.
    Aff(Value, i64),
    F(Value),
    M(Value),
    /// An `i32x4` of exact integer lanes ([`Class::VecI32`]).
    I(Value),
}

/// A reduction's vector state.
struct Red {
    op: BinOp,
    /// One accumulator per unrolled copy of the body: independent dependency chains.
    acc: Vec<Variable>,
    /// For max and min on x86 (which accumulate with `maxps`/`minps`, see
    /// [`Tx::reduce_step`]): the lanes that saw a NaN, as an `i32x4` mask.
    nan: Option<Variable>,
}

/// Per-body emission state: the classes and vector values of variables defined in it.
struct VecBody<'a> {
    an: Analysis<'a>,
    vals: HashMap<VarId, VV>,
    /// Reduction variables.
    red: HashMap<VarId, Red>,
    /// The unrolled copy of the body being emitted: the accumulator reductions update.
    slot: usize,
    /// The body's statements computed once before the loop ([`hoistable`]).
    hoisted: Vec<bool>,
    /// The values of the invariant loads of the other statements, computed before the loop,
    /// by the address of their expression in the body.
    invariant: HashMap<*const Expr, Value>,
    /// `f32` constants (never NaN) held by body variables, as `let %v = 0.0`.
    consts: HashMap<VarId, f32>,
    /// Bounds on the non-NaN values of body variables, from clamps by constants.
    ranges: HashMap<VarId, (f32, f32)>,
}

fn vflags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// What is loop-invariant in a vector loop's body: expressions that read no counter, no
/// variable the body assigns or defines (but hoisted `let`s) and no buffer the body stores
/// (buffers are distinct, as the vectorizer already assumes).
struct Invariance {
    counter: VarId,
    /// How many times the body defines or assigns each variable.
    defs: HashMap<VarId, usize>,
    /// Body variables whose `let` is hoisted.
    hoisted: HashSet<VarId>,
    stored: HashSet<ParamId>,
}

impl Invariance {
    fn new(body: &[Stmt], counter: VarId) -> Invariance {
        let mut stored = HashSet::new();
        let mut defs: HashMap<VarId, usize> = HashMap::new();
        for st in body {
            match st {
                Stmt::Store { param, .. } => {
                    stored.insert(*param);
                }
                Stmt::Let { var, .. } | Stmt::Assign { var, .. } => {
                    *defs.entry(*var).or_default() += 1
                }
                _ => {}
            }
        }
        Invariance {
            counter,
            defs,
            hoisted: HashSet::new(),
            stored,
        }
    }

    fn invariant(&self, e: &Expr) -> bool {
        match e {
            Expr::Var(v) => {
                *v != self.counter && (!self.defs.contains_key(v) || self.hoisted.contains(v))
            }
            Expr::Lit(_) => true,
            Expr::Load { param, index } => !self.stored.contains(param) && self.invariant(index),
            Expr::Unary(_, a) | Expr::Cast(_, a) => self.invariant(a),
            Expr::Binary(_, a, b) => self.invariant(a) && self.invariant(b),
            Expr::Select { cond, then, els } => {
                self.invariant(cond) && self.invariant(then) && self.invariant(els)
            }
        }
    }

    /// The maximal invariant subexpressions of `e` that load (a scale, a zero point and its
    /// conversion written inline), pushed onto `out`.
    fn invariant_loads<'e>(&self, e: &'e Expr, out: &mut Vec<&'e Expr>) {
        if contains_load(e) && self.invariant(e) {
            out.push(e);
            return;
        }
        match e {
            Expr::Var(_) | Expr::Lit(_) => {}
            Expr::Load { index, .. } => self.invariant_loads(index, out),
            Expr::Unary(_, a) | Expr::Cast(_, a) => self.invariant_loads(a, out),
            Expr::Binary(_, a, b) => {
                self.invariant_loads(a, out);
                self.invariant_loads(b, out);
            }
            Expr::Select { cond, then, els } => {
                self.invariant_loads(cond, out);
                self.invariant_loads(then, out);
                self.invariant_loads(els, out);
            }
        }
    }
}

/// Which statements of a vector loop's body are loop-invariant `let`s (of a variable defined
/// once in the body, see [`Invariance`]), computed once before the loop instead of once per
/// iteration, and the invariant loads in the other statements, also computed once. Such
/// values (a per-channel scale, a zero point and its conversion) would otherwise be loaded
/// and converted in every iteration: Cranelift does not move loads out of loops.
fn hoistable(body: &[Stmt], counter: VarId) -> (Vec<bool>, Vec<&Expr>) {
    let mut inv = Invariance::new(body, counter);
    let lets: Vec<bool> = body
        .iter()
        .map(|st| match st {
            Stmt::Let { var, value } if inv.defs[var] == 1 && inv.invariant(value) => {
                inv.hoisted.insert(*var);
                true
            }
            _ => false,
        })
        .collect();
    let mut loads = Vec::new();
    for (st, &h) in body.iter().zip(&lets) {
        match st {
            _ if h => {}
            Stmt::Let { value, .. } | Stmt::Assign { value, .. } => {
                inv.invariant_loads(value, &mut loads)
            }
            Stmt::Store { index, value, .. } => {
                inv.invariant_loads(index, &mut loads);
                inv.invariant_loads(value, &mut loads);
            }
            _ => {}
        }
    }
    (lets, loads)
}

/// A rough count of the operations in `e`; `None` when it calls or inlines a transcendental
/// or divides (then one accumulator chain is not what limits the loop).
fn cheap_ops(e: &Expr) -> Option<usize> {
    Some(match e {
        Expr::Var(_) | Expr::Lit(_) => 0,
        Expr::Load { index, .. } => 1 + cheap_ops(index)?,
        Expr::Unary(op, a) => {
            if op.libm_name().is_some() {
                return None;
            }
            1 + cheap_ops(a)?
        }
        Expr::Cast(_, a) => 1 + cheap_ops(a)?,
        Expr::Binary(op, a, b) => {
            if matches!(op, BinOp::Div | BinOp::Rem | BinOp::Pow) {
                return None;
            }
            1 + cheap_ops(a)? + cheap_ops(b)?
        }
        Expr::Select { cond, then, els } => {
            1 + cheap_ops(cond)? + cheap_ops(then)? + cheap_ops(els)?
        }
    })
}

/// How many copies of a vector body with reductions each iteration runs, each with its own
/// accumulators: a short body is otherwise bound by the latency of the one accumulator chain
/// (four cycles per `addps`, more for max and min). Bodies with no reduction, or long ones,
/// run one copy.
fn unroll_factor(body: &[Stmt], has_reduction: bool) -> usize {
    if !has_reduction {
        return 1;
    }
    let mut ops = 0;
    for st in body {
        let e = match st {
            Stmt::Let { value, .. } | Stmt::Assign { value, .. } => value,
            Stmt::Store { value, .. } => value,
            _ => return 1,
        };
        match cheap_ops(e) {
            Some(n) => ops += n,
            None => return 1,
        }
    }
    if ops <= 24 { 4 } else { 1 }
}

impl<M: Module> Tx<'_, '_, M> {
    /// `for var in lo..hi { body }`, four iterations at a time (and, for short bodies with
    /// reductions, sixteen at a time in four independent copies first), then a scalar
    /// remainder. Loop-invariant `let`s are computed once, before the vector loop.
    pub(crate) fn vector_loop(
        &mut self,
        var: VarId,
        lo: Value,
        hi: Value,
        body: &[Stmt],
    ) -> Result<()> {
        if let Some(copy) = byte_copy(self.k, var, body, &self.data_dep) {
            return self.byte_copy_loop(var, lo, hi, body, copy);
        }
        self.vector_loop_lanes(var, lo, hi, body)
    }

    /// The vector loop over `f32x4`/`i32x4` lanes (see the module docs).
    fn vector_loop_lanes(&mut self, var: VarId, lo: Value, hi: Value, body: &[Stmt]) -> Result<()> {
        let v = self.vars[var.0 as usize];
        let outer_counter = self.vcounter.replace(var);
        let reds = reductions(self.k, body).unwrap_or_default();
        let unroll = unroll_factor(body, !reds.is_empty());
        let (lets, loads) = hoistable(body, var);
        // A loop with nothing to set up branches straight into its body and out to the
        // remainder (then the remainder shares the invariants Cranelift hoists).
        let plain = reds.is_empty() && loads.is_empty() && !lets.contains(&true);
        // The last partial group runs as one more vector over the last four elements (some
        // computed twice, the same values stored again) when that is harmless: see
        // `overlap_ok`. Then the scalar loop only serves rows shorter than four.
        let overlap = reds.is_empty() && overlap_ok(self.k, body);
        let pre = self.b.create_block();
        let vb = self.b.create_block();
        let tail = self.b.create_block();
        let ov_check = if overlap {
            Some(self.b.create_block())
        } else {
            None
        };
        let combine = match ov_check {
            Some(b) => b,
            None if plain => tail,
            None => self.b.create_block(),
        };
        self.b.def_var(v, lo);
        // i + 4 <= hi  ⇔  i < hi - 3
        let lim = self.b.ins().iadd_imm_s(hi, -(LANES - 1));
        let c = self.b.ins().icmp(IntCC::SignedLessThan, lo, lim);
        self.b
            .ins()
            .brif(c, if plain { vb } else { pre }, &[], tail, &[]);

        // Preheader: at least one vector iteration runs.
        if !plain {
            self.b.switch_to_block(pre);
        }
        let mut st = VecBody {
            an: Analysis {
                k: self.k,
                counter: var,
                classes: HashMap::new(),
                loaded: HashSet::new(),
                load_index: HashMap::new(),
                data_dep: HashSet::new(),
            },
            vals: HashMap::new(),
            red: HashMap::new(),
            slot: 0,
            hoisted: Vec::new(),
            invariant: HashMap::new(),
            consts: HashMap::new(),
            ranges: HashMap::new(),
        };
        st.hoisted = lets;
        for (s, &h) in body.iter().zip(&st.hoisted.clone()) {
            if let (Stmt::Let { var: hv, value }, true) = (s, h) {
                let dd = self.depends_on_data(value);
                let x = self.expr(value)?;
                self.data_dep[hv.0 as usize] = dd;
                self.b.def_var(self.vars[hv.0 as usize], x);
                if let Some(c) = const_f32(&st, value) {
                    st.consts.insert(*hv, c);
                }
            }
        }
        for e in loads {
            let x = self.expr(e)?;
            st.invariant.insert(e as *const Expr, x);
        }
        // Vector accumulators: the first starts as (acc, e, e, e), the others as (e, e, e, e),
        // e the operator's identity; max and min are idempotent, so all start as
        // (acc, acc, acc, acc).
        for (rv, op) in reds {
            let acc = self.b.use_var(self.vars[rv.0 as usize]);
            let mut accs = Vec::with_capacity(unroll);
            let mut nan = None;
            for j in 0..unroll {
                let init = match op {
                    BinOp::Add | BinOp::Mul => {
                        let e = self.splat_f(if op == BinOp::Add { 0.0 } else { 1.0 });
                        if j == 0 {
                            self.b.ins().insertlane(e, acc, 0)
                        } else {
                            e
                        }
                    }
                    _ => self.b.ins().splat(types::F32X4, acc),
                };
                if j == 0 && self.x86 && matches!(op, BinOp::Max | BinOp::Min) {
                    let m = self.b.ins().fcmp(FloatCC::Unordered, init, init);
                    let nv = self.b.declare_var(types::I32X4);
                    self.b.def_var(nv, m);
                    nan = Some(nv);
                }
                let va = self.b.declare_var(types::F32X4);
                self.b.def_var(va, init);
                accs.push(va);
            }
            st.red.insert(rv, Red { op, acc: accs, nan });
        }
        if unroll > 1 {
            // i + 4·unroll <= hi
            let step = LANES * unroll as i64;
            let lim_u = self.b.ins().iadd_imm_s(hi, -(step - 1));
            let vu = self.b.create_block();
            let single = self.b.create_block();
            let c = self.b.ins().icmp(IntCC::SignedLessThan, lo, lim_u);
            self.b.ins().brif(c, vu, &[], single, &[]);
            self.b.switch_to_block(vu);
            let base = self.b.use_var(v);
            for j in 0..unroll {
                let i = self.b.ins().iadd_imm_s(base, LANES * j as i64);
                self.b.def_var(v, i);
                st.slot = j;
                self.vbody(&mut st, body)?;
            }
            let i = self.b.ins().iadd_imm_s(base, step);
            self.b.def_var(v, i);
            let c = self.b.ins().icmp(IntCC::SignedLessThan, i, lim_u);
            self.b.ins().brif(c, vu, &[], single, &[]);
            // The remaining groups of four, into the first accumulators.
            self.b.switch_to_block(single);
            st.slot = 0;
            let i = self.b.use_var(v);
            let c = self.b.ins().icmp(IntCC::SignedLessThan, i, lim);
            self.b.ins().brif(c, vb, &[], combine, &[]);
        } else if !plain {
            self.b.ins().jump(vb, &[]);
        }
        self.b.switch_to_block(vb);
        self.vbody(&mut st, body)?;
        let i = self.b.use_var(v);
        let i = self.b.ins().iadd_imm_s(i, LANES);
        self.b.def_var(v, i);
        let c = self.b.ins().icmp(IntCC::SignedLessThan, i, lim);
        self.b.ins().brif(c, vb, &[], combine, &[]);

        if let Some(check) = ov_check {
            // At least one vector ran (`pre` dominates this), so `hi - 4 >= lo`.
            self.b.switch_to_block(check);
            let ov = self.b.create_block();
            let done = self.b.create_block();
            let i = self.b.use_var(v);
            let c = self.b.ins().icmp(IntCC::SignedLessThan, i, hi);
            self.b.ins().brif(c, ov, &[], done, &[]);
            self.b.switch_to_block(ov);
            let last = self.b.ins().iadd_imm_s(hi, -LANES);
            self.b.def_var(v, last);
            st.slot = 0;
            self.vbody(&mut st, body)?;
            self.b.ins().jump(done, &[]);
            // Fewer than four elements: the scalar loop.
            self.b.switch_to_block(tail);
            self.vcounter = outer_counter;
            self.scalar_loop(var, lo, hi, body)?;
            self.b.ins().jump(done, &[]);
            self.b.switch_to_block(done);
            return Ok(());
        }
        // Combine the accumulators, then fold their lanes back into the scalar variables
        // (with the scalar operator: NaN propagates, zeros keep IEEE signs).
        if !plain {
            self.b.switch_to_block(combine);
            self.combine(st.red, tail);
        }
        self.b.switch_to_block(tail);
        self.vcounter = outer_counter;
        let i = self.b.use_var(v);
        self.scalar_loop(var, i, hi, body)
    }

    /// After a vector loop with reductions: combines each reduction's accumulators, folds
    /// their lanes into its scalar variable and jumps to `tail`.
    fn combine(&mut self, red: HashMap<VarId, Red>, tail: ir::Block) {
        let mut reds: Vec<(VarId, Red)> = red.into_iter().collect();
        reds.sort_by_key(|(v, _)| *v);
        for (rv, red) in reds {
            let mut x = self.b.use_var(red.acc[0]);
            for &a in &red.acc[1..] {
                let y = self.b.use_var(a);
                x = self.fop(red.op, x, y);
            }
            if let Some(nv) = red.nan {
                // All-ones lanes are NaNs.
                let m = self.b.use_var(nv);
                let m = self.mask_as_f32(m);
                x = self.b.ins().bor(x, m);
            }
            let mut acc = self.b.ins().extractlane(x, 0);
            for j in 1..LANES as u8 {
                let l = self.b.ins().extractlane(x, j);
                acc = self.fop(red.op, acc, l);
            }
            self.b.def_var(self.vars[rv.0 as usize], acc);
        }
        self.b.ins().jump(tail, &[]);
    }

    /// A [`ByteCopy`] loop: 16 elements per iteration, then (with at least 16 in all, when
    /// the block is idempotent) one more 16-byte block ending at the last element,
    /// overlapping the previous one; otherwise the rest in lanes.
    fn byte_copy_loop(
        &mut self,
        var: VarId,
        lo: Value,
        hi: Value,
        body: &[Stmt],
        copy: ByteCopy,
    ) -> Result<()> {
        const W: i64 = 16;
        let v = self.vars[var.0 as usize];
        let signed = self.k.params[copy.dst.0 as usize].dtype == DType::I8;
        // Values that do not depend on the counter, splat once before the loop.
        let mut splats: HashMap<*const Expr, Value> = HashMap::new();
        self.byte_splats(&copy.value, &mut splats)?;
        // `width` (16, 8 or 4) elements from `at`: the short blocks through 64- and 32-bit
        // loads and stores.
        let block_of = |tx: &mut Self, at: Value, width: i64| -> Result<()> {
            tx.b.def_var(v, at);
            let di = tx.expr(copy.dst_index)?;
            let dst = tx.address(copy.dst, di, false, false);
            let x = tx.byte_value(&copy.value, &splats, signed, width)?;
            if width == W {
                tx.b.ins().store(vflags(), x, dst, 0);
            } else {
                let (st, vt) = short_types(width);
                let le = MemFlagsData::new().with_endianness(Endianness::Little);
                let w = tx.b.ins().bitcast(vt, le, x);
                let w = tx.b.ins().extractlane(w, 0);
                debug_assert_eq!(tx.b.func.dfg.value_type(w), st);
                tx.b.ins().store(MemFlagsData::trusted(), w, dst, 0);
            }
            Ok(())
        };
        let block = |tx: &mut Self, at: Value| block_of(tx, at, W);
        let body_b = self.b.create_block();
        let after = self.b.create_block();
        let ov = self.b.create_block();
        let scalar = self.b.create_block();
        let done = self.b.create_block();
        // i + 16 <= hi  ⇔  i < hi - 15
        let lim = self.b.ins().iadd_imm_s(hi, -(W - 1));
        self.b.def_var(v, lo);
        let c = self.b.ins().icmp(IntCC::SignedLessThan, lo, lim);
        self.b.ins().brif(c, body_b, &[], scalar, &[]);
        self.b.switch_to_block(body_b);
        let i = self.b.use_var(v);
        block(self, i)?;
        let i = self.b.ins().iadd_imm_s(i, W);
        self.b.def_var(v, i);
        let c = self.b.ins().icmp(IntCC::SignedLessThan, i, lim);
        self.b.ins().brif(c, body_b, &[], after, &[]);
        self.b.switch_to_block(after);
        let i = self.b.use_var(v);
        let c = self.b.ins().icmp(IntCC::SignedLessThan, i, hi);
        self.b.ins().brif(c, ov, &[], done, &[]);
        self.b.switch_to_block(ov);
        if copy.idempotent {
            let last = self.b.ins().iadd_imm_s(hi, -W);
            block(self, last)?;
        } else {
            let i = self.b.use_var(v);
            self.byte_rest(var, i, hi, body, copy.lanes)?;
        }
        self.b.ins().jump(done, &[]);
        // Fewer than 16 elements in all (a pool's rows on a 14- or 7-wide map): when the
        // block is idempotent, two overlapping blocks of 8 (at least 8 elements) or of 4
        // (at least 4), else the rest in lanes.
        self.b.switch_to_block(scalar);
        if copy.idempotent {
            let n = self.b.ins().isub(hi, lo);
            for width in [8i64, 4] {
                let (short, next) = (self.b.create_block(), self.b.create_block());
                let c = self
                    .b
                    .ins()
                    .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, n, width);
                self.b.ins().brif(c, short, &[], next, &[]);
                self.b.switch_to_block(short);
                block_of(self, lo, width)?;
                let last = self.b.ins().iadd_imm_s(hi, -width);
                block_of(self, last, width)?;
                self.b.ins().jump(done, &[]);
                self.b.switch_to_block(next);
            }
        }
        self.byte_rest(var, lo, hi, body, copy.lanes)?;
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
        Ok(())
    }

    /// Elements `lo..hi` of a [`ByteCopy`] loop: four lanes at a time where the lane loop
    /// handles the body, else one at a time.
    fn byte_rest(
        &mut self,
        var: VarId,
        lo: Value,
        hi: Value,
        body: &[Stmt],
        lanes: bool,
    ) -> Result<()> {
        if lanes {
            self.vector_loop_lanes(var, lo, hi, body)
        } else {
            self.scalar_loop(var, lo, hi, body)
        }
    }

    /// The `i8x16` splats of a [`ByteVal`]'s counter-independent values.
    fn byte_splats(&mut self, v: &ByteVal, out: &mut HashMap<*const Expr, Value>) -> Result<()> {
        match v {
            ByteVal::Load(..) => {}
            ByteVal::Uniform(e) => {
                let x = self.expr(e)?;
                out.insert(*e as *const Expr, self.b.ins().splat(types::I8X16, x));
            }
            ByteVal::Bin(_, a, b) => {
                self.byte_splats(a, out)?;
                self.byte_splats(b, out)?;
            }
        }
        Ok(())
    }

    /// 16 lanes of a [`ByteVal`] at the counter's current value.
    fn byte_value(
        &mut self,
        v: &ByteVal,
        splats: &HashMap<*const Expr, Value>,
        signed: bool,
        width: i64,
    ) -> Result<Value> {
        Ok(match v {
            ByteVal::Load(p, index, stride) if width < 16 => {
                // `width` elements in the low lanes, reading exactly the elements the lanes
                // take: at stride 2 the even ones of `0..width` and of `width - 1..2·width - 1`.
                let base = self.expr(index)?;
                let (st, vt) = short_types(width);
                let le = MemFlagsData::new().with_endianness(Endianness::Little);
                let f = MemFlagsData::trusted();
                let a0 = self.address(*p, base, false, false);
                let w0 = self.b.ins().load(st, f, a0, 0);
                let v = self.b.ins().scalar_to_vector(vt, w0);
                if *stride == 1 {
                    self.b.ins().bitcast(types::I8X16, le, v)
                } else {
                    let i1 = self.b.ins().iadd_imm_s(base, width - 1);
                    let a1 = self.address(*p, i1, false, false);
                    let w1 = self.b.ins().load(st, f, a1, 0);
                    let v = self.b.ins().insertlane(v, w1, 1);
                    let bytes = self.b.ins().bitcast(types::I8X16, le, v);
                    let h = (width / 2) as u8;
                    let mask: Vec<u8> = (0..h)
                        .map(|j| 2 * j)
                        .chain((0..h).map(|j| width as u8 + 1 + 2 * j))
                        .chain(std::iter::repeat_n(0, 16 - 2 * h as usize))
                        .collect();
                    let mask = self.b.func.dfg.immediates.push(mask.into());
                    self.b.ins().shuffle(bytes, bytes, mask)
                }
            }
            ByteVal::Load(p, index, stride) => {
                let base = self.expr(index)?;
                let a0 = self.address(*p, base, false, false);
                let x = self.b.ins().load(types::I8X16, vflags(), a0, 0);
                if *stride == 1 {
                    x
                } else {
                    // Elements 0, 2, .., 30: the even bytes of the block at 0 and the odd
                    // ones of the block at 15, reading nothing past element 30.
                    let i15 = self.b.ins().iadd_imm_s(base, 15);
                    let a15 = self.address(*p, i15, false, false);
                    let y = self.b.ins().load(types::I8X16, vflags(), a15, 0);
                    let mask: Vec<u8> = (0..8u8)
                        .map(|j| 2 * j)
                        .chain((0..8u8).map(|j| 17 + 2 * j))
                        .collect();
                    let mask = self.b.func.dfg.immediates.push(mask.into());
                    self.b.ins().shuffle(x, y, mask)
                }
            }
            ByteVal::Uniform(e) => match splats.get(&(*e as *const Expr)) {
                Some(x) => *x,
                None => return self.unsupported("byte loop value"),
            },
            ByteVal::Bin(op, a, b) => {
                let (x, y) = (
                    self.byte_value(a, splats, signed, width)?,
                    self.byte_value(b, splats, signed, width)?,
                );
                match (op, signed) {
                    (BinOp::Max, false) => self.b.ins().umax(x, y),
                    (BinOp::Max, true) => self.b.ins().smax(x, y),
                    (BinOp::Min, false) => self.b.ins().umin(x, y),
                    (BinOp::Min, true) => self.b.ins().smin(x, y),
                    _ => return self.unsupported("byte loop op"),
                }
            }
        })
    }

    /// One copy of the vector body, less its hoisted statements.
    fn vbody(&mut self, st: &mut VecBody, body: &[Stmt]) -> Result<()> {
        for (i, s) in body.iter().enumerate() {
            if !st.hoisted[i] {
                self.vstmt(st, s)?;
            }
        }
        Ok(())
    }

    /// `acc ⊕ e` for reduction `red`, into its accumulator for the current copy. On x86, max
    /// and min accumulate with `maxps`/`minps` (one instruction where IEEE `fmax`/`fmin` take
    /// eight): both operand orders, and-ed (max) or or-ed (min) so that `max(-0, +0)` is +0 and
    /// `min` is -0 as IEEE has it; `maxps` drops a NaN operand, so the NaN lanes are recorded
    /// in a mask that turns the lanes into NaNs after the loop.
    fn reduce_step(&mut self, red: &Red, slot: usize, e: Value) {
        let va = red.acc[slot];
        let cur = self.b.use_var(va);
        let new = match (red.op, red.nan) {
            (BinOp::Max | BinOp::Min, Some(nv)) => {
                let r = self.both_ways(red.op, e, cur);
                let isnan = self.b.ins().fcmp(FloatCC::Unordered, e, e);
                let m = self.b.use_var(nv);
                let m = self.b.ins().bor(m, isnan);
                self.b.def_var(nv, m);
                r
            }
            (op, _) => self.fop(op, cur, e),
        };
        self.b.def_var(va, new);
    }

    /// `maxps` (`minps`) of `x, y` and of `y, x`, and-ed (or-ed): IEEE `fmax` (`fmin`) with the
    /// signs of zeros (`max(-0, +0) = +0`, `min = -0`) wherever neither lane is NaN; the callers
    /// make the NaN lanes NaN.
    fn both_ways(&mut self, op: BinOp, x: Value, y: Value) -> Value {
        let a = self.pseudo(op, x, y);
        let b = self.pseudo(op, y, x);
        if op == BinOp::Max {
            self.b.ins().band(a, b)
        } else {
            self.b.ins().bor(a, b)
        }
    }

    /// x86's `maxps x, y` (`x > y ? x : y`) or `minps x, y` (`x < y ? x : y`): `y` when either
    /// is NaN, and `y` of two equal zeros. Written as the `bitselect` of a comparison that
    /// Cranelift's x64 backend lowers to that one instruction.
    fn pseudo(&mut self, op: BinOp, x: Value, y: Value) -> Value {
        let m = if op == BinOp::Max {
            self.b.ins().fcmp(FloatCC::LessThan, y, x)
        } else {
            self.b.ins().fcmp(FloatCC::LessThan, x, y)
        };
        let m = self.mask_as_f32(m);
        self.b.ins().bitselect(m, x, y)
    }

    /// `max(x, y)` or `min(x, y)` as IEEE `fmax`/`fmin` compute them (NaN when either is NaN,
    /// `max(-0, +0) = +0`, `min = -0`), in five instructions on x86 where Cranelift's `fmax`
    /// takes nine: `maxps` both ways round, and-ed (max) or or-ed (min) for the zeros' signs,
    /// then or-ed with the lanes where either is NaN (all bits set: a NaN). A max pool's rows
    /// run on these.
    fn vminmax(&mut self, op: BinOp, x: Value, y: Value) -> Value {
        if !self.x86 {
            return self.fop(op, x, y);
        }
        let r = self.both_ways(op, x, y);
        let nan = self.b.ins().fcmp(FloatCC::Unordered, x, y);
        let nan = self.mask_as_f32(nan);
        self.b.ins().bor(r, nan)
    }

    /// `max(x, c)` or `min(x, c)` (IEEE, as `fmax`/`fmin`) with `c` a constant that is not
    /// NaN: on x86 one `maxps c, x` / `minps c, x`, which gives `x` when `x` is NaN, plus, when
    /// `signed_zero` asks for the sign of a zero result to be IEEE's too and `c` is +0 (max)
    /// or -0 (min), one `andps`/`orps` that fixes it (the result is ≥ +0, resp. ≤ -0, so
    /// clearing, resp. setting, the sign bit changes only a zero's sign). Elsewhere
    /// `fmax`/`fmin`.
    fn vminmax_const(&mut self, op: BinOp, x: Value, c: f32, signed_zero: bool) -> Value {
        let cv = self.splat_f(c);
        if !self.x86 {
            return self.fop(op, x, cv);
        }
        let r = self.pseudo(op, cv, x);
        if !signed_zero || c != 0.0 {
            return r;
        }
        match (op, c.is_sign_positive()) {
            // `fabs`, but with a constant mask the loop keeps in a register (Cranelift
            // rebuilds `fabs`'s mask in every iteration).
            (BinOp::Max, true) => {
                let m = self.splat_f(f32::from_bits(0x7fff_ffff));
                self.b.ins().band(r, m)
            }
            (BinOp::Min, false) => self.b.ins().bor(r, cv),
            _ => r,
        }
    }

    fn splat_f(&mut self, v: f32) -> Value {
        let c = self.b.ins().f32const(v);
        self.b.ins().splat(types::F32X4, c)
    }

    /// `a * b + c` for the inline math: one fused multiply-add where the ISA has it (rounded
    /// once, so slightly more accurate), else a multiply and an add. Never for the kernel's
    /// own arithmetic, which must round as the evaluator does.
    fn vmuladd(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let p = self.b.ins().fmul(a, b);
            self.b.ins().fadd(p, c)
        }
    }

    /// A polynomial in `t` by Horner's rule, `c[0]` the highest coefficient.
    fn horner(&mut self, t: Value, c: &[f32]) -> Value {
        let mut y = self.mconst(c[0]);
        for &k in &c[1..] {
            let kv = self.mconst(k);
            y = self.vmuladd(y, t, kv);
        }
        y
    }

    /// `exp` on four lanes inline (Cephes' `expf`: range reduction by `ln 2` in two parts, a
    /// degree-5 polynomial, the power of two built in the exponent bits; within a few ulp of
    /// libm). Results below the smallest normal flush to 0; overflow gives +inf; NaN stays NaN.
    fn vexp(&mut self, x: Value) -> Value {
        const HI: f32 = 88.722_84;
        const LO: f32 = -87.336_55;
        // No clamp: outside [LO, HI] the result is replaced below, and a NaN stays NaN.
        let xc = x;
        let log2e = self.mconst(std::f32::consts::LOG2_E);
        let t = self.b.ins().fmul(xc, log2e);
        let n = self.b.ins().nearest(t);
        // r = x - n·ln2, ln2 = c1 + c2 with c1 short enough that n·c1 is exact.
        let c1 = self.mconst(-0.693_359_4);
        let c2 = self.mconst(2.121_944_4e-4);
        let r = self.vmuladd(n, c1, xc);
        let r = self.vmuladd(n, c2, r);
        let y = self.horner(
            r,
            &[
                1.987_569_1e-4,
                1.398_199_9e-3,
                8.333_452e-3,
                4.166_579_6e-2,
                1.666_666_5e-1,
                0.5,
            ],
        );
        let rr = self.b.ins().fmul(r, r);
        let y = self.vmuladd(y, rr, r);
        let one = self.mconst(1.0);
        let mut y = self.b.ins().fadd(y, one);
        // 2^n from exponent bits, in two halves so that n = 128 (x near the overflow
        // threshold) needs no exponent field out of range. n is an integer in [-126, 128]
        // for x in [LO, HI], so x86's plain truncation is exact there; elsewhere (and for NaN,
        // whose `y` is NaN) it may give anything, which the selects below replace.
        let ni = if self.x86 {
            self.b.ins().x86_cvtt2dq(types::I32X4, n)
        } else {
            self.b.ins().fcvt_to_sint_sat(types::I32X4, n)
        };
        let n1 = self.b.ins().sshr_imm_s(ni, 1);
        let n2 = self.b.ins().isub(ni, n1);
        let bias = self.b.ins().iconst(types::I32, 127);
        let bias = self.b.ins().splat(types::I32X4, bias);
        let f = MemFlagsData::new().with_endianness(Endianness::Little);
        for h in [n1, n2] {
            let e = self.b.ins().iadd(h, bias);
            let e = self.b.ins().ishl_imm_s(e, 23);
            let pow2 = self.b.ins().bitcast(types::F32X4, f, e);
            y = self.b.ins().fmul(y, pow2);
        }
        // Overflow to +inf, underflow to 0.
        let big = self.mconst(HI);
        let is_big = self.b.ins().fcmp(FloatCC::GreaterThan, x, big);
        let is_big = self.mask_as_f32(is_big);
        let inf = self.mconst(f32::INFINITY);
        let y = self.b.ins().bitselect(is_big, inf, y);
        let lo = self.mconst(LO);
        let is_small = self.b.ins().fcmp(FloatCC::LessThan, x, lo);
        let is_small = self.mask_as_f32(is_small);
        self.b.ins().band_not(y, is_small)
    }

    /// `tanh` on four lanes inline (Cephes' `tanhf`): an odd polynomial below |x| = 0.625,
    /// `1 - 2 / (exp(2|x|) + 1)` with the sign of x above (which saturates to ±1 as `exp`
    /// overflows); NaN stays NaN.
    fn vtanh(&mut self, x: Value) -> Value {
        let ax = self.b.ins().fabs(x);
        // Small |x|: x + x³·P(x²).
        let z = self.b.ins().fmul(x, x);
        let p = self.horner(
            z,
            &[
                -5.704_988_7e-3,
                2.063_909e-2,
                -5.373_971_6e-2,
                1.333_144_2e-1,
                -3.333_328e-1,
            ],
        );
        let p = self.b.ins().fmul(p, z);
        let small = self.vmuladd(p, x, x);
        // Large |x|: 1 - 2 / (exp(2|x|) + 1), then the sign of x.
        let two_ax = self.b.ins().fadd(ax, ax);
        let e = self.vexp(two_ax);
        let one = self.mconst(1.0);
        let two = self.mconst(2.0);
        let d = self.b.ins().fadd(e, one);
        let q = self.b.ins().fdiv(two, d);
        let big = self.b.ins().fsub(one, q);
        // copysign: `big` is non-negative, so or-ing in x's sign bit (x86 has no vector
        // fcopysign in Cranelift).
        let neg0 = self.mconst(-0.0);
        let sign = self.b.ins().band(x, neg0);
        let big = self.b.ins().bor(big, sign);
        let lim = self.mconst(0.625);
        let is_small = self.b.ins().fcmp(FloatCC::LessThan, ax, lim);
        let is_small = self.mask_as_f32(is_small);
        self.b.ins().bitselect(is_small, small, big)
    }

    /// `erf` on four lanes inline: FreeBSD's `s_erff.c` rational function (the `libm` crate's
    /// `erff`, which the evaluator calls) below |x| = 0.84375, Abramowitz & Stegun 7.1.28 above
    /// (within 1e-6 relative of `erff` everywhere: the test checks it). NaN stays NaN, ±inf
    /// gives ±1.
    fn verf(&mut self, x: Value) -> Value {
        const PP: [f32; 5] = [
            1.283_791_7e-1,
            -3.250_421e-1,
            -2.848_175e-2,
            -5.770_270_2e-3,
            -2.376_301_7e-5,
        ];
        const QQ: [f32; 6] = [
            1.0,
            3.979_172e-1,
            6.502_225e-2,
            5.081_306e-3,
            1.324_947_4e-4,
            -3.960_228_2e-6,
        ];
        const AS: [f32; 7] = [
            1.0,
            7.052_308e-2,
            4.228_201e-2,
            9.270_527e-3,
            1.520_143e-4,
            2.765_672e-4,
            4.306_38e-5,
        ];
        let ax = self.b.ins().fabs(x);
        let one = self.mconst(1.0);
        // |x| < 0.84375: x + x·P(x²)/Q(x²), s_erff's own (keeps tiny arguments exact).
        let z = self.b.ins().fmul(x, x);
        // The tables are lowest coefficient first.
        let rev = |c: &[f32]| c.iter().rev().copied().collect::<Vec<f32>>();
        let p = self.horner(z, &rev(&PP));
        let q = self.horner(z, &rev(&QQ));
        let r = self.b.ins().fdiv(p, q);
        let small = self.vmuladd(x, r, x);
        // Elsewhere erf(|x|) = 1 - (1 + a1|x| + ... + a6|x|^6)^-16 (Abramowitz & Stegun
        // 7.1.28, absolute error <= 3e-7, i.e. relative <= 4e-7 where erf >= 0.77): one
        // polynomial, four squarings and a division instead of s_erff's three regions.
        let a = self.horner(ax, &rev(&AS));
        let a2 = self.b.ins().fmul(a, a);
        let a4 = self.b.ins().fmul(a2, a2);
        let a8 = self.b.ins().fmul(a4, a4);
        let a16 = self.b.ins().fmul(a8, a8);
        let inv = self.b.ins().fdiv(one, a16);
        let mag = self.b.ins().fsub(one, inv);
        let neg0 = self.mconst(-0.0);
        let sign = self.b.ins().band(x, neg0);
        let big = self.b.ins().bor(mag, sign);
        let lim = self.mconst(0.843_75);
        let is_small = self.b.ins().fcmp(FloatCC::LessThan, ax, lim);
        let is_small = self.mask_as_f32(is_small);
        let y = self.b.ins().bitselect(is_small, small, big);
        let nan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
        let nan = self.mask_as_f32(nan);
        self.b.ins().bitselect(nan, x, y)
    }

    /// A float add, mul, max or min (scalar or vector).
    fn fop(&mut self, op: BinOp, x: Value, y: Value) -> Value {
        match op {
            BinOp::Add => self.b.ins().fadd(x, y),
            BinOp::Mul => self.b.ins().fmul(x, y),
            BinOp::Max => self.b.ins().fmax(x, y),
            _ => self.b.ins().fmin(x, y),
        }
    }

    fn vstmt(&mut self, st: &mut VecBody, s: &Stmt) -> Result<()> {
        if let Stmt::Assign { var, value } = s
            && st.red.contains_key(var)
        {
            let Expr::Binary(_, x, y) = value else {
                return self.unsupported("reduction (analysis mismatch)");
            };
            let e = if matches!(&**x, Expr::Var(v) if v == var) {
                y
            } else {
                x
            };
            let e = self.vexpr(st, e)?;
            let e = self.as_vf(e);
            let red = &st.red[var];
            self.reduce_step(red, st.slot, e);
            return Ok(());
        }
        match s {
            Stmt::Let { var, value } | Stmt::Assign { var, value } => {
                let Some(c) = st.an.class(value) else {
                    return self.unsupported("vector loop statement (analysis mismatch)");
                };
                // Known constants and ranges, for clamps and casts below.
                let f32_var = self.k.var_ty(*var) == DType::F32;
                let konst = const_f32(st, value).filter(|_| f32_var);
                let range = f32_range(st, value).filter(|_| f32_var);
                if c == Class::Uniform {
                    let dd = self.depends_on_data(value);
                    let x = self.uniform(st, value)?;
                    self.data_dep[var.0 as usize] = dd;
                    self.b.def_var(self.vars[var.0 as usize], x);
                    st.vals.remove(var);
                } else {
                    let x = self.vexpr(st, value)?;
                    st.vals.insert(*var, x);
                }
                match konst {
                    Some(k) => st.consts.insert(*var, k),
                    None => st.consts.remove(var),
                };
                match range {
                    Some(r) => st.ranges.insert(*var, r),
                    None => st.ranges.remove(var),
                };
                st.an.classes.insert(*var, c);
                Ok(())
            }
            Stmt::Store {
                param,
                index,
                value,
            } => {
                let VV::Aff(base, stride) = self.vexpr(st, index)? else {
                    return self.unsupported("vector store index (analysis mismatch)");
                };
                let x = self.vexpr(st, value)?;
                if stride != 1 {
                    // An `f32` store at another stride: lane by lane.
                    let x = self.as_vf(x);
                    for l in 0..LANES {
                        let i = self.b.ins().iadd_imm_s(base, stride * l);
                        let addr = self.address(*param, i, false, false);
                        let v = self.b.ins().extractlane(x, l as u8);
                        self.b.ins().store(vflags(), v, addr, 0);
                    }
                    return Ok(());
                }
                let addr = self.address(*param, base, false, false);
                let pty = self.k.params[param.0 as usize].dtype;
                if lane_int(pty) {
                    let v = match x {
                        VV::I(v) => v,
                        // A uniform value (a fill): widen the scalar and broadcast it.
                        VV::Uni(v) => {
                            let w = match pty {
                                DType::U8 => self.b.ins().uextend(types::I32, v),
                                DType::I8 => self.b.ins().sextend(types::I32, v),
                                _ => v,
                            };
                            self.b.ins().splat(types::I32X4, w)
                        }
                        _ => return self.unsupported("integer vector store (analysis mismatch)"),
                    };
                    self.store_int_lanes(pty, v, addr);
                    return Ok(());
                }
                let x = self.as_vf(x);
                self.b.ins().store(vflags(), x, addr, 0);
                Ok(())
            }
            _ => self.unsupported("vector loop statement"),
        }
    }

    /// A uniform expression of the vector body: computed before the loop when hoisted,
    /// else by the scalar translator.
    fn uniform(&mut self, st: &VecBody, e: &Expr) -> Result<Value> {
        match st.invariant.get(&(e as *const Expr)) {
            Some(&v) => Ok(v),
            None => self.expr(e),
        }
    }

    fn as_vf(&mut self, x: VV) -> Value {
        match x {
            VV::Uni(v) => self.b.ins().splat(types::F32X4, v),
            VV::F(v) | VV::M(v) | VV::Aff(v, _) | VV::I(v) => v,
        }
    }

    fn as_vm(&mut self, x: VV) -> Value {
        match x {
            VV::Uni(b) => {
                let w = self.b.ins().uextend(types::I32, b);
                let m = self.b.ins().ineg(w);
                self.b.ins().splat(types::I32X4, m)
            }
            VV::F(v) | VV::M(v) | VV::Aff(v, _) | VV::I(v) => v,
        }
    }

    /// `f32` lanes → `to` (`u8`, `i8`, `i32`) in `i32x4` lanes: truncated, saturated to the
    /// type, NaN → 0. `range` bounds the non-NaN values of `f` when known (clamps).
    ///
    /// `fcvt_to_sint_sat` is eight instructions on x64; on x86 the lanes are instead clamped
    /// in float to the type's range (`maxps`/`minps`, which keep a NaN; skipped when `range`
    /// is inside it already), so that `cvttps2dq` is exact on every lane but NaN ones, which
    /// it makes `i32::MIN`: `pmaxsd` with 0 maps those to 0 for `u8`, a mask of the ordered
    /// lanes does for `i8` and `i32`. Clamping before truncating gives what truncating before
    /// clamping does, since the bounds are integers.
    fn cast_lanes(&mut self, f: Value, to: DType, range: Option<(f32, f32)>) -> Value {
        // The type's range, as exact floats (i32's upper bound is not one: the clamp
        // would give 2147483520 where saturation gives i32::MAX, so i32 needs `range`).
        let (lo, hi) = match to {
            DType::U8 => (0.0, 255.0),
            DType::I8 => (-128.0, 127.0),
            _ => (-2_147_483_648.0, 2_147_483_520.0),
        };
        let inside = range.is_some_and(|(l, h)| l >= lo && h <= hi);
        if !self.x86 || (to == DType::I32 && !inside) {
            let i = self.b.ins().fcvt_to_sint_sat(types::I32X4, f);
            return match to {
                DType::U8 => self.clamp_lanes(i, 0, 255),
                DType::I8 => self.clamp_lanes(i, -128, 127),
                _ => i,
            };
        }
        let fc = if inside {
            f
        } else {
            let t = self.vminmax_const(BinOp::Max, f, lo, false);
            self.vminmax_const(BinOp::Min, t, hi, false)
        };
        let i = self.b.ins().x86_cvtt2dq(types::I32X4, fc);
        if to == DType::U8 {
            let z = self.b.ins().iconst(types::I32, 0);
            let z = self.b.ins().splat(types::I32X4, z);
            self.b.ins().smax(i, z)
        } else {
            let ord = self.b.ins().fcmp(FloatCC::Ordered, fc, fc);
            self.b.ins().band(i, ord)
        }
    }

    /// `i32x4` lanes clamped to `[lo, hi]`.
    fn clamp_lanes(&mut self, v: Value, lo: i64, hi: i64) -> Value {
        let l = self.b.ins().iconst(types::I32, lo);
        let l = self.b.ins().splat(types::I32X4, l);
        let h = self.b.ins().iconst(types::I32, hi);
        let h = self.b.ins().splat(types::I32X4, h);
        let v = self.b.ins().smax(v, l);
        self.b.ins().smin(v, h)
    }

    /// Four elements of `ty` (`i8`, `u8`, `i32`) at `addr`, widened exactly to `i32x4`. Reads
    /// exactly the four elements (no over-read at a buffer's end).
    fn load_int_lanes(&mut self, ty: DType, addr: Value) -> Value {
        let f = MemFlagsData::trusted();
        if ty == DType::I32 {
            return self.b.ins().load(types::I32X4, vflags(), addr, 0);
        }
        let w = self.b.ins().load(types::I32, f, addr, 0);
        let v = self.b.ins().scalar_to_vector(types::I32X4, w);
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        let bytes = self.b.ins().bitcast(types::I8X16, le, v);
        if ty == DType::U8 {
            let h = self.b.ins().uwiden_low(bytes);
            self.b.ins().uwiden_low(h)
        } else {
            let h = self.b.ins().swiden_low(bytes);
            self.b.ins().swiden_low(h)
        }
    }

    /// Elements 0, 2, 4, 6 of `ty` (`i8`, `u8`, `i32`) from `a0` (element 0) and `a3`
    /// (element 3), widened exactly to `i32x4`: two loads of four elements, one shuffle. Reads
    /// nothing past element 6.
    fn load_int_lanes_stride2(&mut self, ty: DType, a0: Value, a3: Value) -> Value {
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        if ty == DType::I32 {
            let x = self.b.ins().load(types::I32X4, vflags(), a0, 0);
            let y = self.b.ins().load(types::I32X4, vflags(), a3, 0);
            let mask: [u8; 16] = [0, 1, 2, 3, 8, 9, 10, 11, 20, 21, 22, 23, 28, 29, 30, 31];
            let mask = self.b.func.dfg.immediates.push(mask.to_vec().into());
            let xb = self.b.ins().bitcast(types::I8X16, le, x);
            let yb = self.b.ins().bitcast(types::I8X16, le, y);
            let r = self.b.ins().shuffle(xb, yb, mask);
            return self.b.ins().bitcast(types::I32X4, le, r);
        }
        let f = MemFlagsData::trusted();
        let w0 = self.b.ins().load(types::I32, f, a0, 0);
        let w3 = self.b.ins().load(types::I32, f, a3, 0);
        let v = self.b.ins().scalar_to_vector(types::I32X4, w0);
        let v = self.b.ins().insertlane(v, w3, 1);
        // Bytes: e0 e1 e2 e3 | e3 e4 e5 e6: take 0, 2, 5, 7 into the low four.
        let bytes = self.b.ins().bitcast(types::I8X16, le, v);
        let mask: [u8; 16] = [0, 2, 5, 7, 0, 2, 5, 7, 0, 2, 5, 7, 0, 2, 5, 7];
        let mask = self.b.func.dfg.immediates.push(mask.to_vec().into());
        let picked = self.b.ins().shuffle(bytes, bytes, mask);
        if ty == DType::U8 {
            let h = self.b.ins().uwiden_low(picked);
            self.b.ins().uwiden_low(h)
        } else {
            let h = self.b.ins().swiden_low(picked);
            self.b.ins().swiden_low(h)
        }
    }

    /// Stores four `i32x4` lanes holding values of `ty` (in its range) as `ty` at `addr`.
    fn store_int_lanes(&mut self, ty: DType, v: Value, addr: Value) {
        if ty == DType::I32 {
            self.b.ins().store(vflags(), v, addr, 0);
            return;
        }
        let h = self.b.ins().snarrow(v, v);
        let b = if ty == DType::U8 {
            self.b.ins().unarrow(h, h)
        } else {
            self.b.ins().snarrow(h, h)
        };
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        let w = self.b.ins().bitcast(types::I32X4, le, b);
        let w = self.b.ins().extractlane(w, 0);
        self.b.ins().store(MemFlagsData::trusted(), w, addr, 0);
    }

    /// `v` as exact `i32x4` lanes of an integer type `t` (a uniform value widened and
    /// broadcast).
    fn as_vi(&mut self, t: DType, v: VV) -> Value {
        match v {
            VV::I(v) => v,
            VV::Uni(v) => {
                let w = match t {
                    DType::U8 => self.b.ins().uextend(types::I32, v),
                    DType::I8 => self.b.ins().sextend(types::I32, v),
                    _ => v,
                };
                self.b.ins().splat(types::I32X4, w)
            }
            VV::Aff(v, _) | VV::F(v) | VV::M(v) => v,
        }
    }

    fn mask_as_f32(&mut self, m: Value) -> Value {
        let f = MemFlagsData::new().with_endianness(Endianness::Little);
        self.b.ins().bitcast(types::F32X4, f, m)
    }

    /// Applies a scalar libm call lane by lane.
    fn per_lane(&mut self, name: &str, args: &[Value]) -> Value {
        let mut acc = args[0];
        for j in 0..LANES as u8 {
            let lanes: Vec<Value> = args
                .iter()
                .map(|&a| self.b.ins().extractlane(a, j))
                .collect();
            let r = if lanes.len() == 1 {
                self.call1(name, types::F32, types::F32, lanes[0])
            } else {
                self.call2(name, types::F32, types::F32, lanes[0], lanes[1])
            };
            acc = self.b.ins().insertlane(acc, r, j);
        }
        acc
    }

    fn vexpr(&mut self, st: &mut VecBody, e: &Expr) -> Result<VV> {
        let Some(c) = st.an.class(e) else {
            return self.unsupported("vector expression (analysis mismatch)");
        };
        if c == Class::Uniform {
            return Ok(VV::Uni(self.uniform(st, e)?));
        }
        Ok(match e {
            Expr::Var(v) if *v == st.an.counter => {
                VV::Aff(self.b.use_var(self.vars[v.0 as usize]), 1)
            }
            Expr::Var(v) => match st.vals.get(v) {
                Some(x) => *x,
                None => return self.unsupported("vector variable (analysis mismatch)"),
            },
            Expr::Load { param, index } => {
                if let Some(v) = byte_index(index)
                    && c == Class::VecF32
                {
                    // A byte-indexed table (`Analysis::class`): each lane at its byte.
                    let x = match st.vals.get(&v) {
                        Some(VV::I(x)) => *x,
                        _ => return self.unsupported("table index lanes (analysis mismatch)"),
                    };
                    let bias = if self.k.var_ty(v) == DType::I8 {
                        128
                    } else {
                        0
                    };
                    return Ok(VV::F(self.f32_lanes(*param, |tx, j| {
                        let l = tx.b.ins().extractlane(x, j);
                        let idx = tx.b.ins().sextend(types::I64, l);
                        tx.b.ins().iadd_imm_s(idx, bias)
                    })));
                }
                let VV::Aff(base, s) = self.vexpr(st, index)? else {
                    return self.unsupported("vector load index (analysis mismatch)");
                };
                let pty = self.k.params[param.0 as usize].dtype;
                if lane_int(pty) {
                    let addr = self.address(*param, base, false, false);
                    if s == 2 {
                        let i3 = self.b.ins().iadd_imm_s(base, 3);
                        let a3 = self.address(*param, i3, false, false);
                        return Ok(VV::I(self.load_int_lanes_stride2(pty, addr, a3)));
                    }
                    return Ok(VV::I(self.load_int_lanes(pty, addr)));
                }
                if s == 1 {
                    let addr = self.address(*param, base, false, false);
                    VV::F(self.b.ins().load(types::F32X4, vflags(), addr, 0))
                } else if s == 2 {
                    // Elements 0, 2, 4, 6 from two loads at 0 and 3 (lanes 0, 2 of the
                    // first, 1, 3 of the second: one `shufps`), reading nothing past the
                    // last element used.
                    let a0 = self.address(*param, base, false, false);
                    let i3 = self.b.ins().iadd_imm_s(base, 3);
                    let a3 = self.address(*param, i3, false, false);
                    let x = self.b.ins().load(types::F32X4, vflags(), a0, 0);
                    let y = self.b.ins().load(types::F32X4, vflags(), a3, 0);
                    let mask: [u8; 16] = [0, 1, 2, 3, 8, 9, 10, 11, 20, 21, 22, 23, 28, 29, 30, 31];
                    let mask = self.b.func.dfg.immediates.push(mask.to_vec().into());
                    let le = MemFlagsData::new().with_endianness(Endianness::Little);
                    let xb = self.b.ins().bitcast(types::I8X16, le, x);
                    let yb = self.b.ins().bitcast(types::I8X16, le, y);
                    let r = self.b.ins().shuffle(xb, yb, mask);
                    VV::F(self.b.ins().bitcast(types::F32X4, le, r))
                } else {
                    VV::F(self.f32_lanes(*param, |tx, j| {
                        tx.b.ins().iadd_imm_s(base, i64::from(j) * s)
                    }))
                }
            }
            Expr::Unary(op, a) => {
                let x = self.vexpr(st, a)?;
                if c == Class::VecMask && self.k.type_of(a) == DType::Bool {
                    let m = self.as_vm(x);
                    return Ok(VV::M(match op {
                        UnOp::Not => self.b.ins().bnot(m),
                        _ => m,
                    }));
                }
                let x = self.as_vf(x);
                match op {
                    UnOp::Neg => VV::F(self.b.ins().fneg(x)),
                    UnOp::Abs => VV::F(self.b.ins().fabs(x)),
                    UnOp::Sqrt => VV::F(self.b.ins().sqrt(x)),
                    UnOp::Floor => VV::F(self.b.ins().floor(x)),
                    UnOp::Ceil => VV::F(self.b.ins().ceil(x)),
                    UnOp::Round => VV::F(self.b.ins().nearest(x)),
                    UnOp::IsNan => VV::M(self.b.ins().fcmp(FloatCC::Unordered, x, x)),
                    UnOp::IsInf => {
                        let a = self.b.ins().fabs(x);
                        let inf = self.b.ins().f32const(f32::INFINITY);
                        let inf = self.b.ins().splat(types::F32X4, inf);
                        VV::M(self.b.ins().fcmp(FloatCC::Equal, a, inf))
                    }
                    UnOp::Not => return self.unsupported("not on f32"),
                    UnOp::Exp if self.opts.inline_math => VV::F(self.vexp(x)),
                    UnOp::Tanh if self.opts.inline_math => VV::F(self.vtanh(x)),
                    UnOp::Erf if self.opts.inline_math => VV::F(self.verf(x)),
                    _ => {
                        let name = libm_symbol(*op, types::F32).expect("transcendental");
                        VV::F(self.per_lane(&name, &[x]))
                    }
                }
            }
            Expr::Binary(op, a, b) => {
                let ty = self.k.type_of(a);
                let (x, y) = (self.vexpr(st, a)?, self.vexpr(st, b)?);
                match ty {
                    DType::I64 => {
                        let parts = |v: VV| match v {
                            VV::Uni(v) => (v, 0),
                            VV::Aff(v, s) => (v, s),
                            VV::F(v) | VV::M(v) | VV::I(v) => (v, 0),
                        };
                        let ((xb, xs), (yb, ys)) = (parts(x), parts(y));
                        let Class::Affine(s) = c else {
                            return self.unsupported("index class (analysis mismatch)");
                        };
                        let _ = (xs, ys);
                        VV::Aff(
                            match op {
                                BinOp::Add => self.b.ins().iadd(xb, yb),
                                BinOp::Sub => self.b.ins().isub(xb, yb),
                                _ => self.b.ins().imul(xb, yb),
                            },
                            s,
                        )
                    }
                    t if lane_int(t) && op.is_comparison() => {
                        // Both sides are exact in i32 lanes (u8, i8 and i32 values), so the
                        // signed comparison is the types' own.
                        let (x, y) = (self.as_vi(t, x), self.as_vi(t, y));
                        let cc = match op {
                            BinOp::Eq => IntCC::Equal,
                            BinOp::Ne => IntCC::NotEqual,
                            BinOp::Lt => IntCC::SignedLessThan,
                            BinOp::Le => IntCC::SignedLessThanOrEqual,
                            BinOp::Gt => IntCC::SignedGreaterThan,
                            _ => IntCC::SignedGreaterThanOrEqual,
                        };
                        VV::M(self.b.ins().icmp(cc, x, y))
                    }
                    DType::F32 => {
                        let (x, y) = (self.as_vf(x), self.as_vf(y));
                        let cc = match op {
                            BinOp::Eq => Some(FloatCC::Equal),
                            BinOp::Ne => Some(FloatCC::NotEqual),
                            BinOp::Lt => Some(FloatCC::LessThan),
                            BinOp::Le => Some(FloatCC::LessThanOrEqual),
                            BinOp::Gt => Some(FloatCC::GreaterThan),
                            BinOp::Ge => Some(FloatCC::GreaterThanOrEqual),
                            _ => None,
                        };
                        if let Some(cc) = cc {
                            return Ok(VV::M(self.b.ins().fcmp(cc, x, y)));
                        }
                        VV::F(match op {
                            BinOp::Add => self.b.ins().fadd(x, y),
                            BinOp::Sub => self.b.ins().fsub(x, y),
                            BinOp::Mul => self.b.ins().fmul(x, y),
                            BinOp::Div => self.b.ins().fdiv(x, y),
                            BinOp::Max | BinOp::Min => {
                                // A clamp by a constant: one instruction on x86.
                                match (const_f32(st, a), const_f32(st, b)) {
                                    (_, Some(k)) => self.vminmax_const(*op, x, k, true),
                                    (Some(k), _) => self.vminmax_const(*op, y, k, true),
                                    _ => self.vminmax(*op, x, y),
                                }
                            }
                            BinOp::Rem => self.per_lane("fmodf", &[x, y]),
                            BinOp::Pow => self.per_lane("powf", &[x, y]),
                            _ => return self.unsupported("vector op (analysis mismatch)"),
                        })
                    }
                    _ => {
                        let (x, y) = (self.as_vm(x), self.as_vm(y));
                        VV::M(match op {
                            BinOp::And | BinOp::Min | BinOp::Mul => self.b.ins().band(x, y),
                            BinOp::Or | BinOp::Max | BinOp::Add => self.b.ins().bor(x, y),
                            BinOp::Xor | BinOp::Ne => self.b.ins().bxor(x, y),
                            _ => self.b.ins().icmp(IntCC::Equal, x, y),
                        })
                    }
                }
            }
            Expr::Select { cond, then, els } => {
                let cv = self.vexpr(st, cond)?;
                let (t, f) = (self.vexpr(st, then)?, self.vexpr(st, els)?);
                let mask_result = c == Class::VecMask;
                let (t, f) = if mask_result {
                    (self.as_vm(t), self.as_vm(f))
                } else {
                    (self.as_vf(t), self.as_vf(f))
                };
                let r = match cv {
                    VV::Uni(cond_v) => {
                        let cty = self.k.type_of(cond);
                        let cb = self.truthy(cty, cond_v);
                        self.b.ins().select(cb, t, f)
                    }
                    other => {
                        let m = self.as_vm(other);
                        let m = if mask_result { m } else { self.mask_as_f32(m) };
                        self.b.ins().bitselect(m, t, f)
                    }
                };
                if mask_result { VV::M(r) } else { VV::F(r) }
            }
            Expr::Cast(to, a) => {
                let from = self.k.type_of(a);
                let x = self.vexpr(st, a)?;
                match (x, *to) {
                    // int lanes → f32: exact for 8-bit, round-to-nearest for i32 (as scalar).
                    (VV::I(v), DType::F32) => VV::F(self.b.ins().fcvt_from_sint(types::F32X4, v)),
                    // bool lanes (all-ones or zero) → 1.0 or 0.0.
                    (VV::M(m), DType::F32) => {
                        let one = self.splat_f(1.0);
                        let m = self.mask_as_f32(m);
                        VV::F(self.b.ins().band(m, one))
                    }
                    // f32 → int: truncate, saturate to the type, NaN → 0 (the scalar cast's
                    // semantics).
                    (x, to) if lane_int(to) && from == DType::F32 => {
                        let f = self.as_vf(x);
                        let range = f32_range(st, a);
                        VV::I(self.cast_lanes(f, to, range))
                    }
                    (x, _) => x,
                }
            }
            Expr::Lit(_) => return self.unsupported("vector literal (analysis mismatch)"),
        })
    }
}

impl<M: Module> Tx<'_, '_, M> {
    /// An `f32x4` of four scalar loads from `param`, lane `j` at the element index that
    /// `index(self, j)` computes (unchecked: the caller knows every index is in bounds).
    fn f32_lanes(
        &mut self,
        param: ParamId,
        mut index: impl FnMut(&mut Self, u8) -> Value,
    ) -> Value {
        let mut lane = |tx: &mut Self, j: u8| {
            let idx = index(tx, j);
            let addr = tx.address(param, idx, false, false);
            tx.b.ins()
                .load(types::F32, MemFlagsData::trusted(), addr, 0)
        };
        let first = lane(self, 0);
        let mut acc = self.b.ins().splat(types::F32X4, first);
        for j in 1..LANES as u8 {
            let x = lane(self, j);
            acc = self.b.ins().insertlane(acc, x, j);
        }
        acc
    }
}

/// The byte variable of a table index: `cast<i64>(v)`, or `cast<i64>(v) + 128` (an `i8`).
fn byte_index(e: &Expr) -> Option<VarId> {
    match e {
        Expr::Cast(DType::I64, a) => match &**a {
            Expr::Var(v) => Some(*v),
            _ => None,
        },
        Expr::Binary(BinOp::Add, a, b) if matches!(**b, Expr::Lit(Lit::Int(_, 128))) => {
            byte_index(a)
        }
        _ => None,
    }
}

/// The value of `e` when it is an `f32` constant that is not NaN: a literal, or a body
/// variable holding one.
fn const_f32(st: &VecBody, e: &Expr) -> Option<f32> {
    match e {
        Expr::Lit(Lit::Float(DType::F32, f)) => Some(*f as f32).filter(|f| !f.is_nan()),
        Expr::Var(v) => st.consts.get(v).copied(),
        _ => None,
    }
}

/// Bounds `[lo, hi]` on the values of `f32` expression `e` that are not NaN, where clamps by
/// constants give them (`min`, `max`, and the roundings, which are monotone); `None` when
/// unbounded.
fn f32_range(st: &VecBody, e: &Expr) -> Option<(f32, f32)> {
    let r = |e: &Expr| f32_range(st, e).unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (lo, hi) = match e {
        Expr::Lit(_) => {
            let c = const_f32(st, e)?;
            (c, c)
        }
        Expr::Var(v) => match (st.consts.get(v), st.ranges.get(v)) {
            (Some(&c), _) => (c, c),
            (_, Some(&r)) => r,
            _ => return None,
        },
        Expr::Binary(BinOp::Max, a, b) => {
            let ((la, ha), (lb, hb)) = (r(a), r(b));
            (la.max(lb), ha.max(hb))
        }
        Expr::Binary(BinOp::Min, a, b) => {
            let ((la, ha), (lb, hb)) = (r(a), r(b));
            (la.min(lb), ha.min(hb))
        }
        Expr::Unary(UnOp::Round | UnOp::Floor | UnOp::Ceil, a) => {
            let (l, h) = r(a);
            (l.floor(), h.ceil())
        }
        _ => return None,
    };
    (lo > f32::NEG_INFINITY || hi < f32::INFINITY).then_some((lo, hi))
}

/// `for a in 0..A { for b in 0..B { body } }` (literal extents, the inner loop the outer's
/// only statement and innermost, `B` not a multiple of four) as the one loop
/// `for b in 0..A·B { body' }`, when `a` and `b` appear in `body` only as `a·B + b` (possibly
/// after other terms: `(x + a·B) + b`), which `body'` reads as the new counter `b`. Iterations
/// run in the same order with the same indices, so this is exact whatever the loops' kinds;
/// rows of 7 or 14 elements (small feature maps) then vectorize as one long row instead of
/// leaving three of every seven elements to the scalar remainder.
pub fn collapse(st: &Stmt) -> Option<Stmt> {
    let Stmt::For {
        var: a,
        extent: Expr::Lit(Lit::Int(t, na)),
        body: outer,
        ..
    } = st
    else {
        return None;
    };
    let [
        Stmt::For {
            var: b,
            extent: Expr::Lit(Lit::Int(_, nb)),
            kind,
            body,
        },
    ] = outer.as_slice()
    else {
        return None;
    };
    if *na <= 1 || *nb <= 0 || nb % LANES == 0 {
        return None;
    }
    let n = na.checked_mul(*nb)?;
    let mut new_body = Vec::with_capacity(body.len());
    for s in body {
        let f = |e: &Expr| fuse_index(e, *a, *b, *nb);
        new_body.push(match s {
            Stmt::Let { var, value } if *var != *a && *var != *b => Stmt::Let {
                var: *var,
                value: f(value)?,
            },
            Stmt::Assign { var, value } if *var != *a && *var != *b => Stmt::Assign {
                var: *var,
                value: f(value)?,
            },
            Stmt::Store {
                param,
                index,
                value,
            } => Stmt::Store {
                param: *param,
                index: f(index)?,
                value: f(value)?,
            },
            _ => return None,
        });
    }
    Some(Stmt::For {
        var: *b,
        extent: Expr::Lit(Lit::Int(*t, n)),
        kind: *kind,
        body: new_body,
    })
}

/// `e` with `a·B + b` (and `(x + a·B) + b`) read as `b`; `None` when `a` or `b` appears
/// otherwise.
fn fuse_index(e: &Expr, a: VarId, b: VarId, nb: i64) -> Option<Expr> {
    let is_ab = |e: &Expr| match e {
        Expr::Binary(BinOp::Mul, x, y) => {
            matches!(&**x, Expr::Var(v) if *v == a)
                && matches!(&**y, Expr::Lit(Lit::Int(_, k)) if *k == nb)
        }
        _ => false,
    };
    let f = |e: &Expr| fuse_index(e, a, b, nb).map(Box::new);
    if let Expr::Binary(BinOp::Add, l, r) = e
        && matches!(&**r, Expr::Var(v) if *v == b)
    {
        if is_ab(l) {
            return Some(Expr::Var(b));
        }
        if let Expr::Binary(BinOp::Add, x, y) = &**l
            && is_ab(y)
        {
            return Some(Expr::Binary(BinOp::Add, f(x)?, r.clone()));
        }
    }
    Some(match e {
        Expr::Var(v) if *v == a || *v == b => return None,
        Expr::Var(_) | Expr::Lit(_) => e.clone(),
        Expr::Load { param, index } => Expr::Load {
            param: *param,
            index: f(index)?,
        },
        Expr::Unary(op, x) => Expr::Unary(*op, f(x)?),
        Expr::Cast(t, x) => Expr::Cast(*t, f(x)?),
        Expr::Binary(op, x, y) => Expr::Binary(*op, f(x)?, f(y)?),
        Expr::Select { cond, then, els } => Expr::Select {
            cond: f(cond)?,
            then: f(then)?,
            els: f(els)?,
        },
    })
}
