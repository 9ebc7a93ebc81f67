//! The execution plan of a compiled model: plain data that says which buffers exist, which
//! kernels run in which order on which buffers, and how to launch them. The compiler writes it
//! (as JSON, in an artifact's header); an executor reads it. Nothing here knows the IR.
//!
//! Buffers are flat arrays of `len` elements of `dtype` (mlc's short type names: `f32`, `i64`,
//! `bool`, `bf16`; bools are one byte). Element sizes come from [`dtype_size`].

use serde::{Deserialize, Serialize};

/// The plan format's version; bump on any incompatible change.
pub const PLAN_VERSION: u32 = 1;

/// A whole model's execution plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
    pub buffers: Vec<PlanBuffer>,
    pub steps: Vec<PlanStep>,
    pub inputs: Vec<PlanIo>,
    pub outputs: Vec<PlanIo>,
}

/// One buffer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanBuffer {
    pub dtype: String,
    /// Number of elements.
    pub len: usize,
    pub kind: BufferKind,
}

/// Where a buffer's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum BufferKind {
    /// The `index`-th model input, copied in before each run.
    Input { index: usize },
    /// Constant data: `bytes` bytes at `offset` in the artifact's `weights` section.
    Const { offset: u64, bytes: u64 },
    /// Scratch written by a step (zero-filled once at load).
    Temp,
    /// The same storage as buffer `of` (which is not itself an alias).
    Alias { of: usize },
}

/// One kernel launch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    /// The kernel's entry name; also the name of the code section holding it.
    pub kernel: String,
    /// Buffer indices, one per kernel parameter, in order.
    pub args: Vec<usize>,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
    /// The graph node it came from, for diagnostics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// A model input or output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanIo {
    pub name: String,
    pub buffer: usize,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// For an input the program was specialized to: the only value (raw little-endian bytes)
    /// the program accepts, because it was compiled with this value baked in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Vec<u8>>,
    /// Axis 0 is the batch, and the program computes its elements independently (proved by
    /// `mlc_passes::batch`): the runtime accepts any multiple of `shape[0]` there and runs the
    /// batch as that many slices. Set on every output too when set on an input.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
    /// The model's names of the dims (`seq`), `None` where a dim had none; empty when none
    /// had. For display, and to pick an artifact's variant by `--dim NAME=SIZE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dims: Vec<Option<String>>,
}

impl PlanIo {
    /// Whether an array of `shape` fits: the planned shape, or for a batch port
    /// ([`PlanIo::batch`]) a multiple of it along axis 0.
    pub fn accepts(&self, shape: &[usize]) -> bool {
        shape == self.shape.as_slice()
            || (self.batch
                && shape.len() == self.shape.len()
                && shape[1..] == self.shape[1..]
                && self.shape[0] > 0
                && shape[0].is_multiple_of(self.shape[0]))
    }

    /// The size of the dim the model names `name`, if this port has one.
    pub fn dim(&self, name: &str) -> Option<usize> {
        let i = self.dims.iter().position(|d| d.as_deref() == Some(name))?;
        self.shape.get(i).copied()
    }

    /// `i64[batch=1,seq=128]`: the type with the dims' names where they have one.
    pub fn describe(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .enumerate()
            .map(|(i, n)| match self.dims.get(i) {
                Some(Some(name)) => format!("{name}={n}"),
                _ => n.to_string(),
            })
            .collect();
        format!("{}[{}]", self.dtype, dims.join(","))
    }
}

/// Why a plan is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("plan version {found} is not supported (this runtime reads version {PLAN_VERSION})")]
    Version { found: u32 },
    #[error("plan: {0}")]
    Invalid(String),
}

/// Bytes per element of a dtype name; `None` for types a plan cannot hold.
pub fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "bool" | "i8" | "u8" => 1,
        // float8 storage types: raw bytes to everything but casts.
        "f8e4m3fn" | "f8e4m3fnuz" | "f8e5m2" | "f8e5m2fnuz" | "f8e8m0" => 1,
        // Sub-byte storage types are held one code per byte in memory (packed only in files).
        "f4e2m1" | "i4" | "u4" | "i2" | "u2" => 1,
        "f16" | "bf16" | "i16" | "u16" => 2,
        "f32" | "i32" | "u32" => 4,
        "f64" | "i64" | "u64" => 8,
        _ => return None,
    })
}

impl PlanBuffer {
    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.len * dtype_size(&self.dtype).unwrap_or(1)
    }
}

