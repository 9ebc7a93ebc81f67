//! `mlc opt`: optimize a graph by equality saturation and print the result, or with
//! `--explain` what the optimizer did (per kernel, the rules that built it and its cost; for
//! the whole graph the e-graph's size, iterations, stop reason, time, cost and kernel counts).
//!
//! The input is a file of IR text, or an ONNX model (`.onnx`), which is imported first. Either
//! way it is simplified with the `--shape` bindings before optimizing, so that the cost model
//! sees concrete sizes.

use anyhow::{Context, anyhow, bail};
use mlc_ir::Graph;
use mlc_passes::egraph::{Options, TargetInfo, optimize};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A file of IR text, or an ONNX model (.onnx).
    pub file: PathBuf,
    /// Print what the optimizer did instead of the optimized IR.
    #[arg(long)]
    pub explain: bool,
    /// With --explain, print one JSON object instead of text, for scripts.
    #[arg(long, requires = "explain")]
    pub json: bool,
    /// The target whose cost model picks the result: x86_64 or sm_90.
    #[arg(long, default_value = "x86_64", value_parser = parse_target)]
    pub target: TargetInfo,
    /// The shape of a graph input, as NAME=D0,D1,...; symbolic dims it fixes become sizes
    /// everywhere. Give one per input whose shape is not static.
    #[arg(long = "shape", value_name = "NAME=DIMS", value_parser = parse_shape)]
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Write the optimized IR to this file (with --explain too).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

fn parse_target(s: &str) -> Result<TargetInfo, String> {
    TargetInfo::by_name(s).ok_or_else(|| format!("unknown target {s:?}: expected x86_64 or sm_90"))
}

fn parse_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    let (name, dims) = s
        .split_once('=')
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| format!("expected NAME=D0,D1,..., got {s:?}"))?;
    let dims = if dims.is_empty() {
        vec![]
    } else {
        dims.split(',')
            .map(|d| d.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad dims in {s:?}: {e}"))?
    };
    Ok((name.to_string(), dims))
}

fn load(path: &PathBuf) -> anyhow::Result<Graph> {
    if path.extension().is_some_and(|e| e == "onnx") {
        return Ok(mlc_onnx::load(path)?.graph);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    mlc_ir::parse_graph(&text).map_err(|e| anyhow!("{}:{e}", path.display()))
}

pub fn main(args: &Args) -> anyhow::Result<()> {
    let mut graph = load(&args.file)?;
    mlc_passes::simplify(&mut graph, &args.shapes)
        .with_context(|| format!("simplifying {} failed", args.file.display()))?;
    if let Err(errors) = mlc_ir::verify(&graph) {
        let first: Vec<String> = errors.iter().take(3).map(ToString::to_string).collect();
        bail!(
            "{} does not verify: {}",
            args.file.display(),
            first.join("; ")
        );
    }
    let options = Options {
        target: args.target.clone(),
        ..Options::default()
    };
    let (optimized, report) = optimize(graph, &options)
        .with_context(|| format!("optimizing {} failed", args.file.display()))?;
    let ir = mlc_ir::print_graph(&optimized);
    if let Some(out) = &args.output {
        std::fs::write(out, &ir).with_context(|| format!("cannot write {}", out.display()))?;
    }
    let text = match (args.explain, args.json) {
        (true, true) => format!("{}\n", report.to_json()),
        (true, false) => report.to_string(),
        (false, _) if args.output.is_some() => return Ok(()),
        (false, _) => ir,
    };
    crate::print_stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse() {
        assert_eq!(
            parse_shape("input_ids=1,128"),
            Ok(("input_ids".into(), vec![1, 128]))
        );
        assert_eq!(parse_shape("s="), Ok(("s".into(), vec![])));
        assert!(parse_shape("=1").is_err());
        assert!(parse_shape("x=1,a").is_err());
        assert!(parse_target("sm_90").is_ok() && parse_target("arm").is_err());
    }
}
