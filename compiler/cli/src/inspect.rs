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
    /// The ONNX model (.onnx; external data is read from beside it), or a compiled artifact
    /// (.mlca: its target, needs, inputs, outputs and kernels).
    pub model: PathBuf,
    /// Print one JSON object instead of text, for scripts.
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: &Args) -> anyhow::Result<()> {
    if crate::pipeline::is_artifact(&args.model) {
        return crate::inspect_artifact::main(&args.model, args.json);
    }
    let info = mlc_onnx::inspect(&args.model)?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&info)
            .context("cannot serialize the model description")?;
        s.push('\n');
        s
    } else {
        render(&info)
    };
    crate::print_stdout(&text)
}

/// The human-readable description.
fn render(info: &ModelInfo) -> String {
    // Writing to a String cannot fail; the `let _` keeps the formatting code flat.
    let mut s = String::new();
    let _ = writeln!(s, "model: {}", info.path);
    if !info.producer.is_empty() {
        let _ = writeln!(s, "producer: {}", info.producer);
    }
    let opsets: Vec<String> = info
        .opsets
        .iter()
        .map(|(domain, v)| format!("{} {v}", if domain.is_empty() { "ai.onnx" } else { domain }))
        .collect();
    let _ = writeln!(
        s,
        "ir version: {}; opsets: {}",
        info.ir_version,
        opsets.join(", ")
    );
    let _ = writeln!(s, "parameters: {}", thousands(info.parameters));
    for (title, ports) in [("inputs", &info.inputs), ("outputs", &info.outputs)] {
        let _ = writeln!(s, "{title} ({}):", ports.len());
        let w = ports.iter().map(|p| p.name.len()).max().unwrap_or(0);
        for p in ports {
            let shape = match &p.shape {
                Some(dims) => format!("[{}]", dims.join(",")),
                None => "(rank not declared)".into(),
            };
            let _ = writeln!(s, "  {:<w$}  {}{shape}", p.name, p.dtype);
        }
    }
    let _ = writeln!(s, "ops ({} types, {} nodes):", info.ops.len(), info.nodes);
    let w = info.ops.keys().map(String::len).max().unwrap_or(0);
    // Most used first, as a profile reads; ties keep the map's alphabetical order.
    let mut ops: Vec<(&String, &usize)> = info.ops.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1));
    for (op, n) in ops {
        let _ = writeln!(s, "  {op:<w$}  {n}");
    }
    if info.unsupported.is_empty() {
        let _ = writeln!(s, "unsupported ops: none");
    } else {
        let n: usize = info.unsupported.iter().map(|u| u.nodes.len()).sum();
        let _ = writeln!(
            s,
            "unsupported ops ({} types, {n} nodes):",
            info.unsupported.len()
        );
        for u in &info.unsupported {
            let names: Vec<String> = u.nodes.iter().map(|n| format!("{n:?}")).collect();
            let _ = writeln!(s, "  {} (opset {}): {}", u.op, u.opset, names.join(", "));
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
