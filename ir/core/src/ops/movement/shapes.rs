//! Shape arithmetic of the movement family, shared by inference and by the importer (which
//! evaluates shape values symbolically and feeds them to the same functions).

use crate::ops::InferError;
use crate::shape::{Dim, Shape};
use crate::tensor::Tensor;

/// One element of an integer tensor as far as it is known at compile time: how shape values
/// computed in the graph (`Shape -> Gather -> Concat -> Reshape`) keep their symbols.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SymInt {
    Int(i64),
    Sym(String),
    Unknown,
}

impl SymInt {
    pub fn from_dim(d: &Dim) -> SymInt {
        match d {
            Dim::Known(n) => SymInt::Int(*n as i64),
            Dim::Sym(s) => SymInt::Sym(s.clone()),
            Dim::Unknown => SymInt::Unknown,
        }
    }

    /// The dim this value describes; negative or unknown values give `Dim::Unknown`.
    pub fn to_dim(&self) -> Dim {
        match self {
            SymInt::Int(n) if *n >= 0 => Dim::Known(*n as usize),
            SymInt::Sym(s) => Dim::Sym(s.clone()),
            _ => Dim::Unknown,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            SymInt::Int(n) => Some(*n),
            _ => None,
        }
    }
}

/// The ints of a constant, as `SymInt`s.
pub(super) fn sym_ints(t: &Tensor) -> Option<Vec<SymInt>> {
    Some(t.to_i64_vec().ok()?.into_iter().map(SymInt::Int).collect())
}

/// A product of dims kept symbolically: a constant, a multiset of symbols, and tokens standing
/// for unknown dims (an unknown dim copied by reshape's `0` cancels against itself).
#[derive(Default)]
pub(super) struct DimProduct {
    c: u128,
    syms: Vec<String>,
    unknown: Vec<usize>,
}

impl DimProduct {
    pub(super) fn new() -> Self {
        DimProduct {
            c: 1,
            ..Default::default()
        }
    }

    pub(super) fn mul(&mut self, d: &Dim, token: usize) {
        match d {
            Dim::Known(n) => self.c = self.c.saturating_mul(*n as u128),
            Dim::Sym(s) => self.syms.push(s.clone()),
            Dim::Unknown => self.unknown.push(token),
        }
    }

    /// `self / other` as a dim, when it is decidable.
    pub(super) fn div(mut self, other: DimProduct) -> Dim {
        for s in other.syms {
            match self.syms.iter().position(|x| *x == s) {
                Some(i) => {
                    self.syms.remove(i);
                }
                None => return Dim::Unknown,
            }
        }
        for u in other.unknown {
            match self.unknown.iter().position(|x| *x == u) {
                Some(i) => {
                    self.unknown.remove(i);
                }
                None => return Dim::Unknown,
            }
        }
        if !self.unknown.is_empty() || other.c == 0 || !self.c.is_multiple_of(other.c) {
            return Dim::Unknown;
        }
        let c = self.c / other.c;
        match (self.syms.len(), c) {
            (0, c) => usize::try_from(c).map(Dim::Known).unwrap_or(Dim::Unknown),
            (1, 1) => Dim::Sym(self.syms.remove(0)),
            _ => Dim::Unknown,
        }
    }
}

