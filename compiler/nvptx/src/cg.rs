//! A thin layer over inkwell for writing GPU kernels by hand: special registers, NVVM
//! intrinsics, inline PTX, shared-memory arrays and counted loops. Kernel templates use it the
//! way Triton's lowering uses LLVM: plain LLVM IR plus NVVM intrinsics, and inline PTX where no
//! intrinsic exists. Mutable per-thread state lives in allocas; `PtxTarget::compile` runs SROA
//! and mem2reg, which turn them into registers.

use crate::NvptxError;
use inkwell::AddressSpace;
use inkwell::basic_block::BasicBlock;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicType, BasicTypeEnum};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValueEnum, FloatValue, FunctionValue, GlobalValue, IntValue,
    PointerValue,
};
use inkwell::{FloatPredicate, IntPredicate};

/// PTX address spaces, as LLVM's NVPTX backend numbers them.
pub const GLOBAL: u16 = 1;
pub const SHARED: u16 = 3;

/// The builder state of one kernel under construction.
pub struct Cg<'ctx> {
    pub ctx: &'ctx Context,
    pub module: Module<'ctx>,
    pub b: Builder<'ctx>,
    pub func: FunctionValue<'ctx>,
}

impl std::fmt::Debug for Cg<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cg")
            .field("func", &self.func.get_name())
            .finish()
    }
}

/// A kernel parameter's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// A pointer into global memory.
    GlobalPtr,
    I32,
    F32,
}

impl<'ctx> Cg<'ctx> {
    /// A new module holding one kernel `name` with the given parameters, positioned at the
    /// start of its entry block.
    pub fn kernel(ctx: &'ctx Context, name: &str, params: &[Param]) -> Self {
        let module = ctx.create_module(name);
        let tys: Vec<BasicMetadataTypeEnum> = params
            .iter()
            .map(|p| match p {
                Param::GlobalPtr => ctx.ptr_type(AddressSpace::from(GLOBAL)).into(),
                Param::I32 => ctx.i32_type().into(),
                Param::F32 => ctx.f32_type().into(),
            })
            .collect();
        let fn_ty = ctx.void_type().fn_type(&tys, false);
        let func = module.add_function(name, fn_ty, None);
        func.set_call_conventions(crate::target::PTX_KERNEL_CALL_CONV);
        // Pointer arguments never alias in our kernels: tell LLVM so loads can be reordered.
        let noalias = ctx.create_enum_attribute(
            inkwell::attributes::Attribute::get_named_enum_kind_id("noalias"),
            0,
        );
        for (i, p) in params.iter().enumerate() {
            if *p == Param::GlobalPtr {
                func.add_attribute(inkwell::attributes::AttributeLoc::Param(i as u32), noalias);
            }
        }
        let b = ctx.create_builder();
        let entry = ctx.append_basic_block(func, "entry");
        b.position_at_end(entry);
        Cg {
            ctx,
            module,
            b,
            func,
        }
    }

