//! Kernel IR → LLVM IR for NVPTX: each [`mlc_kir::Kernel`] becomes one `ptx_kernel` function
//! taking one global pointer per kernel parameter, in parameter order.
//!
//! # Mapping to the GPU
//! - **Grid-stride loop.** When a kernel's body is a single `Parallel` loop with a literal
//!   extent, that loop and every directly nested `Parallel`/`Vector` loop with a literal extent
//!   (a loop whose body is exactly the next loop; `Serial` ones too when no parameter is
//!   read-modify-written) fuse into one flat iteration space of `items`
//!   work items. Thread `blockIdx.x * blockDim.x + threadIdx.x` takes items `gid, gid + stride,
//!   …` (`stride = gridDim.x * blockDim.x`) and recovers the loop counters by division; the
//!   remaining loops run serially in each thread. Launch rule ([`LaunchShape::dims`]):
//!   256 threads per block, `blocks = min(ceil(items / 256), 4096)`; any grid size is correct.
//! - **Contractions.** A kernel that is a nest of literal-extent loops around a single
//!   [`Stmt::Matmul`] (batched MatMul, convolution's per-group GEMM) becomes a shared-memory
//!   tiled FFMA GEMM (`gemm.rs` in this module's words: 64×64 tiles, k-step 16, 256 threads with
//!   4×4 outputs each), any `m, n, k` and strides, grid `(ceil(n/64), ceil(m/64), batch)` with
//!   the batch counters recovered from `blockIdx.z`. A `Matmul` anywhere else runs as serial
//!   loops in its thread. A `B` that is an image's column matrix (`Im2col`) is read through
//!   its tap's index, clamped to the image's first element where the tap is padding, whose
//!   fill is then selected: implicit GEMM, with no column matrix in device memory.
//! - **Everything else** (a kernel whose body is not one parallel loop) runs on one thread.
//!
//! # Semantics
//! Exactly `eval.rs`'s: f16/bf16 values are held in their own LLVM types and every operation
//! computes in f32 and rounds back; bools are `i1` in registers and `u8` in memory; integer
//! division and remainder by zero give 0 (and `MIN / -1` wraps); float `max`/`min` propagate
//! NaN; float→int casts saturate with NaN → 0 (`llvm.fpto[su]i.sat`); shifts by amounts outside
//! the type give 0 (or the sign for arithmetic right shifts). `Select` evaluates only the chosen
//! arm (it branches), because lowering guards out-of-range loads with it. Transcendentals come
//! from [`crate::math`] (f64 series, rounded once); `sqrt` and `/` are IEEE (`sqrt.rn`, `div.rn`).

use crate::cg::{Cg, SHARED};
use crate::{NvptxError, math};
use inkwell::AddressSpace;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Linkage;
use inkwell::types::{BasicType, BasicTypeEnum, FloatType, IntType};
use inkwell::values::{BasicValue, BasicValueEnum, FloatValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};

/// An operand a guarded load reads: a strided view, or a contraction's `B` (which may be an
/// image's column matrix).
#[derive(Clone, Copy)]
enum Operand<'m> {
    Mat(&'m MatRef),
    B(&'m Matmul),
}
use mlc_ir::DType;
use mlc_kir::{
    Access, Activation, BinOp, Expr, Kernel, Lit, LoopKind, MatRef, Matmul, ParamId, Stmt, UnOp,
    VarId,
};

/// Threads per block of every launch.
pub const BLOCK_THREADS: u32 = 256;
/// The most blocks a grid-stride launch uses (about 30 per SM on a 132-SM H100).
pub const MAX_BLOCKS: u64 = 4096;
/// Output tile of the generic GEMM.
pub const GEMM_TILE: usize = 64;
const GEMM_K: usize = 16;

/// How a lowered kernel is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchShape {
    /// One thread: the kernel has no top-level parallel loop.
    Single,
    /// A grid-stride loop over `items` work items.
    Grid { items: u64 },
    /// The tiled GEMM: `batch` products of `m×n`.
    Gemm { m: usize, n: usize, batch: u64 },
}

impl LaunchShape {
    /// `(grid, block)` dimensions.
    pub fn dims(self) -> ([u32; 3], [u32; 3]) {
        let block = [BLOCK_THREADS, 1, 1];
        match self {
            LaunchShape::Single => ([1, 1, 1], [1, 1, 1]),
            LaunchShape::Grid { items } => {
                let blocks = items.div_ceil(BLOCK_THREADS as u64).clamp(1, MAX_BLOCKS);
                ([blocks as u32, 1, 1], block)
            }
            LaunchShape::Gemm { m, n, batch } => (
                [
                    n.div_ceil(GEMM_TILE).max(1) as u32,
                    m.div_ceil(GEMM_TILE).max(1) as u32,
                    batch.clamp(1, 65535) as u32,
                ],
                block,
            ),
        }
    }
}

/// Lowers `k` into a fresh module of `ctx` whose one kernel is named `entry`.
pub fn lower_kernel<'ctx>(
    ctx: &'ctx Context,
    k: &Kernel,
    entry: &str,
) -> Result<(Cg<'ctx>, LaunchShape), NvptxError> {
    lower(ctx, k, entry, false)
}

/// The same lowering as a plain C-ABI function for the host, run as one GPU thread of a
/// one-thread grid (thread index 0, grid stride 1), so every item is visited: the way tests
/// check a lowered kernel's semantics against `mlc_kir::eval` on the CPU through LLVM's JIT.
/// GEMM-shaped kernels need a block of threads and shared memory, so they are `Unsupported`.
pub fn lower_kernel_for_host<'ctx>(
    ctx: &'ctx Context,
    k: &Kernel,
    entry: &str,
) -> Result<Cg<'ctx>, NvptxError> {
    let (cg, _) = lower(ctx, k, entry, true)?;
    cg.func.set_call_conventions(0);
    Ok(cg)
}

fn lower<'ctx>(
    ctx: &'ctx Context,
    k: &Kernel,
    entry: &str,
    host: bool,
) -> Result<(Cg<'ctx>, LaunchShape), NvptxError> {
    // No depthwise library kernel here: the statement's own loop form (`mlc_kir`) runs as
    // ordinary loops, its plane loop the grid.
    let expanded;
    let k = if mlc_kir::has_depthwise(&k.body) {
        expanded = mlc_kir::expand_depthwise(k);
        &expanded
    } else {
        k
    };
    // Nor a softmax one: the same for `Stmt::Softmax`, its row loop the grid.
    let expanded_sm;
    let k = if mlc_kir::has_softmax(&k.body) {
        expanded_sm = mlc_kir::expand_softmax(k);
        &expanded_sm
    } else {
        k
    };
    // Requantizing contractions come only from the CPU backend's own pass; no GPU epilogue
    // implements them.
    if has_requant(&k.body) {
        return Err(NvptxError::Unsupported(
            "a matmul with a requantization epilogue".into(),
        ));
    }
    let params = vec![crate::cg::Param::GlobalPtr; k.params.len()];
    let cg = Cg::kernel(ctx, entry, &params);
    let launch = {
        let mut lw = Lw::new(&cg, k)?;
        lw.host = host;
        let launch = if let Some((loops, mm)) = gemm_shape(k) {
            if host {
                return Err(NvptxError::Unsupported(
                    "host lowering of a GEMM-shaped kernel".into(),
                ));
            }
            lw.gemm(&loops, mm)?
        } else if let Some((fused, rest)) = grid_shape(k) {
            lw.grid(&fused, rest)?
        } else {
            lw.block(&k.body)?;
            LaunchShape::Single
        };
        cg.ret()?;
        launch
    };
    if launch != LaunchShape::Single {
        cg.max_threads(BLOCK_THREADS)?;
    }
    Ok((cg, launch))
}

fn lit_extent(e: &Expr) -> Option<u64> {
    match e {
        Expr::Lit(Lit::Int(_, n)) if *n >= 0 => Some(*n as u64),
        _ => None,
    }
}

