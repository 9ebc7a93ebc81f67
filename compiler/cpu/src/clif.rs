//! One kernel → one Cranelift function: the scalar translation of statements and expressions.
//!
//! The semantics are those of `mlc_kir::eval`, the oracle: integer division by zero gives 0
//! (and never traps: `MIN / -1` wraps), `max`/`min` propagate NaN, float → int casts saturate
//! with NaN → 0, `f16`/`bf16` values live in `f32` registers and are rounded to their type after
//! every operation, bools are `i8` 0/1 in registers and `u8` 0/1 in memory, shifts by ≥ the
//! width give 0 (or the sign), and `Shr` is logical for unsigned types.
//!
//! Loads in the arms of a `select` are evaluated whatever the condition (a `select` has no
//! control flow), so their index is clamped into the buffer: the value is discarded anyway when
//! the arm is not taken. Loads and stores whose index depends on loaded data (gather) are
//! bounds-checked: out of range, they touch element 0 instead and set the status word, which
//! the executor turns into an error.

use crate::{CodegenError, Options};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    self, AbiParam, GlobalValue, InstBuilder, MemFlagsData, SigRef, StackSlotData, StackSlotKind,
    Type, Value, types,
};
use cranelift_frontend::{FunctionBuilder, Variable};
use cranelift_module::{DataDescription, DataId, FuncId, Module};
use mlc_ir::DType;
use mlc_kir::*;
use mlc_runtime::cpu::abi;
use std::collections::{BTreeSet, HashMap};

pub(crate) type Result<T> = std::result::Result<T, CodegenError>;

/// The register type holding a value of `d`: half floats compute in `f32`, bools are `i8`.
pub fn reg_ty(d: DType) -> Option<Type> {
    Some(match d {
        DType::F32 | DType::F16 | DType::BF16 => types::F32,
        DType::F64 => types::F64,
        DType::I8 | DType::U8 | DType::Bool => types::I8,
        DType::I16 | DType::U16 => types::I16,
        DType::I32 | DType::U32 => types::I32,
        DType::I64 | DType::U64 => types::I64,
        // Storage types only move and bit-cast: their codes, in the low bits of a byte.
        d if d.is_storage_only() => types::I8,
        _ => return None,
    })
}

/// The in-memory type of an element of `d`.
pub fn mem_ty(d: DType) -> Option<Type> {
    match d {
        DType::F16 | DType::BF16 => Some(types::I16),
        // Storage types are one code per byte, the sub-byte ones too: in memory they are not
        // packed, so parallel stores never share a byte (`plan::mem_bytes` unpacks them).
        _ => reg_ty(d),
    }
}

/// Whether the kernel's body is exactly one parallel loop with a literal extent: then calls
/// run sub-ranges of it and the executor may split it across threads. Returns the extent.
pub fn split_extent(k: &Kernel) -> Option<i64> {
    match k.body.as_slice() {
        [
            Stmt::For {
                kind: LoopKind::Parallel,
                extent: Expr::Lit(Lit::Int(_, n)),
                ..
            },
        ] => Some(*n),
        _ => None,
    }
}

/// An estimate of the kernel's work (innermost iterations plus multiply-adds), to decide
/// whether threads pay for themselves. Non-literal extents count as 1.
pub fn work_estimate(body: &[Stmt]) -> u64 {
    let mut w = 0u64;
    for st in body {
        match st {
            Stmt::For { extent, body, .. } => {
                let n = match extent {
                    Expr::Lit(Lit::Int(_, n)) => (*n).max(0) as u64,
                    _ => 1,
                };
                w = w.saturating_add(n.saturating_mul(work_estimate(body).max(1)));
            }
            Stmt::Matmul(mm) => {
                w = w.saturating_add((mm.m as u64) * (mm.n as u64) * (mm.k as u64));
            }
            Stmt::Depthwise(dw) => {
                w = w.saturating_add((dw.lens().2 * dw.kernel[0] * dw.kernel[1]) as u64);
            }
            Stmt::Softmax(sm) => {
                w = w.saturating_add((sm.rows as u64) * (sm.len as u64) * 3);
            }
            _ => w = w.saturating_add(1),
        }
    }
    w
}

/// The kernel function's signature: `(params: *const *mut u8, start: i64, end: i64)`.
pub fn kernel_signature<M: Module>(m: &M) -> ir::Signature {
    let mut sig = m.make_signature();
    sig.params
        .push(AbiParam::new(m.target_config().pointer_type()));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig
}

