//! The one module with unsafe code: it fills the JIT'd helper table, turns JIT'd code
//! addresses into function pointers, hands them to the runtime's executor, and frees the JIT's
//! memory. Everything here is a thin shim; the logic lives in safe modules.
#![allow(unsafe_code)]

use cranelift_jit::JITModule;
use mlc_runtime::cpu::abi::{self, KernelFn};
use mlc_runtime::cpu::plan::CpuPlan;
use mlc_runtime::cpu::{Executor, plan::CpuPlanError};

/// Finalized JIT code, kept alive by the executor that calls into it; freed on drop.
struct JitCode(Option<JITModule>);

// SAFETY: the module is never used after it is finalized, only kept alive and freed on drop,
// which happens once, on whichever thread drops the executor.
unsafe impl Send for JitCode {}
// SAFETY: as above: no shared access at all.
unsafe impl Sync for JitCode {}

impl Drop for JitCode {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            // SAFETY: the executor owning this drops its entry points with it; none escaped.
            unsafe { m.free_memory() };
        }
    }
}

/// Binds JIT'd kernels to `plan`: `addrs[i]` must be the finalized address of kernel `i` of
/// `module` (compiled with `clif::kernel_signature` from the program `plan` was built from), and
/// `table` the module's finalized helper table (address, bytes).
pub(crate) fn jit_executor(
    plan: CpuPlan,
    module: JITModule,
    addrs: &[*const u8],
    table: (*mut u8, usize),
    weights: &[u8],
) -> Result<Executor, CpuPlanError> {
    let code = JitCode(Some(module));
    let helpers = abi::helper_addresses();
    if table.1 < helpers.len() * 8 {
        return Err(CpuPlanError::Invalid("helper table too small".into()));
    }
    for (i, &h) in helpers.iter().enumerate() {
        // SAFETY: `table` is the module's writable, 8-aligned data object of at least
        // `helpers.len()` words (checked above), and no kernel has run yet.
        unsafe { (table.0 as *mut usize).add(i).write(h) };
    }
    let entries: Vec<KernelFn> = addrs
        .iter()
        .map(|&p| {
            // SAFETY: each address is a function that the module compiled with
            // `clif::kernel_signature`, i.e. `extern "C" fn(*const *mut u8, i64, i64)` under the
            // host's default calling convention, and the module has been finalized.
            unsafe { std::mem::transmute::<*const u8, KernelFn>(p) }
        })
        .collect();
    // SAFETY: the entries are the plan's kernels in order (see above), their helper table is
    // filled, and the executor owns `code`, which keeps them alive.
    unsafe { Executor::new(plan, entries, Box::new(code), weights) }
}
