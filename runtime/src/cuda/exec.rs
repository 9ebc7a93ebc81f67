//! The plan executor: loads a GPU artifact (PTX modules through the driver JIT, weights uploaded
//! once, one device allocation per non-alias buffer, aliases sharing their owner's), then runs
//! the plan's steps in order on the GPU's one stream.

use super::{Arg, CudaError, DeviceBuffer, Gpu, Kernel, Launch};
use crate::artifact::{Artifact, ArtifactError};
use crate::npy::{ElemType, NpyArray, NpyData};
use crate::plan::{BufferKind, Plan, PlanError};
use std::collections::HashMap;

/// Why an artifact could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("invalid plan in the artifact: {0}")]
    Plan(#[from] PlanError),
    #[error("artifact is for target {target:?}, which this GPU ({device}) cannot run")]
    Target { target: String, device: String },
    #[error("input {name:?}: {why}")]
    Input { name: String, why: String },
    #[error("output {name:?} has dtype {dtype}, which .npy cannot hold")]
    OutputType { name: String, dtype: String },
}

/// A loaded artifact, ready to run.
#[derive(Debug)]
pub struct Executable {
    gpu: Gpu,
    plan: Plan,
    /// The kernel of every step.
    kernels: Vec<Kernel>,
    /// The storage of every non-alias buffer.
    storage: Vec<Option<DeviceBuffer>>,
}

impl Executable {
    /// Loads `art` onto `gpu`: checks the target against the device, JIT-loads every PTX
    /// module, uploads the weights and allocates every buffer (zero-filled).
    pub fn load(gpu: Gpu, art: &Artifact) -> Result<Executable, ExecError> {
        let (major, minor) = gpu.compute_capability()?;
        let device = format!("{} (cc {major}.{minor})", gpu.name()?);
        let ok = match art.target.as_str() {
            "nvptx:sm_80" => major >= 8,
            "nvptx:sm_90" => major >= 9,
            "nvptx:sm_90a" => (major, minor) == (9, 0),
            _ => false,
        };
        if !ok {
            return Err(ExecError::Target {
                target: art.target.clone(),
                device,
            });
        }
        let plan: Plan = serde_json::from_value(art.meta.clone())
            .map_err(|e| PlanError::Invalid(e.to_string()))?;
        let weights = &art.section("weights")?.data;
        plan.check(weights.len() as u64)?;
        let mut loaded: HashMap<&str, Kernel> = HashMap::new();
        let mut kernels = Vec::with_capacity(plan.steps.len());
        for s in &plan.steps {
            if !loaded.contains_key(s.kernel.as_str()) {
                let sec = art.section(&s.kernel)?;
                let ptx = String::from_utf8_lossy(&sec.data);
                loaded.insert(&s.kernel, gpu.load_ptx(&ptx, &s.kernel)?);
            }
            kernels.push(loaded[s.kernel.as_str()].clone());
        }
        let mut storage = Vec::with_capacity(plan.buffers.len());
        for b in &plan.buffers {
            storage.push(match b.kind {
                BufferKind::Alias { .. } => None,
                BufferKind::Const { offset, bytes } => {
                    let (o, n) = (offset as usize, bytes as usize);
                    Some(gpu.upload(&pad(&weights[o..o + n]))?)
                }
                BufferKind::Input { .. } | BufferKind::Temp => {
                    Some(gpu.alloc_filled(b.bytes().max(1), 0)?)
                }
            });
        }
        Ok(Executable {
            gpu,
            plan,
            kernels,
            storage,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Copies the inputs (in the plan's order) to the device, checking dtypes and shapes.
    pub fn set_inputs(&mut self, inputs: &[NpyArray]) -> Result<(), ExecError> {
        if inputs.len() != self.plan.inputs.len() {
            return Err(ExecError::Input {
                name: String::new(),
                why: format!(
                    "the model takes {} inputs, {} given",
                    self.plan.inputs.len(),
                    inputs.len()
                ),
            });
        }
        for (io, arr) in self.plan.inputs.iter().zip(inputs) {
            let NpyData::Bytes(bytes) = &arr.data else {
                return Err(ExecError::Input {
                    name: io.name.clone(),
                    why: "string arrays are not supported".into(),
                });
            };
            if arr.elem.name() != io.dtype || arr.shape != io.shape {
                return Err(ExecError::Input {
                    name: io.name.clone(),
                    why: format!(
                        "expected {}{:?}, got {}{:?}",
                        io.dtype,
                        io.shape,
                        arr.elem.name(),
                        arr.shape
                    ),
                });
            }
            if io.value.as_ref().is_some_and(|v| v != bytes) {
                return Err(ExecError::Input {
                    name: io.name.clone(),
                    why: "this artifact was compiled for one value of this input (it determines \
                          a shape) and was given another"
                        .into(),
                });
            }
            let s = self.plan.storage_of(io.buffer);
            let buf = self.storage[s]
                .as_mut()
                .expect("non-alias buffers have storage");
            self.gpu.write(buf, bytes)?;
        }
        Ok(())
    }

    /// Enqueues every step (asynchronous: synchronize or download to wait).
    pub fn enqueue(&self) -> Result<(), ExecError> {
        for (s, k) in self.plan.steps.iter().zip(&self.kernels) {
            let args: Vec<Arg> = s
                .args
                .iter()
                .map(|&a| {
                    Arg::Buf(
                        self.storage[self.plan.storage_of(a)]
                            .as_ref()
                            .expect("non-alias buffers have storage"),
                    )
                })
                .collect();
            let launch = Launch {
                grid: (s.grid[0], s.grid[1], s.grid[2]),
                block: (s.block[0], s.block[1], s.block[2]),
                shared_bytes: s.shared_bytes,
            };
            self.gpu.launch(k, launch, &args)?;
        }
        Ok(())
    }

    /// Copies the outputs back, in the plan's order, as `(name, array)`.
    pub fn outputs(&self) -> Result<Vec<(String, NpyArray)>, ExecError> {
        self.gpu.synchronize()?;
        let mut out = Vec::with_capacity(self.plan.outputs.len());
        for io in &self.plan.outputs {
            let elem = ElemType::from_name(&io.dtype).ok_or_else(|| ExecError::OutputType {
                name: io.name.clone(),
                dtype: io.dtype.clone(),
            })?;
            let s = self.plan.storage_of(io.buffer);
            let mut bytes = self
                .gpu
                .download(self.storage[s].as_ref().expect("storage"))?;
            bytes.truncate(self.plan.buffers[io.buffer].bytes());
            out.push((
                io.name.clone(),
                NpyArray {
                    elem,
                    shape: io.shape.clone(),
                    data: NpyData::Bytes(bytes),
                },
            ));
        }
        Ok(out)
    }

    /// Runs the model once: inputs in, outputs out.
    pub fn run(&mut self, inputs: &[NpyArray]) -> Result<Vec<(String, NpyArray)>, ExecError> {
        self.set_inputs(inputs)?;
        self.enqueue()?;
        self.outputs()
    }
}

/// A non-empty copy (the driver rejects zero-byte allocations).
fn pad(bytes: &[u8]) -> Vec<u8> {
    if bytes.is_empty() {
        vec![0]
    } else {
        bytes.to_vec()
    }
}
