//! The graph pipeline as the compiling commands run it (`mlc run --engine kir|cpu`, `mlc
//! compile`): the `-O`/`--opt-level` and `--explain` flags, and one call into
//! `mlc_passes::pipeline` that reports under `--time-passes` and explains under `--explain`.

use anyhow::Context;
use mlc_ir::Graph;
use mlc_passes::egraph::{Report, TargetInfo};
use mlc_passes::pipeline::{self, Level, PipelineReport};

/// The optimization flags shared by `mlc run` and `mlc compile`.
#[derive(Debug, Clone, clap::Args)]
pub struct OptFlags {
    /// Optimization level: 0 simplifies only (shape binding, constant folding, dead code); 1
    /// also optimizes by equality saturation (fusion, recognitions, integer kernels for
    /// quantized models). Default: 1 for compiled engines and `mlc compile`, 0 for the
    /// interpreter, which stays the unoptimized reference. `-O0` is `--opt-level 0`.
    #[arg(short = 'O', long = "opt-level", value_name = "N", value_parser = clap::value_parser!(u8).range(0..=1))]
    pub opt_level: Option<u8>,
}

impl OptFlags {
    /// The level to run, given the command's default.
    pub fn level(&self, default: Level) -> Level {
        self.opt_level
            .and_then(Level::from_number)
            .unwrap_or(default)
    }
}

/// What `--explain` prints, for `mlc compile`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainFlags {
    /// Print what the optimizer did (per kernel: the rules that built it and its cost; for the
    /// whole graph: e-graph size, iterations, stop reason, time, cost before and after, fusions
    /// not taken) and the kernel-IR program's size, instead of compiling.
    #[arg(long)]
    pub explain: bool,
    /// With --explain, print one JSON object instead of text, for scripts.
    #[arg(long, requires = "explain")]
    pub json: bool,
}

/// Binds, simplifies and (at `level`) optimizes `graph` for `target`; under `time_passes`
/// prints each phase's report on stderr.
pub fn prepare(
    graph: &mut Graph,
    bindings: &[(String, Vec<usize>)],
    values: &[(String, mlc_ir::Tensor)],
    level: Level,
    target: TargetInfo,
    time_passes: bool,
) -> anyhow::Result<PipelineReport> {
    let mut options = pipeline::Options::new(level, target);
    options.values = values.to_vec();
    let report = pipeline::run(graph, bindings, &options).context("preparing the graph failed")?;
    if time_passes {
        eprint!("{report}");
    }
    Ok(report)
}

/// The cost model for a GPU architecture name (`sm_80`, `sm_90`, `sm_90a`): the Hopper model
/// stands for all of them until they differ in what the cost model knows.
pub fn gpu_target(_arch: &str) -> TargetInfo {
    TargetInfo::sm_90()
}

/// The `--explain` output of `mlc compile`: the optimizer's report (or a note that level 0 did
/// not optimize) and the number of kernels and launches the kernel-IR program has.
pub fn explain(
    report: &PipelineReport,
    program: &mlc_kir::Program,
    json: bool,
) -> anyhow::Result<String> {
    let (kernels, launches) = (program.kernels.len(), program.steps.len());
    // Launches whose kernel may write an output over a dying input (the memory plan decides
    // whether the input does die there).
    let in_place = program
        .steps
        .iter()
        .filter(|s| !mlc_kir::inplace_pairs(program.kernel(s.kernel)).is_empty())
        .count();
    if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            opt_level: u8,
            simplify_ms: f64,
            optimize: Option<&'a Report>,
            kir_kernels: usize,
            kir_launches: usize,
            kir_in_place_launches: usize,
        }
        let out = Out {
            opt_level: u8::from(report.optimize.is_some()),
            simplify_ms: report.simplify.time.as_secs_f64() * 1e3,
            optimize: report.optimize.as_ref(),
            kir_kernels: kernels,
            kir_launches: launches,
            kir_in_place_launches: in_place,
        };
        return Ok(format!("{}\n", serde_json::to_string_pretty(&out)?));
    }
    let mut text = match &report.optimize {
        Some(r) => r.to_string(),
        None => "optimization level 0: the graph was simplified, not optimized\n".to_string(),
    };
    text.push_str(&format!(
        "kernel IR: {kernels} distinct kernels, {launches} launches ({in_place} may compute in place)\n"
    ));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        opt: OptFlags,
    }

    #[test]
    fn levels_parse() {
        let level = |args: &[&str]| {
            T::try_parse_from(args)
                .map(|t| t.opt.level(Level::O1))
                .map_err(|e| e.to_string())
        };
        assert_eq!(level(&["t", "-O0"]), Ok(Level::O0));
        assert_eq!(level(&["t", "--opt-level", "0"]), Ok(Level::O0));
        assert_eq!(level(&["t", "--opt-level=1"]), Ok(Level::O1));
        assert_eq!(level(&["t"]), Ok(Level::O1));
        assert!(level(&["t", "-O2"]).is_err());
    }
}
