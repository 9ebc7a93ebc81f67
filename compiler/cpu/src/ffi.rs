//! The one module with unsafe code: it fills the JIT'd helper table, turns JIT'd code
//! addresses into function pointers and calls them, and frees the JIT's memory. Everything here
//! is a thin shim; the logic lives in safe modules.
#![allow(unsafe_code)]

use cranelift_jit::JITModule;
use mlc_runtime::cpu::abi::{self, KernelFn};

/// Finalized JIT code and the kernels' entry points. Dropping it frees the code.
pub(crate) struct Code {
    module: Option<JITModule>,
    fns: Vec<KernelFn>,
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Code({} kernels)", self.fns.len())
    }
}

impl Code {
    /// `addrs[i]` must be the finalized address of a function of `module` with the kernel
    /// signature, `table` the finalized helper table of `module` (address and bytes), and
    /// `module` must have been finalized.
    pub(crate) fn new(module: JITModule, addrs: &[*const u8], table: (*mut u8, usize)) -> Code {
        let helpers = abi::helper_addresses();
        assert!(table.1 >= helpers.len() * 8, "helper table too small");
        for (i, &h) in helpers.iter().enumerate() {
            // SAFETY: `table` is the module's writable, 8-aligned data object of
            // `helpers.len()` words (checked above), and no kernel runs before `Code` exists.
            unsafe { (table.0 as *mut usize).add(i).write(h) };
        }
        let fns = addrs
            .iter()
            .map(|&p| {
                // SAFETY: each address is a function that `module` compiled with
                // `clif::kernel_signature`, i.e. `extern "C" fn(*const *mut u8, i64, i64)`
                // under the host's default calling convention, and `module` has been finalized,
                // so the code is executable. `module` lives as long as `fns` (same struct).
                unsafe { std::mem::transmute::<*const u8, KernelFn>(p) }
            })
            .collect();
        Code {
            module: Some(module),
            fns,
        }
    }

    /// Kernel `i`'s entry point, valid while `self` lives.
    pub(crate) fn entry(&self, i: usize) -> Entry<'_> {
        Entry(self.fns[i], std::marker::PhantomData)
    }
}

/// A kernel's entry point, borrowed from its [`Code`] (so it cannot outlive the code).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry<'a>(KernelFn, std::marker::PhantomData<&'a ()>);

impl Entry<'_> {
    /// Runs the kernel on the parameter pointers in `params` (its parameters, then the
    /// status word) over the sub-range `start..end` of its parallel loop.
    pub(crate) fn call(self, params: &Params, start: i64, end: i64) {
        (self.0)(params.0.as_ptr(), start, end);
    }
}

impl Drop for Code {
    fn drop(&mut self) {
        self.fns.clear();
        if let Some(m) = self.module.take() {
            // SAFETY: the function pointers into this module were just dropped, and none
            // escaped `Code` (calls go through `Code::call`, which borrows it).
            unsafe { m.free_memory() };
        }
    }
}

/// The pointer array handed to a kernel: the executor checked at compile time that each
/// buffer holds at least the kernel parameter's `len` elements of its dtype, and threads
/// write disjoint elements (the parallel loop's contract), so sharing it is sound.
#[derive(Debug)]
pub(crate) struct Params(pub Vec<*mut u8>);

// SAFETY: the pointers refer to buffers owned by the executor for the duration of the
// scoped threads that use them; see `Params`.
unsafe impl Send for Params {}
// SAFETY: as above; the kernels only read the array.
unsafe impl Sync for Params {}
