//! Shapes with symbolic dimensions, and tensor types (dtype + shape + optional quantization).

use crate::dtype::{DType, QuantParams};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One dimension of a shape.
///
/// Rank is always known in mlc's IR; a dimension is a constant, a named symbol shared across the
/// graph (`batch`, `seq`: two dims with the same symbol are equal), or unknown (a value only the
/// data decides, such as the length of `NonZero`'s output).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dim {
    Known(usize),
    Sym(String),
    Unknown,
}

impl Dim {
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            _ => None,
        }
    }

    /// The broadcast of two dims under numpy rules, when it can be decided statically.
    /// `None` means the dims provably cannot broadcast.
    pub fn broadcast(&self, other: &Dim) -> Option<Dim> {
        match (self, other) {
            (Dim::Known(1), d) | (d, Dim::Known(1)) => Some(d.clone()),
            (Dim::Known(a), Dim::Known(b)) => (a == b).then_some(Dim::Known(*a)),
            (a, b) if a == b => Some(a.clone()),
            // A symbol against a known dim > 1: the symbol must equal it at run time.
            (Dim::Known(n), _) | (_, Dim::Known(n)) => Some(Dim::Known(*n)),
            _ => Some(Dim::Unknown),
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Known(n)
    }
}

/// A ranked shape.
pub type Shape = Vec<Dim>;

/// The static shape if every dimension is known.
pub fn static_shape(shape: &[Dim]) -> Option<Vec<usize>> {
    shape.iter().map(Dim::known).collect()
}

/// Numpy-style multidirectional broadcast of several shapes; `None` if they cannot broadcast.
pub fn broadcast_shapes(shapes: &[&[Dim]]) -> Option<Shape> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![Dim::Known(1); rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            out[off + i] = out[off + i].broadcast(d)?;
        }
    }
    Some(out)
}

/// The type of a value: element type, ranked shape, and quantization parameters when the
/// value holds quantized integers whose meaning is known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<QuantParams>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> Self {
        TensorType {
            dtype,
            shape,
            quant: None,
        }
    }

    pub fn fixed(dtype: DType, dims: &[usize]) -> Self {
        TensorType::new(dtype, dims.iter().map(|&d| Dim::Known(d)).collect())
    }

    pub fn scalar(dtype: DType) -> Self {
        TensorType::new(dtype, vec![])
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn static_shape(&self) -> Option<Vec<usize>> {
        static_shape(&self.shape)
    }
}

impl fmt::Display for TensorType {
    /// `f32[1,3,?,width]`; quantization parameters, when present, follow in braces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")?;
        if let Some(q) = &self.quant {
            let json = serde_json::to_string(q).map_err(|_| fmt::Error)?;
            write!(f, "{json}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_rules() {
        let a = vec![Dim::Sym("batch".into()), Dim::Known(1), Dim::Known(4)];
        let b = vec![Dim::Known(3), Dim::Known(1)];
        assert_eq!(
            broadcast_shapes(&[&a, &b]),
            Some(vec![Dim::Sym("batch".into()), Dim::Known(3), Dim::Known(4)])
        );
        assert_eq!(
            broadcast_shapes(&[&[Dim::Known(2)], &[Dim::Known(3)]]),
            None
        );
    }
}