/// The fused parallel loops `(var, extent)` and the body inside them, if the kernel is one
/// parallel loop nest.
fn grid_shape(k: &Kernel) -> Option<(Vec<(VarId, u64)>, &[Stmt])> {
    let [
        Stmt::For {
            var,
            extent,
            kind: LoopKind::Parallel,
            body,
        },
    ] = k.body.as_slice()
    else {
        return None;
    };
    let mut fused = vec![(*var, lit_extent(extent)?)];
    let mut body: &[Stmt] = body;
    // A perfectly nested serial loop can carry a dependence only through memory (no variable
    // can live between perfectly nested loops), and lowering marks a parameter that is both
    // read and written `ReadWrite`: without one, serial loops of the nest fuse too.
    let no_rmw = k.params.iter().all(|p| p.access != Access::ReadWrite);
    while let [
        Stmt::For {
            var,
            extent,
            kind,
            body: inner,
        },
    ] = body
    {
        if *kind == LoopKind::Serial && !no_rmw {
            break;
        }
        let Some(n) = lit_extent(extent) else { break };
        fused.push((*var, n));
        body = inner;
    }
    Some((fused, body))
}

/// Whether a matmul in `body` requantizes its result.
fn has_requant(body: &[Stmt]) -> bool {
    body.iter().any(|s| match s {
        Stmt::Matmul(mm) => mm.requant.is_some() || mm.tail.is_some(),
        Stmt::For { body, .. } => has_requant(body),
        _ => false,
    })
}

/// The batch loops and the contraction, if the kernel is a literal loop nest around one matmul.
fn gemm_shape(k: &Kernel) -> Option<(Vec<(VarId, u64)>, &Matmul)> {
    let mut loops = Vec::new();
    let mut body: &[Stmt] = &k.body;
    let mut serial = false;
    loop {
        match body {
            // Serial batch loops may carry a dependence through C when the product
            // accumulates into it (beta != 0); only independent iterations become blocks.
            [Stmt::Matmul(mm)] if mm.beta == 0.0 || !serial => return Some((loops, mm)),
            [Stmt::Matmul(_)] => return None,
            [
                Stmt::For {
                    var,
                    extent,
                    body: inner,
                    kind,
                },
            ] => {
                serial |= *kind == LoopKind::Serial;
                loops.push((*var, lit_extent(extent)?));
                body = inner;
            }
            _ => return None,
        }
    }
}

type V<'ctx> = BasicValueEnum<'ctx>;
type Res<T> = Result<T, NvptxError>;

/// The accumulator of a contraction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Acc {
    F32,
    F64,
    I32,
}

impl Acc {
    /// The accumulator's element type.
    fn dtype(self) -> DType {
        match self {
            Acc::F32 => DType::F32,
            Acc::F64 => DType::F64,
            Acc::I32 => DType::I32,
        }
    }
}

struct Lw<'a, 'ctx> {
    ctx: &'ctx Context,
    cg: &'a Cg<'ctx>,
    k: &'a Kernel,
    vars: Vec<PointerValue<'ctx>>,
    /// Lowering for the host (tests): one thread, no special registers.
    host: bool,
}

impl<'a, 'ctx> Lw<'a, 'ctx> {
    fn new(cg: &'a Cg<'ctx>, k: &'a Kernel) -> Res<Self> {
        let mut lw = Lw {
            ctx: cg.ctx,
            cg,
            k,
            vars: Vec::new(),
            host: false,
        };
        for (i, &t) in k.vars.iter().enumerate() {
            let ty = lw.reg_ty(t)?;
            lw.vars.push(lw.alloca(ty, &format!("v{i}"))?);
        }
        Ok(lw)
    }

