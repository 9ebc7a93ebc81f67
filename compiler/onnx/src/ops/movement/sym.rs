//! Symbolic evaluation of small integer values (shapes computed inside the graph).
//!
//! Exported models compute shapes at run time: `Shape -> Gather -> Concat -> Reshape`, `Range`
//! over a dim, `ConstantOfShape(Shape(x))`. With static input shapes these chains are constants
//! in disguise; with symbolic dims (`batch`, `seq`) they still carry the symbols. `value` walks
//! back from a value through the ops that build such chains and returns each element as a
//! `SymInt`, so that the importer can turn shape operands into attributes (when every element is
//! known) or at least give the op's output exact symbolic dims.

use mlc_ir::ops::movement::SymInt;
use mlc_ir::ops::{EwOp, MovementOp};
use mlc_ir::{DType, Graph, Op, ValueId};

/// The largest value evaluated symbolically; shape values are short.
const MAX_LEN: usize = 64;
/// How far back a chain is followed.
const MAX_DEPTH: usize = 24;

/// The elements (row-major) of an integer value of rank 0 or 1, as far as they are known at
/// compile time; `None` if the value is not a short integer vector.
pub fn value(g: &Graph, v: ValueId) -> Option<Vec<SymInt>> {
    eval(g, v, MAX_DEPTH)
}

/// `value`, only if every element is a known integer.
pub fn ints(g: &Graph, v: ValueId) -> Option<Vec<i64>> {
    value(g, v)?.iter().map(SymInt::int).collect()
}

fn is_int(d: DType) -> bool {
    d.is_int()
}

/// The node defining `v`, searching backwards (producers of shape values are usually close).
fn producer(g: &Graph, v: ValueId) -> Option<&mlc_ir::Node> {
    g.nodes.iter().rev().find(|n| n.outputs.contains(&v))
}

fn eval(g: &Graph, v: ValueId, depth: usize) -> Option<Vec<SymInt>> {
    let ty = g.ty(v);
    if !is_int(ty.dtype) || ty.rank() > 1 {
        return None;
    }
    let len = match ty.shape.as_slice() {
        [] => Some(1),
        [d] => d.known(),
        _ => None,
    };
    if len.is_some_and(|n| n > MAX_LEN) {
        return None;
    }
    // Whatever the producer, a value of static length is at least a list of unknowns.
    let unknown = len.map(|n| vec![SymInt::Unknown; n]);
    if let Some(t) = g.const_value(v) {
        return Some(t.to_i64_vec().ok()?.into_iter().map(SymInt::Int).collect());
    }
    if depth == 0 {
        return unknown;
    }
    let Some(node) = producer(g, v) else {
        return unknown;
    };
    let arg = |i: usize| node.input(i).and_then(|a| eval(g, a, depth - 1));
    let arg_ty = |i: usize| node.input(i).map(|a| g.ty(a));
    let out = match &node.op {
        Op::Movement(m) => match m {
            MovementOp::Shape { start, end } => {
                let x = arg_ty(0)?;
                Some(
                    x.shape
                        .get(*start..*end)?
                        .iter()
                        .map(SymInt::from_dim)
                        .collect(),
                )
            }
            MovementOp::Size => {
                let n = arg_ty(0)?
                    .static_shape()
                    .map(|s| s.iter().product::<usize>() as i64);
                Some(vec![n.map_or(SymInt::Unknown, SymInt::Int)])
            }
            MovementOp::Gather { axis: 0 } if arg_ty(0)?.rank() == 1 => {
                let data = arg(0)?;
                let idx = arg(1)?;
                idx.iter()
                    .map(|i| {
                        let i = i.int()?;
                        let j = if i < 0 { i + data.len() as i64 } else { i };
                        data.get(usize::try_from(j).ok()?).cloned()
                    })
                    .collect()
            }
            MovementOp::Concat { axis: 0 } => {
                let mut all = Vec::new();
                for i in 0..node.inputs.len() {
                    all.extend(arg(i)?);
                }
                Some(all)
            }
            MovementOp::Identity
            | MovementOp::Reshape { .. }
            | MovementOp::Flatten { .. }
            | MovementOp::Squeeze { .. }
            | MovementOp::Unsqueeze { .. } => arg(0),
            MovementOp::Slice {
                starts: Some(s),
                ends: Some(e),
                axes,
                steps,
            } if node.inputs[1..].iter().all(Option::is_none) => {
                let data = arg(0)?;
                let (s, e) = (*s.first()?, *e.first()?);
                let step = steps.as_ref().and_then(|v| v.first().copied()).unwrap_or(1);
                let axis = axes.as_ref().and_then(|v| v.first().copied()).unwrap_or(0);
                if !matches!(axis, 0 | -1) || step == 0 {
                    return unknown;
                }
                let (start, n) = mlc_ir::ops::movement::slice_range(data.len() as i64, s, e, step);
                Some(
                    (0..n)
                        .map(|k| data[(start + k * step) as usize].clone())
                        .collect(),
                )
            }
            MovementOp::Range => {
                let (s, l, d) = (arg(0)?, arg(1)?, arg(2)?);
                let (s, l, d) = (s.first()?.int()?, l.first()?.int()?, d.first()?.int()?);
                let n = mlc_ir::ops::movement::range_len(
                    &SymInt::Int(s),
                    &SymInt::Int(l),
                    &SymInt::Int(d),
                )
                .known()?;
                (n <= MAX_LEN).then(|| (0..n as i64).map(|i| SymInt::Int(s + i * d)).collect())
            }
            MovementOp::ConstantOfShape { shape, value, .. } => {
                // The length comes from the shape operand when the output type lost it.
                let n = match (len, shape) {
                    (Some(n), _) => n,
                    (None, Some(s)) => *s.first()?,
                    (None, None) => arg(0)?
                        .first()?
                        .int()
                        .and_then(|n| usize::try_from(n).ok())?,
                };
                if n > MAX_LEN {
                    return None;
                }
                let v = match value {
                    mlc_ir::ops::movement::Scalar::Int(i) => SymInt::Int(*i),
                    mlc_ir::ops::movement::Scalar::UInt(u) => SymInt::Int(i64::try_from(*u).ok()?),
                    _ => SymInt::Unknown,
                };
                Some(vec![v; n])
            }
            _ => None,
        },
        Op::Ew(EwOp::Cast { .. }) => arg(0),
        op if node.inputs.len() == 1 => unary(&op.name(), arg(0)),
        op if node.inputs.len() == 2 => arith(&op.name(), arg(0), arg(1)),
        _ => None,
    };
    match out {
        // The symbolic result must agree with the value's declared length.
        Some(v) if len.is_none_or(|n| n == v.len()) => Some(v),
        _ => unknown,
    }
}

