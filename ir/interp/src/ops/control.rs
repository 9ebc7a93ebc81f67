//! Kernels of the control family: `if`, `loop` and `scan`, which run their regions through
//! `EvalCx::run_region`.

use crate::{EvalCx, EvalError, invalid};
use mlc_ir::ops::ControlOp;
use mlc_ir::{Elem, Tensor, TensorType};
use ndarray::{ArrayD, Axis};

pub fn eval(
    op: &ControlOp,
    inputs: &[Option<&Tensor>],
    cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    match op {
        ControlOp::If {
            then_captures,
            else_captures,
        } => {
            let caps = owned(inputs, 1, then_captures + else_captures)?;
            let (then_caps, else_caps) = caps.split_at(*then_captures);
            if truthy(req(inputs, 0)?)? {
                checked(
                    cx.run_region(0, then_caps.to_vec())?,
                    cx.n_outputs(),
                    "then",
                )
            } else {
                checked(
                    cx.run_region(1, else_caps.to_vec())?,
                    cx.n_outputs(),
                    "else",
                )
            }
        }
        ControlOp::Loop { carried, captures } => run_loop(*carried, *captures, inputs, cx),
        ControlOp::Composite { .. } => checked(
            cx.run_region(0, owned(inputs, 0, inputs.len())?)?,
            cx.n_outputs(),
            "composite body",
        ),
        ControlOp::Scan {
            states,
            captures,
            input_axes,
            input_reverse,
            output_axes,
            output_reverse,
        } => {
            let n_in = input_axes.len();
            let mut state = owned(inputs, 0, *states)?;
            let xs = owned(inputs, *states, n_in)?;
            let caps = owned(inputs, states + n_in, *captures)?;
            let mut len = None;
            for (x, &ax) in xs.iter().zip(input_axes) {
                let n = *x
                    .shape()
                    .get(ax)
                    .ok_or_else(|| invalid(format!("scan axis {ax} out of range for {x:?}")))?;
                if len.is_some_and(|l| l != n) {
                    return Err(invalid("scan inputs differ in length"));
                }
                len = Some(n);
            }
            let len = len.ok_or_else(|| invalid("scan needs at least one scan input"))?;
            let mut slices: Vec<Vec<Tensor>> = vec![Vec::with_capacity(len); output_axes.len()];
            for it in 0..len {
                let mut args = state;
                for ((x, &ax), &rev) in xs.iter().zip(input_axes).zip(input_reverse) {
                    args.push(index_axis(x, ax, if rev { len - 1 - it } else { it }));
                }
                args.extend(caps.iter().cloned());
                let mut outs = checked(
                    cx.run_region(0, args)?,
                    states + output_axes.len(),
                    "scan body",
                )?;
                for (acc, t) in slices.iter_mut().zip(outs.split_off(*states)) {
                    acc.push(t);
                }
                state = outs;
            }
            for (j, mut ts) in slices.into_iter().enumerate() {
                if output_reverse.get(j).copied().unwrap_or(false) {
                    ts.reverse();
                }
                state.push(stack(&ts, output_axes[j], &cx.output_types[states + j])?);
            }
            Ok(state)
        }
    }
}

fn run_loop(
    carried: usize,
    captures: usize,
    inputs: &[Option<&Tensor>],
    cx: &EvalCx,
) -> Result<Vec<Tensor>, EvalError> {
    let max_trips = match inputs.first().copied().flatten() {
        Some(t) if t.len() == 1 => Some(t.to_i64_vec()?[0]),
        Some(t) => {
            return Err(invalid(format!(
                "loop trip count must have one element, not {:?}",
                t.shape()
            )));
        }
        None => None,
    };
    let mut cond = inputs
        .get(1)
        .copied()
        .flatten()
        .map(truthy)
        .transpose()?
        .unwrap_or(true);
    let mut vals = owned(inputs, 2, carried)?;
    let caps = owned(inputs, 2 + carried, captures)?;
    let n_scan = cx
        .n_outputs()
        .checked_sub(carried)
        .ok_or_else(|| invalid("loop has fewer outputs than carried values"))?;
    let mut scans: Vec<Vec<Tensor>> = vec![Vec::new(); n_scan];
    let mut it: i64 = 0;
    while cond && max_trips.is_none_or(|m| it < m) {
        let mut args = Vec::with_capacity(2 + carried + captures);
        args.push(Tensor::scalar(it));
        args.push(Tensor::scalar(cond));
        args.extend(vals);
        args.extend(caps.iter().cloned());
        let mut outs = checked(cx.run_region(0, args)?, 1 + carried + n_scan, "loop body")?;
        for (acc, t) in scans.iter_mut().zip(outs.split_off(1 + carried)) {
            acc.push(t);
        }
        vals = outs.split_off(1);
        cond = truthy(&outs[0])?;
        it += 1;
    }
    for (j, ts) in scans.iter().enumerate() {
        vals.push(stack(ts, 0, &cx.output_types[carried + j])?);
    }
    Ok(vals)
}