    fn b(&self) -> &inkwell::builder::Builder<'ctx> {
        &self.cg.b
    }

    fn alloca(&self, ty: BasicTypeEnum<'ctx>, name: &str) -> Res<PointerValue<'ctx>> {
        let entry = self
            .cg
            .func
            .get_first_basic_block()
            .expect("kernel has an entry block");
        let tmp = self.ctx.create_builder();
        match entry.get_first_instruction() {
            Some(i) => tmp.position_before(&i),
            None => tmp.position_at_end(entry),
        }
        Ok(tmp.build_alloca(ty, name)?)
    }

    // ---- types ----

    fn float_ty(&self, t: DType) -> Option<FloatType<'ctx>> {
        Some(match t {
            DType::F32 => self.ctx.f32_type(),
            DType::F64 => self.ctx.f64_type(),
            DType::F16 => self.ctx.f16_type(),
            DType::BF16 => self.ctx.bf16_type(),
            _ => return None,
        })
    }

    fn int_ty(&self, t: DType) -> Option<IntType<'ctx>> {
        Some(match t {
            DType::I8 | DType::U8 => self.ctx.i8_type(),
            DType::I16 | DType::U16 => self.ctx.i16_type(),
            DType::I32 | DType::U32 => self.ctx.i32_type(),
            DType::I64 | DType::U64 => self.ctx.i64_type(),
            DType::Bool => self.ctx.bool_type(),
            _ => return None,
        })
    }

    /// The type of a value of `t` in registers.
    fn reg_ty(&self, t: DType) -> Res<BasicTypeEnum<'ctx>> {
        if let Some(f) = self.float_ty(t) {
            return Ok(f.into());
        }
        self.int_ty(t)
            .map(Into::into)
            .ok_or_else(|| NvptxError::Unsupported(format!("{} values in GPU kernels", t.name())))
    }

    /// The type of an element of `t` in memory (bools are bytes).
    fn mem_ty(&self, t: DType) -> Res<BasicTypeEnum<'ctx>> {
        if t == DType::Bool {
            Ok(self.ctx.i8_type().into())
        } else {
            self.reg_ty(t)
        }
    }

    fn i64c(&self, v: i64) -> IntValue<'ctx> {
        self.ctx.i64_type().const_int(v as u64, true)
    }

    fn param(&self, p: ParamId) -> PointerValue<'ctx> {
        self.cg.param_ptr(p.0)
    }

    fn pdtype(&self, p: ParamId) -> DType {
        self.k.params[p.0 as usize].dtype
    }

    // ---- memory ----

    fn load_elem(&self, p: ParamId, idx: IntValue<'ctx>) -> Res<V<'ctx>> {
        let t = self.pdtype(p);
        let mt = self.mem_ty(t)?;
        let ptr = self.cg.gep(mt, self.param(p), idx)?;
        let v = self.b().build_load(mt, ptr, "")?;
        if t == DType::Bool {
            let z = self.ctx.i8_type().const_zero();
            Ok(self
                .b()
                .build_int_compare(IntPredicate::NE, v.into_int_value(), z, "")?
                .into())
        } else {
            Ok(v)
        }
    }

    fn store_elem(&self, p: ParamId, idx: IntValue<'ctx>, v: V<'ctx>) -> Res<()> {
        let t = self.pdtype(p);
        let mt = self.mem_ty(t)?;
        let ptr = self.cg.gep(mt, self.param(p), idx)?;
        let v: V = if t == DType::Bool {
            self.b()
                .build_int_z_extend(v.into_int_value(), self.ctx.i8_type(), "")?
                .into()
        } else {
            v
        };
        self.b().build_store(ptr, v)?;
        Ok(())
    }

    // ---- statements ----

    fn block(&mut self, body: &[Stmt]) -> Res<()> {
        for st in body {
            self.stmt(st)?;
        }
        Ok(())
    }

    fn stmt(&mut self, st: &Stmt) -> Res<()> {
        match st {
            Stmt::For {
                var, extent, body, ..
            } => {
                let n = self.index(extent)?;
                self.serial_loop(self.vars[var.0 as usize], n, |lw| lw.block(body))
            }
            Stmt::Let { var, value } | Stmt::Assign { var, value } => {
                let v = self.expr(value)?;
                self.b().build_store(self.vars[var.0 as usize], v)?;
                Ok(())
            }
            Stmt::Store {
                param,
                index,
                value,
            } => {
                let i = self.index(index)?;
                let v = self.expr(value)?;
                self.store_elem(*param, i, v)
            }
            Stmt::Matmul(mm) => self.inline_matmul(mm),
            // `lower` expands every depthwise statement first.
            Stmt::Depthwise(_) => Err(NvptxError::Unsupported(
                "an unexpanded depthwise convolution".into(),
            )),
            // And every softmax statement.
            Stmt::Softmax(_) => Err(NvptxError::Unsupported("an unexpanded softmax".into())),
        }
    }

    /// `for counter in 0..n`, the counter in the `i64` slot `slot`.
    fn serial_loop(
        &mut self,
        slot: PointerValue<'ctx>,
        n: IntValue<'ctx>,
        body: impl FnOnce(&mut Self) -> Res<()>,
    ) -> Res<()> {
        let i64t = self.ctx.i64_type();
        self.b().build_store(slot, i64t.const_zero())?;
        let f = self.cg.func;
        let head = self.ctx.append_basic_block(f, "for.head");
        let bb = self.ctx.append_basic_block(f, "for.body");
        let exit = self.ctx.append_basic_block(f, "for.exit");
        self.b().build_unconditional_branch(head)?;
        self.b().position_at_end(head);
        let i = self.b().build_load(i64t, slot, "i")?.into_int_value();
        let go = self.b().build_int_compare(IntPredicate::SLT, i, n, "")?;
        self.b().build_conditional_branch(go, bb, exit)?;
        self.b().position_at_end(bb);
        body(self)?;
        let i = self.b().build_load(i64t, slot, "i")?.into_int_value();
        let next = self.b().build_int_add(i, i64t.const_int(1, false), "")?;
        self.b().build_store(slot, next)?;
        self.b().build_unconditional_branch(head)?;
        self.b().position_at_end(exit);
        Ok(())
    }

    /// A loop `for x = start; x < end; x += step` over `i64` values, `x` handed to the body.
    fn stride_loop(
        &mut self,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        step: IntValue<'ctx>,
        body: impl FnOnce(&mut Self, IntValue<'ctx>) -> Res<()>,
    ) -> Res<()> {
        let i64t = self.ctx.i64_type();
        let slot = self.alloca(i64t.into(), "flat")?;
        self.b().build_store(slot, start)?;
        let f = self.cg.func;
        let head = self.ctx.append_basic_block(f, "grid.head");
        let bb = self.ctx.append_basic_block(f, "grid.body");
        let exit = self.ctx.append_basic_block(f, "grid.exit");
        self.b().build_unconditional_branch(head)?;
        self.b().position_at_end(head);
        let i = self.b().build_load(i64t, slot, "")?.into_int_value();
        let go = self.b().build_int_compare(IntPredicate::SLT, i, end, "")?;
        self.b().build_conditional_branch(go, bb, exit)?;
        self.b().position_at_end(bb);
        body(self, i)?;
        let next = self.b().build_int_add(i, step, "")?;
        self.b().build_store(slot, next)?;
        self.b().build_unconditional_branch(head)?;
        self.b().position_at_end(exit);
        Ok(())
    }

    /// Stores into the loop counters `loops` the multi-index of flat item `flat`.
    fn unflatten(&mut self, flat: IntValue<'ctx>, loops: &[(VarId, u64)]) -> Res<()> {
        let total: u64 = loops.iter().map(|l| l.1).product();
        // 32-bit division is several times cheaper than 64-bit on the GPU.
        let narrow = total < (1 << 31);
        let it = if narrow {
            self.ctx.i32_type()
        } else {
            self.ctx.i64_type()
        };
        let f = if narrow {
            self.b().build_int_truncate(flat, it, "")?
        } else {
            flat
        };
        let mut inner = total;
        for &(var, n) in loops {
            inner /= n.max(1);
            let q = if inner == 1 {
                f
            } else {
                self.b()
                    .build_int_unsigned_div(f, it.const_int(inner, false), "")?
            };
            let r = if inner * n == total {
                // The outermost counter needs no remainder.
                q
            } else {
                self.b()
                    .build_int_unsigned_rem(q, it.const_int(n, false), "")?
            };
            let r = if narrow {
                self.b().build_int_z_extend(r, self.ctx.i64_type(), "")?
            } else {
                r
            };
            self.b().build_store(self.vars[var.0 as usize], r)?;
        }
        Ok(())
    }

    fn thread_ids(&self) -> Res<(IntValue<'ctx>, IntValue<'ctx>)> {
        let i64t = self.ctx.i64_type();
        if self.host {
            return Ok((i64t.const_zero(), i64t.const_int(1, false)));
        }
        let tid = self.cg.sreg("tid.x")?;
        let ntid = self.cg.sreg("ntid.x")?;
        let ctaid = self.cg.sreg("ctaid.x")?;
        let nctaid = self.cg.sreg("nctaid.x")?;
        let gid = self.cg.add(self.cg.mul(ctaid, ntid)?, tid)?;
        let stride = self.cg.mul(nctaid, ntid)?;
        Ok((
            self.b().build_int_z_extend(gid, i64t, "")?,
            self.b().build_int_z_extend(stride, i64t, "")?,
        ))
    }

    fn grid(&mut self, fused: &[(VarId, u64)], body: &[Stmt]) -> Res<LaunchShape> {
        let items: u64 = fused.iter().map(|l| l.1).product();
        let (gid, stride) = self.thread_ids()?;
        let n = self.i64c(items as i64);
        self.stride_loop(gid, n, stride, |lw, flat| {
            lw.unflatten(flat, fused)?;
            lw.block(body)
        })?;
        Ok(LaunchShape::Grid { items })
    }

    // ---- expressions ----

    /// An index expression as `i64`.
    fn index(&mut self, e: &Expr) -> Res<IntValue<'ctx>> {
        let t = self.k.type_of(e);
        let v = self.expr(e)?;
        self.to_i64(v, t)
    }

    fn to_i64(&self, v: V<'ctx>, t: DType) -> Res<IntValue<'ctx>> {
        let i64t = self.ctx.i64_type();
        Ok(match v {
            BasicValueEnum::IntValue(i) if i.get_type().get_bit_width() == 64 => i,
            BasicValueEnum::IntValue(i) if t.is_signed_int() => {
                self.b().build_int_s_extend(i, i64t, "")?
            }
            BasicValueEnum::IntValue(i) => self.b().build_int_z_extend(i, i64t, "")?,
            BasicValueEnum::FloatValue(f) => self.b().build_float_to_signed_int(f, i64t, "")?,
            other => {
                return Err(NvptxError::Unsupported(format!(
                    "index of type {:?}",
                    other.get_type()
                )));
            }
        })
    }

    fn truthy(&self, v: V<'ctx>) -> Res<IntValue<'ctx>> {
        Ok(match v {
            BasicValueEnum::IntValue(i) if i.get_type().get_bit_width() == 1 => i,
            BasicValueEnum::IntValue(i) => {
                self.b()
                    .build_int_compare(IntPredicate::NE, i, i.get_type().const_zero(), "")?
            }
            BasicValueEnum::FloatValue(f) => self.b().build_float_compare(
                FloatPredicate::UNE,
                f,
                f.get_type().const_zero(),
                "",
            )?,
            other => {
                return Err(NvptxError::Unsupported(format!(
                    "condition of type {:?}",
                    other.get_type()
                )));
            }
        })
    }

    fn expr(&mut self, e: &Expr) -> Res<V<'ctx>> {
        match e {
            Expr::Var(v) => {
                let ty = self.reg_ty(self.k.var_ty(*v))?;
                Ok(self.b().build_load(ty, self.vars[v.0 as usize], "")?)
            }
            Expr::Lit(l) => self.lit(*l),
            Expr::Load { param, index } => {
                let i = self.index(index)?;
                self.load_elem(*param, i)
            }
            Expr::Unary(op, a) => {
                let t = self.k.type_of(a);
                let v = self.expr(a)?;
                self.unary(*op, t, v)
            }
            Expr::Binary(op, a, b) => {
                let t = self.k.type_of(a);
                let x = self.expr(a)?;
                let y = self.expr(b)?;
                self.binary(*op, t, x, y)
            }
            Expr::Select { cond, then, els } => {
                let c = self.expr(cond)?;
                let c = self.truthy(c)?;
                let f = self.cg.func;
                let tb = self.ctx.append_basic_block(f, "sel.then");
                let eb = self.ctx.append_basic_block(f, "sel.else");
                let join = self.ctx.append_basic_block(f, "sel.join");
                self.b().build_conditional_branch(c, tb, eb)?;
                self.b().position_at_end(tb);
                let tv = self.expr(then)?;
                let tend = self.b().get_insert_block().expect("positioned");
                self.b().build_unconditional_branch(join)?;
                self.b().position_at_end(eb);
                let ev = self.expr(els)?;
                let eend = self.b().get_insert_block().expect("positioned");
                self.b().build_unconditional_branch(join)?;
                self.b().position_at_end(join);
                let phi = self.b().build_phi(tv.get_type(), "")?;
                phi.add_incoming(&[(&tv as &dyn BasicValue, tend), (&ev, eend)]);
                Ok(phi.as_basic_value())
            }
            Expr::Cast(to, a) => {
                let from = self.k.type_of(a);
                let v = self.expr(a)?;
                self.cast(from, *to, v)
            }
        }
    }

    fn lit(&self, l: Lit) -> Res<V<'ctx>> {
        Ok(match l {
            Lit::Float(t, v) => self
                .float_ty(t)
                .ok_or_else(|| NvptxError::Unsupported(format!("{} literal", t.name())))?
                .const_float(v)
                .into(),
            Lit::Int(t, v) => self
                .int_ty(t)
                .ok_or_else(|| NvptxError::Unsupported(format!("{} literal", t.name())))?
                .const_int(v as u64, true)
                .into(),
            Lit::Bool(b) => self.ctx.bool_type().const_int(b as u64, false).into(),
        })
    }

    fn intr(&self, name: &str, ty: BasicTypeEnum<'ctx>, args: &[V<'ctx>]) -> Res<V<'ctx>> {
        let decl = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(&self.cg.module, &[ty]))
            .ok_or_else(|| NvptxError::MissingIntrinsic(name.to_string()))?;
        let args: Vec<_> = args.iter().map(|a| (*a).into()).collect();
        let call = self.b().build_call(decl, &args, "")?;
        Ok(call
            .try_as_basic_value()
            .basic()
            .expect("the intrinsic returns a value"))
    }

    fn math(&self, name: &str, args: &[FloatValue<'ctx>]) -> Res<FloatValue<'ctx>> {
        let f = math::function(self.ctx, &self.cg.module, name)?;
        let args: Vec<_> = args.iter().map(|a| (*a).into()).collect();
        let call = self.b().build_call(f, &args, "")?;
        Ok(call
            .try_as_basic_value()
            .basic()
            .expect("math functions return a value")
            .into_float_value())
    }

    /// Widens a float of a narrow type to f32 (f16/bf16 compute in f32).
    fn widen(&self, v: FloatValue<'ctx>) -> Res<FloatValue<'ctx>> {
        let t = v.get_type();
        if t == self.ctx.f16_type() || t == self.ctx.bf16_type() {
            Ok(self.b().build_float_ext(v, self.ctx.f32_type(), "")?)
        } else {
            Ok(v)
        }
    }

    fn narrow(&self, v: FloatValue<'ctx>, to: FloatType<'ctx>) -> Res<FloatValue<'ctx>> {
        if v.get_type() == to {
            Ok(v)
        } else if to == self.ctx.f64_type() {
            Ok(self.b().build_float_ext(v, to, "")?)
        } else {
            Ok(self.b().build_float_trunc(v, to, "")?)
        }
    }

    fn fcmp(
        &self,
        p: FloatPredicate,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
    ) -> Res<IntValue<'ctx>> {
        Ok(self.b().build_float_compare(p, a, b, "")?)
    }

    fn fsel(
        &self,
        c: IntValue<'ctx>,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
    ) -> Res<FloatValue<'ctx>> {
        Ok(self.b().build_select(c, a, b, "")?.into_float_value())
    }

    fn isel(&self, c: IntValue<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Res<IntValue<'ctx>> {
        Ok(self.b().build_select(c, a, b, "")?.into_int_value())
    }

    fn unary(&mut self, op: UnOp, t: DType, v: V<'ctx>) -> Res<V<'ctx>> {
        if let UnOp::Bitcast(to) = op {
            // Casts of the storage-only types (float8, float4, 4/2-bit ints) and ONNX BitCast.
            return Err(NvptxError::Unsupported(format!(
                "bitcast from {} to {} (casts of storage-only types)",
                t.name(),
                to.name()
            )));
        }
        match v {
            BasicValueEnum::FloatValue(x0) => {
                let ty = x0.get_type();
                if matches!(op, UnOp::IsNan | UnOp::IsInf) {
                    let x = self.widen(x0)?;
                    return Ok(if op == UnOp::IsNan {
                        self.fcmp(FloatPredicate::UNO, x, x)?
                    } else {
                        let a = self.intr("llvm.fabs", x.get_type().into(), &[x.into()])?;
                        self.fcmp(
                            FloatPredicate::OEQ,
                            a.into_float_value(),
                            x.get_type().const_float(f64::INFINITY),
                        )?
                    }
                    .into());
                }
                let x = self.widen(x0)?;
                let xt: BasicTypeEnum = x.get_type().into();
                let r = match op {
                    UnOp::Neg => self.b().build_float_neg(x, "")?,
                    UnOp::Abs => self.intr("llvm.fabs", xt, &[x.into()])?.into_float_value(),
                    UnOp::Not => {
                        let z = self.fcmp(FloatPredicate::OEQ, x, x.get_type().const_zero())?;
                        self.fsel(z, x.get_type().const_float(1.0), x.get_type().const_zero())?
                    }
                    UnOp::Sqrt => self.intr("llvm.sqrt", xt, &[x.into()])?.into_float_value(),
                    UnOp::Floor => self.intr("llvm.floor", xt, &[x.into()])?.into_float_value(),
                    UnOp::Ceil => self.intr("llvm.ceil", xt, &[x.into()])?.into_float_value(),
                    UnOp::Round => self
                        .intr("llvm.roundeven", xt, &[x.into()])?
                        .into_float_value(),
                    _ => {
                        let name = op
                            .libm_name()
                            .expect("the remaining ops are libm functions");
                        let d = self.narrow(x, self.ctx.f64_type())?;
                        let r = self.math(name, &[d])?;
                        self.narrow_any(r, x.get_type())?
                    }
                };
                Ok(self.narrow_any(r, ty)?.into())
            }
            BasicValueEnum::IntValue(x) if t == DType::Bool => Ok(match op {
                UnOp::Not => self.b().build_not(x, "")?.into(),
                UnOp::IsNan | UnOp::IsInf => self.ctx.bool_type().const_zero().into(),
                _ => x.into(),
            }),
            BasicValueEnum::IntValue(x) => {
                let it = x.get_type();
                Ok(match op {
                    UnOp::Neg => self.b().build_int_neg(x, "")?.into(),
                    UnOp::Abs if t.is_signed_int() => {
                        let neg = self.b().build_int_compare(
                            IntPredicate::SLT,
                            x,
                            it.const_zero(),
                            "",
                        )?;
                        let nx = self.b().build_int_neg(x, "")?;
                        self.isel(neg, nx, x)?.into()
                    }
                    UnOp::Not => self.b().build_not(x, "")?.into(),
                    UnOp::IsNan | UnOp::IsInf => self.ctx.bool_type().const_zero().into(),
                    _ => x.into(),
                })
            }
            other => Err(NvptxError::Unsupported(format!(
                "{} of {:?}",
                op.name(),
                other.get_type()
            ))),
        }
    }

    /// Converts between float types, rounding when narrowing.
    fn narrow_any(&self, v: FloatValue<'ctx>, to: FloatType<'ctx>) -> Res<FloatValue<'ctx>> {
        if v.get_type() == to {
            return Ok(v);
        }
        let bits = |t: FloatType<'ctx>| {
            if t == self.ctx.f64_type() {
                64
            } else if t == self.ctx.f32_type() {
                32
            } else {
                16
            }
        };
        if bits(to) > bits(v.get_type()) {
            Ok(self.b().build_float_ext(v, to, "")?)
        } else if bits(to) == 16 && bits(v.get_type()) == 16 {
            let w = self.b().build_float_ext(v, self.ctx.f32_type(), "")?;
            Ok(self.b().build_float_trunc(w, to, "")?)
        } else {
            Ok(self.b().build_float_trunc(v, to, "")?)
        }
    }

    fn binary(&mut self, op: BinOp, t: DType, a: V<'ctx>, b: V<'ctx>) -> Res<V<'ctx>> {
        match (a, b) {
            (BasicValueEnum::FloatValue(x0), BasicValueEnum::FloatValue(y0)) => {
                let ty = x0.get_type();
                let x = self.widen(x0)?;
                let y = self.widen(y0)?;
                let ft = x.get_type();
                let cmp = |p| -> Res<V<'ctx>> { Ok(self.fcmp(p, x, y)?.into()) };
                let r = match op {
                    BinOp::Add => self.b().build_float_add(x, y, "")?,
                    BinOp::Sub => self.b().build_float_sub(x, y, "")?,
                    BinOp::Mul => self.b().build_float_mul(x, y, "")?,
                    BinOp::Div => self.b().build_float_div(x, y, "")?,
                    BinOp::Rem => self.frem(x, y)?,
                    BinOp::Max | BinOp::Min => {
                        let p = if op == BinOp::Max {
                            FloatPredicate::OGT
                        } else {
                            FloatPredicate::OLT
                        };
                        let c = self.fcmp(p, x, y)?;
                        let m = self.fsel(c, x, y)?;
                        let nan = self.fcmp(FloatPredicate::UNO, x, y)?;
                        let s = self.b().build_float_add(x, y, "")?;
                        self.fsel(nan, s, m)?
                    }
                    BinOp::Pow => {
                        let f64t = self.ctx.f64_type();
                        let xd = self.narrow_any(x, f64t)?;
                        let yd = self.narrow_any(y, f64t)?;
                        let r = self.math("pow", &[xd, yd])?;
                        self.narrow_any(r, ft)?
                    }
                    BinOp::Eq => return cmp(FloatPredicate::OEQ),
                    BinOp::Ne => return cmp(FloatPredicate::UNE),
                    BinOp::Lt => return cmp(FloatPredicate::OLT),
                    BinOp::Le => return cmp(FloatPredicate::OLE),
                    BinOp::Gt => return cmp(FloatPredicate::OGT),
                    BinOp::Ge => return cmp(FloatPredicate::OGE),
                    BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Shl | BinOp::Shr => {
                        ft.const_float(f64::NAN)
                    }
                };
                Ok(self.narrow_any(r, ty)?.into())
            }
            (BasicValueEnum::IntValue(x), BasicValueEnum::IntValue(y)) if t == DType::Bool => {
                let b = self.b();
                let r = match op {
                    BinOp::And | BinOp::Min | BinOp::Mul => b.build_and(x, y, "")?,
                    BinOp::Or | BinOp::Max | BinOp::Add => b.build_or(x, y, "")?,
                    BinOp::Xor | BinOp::Ne => b.build_xor(x, y, "")?,
                    BinOp::Eq => b.build_int_compare(IntPredicate::EQ, x, y, "")?,
                    BinOp::Lt => b.build_and(b.build_not(x, "")?, y, "")?,
                    BinOp::Le => b.build_or(b.build_not(x, "")?, y, "")?,
                    BinOp::Gt => b.build_and(x, b.build_not(y, "")?, "")?,
                    BinOp::Ge => b.build_or(x, b.build_not(y, "")?, "")?,
                    _ => self.ctx.bool_type().const_zero(),
                };
                Ok(r.into())
            }
            (BasicValueEnum::IntValue(x), BasicValueEnum::IntValue(y)) => {
                Ok(self.int_binary(op, t, x, y)?.into())
            }
            (a, _) => Err(NvptxError::Unsupported(format!(
                "{} of {:?}",
                op.name(),
                a.get_type()
            ))),
        }
    }

    /// C's `fmod`: `x - trunc(x / y) * y`, exact while the quotient fits the mantissa.
    fn frem(&self, x: FloatValue<'ctx>, y: FloatValue<'ctx>) -> Res<FloatValue<'ctx>> {
        let ft = x.get_type();
        let f64t = self.ctx.f64_type();
        let xd = self.narrow_any(x, f64t)?;
        let yd = self.narrow_any(y, f64t)?;
        let q = self.b().build_float_div(xd, yd, "")?;
        let q = self.intr("llvm.trunc", f64t.into(), &[q.into()])?;
        let nq = self.b().build_float_neg(q.into_float_value(), "")?;
        let r = self
            .intr("llvm.fma", f64t.into(), &[nq.into(), yd.into(), xd.into()])?
            .into_float_value();
        let ay = self
            .intr("llvm.fabs", f64t.into(), &[yd.into()])?
            .into_float_value();
        let ax = self
            .intr("llvm.fabs", f64t.into(), &[xd.into()])?
            .into_float_value();
        let inf = f64t.const_float(f64::INFINITY);
        let yinf = self.fcmp(FloatPredicate::OEQ, ay, inf)?;
        let xfin = self.fcmp(FloatPredicate::OLT, ax, inf)?;
        let keep = self.b().build_and(yinf, xfin, "")?;
        let r = self.fsel(keep, xd, r)?;
        self.narrow_any(r, ft)
    }

    fn int_binary(
        &mut self,
        op: BinOp,
        t: DType,
        x: IntValue<'ctx>,
        y: IntValue<'ctx>,
    ) -> Res<IntValue<'ctx>> {
        let it = x.get_type();
        let bits = it.get_bit_width() as u64;
        let signed = t.is_signed_int();
        let zero = it.const_zero();
        let one = it.const_int(1, false);
        let b = &self.cg.b;
        let pred = |s: IntPredicate, u: IntPredicate| if signed { s } else { u };
        Ok(match op {
            BinOp::Add => b.build_int_add(x, y, "")?,
            BinOp::Sub => b.build_int_sub(x, y, "")?,
            BinOp::Mul => b.build_int_mul(x, y, "")?,
            BinOp::Div | BinOp::Rem => {
                let y0 = b.build_int_compare(IntPredicate::EQ, y, zero, "")?;
                let m1 = if signed {
                    b.build_int_compare(IntPredicate::EQ, y, it.const_all_ones(), "")?
                } else {
                    self.ctx.bool_type().const_zero()
                };
                let unsafe_d = b.build_or(y0, m1, "")?;
                let d = self.isel(unsafe_d, one, y)?;
                let r = match (op, signed) {
                    (BinOp::Div, true) => b.build_int_signed_div(x, d, "")?,
                    (BinOp::Div, false) => b.build_int_unsigned_div(x, d, "")?,
                    (_, true) => b.build_int_signed_rem(x, d, "")?,
                    (_, false) => b.build_int_unsigned_rem(x, d, "")?,
                };
                // x / -1 = -x (wrapping); x % -1 = 0; anything / 0 = 0.
                let r = if signed {
                    let alt = if op == BinOp::Div {
                        b.build_int_neg(x, "")?
                    } else {
                        zero
                    };
                    self.isel(m1, alt, r)?
                } else {
                    r
                };
                self.isel(y0, zero, r)?
            }
            BinOp::Max => {
                let c =
                    b.build_int_compare(pred(IntPredicate::SGT, IntPredicate::UGT), x, y, "")?;
                self.isel(c, x, y)?
            }
            BinOp::Min => {
                let c =
                    b.build_int_compare(pred(IntPredicate::SLT, IntPredicate::ULT), x, y, "")?;
                self.isel(c, x, y)?
            }
            BinOp::Pow => self.ipow(x, y, signed)?,
            BinOp::And => b.build_and(x, y, "")?,
            BinOp::Or => b.build_or(x, y, "")?,
            BinOp::Xor => b.build_xor(x, y, "")?,
            BinOp::Shl => {
                let inr =
                    b.build_int_compare(IntPredicate::ULT, y, it.const_int(bits, false), "")?;
                let s = self.isel(inr, y, zero)?;
                let r = b.build_left_shift(x, s, "")?;
                self.isel(inr, r, zero)?
            }
            BinOp::Shr if signed => {
                let max = it.const_int(bits - 1, false);
                let big = b.build_int_compare(IntPredicate::UGT, y, max, "")?;
                let s = self.isel(big, max, y)?;
                b.build_right_shift(x, s, true, "")?
            }
            BinOp::Shr => {
                let inr =
                    b.build_int_compare(IntPredicate::ULT, y, it.const_int(bits, false), "")?;
                let s = self.isel(inr, y, zero)?;
                let r = b.build_right_shift(x, s, false, "")?;
                self.isel(inr, r, zero)?
            }
            BinOp::Eq => b.build_int_compare(IntPredicate::EQ, x, y, "")?,
            BinOp::Ne => b.build_int_compare(IntPredicate::NE, x, y, "")?,
            BinOp::Lt => {
                b.build_int_compare(pred(IntPredicate::SLT, IntPredicate::ULT), x, y, "")?
            }
            BinOp::Le => {
                b.build_int_compare(pred(IntPredicate::SLE, IntPredicate::ULE), x, y, "")?
            }
            BinOp::Gt => {
                b.build_int_compare(pred(IntPredicate::SGT, IntPredicate::UGT), x, y, "")?
            }
            BinOp::Ge => {
                b.build_int_compare(pred(IntPredicate::SGE, IntPredicate::UGE), x, y, "")?
            }
        })
    }

    /// Wrapping integer power by squaring over the exponent's low 32 bits (eval caps the
    /// exponent at `u32::MAX`); a negative signed exponent gives 0.
    fn ipow(&mut self, x: IntValue<'ctx>, y: IntValue<'ctx>, signed: bool) -> Res<IntValue<'ctx>> {
        let it = x.get_type();
        let i64t = self.ctx.i64_type();
        let e = if signed {
            self.b().build_int_s_extend_or_bit_cast(y, i64t, "")?
        } else {
            self.b().build_int_z_extend_or_bit_cast(y, i64t, "")?
        };
        let cap = i64t.const_int(u32::MAX as u64, false);
        let big = self.b().build_int_compare(IntPredicate::SGT, e, cap, "")?;
        let e = self.isel(big, cap, e)?;
        let mut r = it.const_int(1, false);
        let mut base = x;
        for bit in 0..32 {
            let m = self.b().build_and(e, i64t.const_int(1 << bit, false), "")?;
            let set = self
                .b()
                .build_int_compare(IntPredicate::NE, m, i64t.const_zero(), "")?;
            let rm = self.b().build_int_mul(r, base, "")?;
            r = self.isel(set, rm, r)?;
            base = self.b().build_int_mul(base, base, "")?;
        }
        if signed {
            let neg = self
                .b()
                .build_int_compare(IntPredicate::SLT, e, i64t.const_zero(), "")?;
            r = self.isel(neg, it.const_zero(), r)?;
        }
        Ok(r)
    }

    fn cast(&self, from: DType, to: DType, v: V<'ctx>) -> Res<V<'ctx>> {
        if from == to {
            return Ok(v);
        }
        let b = self.b();
        if to == DType::Bool {
            return Ok(self.truthy(v)?.into());
        }
        if let Some(ft) = self.float_ty(to) {
            return Ok(match v {
                BasicValueEnum::FloatValue(x) => self.narrow_any(x, ft)?.into(),
                BasicValueEnum::IntValue(x) => {
                    // Integers convert through f64 when the target is narrower than f32, as
                    // eval rounds `i as f64` to the declared type.
                    let via = if to.is_small_float() {
                        self.ctx.f64_type()
                    } else {
                        ft
                    };
                    let f = if from.is_signed_int() {
                        b.build_signed_int_to_float(x, via, "")?
                    } else {
                        b.build_unsigned_int_to_float(x, via, "")?
                    };
                    self.narrow_any(f, ft)?.into()
                }
                other => {
                    return Err(NvptxError::Unsupported(format!(
                        "cast of {:?}",
                        other.get_type()
                    )));
                }
            });
        }
        let it = self
            .int_ty(to)
            .ok_or_else(|| NvptxError::Unsupported(format!("cast to {}", to.name())))?;
        Ok(match v {
            BasicValueEnum::FloatValue(x) => {
                let x = self.widen(x)?;
                let name = if to.is_signed_int() {
                    "llvm.fptosi.sat"
                } else {
                    "llvm.fptoui.sat"
                };
                let decl = Intrinsic::find(name)
                    .and_then(|i| {
                        i.get_declaration(&self.cg.module, &[it.into(), x.get_type().into()])
                    })
                    .ok_or_else(|| NvptxError::MissingIntrinsic(name.to_string()))?;
                b.build_call(decl, &[x.into()], "")?
                    .try_as_basic_value()
                    .basic()
                    .expect("the conversion returns a value")
            }
            BasicValueEnum::IntValue(x) => {
                let fb = x.get_type().get_bit_width();
                let tb = it.get_bit_width();
                if fb > tb {
                    b.build_int_truncate(x, it, "")?.into()
                } else if fb == tb {
                    x.into()
                } else if from.is_signed_int() {
                    b.build_int_s_extend(x, it, "")?.into()
                } else {
                    b.build_int_z_extend(x, it, "")?.into()
                }
            }
            other => {
                return Err(NvptxError::Unsupported(format!(
                    "cast of {:?}",
                    other.get_type()
                )));
            }
        })
    }

    // ---- contractions ----

    fn acc_kind(&self, mm: &Matmul) -> Acc {
        let (a, b) = (self.pdtype(mm.a.param), self.pdtype(mm.b.param));
        if a == DType::F64 || b == DType::F64 {
            Acc::F64
        } else if a.is_float() || b.is_float() {
            Acc::F32
        } else {
            Acc::I32
        }
    }

    fn acc_ty(&self, acc: Acc) -> BasicTypeEnum<'ctx> {
        match acc {
            Acc::F32 => self.ctx.f32_type().into(),
            Acc::F64 => self.ctx.f64_type().into(),
            Acc::I32 => self.ctx.i32_type().into(),
        }
    }

    /// Loads `m[off + r*rs + c*cs]` converted to the accumulator type.
    fn load_acc(
        &self,
        m: &MatRef,
        off: IntValue<'ctx>,
        r: IntValue<'ctx>,
        c: IntValue<'ctx>,
        acc: Acc,
    ) -> Res<V<'ctx>> {
        let b = self.b();
        let i = b.build_int_add(
            off,
            b.build_int_add(
                b.build_int_mul(r, self.i64c(m.row_stride), "")?,
                b.build_int_mul(c, self.i64c(m.col_stride), "")?,
                "",
            )?,
            "",
        )?;
        let v = self.load_elem(m.param, i)?;
        self.cast(self.pdtype(m.param), acc.dtype(), v)
    }

    /// Element `(kk, c)` of a contraction's `B`: of its view, or of the column matrix of its
    /// image (`Im2col`): the tap's index computed and clamped to the image's first element
    /// where it is padding, so the load stays inside the buffer, and the fill selected there.
    fn load_b(
        &self,
        mm: &Matmul,
        off: IntValue<'ctx>,
        kk: IntValue<'ctx>,
        c: IntValue<'ctx>,
        acc: Acc,
    ) -> Res<V<'ctx>> {
        let Some(v) = mm.b_im2col.as_deref() else {
            return self.load_acc(&mm.b, off, kk, c, acc);
        };
        let b = self.b();
        let k = |x: usize| self.i64c(x as i64);
        let (kh, kw) = (v.kernel[0], v.kernel[1]);
        let ch = b.build_int_unsigned_div(kk, k(kh * kw), "")?;
        let ky = b.build_int_unsigned_rem(b.build_int_unsigned_div(kk, k(kw), "")?, k(kh), "")?;
        let kx = b.build_int_unsigned_rem(kk, k(kw), "")?;
        let oy = b.build_int_unsigned_div(c, k(v.out_hw[1]), "")?;
        let ox = b.build_int_unsigned_rem(c, k(v.out_hw[1]), "")?;
        let tap = |o: IntValue<'ctx>, t: IntValue<'ctx>, d: usize| -> Res<IntValue<'ctx>> {
            let at = b.build_int_add(
                b.build_int_mul(o, k(v.stride[d]), "")?,
                b.build_int_mul(t, k(v.dilation[d]), "")?,
                "",
            )?;
            Ok(b.build_int_sub(at, k(v.pad[d]), "")?)
        };
        let (iy, ix) = (tap(oy, ky, 0)?, tap(ox, kx, 1)?);
        let within = |x: IntValue<'ctx>, n: usize| -> Res<IntValue<'ctx>> {
            // `0 ≤ x < n` as one unsigned comparison.
            Ok(b.build_int_compare(IntPredicate::ULT, x, k(n), "")?)
        };
        let inside = b.build_and(within(iy, v.in_hw[0])?, within(ix, v.in_hw[1])?, "")?;
        let idx = b.build_int_add(
            b.build_int_mul(ch, k(v.in_hw[0] * v.in_hw[1]), "")?,
            b.build_int_add(b.build_int_mul(iy, k(v.in_hw[1]), "")?, ix, "")?,
            "",
        )?;
        let idx = b.build_select(inside, idx, k(0), "")?.into_int_value();
        let x = self.load_elem(mm.b.param, b.build_int_add(off, idx, "")?)?;
        let to = acc.dtype();
        let x = self.cast(self.pdtype(mm.b.param), to, x)?;
        let fill = match v.fill {
            Some(f) => self.cast(self.pdtype(f), to, self.load_elem(f, k(0))?)?,
            None => self.acc_ty(acc).const_zero(),
        };
        Ok(self.b().build_select(inside, x, fill, "")?)
    }

    fn madd(&self, acc: Acc, s: V<'ctx>, a: V<'ctx>, b: V<'ctx>) -> Res<V<'ctx>> {
        Ok(match acc {
            Acc::I32 => {
                let p = self
                    .b()
                    .build_int_mul(a.into_int_value(), b.into_int_value(), "")?;
                self.b().build_int_add(s.into_int_value(), p, "")?.into()
            }
            _ => self.intr("llvm.fma", s.get_type(), &[a, b, s])?,
        })
    }

    /// `C[r, c] = act(alpha * acc + beta * C[r, c] + bias[r, c])`.
    fn epilogue(
        &self,
        mm: &Matmul,
        acc: Acc,
        v: V<'ctx>,
        offs: (IntValue<'ctx>, Option<IntValue<'ctx>>),
        r: IntValue<'ctx>,
        c: IntValue<'ctx>,
    ) -> Res<()> {
        let cty = self.pdtype(mm.c.param);
        let b = self.b();
        let ci = b.build_int_add(
            offs.0,
            b.build_int_add(
                b.build_int_mul(r, self.i64c(mm.c.row_stride), "")?,
                b.build_int_mul(c, self.i64c(mm.c.col_stride), "")?,
                "",
            )?,
            "",
        )?;
        let plain =
            mm.alpha == 1.0 && mm.beta == 0.0 && mm.bias.is_none() && mm.act == Activation::None;
        if acc == Acc::I32 && plain && cty.is_int() {
            let out = self.cast(DType::I32, cty, v)?;
            return self.store_elem(mm.c.param, ci, out);
        }
        // The epilogue computes in f32 for f32 accumulators, else in f64 (exact for i32).
        let (et, edt) = if acc == Acc::F32 && cty != DType::F64 {
            (self.ctx.f32_type(), DType::F32)
        } else {
            (self.ctx.f64_type(), DType::F64)
        };
        let from = match acc {
            Acc::F32 => DType::F32,
            Acc::F64 => DType::F64,
            Acc::I32 => DType::I32,
        };
        let mut x = self.cast(from, edt, v)?.into_float_value();
        if mm.alpha != 1.0 {
            x = b.build_float_mul(x, et.const_float(mm.alpha as f64), "")?;
        }
        if mm.beta != 0.0 {
            let old = self.load_elem(mm.c.param, ci)?;
            let old = self.cast(cty, edt, old)?.into_float_value();
            let t = b.build_float_mul(old, et.const_float(mm.beta as f64), "")?;
            x = b.build_float_add(x, t, "")?;
        }
        if let (Some(bias), Some(bo)) = (&mm.bias, offs.1) {
            let bv = self.load_acc(
                bias,
                bo,
                r,
                c,
                if edt == DType::F32 {
                    Acc::F32
                } else {
                    Acc::F64
                },
            )?;
            x = b.build_float_add(x, bv.into_float_value(), "")?;
        }
        let clamp = |x: FloatValue<'ctx>, lo: f64, hi: Option<f64>| -> Res<FloatValue<'ctx>> {
            let l = et.const_float(lo);
            let gt = self.fcmp(FloatPredicate::OGT, x, l)?;
            let mut y = self.fsel(gt, x, l)?;
            if let Some(hi) = hi {
                let h = et.const_float(hi);
                let lt = self.fcmp(FloatPredicate::OLT, y, h)?;
                y = self.fsel(lt, y, h)?;
            }
            Ok(y)
        };
        // max(0, min(1, e)) with NaN kept: each select takes the bound only on an ordered
        // comparison.
        let clamp01 = |e: FloatValue<'ctx>| -> Res<FloatValue<'ctx>> {
            let (zero, one) = (et.const_float(0.0), et.const_float(1.0));
            let gt = self.fcmp(FloatPredicate::OGT, e, one)?;
            let y = self.fsel(gt, one, e)?;
            let lt = self.fcmp(FloatPredicate::OLT, y, zero)?;
            self.fsel(lt, zero, y)
        };
        x = match mm.act {
            Activation::None => x,
            Activation::Relu => clamp(x, 0.0, None)?,
            Activation::Clip { min, max } => clamp(x, min as f64, Some(max as f64))?,
            Activation::HardSigmoid { alpha, beta } => {
                let e = b.build_float_mul(x, et.const_float(alpha as f64), "")?;
                let e = b.build_float_add(e, et.const_float(beta as f64), "")?;
                clamp01(e)?
            }
            Activation::HardSwish => {
                let e = b.build_float_mul(x, et.const_float(1.0 / 6.0), "")?;
                let e = b.build_float_add(e, et.const_float(0.5), "")?;
                let g = clamp01(e)?;
                b.build_float_mul(x, g, "")?
            }
            // Only the CPU backend's epilogue pass forms these (from fused tile tails, which
            // this backend never builds).
            Activation::Gelu
            | Activation::GeluTanh
            | Activation::Sigmoid
            | Activation::Swish { .. } => {
                return Err(NvptxError::Unsupported(
                    "a GELU/sigmoid contraction epilogue (formed by the CPU backend only)".into(),
                ));
            }
        };
        let out = self.cast(edt, cty, x.into())?;
        self.store_elem(mm.c.param, ci, out)
    }

    fn offsets(&mut self, mm: &Matmul) -> Res<[Option<IntValue<'ctx>>; 4]> {
        Ok([
            Some(self.index(&mm.a.offset)?),
            Some(self.index(&mm.b.offset)?),
            Some(self.index(&mm.c.offset)?),
            match &mm.bias {
                Some(b) => Some(self.index(&b.offset)?),
                None => None,
            },
        ])
    }

    /// A contraction as serial loops in the current thread.
    fn inline_matmul(&mut self, mm: &Matmul) -> Res<()> {
        let acc = self.acc_kind(mm);
        let [ao, bo, co, bias_o] = self.offsets(mm)?;
        let (ao, bo, co) = (ao.expect("set"), bo.expect("set"), co.expect("set"));
        let i64t = self.ctx.i64_type();
        let rs = self.alloca(i64t.into(), "mm.r")?;
        let cs = self.alloca(i64t.into(), "mm.c")?;
        let ks = self.alloca(i64t.into(), "mm.k")?;
        let sum = self.alloca(self.acc_ty(acc), "mm.acc")?;
        let (m, n, k) = (
            self.i64c(mm.m as i64),
            self.i64c(mm.n as i64),
            self.i64c(mm.k as i64),
        );
        self.serial_loop(rs, m, |lw| {
            lw.serial_loop(cs, n, |lw| {
                let zero = lw.acc_ty(acc).const_zero();
                lw.b().build_store(sum, zero)?;
                lw.serial_loop(ks, k, |lw| {
                    let r = lw.b().build_load(i64t, rs, "")?.into_int_value();
                    let c = lw.b().build_load(i64t, cs, "")?.into_int_value();
                    let kk = lw.b().build_load(i64t, ks, "")?.into_int_value();
                    let a = lw.load_acc(&mm.a, ao, r, kk, acc)?;
                    let bv = lw.load_b(mm, bo, kk, c, acc)?;
                    let s = lw.b().build_load(lw.acc_ty(acc), sum, "")?;
                    let s = lw.madd(acc, s, a, bv)?;
                    lw.b().build_store(sum, s)?;
                    Ok(())
                })?;
                let r = lw.b().build_load(i64t, rs, "")?.into_int_value();
                let c = lw.b().build_load(i64t, cs, "")?.into_int_value();
                let s = lw.b().build_load(lw.acc_ty(acc), sum, "")?;
                lw.epilogue(mm, acc, s, (co, bias_o), r, c)
            })
        })
    }

    /// The shared-memory tiled GEMM: block `(x, y)` computes the 64×64 tile of C at rows
    /// `64y..`, columns `64x..`; thread `t` (`tx = t % 16`, `ty = t / 16`) owns rows
    /// `ty + 16i` and columns `tx + 16j`, `i, j < 4`, so that stores coalesce along rows. A is
    /// staged transposed with a padded row (65) so the staging stores hit distinct banks.
    fn gemm(&mut self, loops: &[(VarId, u64)], mm: &Matmul) -> Res<LaunchShape> {
        let acc = self.acc_kind(mm);
        let at = self.acc_ty(acc);
        let i64t = self.ctx.i64_type();
        let i32t = self.ctx.i32_type();
        let t = GEMM_TILE as u64;
        let kt = GEMM_K as u64;
        let a_pitch = t + 1;
        let a_elems = (kt * a_pitch) as u32;
        let b_elems = (kt * t) as u32;
        let sh = |name: &str, n: u32| {
            let ty = at.array_type(n);
            let g = self
                .cg
                .module
                .add_global(ty, Some(AddressSpace::from(SHARED)), name);
            g.set_linkage(Linkage::Internal);
            g.set_initializer(&ty.get_undef());
            g.set_alignment(16);
            g.as_pointer_value()
        };
        let a_sh = sh("gemm_a", a_elems);
        let b_sh = sh("gemm_b", b_elems);
        let tid = self.cg.sreg("tid.x")?;
        let tx = self.b().build_and(tid, i32t.const_int(15, false), "")?;
        let ty = self
            .b()
            .build_right_shift(tid, i32t.const_int(4, false), false, "")?;
        let wide = |v: IntValue<'ctx>| -> Res<IntValue<'ctx>> {
            Ok(self.b().build_int_z_extend(v, i64t, "")?)
        };
        let (tid64, tx64, ty64) = (wide(tid)?, wide(tx)?, wide(ty)?);
        let row0 =
            self.b()
                .build_int_mul(wide(self.cg.sreg("ctaid.y")?)?, self.i64c(t as i64), "")?;
        let col0 =
            self.b()
                .build_int_mul(wide(self.cg.sreg("ctaid.x")?)?, self.i64c(t as i64), "")?;
        let bz = wide(self.cg.sreg("ctaid.z")?)?;
        let nbz = wide(self.cg.sreg("nctaid.z")?)?;
        let batch: u64 = loops.iter().map(|l| l.1).product();
        let (m, n, k) = (
            self.i64c(mm.m as i64),
            self.i64c(mm.n as i64),
            self.i64c(mm.k as i64),
        );
        let accs: Vec<PointerValue<'ctx>> = (0..16)
            .map(|i| self.alloca(at, &format!("acc{i}")))
            .collect::<Res<_>>()?;
        self.stride_loop(bz, self.i64c(batch as i64), nbz, |lw, z| {
            lw.unflatten(z, loops)?;
            let [ao, bo, co, bias_o] = lw.offsets(mm)?;
            let (ao, bo, co) = (ao.expect("set"), bo.expect("set"), co.expect("set"));
            for a in &accs {
                lw.b().build_store(*a, at.const_zero())?;
            }
            let kslot = lw.alloca(i64t.into(), "k0")?;
            let ksteps = lw.i64c(mm.k.div_ceil(GEMM_K) as i64);
            lw.serial_loop(kslot, ksteps, |lw| {
                let step = lw.b().build_load(i64t, kslot, "")?.into_int_value();
                let k0 = lw.b().build_int_mul(step, lw.i64c(kt as i64), "")?;
                for j in 0..4u64 {
                    let e = lw.b().build_int_add(tid64, lw.i64c((256 * j) as i64), "")?;
                    // A: element (r = e / 16, c = e % 16) of the 64×16 slab.
                    let c = lw.b().build_and(e, lw.i64c(15), "")?;
                    let r = lw.b().build_right_shift(e, lw.i64c(4), false, "")?;
                    let gr = lw.b().build_int_add(row0, r, "")?;
                    let gk = lw.b().build_int_add(k0, c, "")?;
                    let v = lw.guarded_load(Operand::Mat(&mm.a), ao, gr, gk, m, k, acc)?;
                    let si = lw.b().build_int_add(
                        lw.b().build_int_mul(c, lw.i64c(a_pitch as i64), "")?,
                        r,
                        "",
                    )?;
                    let p = lw.cg.gep(at, a_sh, si)?;
                    lw.b().build_store(p, v)?;
                    // B: element (r = e / 64, c = e % 64) of the 16×64 slab.
                    let c = lw.b().build_and(e, lw.i64c(63), "")?;
                    let r = lw.b().build_right_shift(e, lw.i64c(6), false, "")?;
                    let gk = lw.b().build_int_add(k0, r, "")?;
                    let gc = lw.b().build_int_add(col0, c, "")?;
                    let v = lw.guarded_load(Operand::B(mm), bo, gk, gc, k, n, acc)?;
                    let si = lw.b().build_int_add(
                        lw.b().build_int_mul(r, lw.i64c(t as i64), "")?,
                        c,
                        "",
                    )?;
                    let p = lw.cg.gep(at, b_sh, si)?;
                    lw.b().build_store(p, v)?;
                }
                lw.cg.barrier()?;
                let mut sums: Vec<V<'ctx>> = accs
                    .iter()
                    .map(|a| Ok(lw.b().build_load(at, *a, "")?))
                    .collect::<Res<_>>()?;
                for kk in 0..kt {
                    let mut av = Vec::with_capacity(4);
                    let mut bv = Vec::with_capacity(4);
                    for i in 0..4u64 {
                        let ai = lw.b().build_int_add(
                            ty64,
                            lw.i64c((kk * a_pitch + 16 * i) as i64),
                            "",
                        )?;
                        av.push(lw.b().build_load(at, lw.cg.gep(at, a_sh, ai)?, "")?);
                        let bi =
                            lw.b()
                                .build_int_add(tx64, lw.i64c((kk * t + 16 * i) as i64), "")?;
                        bv.push(lw.b().build_load(at, lw.cg.gep(at, b_sh, bi)?, "")?);
                    }
                    for i in 0..4 {
                        for j in 0..4 {
                            sums[i * 4 + j] = lw.madd(acc, sums[i * 4 + j], av[i], bv[j])?;
                        }
                    }
                }
                for (a, s) in accs.iter().zip(&sums) {
                    lw.b().build_store(*a, *s)?;
                }
                lw.cg.barrier()?;
                Ok(())
            })?;
            for i in 0..4u64 {
                for j in 0..4u64 {
                    let r = lw.b().build_int_add(
                        row0,
                        lw.b().build_int_add(ty64, lw.i64c(16 * i as i64), "")?,
                        "",
                    )?;
                    let c = lw.b().build_int_add(
                        col0,
                        lw.b().build_int_add(tx64, lw.i64c(16 * j as i64), "")?,
                        "",
                    )?;
                    let inr = lw.b().build_and(
                        lw.b().build_int_compare(IntPredicate::SLT, r, m, "")?,
                        lw.b().build_int_compare(IntPredicate::SLT, c, n, "")?,
                        "",
                    )?;
                    let s = lw.b().build_load(at, accs[(i * 4 + j) as usize], "")?;
                    lw.cg
                        .if_then(inr, |_| lw.epilogue(mm, acc, s, (co, bias_o), r, c))?;
                }
            }
            Ok(())
        })?;
        Ok(LaunchShape::Gemm {
            m: mm.m,
            n: mm.n,
            batch,
        })
    }

    /// `m[r, c]` if `r < rows && c < cols`, else 0, without touching memory outside.
    #[allow(clippy::too_many_arguments)]
    fn guarded_load(
        &self,
        mref: Operand<'_>,
        off: IntValue<'ctx>,
        r: IntValue<'ctx>,
        c: IntValue<'ctx>,
        rows: IntValue<'ctx>,
        cols: IntValue<'ctx>,
        acc: Acc,
    ) -> Res<V<'ctx>> {
        let b = self.b();
        let inr = b.build_and(
            b.build_int_compare(IntPredicate::SLT, r, rows, "")?,
            b.build_int_compare(IntPredicate::SLT, c, cols, "")?,
            "",
        )?;
        let f = self.cg.func;
        let pre = b.get_insert_block().expect("positioned");
        let lb = self.ctx.append_basic_block(f, "ld");
        let join = self.ctx.append_basic_block(f, "ld.join");
        b.build_conditional_branch(inr, lb, join)?;
        b.position_at_end(lb);
        let v = match mref {
            Operand::Mat(m) => self.load_acc(m, off, r, c, acc)?,
            Operand::B(mm) => self.load_b(mm, off, r, c, acc)?,
        };
        let lend = b.get_insert_block().expect("positioned");
        b.build_unconditional_branch(join)?;
        b.position_at_end(join);
        let phi = b.build_phi(self.acc_ty(acc), "")?;
        let zero = self.acc_ty(acc).const_zero();
        phi.add_incoming(&[(&v as &dyn BasicValue, lend), (&zero, pre)]);
        Ok(phi.as_basic_value())
    }
}
