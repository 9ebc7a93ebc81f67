//! Control-flow ops, whose bodies are regions: `if`, `loop` and `scan`.
//!
//! Regions are self-contained graphs (see `graph.rs`): whatever a body used from the enclosing
//! graph was turned into extra node inputs at import, passed on to extra region inputs. Each op
//! records how many such *captures* each region takes, so that the node's inputs split into the
//! op's own operands followed by the captures, region by region.

use super::{InferCx, InferError};
use crate::DType;
use crate::graph::Graph;
use crate::shape::{Dim, TensorType};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlOp {
    /// Runs region 0 (then) or region 1 (else) depending on a one-element condition.
    ///
    /// Inputs: `cond`, the then-region's captures, the else-region's captures. Each region
    /// takes only its captures and yields the node's outputs.
    If {
        then_captures: usize,
        else_captures: usize,
    },
    /// A loop with an optional trip count and an optional condition (ONNX `Loop`).
    ///
    /// Inputs: `max_trips? (i64 scalar), cond? (bool scalar), carried..., captures...`.
    /// The body (region 0) takes `iteration (i64 scalar), cond, carried..., captures...` and
    /// yields `cond, carried..., scan_outputs...`. The node yields the final carried values, then
    /// each scan output's per-iteration values stacked along a new axis 0. The loop runs while
    /// `iteration < max_trips` (when given) and `cond` (when given) hold.
    Loop { carried: usize, captures: usize },
    /// Iterates a body over slices of its scan inputs (ONNX `Scan`, opset 9+).
    ///
    /// Inputs: `states..., scan_inputs..., captures...`; the body (region 0) takes
    /// `states..., one slice of each scan input..., captures...` and yields
    /// `states..., scan_output_slices...`. The node yields the final states, then each scan
    /// output's slices stacked along its output axis. Every scan input is sliced along its
    /// axis; all have the same length along it.
    Scan {
        states: usize,
        captures: usize,
        /// Per scan input: the axis it is sliced along.
        input_axes: Vec<usize>,
        /// Per scan input: iterate from the last slice to the first.
        input_reverse: Vec<bool>,
        /// Per scan output: the axis of the output its slices are stacked along.
        output_axes: Vec<usize>,
        /// Per scan output: stack the slices in reverse order of iteration.
        output_reverse: Vec<bool>,
    },
    /// A composite (fused) node: region 0 is its body, which takes the node's inputs and
    /// yields its outputs. Passes build these to express fused kernels; `kind` names what the
    /// fusion recognized (for example `"conv_relu"`), for backends and `--explain`. The
    /// interpreter runs the body, so a fused graph stays executable by the oracle.
    Composite { kind: String },
}

/// The most precise type that covers both: dims that differ become unknown.
pub fn join_types(a: &TensorType, b: &TensorType) -> Result<TensorType, InferError> {
    if a.dtype != b.dtype || a.rank() != b.rank() {
        return Err(InferError::Other(format!(
            "incompatible region types {a} and {b}"
        )));
    }
    let shape = a
        .shape
        .iter()
        .zip(&b.shape)
        .map(|(x, y)| if x == y { x.clone() } else { Dim::Unknown })
        .collect();
    Ok(TensorType::new(a.dtype, shape))
}

fn check_region(
    r: &Graph,
    name: &str,
    inputs: usize,
    outputs: Option<usize>,
) -> Result<(), InferError> {
    if r.inputs.len() != inputs {
        return Err(InferError::Other(format!(
            "{name} region takes {} inputs, expected {inputs}",
            r.inputs.len()
        )));
    }
    if let Some(n) = outputs
        && r.outputs.len() != n
    {
        return Err(InferError::Other(format!(
            "{name} region yields {} outputs, expected {n}",
            r.outputs.len()
        )));
    }
    Ok(())
}

fn output_types(r: &Graph) -> Vec<TensorType> {
    r.outputs.iter().map(|p| r.ty(p.value).clone()).collect()
}

fn regions<'a>(cx: &InferCx<'a>, n: usize) -> Result<&'a [Graph], InferError> {
    if cx.regions.len() != n {
        return Err(InferError::Other(format!(
            "expected {n} regions, found {}",
            cx.regions.len()
        )));
    }
    Ok(cx.regions)
}

fn scalar_of(cx: &InferCx, i: usize, ok: fn(DType) -> bool, what: &str) -> Result<(), InferError> {
    if let Some(t) = cx.opt_input(i) {
        let n: Option<usize> = t.static_shape().map(|s| s.iter().product());
        if !ok(t.dtype) || n.is_some_and(|n| n != 1) {
            return Err(InferError::DType {
                index: i,
                expected: what.into(),
                found: t.dtype,
            });
        }
    }
    Ok(())
}