impl Plan {
    /// The buffer owning the storage of buffer `b` (aliases resolved).
    pub fn storage_of(&self, mut b: usize) -> usize {
        // `check` guarantees alias chains end; the bound guards unchecked plans.
        for _ in 0..self.buffers.len() {
            match self.buffers.get(b).map(|x| &x.kind) {
                Some(BufferKind::Alias { of }) => b = *of,
                _ => break,
            }
        }
        b
    }

    /// Checks internal consistency: indices in range, known dtypes, aliases that end, inputs
    /// and outputs matching their buffers. `weights_len` is the size of the weights section.
    pub fn check(&self, weights_len: u64) -> Result<(), PlanError> {
        let bad = |m: String| Err(PlanError::Invalid(m));
        if self.version != PLAN_VERSION {
            return Err(PlanError::Version {
                found: self.version,
            });
        }
        let nb = self.buffers.len();
        for (i, b) in self.buffers.iter().enumerate() {
            if dtype_size(&b.dtype).is_none() {
                return bad(format!("buffer {i} has unknown dtype {:?}", b.dtype));
            }
            match b.kind {
                BufferKind::Alias { of } => {
                    if of >= nb {
                        return bad(format!("buffer {i} aliases missing buffer {of}"));
                    }
                    if matches!(self.buffers[of].kind, BufferKind::Alias { .. }) {
                        return bad(format!("buffer {i} aliases alias {of}"));
                    }
                    if self.buffers[of].bytes() < b.bytes() {
                        return bad(format!("buffer {i} is larger than the buffer it aliases"));
                    }
                }
                BufferKind::Const { offset, bytes }
                    if offset.checked_add(bytes).is_none_or(|e| e > weights_len)
                        || bytes != b.bytes() as u64 =>
                {
                    return bad(format!("buffer {i}'s constant data is out of range"));
                }
                BufferKind::Input { index } if index >= self.inputs.len() => {
                    return bad(format!(
                        "buffer {i} is input {index}, which is not declared"
                    ));
                }
                _ => {}
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            if let Some(a) = s.args.iter().find(|&&a| a >= nb) {
                return bad(format!("step {i} ({}) uses missing buffer {a}", s.kernel));
            }
        }
        for io in self.inputs.iter().chain(&self.outputs) {
            let Some(b) = self.buffers.get(io.buffer) else {
                return bad(format!("{:?} names missing buffer {}", io.name, io.buffer));
            };
            if b.dtype != io.dtype || b.len != io.shape.iter().product::<usize>() {
                return bad(format!("{:?} does not match its buffer", io.name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let buf = |dtype: &str, len, kind| PlanBuffer {
            dtype: dtype.into(),
            len,
            kind,
        };
        Plan {
            version: PLAN_VERSION,
            buffers: vec![
                buf("f32", 4, BufferKind::Input { index: 0 }),
                buf(
                    "f32",
                    4,
                    BufferKind::Const {
                        offset: 0,
                        bytes: 16,
                    },
                ),
                buf("f32", 4, BufferKind::Temp),
                buf("f32", 4, BufferKind::Alias { of: 2 }),
            ],
            steps: vec![PlanStep {
                kernel: "k0_ew_add".into(),
                args: vec![2, 0, 1],
                grid: [1, 1, 1],
                block: [256, 1, 1],
                shared_bytes: 0,
                origin: None,
            }],
            inputs: vec![PlanIo {
                name: "x".into(),
                buffer: 0,
                dtype: "f32".into(),
                shape: vec![2, 2],
                value: None,
                batch: false,
                dims: Vec::new(),
            }],
            outputs: vec![PlanIo {
                name: "y".into(),
                buffer: 3,
                dtype: "f32".into(),
                shape: vec![4],
                value: None,
                batch: false,
                dims: Vec::new(),
            }],
        }
    }

    #[test]
    fn round_trips_through_json_and_checks() {
        let p = plan();
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""kind":"alias","of":2"#), "{json}");
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), p);
        p.check(16).unwrap();
        assert_eq!(p.storage_of(3), 2);
    }

    #[test]
    fn inconsistent_plans_are_errors() {
        assert!(plan().check(8).is_err(), "constant data past the weights");
        let mut p = plan();
        p.steps[0].args.push(9);
        assert!(p.check(16).is_err());
        let mut p = plan();
        p.buffers[3].kind = BufferKind::Alias { of: 3 };
        assert!(p.check(16).is_err());
        let mut p = plan();
        p.version = 99;
        assert_eq!(p.check(16), Err(PlanError::Version { found: 99 }));
        let mut p = plan();
        p.outputs[0].dtype = "i64".into();
        assert!(p.check(16).is_err());
    }
}