/// The output shape of a reshape of `input` to `target` (entries `0` and `-1` as in ONNX).
pub fn reshape_shape(
    input: &[Dim],
    target: &[SymInt],
    allowzero: bool,
) -> Result<Shape, InferError> {
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    // Tokens for unknown dims: input position `i` is token `i`; fresh unknowns get tokens past
    // the input rank so that they never cancel.
    let mut rest = DimProduct::new();
    for (i, t) in target.iter().enumerate() {
        let d = match t {
            SymInt::Int(0) if !allowzero => {
                let d = input.get(i).cloned().ok_or_else(|| {
                    InferError::Shape(format!(
                        "reshape copies dim {i} of a rank-{} input",
                        input.len()
                    ))
                })?;
                rest.mul(&d, i);
                d
            }
            SymInt::Int(-1) => {
                if infer_at.replace(i).is_some() {
                    return Err(InferError::Shape(
                        "reshape target has more than one -1".into(),
                    ));
                }
                Dim::Unknown
            }
            SymInt::Int(n) if *n < 0 => {
                return Err(InferError::Shape(format!("reshape target has dim {n}")));
            }
            other => {
                let d = other.to_dim();
                rest.mul(&d, input.len() + i);
                d
            }
        };
        out.push(d);
    }
    let mut total = DimProduct::new();
    for (i, d) in input.iter().enumerate() {
        total.mul(d, i);
    }
    if let Some(i) = infer_at {
        out[i] = total.div(rest);
    } else if let (Some(a), Some(b)) = (
        crate::shape::static_shape(input),
        crate::shape::static_shape(&out),
    ) && a.iter().product::<usize>() != b.iter().product::<usize>()
    {
        return Err(InferError::Shape(format!("cannot reshape {a:?} to {b:?}")));
    }
    Ok(out)
}

/// The output shape of expanding `input` to `target`.
pub fn expand_shape(input: &[Dim], target: &[SymInt]) -> Result<Shape, InferError> {
    let t: Shape = target.iter().map(SymInt::to_dim).collect();
    crate::shape::broadcast_shapes(&[input, &t])
        .ok_or_else(|| InferError::Shape(format!("cannot expand {input:?} to {t:?}")))
}

/// The shape of `ConstantOfShape` from its (symbolic) shape input.
pub fn constant_of_shape_shape(target: &[SymInt]) -> Shape {
    target.iter().map(SymInt::to_dim).collect()
}

/// The length of `Range(start, limit, delta)` from symbolic scalars.
pub fn range_len(start: &SymInt, limit: &SymInt, delta: &SymInt) -> Dim {
    match (start, limit, delta) {
        (SymInt::Int(s), SymInt::Int(l), SymInt::Int(d)) if *d != 0 => {
            let n = (l - s + d - d.signum()) / d;
            Dim::Known(n.max(0) as usize)
        }
        (SymInt::Int(0), SymInt::Sym(s), SymInt::Int(1)) => Dim::Sym(s.clone()),
        _ => Dim::Unknown,
    }
}

/// The output shape of `Tile`.
pub fn tile_shape(input: &[Dim], repeats: &[SymInt]) -> Result<Shape, InferError> {
    if repeats.len() != input.len() {
        return Err(InferError::Shape(format!(
            "tile: {} repeats for rank {}",
            repeats.len(),
            input.len()
        )));
    }
    Ok(input
        .iter()
        .zip(repeats)
        .map(|(d, r)| match (d, r) {
            (_, SymInt::Int(1)) => d.clone(),
            (_, SymInt::Int(0)) => Dim::Known(0),
            (Dim::Known(n), SymInt::Int(r)) if *r > 0 => Dim::Known(n * *r as usize),
            _ => Dim::Unknown,
        })
        .collect())
}

/// The more informative of two dims that must be equal.
pub(super) fn unify(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(_), _) => a.clone(),
        (_, Dim::Known(_)) => b.clone(),
        (Dim::Sym(_), _) => a.clone(),
        _ => b.clone(),
    }
}

/// `a + b` for dims.
pub(super) fn add_dims(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => Dim::Known(x + y),
        (Dim::Known(0), d) | (d, Dim::Known(0)) => d.clone(),
        _ => Dim::Unknown,
    }
}