/// The signature of a contraction's tile function (`mlc_runtime::cpu::abi::TileFn`):
/// `(params: *const *mut u8, row0: i64, rows: i64, col0: i64, cols: i64)`.
pub fn tile_signature<M: Module>(m: &M) -> ir::Signature {
    let mut sig = m.make_signature();
    sig.params
        .push(AbiParam::new(m.target_config().pointer_type()));
    for _ in 0..4 {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig
}

/// The contraction of `k` that carries a fused tail, if any (at most one: the tail pass
/// fuses into kernels whose body is one contraction).
pub fn tail_of(k: &Kernel) -> Option<&Matmul> {
    fn find(body: &[Stmt]) -> Option<&Matmul> {
        body.iter().find_map(|s| match s {
            Stmt::Matmul(mm) if mm.tail.is_some() => Some(&**mm),
            Stmt::For { body, .. } => find(body),
            _ => None,
        })
    }
    find(&k.body)
}

/// An activation as the mlc_matmul descriptor's code and two parameters (`mm_slot::ACT`).
fn act_code(act: Activation) -> (i64, f32, f32) {
    match act {
        Activation::None => (0, 0.0, 0.0),
        Activation::Relu => (1, 0.0, 0.0),
        Activation::Clip { min, max } => (2, min, max),
        Activation::HardSigmoid { alpha, beta } => (3, alpha, beta),
        Activation::HardSwish => (4, 0.0, 0.0),
        // ABI 6.
        Activation::Gelu => (5, 0.0, 0.0),
        Activation::GeluTanh => (6, 0.0, 0.0),
        // ABI 7.
        Activation::Sigmoid => (7, 0.0, 0.0),
        Activation::Swish { alpha } => (8, alpha, 0.0),
    }
}

/// The tile function of `k`'s tail as a kernel of its own: `k`'s parameters and variables,
/// plus six `i64`s (the loop counters over the block and the block's `row0, rows, col0,
/// cols`, the last four returned: the function's arguments), and the body
///
/// ```text
/// for i in 0..rows { let row = row0 + i; for j in 0..cols { let col = col0 + j; <tail> } }
/// ```
///
/// (columns outside, rows inside for a column-major C), whose inner loop the vectorizer takes
/// like any other.
pub fn tile_kernel(k: &Kernel) -> Option<(Kernel, [VarId; 4])> {
    let mm = tail_of(k)?;
    let t = mm.tail.as_ref()?;
    let mut tk = k.clone();
    tk.name = format!("{}_tail", k.name);
    let [i, j, r0, rows, c0, cols] = [(); 6].map(|_| tk.var(DType::I64));
    let add = |a: VarId, b: VarId| Expr::bin(BinOp::Add, Expr::var(a), Expr::var(b));
    // The inner (vector) loop runs along C's contiguous dimension: columns, unless C is
    // column-major.
    let col_major = mm.c.row_stride == 1 && mm.c.col_stride != 1 && mm.m > 1 && mm.n > 1;
    let ((ov, oi, oo, on), (iv, ii, io, inn)) = if col_major {
        ((t.col, j, c0, cols), (t.row, i, r0, rows))
    } else {
        ((t.row, i, r0, rows), (t.col, j, c0, cols))
    };
    let mut inner = vec![Stmt::Let {
        var: iv,
        value: add(io, ii),
    }];
    inner.extend(t.body.iter().cloned());
    // The runtime applies a last activation itself: the function stores its argument.
    if let Some(ta) = crate::requant::tail_activation(k, mm)
        && let Some(Stmt::Store { value, .. }) = inner.last_mut()
    {
        *value = ta.arg;
    }
    tk.body = vec![Stmt::For {
        var: oi,
        extent: Expr::var(on),
        kind: LoopKind::Serial,
        body: vec![
            Stmt::Let {
                var: ov,
                value: add(oo, oi),
            },
            Stmt::For {
                var: ii,
                extent: Expr::var(inn),
                kind: LoopKind::Vector,
                body: inner,
            },
        ],
    }];
    Some((tk, [r0, rows, c0, cols]))
}

/// The helper table of the module (see `mlc_runtime::cpu::abi`) and the helpers the kernels
/// translated so far call, by table index.
pub(crate) struct Imports {
    pub table: DataId,
    pub used: BTreeSet<usize>,
}

impl Imports {
    pub fn new(table: DataId) -> Imports {
        Imports {
            table,
            used: BTreeSet::new(),
        }
    }
}

pub(crate) use abi::mm_slot;

/// Translation state for one kernel.
pub(crate) struct Tx<'a, 'f, M: Module> {
    pub m: &'a mut M,
    pub imports: &'a mut Imports,
    /// Signatures of the helpers called so far, by name.
    pub refs: HashMap<String, SigRef>,
    /// The helper table's address.
    pub table: Value,
    pub k: &'a Kernel,
    pub b: FunctionBuilder<'f>,
    pub vars: Vec<Variable>,
    /// Whether a variable's value depends on loaded data (so indices built from it are
    /// bounds-checked).
    pub data_dep: Vec<bool>,
    pub params: Vec<Value>,
    pub status: Value,
    pub ptr: Type,
    pub start: Value,
    pub end: Value,
    /// Nesting depth inside `select` arms: loads there are clamped into their buffer.
    pub guard: u32,
    pub opts: Options,
    /// The target is x86-64: x86-only instructions (`x86_cvtt2dq`) and the `bitselect`
    /// patterns that lower to one `minps`/`maxps` are worth using.
    pub x86: bool,
    /// The ISA has a native fused multiply-add (else `fma` would be a libcall per lane).
    pub fma: bool,
    /// Vector constants read from memory (see [`Tx::mconst`]).
    pub pool: ConstPool,
    /// The counter of the vector loop being emitted.
    pub vcounter: Option<VarId>,
    /// The kernel's parameter array (what a contraction's tile function receives).
    pub argv: Value,
    /// The tile function of the kernel's contraction, when it has a tail.
    pub tile_fn: Option<FuncId>,
}

/// A kernel's read-only vector constants, in a data object of their own, four lanes each.
#[derive(Default)]
pub(crate) struct ConstPool {
    /// The data object, and its symbol in the kernel's function.
    id: Option<(DataId, GlobalValue)>,
    bytes: Vec<u8>,
    /// Offset of each constant by its bits.
    at: HashMap<u32, u32>,
    error: Option<CodegenError>,
}

/// Translates `k` into `b`'s function: a kernel ([`kernel_signature`]) whose contraction's
/// tile function is `tile_fn`, or, with `tile` (the variables bound to the arguments
/// `row0, rows, col0, cols`), a tile function ([`tile_signature`]) built by [`tile_kernel`].
pub(crate) fn translate_fn<M: Module>(
    m: &mut M,
    imports: &mut Imports,
    k: &Kernel,
    mut b: FunctionBuilder<'_>,
    opts: Options,
    tile_fn: Option<FuncId>,
    tile: Option<[VarId; 4]>,
) -> Result<()> {
    let ptr = m.target_config().pointer_type();
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let args = b.block_params(entry).to_vec();
    let argv = args[0];
    let (start, end) = if tile.is_some() {
        let z = b.ins().iconst(types::I64, 0);
        (z, z)
    } else {
        (args[1], args[2])
    };
    let mut vars = Vec::with_capacity(k.vars.len());
    for (i, &t) in k.vars.iter().enumerate() {
        let ty = reg_ty(t).ok_or_else(|| CodegenError::Unsupported {
            kernel: k.name.clone(),
            what: format!("variable %v{i} of type {}", t.name()),
        })?;
        vars.push(b.declare_var(ty));
    }
    if let Some(bind) = tile {
        for (v, &a) in bind.iter().zip(&args[1..]) {
            b.def_var(vars[v.0 as usize], a);
        }
    }
    let mut params = Vec::with_capacity(k.params.len());
    for (i, p) in k.params.iter().enumerate() {
        if mem_ty(p.dtype).is_none() {
            return Err(CodegenError::Unsupported {
                kernel: k.name.clone(),
                what: format!("parameter %p{i} of type {}", p.dtype.name()),
            });
        }
        let off = (i * ptr.bytes() as usize) as i32;
        params.push(b.ins().load(ptr, MemFlagsData::trusted(), argv, off));
    }
    let off = (k.params.len() * ptr.bytes() as usize) as i32;
    let status = b.ins().load(ptr, MemFlagsData::trusted(), argv, off);
    // Unused (no helper call), it is removed by dead-code elimination.
    let gv = m.declare_data_in_func(imports.table, b.func);
    let table = b.ins().symbol_value(ptr, gv);
    let split = tile.is_none() && split_extent(k).is_some();
    let x86 = m.isa().triple().architecture == target_lexicon::Architecture::X86_64;
    let fma = m.isa().has_native_fma();
    let mut tx = Tx {
        m,
        imports,
        refs: HashMap::new(),
        table,
        k,
        b,
        vars,
        data_dep: vec![false; k.vars.len()],
        params,
        status,
        ptr,
        start,
        end,
        guard: 0,
        opts,
        x86,
        fma,
        pool: ConstPool::default(),
        vcounter: None,
        argv,
        tile_fn,
    };
    tx.block(&k.body, split)?;
    tx.b.ins().return_(&[]);
    tx.b.seal_all_blocks();
    let cfg = tx.m.target_config();
    tx.b.finalize(cfg);
    let pool = std::mem::take(&mut tx.pool);
    if let Some(e) = pool.error {
        return Err(e);
    }
    if let Some((id, _)) = pool.id {
        let mut d = DataDescription::new();
        d.define(pool.bytes.into_boxed_slice());
        d.set_align(16);
        tx.m.define_data(id, &d)
            .map_err(|e| CodegenError::Cranelift(e.to_string()))?;
    }
    Ok(())
}

impl<M: Module> Tx<'_, '_, M> {
    /// An `f32x4` constant for the inline math of a vector loop, loaded from the kernel's
    /// constant pool at its use, instead of a `splat` (or `vconst`).
    ///
    /// Cranelift hoists constants out of loops, and in the long inline polynomials the
    /// hoisted constants outnumber the sixteen vector registers: the register allocator then
    /// spills them and reloads (and re-stores) them every iteration. These loads are pure
    /// (read-only, movable), so the optimizer places each just before its first use, where it
    /// becomes that instruction's memory operand; their address depends on the loop counter
    /// (`counter >> 63`, which is 0: counters are never negative), so they are not hoisted.
    /// Outside a vector loop, a `splat`.
    pub fn mconst(&mut self, v: f32) -> Value {
        let Some(counter) = self.vcounter else {
            let c = self.b.ins().f32const(v);
            return self.b.ins().splat(types::F32X4, c);
        };
        let gv = match self.pool.id {
            Some((_, gv)) => gv,
            None => match self.m.declare_anonymous_data(false, false) {
                Ok(id) => {
                    let gv = self.m.declare_data_in_func(id, self.b.func);
                    self.pool.id = Some((id, gv));
                    gv
                }
                Err(e) => {
                    self.pool.error = Some(CodegenError::Cranelift(e.to_string()));
                    let c = self.b.ins().f32const(v);
                    return self.b.ins().splat(types::F32X4, c);
                }
            },
        };
        let off = match self.pool.at.get(&v.to_bits()) {
            Some(&o) => o,
            None => {
                let o = self.pool.bytes.len() as u32;
                for _ in 0..4 {
                    self.pool.bytes.extend_from_slice(&v.to_le_bytes());
                }
                self.pool.at.insert(v.to_bits(), o);
                o
            }
        };
        // A fresh (pure) address per use, so that it dominates the use: the optimizer merges
        // them.
        let base = self.b.ins().symbol_value(self.ptr, gv);
        let i = self.b.use_var(self.vars[counter.0 as usize]);
        let zero = self.b.ins().ushr_imm_s(i, 63);
        let zero = if self.ptr == types::I64 {
            zero
        } else {
            self.b.ins().ireduce(self.ptr, zero)
        };
        let addr = self.b.ins().iadd(base, zero);
        let flags = MemFlagsData::trusted().with_readonly().with_can_move();
        self.b.ins().load(types::F32X4, flags, addr, off as i32)
    }

    pub fn unsupported<T>(&self, what: impl Into<String>) -> Result<T> {
        Err(CodegenError::Unsupported {
            kernel: self.k.name.clone(),
            what: what.into(),
        })
    }

    fn block(&mut self, body: &[Stmt], top_split: bool) -> Result<()> {
        for st in body {
            // Two loops over rows that leave scalar remainders, as one loop (not the loop
            // that threads split).
            if !top_split
                && self.opts.simd
                && !self.opts.check_bounds
                && let Some(one) = crate::simd::collapse(st)
            {
                self.block(std::slice::from_ref(&one), false)?;
                continue;
            }
            match st {
                Stmt::For {
                    var,
                    extent,
                    kind,
                    body,
                } => {
                    let n = self.expr(extent)?;
                    let (lo, hi) = if top_split {
                        // Clamp the requested range into 0..n.
                        let zero = self.b.ins().iconst(types::I64, 0);
                        let lo = self.b.ins().smax(self.start, zero);
                        let lo = self.b.ins().smin(lo, n);
                        let hi = self.b.ins().smax(self.end, lo);
                        let hi = self.b.ins().smin(hi, n);
                        (lo, hi)
                    } else {
                        (self.b.ins().iconst(types::I64, 0), n)
                    };
                    // The vectorizer proves iterations independent itself, so any kind
                    // of loop qualifies.
                    let _ = kind;
                    let vectorized = self.opts.simd
                        && !self.opts.check_bounds
                        && crate::simd::vectorizable(
                            self.k,
                            *var,
                            match extent {
                                Expr::Lit(Lit::Int(_, n)) => Some(*n),
                                _ => None,
                            },
                            body,
                            &self.data_dep,
                        );
                    if vectorized {
                        self.vector_loop(*var, lo, hi, body)?;
                    } else {
                        self.scalar_loop(*var, lo, hi, body)?;
                    }
                }
                Stmt::Let { var, value } | Stmt::Assign { var, value } => {
                    let dd = self.depends_on_data(value);
                    let v = self.expr(value)?;
                    let i = var.0 as usize;
                    if matches!(st, Stmt::Let { .. }) {
                        self.data_dep[i] = dd;
                    } else {
                        self.data_dep[i] |= dd;
                    }
                    self.b.def_var(self.vars[i], v);
                }
                Stmt::Store {
                    param,
                    index,
                    value,
                } => {
                    let idx = self.expr(index)?;
                    let checked = self.opts.check_bounds || self.depends_on_data(index);
                    let v = self.expr(value)?;
                    let addr = self.address(*param, idx, checked, false);
                    self.store_elem(*param, v, addr)?;
                }
                Stmt::Matmul(mm) => self.matmul(mm)?,
                Stmt::Depthwise(dw) => self.depthwise(dw)?,
                Stmt::Softmax(sm) => self.softmax(sm)?,
            }
        }
        Ok(())
    }

    /// `for var in lo..hi { body }` as a rotated loop: test once, then body and latch.
    pub fn scalar_loop(&mut self, var: VarId, lo: Value, hi: Value, body: &[Stmt]) -> Result<()> {
        let v = self.vars[var.0 as usize];
        let body_b = self.b.create_block();
        let exit = self.b.create_block();
        self.b.def_var(v, lo);
        let c = self.b.ins().icmp(IntCC::SignedLessThan, lo, hi);
        self.b.ins().brif(c, body_b, &[], exit, &[]);
        self.b.switch_to_block(body_b);
        self.block(body, false)?;
        let i = self.b.use_var(v);
        let i = self.b.ins().iadd_imm_s(i, 1);
        self.b.def_var(v, i);
        let c = self.b.ins().icmp(IntCC::SignedLessThan, i, hi);
        self.b.ins().brif(c, body_b, &[], exit, &[]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    /// Whether `e` reads memory, directly or through a variable that did.
    pub fn depends_on_data(&self, e: &Expr) -> bool {
        match e {
            Expr::Var(v) => self.data_dep[v.0 as usize],
            Expr::Lit(_) => false,
            Expr::Load { .. } => true,
            Expr::Unary(_, a) | Expr::Cast(_, a) => self.depends_on_data(a),
            Expr::Binary(_, a, b) => self.depends_on_data(a) || self.depends_on_data(b),
            Expr::Select { cond, then, els } => {
                self.depends_on_data(cond)
                    || self.depends_on_data(then)
                    || self.depends_on_data(els)
            }
        }
    }

    /// The address of element `idx` of `param`. `checked`: bounds-check and record a failure
    /// in the status word; `clamp`: clamp silently (loads in `select` arms).
    pub fn address(&mut self, param: ParamId, idx: Value, checked: bool, clamp: bool) -> Value {
        let p = &self.k.params[param.0 as usize];
        let size = mem_ty(p.dtype).map(|t| t.bytes()).unwrap_or(1) as i64;
        let last = (p.len as i64 - 1).max(0);
        let mut idx = idx;
        if checked {
            let len = self.b.ins().iconst(types::I64, p.len as i64);
            let bad = self
                .b
                .ins()
                .icmp(IntCC::UnsignedGreaterThanOrEqual, idx, len);
            let old = self
                .b
                .ins()
                .load(types::I64, MemFlagsData::trusted(), self.status, 0);
            let bad64 = self.b.ins().uextend(types::I64, bad);
            let new = self.b.ins().bor(old, bad64);
            self.b
                .ins()
                .store(MemFlagsData::trusted(), new, self.status, 0);
            let zero = self.b.ins().iconst(types::I64, 0);
            idx = self.b.ins().select(bad, zero, idx);
        } else if clamp {
            let zero = self.b.ins().iconst(types::I64, 0);
            let hi = self.b.ins().iconst(types::I64, last);
            idx = self.b.ins().smax(idx, zero);
            idx = self.b.ins().smin(idx, hi);
        }
        let off = self.b.ins().imul_imm_s(idx, size);
        let off = if self.ptr == types::I64 {
            off
        } else {
            self.b.ins().ireduce(self.ptr, off)
        };
        self.b.ins().iadd(self.params[param.0 as usize], off)
    }

    fn load_elem(&mut self, param: ParamId, addr: Value) -> Result<Value> {
        let d = self.k.params[param.0 as usize].dtype;
        let mt = mem_ty(d).expect("checked at entry");
        let raw = self.b.ins().load(mt, MemFlagsData::trusted(), addr, 0);
        Ok(match d {
            DType::F16 => self.call1("mlc_f16_to_f32", types::I16, types::F32, raw),
            DType::BF16 => {
                // bf16 is the top half of an f32: exact.
                let w = self.b.ins().uextend(types::I32, raw);
                let w = self.b.ins().ishl_imm_s(w, 16);
                self.b.ins().bitcast(types::F32, MemFlagsData::new(), w)
            }
            _ => raw,
        })
    }

    fn store_elem(&mut self, param: ParamId, v: Value, addr: Value) -> Result<()> {
        let d = self.k.params[param.0 as usize].dtype;
        let v = match d {
            DType::F16 => self.call1("mlc_f32_to_f16", types::F32, types::I16, v),
            DType::BF16 => self.call1("mlc_f32_to_bf16", types::F32, types::I16, v),
            _ => v,
        };
        self.b.ins().store(MemFlagsData::trusted(), v, addr, 0);
        Ok(())
    }

    /// Calls helper `name` through the helper table; returns the call instruction.
    pub fn call_helper(
        &mut self,
        name: &str,
        params: &[Type],
        rets: &[Type],
        args: &[Value],
    ) -> ir::Inst {
        let sig = match self.refs.get(name) {
            Some(r) => *r,
            None => {
                let mut sig = self.m.make_signature();
                for &p in params {
                    let a = AbiParam::new(p);
                    sig.params.push(if p == types::I16 { a.uext() } else { a });
                }
                for &r in rets {
                    sig.returns.push(AbiParam::new(r));
                }
                let r = self.b.import_signature(sig);
                self.refs.insert(name.to_string(), r);
                r
            }
        };
        // Every name the translation uses is in the table (the runtime's tests check that
        // the libm names `UnOp::libm_name` gives all are).
        let index = abi::helper_index(name).expect("helper in the runtime's table");
        self.imports.used.insert(index);
        let flags = MemFlagsData::trusted().with_readonly();
        let f = self
            .b
            .ins()
            .load(self.ptr, flags, self.table, (index * 8) as i32);
        self.b.ins().call_indirect(sig, f, args)
    }

    pub fn call1(&mut self, name: &str, from: Type, to: Type, x: Value) -> Value {
        let c = self.call_helper(name, &[from], &[to], &[x]);
        self.b.inst_results(c)[0]
    }

    pub fn call2(&mut self, name: &str, ty: Type, rty: Type, x: Value, y: Value) -> Value {
        let c = self.call_helper(name, &[ty, ty], &[rty], &[x, y]);
        self.b.inst_results(c)[0]
    }

    /// Rounds an `f32` register holding a value of half type `ty` to that type.
    fn round_half(&mut self, ty: DType, v: Value) -> Value {
        match ty {
            DType::F16 => self.call1("mlc_round_f16", types::F32, types::F32, v),
            DType::BF16 => self.call1("mlc_round_bf16", types::F32, types::F32, v),
            _ => v,
        }
    }

    pub fn expr(&mut self, e: &Expr) -> Result<Value> {
        let ty = self.k.type_of(e);
        match e {
            Expr::Var(v) => Ok(self.b.use_var(self.vars[v.0 as usize])),
            Expr::Lit(l) => self.lit(*l),
            Expr::Load { param, index } => {
                // In a select arm a bad index may belong to the arm not taken: clamp it
                // silently there; elsewhere a data-dependent index is checked.
                let checked =
                    self.guard == 0 && (self.opts.check_bounds || self.depends_on_data(index));
                let idx = self.expr(index)?;
                let addr = self.address(*param, idx, checked, self.guard > 0);
                self.load_elem(*param, addr)
            }
            Expr::Unary(UnOp::Bitcast(to), a) => {
                let from = self.k.type_of(a);
                let x = self.expr(a)?;
                self.bitcast(from, *to, x)
            }
            Expr::Unary(op, a) => {
                let aty = self.k.type_of(a);
                let x = self.expr(a)?;
                let r = self.unary(*op, aty, x)?;
                Ok(if op_rounds(ty) {
                    self.round_half(ty, r)
                } else {
                    r
                })
            }
            Expr::Binary(op, a, b) => {
                let aty = self.k.type_of(a);
                let x = self.expr(a)?;
                let y = self.expr(b)?;
                let r = self.binary(*op, aty, x, y)?;
                Ok(if op_rounds(ty) {
                    self.round_half(ty, r)
                } else {
                    r
                })
            }
            Expr::Select { cond, then, els } => {
                let cty = self.k.type_of(cond);
                let c = self.expr(cond)?;
                let c = self.truthy(cty, c);
                self.guard += 1;
                let t = self.expr(then);
                let f = self.expr(els);
                self.guard -= 1;
                Ok(self.b.ins().select(c, t?, f?))
            }
            Expr::Cast(to, a) => {
                let from = self.k.type_of(a);
                let x = self.expr(a)?;
                self.cast(from, *to, x)
            }
        }
    }

    pub fn lit(&mut self, l: Lit) -> Result<Value> {
        Ok(match l {
            Lit::Float(DType::F64, f) => self.b.ins().f64const(f),
            Lit::Float(_, f) => self.b.ins().f32const(f as f32),
            Lit::Int(t, i) => {
                let Some(ty) = reg_ty(t) else {
                    return self.unsupported(format!("literal of type {}", t.name()));
                };
                self.iconst(ty, i)
            }
            Lit::Bool(b) => self.b.ins().iconst(types::I8, b as i64),
        })
    }

    /// An integer constant of `ty`, its bits masked to the width as Cranelift requires.
    pub fn iconst(&mut self, ty: Type, i: i64) -> Value {
        let bits = ty.bits();
        let v = if bits >= 64 {
            i
        } else {
            i & ((1i64 << bits) - 1)
        };
        self.b.ins().iconst(ty, v)
    }

    /// A bool (`i8` 0/1) from a value of any type: `!= 0`.
    pub fn truthy(&mut self, ty: DType, v: Value) -> Value {
        if ty == DType::Bool {
            return v;
        }
        if ty.is_float() {
            let z = if ty == DType::F64 {
                self.b.ins().f64const(0.0)
            } else {
                self.b.ins().f32const(0.0)
            };
            self.b.ins().fcmp(FloatCC::NotEqual, v, z)
        } else {
            self.b.ins().icmp_imm_s(IntCC::NotEqual, v, 0)
        }
    }

    /// `UnOp::Bitcast`: float bits move between register classes; a storage code (in the low
    /// bits of an `i8`) zero-extends to an integer, and an integer keeps its low bits as one.
    fn bitcast(&mut self, from: DType, to: DType, x: Value) -> Result<Value> {
        let (Some(ft), Some(tt)) = (reg_ty(from), reg_ty(to)) else {
            return self.unsupported(format!("bitcast {} -> {}", from.name(), to.name()));
        };
        if ft == tt {
            if to.is_storage_only() && to.bits().is_some_and(|b| b < 8) {
                let m = (1i64 << to.bits().unwrap_or(8)) - 1;
                return Ok(self.b.ins().band_imm_s(x, m));
            }
            return Ok(x);
        }
        if ft.is_float() || tt.is_float() {
            if ft.bits() != tt.bits() {
                return self.unsupported(format!("bitcast {} -> {}", from.name(), to.name()));
            }
            return Ok(self.b.ins().bitcast(tt, MemFlagsData::new(), x));
        }
        if ft.bits() < tt.bits() {
            return Ok(self.b.ins().uextend(tt, x));
        }
        let v = self.b.ins().ireduce(tt, x);
        Ok(match to.bits() {
            Some(b) if to.is_storage_only() && b < 8 => self.b.ins().band_imm_s(v, (1 << b) - 1),
            _ => v,
        })
    }

    fn unary(&mut self, op: UnOp, ty: DType, x: Value) -> Result<Value> {
        if ty.is_float() {
            let rt = reg_ty(ty).expect("float");
            return Ok(match op {
                UnOp::Neg => self.b.ins().fneg(x),
                UnOp::Abs => self.b.ins().fabs(x),
                UnOp::Sqrt => self.b.ins().sqrt(x),
                UnOp::Floor => self.b.ins().floor(x),
                UnOp::Ceil => self.b.ins().ceil(x),
                UnOp::Round => self.b.ins().nearest(x),
                UnOp::IsNan => self.b.ins().fcmp(FloatCC::Unordered, x, x),
                UnOp::IsInf => {
                    let a = self.b.ins().fabs(x);
                    let inf = if rt == types::F64 {
                        self.b.ins().f64const(f64::INFINITY)
                    } else {
                        self.b.ins().f32const(f32::INFINITY)
                    };
                    self.b.ins().fcmp(FloatCC::Equal, a, inf)
                }
                UnOp::Not => return self.unsupported("logical not of a float"),
                _ => {
                    let name = libm_symbol(op, rt).expect("transcendental");
                    self.call1(&name, rt, rt, x)
                }
            });
        }
        if ty == DType::Bool {
            return Ok(match op {
                UnOp::Not => self.b.ins().bxor_imm_s(x, 1),
                _ => x,
            });
        }
        if !ty.is_int() {
            return self.unsupported(format!("{} on {}", op.name(), ty.name()));
        }
        Ok(match op {
            UnOp::Neg => self.b.ins().ineg(x),
            UnOp::Abs if ty.is_signed_int() => self.b.ins().iabs(x),
            UnOp::Not => self.b.ins().bnot(x),
            UnOp::IsNan | UnOp::IsInf => self.b.ins().iconst(types::I8, 0),
            // Rounding is the identity on integers, and so is everything else the evaluator
            // does not define for them.
            _ => x,
        })
    }

    fn binary(&mut self, op: BinOp, ty: DType, x: Value, y: Value) -> Result<Value> {
        if ty.is_float() {
            let rt = reg_ty(ty).expect("float");
            let cmp = |cc| Some(cc);
            let cc = match op {
                BinOp::Eq => cmp(FloatCC::Equal),
                BinOp::Ne => cmp(FloatCC::NotEqual),
                BinOp::Lt => cmp(FloatCC::LessThan),
                BinOp::Le => cmp(FloatCC::LessThanOrEqual),
                BinOp::Gt => cmp(FloatCC::GreaterThan),
                BinOp::Ge => cmp(FloatCC::GreaterThanOrEqual),
                _ => None,
            };
            if let Some(cc) = cc {
                return Ok(self.b.ins().fcmp(cc, x, y));
            }
            let f32 = rt == types::F32;
            return Ok(match op {
                BinOp::Add => self.b.ins().fadd(x, y),
                BinOp::Sub => self.b.ins().fsub(x, y),
                BinOp::Mul => self.b.ins().fmul(x, y),
                BinOp::Div => self.b.ins().fdiv(x, y),
                BinOp::Max => self.b.ins().fmax(x, y),
                BinOp::Min => self.b.ins().fmin(x, y),
                BinOp::Rem => self.call2(if f32 { "fmodf" } else { "fmod" }, rt, rt, x, y),
                BinOp::Pow => self.call2(if f32 { "powf" } else { "pow" }, rt, rt, x, y),
                // Bitwise ops on floats are ill-typed; the evaluator gives NaN.
                _ => {
                    if f32 {
                        self.b.ins().f32const(f32::NAN)
                    } else {
                        self.b.ins().f64const(f64::NAN)
                    }
                }
            });
        }
        if ty == DType::Bool {
            return Ok(match op {
                BinOp::And | BinOp::Min | BinOp::Mul => self.b.ins().band(x, y),
                BinOp::Or | BinOp::Max | BinOp::Add => self.b.ins().bor(x, y),
                BinOp::Xor | BinOp::Ne => self.b.ins().bxor(x, y),
                BinOp::Eq => self.b.ins().icmp(IntCC::Equal, x, y),
                BinOp::Lt => self.b.ins().icmp(IntCC::UnsignedLessThan, x, y),
                BinOp::Le => self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, x, y),
                BinOp::Gt => self.b.ins().icmp(IntCC::UnsignedGreaterThan, x, y),
                BinOp::Ge => self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, x, y),
                _ => self.b.ins().iconst(types::I8, 0),
            });
        }
        if !ty.is_int() {
            return self.unsupported(format!("{} on {}", op.name(), ty.name()));
        }
        let signed = ty.is_signed_int();
        let rt = reg_ty(ty).expect("int");
        let cc = |s, u| Some(if signed { s } else { u });
        let icc = match op {
            BinOp::Eq => Some(IntCC::Equal),
            BinOp::Ne => Some(IntCC::NotEqual),
            BinOp::Lt => cc(IntCC::SignedLessThan, IntCC::UnsignedLessThan),
            BinOp::Le => cc(IntCC::SignedLessThanOrEqual, IntCC::UnsignedLessThanOrEqual),
            BinOp::Gt => cc(IntCC::SignedGreaterThan, IntCC::UnsignedGreaterThan),
            BinOp::Ge => cc(
                IntCC::SignedGreaterThanOrEqual,
                IntCC::UnsignedGreaterThanOrEqual,
            ),
            _ => None,
        };
        if let Some(cc) = icc {
            return Ok(self.b.ins().icmp(cc, x, y));
        }
        Ok(match op {
            BinOp::Add => self.b.ins().iadd(x, y),
            BinOp::Sub => self.b.ins().isub(x, y),
            BinOp::Mul => self.b.ins().imul(x, y),
            BinOp::And => self.b.ins().band(x, y),
            BinOp::Or => self.b.ins().bor(x, y),
            BinOp::Xor => self.b.ins().bxor(x, y),
            BinOp::Max if signed => self.b.ins().smax(x, y),
            BinOp::Max => self.b.ins().umax(x, y),
            BinOp::Min if signed => self.b.ins().smin(x, y),
            BinOp::Min => self.b.ins().umin(x, y),
            BinOp::Div | BinOp::Rem => {
                // Division by zero gives 0; MIN / -1 wraps (MIN % -1 is 0): never trap.
                let zero = self.b.ins().iconst(rt, 0);
                let one = self.b.ins().iconst(rt, 1);
                let is0 = self.b.ins().icmp_imm_s(IntCC::Equal, y, 0);
                if signed {
                    let m1 = self.iconst(rt, -1);
                    let is_m1 = self.b.ins().icmp(IntCC::Equal, y, m1);
                    let bad = self.b.ins().bor(is0, is_m1);
                    let safe = self.b.ins().select(bad, one, y);
                    let (q, special) = if op == BinOp::Div {
                        (self.b.ins().sdiv(x, safe), self.b.ins().ineg(x))
                    } else {
                        (self.b.ins().srem(x, safe), zero)
                    };
                    let r = self.b.ins().select(is_m1, special, q);
                    self.b.ins().select(is0, zero, r)
                } else {
                    let safe = self.b.ins().select(is0, one, y);
                    let q = if op == BinOp::Div {
                        self.b.ins().udiv(x, safe)
                    } else {
                        self.b.ins().urem(x, safe)
                    };
                    self.b.ins().select(is0, zero, q)
                }
            }
            BinOp::Pow => {
                let x64 = self.widen(ty, x);
                let y64 = self.widen(ty, y);
                let r = self.call2("mlc_ipow", types::I64, types::I64, x64, y64);
                self.narrow(rt, r)
            }
            BinOp::Shl | BinOp::Shr => {
                // In 64 bits, as the evaluator: amounts outside 0..64 give 0 (or the sign).
                let x64 = self.widen(ty, x);
                let y64 = self.widen(ty, y);
                let in_range = self.b.ins().icmp_imm_s(IntCC::UnsignedLessThan, y64, 64);
                let r = match op {
                    BinOp::Shl => {
                        let s = self.b.ins().ishl(x64, y64);
                        let z = self.b.ins().iconst(types::I64, 0);
                        self.b.ins().select(in_range, s, z)
                    }
                    _ if signed => {
                        let c63 = self.b.ins().iconst(types::I64, 63);
                        let amt = self.b.ins().select(in_range, y64, c63);
                        self.b.ins().sshr(x64, amt)
                    }
                    _ => {
                        let s = self.b.ins().ushr(x64, y64);
                        let z = self.b.ins().iconst(types::I64, 0);
                        self.b.ins().select(in_range, s, z)
                    }
                };
                self.narrow(rt, r)
            }
            _ => unreachable!("comparisons handled above"),
        })
    }

    /// An integer of type `ty` extended to `i64` by its signedness.
    pub fn widen(&mut self, ty: DType, x: Value) -> Value {
        let t = self.b.func.dfg.value_type(x);
        if t == types::I64 {
            x
        } else if ty.is_signed_int() {
            self.b.ins().sextend(types::I64, x)
        } else {
            self.b.ins().uextend(types::I64, x)
        }
    }

    pub fn narrow(&mut self, to: Type, x: Value) -> Value {
        if self.b.func.dfg.value_type(x) == to {
            x
        } else {
            self.b.ins().ireduce(to, x)
        }
    }

    pub fn cast(&mut self, from: DType, to: DType, x: Value) -> Result<Value> {
        if from == to {
            return Ok(x);
        }
        let (Some(_), Some(tt)) = (reg_ty(from), reg_ty(to)) else {
            return self.unsupported(format!("cast {} -> {}", from.name(), to.name()));
        };
        if from.is_storage_only() || to.is_storage_only() {
            return self.unsupported(format!("cast {} -> {}", from.name(), to.name()));
        }
        if from.is_float() {
            let f64_src = from == DType::F64;
            return Ok(match to {
                DType::F32 if f64_src => self.b.ins().fdemote(types::F32, x),
                DType::F32 => x,
                DType::F64 if f64_src => x,
                DType::F64 => self.b.ins().fpromote(types::F64, x),
                DType::F16 if f64_src => self.call1("mlc_round_f16_f64", types::F64, types::F32, x),
                DType::BF16 if f64_src => {
                    self.call1("mlc_round_bf16_f64", types::F64, types::F32, x)
                }
                DType::F16 | DType::BF16 => self.round_half(to, x),
                DType::Bool => self.truthy(from, x),
                _ => self.float_to_int(to, tt, x),
            });
        }
        if from == DType::Bool {
            return Ok(match to {
                DType::F32 | DType::F16 | DType::BF16 => {
                    let w = self.b.ins().uextend(types::I32, x);
                    self.b.ins().fcvt_from_uint(types::F32, w)
                }
                DType::F64 => {
                    let w = self.b.ins().uextend(types::I32, x);
                    self.b.ins().fcvt_from_uint(types::F64, w)
                }
                _ => {
                    if tt == types::I8 {
                        x
                    } else {
                        self.b.ins().uextend(tt, x)
                    }
                }
            });
        }
        // From an integer.
        if to.is_float() {
            // Through f64, as the evaluator (so i64 → f32 rounds the same way).
            let w = self.widen(from, x);
            let f = if from == DType::U64 {
                self.b.ins().fcvt_from_uint(types::F64, w)
            } else {
                self.b.ins().fcvt_from_sint(types::F64, w)
            };
            return Ok(match to {
                DType::F64 => f,
                DType::F32 => self.b.ins().fdemote(types::F32, f),
                _ => {
                    let name = if to == DType::F16 {
                        "mlc_round_f16_f64"
                    } else {
                        "mlc_round_bf16_f64"
                    };
                    self.call1(name, types::F64, types::F32, f)
                }
            });
        }
        if to == DType::Bool {
            return Ok(self.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0));
        }
        let ft = self.b.func.dfg.value_type(x);
        Ok(if tt.bits() < ft.bits() {
            self.b.ins().ireduce(tt, x)
        } else if tt.bits() > ft.bits() {
            if from.is_signed_int() {
                self.b.ins().sextend(tt, x)
            } else {
                self.b.ins().uextend(tt, x)
            }
        } else {
            x
        })
    }

    /// Saturating float → int truncation, NaN → 0 (Rust's `as`).
    fn float_to_int(&mut self, to: DType, tt: Type, x: Value) -> Value {
        match to {
            DType::I32 => self.b.ins().fcvt_to_sint_sat(types::I32, x),
            DType::I64 => self.b.ins().fcvt_to_sint_sat(types::I64, x),
            DType::U64 => self.b.ins().fcvt_to_uint_sat(types::I64, x),
            _ => {
                // Convert to i64 (saturating, NaN → 0), then clamp to the type's range.
                let (lo, hi): (i64, i64) = match to {
                    DType::I8 => (i8::MIN as i64, i8::MAX as i64),
                    DType::U8 => (0, u8::MAX as i64),
                    DType::I16 => (i16::MIN as i64, i16::MAX as i64),
                    DType::U16 => (0, u16::MAX as i64),
                    _ => (0, u32::MAX as i64),
                };
                let w = self.b.ins().fcvt_to_sint_sat(types::I64, x);
                let lo = self.b.ins().iconst(types::I64, lo);
                let hi = self.b.ins().iconst(types::I64, hi);
                let w = self.b.ins().smax(w, lo);
                let w = self.b.ins().smin(w, hi);
                self.b.ins().ireduce(tt, w)
            }
        }
    }

    /// `Stmt::Matmul`: fills an argument block on the stack and calls the matmul helper.
    fn matmul(&mut self, mm: &Matmul) -> Result<()> {
        use mm_slot as s;
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (s::COUNT * 8) as u32,
            3,
        ));
        let ptr = self.ptr;
        let put = |tx: &mut Self, i: usize, v: Value| {
            tx.b.ins().stack_store(ptr, v, slot, (i * 8) as i32);
        };
        let refs: [Option<&MatRef>; 4] = [Some(&mm.a), Some(&mm.b), Some(&mm.c), mm.bias.as_ref()];
        let mut codes = 0i64;
        for (j, r) in refs.iter().enumerate() {
            let (base, len, off, rs, cs, code) = match r {
                Some(r) => {
                    let p = &self.k.params[r.param.0 as usize];
                    let code = abi::DType::from_name(p.dtype.name())
                        .ok_or_else(|| CodegenError::Unsupported {
                            kernel: self.k.name.clone(),
                            what: format!("matmul on {}", p.dtype.name()),
                        })?
                        .code() as i64;
                    let off = self.expr(&r.offset)?;
                    (
                        self.params[r.param.0 as usize],
                        p.len as i64,
                        off,
                        r.row_stride,
                        r.col_stride,
                        code,
                    )
                }
                None => {
                    let z = self.b.ins().iconst(ptr, 0);
                    let z64 = self.b.ins().iconst(types::I64, 0);
                    (z, 0, z64, 0, 0, 0)
                }
            };
            codes |= code << (8 * j);
            put(self, j, base);
            let len = self.b.ins().iconst(types::I64, len);
            put(self, s::LEN + j, len);
            put(self, s::OFF + j, off);
            let rs = self.b.ins().iconst(types::I64, rs);
            let cs = self.b.ins().iconst(types::I64, cs);
            put(self, s::STRIDES + 2 * j, rs);
            put(self, s::STRIDES + 2 * j + 1, cs);
        }
        // The requantization's operands (a null multiplier pointer when there is none).
        let rq_views: [(usize, Option<(ParamId, &Expr, i64, i64)>); 3] = match &mm.requant {
            Some(rq) => [
                (
                    s::RQ_MULT,
                    Some((
                        rq.mult.param,
                        &rq.mult.offset,
                        rq.mult.row_stride,
                        rq.mult.col_stride,
                    )),
                ),
                (s::RQ_SCALE, Some((rq.scale.param, &rq.scale.index, 0, 0))),
                (
                    s::RQ_ZP,
                    Some((rq.zero_point.param, &rq.zero_point.index, 0, 0)),
                ),
            ],
            None => [(s::RQ_MULT, None), (s::RQ_SCALE, None), (s::RQ_ZP, None)],
        };
        for (j, (at, view)) in rq_views.into_iter().enumerate() {
            let Some((param, off, rs, cs)) = view else {
                let z = self.b.ins().iconst(ptr, 0);
                put(self, at, z);
                continue;
            };
            let p = &self.k.params[param.0 as usize];
            let code = abi::DType::from_name(p.dtype.name())
                .ok_or_else(|| CodegenError::Unsupported {
                    kernel: self.k.name.clone(),
                    what: format!("matmul requantization on {}", p.dtype.name()),
                })?
                .code() as i64;
            codes |= code << (32 + 8 * j);
            let len = p.len as i64;
            let off = self.expr(off)?;
            put(self, at, self.params[param.0 as usize]);
            let len = self.b.ins().iconst(types::I64, len);
            put(self, at + 1, len);
            put(self, at + 2, off);
            if at == s::RQ_MULT {
                let rs = self.b.ins().iconst(types::I64, rs);
                let cs = self.b.ins().iconst(types::I64, cs);
                put(self, at + 3, rs);
                put(self, at + 4, cs);
            }
        }
        match mm.requant.as_ref().and_then(|rq| rq.shift.as_ref()) {
            Some(sv) => {
                put(self, s::RQ_SHIFT, self.params[sv.param.0 as usize]);
                let len = self.k.params[sv.param.0 as usize].len as i64;
                let off = self.expr(&sv.offset)?;
                for (j, v) in [(1, len), (3, sv.row_stride), (4, sv.col_stride)] {
                    let v = self.b.ins().iconst(types::I64, v);
                    put(self, s::RQ_SHIFT + j, v);
                }
                put(self, s::RQ_SHIFT + 2, off);
            }
            None => {
                let z = self.b.ins().iconst(ptr, 0);
                put(self, s::RQ_SHIFT, z);
            }
        }
        // The byte table (`Requant::table`), 256 elements of C's type (null: none).
        match mm.requant.as_ref().and_then(|rq| rq.table) {
            Some(t) => {
                put(self, s::RQ_TABLE, self.params[t.0 as usize]);
                let len = self.k.params[t.0 as usize].len as i64;
                let len = self.b.ins().iconst(types::I64, len);
                put(self, s::RQ_TABLE + 1, len);
            }
            None => {
                let z = self.b.ins().iconst(ptr, 0);
                put(self, s::RQ_TABLE, z);
            }
        }
        let ints = [
            (s::M, mm.m as i64),
            (s::N, mm.n as i64),
            (s::K, mm.k as i64),
            (s::DTYPES, codes),
        ];
        for (i, v) in ints {
            let v = self.b.ins().iconst(types::I64, v);
            put(self, i, v);
        }
        let (act, lo, hi) = act_code(mm.act);
        let act = self.b.ins().iconst(types::I64, act);
        put(self, s::ACT, act);
        let floats = [
            (s::ALPHA, mm.alpha),
            (s::BETA, mm.beta),
            (s::ACT_MIN, lo),
            (s::ACT_MAX, hi),
        ];
        for (i, v) in floats {
            let v = self.b.ins().iconst(types::I64, (v as f64).to_bits() as i64);
            put(self, i, v);
        }
        put(self, s::STATUS, self.status);
        // An implicit column matrix's geometry and fill (ABI 8).
        let (flag, geom) = match &mm.b_im2col {
            Some(v) => (1, v.geometry()),
            None => (0, [0; 13]),
        };
        for (i, v) in std::iter::once(flag).chain(geom).enumerate() {
            let v = self.b.ins().iconst(types::I64, v as i64);
            put(self, s::IM2COL + i, v);
        }
        let (fill, fill_len) = match mm.b_im2col.as_ref().and_then(|v| v.fill) {
            Some(f) => (
                self.params[f.0 as usize],
                self.k.params[f.0 as usize].len as i64,
            ),
            None => (self.b.ins().iconst(ptr, 0), 0),
        };
        put(self, s::IM2COL_FILL, fill);
        let fill_len = self.b.ins().iconst(types::I64, fill_len);
        put(self, s::IM2COL_FILL + 1, fill_len);
        // The tail: the tile function's address and this kernel's parameter array.
        let (tf, targs) = match (&mm.tail, self.tile_fn) {
            (None, _) => {
                let z = self.b.ins().iconst(ptr, 0);
                (z, z)
            }
            (Some(_), Some(id)) => {
                let f = self.m.declare_func_in_func(id, self.b.func);
                (self.b.ins().func_addr(ptr, f), self.argv)
            }
            (Some(_), None) => {
                return Err(CodegenError::Invalid(format!(
                    "kernel {}: a matmul tail without its tile function",
                    self.k.name
                )));
            }
        };
        put(self, s::TAIL_FN, tf);
        put(self, s::TAIL_ARGS, targs);
        // The tail's last activation, when the runtime applies it (`tile_kernel` left it out).
        match mm
            .tail
            .as_ref()
            .and(crate::requant::tail_activation(self.k, mm))
        {
            Some(ta) => {
                let (code, p1, p2) = act_code(ta.act);
                let (o, rs, cs) = ta.view;
                let len = self.k.params[ta.out.0 as usize].len as i64;
                let words = [
                    (s::TAIL_ACT, code),
                    (s::TAIL_ACT + 1, (p1 as f64).to_bits() as i64),
                    (s::TAIL_ACT + 2, (p2 as f64).to_bits() as i64),
                    (s::TAIL_OUT + 1, len),
                    (s::TAIL_OUT + 2, o),
                    (s::TAIL_OUT + 3, rs),
                    (s::TAIL_OUT + 4, cs),
                ];
                for (i, v) in words {
                    let v = self.b.ins().iconst(types::I64, v);
                    put(self, i, v);
                }
                put(self, s::TAIL_OUT, self.params[ta.out.0 as usize]);
            }
            None => {
                let z = self.b.ins().iconst(ptr, 0);
                put(self, s::TAIL_OUT, z);
            }
        }
        // The requantization's residual add (a null residual pointer when there is none).
        match mm.requant.as_ref().and_then(|rq| rq.residual.as_deref()) {
            None => {
                let z = self.b.ins().iconst(ptr, 0);
                put(self, s::RQ_ADD, z);
            }
            Some(ra) => {
                let code = |tx: &Self, q: ParamId| {
                    let p = &tx.k.params[q.0 as usize];
                    abi::DType::from_name(p.dtype.name())
                        .map(|d| d.code() as i64)
                        .ok_or_else(|| CodegenError::Unsupported {
                            kernel: tx.k.name.clone(),
                            what: format!("matmul residual add on {}", p.dtype.name()),
                        })
                };
                // The residual's type, and its zero point's (which an f32 residual is
                // quantized to) in the next byte.
                let rcode = code(self, ra.r)? | code(self, ra.r_zp.param)? << 8;
                let len = self.k.params[ra.r.0 as usize].len as i64;
                put(self, s::RQ_ADD, self.params[ra.r.0 as usize]);
                let len = self.b.ins().iconst(types::I64, len);
                put(self, s::RQ_ADD + 1, len);
                let rcode = self.b.ins().iconst(types::I64, rcode);
                put(self, s::RQ_ADD + 2, rcode);
                for (j, sc) in [&ra.r_scale, &ra.r_zp, &ra.out_scale, &ra.out_zp]
                    .into_iter()
                    .enumerate()
                {
                    let at = s::RQ_ADD_SCALARS + 3 * j;
                    let len = self.k.params[sc.param.0 as usize].len as i64;
                    let idx = self.expr(&sc.index)?;
                    put(self, at, self.params[sc.param.0 as usize]);
                    let len = self.b.ins().iconst(types::I64, len);
                    put(self, at + 1, len);
                    put(self, at + 2, idx);
                }
            }
        }
        let addr = self.b.ins().stack_addr(ptr, slot, 0);
        self.call_helper(abi::MATMUL, &[ptr], &[], &[addr]);
        Ok(())
    }
}

