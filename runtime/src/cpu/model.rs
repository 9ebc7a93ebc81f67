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
//!
//! An artifact may hold several *variants*: the same model compiled for several sizes of its
//! symbolic dims (`mlc compile --dim seq=32,64,128`). They share one weights section (each
//! distinct constant stored once) and the weights packed at run time; each has its own plan
//! and code. [`CpuModel::run`] picks the variant whose input shapes the inputs have, so one
//! artifact serves all of its sizes without recompiling.

use super::abi;
use super::exec::{Executor, RunError, Weights};
use super::native::{self, LoadError};
use super::plan::{CpuPlan, CpuPlanError};
use crate::artifact::{Artifact, ArtifactError};
use crate::npy::NpyArray;
use crate::plan::PlanIo;
use std::path::Path;

/// The target string of CPU artifacts.
pub const TARGET: &str = "x86_64-linux";
/// The section holding the shared object (of the first variant; see [`code_section`]).
pub const CODE_SECTION: &str = "code";

/// The section holding the shared object of variant `i`: [`CODE_SECTION`], then `code.1`, ...
pub fn code_section(i: usize) -> String {
    if i == 0 {
        CODE_SECTION.to_string()
    } else {
        format!("{CODE_SECTION}.{i}")
    }
}

/// The plans of an artifact's header: one plan (an artifact of one variant), or
/// `{"variants": [plan, ...]}`.
pub fn plans(meta: &serde_json::Value) -> Result<Vec<CpuPlan>, String> {
    match meta.get("variants") {
        Some(v) => {
            let plans: Vec<CpuPlan> =
                serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
            if plans.is_empty() {
                return Err("no variants".into());
            }
            Ok(plans)
        }
        None => Ok(vec![
            serde_json::from_value(meta.clone()).map_err(|e| e.to_string())?,
        ]),
    }
}
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
    /// One executor per variant, in the artifact's order; never empty.
    variants: Vec<Executor>,
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
        let plans = plans(&art.meta).map_err(ModelError::Header)?;
        for plan in &plans {
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
        }
        let weights = Weights::new(&art.section(WEIGHTS_SECTION)?.data);
        for plan in &plans {
            plan.check(weights.len())?;
        }
        let mut variants = Vec::with_capacity(plans.len());
        for (i, plan) in plans.into_iter().enumerate() {
            let code = art.section(&code_section(i))?;
            variants.push(native::executor_with(plan, &code.data, weights.clone())?);
        }
        Ok(CpuModel { variants })
    }

    /// The model's inputs: names, element types, shapes (those of the first variant: see
    /// [`variants`](Self::variants)).
    pub fn inputs(&self) -> &[PlanIo] {
        &self.variants[0].plan().inputs
    }

    /// The model's outputs (of the first variant).
    pub fn outputs(&self) -> &[PlanIo] {
        &self.variants[0].plan().outputs
    }

    /// The compiled variants, one per set of input shapes, in the artifact's order (one unless
    /// the model was compiled for several sizes of a dim).
    pub fn variants(&self) -> &[Executor] {
        &self.variants
    }

    /// Input `name`'s port in every variant that has it (its compiled shapes), in order.
    pub fn input_ports<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a PlanIo> + 'a {
        self.variants
            .iter()
            .filter_map(move |e| e.plan().inputs.iter().find(|p| p.name == name))
    }

    /// Bytes of working memory per concurrent run (the largest variant's arena).
    pub fn arena_bytes(&self) -> u64 {
        self.variants
            .iter()
            .map(Executor::arena_bytes)
            .max()
            .unwrap_or(0)
    }

    /// The plan (kernels, steps, buffers) of the first variant, for inspection.
    pub fn plan(&self) -> &CpuPlan {
        self.variants[0].plan()
    }

    /// The variant that runs `inputs`: the first whose inputs have exactly these types and
    /// shapes, else the first that runs them as batch slices. An artifact of one variant
    /// always returns it (its own checks then name what does not fit).
    pub fn select(&self, inputs: &[NpyArray]) -> Result<&Executor, RunError> {
        if self.variants.len() == 1 {
            return Ok(&self.variants[0]);
        }
        let exact = |e: &&Executor| {
            let p = e.plan();
            p.inputs.len() == inputs.len()
                && p.inputs
                    .iter()
                    .zip(inputs)
                    .all(|(io, x)| x.elem.name() == io.dtype && x.shape == io.shape)
        };
        if let Some(e) = self.variants.iter().find(exact) {
            return Ok(e);
        }
        if let Some(e) = self
            .variants
            .iter()
            .find(|e| e.batch_multiple(inputs).is_some())
        {
            return Ok(e);
        }
        let ports = |io: &[PlanIo]| {
            io.iter()
                .map(|p| format!("{} {}", p.name, p.describe()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(RunError::NoVariant {
            given: inputs
                .iter()
                .map(|x| format!("{}{:?}", x.elem.name(), x.shape))
                .collect::<Vec<_>>()
                .join(", "),
            compiled: self
                .variants
                .iter()
                .map(|e| ports(&e.plan().inputs))
                .collect(),
        })
    }

    /// Runs the model on `inputs` (in [`inputs`](Self::inputs) order) with up to `threads`
    /// threads; returns the outputs by name, in order. The variant is the one compiled for the
    /// inputs' shapes ([`select`](Self::select)). Inputs marked [`PlanIo::batch`] also take
    /// any multiple of their compiled leading dim: the batch then runs as that many slices and
    /// the outputs' leading dims grow by the same factor.
    pub fn run(
        &self,
        inputs: &[NpyArray],
        threads: usize,
    ) -> Result<Vec<(String, NpyArray)>, RunError> {
        self.select(inputs)?.run(inputs, threads)
    }

    /// The first variant's executor (per-step profiling: [`Executor::run_bytes_profiled`]).
    pub fn executor(&self) -> &Executor {
        &self.variants[0]
    }

    /// Runs on raw little-endian bytes (see [`Executor::run_bytes`]), with the first variant
    /// whose inputs have these byte lengths (bytes carry no shapes: where two variants take
    /// the same lengths, [`run`](Self::run) tells them apart).
    pub fn run_bytes(&self, inputs: &[&[u8]], threads: usize) -> Result<Vec<Vec<u8>>, RunError> {
        let fits = |e: &&Executor| {
            let p = e.plan();
            p.inputs.len() == inputs.len()
                && p.inputs
                    .iter()
                    .zip(inputs)
                    .all(|(io, x)| p.buffers[io.buffer].bytes() == x.len() as u64)
        };
        let e = self.variants.iter().find(fits).unwrap_or(&self.variants[0]);
        e.run_bytes(inputs, threads)
    }
}
