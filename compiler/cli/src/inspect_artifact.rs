//! `mlc inspect ARTIFACT.mlca`: what a compiled artifact holds and needs, read with
//! `mlc-runtime` alone (the same checks the loader makes, reported instead of refused).
//!
//! A CPU artifact (`x86_64-linux`) carries its plan as the header's metadata: the inputs and
//! outputs, the kernels and steps, the arena size, the ABI and the CPU features the code needs;
//! a GPU artifact (`nvptx:sm_90`, ...) a device plan of PTX kernels and launches.

use anyhow::Context;
use mlc_runtime::artifact::Artifact;
use mlc_runtime::cpu::abi::ABI_VERSION;
use mlc_runtime::cpu::model::{TARGET as CPU_TARGET, cpu_has, plans as cpu_plans};
use mlc_runtime::cpu::plan::CpuPlan;
use mlc_runtime::plan::{Plan, PlanIo};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// The description `--json` prints.
#[derive(Serialize)]
struct ArtifactInfo {
    path: String,
    target: String,
    sections: Vec<SectionInfo>,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    /// Distinct kernels and the steps that launch them.
    kernels: usize,
    steps: usize,
    /// Steps per kernel name, most first.
    kernel_steps: BTreeMap<String, usize>,
    /// CPU artifacts: the arena (bytes), the ABI and the features the code needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<CpuInfo>,
    /// An artifact compiled for several input shapes: each variant's ports and plan size
    /// (the fields above describe the first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    variants: Vec<VariantInfo>,
}

#[derive(Serialize)]
struct VariantInfo {
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    kernels: usize,
    steps: usize,
    arena_bytes: u64,
}

#[derive(Serialize)]
struct SectionInfo {
    name: String,
    kind: String,
    bytes: usize,
}

#[derive(Serialize)]
struct Port {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    /// Axis 0 takes any multiple of `shape[0]` (the batch runs as slices).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    batch: bool,
    /// The one value the artifact accepts (it was specialized to it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    specialized: bool,
    /// The model's names of the dims (`null` for an unnamed or static one); absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dims: Vec<Option<String>>,
    /// `i64[batch=1,seq=128]`.
    #[serde(skip)]
    text: String,
}

#[derive(Serialize)]
struct CpuInfo {
    arena_bytes: u64,
    abi: u32,
    /// Whether this `mlc`'s runtime runs that ABI.
    abi_supported: bool,
    features: Vec<String>,
    /// The needed features this CPU lacks.
    missing_features: Vec<String>,
}

fn ports(io: &[PlanIo]) -> Vec<Port> {
    io.iter()
        .map(|p| Port {
            name: p.name.clone(),
            dtype: p.dtype.clone(),
            shape: p.shape.clone(),
            batch: p.batch,
            specialized: p.value.is_some(),
            dims: p.dims.clone(),
            text: p.describe(),
        })
        .collect()
}