// ---- Depthwise convolution --------------------------------------------------------------

impl<M: Module> Tx<'_, '_, M> {
    /// `Stmt::Depthwise`: fills an argument block on the stack (`abi::dw_slot`; epilogue
    /// scalars loaded now, as `f32` bits; per-channel operands as their buffers) and calls the
    /// depthwise helper.
    fn depthwise(&mut self, dw: &Depthwise) -> Result<()> {
        use abi::{dw_slot as s, dw_type};
        let words = s::EP + 3 * dw.epilogue.len();
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (words * 8) as u32,
            3,
        ));
        let ptr = self.ptr;
        let put = |tx: &mut Self, i: usize, v: Value| {
            tx.b.ins().stack_store(ptr, v, slot, (i * 8) as i32);
        };
        let put_int = |tx: &mut Self, i: usize, v: i64| {
            let v = tx.b.ins().iconst(types::I64, v);
            put(tx, i, v);
        };
        let params = [Some(dw.x), Some(dw.w), dw.bias, Some(dw.out)];
        for (j, p) in params.into_iter().enumerate() {
            let (base, len) = match p {
                Some(p) => (
                    self.params[p.0 as usize],
                    self.k.params[p.0 as usize].len as i64,
                ),
                None => (self.b.ins().iconst(ptr, 0), 0),
            };
            put(self, j, base);
            put_int(self, s::LEN + j, len);
        }
        let geom = [
            dw.batch,
            dw.channels,
            dw.mult,
            dw.in_hw[0],
            dw.in_hw[1],
            dw.out_hw[0],
            dw.out_hw[1],
            dw.kernel[0],
            dw.kernel[1],
            dw.stride[0],
            dw.stride[1],
            dw.dilation[0],
            dw.dilation[1],
            dw.pad[0],
            dw.pad[1],
        ];
        for (i, v) in geom.into_iter().enumerate() {
            put_int(self, s::GEOM + i, v as i64);
        }
        put(self, s::STATUS, self.status);
        put_int(self, s::EP_LEN, dw.epilogue.len() as i64);
        let unsupported = |tx: &Self, what: String| CodegenError::Unsupported {
            kernel: tx.k.name.clone(),
            what,
        };
        let type_code = |tx: &Self, t: DType| -> Result<i64> {
            Ok(match t {
                DType::F32 => dw_type::F32,
                DType::U8 => dw_type::U8,
                DType::I8 => dw_type::I8,
                DType::I32 => dw_type::I32,
                t => return Err(unsupported(tx, format!("depthwise of {}", t.name()))),
            } as i64)
        };
        let dtype = |tx: &Self, p: ParamId| tx.k.params[p.0 as usize].dtype;
        let x_code = type_code(self, dtype(self, dw.x))?;
        put_int(self, s::X_TYPE, x_code);
        let out_code = type_code(self, dtype(self, dw.out))?;
        put_int(self, s::OUT_TYPE, out_code);
        // A scalar operand's f32 bits (an 8-bit one converted), zero-extended to a word.
        let scalar_bits = |tx: &mut Self, p: ParamId| -> Result<Value> {
            let mut e = Expr::load(p, Expr::idx(0));
            if dtype(tx, p) != DType::F32 {
                e = Expr::cast(DType::F32, e);
            }
            let v = tx.expr(&e)?;
            let v = tx.b.ins().bitcast(types::I32, MemFlagsData::new(), v);
            Ok(tx.b.ins().uextend(types::I64, v))
        };
        match dw.x_zero {
            Some(z) => {
                let v = scalar_bits(self, z)?;
                put(self, s::X_ZERO, v);
            }
            None => put_int(self, s::X_ZERO, 0),
        }
        for (i, e) in dw.epilogue.iter().enumerate() {
            let code = |tx: &Self, op: &BinOp| -> Result<i64> {
                Ok(match op {
                    BinOp::Add => 0,
                    BinOp::Sub => 1,
                    BinOp::Mul => 2,
                    BinOp::Div => 3,
                    BinOp::Max => 4,
                    BinOp::Min => 5,
                    op => {
                        return Err(unsupported(tx, format!("depthwise epilogue {}", op.name())));
                    }
                })
            };
            let (word, arg) = match e {
                EpOp::Bin { op, arg, arg_first } => {
                    let channel = matches!(arg, EpArg::Channel(_));
                    (
                        code(self, op)? << 8 | (*arg_first as i64) << 16 | (channel as i64) << 17,
                        Some(*arg),
                    )
                }
                EpOp::Save => (1, None),
                EpOp::Sigmoid => (3, None),
                EpOp::Combine { op, saved_first } => {
                    (2 | code(self, op)? << 8 | (*saved_first as i64) << 16, None)
                }
                EpOp::Round => (4, None),
                EpOp::Narrow(t) => (5 | type_code(self, *t)? << 8, None),
                // The table's pointer and length in the operand words, as a per-channel
                // operand's.
                EpOp::Table { table, signed } => (
                    6 | (*signed as i64) << 16 | 1 << 17,
                    Some(EpArg::Channel(*table)),
                ),
            };
            put_int(self, s::EP + 3 * i, word);
            let (bits, len) = match arg {
                Some(EpArg::Scalar(p)) => (scalar_bits(self, p)?, 0),
                Some(EpArg::Lit(v)) => (self.b.ins().iconst(types::I64, v.to_bits() as i64), 0),
                Some(EpArg::Channel(p)) => (
                    self.params[p.0 as usize],
                    self.k.params[p.0 as usize].len as i64,
                ),
                None => (self.b.ins().iconst(types::I64, 0), 0),
            };
            put(self, s::EP + 3 * i + 1, bits);
            put_int(self, s::EP + 3 * i + 2, len);
        }
        let addr = self.b.ins().stack_addr(ptr, slot, 0);
        self.call_helper(abi::DEPTHWISE, &[ptr], &[], &[addr]);
        Ok(())
    }
}