/// Elementwise unary integer ops on shape values.
fn unary(name: &str, a: Option<Vec<SymInt>>) -> Option<Vec<SymInt>> {
    let f: fn(i64) -> i64 = match name {
        "ew.neg" => i64::wrapping_neg,
        "ew.abs" => i64::wrapping_abs,
        "ew.identity" => |x| x,
        _ => return None,
    };
    Some(
        a?.iter()
            .map(|v| v.int().map_or(SymInt::Unknown, |x| SymInt::Int(f(x))))
            .collect(),
    )
}

/// Elementwise integer arithmetic on shape values (numpy broadcasting of a length-1 side).
fn arith(name: &str, a: Option<Vec<SymInt>>, b: Option<Vec<SymInt>>) -> Option<Vec<SymInt>> {
    let f: fn(&SymInt, &SymInt) -> SymInt = match name {
        "ew.add" => |a, b| match (a, b) {
            (SymInt::Int(x), SymInt::Int(y)) => SymInt::Int(x.wrapping_add(*y)),
            (s, SymInt::Int(0)) | (SymInt::Int(0), s) => s.clone(),
            _ => SymInt::Unknown,
        },
        "ew.sub" => |a, b| match (a, b) {
            (SymInt::Int(x), SymInt::Int(y)) => SymInt::Int(x.wrapping_sub(*y)),
            (s, SymInt::Int(0)) => s.clone(),
            _ => SymInt::Unknown,
        },
        "ew.mul" => |a, b| match (a, b) {
            (SymInt::Int(x), SymInt::Int(y)) => SymInt::Int(x.wrapping_mul(*y)),
            (s, SymInt::Int(1)) | (SymInt::Int(1), s) => s.clone(),
            _ => SymInt::Unknown,
        },
        // ONNX integer division truncates toward zero, as Rust's does.
        "ew.div" => |a, b| match (a, b) {
            (SymInt::Int(x), SymInt::Int(y)) if *y != 0 => SymInt::Int(x.wrapping_div(*y)),
            (s, SymInt::Int(1)) => s.clone(),
            _ => SymInt::Unknown,
        },
        "ew.max" => |a, b| match (a, b) {
            (SymInt::Int(x), SymInt::Int(y)) => SymInt::Int(*x.max(y)),
            _ => SymInt::Unknown,
        },
        "ew.min" => |a, b| match (a, b) {
            (SymInt::Int(x), SymInt::Int(y)) => SymInt::Int(*x.min(y)),
            _ => SymInt::Unknown,
        },
        _ => return None,
    };
    let (a, b) = (a?, b?);
    let n = a.len().max(b.len());
    if (a.len() != n && a.len() != 1) || (b.len() != n && b.len() != 1) {
        return None;
    }
    Some(
        (0..n)
            .map(|i| f(&a[i.min(a.len() - 1)], &b[i.min(b.len() - 1)]))
            .collect(),
    )
}
