//! Driving Cranelift: ISAs, modules, defining a program's kernels, printing CLIF.
//!
//! The JIT targets the host (`cranelift-native`). Objects target an explicit x86-64 baseline
//! (SSE4.2, AVX and FMA required, PIC) so an artifact does not depend on the machine that built
//! it, and are deterministic: the same program gives the same bytes.

use crate::clif::{self, Imports};
use crate::{CodegenError, Options};
use cranelift_codegen::ir::UserFuncName;
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module, default_libcall_names};
use cranelift_object::{ObjectBuilder, ObjectModule};
use mlc_kir::{Kernel, Program};
use mlc_runtime::cpu::abi;
use std::str::FromStr;

fn cl<E: std::fmt::Display>(e: E) -> CodegenError {
    CodegenError::Cranelift(e.to_string())
}

fn shared_flags(pic: bool) -> Result<settings::Flags, CodegenError> {
    let mut f = settings::builder();
    f.set("opt_level", "speed").map_err(cl)?;
    f.set("use_colocated_libcalls", "false").map_err(cl)?;
    f.set("is_pic", if pic { "true" } else { "false" })
        .map_err(cl)?;
    Ok(settings::Flags::new(f))
}

/// The host's ISA, with every feature it has.
pub fn jit_isa() -> Result<OwnedTargetIsa, CodegenError> {
    let b = cranelift_native::builder().map_err(cl)?;
    b.finish(shared_flags(false)?).map_err(cl)
}

/// The x86-64 baseline for artifacts: SSE4.2 (and what it implies), AVX and FMA. Cranelift
/// emits `fma` as one instruction only when AVX is enabled too (it is VEX-encoded; without
/// AVX it becomes four libcalls), and every CPU with FMA has AVX, so this requires no more of
/// the machine than FMA did. It also makes every SIMD instruction VEX-encoded (three
/// operands: fewer register copies). AVX2 and AVX-512 stay off.
pub fn object_isa() -> Result<OwnedTargetIsa, CodegenError> {
    let triple = target_lexicon::Triple::from_str("x86_64-unknown-linux-gnu").map_err(cl)?;
    let mut b = cranelift_codegen::isa::lookup(triple).map_err(cl)?;
    for f in [
        "has_sse3",
        "has_ssse3",
        "has_sse41",
        "has_sse42",
        "has_popcnt",
        "has_avx",
        "has_fma",
    ] {
        b.enable(f).map_err(cl)?;
    }
    b.finish(shared_flags(true)?).map_err(cl)
}

/// The symbol of kernel `i`.
pub fn kernel_symbol(i: usize, k: &Kernel) -> String {
    let name: String = k
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("mlc_k{i}_{name}")
}

/// Declares and defines the helper table ([`abi::TABLE_SYMBOL`]): zeroed, writable, filled
/// by the loader.
fn define_table<M: Module>(m: &mut M, linkage: Linkage) -> Result<DataId, CodegenError> {
    let id = m
        .declare_data(abi::TABLE_SYMBOL, linkage, true, false)
        .map_err(cl)?;
    let mut d = DataDescription::new();
    d.define_zeroinit(abi::helpers().len() * 8);
    d.set_align(8);
    m.define_data(id, &d).map_err(cl)?;
    Ok(id)
}

/// Declares and defines every kernel of `kernels` in `m` and the helper table; returns the
/// kernels' ids in order and the table's.
pub(crate) fn define_kernels<M: Module>(
    m: &mut M,
    kernels: &[Kernel],
    linkage: Linkage,
    opts: Options,
) -> Result<(Vec<FuncId>, DataId), CodegenError> {
    let table = define_table(m, linkage)?;
    let mut imports = Imports::new(table);
    let mut ids = Vec::with_capacity(kernels.len());
    let mut ctx = m.make_context();
    let mut fbc = FunctionBuilderContext::new();
    for (i, k) in kernels.iter().enumerate() {
        // A contraction's tail first: its tile function, local to the module.
        let tile_fn = match clif::tile_kernel(k) {
            Some((tk, bind)) => {
                let sig = clif::tile_signature(m);
                let name = format!("{}_tail", kernel_symbol(i, k));
                let id = m
                    .declare_function(&name, Linkage::Local, &sig)
                    .map_err(cl)?;
                ctx.func.signature = sig;
                ctx.func.name = UserFuncName::user(0, id.as_u32());
                let b = cranelift_frontend::FunctionBuilder::new(&mut ctx.func, &mut fbc);
                clif::translate_fn(m, &mut imports, &tk, b, opts, None, Some(bind))?;
                m.define_function(id, &mut ctx)
                    .map_err(|e| CodegenError::Cranelift(format!("kernel {}: {e:?}", tk.name)))?;
                m.clear_context(&mut ctx);
                Some(id)
            }
            None => None,
        };
        let sig = clif::kernel_signature(m);
        let id = m
            .declare_function(&kernel_symbol(i, k), linkage, &sig)
            .map_err(cl)?;
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        let b = cranelift_frontend::FunctionBuilder::new(&mut ctx.func, &mut fbc);
        clif::translate_fn(m, &mut imports, k, b, opts, tile_fn, None)?;
        m.define_function(id, &mut ctx)
            .map_err(|e| CodegenError::Cranelift(format!("kernel {}: {e:?}", k.name)))?;
        m.clear_context(&mut ctx);
        ids.push(id);
    }
    Ok((ids, table))
}

