//! mlc's NVIDIA backend: LLVM NVPTX target setup and PTX emission (`target`), a small kernel
//! builder over inkwell (`cg`), hand-built kernel templates (`kernels`: a tensor-core bf16 GEMM,
//! a naive GEMM, a fused elementwise kernel), and `ptxas` checks.
//!
//! The split that matters: [`target::PtxTarget`] turns *any* LLVM module into PTX and knows
//! nothing of kernels; a [`KernelSource`] builds one kernel's module. The kernel-IR lowering
//! will be another `KernelSource`-like producer of modules.
//!
//! ```no_run
//! use mlc_nvptx::{emit_ptx, GpuArch, kernels::gemm::{MmaGemm, OutType, Epilogue}};
//! let k = MmaGemm::default_for(OutType::Bf16, Epilogue::default());
//! let ptx = emit_ptx(&k, GpuArch::Sm90).unwrap();
//! assert!(ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"));
//! ```

pub mod cg;
mod error;
pub mod kernels;
pub mod lower;
pub mod math;
mod program;
pub mod ptxas;
pub mod target;

pub use error::NvptxError;
pub use program::{CompiledProgram, compile_program, emit_program_llvm, entry_name};
pub use target::{GpuArch, PtxTarget};

use inkwell::context::Context;

/// Something that builds one GPU kernel as an LLVM module.
pub trait KernelSource: std::fmt::Debug {
    /// The kernel's entry name (also its module name), unique per variant.
    fn name(&self) -> String;
    /// Builds the kernel into a fresh module of `ctx`.
    fn build<'ctx>(&self, ctx: &'ctx Context, arch: GpuArch) -> Result<cg::Cg<'ctx>, NvptxError>;
}

/// Builds `kernel` for `arch` and returns its PTX text.
pub fn emit_ptx(kernel: &dyn KernelSource, arch: GpuArch) -> Result<String, NvptxError> {
    let target = PtxTarget::new(arch)?;
    let ctx = Context::create();
    let cg = kernel.build(&ctx, arch)?;
    target.compile(&cg.module)
}

/// Builds `kernel` for `arch` and returns the LLVM IR before optimization (for `--emit llvm`).
pub fn emit_llvm(kernel: &dyn KernelSource, arch: GpuArch) -> Result<String, NvptxError> {
    let target = PtxTarget::new(arch)?;
    let ctx = Context::create();
    let cg = kernel.build(&ctx, arch)?;
    target.prepare(&cg.module);
    Ok(cg.module.print_to_string().to_string())
}
