//! Import errors. Each one's `Display` is a single paragraph that names the file, and where there
//! is one the node and its op, so that a user can find the problem in their model.

use std::fmt;
use std::path::PathBuf;

/// One unsupported op type and every node that uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsupportedOp {
    pub domain: String,
    pub op_type: String,
    pub opset: i64,
    pub nodes: Vec<String>,
}

impl UnsupportedOp {
    /// `Op` for the default domain, `domain:Op` otherwise.
    pub fn qualified(&self) -> String {
        if self.domain.is_empty() || self.domain == "ai.onnx" {
            self.op_type.clone()
        } else {
            format!("{}:{}", self.domain, self.op_type)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// (`error` is not marked as the source: the message already holds it, and printers that
    /// walk the source chain would repeat it.)
    #[error("{}: cannot read the file: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not a valid ONNX file: {reason}", path.display())]
    Decode { path: PathBuf, reason: String },
    #[error("{}: {}", path.display(), UnsupportedList(ops))]
    Unsupported {
        path: PathBuf,
        ops: Vec<UnsupportedOp>,
    },
    #[error("{}: node {node:?} ({op}, opset {opset}): {reason}", path.display())]
    Node {
        path: PathBuf,
        node: String,
        op: String,
        opset: i64,
        reason: String,
    },
    #[error("{}: {reason}", path.display())]
    Graph { path: PathBuf, reason: String },
}

struct UnsupportedList<'a>(&'a [UnsupportedOp]);

impl fmt::Display for UnsupportedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n: usize = self.0.len();
        write!(
            f,
            "{n} unsupported op type{}: ",
            if n == 1 { "" } else { "s" }
        )?;
        for (i, op) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let shown: Vec<String> = op.nodes.iter().take(8).map(|n| format!("{n:?}")).collect();
            let more = op.nodes.len().saturating_sub(8);
            write!(
                f,
                "{} (opset {}) at node{} {}",
                op.qualified(),
                op.opset,
                if op.nodes.len() == 1 { "" } else { "s" },
                shown.join(", ")
            )?;
            if more > 0 {
                write!(f, " and {more} more")?;
            }
        }
        Ok(())
    }
}