    pub fn param_ptr(&self, i: u32) -> PointerValue<'ctx> {
        self.func
            .get_nth_param(i)
            .expect("parameter index")
            .into_pointer_value()
    }
    pub fn param_int(&self, i: u32) -> IntValue<'ctx> {
        self.func
            .get_nth_param(i)
            .expect("parameter index")
            .into_int_value()
    }
    pub fn param_float(&self, i: u32) -> FloatValue<'ctx> {
        self.func
            .get_nth_param(i)
            .expect("parameter index")
            .into_float_value()
    }

    pub fn i32(&self, v: i64) -> IntValue<'ctx> {
        self.ctx.i32_type().const_int(v as u64, true)
    }
    pub fn i64(&self, v: i64) -> IntValue<'ctx> {
        self.ctx.i64_type().const_int(v as u64, true)
    }
    pub fn f32(&self, v: f64) -> FloatValue<'ctx> {
        self.ctx.f32_type().const_float(v)
    }

    /// Calls an intrinsic; `overloads` are the types of its overloaded operands, if any.
    pub fn intrinsic(
        &self,
        name: &str,
        overloads: &[BasicTypeEnum<'ctx>],
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Result<Option<BasicValueEnum<'ctx>>, NvptxError> {
        let decl = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(&self.module, overloads))
            .ok_or_else(|| NvptxError::MissingIntrinsic(name.to_string()))?;
        let call = self.b.build_call(decl, args, "")?;
        Ok(call.try_as_basic_value().basic())
    }

    /// Reads a PTX special register such as `tid.x` or `ctaid.y`.
    pub fn sreg(&self, name: &str) -> Result<IntValue<'ctx>, NvptxError> {
        let v = self.intrinsic(&format!("llvm.nvvm.read.ptx.sreg.{name}"), &[], &[])?;
        Ok(v.expect("special registers return a value")
            .into_int_value())
    }

    /// `bar.sync 0`: all threads of the block.
    pub fn barrier(&self) -> Result<(), NvptxError> {
        self.intrinsic("llvm.nvvm.barrier0", &[], &[])?;
        Ok(())
    }

    /// Inline PTX. `ret` is `None` for no result, else the result type (a struct for several).
    pub fn asm(
        &self,
        text: &str,
        constraints: &str,
        ret: Option<BasicTypeEnum<'ctx>>,
        args: &[BasicMetadataValueEnum<'ctx>],
        side_effects: bool,
    ) -> Result<Option<BasicValueEnum<'ctx>>, NvptxError> {
        let arg_tys: Vec<BasicMetadataTypeEnum> = args
            .iter()
            .map(|a| match a {
                BasicMetadataValueEnum::IntValue(v) => v.get_type().into(),
                BasicMetadataValueEnum::FloatValue(v) => v.get_type().into(),
                BasicMetadataValueEnum::PointerValue(v) => v.get_type().into(),
                BasicMetadataValueEnum::VectorValue(v) => v.get_type().into(),
                BasicMetadataValueEnum::StructValue(v) => v.get_type().into(),
                BasicMetadataValueEnum::ArrayValue(v) => v.get_type().into(),
                other => panic!("unsupported inline asm operand {other:?}"),
            })
            .collect();
        let fn_ty = match ret {
            Some(t) => t.fn_type(&arg_tys, false),
            None => self.ctx.void_type().fn_type(&arg_tys, false),
        };
        let asm = self.ctx.create_inline_asm(
            fn_ty,
            text.to_string(),
            constraints.to_string(),
            side_effects,
            false,
            None,
            false,
        );
        let call = self.b.build_indirect_call(fn_ty, asm, args, "")?;
        Ok(call.try_as_basic_value().basic())
    }

    /// A block-shared array of `bytes` bytes, aligned to 128 bytes (what swizzled `ldmatrix`
    /// and `cp.async` tiles want).
    pub fn shared_array(&self, name: &str, bytes: u32) -> GlobalValue<'ctx> {
        let ty = self.ctx.i8_type().array_type(bytes);
        let g = self
            .module
            .add_global(ty, Some(AddressSpace::from(SHARED)), name);
        g.set_linkage(Linkage::Internal);
        g.set_initializer(&ty.get_undef());
        g.set_alignment(128);
        g
    }

    /// Declares the kernel's block size (`.maxntid n, 1, 1` through `nvvm.annotations`), so that
    /// ptxas keeps registers within what `n` threads per block can have.
    pub fn max_threads(&self, n: u32) -> Result<(), NvptxError> {
        let node = self.ctx.metadata_node(&[
            self.func.as_global_value().as_pointer_value().into(),
            self.ctx.metadata_string("maxntidx").into(),
            self.ctx.i32_type().const_int(n as u64, false).into(),
        ]);
        self.module
            .add_global_metadata("nvvm.annotations", &node)
            .map_err(|e| NvptxError::Llvm {
                stage: "annotate the kernel",
                message: e.to_string(),
            })
    }

    /// The block's dynamic shared memory (`.extern .shared .align 1024 .b8 name[]`), sized at
    /// launch. 1024-byte alignment is what wgmma's 128-byte swizzle atoms need.
    pub fn dynamic_shared(&self, name: &str) -> GlobalValue<'ctx> {
        let ty = self.ctx.i8_type().array_type(0);
        let g = self
            .module
            .add_global(ty, Some(AddressSpace::from(SHARED)), name);
        g.set_linkage(Linkage::External);
        g.set_alignment(1024);
        g
    }

    /// `base + byte_offset` (an `i8` GEP), for any address space.
    pub fn byte_gep(
        &self,
        base: PointerValue<'ctx>,
        off: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>, NvptxError> {
        // SAFETY (of the GEP, not Rust): in-bounds arithmetic is what every kernel index here is.
        Ok(unsafe_gep(&self.b, self.ctx.i8_type(), base, off)?)
    }

    /// `base + index * sizeof(elem)`.
    pub fn gep<T: BasicType<'ctx>>(
        &self,
        elem: T,
        base: PointerValue<'ctx>,
        index: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>, NvptxError> {
        Ok(unsafe_gep(&self.b, elem, base, index)?)
    }

    /// A function-entry alloca of `ty`, initialised with `init` at the current position.
    pub fn var<T: BasicType<'ctx>>(
        &self,
        ty: T,
        init: BasicValueEnum<'ctx>,
        name: &str,
    ) -> Result<PointerValue<'ctx>, NvptxError> {
        let entry = self
            .func
            .get_first_basic_block()
            .expect("kernel has an entry block");
        let tmp = self.ctx.create_builder();
        match entry.get_first_instruction() {
            Some(i) => tmp.position_before(&i),
            None => tmp.position_at_end(entry),
        }
        let p = tmp.build_alloca(ty, name)?;
        self.b.build_store(p, init)?;
        Ok(p)
    }

    pub fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>, NvptxError> {
        Ok(self.b.build_int_add(a, b, "")?)
    }
    pub fn mul(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>, NvptxError> {
        Ok(self.b.build_int_mul(a, b, "")?)
    }
    pub fn addc(&self, a: IntValue<'ctx>, c: i64) -> Result<IntValue<'ctx>, NvptxError> {
        self.add(a, a.get_type().const_int(c as u64, true))
    }
    pub fn mulc(&self, a: IntValue<'ctx>, c: i64) -> Result<IntValue<'ctx>, NvptxError> {
        self.mul(a, a.get_type().const_int(c as u64, true))
    }
    pub fn udivc(&self, a: IntValue<'ctx>, c: i64) -> Result<IntValue<'ctx>, NvptxError> {
        Ok(self
            .b
            .build_int_unsigned_div(a, a.get_type().const_int(c as u64, false), "")?)
    }
    pub fn uremc(&self, a: IntValue<'ctx>, c: i64) -> Result<IntValue<'ctx>, NvptxError> {
        Ok(self
            .b
            .build_int_unsigned_rem(a, a.get_type().const_int(c as u64, false), "")?)
    }
    pub fn andc(&self, a: IntValue<'ctx>, c: i64) -> Result<IntValue<'ctx>, NvptxError> {
        Ok(self
            .b
            .build_and(a, a.get_type().const_int(c as u64, false), "")?)
    }
    pub fn xor(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>, NvptxError> {
        Ok(self.b.build_xor(a, b, "")?)
    }
    pub fn lshrc(&self, a: IntValue<'ctx>, c: i64) -> Result<IntValue<'ctx>, NvptxError> {
        Ok(self
            .b
            .build_right_shift(a, a.get_type().const_int(c as u64, false), false, "")?)
    }
    /// Zero-extends an `i32` index to `i64` for address arithmetic.
    pub fn wide(&self, a: IntValue<'ctx>) -> Result<IntValue<'ctx>, NvptxError> {
        Ok(self.b.build_int_z_extend(a, self.ctx.i64_type(), "")?)
    }
    pub fn ult(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>, NvptxError> {
        Ok(self.b.build_int_compare(IntPredicate::ULT, a, b, "")?)
    }
    /// `max(x, 0)` for ReLU; `maxnum` keeps NaN-free inputs exact.
    pub fn relu(&self, x: FloatValue<'ctx>) -> Result<FloatValue<'ctx>, NvptxError> {
        let zero = x.get_type().const_float(0.0);
        let gt = self
            .b
            .build_float_compare(FloatPredicate::OGT, x, zero, "")?;
        Ok(self.b.build_select(gt, x, zero, "")?.into_float_value())
    }
    pub fn fma(
        &self,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
        c: FloatValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, NvptxError> {
        let r = self.intrinsic(
            "llvm.fma",
            &[a.get_type().into()],
            &[a.into(), b.into(), c.into()],
        )?;
        Ok(r.expect("fma returns a value").into_float_value())
    }

    /// `if cond { then() }`, leaving the builder after the join.
    pub fn if_then(
        &self,
        cond: IntValue<'ctx>,
        then: impl FnOnce(&Self) -> Result<(), NvptxError>,
    ) -> Result<(), NvptxError> {
        let then_bb = self.ctx.append_basic_block(self.func, "then");
        let join = self.ctx.append_basic_block(self.func, "join");
        self.b.build_conditional_branch(cond, then_bb, join)?;
        self.b.position_at_end(then_bb);
        then(self)?;
        self.b.build_unconditional_branch(join)?;
        self.b.position_at_end(join);
        Ok(())
    }

    /// `for i in (start..end).step_by(step)` over `i32`, with the test at the top. The body gets
    /// the induction variable; the builder ends after the loop.
    pub fn for_range(
        &self,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        step: IntValue<'ctx>,
        body: impl FnOnce(&Self, IntValue<'ctx>) -> Result<(), NvptxError>,
    ) -> Result<(), NvptxError> {
        let pre: BasicBlock = self.b.get_insert_block().expect("builder is positioned");
        let head = self.ctx.append_basic_block(self.func, "loop.head");
        let body_bb = self.ctx.append_basic_block(self.func, "loop.body");
        let exit = self.ctx.append_basic_block(self.func, "loop.exit");
        self.b.build_unconditional_branch(head)?;
        self.b.position_at_end(head);
        let phi = self.b.build_phi(start.get_type(), "i")?;
        phi.add_incoming(&[(&start, pre)]);
        let i = phi.as_basic_value().into_int_value();
        let go = self.b.build_int_compare(IntPredicate::SLT, i, end, "")?;
        self.b.build_conditional_branch(go, body_bb, exit)?;
        self.b.position_at_end(body_bb);
        body(self, i)?;
        let next = self.b.build_int_add(i, step, "")?;
        let latch = self.b.get_insert_block().expect("builder is positioned");
        self.b.build_unconditional_branch(head)?;
        phi.add_incoming(&[(&next, latch)]);
        self.b.position_at_end(exit);
        Ok(())
    }

    /// Ends the kernel.
    pub fn ret(&self) -> Result<(), NvptxError> {
        self.b.build_return(None)?;
        Ok(())
    }
}

fn unsafe_gep<'ctx, T: BasicType<'ctx>>(
    b: &Builder<'ctx>,
    elem: T,
    base: PointerValue<'ctx>,
    index: IntValue<'ctx>,
) -> Result<PointerValue<'ctx>, inkwell::builder::BuilderError> {
    #[allow(unsafe_code)]
    // SAFETY: inkwell marks GEP construction unsafe because an out-of-bounds GEP is UB *in the
    // generated program*; building the instruction itself cannot corrupt this process. Kernel
    // templates guarantee in-bounds indices by construction (tile shapes divide the problem).
    unsafe {
        b.build_in_bounds_gep(elem, base, &[index], "")
    }
}