fn req<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, EvalError> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| invalid(format!("input {i} is required")))
}

/// Inputs `start..start + n`, all required, as owned tensors (regions take ownership).
fn owned(inputs: &[Option<&Tensor>], start: usize, n: usize) -> Result<Vec<Tensor>, EvalError> {
    (start..start + n)
        .map(|i| req(inputs, i).cloned())
        .collect()
}

fn checked(outs: Vec<Tensor>, n: usize, what: &str) -> Result<Vec<Tensor>, EvalError> {
    if outs.len() == n {
        Ok(outs)
    } else {
        Err(invalid(format!(
            "{what} region yielded {} values, expected {n}",
            outs.len()
        )))
    }
}

/// The truth of a one-element condition.
fn truthy(t: &Tensor) -> Result<bool, EvalError> {
    match t.to_f64_vec()?.as_slice() {
        [x] => Ok(*x != 0.0),
        _ => Err(invalid(format!(
            "a condition must have one element, not shape {:?}",
            t.shape()
        ))),
    }
}

fn index_axis(t: &Tensor, axis: usize, i: usize) -> Tensor {
    mlc_ir::dispatch_all!(t, a => Elem::wrap(a.index_axis(Axis(axis), i).to_owned()))
}

/// Stacks per-iteration values along a new `axis`; with no iterations, an empty tensor whose
/// other dims come from the node's output type (unknown ones taken as 0).
fn stack(ts: &[Tensor], axis: usize, ty: &TensorType) -> Result<Tensor, EvalError> {
    fn go<T: Elem>(first: &ArrayD<T>, ts: &[Tensor], axis: usize) -> Result<Tensor, EvalError> {
        let arrays: Vec<&ArrayD<T>> = ts.iter().map(|t| t.view::<T>()).collect::<Result<_, _>>()?;
        if arrays.iter().any(|a| a.shape() != first.shape()) {
            return Err(invalid(
                "iterations yielded scan outputs of different shapes",
            ));
        }
        let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
        let out = ndarray::stack(Axis(axis), &views)
            .map_err(|e| invalid(format!("cannot stack scan outputs: {e}")))?;
        Ok(Elem::wrap(out))
    }
    match ts.first() {
        Some(first) => mlc_ir::dispatch_all!(first, a => go(a, ts, axis)),
        None => {
            let mut shape: Vec<usize> = ty.shape.iter().map(|d| d.known().unwrap_or(0)).collect();
            if let Some(d) = shape.get_mut(axis) {
                *d = 0;
            }
            Ok(Tensor::zeros(ty.dtype, &shape))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::{DType, Dim, Graph, Port};

    fn f32s(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    /// A region over `inputs` whose outputs are `outs(graph, inputs)`.
    fn region(
        inputs: &[TensorType],
        outs: impl FnOnce(&mut Graph, &[mlc_ir::ValueId]) -> Vec<mlc_ir::ValueId>,
    ) -> Graph {
        let mut g = Graph::new();
        let ins: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| g.add_input(format!("in{i}"), t.clone()))
            .collect();
        for (i, v) in outs(&mut g, &ins).into_iter().enumerate() {
            g.outputs.push(Port {
                value: v,
                name: format!("out{i}"),
            });
        }
        g
    }

    #[test]
    fn composite_runs_its_body_and_infers_from_it() {
        use mlc_ir::ops::EwOp;
        let t = TensorType::fixed(DType::F32, &[2]);
        let body = region(&[t.clone(), t.clone()], |g, ins| {
            let sum = g.add_node(
                mlc_ir::Op::Ew(EwOp::Add),
                vec![Some(ins[0]), Some(ins[1])],
                vec![t.clone()],
                vec![],
                None,
            );
            g.add_node(
                mlc_ir::Op::Ew(EwOp::Relu),
                vec![Some(sum[0])],
                vec![t.clone()],
                vec![],
                None,
            )
        });
        let op = ControlOp::Composite {
            kind: "add_relu".into(),
        };
        let regions = [body];
        let in_types = [Some(t.clone()), Some(t.clone())];
        let icx = mlc_ir::InferCx {
            inputs: &in_types,
            consts: &[None, None],
            regions: &regions,
            n_outputs: 1,
        };
        assert_eq!(op.infer(&icx).unwrap(), vec![t.clone()]);
        let types = [t];
        let cx = EvalCx {
            regions: &regions,
            output_types: &types,
        };
        let (a, b) = (f32s(&[2], vec![1.0, -3.0]), f32s(&[2], vec![0.5, 1.0]));
        let out = eval(&op, &[Some(&a), Some(&b)], &cx).unwrap();
        assert_eq!(out, vec![f32s(&[2], vec![1.5, 0.0])]);
    }

    #[test]
    fn if_picks_a_branch_with_its_captures() {
        let t = TensorType::fixed(DType::F32, &[1]);
        let then = region(std::slice::from_ref(&t), |_, ins| vec![ins[0]]);
        let els = region(std::slice::from_ref(&t), |_, ins| vec![ins[0]]);
        let regions = [then, els];
        let types = [t];
        let cx = EvalCx {
            regions: &regions,
            output_types: &types,
        };
        let op = ControlOp::If {
            then_captures: 1,
            else_captures: 1,
        };
        let (a, b) = (f32s(&[1], vec![1.0]), f32s(&[1], vec![2.0]));
        for (c, want) in [(true, 1.0), (false, 2.0)] {
            let cond = Tensor::scalar(c);
            let out = eval(&op, &[Some(&cond), Some(&a), Some(&b)], &cx).unwrap();
            assert_eq!(out[0].to_f64_vec().unwrap(), vec![want]);
        }
    }

    // The regions below only route values, so that these tests need no other family's kernels.

    /// The body's carried value becomes the capture after one trip; the iteration count is scanned.
    #[test]
    fn loop_carries_and_scans() {
        let s = TensorType::scalar(DType::F32);
        let i64s = TensorType::scalar(DType::I64);
        let body = region(
            &[
                i64s.clone(),
                TensorType::scalar(DType::Bool),
                s.clone(),
                s.clone(),
            ],
            |_, ins| vec![ins[1], ins[3], ins[0]],
        );
        let regions = [body];
        let types = [s.clone(), TensorType::new(DType::I64, vec![Dim::Unknown])];
        let cx = EvalCx {
            regions: &regions,
            output_types: &types,
        };
        let op = ControlOp::Loop {
            carried: 1,
            captures: 1,
        };
        let (m, start, delta) = (
            Tensor::scalar(3i64),
            Tensor::scalar(1.0f32),
            Tensor::scalar(2.0f32),
        );
        let out = eval(&op, &[Some(&m), None, Some(&start), Some(&delta)], &cx).unwrap();
        assert_eq!(out[0].to_f64_vec().unwrap(), vec![2.0]);
        assert_eq!(out[1].to_i64_vec().unwrap(), vec![0, 1, 2]);
        // Zero trips: the initial value and an empty scan output.
        let zero = Tensor::scalar(0i64);
        let out = eval(&op, &[Some(&zero), None, Some(&start), Some(&delta)], &cx).unwrap();
        assert_eq!(out[0].to_f64_vec().unwrap(), vec![1.0]);
        assert_eq!(out[1].shape(), &[0]);
    }

    /// The state becomes the current row; the previous state is scanned. Rows are visited
    /// backwards and the scanned values stacked along axis 1.
    #[test]
    fn scan_reverse_on_other_axes() {
        let t = TensorType::fixed(DType::F32, &[2]);
        let body = region(&[t.clone(), t.clone()], |_, ins| vec![ins[1], ins[0]]);
        let regions = [body];
        let types = [t, TensorType::fixed(DType::F32, &[2, 3])];
        let cx = EvalCx {
            regions: &regions,
            output_types: &types,
        };
        let op = ControlOp::Scan {
            states: 1,
            captures: 0,
            input_axes: vec![0],
            input_reverse: vec![true],
            output_axes: vec![1],
            output_reverse: vec![false],
        };
        let init = f32s(&[2], vec![0.0, 0.0]);
        let x = f32s(&[3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let out = eval(&op, &[Some(&init), Some(&x)], &cx).unwrap();
        assert_eq!(out[0].to_f64_vec().unwrap(), vec![1.0, 2.0]);
        assert_eq!(out[1].shape(), &[2, 3]);
        assert_eq!(
            out[1].to_f64_vec().unwrap(),
            vec![0.0, 5.0, 3.0, 0.0, 6.0, 4.0]
        );
    }
}
