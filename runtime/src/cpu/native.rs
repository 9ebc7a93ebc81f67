//! Loading a compiled shared object from memory: the bytes go into an anonymous in-memory file
//! (`memfd_create`), the dynamic loader maps it (`dlopen` of `/proc/self/fd/N`), and the helper
//! table is filled before any kernel runs. Nothing is written to disk.
//!
//! The object the compiler links has no undefined symbols and needs no C library (see
//! [`super::abi`]), so loading it runs no foreign initializer and resolves nothing but our own
//! symbols.
// dlopen/dlsym and writes into the loaded object's helper table.
#![allow(unsafe_code)]

use super::abi::{self, KernelFn};
use super::exec::{Executor, Weights};
use super::plan::{CpuPlan, CpuPlanError};
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::io::Write;
use std::os::fd::FromRawFd;

unsafe extern "C" {
    fn memfd_create(name: *const c_char, flags: c_uint) -> c_int;
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlclose(handle: *mut c_void) -> c_int;
    fn dlerror() -> *mut c_char;
}

const RTLD_NOW: c_int = 2;
const RTLD_LOCAL: c_int = 0;
const MFD_CLOEXEC: c_uint = 1;

/// Why native code could not be loaded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LoadError {
    #[error("cannot create an in-memory file for the code: {0}")]
    Memfd(String),
    #[error("the dynamic loader rejected the code: {0}")]
    Dlopen(String),
    #[error("the code has no symbol {0:?}")]
    MissingSymbol(String),
    #[error(transparent)]
    Plan(#[from] CpuPlanError),
}

/// Loads the shared object `code` of `plan` and binds them into an executor.
///
/// `plan` must have been checked to be for this ABI and helper table, and `code` must be the
/// object the compiler linked for it (one checksummed artifact holds both).
pub fn executor(plan: CpuPlan, code: &[u8], weights: &[u8]) -> Result<Executor, LoadError> {
    executor_with(plan, code, Weights::new(weights))
}

/// [`executor`] on weights shared with the artifact's other variants.
pub fn executor_with(
    plan: CpuPlan,
    code: &[u8],
    weights: std::sync::Arc<Weights>,
) -> Result<Executor, LoadError> {
    plan.check(weights.len())?;
    let symbols: Vec<String> = plan.kernels.iter().map(|k| k.symbol.clone()).collect();
    let (lib, entries) = Library::load(code, &symbols)?;
    // SAFETY: the entry points are the kernels of this plan (see above), `Library::load` filled
    // the helper table, and the executor keeps `lib` alive.
    Ok(unsafe { Executor::with_weights(plan, entries, Box::new(lib), weights)? })
}

/// A loaded shared object. Dropping it unloads the code.
#[derive(Debug)]
pub struct Library {
    handle: *mut c_void,
    /// The in-memory file, open while the code is loaded: the loader knows a library by its
    /// path, `/proc/self/fd/N`, so a descriptor closed and reused for another library's code
    /// would hand back this one's handle.
    _file: std::fs::File,
}

// SAFETY: a dlopen handle may be used and closed from any thread.
unsafe impl Send for Library {}
// SAFETY: `Library` offers no mutation after loading.
unsafe impl Sync for Library {}

fn last_dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl call on
    // this thread; it is copied at once.
    let p = unsafe { dlerror() };
    if p.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, NUL-terminated (see above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

impl Library {
    /// Loads the shared object `bytes`, fills its helper table ([`abi::TABLE_SYMBOL`]) and
    /// returns it with the entry points of `symbols`, in order.
    ///
    /// The bytes must be a shared object that mlc's CPU backend produced for this ABI: loading
    /// foreign code runs its initializers. The artifact's checksums and version checks come
    /// before this.
    pub fn load(bytes: &[u8], symbols: &[String]) -> Result<(Library, Vec<KernelFn>), LoadError> {
        let name = CString::new("mlc-code").expect("no NUL");
        // SAFETY: a valid NUL-terminated name and flags.
        let fd = unsafe { memfd_create(name.as_ptr(), MFD_CLOEXEC) };
        if fd < 0 {
            return Err(LoadError::Memfd(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        // SAFETY: `fd` is a fresh descriptor we own; the File closes it on drop.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(bytes)
            .map_err(|e| LoadError::Memfd(e.to_string()))?;
        let path = CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
        // SAFETY: a valid path; RTLD_LOCAL keeps the symbols out of the global namespace.
        let handle = unsafe { dlopen(path.as_ptr(), RTLD_NOW | RTLD_LOCAL) };
        if handle.is_null() {
            return Err(LoadError::Dlopen(last_dl_error()));
        }
        let lib = Library {
            handle,
            _file: file,
        };
        let table = lib.symbol(abi::TABLE_SYMBOL)? as *mut usize;
        for (i, h) in abi::helper_addresses().into_iter().enumerate() {
            // SAFETY: the table is a writable array of `helpers().len()` words in the object
            // (the plan's helper list was checked equal to this runtime's before loading), and
            // no kernel runs before this returns.
            unsafe { table.add(i).write(h) };
        }
        let entries = symbols
            .iter()
            .map(|s| {
                let p = lib.symbol(s)?;
                // SAFETY: kernel symbols are functions with the kernel ABI (`abi::KernelFn`);
                // `p` is non-null and the code stays loaded while `lib` lives.
                Ok(unsafe { std::mem::transmute::<*mut c_void, KernelFn>(p) })
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        Ok((lib, entries))
    }

    fn symbol(&self, name: &str) -> Result<*mut c_void, LoadError> {
        let c = CString::new(name).map_err(|_| LoadError::MissingSymbol(name.into()))?;
        // SAFETY: a live handle and a NUL-terminated name.
        let p = unsafe { dlsym(self.handle, c.as_ptr()) };
        if p.is_null() {
            Err(LoadError::MissingSymbol(name.into()))
        } else {
            Ok(p)
        }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: the handle came from dlopen and is closed once; entry points handed out
        // are owned by executors that hold this library. (The file closes after this.)
        unsafe { dlclose(self.handle) };
    }
}