/// `d + delta` for a dim and a signed constant.
pub(super) fn offset_dim(d: &Dim, delta: i64) -> Result<Dim, InferError> {
    Ok(match d {
        _ if delta == 0 => d.clone(),
        Dim::Known(n) => {
            let v = *n as i64 + delta;
            if v < 0 {
                return Err(InferError::Shape(format!(
                    "dim {n} shrinks by {} below zero",
                    -delta
                )));
            }
            Dim::Known(v as usize)
        }
        _ => Dim::Unknown,
    })
}

/// Slice ends at least this large mean "to the end" (exporters write `INT_MAX`, `INT64_MAX`
/// or `1e9`), so slicing a symbolic dim with them keeps the symbol.
const TO_END: i64 = 1_000_000_000;

/// The length of one sliced axis of dim `d`, when it is decidable.
fn slice_dim(d: &Dim, start: &SymInt, end: &SymInt, step: &SymInt) -> Dim {
    use SymInt::Int;
    match (d, start, end, step) {
        (Dim::Known(n), Int(s), Int(e), Int(st)) => {
            Dim::Known(slice_range(*n as i64, *s, *e, *st).1 as usize)
        }
        // The whole axis, forwards or backwards.
        (_, Int(0), Int(e), Int(1)) if *e >= TO_END => d.clone(),
        (_, Int(s), Int(e), Int(-1)) if *s == -1 || *s >= TO_END => {
            if *e <= -TO_END {
                d.clone()
            } else {
                Dim::Unknown
            }
        }
        // A prefix of symbolic length: assumed to fit the axis, as exporters intend when they
        // slice a table (positions, masks) to the sequence length.
        (_, Int(0), SymInt::Sym(e), Int(1)) => Dim::Sym(e.clone()),
        _ => Dim::Unknown,
    }
}

/// The output shape of slicing `input` (`axes` may be negative).
pub fn slice_shape(
    input: &[Dim],
    starts: &[SymInt],
    ends: &[SymInt],
    axes: &[i64],
    steps: &[SymInt],
) -> Result<Shape, InferError> {
    let n = axes.len();
    if starts.len() != n || ends.len() != n || steps.len() != n {
        return Err(InferError::Shape(
            "slice starts/ends/axes/steps differ in length".into(),
        ));
    }
    let mut shape = input.to_vec();
    for i in 0..n {
        let ax = crate::ops::norm_axis(axes[i], input.len())?;
        if steps[i] == SymInt::Int(0) {
            return Err(InferError::Shape("slice step 0".into()));
        }
        shape[ax] = slice_dim(&input[ax], &starts[i], &ends[i], &steps[i]);
    }
    Ok(shape)
}

/// Resolves one slice axis of length `n`: the start and the number of elements taken.
/// Follows numpy: bounds are clamped to the valid range for the step's direction.
pub fn slice_range(n: i64, start: i64, end: i64, step: i64) -> (i64, i64) {
    let (s, e) = if step > 0 {
        let s = if start < 0 {
            (start + n).max(0)
        } else {
            start.min(n)
        };
        let e = if end < 0 {
            (end + n).max(0)
        } else {
            end.min(n)
        };
        (s, e)
    } else {
        let s = if start < 0 {
            (start + n).max(-1)
        } else {
            start.min(n - 1)
        };
        let e = if end < 0 {
            (end + n).max(-1)
        } else {
            end.min(n - 1)
        };
        (s, e)
    };
    let len = if step > 0 {
        (e - s + step - 1) / step
    } else {
        (s - e + (-step) - 1) / (-step)
    };
    (s, len.max(0))
}

/// The sizes of an equal split of `d` into `n` parts (ONNX: `ceil(d / n)` each, the last part
/// takes the remainder).
pub fn split_sizes(d: usize, n: usize) -> Vec<usize> {
    if n == 0 {
        return vec![];
    }
    if d.is_multiple_of(n) {
        return vec![d / n; n];
    }
    let c = d.div_ceil(n);
    let mut v = vec![c; n];
    let last = d as i64 - (c * (n - 1)) as i64;
    v[n - 1] = last.max(0) as usize;
    v
}