// ---- end depthwise -----------------------------------------------------------------------

// ---- Softmax ----------------------------------------------------------------------------

impl<M: Module> Tx<'_, '_, M> {
    /// `Stmt::Softmax`: fills an argument block on the stack (`abi::sm_slot`; a scalar
    /// pre-scale loaded now, as `f32` bits) and calls the softmax helper.
    fn softmax(&mut self, sm: &Softmax) -> Result<()> {
        use abi::sm_slot as s;
        let dims = sm.mask.as_ref().map_or(&[][..], |m| m.dims.as_slice());
        let words = s::DIMS + 2 * dims.len();
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (words * 8) as u32,
            3,
        ));
        let ptr = self.ptr;
        let put = |tx: &mut Self, i: usize, v: Value| {
            tx.b.ins().stack_store(ptr, v, slot, (i * 8) as i32);
        };
        let put_int = |tx: &mut Self, i: usize, v: i64| {
            let v = tx.b.ins().iconst(types::I64, v);
            put(tx, i, v);
        };
        let params = [Some(sm.x), Some(sm.out), sm.mask.as_ref().map(|m| m.param)];
        for (j, p) in params.into_iter().enumerate() {
            let (base, len) = match p {
                Some(p) => (
                    self.params[p.0 as usize],
                    self.k.params[p.0 as usize].len as i64,
                ),
                None => (self.b.ins().iconst(ptr, 0), 0),
            };
            put(self, j, base);
            put_int(self, s::LEN + j, len);
        }
        put_int(self, s::ROWS, sm.rows as i64);
        put_int(self, s::ROW_LEN, sm.len as i64);
        let scale = match sm.scale {
            Some(EpArg::Scalar(p)) => {
                let v = self.expr(&Expr::load(p, Expr::idx(0)))?;
                let v = self.b.ins().bitcast(types::I32, MemFlagsData::new(), v);
                let v = self.b.ins().uextend(types::I64, v);
                self.b.ins().bor_imm_u(v, 1 << 32)
            }
            Some(EpArg::Lit(v)) => self
                .b
                .ins()
                .iconst(types::I64, (1i64 << 32) | v.to_bits() as i64),
            Some(EpArg::Channel(_)) => {
                return Err(CodegenError::Unsupported {
                    kernel: self.k.name.clone(),
                    what: "a per-channel softmax scale".into(),
                });
            }
            None => self.b.ins().iconst(types::I64, 0),
        };
        put(self, s::SCALE, scale);
        put(self, s::STATUS, self.status);
        put_int(self, s::NDIMS, dims.len() as i64);
        for (i, &(e, st)) in dims.iter().enumerate() {
            put_int(self, s::DIMS + 2 * i, e as i64);
            put_int(self, s::DIMS + 2 * i + 1, st);
        }
        let addr = self.b.ins().stack_addr(ptr, slot, 0);
        self.call_helper(abi::SOFTMAX, &[ptr], &[], &[addr]);
        Ok(())
    }
}

// ---- end softmax -------------------------------------------------------------------------

/// Whether an operation producing a value of `ty` must round its `f32` result to `ty`.
fn op_rounds(ty: DType) -> bool {
    matches!(ty, DType::F16 | DType::BF16)
}

/// The C library symbol of a transcendental `op` on `ty` (`expf` for f32, `exp` for f64).
pub fn libm_symbol(op: UnOp, ty: Type) -> Option<String> {
    let base = op.libm_name()?;
    Some(if ty == types::F64 {
        base.to_string()
    } else {
        format!("{base}f")
    })
}
