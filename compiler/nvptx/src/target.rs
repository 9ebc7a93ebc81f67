//! NVPTX target selection and LLVM module → PTX text. Knows nothing about which kernel a module
//! holds: kernel templates here and, later, the kernel-IR lowering both hand it a `Module`.

use crate::NvptxError;
use inkwell::OptimizationLevel;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use std::fmt;
use std::str::FromStr;
use std::sync::Once;

/// The LLVM calling convention that marks a function as a PTX kernel entry (`.entry`),
/// `CallingConv::PTX_Kernel` in LLVM. The alternative, `nvvm.annotations` metadata, is what
/// older front ends use; both are accepted by LLVM 19.
pub const PTX_KERNEL_CALL_CONV: u32 = 71;

/// The GPU architectures mlc emits PTX for.
///
/// `sm_90a` is Hopper with its architecture-specific instructions (wgmma, `setmaxnreg`); PTX
/// for it runs only on compute capability 9.0 exactly. Plain `sm_90` PTX runs on Hopper and is
/// forward-compatible, so `--target sm_90` uses only `mma.sync` tensor-core paths (which are
/// sm_80 instructions and run on an H100 at reduced rate compared to wgmma).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GpuArch {
    /// Ampere (A100): `mma.sync`, `ldmatrix`, `cp.async`.
    Sm80,
    /// Hopper, portable subset.
    Sm90,
    /// Hopper with architecture-specific features (wgmma, TMA).
    Sm90a,
}

impl GpuArch {
    pub const ALL: [GpuArch; 3] = [GpuArch::Sm80, GpuArch::Sm90, GpuArch::Sm90a];

    /// The name used by LLVM's `-mcpu`, PTX's `.target` and `ptxas -arch`.
    pub fn name(self) -> &'static str {
        match self {
            GpuArch::Sm80 => "sm_80",
            GpuArch::Sm90 => "sm_90",
            GpuArch::Sm90a => "sm_90a",
        }
    }

    /// LLVM target features. Without an explicit PTX ISA feature LLVM 19 picks the oldest ISA
    /// the chip allows (7.0 for sm_80, 7.8 for sm_90); `+ptx80` gives `.version 8.0` everywhere,
    /// which sm_90a requires and which every CUDA 12 driver JIT accepts.
    pub fn features(self) -> &'static str {
        "+ptx80"
    }

    /// Compute capability `(major, minor)` a device must have to run this PTX.
    pub fn compute_capability(self) -> (u32, u32) {
        match self {
            GpuArch::Sm80 => (8, 0),
            GpuArch::Sm90 | GpuArch::Sm90a => (9, 0),
        }
    }
}

impl fmt::Display for GpuArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GpuArch {
    type Err = NvptxError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GpuArch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                NvptxError::Unsupported(format!(
                    "GPU target `{s}` (expected sm_80, sm_90 or sm_90a)"
                ))
            })
    }
}

/// The 64-bit CUDA triple: generic pointers are 64 bits, as the CUDA driver expects.
pub const TRIPLE: &str = "nvptx64-nvidia-cuda";

fn init_nvptx() {
    static INIT: Once = Once::new();
    INIT.call_once(|| Target::initialize_nvptx(&InitializationConfig::default()));
}

/// An LLVM target machine for one GPU architecture.
#[derive(Debug)]
pub struct PtxTarget {
    arch: GpuArch,
    machine: TargetMachine,
}

impl PtxTarget {
    pub fn new(arch: GpuArch) -> Result<Self, NvptxError> {
        init_nvptx();
        let triple = TargetTriple::create(TRIPLE);
        let target = Target::from_triple(&triple).map_err(|e| NvptxError::Target(e.to_string()))?;
        let machine = target
            .create_target_machine(
                &triple,
                arch.name(),
                arch.features(),
                OptimizationLevel::Aggressive,
                RelocMode::Default,
                CodeModel::Default,
            )
            .ok_or_else(|| NvptxError::Target(format!("no target machine for {arch}")))?;
        Ok(PtxTarget { arch, machine })
    }

    pub fn arch(&self) -> GpuArch {
        self.arch
    }

    /// Sets the module's triple and data layout to this target's. Call before optimizing.
    pub fn prepare(&self, module: &Module<'_>) {
        module.set_triple(&self.machine.get_triple());
        module.set_data_layout(&self.machine.get_target_data().get_data_layout());
    }

    /// Verifies the module, runs LLVM's `default<O3>` pipeline (kernel templates are written with
    /// allocas and rely on SROA/mem2reg), and emits PTX text.
    pub fn compile(&self, module: &Module<'_>) -> Result<String, NvptxError> {
        self.prepare(module);
        let name = module.get_name().to_string_lossy().into_owned();
        module.verify().map_err(|e| NvptxError::Verify {
            module: name.clone(),
            message: e.to_string(),
        })?;
        module
            .run_passes("default<O3>", &self.machine, PassBuilderOptions::create())
            .map_err(|e| NvptxError::Llvm {
                stage: "optimize",
                message: e.to_string(),
            })?;
        let buf = self
            .machine
            .write_to_memory_buffer(module, FileType::Assembly)
            .map_err(|e| NvptxError::Llvm {
                stage: "emit PTX",
                message: e.to_string(),
            })?;
        Ok(String::from_utf8_lossy(buf.as_slice())
            .trim_end_matches('\0')
            .to_string())
    }
}
