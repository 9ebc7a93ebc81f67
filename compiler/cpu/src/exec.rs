//! Running a kernel-IR program with JIT-compiled kernels, through the runtime's executor
//! (`mlc_runtime::cpu::exec`: memory-planned arena, thread pool): the same executor that runs
//! artifacts, so `mlc run --engine cpu` measures what a deployed model does.

use crate::{CodegenError, Options};
use mlc_ir::Tensor;
use mlc_kir::Program;
use mlc_runtime::cpu::Executor;

pub use mlc_runtime::cpu::RunError;

/// A program with its kernels compiled to machine code, ready to run many times.
#[derive(Debug)]
pub struct CompiledProgram {
    prog: Program,
    exec: Executor,
}

impl CompiledProgram {
    /// Compiles every kernel of `p` with default options.
    pub fn new(p: &Program) -> Result<CompiledProgram, CodegenError> {
        CompiledProgram::with_options(p, Options::default())
    }

    pub fn with_options(p: &Program, opts: Options) -> Result<CompiledProgram, CodegenError> {
        let p = &*crate::prepared(p, opts);
        let (plan, weights) = crate::plan::build_plan(p)?;
        let (module, addrs, table) = crate::module::jit(&p.kernels, opts)?;
        let exec = crate::ffi::jit_executor(plan, module, &addrs, table, &weights)
            .map_err(|e| CodegenError::Invalid(e.to_string()))?;
        Ok(CompiledProgram {
            prog: p.clone(),
            exec,
        })
    }

    /// The program this was compiled from.
    pub fn program(&self) -> &Program {
        &self.prog
    }

    /// The executor (plan, arena size).
    pub fn executor(&self) -> &Executor {
        &self.exec
    }

    /// Runs the program on `inputs` (in the program's input order) with up to `threads`
    /// threads, and returns its outputs in order.
    pub fn run(&self, inputs: &[Tensor], threads: usize) -> Result<Vec<Tensor>, RunError> {
        let plan = self.exec.plan();
        if inputs.len() != plan.inputs.len() {
            return Err(RunError::InputCount {
                expected: plan.inputs.len(),
                got: inputs.len(),
            });
        }
        let mut bytes = Vec::with_capacity(inputs.len());
        for (i, (io, t)) in plan.inputs.iter().zip(inputs).enumerate() {
            let mismatch = || RunError::InputType {
                index: i,
                name: io.name.clone(),
                expected: format!("{}{:?}", io.dtype, io.shape),
                got: format!("{}{:?}", t.dtype().name(), t.shape()),
            };
            if t.dtype().name() != io.dtype || t.shape() != io.shape.as_slice() {
                return Err(mismatch());
            }
            bytes.push(crate::plan::mem_bytes(t).map_err(|_| mismatch())?);
        }
        let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        let outs = self.exec.run_bytes(&refs, threads)?;
        plan.outputs
            .iter()
            .zip(outs)
            .map(|(io, b)| {
                let buf = self.prog.buffer(mlc_kir::BufId(io.buffer as u32));
                crate::plan::from_mem_bytes(buf.dtype, &buf.shape, &b).map_err(|e| {
                    RunError::Output {
                        name: io.name.clone(),
                        message: e.to_string(),
                    }
                })
            })
            .collect()
    }
}