/// Compiles `kernels` in a JIT module; returns it finalized with each kernel's address and
/// the helper table's (still to be filled).
pub(crate) fn jit(
    kernels: &[Kernel],
    opts: Options,
) -> Result<(JITModule, Vec<*const u8>, (*mut u8, usize)), CodegenError> {
    let jb = JITBuilder::with_isa(jit_isa()?, default_libcall_names());
    let mut m = JITModule::new(jb);
    let (ids, table) = define_kernels(&mut m, kernels, Linkage::Local, opts)?;
    m.finalize_definitions().map_err(cl)?;
    let addrs = ids.iter().map(|&id| m.get_finalized_function(id)).collect();
    let (t, len) = m.get_finalized_data(table);
    Ok((m, addrs, (t as *mut u8, len)))
}

/// A relocatable x86-64 ELF object defining every kernel of `p` ([`kernel_symbol`]) and the
/// helper table as global symbols; it references no other symbol.
pub fn compile_object(p: &Program, opts: Options) -> Result<Vec<u8>, CodegenError> {
    let ob =
        ObjectBuilder::new(object_isa()?, "mlc_kernels", default_libcall_names()).map_err(cl)?;
    let mut m = ObjectModule::new(ob);
    define_kernels(&mut m, &p.kernels, Linkage::Export, opts)?;
    m.finish().emit().map_err(cl)
}

/// The CLIF of one kernel, before Cranelift optimizes it, for the x86-64 baseline.
pub fn kernel_clif(k: &Kernel, opts: Options) -> Result<String, CodegenError> {
    let ob =
        ObjectBuilder::new(object_isa()?, "mlc_kernels", default_libcall_names()).map_err(cl)?;
    let mut m = ObjectModule::new(ob);
    let table = define_table(&mut m, Linkage::Export)?;
    let mut imports = Imports::new(table);
    let mut ctx = m.make_context();
    let mut fbc = FunctionBuilderContext::new();
    let mut out = String::new();
    // The tile function of a contraction's tail, printed before the kernel.
    let tile_fn = match clif::tile_kernel(k) {
        Some((tk, bind)) => {
            let sig = clif::tile_signature(&m);
            let name = format!("{}_tail", kernel_symbol(0, k));
            let id = m
                .declare_function(&name, Linkage::Local, &sig)
                .map_err(cl)?;
            ctx.func.signature = sig;
            ctx.func.name = UserFuncName::testcase(name);
            let b = cranelift_frontend::FunctionBuilder::new(&mut ctx.func, &mut fbc);
            clif::translate_fn(&mut m, &mut imports, &tk, b, opts, None, Some(bind))?;
            out.push_str(&ctx.func.display().to_string());
            out.push('\n');
            m.clear_context(&mut ctx);
            Some(id)
        }
        None => None,
    };
    ctx.func.signature = clif::kernel_signature(&m);
    ctx.func.name = UserFuncName::testcase(kernel_symbol(0, k));
    let b = cranelift_frontend::FunctionBuilder::new(&mut ctx.func, &mut fbc);
    clif::translate_fn(&mut m, &mut imports, k, b, opts, tile_fn, None)?;
    let helpers = abi::helpers();
    for &i in &imports.used {
        out.push_str(&format!("; helper table +{} = {}\n", i * 8, helpers[i]));
    }
    out.push_str(&ctx.func.display().to_string());
    Ok(out)
}

/// The CLIF of every kernel of `p` (`--emit clif`), after the epilogue fusions that
/// compilation runs (tile functions printed before their kernels).
pub fn program_clif(p: &Program, opts: Options) -> Result<String, CodegenError> {
    let p = &*crate::prepared(p, opts);
    let mut out = String::new();
    for k in &p.kernels {
        out.push_str(&kernel_clif(k, opts)?);
        out.push('\n');
    }
    Ok(out)
}
