//! Import of ONNX DFT, STFT, HannWindow, HammingWindow, BlackmanWindow and MelWeightMatrix
//! into the `signal` family.
//!
//! Opset differences normalized here: DFT's axis is an attribute (default 1) before opset 20
//! and an optional input (default -2) from 20 on; both become a non-negative axis attribute
//! when known, or the kernel reads the run-time input. Scalar inputs (dft_length, frame_step,
//! frame_length, window size) become attributes when constant.

use crate::cx::{NodeCx, NodeError, Registry, invalid};
use crate::tensor::dtype_of;
use mlc_ir::ops::SignalOp;
use mlc_ir::ops::signal::{WindowAttrs, signal_axis};
use mlc_ir::{DType, Op, ValueId};

pub fn register(r: &mut Registry) {
    r.add("", "DFT", dft);
    r.add("", "STFT", stft);
    r.add("", "HannWindow", |cx| window(cx, SignalOp::HannWindow));
    r.add("", "HammingWindow", |cx| {
        window(cx, SignalOp::HammingWindow)
    });
    r.add("", "BlackmanWindow", |cx| {
        window(cx, SignalOp::BlackmanWindow)
    });
    r.add("", "MelWeightMatrix", mel_weight_matrix);
}

/// A scalar input folded to an attribute when constant: `(value, input to keep)`.
fn scalar_input(
    cx: &NodeCx,
    i: usize,
    what: &str,
) -> Result<(Option<usize>, Option<ValueId>), NodeError> {
    let Some(v) = cx.opt_input(i) else {
        return Ok((None, None));
    };
    match cx.input_const(i) {
        Some(t) => match t.to_i64_vec()?.as_slice() {
            [n] if *n >= 0 => Ok((Some(*n as usize), None)),
            _ => Err(invalid(format!("{what} must be one non-negative integer"))),
        },
        None => Ok((None, Some(v))),
    }
}

fn output_dtype(cx: &NodeCx) -> Result<DType, NodeError> {
    let code = cx.attr_int("output_datatype", 1)?;
    i32::try_from(code)
        .map_err(|_| format!("unknown element type code {code}"))
        .and_then(dtype_of)
        .map_err(|reason| NodeError::Attr {
            name: "output_datatype".into(),
            reason,
        })
}

fn dft(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    let rank = cx.input_type(0)?.rank();
    let (length, length_in) = scalar_input(cx, 1, "dft_length")?;
    let (axis, axis_in) = if cx.opset < 20 {
        (Some(cx.attr_int("axis", 1)?), None)
    } else {
        match (cx.opt_input(2), cx.input_const(2)) {
            (None, _) => (Some(-2), None),
            (Some(_), Some(t)) => match t.to_i64_vec()?.as_slice() {
                [a] => (Some(*a), None),
                _ => return Err(invalid("axis must hold one integer")),
            },
            (Some(v), None) => (None, Some(v)),
        }
    };
    let axis = axis.map(|a| signal_axis(a, rank)).transpose()?;
    let op = SignalOp::Dft {
        axis,
        length,
        inverse: cx.attr_int("inverse", 0)? != 0,
        onesided: cx.attr_int("onesided", 0)? != 0,
    };
    let mut inputs = vec![Some(x), length_in, axis_in];
    while inputs.last() == Some(&None) {
        inputs.pop();
    }
    cx.emit(Op::Signal(op), inputs, 1)
}

fn stft(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    cx.input(1)?;
    let (frame_step, step_in) = scalar_input(cx, 1, "frame_step")?;
    let (frame_length, length_in) = scalar_input(cx, 3, "frame_length")?;
    let op = SignalOp::Stft {
        frame_step,
        frame_length,
        onesided: cx.attr_int("onesided", 1)? != 0,
    };
    let mut inputs = vec![Some(x), step_in, cx.opt_input(2), length_in];
    while inputs.last() == Some(&None) {
        inputs.pop();
    }
    cx.emit(Op::Signal(op), inputs, 1)
}

fn window(cx: &mut NodeCx, make: fn(WindowAttrs) -> SignalOp) -> Result<Vec<ValueId>, NodeError> {
    cx.input(0)?;
    let (size, size_in) = scalar_input(cx, 0, "size")?;
    let attrs = WindowAttrs {
        size,
        periodic: cx.attr_int("periodic", 1)? != 0,
        dtype: output_dtype(cx)?,
    };
    let inputs = if size_in.is_some() {
        vec![size_in]
    } else {
        vec![]
    };
    cx.emit(Op::Signal(make(attrs)), inputs, 1)
}

fn mel_weight_matrix(cx: &mut NodeCx) -> Result<Vec<ValueId>, NodeError> {
    let inputs = (0..5)
        .map(|i| cx.input(i).map(Some))
        .collect::<Result<Vec<_>, _>>()?;
    let op = SignalOp::MelWeightMatrix {
        dtype: output_dtype(cx)?,
    };
    cx.emit(Op::Signal(op), inputs, 1)
}
