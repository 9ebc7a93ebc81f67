//! `mlc inspect`: what a model declares and uses, and what mlc cannot import yet.
//!
//! It reads the model with `mlc_onnx::inspect`, which works even when ops are unsupported, so
//! that a user learns every missing op at once instead of one per attempt.

use anyhow::Context;
use mlc_onnx::ModelInfo;
use std::fmt::Write;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model (.onnx; external data is read from beside it).
    pub model: PathBuf,
    /// Print one JSON object instead of text, for scripts.
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: &Args) -> anyhow::Result<()> {
    let info = mlc_onnx::inspect(&args.model)?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&info)
            .context("cannot serialize the model description")?;
        s.push('\n');
        s
    } else {
        render(&args.model.display().to_string(), &info)
    };
    crate::print_stdout(&text)
}

/// The human-readable description.
fn render(model: &str, info: &ModelInfo) -> String {
    // Writing to a String cannot fail; the `let _` keeps the formatting code flat.
    let mut s = String::new();
    let _ = writeln!(s, "model: {model}");
    let opsets: Vec<String> = info
        .opsets
        .iter()
        .map(|(domain, v)| format!("{} {v}", if domain.is_empty() { "ai.onnx" } else { domain }))
        .collect();
    let _ = writeln!(s, "opsets: {}", opsets.join(", "));
    let _ = writeln!(s, "parameters: {}", thousands(info.parameter_count));
    for (title, ports) in [("inputs", &info.inputs), ("outputs", &info.outputs)] {
        let _ = writeln!(s, "{title} ({}):", ports.len());
        let w = ports.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
        for (name, dtype, shape) in ports {
            let _ = writeln!(s, "  {name:<w$}  {dtype} {shape}");
        }
    }
    let nodes: usize = info.op_histogram.iter().map(|(_, n)| n).sum();
    let _ = writeln!(s, "ops ({} types, {nodes} nodes):", info.op_histogram.len());
    let w = info
        .op_histogram
        .iter()
        .map(|(op, _)| op.len())
        .max()
        .unwrap_or(0);
    for (op, n) in &info.op_histogram {
        let _ = writeln!(s, "  {op:<w$}  {n}");
    }
    if info.unsupported.is_empty() {
        let _ = writeln!(s, "unsupported ops: none");
    } else {
        let n: usize = info.unsupported.iter().map(|(_, nodes)| nodes.len()).sum();
        let _ = writeln!(
            s,
            "unsupported ops ({} types, {n} nodes):",
            info.unsupported.len()
        );
        for (op, nodes) in &info.unsupported {
            let names: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
            let _ = writeln!(s, "  {op}: {}", names.join(", "));
        }
    }
    s
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(11_689_512), "11,689,512");
    }
}