impl ControlOp {
    pub fn infer(&self, cx: &InferCx) -> Result<Vec<TensorType>, InferError> {
        match self {
            ControlOp::Composite { .. } => {
                let body = cx.regions.first().ok_or_else(|| {
                    InferError::Other("a composite node needs its body region".into())
                })?;
                cx.arity(body.inputs.len(), body.inputs.len())?;
                for (i, port) in body.inputs.iter().enumerate() {
                    let (got, want) = (cx.input(i)?, body.ty(port.value));
                    if got.dtype != want.dtype || got.rank() != want.rank() {
                        return Err(InferError::DType {
                            index: i,
                            expected: want.to_string(),
                            found: got.dtype,
                        });
                    }
                }
                Ok(body
                    .outputs
                    .iter()
                    .map(|p| body.ty(p.value).clone())
                    .collect())
            }
            ControlOp::If {
                then_captures,
                else_captures,
            } => {
                let n = 1 + then_captures + else_captures;
                cx.arity(n, n)?;
                let r = regions(cx, 2)?;
                scalar_of(
                    cx,
                    0,
                    |d| d == DType::Bool || d.is_numeric(),
                    "a one-element condition",
                )?;
                check_region(&r[0], "then", *then_captures, Some(cx.n_outputs))?;
                check_region(&r[1], "else", *else_captures, Some(cx.n_outputs))?;
                output_types(&r[0])
                    .iter()
                    .zip(output_types(&r[1]))
                    .map(|(a, b)| join_types(a, &b))
                    .collect()
            }
            ControlOp::Loop { carried, captures } => {
                let n = 2 + carried + captures;
                cx.arity(n, n)?;
                let body = &regions(cx, 1)?[0];
                scalar_of(cx, 0, DType::is_int, "an integer scalar trip count")?;
                scalar_of(cx, 1, |d| d == DType::Bool, "a bool scalar condition")?;
                check_region(body, "loop body", n, None)?;
                let outs = output_types(body);
                if outs.len() < 1 + carried || cx.n_outputs != outs.len() - 1 {
                    return Err(InferError::Other(format!(
                        "loop body yields {} values for {carried} carried values and {} node outputs",
                        outs.len(),
                        cx.n_outputs
                    )));
                }
                let mut types = Vec::with_capacity(cx.n_outputs);
                for (i, out) in outs[1..=*carried].iter().enumerate() {
                    types.push(join_types(cx.input(2 + i)?, out)?);
                }
                for out in &outs[1 + carried..] {
                    let mut shape = vec![Dim::Unknown];
                    shape.extend(out.shape.iter().cloned());
                    types.push(TensorType::new(out.dtype, shape));
                }
                Ok(types)
            }
            ControlOp::Scan {
                states,
                captures,
                input_axes,
                input_reverse,
                output_axes,
                output_reverse,
            } => {
                let n_scan = input_axes.len();
                let n = states + n_scan + captures;
                cx.arity(n, n)?;
                if n_scan == 0
                    || input_reverse.len() != n_scan
                    || output_reverse.len() != output_axes.len()
                {
                    return Err(InferError::Attr {
                        name: "input_axes",
                        reason: "inconsistent scan axes".into(),
                    });
                }
                let body = &regions(cx, 1)?[0];
                check_region(body, "scan body", n, Some(states + output_axes.len()))?;
                if cx.n_outputs != states + output_axes.len() {
                    return Err(InferError::Other(format!(
                        "scan yields {} outputs, not {}",
                        states + output_axes.len(),
                        cx.n_outputs
                    )));
                }
                // The trip count: the common length of the scan inputs along their axes.
                let mut len = Dim::Unknown;
                for (j, &ax) in input_axes.iter().enumerate() {
                    let t = cx.input(states + j)?;
                    let d = t.shape.get(ax).ok_or_else(|| {
                        InferError::Shape(format!("scan axis {ax} out of range for {t}"))
                    })?;
                    match (&len, d) {
                        (Dim::Known(a), Dim::Known(b)) if a != b => {
                            return Err(InferError::Shape(format!(
                                "scan inputs have lengths {a} and {b}"
                            )));
                        }
                        (Dim::Known(_), _) => {}
                        _ => len = d.clone(),
                    }
                }
                let outs = output_types(body);
                let mut types = Vec::with_capacity(cx.n_outputs);
                for (i, out) in outs[..*states].iter().enumerate() {
                    types.push(join_types(cx.input(i)?, out)?);
                }
                for (out, &ax) in outs[*states..].iter().zip(output_axes) {
                    if ax > out.rank() {
                        return Err(InferError::Shape(format!(
                            "scan output axis {ax} out of range for {out}"
                        )));
                    }
                    let mut shape = out.shape.clone();
                    shape.insert(ax, len.clone());
                    types.push(TensorType::new(out.dtype, shape));
                }
                Ok(types)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{EwOp, Op};

    /// A region `(a, b) -> (a + b, a)` over f32[2].
    fn add_body(n_inputs: usize) -> Graph {
        let mut g = Graph::new();
        let t = TensorType::fixed(DType::F32, &[2]);
        let ins: Vec<_> = (0..n_inputs)
            .map(|i| g.add_input(format!("i{i}"), t.clone()))
            .collect();
        let s = g.add_node(
            Op::Ew(EwOp::Add),
            vec![Some(ins[0]), Some(ins[1])],
            vec![t],
            vec![],
            None,
        )[0];
        g.outputs.push(crate::graph::Port {
            value: s,
            name: "s".into(),
        });
        g.outputs.push(crate::graph::Port {
            value: ins[0],
            name: "a".into(),
        });
        g
    }

    #[test]
    fn scan_output_gets_the_trip_count() {
        let op = ControlOp::Scan {
            states: 1,
            captures: 0,
            input_axes: vec![1],
            input_reverse: vec![false],
            output_axes: vec![1],
            output_reverse: vec![false],
        };
        let inputs = vec![
            Some(TensorType::fixed(DType::F32, &[2])),
            Some(TensorType::fixed(DType::F32, &[2, 5])),
        ];
        let regions = vec![add_body(2)];
        let cx = InferCx {
            inputs: &inputs,
            consts: &[None, None],
            regions: &regions,
            n_outputs: 2,
        };
        let out = ControlOp::infer(&op, &cx).unwrap();
        assert_eq!(out[1], TensorType::fixed(DType::F32, &[2, 5]));
    }

    #[test]
    fn join_forgets_differing_dims() {
        let a = TensorType::fixed(DType::F32, &[2, 3]);
        let b = TensorType::fixed(DType::F32, &[2, 4]);
        assert_eq!(
            join_types(&a, &b).unwrap().shape,
            vec![Dim::Known(2), Dim::Unknown]
        );
    }
}
