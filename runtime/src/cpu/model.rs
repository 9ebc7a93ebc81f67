//! A model compiled for the CPU, loaded from an artifact: the public entry point for Rust apps.
//!
//! ```no_run
//! use mlc_runtime::cpu::CpuModel;
//! use mlc_runtime::npy::NpyArray;
//!
//! let model = CpuModel::load("resnet18.mlca".as_ref())?;
//! for io in model.inputs() {
//!     println!("input {} {} {:?}", io.name, io.dtype, io.shape);
//! }
//! let x = NpyArray::read("input.npy".as_ref())?;
//! let outputs = model.run(&[x], 2)?;
//! std::fs::write("logits.npy", outputs[0].1.to_bytes())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Loading checks, in order: the container (magic, version, checksums: [`crate::artifact`]),
//! the target, the CPU features the code needs, the ABI and helper table, the plan, and only
//! then maps the code.

use super::abi;
use super::exec::{Executor, RunError};
use super::native::{self, LoadError};
use super::plan::{CpuPlan, CpuPlanError};
use crate::artifact::{Artifact, ArtifactError};
use crate::npy::NpyArray;
use crate::plan::PlanIo;
use std::path::Path;

/// The target string of CPU artifacts.
pub const TARGET: &str = "x86_64-linux";
/// The section holding the shared object.
pub const CODE_SECTION: &str = "code";
/// The section holding the constants.
pub const WEIGHTS_SECTION: &str = "weights";

/// Why an artifact cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(
        "the artifact is for {found}, not this runtime's {TARGET}; compile it with --target x86_64"
    )]
    Target { found: String },
    #[error("this CPU lacks {missing:?}, which the artifact's code needs (it needs {needed:?})")]
    CpuFeatures {
        missing: Vec<String>,
        needed: Vec<String>,
    },
    #[error(
        "the artifact's code was built for runtime ABI {found} (this runtime has ABI {}); recompile the model with a matching mlc",
        abi::ABI_VERSION
    )]
    Abi { found: u32 },
    #[error("the artifact's header has no valid CPU plan: {0}")]
    Header(String),
    #[error(transparent)]
    Plan(#[from] CpuPlanError),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Whether this CPU has `feature` (spelled as in `is_x86_feature_detected!`).
pub fn cpu_has(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match feature {
            "sse3" => is_x86_feature_detected!("sse3"),
            "ssse3" => is_x86_feature_detected!("ssse3"),
            "sse4.1" => is_x86_feature_detected!("sse4.1"),
            "sse4.2" => is_x86_feature_detected!("sse4.2"),
            "popcnt" => is_x86_feature_detected!("popcnt"),
            "fma" => is_x86_feature_detected!("fma"),
            "avx" => is_x86_feature_detected!("avx"),
            "avx2" => is_x86_feature_detected!("avx2"),
            "bmi1" => is_x86_feature_detected!("bmi1"),
            "bmi2" => is_x86_feature_detected!("bmi2"),
            "lzcnt" => is_x86_feature_detected!("lzcnt"),
            "avx512f" => is_x86_feature_detected!("avx512f"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = feature;
        false
    }
}

/// A loaded CPU model. `Send + Sync`: runs may come from several threads.
#[derive(Debug)]
pub struct CpuModel {
    exec: Executor,
}

impl CpuModel {
    /// Reads and loads an artifact file.
    pub fn load(path: &Path) -> Result<CpuModel, ModelError> {
        CpuModel::from_artifact(&Artifact::read(path)?)
    }

    /// Loads an artifact already in memory.
    pub fn from_artifact(art: &Artifact) -> Result<CpuModel, ModelError> {
        if art.target != TARGET {
            return Err(ModelError::Target {
                found: art.target.clone(),
            });
        }
        let plan: CpuPlan = serde_json::from_value(art.meta.clone())
            .map_err(|e| ModelError::Header(e.to_string()))?;
        let missing: Vec<String> = plan
            .features
            .iter()
            .filter(|f| !cpu_has(f))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(ModelError::CpuFeatures {
                missing,
                needed: plan.features.clone(),
            });
        }
        if plan.abi != abi::ABI_VERSION || plan.helpers != abi::helpers() {
            return Err(ModelError::Abi { found: plan.abi });
        }
        let weights = art.section(WEIGHTS_SECTION)?;
        plan.check(weights.data.len() as u64)?;
        let code = art.section(CODE_SECTION)?;
        let exec = native::executor(plan, &code.data, &weights.data)?;
        Ok(CpuModel { exec })
    }

    /// The model's inputs: names, element types, shapes.
    pub fn inputs(&self) -> &[PlanIo] {
        &self.exec.plan().inputs
    }

    /// The model's outputs.
    pub fn outputs(&self) -> &[PlanIo] {
        &self.exec.plan().outputs
    }

    /// Bytes of working memory per concurrent run.
    pub fn arena_bytes(&self) -> u64 {
        self.exec.arena_bytes()
    }

    /// The plan (kernels, steps, buffers), for inspection.
    pub fn plan(&self) -> &CpuPlan {
        self.exec.plan()
    }

    /// Runs the model on `inputs` (in [`inputs`](Self::inputs) order) with up to `threads`
    /// threads; returns the outputs by name, in order. Inputs marked [`PlanIo::batch`] also take
    /// any multiple of their compiled leading dim: the batch then runs as that many slices and
    /// the outputs' leading dims grow by the same factor.
    pub fn run(
        &self,
        inputs: &[NpyArray],
        threads: usize,
    ) -> Result<Vec<(String, NpyArray)>, RunError> {
        self.exec.run(inputs, threads)
    }

    /// The executor (per-step profiling: [`Executor::run_bytes_profiled`]).
    pub fn executor(&self) -> &Executor {
        &self.exec
    }

    /// Runs on raw little-endian bytes (see [`Executor::run_bytes`]).
    pub fn run_bytes(&self, inputs: &[&[u8]], threads: usize) -> Result<Vec<Vec<u8>>, RunError> {
        self.exec.run_bytes(inputs, threads)
    }
}