pub fn main(path: &Path, json: bool) -> anyhow::Result<()> {
    let art = Artifact::read(path)?;
    let bad_plan = |e: serde_json::Error| {
        anyhow::anyhow!("{}: the artifact's plan is not valid: {e}", path.display())
    };
    let mut info = ArtifactInfo {
        path: path.display().to_string(),
        target: art.target.clone(),
        sections: art
            .sections
            .iter()
            .map(|s| SectionInfo {
                name: s.name.clone(),
                kind: s.kind.clone(),
                bytes: s.data.len(),
            })
            .collect(),
        inputs: vec![],
        outputs: vec![],
        kernels: 0,
        steps: 0,
        kernel_steps: BTreeMap::new(),
        cpu: None,
        variants: vec![],
    };
    if art.target == CPU_TARGET {
        let mut plans = cpu_plans(&art.meta).map_err(|e| {
            anyhow::anyhow!("{}: the artifact's plan is not valid: {e}", path.display())
        })?;
        if plans.len() > 1 {
            info.variants = plans
                .iter()
                .map(|p| VariantInfo {
                    inputs: ports(&p.inputs),
                    outputs: ports(&p.outputs),
                    kernels: p.kernels.len(),
                    steps: p.steps.len(),
                    arena_bytes: p.arena_bytes,
                })
                .collect();
        }
        let plan: CpuPlan = plans.swap_remove(0);
        info.inputs = ports(&plan.inputs);
        info.outputs = ports(&plan.outputs);
        info.kernels = plan.kernels.len();
        info.steps = plan.steps.len();
        for st in &plan.steps {
            if let Some(k) = plan.kernels.get(st.kernel) {
                *info.kernel_steps.entry(k.name.clone()).or_default() += 1;
            }
        }
        info.cpu = Some(CpuInfo {
            arena_bytes: plan.arena_bytes,
            abi: plan.abi,
            abi_supported: plan.abi == ABI_VERSION,
            missing_features: plan
                .features
                .iter()
                .filter(|f| !cpu_has(f))
                .cloned()
                .collect(),
            features: plan.features,
        });
    } else if art.target.starts_with("nvptx:") {
        let plan: Plan = serde_json::from_value(art.meta.clone()).map_err(bad_plan)?;
        info.inputs = ports(&plan.inputs);
        info.outputs = ports(&plan.outputs);
        info.steps = plan.steps.len();
        for st in &plan.steps {
            *info.kernel_steps.entry(st.kernel.clone()).or_default() += 1;
        }
        info.kernels = info.kernel_steps.len();
    }
    let text = if json {
        let mut s = serde_json::to_string_pretty(&info)
            .context("cannot serialize the artifact description")?;
        s.push('\n');
        s
    } else {
        render(&info)
    };
    crate::print_stdout(&text)
}

fn render(info: &ArtifactInfo) -> String {
    // Writing to a String cannot fail; the `let _` keeps the formatting code flat.
    let mut s = String::new();
    let _ = writeln!(s, "artifact: {}", info.path);
    let _ = writeln!(s, "target: {}", info.target);
    if let Some(c) = &info.cpu {
        let abi = if c.abi_supported {
            "runs here".to_string()
        } else {
            format!("this mlc runs ABI {ABI_VERSION}: recompile")
        };
        let _ = writeln!(s, "ABI: {} ({abi})", c.abi);
        let missing = if c.missing_features.is_empty() {
            "all present on this CPU".to_string()
        } else {
            format!("missing on this CPU: {}", c.missing_features.join(", "))
        };
        let _ = writeln!(s, "CPU features: {} ({missing})", c.features.join(", "));
        let _ = writeln!(s, "arena: {} bytes", c.arena_bytes);
    }
    let _ = writeln!(s, "sections ({}):", info.sections.len());
    for sec in &info.sections {
        let _ = writeln!(s, "  {:<10} {:<16} {} bytes", sec.name, sec.kind, sec.bytes);
    }
    for (title, ports) in [("inputs", &info.inputs), ("outputs", &info.outputs)] {
        let _ = writeln!(s, "{title} ({}):", ports.len());
        let w = ports.iter().map(|p| p.name.len()).max().unwrap_or(0);
        for p in ports {
            let note = match (p.batch, p.specialized) {
                (true, _) => "  (axis 0: any multiple, run as slices)",
                (_, true) => "  (specialized: one value accepted)",
                _ => "",
            };
            let _ = writeln!(s, "  {:<w$}  {}{note}", p.name, p.text);
        }
    }
    if !info.variants.is_empty() {
        let _ = writeln!(
            s,
            "variants ({}): one per set of input shapes, run without recompiling; the ports above and kernels below are the first's",
            info.variants.len()
        );
        for (i, v) in info.variants.iter().enumerate() {
            let shapes: Vec<String> = v
                .inputs
                .iter()
                .map(|p| format!("{} {}", p.name, p.text))
                .collect();
            let _ = writeln!(
                s,
                "  {i}: {}  ({} kernels, {} steps, arena {} bytes)",
                shapes.join(" "),
                v.kernels,
                v.steps,
                v.arena_bytes
            );
        }
    }
    let _ = writeln!(
        s,
        "kernels: {} distinct, {} steps",
        info.kernels, info.steps
    );
    let mut by_use: Vec<(&String, &usize)> = info.kernel_steps.iter().collect();
    // Most launched first; ties keep the map's alphabetical order.
    by_use.sort_by(|a, b| b.1.cmp(a.1));
    let w = by_use.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, n) in by_use {
        let _ = writeln!(s, "  {k:<w$}  {n}");
    }
    s
}
